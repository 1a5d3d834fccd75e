"""Gemma-style decoder: configs, params, forward. Checkpoint I/O is in `checkpoints`."""

from score_jax.model.config import PRESETS, ModelConfig, get_config
from score_jax.model.transformer import (Cache, Params, forward_hidden, init_cache, init_params,
                                         logits, logits_from_hidden)

__all__ = ["PRESETS", "Cache", "ModelConfig", "Params", "forward_hidden", "get_config",
           "init_cache", "init_params", "logits", "logits_from_hidden"]
