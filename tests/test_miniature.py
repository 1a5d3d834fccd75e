"""The miniature-reproduction pipeline on a miniature config (checks the pipeline, not the numbers)."""

import json
import os

import ml_collections
import pytest

from score_jax.experiments import miniature, summary
from tests.test_train import small_config


def test_method_overrides_share_the_budget():
  for method in miniature.METHODS:
    overrides = miniature.method_overrides(method, 9)
    steps = sum(int(x.split(":")[1]) for x in overrides["rl.stage_schedule"].split(","))
    assert steps == 9, method
  assert miniature.method_overrides("score_alpha0", 9)["rl.alpha"] == 0.0
  with pytest.raises(ValueError, match="unknown method 'dpo'"):
    miniature.method_overrides("dpo", 9)


def test_reduced_experiment_runs_resumes_and_summarizes(tmp_path, capsys):
  config = small_config()
  config.mesh_shape = (-1, 1, 1)
  methods = ["score", "naive_r2", "star"]
  miniature.run_all(config, str(tmp_path), seeds=[0], methods=methods, rl_steps=2)
  for name in ["base", *methods]:
    assert os.path.exists(tmp_path / "seed0" / name / "eval" / "eval.json"), name
  # Every method starts from the base run's warm-start: identical copied checkpoint steps.
  assert sorted(os.listdir(tmp_path / "seed0" / "score" / "warmstart")) == sorted(
      os.listdir(tmp_path / "seed0" / "base" / "warmstart"))
  score_eval = json.load(open(tmp_path / "seed0" / "score" / "eval" / "eval.json"))
  assert "base" not in score_eval  # evaluated once, in the base run.

  capsys.readouterr()
  miniature.run_all(config, str(tmp_path), seeds=[0], methods=methods, rl_steps=2)
  assert capsys.readouterr().out.count("done, skipped") == 4

  text = summary.write(str(tmp_path), methods)
  for name in ["base", "self_refine", *methods]:
    assert f"| {name} |" in text, name
  assert "| score | 60.0 | 64.4 |" in text  # the paper's row beside ours.
  assert (tmp_path / "curves.png").stat().st_size > 0
  assert (tmp_path / "edit_distance.png").stat().st_size > 0
  curves = summary.training_curves(str(tmp_path), "naive_r2", ["acc_t1", "changed_answer_rate"])
  assert curves["acc_t1"].shape == (1, 2)


def test_mean_spread():
  assert summary.mean_spread([0.5]) == "50.0"
  assert summary.mean_spread([0.4, 0.6]) == "50.0 ± 14.1"


def test_per_seed_table_marks_missing_seeds():
  metrics = lambda t1, t2, ic, ci: {"acc_t1": t1, "acc_t2": t2, "delta_i_to_c": ic,
                                    "delta_c_to_i": ci}
  rows = {"score": [{"seed": 0, "metrics": metrics(0.25, 0.5, 0.3, 0.05)},
                    {"seed": 2, "metrics": metrics(0.1, 0.1, 0.0, 0.0)}],
          "star": [{"seed": 1, "metrics": metrics(0.2, 0.3, 0.125, 0.025)}]}
  lines = summary.per_seed_table(rows, ["score", "star"]).splitlines()
  assert lines[0] == "| method | seed 0 | seed 1 | seed 2 |"
  assert lines[2] == "| score | 25.0 → 50.0 (30.0 / 5.0) | – | 10.0 → 10.0 (0.0 / 0.0) |"
  assert lines[3] == "| star | – | 20.0 → 30.0 (12.5 / 2.5) | – |"


def _fake_eval(run_dir, method, acc_t2):
  os.makedirs(run_dir / "eval", exist_ok=True)
  with open(run_dir / "eval" / "eval.json", "w") as f:
    json.dump({method: {"metrics": {"acc_t2": acc_t2}}}, f)


