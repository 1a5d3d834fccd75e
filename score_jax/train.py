"""The run's phases: warm-start the base model, SCoRe (Stage I -> Stage II), evaluation.

`pipeline.train_and_evaluate` chains them (and the SFT baselines) into the whole job.

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
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from score_jax import (checkpoint, console, eval as evaluation, lora, losses, metrics as metrics_lib,
                       model, multihost, phase, rollout, sft, sharding, tasks,
                       tokenizer as tokenizer_lib, train_step)
from score_jax import base_model
from score_jax.base_model import load_base_model
from score_jax.model import checkpoints, gguf as gguf_lib

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
  # The pretrained base model (host arrays) when config.model.checkpoint names one.
  base_params: model.Params | None = None


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


# Which RL checkpoint is evaluated: the last one, or (the paper's choice) the one with the
# highest training reward (`best_train_reward`).
CHECKPOINT_RULES = ("final", "best_train_reward")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Refuses, before any training, settings that would silently train something else."""
  rl = config.rl
  schedule = parse_schedule(rl.stage_schedule)
  if config.get("method", "score") == "score":
    for name in dict(schedule):
      train_step.check_num_attempts(name, rl.num_attempts)
    if schedule:
      train_step.check_kl_estimator(rl.kl_estimator)
  rule = config.eval.get("checkpoint", "final")
  if rule not in CHECKPOINT_RULES:
    raise ValueError(f"unknown eval.checkpoint {rule!r}; use one of {CHECKPOINT_RULES}.")
  if rule == "best_train_reward" and config.get("method", "score") != "score":
    raise ValueError("eval.checkpoint='best_train_reward' selects among the RL schedule's "
                     f"checkpoints; method={config.method!r} evaluates its final step: set "
                     "--config.eval.checkpoint=final.")


def _tokenizer(config, task: tasks.Task, workdir: str) -> tokenizer_lib.Tokenizer:
  if config.tokenizer.path:
    return tokenizer_lib.load(os.path.expanduser(config.tokenizer.path),
                              chat_template=config.tokenizer.chat_template)
  if config.model.get("checkpoint") and config.model.get("checkpoint_format") == "gguf":
    # A GGUF file carries its vocabulary: the tokenizer is rebuilt from it.
    return tokenizer_lib.from_gguf(
        gguf_lib.open_gguf(base_model.gguf_source(os.path.expanduser(config.model.checkpoint))),
        chat_template=config.tokenizer.chat_template)
  if config.model.get("checkpoint"):
    raise ValueError("model.checkpoint is set but tokenizer.path is empty: a pretrained model "
                     "needs its own tokenizer; set --config.tokenizer.path=<its tokenizer.model>.")
  path = os.path.join(workdir, "tokenizer.model")
  exists = os.path.exists(path)
  multihost.barrier("tokenizer")  # process 0 writes it below: only once every process looked.
  if exists:  # trained by an earlier (possibly interrupted) run of this workdir.
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
  model_config, base_params = load_base_model(config, tok)
  return Run(config=config, workdir=workdir, mesh=mesh, task=task, tok=tok,
             model_config=model_config, between_ids=tuple(tok.next_turn_ids(task.instruction)),
             stop_tokens=tuple(sorted({tok.model_turn_end_id, tok.eos_id})),
             base_params=base_params)


def prompt_ids(run: Run, example: tasks.Example) -> list[int]:
  return run.tok.first_turn_ids(example.prompt)


# --- supervised warm-start --------------------------------------------------------------------


