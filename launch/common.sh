# shellcheck shell=bash disable=SC2034  # the variables set here are read by the sourcing scripts
# Shared by the launch/*.sh scripts (sourced, not run): flag parsing, quoting, and running or
# printing (--dry-run) the gcloud commands that drive a Cloud TPU VM slice.
#
# A script sets HELP (its --help text; the first line is the usage line), defines a function
# for its own options and hands it to parse_flags with the command line. Everything that reaches a
# worker goes through launch/worker.sh there, so the commands printed here stay short and
# every remote step is a named, testable function.

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "$(basename "$0"): needs bash >= 4.4, this is bash ${BASH_VERSION}." \
    "On macOS: 'brew install bash', then run the script again." >&2
  exit 1
fi

SCRIPT_NAME="launch/$(basename "$0")"
LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$LAUNCH_DIR")"
# The code's home on every worker, written for the remote shell to expand (never quote it).
# shellcheck disable=SC2088  # the tilde is meant for the worker's shell, not this one
REMOTE_CODE_DIR='~/score_jax'

TPU_NAME=""
ZONE=""
PROJECT=""
DRY_RUN=0
INTERNAL_IP=0

COMMON_HELP="Common options:
  --name NAME        TPU name (the queued resource and its node share it)
  --zone ZONE        zone of the TPU, e.g. us-central2-b, us-east5-a
  --project PROJECT  Google Cloud project (default: gcloud's configured project)
  --internal-ip      ssh/scp to the workers' internal IPs (from a VM in the same VPC)
  --dry-run          print the exact commands instead of running them (no gcloud needed)
  -h, --help         this help"

die() {
  echo "${SCRIPT_NAME}: error: $*" >&2
  exit 1
}

usage_error() {
  {
    echo "${SCRIPT_NAME}: $*"
    echo "${HELP%%$'\n'*}"
    echo "Run '${SCRIPT_NAME} --help' for all options."
  } >&2
  exit 2
}

# Reads the value of the option at the head of "$@" (--opt=value or --opt value) into VALUE and
# the number of words it used into CONSUMED.
take_value() {
  if [[ "$1" == *=* ]]; then
    VALUE="${1#*=}"
    CONSUMED=1
  elif (($# >= 2)) && [[ "$2" != --* ]]; then
    VALUE="$2"
    CONSUMED=2
  else
    usage_error "option $1 needs a value"
  fi
}

# Consumes one common option at the head of "$@"; CONSUMED=0 when it is not one.
common_flag() {
  CONSUMED=0
  case "$1" in
    --name | --name=*) take_value "$@" && TPU_NAME="$VALUE" ;;
    --zone | --zone=*) take_value "$@" && ZONE="$VALUE" ;;
    --project | --project=*) take_value "$@" && PROJECT="$VALUE" ;;
    --internal-ip) INTERNAL_IP=1 CONSUMED=1 ;;
    --dry-run) DRY_RUN=1 CONSUMED=1 ;;
    -h | --help)
      echo "$HELP"
      exit 0
      ;;
  esac
}

