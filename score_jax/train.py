"""The run: warm-start the base model, then SCoRe (Stage I -> Stage II), then evaluate.

One outer loop per RL step:  sample episodes (rollout) -> verify (task reward)
-> update (train_step). Every step is a function of (config, seed, step): the
problems of step s are drawn with numpy's generator seeded by (seed, s) and the
rollout key is fold_in(key(seed), s), so a resumed run repeats exactly what an
uninterrupted one does. State lives in two orbax checkpoint directories of the
workdir: `warmstart/` (supervised phase, its last step is the base model) and
`rl/` (the RL train state and the stage schedule position).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from score_jax import (checkpoint, eval as evaluation, metrics as metrics_lib, model, rollout,
                       sft, sharding, tasks, tokenizer as tokenizer_lib, train_step)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
  """Everything derived once from the config (no training state)."""

  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  task: tasks.Task
  tok: tokenizer_lib.Tokenizer
  model_config: model.ModelConfig
  between_ids: tuple[int, ...]
  stop_tokens: tuple[int, ...]


def parse_schedule(schedule: str) -> list[tuple[str, int]]:
  """'stage1:30,stage2:60' -> [('stage1', 30), ('stage2', 60)]; stages may repeat (interleaving)."""
  out = []
  for item in filter(None, (s.strip() for s in schedule.split(","))):
    name, _, steps = item.partition(":")
    if name not in train_step.OBJECTIVES or not steps.isdigit():
      raise ValueError(f"bad stage_schedule entry {item!r}: write '<objective>:<steps>' with an "
                       f"objective in {train_step.OBJECTIVES}, e.g. 'stage1:30,stage2:60'.")
    out.append((name, int(steps)))
  return out


def _tokenizer(config, task: tasks.Task, workdir: str) -> tokenizer_lib.Tokenizer:
  if config.tokenizer.path:
    return tokenizer_lib.load(config.tokenizer.path, chat_template=config.tokenizer.chat_template)
  path = os.path.join(workdir, "tokenizer.model")
  if os.path.exists(path):  # trained by an earlier (possibly interrupted) run of this workdir.
    return tokenizer_lib.load(path, chat_template=config.tokenizer.chat_template)
  lines = [line for ex in task.train[:config.tokenizer.corpus_size]
           for line in (ex.prompt, ex.solution or "")]
  lines += [task.instruction] * 100  # weight it like a frequent line, so it merges into few pieces
  tok = tokenizer_lib.train_tokenizer(lines, vocab_size=config.tokenizer.vocab_size,
                                      chat_template=config.tokenizer.chat_template)
  if jax.process_index() == 0:
    tok.save(path)
  return tok


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(tuple(config.mesh_shape))
  task = tasks.make_task(config.task)
  tok = _tokenizer(config, task, workdir)
  overrides = {k: v for k, v in config.model.items() if k != "preset"}
  model_config = model.get_config(config.model.preset, vocab_size=tok.vocab_size, **overrides)
  return Run(config=config, workdir=workdir, mesh=mesh, task=task, tok=tok,
             model_config=model_config, between_ids=tuple(tok.next_turn_ids(task.instruction)),
             stop_tokens=tuple(sorted({tok.model_turn_end_id, tok.eos_id})))


def prompt_ids(run: Run, example: tasks.Example) -> list[int]:
  return run.tok.first_turn_ids(example.prompt)


def _open_phase(run: Run, name: str, state: sft.TrainState):
  """The phase's checkpointer, resumed: (ckpt, start step, state, meta); start 0 when new."""
  ckpt = checkpoint.Checkpointer(os.path.join(run.workdir, name),
                                 save_every=run.config.checkpoint.every,
                                 keep=run.config.checkpoint.keep)
  restored = ckpt.restore(checkpoint.abstract_like(state))
  start, meta = 0, {}
  if restored is not None:
    start, state, meta = restored
    log.info("%s resumed at step %d", name, start)
  ckpt.install_signal_handlers()
  return ckpt, start, state, meta


# --- supervised warm-start --------------------------------------------------------------------


