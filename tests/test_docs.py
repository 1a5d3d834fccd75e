"""docs/method.md names only things that exist, and nothing in the repository points outside it.

The method page cites code as `module.function` (relative to score_jax), config keys as
`section.key`, files by path and tests as `tests/file.py::test_name`; each of those is
resolved here against the package, the shipped configs and the test files. Code comments
cite the page as "docs/method.md §N": every such N must be a heading of the page.
"""

import dataclasses
import importlib
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHOD = os.path.join(ROOT, "docs", "method.md")

# Config sections; a root that is also a score_jax module may name either.
CONFIG_SECTIONS = {"rl", "eval", "baseline", "task", "warmstart", "model", "tokenizer",
                   "checkpoint", "export", "log"}
CHECKED_DIRS = ("score_jax/", "configs/", "tests/", "docs/", "benchmarks/", "scripts/",
                "launch/")
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.(?:[A-Za-z_]\w*|\*))+")
_TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(\w+)")
# Built from pieces, so that this file does not match itself.
_OUTSIDE = re.compile("|".join([r"\.\./" + "shared", "/work/" + "shared",
                                "score-" + r"method\.md", r"\bspec " + "§"]))
_SECTION_REF = re.compile(r"method\.md §(\d+(?:\.\d+)?)")


def _backticked(text: str) -> list[str]:
  return re.findall(r"`([^`\n]+)`", text)


def _config_keys() -> set[str]:
  """Every dotted key of every top-level config in configs/ (sections included)."""
  keys = set()
  for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
    if not name.endswith(".py") or name.startswith("_"):
      continue
    config = importlib.import_module(f"configs.{name[:-3]}").get_config()

    def walk(prefix, node):
      for key, value in node.items():
        path = f"{prefix}{key}"
        keys.add(path)
        if hasattr(value, "items"):
          walk(path + ".", value)

    walk("", config)
  return keys


def _resolve_code(name: str) -> bool:
  """Whether `name` is score_jax.<module>[.<attr>...] (or an importable module path)."""
  parts = name.split(".")
  for base in ("score_jax.", ""):
    for split in range(len(parts), 0, -1):
      try:
        obj = importlib.import_module(base + ".".join(parts[:split]))
      except ImportError:
        continue
      for attr in parts[split:]:
        fields = ({f.name for f in dataclasses.fields(obj)}
                  if isinstance(obj, type) and dataclasses.is_dataclass(obj) else set())
        if hasattr(obj, attr):
          obj = getattr(obj, attr)
        elif attr in fields:  # a dataclass field without a default.
          obj = None
        else:
          return False
      return True
  return False


def unresolved_names(text: str, config_keys: set[str]) -> dict[str, list[str]]:
  """The backticked names of `text` that do not exist, by kind; also counts what was checked."""
  bad = {"code": [], "config": [], "path": [], "test": []}
  checked = {kind: 0 for kind in bad}
  for token in _backticked(text):
    token = token.strip()
    if _TEST_REF.fullmatch(token):
      path, test = _TEST_REF.fullmatch(token).groups()
      checked["test"] += 1
      source = os.path.join(ROOT, path)
      if not (os.path.exists(source) and
              re.search(rf"^def {test}\(", open(source).read(), re.MULTILINE)):
        bad["test"].append(token)
      continue
    if " " not in token and token.startswith(CHECKED_DIRS):
      checked["path"] += 1
      if not os.path.exists(os.path.join(ROOT, token.rstrip("/"))):
        bad["path"].append(token)
      continue
    name = token.split("=", 1)[0].strip()  # `rl.kl_estimator="exact"` names rl.kl_estimator.
    if not _DOTTED.fullmatch(name):
      continue
    root = name.split(".", 1)[0]
    if root in CONFIG_SECTIONS:
      checked["config"] += 1
      key = name.removesuffix(".*")
      if key in config_keys or (root in {"eval", "model", "tokenizer", "checkpoint"}
                                and _resolve_code(name)):
        continue
      bad["config"].append(token)
    else:
      checked["code"] += 1
      if not _resolve_code(name):
        bad["code"].append(token)
  bad["checked"] = checked
  return bad


