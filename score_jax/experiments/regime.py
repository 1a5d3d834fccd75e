"""Is a warm-started base model in the regime a study needs? Measured before any method runs.

The study's hard regime must make copying easier than correcting (RESULTS.md, pre-registered):
the base model's greedy first attempt is right 20-60% of the time and it rarely changes its
answer; *sampled* second attempts (temperature rl.temperature, what RL explores with) change
5-15% of answers, and only a minority of those changes are right. All of it is measured on
the validation problems, never the test set, from the warm-start checkpoint alone.

A config may carry its own bounds as `config.regime` ({name: (low, high)}, a subset of
CRITERIA's names), e.g. the real Gemma 3 270M run (configs/gemma3_270m_arith.py). From the
command line, before any RL run (warm-start + measurement, resumable like the warm-start):

  python -m score_jax.experiments.regime --config=configs/gemma3_270m_arith.py \
      --workdir=runs/gemma3_270m/regime --repeats=2
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from absl import app, flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from score_jax import eval as evaluation, metrics as metrics_lib, multihost, rollout, tasks, train

# name -> (low, high) of the pre-registered bounds (fractions).
CRITERIA = {"greedy_acc_t1": (0.20, 0.60), "greedy_changed_answer_rate": (0.0, 0.10),
            "sampled_changed_answer_rate": (0.05, 0.15), "sampled_right_among_changed": (0.0, 0.5)}


def sampled_metrics(run: train.Run, params, examples, *, seed: int, repeats: int) -> dict[str, float]:
  """Metrics of `repeats` sampled episodes per problem (one key each), plus the share of
  changed answers whose second attempt is right."""
  rc = dataclasses.replace(train.rollout_config(run), samples_per_prompt=1,
                           offline_first_fraction=0.0)
  prompts, lengths = tasks.batch_prompts([train.prompt_ids(run, ex) for ex in examples],
                                         run.tok.pad_id)
  golds, n = [ex.gold for ex in examples], len(examples)
  size, prompts, lengths = evaluation.pad_to_micro_batches(prompts, lengths,
                                                           run.config.eval.batch_size)
  results = []
  with jax.set_mesh(run.mesh):
    for r in range(repeats):
      episodes = rollout.rollout_in_chunks(run.model_config, params, prompts, lengths,
                                           jax.random.key(seed * 1000 + r), rc=rc, micro_batch=size)
      texts = [t[:n] for t in rollout.attempt_texts(episodes, run.tok.decode, rc.stop_tokens)]
      truncated = multihost.fetch(episodes.truncated)[:, :n]
      results.append(evaluation.score_attempts(texts, golds, truncated, reward_fn=run.task.reward,
                                               answer_fn=run.task.answer))
  out = {k: float(np.mean([r["metrics"][k] for r in results])) for k in results[0]["metrics"]}
  changed = np.concatenate([[a != b for a, b in zip(*r["answers"][:2])] for r in results])
  right2 = np.concatenate([np.asarray(r["correct"][1]) for r in results])
  out["right_among_changed"] = float(right2[changed].mean()) if changed.any() else float("nan")
  out["episodes"] = float(repeats * n)
  return out


def params_sha256(params) -> str:
  """Bit-exact fingerprint of a params pytree (leaf paths, dtypes and bytes): a base model
  re-created in a later session (possibly on another CPU) is the same iff this matches."""
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(multihost.fetch(params))[0],
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    x = np.asarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}:{x.dtype}:{x.shape}".encode())
    digest.update(np.ascontiguousarray(x).tobytes())
  return digest.hexdigest()


def criteria_of(config: ml_collections.ConfigDict) -> dict[str, tuple[float, float]]:
  """The config's own bounds (config.regime), else the study's CRITERIA."""
  own = config.get("regime")
  if not own:
    return dict(CRITERIA)
  own = own.to_dict() if isinstance(own, ml_collections.ConfigDict) else dict(own)
  unknown = sorted(set(own) - set(CRITERIA))
  if unknown:
    raise ValueError(f"config.regime names {unknown}; the measured quantities are "
                     f"{sorted(CRITERIA)}.")
  bad = {k: v for k, v in own.items() if len(v) != 2 or not 0.0 <= v[0] <= v[1] <= 1.0}
  if bad:
    raise ValueError(f"config.regime bounds must be (low, high) fractions with low <= high: {bad}.")
  return {k: (float(v[0]), float(v[1])) for k, v in own.items()}


def check(config: ml_collections.ConfigDict, run_dir: str, *, repeats: int = 4) -> dict[str, Any]:
  """Measures the run's warm-started base on the validation split; writes regime_check.json."""
  criteria = criteria_of(config)
  config = ml_collections.ConfigDict(config.to_dict())
  run = train.setup(config, run_dir)
  writer = metrics_lib.MetricWriter(os.path.join(run_dir, "regime_check"), tensorboard=False)
  try:
    base = train.run_warmstart(run, writer)  # the finished checkpoint: no step runs.
  finally:
    writer.close()
  examples = tasks.eval_examples(run.task, "validation")
  config.eval.split = "validation"
  greedy = train.evaluate_params(run, base)["metrics"]
  sampled = sampled_metrics(run, base, examples, seed=config.seed, repeats=repeats)
  values = {"greedy_acc_t1": greedy["acc_t1"],
            "greedy_changed_answer_rate": greedy["changed_answer_rate"],
            "sampled_changed_answer_rate": sampled["changed_answer_rate"],
            "sampled_right_among_changed": sampled["right_among_changed"]}
  result = {"values": values, "criteria": criteria,
            "met": {k: bool(lo <= values[k] <= hi) for k, (lo, hi) in criteria.items()},
            "greedy": greedy, "sampled": sampled, "problems": len(examples),
            "base_params_sha256": params_sha256(base)}
  result["all_met"] = all(result["met"].values())
  with open(os.path.join(run_dir, "regime_check.json"), "w") as f:
    json.dump(result, f, indent=1)
  return result


def describe(result: dict[str, Any]) -> str:
  bounds = result["criteria"]
  return ", ".join(f"{k} {100 * v:.1f}%" + (f" ({'ok' if result['met'][k] else 'OUT of'} "
                                            f"[{100 * bounds[k][0]:.0f}, {100 * bounds[k][1]:.0f}])"
                                            if k in bounds else "")
                   for k, v in result["values"].items())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.makedirs(FLAGS.workdir, exist_ok=True)
  result = check(_CONFIG.value, FLAGS.workdir, repeats=FLAGS.repeats)
  print(f"regime check ({result['problems']} validation problems, warm-started base): "
        f"{describe(result)}; all met: {result['all_met']}", flush=True)
  print(f"written: {os.path.join(FLAGS.workdir, 'regime_check.json')}", flush=True)


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  _CONFIG = config_flags.DEFINE_config_file("config", None, "config file", lock_config=False)
  flags.DEFINE_string("workdir", None, "run directory: the warm-start checkpoint and "
                      "regime_check.json (rerun to resume the warm-start)")
  flags.DEFINE_integer("repeats", 4, "sampled episodes per validation problem")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
