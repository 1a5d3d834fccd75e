#!/usr/bin/env bash
# Starts the score_jax job on every worker of the slice at once, after checking they all can.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HELP="usage: ${SCRIPT_NAME} --name NAME --zone ZONE --config FILE --workdir DIR [--config.KEY=VALUE...] [options] [-- PROGRAM_ARG...]

Runs, detached on every worker at once (multi-host JAX needs one process per worker):
  python -m score_jax.main --config=FILE --workdir=DIR [--config.KEY=VALUE ...] [PROGRAM_ARG ...]
First every worker checks that it is ready (same commit and packages as the others, .venv
present, config file present, no job running, TPU free, workdir writable and, on a multi-host
slice, shared); nothing starts unless all pass. Each worker logs to
~/score_jax_job/logs/RUN_ID.log. Then check.sh reports which workers are running.

Resuming: run it again with the same --workdir: the program continues from the last checkpoint
there (after a preemption: create.sh, sync.sh, setup.sh, then this).

Options:
  --config FILE           config file, relative to the repository root (e.g. configs/demo.py)
  --workdir DIR           absolute path, the same on every worker; on a multi-host slice a
                          shared one such as the bucket mount from setup.sh --bucket
                          (/mnt/gcs/BUCKET/runs/NAME)
  --config.KEY=VALUE      config override, passed on unchanged (quote values with spaces)
  --env NAME=VALUE        environment variable for the program (repeatable), e.g.
                          --env LIBTPU_INIT_ARGS=--xla_tpu_enable_latency_hiding_scheduler=true
  --allow-local-workdir   allow a workdir on each worker's own disk on a multi-host slice
                          (checkpoints then cannot be restored: for smoke tests only)
  --check-after S         seconds to wait before check.sh (default 30; 0 skips the check)

${COMMON_HELP}"

