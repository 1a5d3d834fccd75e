"""What a run prints: a progress bar per phase (terminals only), a line every `log.every` steps.

The full metrics go to metrics.jsonl and TensorBoard (`metrics.MetricWriter`); the console
says how far a phase is and shows the few numbers that tell whether it works. With
`log.verbose` every written step prints all its metrics on one line instead (the old
console). A bar needs a terminal: when the stream is a file or a pipe (CI logs, `| tee`)
there is none, only the lines.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import tqdm

# The compact line's metrics, in this order: (key, label, format); a phase shows those it has
# (RL: accuracies, Δ, changed answers, KL per attempt; warm-start / SFT: the loss).
SUMMARY_KEYS = (
    ("acc_t1", "acc@t1", "{:.3f}"), ("acc_t2", "acc@t2", "{:.3f}"), ("delta", "Δ", "{:+.3f}"),
    ("changed_answer_rate", "changed", "{:.3f}"), ("kl_1", "KL1", "{:.3g}"),
    ("kl_2", "KL2", "{:.3g}"), ("loss", "loss", "{:.4g}"), ("kept", "kept", "{:g}"),
)


def is_terminal(stream: TextIO) -> bool:
  isatty = getattr(stream, "isatty", None)
  return bool(isatty and isatty())


def full_line(step: int, values: Mapping[str, Any]) -> str:
  """Every metric of a step: '[step 3] rl/loss=0.25 rl/stage=stage1 ...' (`log.verbose`)."""
  shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in values.items())
  return f"[step {int(step)}] {shown}"


def summary_line(phase: str, position: int, total: int | None, values: Mapping[str, Any],
                 seconds_per_step: float | None = None) -> str:
  """'RL stage1 12/20 | acc@t1 0.312 acc@t2 0.375 Δ +0.062 ... | 2.10 s/step'.

  values: the step's metrics without their phase prefix; keys not in SUMMARY_KEYS
  are left to metrics.jsonl.
  """
  where = f"{phase} {position}" + (f"/{total}" if total else "")
  shown = " ".join(f"{label} {fmt.format(values[key])}" for key, label, fmt in SUMMARY_KEYS
                   if isinstance(values.get(key), (int, float)))
  parts = [where] + ([shown] if shown else [])
  if seconds_per_step is not None:
    parts.append(f"{seconds_per_step:.2f} s/step")
  return " | ".join(parts)


class Progress:
  """One phase's bar (steps offset+1 .. offset+total), on a terminal only; lines go above it."""

  def __init__(self, name: str, total: int, initial: int = 0, *, offset: int = 0,
               stream: TextIO | None = None, enabled: bool = True, unit: str = "step"):
    self.name, self.total, self.offset = name, total, offset
    self.stream = stream or sys.stdout
    self.enabled = enabled
    self.position = initial
    self.closed = False
    self._bar = None
    if enabled and is_terminal(self.stream):
      self._bar = tqdm.tqdm(total=total, initial=initial, desc=name, unit=unit,
                            file=self.stream, dynamic_ncols=True)
    self._line_time, self._line_position = time.perf_counter(), initial

  @property
  def has_bar(self) -> bool:
    return self._bar is not None

  def update(self, step: int) -> None:
    """Moves the bar to the run's `step` (the phase's step - offset)."""
    position = step - self.offset
    if self._bar is not None and position > self.position:
      self._bar.update(position - self.position)
    self.position = max(self.position, position)

  def seconds_per_step(self, position: int) -> float | None:
    """Wall seconds per step since the previous line (None before any step ran)."""
    steps = position - self._line_position
    if steps <= 0:
      return None
    now = time.perf_counter()
    rate = (now - self._line_time) / steps
    self._line_time, self._line_position = now, position
    return rate

  def print(self, line: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(line, file=self.stream)  # above the bar, which redraws below it.
    else:
      print(line, file=self.stream, flush=True)

  def close(self) -> None:
    self.closed = True
    if self._bar is not None:
      self._bar.close()
      self._bar = None
