"""The miniature reproduction: every method from the same warm-started base, same budget, seeds.

  python -m score_jax.experiments.miniature --workdir=runs/miniature \
      [--config=configs/demo.py] [--seeds=0,1,2] [--methods=score,naive_r2,...] \
      [--config.rl.prompts_per_step=16 ...]

Per seed, the `base` run warm-starts the tiny model (config.seed seeds its init and
every sampling key) and evaluates it, plus Self-Refine prompting. Every other method
starts from a copy of that warm-start checkpoint and tokenizer, so all methods share
the base model bit for bit, and trains on the same budget: `rl_steps` updates of
prompts_per_step × samples_per_prompt sampled episodes (the SFT baselines sample the
same number of episodes per update). Each run is an ordinary resumable workdir
(`<workdir>/seed<s>/<method>/`); finished runs (eval/eval.json present) are skipped,
so the command resumes after an interruption. `summarize` writes results.md, the
curves and the histograms from the run directories.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence

import ml_collections

def method_overrides(method: str, n: int) -> dict[str, object]:
  """Config overrides of a method for a budget of n RL updates (SCoRe: one third Stage I)."""
  s1 = n // 3
  table = {
      "score": {"rl.stage_schedule": f"stage1:{s1},stage2:{n - s1}"},
      "score_no_stage1": {"rl.stage_schedule": f"stage2:{n}"},
      "score_alpha0": {"rl.stage_schedule": f"stage1:{s1},stage2:{n - s1}", "rl.alpha": 0.0},
      "naive_r2": {"rl.stage_schedule": f"naive_r2:{n}"},
      "naive_sum": {"rl.stage_schedule": f"naive_sum:{n}"},
      "single_turn": {"rl.stage_schedule": f"single_turn:{n}"},
      "star": {"method": "star", "rl.stage_schedule": f"stage2:{n}"},
      "pair_sft": {"method": "pair_sft", "rl.stage_schedule": f"stage2:{n}"},
  }
  if method not in table:
    raise ValueError(f"unknown method {method!r}; choose from {sorted(table)} (the base model and "
                     "Self-Refine rows come from the 'base' run of every seed).")
  return table[method]


METHODS = ("score", "score_no_stage1", "score_alpha0", "naive_r2", "naive_sum", "single_turn",
           "star", "pair_sft")


def _set(config: ml_collections.ConfigDict, dotted: str, value) -> None:
  *path, leaf = dotted.split(".")
  node = config
  for key in path:
    node = node[key]
  if leaf not in node:
    raise KeyError(f"config has no key {dotted!r}")
  node[leaf] = value


def run_config(base: ml_collections.ConfigDict, method: str, seed: int,
               rl_steps: int) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(base.to_dict())
  config.seed = seed
  config.export.enabled = False
  if method == "base":
    config.rl.stage_schedule = ""
    config.eval.self_refine = True
    return config
  config.eval.base = False  # evaluated once, in the seed's base run.
  for key, value in method_overrides(method, rl_steps).items():
    _set(config, key, value)
  return config


def _seed_from_base(base_dir: str, workdir: str) -> None:
  """Copies the seed's warm-start checkpoint and tokenizer so the method starts from them."""
  os.makedirs(workdir, exist_ok=True)
  for name in ("tokenizer.model", "warmstart"):
    src, dst = os.path.join(base_dir, name), os.path.join(workdir, name)
    if not os.path.exists(src):
      raise FileNotFoundError(f"{src} is missing: the seed's base run must finish first.")
    if os.path.exists(dst):
      continue
    if os.path.isdir(src):
      shutil.copytree(src, dst)
    else:
      shutil.copy(src, dst)


def run_all(base: ml_collections.ConfigDict, workdir: str, seeds: Sequence[int],
            methods: Sequence[str], rl_steps: int) -> None:
  """Runs (or resumes) base + every method for every seed, in order, showing progress."""
  from score_jax import pipeline  # heavy import (jax), kept out of summarize's path.

  jobs = [(seed, m) for seed in seeds for m in ("base", *methods)]
  for i, (seed, method) in enumerate(jobs):
    run_dir = os.path.join(workdir, f"seed{seed}", method)
    if os.path.exists(os.path.join(run_dir, "eval", "eval.json")):
      print(f"[{i + 1}/{len(jobs)}] seed {seed} {method}: done, skipped", flush=True)
      continue
    print(f"[{i + 1}/{len(jobs)}] seed {seed} {method}: running in {run_dir}", flush=True)
    t0 = time.time()
    if method != "base":
      _seed_from_base(os.path.join(workdir, f"seed{seed}", "base"), run_dir)
    pipeline.train_and_evaluate(run_config(base, method, seed, rl_steps), run_dir)
    with open(os.path.join(run_dir, "wall_time.json"), "w") as f:
      json.dump({"seconds": time.time() - t0}, f)


def main(argv) -> None:
  from absl import app
  from score_jax.experiments import summary

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; pass options as --flag=value.")
  methods = [m for m in _METHODS.value.split(",") if m]
  for m in methods:
    method_overrides(m, 1)  # unknown names fail before any run starts.
  seeds = [int(s) for s in _SEEDS.value.split(",") if s]
  rl_steps = _RL_STEPS.value or sum(int(x.split(":")[1]) for x in
                                    _CONFIG.value.rl.stage_schedule.split(",") if x)
  if not _SUMMARIZE_ONLY.value:
    run_all(_CONFIG.value, _WORKDIR.value, seeds, methods, rl_steps)
  print(summary.write(_WORKDIR.value, methods), flush=True)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Base config (the task, "
                                            "model, warm-start and per-step budget).",
                                            lock_config=False)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Root of the experiment's run directories.")
  _SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds.")
  _METHODS = flags.DEFINE_string("methods", ",".join(METHODS), "Comma-separated methods.")
  _RL_STEPS = flags.DEFINE_integer("rl_steps", 0, "Updates per method; 0 = the config's "
                                   "rl.stage_schedule total.")
  _SUMMARIZE_ONLY = flags.DEFINE_bool("summarize_only", False, "Only rewrite results.md and plots.")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