def test_learning_rate_selection_takes_the_best_validation_acc_t2_and_the_smaller_on_ties(tmp_path):
  for lr, score, star in [(3e-5, 0.2, 0.4), (1e-4, 0.5, 0.4), (3e-4, 0.5, 0.1)]:
    _fake_eval(tmp_path / f"naive_r2@{miniature.lr_name(lr)}", "score", score)  # as RL writes it
    _fake_eval(tmp_path / f"star@{miniature.lr_name(lr)}", "star", star)
  selection = miniature.select_learning_rates(str(tmp_path), ["naive_r2", "star"],
                                             [3e-4, 3e-5, 1e-4])
  assert selection["naive_r2"]["learning_rate"] == 1e-4  # tie with 3e-4: the smaller rate
  assert selection["star"]["learning_rate"] == 3e-5
  assert selection["naive_r2"]["validation_acc_t2"] == {"lr3e-05": 0.2, "lr0.0001": 0.5,
                                                     "lr0.0003": 0.5}
  with pytest.raises(FileNotFoundError, match="finish the tuning runs"):
    miniature.select_learning_rates(str(tmp_path), ["score"], [1e-4])


def test_tuning_pipeline_runs_on_validation_then_seeds_at_the_chosen_rate(tmp_path):
  config = small_config()
  config.mesh_shape = (-1, 1, 1)
  config.task.num_validation = 6
  tune = tmp_path / "tune"
  miniature.run_all(config, str(tune), seeds=[9], methods=["naive_r2"], rl_steps=2,
                    split="validation", lr_suffix=[1e-4, 3e-4])
  for lr in ("lr0.0001", "lr0.0003"):
    run = tune / "seed9" / f"naive_r2@{lr}"
    assert json.load(open(run / "config.json"))["rl"]["learning_rate"] == float(lr[2:])
    assert len(json.load(open(run / "eval" / "eval.json"))["score"]["correct"][0]) == 6
  check = json.load(open(tune / "seed9" / "base" / "regime_check.json"))
  assert check["problems"] == 6 and set(check["met"]) == set(check["values"])
  assert check["sampled"]["episodes"] == 4 * 6 and len(check["base_params_sha256"]) == 64
  chosen = miniature.select_learning_rates(str(tune / "seed9"), ["naive_r2"], [1e-4, 3e-4])
  lr = chosen["naive_r2"]["learning_rate"]
  miniature.run_all(config, str(tmp_path), seeds=[0, 1], methods=["naive_r2"], rl_steps=2,
                    learning_rates={"naive_r2": lr}, split="test")
  for seed in (0, 1):
    run = tmp_path / f"seed{seed}" / "naive_r2"
    assert json.load(open(run / "config.json"))["baseline"]["learning_rate"] == lr
    assert len(json.load(open(run / "eval" / "eval.json"))["score"]["correct"][0]) == 8
  text = summary.write(str(tmp_path), ["naive_r2"])
  assert "Paired over seeds" in text and "| naive_r2 |" in text
  # Archiving (the committed small files) from the finished runs: skipped runs are archived too.
  archive = tmp_path / "archive"
  miniature.run_all(config, str(tmp_path), seeds=[0, 1], methods=["naive_r2"], rl_steps=2,
                    learning_rates={"naive_r2": lr}, split="test", archive=str(archive))
  assert (archive / "seed1" / "naive_r2" / "metrics.jsonl").exists()
  assert not (archive / "seed1" / "base" / "warmstart").exists()  # never checkpoints
  assert summary.write(str(archive), ["naive_r2"]) == text.replace(str(tmp_path), str(archive))


