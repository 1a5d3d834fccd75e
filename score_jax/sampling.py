"""Autoregressive sampling with a fixed-size KV cache: prefill, then a jitted decode loop.

The sampler runs the model's own layer math (`transformer._block`, via
`forward_hidden` for the prefill and `forward_hidden_unrolled` for the decode
loop) and `logits_from_hidden`, so the log-probs it returns are the ones the
trainer computes (soft-caps included).

Decode: the block weights are copied once into per-layer 2-D [out, in] arrays
(`decode_weights`, a jit of its own so that they enter the loop in the plain
layout), the layers are unrolled in the step, and the KV cache holds one array
per layer in the layout the attention dots read. In a loop over stacked [L, ...]
weights, XLA's CPU backend re-slices and transposes every layer's weights for
every token (see BENCHMARKS.md). Cost: one extra copy of the block weights while
sampling, and compiles that grow with depth.

Layout of one call to `sample` (B sequences, prompts left-padded to P tokens):

  slots [0, P)          the prompt, right-aligned: a length-n prompt fills slots
                        [P - n, P) at positions 0..n-1; padding holds position -1.
  slots [P, P + M - 1)  the generated tokens (M = max_new_tokens), fed back one
                        per step: new token i sits at position n + i.

The last sampled token is never fed back, hence the `- 1` in the cache length.
Masks come from positions, so left padding and sliding windows need nothing else
(the cache is a plain buffer: local layers mask out, rather than evict, old keys).

Compiles are per (batch size, prompt bucket, SamplingConfig): `pad_prompts`
left-pads to a power-of-two bucket (>= 16) so prompts of nearby lengths share one.

Log-probs: `SampleOutput.logprobs[b, i]` is log pi_theta(token_i | context), the
log-softmax of the model's (soft-capped) fp32 logits at temperature 1 with no top-k /
top-p truncation: the quantity the RL objective differentiates, whatever
temperature / top-k / top-p were used to draw the token.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import losses, sharding
from score_jax.model import transformer
from score_jax.model.config import ModelConfig

# Logical axes of the cache arrays, for score_jax.sharding: one layer's keys [B, K, S, H]
# or values [B, K, H, S] (decode loop) and the stacked [L, B, S, K, H] prefill cache
# (transformer.init_cache).
CACHE_KV_AXES = ("batch", "kv_heads", None, None)
STACKED_CACHE_KV_AXES = ("layers", "batch", None, "kv_heads", None)
CACHE_POS_AXES = ("batch", None)
MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to draw tokens. Hashable: a static argument of the jitted `sample`.

  temperature 0 is greedy (argmax; top_k / top_p are then irrelevant). Otherwise
  logits are divided by `temperature`, then restricted to the `top_k` most likely
  tokens, then to the nucleus: the smallest set of most likely tokens whose
  (renormalised) probability reaches `top_p`.
  """

  max_new_tokens: int
  temperature: float = 0.0
  top_k: int | None = None
  top_p: float | None = None
  # Generation of a sequence ends after (and including) the first of these.
  stop_tokens: tuple[int, ...] = ()
  # Written after a sequence's stop token (Gemma's <pad> is 0).
  pad_id: int = 0

  def __post_init__(self):
    if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}.")
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")
    if self.top_k is not None and self.top_k < 1:
      raise ValueError(f"top_k must be >= 1 or None (no top-k), got {self.top_k}.")
    if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1] or None (no nucleus), got {self.top_p}.")
    stops = tuple(self.stop_tokens)
    if not all(isinstance(t, (int, np.integer)) for t in stops):
      raise ValueError(f"stop_tokens must be token ids (ints), got {self.stop_tokens!r}.")
    # A tuple of Python ints keeps the config hashable whatever sequence was passed.
    object.__setattr__(self, "stop_tokens", tuple(int(t) for t in stops))

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


class SampleOutput(NamedTuple):
  """Result of `sample` (a pytree of arrays, batch-major).

  tokens:    int32 [B, max_new]  new tokens; `pad_id` after the stop token.
  logprobs:  float32 [B, max_new] log pi(token | context) at temperature 1, untruncated
             (see the module docstring); 0 after the stop token.
  lengths:   int32 [B]  number of new tokens, the stop token included.
  truncated: bool [B]   True where no stop token was produced (the limit was hit).
  num_steps: int32 []   tokens drawn per sequence before the loop ended (early exit
             when every sequence is done): max(lengths).
  """

  tokens: jax.Array
  logprobs: jax.Array
  lengths: jax.Array
  truncated: jax.Array
  num_steps: jax.Array


