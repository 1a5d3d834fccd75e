#!/usr/bin/env bash
# Runs ON each Cloud TPU VM worker; launch/*.sh call it through
# `gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...`. One subcommand per step, each
# printing one line per worker, 'score_jax-<step> worker=W workers=N key=value ... | text', that
# the local script parses (gcloud interleaves the workers' output, so every line names its worker).
#
#   install-code STAGING_DIR COMMIT      (sync.sh)   replace ~/score_jax with STAGING_DIR, keep .venv
#   setup [--bucket=B] [--mount-dir=D]   (setup.sh)  worker_setup.sh: Python >= 3.11, .venv from
#                                                    requirements-tpu.txt, gs://B mounted at D
#   devices                              (setup.sh)  JAX's view of the slice from this worker
#   preflight --config=C --workdir=W [--allow-local-workdir]          (run.sh)
#   start --run-id=R --config=C --workdir=W [--env=K=V]... [-- ARG...] (run.sh)
#   status                               (check.sh)  is this worker's job running?
#   logs [--lines=N] [--follow]          (logs.sh)
#   stop [--grace=SECONDS] [--force]     (stop.sh)
#
# Job state lives outside the code (sync replaces the code): ~/score_jax_job/{run_id,pid,logs/}.
set -euo pipefail

CODE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INSTALL_DIR="${HOME}/score_jax"
JOB_DIR="${HOME}/score_jax_job"
METADATA_URL="http://metadata.google.internal/computeMetadata/v1/instance/attributes"
# The job wrapper's first and last lines in the log; `status` (check.sh) looks for them.
START_MARK="score_jax job start:"
EXIT_MARK="score_jax job exit:"

fail() {
  echo "worker.sh ($(hostname)): error: $*" >&2
  exit 1
}

# --- who am I: the TPU metadata server -----------------------------------------------------

metadata() {
  curl -sf --max-time 10 -H 'Metadata-Flavor: Google' "${METADATA_URL}/$1"
}

# Sets WORKER_ID (0-based) and WORKER_COUNT (hosts in the slice), as JAX itself reads them.
identify() {
  local endpoints
  WORKER_ID="$(metadata agent-worker-number)" ||
    fail "cannot read agent-worker-number from the metadata server; worker.sh runs on Cloud TPU VMs."
  endpoints="$(metadata worker-network-endpoints)" ||
    fail "cannot read worker-network-endpoints from the metadata server."
  local -a hosts
  IFS=, read -r -a hosts <<<"$endpoints"
  WORKER_COUNT="${#hosts[@]}"
}

# report STEP FIELD... ['| text']: this worker's machine-readable line for STEP.
report() {
  local step="$1"
  shift
  echo "score_jax-${step} worker=${WORKER_ID} workers=${WORKER_COUNT} $*"
}

commit() {
  cat "${CODE_DIR}/.commit" 2>/dev/null || echo none
}

# A fingerprint of the installed packages: all workers must run the same environment.
deps_fingerprint() {
  local python="${CODE_DIR}/.venv/bin/python"
  if [[ -x "$python" ]]; then
    "$python" -m pip freeze --all 2>/dev/null | sha256sum | cut -c1-12
  else
    echo none
  fi
}

# --- the job's process group --------------------------------------------------------------

job_pgid() {
  cat "${JOB_DIR}/pid" 2>/dev/null || true
}

current_run() {
  cat "${JOB_DIR}/run_id" 2>/dev/null || echo none
}

# True when process group $1 has a live (non-zombie) member that is part of a score_jax job (the
# wrapper or the program), so a pid file left from before a reboot never names someone else's
# processes.
group_alive() {
  [[ "$1" =~ ^[0-9]+$ ]] || return 1
  # -ww: without it ps cuts args to 80 columns when piped, hiding the match below on long paths.
  ps -ww -e -o pgid=,stat=,args= | awk -v g="$1" '
    $1 == g && $2 !~ /^Z/ && /launch\/worker\.sh _job|score_jax\.main/ { found = 1 }
    END { exit !found }'
}

job_alive() {
  group_alive "$(job_pgid)"
}

