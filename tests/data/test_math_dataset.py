"""The MATH builder: both source layouts, the MATH500 hold-out, gold answers, errors."""

import json

import pytest

from score_jax.data import math_dataset

# (split, subject directory, file, record): a tiny MATH in the Hendrycks layout.
HENDRYCKS = [
    ("train", "algebra", "1.json", {"problem": "Solve $x+1=2$.", "level": "Level 1",
                                    "type": "Algebra", "solution": "So $x=\\boxed{1}$."}),
    ("train", "geometry", "2.json", {"problem": "Area of a unit square?", "level": "Level ?",
                                     "type": "Geometry",
                                     "solution": "$\\boxed{\\frac{1}{1}}$, i.e. $\\boxed{1}$."}),
    ("test", "algebra", "3.json", {"problem": "Compute $\\{1\\}$.", "level": "Level 2",
                                   "type": "Algebra", "solution": "$\\boxed{\\{1\\}}$"}),
    ("test", "precalculus", "807.json", {"problem": "Find $\\cos 0$.", "level": "Level 3",
                                         "type": "Precalculus", "solution": "$\\boxed{1}$"}),
    ("test", "number_theory", "5.json", {"problem": "What is  2 mod 2?", "level": "Level 5",
                                         "type": "Number Theory", "solution": "$\\fbox{0}$"}),
]
# MATH500 as PRM800K gives it: one entry matched by id, one only by its text.
MATH500 = [
    {"problem": "Find $\\cos 0$.", "answer": "1", "subject": "Precalculus", "level": 3,
     "unique_id": "test/precalculus/807.json"},
    {"problem": "What is 2 mod 2?", "answer": "0", "subject": "Number Theory", "level": 5,
     "unique_id": "test/number_theory/renamed.json"},
]


def write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def write_hendrycks(root):
  for split, subject, name, record in HENDRYCKS:
    (root / split / subject).mkdir(parents=True, exist_ok=True)
    (root / split / subject / name).write_text(json.dumps(record))
  return root


def test_hendrycks_layout_splits_and_fields(tmp_path):
  source = write_hendrycks(tmp_path / "MATH")
  math500 = write_jsonl(tmp_path / "test.jsonl", MATH500)
  data_dir = tmp_path / "tfds"
  train = math_dataset.load(source, math500, data_dir, "train")
  assert [r["id"] for r in train] == ["train/algebra/1.json", "train/geometry/2.json",
                                      "test/algebra/3.json"]
  assert train[1] == {"id": "train/geometry/2.json", "problem": "Area of a unit square?",
                      "answer": "1", "level": -1, "subject": "Geometry"}
  assert train[2]["answer"] == "\\{1\\}" and train[2]["level"] == 2
  evaluation = math_dataset.load(source, math500, data_dir, "eval")
  assert len(evaluation) == 2
  assert evaluation[-1] == {"id": "test/number_theory/renamed.json", "problem": "What is 2 mod 2?",
                            "answer": "0", "level": 5, "subject": "Number Theory"}
  assert list(data_dir.glob("score_math/1.0.0/*.array_record*"))
  with pytest.raises(ValueError, match="no split 'test'"):
    math_dataset.load(source, math500, data_dir, "test")


def test_jsonl_layout_matches_math500_by_text(tmp_path):
  source = tmp_path / "math_jsonl"
  source.mkdir()
  rows = {split: [dict(r, subject=r["type"]) for s, _, _, r in HENDRYCKS if s == split]
          for split in ("train", "test")}
  for split in rows:
    write_jsonl(source / f"{split}.jsonl", rows[split])
  math500 = write_jsonl(tmp_path / "math500.jsonl",
                        [dict(r, unique_id=f"x/{i}") for i, r in enumerate(MATH500)])
  train = math_dataset.load(source, math500, tmp_path / "tfds", "train")
  assert [r["id"] for r in train] == ["train.jsonl:1", "train.jsonl:2", "test.jsonl:1"]
  assert [r["answer"] for r in train] == ["1", "1", "\\{1\\}"]


