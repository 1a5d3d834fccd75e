#!/usr/bin/env bash
# Sets up .venv and runs the embedded default demo (configs/demo.py) on CPU.
# Extra arguments are config overrides, e.g. `bash scripts/demo.sh --config.warmstart.steps=100`.
set -euo pipefail
source "$(dirname "$0")/setup_env.sh" requirements.txt
python -m score_jax.main --config=configs/demo.py --workdir="${WORKDIR:-runs/demo}" "$@"
