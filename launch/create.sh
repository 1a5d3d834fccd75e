#!/usr/bin/env bash
# Requests a TPU slice as a queued resource and waits until it is ACTIVE.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HELP="usage: ${SCRIPT_NAME} --name NAME --zone ZONE --accelerator-type TYPE [options] [-- GCLOUD_FLAG...]

Creates the queued resource NAME (its TPU node is also called NAME) and waits until the slice is
ACTIVE. Flags after -- go to 'gcloud compute tpus queued-resources create' unchanged, e.g.
-- --service-account=SA --network=N --subnetwork=S --internal-ips --valid-until-duration=6h.

Options:
  --accelerator-type TYPE   v4-8, v4-32, v5litepod-8, v5litepod-16, v5p-8, v5p-16, v6e-8, ...
  --runtime-version V       TPU software version (default by generation: v4 and older
                            tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5,
                            v6e v2-alpha-tpuv6e)
  --spot                    Spot capacity: cheaper, can be preempted at any time
  --reserved                use your project's reservation
  --no-wait                 return once the request is queued
  --wait-only               do not create: wait for an existing request to become ACTIVE
  --timeout-minutes M       give up waiting after M minutes (default 60; the request stays queued)
  --poll-seconds S          seconds between state checks (default 30)

${COMMON_HELP}"

ACCELERATOR_TYPE=""
RUNTIME_VERSION=""
CAPACITY=""
WAIT=1
CREATE_REQUEST=1
TIMEOUT_MINUTES=60
POLL_SECONDS=30
EXTRA_FLAGS=()

# This script's own options (common_flag handles the shared ones); see parse_flags.
own_flag() {
  case "$1" in
    --accelerator-type | --accelerator-type=*) take_value "$@" && ACCELERATOR_TYPE="$VALUE" ;;
    --runtime-version | --runtime-version=*) take_value "$@" && RUNTIME_VERSION="$VALUE" ;;
    --timeout-minutes | --timeout-minutes=*) take_value "$@" && TIMEOUT_MINUTES="$VALUE" ;;
    --poll-seconds | --poll-seconds=*) take_value "$@" && POLL_SECONDS="$VALUE" ;;
    --spot | --reserved)
      [[ -z "$CAPACITY" || "$CAPACITY" == "$1" ]] || usage_error "--spot and --reserved exclude each other"
      CAPACITY="$1" CONSUMED=1
      ;;
    --no-wait) WAIT=0 CONSUMED=1 ;;
    --wait-only) CREATE_REQUEST=0 CONSUMED=1 ;;
    --)
      EXTRA_FLAGS+=("${@:2}")
      CONSUMED=$#
      ;;
  esac
}
parse_flags own_flag "$@"
require_flags TPU_NAME:--name ZONE:--zone ACCELERATOR_TYPE:--accelerator-type
[[ "$TIMEOUT_MINUTES" =~ ^[0-9]+$ ]] || usage_error "--timeout-minutes must be a whole number"
[[ "$POLL_SECONDS" =~ ^[0-9]+$ && "$POLL_SECONDS" -gt 0 ]] ||
  usage_error "--poll-seconds must be a positive whole number"

# The TPU software version to pair with an accelerator type (cloud.google.com/tpu/docs/runtimes).
default_runtime_version() {
  case "$1" in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

[[ "$ACCELERATOR_TYPE" =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] ||
  usage_error "--accelerator-type '${ACCELERATOR_TYPE}' is not a TPU type like v4-8, v5litepod-16 or v5p-16"
if [[ -z "$RUNTIME_VERSION" ]]; then
  RUNTIME_VERSION="$(default_runtime_version "$ACCELERATOR_TYPE")" ||
    usage_error "no default runtime version for '${ACCELERATOR_TYPE}': pass --runtime-version"
fi
require_gcloud

gcloud_common_flags
CREATE=(gcloud compute tpus queued-resources create "$TPU_NAME" "--node-id=${TPU_NAME}"
  "${GCLOUD_FLAGS[@]}" "--accelerator-type=${ACCELERATOR_TYPE}"
  "--runtime-version=${RUNTIME_VERSION}")
[[ -z "$CAPACITY" ]] || CREATE+=("$CAPACITY")
CREATE+=("${EXTRA_FLAGS[@]}")
DESCRIBE=(gcloud compute tpus queued-resources describe "$TPU_NAME" "${GCLOUD_FLAGS[@]}"
  "--format=value(state.state)")

((WAIT || CREATE_REQUEST)) || usage_error "--no-wait and --wait-only exclude each other"
((!CREATE_REQUEST)) || run "${CREATE[@]}"
if ((!WAIT)); then
  note "Queued. Check the state with: $(shell_join "${DESCRIBE[@]}")"
  exit 0
fi
if ((DRY_RUN)); then
  note "then, every ${POLL_SECONDS} s until the state is ACTIVE (at most ${TIMEOUT_MINUTES} min):"
  run "${DESCRIBE[@]}"
  exit 0
fi

deadline=$((SECONDS + TIMEOUT_MINUTES * 60))
previous=""
while true; do
  state="$("${DESCRIBE[@]}")" || die "could not describe queued resource ${TPU_NAME}."
  [[ "$state" == "$previous" ]] || echo "$(date +%H:%M:%S) ${TPU_NAME}: ${state}" >&2
  previous="$state"
  case "$state" in
    ACTIVE) break ;;
    FAILED | SUSPENDING | SUSPENDED)
      die "queued resource ${TPU_NAME} is ${state}. See why with:" \
        "gcloud compute tpus queued-resources describe ${TPU_NAME} --zone=${ZONE}; then" \
        "launch/delete.sh --name ${TPU_NAME} --zone ${ZONE} and create it again."
      ;;
  esac
  ((SECONDS < deadline)) ||
    die "${TPU_NAME} is still ${state} after ${TIMEOUT_MINUTES} min; the request stays queued." \
      "Wait again with the same command plus --wait-only, or withdraw it with launch/delete.sh."
  sleep "$POLL_SECONDS"
done
echo "${TPU_NAME} is ACTIVE (${ACCELERATOR_TYPE}, ${RUNTIME_VERSION})." \
  "Next: launch/sync.sh --name ${TPU_NAME} --zone ${ZONE}" >&2
