"""MBPP (Austin et al. 2021) from the standard local `mbpp.jsonl`, with its standard splits.

SCoRe trains its code model on MBPP. The file has 974 tasks, one JSON object a
line: {"task_id", "text", "code", "test_list", "test_setup_code",
"challenge_test_list"}. The splits are fixed by task id:

  prompt 1-10 (few-shot exemplars), test 11-510, validation 511-600, train 601-974.

Records keep every field as in the file (strings, lists of strings, an int
task id), in task-id order.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from score_jax.data import records

SPLIT_TASK_IDS: dict[str, range] = {
    "prompt": range(1, 11),
    "test": range(11, 511),
    "validation": range(511, 601),
    "train": range(601, 975),
}
FIELDS = ("task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list")
_FILE_FORMAT = ("the standard MBPP file mbpp.jsonl: one JSON object a line with "
                f"{list(FIELDS)}")


def split_of(task_id: int) -> str:
  """The standard split holding `task_id`."""
  for split, task_ids in SPLIT_TASK_IDS.items():
    if task_id in task_ids:
      return split
  raise ValueError(f"MBPP task id {task_id} is outside the standard range 1-974.")


def read_tasks(path: str) -> dict[str, list[dict]]:
  """The tasks of `mbpp.jsonl` grouped by split, each split sorted by task id."""
  records.require_file(path, _FILE_FORMAT)
  by_split: dict[str, list[dict]] = {split: [] for split in SPLIT_TASK_IDS}
  seen = set()
  for line_number, raw in records.read_jsonl(path):
    missing = [k for k in FIELDS if k not in raw]
    if missing:
      hint = (" (this looks like sanitized-mbpp.json, which uses 'prompt'; use the full mbpp.jsonl)"
              if "prompt" in raw else "")
      raise ValueError(f"{path}:{line_number} lacks field(s) {missing}{hint}; expected "
                       f"{_FILE_FORMAT}.")
    task = {k: raw[k] for k in FIELDS}
    if not isinstance(task["task_id"], int) or task["task_id"] in seen:
      raise ValueError(f"{path}:{line_number}: task_id {task['task_id']!r} is not a new integer.")
    for key in ("test_list", "challenge_test_list"):
      if not (isinstance(task[key], list) and all(isinstance(t, str) for t in task[key])):
        raise ValueError(f"{path}:{line_number}: {key} must be a list of strings.")
    seen.add(task["task_id"])
    by_split[split_of(task["task_id"])].append(task)
  for tasks in by_split.values():
    tasks.sort(key=lambda t: t["task_id"])
  return by_split


class MbppBuilder(tfds.core.GeneratorBasedBuilder):
  """MBPP's prompt/test/validation/train splits from a local `mbpp.jsonl`."""

  name = "score_mbpp"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Standard mbpp.jsonl with the task-id splits."}

  def __init__(self, *, source_path: str | os.PathLike[str], **kwargs):
    """`kwargs` go to tfds (e.g. `data_dir`, where the prepared files are written)."""
    self._source_path = os.fspath(source_path)
    super().__init__(file_format="array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    text, texts = tfds.features.Text(), tfds.features.Sequence(tfds.features.Text())
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "task_id": np.int32, "text": text, "code": text, "test_list": texts,
            "test_setup_code": text, "challenge_test_list": texts}),
        disable_shuffling=True,  # task-id order.
        homepage="https://github.com/google-research/google-research/tree/master/mbpp",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    splits = read_tasks(self._source_path)
    ranges = ", ".join(f"{k} {r.start}-{r.stop - 1}" for k, r in SPLIT_TASK_IDS.items())
    records.require_nonempty_splits(splits, f"{self._source_path} (task ids: {ranges})")
    return {split: self._generate_examples(tasks) for split, tasks in splits.items()}

  def _generate_examples(self, tasks: list[dict]):
    for task in tasks:
      yield task["task_id"], task


def load(source_path: str | os.PathLike[str], data_dir: str | os.PathLike[str],
         split: str) -> records.DecodedSource:
  """One split as decoded records, preparing the files under `data_dir` on first use."""
  builder = MbppBuilder(source_path=source_path, data_dir=os.fspath(data_dir))
  return records.load_split(builder, split)
