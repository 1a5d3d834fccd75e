"""Plumbing every resumable training phase shares (warm-start, RL, the SFT baselines).

A phase is one orbax checkpoint directory of the workdir and a loop of steps:
`open_phase` resumes it, `host_rows_of` places each step's host batch on the
mesh, `save_or_stop` saves when due and stops every process together on a
preemption. Nothing here knows which phase it runs.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np

from score_jax import checkpoint, multihost, sft, sharding

log = logging.getLogger(__name__)


def open_phase(workdir: str, name: str, state: sft.TrainState, *, save_every: int, keep: int):
  """The phase's checkpointer, resumed: (ckpt, start step, state, meta); start 0 when new."""
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, name), save_every=save_every, keep=keep)
  restored = ckpt.restore(checkpoint.abstract_like(state))
  start, meta = 0, {}
  if restored is not None:
    start, state, meta = restored
    log.info("%s resumed at step %d", name, start)
  ckpt.install_signal_handlers()
  return ckpt, start, state, meta


def host_rows_of(mesh: jax.sharding.Mesh, batch: dict[str, np.ndarray]) -> dict[str, Any]:
  """A batch every process knows in full -> global arrays from each process's own rows.

  One process: the numpy batch unchanged (the step places it). Several: only the rows
  this host's devices hold are transferred (jit refuses host arrays for shardings that
  span processes).
  """
  if jax.process_count() == 1:
    return batch
  return {k: multihost.global_from_full(v, sharding.batch_sharding(mesh, v.ndim))
          for k, v in batch.items()}


def save_or_stop(ckpt: checkpoint.Checkpointer, step: int, last: int, state: sft.TrainState,
                 meta: dict[str, Any]) -> None:
  """Saves when due; on a preemption seen by ANY process, every process saves, then exits.

  The save is a collective (orbax multi-host), so the decision is agreed first and the
  checkpointer's own (per-process, racy) preemption flag is not consulted.
  """
  stop = multihost.any_process(ckpt.preempted)
  due = step == last or (ckpt.save_every > 0 and step % ckpt.save_every == 0)
  if stop or due:
    ckpt.save(step, state, meta, force=True)
  if stop:
    ckpt.wait()
    phase = {"rl": "RL", "warmstart": "warm-start"}.get(meta["phase"], meta["phase"])
    raise SystemExit(f"preempted during {phase}; saved step {step}. Rerun the same command to "
                     "resume from it.")