def warmstart_examples(run: Run, step: int) -> list[sft.Segments]:
  """Two-turn episodes for the base model: y1 = gold (trained); y2 repeats y1 or fixes it.

  With probability p_corrupt_context the y1 shown in the context is a corrupted
  solution (trained on only if train_wrong_first: a base whose first attempts are
  sometimes honestly wrong); y2 then repeats the given y1 with probability
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
      segments.append((y1, bool(cfg.train_wrong_first)))
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
  if cfg.steps <= 0:  # the pretrained checkpoint is the base model as it is.
    return sharding.shard_params(run.base_params, run.mesh)
  if any(ex.solution is None for ex in run.task.train):
    raise ValueError(f"warmstart.steps={cfg.steps} but task {run.task.name!r} has no reference "
                     "solutions to warm-start on; set warmstart.steps=0 and load a pretrained "
                     "base model with model.checkpoint.")
  params = run.base_params
  if params is None:
    params = model.init_params(run.model_config, jax.random.key(run.config.seed))
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps,
                                                max(cfg.steps, cfg.warmup_steps + 1))
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.0))
  ckpt, start, state, _ = phase.open_phase(run.workdir, "warmstart",
                                           sft.init_train_state(params, opt, run.mesh),
                                           save_every=run.config.checkpoint.every,
                                           keep=run.config.checkpoint.keep)
  step_fn = sft.make_sft_step(run.model_config, opt, state, run.mesh)
  writer.drop_after("warmstart/", start)  # a resumed run repeats the steps after `start`.
  bar = writer.progress("warm-start", cfg.steps, start)
  try:
    for step in range(start, cfg.steps):
      batch = sft.pack_examples(warmstart_examples(run, step), cfg.seq_len, run.tok.pad_id,
                                bucket=32)
      batch["target_index"] = losses.target_positions(batch["loss_mask"])
      state, m = step_fn(state, phase.host_rows_of(run.mesh, batch))
      if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
        writer.write(step + 1, m, prefix="warmstart/")
      bar.update(step + 1)
      phase.save_or_stop(ckpt, step + 1, cfg.steps, state, {"phase": "warmstart"})
  finally:
    bar.close()
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


# Stage I adaptive beta2 settings (train_step.ObjectiveConfig fields of the same names).
_ADAPTIVE_BETA2_KEYS = ("adaptive_beta2", "beta2_target_ratio", "beta2_gain", "beta2_min",
                        "beta2_max")


def objective_config(run: Run, name: str) -> train_step.ObjectiveConfig:
  """The loss settings of objective `name` (stage1, stage2, naive_r2, …) from the run's config."""
  cfg = run.config.rl
  if cfg.temperature != 1.0:  # the loss differentiates log pi_theta at temperature 1.
    raise ValueError(
        f"rl.temperature={cfg.temperature}: the policy gradient and KL use pi_theta at "
        "temperature 1, and the rollout records untempered log-probs, so tempered episodes "
        "would be off-policy with nothing to correct them (rl.importance_correction corrects "
        "the sampler/trainer round-off only). Use rl.temperature=1.0.")
  return train_step.ObjectiveConfig(
      name=name, samples_per_prompt=cfg.samples_per_prompt, alpha=cfg.alpha, beta1=cfg.beta1,
      beta2=cfg.beta2, estimator=cfg.estimator, kl_estimator=cfg.kl_estimator,
      micro_batches=cfg.micro_batches, logits_chunk=cfg.get("logits_chunk", 128),
      freeze_embedding=cfg.get("freeze_embedding", False),
      importance_correction=cfg.get("importance_correction", False),
      importance_cap=cfg.get("importance_cap", 2.0),
      **{k: cfg[k] for k in _ADAPTIVE_BETA2_KEYS if k in cfg})


def check_nonfinite(update_metrics: dict[str, Any], step: int, skipped_in_a_row: int,
                    limit: int) -> int:
  """Updates skipped in a row after RL step `step` (train_step skips a non-finite one);
  raises once `limit` in a row were skipped (the last checkpoint is left as it was)."""
  if not update_metrics.get("skipped_update", 0.0):
    return 0
  skipped_in_a_row += 1
  log.warning("RL step %d: non-finite loss %s or gradient norm %s; update skipped (%d in a row)",
              step, update_metrics.get("loss"), update_metrics.get("grad_norm"), skipped_in_a_row)
  if skipped_in_a_row >= limit:
    raise FloatingPointError(
        f"RL step {step}: {skipped_in_a_row} updates in a row had a non-finite loss or gradient "
        f"(loss {update_metrics.get('loss')}, grad_norm {update_metrics.get('grad_norm')}); "
        "stopped with the last checkpoint intact. Lower rl.learning_rate, check the rewards, "
        "or use model.dtype='float32'; rl.max_nonfinite_in_a_row sets the limit.")
  return skipped_in_a_row


UPDATE_WIDTH_MULTIPLE = 32


