"""train.run_rl on a miniature config: it samples with the current policy, and
eval.checkpoint="best_train_reward" picks the checkpoint of a known reward sequence."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from score_jax import metrics as metrics_lib, model, rollout, train, train_step
from tests.test_train import small_config

# Mean last-attempt reward of RL steps 1..6; checkpoints every 2 steps score the mean of their
# two batches: step 2 -> 0.25, step 4 -> 0.75, step 6 -> 0. The best checkpoint is step 4 (the
# best single batch, step 3, is not a checkpoint; the last one, step 6, is the worst).
R2_MEANS = [0.25, 0.25, 1.0, 0.5, 0.0, 0.0]
E = 8


# Right second attempts for each mean; groups of k=2 are (0, 1), (2, 3), ...: 0.25 puts one
# right attempt in groups 0 and 1, so Stage I's advantages are not all zero.
RIGHT = {0.0: [], 0.25: [0, 3], 0.5: [0, 3, 4, 7], 1.0: list(range(E))}


def _rewards(step):
  r2 = np.zeros(E, np.float32)
  r2[RIGHT[R2_MEANS[step]]] = 1.0
  r1 = (np.arange(E) % 2).astype(np.float32)  # every group has a right and a wrong y1.
  return np.stack([r1, r2])


@pytest.fixture(scope="module")
def spied(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("rl_loop"))
  config = small_config()
  config.mesh_shape = (8, 1, 1)  # data-parallel only: fewer collectives to compile.
  config.rl.stage_schedule = "stage1:2,stage2:4"
  config.rl.prompts_per_step, config.rl.samples_per_prompt = 4, 2
  config.checkpoint.every = 2
  config.eval.checkpoint = "best_train_reward"
  train.validate_config(config)
  run = train.setup(config, workdir)
  base = model.init_params(run.model_config, jax.random.key(0))
  sampled, updated = [], []
  real_rollout, real_batch, real_make = (rollout.rollout_in_chunks, train.rl_batch,
                                         train_step.make_rl_step)

  def rollout_in_chunks(config, params, *args, **kw):
    sampled.append(jax.device_get(params))
    return real_rollout(config, params, *args, **kw)

  def rl_batch(run, params, ref_params, step):
    batch, m = real_batch(run, params, ref_params, step)
    assert batch["rewards"].shape == (2, E)
    return {**batch, "rewards": _rewards(step)}, m

  def make_rl_step(*args, **kw):
    step_fn = real_make(*args, **kw)

    def spy(state, ref_params, batch):
      state, m = step_fn(state, ref_params, batch)
      updated.append(jax.device_get(state["params"]))  # before the next step donates it.
      return state, m
    return spy

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(rollout, "rollout_in_chunks", rollout_in_chunks)
    mp.setattr(train, "rl_batch", rl_batch)
    mp.setattr(train_step, "make_rl_step", make_rl_step)
    writer = metrics_lib.MetricWriter(workdir, tensorboard=False)
    final = train.run_rl(run, base, writer)
    writer.close()
  return run, base, final, sampled, updated


def _bitwise_equal(a, b):
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b)))


def test_run_rl_samples_with_the_current_policy(spied):
  _, base, _, sampled, updated = spied
  assert len(sampled) == len(updated) == 6
  assert _bitwise_equal(sampled[0], base)
  for step in range(1, 6):  # step s samples with the params that step s - 1 produced.
    assert not _bitwise_equal(updated[step - 1], base if step == 1 else updated[step - 2])
    assert _bitwise_equal(sampled[step], updated[step - 1]), step


def test_best_train_reward_evaluates_the_best_checkpoint(spied):
  run, _, final, _, updated = spied
  step, params = train.select_checkpoint(run, final)
  assert step == 4
  saved = ocp.StandardCheckpointer().restore(os.path.join(run.workdir, "rl", "4", "state"))
  assert _bitwise_equal(jax.device_get(params), saved["params"])
  assert _bitwise_equal(jax.device_get(params), updated[3])
  assert not _bitwise_equal(jax.device_get(params), jax.device_get(final))
  run.config.eval.checkpoint = "final"
  try:
    step, params = train.select_checkpoint(run, final)
  finally:
    run.config.eval.checkpoint = "best_train_reward"
  assert step == 6 and params is final
