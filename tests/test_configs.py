"""Every config in configs/: the values a run resolves, and the pairs refused before training."""

import glob
import importlib
import os
import types

import pytest

from configs import demo
from score_jax import baselines, pipeline, train, train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_MODULES = sorted(
    os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    for path in glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)
    if "def get_config" in open(path).read())


def test_every_config_is_found():
  assert {"configs.demo", "configs.math_gemma", "configs.mbpp_gemma",
          "configs.gemma3_270m_arith"} <= set(CONFIG_MODULES)
  assert any(name.startswith("configs.recipes.") for name in CONFIG_MODULES)


@pytest.mark.parametrize("name", CONFIG_MODULES)
def test_baselines_train_at_the_rl_learning_rate_unless_set(name):
  config = importlib.import_module(name).get_config()
  assert baselines.learning_rate(config) == config.rl.learning_rate
  config.baseline.learning_rate = 3e-3  # an explicit value wins.
  assert baselines.learning_rate(config) == 3e-3


def test_demo_learning_rates_are_unchanged():
  # Before baseline.learning_rate defaulted to rl.learning_rate, the demo set both to 1e-4.
  config = demo.get_config()
  assert config.rl.learning_rate == 1e-4 and baselines.learning_rate(config) == 1e-4


def test_negative_baseline_learning_rate_is_named():
  config = demo.get_config()
  config.baseline.learning_rate = -1e-4
  with pytest.raises(ValueError, match="baseline.learning_rate must be >= 0"):
    baselines.learning_rate(config)


def test_sft_baseline_optimizer_uses_the_resolved_learning_rate(monkeypatch):
  config = importlib.import_module("configs.math_gemma").get_config()  # rl 5e-6, baseline 0.
  seen = []

  class Stop(Exception):
    pass

  def adam(lr, **kw):
    seen.append(lr)
    raise Stop

  monkeypatch.setattr(baselines.optax, "adam", adam)
  # No model to place: the phase's setup hands the params through (full fine-tuning).
  monkeypatch.setattr(train, "lora_setup", lambda run, base: (None, lambda p: p, None, base))
  run = types.SimpleNamespace(config=config, mesh=types.SimpleNamespace(
      shape={"data": 1, "fsdp": 1, "tensor": 1}))
  with pytest.raises(Stop):
    baselines.run_sft_baseline(run, {}, None, "star")
  assert seen == [5e-6]


@pytest.mark.parametrize("name", CONFIG_MODULES)
def test_documented_rl_switches_can_be_overridden(name):
  # main.py locks the config, so a key absent from it cannot be set by --config.rl.<key>
  # (ml_collections refuses new fields); WORKSPACE.md documents these three as overrides.
  config = importlib.import_module(name).get_config()
  config.lock()
  config.rl.importance_correction = True
  config.rl.importance_cap = 3.0
  config.rl.max_nonfinite_in_a_row = 5
  objective = train.objective_config(types.SimpleNamespace(config=config), "stage2")
  assert objective.importance_correction is True and objective.importance_cap == 3.0


@pytest.mark.parametrize("name", CONFIG_MODULES)
def test_every_config_validates(name):
  train.validate_config(importlib.import_module(name).get_config())


@pytest.mark.parametrize("objective", ["stage1", "stage2", "naive_r2", "naive_sum"])
@pytest.mark.parametrize("num_attempts", [1, 3])
def test_two_turn_objectives_refuse_other_attempt_counts(objective, num_attempts):
  config = demo.get_config()
  config.rl.stage_schedule = f"stage1:2,{objective}:3"
  config.rl.num_attempts = num_attempts
  with pytest.raises(ValueError, match=f"rl.num_attempts=2 .* got rl.num_attempts={num_attempts}"):
    train.validate_config(config)


@pytest.mark.parametrize("num_attempts", [1, 2, 3])
def test_single_turn_trains_the_first_attempt_of_any_count(num_attempts):
  config = demo.get_config()
  config.rl.stage_schedule, config.rl.num_attempts = "single_turn:3", num_attempts
  train.validate_config(config)
  config.rl.num_attempts = 0
  with pytest.raises(ValueError, match="rl.num_attempts"):
    train.validate_config(config)


def test_k1_is_refused_as_a_loss_term_with_the_reason():
  config = demo.get_config()
  config.rl.kl_estimator = "k1"
  with pytest.raises(ValueError, match="k1.*cannot be a loss term.*expectation .* is zero"):
    train.validate_config(config)
  with pytest.raises(ValueError, match="cannot be a loss term"):
    train_step.ObjectiveConfig(name="stage1", samples_per_prompt=2, kl_estimator="k1")
  config.rl.kl_estimator = "k3"
  train.validate_config(config)


@pytest.mark.parametrize("key,value", [("num_attempts", 3), ("kl_estimator", "k1")])
def test_refused_before_any_training(tmp_path, key, value):
  config = demo.get_config()
  config.rl[key] = value
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=f"rl.{key}"):
    pipeline.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()  # no tokenizer, no warm-start, no checkpoint was written.


def test_eval_checkpoint_rule_is_checked():
  config = demo.get_config()
  assert config.eval.checkpoint == "final"
  config.eval.checkpoint = "best"
  with pytest.raises(ValueError, match="unknown eval.checkpoint 'best'"):
    train.validate_config(config)
  config.eval.checkpoint = "best_train_reward"
  train.validate_config(config)
  config.method = "star"
  with pytest.raises(ValueError, match="evaluates its final step: set --config.eval.checkpoint"):
    train.validate_config(config)
