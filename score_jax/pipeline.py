"""The whole job: warm-start, base evaluation, SCoRe RL or an SFT baseline, evaluation, export.

It sits above `train` (the RL phases) and `baselines` (STaR / Pair-SFT, which build on
`train.rl_batch`), so neither of those imports the other's caller.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import ml_collections

from score_jax import baselines, eval as evaluation, metrics as metrics_lib, tasks, train


def _export_dir(config: ml_collections.ConfigDict, workdir: str) -> str | None:
  """config.export.hf_dir, else <workdir>/export/hf; None when config.export.enabled is False."""
  cfg = config.get("export") or ml_collections.ConfigDict()
  if not cfg.get("enabled", True):
    return None
  return os.path.expanduser(cfg.get("hf_dir") or os.path.join(workdir, "export", "hf"))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The main job: warm-start, SCoRe stages, evaluation of base vs trained policy."""
  start = time.time()
  method = config.get("method", "score")
  if method != "score" and method not in baselines.METHODS:
    raise ValueError(f"unknown method {method!r}: use 'score' (the rl.stage_schedule, which also "
                     f"runs the RL baselines naive_r2 / naive_sum / single_turn) or one of "
                     f"{baselines.METHODS}.")
  train.validate_config(config)
  run = train.setup(config, workdir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=1))
  log = config.get("log") or ml_collections.ConfigDict()
  writer = metrics_lib.MetricWriter(workdir, every=log.get("every", 10),
                                    verbose=log.get("verbose", False))
  print(f"model: {run.model_config.num_params():,} params, vocab {run.tok.vocab_size}; "
        f"mesh {dict(run.mesh.shape)}; task {run.task.name}: {len(run.task.train)} train / "
        f"{len(run.task.validation)} validation / {len(run.task.eval)} test problems", flush=True)
  seconds, mark = {}, start  # where the wall time went, per phase (printed at the end).

  def lap(name: str) -> None:
    nonlocal mark
    now = time.time()
    seconds[name] = seconds.get(name, 0.0) + now - mark
    mark = now

  lap("setup")
  base = train.run_warmstart(run, writer)
  lap("warm-start")
  results = {}
  if config.eval.get("base", True):  # off when an experiment evaluates the shared base once.
    results["base"] = train.evaluate_params(run, base)
  if config.eval.get("self_refine", False):  # prompting baseline of the base model (method.md §6).
    results["self_refine"] = baselines.evaluate_self_refine(run, base)
  lap("evaluation")
  if results:
    print(evaluation.format_table({k: r["metrics"] for k, r in results.items()}), flush=True)
  final = base
  if train.parse_schedule(config.rl.stage_schedule) or method != "score":
    if method == "score":
      step, final = train.select_checkpoint(run, train.run_rl(run, base, writer))
    else:  # STaR / Pair-SFT on the RL schedule's budget of steps.
      step, final = baselines.budget_steps(config), baselines.run_sft_baseline(run, base, writer,
                                                                               method)
    lap("RL" if method == "score" else method)
    results[method] = train.evaluate_params(run, final)
    lap("evaluation")
    results[method]["checkpoint"] = {"rule": config.eval.get("checkpoint", "final"),
                                     "step": step}
  export_dir = _export_dir(config, workdir)
  if export_dir:
    train.export_hf(run, final, export_dir)
    lap("export")
  table = evaluation.format_table({name: r["metrics"] for name, r in results.items()})
  if jax.process_index() == 0:  # one writer on a shared workdir.
    evaluation.write_report(results, os.path.join(workdir, "eval"))
  writer.close()
  split = config.eval.get("split", "test")
  print(f"\nEvaluation on {len(tasks.eval_examples(run.task, split))} {split} problems (greedy, "
        f"%):\n{table}\n"
        f"wall time {time.time() - start:.0f} s ("
        + ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
        + f"); results in {os.path.join(workdir, 'eval')}", flush=True)
  return results
