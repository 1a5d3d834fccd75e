"""LoRA adapters: layouts against numpy, exact base at init, adapter-only training, a run."""

import os
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from score_jax import (baselines, lora, metrics as metrics_lib, model, pipeline, sft, sharding,
                       tasks, train, train_step)
from score_jax.model import checkpoints
from tests.test_train import small_config
from tests.utils import hand_stage2_loss, random_params

E, L, K = 4, 12, 2
ALL = r"embedder/input_embedding|" + lora.DEFAULT_TARGETS


def _config(name="tiny"):
  return model.get_config(name, vocab_size=40, num_layers=2)


def _random_adapters(config, seed, rank=3, alpha=6.0, targets=ALL):
  """Adapters with both factors random (fresh ones have B = 0: a zero update)."""
  fresh = lora.init(config, jax.random.key(seed), rank=rank, alpha=alpha, targets=targets)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.3, x.shape), jnp.float32), fresh)


# Each layout's [in, out] matrix view of one stacked slice, and of its two factors, written
# out from the layouts in transformer.py's docstring (independent of lora.LAYOUTS):
# (weight slice -> matrix, matrix -> weight slice, A slice -> [in, r], B slice -> [r, out]).
def _views(c):
  n, k, d, h, f = c.num_heads, c.num_kv_heads, c.d_model, c.head_dim, c.ffw_hidden
  return {
      "layers/attn/q_einsum/w": (  # [N, D, H]: D -> (N, H)
          lambda w: w.transpose(1, 0, 2).reshape(d, n * h),
          lambda m: m.reshape(d, n, h).transpose(1, 0, 2),
          lambda a: a, lambda b: b.reshape(-1, n * h)),
      "layers/attn/kv_einsum/w": (  # per C: [K, D, H]: D -> (K, H)
          lambda w: w.transpose(1, 0, 2).reshape(d, k * h),
          lambda m: m.reshape(d, k, h).transpose(1, 0, 2),
          lambda a: a, lambda b: b.reshape(-1, k * h)),
      "layers/attn/attn_vec_einsum/w": (  # [N, H, D]: (N, H) -> D
          lambda w: w.reshape(n * h, d), lambda m: m.reshape(n, h, d),
          lambda a: a.reshape(n * h, -1), lambda b: b),
      "layers/mlp/gating_einsum/w": (  # per C: [D, F]
          lambda w: w, lambda m: m, lambda a: a, lambda b: b),
      "layers/mlp/linear/w": (lambda w: w, lambda m: m, lambda a: a, lambda b: b),  # [F, D]
      "embedder/input_embedding": (lambda w: w, lambda m: m, lambda a: a, lambda b: b),  # [V, D]
  }


def _slices(path, x):
  """The stacked slices of a weight or factor: layers (and the C = 2 axis of kv / gating)."""
  if path.startswith("embedder"):
    return [()]
  if path.endswith(("kv_einsum/w", "gating_einsum/w")):
    return [(i, c) for i in range(x.shape[0]) for c in range(2)]
  return [(i,) for i in range(x.shape[0])]


def test_factor_shapes_follow_each_weight_layout():
  c = _config()
  r = 3
  adapters = lora.init(c, jax.random.key(0), rank=r, alpha=1.0, targets=ALL)
  n, k, d, h, f, l, v = (c.num_heads, c.num_kv_heads, c.d_model, c.head_dim, c.ffw_hidden,
                         c.num_layers, c.vocab_size)
  expected = {
      "layers/attn/q_einsum/w": ((l, d, r), (l, r, n, h)),
      "layers/attn/kv_einsum/w": ((l, 2, d, r), (l, 2, r, k, h)),
      "layers/attn/attn_vec_einsum/w": ((l, n, h, r), (l, r, d)),
      "layers/mlp/gating_einsum/w": ((l, 2, d, r), (l, 2, r, f)),
      "layers/mlp/linear/w": ((l, f, r), (l, r, d)),
      "embedder/input_embedding": ((v, r), (r, d)),
  }
  flat = traverse_util.flatten_dict(adapters.factors, sep="/")
  assert {p: (flat[p + "/a"].shape, flat[p + "/b"].shape) for p in adapters.paths()} == expected
  for path in expected:  # the factor that multiplies last starts at zero; A does not.
    assert not np.any(flat[path + "/b"]) and np.all(flat[path + "/a"] != 0)
    assert flat[path + "/a"].dtype == jnp.float32


