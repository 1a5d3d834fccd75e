"""Official Gemma Flax checkpoints (Kaggle `google/gemma*/flax`) <-> our params.

The layout was read from google-deepmind/gemma, not guessed:
  * gemma/gm/nn/_modules.py, _layers.py, _transformer.py (commit 7691fd4e7f26): the
    Flax modules `gm.nn` initialises, hence the parameter names and shapes;
  * gemma/gm/nn/_gemma.py (same commit) and gemma/transformer.py (commit
    e23b902c0075, `TransformerConfig.gemma_2b` ... `gemma3_27b`): which models set
    `transpose_gating_einsum`;
  * gemma/gm/ckpts/_checkpoint.py and _compat.py (same commit): the FLAT, NESTED
    and STACKED structures `gm.ckpts.load_params` detects, and
    `param_remapper` / `nest_params` / `flatten_and_remap_params` between them;
  * gemma/params.py (commit 2a162e21be39, before its removal):
    `load_and_format_params` = `orbax.checkpoint.PyTreeCheckpointer().restore`
    then `param_remapper` and `nest_params`; `save_params` writes FLAT with it.

On disk a checkpoint is an orbax PyTree checkpoint directory (`_METADATA`,
`manifest.ocdbt`, `d/`, `ocdbt.process_0/`). Its tree comes in three forms:
  FLAT (the released checkpoints): a dict whose keys are '/'-joined module
    paths, each holding a dict of leaves:
      'transformer/embedder'                  {'input_embedding': [V, D]}
      'transformer/final_norm'                {'scale': [D]}
      'transformer/layer_{i}/attn/q_einsum'   {'w': [N, D, H]}
      ... and 'transformer/layer_{i}/mlp/gating_einsum' {'w': ...}.
  NESTED (`gm.ckpts.save_params`, `model.init()['params']`): the same names
    as nested dicts without 'transformer', except that the MLP leaves are bare
    arrays: {'layer_0': {'mlp': {'gating_einsum': ..., 'linear': ...}}, ...}.
  STACKED: 'transformer/stacked_layers/attention_type_{j}/...' with a leading
    axis over layers j, j + P, j + 2P, ... (P = number of attention types).

Per layer (prefix 'layer_{i}/'), with D model, N query heads, K kv heads,
H head dim, F MLP hidden:
  pre_attention_norm/scale [D]; pre_ffw_norm/scale [D];
  post_attention_norm/scale, post_ffw_norm/scale [D]    (Gemma 2, 3)
  attn/q_einsum/w [N, D, H] and attn/kv_einsum/w [2, K, D, H]   if K < N
  attn/qkv_einsum/w [3, N, D, H]        if K == N (Gemma 1 7B: 16 MHA heads)
  attn/attn_vec_einsum/w [N, H, D]
  attn/_query_norm/scale, attn/_key_norm/scale [H]       (Gemma 3)
  mlp/gating_einsum [2, D, F] (gate, up), or [2, F, D] when the model sets
    `transpose_gating_einsum`: Gemma 1 2B / 7B and Gemma 2 2B use [2, D, F];
    Gemma 2 9B / 27B and every Gemma 3 use [2, F, D].
  mlp/linear [F, D]
Gemma 1 2B is MQA (K = 1): q_einsum [8, 2048, 256], kv_einsum [2, 1, 2048, 256].
Official Gemma 3 embedders hold 262,144 rows (HF configs of the 4B+ models pad
to 262,208), and the 4B+ checkpoints also carry a SigLIP vision tower
('SigLiPFromPatches_0/...', 'embedder/mm_*'), which this text-only loader skips.

Names in error messages are NESTED-form paths ('layer_3/attn/q_einsum/w'); the
FLAT key is 'transformer/' + the path without its last part (for the bare MLP
kernels, 'transformer/' + the whole path, with leaf 'w').
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from score_jax.model.config import ModelConfig, get_config

Shape = tuple[int, ...]

_ROOT = "transformer/"
_VISION_ROOT = "SigLiPFromPatches_0/"
_VISION_PARTS = ("vision_encoder/", "embedder/mm_")
# The NESTED form stores these MLP kernels bare; FLAT wraps them in {'w': ...}.
_BARE_MLP = ("/mlp/gating_einsum", "/mlp/linear")
_STACKED = re.compile(r"stacked_layers/attention_type_(\d+)/(.+)")
_LAYER = re.compile(r"layer_(\d+)/")
# gm.nn.Gemma2_9B / Gemma2_27B (d_model 3584 / 4608) store gating_einsum as [2, F, D].
_TRANSPOSED_GEMMA2_WIDTHS = (3584, 4608)


def official_gating_transposed(config: ModelConfig) -> bool:
  """Whether the released checkpoint of this architecture stores gating_einsum as [2, F, D]."""
  if config.family == "gemma3":
    return True
  return config.family == "gemma2" and config.d_model in _TRANSPOSED_GEMMA2_WIDTHS


def _resolve_config(config: ModelConfig | str) -> ModelConfig:
  if isinstance(config, str):
    return get_config(config)
  if not isinstance(config, ModelConfig):
    raise TypeError(f"config must be a preset name or a ModelConfig, got {type(config).__name__}.")
  return config


def _expected_shapes(config: ModelConfig, transposed: bool | None) -> dict[str, set[Shape]]:
  """NESTED-form path -> allowed shapes; both gating orientations when `transposed` is None."""
  d, n, k, h, f = (config.d_model, config.num_heads, config.num_kv_heads, config.head_dim,
                   config.ffw_hidden)
  gating = {(2, d, f), (2, f, d)}
  if transposed is not None:
    gating = {(2, f, d) if transposed else (2, d, f)}
  shapes = {"embedder/input_embedding": {(config.vocab_size, d)}, "final_norm/scale": {(d,)}}
  for i in range(config.num_layers):
    p = f"layer_{i}/"
    if n == k:
      shapes[p + "attn/qkv_einsum/w"] = {(3, n, d, h)}
    else:
      shapes[p + "attn/q_einsum/w"] = {(n, d, h)}
      shapes[p + "attn/kv_einsum/w"] = {(2, k, d, h)}
    shapes[p + "attn/attn_vec_einsum/w"] = {(n, h, d)}
    if config.use_qk_norm:
      shapes[p + "attn/_query_norm/scale"] = {(h,)}
      shapes[p + "attn/_key_norm/scale"] = {(h,)}
    shapes[p + "mlp/gating_einsum"] = gating
    shapes[p + "mlp/linear"] = {(f, d)}
    for norm in _norm_names(config):
      shapes[p + norm + "/scale"] = {(d,)}
  return shapes


def _norm_names(config: ModelConfig) -> tuple[str, ...]:
  """The per-layer RMSNorms of this architecture."""
  names = ["pre_attention_norm", "pre_ffw_norm"]
  if config.use_post_attn_norm:
    names.append("post_attention_norm")
  if config.use_post_ffw_norm:
    names.append("post_ffw_norm")
  return tuple(names)


# ---------------------------------------------------------------- reading ---


class _Source(NamedTuple):
  """Where one official tensor lives: a leaf of the restored tree, or a slice of a stacked leaf."""
  key: tuple[str, ...]
  index: int | None


def _index_tree(leaves: Mapping[tuple[str, ...], Any]) -> dict[str, _Source]:
  """NESTED-form path -> source, for a flattened tree in any of the three forms.

  Leaves only need a `.shape`, so this runs on orbax metadata before any read.
  Vision-tower leaves are left out.
  """
  names = ["/".join(map(str, key)) for key in leaves]
  stacked_types = [int(m[1]) for name in names
                   if (m := _STACKED.fullmatch(name.removeprefix(_ROOT)))]
  pattern_len = max(stacked_types, default=-1) + 1
  sources: dict[str, _Source] = {}

  def add(name: str, source: _Source):
    if name in sources:
      raise ValueError(f"checkpoint holds {name} twice (under {sources[name].key} and "
                       f"{source.key}); it mixes checkpoint structures.")
    sources[name] = source

  for key, name in zip(leaves, names):
    if name.startswith(_VISION_ROOT):
      continue
    name = name.removeprefix(_ROOT)
    if name.startswith(_VISION_PARTS):
      continue
    if name.endswith(tuple(s + "/w" for s in _BARE_MLP)):
      name = name[:-len("/w")]
    if m := _STACKED.fullmatch(name):
      for s in range(leaves[key].shape[0]):
        add(f"layer_{s * pattern_len + int(m[1])}/{m[2]}", _Source(key, s))
    else:
      add(name, _Source(key, None))
  return sources


def _take(leaves: Mapping[tuple[str, ...], Any], source: _Source) -> Any:
  leaf = leaves[source.key]
  return leaf if source.index is None else leaf[source.index]


def _shape(leaves: Mapping[tuple[str, ...], Any], source: _Source) -> Shape:
  shape = tuple(leaves[source.key].shape)
  return shape if source.index is None else shape[1:]


def _fmt(shapes: set[Shape]) -> str:
  return " or ".join(str(s) for s in sorted(shapes))


def _validate(config: ModelConfig, found: Mapping[str, Shape],
              expected: Mapping[str, set[Shape]], what: str) -> None:
  """Raises one ValueError listing every missing, unexpected and mis-shaped tensor of `what`."""
  layers = sorted({int(m[1]) for name in found if (m := _LAYER.match(name))})
  if layers and (len(layers) != config.num_layers or layers[-1] != config.num_layers - 1):
    raise ValueError(
        f"{what} has {len(layers)} transformer layers (layer_{layers[0]} .. "
        f"layer_{layers[-1]}) but the config has num_layers={config.num_layers}; pass the "
        "preset (or ModelConfig) that matches it.")
  problems = [f"missing {name} (expected shape {_fmt(expected[name])})"
              for name in expected if name not in found]
  problems += [f"unexpected {name} with shape {found[name]} (not part of a {config.family} "
               "model with this config)" for name in found if name not in expected]
  problems += [f"{name} has shape {found[name]}, expected {_fmt(expected[name])}"
               for name in expected if name in found and found[name] not in expected[name]]
  if not problems:
    return
  hint = ""
  embed = found.get("embedder/input_embedding")
  if embed and embed[0] != config.vocab_size:
    hint = (f"\nThe embedding table has {embed[0]} rows; if that is right, use a config with "
            f"vocab_size={embed[0]} (official Gemma 3 Flax checkpoints have 262144 rows; HF "
            "configs of Gemma 3 4B+ say 262208).")
  shown = "\n  ".join(problems[:20])
  more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
  raise ValueError(f"{what} does not match the {config.family} config "
                   f"(d_model={config.d_model}, heads={config.num_heads}/{config.num_kv_heads}, "
                   f"head_dim={config.head_dim}, ffw_hidden={config.ffw_hidden}):\n  "
                   f"{shown}{more}{hint}")


def _checkpoint_dir(path: str | os.PathLike) -> str:
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"no checkpoint directory at {path}; expected an orbax PyTree checkpoint directory "
        "(holding _METADATA and manifest.ocdbt), e.g. the '2b/' folder of a Kaggle "
        "google/gemma flax download.")
  return path


def _read_leaves(path: str, config: ModelConfig,
                 transposed: bool | None) -> tuple[dict[str, _Source], dict]:
  """Validates the checkpoint's structure, then reads the text-model tensors as numpy."""
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path).item_metadata
  if metadata is None:
    # No tree metadata (orbax before _METADATA existed): read everything to see the structure.
    try:
      tree = checkpointer.restore(path)
    except FileNotFoundError as e:
      raise FileNotFoundError(
          f"{path} is not a readable orbax checkpoint ({e}); expected a directory written by "
          "orbax.checkpoint.PyTreeCheckpointer, with _METADATA and manifest.ocdbt.") from e
  else:
    tree = metadata.tree
  leaves = traverse_util.flatten_dict(tree)
  sources = _index_tree(leaves)
  _validate(config, {name: _shape(leaves, s) for name, s in sources.items()},
            _expected_shapes(config, transposed), f"checkpoint {path}")
  if metadata is not None:
    # Read only the text model's leaves, as host numpy arrays.
    wanted = traverse_util.unflatten_dict({s.key: leaves[s.key] for s in sources.values()})
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    tree = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=wanted, restore_args=restore_args, partial_restore=True))
    leaves = traverse_util.flatten_dict(tree)
  return sources, leaves


