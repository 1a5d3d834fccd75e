#!/usr/bin/env bash
# Runs ON each Cloud TPU VM worker (from `worker.sh setup`, i.e. launch/setup.sh): makes the
# machine ready to run score_jax. Every step is skipped when already done, so it can be rerun.
#   1. a Python >= 3.11 with venv support (TPU VM images ship Ubuntu 22.04's 3.10: apt-get
#      python3.11 when none is there);
#   2. ~/score_jax/.venv with requirements-tpu.txt (scripts/setup_env.sh, which reinstalls only
#      when the requirements files change);
#   3. with --bucket=B: gs://B mounted with gcsfuse at --mount-dir (default /mnt/gcs/B), the
#      workdir every worker shares.
set -euo pipefail

CODE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

fail() {
  echo "worker_setup.sh ($(hostname)): error: $*" >&2
  exit 1
}

# A Python >= 3.11 with venv support on PATH, preferring the newest.
find_python() {
  local candidate
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null &&
      "$candidate" -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

# TPU VM images ship Ubuntu 22.04's Python 3.10; score_jax and JAX 0.10 need >= 3.11.
ensure_python() {
  find_python && return 0
  echo "installing python3.11 and python3.11-venv with apt (the image's python3 is older)" >&2
  if ! { sudo apt-get update -qq &&
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv; } >&2; then
    fail "could not apt-get install python3.11 python3.11-venv. Install a Python >= 3.11 with" \
      "venv support on every worker (e.g. from the deadsnakes PPA) and run setup.sh again."
  fi
  find_python || fail "python3.11 was installed but is not usable."
}

install_gcsfuse() {
  local codename
  codename="$(lsb_release -cs)"
  echo "installing gcsfuse from packages.cloud.google.com (gcsfuse-${codename})" >&2
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc]" \
    "https://packages.cloud.google.com/apt gcsfuse-${codename} main" |
    sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg |
    sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  sudo apt-get update -qq >&2
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcsfuse >&2
}

# Mounts gs://$1 at $2 as this user, so every worker sees one shared workdir.
mount_bucket() {
  local bucket="$1" dir="$2"
  if mountpoint -q "$dir"; then
    echo "gs://${bucket} is already mounted at ${dir}" >&2
    return 0
  fi
  command -v gcsfuse >/dev/null || install_gcsfuse
  sudo mkdir -p "$dir"
  sudo chown "$(id -u):$(id -g)" "$dir"
  gcsfuse --implicit-dirs "$bucket" "$dir" >&2 ||
    fail "gcsfuse could not mount gs://${bucket} at ${dir}: check that the bucket exists and that" \
      "the TPU's service account may read and write it (roles/storage.objectUser)."
}

main() {
  local bucket="" mount_dir=""
  while (($#)); do
    case "$1" in
      --bucket=*) bucket="${1#*=}" ;;
      --mount-dir=*) mount_dir="${1#*=}" ;;
      *) fail "unknown argument '$1'" ;;
    esac
    shift
  done
  local python
  python="$(ensure_python)"
  (cd "$CODE_DIR" && PYTHON="$python" bash scripts/setup_env.sh requirements-tpu.txt)
  [[ -z "$bucket" ]] || mount_bucket "$bucket" "${mount_dir:-/mnt/gcs/${bucket}}"
}

main "$@"
