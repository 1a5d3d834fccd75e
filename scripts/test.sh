#!/usr/bin/env bash
# Sets up .venv with the test requirements and runs the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/model -x`.
set -euo pipefail
source "$(dirname "$0")/setup_env.sh" requirements-test.txt
export JAX_PLATFORMS=cpu
# JAX's persistent compilation cache, shared by the pytest workers and the subprocesses the
# tests start (the CLI runs of the resume and multi-host tests compile the same small
# programs again): a fresh directory per suite run unless you name one to keep.
if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
  JAX_COMPILATION_CACHE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/score_jax_xla_cache.XXXXXX")"
  trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
fi
export JAX_COMPILATION_CACHE_DIR
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
# pytest exits 5 when it collects no test; that is a failure here, as is any other non-zero code.
python -m pytest -n 2 --dist loadfile --durations=15 "$@"