def trimmed_width(longest: int, buffer: int, multiple: int = UPDATE_WIDTH_MULTIPLE) -> int:
  """Sequence length the update sees: `longest` rounded up to `multiple`, at most `buffer`."""
  return min(buffer, -(-longest // multiple) * multiple)


def rl_batch(run: Run, params, ref_params, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
  """Samples and verifies the episodes of RL step `step`: (train batch, metrics)."""
  cfg = run.config.rl
  rng = np.random.default_rng([run.config.seed, 11, step])
  chosen = [run.task.train[i] for i in rng.choice(len(run.task.train), cfg.prompts_per_step,
                                                    replace=False)]
  prompts = phase.host_rows_of(run.mesh, dict(zip(("tokens", "lengths"), tasks.batch_prompts(
      [prompt_ids(run, ex) for ex in chosen], run.tok.pad_id))))
  rc = rollout_config(run)
  t0 = time.perf_counter()
  with jax.set_mesh(run.mesh):  # batch over the data axes, heads over tensor.
    episodes = rollout.rollout_in_chunks(
        run.model_config, params, prompts["tokens"], prompts["lengths"],
        jax.random.fold_in(jax.random.key(run.config.seed), step), rc=rc,
        micro_batch=min(cfg.rollout_micro_batch, cfg.prompts_per_step), ref_params=ref_params)
  # Every process decodes and verifies only the episodes its devices hold; the rewards
  # (tiny) are then gathered so all processes hold the same global batch and metrics.
  num_episodes = cfg.prompts_per_step * cfg.samples_per_prompt
  rows = multihost.host_rows(num_episodes, sharding.batch_sharding(run.mesh, 1))
  tokens_ae, lengths_a, truncated, episode_lengths, loss_mask_ael = multihost.fetch(
      (episodes.attempt_tokens, episodes.attempt_length, episodes.truncated, episodes.length,
       episodes.loss_mask))
  texts = rollout.attempt_texts(
      episodes._replace(attempt_tokens=tokens_ae[:, rows], attempt_length=lengths_a[:, rows]),
      run.tok.decode, rc.stop_tokens)
  t1 = time.perf_counter()
  golds = [chosen[i // cfg.samples_per_prompt].gold for i in range(rows.start, rows.stop)]
  rewards = run.task.rewards([t for attempt in texts for t in attempt],  # one parallel batch
                             golds * len(texts)).reshape(len(texts), -1)
  answers = [[run.task.answer(t) for t in attempt] for attempt in texts]
  changed = np.array([a != b for a, b in zip(answers[0], answers[min(1, rc.num_attempts - 1)])],
                     np.float32)  # as evaluation.changed_answer_rate: attempt 1 vs 2.
  rewards = multihost.gather_rows(rewards, rows, num_episodes, axis=1)
  changed = multihost.gather_rows(changed, rows, num_episodes)
  t2 = time.perf_counter()
  # The update runs on the episodes cut after the longest one (rounded up to a multiple of
  # UPDATE_WIDTH_MULTIPLE), not on the rollout's worst-case buffer: a few compiled widths,
  # ~25% less update compute at the demo's size (BENCHMARKS.md, torch_score_step).
  width = trimmed_width(int(episode_lengths.max()), episodes.tokens.shape[1])
  # Only the attempts' tokens are projected to the vocabulary in the update (for a 262k
  # vocabulary the projection is most of the update; prompts and instructions are skipped).
  batch = {"tokens": episodes.tokens[:, :width], "loss_mask": episodes.loss_mask[..., :width],
           "rewards": rewards, "sampler_logprobs": episodes.sampler_logprobs[:, :width],
           "target_index": losses.target_positions(loss_mask_ael[..., :width].max(axis=0))}
  if rc.offline_first_fraction > 0:  # y1 from pi_ref: no y1 policy-gradient term on these rows.
    batch["offline_first"] = np.asarray(multihost.fetch(episodes.offline_first), np.float32)
  m = evaluation.transition_metrics(rewards)
  group_std = rewards[-1].reshape(-1, cfg.samples_per_prompt).std(axis=1)
  m.update(changed_answer_rate=float(changed.mean()),
           zero_variance_groups=float(np.mean(group_std == 0)),
           truncation_rate=float(truncated.mean()),
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
  # rl.lora.rank > 0: the state trains adapters over the frozen base (= ref_params, pi_ref).
  adapters, policy_of, lora_meta, ref_params = lora_setup(run, base_params)
  opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                    optax.adam(cfg.learning_rate, b1=cfg.adam_b1, b2=cfg.adam_b2))
  if cfg.get("freeze_embedding", False) and adapters is None:  # LoRA: the base is frozen.
    opt = train_step.frozen_embedding_optimizer(opt)
  initial = sft.init_train_state(base_params if adapters is None else adapters, opt, run.mesh)
  if cfg.get("adaptive_beta2", False):  # the controller's beta2 is checkpointed with the state.
    initial = train_step.add_beta2_state(initial, cfg.beta2, run.mesh)
  ckpt, start, state, meta = phase.open_phase(run.workdir, "rl", initial,
                                               save_every=run.config.checkpoint.every,
                                               keep=run.config.checkpoint.keep)
  if start and meta.get("stage_schedule") != cfg.stage_schedule:
    raise ValueError(f"{ckpt.directory} was written with stage_schedule "
                     f"{meta.get('stage_schedule')!r}, not {cfg.stage_schedule!r}; use the same "
                     "config to resume, or a new workdir.")
  if start and lora_meta:
    lora.check_resume(meta.get("lora"), lora_meta, ckpt.directory)
  steps = {name: train_step.make_rl_step(run.model_config, opt, objective_config(run, name), state,
                                         ref_params, run.mesh)
           for name in {name for name, _ in schedule}}
  stage_of = [name for name, n in schedule for _ in range(n)]
  skipped_in_a_row = 0
  entry_of = [i for i, (_, n) in enumerate(schedule) for _ in range(n)]  # one bar per entry
  first_of = [sum(n for _, n in schedule[:i]) for i in range(len(schedule))]
  writer.drop_after("rl/", start)  # a resumed run repeats the steps after `start`.
  bar = None
  # eval.checkpoint=best_train_reward: at each checkpoint step, the mean last-attempt reward of
  # the batches since the previous one scores it; the best params are copied to rl_best/.
  # Window and best score ride in the checkpoint meta, so a resumed run selects the same step.
  best = None
  if run.config.eval.get("checkpoint", "final") == "best_train_reward":
    best = checkpoint.Checkpointer(best_checkpoint_dir(run.workdir), save_every=0, keep=1)
  window, best_reward = list(meta.get("reward_window", [])), meta.get("best_train_reward")
  try:
    for step in range(start, total):
      if bar is None or step == first_of[entry_of[step]]:
        first = first_of[entry_of[step]]
        bar = writer.progress(f"RL {stage_of[step]}", schedule[entry_of[step]][1], step - first,
                              offset=first)
      t0 = time.perf_counter()
      batch, m = rl_batch(run, policy_of(state["params"]), ref_params, step)
      t1 = time.perf_counter()
      state, update_metrics = steps[stage_of[step]](state, ref_params, batch)
      update_metrics = jax.device_get(update_metrics)
      skipped_in_a_row = check_nonfinite(update_metrics, step + 1, skipped_in_a_row,
                                         cfg.get("max_nonfinite_in_a_row", 3))
      m.update(update_metrics, skipped_in_a_row=skipped_in_a_row)
      m.update(time_update=time.perf_counter() - t1, time_step=time.perf_counter() - t0,
               stage=stage_of[step])
      writer.write(step + 1, m, prefix="rl/")
      step_meta = {"phase": "rl", "stage": stage_of[step], "stage_schedule": cfg.stage_schedule,
                   **({"lora": lora_meta} if lora_meta else {})}
      if best is not None:
        window.append(float(np.mean(batch["rewards"][-1])))
        if step + 1 == total or (ckpt.save_every > 0 and (step + 1) % ckpt.save_every == 0):
          score, window = float(np.mean(window)), []
          if best_reward is None or score > best_reward:  # the policy (LoRA: merged) params.
            best.save(step + 1, {"params": policy_of(state["params"])}, {"train_reward": score},
                      force=True)
            best_reward = score
        step_meta.update(reward_window=window, best_train_reward=best_reward)
      phase.save_or_stop(ckpt, step + 1, total, state, step_meta)
  finally:
    if bar is not None:
      bar.close()
    ckpt.close()
    if best is not None:
      best.close()
  return policy_of(state["params"])


def lora_setup(run: Run, base_params: model.Params):
  """rl.lora -> (adapters or None, trained tree -> policy params, checkpoint meta or None,
  the reference params on the mesh).

  Shared by the RL stages and the SFT baselines. The policy of a LoRA state is the merged
  model (`lora.merge`, jitted, laid out like the base), used by the sampler and the export.
  A full fine-tune donates its state, so its reference gets its own copy of the base; LoRA
  never writes the base, which is then the reference as it is (no second copy).
  """
  placed = sharding.shard_params(base_params, run.mesh)
  adapters = lora.from_config(run.model_config, run.config.rl.get("lora"),
                              jax.random.fold_in(jax.random.key(run.config.seed), 19))
  if adapters is None:
    return None, lambda params: params, None, jax.tree.map(jnp.copy, placed)
  frozen = run.config.rl.get("freeze_embedding", False)
  if frozen and "embedder/input_embedding" in adapters.paths():
    raise ValueError("rl.freeze_embedding=True but rl.lora.targets adapts the embedding: its "
                     "adapter would never train; drop one of the two.")
  merge = jax.jit(lambda base, trained: lora.merge(run.model_config, base, trained),
                  out_shardings=jax.tree.map(lambda x: x.sharding, placed))
  return (adapters, lambda trained: merge(placed, trained),
          lora.checkpoint_meta(adapters, placed), placed)


def best_checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "rl_best")


def select_checkpoint(run: Run, final_params: model.Params) -> tuple[int, model.Params]:
  """(RL step, params) that eval.checkpoint names: the last step, or the best-reward one."""
  total = sum(n for _, n in parse_schedule(run.config.rl.stage_schedule))
  if run.config.eval.get("checkpoint", "final") == "final":
    return total, final_params
  best = checkpoint.Checkpointer(best_checkpoint_dir(run.workdir), save_every=0, keep=1)
  try:
    restored = best.restore(checkpoint.abstract_like({"params": final_params}))
  finally:
    best.close()
  if restored is None:
    raise ValueError(f"eval.checkpoint='best_train_reward' but {best_checkpoint_dir(run.workdir)} "
                     "holds no checkpoint; the RL phase of this workdir ran with "
                     "eval.checkpoint='final': rerun it in a new workdir.")
  step, state, meta = restored
  log.info("evaluating RL step %d (training reward %.4f)", step, meta["train_reward"])
  return step, state["params"]


# --- evaluation and the whole run ---------------------------------------------------------------


def evaluate_params(run: Run, params: model.Params) -> dict[str, Any]:
  """Greedy eval over eval.num_attempts attempts (N-attempt curve); plus, when
  eval.scaling_budgets is set, the inference-compute scaling study (docs/method.md §5)."""
  cfg = run.config.eval
  examples = tasks.eval_examples(run.task, cfg.get("split", "test"))
  golds = [ex.gold for ex in examples]
  prompts, lengths = tasks.batch_prompts([prompt_ids(run, ex) for ex in examples],
                                         run.tok.pad_id)
  attempts = cfg.get("num_attempts", 0) or run.config.rl.num_attempts
  rc = dataclasses.replace(rollout_config(run, greedy=True), num_attempts=attempts)
  kw = dict(decode=run.tok.decode, reward_fn=run.task.reward, answer_fn=run.task.answer,
            micro_batch=cfg.batch_size)
  bar = console.Progress("evaluation", len(examples), enabled=jax.process_index() == 0,
                         unit="problem")
  with jax.set_mesh(run.mesh):
    result = evaluation.evaluate(run.model_config, params, prompts, lengths, golds, rc=rc,
                                 on_chunk=lambda done: bar.update(min(done, len(examples))),
                                 **kw)
    bar.close()
    budgets = tuple(cfg.get("scaling_budgets", ()))
    if budgets:
      sampled = dataclasses.replace(rollout_config(run), offline_first_fraction=0.0,
                                    temperature=cfg.get("scaling_temperature", 0.7))
      result["scaling"] = evaluation.compute_scaling(
          run.model_config, params, prompts, lengths, golds, rc=sampled, budgets=budgets,
          seed=run.config.seed, **kw)
  return result


def export_hf(run: Run, params: model.Params, path: str) -> None:
  """Writes the policy as a transformers checkpoint (config.json, model.safetensors) with the
  run's tokenizer.model beside it. Every process gathers (a collective); process 0 writes."""
  params = multihost.fetch(params)
  if jax.process_index() == 0:
    checkpoints.save_hf(run.model_config, params, path)
    run.tok.save(os.path.join(path, "tokenizer.model"))
    print(f"exported the policy to {path} (transformers format)", flush=True)
