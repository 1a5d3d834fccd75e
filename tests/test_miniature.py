"""The miniature-reproduction pipeline on a miniature config (checks the pipeline, not the numbers)."""

import json
import os

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
