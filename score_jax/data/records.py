"""Shared plumbing for the tfds builders: reading local files, decoding records.

The builders in this package read raw files that the user supplies (no hub is
reachable), write them once with tfds as ArrayRecord files under `data_dir`,
and are read back through `builder.as_data_source(split)`: random access with
no TensorFlow. tfds hands text features back as `bytes`; `load_split` wraps a
data source so that records come back as plain Python `str` / `int` / `list`.

tfds reuses prepared files: after changing the source files, point `data_dir`
at a fresh directory (or delete the builder's folder under it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

Record = dict[str, Any]


def require_file(path: str | os.PathLike[str], what: str) -> str:
  """`path` as a string if it is a file; else FileNotFoundError saying what belongs there."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Expected {what} at {path!r}, but there is no such file.")
  return path


def read_jsonl(path: str, required: Sequence[str] = ()) -> Iterator[tuple[int, Record]]:
  """Yields (1-based line number, object) for each non-blank line of a JSON-lines file.

  Raises ValueError naming the file and line when a line is not a JSON object or
  lacks one of the `required` fields.
  """
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_number} is not valid JSON ({e}); expected one JSON "
                         "object per line.") from e
      if not isinstance(record, dict):
        raise ValueError(f"{path}:{line_number} holds a {type(record).__name__}; expected a "
                         "JSON object per line.")
      missing = [k for k in required if k not in record]
      if missing:
        raise ValueError(f"{path}:{line_number} lacks field(s) {missing}; each line needs "
                         f"{list(required)}.")
      yield line_number, record


def require_nonempty_splits(splits: Mapping[str, Sequence[Any]], source: str) -> None:
  """Raises ValueError naming the empty splits (tfds cannot write a split with no examples)."""
  empty = [name for name, examples in splits.items() if not examples]
  if empty:
    raise ValueError(f"{source} gives no examples for split(s) {empty}; check that the file is "
                     "complete (tfds cannot write an empty split).")


def decode(value: Any) -> Any:
  """tfds record values as plain Python: bytes -> str, numpy scalars -> int/float, recursively."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, Mapping):
    return {k: decode(v) for k, v in value.items()}
  if isinstance(value, np.ndarray):
    return [decode(v) for v in value.tolist()] if value.ndim else decode(value.item())
  if isinstance(value, (list, tuple)):
    return [decode(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


class DecodedSource(Sequence[Record]):
  """A tfds data source whose records come back decoded by `decode` (random access, no TF)."""

  def __init__(self, source: Sequence[Mapping[str, Any]]):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):  # int -> Record; slice -> list[Record].
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for a split of {len(self)} records")
    return decode(self._source[index])


def load_split(builder: tfds.core.DatasetBuilder, split: str) -> DecodedSource:
  """Prepares the builder's files if needed, then gives random access to one split."""
  builder.download_and_prepare()
  if split not in builder.info.splits:
    raise ValueError(f"{builder.name} has no split {split!r}; its splits are "
                     f"{sorted(builder.info.splits)}.")
  return DecodedSource(builder.as_data_source(split=split))
