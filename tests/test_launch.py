"""launch/*.sh: --help, missing arguments, the exact gcloud commands of --dry-run, shellcheck, and
an end-to-end pass (sync, setup check, run, check, logs, stop) against a fake `gcloud` whose
"workers" are local directories running the real launch/worker.sh."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
REQUIRED = {
    "create.sh": ["--name", "--zone", "--accelerator-type"],
    "sync.sh": ["--name", "--zone"],
    "setup.sh": ["--name", "--zone"],
    "run.sh": ["--name", "--zone", "--config", "--workdir"],
    "logs.sh": ["--name", "--zone"],
    "check.sh": ["--name", "--zone"],
    "stop.sh": ["--name", "--zone"],
    "delete.sh": ["--name", "--zone"],
}
TPU = ["--name", "rl-slice", "--zone", "us-east5-a"]
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rl-slice", "--zone=us-east5-a"]


def launch(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True,
                        env=env, timeout=120)


def commands(stdout: str) -> list[list[str]]:
  """The argv of every command a dry run printed (lines starting with '#' are notes)."""
  return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def worker_call(ssh_command: list[str]) -> list[str]:
  """The words after `bash launch/worker.sh` in an ssh command's --command."""
  (remote,) = [a.removeprefix("--command=") for a in ssh_command if a.startswith("--command=")]
  words = shlex.split(remote)
  (at,) = [i for i in range(1, len(words))
            if words[i - 1] == "bash" and words[i].endswith("launch/worker.sh")]
  return words[at + 1:]


def commit_files(path: Path, files: dict[str, str]) -> str:
  """Writes the files into the git repository at path (created if needed), commits, returns HEAD."""
  for name, text in files.items():
    (path / name).parent.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(text)
  git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t"]
  subprocess.run(git[:3] + ["init", "-q"], check=True)
  subprocess.run(git + ["add", "-A"], check=True)
  subprocess.run(git + ["commit", "-qm", "c"], check=True)
  return subprocess.run(git[:3] + ["rev-parse", "HEAD"], check=True, capture_output=True,
                        text=True).stdout.strip()


# --- --help and argument errors ------------------------------------------------------------------


@pytest.mark.parametrize("script", sorted(REQUIRED))
def test_help_prints_usage_and_exits_0(script):
  result = launch(script, "--help")
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(f"usage: launch/{script} ")
  assert "--dry-run" in result.stdout


@pytest.mark.parametrize("script", sorted(REQUIRED))
def test_missing_required_arguments_are_named_with_exit_2(script):
  result = launch(script, "--dry-run")
  assert result.returncode == 2
  assert f"missing required argument(s): {', '.join(REQUIRED[script])}" in result.stderr
  assert f"usage: launch/{script} " in result.stderr


def test_only_the_missing_arguments_are_named():
  result = launch("create.sh", "--name=a", "--dry-run", "--accelerator-type", "v4-8")
  assert result.returncode == 2
  assert "missing required argument(s): --zone\n" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown argument '--bogus'"),
    (["--zone"], "option --zone needs a value"),
    (["--name", "Bad_Name"], "not a valid TPU name"),
])
def test_bad_arguments_exit_2(args, message):
  result = launch("stop.sh", *TPU, "--dry-run", *args)
  assert result.returncode == 2
  assert message in result.stderr


def test_without_gcloud_a_real_run_says_how_to_get_it(tmp_path):
  bin_dir = tmp_path / "bin"  # bash and coreutils only: no gcloud
  bin_dir.mkdir()
  for tool in ("bash", "dirname", "basename", "mktemp", "rm", "date", "od", "tr"):
    os.symlink(shutil.which(tool), bin_dir / tool)
  result = launch("delete.sh", *TPU, env={"PATH": str(bin_dir)})
  assert result.returncode == 1
  assert "gcloud not found on PATH" in result.stderr


# --- the exact gcloud commands (--dry-run) ---------------------------------------------------------