def bucket_length(length: int, min_bucket: int = MIN_BUCKET) -> int:
  """Padded prompt length: the next power of two, at least `min_bucket`."""
  if length < 1:
    raise ValueError(f"prompt length must be >= 1, got {length}.")
  return max(min_bucket, 1 << (length - 1).bit_length())


def pad_prompts(prompts: Sequence[Sequence[int]], *, pad_id: int = 0,
                min_bucket: int = MIN_BUCKET) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token-id prompts to one bucket: (tokens int32 [B, P], lengths int32 [B])."""
  if not prompts:
    raise ValueError("no prompts given; pass a non-empty list of token-id lists.")
  lengths = np.array([len(p) for p in prompts], np.int32)
  if lengths.min() == 0:
    raise ValueError(f"prompt {int(lengths.argmin())} is empty; every prompt needs at least "
                     "one token (e.g. <bos>).")
  width = bucket_length(int(lengths.max()), min_bucket)
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, width - len(prompt):] = prompt
  return tokens, lengths


def cache_length(prompt_width: int, max_new_tokens: int) -> int:
  """KV-cache slots `sample` allocates per sequence."""
  return prompt_width + max_new_tokens - 1


def kv_cache_bytes(config: ModelConfig, batch_size: int, cache_len: int,
                   dtype: str | None = None) -> int:
  """Bytes of a `cache_len`-slot KV cache (keys and values of every layer, slot positions).

  The prefill's prompt-sized cache also lives while it is copied into this one.
  """
  itemsize = jnp.dtype(dtype or config.dtype).itemsize
  kv = 2 * config.num_layers * batch_size * cache_len * config.num_kv_heads * config.head_dim
  return kv * itemsize + batch_size * cache_len * jnp.dtype(jnp.int32).itemsize


def _constrain_cache(cache: transformer.Cache) -> transformer.Cache:
  """Batch over the data axes, KV heads over "tensor" (replicated where indivisible).

  Takes a stacked cache ([L, B, S, K, H] arrays) or a per-layer one (tuples of
  [B, K, S, H] keys and [B, K, H, S] values).
  """
  def kv(x):
    if isinstance(x, tuple):
      return tuple(sharding.constrain(layer, CACHE_KV_AXES) for layer in x)
    return sharding.constrain(x, STACKED_CACHE_KV_AXES)
  return {"k": kv(cache["k"]), "v": kv(cache["v"]),
          "pos": sharding.constrain(cache["pos"], CACHE_POS_AXES)}


def choose_tokens(logits_bv: jax.Array, rng: jax.Array | None,
                  settings: SamplingConfig) -> jax.Array:
  """Draws one token per row from fp32 logits [B, V] as `settings` says: int32 [B]."""
  if settings.greedy:
    return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
  scaled_bv = logits_bv / settings.temperature
  if settings.top_k is None and settings.top_p is None:
    return jax.random.categorical(rng, scaled_bv, axis=-1).astype(jnp.int32)
  # Work on the candidates sorted by descending logit: exactly k of them for top-k
  # (ties broken by index), the whole vocabulary (a full sort) when only top-p is set.
  k = min(settings.top_k or logits_bv.shape[-1], logits_bv.shape[-1])
  values_bk, indices_bk = jax.lax.top_k(scaled_bv, k)
  if settings.top_p is not None:
    probs_bk = jax.nn.softmax(values_bk, axis=-1)
    mass_before_bk = jnp.cumsum(probs_bk, axis=-1) - probs_bk
    # Keep a candidate while the more likely ones have not yet reached top_p; the
    # first candidate always stays (its mass_before is 0).
    values_bk = jnp.where(mass_before_bk < settings.top_p, values_bk, -jnp.inf)
  choice_b = jax.random.categorical(rng, values_bk, axis=-1)
  return jnp.take_along_axis(indices_bk, choice_b[:, None], axis=-1)[:, 0].astype(jnp.int32)


class _LoopState(NamedTuple):
  step: jax.Array          # tokens drawn so far (the column the next one goes to).
  cache: transformer.Cache
  last_token_b: jax.Array  # the token drawn at step - 1, fed to the model next.
  tokens_bn: jax.Array
  logprobs_bn: jax.Array
  done_b: jax.Array
  stopped_b: jax.Array
  lengths_b: jax.Array


def _record(state: _LoopState, logits_bv: jax.Array, rng: jax.Array | None,
            settings: SamplingConfig, limit_b: jax.Array) -> _LoopState:
  """Draws the token of column `state.step` from `logits_bv` and updates the done flags."""
  step = state.step
  key = None if rng is None else jax.random.fold_in(rng, step)
  token_b = choose_tokens(logits_bv, key, settings)
  active_b = ~state.done_b
  token_b = jnp.where(active_b, token_b, settings.pad_id)
  # log pi(token): the untempered, untruncated policy log-prob the trainer recomputes.
  logprob_b = losses.token_logprobs(logits_bv[:, None], token_b[:, None])[:, 0]
  logprob_b = jnp.where(active_b, logprob_b, 0.0)
  is_stop_b = jnp.isin(token_b, jnp.asarray(settings.stop_tokens, jnp.int32)) & active_b
  lengths_b = state.lengths_b + active_b.astype(jnp.int32)
  stopped_b = state.stopped_b | is_stop_b
  return state._replace(
      step=step + 1,
      last_token_b=token_b,
      tokens_bn=jax.lax.dynamic_update_index_in_dim(state.tokens_bn, token_b, step, axis=1),
      logprobs_bn=jax.lax.dynamic_update_index_in_dim(state.logprobs_bn, logprob_b, step,
                                                      axis=1),
      done_b=stopped_b | (lengths_b >= limit_b),
      stopped_b=stopped_b,
      lengths_b=lengths_b)


@functools.partial(jax.jit, static_argnames=("config", "settings"))
def sample(config: ModelConfig, params: transformer.Params, prompt_tokens: jax.Array,
           prompt_lengths: jax.Array, rng: jax.Array | None, *, settings: SamplingConfig,
           max_new_tokens_b: jax.Array | None = None,
           dparams: transformer.Params | None = None) -> SampleOutput:
  """Samples continuations of left-padded prompts (see `pad_prompts`).

  Args:
    config, params: the model (params may be sharded with `sharding.shard_params`;
      call under `jax.set_mesh(mesh)` to shard the batch and the KV cache).
    prompt_tokens: int32 [B, P], each prompt right-aligned; P should be a bucket.
    prompt_lengths: int32 [B], each >= 1: the real tokens are the last ones of a row.
    rng: a PRNG key; unused (may be None) when `settings` is greedy.
    settings: SamplingConfig (static; one compile per distinct value).
    max_new_tokens_b: optional int32 [B] per-sequence limit <= settings.max_new_tokens.
    dparams: `decode_weights(config, params)`, made outside this jit (and reusable
      across calls with the same params): as an argument its layout is fixed, so XLA
      cannot move the copy's layout change back into the loop (see BENCHMARKS.md).
      Made here when None, with the same tokens.

  Returns:
    SampleOutput; compiled once per (B, P, settings, sharding).
  """
  if prompt_tokens.ndim != 2 or prompt_lengths.shape != prompt_tokens.shape[:1]:
    raise ValueError(f"prompt_tokens must be [batch, width] and prompt_lengths [batch]; got "
                     f"{prompt_tokens.shape} and {prompt_lengths.shape}.")
  if rng is None and not settings.greedy:
    raise ValueError(f"temperature {settings.temperature} sampling needs a PRNG key; pass "
                     "rng=jax.random.key(seed).")
  batch, width = prompt_tokens.shape
  max_new = settings.max_new_tokens
  limit_b = jnp.full((batch,), max_new, jnp.int32) if max_new_tokens_b is None else (
      jnp.minimum(jnp.asarray(max_new_tokens_b, jnp.int32), max_new))
  tokens_bp = sharding.constrain(prompt_tokens.astype(jnp.int32), ("batch", None))
  lengths_b = sharding.constrain(prompt_lengths.astype(jnp.int32), ("batch",))
  offset_bp = jnp.arange(width, dtype=jnp.int32)[None, :] - (width - lengths_b)[:, None]
  positions_bp = jnp.where(offset_bp >= 0, offset_bp, -1)

  # Prefill: the whole prompt in one (scanned, compute-bound) forward into a
  # prompt-sized cache; logits only at the last slot, which holds every prompt's
  # final token thanks to the left padding. Then the cache goes per layer, padded
  # with empty slots for the generated tokens.
  prompt_cache = _constrain_cache(transformer.init_cache(config, batch, width))
  hidden_bpd, prompt_cache = transformer.forward_hidden(config, params, tokens_bp, positions_bp,
                                                        cache=prompt_cache, write_index=0)
  logits_bv = transformer.logits_from_hidden(config, params, hidden_bpd[:, -1:])[:, 0]
  cache = transformer.unstack_cache(_constrain_cache(prompt_cache), cache_length(width, max_new))

  state = _LoopState(
      step=jnp.zeros((), jnp.int32),
      cache=_constrain_cache(cache),
      last_token_b=jnp.zeros((batch,), jnp.int32),
      tokens_bn=sharding.constrain(jnp.full((batch, max_new), settings.pad_id, jnp.int32),
                                   ("batch", None)),
      logprobs_bn=sharding.constrain(jnp.zeros((batch, max_new), jnp.float32), ("batch", None)),
      done_b=limit_b <= 0,
      stopped_b=jnp.zeros((batch,), bool),
      lengths_b=jnp.zeros((batch,), jnp.int32))
  state = _record(state, logits_bv, rng, settings, limit_b)
  if max_new == 1:  # Nothing to decode: skip the loop and its weight copies.
    return _output(state)
  if dparams is None:
    dparams = transformer.decode_params(config, params)

  def not_finished(state: _LoopState) -> jax.Array:
    return (state.step < max_new) & ~jnp.all(state.done_b)

  def decode_step(state: _LoopState) -> _LoopState:
    # Feed the token of column step - 1; finished rows get position -1, so the slot
    # they write stays masked.
    fed_positions_b = jnp.where(state.done_b, -1, lengths_b + state.step - 1)
    hidden_b1d, cache = transformer.forward_hidden_unrolled(
        config, dparams, state.last_token_b[:, None], fed_positions_b[:, None],
        cache=state.cache, write_index=width + state.step - 1)
    logits_bv = transformer.logits_from_hidden(config, dparams, hidden_b1d)[:, 0]
    state = state._replace(cache=_constrain_cache(cache))
    return _record(state, logits_bv, rng, settings, limit_b)

  return _output(jax.lax.while_loop(not_finished, decode_step, state))


# The decode loop's per-layer weight copies as their own jitted computation: as
# arguments of `sample` they keep the plain row-major layout the loop's dots read.
decode_weights = jax.jit(transformer.decode_params, static_argnums=0)


def _output(state: _LoopState) -> SampleOutput:
  return SampleOutput(tokens=state.tokens_bn, logprobs=state.logprobs_bn,
                      lengths=state.lengths_b, truncated=~state.stopped_b,
                      num_steps=state.step)


def generate(config: ModelConfig, params: transformer.Params, prompts: list[list[int]], *,
             max_new_tokens: int, rng: jax.Array | None = None, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None,
             stop_tokens: Sequence[int] = ()) -> list[list[int]]:
  """New tokens for each prompt, up to and including the first stop token.

  Greedy by default; temperature > 0 needs `rng`. Prompts are left-padded to one
  power-of-two bucket, so prompts of nearby lengths reuse one compiled `sample`.
  """
  settings = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, stop_tokens=tuple(stop_tokens))
  tokens, lengths = pad_prompts(prompts, pad_id=settings.pad_id)
  dparams = decode_weights(config, params) if max_new_tokens > 1 else None
  out = sample(config, params, jnp.asarray(tokens), jnp.asarray(lengths), rng, settings=settings,
               dparams=dparams)
  new_tokens, new_lengths = jax.device_get((out.tokens, out.lengths))
  return [row[:n].tolist() for row, n in zip(new_tokens, new_lengths)]
