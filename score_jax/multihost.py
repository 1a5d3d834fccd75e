"""Multi-host (multi-process) JAX: joining the job, host-local data, host views, agreement.

One process runs per host; all of them execute the same program on one global
mesh. The rules this module encodes:
  * data: every host derives the same global batch description cheaply (problem
    indices from the seeded generator), but places only the rows its own devices
    hold (`host_rows`, `to_global`), so no host ships the whole batch;
  * host-side work (decoding, verification) happens on the rows a host owns, and
    small results (rewards, flags) are gathered so every host sees the same
    global values (`gather_rows`, `fetch`);
  * anything that ends in a collective (a save, a step) must be entered by every
    process or by none: `any_process` turns a local SIGTERM flag into one agreed
    answer, so no process waits in a collective that another has left.
On one process every function is the identity (or a local device_get) and no
collective runs.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Joins the multi-process job if this is one; returns whether it is (process_count > 1).

  Arguments default to the environment: JAX_COORDINATOR_ADDRESS ("host:port" of
  process 0), JAX_NUM_PROCESSES, JAX_PROCESS_ID. On a multi-host TPU slice
  (TPU_WORKER_HOSTNAMES lists several hosts) JAX finds all three itself. With
  none of these, or one process, it does nothing. CPU processes talk over gloo.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  multi_host_tpu = "," in env.get("TPU_WORKER_HOSTNAMES", "")
  if num_processes == 1 or not (multi_host_tpu or coordinator_address):
    return False
  if not multi_host_tpu and (num_processes is None or process_id is None):
    raise ValueError(
        f"coordinator address {coordinator_address!r} is set but the number of processes "
        f"({num_processes}) or this process's id ({process_id}) is not: set JAX_NUM_PROCESSES "
        "and JAX_PROCESS_ID (or --num_processes / --process_id) on every process.")
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"process id {process_id} is not in [0, {num_processes}); ids count "
                     "from 0 on the coordinator's process.")
  # Cross-process collectives between CPU devices need an implementation; gloo ships
  # with jaxlib. The option only concerns the CPU client (harmless on TPU / GPU).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  log.info("joined the job as process %d of %d", jax.process_index(), jax.process_count())
  return jax.process_count() > 1


def host_rows(num_rows: int, sharding: jax.sharding.Sharding, ndim: int = 1,
              axis: int = 0) -> slice:
  """The rows [start, stop) along `axis` of a global [num_rows, ...] array that this process's
  devices hold under `sharding` (all rows when that axis is replicated across processes).

  Raises when the rows are not one contiguous block (a device order that interleaves
  processes), which `to_global` could not express.
  """
  if jax.process_count() == 1:
    return slice(0, num_rows)
  shape = [1] * ndim
  shape[axis] = num_rows
  try:
    sharding.shard_shape(tuple(shape))
  except ValueError as e:
    raise ValueError(f"a batch of {num_rows} rows does not split evenly over {sharding}; make "
                     "the batch a multiple of the data-parallel device count.") from e
  starts, stops = [], []
  for index in sharding.addressable_devices_indices_map(tuple(shape)).values():
    start, stop, _ = index[axis].indices(num_rows)
    starts.append(start)
    stops.append(stop)
  start, stop = min(starts), max(stops)
  covered = np.zeros(num_rows, bool)
  for a, b in zip(starts, stops):
    covered[a:b] = True
  if not covered[start:stop].all():
    raise ValueError(f"process {jax.process_index()} holds non-contiguous rows of a "
                     f"{num_rows}-row batch under {sharding}; order the mesh's devices by "
                     "process (sharding.make_mesh does, from jax.devices()).")
  return slice(start, stop)


def to_global(local: np.ndarray, sharding: jax.sharding.Sharding,
              global_shape: tuple[int, ...]) -> jax.Array:
  """A global jax.Array from this process's rows (`local` = global[host_rows(...)]).

  Unlike device_put of the full host array, only local rows are transferred and no
  cross-process equality check (an all-gather of the whole batch) runs.
  """
  return jax.make_array_from_process_local_data(sharding, np.asarray(local),
                                                tuple(global_shape))


def global_from_full(full: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """`to_global` of the rows this process owns, cut from a batch every process knows in full."""
  full = np.asarray(full)
  rows = host_rows(full.shape[0], sharding, full.ndim)
  return to_global(full[rows], sharding, full.shape)


def fetch(tree: Any) -> Any:
  """Numpy values of (possibly non-addressable) global arrays, the same on every process.

  A collective when an array spans processes and is not fully replicated: every
  process must call it with the same arrays, in the same order.
  """
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(get, tree)


def gather_rows(local: np.ndarray, rows: slice, num_rows: int, axis: int = 0) -> np.ndarray:
  """The full [.., num_rows, ..] array on every process from each process's `rows` along `axis`.

  Rows held by several processes (a replicated batch) must agree; they are not summed.
  """
  local = np.asarray(local)
  if jax.process_count() == 1:
    if rows != slice(0, num_rows):
      raise ValueError(f"a single process must hold all {num_rows} rows, got {rows}.")
    return local
  bounds = multihost_utils.process_allgather(np.array([rows.start, rows.stop], np.int64))
  sizes = {int(b - a) for a, b in bounds}
  if len(sizes) != 1:
    raise ValueError(f"processes hold different numbers of rows {bounds.tolist()}; "
                     "make the batch divisible by the number of data-parallel devices.")
  values = multihost_utils.process_allgather(local)  # [processes, ...local shape]
  out = np.zeros(local.shape[:axis] + (num_rows,) + local.shape[axis + 1:], local.dtype)
  for (start, stop), value in zip(bounds, values):
    index = (slice(None),) * axis + (slice(int(start), int(stop)),)
    out[index] = value
  return out


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is true on any (e.g. a SIGTERM seen by one host).

  A tiny all-gather: call it at the same point of the loop on every process.
  """
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.array([bool(flag)]), tiled=True)
  return bool(np.any(flags))


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