def _params_from_official(config: ModelConfig, tensors: Mapping[str, Any],
                          transposed: bool | None) -> dict:
  """Our stacked params (numpy, config.param_dtype) from NESTED-form path -> array."""
  d, f = config.d_model, config.ffw_hidden
  if transposed is None:
    transposed = official_gating_transposed(config)  # Only consulted when D == F.
  dt = jnp.dtype(config.param_dtype)

  def get(name):
    return np.asarray(tensors[name]).astype(dt, copy=False)

  per_layer = []
  for i in range(config.num_layers):
    p = f"layer_{i}/"
    if config.num_heads == config.num_kv_heads:
      qkv = get(p + "attn/qkv_einsum/w")
      q, kv = qkv[0], qkv[1:]
    else:
      q, kv = get(p + "attn/q_einsum/w"), get(p + "attn/kv_einsum/w")
    gating = get(p + "mlp/gating_einsum")
    if gating.shape == (2, f, d) and (d != f or transposed):
      gating = gating.transpose(0, 2, 1)
    attn = {"q_einsum": {"w": q}, "kv_einsum": {"w": kv},
            "attn_vec_einsum": {"w": get(p + "attn/attn_vec_einsum/w")}}
    if config.use_qk_norm:
      attn["query_norm"] = {"scale": get(p + "attn/_query_norm/scale")}
      attn["key_norm"] = {"scale": get(p + "attn/_key_norm/scale")}
    layer = {"attn": attn, "mlp": {"gating_einsum": {"w": gating},
                                   "linear": {"w": get(p + "mlp/linear")}}}
    for norm in _norm_names(config):
      layer[norm] = {"scale": get(p + norm + "/scale")}
    per_layer.append(layer)
  return {"embedder": {"input_embedding": get("embedder/input_embedding")},
          "layers": jax.tree.map(lambda *xs: np.stack(xs), *per_layer),
          "final_norm": {"scale": get("final_norm/scale")}}