# parse_flags HANDLER ARG...: reads the whole command line. At each argument common_flag
# goes first; otherwise HANDLER is called with the remaining arguments and sets CONSUMED to
# the words it used (take_value does that for options with values; leaving it 0 means "not
# mine", an error). A handler consumes "--" and the rest at once with CONSUMED=$#.
parse_flags() {
  local handler="$1"
  shift
  while (($#)); do
    common_flag "$@"
    ((CONSUMED)) || "$handler" "$@"
    ((CONSUMED)) || usage_error "unknown argument '$1'"
    shift "$CONSUMED"
  done
}

# require_flags VAR:--flag ...: exits 2 naming every required option whose VAR is empty.
require_flags() {
  local spec variable missing=()
  for spec in "$@"; do
    variable="${spec%%:*}"
    [[ -n "${!variable}" ]] || missing+=("${spec#*:}")
  done
  if ((${#missing[@]})); then
    local joined
    joined="$(printf ', %s' "${missing[@]}")"
    usage_error "missing required argument(s): ${joined:2}"
  fi
  # The name becomes part of gcloud commands and remote paths: keep it to what TPU names allow.
  if [[ -n "$TPU_NAME" && ! "$TPU_NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]]; then
    usage_error "--name '$TPU_NAME' is not a valid TPU name (lowercase letters, digits, '-')"
  fi
}

# One word as the shell reads it back: bare when safe, otherwise single-quoted (for --flag=value
# only the value, which reads better and splits back the same).
shell_quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  elif [[ "$1" =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    shell_quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# The words joined into one command line that a shell splits back into exactly these words.
shell_join() {
  local word sep=""
  for word in "$@"; do
    printf '%s' "$sep"
    shell_quote "$word"
    sep=" "
  done
}

# Prints a note: on stdout as a shell comment in a dry run (the output stays a runnable
# script), on stderr otherwise.
note() {
  if ((DRY_RUN)); then
    echo "# $*"
  else
    echo "$*" >&2
  fi
}

# Runs a command, echoing it to stderr first; in a dry run only prints it on stdout.
run() {
  if ((DRY_RUN)); then
    shell_join "$@"
    echo
    return 0
  fi
  echo "+ $(shell_join "$@")" >&2
  "$@"
}

# run_capture FILE CMD...: like run, with the command's stdout saved to FILE (stderr still goes
# to the terminal). Returns the command's status without tripping `set -e` in the caller.
run_capture() {
  local file="$1"
  shift
  : >"$file"
  if ((DRY_RUN)); then
    run "$@"
    return 0
  fi
  local status=0
  echo "+ $(shell_join "$@")" >&2
  "$@" >"$file" || status=$?
  return "$status"
}

require_gcloud() {
  ((DRY_RUN)) || command -v gcloud >/dev/null 2>&1 ||
    die "gcloud not found on PATH. Install the Google Cloud CLI" \
      "(https://cloud.google.com/sdk/docs/install), run 'gcloud auth login', or use --dry-run."
}

# The gcloud-wide flags every command gets.
gcloud_common_flags() {
  GCLOUD_FLAGS=("--zone=${ZONE}")
  [[ -z "$PROJECT" ]] || GCLOUD_FLAGS+=("--project=${PROJECT}")
}

# remote_worker_command ARG...: the shell command, run on a worker, that calls
# launch/worker.sh ARG... from the synced code (with a hint when sync.sh has not run yet).
remote_worker_command() {
  local hint="score_jax: no code in ${REMOTE_CODE_DIR} on \$(hostname): run launch/sync.sh first"
  printf '%s' "cd ${REMOTE_CODE_DIR} 2>/dev/null && test -f launch/worker.sh ||" \
    " { echo \"${hint}\" >&2; exit 3; }; bash launch/worker.sh $(shell_join "$@")"
}

# tpu_ssh WORKER REMOTE_COMMAND: sets SSH_CMD to the gcloud command that runs REMOTE_COMMAND on
# WORKER ('all': every worker of the slice at once).
tpu_ssh() {
  gcloud_common_flags
  SSH_CMD=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_FLAGS[@]}" "--worker=$1"
    "--command=$2")
  ((INTERNAL_IP == 0)) || SSH_CMD+=(--internal-ip)
}

# parse_worker_lines FILE TAG: reads the 'TAG worker=W key=value ... [| text]' lines that
# worker.sh printed (gcloud interleaves the workers' output; anything before the tag, such as
# a prefix, is ignored) into WORKER_LINE[W] (the fields after the tag) and sets WORKER_COUNT to
# the slice's worker count as the workers reported it.
parse_worker_lines() {
  local line worker count
  WORKER_LINE=()
  WORKER_COUNT=0
  while IFS= read -r line; do
    [[ "$line" == *"$2 "* ]] || continue
    line="${line#*"$2" }"
    worker="$(field worker "$line")"
    count="$(field workers "$line")"
    [[ "$worker" =~ ^[0-9]+$ ]] || continue
    WORKER_LINE[worker]="$line"
    if [[ "$count" =~ ^[0-9]+$ ]] && ((count > WORKER_COUNT)); then
      WORKER_COUNT="$count"
    fi
  done <"$1"
}

# field KEY LINE: the value of KEY=value among LINE's space-separated fields before any ' | '.
field() {
  local item items
  read -r -a items <<<"${2%% | *}"
  for item in "${items[@]}"; do
    if [[ "$item" == "$1="* ]]; then
      printf '%s' "${item#*=}"
      return 0
    fi
  done
}
