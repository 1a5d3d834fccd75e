"""LoRA: low-rank adapters over the pure-function model's params pytree.

`init(config, rng, rank=, alpha=, targets=)` makes `Adapters`: for every
parameter whose '/'-joined path fully matches the regex `targets`, two factors
A (multiplies first) and B (multiplies last, zero at init, so fresh adapters
are the base model exactly). `merge(config, params, adapters)` returns
W + (alpha / rank) · A·B for those weights, each in its own stored layout, and
leaves every other leaf as it is. Training differentiates a loss of
`merge(config, base, adapters)` with respect to the adapters only: the base is
frozen and doubles as the reference policy π_ref (adapters off), so a LoRA run
holds no second copy of the model and no optimizer state for it.

Factor layouts. Our weights are not [in, out] matrices (transformer.py's
docstring): each has stacked axes (the scanned layer axis L; the key/value and
gate/up axis C, which are two separate projections), input axes (contracted
with the activations) and output axes. Per weight, A = [*stacked, *in, r] and
B = [*stacked, r, *out]; the low-rank update of each stacked slice is the
[in, out] product A·B, i.e. what PEFT's LoRA on the equivalent `nn.Linear`
(q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj) computes:

  layers/attn/q_einsum/w         [L, N, D, H]     A [L, D, r]     B [L, r, N, H]
  layers/attn/kv_einsum/w        [L, 2, K, D, H]  A [L, 2, D, r]  B [L, 2, r, K, H]
  layers/attn/attn_vec_einsum/w  [L, N, H, D]     A [L, N, H, r]  B [L, r, D]
  layers/mlp/gating_einsum/w     [L, 2, D, F]     A [L, 2, D, r]  B [L, 2, r, F]
  layers/mlp/linear/w            [L, F, D]        A [L, F, r]     B [L, r, D]
  embedder/input_embedding       [V, D]           A [V, r]        B [r, D]   (token rows)

A starts uniform in ±1/sqrt(fan_in) (PEFT's kaiming-uniform with a = sqrt(5)).
Factors are fp32 whatever the model dtype (they are the trained master
weights); `merge` adds the update in fp32 and casts back to each weight's dtype.
Each factor is sharded like the weight axes it carries (`shard`); the rank axis
is replicated (it is small).

Why not qwix (PyPI 0.1.8, read for this module): its LoRA provider
(`qwix._src.providers.lora`) intercepts `dot_general` / `einsum` calls made
inside a flax linen or nnx module (`qwix.apply_lora_to_model(model, ...)`),
matches rules by module path and creates the factors as that module's
variables (`module.get_variable` / `nnx.LoRAParam`). Our model is functions of
a plain params dict with no module tree, so using it would mean rewriting the
model as flax modules. The layout-aware merge above is all we need from it.
"""

from __future__ import annotations

import math
import re
import string
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct, traverse_util

from score_jax import sharding
from score_jax.model import transformer
from score_jax.model.config import ModelConfig

Params = dict[str, Any]

# Parameter path -> (stacked axes, input axes, output axes) of the stored weight.
LAYOUTS: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    "embedder/input_embedding": ((), (0,), (1,)),
    "layers/attn/q_einsum/w": ((0,), (2,), (1, 3)),
    "layers/attn/kv_einsum/w": ((0, 1), (3,), (2, 4)),
    "layers/attn/attn_vec_einsum/w": ((0,), (1, 2), (3,)),
    "layers/mlp/gating_einsum/w": ((0, 1), (2,), (3,)),
    "layers/mlp/linear/w": ((0,), (1,), (2,)),
}
# The attention and MLP projections (not the tied embedding, not the norms).
DEFAULT_TARGETS = r"layers/(attn/(q|kv|attn_vec)_einsum|mlp/(gating_einsum|linear))/w"


class Adapters(struct.PyTreeNode):
  """Low-rank factors, nested like the params: factors[...path...] = {"a": A, "b": B}.

  rank, alpha and targets are static (not leaves): optimizers, gradients and
  checkpoints see only the factors.
  """

  factors: dict[str, Any]
  rank: int = struct.field(pytree_node=False)
  alpha: float = struct.field(pytree_node=False)
  targets: str = struct.field(pytree_node=False)

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def paths(self) -> list[str]:
    """The '/'-joined paths of the adapted weights."""
    return sorted({path.rsplit("/", 1)[0]
                   for path in traverse_util.flatten_dict(self.factors, sep="/")})


