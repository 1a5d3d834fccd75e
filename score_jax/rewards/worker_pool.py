"""Long-lived helper processes that answer requests under a hard time limit.

A verifier that calls into a library which may hang (sympy stuck in C code
ignores signals; SIGALRM only works in the main thread) cannot be bounded from
inside the caller's process. `WorkerPool` sends each request to a worker
process over a pipe instead, and kills a worker that has not answered within
the caller's `timeout_s`: a hard limit that holds from any thread.

A worker runs `python -m score_jax.rewards.worker_pool MODULE:FACTORY ...`. It
imports MODULE, calls FACTORY() once to build a handler (a function from a
JSON-able request to a JSON-able result) and answers one JSON line per
request. Besides the caller's kill, a worker bounds itself, so that one
orphaned by a crashed caller cannot spin forever: a soft time budget per
request (SIGALRM), a CPU-time limit just past that budget (SIGXCPU ends
computations stuck in C) and an address-space limit.

Protocol (one JSON object a line): the worker first says {"ready": true} or
{"fatal": "..."}; then for each {"budget_s": s, "request": r} it answers
{"result": handler(r)}, or {"result": null} if the handler raised or ran past
its budget.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from absl import logging

# The worker's own soft limit, as a fraction of the caller's timeout: it answers
# null before the caller has to kill it (and pay a worker restart).
_SOFT_BUDGET_FRACTION = 0.8
_REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


class _Worker:
  """One worker process answering one JSON line per request."""

  def __init__(self, handler: str, address_space_bytes: int, start_timeout_s: float):
    # cwd: `-m` then imports this very package. A new session: a Ctrl-C meant
    # for the trainer does not reach the worker.
    self._process = subprocess.Popen(
        [sys.executable, "-m", __spec__.name, handler, str(address_space_bytes)],
        cwd=_REPOSITORY_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, bufsize=0, start_new_session=True)
    self._buffer = b""
    self._poll = select.poll()  # Not select.select: fds above 1024 are common in trainers.
    self._poll.register(self._process.stdout.fileno(), select.POLLIN)
    try:
      ready = self._read_line(start_timeout_s)
    except BaseException:
      self.kill()
      raise
    if ready != {"ready": True}:
      self.kill()
      raise RuntimeError(f"Worker for {handler!r} failed to start: {ready}. The handler's "
                         f"module and what its factory imports must be installed for "
                         f"{sys.executable}.")

  @property
  def pid(self) -> int:
    return self._process.pid

  def ask(self, request: object, budget_s: float, timeout_s: float) -> object:
    """The worker's result, or raises TimeoutError / EOFError / OSError."""
    message = {"budget_s": budget_s, "request": request}
    self._process.stdin.write(json.dumps(message).encode() + b"\n")
    return self._read_line(timeout_s)["result"]

  def _read_line(self, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while b"\n" not in self._buffer:
      remaining_ms = (deadline - time.monotonic()) * 1000
      if remaining_ms <= 0:
        raise TimeoutError(f"no answer within {timeout_s:.2f} s")
      if self._poll.poll(remaining_ms):
        chunk = os.read(self._process.stdout.fileno(), 1 << 16)
        if not chunk:
          raise EOFError("worker exited")
        self._buffer += chunk
    line, self._buffer = self._buffer.split(b"\n", 1)
    return json.loads(line)

  def kill(self) -> None:
    self._process.kill()
    self._process.wait()
    for stream in (self._process.stdin, self._process.stdout):
      stream.close()


class WorkerPool:
  """Workers for one handler, shared by all threads; at most `max_workers` requests at once.

  Workers start on first use and are reused; `close()` (also run at interpreter
  exit) ends them all, and later requests start new ones.
  """

  def __init__(self, handler: str, max_workers: int, address_space_bytes: int = 4 << 30,
               start_timeout_s: float = 60.0):
    """`handler` is "module:factory", importable from the repository root."""
    module, _, factory = handler.partition(":")
    if not module or not factory:
      raise ValueError(f"handler {handler!r} must be 'package.module:factory_function'.")
    self._handler = handler
    self._address_space_bytes = address_space_bytes
    self._start_timeout_s = start_timeout_s
    self._lock = threading.Lock()
    self._idle: list[_Worker] = []
    self._live: set[_Worker] = set()
    self._slots = threading.BoundedSemaphore(max_workers)
    atexit.register(self.close)

  def run(self, request: object, timeout_s: float) -> object:
    """The handler's result for `request`; None when it failed or timed out.

    A worker that has not answered within `timeout_s` seconds is killed (and
    replaced on a later request); the worker itself gives up a little earlier.
    """
    with self._slots:
      with self._lock:
        worker = self._idle.pop() if self._idle else None
      if worker is None:
        worker = _Worker(self._handler, self._address_space_bytes, self._start_timeout_s)
        with self._lock:
          self._live.add(worker)
      try:
        result = worker.ask(request, _SOFT_BUDGET_FRACTION * timeout_s, timeout_s)
      except (TimeoutError, EOFError, OSError, ValueError, KeyError) as error:
        logging.log_every_n_seconds(logging.WARNING, "%s worker abandoned a request (%s); "
                                    "returning None and restarting the worker", 30,
                                    self._handler, error)
        self._retire(worker)
        return None
      except BaseException:
        self._retire(worker)
        raise
      with self._lock:
        self._idle.append(worker)
      return result

  def worker_pids(self) -> list[int]:
    """Process ids of the live workers, idle or busy (for monitoring and tests)."""
    with self._lock:
      return sorted(worker.pid for worker in self._live)

  def _retire(self, worker: _Worker) -> None:
    with self._lock:
      self._live.discard(worker)
    worker.kill()

  def close(self) -> None:
    """Ends every worker; later requests start new ones."""
    with self._lock:
      workers, self._live, self._idle = list(self._live), set(), []
    for worker in workers:
      worker.kill()


def _serve(handler: str, address_space_bytes: int) -> None:
  """Worker main loop: JSON requests on stdin, one JSON line back for each."""
  import resource  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top

  # Replies get a private copy of stdout; anything a library prints goes to stderr (null).
  replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
  os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

  def reply(message: dict) -> None:
    replies.write(json.dumps(message) + "\n")
    replies.flush()

  def lower_soft_limit(kind: int, soft: int) -> None:
    hard = resource.getrlimit(kind)[1]
    resource.setrlimit(kind, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))

  try:
    lower_soft_limit(resource.RLIMIT_AS, address_space_bytes)
    module, _, factory = handler.partition(":")
    handle: Callable[[object], object] = getattr(importlib.import_module(module), factory)()
  except Exception as error:  # pylint: disable=broad-except
    reply({"fatal": repr(error)})
    return

  class OverBudget(BaseException):
    """Raised by SIGALRM; a BaseException so that library `except Exception` lets it out."""

  def on_alarm(signum, frame):
    raise OverBudget()

  signal.signal(signal.SIGALRM, on_alarm)
  reply({"ready": True})
  for line in sys.stdin:
    message = json.loads(line)
    budget_s = max(float(message["budget_s"]), 1e-3)
    # Past the soft limit, SIGXCPU ends a computation stuck in C even if the
    # parent is gone and can no longer kill us.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    lower_soft_limit(resource.RLIMIT_CPU, int(usage.ru_utime + usage.ru_stime + budget_s) + 2)
    try:
      signal.setitimer(signal.ITIMER_REAL, budget_s)
      try:
        result = handle(message["request"])
      finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    except (OverBudget, Exception):  # pylint: disable=broad-except
      result = None
    reply({"result": result})


if __name__ == "__main__":
  _serve(sys.argv[1], int(sys.argv[2]))
