#!/usr/bin/env bash
# Sets up .venv and runs the embedded default demo (configs/demo.py) on CPU.
# Extra arguments are config overrides, e.g. `bash scripts/demo.sh --config.warmstart.steps=100`.
set -euo pipefail
source "$(dirname "$0")/setup_env.sh" requirements.txt
workdir="${WORKDIR:-runs/demo}"
python -m score_jax.main --config=configs/demo.py --workdir="$workdir" "$@" || {
  status=$?
  # Every phase checkpoints (and saves on SIGTERM / Ctrl-C), so the same command picks up there.
  echo "The demo stopped (exit $status). Rerun the same command (bash scripts/demo.sh${*:+ $*})" \
       "to resume from its last checkpoint in $workdir." >&2
  exit "$status"
}
