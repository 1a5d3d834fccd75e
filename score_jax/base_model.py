"""The base model of a run: a preset initialised at random, or a pretrained checkpoint.

`load_base_model(config, tok)` reads config.model: `checkpoint` + `checkpoint_format`
("hf": a transformers directory, "gguf": a Gemma 3 .gguf file, or the pip package's
Gemma 3 270M named by `gguf.PACKAGE`; "gemma_flax": an official Gemma Flax checkpoint), or
only a preset (+ overrides) that the warm-start then trains from scratch.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import ml_collections

from score_jax import model, tokenizer as tokenizer_lib
from score_jax.model import checkpoints, gemma_flax, gguf

log = logging.getLogger(__name__)


# config.model keys that say where the model comes from (not ModelConfig fields).
_MODEL_SOURCE_KEYS = ("preset", "checkpoint", "checkpoint_format")
# ModelConfig fields a config may change on a loaded checkpoint (numerics, not architecture).
_RUNTIME_FIELDS = ("dtype", "param_dtype", "remat")


def load_base_model(config: ml_collections.ConfigDict, tok: tokenizer_lib.Tokenizer
                    ) -> tuple[model.ModelConfig, model.Params | None]:
  """The architecture, and the pretrained params when config.model.checkpoint names them.

  `checkpoint_format` "hf": a transformers directory (config.json + *.safetensors);
  its config.json is the architecture, and config.model may only restate it (or
  set dtype / param_dtype / remat). "gguf": the same for a .gguf file (metadata = architecture). "gemma_flax": an official Gemma Flax (orbax) checkpoint of
  the architecture config.model describes (preset + overrides). Without a
  checkpoint the preset is initialised at random (vocab from the tokenizer) and
  the warm-start trains it, which only makes sense for tiny models.
  """
  cfg = config.model
  overrides = {k: v for k, v in cfg.items() if k not in _MODEL_SOURCE_KEYS}
  path = os.path.expanduser(cfg.get("checkpoint") or "")
  if not path:
    if config.warmstart.steps <= 0:
      raise ValueError(
          "model.checkpoint is empty and warmstart.steps is 0, so there is no base model. Set "
          "--config.model.checkpoint=<dir> (a transformers Gemma directory with config.json "
          "and *.safetensors; or an official Gemma Flax checkpoint with "
          "--config.model.checkpoint_format=gemma_flax) and --config.tokenizer.path=<its "
          "tokenizer.model>; or set warmstart.steps > 0 to train a tiny base model from scratch.")
    return model.get_config(cfg.preset, vocab_size=tok.vocab_size, **overrides), None
  fmt = cfg.get("checkpoint_format", "hf")
  if fmt in ("hf", "gguf"):
    fields = {f.name for f in dataclasses.fields(model.ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:  # before reading gigabytes.
      raise ValueError(f"unknown model config key(s) {unknown}; ModelConfig fields: "
                       f"{sorted(fields)}.")
    # Master weights in param_dtype (fp32 unless asked), whatever the file stores.
    dtypes = {k: overrides.get(k, "float32") for k in ("dtype", "param_dtype")}
    if fmt == "hf":
      model_config, params = checkpoints.load_hf(path, **dtypes)
    else:
      model_config, params = gguf.load_gguf(gguf_source(path), **dtypes)
    model_config = _checked_against_file(model_config, overrides, path)
  elif fmt == "gemma_flax":
    model_config = model.get_config(cfg.preset, **overrides)
    params = gemma_flax.load_gemma_flax(path, model_config)
  else:
    raise ValueError(f"model.checkpoint_format={fmt!r}: use 'hf' (transformers safetensors "
                     "directory), 'gguf' (a Gemma 3 .gguf file, or "
                     f"{gguf.PACKAGE!r} for the pip package) or 'gemma_flax' (official Gemma "
                     "Flax orbax checkpoint).")
  if tok.vocab_size > model_config.vocab_size:
    raise ValueError(f"the tokenizer has {tok.vocab_size} pieces but the model's embedding only "
                     f"{model_config.vocab_size} rows; tokenizer.path must be the checkpoint's "
                     "own tokenizer.model.")
  log.info("base model %s (%s): %s params", path, fmt, f"{model_config.num_params():,}")
  return model_config, params


def gguf_source(checkpoint: str) -> str | None:
  """The .gguf path of model.checkpoint; None (the pip package's file) for its package name."""
  return None if checkpoint == gguf.PACKAGE else checkpoint


def _checked_against_file(model_config: model.ModelConfig, overrides: dict, path: str
                          ) -> model.ModelConfig:
  """The file's architecture, with config.model's runtime fields; other keys must agree."""
  differ = {k: (v, getattr(model_config, k)) for k, v in overrides.items()
            if k not in _RUNTIME_FIELDS and getattr(model_config, k) != (
                tuple(v) if isinstance(v, (list, tuple)) else v)}
  if differ:
    raise ValueError(f"config.model disagrees with the checkpoint {path} on "
                     + ", ".join(f"{k} (config {a!r}, checkpoint {b!r})"
                                 for k, (a, b) in differ.items())
                     + "; drop these keys: the checkpoint defines the architecture.")
  return dataclasses.replace(
      model_config, **{k: overrides[k] for k in _RUNTIME_FIELDS if k in overrides})