@pytest.mark.parametrize("name", ["tiny", "tiny-gemma3"])
def test_fresh_adapters_give_the_base_logits_bitwise(name):
  config = _config(name)
  params = random_params(config, 0)
  adapters = lora.init(config, jax.random.key(1), rank=4, alpha=32.0, targets=ALL)
  tokens = np.random.default_rng(0).integers(0, 40, (2, 9)).astype(np.int32)
  merged = lora.merge(config, params, adapters)
  np.testing.assert_array_equal(model.logits(config, merged, tokens),
                                model.logits(config, params, tokens))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_merge_equals_numpy_low_rank_update_per_layout(dtype):
  config = model.get_config("tiny-gemma3", vocab_size=40, num_layers=2, dtype=dtype)
  params = jax.tree.map(lambda x: x.astype(dtype), random_params(config, 0))
  rank, alpha = 3, 6.0
  adapters = _random_adapters(config, 1, rank, alpha)
  merged = lora.merge(config, params, adapters)
  flat_p = traverse_util.flatten_dict(params, sep="/")
  flat_m = traverse_util.flatten_dict(merged, sep="/")
  factors = traverse_util.flatten_dict(adapters.factors, sep="/")
  for path, (to_mat, from_mat, a_mat, b_mat) in _views(config).items():
    w = np.asarray(flat_p[path], np.float32)
    a, b = np.asarray(factors[path + "/a"]), np.asarray(factors[path + "/b"])
    want = w.copy()
    for s in _slices(path, w):
      want[s] = from_mat(to_mat(w[s]) + alpha / rank * a_mat(a[s]) @ b_mat(b[s]))
    assert flat_m[path].dtype == jnp.dtype(dtype)
    np.testing.assert_allclose(np.asarray(flat_m[path], np.float32),
                               np.asarray(jnp.asarray(want).astype(dtype), np.float32),
                               rtol=1e-5 if dtype == "float32" else 1e-2, atol=1e-5, err_msg=path)
    assert not np.allclose(want, w)  # the update is not trivially zero
  for path in set(flat_p) - set(_views(config)):  # norms: the very same arrays.
    assert flat_m[path] is flat_p[path], path


def test_untargeted_weights_are_the_same_objects():
  config = _config()
  params = random_params(config, 0)
  merged = lora.merge(config, params, _random_adapters(config, 1, targets=lora.DEFAULT_TARGETS))
  assert merged["embedder"]["input_embedding"] is params["embedder"]["input_embedding"]
  assert merged["final_norm"]["scale"] is params["final_norm"]["scale"]
  assert merged["layers"]["pre_ffw_norm"]["scale"] is params["layers"]["pre_ffw_norm"]["scale"]
  assert merged["layers"]["attn"]["q_einsum"]["w"] is not params["layers"]["attn"]["q_einsum"]["w"]


def test_adapters_are_sharded_like_their_weights():
  config = model.get_config("tiny", vocab_size=40, num_layers=2)  # N 4, K 2, D 64, F 128
  mesh = sharding.make_mesh((1, 2, 2), jax.devices()[:4])
  placed = lora.shard(lora.init(config, jax.random.key(0), rank=2, alpha=1.0, targets=ALL), mesh)
  specs = {p: x.sharding.spec for p, x in
           traverse_util.flatten_dict(placed.factors, sep="/").items()}
  # Each factor keeps its weight's axes (embed -> fsdp, heads / kv heads / mlp -> tensor).
  assert specs["layers/attn/q_einsum/w/a"] == jax.P(None, "fsdp", None)
  assert specs["layers/attn/q_einsum/w/b"] == jax.P(None, None, "tensor", None)
  assert specs["layers/attn/kv_einsum/w/b"] == jax.P(None, None, None, "tensor", None)
  assert specs["layers/attn/attn_vec_einsum/w/a"] == jax.P(None, "tensor", None, None)
  assert specs["layers/attn/attn_vec_einsum/w/b"] == jax.P(None, None, "fsdp")
  assert specs["layers/mlp/gating_einsum/w/b"] == jax.P(None, None, None, "tensor")
  assert specs["layers/mlp/linear/w/a"] == jax.P(None, "tensor", None)
  assert specs["embedder/input_embedding/a"] == jax.P("tensor", None)
  assert specs["embedder/input_embedding/b"] == jax.P(None, "fsdp")


