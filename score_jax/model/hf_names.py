"""Our params <-> transformers' Gemma tensor names, shared by every checkpoint format.

HF stores projections as torch Linear weights [out, in]; ours are einsum kernels
with explicit head axes (see transformer.py), so the mapping is a reshape +
transpose per tensor, done in numpy on the host. `checkpoints` (safetensors) and
`gguf` (llama.cpp, whose tensors are the transformers weights once renamed) both
use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from score_jax.model.config import ModelConfig


def layer_names(config: ModelConfig, i: int) -> dict[str, str]:
  """Our per-layer tensor keys -> layer i's transformers names (no `model.` prefix)."""
  p = f"layers.{i}."
  names = {"q": p + "self_attn.q_proj.weight", "k": p + "self_attn.k_proj.weight",
           "v": p + "self_attn.v_proj.weight", "o": p + "self_attn.o_proj.weight",
           "gate": p + "mlp.gate_proj.weight", "up": p + "mlp.up_proj.weight",
           "down": p + "mlp.down_proj.weight", "pre_attention_norm": p + "input_layernorm.weight"}
  if config.family == "gemma":  # Gemma 1 calls its pre-MLP norm "post_attention_layernorm".
    names["pre_ffw_norm"] = p + "post_attention_layernorm.weight"
  else:
    names.update({"post_attention_norm": p + "post_attention_layernorm.weight",
                  "pre_ffw_norm": p + "pre_feedforward_layernorm.weight",
                  "post_ffw_norm": p + "post_feedforward_layernorm.weight"})
  if config.use_qk_norm:
    names.update({"query_norm": p + "self_attn.q_norm.weight",
                  "key_norm": p + "self_attn.k_norm.weight"})
  return names


def params_from_hf_tensors(config: ModelConfig, tensors: Mapping[str, np.ndarray]) -> dict:
  """Our params (numpy, config.param_dtype) from HF tensor names -> arrays (prefix stripped)."""
  d, n, k, h = config.d_model, config.num_heads, config.num_kv_heads, config.head_dim
  dt = jax.numpy.dtype(config.param_dtype)

  def get(name, shape):
    if name not in tensors:
      raise ValueError(f"checkpoint is missing tensor {name!r} (expected shape {shape}).")
    x = tensors[name]
    if tuple(x.shape) != tuple(shape):
      raise ValueError(f"tensor {name!r} has shape {tuple(x.shape)}, expected {tuple(shape)} "
                       "for this config.json.")
    return np.asarray(x, np.float32)

  per_layer = []
  for i in range(config.num_layers):
    nm = layer_names(config, i)
    q = get(nm["q"], (n * h, d)).reshape(n, h, d).transpose(0, 2, 1)
    kk = get(nm["k"], (k * h, d)).reshape(k, h, d).transpose(0, 2, 1)
    v = get(nm["v"], (k * h, d)).reshape(k, h, d).transpose(0, 2, 1)
    layer = {
        "attn": {"q_einsum": {"w": q}, "kv_einsum": {"w": np.stack([kk, v])},
                 "attn_vec_einsum": {"w": get(nm["o"], (d, n * h)).T.reshape(n, h, d)}},
        "mlp": {"gating_einsum": {"w": np.stack([get(nm["gate"], (config.ffw_hidden, d)).T,
                                                 get(nm["up"], (config.ffw_hidden, d)).T])},
                "linear": {"w": get(nm["down"], (d, config.ffw_hidden)).T}},
    }
    for norm in ("pre_attention_norm", "pre_ffw_norm", "post_attention_norm", "post_ffw_norm"):
      if norm in nm:
        layer[norm] = {"scale": get(nm[norm], (d,))}
    if config.use_qk_norm:
      layer["attn"]["query_norm"] = {"scale": get(nm["query_norm"], (h,))}
      layer["attn"]["key_norm"] = {"scale": get(nm["key_norm"], (h,))}
    per_layer.append(layer)
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *per_layer)
  params = {"embedder": {"input_embedding": get("embed_tokens.weight", (config.vocab_size, d))},
            "layers": stacked, "final_norm": {"scale": get("norm.weight", (d,))}}
  return jax.tree.map(lambda x: x.astype(dt), params)


def params_to_hf_tensors(config: ModelConfig, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """HF tensor names (with the `model.` prefix) -> arrays; the inverse of params_from_hf_tensors."""
  d, n, k, h = config.d_model, config.num_heads, config.num_kv_heads, config.head_dim
  p = jax.tree.map(np.asarray, jax.device_get(params))
  out = {"model.embed_tokens.weight": p["embedder"]["input_embedding"],
         "model.norm.weight": p["final_norm"]["scale"]}
  layers = p["layers"]
  for i in range(config.num_layers):
    nm = {key: "model." + name for key, name in layer_names(config, i).items()}
    attn = layers["attn"]
    out[nm["q"]] = attn["q_einsum"]["w"][i].transpose(0, 2, 1).reshape(n * h, d)
    out[nm["k"]] = attn["kv_einsum"]["w"][i, 0].transpose(0, 2, 1).reshape(k * h, d)
    out[nm["v"]] = attn["kv_einsum"]["w"][i, 1].transpose(0, 2, 1).reshape(k * h, d)
    out[nm["o"]] = attn["attn_vec_einsum"]["w"][i].reshape(n * h, d).T
    out[nm["gate"]] = layers["mlp"]["gating_einsum"]["w"][i, 0].T
    out[nm["up"]] = layers["mlp"]["gating_einsum"]["w"][i, 1].T
    out[nm["down"]] = layers["mlp"]["linear"]["w"][i].T
    for norm in ("pre_attention_norm", "pre_ffw_norm", "post_attention_norm", "post_ffw_norm"):
      if norm in nm:
        out[nm[norm]] = layers[norm]["scale"][i]
    if config.use_qk_norm:
      out[nm["query_norm"]] = attn["query_norm"]["scale"][i]
      out[nm["key_norm"]] = attn["key_norm"]["scale"][i]
  return {name: np.ascontiguousarray(x) for name, x in out.items()}
