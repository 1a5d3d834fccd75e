"""Every config in configs/: the values a run resolves, and the pairs refused before training."""

import glob
import importlib
import os
import types

import pytest

from configs import demo
from score_jax import baselines

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
  monkeypatch.setattr(baselines.sharding, "shard_params", lambda params, mesh: params)
  run = types.SimpleNamespace(config=config, mesh=types.SimpleNamespace(
      shape={"data": 1, "fsdp": 1, "tensor": 1}))
  with pytest.raises(Stop):
    baselines.run_sft_baseline(run, {}, None, "star")
  assert seen == [5e-6]
