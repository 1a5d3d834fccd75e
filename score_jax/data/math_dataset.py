"""MATH (Hendrycks et al. 2021) from local files, split as in SCoRe.

SCoRe trains on the 7,500 train problems plus the 4,500 test problems outside
MATH500, and evaluates on MATH500 (the PRM800K split of 500 test problems).
`MathBuilder` reads the problems from `source_dir` in either layout:

  Hendrycks:  <source_dir>/train/<subject>/<n>.json and <source_dir>/test/<subject>/<n>.json,
              each {"problem", "level": "Level 3", "type": "Algebra", "solution"};
              the id is "test/algebra/17.json", as in PRM800K's `unique_id`.
  JSON lines: <source_dir>/train.jsonl and <source_dir>/test.jsonl, one object a
              line with "problem", "solution" (or "answer"), "level" ("Level 3" or
              3), "type" or "subject", and optionally "unique_id" (the id;
              otherwise "train.jsonl:<line>").

and MATH500 from `math500_path`, the PRM800K `test.jsonl` ({"problem",
"answer", "unique_id", ...}). A source problem is held out of `train` when its
id or its whitespace-normalised text equals a MATH500 problem's. By default
every MATH500 problem must be found among the source problems, so that a
mismatch between the two files cannot leak evaluation problems into training.

Records: {"id", "problem", "answer", "level" (-1 for "Level ?"), "subject"}.
The gold answer is the record's "answer" if given, else the content of the
last \\boxed{...} (or \\fbox{...}) of the solution
(`score_jax.rewards.math.gold_from_solution`). Every gold answer must pass
`score_jax.rewards.math.parse_gold` (the verifier that will score it can parse
it); a missing or unparseable gold fails the load with an error naming the
problem.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import os
import re
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from score_jax.data import records
from score_jax.rewards import math as math_reward

_HENDRYCKS_SPLITS = ("train", "test")
_LEVEL = re.compile(r"(?:Level\s*)?(\d+|\?)")
# Checking a gold answer takes ~10 ms of sympy in a verifier worker; threads keep
# several workers busy. The cap bounds the worker processes on large hosts.
_GOLD_CHECK_THREADS = min(8, os.cpu_count() or 1)


def normalise_problem_text(problem: str) -> str:
  """Whitespace-collapsed problem text, the key for matching MATH500 to the source files."""
  return " ".join(problem.split())


def _parse_level(level: object, where: str) -> int:
  if isinstance(level, (int, np.integer)) and not isinstance(level, bool):
    return int(level)
  match = _LEVEL.fullmatch(str(level).strip())
  if not match:
    raise ValueError(f"{where}: level {level!r} is neither 'Level N', 'Level ?' nor an integer.")
  return -1 if match.group(1) == "?" else int(match.group(1))


def _example(problem_id: str, raw: dict, where: str) -> dict:
  """A record in the builder's schema from one raw problem."""
  if "problem" not in raw:
    raise ValueError(f"{where}: no 'problem' field.")
  answer = raw.get("answer")
  if not isinstance(answer, str) or not answer.strip():
    answer = math_reward.gold_from_solution(raw.get("solution"))
  if answer is None:
    raise ValueError(f"Problem {problem_id!r} ({where}) has no gold answer: no non-empty "
                     "'answer' field and no non-empty \\boxed{...} in its 'solution'.")
  try:  # A gold the verifier cannot read would score every response 0, silently.
    answer = math_reward.parse_gold(answer, problem_id)
  except ValueError as error:
    raise ValueError(f"{where}: {error}") from error
  subject = raw.get("subject", raw.get("type"))
  if not isinstance(subject, str):
    raise ValueError(f"{where}: no 'subject' or 'type' field naming the MATH subject.")
  return {"id": problem_id, "problem": raw["problem"], "answer": answer,
          "level": _parse_level(raw.get("level", "Level ?"), where), "subject": subject}


def _examples(raw_problems: Iterable[tuple[str, dict, str]]) -> list[dict]:
  """`_example(problem_id, raw, where)` of each triple, in order; the first error is raised."""
  threads = concurrent.futures.ThreadPoolExecutor(_GOLD_CHECK_THREADS)
  try:
    return list(threads.map(lambda args: _example(*args), raw_problems))
  finally:
    threads.shutdown(cancel_futures=True)  # After an error, skip the checks still queued.


def _read_hendrycks(source_dir: str, split: str) -> Iterator[tuple[str, dict, str]]:
  paths = sorted(glob.glob(os.path.join(source_dir, split, "*", "*.json")))
  if not paths:
    raise FileNotFoundError(f"No MATH problems under {os.path.join(source_dir, split)!r}; expected "
                            f"files {split}/<subject>/<n>.json (Hendrycks layout).")
  for path in paths:
    subject_dir, name = path.split(os.sep)[-2:]
    with open(path, encoding="utf-8") as f:
      try:
        raw = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}).") from e
    yield f"{split}/{subject_dir}/{name}", raw, path