def test_base_fingerprint_is_bit_exact_and_order_free():
  import numpy as np
  from score_jax.experiments import regime
  a = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": {"s": np.ones(3, np.float32)}}
  same = {"n": {"s": np.ones(3, np.float32)}, "w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  assert regime.params_sha256(a) == regime.params_sha256(same)
  flipped = {**a, "w": a["w"].copy()}
  flipped["w"].view(np.uint32)[0, 0] ^= 1  # one bit of one weight
  assert regime.params_sha256(flipped) != regime.params_sha256(a)
  assert regime.params_sha256({**a, "w": a["w"].astype(np.float64)}) != regime.params_sha256(a)


def test_a_new_machine_resumes_from_the_archive_and_skips_or_reruns_a_seed_whose_base_differs(
    tmp_path, capsys):
  config = small_config()
  config.mesh_shape = (-1, 1, 1)
  config.task.num_validation = 6  # the base run fingerprints its params in regime_check.json
  archive = tmp_path / "archive"
  miniature.run_all(config, str(tmp_path / "old"), seeds=[0], methods=["naive_r2"], rl_steps=1,
                    archive=str(archive))
  assert (archive / "seed0" / "base" / "tokenizer.model").exists()
  # A fresh workdir (a new session's machine) with one more method: the finished runs are
  # restored, the base checkpoint is re-created and verified bit for bit, only star runs.
  capsys.readouterr()
  new = tmp_path / "new"
  miniature.run_all(config, str(new), seeds=[0], methods=["naive_r2", "star"], rl_steps=1,
                    archive=str(archive))
  out = capsys.readouterr().out
  assert out.count("done, skipped") == 2 and "re-creating the base checkpoint" in out
  assert (new / "seed0" / "base" / "warmstart").is_dir()
  assert not (new / "seed0" / "base.rebuild").exists()
  assert "star" in json.load(open(new / "seed0" / "star" / "eval" / "eval.json"))
  sha = json.load(open(archive / "seed0" / "base" / "regime_check.json"))["base_params_sha256"]
  assert f"base={sha[:16]}" in open(new / "seed0" / "star" / "commits.txt").read()
  # A recorded fingerprint that the re-created base does not match (a base made on another
  # CPU type). By default the seed is skipped here and its finished runs kept, with the
  # failed try archived; another run on this machine type does not try again.
  check_path = archive / "seed0" / "base" / "regime_check.json"
  check = json.load(open(check_path))
  check["base_params_sha256"] = "0" * 64
  json.dump(check, open(check_path, "w"))
  for attempt, workdir in enumerate([tmp_path / "skip1", tmp_path / "skip2"]):
    capsys.readouterr()
    miniature.run_all(config, str(workdir), seeds=[0], methods=["naive_r2", "naive_sum"],
                      rl_steps=1, archive=str(archive))
    out = capsys.readouterr().out
    assert "differs from the recorded fingerprint" in out and "is skipped here" in out
    assert ("re-creating the base checkpoint" in out) == (attempt == 0)
    assert ("found by an earlier try on this machine type" in out) == (attempt == 1)
    assert "running in" not in out and not (archive / "superseded").exists()
    assert (archive / "seed0" / "naive_r2" / "eval" / "eval.json").exists()
    assert not (archive / "seed0" / "naive_sum").exists()
  matched, tried = open(archive / "seed0" / "base" / "rebuilds.txt").read().splitlines()
  assert f"sha={sha} expected={sha}" in matched  # the earlier re-creation, archived too.
  assert f"sha={sha} expected={'0' * 64}" in tried
  # Asked to supersede: the seed's runs are moved aside and it starts over.
  capsys.readouterr()
  third = tmp_path / "third"
  miniature.run_all(config, str(third), seeds=[0], methods=["naive_sum"], rl_steps=1,
                    archive=str(archive), on_base_mismatch="supersede")
  out = capsys.readouterr().out
  assert "differs from the recorded fingerprint" in out and "seed 0 base: running" in out
  (moved,) = os.listdir(archive / "superseded")
  assert "rerun from scratch" in open(archive / "superseded" / moved / "REASON.txt").read()
  assert json.load(open(third / "seed0" / "base" / "regime_check.json"))[
      "base_params_sha256"] == sha  # the rerun base, fingerprinted again
  assert (archive / "seed0" / "naive_sum" / "eval" / "eval.json").exists()
  assert not (archive / "seed0" / "naive_r2").exists()  # moved aside with the old base
  assert (archive / "superseded" / moved / "naive_r2" / "eval" / "eval.json").exists()


def _worker(workdir, log):  # module level: a spawned process runs it.
  import contextlib
  config = small_config()
  config.mesh_shape = (-1, 1, 1)
  with open(log, "w") as f, contextlib.redirect_stdout(f):
    miniature.run_all(config, workdir, seeds=[0, 1], methods=["naive_r2"], rl_steps=1)


def test_two_workers_share_the_jobs_and_each_returns_when_all_are_done(tmp_path):
  import multiprocessing

  ctx = multiprocessing.get_context("spawn")  # the same command twice, as in a real study.
  logs = [str(tmp_path / f"worker{w}.log") for w in (0, 1)]
  workers = [ctx.Process(target=_worker, args=(str(tmp_path / "runs"), log)) for log in logs]
  for w in workers:
    w.start()
  for w in workers:
    w.join(timeout=900)
  out = [open(log).read() for log in logs]
  assert [w.exitcode for w in workers] == [0, 0], out
  for seed in (0, 1):
    for name in ("base", "naive_r2"):
      commits = open(tmp_path / "runs" / f"seed{seed}" / name / "commits.txt").read()
      assert len(commits.splitlines()) == 1, (seed, name, out)  # run once, by one worker
  ran = [text.count(": running in ") for text in out]
  assert sum(ran) == 4 and min(ran) >= 1, out


def test_a_worker_takes_a_free_job_before_blocking_on_one_another_worker_holds(tmp_path,
                                                                               monkeypatch):
  # The scheduling alone (runs faked), as it happened in a study: in the first pass every
  # method was held (the seed's base was being made by the other worker); the worker then
  # waits for `score` and runs it; meanwhile the other worker took naive_r2, and naive_sum is
  # free. The worker must run naive_sum before it blocks waiting for naive_r2.
  import contextlib
  from score_jax import pipeline
  workdir = tmp_path / "runs"
  base = workdir / "seed0" / "base"
  (base / "eval").mkdir(parents=True)
  (base / "eval" / "eval.json").write_text("{}")
  (base / "warmstart").mkdir()
  (base / "tokenizer.model").write_bytes(b"")
  events, held_once = [], {"score", "naive_sum"}

  def finish(run_dir):
    os.makedirs(os.path.join(run_dir, "eval"), exist_ok=True)
    open(os.path.join(run_dir, "eval", "eval.json"), "w").write("{}")

  @contextlib.contextmanager
  def fake_lock(run_dir, *, wait):
    name = os.path.basename(run_dir.rstrip("/"))
    if name == "naive_r2" and wait:
      events.append("blocked on naive_r2")
      finish(run_dir)  # the other worker finished it meanwhile.
      yield True
    elif not wait and (name == "naive_r2" or name in held_once):
      held_once.discard(name)
      yield False
    else:
      yield True

  def fake_run(config, run_dir):
    events.append(f"ran {os.path.basename(run_dir)}")
    finish(run_dir)

  monkeypatch.setattr(miniature, "_lock", fake_lock)
  monkeypatch.setattr(pipeline, "train_and_evaluate", fake_run)
  miniature.run_all(small_config(), str(workdir), seeds=[0],
                    methods=["score", "naive_r2", "naive_sum"], rl_steps=1)
  assert events == ["ran score", "ran naive_sum", "blocked on naive_r2"]


def test_a_config_may_carry_its_own_regime_bounds_and_bad_ones_are_named():
  from score_jax.experiments import regime  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict()
  assert regime.criteria_of(c) == regime.CRITERIA
  c.regime = ml_collections.ConfigDict(dict(greedy_acc_t1=(0.3, 0.6)))
  assert regime.criteria_of(c) == {"greedy_acc_t1": (0.3, 0.6)}
  c.regime = ml_collections.ConfigDict(dict(greedy_accuracy=(0.3, 0.6)))
  with pytest.raises(ValueError, match="greedy_accuracy"):
    regime.criteria_of(c)
  c.regime = ml_collections.ConfigDict(dict(greedy_acc_t1=(0.6, 0.3)))
  with pytest.raises(ValueError, match="low <= high"):
    regime.criteria_of(c)
  result = {"values": {"greedy_acc_t1": 0.45, "sampled_changed_answer_rate": 0.02},
            "criteria": {"greedy_acc_t1": (0.3, 0.6)}, "met": {"greedy_acc_t1": True}}
  assert regime.describe(result) == ("greedy_acc_t1 45.0% (ok [30, 60]), "
                                     "sampled_changed_answer_rate 2.0%")
