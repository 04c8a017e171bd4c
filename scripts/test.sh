#!/usr/bin/env bash
# Run llmser's checks: ruff, then the test suite (fast and slow tests; pass -m "not slow" for the fast set).
#
#   bash scripts/test.sh                 # everything CI runs
#   bash scripts/test.sh -m "not slow"   # quick local loop
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${LLMSER_VENV:-.venv}"
"$VENV/bin/ruff" check llmser tests scripts
"$VENV/bin/python" -m pytest "$@"
