"""The miniature reproduction: every method from the same warm-started base, same budget, seeds.

  python -m score_jax.experiments.miniature --workdir=runs/miniature \
      [--config=configs/demo.py] [--seeds=0,1,2] [--methods=score,naive_r2,...] \
      [--tune_lrs=3e-5,1e-4,3e-4 --tune_seed=100] [--config.rl.prompts_per_step=16 ...]

With --tune_lrs (the pre-registered study, configs/miniature_study.py), every method
first runs at every learning rate on the tuning seed (`<workdir>/tune/seed<t>/<method>@lr<x>`),
evaluated on the task's validation split; each method then keeps the rate with the best
validation Acc@t2 (ties: the smaller rate), written to `<workdir>/tune/selection.json`, and
the reported seeds run at that rate, evaluated on the test split. The learning rate is
the RL one and the SFT baselines' one alike.

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

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Sequence

import ml_collections

from score_jax.experiments import archive as archive_lib


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


def run_config(base: ml_collections.ConfigDict, method: str, seed: int, rl_steps: int,
               learning_rate: float | None = None, split: str | None = None
               ) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(base.to_dict())
  config.seed = seed
  config.export.enabled = False
  if split is not None:
    config.eval.split = split
  if method == "base":
    config.rl.stage_schedule = ""
    config.eval.self_refine = True
    return config
  config.eval.base = False  # evaluated once, in the seed's base run.
  for key, value in method_overrides(method, rl_steps).items():
    _set(config, key, value)
  if learning_rate is not None:  # the same rate for the RL and the SFT methods.
    config.rl.learning_rate = learning_rate
    config.baseline.learning_rate = learning_rate
  return config


def lr_name(learning_rate: float) -> str:
  return f"lr{learning_rate:g}"


def select_learning_rates(tune_dir: str, methods: Sequence[str], lrs: Sequence[float]
                          ) -> dict[str, dict]:
  """method -> {"learning_rate", "validation_acc_t2": {lr: value}}: the best validation Acc@t2
  of each method's tuning runs (ties: the smaller rate). Every run must have finished."""
  out = {}
  for method in methods:
    scores = {}
    for lr in sorted(lrs):
      path = os.path.join(tune_dir, f"{method}@{lr_name(lr)}", "eval", "eval.json")
      if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: finish the tuning runs first.")
      with open(path) as f:  # the trained policy's entry (RL baselines are named "score").
        (policy,) = [v for k, v in json.load(f).items() if k not in ("base", "self_refine")]
      scores[lr] = policy["metrics"]["acc_t2"]
    best = max(scores.values())
    out[method] = {"learning_rate": min(lr for lr, v in scores.items() if v == best),
                   "validation_acc_t2": {lr_name(lr): v for lr, v in scores.items()}}
  return out


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
            methods: Sequence[str], rl_steps: int, learning_rates: dict[str, float] | None = None,
            split: str | None = None, lr_suffix: Sequence[float] = (),
            archive: str | None = None, on_base_mismatch: str = "skip") -> None:
  """Runs (or resumes) base + every method for every seed, in order, showing progress.

  learning_rates: method -> rate (the tuned ones); lr_suffix: run every method at each of
  these rates instead (the tuning grid, directories `<method>@lr<x>`); archive: a directory
  that receives each finished run's small files (`archive_run`). on_base_mismatch: a seed
  whose base, re-created on this machine, differs from its recorded fingerprint (its runs
  were made on another CPU type) is "skip"ped here, its runs kept for a machine that can
  finish it, or "supersede"d: its runs are moved aside and it reruns from scratch.
  """
  if on_base_mismatch not in archive_lib.BASE_MISMATCH:
    raise ValueError(f"on_base_mismatch={on_base_mismatch!r}: use one of "
                     f"{archive_lib.BASE_MISMATCH}.")
  from score_jax import pipeline  # heavy import (jax), kept out of summarize's path.
  from score_jax.experiments import regime

  variants = [(m, lr) for m in methods for lr in lr_suffix] if lr_suffix else [
      (m, (learning_rates or {}).get(m)) for m in methods]
  if archive and os.path.isdir(archive):
    restored = archive_lib.restore_from_archive(archive, workdir)
    if restored:
      print(f"restored {restored} files of finished runs from {archive}", flush=True)
  jobs = [(seed, m, lr) for seed in seeds for m, lr in [("base", None), *variants]]

  def done(run_dir: str) -> bool:
    return os.path.exists(os.path.join(run_dir, "eval", "eval.json"))

  def execute(seed: int, method: str, lr: float | None, run_dir: str, label: str) -> None:
    print(f"{label}: running in {run_dir}", flush=True)
    t0 = time.time()
    base_dir = os.path.join(workdir, f"seed{seed}", "base")
    if method != "base":
      _seed_from_base(base_dir, run_dir)
    config = run_config(base, method, seed, rl_steps, lr, split)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "commits.txt"), "a") as f:  # one line per (re)start.
      sha = archive_lib.base_sha(base_dir) if method != "base" else None
      f.write(f"{archive_lib.git_commit()} {time.strftime('%Y-%m-%dT%H:%M:%S')} "
              f"{archive_lib.machine()}"
              + (f" base={sha[:16]}" if sha else "") + "\n")
    pipeline.train_and_evaluate(config, run_dir)
    if method == "base" and config.task.get("num_validation", 0):
      check = regime.check(config, run_dir)
      print(f"{label}: regime check (validation, base model): {regime.describe(check)}", flush=True)
    with open(os.path.join(run_dir, "wall_time.json"), "w") as f:
      json.dump({"seconds": time.time() - t0, "commit": archive_lib.git_commit()}, f)
    if archive:
      archive_lib.archive_run(workdir, run_dir, archive)

  def ensure_base(seed: int, label: str, wait: bool) -> str:
    """The seed's base run finished and its checkpoint present, under the base's lock:
    "ok"; "busy": another worker holds it (wait=False); "superseded": the re-created base
    differed from the recorded one, the seed's runs were moved aside; "skipped": it differed
    (now, or in an earlier try on this machine type) and the seed is left for another machine."""
    base_dir = os.path.join(workdir, f"seed{seed}", "base")
    if done(base_dir) and os.path.exists(os.path.join(base_dir, "warmstart")):
      return "ok"
    with _lock(base_dir, wait=wait) as claimed:
      if not claimed:
        return "busy"
      if not done(base_dir):
        execute(seed, "base", None, base_dir, label.rsplit(" ", 1)[0] + " base")
        return "ok"
      if os.path.exists(os.path.join(base_dir, "warmstart")):
        return "ok"  # re-created by another worker meanwhile.
      known = archive_lib.known_mismatch(base_dir)
      if not known:
        print(f"{label}: re-creating the base checkpoint (finished on another machine)",
              flush=True)
        matched = archive_lib.rebuild_base_checkpoint(
            run_config(base, "base", seed, rl_steps, None, split), base_dir)
        if archive:
          archive_lib.archive_run(workdir, base_dir, archive)  # rebuilds.txt, the audit trail.
        if matched:
          return "ok"
      made_on = ""
      if os.path.exists(os.path.join(base_dir, "commits.txt")):
        with open(os.path.join(base_dir, "commits.txt")) as f:
          made_on = f.readline().split(" ", 2)[-1].strip()
      reason = (f"the base re-created on {archive_lib.machine()} at {archive_lib.git_commit()} "
                f"differs from the recorded fingerprint {archive_lib.base_sha(base_dir)} (see "
                f"base/rebuilds.txt; the base was made on {made_on or 'an unrecorded machine'})")
      if on_base_mismatch == "skip":
        earlier = ", found by an earlier try on this machine type" if known else ""
        print(f"{label}: {reason}{earlier}; seed {seed} is skipped here and its runs kept: "
              "finish it on that CPU type, or rerun it from scratch with "
              "--on_base_mismatch=supersede.", flush=True)
        return "skipped"
      reason += "; the seed's runs were moved here and rerun from scratch on one base."
      print(f"{label}: {reason}", flush=True)
      archive_lib.supersede_seed(workdir, seed, archive, reason)
      return "superseded"

  # Several workers (processes running this same command) share the jobs: a run is claimed
  # by a lock file; a job another worker holds (or whose base it is making) is passed over
  # and retried after the pass, without blocking while any passed-over job can be taken;
  # only a pass that ran nothing ends by blocking on the first one still held.
  queue, elsewhere, skipped, progressed, block_next = list(jobs), [], set(), False, False
  while queue or elsewhere:
    if not queue:
      queue, elsewhere = elsewhere, []
      block_next, progressed = not progressed, False
    wait, block_next = block_next, False
    seed, method, lr = queue.pop(0)
    if seed in skipped:  # its base cannot be re-created on this machine.
      continue
    name = f"{method}@{lr_name(lr)}" if lr_suffix and method != "base" else method
    run_dir = os.path.join(workdir, f"seed{seed}", name)
    label = f"[{jobs.index((seed, method, lr)) + 1}/{len(jobs)}] seed {seed} {name}"
    if done(run_dir):  # a base's checkpoint is checked when a method needs it.
      print(f"{label}: done, skipped", flush=True)
      if archive:
        archive_lib.archive_run(workdir, run_dir, archive)
      continue
    with _lock(run_dir, wait=wait) if method != "base" else contextlib.nullcontext(True) \
        as claimed:
      state = ensure_base(seed, label, wait) if claimed else "busy"
      if state == "busy":
        print(f"{label}: claimed by another worker, passed over", flush=True)
        elsewhere.append((seed, method, lr))
        continue
      progressed = True
      if state == "skipped":
        skipped.add(seed)
      elif state == "superseded":  # the seed starts over, from its base.
        queue = [job for job in jobs if job[0] == seed] + [job for job in queue
                                                            if job[0] != seed]
        elsewhere = [job for job in elsewhere if job[0] != seed]
      elif method != "base" and not done(run_dir):
        execute(seed, method, lr, run_dir, label)