def warmstart_examples(run: Run, step: int) -> list[sft.Segments]:
  """Two-turn episodes for the base model: y1 = gold (trained); y2 repeats y1 or fixes it.

  With probability p_corrupt_context the y1 shown in the context is a corrupted
  solution (not trained on); y2 then repeats the given y1 with probability
  p_second_repeats and is the gold solution otherwise — so the base model mostly
  repeats itself, as real base models do, with a few corrections to learn from.
  """
  cfg = run.config.warmstart
  rng = np.random.default_rng([run.config.seed, 7, step])
  eot = [run.tok.model_turn_end_id]
  examples = []
  for idx in rng.choice(len(run.task.train), cfg.batch_size, replace=False):
    ex = run.task.train[idx]
    gold = run.tok.encode(ex.solution) + eot
    segments = [(prompt_ids(run, ex), False)]
    if run.task.corrupt is not None and rng.random() < cfg.p_corrupt_context:
      y1 = run.tok.encode(run.task.corrupt(ex, rng)) + eot
      segments.append((y1, False))
    else:
      y1 = gold
      segments.append((y1, True))
    y2 = y1 if rng.random() < cfg.p_second_repeats else gold
    segments += [(list(run.between_ids), False), (y2, True)]
    examples.append(segments)
  return examples


def run_warmstart(run: Run, writer: metrics_lib.MetricWriter) -> model.Params:
  """The supervised phase (resumable); returns the base model params."""
  cfg = run.config.warmstart
  params = model.init_params(run.model_config, jax.random.key(run.config.seed))
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps,
                                                max(cfg.steps, cfg.warmup_steps + 1))
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.0))
  ckpt, start, state, _ = _open_phase(run, "warmstart",
                                      sft.init_train_state(params, opt, run.mesh))
  step_fn = sft.make_sft_step(run.model_config, opt, state, run.mesh)
  try:
    for step in range(start, cfg.steps):
      batch = sft.pack_examples(warmstart_examples(run, step), cfg.seq_len, run.tok.pad_id,
                                bucket=32)
      state, m = step_fn(state, batch)
      if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
        writer.write(step + 1, m, prefix="warmstart/")
      ckpt.save(step + 1, state, {"phase": "warmstart"}, force=step + 1 == cfg.steps)
      if ckpt.preempted:
        raise SystemExit(f"preempted during warm-start; saved step {step + 1}")
  finally:
    ckpt.close()
  return state["params"]


# --- SCoRe RL ---------------------------------------------------------------------------------


def rollout_config(run: Run, *, greedy: bool = False) -> rollout.RolloutConfig:
  cfg = run.config.rl
  return rollout.RolloutConfig(
      samples_per_prompt=1 if greedy else cfg.samples_per_prompt,
      max_new_tokens=cfg.max_new_tokens, instruction_ids=run.between_ids,
      stop_tokens=run.stop_tokens, turn_end_id=run.tok.model_turn_end_id,
      num_attempts=cfg.num_attempts, temperature=0.0 if greedy else cfg.temperature,
      pad_id=run.tok.pad_id,
      offline_first_fraction=0.0 if greedy else cfg.offline_first_fraction)


def _objective(run: Run, name: str) -> train_step.ObjectiveConfig:
  cfg = run.config.rl
  return train_step.ObjectiveConfig(
      name=name, samples_per_prompt=cfg.samples_per_prompt, alpha=cfg.alpha, beta1=cfg.beta1,
      beta2=cfg.beta2, estimator=cfg.estimator, kl_estimator=cfg.kl_estimator,
      micro_batches=cfg.micro_batches)


