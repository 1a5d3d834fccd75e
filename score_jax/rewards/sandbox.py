"""Child side of the code verifier: a supervisor and the worker that runs the program.

`score_jax.rewards.code` starts this file as a script (`python -I -S -u -B
sandbox.py`), inside fresh pid/mount/network/ipc/uts namespaces when the host
allows them, and sends a JSON job on stdin. It imports only the standard
library: the sandboxed interpreter sees no site-packages.

Two processes, so that nothing the program does can forge or suppress the
report the host receives:

* Supervisor (this process; pid 1 of the pid namespace, root, never runs
  untrusted code). It reads the job, builds the sandbox's file system, forks
  the worker, enforces the wall-clock deadline, and writes the only report the
  host trusts to an inherited file descriptor, tagged with the host's nonce.
  Its exit tears the whole pid namespace down, so every descendant of the
  program dies with it.
* Worker (forked child). It closes the report descriptor, enters the read-only
  root, sets resource limits, drops to a fresh unprivileged uid, then executes
  the program and the tests in one namespace, and reports over a pipe. The
  program can write anything to that pipe, so a pass only counts when it
  carries a secret token that the worker sends after the last test statement
  returned. An early `sys.exit`/`os._exit`, a printed marker, patched builtins
  (restored before the tests run) or a closed pipe all end without the token.

Limit of in-process checking: the token lives in the worker's memory while the
program's functions run, so a program that deliberately searches the
interpreter (frames, `gc`) for it, or returns objects whose `__eq__` is always
true, can still pass. No harness that runs tests beside the program in one
interpreter closes that; these checks close every accidental and cheap path.
"""

import builtins
import ctypes
import json
import os
import resource
import select
import signal
import sys
import time
import traceback

STATUSES = ("passed", "failed", "error", "timeout", "killed")
# The worker's verdict is one JSON line; the supervisor reads at most this much.
_MAX_VERDICT_BYTES = 64 << 10
_DETAIL_CHARS = 1000
# Top-level host directories the sandbox root mirrors (read-only); merged-/usr
# systems have symlinks for most of them. /etc only lends the loader cache.
_ROOT_ENTRIES = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr")
_HOST_FILES = ("/etc/ld.so.cache",)
_DEVICES = ("null", "zero", "random", "urandom")

_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MS_REMOUNT = 0x20
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
  """The sandbox could not be built: a host problem, not the program's fault."""


# ------------------------------------------------------------- file system


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
  encode = lambda s: None if s is None else s.encode()
  if _libc.mount(encode(source), encode(target), encode(fstype),
                 ctypes.c_ulong(flags), encode(data)) != 0:
    errno = ctypes.get_errno()
    raise SetupError(f"mount({source!r}, {target!r}, {fstype!r}) failed: "
                     f"{os.strerror(errno)}")


def _bind_read_only(source: str, target: str) -> None:
  _mount(source, target, None, _MS_BIND | _MS_REC)
  _mount(None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)


def _stdlib_dirs() -> list[str]:
  """Directories the interpreter imports from (-S: the stdlib and lib-dynload)."""
  return sorted({os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)})