def _factor_shapes(shape: tuple[int, ...], layout, rank: int):
  stacked, ins, outs = layout
  a = tuple(shape[i] for i in stacked + ins) + (rank,)
  b = tuple(shape[i] for i in stacked) + (rank,) + tuple(shape[i] for i in outs)
  return a, b


def _delta_einsum(ndim: int, layout) -> str:
  """'A,B->W' contracting the rank axis, W's letters in the weight's own axis order."""
  stacked, ins, outs = layout
  letters = [c for c in string.ascii_lowercase if c != "r"][:ndim]
  pick = lambda axes: "".join(letters[i] for i in axes)
  return f"{pick(stacked + ins)}r,{pick(stacked)}r{pick(outs)}->{''.join(letters)}"


def _targeted(config: ModelConfig, targets: str, rank: int) -> dict[str, tuple[int, ...]]:
  """Validated {path: weight shape} of the weights `targets` selects."""
  try:
    pattern = re.compile(targets)
  except re.error as e:
    raise ValueError(f"lora targets {targets!r} is not a valid regex: {e}.") from e
  shapes = traverse_util.flatten_dict(
      jax.eval_shape(lambda: transformer.init_params(config, jax.random.key(0))), sep="/")
  chosen = {path: tuple(x.shape) for path, x in shapes.items() if pattern.fullmatch(path)}
  if not chosen:
    raise ValueError(f"lora targets {targets!r} matches no parameter (the whole '/'-joined path "
                     f"must match); the adaptable ones are {sorted(LAYOUTS)}.")
  no_layout = sorted(set(chosen) - set(LAYOUTS))
  if no_layout:
    raise ValueError(f"lora targets {targets!r} matches {no_layout}, which have no low-rank "
                     f"layout (norm scales are vectors); narrow it to some of {sorted(LAYOUTS)}.")
  for path, shape in chosen.items():
    _, ins, outs = LAYOUTS[path]
    limit = min(math.prod(shape[i] for i in ins), math.prod(shape[i] for i in outs))
    if rank > limit:
      raise ValueError(f"lora rank {rank} exceeds {path}'s smaller side {limit} (shape {shape}): "
                       f"a rank-{rank} update of it is no longer low rank; lower the rank or "
                       "drop it from the targets.")
  return chosen


def init(config: ModelConfig, rng: jax.Array, *, rank: int, alpha: float,
         targets: str = DEFAULT_TARGETS) -> Adapters:
  """Fresh adapters for `config`'s weights matching `targets`: B = 0, so merge() is the base."""
  if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
    raise ValueError(f"lora rank must be a positive integer, got {rank!r} (rank 0 = no LoRA: "
                     "do not build adapters).")
  if not math.isfinite(alpha) or alpha <= 0:
    raise ValueError(f"lora alpha must be a positive number (the update is scaled by "
                     f"alpha / rank), got {alpha!r}.")
  flat = {}
  for i, (path, shape) in enumerate(sorted(_targeted(config, targets, rank).items())):
    layout = LAYOUTS[path]
    a_shape, b_shape = _factor_shapes(shape, layout, rank)
    bound = math.prod(shape[j] for j in layout[1]) ** -0.5
    flat[path + "/a"] = jax.random.uniform(jax.random.fold_in(rng, i), a_shape, jnp.float32,
                                           -bound, bound)
    flat[path + "/b"] = jnp.zeros(b_shape, jnp.float32)
  return Adapters(factors=traverse_util.unflatten_dict(flat, sep="/"), rank=rank,
                  alpha=float(alpha), targets=targets)