def test_every_math500_problem_must_be_held_out(tmp_path):
  source = write_hendrycks(tmp_path / "MATH")
  stray = dict(MATH500[0], problem="A problem absent from the source.", unique_id="test/x/9.json")
  math500 = write_jsonl(tmp_path / "test.jsonl", MATH500 + [stray])
  with pytest.raises(ValueError, match=r"1 of 3 MATH500 problems were not found.*test/x/9.json"):
    math_dataset.load(source, math500, tmp_path / "tfds", "train")
  evaluation = math_dataset.load(source, math500, tmp_path / "tfds2", "eval",
                                 allow_unmatched_eval=True)
  assert len(evaluation) == 3


def test_missing_files_name_the_expected_path_and_format(tmp_path):
  math500 = write_jsonl(tmp_path / "test.jsonl", MATH500)
  with pytest.raises(FileNotFoundError, match=r"train/<subject>/<n>\.json.*train\.jsonl"):
    math_dataset.load(tmp_path / "nowhere", math500, tmp_path / "tfds", "train")
  source = write_hendrycks(tmp_path / "MATH")
  with pytest.raises(FileNotFoundError, match=r"unique_id.*missing\.jsonl"):
    math_dataset.load(source, tmp_path / "missing.jsonl", tmp_path / "tfds", "train")


def test_unextractable_gold_answer_names_the_problem(tmp_path):
  source = write_hendrycks(tmp_path / "MATH")
  (source / "train" / "algebra" / "4.json").write_text(json.dumps(
      {"problem": "?", "level": "Level 1", "type": "Algebra", "solution": "No box, $\\boxed{}$."}))
  math500 = write_jsonl(tmp_path / "test.jsonl", MATH500)
  with pytest.raises(ValueError, match=r"'train/algebra/4.json'.*no gold answer"):
    math_dataset.load(source, math500, tmp_path / "tfds", "train")


def test_unparseable_gold_answer_fails_the_load_naming_the_problem(tmp_path):
  source = write_hendrycks(tmp_path / "MATH")
  # A box with content, so extraction succeeds, but nothing math-verify can read.
  (source / "train" / "algebra" / "4.json").write_text(json.dumps(
      {"problem": "?", "level": "Level 1", "type": "Algebra", "solution": "$\\boxed{\\frac{}{}}$"}))
  math500 = write_jsonl(tmp_path / "test.jsonl", MATH500)
  with pytest.raises(ValueError, match=r"4\.json: Problem 'train/algebra/4.json'.*cannot parse"):
    math_dataset.load(source, math500, tmp_path / "tfds", "train")


def test_unparseable_math500_answer_fails_the_load(tmp_path):
  source = write_hendrycks(tmp_path / "MATH")
  broken = dict(MATH500[0], answer="\\frac{1}{2")  # The "answer" field is checked too.
  math500 = write_jsonl(tmp_path / "test.jsonl", [broken, MATH500[1]])
  with pytest.raises(ValueError, match=r"test\.jsonl:1: Problem 'test/precalculus/807.json': "
                                       r"unbalanced braces"):
    math_dataset.load(source, math500, tmp_path / "tfds", "eval")


def test_duplicate_ids_and_bad_levels_are_refused(tmp_path):
  problem = {"id": "a", "problem": "p", "answer": "1", "level": 1, "subject": "Algebra"}
  with pytest.raises(ValueError, match="appears twice"):
    math_dataset.split_problems([problem, dict(problem, problem="q")], [])
  source = write_hendrycks(tmp_path / "MATH")
  (source / "test" / "algebra" / "6.json").write_text(json.dumps(
      {"problem": "?", "level": "hard", "type": "Algebra", "solution": "$\\boxed{2}$"}))
  math500 = write_jsonl(tmp_path / "test.jsonl", MATH500)
  with pytest.raises(ValueError, match=r"6\.json: level 'hard' is neither"):
    math_dataset.load(source, math500, tmp_path / "tfds", "train")
