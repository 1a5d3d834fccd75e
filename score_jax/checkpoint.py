"""Orbax checkpoints of the whole run: train state, reference params, and run metadata.

A checkpoint step holds
  state: {"params", "opt_state", "step"} (sharded arrays, restored onto any mesh),
  meta:  JSON — current stage, stage step, PRNG seed data, data-iterator position,
         and the run's config (so a resumed run can check it is the same run).
Saves are asynchronous (training continues while orbax writes), every
`save_every` steps and on SIGTERM/SIGINT (TPU preemption), keeping the last
`keep`. Orbax writes each step to a temporary directory and renames it when
complete, so a crash mid-save leaves the previous step intact; a step that is
present but unreadable is skipped with a warning in favour of the one before.
A workdir that holds checkpoints none of which restore is an error, never a
silent fresh start.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """No checkpoint in an existing run's workdir could be restored."""


def abstract_like(tree: Any, shardings: Any | None = None) -> Any:
  """ShapeDtypeStructs (with target shardings) describing `tree`, to restore into."""
  if shardings is None:
    shardings = jax.tree.map(lambda x: x.sharding, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


class Checkpointer:
  """The run's orbax CheckpointManager plus preemption handling."""

  def __init__(self, directory: str, *, save_every: int, keep: int = 3,
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.save_every = save_every
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._preempted = threading.Event()
    self._previous_handlers = {}

  # --- preemption ------------------------------------------------------------------------------

  def install_signal_handlers(self) -> None:
    """SIGTERM / SIGINT set a flag; the train loop saves and exits at the next step boundary."""
    if threading.current_thread() is not threading.main_thread():
      return
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

  def _on_signal(self, signum, frame):
    del frame
    log.warning("received signal %d: saving a checkpoint at the end of this step", signum)
    self._preempted.set()

  @property
  def preempted(self) -> bool:
    return self._preempted.is_set()

  # --- save / restore --------------------------------------------------------------------------

  def should_save(self, step: int) -> bool:
    return self.preempted or (self.save_every > 0 and step % self.save_every == 0)

  def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> bool:
    """Starts an (async) save of `state` and `meta` at `step`; returns whether it saved."""
    if not force and not self.should_save(step):
      return False
    if step in self._manager.all_steps():
      return False
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)), force=True)
    if self.preempted:
      self._manager.wait_until_finished()
    return True

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def restore(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, meta) of the newest readable checkpoint, or None for a new run.

    abstract_state: `abstract_like(state)` for the target mesh — the checkpoint
    may have been written on another mesh shape or device count.
    """
    steps = self.all_steps()
    if not steps:
      return None
    errors = []
    for step in reversed(steps):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
      except Exception as e:  # corrupt or partial: fall back to the previous step.
        errors.append(f"step {step}: {type(e).__name__}: {str(e)[:300]}")
        log.warning("checkpoint at step %d in %s is unreadable (%s); trying the previous one",
                    step, self.directory, e)
        continue
      if errors:
        log.warning("resumed from step %d after skipping unreadable checkpoints: %s", step,
                    "; ".join(errors))
      return step, restored["state"], restored["meta"]
    raise CheckpointError(
        f"{self.directory} holds checkpoints at steps {steps} but none could be restored:\n  "
        + "\n  ".join(errors) + "\nMove the workdir away to start a fresh run, or fix the "
        "newest step directory.")

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
    for sig, handler in self._previous_handlers.items():
      signal.signal(sig, handler)
    self._previous_handlers.clear()