# PIDs of processes holding the TPU device files (/dev/accel* on v4, /dev/vfio/* on v5e/v5p):
# a leftover process there makes the next job fail with "TPU in use".
tpu_holders() {
  local -a devices
  shopt -s nullglob
  devices=(/dev/accel* /dev/vfio/[0-9]*)
  shopt -u nullglob
  ((${#devices[@]})) || return 0
  local -a as_root=()
  ! sudo -n true 2>/dev/null || as_root=(sudo -n)
  "${as_root[@]}" fuser "${devices[@]}" 2>/dev/null | tr -s ' ' '\n' | sed '/^$/d' | sort -u |
    paste -sd, - || true
}

# --- install-code (sync.sh) -----------------------------------------------------------------

cmd_install_code() {
  (($# == 2)) || fail "usage: worker.sh install-code STAGING_DIR COMMIT"
  local staging="$1" new_commit="$2"
  identify
  [[ -f "${staging}/launch/worker.sh" ]] || fail "${staging} holds no score_jax code."
  if job_alive; then
    rm -rf "$staging"
    report sync "result=refused | a job (run $(current_run)) is running here; launch/stop.sh first"
    exit 1
  fi
  mkdir -p "$INSTALL_DIR"
  # Everything but the virtualenv goes, so files deleted in the new commit do not linger.
  find "$INSTALL_DIR" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
  cp -a "${staging}/." "${INSTALL_DIR}/"
  rm -rf "$staging"
  echo "$new_commit" >"${INSTALL_DIR}/.commit"
  report sync "commit=${new_commit} result=ok"
}

# --- setup (setup.sh) -------------------------------------------------------------------------

cmd_setup() {
  local -a install_args=()
  local mounted=none
  while (($#)); do
    case "$1" in
      --bucket=*)
        install_args+=("$1")
        [[ "$mounted" != none ]] || mounted="/mnt/gcs/${1#*=}"
        ;;
      --mount-dir=*)
        install_args+=("$1")
        mounted="${1#*=}"
        ;;
      *) fail "setup: unknown argument '$1'" ;;
    esac
    shift
  done
  identify
  # The installation's own output is progress for the user (stderr), not a protocol line.
  bash "${CODE_DIR}/launch/worker_setup.sh" "${install_args[@]}" >&2
  report setup "python=$("${CODE_DIR}/.venv/bin/python" -c 'import platform; print(platform.python_version())')" \
    "deps=$(deps_fingerprint) mount=${mounted} result=ok"
}

# --- devices (setup.sh) ---------------------------------------------------------------------

# All workers run this at once: multi-host JAX initialises only when every host joins.
DEVICES_PY='
import sys
import jax
worker, workers = sys.argv[1], int(sys.argv[2])
if workers > 1:
  jax.distributed.initialize()
print(f"score_jax-devices worker={worker} workers={workers} process={jax.process_index()} "
      f"processes={jax.process_count()} global={jax.device_count()} "
      f"local={jax.local_device_count()} platform={jax.devices()[0].platform}", flush=True)
'

cmd_devices() {
  identify
  local python="${CODE_DIR}/.venv/bin/python"
  [[ -x "$python" ]] || fail "no ${python}: run launch/setup.sh (without --verify-only) first."
  # jax.distributed.initialize gives up after 300 s when a worker never joins; bound it anyway.
  timeout 900 "$python" -c "$DEVICES_PY" "$WORKER_ID" "$WORKER_COUNT"
}

# --- preflight and start (run.sh) ---------------------------------------------------------------

# Filesystems that live on one worker's own disk (names as `stat -f -c %T` prints them).
is_local_filesystem() {
  case "$1" in
    ext2/ext3 | ext4 | xfs | btrfs | tmpfs | overlayfs | overlay | zfs | squashfs) return 0 ;;
    *) return 1 ;;
  esac
}

cmd_preflight() {
  local config="" workdir="" allow_local=0
  while (($#)); do
    case "$1" in
      --config=*) config="${1#*=}" ;;
      --workdir=*) workdir="${1#*=}" ;;
      --allow-local-workdir) allow_local=1 ;;
      *) fail "preflight: unknown argument '$1'" ;;
    esac
    shift
  done
  identify
  local -a problems=()
  [[ -x "${CODE_DIR}/.venv/bin/python" ]] || problems+=("no .venv here: run launch/setup.sh")
  [[ -f "${CODE_DIR}/${config}" ]] ||
    problems+=("config '${config}' not in ${CODE_DIR} (paths are relative to the repository root; sync.sh copies committed files)")
  ! job_alive || problems+=("a job (run $(current_run)) is already running: launch/stop.sh first")
  local holders
  holders="$(tpu_holders)"
  [[ -z "$holders" ]] || problems+=("the TPU is held by other processes (pids ${holders}): launch/stop.sh --force frees it")
  local filesystem=unknown probe="${workdir}/.score_jax_probe_${WORKER_ID}"
  if mkdir -p "$workdir" 2>/dev/null && : >"$probe" 2>/dev/null; then
    rm -f "$probe"
    filesystem="$(stat -f -c %T "$workdir")"
    if ((WORKER_COUNT > 1 && !allow_local)) && is_local_filesystem "$filesystem"; then
      problems+=("workdir ${workdir} is on this worker's own disk (${filesystem}), but ${WORKER_COUNT} workers must share one workdir for checkpoints: mount a bucket (launch/setup.sh --bucket=B) and use --workdir=/mnt/gcs/B/...")
    fi
  else
    problems+=("cannot write to workdir ${workdir}")
  fi
  local result=ok text=""
  if ((${#problems[@]})); then
    result=fail
    text="$(printf '%s; ' "${problems[@]}")"
  fi
  report preflight "commit=$(commit) deps=$(deps_fingerprint) fs=${filesystem} result=${result} | ${text%; }"
}

cmd_start() {
  local run_id="" config="" workdir=""
  local -a env_args=(PYTHONUNBUFFERED=1)
  while (($#)); do
    case "$1" in
      --run-id=*) run_id="${1#*=}" ;;
      --config=*) config="${1#*=}" ;;
      --workdir=*) workdir="${1#*=}" ;;
      --env=*)
        [[ "${1#*=}" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || fail "start: '$1' is not --env=NAME=VALUE"
        env_args+=("${1#*=}")
        ;;
      --)
        shift
        break
        ;;
      *) fail "start: unknown argument '$1'" ;;
    esac
    shift
  done
  [[ "$run_id" =~ ^[A-Za-z0-9._-]+$ && -n "$config" && -n "$workdir" ]] ||
    fail "start needs --run-id, --config and --workdir."
  identify
  if job_alive; then
    report started "run=${run_id} result=refused | run $(current_run) is still running here"
    exit 1
  fi
  mkdir -p "${JOB_DIR}/logs"
  local log="${JOB_DIR}/logs/${run_id}.log"
  rm -f "${JOB_DIR}/pid"
  echo "$run_id" >"${JOB_DIR}/run_id"
  ln -sfn "logs/${run_id}.log" "${JOB_DIR}/current.log"
  cd "$CODE_DIR"
  # setsid + nohup + no inherited descriptors: the job outlives this ssh session, and the ssh
  # command returns at once instead of waiting on the job's output.
  setsid nohup bash "${CODE_DIR}/launch/worker.sh" _job "$run_id" "$log" \
    env "${env_args[@]}" "${CODE_DIR}/.venv/bin/python" -m score_jax.main \
    "--config=${config}" "--workdir=${workdir}" "$@" </dev/null >/dev/null 2>&1 &
  local tries
  for ((tries = 0; tries < 100; tries++)); do
    [[ ! -s "${JOB_DIR}/pid" ]] || break
    sleep 0.1
  done
  report started "run=${run_id} pid=$(job_pgid) result=ok | log ${log}"
}

# Internal: the wrapper that start runs detached. It leads its own session, so its pid is the
# job's process group, which stop signals as a whole.
cmd_job() {
  local run_id="$1" log="$2"
  shift 2
  identify
  exec >>"$log" 2>&1
  echo "$$" >"${JOB_DIR}/pid"
  echo "${START_MARK} run=${run_id} worker=${WORKER_ID}/${WORKER_COUNT} host=$(hostname)" \
    "commit=$(commit) pid=$$ time=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "score_jax job command: $(printf '%q ' "$@")"
  # stop.sh signals the whole group: the program saves a checkpoint and exits; the wrapper
  # waits for it (the trap runs after the program ends) and records its exit status.
  trap 'echo "score_jax job: the job was sent SIGTERM (stop.sh or a preemption)"' TERM
  local status=0
  "$@" || status=$?
  echo "${EXIT_MARK} run=${run_id} rc=${status} time=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  exit "$status"
}

# --- status, logs, stop -----------------------------------------------------------------------

cmd_status() {
  identify
  local run log pgid state rc_field="" last=""
  run="$(current_run)"
  if [[ "$run" == none ]]; then
    report status "run=none state=not-started pid=none commit=$(commit) | no job was started here"
    return 0
  fi
  log="${JOB_DIR}/logs/${run}.log"
  pgid="$(job_pgid)"
  local started=0 exit_line=""
  if grep -q "^${START_MARK} run=${run} " "$log" 2>/dev/null; then
    started=1
  fi
  exit_line="$(grep "^${EXIT_MARK} run=${run} " "$log" 2>/dev/null | tail -n 1 || true)"
  if group_alive "$pgid"; then
    state=running
    ((started)) || state=no-start-line
  elif [[ -n "$exit_line" ]]; then
    state=exited
    rc_field=" rc=$(sed -n 's/.* rc=\([0-9]*\).*/\1/p' <<<"$exit_line")"
  elif ((started)); then
    state=died # killed without a chance to record its status: SIGKILL, OOM, reboot.
  else
    state=not-started
  fi
  last="$(grep -v '^score_jax job' "$log" 2>/dev/null | tail -n 1 | tr -d '\r' | cut -c1-160 || true)"
  report status "run=${run} state=${state}${rc_field} pid=${pgid:-none} commit=$(commit) | ${last}"
}

cmd_logs() {
  local lines=50 follow=0
  while (($#)); do
    case "$1" in
      --lines=*) lines="${1#*=}" ;;
      --follow) follow=1 ;;
      *) fail "logs: unknown argument '$1'" ;;
    esac
    shift
  done
  identify
  local log="${JOB_DIR}/current.log" prefix="[worker ${WORKER_ID}] "
  if [[ ! -e "$log" ]]; then
    echo "${prefix}no log: no job was started on this worker"
    return 0
  fi
  if ((follow)); then
    # -F follows current.log to the next run's file when run.sh starts a new run.
    tail -n "$lines" -F "$log" 2>/dev/null | sed -u "s/^/${prefix}/"
  else
    tail -n "$lines" "$log" | sed "s/^/${prefix}/"
  fi
}