@pytest.mark.parametrize("accelerator, runtime", [
    ("v4-8", "tpu-ubuntu2204-base"), ("v4-32", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v5p-16", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
])
def test_create_picks_the_runtime_for_the_generation(accelerator, runtime):
  result = launch("create.sh", *TPU, "--accelerator-type", accelerator, "--dry-run")
  assert result.returncode == 0, result.stderr
  create, describe = commands(result.stdout)
  assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "rl-slice",
                    "--node-id=rl-slice", "--zone=us-east5-a", f"--accelerator-type={accelerator}",
                    f"--runtime-version={runtime}"]
  assert describe == ["gcloud", "compute", "tpus", "queued-resources", "describe", "rl-slice",
                      "--zone=us-east5-a", "--format=value(state.state)"]


def test_create_spot_reserved_project_and_passthrough_flags():
  spot = launch("create.sh", *TPU, "--accelerator-type=v5p-16", "--spot", "--project", "my-proj",
                "--runtime-version=v2-alpha-tpuv5-custom", "--no-wait", "--dry-run", "--",
                "--labels=team=rl", "--valid-until-duration=6h")
  assert spot.returncode == 0, spot.stderr
  assert commands(spot.stdout) == [[
      "gcloud", "compute", "tpus", "queued-resources", "create", "rl-slice", "--node-id=rl-slice",
      "--zone=us-east5-a", "--project=my-proj", "--accelerator-type=v5p-16",
      "--runtime-version=v2-alpha-tpuv5-custom", "--spot", "--labels=team=rl",
      "--valid-until-duration=6h"]]
  reserved = launch("create.sh", *TPU, "--accelerator-type=v4-8", "--reserved", "--dry-run")
  assert commands(reserved.stdout)[0][-1] == "--reserved"
  both = launch("create.sh", *TPU, "--accelerator-type=v4-8", "--reserved", "--spot", "--dry-run")
  assert both.returncode == 2 and "exclude each other" in both.stderr
  unknown = launch("create.sh", *TPU, "--accelerator-type=v9x-8", "--dry-run")
  assert unknown.returncode == 2 and "pass --runtime-version" in unknown.stderr


def test_sync_sends_the_committed_head_to_every_worker(tmp_path):
  commit = commit_files(tmp_path, {"README.md": "x\n"})
  result = launch("sync.sh", *TPU, "--repo", str(tmp_path), "--internal-ip", "--dry-run")
  assert result.returncode == 0, result.stderr
  archive, scp, ssh = commands(result.stdout)
  tarball = f"{os.environ.get('TMPDIR', '/tmp')}/score_jax-{commit}.tar.gz"
  assert archive == ["git", "-C", str(tmp_path), "archive", "--format=tar.gz",
                     f"--output={tarball}", commit]
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball,
                 f"rl-slice:score_jax-{commit}.tar.gz", "--zone=us-east5-a", "--worker=all",
                 "--internal-ip"]
  assert ssh[:8] == SSH + ["--worker=all"] and ssh[-1] == "--internal-ip"
  assert worker_call(ssh) == ["install-code", "~/.score_jax_incoming", commit]

  (tmp_path / "README.md").write_text("edited\n")
  dirty = launch("sync.sh", *TPU, "--repo", str(tmp_path), "--dry-run")
  assert dirty.returncode == 1 and "--allow-dirty" in dirty.stderr


def test_setup_installs_then_checks_devices_on_all_workers():
  result = launch("setup.sh", *TPU, "--bucket", "gs://rl-ckpt/", "--dry-run")
  assert result.returncode == 0, result.stderr
  install, devices = commands(result.stdout)
  assert install[:8] == devices[:8] == SSH + ["--worker=all"]
  assert worker_call(install) == ["setup", "--bucket=rl-ckpt"]
  assert worker_call(devices) == ["devices"]
  verify = launch("setup.sh", *TPU, "--verify-only", "--dry-run")
  assert [worker_call(c) for c in commands(verify.stdout)] == [["devices"]]


OVERRIDES = ["--config.rl.stage_schedule=stage1:10, stage2:20", "--config.task.name=it's",
             "--config.rl.alpha=5"]