# --- training only the adapters ---------------------------------------------------------------


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 40, (E, L)).astype(np.int32)
  mask = np.zeros((2, E, L), np.float32)
  mask[0, :, 3:6] = 1.0
  mask[1, :, 8:11] = 1.0
  rewards = np.array([[0, 1, 1, 0], [1, 1, 0, 0]], np.float32)
  return {"tokens": tokens, "loss_mask": mask, "rewards": rewards}


def _rl_steps(config, adapters, base, batch, opt, steps, name="stage2"):
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  state = sft.init_train_state(adapters, opt, mesh)
  ref = sharding.shard_params(base, mesh)
  obj = train_step.ObjectiveConfig(name=name, samples_per_prompt=K, alpha=10.0, beta1=0.01,
                                   logits_chunk=5)
  step = train_step.make_rl_step(config, opt, obj, state, ref, mesh)
  history = []
  for _ in range(steps):
    state, metrics = step(state, ref, batch)
    history.append(jax.device_get(metrics))
  return state, ref, history


def test_only_adapters_train_and_kl_starts_at_zero(batch):
  config = _config()
  base = random_params(config, 0)
  base_copy = jax.device_get(base)
  adapters = lora.init(config, jax.random.key(1), rank=2, alpha=4.0)
  state, ref, hist = _rl_steps(config, adapters, base, batch, optax.adam(1e-2), steps=2)
  assert hist[0]["kl_1"] == 0.0 and hist[0]["kl_2"] == 0.0  # fresh adapters: pi_theta == pi_ref
  assert hist[1]["kl_1"] > 0 and hist[1]["kl_2"] > 0  # the step moved the policy off the base
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(ref), base_copy)  # base frozen
  assert isinstance(state["params"], lora.Adapters)
  b = traverse_util.flatten_dict(jax.device_get(state["params"].factors), sep="/")
  assert all(np.any(b[p + "/b"]) for p in state["params"].paths())  # every adapter moved
  # Adam moments exist for the adapters only: no leaf of the optimizer state is model-sized.
  factor_shapes = {x.shape for x in jax.tree.leaves(adapters)}
  assert {x.shape for x in jax.tree.leaves(state["opt_state"]) if x.ndim} <= factor_shapes


def test_lora_stage2_step_is_the_chain_rule_through_the_merged_weights(batch):
  config = _config()
  base = random_params(config, 0)
  rank, alpha, lr = 3, 6.0, 0.1
  adapters = _random_adapters(config, 1, rank, alpha)  # B != 0: both factors get gradients
  merged = lora.merge(config, base, adapters)
  # The gradient w.r.t. each merged weight W, then projected onto A and B by hand:
  # W_s = W0_s + c A_s B_s  =>  dL/dA_s = c G_s B_s^T,  dL/dB_s = c A_s^T G_s.
  grad_w = traverse_util.flatten_dict(
      jax.grad(lambda p: hand_stage2_loss(config, p, base, batch, alpha=10.0, beta1=0.01))(
          merged), sep="/")
  factors = traverse_util.flatten_dict(jax.device_get(adapters.factors), sep="/")
  c = alpha / rank
  expected = {}
  for path, (to_mat, _, a_mat, b_mat) in _views(config).items():
    a, b, g = factors[path + "/a"], factors[path + "/b"], np.asarray(grad_w[path])
    ga, gb = np.zeros_like(a), np.zeros_like(b)
    for s in _slices(path, g):
      g_io = to_mat(g[s])
      ga[s] = (c * g_io @ b_mat(b[s]).T).reshape(a[s].shape)
      gb[s] = (c * a_mat(a[s]).T @ g_io).reshape(b[s].shape)
    expected[path + "/a"], expected[path + "/b"] = a - lr * ga, b - lr * gb
  state, _, hist = _rl_steps(config, adapters, base, batch, optax.sgd(lr), steps=1)
  got = traverse_util.flatten_dict(jax.device_get(state["params"].factors), sep="/")
  assert set(got) == set(expected)
  for path in expected:
    np.testing.assert_allclose(got[path], expected[path], atol=2e-5, rtol=1e-4, err_msg=path)
  assert hist[0]["pg_loss"] != 0.0


