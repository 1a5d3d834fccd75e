"""Multi-attempt episodes: x1 -> y1 -> instruction -> y2 (-> ... yN), as token ids.

The context of attempt t+1 is built by concatenating token ids on device —
context_t + y_t (+ a turn-closing token if y_t was truncated) + instruction —
never by decoding and re-tokenising text, so the trained tokens are exactly the
sampled ones (docs/method.md §7.9), and y_{t+1} always sees y_t (§7.4).

An episode is stored once, left-aligned, as the full token sequence
[x1 | y1 | close? | instr | y2 | pad]; attempt t's tokens are selected by
`loss_mask[t]`, which marks the *target* positions of y_t (the positions whose
token the model generated). One teacher-forced forward over the episode then
gives the log-probs of every attempt, each with its full context.

Shapes: P prompts, E = P * k episodes (each prompt repeated k times, episode
e belongs to prompt e // k), A attempts, L episode buffer length, M max new
tokens per attempt.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import multihost, sampling
from score_jax.model import ModelConfig, Params


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  """What one rollout samples. Hashable: a static jit argument."""

  samples_per_prompt: int  # k episodes per problem (RLOO needs k >= 2).
  max_new_tokens: int  # per attempt.
  instruction_ids: tuple[int, ...]  # between attempts (e.g. the templated turn-2 prompt).
  stop_tokens: tuple[int, ...]
  # Appended after an attempt that hit max_new_tokens without a stop token, so that
  # the next turn still starts after a closed turn (Gemma: <end_of_turn>). None: nothing.
  turn_end_id: int | None = None
  num_attempts: int = 2
  temperature: float = 1.0
  top_k: int | None = None
  top_p: float | None = None
  pad_id: int = 0
  # Fraction of prompts whose k first attempts are all sampled from the reference params
  # ("offline first attempts", paper §5.3; rounded per rollout call, whole groups so that
  # each RLOO group is all offline or all on-policy). 0 = fully on-policy.
  offline_first_fraction: float = 0.0

  def __post_init__(self):
    if self.num_attempts < 1 or self.samples_per_prompt < 1:
      raise ValueError("num_attempts and samples_per_prompt must be >= 1.")
    if not 0.0 <= self.offline_first_fraction <= 1.0:
      raise ValueError(f"offline_first_fraction must be in [0, 1], got "
                       f"{self.offline_first_fraction}.")
    object.__setattr__(self, "instruction_ids", tuple(int(t) for t in self.instruction_ids))
    object.__setattr__(self, "stop_tokens", tuple(int(t) for t in self.stop_tokens))

  def sampling_config(self) -> sampling.SamplingConfig:
    return sampling.SamplingConfig(
        max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
        top_p=self.top_p, stop_tokens=self.stop_tokens, pad_id=self.pad_id)


class Episodes(NamedTuple):
  """A batch of multi-attempt episodes (a pytree of arrays).

  tokens:           int32 [E, L]   the full episode, left-aligned, pad after `length`.
  length:           int32 [E]
  loss_mask:        float32 [A, E, L]  1 at the target positions of attempt t's tokens.
  sampler_logprobs: float32 [E, L] the sampler's log pi(token) at generated positions.
  context_length:   int32 [A, E]   tokens before attempt t (its prompt, in this frame).
  attempt_tokens:   int32 [A, E, M] each attempt's new tokens, pad after its length.
  attempt_length:   int32 [A, E]   new tokens per attempt, the stop token included.
  truncated:        bool  [A, E]   attempt hit max_new_tokens without a stop token.
  prompt_index:     int32 [E]      which problem of the batch (e // k).
  offline_first:    bool  [E]      y1 came from the reference params.
  """

  tokens: jax.Array
  length: jax.Array
  loss_mask: jax.Array
  sampler_logprobs: jax.Array
  context_length: jax.Array
  attempt_tokens: jax.Array
  attempt_length: jax.Array
  truncated: jax.Array
  prompt_index: jax.Array
  offline_first: jax.Array


# Episodes fields whose leading axis is the attempt, not the episode.
_ATTEMPT_MAJOR = ("loss_mask", "context_length", "attempt_tokens", "attempt_length", "truncated")


def concat_ragged(segments: Sequence[tuple[jax.Array, jax.Array]], width: int,
                  pad_value=0) -> tuple[jax.Array, jax.Array]:
  """Concatenates per-row variable-length segments.

  segments: (values [B, W_i] left-aligned, lengths [B]) pairs. Returns
  (values [B, width] left-aligned with `pad_value` after the end, lengths [B]).
  """
  batch = segments[0][0].shape[0]
  dtype = segments[0][0].dtype
  out = jnp.full((batch, width), pad_value, dtype)
  j = jnp.arange(width)[None, :]
  start = jnp.zeros((batch, 1), jnp.int32)
  for values, lengths in segments:
    lengths = lengths.astype(jnp.int32)[:, None]
    inside = (j >= start) & (j < start + lengths)
    idx = jnp.clip(j - start, 0, values.shape[1] - 1)
    out = jnp.where(inside, jnp.take_along_axis(values.astype(dtype), idx, axis=1), out)
    start = start + lengths
  return out, start[:, 0]


def right_align(values: jax.Array, lengths: jax.Array, pad_value=0) -> jax.Array:
  """Left-aligned rows -> right-aligned (the sampler's left-padded prompt layout)."""
  width = values.shape[1]
  src = jnp.arange(width)[None, :] - (width - lengths.astype(jnp.int32))[:, None]
  gathered = jnp.take_along_axis(values, jnp.clip(src, 0, width - 1), axis=1)
  return jnp.where(src >= 0, gathered, pad_value)


def left_align(values: jax.Array, lengths: jax.Array, pad_value=0) -> jax.Array:
  """Right-aligned rows (the sampler's prompt layout) -> left-aligned."""
  width = values.shape[1]
  src = jnp.arange(width)[None, :] + (width - lengths.astype(jnp.int32))[:, None]
  gathered = jnp.take_along_axis(values, jnp.clip(src, 0, width - 1), axis=1)
  return jnp.where(src < width, gathered, pad_value)


_CONTEXT_MULTIPLE = 64


def context_width(length: int) -> int:
  """Padded width of an attempt's context: the sampler's power-of-two bucket, or the next
  multiple of 64 when smaller (the width is static inside `rollout`, so one compile either
  way; attempt 2's context of e.g. 146 tokens pads to 192, not 256)."""
  return min(sampling.bucket_length(length), -(-length // _CONTEXT_MULTIPLE) * _CONTEXT_MULTIPLE)


def episode_length(prompt_width: int, rc: RolloutConfig) -> int:
  """Buffer length L for prompts of `prompt_width` tokens."""
  between = len(rc.instruction_ids) + (rc.turn_end_id is not None)
  return prompt_width + rc.num_attempts * rc.max_new_tokens + (rc.num_attempts - 1) * between


def _sample_attempt(config, params, ref_params, context, context_len, rng, rc, num_offline,
                    dparams, ref_dparams):
  """Samples one attempt for every episode; the first `num_offline` rows from ref_params."""
  width = context_width(context.shape[1])
  context = jnp.pad(context, ((0, 0), (0, width - context.shape[1])), constant_values=rc.pad_id)
  prompt = right_align(context, context_len, rc.pad_id)
  settings = rc.sampling_config()
  if num_offline == 0:
    return sampling.sample(config, params, prompt, context_len, rng, settings=settings,
                           dparams=dparams)
  k_ref, k_pol = jax.random.split(rng)
  off = sampling.sample(config, ref_params, prompt[:num_offline], context_len[:num_offline],
                        k_ref, settings=settings, dparams=ref_dparams)
  if num_offline == prompt.shape[0]:
    return off
  on = sampling.sample(config, params, prompt[num_offline:], context_len[num_offline:], k_pol,
                       settings=settings, dparams=dparams)
  return jax.tree.map(lambda a, b: jnp.concatenate([a, b]) if a.ndim else jnp.maximum(a, b),
                      off, on)


@functools.partial(jax.jit, static_argnames=("config", "rc"))
def rollout(config: ModelConfig, params: Params, prompt_tokens: jax.Array,
            prompt_lengths: jax.Array, rng: jax.Array, *, rc: RolloutConfig,
            ref_params: Params | None = None, dparams: Params | None = None,
            ref_dparams: Params | None = None) -> Episodes:
  """Samples k episodes of `rc.num_attempts` attempts for each prompt.

  prompt_tokens: int32 [P, W] left-aligned turn-1 prompts (x1, template included);
  prompt_lengths: int32 [P]. ref_params: the frozen base model, needed only when
  rc.offline_first_fraction > 0. dparams / ref_dparams: optional
  `sampling.decode_weights` of params / ref_params, made outside this jit (see
  `sampling.sample`); `rollout_in_chunks` makes them once for all its chunks.
  """
  k = rc.samples_per_prompt
  context = jnp.repeat(prompt_tokens.astype(jnp.int32), k, axis=0)
  context_len = jnp.repeat(prompt_lengths.astype(jnp.int32), k, axis=0)
  num_episodes = context.shape[0]
  num_offline = int(round(rc.offline_first_fraction * prompt_tokens.shape[0])) * k
  if num_offline and ref_params is None:
    raise ValueError("offline_first_fraction > 0 needs ref_params (the base model).")
  width = episode_length(prompt_tokens.shape[1], rc)
  zeros_f = jnp.zeros_like(context, jnp.float32)
  logprob_segments = [(zeros_f, context_len)]
  instr = jnp.broadcast_to(jnp.asarray(rc.instruction_ids, jnp.int32),
                           (num_episodes, len(rc.instruction_ids)))
  between_len = len(rc.instruction_ids) + (rc.turn_end_id is not None)
  outputs, context_lengths = [], []
  for attempt in range(rc.num_attempts):
    # Longest possible context of this attempt: trims the sampler's prompt bucket.
    max_context = prompt_tokens.shape[1] + attempt * (rc.max_new_tokens + between_len)
    out = _sample_attempt(config, params, ref_params, context[:, :max_context], context_len,
                          jax.random.fold_in(rng, attempt), rc, num_offline if attempt == 0 else 0,
                          dparams, ref_dparams)
    outputs.append(out)
    context_lengths.append(context_len)
    segments = [(context, context_len), (out.tokens, out.lengths)]
    logprob_segments.append((out.logprobs, out.lengths))
    if attempt + 1 < rc.num_attempts:
      between = [(instr, jnp.full((num_episodes,), instr.shape[1], jnp.int32))]
      if rc.turn_end_id is not None:
        close = jnp.full((num_episodes, 1), rc.turn_end_id, jnp.int32)
        between.insert(0, (close, out.truncated.astype(jnp.int32)))
      segments += between
      logprob_segments += [(jnp.zeros_like(v, jnp.float32), n) for v, n in between]
    context, context_len = concat_ragged(segments, width, rc.pad_id)

  positions = jnp.arange(width)[None, None, :]
  starts = jnp.stack(context_lengths)[:, :, None]
  lengths = jnp.stack([o.lengths for o in outputs])
  loss_mask = ((positions >= starts) & (positions < starts + lengths[:, :, None]))
  logprobs, _ = concat_ragged(logprob_segments, width, 0.0)
  return Episodes(
      tokens=context, length=context_len, loss_mask=loss_mask.astype(jnp.float32),
      sampler_logprobs=logprobs, context_length=jnp.stack(context_lengths),
      attempt_tokens=jnp.stack([o.tokens for o in outputs]), attempt_length=lengths,
      truncated=jnp.stack([o.truncated for o in outputs]),
      prompt_index=jnp.arange(num_episodes, dtype=jnp.int32) // k,
      offline_first=jnp.arange(num_episodes) < num_offline)


def rollout_in_chunks(config: ModelConfig, params: Params, prompt_tokens: np.ndarray,
                      prompt_lengths: np.ndarray, rng: jax.Array, *, rc: RolloutConfig,
                      micro_batch: int, ref_params: Params | None = None,
                      on_chunk: Callable[[int], None] | None = None) -> Episodes:
  """`rollout` over micro-batches of `micro_batch` prompts, concatenated (prompt_index global).

  Each chunk gets its own key (fold_in of the chunk index), so the result depends
  on `micro_batch`; keep it fixed within a run for reproducibility. `on_chunk(prompts
  done)` runs after each chunk has finished (it waits for the chunk: for progress bars).
  """
  num_prompts = prompt_tokens.shape[0]
  if num_prompts % micro_batch:
    raise ValueError(f"{num_prompts} prompts do not split into micro-batches of {micro_batch}; "
                     "choose a micro-batch size that divides the batch.")
  # The decode loop's weight copies, made once for every chunk (and both attempts).
  dparams = sampling.decode_weights(config, params)
  ref_dparams = None
  if rc.offline_first_fraction > 0 and ref_params is not None:
    ref_dparams = sampling.decode_weights(config, ref_params)
  chunks = []
  for i, start in enumerate(range(0, num_prompts, micro_batch)):
    ep = rollout(config, params, prompt_tokens[start:start + micro_batch],
                 prompt_lengths[start:start + micro_batch], jax.random.fold_in(rng, i), rc=rc,
                 ref_params=ref_params, dparams=dparams, ref_dparams=ref_dparams)
    chunks.append(ep._replace(prompt_index=ep.prompt_index + start))
    if on_chunk is not None:
      jax.block_until_ready(ep.length)
      on_chunk(start + micro_batch)
  return Episodes(*(jnp.concatenate(field, axis=1 if name in _ATTEMPT_MAJOR else 0)
                    for name, field in zip(Episodes._fields, zip(*chunks))))


def rollout_memory_bytes(config: ModelConfig, rc: RolloutConfig, num_prompts: int,
                         prompt_width: int) -> int:
  """Device bytes of one rollout call: the largest attempt's KV cache plus the episode buffers."""
  episodes = num_prompts * rc.samples_per_prompt
  last_context = context_width(episode_length(prompt_width, rc) - rc.max_new_tokens)
  cache = sampling.kv_cache_bytes(config, episodes, sampling.cache_length(last_context,
                                                                          rc.max_new_tokens))
  width = episode_length(prompt_width, rc)
  buffers = episodes * width * (4 + 4 + 4 * rc.num_attempts)  # tokens, logprobs, masks.
  logits = episodes * config.vocab_size * 4  # fp32 logits of the last slot only (prefill, decode).
  return cache + buffers + logits


def pick_micro_batch(config: ModelConfig, rc: RolloutConfig, num_prompts: int,
                     prompt_width: int, budget_bytes: int) -> int:
  """Largest divisor of num_prompts whose rollout fits in `budget_bytes`."""
  for size in sorted((d for d in range(1, num_prompts + 1) if num_prompts % d == 0),
                     reverse=True):
    if rollout_memory_bytes(config, rc, size, prompt_width) <= budget_bytes:
      return size
  need = rollout_memory_bytes(config, rc, 1, prompt_width)
  raise ValueError(f"even one prompt's rollout needs {need / 2**20:.1f} MiB, over the budget of "
                   f"{budget_bytes / 2**20:.1f} MiB; lower max_new_tokens or samples_per_prompt.")


def attempt_texts(episodes: Episodes, decode: Callable[[list[int]], str],
                  stop_tokens: Sequence[int] = ()) -> list[list[str]]:
  """Decoded text of every attempt, [A][E], with the trailing stop token removed (host side)."""
  # fetch: on several processes the episodes span hosts; every host gets all of them.
  tokens, lengths = multihost.fetch((episodes.attempt_tokens, episodes.attempt_length))
  stops = set(int(t) for t in stop_tokens)
  texts = []
  for attempt_tokens, attempt_lengths in zip(tokens, lengths):
    row_texts = []
    for row, n in zip(attempt_tokens, attempt_lengths):
      ids = row[:n].tolist()
      if ids and ids[-1] in stops:
        ids = ids[:-1]
      row_texts.append(decode(ids))
    texts.append(row_texts)
  return texts
