"""Device mesh, parameter sharding rules and activation constraints.

Two short tables, in the style of big_vision / maxtext:
  * PARAM_RULES: parameter-path regex -> logical axis names, one name per dim;
  * LOGICAL_TO_MESH: logical axis name -> mesh axes.
Adding a model family means adding rows, not code. A logical axis whose size
is not divisible by its mesh axes is replicated instead (e.g. a single KV head
under tensor parallelism), so one rule table serves MHA, GQA and MQA.

Mesh axes: "data" (pure data parallelism), "fsdp" (data parallelism with
parameters sharded, gathered per layer by XLA) and "tensor" (heads / MLP
hidden / vocab split across devices).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. Batch is split over both data-parallel axes.
LOGICAL_TO_MESH: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "embed": ("fsdp",),
    "vocab": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
}

# Parameter path (joined with "/") -> logical axes. First match wins.
PARAM_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"embedder/input_embedding", ("vocab", "embed")),
    (r"layers/attn/q_einsum/w", ("layers", "heads", "embed", None)),
    (r"layers/attn/kv_einsum/w", ("layers", None, "kv_heads", "embed", None)),
    (r"layers/attn/attn_vec_einsum/w", ("layers", "heads", None, "embed")),
    (r"layers/mlp/gating_einsum/w", ("layers", None, "embed", "mlp")),
    (r"layers/mlp/linear/w", ("layers", "mlp", "embed")),
    (r".*(norm)/scale", None),  # norms: replicated, any rank.
)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; -1 in one position takes the remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  shape = list(shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh shape {tuple(shape)} must have {len(MESH_AXES)} entries "
                     f"for axes {MESH_AXES}.")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {tuple(shape)}: at most one entry may be -1.")
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if len(devices) % known:
      raise ValueError(f"mesh shape {tuple(shape)} does not divide {len(devices)} devices.")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices but "
                     f"{len(devices)} are available; set config.mesh_shape to match.")
  device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES)


def _mesh_axes_for(logical: str | None, dim: int, mesh: Mesh) -> str | tuple[str, ...] | None:
  if logical is None or logical not in LOGICAL_TO_MESH:
    return None
  axes = tuple(a for a in LOGICAL_TO_MESH[logical] if mesh.shape[a] > 1)
  if not axes or dim % math.prod(mesh.shape[a] for a in axes):
    return None  # trivial or indivisible: replicate this dim.
  return axes[0] if len(axes) == 1 else axes


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> P:
  """PartitionSpec for an array of `shape` whose dims carry `logical_axes`."""
  if len(logical_axes) != len(shape):
    raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}.")
  return P(*(_mesh_axes_for(name, dim, mesh) for name, dim in zip(logical_axes, shape)))


def param_logical_axes(path: str, ndim: int) -> tuple[str | None, ...]:
  """The logical axes PARAM_RULES give the parameter at `path`."""
  for pattern, axes in PARAM_RULES:
    if re.fullmatch(pattern, path):
      if axes is None:
        return (None,) * ndim
      if len(axes) != ndim:
        raise ValueError(f"sharding rule {pattern!r} names {len(axes)} axes but parameter "
                         f"{path!r} has rank {ndim}.")
      return axes
  raise ValueError(f"no sharding rule matches parameter {path!r}; add a row to "
                   "score_jax.sharding.PARAM_RULES.")


def param_specs(params: Any, mesh: Mesh) -> Any:
  """A pytree of PartitionSpecs matching `params` (arrays or ShapeDtypeStructs)."""
  flat = traverse_util.flatten_dict(params, sep="/")
  specs = {path: logical_to_spec(param_logical_axes(path, len(x.shape)), x.shape, mesh)
           for path, x in flat.items()}
  return traverse_util.unflatten_dict(specs, sep="/")


def param_shardings(params: Any, mesh: Mesh) -> Any:
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(params, mesh),
                      is_leaf=lambda x: isinstance(x, P))


def shard_params(params: Any, mesh: Mesh) -> Any:
  """Places `params` on `mesh` according to the rules."""
  return jax.device_put(params, param_shardings(params, mesh))


def logical_sharding(mesh: Mesh, logical_axes: Sequence[str | None]) -> NamedSharding:
  """NamedSharding for arrays whose dims carry `logical_axes` (sizes assumed divisible)."""
  def axes(name):
    if name is None:
      return None
    mesh_axes = tuple(a for a in LOGICAL_TO_MESH[name] if mesh.shape[a] > 1)
    return (mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes) if mesh_axes else None
  return NamedSharding(mesh, P(*(axes(name) for name in logical_axes)))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) dim over the data-parallel axes, the rest replicated."""
  return logical_sharding(mesh, ("batch",) + (None,) * (ndim - 1))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """with_sharding_constraint by logical axes; a no-op when no mesh is set.

  The model calls this at a few points (residual stream, attention heads, MLP
  hidden, logits) so that XLA keeps activations laid out as the rules intend.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = P(*(_mesh_axes_for(name, dim, mesh) for name, dim in zip(logical_axes, x.shape)))
  return jax.lax.with_sharding_constraint(x, spec)


def jit_per_batch_keys(fn, in_shardings_for, batch_shardings: dict[str, NamedSharding],
                       **jit_kwargs):
  """`batch -> jax.jit(fn)` for a batch dict whose optional keys vary between calls.

  jit's in_shardings must match the batch's pytree, so one jitted function is
  made (and cached) per set of keys present; `in_shardings_for(shardings of
  those keys)` gives the whole in_shardings tuple.
  """
  cache = {}

  def for_batch(batch: dict[str, Any]):
    keys = tuple(sorted(batch))
    if keys not in cache:
      unknown = set(keys) - set(batch_shardings)
      if unknown:
        raise ValueError(f"unknown batch keys {sorted(unknown)}; expected some of "
                         f"{sorted(batch_shardings)}.")
      shardings = {key: batch_shardings[key] for key in keys}
      cache[keys] = jax.jit(fn, in_shardings=in_shardings_for(shardings), **jit_kwargs)
    return cache[keys]

  return for_batch
