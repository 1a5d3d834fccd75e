#!/usr/bin/env bash
# Sets up .venv with the test requirements and runs the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/model -x`.
set -euo pipefail
source "$(dirname "$0")/setup_env.sh" requirements-test.txt
export JAX_PLATFORMS=cpu
# pytest exits 5 when it collects no test; that is a failure here, as is any other non-zero code.
python -m pytest -n 2 --dist loadfile --durations=15 "$@"
