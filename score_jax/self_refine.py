"""Self-Refine-style prompting (Madaan et al. 2023) as an evaluation-only baseline (method.md §6).

generate -> feedback -> refine, all by the same model and without external
feedback: the model answers (y1), is asked to review its answer (f), then to
rewrite it using that review (y2). Every turn is joined as token ids on device
(rollout.concat_ragged), never by decoding and re-tokenising text:

  x1 ‖ y1 ‖ close? ‖ feedback_ids ‖ f ‖ close? ‖ refine_ids ‖ y2

y1 and f come from one two-attempt rollout whose "instruction" is the feedback
request; y2 from a one-attempt rollout on the refine context. Only y1 and y2
are scored, so the result has the shape of `eval.evaluate`'s (attempt 1 = y1,
attempt 2 = y2) and takes a row in the same table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import eval as evaluation, multihost, rollout
from score_jax.model import ModelConfig, Params

# The defaults; configs may override them (config.eval.self_refine_feedback / _refine).
FEEDBACK_INSTRUCTION = ("Review your solution above step by step. Point out any error in it, or "
                        "say that it is correct. Do not rewrite the solution yet.")
REFINE_INSTRUCTION = ("Using your review, rewrite the solution above, correcting any error. Only "
                      "output the final solution.")


def refine_context(tokens_el: jax.Array, length_e: jax.Array, feedback_truncated_e: jax.Array,
                   refine_ids: Sequence[int], turn_end_id: int | None,
                   pad_id: int) -> tuple[jax.Array, jax.Array]:
  """x1 ‖ y1 ‖ … ‖ f, then `<end_of_turn>` if f was truncated, then the refine turn: [E, W], [E]."""
  num = tokens_el.shape[0]
  refine = jnp.broadcast_to(jnp.asarray(refine_ids, jnp.int32), (num, len(refine_ids)))
  segments = [(tokens_el, length_e)]
  if turn_end_id is not None:
    close = jnp.full((num, 1), turn_end_id, jnp.int32)
    segments.append((close, feedback_truncated_e.astype(jnp.int32)))
  segments.append((refine, jnp.full((num,), len(refine_ids), jnp.int32)))
  width = tokens_el.shape[1] + 1 + len(refine_ids)
  return rollout.concat_ragged(segments, width, pad_id)


def evaluate(config: ModelConfig, params: Params, prompts: np.ndarray, prompt_lengths: np.ndarray,
             golds: Sequence[str], *, rc: rollout.RolloutConfig, feedback_ids: Sequence[int],
             refine_ids: Sequence[int], decode: Callable[[list[int]], str],
             reward_fn: Callable[[str, str], float], answer_fn: Callable[[str], str | None],
             micro_batch: int) -> dict[str, Any]:
  """Greedy generate -> feedback -> refine on a problem set; scored like `eval.evaluate`.

  rc: the greedy evaluation RolloutConfig (its instruction_ids and num_attempts
  are replaced here). The result adds "feedback": the review texts.
  """
  if rc.temperature != 0.0 or rc.samples_per_prompt != 1:
    raise ValueError("self-refine evaluation is greedy with one sample per problem: use "
                     "temperature=0 and samples_per_prompt=1 in its RolloutConfig.")
  n = prompts.shape[0]
  size, prompts, prompt_lengths = evaluation.pad_to_micro_batches(prompts, prompt_lengths,
                                                                  micro_batch)
  rc_feedback = dataclasses.replace(rc, num_attempts=2, instruction_ids=tuple(feedback_ids))
  first = rollout.rollout_in_chunks(config, params, prompts, prompt_lengths, jax.random.key(0),
                                    rc=rc_feedback, micro_batch=size)
  context, context_len = refine_context(first.tokens, first.length, first.truncated[1],
                                        refine_ids, rc.turn_end_id, rc.pad_id)
  refined = rollout.rollout_in_chunks(config, params, context, context_len, jax.random.key(1),
                                      rc=dataclasses.replace(rc, num_attempts=1),
                                      micro_batch=size)
  texts_1 = rollout.attempt_texts(first, decode, rc.stop_tokens)
  texts_2 = rollout.attempt_texts(refined, decode, rc.stop_tokens)
  texts = [texts_1[0][:n], texts_2[0][:n]]
  first_truncated, refined_truncated = multihost.fetch((first.truncated, refined.truncated))
  truncated = np.stack([first_truncated[0], refined_truncated[0]])[:, :n]
  result = evaluation.score_attempts(texts, golds, truncated, reward_fn=reward_fn,
                                     answer_fn=answer_fn)
  result["feedback"] = texts_1[1][:n]
  result["metrics"]["feedback_truncation_rate"] = float(first_truncated[1, :n].mean())
  return result
