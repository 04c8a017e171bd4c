#!/usr/bin/env bash
# The lowest versions pyproject.toml allows, installed and run: the scoring and voting tests on the floors.
#
#   bash scripts/test_floors.sh                 # ~2-4 min: a venv beside the main one, floors from PyPI, 2 test files
#   FLOORS_VENV=/tmp/floors bash scripts/test_floors.sh
#
# Why: a range that admits a version no one ran is a promise nobody checked (transformers 5.17-5.23 take the
# key/value cache as past_key_values, not cache=; the range admitted them while label scoring failed there).
# The venv sees the main venv's packages (--system-site-packages) so torch (a multi-GB download as a CUDA build)
# is reused; the packages the scoring and voting tests import are installed at exactly their floor. Every
# dependency is then checked: the version that ran must be its floor, except those listed in REUSED (printed).
set -euo pipefail
cd "$(dirname "$0")/.."
MAIN="${LLMSER_VENV:-.venv}"
FLOORS="${FLOORS_VENV:-$MAIN-floors}"
# Installed at their floor: what tests/test_text_llm.py and tests/test_voting_paths.py import.
INSTALL=(transformers peft accelerate tokenizers safetensors huggingface_hub)
# Taken from the main venv: torch (no CPU build of older releases on PyPI's Linux index).
REUSED=(torch)

floors="$("$MAIN/bin/python" - <<'EOF'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for dep in deps:
    m = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", dep)
    if not m:
        raise SystemExit(f"pyproject.toml: dependency {dep!r} has no '>=' floor; give every dependency one")
    print(m.group(1), m.group(2))
EOF
)"
if [ ! -x "$FLOORS/bin/python" ]; then
  "$MAIN/bin/python" -m venv "$FLOORS"
  # The main venv's packages after the floor venv's own (a .pth line is appended to sys.path): what is
  # installed here at its floor shadows the main venv's copy, everything else (torch...) is reused.
  main_site="$("$MAIN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  floors_site="$("$FLOORS/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$main_site" > "$floors_site/llmser-main-venv.pth"
fi
pins=()
for name in "${INSTALL[@]}"; do
  version="$(awk -v n="$name" 'tolower($1) == tolower(n) {print $2}' <<<"$floors")"
  [ -n "$version" ] || { echo "floors: $name is not a dependency in pyproject.toml" >&2; exit 1; }
  pins+=("$name==$version")
done
echo "[floors] installing ${pins[*]}"
# Exact versions; a dependency they need and the main venv lacks is added, nothing else changes.
"$FLOORS/bin/python" -m pip install -q --disable-pip-version-check "${pins[@]}"
conflicts="$("$FLOORS/bin/python" -m pip check 2>&1 | grep -iE "^($(IFS='|'; echo "${INSTALL[*]}" | tr '_' '-')) .*has requirement" || true)"
if [ -n "$conflicts" ]; then
  echo "$conflicts" >&2
  echo "[floors] the floors above do not agree with each other: raise the floors in pyproject.toml" >&2
  exit 1
fi

FLOOR_LIST="$floors" REUSED="${REUSED[*]}" "$FLOORS/bin/python" - <<'EOF'
import importlib.metadata as md, os, sys
from packaging.version import Version
reused = set(os.environ["REUSED"].split())
bad = []
for line in os.environ["FLOOR_LIST"].splitlines():
    name, floor = line.split()
    ran = md.version(name)
    note = " (reused from the main venv)" if name in reused else ""
    print(f"[floors] {name:<16} floor {floor:<10} ran {ran}{note}")
    if name not in reused and Version(ran) != Version(floor):
        bad.append(f"{name}: pyproject.toml says >={floor} but {ran} ran")
if bad:
    sys.exit("[floors] " + "; ".join(bad) + ": set each floor to a version this script installs and passes")
EOF
PYTHONPATH="$PWD" "$FLOORS/bin/python" -m pytest -q -p no:cacheprovider tests/test_text_llm.py tests/test_voting_paths.py "$@"