def _read_jsonl(source_dir: str, split: str) -> Iterator[tuple[str, dict, str]]:
  path = os.path.join(source_dir, f"{split}.jsonl")
  for line_number, raw in records.read_jsonl(path, required=("problem",)):
    problem_id = raw.get("unique_id") or f"{split}.jsonl:{line_number}"
    yield problem_id, raw, f"{path}:{line_number}"


def read_source_problems(source_dir: str) -> list[dict]:
  """All train and test problems under `source_dir` (either layout), train first."""
  if all(os.path.isdir(os.path.join(source_dir, s)) for s in _HENDRYCKS_SPLITS):
    reader = _read_hendrycks
  elif all(os.path.isfile(os.path.join(source_dir, f"{s}.jsonl")) for s in _HENDRYCKS_SPLITS):
    reader = _read_jsonl
  else:
    raise FileNotFoundError(
        f"No MATH data found in {source_dir!r}. Expected either the Hendrycks layout "
        "(train/<subject>/<n>.json and test/<subject>/<n>.json, each with 'problem', 'level', "
        "'type', 'solution') or train.jsonl and test.jsonl (one such object a line).")
  return _examples(raw for split in _HENDRYCKS_SPLITS for raw in reader(source_dir, split))


def read_math500(path: str) -> list[dict]:
  """The MATH500 problems of a PRM800K-style `test.jsonl`."""
  records.require_file(path, "the MATH500 problems as JSON lines (PRM800K test.jsonl: "
                       "'problem', 'answer', 'unique_id' such as 'test/precalculus/807.json')")
  rows = records.read_jsonl(path, required=("problem", "unique_id"))
  return _examples((raw["unique_id"], raw, f"{path}:{line_number}") for line_number, raw in rows)


def _require_unique_ids(problems: list[dict], where: str) -> None:
  seen = set()
  for problem in problems:
    if problem["id"] in seen:
      raise ValueError(f"Problem id {problem['id']!r} appears twice in {where}; ids must be "
                       "unique.")
    seen.add(problem["id"])


def split_problems(source: list[dict], math500: list[dict], allow_unmatched_eval: bool = False
                   ) -> dict[str, list[dict]]:
  """{"train": source problems not in MATH500, "eval": MATH500}, matched by id or problem text."""
  _require_unique_ids(source, "the MATH source files")
  _require_unique_ids(math500, "the MATH500 file")
  eval_ids = {p["id"] for p in math500}
  eval_texts = {normalise_problem_text(p["problem"]) for p in math500}
  train, matched_ids, matched_texts = [], set(), set()
  for problem in source:
    text = normalise_problem_text(problem["problem"])
    if problem["id"] in eval_ids or text in eval_texts:
      matched_ids.add(problem["id"])
      matched_texts.add(text)
    else:
      train.append(problem)
  unmatched = [p["id"] for p in math500 if p["id"] not in matched_ids
               and normalise_problem_text(p["problem"]) not in matched_texts]
  if unmatched and not allow_unmatched_eval:
    raise ValueError(
        f"{len(unmatched)} of {len(math500)} MATH500 problems were not found in the source files "
        f"by id or problem text (e.g. {unmatched[:5]}), so they could not be held out of training. "
        "Point source_dir at the full MATH data, or pass allow_unmatched_eval=True.")
  logging.info("MATH: %d train problems, %d held out as MATH500 (%d not found in the source).",
               len(train), len(source) - len(train), len(unmatched))
  return {"train": train, "eval": math500}


class MathBuilder(tfds.core.GeneratorBasedBuilder):
  """MATH as two splits, `train` (12,000 - MATH500) and `eval` (MATH500), from local files."""

  name = "score_math"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Hendrycks or JSON-lines MATH with MATH500 held out."}

  def __init__(self, *, source_dir: str | os.PathLike[str], math500_path: str | os.PathLike[str],
               allow_unmatched_eval: bool = False, **kwargs):
    """`kwargs` go to tfds (e.g. `data_dir`, where the prepared files are written)."""
    self._source_dir = os.fspath(source_dir)
    self._math500_path = os.fspath(math500_path)
    self._allow_unmatched_eval = allow_unmatched_eval
    super().__init__(file_format="array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(), "problem": tfds.features.Text(),
            "answer": tfds.features.Text(), "level": np.int32, "subject": tfds.features.Text()}),
        disable_shuffling=True,  # keep the source order: deterministic, readable ids.
        homepage="https://github.com/hendrycks/math",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    splits = split_problems(read_source_problems(self._source_dir),
                            read_math500(self._math500_path), self._allow_unmatched_eval)
    records.require_nonempty_splits(splits, f"{self._source_dir} with {self._math500_path}")
    return {name: self._generate_examples(problems) for name, problems in splits.items()}

  def _generate_examples(self, problems: list[dict]):
    for problem in problems:
      yield problem["id"], problem


def load(source_dir: str | os.PathLike[str], math500_path: str | os.PathLike[str],
         data_dir: str | os.PathLike[str], split: str, **kwargs) -> records.DecodedSource:
  """One split ("train" or "eval") as decoded records, prepared under `data_dir` on first use."""
  builder = MathBuilder(source_dir=source_dir, math500_path=math500_path,
                        data_dir=os.fspath(data_dir), **kwargs)
  return records.load_split(builder, split)
