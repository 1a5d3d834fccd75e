"""The MBPP builder: standard task-id splits, field round trip, errors."""

import json

import pytest

from score_jax.data import mbpp


def task(task_id, **overrides):
  return {"task_id": task_id, "text": f"Write task {task_id}.",
          "code": f"def f():\r\n  return {task_id}", "test_list": [f"assert f() == {task_id}"],
          "test_setup_code": "", "challenge_test_list": [], **overrides}


# Two tasks at the edges of every split, written out of order.
TASK_IDS = [974, 1, 10, 11, 510, 511, 600, 601]
EXPECTED = {"prompt": [1, 10], "test": [11, 510], "validation": [511, 600], "train": [601, 974]}


def write_mbpp(path, tasks):
  path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
  return path


def test_standard_splits_by_task_id(tmp_path):
  special = task(510, test_setup_code="import math", challenge_test_list=["assert f() != 0"],
                 test_list=["assert f() == 510", "assert f() > 0"])
  source = write_mbpp(tmp_path / "mbpp.jsonl",
                      [special if i == 510 else task(i) for i in TASK_IDS])
  for split, task_ids in EXPECTED.items():
    records = mbpp.load(source, tmp_path / "tfds", split)
    assert [r["task_id"] for r in records] == task_ids
  test_split = mbpp.load(source, tmp_path / "tfds", "test")
  assert test_split[1] == special
  assert test_split[0]["code"] == "def f():\r\n  return 11"  # kept as in the file.
  assert test_split[-1] == test_split[1] and test_split[0:2] == [test_split[0], test_split[1]]
  with pytest.raises(IndexError):
    test_split[2]  # pylint: disable=pointless-statement


@pytest.mark.parametrize("task_id,split", [(1, "prompt"), (10, "prompt"), (11, "test"),
                                           (510, "test"), (511, "validation"),
                                           (600, "validation"), (601, "train"), (974, "train")])
def test_split_of_matches_the_standard_ranges(task_id, split):
  assert mbpp.split_of(task_id) == split


def test_bad_files_give_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"mbpp\.jsonl.*no\.jsonl"):
    mbpp.load(tmp_path / "no.jsonl", tmp_path / "tfds", "train")
  sanitized = {"task_id": 11, "prompt": "Write f.", "code": "", "test_list": []}
  path = write_mbpp(tmp_path / "sanitized.jsonl", [sanitized])
  with pytest.raises(ValueError, match=r"sanitized-mbpp.*full mbpp\.jsonl"):
    mbpp.read_tasks(str(path))
  path = write_mbpp(tmp_path / "out_of_range.jsonl", [task(975)])
  with pytest.raises(ValueError, match="outside the standard range"):
    mbpp.read_tasks(str(path))
  path = write_mbpp(tmp_path / "twice.jsonl", [task(11), task(11)])
  with pytest.raises(ValueError, match="not a new integer"):
    mbpp.read_tasks(str(path))
  path = write_mbpp(tmp_path / "partial.jsonl", [task(11), task(601)])
  with pytest.raises(ValueError, match=r"no examples for split\(s\) \['prompt', 'validation'\]"):
    mbpp.load(path, tmp_path / "tfds_partial", "train")
