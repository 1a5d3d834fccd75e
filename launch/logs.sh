#!/usr/bin/env bash
# Shows the job's log from every worker, each line prefixed with its worker id.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HELP="usage: ${SCRIPT_NAME} --name NAME --zone ZONE [--lines N] [--no-follow] [--worker W] [options]

Tails ~/score_jax_job/current.log (the latest run's log) on the workers, prefixing each line with
'[worker W]'. Follows the logs until Ctrl-C unless --no-follow.

Options:
  --lines N     lines of history per worker (default 20)
  --no-follow   print the last lines and return
  --worker W    one worker only (default: all)

${COMMON_HELP}"

LINES_BACK=20
FOLLOW=1
WORKER=all
# This script's own options (common_flag handles the shared ones); see parse_flags.
own_flag() {
  case "$1" in
    --lines | --lines=*) take_value "$@" && LINES_BACK="$VALUE" ;;
    --worker | --worker=*) take_value "$@" && WORKER="$VALUE" ;;
    --no-follow) FOLLOW=0 CONSUMED=1 ;;
  esac
}
parse_flags own_flag "$@"
require_flags TPU_NAME:--name ZONE:--zone
[[ "$LINES_BACK" =~ ^[0-9]+$ ]] || usage_error "--lines must be a whole number"
[[ "$WORKER" == all || "$WORKER" =~ ^[0-9]+$ ]] || usage_error "--worker must be a number or 'all'"
require_gcloud

logs_args=(logs "--lines=${LINES_BACK}")
((!FOLLOW)) || logs_args+=(--follow)
tpu_ssh "$WORKER" "$(remote_worker_command "${logs_args[@]}")"
run "${SSH_CMD[@]}"
