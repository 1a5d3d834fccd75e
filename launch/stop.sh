#!/usr/bin/env bash
# Stops the job on every worker: SIGTERM (the program saves a checkpoint), then SIGKILL.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HELP="usage: ${SCRIPT_NAME} --name NAME --zone ZONE [--grace SECONDS] [--force] [options]

Sends SIGTERM to the job's process group on every worker; score_jax then saves a checkpoint at
the next step boundary and exits. Whatever is still alive after the grace period gets SIGKILL.

Options:
  --grace SECONDS   how long to wait for the checkpoint before SIGKILL (default 120)
  --force           also kill any other process holding the TPU devices and remove
                    /tmp/libtpu_lockfile (for 'TPU in use' errors left by an earlier crash)

${COMMON_HELP}"

GRACE=120
FORCE=0
# This script's own options (common_flag handles the shared ones); see parse_flags.
own_flag() {
  case "$1" in
    --grace | --grace=*) take_value "$@" && GRACE="$VALUE" ;;
    --force) FORCE=1 CONSUMED=1 ;;
  esac
}
parse_flags own_flag "$@"
require_flags TPU_NAME:--name ZONE:--zone
[[ "$GRACE" =~ ^[0-9]+$ ]] || usage_error "--grace must be a whole number of seconds"
require_gcloud

stop_args=(stop "--grace=${GRACE}")
((!FORCE)) || stop_args+=(--force)
tpu_ssh all "$(remote_worker_command "${stop_args[@]}")"
run "${SSH_CMD[@]}"