def load_gemma_flax(path: str | os.PathLike, config: ModelConfig | str, *,
                    transpose_gating_einsum: bool | None = None) -> dict:
  """Reads an official Gemma Flax checkpoint directory into our params layout.

  Accepts the FLAT (released), NESTED (`gm.ckpts.save_params`) and STACKED
  structures; every tensor's shape is checked against `config` (a preset name
  such as "gemma2-2b", or a ModelConfig) before the weights are read.

  Args:
    path: the orbax checkpoint directory (e.g. the '2b/' folder of a Kaggle download).
    config: the architecture the checkpoint holds.
    transpose_gating_einsum: the layout of `mlp/gating_einsum` ([2, F, D] when
      True); None accepts either and tells them apart by shape (when
      d_model == ffw_hidden, `official_gating_transposed(config)` decides).

  Returns:
    Params as in transformer.py: numpy arrays of `config.param_dtype`, on the host.
  """
  config = _resolve_config(config)
  path = _checkpoint_dir(path)
  sources, leaves = _read_leaves(path, config, transpose_gating_einsum)
  tensors = {name: _take(leaves, source) for name, source in sources.items()}
  return _params_from_official(config, tensors, transpose_gating_einsum)


# ---------------------------------------------------------------- writing ---


def _params_to_official(config: ModelConfig, params: Mapping[str, Any], *,
                       transpose_gating_einsum: bool | None = None) -> dict[str, np.ndarray]:
  """NESTED-form path -> numpy array of the official layout; inverse of the loader's mapping."""
  transposed = (official_gating_transposed(config) if transpose_gating_einsum is None
                else transpose_gating_einsum)
  p = jax.tree.map(np.asarray, jax.device_get(params))
  layers = p["layers"]
  depths = {x.shape[0] for x in jax.tree.leaves(layers)}
  if depths != {config.num_layers}:
    raise ValueError(f"params hold {sorted(depths)} stacked layers but the config has "
                     f"num_layers={config.num_layers}; save them with their own config.")
  out = {"embedder/input_embedding": p["embedder"]["input_embedding"],
         "final_norm/scale": p["final_norm"]["scale"]}
  for i in range(config.num_layers):
    pre = f"layer_{i}/"
    attn = layers["attn"]
    q, kv = attn["q_einsum"]["w"][i], attn["kv_einsum"]["w"][i]
    if config.num_heads == config.num_kv_heads:
      out[pre + "attn/qkv_einsum/w"] = np.concatenate([q[None], kv])
    else:
      out[pre + "attn/q_einsum/w"], out[pre + "attn/kv_einsum/w"] = q, kv
    out[pre + "attn/attn_vec_einsum/w"] = attn["attn_vec_einsum"]["w"][i]
    if config.use_qk_norm:
      out[pre + "attn/_query_norm/scale"] = attn["query_norm"]["scale"][i]
      out[pre + "attn/_key_norm/scale"] = attn["key_norm"]["scale"][i]
    gating = layers["mlp"]["gating_einsum"]["w"][i]
    out[pre + "mlp/gating_einsum"] = gating.transpose(0, 2, 1) if transposed else gating
    out[pre + "mlp/linear"] = layers["mlp"]["linear"]["w"][i]
    for norm in _norm_names(config):
      out[pre + norm + "/scale"] = layers[norm]["scale"][i]
  _validate(config, {name: x.shape for name, x in out.items()},
            _expected_shapes(config, transposed), "params")
  return {name: np.ascontiguousarray(x) for name, x in out.items()}


def save_gemma_flax(config: ModelConfig | str, params: Mapping[str, Any],
                    path: str | os.PathLike, *,
                    transpose_gating_einsum: bool | None = None) -> None:
  """Writes `params` as a released-style (FLAT) orbax checkpoint directory at `path`.

  This is what gemma/params.py `format_and_save_params` wrote: PyTreeCheckpointer
  over {'transformer/layer_0/attn/q_einsum': {'w': ...}, ...}. gating_einsum
  follows the released model's layout (`official_gating_transposed`) unless
  `transpose_gating_einsum` says otherwise.
  """
  config = _resolve_config(config)
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path):
    raise FileExistsError(f"{path} already exists; save_gemma_flax writes a new checkpoint "
                          "directory, so pass a path that does not exist yet.")
  flat: dict[str, dict[str, np.ndarray]] = {}
  for name, array in _params_to_official(
      config, params, transpose_gating_einsum=transpose_gating_einsum).items():
    module = name if name.endswith(_BARE_MLP) else name.rsplit("/", 1)[0]
    leaf = "w" if name.endswith(_BARE_MLP) else name.rsplit("/", 1)[1]
    flat.setdefault(_ROOT + module, {})[leaf] = array
  ocp.PyTreeCheckpointer().save(path, flat)