@pytest.fixture(scope="module")
def config_keys():
  return _config_keys()


def test_every_name_in_method_md_exists(config_keys):
  result = unresolved_names(open(METHOD).read(), config_keys)
  checked = result.pop("checked")
  assert result == {"code": [], "config": [], "path": [], "test": []}
  # The page names the method's functions, keys and tests: a parser that found none of them
  # would pass vacuously.
  assert checked["code"] >= 60 and checked["config"] >= 40 and checked["test"] >= 15, checked


def test_the_checker_flags_names_that_do_not_exist(config_keys):
  text = ("`losses.stage1_loss` `losses.stage3_loss` `rl.beta2` `rl.beta3` "
          "`eval.transition_metrics` `eval.no_such_key` `tasks.Task.answer` "
          "`tests/test_objectives.py::test_rloo_leave_one_out` "
          "`tests/test_objectives.py::test_no_such_test` `score_jax/nope.py` `warmstart.*`")
  result = unresolved_names(text, config_keys)
  assert result["code"] == ["losses.stage3_loss"]
  assert result["config"] == ["rl.beta3", "eval.no_such_key"]
  assert result["test"] == ["tests/test_objectives.py::test_no_such_test"]
  assert result["path"] == ["score_jax/nope.py"]


def _tracked_text_files() -> list[str]:
  try:
    # Tracked files and new ones not yet added (but not the ignored: .venv, runs, ...).
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, check=True, capture_output=True)
    paths = [p for p in out.stdout.decode().split("\0") if p]
  except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the tree.
    paths = []
    skip = (".git", ".pytest_cache", "__pycache__", "runs")
    for directory, dirs, files in os.walk(ROOT):
      dirs[:] = [d for d in dirs if d not in skip and not d.startswith(".venv")]
      paths += [os.path.relpath(os.path.join(directory, f), ROOT) for f in files if f != ".git"]
  texts = {}
  for path in paths:
    full = os.path.join(ROOT, path)
    if not os.path.isfile(full):
      continue
    try:
      with open(full, encoding="utf-8") as f:
        texts[path] = f.read()
    except UnicodeDecodeError:  # images and other binary files.
      continue
  return texts


def test_nothing_points_outside_the_repository():
  texts = _tracked_text_files()
  assert "docs/method.md" in texts and "README.md" in texts
  outside = [f"{path}:{text[:m.start()].count(chr(10)) + 1}: {m.group(0)}"
             for path, text in sorted(texts.items()) for m in _OUTSIDE.finditer(text)]
  assert not outside, ("these lines point at the method spec outside the repository; cite "
                       "docs/method.md (§N) instead:\n" + "\n".join(outside))


def test_section_references_name_headings_of_method_md():
  headings = set(re.findall(r"^#+ (\d+(?:\.\d+)?)[. ]", open(METHOD).read(), re.MULTILINE))
  assert {"1", "2", "2.4", "2.5", "5", "6", "7", "7.4", "7.9", "8"} <= headings
  refs = {(path, ref) for path, text in _tracked_text_files().items()
          for ref in _SECTION_REF.findall(text)}
  assert refs, "the code should cite the method page"
  assert sorted((p, r) for p, r in refs if r not in headings) == []
  for name in ("README.md", "WORKSPACE.md"):
    assert "docs/method.md" in open(os.path.join(ROOT, name)).read(), f"{name} must link to it"


def github_anchor(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_into_method_md_hit_a_heading():
  assert github_anchor("8. Choices the paper leaves open, and ours") == (
      "8-choices-the-paper-leaves-open-and-ours")
  anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", open(METHOD).read(),
                                                  re.MULTILINE)}
  links = {(path, anchor) for path, text in _tracked_text_files().items()
           for anchor in re.findall(r"\(docs/method\.md#([\w\-]+)\)", text)}
  assert links, "WORKSPACE.md links to sections of the method page"
  assert sorted((p, a) for p, a in links if a not in anchors) == []
