"""Gemma-style model configuration and the named presets.

One frozen dataclass describes every Gemma generation; the differences between
Gemma 1, 2 and 3 are fields (soft-caps, post-norms, QK-norm, the local/global
layer pattern and their RoPE bases), not subclasses.

Sizes follow the published checkpoints (HF `config.json` of google/gemma-*).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

LayerType = Literal["global", "local"]
Dtype = Literal["float32", "bfloat16"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a Gemma-style decoder. Hashable, so it can be a static jit arg."""

  family: Literal["gemma", "gemma2", "gemma3"]
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  ffw_hidden: int
  # Per-layer attention type; "local" layers attend within `sliding_window` tokens.
  layer_types: tuple[LayerType, ...]
  sliding_window: int | None = None
  # Queries are multiplied by query_pre_attn_scalar ** -0.5 (Gemma 1: head_dim).
  query_pre_attn_scalar: float | None = None
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  use_post_attn_norm: bool = False
  use_post_ffw_norm: bool = False
  use_qk_norm: bool = False
  rope_base_global: float = 10_000.0
  rope_base_local: float = 10_000.0
  # Linear RoPE scaling on global layers (Gemma 3 4B+ use 8.0): positions / factor.
  rope_scale_global: float = 1.0
  norm_eps: float = 1e-6
  # Flax's two dtypes. `dtype` is the computation: matmul operands and activations
  # (bf16 operands accumulate in fp32, then cast); RMSNorm, softmax, soft-caps and the
  # logits stay fp32 either way. `param_dtype` is the storage, i.e. the optimizer's
  # master copy: keep it fp32, since Adam steps of lr ~1e-6 vanish in bf16.
  dtype: Dtype = "float32"
  param_dtype: Dtype = "float32"
  remat: bool = False  # rematerialise each layer in the backward pass.

  def __post_init__(self):
    if len(self.layer_types) != self.num_layers:
      raise ValueError(
          f"layer_types has {len(self.layer_types)} entries but num_layers is "
          f"{self.num_layers}; give one 'global'/'local' per layer.")
    bad = set(self.layer_types) - {"global", "local"}
    if bad:
      raise ValueError(f"unknown layer type(s) {sorted(bad)}; use 'global' or 'local'.")
    if "local" in self.layer_types and not self.sliding_window:
      raise ValueError("config has 'local' layers but no sliding_window; set sliding_window.")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}.")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16"):
        raise ValueError(f"{name} must be 'float32' or 'bfloat16', got "
                         f"{getattr(self, name)!r}.")

  @property
  def query_scale(self) -> float:
    return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

  @property
  def embed_scale(self) -> float:
    return math.sqrt(self.d_model)

  def num_params(self) -> int:
    """Parameter count (tied embedding counted once)."""
    d, n, k, h, f, l = (self.d_model, self.num_heads, self.num_kv_heads, self.head_dim,
                        self.ffw_hidden, self.num_layers)
    norms = 2 + self.use_post_attn_norm + self.use_post_ffw_norm
    per_layer = (n * d * h + 2 * k * d * h + n * h * d + 3 * d * f + norms * d
                 + (2 * h if self.use_qk_norm else 0))
    return self.vocab_size * d + l * per_layer + d


def _alternating(num_layers: int) -> tuple[LayerType, ...]:
  """Gemma 2: local, global, local, global, ... (layer 0 is local, as in HF)."""
  return tuple("local" if i % 2 == 0 else "global" for i in range(num_layers))


def _five_to_one(num_layers: int) -> tuple[LayerType, ...]:
  """Gemma 3: five local layers then one global layer."""
  return tuple("global" if (i + 1) % 6 == 0 else "local" for i in range(num_layers))


def _gemma1(**kw) -> ModelConfig:
  return ModelConfig(family="gemma", layer_types=("global",) * kw["num_layers"], **kw)


def _gemma2(**kw) -> ModelConfig:
  base = dict(family="gemma2", layer_types=_alternating(kw["num_layers"]), sliding_window=4096,
              attn_logit_softcap=50.0, final_logit_softcap=30.0, use_post_attn_norm=True,
              use_post_ffw_norm=True)
  return ModelConfig(**{**base, **kw})


