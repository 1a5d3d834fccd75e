"""Metrics to `metrics.jsonl`, TensorBoard and the console, from process 0 only."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from score_jax import console


def _scalar(x: Any) -> float | int | str:
  if isinstance(x, str):
    return x
  x = np.asarray(jax.device_get(x))
  return x.item() if x.size == 1 else float(x.mean())


def _belongs_to(record: Mapping[str, Any], prefix: str) -> bool:
  return any(k.startswith(prefix) for k in record if k not in ("step", "time"))


class MetricWriter:
  """Writes each step's scalar metrics to the sinks; a no-op on processes other than 0.

  Console: quiet by default, a compact line (`console.summary_line`) every `every`
  steps and at a phase's last step, above the phase's bar on a terminal
  (`progress`); `verbose=True` prints every written step's full metrics instead.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True, stream=None, every: int = 1,
               verbose: bool = False):
    if every < 1:
      raise ValueError(f"log.every must be >= 1 (steps between console lines), got {every}.")
    self.enabled = jax.process_index() == 0
    self.stream = stream or sys.stdout
    self.every, self.verbose = every, verbose
    self._path = os.path.join(workdir, "metrics.jsonl")
    self._jsonl = None
    self._tb = None
    self._progress = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(self._path, "a", buffering=1)
    if tensorboard:
      from tensorboardX import SummaryWriter  # TF-free event writer.
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def drop_after(self, prefix: str, step: int) -> None:
    """Forgets the phase `prefix`'s records past `step` (its resumed step) in metrics.jsonl.

    A run resumed from step s repeats steps s+1.. of the interrupted one; without this
    they would appear twice. Other phases' records stay; an unreadable line (a write cut
    off by the kill) goes.
    """
    if not self.enabled:
      return
    self._jsonl.close()
    kept = []
    with open(self._path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        if not (_belongs_to(record, prefix) and record["step"] > step):
          kept.append(line if line.endswith("\n") else line + "\n")
    with open(self._path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(self._path + ".tmp", self._path)
    self._jsonl = open(self._path, "a", buffering=1)

  def progress(self, name: str, total: int, initial: int = 0, *,
               offset: int = 0) -> console.Progress:
    """Opens a phase's bar (closing the previous one): steps offset+1 .. offset+total."""
    if self._progress is not None:
      self._progress.close()
    self._progress = console.Progress(name, total, initial, offset=offset, stream=self.stream,
                                      enabled=self.enabled)
    return self._progress

  def write(self, step: int, metrics: Mapping[str, Any], *, prefix: str = "") -> None:
    if not self.enabled:
      return
    raw = {k: _scalar(v) for k, v in metrics.items()}
    values = {f"{prefix}{k}": v for k, v in raw.items()}
    record = {"step": int(step), "time": time.time(), **values}
    self._jsonl.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in values.items():
        if not isinstance(v, str):
          self._tb.add_scalar(k, v, int(step))
    self._console(int(step), raw, values, prefix)

  def _console(self, step: int, raw: Mapping[str, Any], values: Mapping[str, Any],
               prefix: str) -> None:
    bar = self._progress if self._progress is not None and not self._progress.closed else None
    if self.verbose:
      line = console.full_line(step, values)
      if bar is None:
        print(line, file=self.stream, flush=True)
      else:
        bar.update(step)
        bar.print(line)
      return
    if bar is None:  # no phase open: the step and its prefix name the line.
      if step % self.every == 0:
        print(console.summary_line(prefix.rstrip("/"), step, None, raw), file=self.stream,
              flush=True)
      return
    bar.update(step)
    position = step - bar.offset
    if position % self.every == 0 or position == bar.total:
      bar.print(console.summary_line(bar.name, position, bar.total, raw,
                                     bar.seconds_per_step(position)))

  def close(self) -> None:
    if self._progress is not None:
      self._progress.close()
      self._progress = None
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
