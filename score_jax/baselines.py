"""The SFT baselines of docs/method.md §6, STaR and Pair-SFT, and the Self-Refine evaluation row.

STaR (Zelikman et al. 2022, as the SCoRe paper applies it to self-correction):
sample two-attempt episodes from the current policy, keep those whose second
attempt fixes a wrong first one (r1 = 0, r2 = 1), SFT on y2 given
(x1, y1, instruction), iterate. The paper's D+ variant also keeps
correct -> correct episodes (`include_correct_to_correct`).

Pair-SFT (Welleck et al. 2023, as in the paper): from the *base* model's samples
of a problem, pair an incorrect first attempt with a correct one and SFT on
(x1, y_wrong, instruction) -> y_right. With `include_correct_to_correct`, every
correct attempt is also paired with another correct one (D+).

Only the target attempt is trained (loss mask 1 on its tokens only). A target
that hit max_new_tokens without a stop token gets `<end_of_turn>` appended (and
trained), so the model learns complete turns; contexts use exactly the sampled
ids, with the same turn-closing token the rollout inserted (docs/method.md §7.9).

Budget (the same as the RL schedule, issue 8): step s samples
`rl.prompts_per_step` problems (the same draw as RL step s) x
`rl.samples_per_prompt` episodes through `train.rl_batch`, and makes one
optimizer update; the number of steps is the RL schedule's total. Steps are
grouped into rounds of `baseline.round_steps`: a round first samples all its
steps' episodes with the policy as it was at the round's start (STaR's
"collect, filter, fine-tune, repeat"; Pair-SFT always samples the base model),
pools the kept examples, then makes one update per step, each on up to
`baseline.batch_size` (default: the RL batch, prompts x k) pool examples,
cycling through the shuffled pool (several epochs when the pool is small). A
round with nothing kept makes no update (logged as `updated=0`). Checkpoints
land on round boundaries, so a resumed run repeats exactly what an
uninterrupted one does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax

from score_jax import (lora, metrics as metrics_lib, model, multihost, phase, self_refine, sft,
                       tasks, train)

METHODS = ("star", "pair_sft")
LABELS = {"star": "STaR", "pair_sft": "Pair-SFT"}  # their progress bars' names


# --- episodes -> SFT examples (host numpy, pure) ------------------------------------------------


def attempt_spans(loss_mask_ael: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(start, length) [A, E] of each attempt's tokens from the rollout's per-attempt loss masks."""
  mask = np.asarray(loss_mask_ael) > 0
  return mask.argmax(axis=-1), mask.sum(axis=-1)


def _target(tokens_el, start_ae, length_ae, a, e, stop_tokens, turn_end_id) -> list[int]:
  """Attempt a of episode e, closed with `turn_end_id` if it was truncated."""
  ids = tokens_el[e, start_ae[a, e]:start_ae[a, e] + length_ae[a, e]].tolist()
  if turn_end_id is not None and (not ids or ids[-1] not in stop_tokens):
    ids.append(int(turn_end_id))
  return ids


def star_examples(tokens_el: np.ndarray, loss_mask_ael: np.ndarray, rewards_ae: np.ndarray, *,
                  stop_tokens: Sequence[int], turn_end_id: int | None,
                  include_correct_to_correct: bool = False
                  ) -> tuple[list[sft.Segments], list[tuple[int, int]]]:
  """STaR's filtered episodes as SFT segments, and the kept (episode, attempt) pairs.

  Keeps attempt t+1 of episode e when r_t = 0 and r_{t+1} = 1 (and r_t = r_{t+1} = 1
  with include_correct_to_correct); its context is the episode's ids before it
  (x1, y1, the closing token if y1 was truncated, the instruction), untrained.
  """
  tokens_el = np.asarray(tokens_el)
  rewards_ae = np.asarray(rewards_ae)
  start_ae, length_ae = attempt_spans(loss_mask_ael)
  stops = set(int(t) for t in stop_tokens)
  examples, kept = [], []
  for e in range(tokens_el.shape[0]):
    for a in range(rewards_ae.shape[0] - 1):
      fixed = rewards_ae[a, e] == 0 and rewards_ae[a + 1, e] == 1
      kept_right = include_correct_to_correct and rewards_ae[a, e] == 1 == rewards_ae[a + 1, e]
      if fixed or kept_right:
        context = tokens_el[e, :start_ae[a + 1, e]].tolist()
        target = _target(tokens_el, start_ae, length_ae, a + 1, e, stops, turn_end_id)
        examples.append([(context, False), (target, True)])
        kept.append((e, a + 1))
  return examples, kept