def test_run_starts_all_workers_and_passes_overrides_through_quoted():
  result = launch("run.sh", *TPU, "--config", "configs/demo.py", "--workdir=/mnt/gcs/b/runs/r1",
                  *OVERRIDES[:2], "--env", "XLA_FLAGS=--xla_dump_to=/tmp/a b", "--dry-run", "--",
                  OVERRIDES[2], "--alsologtostderr")
  assert result.returncode == 0, result.stderr
  preflight, start, status = commands(result.stdout)
  for command in (preflight, start, status):
    assert command[:8] == SSH + ["--worker=all"]
  assert worker_call(preflight) == ["preflight", "--config=configs/demo.py",
                                    "--workdir=/mnt/gcs/b/runs/r1"]
  start_args = worker_call(start)
  assert start_args[0] == "start" and start_args[1].startswith("--run-id=")
  assert start_args[2:] == ["--config=configs/demo.py", "--workdir=/mnt/gcs/b/runs/r1",
                            "--env=XLA_FLAGS=--xla_dump_to=/tmp/a b", "--", *OVERRIDES,
                            "--alsologtostderr"]
  assert worker_call(status) == ["status"]
  assert "launch/logs.sh --name rl-slice --zone us-east5-a" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--workdir=gs://b/runs/r1"], "--workdir=/mnt/gcs/b/runs/r1"),
    (["--workdir=runs/r1"], "absolute path"),
    (["--workdir=/w", "--config.rl.alpha", "5"], "--config.KEY=VALUE"),
    (["--workdir=/w", "--env", "1BAD=x"], "NAME=VALUE"),
])
def test_run_rejects_bad_workdirs_and_overrides(args, message):
  result = launch("run.sh", *TPU, "--config=configs/demo.py", *args, "--dry-run")
  assert result.returncode == 2
  assert message in result.stderr


@pytest.mark.parametrize("script, args, expected", [
    ("logs.sh", [], ["logs", "--lines=20", "--follow"]),
    ("logs.sh", ["--no-follow", "--lines", "5"], ["logs", "--lines=5"]),
    ("check.sh", [], ["status"]),
    ("stop.sh", [], ["stop", "--grace=120"]),
    ("stop.sh", ["--grace=10", "--force"], ["stop", "--grace=10", "--force"]),
])
def test_worker_commands_reach_all_workers(script, args, expected):
  result = launch(script, *TPU, *args, "--dry-run")
  assert result.returncode == 0, result.stderr
  (command,) = commands(result.stdout)
  assert command[:8] == SSH + ["--worker=all"]
  assert worker_call(command) == expected


def test_logs_of_one_worker_and_delete_commands():
  (logs,) = commands(launch("logs.sh", *TPU, "--worker=3", "--dry-run").stdout)
  assert "--worker=3" in logs
  assert commands(launch("delete.sh", *TPU, "--yes", "--dry-run").stdout) == [[
      "gcloud", "compute", "tpus", "queued-resources", "delete", "rl-slice", "--zone=us-east5-a",
      "--force", "--quiet"]]
  assert commands(launch("delete.sh", *TPU, "--node-only", "--async", "--dry-run").stdout) == [[
      "gcloud", "compute", "tpus", "tpu-vm", "delete", "rl-slice", "--zone=us-east5-a", "--async"]]


def test_scripts_are_executable_and_the_library_is_not():
  modes = {p.name: os.access(p, os.X_OK) for p in LAUNCH.glob("*.sh")}
  assert modes == {name: name != "common.sh" for name in modes}
  assert set(REQUIRED) | {"common.sh", "worker.sh", "worker_setup.sh"} == set(modes)


