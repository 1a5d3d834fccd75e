#!/usr/bin/env bash
# Copies the repository's HEAD commit to every worker, so that all hosts run the same code.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HELP="usage: ${SCRIPT_NAME} --name NAME --zone ZONE [--repo DIR] [--allow-dirty] [options]

Packs the committed tree of HEAD (git archive: no .venv, no runs/, no uncommitted edits), copies
it to every worker and unpacks it into ~/score_jax there, keeping ~/score_jax/.venv. Refuses
while a job is running on a worker (launch/stop.sh first).

Options:
  --repo DIR      the repository to send (default: the one holding this script)
  --allow-dirty   send HEAD even though tracked files have uncommitted changes (they are
                  NOT sent: commit them to run them)

${COMMON_HELP}"

REPO="$REPO_DIR"
ALLOW_DIRTY=0
# This script's own options (common_flag handles the shared ones); see parse_flags.
own_flag() {
  case "$1" in
    --repo | --repo=*) take_value "$@" && REPO="$VALUE" ;;
    --allow-dirty) ALLOW_DIRTY=1 CONSUMED=1 ;;
  esac
}
parse_flags own_flag "$@"
require_flags TPU_NAME:--name ZONE:--zone

# Reading the commit is safe in a dry run too: the commands below name it.
COMMIT="$(git -C "$REPO" rev-parse --verify HEAD 2>/dev/null)" ||
  die "${REPO} is not a git repository with a commit: sync.sh sends the committed HEAD."
if [[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]]; then
  ((ALLOW_DIRTY)) || die "tracked files in ${REPO} have uncommitted changes, which sync.sh would" \
    "not send. Commit them, or pass --allow-dirty to send HEAD (${COMMIT:0:12}) without them."
  note "warning: uncommitted changes in ${REPO} are not sent; the workers get ${COMMIT:0:12}."
fi
require_gcloud

TARBALL="${TMPDIR:-/tmp}/score_jax-${COMMIT}.tar.gz"
REMOTE_TARBALL="score_jax-${COMMIT}.tar.gz" # in the worker's home
# shellcheck disable=SC2088  # the tilde is for the worker's shell
STAGING='~/.score_jax_incoming'
OUTPUT="$(mktemp)"
trap 'rm -f "$OUTPUT"; ((DRY_RUN)) || rm -f "$TARBALL"' EXIT

run git -C "$REPO" archive --format=tar.gz "--output=${TARBALL}" "$COMMIT"

gcloud_common_flags
SCP=(gcloud compute tpus tpu-vm scp "$TARBALL" "${TPU_NAME}:${REMOTE_TARBALL}" "${GCLOUD_FLAGS[@]}"
  --worker=all)
((INTERNAL_IP == 0)) || SCP+=(--internal-ip)
run "${SCP[@]}"

tpu_ssh all "set -e; rm -rf ${STAGING}; mkdir -p ${STAGING};\
 tar -xzf ~/${REMOTE_TARBALL} -C ${STAGING}; rm -f ~/${REMOTE_TARBALL};\
 bash ${STAGING}/launch/worker.sh install-code ${STAGING} ${COMMIT}"
status=0
run_capture "$OUTPUT" "${SSH_CMD[@]}" || status=$?
((!DRY_RUN)) || exit 0

parse_worker_lines "$OUTPUT" score_jax-sync
failed=()
for ((w = 0; w < WORKER_COUNT; w++)); do
  line="${WORKER_LINE[w]:-}"
  if [[ "$(field result "$line")" == ok && "$(field commit "$line")" == "$COMMIT" ]]; then
    echo "worker ${w}: ${COMMIT:0:12}"
  else
    failed+=("$w")
    reason="no answer"
    [[ -z "$line" ]] || reason="${line#*| }"
    echo "worker ${w}: NOT synced: ${reason}"
  fi
done
if ((WORKER_COUNT == 0 || ${#failed[@]} || status)); then
  die "sync failed on worker(s) ${failed[*]:-?} (gcloud exit status ${status}); see the messages" \
    "above. All workers must run the same commit: fix and run sync.sh again."
fi
echo "Synced ${COMMIT:0:12} to all ${WORKER_COUNT} worker(s)." \
  "Next: launch/setup.sh --name ${TPU_NAME} --zone ${ZONE} (once per slice), then launch/run.sh." >&2