def test_lora_sft_step_trains_adapters_over_a_frozen_base():
  config = _config()
  base = random_params(config, 0)
  base_copy = jax.device_get(base)
  mesh = sharding.make_mesh((2, 1, 1), jax.devices()[:2])
  rng = np.random.default_rng(0)
  sft_batch = {"tokens": rng.integers(1, 40, (4, 16)).astype(np.int32),
               "loss_mask": np.ones((4, 16), np.float32)}
  opt = optax.adam(3e-2)
  full = sft.init_train_state(base, opt, mesh)
  _, full_metrics = sft.make_sft_step(config, opt, full, mesh, logits_chunk=8)(full, sft_batch)
  state = sft.init_train_state(lora.init(config, jax.random.key(1), rank=2, alpha=4.0), opt,
                               mesh)
  placed_base = sharding.shard_params(base, mesh)
  step = sft.make_sft_step(config, opt, state, mesh, logits_chunk=8, base_params=placed_base)
  losses = []
  for _ in range(5):
    state, m = step(state, sft_batch)
    losses.append(float(m["loss"]))
  assert losses[0] == pytest.approx(float(full_metrics["loss"]), rel=1e-6)  # same model at step 0
  assert losses[-1] < losses[0]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(placed_base), base_copy)
  with pytest.raises(ValueError, match="base_params exactly when"):
    sft.make_sft_step(config, opt, state, mesh)


# --- errors -----------------------------------------------------------------------------------


def test_bad_settings_are_clear_errors():
  config = _config()  # D 64, H 16: q_einsum's smaller side is D = 64
  key = jax.random.key(0)
  for rank in (0, -2, 2.0, True):
    with pytest.raises(ValueError, match="rank must be a positive integer"):
      lora.init(config, key, rank=rank, alpha=1.0)
  with pytest.raises(ValueError, match="alpha must be a positive number"):
    lora.init(config, key, rank=2, alpha=0.0)
  with pytest.raises(ValueError, match="matches no parameter"):
    lora.init(config, key, rank=2, alpha=1.0, targets="q_einsum")  # a part, not the whole path
  with pytest.raises(ValueError, match="not a valid regex"):
    lora.init(config, key, rank=2, alpha=1.0, targets="layers/(attn")
  with pytest.raises(ValueError, match="no low-rank layout"):
    lora.init(config, key, rank=2, alpha=1.0, targets=r"layers/.*")
  with pytest.raises(ValueError, match="exceeds layers/attn/q_einsum/w's smaller side 64"):
    lora.init(config, key, rank=65, alpha=1.0, targets=r"layers/attn/q_einsum/w")
  other = lora.init(model.get_config("tiny", vocab_size=40, num_layers=2, d_model=32), key,
                    rank=2, alpha=1.0)
  with pytest.raises(ValueError, match="do not fit layers/attn"):
    lora.merge(config, random_params(config, 0), other)
  meta = {"rank": 2, "alpha": 1.0, "targets": "x", "base_fingerprint": 3.0}
  with pytest.raises(ValueError, match="full fine-tuning checkpoint"):
    lora.check_resume(None, meta, "dir")
  with pytest.raises(ValueError, match="resume with the same rl.lora"):
    lora.check_resume({**meta, "rank": 4}, meta, "dir")
  with pytest.raises(ValueError, match="another base model"):
    lora.check_resume({**meta, "base_fingerprint": 3.1}, meta, "dir")
  lora.check_resume({**meta, "base_fingerprint": 3.0 * (1 + 1e-6)}, meta, "dir")  # reduction order


def test_frozen_embedding_with_an_adapted_embedding_is_an_error():
  config = small_config()
  config.rl.lora.rank, config.rl.lora.targets, config.rl.freeze_embedding = 2, ALL, True
  run = types.SimpleNamespace(config=config, model_config=_config(),  # what lora_setup reads
                              mesh=sharding.make_mesh((1, 1, 1), jax.devices()[:1]))
  with pytest.raises(ValueError, match="freeze_embedding=True but rl.lora.targets"):
    train.lora_setup(run, random_params(_config(), 0))


# --- a LoRA run end to end ----------------------------------------------------------------------


def _lora_config():
  config = small_config()
  config.rl.lora.rank = 2
  config.rl.lora.alpha = 8.0
  config.rl.learning_rate = 1e-2
  config.eval.base = False
  return config