def _gemma3(**kw) -> ModelConfig:
  base = dict(family="gemma3", layer_types=_five_to_one(kw["num_layers"]), sliding_window=1024,
              use_post_attn_norm=True, use_post_ffw_norm=True, use_qk_norm=True,
              rope_base_global=1_000_000.0, rope_base_local=10_000.0, rope_scale_global=8.0)
  return ModelConfig(**{**base, **kw})


def _presets() -> dict[str, ModelConfig]:
  return {
      # Tiny models for tests and the CPU demo; one per generation.
      "tiny": _gemma2(vocab_size=512, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=16, ffw_hidden=128, sliding_window=16, query_pre_attn_scalar=16),
      "tiny-gemma": _gemma1(vocab_size=512, d_model=64, num_layers=2, num_heads=4,
                            num_kv_heads=1, head_dim=16, ffw_hidden=128),
      "tiny-gemma3": _gemma3(vocab_size=512, d_model=64, num_layers=6, num_heads=4,
                             num_kv_heads=2, head_dim=16, ffw_hidden=128, sliding_window=8,
                             query_pre_attn_scalar=16),
      "gemma-2b": _gemma1(vocab_size=256_128, d_model=2048, num_layers=18, num_heads=8,
                          num_kv_heads=1, head_dim=256, ffw_hidden=16_384),
      "gemma-7b": _gemma1(vocab_size=256_128, d_model=3072, num_layers=28, num_heads=16,
                          num_kv_heads=16, head_dim=256, ffw_hidden=24_576),
      "gemma2-2b": _gemma2(vocab_size=256_128, d_model=2304, num_layers=26, num_heads=8,
                           num_kv_heads=4, head_dim=256, ffw_hidden=9216,
                           query_pre_attn_scalar=256),
      "gemma2-9b": _gemma2(vocab_size=256_128, d_model=3584, num_layers=42, num_heads=16,
                           num_kv_heads=8, head_dim=256, ffw_hidden=14_336,
                           query_pre_attn_scalar=256),
      "gemma2-27b": _gemma2(vocab_size=256_128, d_model=4608, num_layers=46, num_heads=32,
                            num_kv_heads=16, head_dim=128, ffw_hidden=36_864,
                            query_pre_attn_scalar=144),
      "gemma3-270m": _gemma3(vocab_size=262_144, d_model=640, num_layers=18, num_heads=4,
                             num_kv_heads=1, head_dim=256, ffw_hidden=2048, sliding_window=512,
                             query_pre_attn_scalar=256, rope_scale_global=1.0),
      "gemma3-1b": _gemma3(vocab_size=262_144, d_model=1152, num_layers=26, num_heads=4,
                           num_kv_heads=1, head_dim=256, ffw_hidden=6912, sliding_window=512,
                           query_pre_attn_scalar=256, rope_scale_global=1.0),
      "gemma3-4b": _gemma3(vocab_size=262_208, d_model=2560, num_layers=34, num_heads=8,
                           num_kv_heads=4, head_dim=256, ffw_hidden=10_240,
                           query_pre_attn_scalar=256),
      "gemma3-12b": _gemma3(vocab_size=262_208, d_model=3840, num_layers=48, num_heads=16,
                            num_kv_heads=8, head_dim=256, ffw_hidden=15_360,
                            query_pre_attn_scalar=256),
      "gemma3-27b": _gemma3(vocab_size=262_208, d_model=5376, num_layers=62, num_heads=32,
                            num_kv_heads=16, head_dim=128, ffw_hidden=21_504,
                            query_pre_attn_scalar=168),
  }


PRESETS: dict[str, ModelConfig] = _presets()

def get_config(name: str, **overrides) -> ModelConfig:
  """Returns the named preset, with fields replaced by `overrides`.

  Overriding `num_layers` without `layer_types` regenerates the family's layer pattern.
  """
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}.")
  config = PRESETS[name]
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"unknown ModelConfig field(s) {unknown}; valid fields: {sorted(fields)}.")
  if "num_layers" in overrides and "layer_types" not in overrides:
    pattern = {"gemma": lambda n: ("global",) * n, "gemma2": _alternating,
               "gemma3": _five_to_one}[config.family]
    overrides["layer_types"] = pattern(overrides["num_layers"])
  if "layer_types" in overrides:
    overrides["layer_types"] = tuple(overrides["layer_types"])
  return dataclasses.replace(config, **overrides)
