#!/usr/bin/env bash
# Creates ./.venv (Python 3.11+) and installs a requirements file into it.
# Usage: source scripts/setup_env.sh requirements.txt
# Re-installs only when the requirements files change (a hash stamp in .venv).
set -euo pipefail
_req="${1:-requirements.txt}"
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$_root"
_py="${PYTHON:-python3}"
if ! "$_py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "score_jax needs Python >= 3.11; '$_py' is $("$_py" --version 2>&1). Set PYTHON=python3.11." >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$_py" -m venv .venv
# shellcheck disable=SC1091
source .venv/bin/activate
_stamp=".venv/.installed-$(basename "$_req")"
_hash="$(cat requirements*.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$_stamp" 2>/dev/null)" != "$_hash" ]; then
  echo "== installing $_req into .venv (first run takes a few minutes) =="
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -r "$_req"
  python -m pip install --quiet --no-deps -e .
  echo "$_hash" > "$_stamp"
fi