@contextlib.contextmanager
def _lock(run_dir: str, *, wait: bool):
  """An exclusive lock on `<run_dir>.lock` (released when the process dies); yields whether
  it was taken (always, with wait=True)."""
  os.makedirs(os.path.dirname(run_dir), exist_ok=True)
  with open(run_dir.rstrip("/") + ".lock", "w") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
      yield False
      return
    try:
      yield True
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def main(argv) -> None:
  from absl import app
  from score_jax.experiments import summary

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; pass options as --flag=value.")
  methods = [m for m in _METHODS.value.split(",") if m]
  for m in methods:
    method_overrides(m, 1)  # unknown names fail before any run starts.
  seeds = [int(s) for s in _SEEDS.value.split(",") if s]
  archive = _ARCHIVE.value or None
  rl_steps = _RL_STEPS.value or sum(int(x.split(":")[1]) for x in
                                    _CONFIG.value.rl.stage_schedule.split(",") if x)
  lrs = [float(x) for x in _TUNE_LRS.value.split(",") if x]
  selected = None
  if lrs:
    tune_dir = os.path.join(_WORKDIR.value, "tune")
    if not _SUMMARIZE_ONLY.value:
      run_all(_CONFIG.value, tune_dir, [_TUNE_SEED.value], methods, rl_steps, split="validation",
              lr_suffix=lrs, archive=archive and os.path.join(archive, "tune"),
              on_base_mismatch=_ON_BASE_MISMATCH.value)
    selection = select_learning_rates(os.path.join(tune_dir, f"seed{_TUNE_SEED.value}"), methods,
                                      lrs)
    for directory in filter(None, [tune_dir, archive and os.path.join(archive, "tune")]):
      os.makedirs(directory, exist_ok=True)
      with open(os.path.join(directory, "selection.json"), "w") as f:
        json.dump({"tune_seed": _TUNE_SEED.value, "grid": lrs, "methods": selection}, f,
                  indent=1)
    selected = {m: s["learning_rate"] for m, s in selection.items()}
    print("selected learning rates (validation Acc@t2): " + ", ".join(
        f"{m} {lr:g}" for m, lr in selected.items()), flush=True)
  if not _SUMMARIZE_ONLY.value:
    run_all(_CONFIG.value, _WORKDIR.value, seeds, methods, rl_steps, learning_rates=selected,
            split="test" if lrs else None, archive=archive,
            on_base_mismatch=_ON_BASE_MISMATCH.value)
    if lrs:  # the pre-registered study: statistics only when asked, once every seed exists.
      print("runs finished; the study's tables and statistics: rerun with --summarize_only",
            flush=True)
      return
  print(summary.write(_WORKDIR.value, methods), flush=True)
  if archive:
    print(summary.write(archive, methods).splitlines()[0] + f" … also written to {archive}")


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
  _TUNE_LRS = flags.DEFINE_string("tune_lrs", "", "Comma-separated learning-rate grid: tune "
                                  "every method on the validation split first (empty: no tuning).")
  _TUNE_SEED = flags.DEFINE_integer("tune_seed", 100, "The tuning runs' seed (never reported).")
  _ARCHIVE = flags.DEFINE_string("archive_to", "", "Copy each finished run's small files (eval, "
                                 "metrics, config; no checkpoints) here, e.g. docs/results/study/"
                                 "hard, and write the summary there too.")
  _SUMMARIZE_ONLY = flags.DEFINE_bool("summarize_only", False, "Only rewrite results.md and plots.")
  _ON_BASE_MISMATCH = flags.DEFINE_enum(
      "on_base_mismatch", "skip", archive_lib.BASE_MISMATCH, "A seed whose base, re-created "
      "here, differs from its recorded fingerprint (made on another CPU type): skip it and "
      "keep its runs for that machine, or supersede it (move its runs aside and rerun it from "
      "scratch).")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