def _restore(workdir, phase, step=None):
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, phase)) if d.isdigit())
  step = steps[-1] if step is None else step
  return ocp.StandardCheckpointer().restore(os.path.join(workdir, phase, str(step), "state"))


def test_lora_run_checkpoints_adapters_resumes_and_exports_the_merged_model(tmp_path):
  config = _lora_config()
  workdir = str(tmp_path)
  results = pipeline.train_and_evaluate(config, workdir)
  assert set(results) == {"score"}
  final = _restore(workdir, "rl")
  assert set(final["params"]) == {"factors"}  # the RL checkpoint holds adapters, no base copy
  # The export is the warm-start base merged with the final adapters.
  base = _restore(workdir, "warmstart")["params"]
  adapters = lora.Adapters(factors=final["params"]["factors"], rank=2, alpha=8.0,
                           targets=lora.DEFAULT_TARGETS)
  run_config, exported = checkpoints.load_hf(os.path.join(workdir, "export", "hf"))
  merged = lora.merge(run_config, base, adapters)
  assert not np.allclose(merged["layers"]["mlp"]["linear"]["w"],
                         base["layers"]["mlp"]["linear"]["w"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), exported,
               jax.device_get(merged))
  # Resume: drop the last two RL checkpoints and rerun; the same adapters come out, bitwise.
  for step in (4, 5):
    shutil.rmtree(os.path.join(workdir, "rl", str(step)))
  pipeline.train_and_evaluate(config, workdir)
  resumed = _restore(workdir, "rl")
  jax.tree.map(np.testing.assert_array_equal, resumed["params"], final["params"])
  # A resume with other LoRA settings is refused, naming them.
  config.rl.lora.alpha = 4.0
  with pytest.raises(ValueError, match="resume with the same rl.lora"):
    pipeline.train_and_evaluate(config, workdir)


def test_lora_sft_baseline_trains_adapters_and_returns_the_merged_model(tmp_path, monkeypatch):
  # Every attempt rewarded: Pair-SFT's D+ pairs right -> right first attempts, so both steps
  # train (an untrained model is never right).
  monkeypatch.setattr(tasks.Task, "rewards",
                      lambda self, responses, golds: np.ones(len(responses), np.float32))
  config = _lora_config()
  config.baseline.include_correct_to_correct = True
  config.baseline.learning_rate = 1e-2
  config.rl.stage_schedule = "stage1:1,stage2:1"
  config.mesh_shape = (8, 1, 1)
  config.model.num_layers, config.rl.max_new_tokens = 1, 8
  run = train.setup(config, str(tmp_path))
  base = model.init_params(run.model_config, jax.random.key(0))
  writer = metrics_lib.MetricWriter(str(tmp_path), tensorboard=False)
  trained = baselines.run_sft_baseline(run, base, writer, "pair_sft")
  writer.close()
  final = _restore(str(tmp_path), "pair_sft")
  assert set(final["params"]) == {"factors"}  # the checkpoint holds the adapters only
  factors = traverse_util.flatten_dict(final["params"]["factors"], sep="/")
  assert all(np.any(x) for p, x in factors.items() if p.endswith("/b"))  # they trained
  adapters = lora.Adapters(factors=final["params"]["factors"], rank=2, alpha=8.0,
                           targets=lora.DEFAULT_TARGETS)
  # What the run returns (evaluated and exported) is the base merged with the adapters.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               jax.device_get(trained), jax.device_get(lora.merge(run.model_config, base,
                                                                  adapters)))


def test_lora_benchmark_quick_run_shows_the_state_saving(capsys):
  from benchmarks import lora_step
  result = lora_step.main(["--quick"])
  full, low = result["full"], result["lora"]
  # Full: params + 2 Adam moments (+ count); LoRA: adapters + their moments only.
  assert full["state_MB"] * 2**20 >= 3 * 4 * result["params"]
  assert low["state_MB"] * 2**20 < 3 * 4 * result["adapter_params"] + 1024
  # Step arguments: full holds state + a reference copy; LoRA the base once (+ small state).
  assert low["args_MB"] < full["args_MB"] / 2
  assert low["step_s"] > 0 and low["merge_s"] > 0 and '"lora"' in capsys.readouterr().out