CONFIG=""
WORKDIR=""
ALLOW_LOCAL=0
CHECK_AFTER=30
ENV_ARGS=()
PROGRAM_ARGS=()
# This script's own options (common_flag handles the shared ones); see parse_flags.
own_flag() {
  case "$1" in
    --config.*=*) PROGRAM_ARGS+=("$1") CONSUMED=1 ;;
    --config.*) usage_error "write config overrides as one word, --config.KEY=VALUE (got '$1')" ;;
    --config | --config=*) take_value "$@" && CONFIG="$VALUE" ;;
    --workdir | --workdir=*) take_value "$@" && WORKDIR="$VALUE" ;;
    --env | --env=*)
      take_value "$@"
      [[ "$VALUE" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || usage_error "--env needs NAME=VALUE (got '${VALUE}')"
      ENV_ARGS+=("--env=${VALUE}")
      ;;
    --allow-local-workdir) ALLOW_LOCAL=1 CONSUMED=1 ;;
    --check-after | --check-after=*) take_value "$@" && CHECK_AFTER="$VALUE" ;;
    --)
      PROGRAM_ARGS+=("${@:2}")
      CONSUMED=$#
      ;;
  esac
}
parse_flags own_flag "$@"
require_flags TPU_NAME:--name ZONE:--zone CONFIG:--config WORKDIR:--workdir
case "$WORKDIR" in
  gs://*)
    bucket_path="${WORKDIR#gs://}"
    usage_error "--workdir ${WORKDIR}: score_jax writes its workdir through the local file" \
      "system. Mount the bucket on every worker (launch/setup.sh --bucket=${bucket_path%%/*})" \
      "and pass --workdir=/mnt/gcs/${bucket_path}"
    ;;
  /*) ;;
  *) usage_error "--workdir must be an absolute path on the workers (got '${WORKDIR}': a" \
    "relative one would land in the code directory, which every sync.sh replaces)" ;;
esac
[[ "$CHECK_AFTER" =~ ^[0-9]+$ ]] || usage_error "--check-after must be a whole number of seconds"
require_gcloud

OUTPUT="$(mktemp)"
trap 'rm -f "$OUTPUT"' EXIT
RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"

# 1. Every worker must be ready, or nothing starts: a job missing one host hangs the others.
preflight_args=(preflight "--config=${CONFIG}" "--workdir=${WORKDIR}")
((!ALLOW_LOCAL)) || preflight_args+=(--allow-local-workdir)
tpu_ssh all "$(remote_worker_command "${preflight_args[@]}")"
status=0
run_capture "$OUTPUT" "${SSH_CMD[@]}" || status=$?
if ((!DRY_RUN)); then
  parse_worker_lines "$OUTPUT" score_jax-preflight
  problems=()
  for ((w = 0; w < WORKER_COUNT; w++)); do
    line="${WORKER_LINE[w]:-}"
    if [[ -z "$line" ]]; then
      problems+=("worker ${w}: no answer (ssh failed)")
    elif [[ "$(field result "$line")" != ok ]]; then
      problems+=("worker ${w}: ${line#*| }")
    fi
  done
  for key in commit deps; do
    values="$(for line in "${WORKER_LINE[@]}"; do printf '%s\n' "$(field "$key" "$line")"; done |
      sort -u | paste -sd' ' -)"
    fix="run launch/sync.sh"
    [[ "$key" == commit ]] || fix="run launch/setup.sh"
    [[ "$values" != *" "* ]] || problems+=("the workers differ in ${key} (${values}): ${fix}")
  done
  ((WORKER_COUNT > 0)) || problems+=("no worker answered (gcloud exit status ${status})")
  if ((${#problems[@]})); then
    printf '  - %s\n' "${problems[@]}" >&2
    die "not starting: every worker must be ready (above). Nothing was started."
  fi
  echo "All ${WORKER_COUNT} worker(s) ready on commit $(field commit "${WORKER_LINE[0]}")." >&2
fi

# 2. Start on all workers at once; each returns as soon as its job is detached.
tpu_ssh all "$(remote_worker_command start "--run-id=${RUN_ID}" "--config=${CONFIG}" \
  "--workdir=${WORKDIR}" "${ENV_ARGS[@]}" -- "${PROGRAM_ARGS[@]}")"
status=0
run_capture "$OUTPUT" "${SSH_CMD[@]}" || status=$?
if ((!DRY_RUN)); then
  parse_worker_lines "$OUTPUT" score_jax-started
  for ((w = 0; w < WORKER_COUNT; w++)); do
    line="${WORKER_LINE[w]:-}"
    if [[ -z "$line" ]]; then
      echo "worker ${w}: NOT started: no answer"
    elif [[ "$(field result "$line")" != ok ]]; then
      echo "worker ${w}: NOT started: ${line#*| }"
    else
      echo "worker ${w}: started, pid $(field pid "$line"), ${line#*| }"
    fi
  done
  ((status == 0)) || echo "warning: gcloud exit status ${status} while starting; see check.sh below." >&2
fi

logs_hint="launch/logs.sh $(shell_join --name "$TPU_NAME" --zone "$ZONE")"
# 3. Did every worker really start?
if ((CHECK_AFTER > 0)); then
  check=(bash "${LAUNCH_DIR}/check.sh" --name "$TPU_NAME" --zone "$ZONE" "--run=${RUN_ID}")
  [[ -z "$PROJECT" ]] || check+=("--project=${PROJECT}")
  ((!INTERNAL_IP)) || check+=(--internal-ip)
  ((!DRY_RUN)) || check+=(--dry-run)
  note "run ${RUN_ID}: checking the workers in ${CHECK_AFTER} s"
  ((DRY_RUN)) || sleep "$CHECK_AFTER"
  if ! "${check[@]}"; then
    note "Logs: ${logs_hint} --no-follow"
    exit 1
  fi
fi
note "run ${RUN_ID} started. Follow the logs: ${logs_hint}"