def test_scripts_are_shellcheck_clean():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed (apt-get install shellcheck) so the scripts are not "
                "linted here")
  scripts = sorted(str(p.relative_to(REPO)) for p in LAUNCH.glob("*.sh"))
  result = subprocess.run(["shellcheck", "-x", *scripts], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


# --- end to end against a fake slice -----------------------------------------------------------

# `gcloud` for tests: worker W of the slice is the directory $FAKE_TPU_ROOT/workerW, used as
# $HOME; ssh runs the command there with bash, scp copies into it. FAKE_TPU_DOWN=1,2 makes ssh
# to those workers fail like an unreachable host. Queued-resource calls are recorded, and
# `describe` prints the states listed in $FAKE_TPU_ROOT/qr_states one call after another.
FAKE_GCLOUD = r'''#!/usr/bin/env python3
import json, os, shutil, subprocess, sys
root, n = os.environ["FAKE_TPU_ROOT"], int(os.environ["FAKE_TPU_WORKERS"])
down = {int(w) for w in os.environ.get("FAKE_TPU_DOWN", "").split(",") if w}
args = sys.argv[1:]
flags = dict(a[2:].partition("=")[::2] for a in args if a.startswith("--"))
words = [a for a in args if not a.startswith("--")]
workers = range(n) if flags.get("worker") == "all" else [int(flags.get("worker", "0"))]
if words[:3] == ["compute", "tpus", "queued-resources"]:  # states from $FAKE_TPU_ROOT/qr_states
  with open(f"{root}/gcloud_calls", "a") as calls:
    calls.write(json.dumps(args) + "\n")
  if words[3] == "describe":
    states = open(f"{root}/qr_states").read().split()
    print(states[0])
    open(f"{root}/qr_states", "w").write(" ".join(states[1:] or states))
  sys.exit(0)
def home(w):
  os.makedirs(f"{root}/worker{w}", exist_ok=True)
  return f"{root}/worker{w}"
status = 0
for w in workers:
  if words[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
    if w in down:
      print(f"ssh: connect to host worker-{w} port 22: Connection timed out", file=sys.stderr)
      status = 255
      continue
    env = dict(os.environ, HOME=home(w), FAKE_WORKER_ID=str(w))
    status = subprocess.run(["bash", "-c", flags["command"]], env=env, cwd=home(w)).returncode or status
  elif words[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
    shutil.copy(words[4], os.path.join(home(w), words[5].split(":", 1)[1]))
  else:
    sys.exit(f"fake gcloud: unsupported {args}")
sys.exit(status)
'''
FAKE_CURL = r'''#!/usr/bin/env bash
case "${*: -1}" in
  */agent-worker-number) printf '%s' "$FAKE_WORKER_ID" ;;
  */worker-network-endpoints)
    for ((i = 0; i < FAKE_TPU_WORKERS; i++)); do printf '%sunknown:unknown:10.0.0.%d' "${sep:-}" "$i"; sep=,; done ;;
  *) exit 22 ;;
esac
'''
# The venv's python on a worker: the job records its argv and runs until SIGTERM (or exits with
# the status in ~/fake_exit); anything else runs the real python3 with a fake `jax` that sees
# 4 local TPU devices per worker (FAKE_JAX_ISOLATED=1: each worker only its own).
FAKE_PYTHON = r'''#!/usr/bin/env bash
if [[ "${1:-}" == -m && "${2:-}" == score_jax.main ]]; then
  shift 2
  printf '%s\0' "$@" >"$HOME/job_argv"
  echo "fake score_jax: started"
  [[ ! -f "$HOME/fake_exit" ]] || exit "$(cat "$HOME/fake_exit")"
  trap 'echo "fake score_jax: SIGTERM, checkpoint saved"; exit 0' TERM
  while true; do sleep 0.1; done
fi
PYTHONPATH="$FAKE_JAX_DIR" exec python3 "$@"
'''
# scripts/setup_env.sh in the test repository: records how worker_setup.sh called it and installs
# the fake python as the venv's.
FAKE_SETUP_ENV = r'''#!/usr/bin/env bash
echo "$PYTHON $1" >"$HOME/setup_env_args"
mkdir -p .venv/bin
cp "$FAKE_PYTHON_SOURCE" .venv/bin/python
chmod +x .venv/bin/python
'''
FAKE_JAX = '''import os
_isolated = os.environ.get("FAKE_JAX_ISOLATED") == "1"
def process_index(): return 0 if _isolated else int(os.environ["FAKE_WORKER_ID"])
def process_count(): return 1 if _isolated else int(os.environ["FAKE_TPU_WORKERS"])
def local_device_count(): return 4
def device_count(): return 4 * process_count()
class _Device: platform = "tpu"
def devices(): return [_Device()] * device_count()
class distributed:
  initialize = staticmethod(lambda: None)
'''


def write_executable(path: Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(0o755)


@pytest.fixture
def fake_slice(tmp_path):
  root = tmp_path / "slice"
  root.mkdir()
  write_executable(tmp_path / "bin" / "gcloud", FAKE_GCLOUD)
  write_executable(tmp_path / "bin" / "curl", FAKE_CURL)
  (tmp_path / "fakejax" / "jax").mkdir(parents=True)
  (tmp_path / "fakejax" / "jax" / "__init__.py").write_text(FAKE_JAX)
  env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", FAKE_TPU_ROOT=str(root),
             FAKE_TPU_WORKERS="2", FAKE_JAX_DIR=str(tmp_path / "fakejax"))
  yield root, env
  for pid_file in root.glob("worker*/score_jax_job/pid"):  # jobs this test started
    try:
      os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    except (ProcessLookupError, ValueError):
      pass


def test_end_to_end_on_a_fake_two_worker_slice(tmp_path, fake_slice):
  root, env = fake_slice
  repo = tmp_path / "repo"
  shutil.copytree(LAUNCH, repo / "launch")
  (tmp_path / "fake_python").write_text(FAKE_PYTHON)
  commit = commit_files(repo, {"configs/demo.py": (REPO / "configs" / "demo.py").read_text(),
                               "obsolete.txt": "deleted by the next commit\n",
                               "scripts/setup_env.sh": FAKE_SETUP_ENV})

  sync = launch("sync.sh", *TPU, "--repo", str(repo), env=env)
  assert sync.returncode == 0, sync.stderr
  for w in (0, 1):
    assert (root / f"worker{w}/score_jax/.commit").read_text().strip() == commit

  setup = launch("setup.sh", *TPU, env=dict(env, FAKE_PYTHON_SOURCE=str(tmp_path / "fake_python")))
  assert setup.returncode == 0, setup.stderr
  for w in (0, 1):  # worker_setup.sh found a Python >= 3.11 and handed it to setup_env.sh
    python, requirements = (root / f"worker{w}/setup_env_args").read_text().split()
    assert requirements == "requirements-tpu.txt"
    version = subprocess.run([python, "-c", "import sys; print(sys.version_info >= (3, 11))"],
                             capture_output=True, text=True).stdout
    assert version.strip() == "True"
  assert "OK: 2 worker(s), 8 TPU devices" in setup.stderr
  isolated = launch("setup.sh", *TPU, "--verify-only", env=dict(env, FAKE_JAX_ISOLATED="1"))
  assert isolated.returncode == 1
  assert "worker 1 counts 1 JAX processes, not 2" in isolated.stderr

  workdir = tmp_path / "work"
  run_args = [*TPU, "--config=configs/demo.py", f"--workdir={workdir}", "--check-after=1"]
  filesystem = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True,
                              text=True).stdout.strip()
  if filesystem in ("ext2/ext3", "xfs", "btrfs", "tmpfs", "overlayfs"):
    local = launch("run.sh", *run_args, env=env)
    assert local.returncode == 1 and "on this worker's own disk" in local.stderr
    assert not (root / "worker0/score_jax_job").exists()  # nothing started anywhere

  started = launch("run.sh", *run_args, "--allow-local-workdir", *OVERRIDES, env=env)
  assert started.returncode == 0, started.stdout + started.stderr
  assert "All 2 worker(s) on run" in started.stderr
  for w in (0, 1):  # every worker got exactly the same program arguments
    argv = (root / f"worker{w}/job_argv").read_bytes().split(b"\0")[:-1]
    assert [a.decode() for a in argv] == ["--config=configs/demo.py", f"--workdir={workdir}",
                                          *OVERRIDES]

  again = launch("run.sh", *run_args, "--allow-local-workdir", env=env)
  assert again.returncode == 1 and "already running" in again.stderr
  resync = launch("sync.sh", *TPU, "--repo", str(repo), env=env)
  assert resync.returncode == 1 and "launch/stop.sh first" in resync.stdout

  logs = launch("logs.sh", *TPU, "--no-follow", env=env)
  for w in (0, 1):
    assert f"[worker {w}] score_jax job start: run=" in logs.stdout
    assert f"[worker {w}] fake score_jax: started" in logs.stdout

  one_down = launch("check.sh", *TPU, env=dict(env, FAKE_TPU_DOWN="1"))
  assert one_down.returncode == 1
  assert "NOT RUNNING on 1 of 2 worker(s): 1 (no answer)" in one_down.stderr

  stop = launch("stop.sh", *TPU, "--grace=20", env=env)
  assert stop.returncode == 0, stop.stderr
  assert stop.stdout.count("result=stopped") == 2
  stopped = launch("check.sh", *TPU, env=env)
  assert stopped.stdout.count("exited rc=0") == 2  # SIGTERM: checkpoint saved, clean exit

  old_run = launch("check.sh", *TPU, "--run=19990101T000000Z-000000", env=env)
  assert "NOT RUNNING on 2 of 2 worker(s): 0 (stale) 1 (stale)" in old_run.stderr

  # A new commit replaces the code (deleted files go) and keeps the virtualenv.
  subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "rm", "-q",
                  "obsolete.txt"], check=True)
  commit = commit_files(repo, {"configs/demo.py": "# edited\n"})
  assert launch("sync.sh", *TPU, "--repo", str(repo), env=env).returncode == 0
  for w in (0, 1):
    assert (root / f"worker{w}/score_jax/.commit").read_text().strip() == commit
    assert (root / f"worker{w}/score_jax/configs/demo.py").read_text().startswith("# edited")
    assert not (root / f"worker{w}/score_jax/obsolete.txt").exists()
    assert (root / f"worker{w}/score_jax/.venv/bin/python").exists()

  (root / "worker1/fake_exit").write_text("3")
  assert launch("run.sh", *run_args[:-1], "--check-after=0", "--allow-local-workdir",
                env=env).returncode == 0
  deadline = time.monotonic() + 30  # worker 1's program exits at once; wait for its exit line
  while "exited rc=3" not in (crashed := launch("check.sh", *TPU, env=env)).stdout:
    assert time.monotonic() < deadline, crashed.stdout
    time.sleep(0.5)
  assert crashed.returncode == 1
  assert "NOT RUNNING on 1 of 2 worker(s): 1 (exited rc=3)" in crashed.stderr
  os.killpg(int((root / "worker0/score_jax_job/pid").read_text()), signal.SIGKILL)
  killed = launch("check.sh", *TPU, env=env)
  assert "NOT RUNNING on 2 of 2 worker(s): 0 (died) 1 (exited rc=3)" in killed.stderr


def test_create_waits_until_active_and_stops_on_failure(fake_slice):
  root, env = fake_slice
  (root / "qr_states").write_text("WAITING_FOR_RESOURCES PROVISIONING ACTIVE")
  active = launch("create.sh", *TPU, "--accelerator-type=v4-8", "--poll-seconds=1", env=env)
  assert active.returncode == 0, active.stderr
  assert "rl-slice: PROVISIONING" in active.stderr and "rl-slice is ACTIVE" in active.stderr
  calls = [json.loads(line)[3] for line in (root / "gcloud_calls").read_text().splitlines()]
  assert calls == ["create", "describe", "describe", "describe"]

  (root / "qr_states").write_text("WAITING_FOR_RESOURCES FAILED")
  failed = launch("create.sh", *TPU, "--accelerator-type=v4-8", "--poll-seconds=1", "--wait-only",
                  env=env)
  assert failed.returncode == 1 and "queued resource rl-slice is FAILED" in failed.stderr
  assert len((root / "gcloud_calls").read_text().splitlines()) == 6  # no second create