def build_root(new_root: str, uid: int, scratch_bytes: int) -> None:
  """Fills the empty directory `new_root` with a minimal read-only system.

  It holds the host's /usr (and its top-level symlinks), the interpreter's
  standard library at its host path, four character devices, a /proc of the
  new pid namespace and a private tmpfs at /tmp (the only writable place,
  `scratch_bytes` large, owned by `uid`). The rest of the host (the repository,
  datasets, /root, host /tmp) is absent. Mounts made here are private to the
  mount namespace and vanish with it.
  """
  _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
  _mount("tmpfs", new_root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
  join = lambda path: os.path.join(new_root, path.lstrip("/"))
  bound = []
  for name in _ROOT_ENTRIES:
    source = "/" + name
    if os.path.islink(source):
      os.symlink(os.readlink(source), join(source))
    elif os.path.isdir(source):
      os.mkdir(join(source), 0o755)
      _bind_read_only(source, join(source))
      bound.append(source + "/")
  for path in _stdlib_dirs():
    resolved = os.path.realpath(path)
    if any((resolved + "/").startswith(prefix) for prefix in bound):
      continue
    os.makedirs(join(resolved), 0o755, exist_ok=True)
    _bind_read_only(resolved, join(resolved))
    bound.append(resolved + "/")
  for path in _HOST_FILES:
    if os.path.isfile(path):
      os.makedirs(os.path.dirname(join(path)), 0o755, exist_ok=True)
      open(join(path), "w").close()
      _bind_read_only(path, join(path))
  os.mkdir(join("/dev"), 0o755)
  for name in _DEVICES:
    open(join("/dev/" + name), "w").close()
    _mount("/dev/" + name, join("/dev/" + name), None, _MS_BIND)
  os.mkdir(join("/proc"), 0o555)
  _mount("proc", join("/proc"), "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
  os.mkdir(join("/tmp"), 0o755)
  _mount("tmpfs", join("/tmp"), "tmpfs", _MS_NOSUID | _MS_NODEV,
         f"size={scratch_bytes},nr_inodes=4096,mode=0700,uid={uid},gid={uid}")
  _mount(None, new_root, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)


# ------------------------------------------------------------------ worker


def _describe(error: BaseException, filename: str, source: str) -> str:
  """`Type: message (tests line N: <that line>)`, robust to hostile __str__."""
  try:
    message = error.msg if isinstance(error, SyntaxError) else str(error)
  except BaseException:  # The program controls __str__ of its exceptions.
    message = "<unprintable>"
  text = type(error).__name__ + (f": {message}" if message else "")
  lineno = getattr(error, "lineno", None) if isinstance(error, SyntaxError) else None
  tb = error.__traceback__
  while tb is not None:
    if tb.tb_frame.f_code.co_filename == filename:
      lineno = tb.tb_lineno
    tb = tb.tb_next
  lines = source.splitlines()
  if lineno and 0 < lineno <= len(lines):
    text += f" ({filename[1:-1]} line {lineno}: {lines[lineno - 1].strip()})"
  return text[:_DETAIL_CHARS]


def _run_worker(job: dict, verdict_fd: int, token: str) -> None:
  """Confines this process, runs program then tests, reports; never returns."""
  # Bound before any untrusted code runs, which may patch these modules.
  write, exit_now, dumps = os.write, os._exit, json.dumps
  settrace, setprofile = sys.settrace, sys.setprofile

  def report(status: str, detail: str = "", **extra) -> None:
    line = dumps({"status": status, "detail": detail, **extra}) + "\n"
    try:
      write(verdict_fd, line.encode())
    finally:
      exit_now(0)

  try:
    if job["namespaces"]:
      os.chroot(job["new_root"])
    os.chdir(job["workdir"])
    if not job["drop_uid"] and not job["namespaces"]:
      os.setpgid(0, 0)  # Weak mode: let the supervisor kill the program's group.
    os.nice(job["niceness"])
    cpu_s = int(job["timeout_s"]) + 1
    for limit, value in ((resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)),
                         (resource.RLIMIT_AS, job["memory_bytes"]),
                         (resource.RLIMIT_NPROC, job["max_processes"]),
                         (resource.RLIMIT_FSIZE, job["max_file_bytes"]),
                         (resource.RLIMIT_NOFILE, job["max_open_files"]),
                         (resource.RLIMIT_CORE, 0)):
      resource.setrlimit(limit, value if isinstance(value, tuple) else (value, value))
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
      raise SetupError("prctl(PR_SET_NO_NEW_PRIVS) failed")
    if job["drop_uid"]:
      uid = job["uid"]
      os.setgroups([])
      os.setresgid(uid, uid, uid)
      os.setresuid(uid, uid, uid)
  except (OSError, SetupError) as e:
    report("setup_error", f"worker setup failed: {e}", token=token)
  try:
    program_code = compile(job["program"], "<program>", "exec", dont_inherit=True, optimize=0)
  except (SyntaxError, ValueError) as e:  # ValueError: null bytes, lone surrogates.
    report("error", _describe(e, "<program>", job["program"]))
  tests_code = compile(job["tests"], "<tests>", "exec", dont_inherit=True, optimize=0)
  builtin_names = vars(builtins)
  clean_builtins = dict(builtin_names)
  namespace = {"__name__": "__solution__", "__builtins__": builtins}
  program_error = None
  try:
    exec(program_code, namespace)
  except BaseException as e:  # SystemExit and KeyboardInterrupt included.
    program_error = e
  # Undo what the program may have patched that the tests (and we) rely on.
  settrace(None)
  setprofile(None)
  builtin_names.clear()  # No builtin lookups until the update below.
  builtin_names.update(clean_builtins)
  namespace["__builtins__"] = builtins
  if program_error is not None:
    report("error", _describe(program_error, "<program>", job["program"]))
  try:
    exec(tests_code, namespace)
  except BaseException as e:
    report("failed", _describe(e, "<tests>", job["tests"]))
  report("passed", token=token)


# -------------------------------------------------------------- supervisor


def _reap_children() -> None:
  while True:
    try:
      if os.waitpid(-1, os.WNOHANG)[0] == 0:
        return
    except ChildProcessError:
      return


def live_processes_of(uid: int) -> list[int]:
  """Pids whose real uid is `uid`, zombies excluded (from /proc)."""
  pids = []
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
      continue  # Exited while we looked.
    if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
      pids.append(int(entry))
  return pids


def _kill_uid(uid: int, rounds: int = 1000) -> None:
  """SIGKILLs every process of `uid` (used when there is no pid namespace).

  Repeats until a scan finds none, which also catches children forked while a
  kill was delivered. Orphans come to this process (a child subreaper) and are
  reaped here.
  """
  for _ in range(rounds):
    pids = live_processes_of(uid)
    if not pids:
      _reap_children()
      return
    for pid in pids:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    time.sleep(0.001)
    _reap_children()
  raise SetupError(f"processes of sandbox uid {uid} survived {rounds} kill rounds")


def _read_verdict(worker: int, verdict_r: int, deadline: float) -> tuple[bytes, bool]:
  """Collects the worker's output until it exits or the deadline passes."""
  pidfd = os.pidfd_open(worker)
  buffer, timed_out, watching = bytearray(), False, [verdict_r, pidfd]
  while True:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      timed_out = True
      break
    ready, _, _ = select.select(watching, [], [], remaining)
    if pidfd in ready:
      break
    if verdict_r in ready and len(buffer) < _MAX_VERDICT_BYTES:
      chunk = os.read(verdict_r, _MAX_VERDICT_BYTES)
      buffer += chunk
      if not chunk:  # Every writer closed; wait for the exit alone.
        watching = [pidfd]
    elif verdict_r in ready:
      watching = [pidfd]  # Flooded: stop reading; the program fails.
  os.set_blocking(verdict_r, False)
  try:
    while len(buffer) < _MAX_VERDICT_BYTES and (chunk := os.read(verdict_r, 65536)):
      buffer += chunk
  except BlockingIOError:
    pass
  os.close(pidfd)
  return bytes(buffer), timed_out


def _judge(buffer: bytes, token: str, exit_code: int, timed_out: bool) -> tuple[str, str]:
  """Turns the worker's output and exit into (status, detail)."""
  verdicts = []
  for line in buffer.splitlines():
    try:
      verdict = json.loads(line)
    except (ValueError, RecursionError):  # The program may write anything here.
      continue
    if isinstance(verdict, dict) and isinstance(verdict.get("detail"), str):
      verdicts.append(verdict)
  for v in verdicts:  # Only the harness knows the token; the program does not.
    if v.get("token") == token and v.get("status") in ("passed", "setup_error"):
      return v["status"], v["detail"][:_DETAIL_CHARS]
  if timed_out:
    return "timeout", "wall-clock limit reached"
  if exit_code < 0:
    try:
      name = signal.Signals(-exit_code).name
    except ValueError:
      name = f"signal {-exit_code}"
    cause = {"SIGXCPU": "CPU time limit", "SIGXFSZ": "file size limit",
             "SIGKILL": "hard CPU limit, out of memory, or the program"}.get(name, "signal")
    return "killed", f"{name} ({cause})"
  for v in reversed(verdicts):
    if v.get("status") in ("failed", "error"):
      return v["status"], v["detail"][:_DETAIL_CHARS]
  return "error", (f"exited with code {exit_code} before the tests finished "
                   "(early exit or a tampered harness)")


def supervise(job: dict, report_fd: int) -> None:
  """Runs one job and writes {"nonce", "status", "detail"} to `report_fd`."""
  if job["namespaces"]:
    build_root(job["new_root"], job["uid"], job["scratch_bytes"])
  elif _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    raise SetupError("prctl(PR_SET_CHILD_SUBREAPER) failed")
  token = os.urandom(16).hex()
  verdict_r, verdict_w = os.pipe()
  deadline = time.monotonic() + job["timeout_s"]
  worker = os.fork()
  if worker == 0:
    try:
      os.close(verdict_r)
      os.close(report_fd)
      _run_worker(job, verdict_w, token)
    except BaseException:
      traceback.print_exc()  # To the captured stderr: a harness bug, worth seeing.
    finally:
      os._exit(1)
  os.close(verdict_w)
  buffer, timed_out = _read_verdict(worker, verdict_r, deadline)
  if timed_out:
    os.kill(worker, signal.SIGKILL)
  _, wait_status = os.waitpid(worker, 0)
  if job["drop_uid"] and not job["namespaces"]:
    _kill_uid(job["uid"])
  elif not job["namespaces"]:
    try:
      os.killpg(worker, signal.SIGKILL)
    except ProcessLookupError:
      pass
    _reap_children()
  status, detail = _judge(buffer, token, os.waitstatus_to_exitcode(wait_status), timed_out)
  os.write(report_fd, json.dumps(
      {"nonce": job["nonce"], "status": status, "detail": detail}).encode())


def main() -> None:
  job = json.loads(sys.stdin.buffer.read())
  null = os.open(os.devnull, os.O_RDONLY)
  os.dup2(null, 0)  # The job (with the tests) is unreadable from here on.
  os.close(null)
  report_fd = job["report_fd"]
  try:
    supervise(job, report_fd)
  except SetupError as e:
    os.write(report_fd, json.dumps(
        {"nonce": job["nonce"], "status": "setup_error", "detail": str(e)}).encode())
  os._exit(0)  # As pid 1, this ends every process left in the namespace.


if __name__ == "__main__":
  main()