def merge(config: ModelConfig, params: Params, adapters: Adapters) -> Params:
  """`params` with W + (alpha / rank) · A·B for each adapted weight; other leaves as they are."""
  del config  # the layouts are fixed by the params' paths; kept for a uniform signature.
  flat = traverse_util.flatten_dict(params, sep="/")
  factors = traverse_util.flatten_dict(adapters.factors, sep="/")
  for path in adapters.paths():
    if path not in flat:
      raise ValueError(f"adapters hold factors for {path!r}, which these params lack: they were "
                       "made for another model.")
    w = flat[path]
    a, b = factors[path + "/a"], factors[path + "/b"]
    layout = LAYOUTS[path]
    if (a.shape, b.shape) != _factor_shapes(w.shape, layout, adapters.rank):
      raise ValueError(f"adapter factors {a.shape}, {b.shape} do not fit {path} of shape "
                       f"{w.shape}: they were made for another model config.")
    delta = jnp.einsum(_delta_einsum(w.ndim, layout), a.astype(jnp.float32),
                       b.astype(jnp.float32), preferred_element_type=jnp.float32)
    flat[path] = (w.astype(jnp.float32) + adapters.scale * delta).astype(w.dtype)
  return traverse_util.unflatten_dict(flat, sep="/")


def logical_axes(path: str, factor: str, weight_axes: tuple[str | None, ...]):
  """Logical axes of factor "a" or "b" of the weight at `path` whose dims carry `weight_axes`."""
  stacked, ins, outs = LAYOUTS[path]
  pick = lambda axes: tuple(weight_axes[i] for i in axes)
  return pick(stacked + ins) + (None,) if factor == "a" else pick(stacked) + (None,) + pick(outs)


def shardings(adapters: Adapters, mesh: jax.sharding.Mesh) -> Adapters:
  """NamedShardings (an Adapters tree) from the adapted weights' sharding.PARAM_RULES."""
  out = {}
  for path, x in traverse_util.flatten_dict(adapters.factors, sep="/").items():
    weight, factor = path.rsplit("/", 1)
    ndim = len(LAYOUTS[weight][0]) + len(LAYOUTS[weight][1]) + len(LAYOUTS[weight][2])
    axes = logical_axes(weight, factor, sharding.param_logical_axes(weight, ndim))
    out[path] = jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(axes, x.shape, mesh))
  return adapters.replace(factors=traverse_util.unflatten_dict(out, sep="/"))


def shard(adapters: Adapters, mesh: jax.sharding.Mesh) -> Adapters:
  """Places the factors on `mesh` like the weights they adapt (`shardings`)."""
  return jax.device_put(adapters, shardings(adapters, mesh))


def from_config(config: ModelConfig, lora_config: Any, rng: jax.Array) -> Adapters | None:
  """Adapters from a `rl.lora`-style ConfigDict (rank, alpha, targets); None when rank is 0."""
  if lora_config is None or not lora_config.get("rank", 0):
    return None
  return init(config, rng, rank=lora_config.rank, alpha=lora_config.alpha,
              targets=lora_config.get("targets") or DEFAULT_TARGETS)


def checkpoint_meta(adapters: Adapters, base: Params) -> dict[str, Any]:
  """What a checkpoint of these adapters records: the settings and the base they belong to.

  The base's fingerprint is the mean |w| of every leaf, summed (a float, mesh-independent up
  to reduction order).
  """
  fingerprint = sum(float(jnp.mean(jnp.abs(x.astype(jnp.float32)))) for x in jax.tree.leaves(base))
  return {"rank": adapters.rank, "alpha": adapters.alpha, "targets": adapters.targets,
          "base_fingerprint": fingerprint}


def check_resume(saved: dict[str, Any] | None, current: dict[str, Any], directory: str) -> None:
  """Raises unless a checkpoint's `checkpoint_meta` matches the run's adapters and base."""
  if saved is None:
    raise ValueError(f"{directory} holds a full fine-tuning checkpoint but rl.lora.rank="
                     f"{current['rank']}; resume with rl.lora.rank=0, or use a new workdir.")
  settings = ("rank", "alpha", "targets")
  if any(saved.get(k) != current[k] for k in settings):
    raise ValueError(f"{directory} holds adapters with {({k: saved.get(k) for k in settings})}, "
                     f"not {({k: current[k] for k in settings})}; resume with the same rl.lora, "
                     "or use a new workdir.")
  if not math.isclose(saved["base_fingerprint"], current["base_fingerprint"], rel_tol=1e-4):
    raise ValueError(f"{directory} holds adapters of another base model (fingerprint "
                     f"{saved['base_fingerprint']:.6g}, this run's base "
                     f"{current['base_fingerprint']:.6g}); resume with the base they were "
                     "trained on, or use a new workdir.")
