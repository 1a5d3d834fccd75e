"""Orbax checkpoints: resharding on restore, fallback past a corrupt step, clear errors."""

import os

import jax
import numpy as np
import optax
import pytest

from score_jax import checkpoint, model, sft, sharding


def _state(mesh_shape, devices=None):
  config = model.get_config("tiny")
  mesh = sharding.make_mesh(mesh_shape, devices)
  params = model.init_params(config, jax.random.key(0))
  return sft.init_train_state(params, optax.adam(1e-3), mesh), mesh


def _assert_tree_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_restore_onto_other_meshes(tmp_path):
  state, _ = _state((1, 2, 4))
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=1)
  meta = {"stage": "stage1", "stage_step": 3, "data_position": 96}
  assert ckpt.save(3, state, meta)
  ckpt.close()
  for shape, devices in (((8, 1, 1), None), ((1, 1, 1), jax.devices()[:1])):
    target, mesh = _state(shape, devices)
    ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=1)
    step, restored, restored_meta = ckpt.restore(checkpoint.abstract_like(target))
    ckpt.close()
    assert step == 3 and restored_meta == meta
    _assert_tree_equal(restored, state)
    leaf = restored["params"]["layers"]["mlp"]["linear"]["w"]
    assert leaf.sharding == target["params"]["layers"]["mlp"]["linear"]["w"].sharding
    assert len(leaf.sharding.device_set) == mesh.size


def _corrupt(step_dir):
  """Truncates every data file under a finished step directory."""
  count = 0
  for root, _, files in os.walk(step_dir):
    for name in files:
      if "state" in root and not name.startswith("_CHECKPOINT_METADATA"):
        with open(os.path.join(root, name), "wb"):
          count += 1
  assert count


def test_corrupt_latest_falls_back_and_all_corrupt_is_an_error(tmp_path, caplog):
  state, _ = _state((8, 1, 1))
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=2, keep=5)
  assert not ckpt.save(1, state, {"n": 1})  # not a save step
  ckpt.save(2, state, {"n": 2})
  ckpt.save(4, jax.tree.map(lambda x: x + 1, state), {"n": 4})
  ckpt.close()
  _corrupt(tmp_path / "4")
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=2)
  step, restored, meta = ckpt.restore(checkpoint.abstract_like(state))
  assert step == 2 and meta == {"n": 2}
  _assert_tree_equal(restored, state)
  assert "step 4" in caplog.text and "unreadable" in caplog.text
  _corrupt(tmp_path / "2")
  with pytest.raises(checkpoint.CheckpointError, match=r"steps \[2, 4\] but none could be"):
    ckpt.restore(checkpoint.abstract_like(state))
  ckpt.close()


def test_empty_workdir_is_a_new_run(tmp_path):
  state, _ = _state((8, 1, 1))
  ckpt = checkpoint.Checkpointer(str(tmp_path / "new"), save_every=10)
  assert ckpt.restore(checkpoint.abstract_like(state)) is None
  ckpt.close()