cmd_stop() {
  local grace=120 force=0
  while (($#)); do
    case "$1" in
      --grace=*) grace="${1#*=}" ;;
      --force) force=1 ;;
      *) fail "stop: unknown argument '$1'" ;;
    esac
    shift
  done
  [[ "$grace" =~ ^[0-9]+$ ]] || fail "stop: --grace must be a number of seconds."
  identify
  local pgid result=not-running
  pgid="$(job_pgid)"
  if group_alive "$pgid"; then
    # SIGTERM first: score_jax saves a checkpoint at the next step boundary and exits.
    kill -TERM -- "-${pgid}" 2>/dev/null || true
    local deadline=$((SECONDS + grace))
    while group_alive "$pgid" && ((SECONDS < deadline)); do
      sleep 0.5
    done
    result=stopped
    if group_alive "$pgid"; then
      kill -KILL -- "-${pgid}" 2>/dev/null || true
      result=killed
    fi
  fi
  local freed=none
  if ((force)); then
    local holders
    holders="$(tpu_holders)"
    if [[ -n "$holders" ]]; then
      local -a pids
      IFS=, read -r -a pids <<<"$holders"
      sudo -n kill -KILL "${pids[@]}" 2>/dev/null || kill -KILL "${pids[@]}" || true
      freed="$holders"
    fi
    # libtpu refuses to start while its lock file is there, even when no process holds it.
    sudo -n rm -f /tmp/libtpu_lockfile 2>/dev/null || rm -f /tmp/libtpu_lockfile
  fi
  report stop "run=$(current_run) result=${result} freed=${freed}"
}

main() {
  (($#)) || fail "usage: worker.sh SUBCOMMAND [ARG...] (see the header of launch/worker.sh)"
  local subcommand="$1"
  shift
  case "$subcommand" in
    install-code) cmd_install_code "$@" ;;
    setup) cmd_setup "$@" ;;
    devices) cmd_devices "$@" ;;
    preflight) cmd_preflight "$@" ;;
    start) cmd_start "$@" ;;
    _job) cmd_job "$@" ;;
    status) cmd_status "$@" ;;
    logs) cmd_logs "$@" ;;
    stop) cmd_stop "$@" ;;
    *) fail "unknown subcommand '${subcommand}' (see the header of launch/worker.sh)" ;;
  esac
}

main "$@"