def rl_batch(run: Run, params, ref_params, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
  """Samples and verifies the episodes of RL step `step`: (train batch, metrics)."""
  cfg = run.config.rl
  rng = np.random.default_rng([run.config.seed, 11, step])
  chosen = [run.task.train[i] for i in rng.choice(len(run.task.train), cfg.prompts_per_step,
                                                    replace=False)]
  prompts, lengths = tasks.batch_prompts([prompt_ids(run, ex) for ex in chosen], run.tok.pad_id)
  rc = rollout_config(run)
  t0 = time.perf_counter()
  with jax.set_mesh(run.mesh):  # batch over the data axes, heads over tensor.
    episodes = rollout.rollout_in_chunks(
        run.model_config, params, prompts, lengths,
        jax.random.fold_in(jax.random.key(run.config.seed), step), rc=rc,
        micro_batch=min(cfg.rollout_micro_batch, cfg.prompts_per_step), ref_params=ref_params)
  texts = rollout.attempt_texts(episodes, run.tok.decode, rc.stop_tokens)
  t1 = time.perf_counter()
  golds = [chosen[i // cfg.samples_per_prompt].gold for i in range(len(texts[0]))]
  rewards = np.array([[run.task.reward(t, g) for t, g in zip(attempt, golds)]
                      for attempt in texts], np.float32)
  answers = [[run.task.answer(t) for t in attempt] for attempt in texts]
  t2 = time.perf_counter()
  batch = {"tokens": episodes.tokens, "loss_mask": episodes.loss_mask, "rewards": rewards}
  m = evaluation.transition_metrics(rewards)
  group_std = rewards[-1].reshape(-1, cfg.samples_per_prompt).std(axis=1)
  lengths_a = np.asarray(jax.device_get(episodes.attempt_length))
  m.update(changed_answer_rate=evaluation.changed_answer_rate(answers),
           zero_variance_groups=float(np.mean(group_std == 0)),
           truncation_rate=float(np.asarray(jax.device_get(episodes.truncated)).mean()),
           response_length_1=float(lengths_a[0].mean()),
           response_length_2=float(lengths_a[-1].mean()),
           time_sample=t1 - t0, time_verify=t2 - t1,
           sampled_tokens_per_s=float(lengths_a.sum()) / max(t1 - t0, 1e-9))
  return batch, m


def run_rl(run: Run, base_params: model.Params,
           writer: metrics_lib.MetricWriter) -> model.Params:
  """Stage schedule over one train state (resumable); returns the final policy params."""
  cfg = run.config.rl
  schedule = parse_schedule(cfg.stage_schedule)
  total = sum(n for _, n in schedule)
  ref_params = jax.tree.map(jnp.copy, sharding.shard_params(base_params, run.mesh))
  opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                    optax.adam(cfg.learning_rate, b1=cfg.adam_b1, b2=cfg.adam_b2))
  ckpt, start, state, meta = _open_phase(run, "rl",
                                         sft.init_train_state(base_params, opt, run.mesh))
  if start and meta.get("stage_schedule") != cfg.stage_schedule:
    raise ValueError(f"{ckpt.directory} was written with stage_schedule "
                     f"{meta.get('stage_schedule')!r}, not {cfg.stage_schedule!r}; use the same "
                     "config to resume, or a new workdir.")
  steps = {name: train_step.make_rl_step(run.model_config, opt, _objective(run, name), state,
                                         ref_params, run.mesh)
           for name in {name for name, _ in schedule}}
  stage_of = [name for name, n in schedule for _ in range(n)]
  try:
    for step in range(start, total):
      t0 = time.perf_counter()
      batch, m = rl_batch(run, state["params"], ref_params, step)
      t1 = time.perf_counter()
      state, update_metrics = steps[stage_of[step]](state, ref_params, batch)
      update_metrics = jax.device_get(update_metrics)
      m.update(update_metrics)
      m.update(time_update=time.perf_counter() - t1, time_step=time.perf_counter() - t0,
               stage=stage_of[step])
      writer.write(step + 1, m, prefix="rl/")
      ckpt.save(step + 1, state, {"phase": "rl", "stage": stage_of[step],
                                  "stage_schedule": cfg.stage_schedule},
                force=step + 1 == total)
      if ckpt.preempted:
        raise SystemExit(f"preempted during RL; saved step {step + 1}")
  finally:
    ckpt.close()
  return state["params"]


# --- evaluation and the whole run ---------------------------------------------------------------


def evaluate_params(run: Run, params: model.Params) -> dict[str, Any]:
  examples = run.task.eval
  prompts, lengths = tasks.batch_prompts([prompt_ids(run, ex) for ex in examples],
                                         run.tok.pad_id)
  with jax.set_mesh(run.mesh):
    return evaluation.evaluate(
        run.model_config, params, prompts, lengths, [ex.gold for ex in examples],
        rc=rollout_config(run, greedy=True), decode=run.tok.decode, reward_fn=run.task.reward,
        answer_fn=run.task.answer, micro_batch=run.config.eval.batch_size)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The main job: warm-start, SCoRe stages, evaluation of base vs trained policy."""
  start = time.time()
  run = setup(config, workdir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=1))
  writer = metrics_lib.MetricWriter(workdir)
  print(f"model: {run.model_config.num_params():,} params, vocab {run.tok.vocab_size}; "
        f"mesh {dict(run.mesh.shape)}; task {run.task.name}: {len(run.task.train)} train / "
        f"{len(run.task.eval)} eval problems", flush=True)
  base = run_warmstart(run, writer)
  results = {"base": evaluate_params(run, base)}
  print(evaluation.format_table({"base": results["base"]["metrics"]}), flush=True)
  if parse_schedule(config.rl.stage_schedule):
    trained = run_rl(run, base, writer)
    results["score"] = evaluate_params(run, trained)
  table = evaluation.format_table({name: r["metrics"] for name, r in results.items()})
  if jax.process_index() == 0:  # one writer on a shared workdir.
    evaluation.write_report(results, os.path.join(workdir, "eval"))
  writer.close()
  print(f"\nEvaluation on {len(run.task.eval)} held-out problems (greedy, %):\n{table}\n"
        f"wall time {time.time() - start:.0f} s; results in {os.path.join(workdir, 'eval')}",
        flush=True)
  return results
