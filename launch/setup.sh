#!/usr/bin/env bash
# Installs score_jax's TPU environment on every worker and checks that JAX sees the whole slice.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HELP="usage: ${SCRIPT_NAME} --name NAME --zone ZONE [--bucket BUCKET [--mount-dir DIR]] [options]

Run after launch/sync.sh. On every worker at once: finds or apt-installs Python >= 3.11, creates
~/score_jax/.venv with requirements-tpu.txt (scripts/setup_env.sh: reinstalls only when the
requirements change), optionally mounts a Cloud Storage bucket with gcsfuse, then runs
  python -c 'import jax; jax.distributed.initialize(); print(jax.device_count(), ...)'
on all workers together and checks that every worker answered, that JAX counts one process per
worker, and that the global device count is the sum of the local ones.

Options:
  --bucket BUCKET   mount gs://BUCKET on every worker (default at /mnt/gcs/BUCKET): the shared
                    workdir that multi-host checkpoints need. The TPU's service account needs
                    read/write access to it (roles/storage.objectUser).
  --mount-dir DIR   where to mount the bucket (an absolute path, the same on every worker)
  --verify-only     skip the installation; only run the device check

${COMMON_HELP}"

BUCKET=""
MOUNT_DIR=""
VERIFY_ONLY=0
# This script's own options (common_flag handles the shared ones); see parse_flags.
own_flag() {
  case "$1" in
    --bucket | --bucket=*) take_value "$@" && BUCKET="$VALUE" ;;
    --mount-dir | --mount-dir=*) take_value "$@" && MOUNT_DIR="$VALUE" ;;
    --verify-only) VERIFY_ONLY=1 CONSUMED=1 ;;
  esac
}
parse_flags own_flag "$@"
require_flags TPU_NAME:--name ZONE:--zone
BUCKET="${BUCKET#gs://}"
BUCKET="${BUCKET%/}"
[[ -z "$BUCKET" || "$BUCKET" =~ ^[a-z0-9][a-z0-9._-]*[a-z0-9]$ ]] ||
  usage_error "--bucket '${BUCKET}' is not a bucket name (write it as my-bucket or gs://my-bucket)"
[[ -z "$MOUNT_DIR" || -n "$BUCKET" ]] || usage_error "--mount-dir needs --bucket"
[[ -z "$MOUNT_DIR" || "$MOUNT_DIR" == /* ]] || usage_error "--mount-dir must be an absolute path"
((!VERIFY_ONLY)) || [[ -z "$BUCKET" ]] || usage_error "--verify-only installs nothing: drop --bucket"
require_gcloud

OUTPUT="$(mktemp)"
trap 'rm -f "$OUTPUT"' EXIT

# Prints each worker's parsed line and sets MISSING to the workers that printed none.
report_workers() {
  local w line
  MISSING=()
  for ((w = 0; w < WORKER_COUNT; w++)); do
    line="${WORKER_LINE[w]:-}"
    if [[ -z "$line" ]]; then
      MISSING+=("$w")
      echo "worker ${w}: no answer"
    else
      echo "worker ${w}: ${line#* }"
    fi
  done
}

if ((!VERIFY_ONLY)); then
  setup_args=(setup)
  [[ -z "$BUCKET" ]] || setup_args+=("--bucket=${BUCKET}")
  [[ -z "$MOUNT_DIR" ]] || setup_args+=("--mount-dir=${MOUNT_DIR}")
  tpu_ssh all "$(remote_worker_command "${setup_args[@]}")"
  status=0
  run_capture "$OUTPUT" "${SSH_CMD[@]}" || status=$?
  if ((!DRY_RUN)); then
    parse_worker_lines "$OUTPUT" score_jax-setup
    report_workers
    fingerprints="$(for line in "${WORKER_LINE[@]}"; do field deps "$line"; echo; done | sort -u)"
    if ((status || WORKER_COUNT == 0 || ${#MISSING[@]})); then
      die "setup failed on worker(s) ${MISSING[*]:-?} (gcloud exit status ${status}); see the" \
        "messages above, fix, and run setup.sh again (finished steps are skipped)."
    fi
    [[ "$(wc -l <<<"$fingerprints")" == 1 ]] ||
      die "the workers ended up with different packages (pip freeze differs); run setup.sh again."
  fi
fi

tpu_ssh all "$(remote_worker_command devices)"
status=0
run_capture "$OUTPUT" "${SSH_CMD[@]}" || status=$?
((!DRY_RUN)) || exit 0

parse_worker_lines "$OUTPUT" score_jax-devices
report_workers
problems=()
((status == 0)) || problems+=("gcloud exit status ${status}")
((WORKER_COUNT > 0)) || problems+=("no worker printed its devices")
((${#MISSING[@]} == 0)) || problems+=("worker(s) ${MISSING[*]} did not answer")
local_sum=0
for line in "${WORKER_LINE[@]}"; do
  [[ "$(field platform "$line")" == tpu ]] ||
    problems+=("worker $(field worker "$line") runs JAX on '$(field platform "$line")', not tpu")
  [[ "$(field processes "$line")" == "$WORKER_COUNT" ]] ||
    problems+=("worker $(field worker "$line") counts $(field processes "$line") JAX processes, not ${WORKER_COUNT}")
  count="$(field local "$line")"
  [[ "$count" =~ ^[0-9]+$ ]] || count=0
  local_sum=$((local_sum + count))
done
for line in "${WORKER_LINE[@]}"; do
  [[ "$(field global "$line")" == "$local_sum" ]] ||
    problems+=("worker $(field worker "$line") sees $(field global "$line") devices in all, the workers hold ${local_sum}")
done
if ((${#problems[@]})); then
  printf '  - %s\n' "${problems[@]}" >&2
  die "the slice is not usable as one JAX system (above). A worker that did not answer may still be" \
    "booting: run 'launch/setup.sh --verify-only' again; if it persists, delete and recreate the slice."
fi
echo "OK: ${WORKER_COUNT} worker(s), ${local_sum} TPU devices, one JAX process per worker." >&2
[[ -z "$BUCKET" ]] ||
  echo "Workdir for run.sh: --workdir=${MOUNT_DIR:-/mnt/gcs/${BUCKET}}/runs/<run-name>" >&2