def pair_sft_examples(tokens_el: np.ndarray, loss_mask_ael: np.ndarray, rewards_ae: np.ndarray,
                      samples_per_prompt: int, *, instruction_ids: Sequence[int],
                      stop_tokens: Sequence[int], turn_end_id: int | None,
                      include_correct_to_correct: bool = False
                      ) -> tuple[list[sft.Segments], list[tuple[int, int]]]:
  """Pair-SFT examples from each problem's k first attempts, and the (context, target) episodes.

  Within a problem's group, the i-th wrong first attempt is paired with the
  (i mod #right)-th right one: (x1, y_wrong, close?, instruction) -> y_right, only
  y_right trained. With include_correct_to_correct, right j is also paired with
  right (j + 1) mod #right (itself when it is the only one).
  """
  tokens_el = np.asarray(tokens_el)
  r1_e = np.asarray(rewards_ae)[0]
  num = tokens_el.shape[0]
  if num % samples_per_prompt:
    raise ValueError(f"{num} episodes are not groups of samples_per_prompt={samples_per_prompt}.")
  start_ae, length_ae = attempt_spans(loss_mask_ael)
  stops = set(int(t) for t in stop_tokens)
  examples, pairs = [], []
  for group in range(num // samples_per_prompt):
    members = range(group * samples_per_prompt, (group + 1) * samples_per_prompt)
    right = [e for e in members if r1_e[e] == 1]
    wrong = [e for e in members if r1_e[e] == 0]
    if not right:
      continue
    chosen = [(w, right[i % len(right)]) for i, w in enumerate(wrong)]
    if include_correct_to_correct:
      chosen += [(r, right[(j + 1) % len(right)]) for j, r in enumerate(right)]
    for src, dst in chosen:
      x1 = tokens_el[src, :start_ae[0, src]].tolist()
      shown = _target(tokens_el, start_ae, length_ae, 0, src, stops, turn_end_id)
      target = _target(tokens_el, start_ae, length_ae, 0, dst, stops, turn_end_id)
      examples.append([(x1, False), (shown, False), (list(instruction_ids), False),
                       (target, True)])
      pairs.append((src, dst))
  return examples, pairs


def pack_rows(examples: Sequence[sft.Segments], rows: int, pad_id: int,
              bucket: int = 32) -> dict[str, np.ndarray]:
  """`sft.pack_examples` padded to a fixed `rows` with all-pad, zero-mask rows (one jit shape)."""
  if not 0 < len(examples) <= rows:
    raise ValueError(f"need between 1 and {rows} examples, got {len(examples)}.")
  longest = max(sum(len(ids) for ids, _ in ex) for ex in examples)
  batch = sft.pack_examples(examples, -(-longest // bucket) * bucket, pad_id, bucket=bucket)
  extra = rows - len(examples)
  return {"tokens": np.pad(batch["tokens"], ((0, extra), (0, 0)), constant_values=pad_id),
          "loss_mask": np.pad(batch["loss_mask"], ((0, extra), (0, 0)))}


def examples_for(run: train.Run, method: str, batch: dict[str, Any]):
  """The method's examples from one `train.rl_batch` batch: (examples, kept ids)."""
  cfg = run.config
  # fetch: every process builds the same (global) examples; each feeds its own rows later.
  tokens_el, loss_mask_ael = multihost.fetch((batch["tokens"], batch["loss_mask"]))
  args = (tokens_el, loss_mask_ael, batch["rewards"])
  common = dict(stop_tokens=run.stop_tokens, turn_end_id=run.tok.model_turn_end_id,
                include_correct_to_correct=cfg.baseline.include_correct_to_correct)
  if method == "star":
    return star_examples(*args, **common)
  return pair_sft_examples(*args, cfg.rl.samples_per_prompt, instruction_ids=run.between_ids,
                           **common)


# --- the training loop ------------------------------------------------------------------------


def budget_steps(config) -> int:
  """Gradient updates of a baseline: baseline.steps, or (0) the RL stage schedule's total."""
  return config.baseline.steps or sum(n for _, n in train.parse_schedule(config.rl.stage_schedule))


def learning_rate(config) -> float:
  """The baselines' Adam learning rate: baseline.learning_rate, or (0) rl.learning_rate.

  The paper keeps the learning rate equal across methods, so a config that sets only
  rl.learning_rate trains its SFT baselines at that rate too.
  """
  if config.baseline.learning_rate < 0:
    raise ValueError(f"baseline.learning_rate must be >= 0 (0 = rl.learning_rate), got "
                     f"{config.baseline.learning_rate}.")
  return config.baseline.learning_rate or config.rl.learning_rate


def run_sft_baseline(run: train.Run, base_params: model.Params,
                     writer: metrics_lib.MetricWriter, method: str) -> model.Params:
  """STaR or Pair-SFT from the base params on the RL budget (resumable); returns the params."""
  if method not in METHODS:
    raise ValueError(f"unknown SFT baseline {method!r}; choose one of {METHODS}.")
  cfg, rl = run.config.baseline, run.config.rl
  total, per_round = budget_steps(run.config), cfg.round_steps
  rows = cfg.batch_size or rl.prompts_per_step * rl.samples_per_prompt
  shards = run.mesh.shape["data"] * run.mesh.shape["fsdp"]
  if per_round < 1 or rows % shards:
    raise ValueError(f"baseline.round_steps must be >= 1 (got {per_round}) and the SFT batch of "
                     f"{rows} rows must split over the {shards} data-parallel devices; set "
                     "baseline.batch_size to a multiple of mesh data x fsdp.")
  if method == "star" and rl.num_attempts < 2:
    raise ValueError("STaR keeps episodes whose later attempt fixes an earlier one: set "
                     "rl.num_attempts >= 2.")
  # rl.lora.rank > 0: SFT of adapters over the frozen base, which is ref_params
  # (train.lora_setup); otherwise ref_params is a copy of it.
  adapters, policy_of, lora_meta, ref_params = train.lora_setup(run, base_params)
  opt = optax.chain(optax.clip_by_global_norm(rl.grad_clip),
                    optax.adam(learning_rate(run.config), b1=rl.adam_b1, b2=rl.adam_b2))
  ckpt, start, state, meta = phase.open_phase(
      run.workdir, method,
      sft.init_train_state(base_params if adapters is None else adapters, opt, run.mesh),
      save_every=run.config.checkpoint.every, keep=run.config.checkpoint.keep)
  plan = {"phase": method, "steps": total, "round_steps": per_round}
  if start and {k: meta.get(k) for k in plan} != plan:
    raise ValueError(f"{ckpt.directory} was written with {meta}, not {plan}; use the same config "
                     "to resume, or a new workdir.")
  if start and lora_meta:
    lora.check_resume(meta.get("lora"), lora_meta, ckpt.directory)
  if lora_meta:
    plan["lora"] = lora_meta
  step_fn = sft.make_sft_step(run.model_config, opt, state, run.mesh,
                              base_params=None if adapters is None else ref_params)
  writer.drop_after(f"{method}/", start)  # a resumed run repeats the steps after `start`.
  bar = writer.progress(LABELS[method], total, start)  # writer.write moves it.
  try:
    for round_start in range(start, total, per_round):
      round_steps = range(round_start, min(round_start + per_round, total))
      # STaR iterates on its own samples; Pair-SFT pairs the base model's samples.
      sampler = policy_of(state["params"]) if method == "star" else ref_params
      pool, step_metrics = [], []
      for step in round_steps:
        batch, m = train.rl_batch(run, sampler, ref_params, step)
        examples, _ = examples_for(run, method, batch)
        pool += examples
        m.update(kept=len(examples), kept_fraction=len(examples) / len(batch["rewards"][0]))
        step_metrics.append(m)
      order = np.random.default_rng([run.config.seed, 13, round_start]).permutation(len(pool))
      per_update = min(rows, len(pool))
      for j, (step, m) in enumerate(zip(round_steps, step_metrics)):
        if per_update:
          picked = order[(j * per_update + np.arange(per_update)) % len(pool)]
          packed = pack_rows([pool[i] for i in picked], rows, run.tok.pad_id)
          state, update = step_fn(state, phase.host_rows_of(run.mesh, packed))
          m.update(multihost.fetch(update))
        m.update(pool_size=len(pool), rows=per_update, updated=float(per_update > 0))
        writer.write(step + 1, m, prefix=f"{method}/")
      # Saves only at round ends (a round's samples come from its start params); a save is
      # due when the round crossed a multiple of checkpoint.every.
      end = round_steps[-1] + 1
      every = ckpt.save_every
      if every > 0 and end // every > round_start // every:
        ckpt.save(end, state, plan, force=True)
      phase.save_or_stop(ckpt, end, total, state, plan)
  finally:
    bar.close()
    ckpt.close()
  return policy_of(state["params"])


# --- Self-Refine (evaluation only) --------------------------------------------------------------


def evaluate_self_refine(run: train.Run, params: model.Params) -> dict[str, Any]:
  """generate -> feedback -> refine on the eval problems (see score_jax.self_refine)."""
  cfg = run.config.eval
  feedback = cfg.get("self_refine_feedback") or self_refine.FEEDBACK_INSTRUCTION
  refine = cfg.get("self_refine_refine") or self_refine.REFINE_INSTRUCTION
  examples = tasks.eval_examples(run.task, cfg.get("split", "test"))
  prompts, lengths = tasks.batch_prompts([train.prompt_ids(run, ex) for ex in examples],
                                         run.tok.pad_id)
  with jax.set_mesh(run.mesh):
    return self_refine.evaluate(
        run.model_config, params, prompts, lengths, [ex.gold for ex in examples],
        rc=train.rollout_config(run, greedy=True), feedback_ids=run.tok.next_turn_ids(feedback),
        refine_ids=run.tok.next_turn_ids(refine), decode=run.tok.decode,
        reward_fn=run.task.reward, answer_fn=run.task.answer, micro_batch=cfg.batch_size)
