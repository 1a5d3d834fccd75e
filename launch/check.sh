#!/usr/bin/env bash
# Reports, worker by worker, whether the job is running, and names the workers where it is not.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HELP="usage: ${SCRIPT_NAME} --name NAME --zone ZONE [--run RUN_ID] [options]

Asks every worker for its job's state and prints one row per worker:
  running        the job's processes are alive and its log has the start line
  exited rc=N    the program ended with status N (0: finished)
  died           the log has the start line but no exit line and no process is left
                 (SIGKILL, out of memory, reboot)
  not-started    no process and no start line for the worker's last run
  no-start-line  processes are alive but the log lacks the start line
  stale          the worker's last run is not the newest one (it missed a run.sh)
  no answer      ssh to the worker failed or it printed nothing
Exit status 0 when every worker is running (or exited with 0), 1 otherwise.

Options:
  --run RUN_ID   the run every worker must be on (default: the newest run any worker reports)

${COMMON_HELP}"

EXPECTED_RUN=""
# This script's own options (common_flag handles the shared ones); see parse_flags.
own_flag() {
  case "$1" in
    --run | --run=*) take_value "$@" && EXPECTED_RUN="$VALUE" ;;
  esac
}
parse_flags own_flag "$@"
require_flags TPU_NAME:--name ZONE:--zone
require_gcloud

OUTPUT="$(mktemp)"
trap 'rm -f "$OUTPUT"' EXIT
tpu_ssh all "$(remote_worker_command status)"
status=0
run_capture "$OUTPUT" "${SSH_CMD[@]}" || status=$?
((!DRY_RUN)) || exit 0

parse_worker_lines "$OUTPUT" score_jax-status
((WORKER_COUNT > 0)) || die "no worker answered (gcloud exit status ${status}). Is the slice up?" \
  "See: gcloud compute tpus tpu-vm describe ${TPU_NAME} --zone=${ZONE}"

# Run ids start with a UTC timestamp, so the newest sorts last.
newest="$EXPECTED_RUN"
if [[ -z "$newest" ]]; then
  newest="$(for line in "${WORKER_LINE[@]}"; do field run "$line"; echo; done | grep -v '^none$' |
    sort | tail -n 1 || true)"
fi

bad=()
printf '%-7s %-14s %-26s %-8s %s\n' worker state run pid "last log line"
for ((w = 0; w < WORKER_COUNT; w++)); do
  line="${WORKER_LINE[w]:-}"
  if [[ -z "$line" ]]; then
    state="no answer" run=- pid=- last="(ssh failed or printed nothing)"
  else
    state="$(field state "$line")" run="$(field run "$line")" pid="$(field pid "$line")"
    last="${line#*| }"
    [[ "$state" != exited ]] || state="exited rc=$(field rc "$line")"
    [[ -z "$newest" || "$run" == "$newest" || "$state" == not-started ]] || state=stale
  fi
  case "$state" in
    running | "exited rc=0") ;;
    *) bad+=("${w} (${state})") ;;
  esac
  printf '%-7s %-14s %-26s %-8s %s\n' "$w" "$state" "$run" "$pid" "$last"
done

if ((${#bad[@]})); then
  echo >&2
  echo "NOT RUNNING on ${#bad[@]} of ${WORKER_COUNT} worker(s): ${bad[*]}." >&2
  echo "A multi-host job needs every worker: the others wait in their collectives until they" \
    "time out. Read the logs (launch/logs.sh --name ${TPU_NAME} --zone ${ZONE} --no-follow)," \
    "then launch/stop.sh and launch/run.sh again with the same --workdir (it resumes from the" \
    "last checkpoint)." >&2
  exit 1
fi
echo "All ${WORKER_COUNT} worker(s) on run ${newest}: OK." >&2
