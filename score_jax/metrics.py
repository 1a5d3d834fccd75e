"""Metrics to stdout, `metrics.jsonl` and TensorBoard, from process 0 only."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


def _scalar(x: Any) -> float | int | str:
  if isinstance(x, str):
    return x
  x = np.asarray(jax.device_get(x))
  return x.item() if x.size == 1 else float(x.mean())


class MetricWriter:
  """Writes each step's scalar metrics to the three sinks; a no-op on processes other than 0."""

  def __init__(self, workdir: str, *, tensorboard: bool = True, stream=None):
    self.enabled = jax.process_index() == 0
    self.stream = stream or sys.stdout
    self._jsonl = None
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
    if tensorboard:
      from tensorboardX import SummaryWriter  # TF-free event writer.
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, Any], *, prefix: str = "") -> None:
    if not self.enabled:
      return
    values = {f"{prefix}{k}": _scalar(v) for k, v in metrics.items()}
    record = {"step": int(step), "time": time.time(), **values}
    self._jsonl.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in values.items():
        if not isinstance(v, str):
          self._tb.add_scalar(k, v, int(step))
    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items())
    print(f"[step {int(step)}] {shown}", file=self.stream, flush=True)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
