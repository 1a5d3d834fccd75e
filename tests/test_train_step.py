"""RL train steps: method.md §7's mistakes ruled out, micro-batching and sharding invariance."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from score_jax import losses, model, sft, sharding, train_step
from tests.utils import hand_stage2_loss, random_params

E, L, K = 4, 12, 2


@pytest.fixture(scope="module")
def setup():
  config = model.get_config("tiny", vocab_size=40)
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 40, (E, L)).astype(np.int32)
  mask = np.zeros((2, E, L), np.float32)
  mask[0, :, 3:6] = 1.0   # y1 targets
  mask[1, :, 8:11] = 1.0  # y2 targets (after y1 and an instruction)
  rewards = np.array([[0, 1, 1, 0], [1, 1, 0, 0]], np.float32)
  return config, {"tokens": tokens, "loss_mask": mask, "rewards": rewards}


def _with_target_index(batch):
  """The batch with train.rl_batch's "target_index": only the attempts' tokens are projected."""
  return {**batch, "target_index": losses.target_positions(batch["loss_mask"].max(0), multiple=4)}


def _run(config, params, ref, batch, obj, mesh=None, steps=1, lr=0.1, opt=None, beta2=None):
  mesh = mesh or sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  opt = opt or optax.sgd(lr)
  state = sft.init_train_state(params, opt, mesh)
  if beta2 is not None:
    state = train_step.add_beta2_state(state, beta2, mesh)
  ref = sharding.shard_params(ref, mesh)
  step = train_step.make_rl_step(config, opt, obj, state, ref, mesh)
  history = []
  for _ in range(steps):
    state, metrics = step(state, ref, batch)
    history.append(jax.device_get(metrics))
  return state, history


def _obj(name, **kw):
  # 5 positions per logits block: 11 predicting positions -> 3 blocks, the last one padded.
  return train_step.ObjectiveConfig(name=name, samples_per_prompt=K, **{"logits_chunk": 5, **kw})


def test_kl_is_zero_at_step0_and_has_gradient_into_y1(setup):
  config, batch = setup
  params = random_params(config, 0)
  ref_copy = jax.tree.map(jnp.copy, params)  # the state is donated: never alias the reference.
  _, hist = _run(config, params, ref_copy, batch, _obj("stage1"))
  assert hist[0]["kl_1"] == 0.0 and hist[0]["kl_2"] == 0.0  # pi_theta == pi_ref
  # Mistake 1: with y2 advantages all zero, Stage I still moves y1 through beta2 * KL_1.
  ref = random_params(config, 1)
  flat = {**batch, "rewards": np.zeros((2, E), np.float32)}
  _, hist = _run(config, params, ref, flat, _obj("stage1", beta2=1.0, beta1=0.0), steps=5,
                 lr=2e-3)
  assert hist[0]["pg_loss"] == 0.0 and hist[0]["grad_norm"] > 0
  assert hist[-1]["kl_1"] < hist[0]["kl_1"]


def test_stage1_ignores_first_attempt_rewards(setup):
  config, batch = setup
  params, ref = random_params(config, 0), random_params(config, 1)
  s_a, _ = _run(config, params, ref, batch, _obj("stage1"))
  flipped = {**batch, "rewards": batch["rewards"] * np.array([[0.0], [1.0]]) + np.array(
      [[1.0], [0.0]]) * (1 - batch["rewards"])}
  s_b, _ = _run(config, params, ref, flipped, _obj("stage1"))
  jax.tree.map(np.testing.assert_array_equal, s_a["params"], s_b["params"])


def _manual_stage2_grads(config, params, ref, batch, alpha, beta1):
  """Independent composition: hand advantages, log_softmax, explicit KL sum."""
  return jax.grad(lambda p: hand_stage2_loss(config, p, ref, batch, alpha=alpha, beta1=beta1,
                                             k=K))(params)


def test_stage2_step_matches_independent_gradient(setup):
  config, batch = setup
  params, ref = random_params(config, 0), random_params(config, 1)
  lr = 0.1
  grads = _manual_stage2_grads(config, params, ref, batch, 10.0, 0.01)
  expected = jax.tree.map(lambda p, g: p - lr * g, params, grads)
  for given in (batch, _with_target_index(batch)):  # all positions / the attempts' only.
    state, hist = _run(config, params, ref, given, _obj("stage2", alpha=10.0, beta1=0.01), lr=lr)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4),
                 jax.device_get(state["params"]), expected)
    assert hist[0]["pg_loss"] != 0.0  # mistake 6: a real policy-gradient term


def test_micro_batches_and_sharding_do_not_change_the_update(setup):
  config, batch = setup
  params, ref = random_params(config, 0), random_params(config, 1)
  one, _ = _run(config, params, ref, batch, _obj("stage2"))
  two, _ = _run(config, params, ref, batch, _obj("stage2", micro_batches=2))
  mesh = sharding.make_mesh((2, 1, 2), jax.devices()[:4])
  sharded, _ = _run(config, params, ref, batch, _obj("stage2"), mesh=mesh)
  indexed, _ = _run(config, params, ref, _with_target_index(batch),
                    _obj("stage2", micro_batches=2), mesh=mesh)
  p0 = jax.device_get(params)
  base = jax.tree.map(lambda a, b: a - b, jax.device_get(one["params"]), p0)
  for other in (two, sharded, indexed):
    update = jax.tree.map(lambda a, b: a - b, jax.device_get(other["params"]), p0)
    # Same update up to fp32 reduction order: 1e-4 of the leaf's largest change.
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=0,
                                                         atol=1e-4 * np.abs(v).max() + 1e-7),
                 update, base)
  with pytest.raises(ValueError, match="whole groups"):
    _run(config, params, ref, batch, _obj("stage2", micro_batches=4))


@pytest.mark.parametrize("name", ["naive_r2", "naive_sum", "single_turn"])
def test_baseline_objectives_run(setup, name):
  config, batch = setup
  params, ref = random_params(config, 0), random_params(config, 1)
  _, hist = _run(config, params, ref, batch, _obj(name, kl_estimator="k3"))
  assert np.isfinite(hist[0]["loss"]) and hist[0]["grad_norm"] > 0


def test_offline_first_rows_get_no_first_attempt_gradient_in_the_step(setup):
  # naive_sum (alpha = 0): dropping group 0's y1 term equals giving its y1s one constant r1.
  config, batch = setup
  params, ref = random_params(config, 0), random_params(config, 1)
  offline = {**batch, "offline_first": np.array([1, 1, 0, 0], np.float32)}
  flat_r1 = {**batch, "rewards": batch["rewards"].copy()}
  flat_r1["rewards"][0, :2] = 0.0
  final = {}
  for name, b in (("offline", offline), ("flat_r1", flat_r1), ("on_policy", batch)):
    state, _ = _run(config, jax.tree.map(jnp.copy, params), ref, b, _obj("naive_sum"))
    final[name] = jax.device_get(state["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               final["offline"], final["flat_r1"])
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), final["offline"],
                       final["on_policy"])
  assert max(jax.tree.leaves(moved)) > 1e-4  # the dropped term was not zero to begin with.


def test_objective_config_errors():
  with pytest.raises(ValueError, match="unknown objective 'stage3'"):
    _obj("stage3")
  with pytest.raises(ValueError, match="unknown kl_estimator 'k2'"):
    _obj("stage1", kl_estimator="k2")
  with pytest.raises(ValueError, match="logits_chunk must be >= 0"):
    _obj("stage1", logits_chunk=-1)
  with pytest.raises(ValueError, match="beta2_min <= beta2_max"):
    _obj("stage1", beta2_min=1.0, beta2_max=0.5)


@pytest.mark.parametrize("kl_estimator", ["exact", "k3"])
def test_chunked_episode_terms_equal_full_logits_path(setup, kl_estimator):
  config, batch = setup
  params, ref = random_params(config, 0), random_params(config, 1)

  @jax.jit
  def both(p):
    def terms(q, chunk):
      t = train_step.episode_terms(config, q, ref, batch["tokens"], batch["loss_mask"],
                                   kl_estimator, chunk)
      return t, jnp.sum(t["seq_logprob"] * jnp.array([[1.0], [-2.0]])) + 3 * jnp.sum(t["kl"])
    return [(terms(p, c)[0], jax.grad(lambda q: terms(q, c)[1])(p)) for c in (5, 0)]

  (chunked, g_chunked), (full, g_full) = both(params)
  for key in ("seq_logprob", "kl", "logprob_el"):
    np.testing.assert_allclose(chunked[key], full[key], rtol=1e-5, atol=1e-5, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-5 * np.abs(b).max()),
               g_chunked, g_full)


def test_frozen_embedding_stays_bitwise_equal(setup):
  config, batch = setup
  params, ref = random_params(config, 0), random_params(config, 1)
  # Weight decay and Adam would move a zero-gradient leaf; the masked optimizer must not.
  opt = train_step.frozen_embedding_optimizer(optax.adamw(1e-2, weight_decay=0.1))
  state, hist = _run(config, params, ref, batch, _obj("stage2", freeze_embedding=True), opt=opt,
                     steps=2, beta2=0.3)
  assert float(state["beta2"]) == pytest.approx(0.3)  # Stage II carries Stage I's beta2 as is.
  new = jax.device_get(state["params"])
  np.testing.assert_array_equal(new["embedder"]["input_embedding"],
                                params["embedder"]["input_embedding"])
  assert np.abs(new["layers"]["mlp"]["linear"]["w"] - params["layers"]["mlp"]["linear"]["w"]
                ).min() > 0  # every other weight moves
  assert np.abs(new["final_norm"]["scale"] - params["final_norm"]["scale"]).min() > 0
  assert hist[0]["grad_norm"] > 0
  # No Adam moments are kept for the frozen [V, D] table.
  opt_leaves = jax.tree.leaves(state["opt_state"])
  assert not any(x.shape == params["embedder"]["input_embedding"].shape for x in opt_leaves)


def test_adaptive_beta2_is_carried_in_the_state(setup):
  config, batch = setup
  params, ref = random_params(config, 0), random_params(config, 1)
  rewards = {**batch, "rewards": np.array([[0, 1, 1, 0], [1, 0, 0, 1]], np.float32)}
  obj = _obj("stage1", adaptive_beta2=True, beta2=0.1, beta2_gain=0.5)
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  opt = optax.sgd(0.1)
  ref = sharding.shard_params(ref, mesh)
  new_state = lambda beta2: train_step.add_beta2_state(sft.init_train_state(params, opt, mesh),
                                                       beta2, mesh)
  step = train_step.make_rl_step(config, opt, obj, new_state(0.1), ref, mesh)
  state, m0 = step(new_state(0.1), ref, rewards)
  state, m1 = step(state, ref, rewards)
  m0, m1 = jax.device_get((m0, m1))
  assert float(m0["beta2"]) == pytest.approx(0.1) and m0["pg_2_abs"] > 0
  # Step 0's metrics drive the controller; step 1 ran with its output.
  expected = 0.1 * (1 + 0.5 * np.clip(1 - 0.1 * m0["kl_1"] / m0["pg_2_abs"], -0.2, 0.2))
  assert float(m1["beta2"]) == pytest.approx(expected, rel=1e-5) and expected != 0.1
  assert float(state["beta2"]) != float(m1["beta2"])  # updated again after step 1
  # The state's beta2 is the one in the loss: starting at beta2 = 1 gives another update.
  state_hi, _ = step(new_state(1.0), ref, rewards)
  state_lo, _ = step(new_state(0.1), ref, rewards)
  assert not np.allclose(jax.device_get(state_hi["params"]["layers"]["mlp"]["linear"]["w"]),
                         jax.device_get(state_lo["params"]["layers"]["mlp"]["linear"]["w"]))
  with pytest.raises(ValueError, match="add_beta2_state"):  # Stage I needs it in the state.
    train_step.make_rl_step(config, opt, obj, sft.init_train_state(params, opt, mesh), ref, mesh)


def test_checkpoint_resume_is_bitwise_with_beta2_and_frozen_embedding(setup, tmp_path):
  from score_jax import checkpoint
  config, batch = setup
  params, ref = random_params(config, 0), random_params(config, 1)
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  opt = train_step.frozen_embedding_optimizer(optax.adam(1e-2))
  obj = _obj("stage1", adaptive_beta2=True, freeze_embedding=True, beta2_gain=0.5)
  ref = sharding.shard_params(ref, mesh)
  state = train_step.add_beta2_state(sft.init_train_state(params, opt, mesh), 0.1, mesh)
  step = train_step.make_rl_step(config, opt, obj, state, ref, mesh)
  rewards = {**batch, "rewards": np.array([[0, 1, 1, 0], [1, 0, 0, 1]], np.float32)}
  state, _ = step(state, ref, rewards)
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=1, async_save=False)
  ckpt.save(1, state, {})
  ckpt.wait()
  template = checkpoint.abstract_like(state)
  _, restored, _ = ckpt.restore(template)
  ckpt.close()
  assert float(restored["beta2"]) == float(state["beta2"]) != 0.1
  (a, _), (b, _) = step(state, ref, rewards), step(restored, ref, rewards)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def _grads(config, params, ref, batch, obj):
  """d loss / d params of `obj` through episode_terms (the step's own loss, no optimizer)."""
  def loss(p):
    terms = train_step.episode_terms(config, p, ref, batch["tokens"], batch["loss_mask"],
                                     obj.kl_estimator, obj.logits_chunk)
    return train_step.objective_loss(obj, terms["seq_logprob"], terms["kl"], batch["rewards"])[0]
  return jax.jit(jax.grad(loss))(params)


def test_bf16_compute_stage2_gradient_matches_fp32(setup):
  # Oracle: the fp32 gradient of the same loss on the same fp32 params. Fan-in scaled
  # weights (init_params, every weight and norm perturbed): a trained model's scale. The
  # std-0.5 `random_params` amplify each layer's round-off (cosine 0.97 there).
  config, batch = setup
  c16 = dataclasses.replace(config, dtype="bfloat16")

  def params_near_init(seed):
    p = model.init_params(config, jax.random.key(seed))
    return jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(seed + 7), x.shape),
                        p)

  params, ref = params_near_init(0), params_near_init(1)
  obj = _obj("stage2", alpha=10.0, beta1=0.01)
  g32, g16 = _grads(config, params, ref, batch, obj), _grads(c16, params, ref, batch, obj)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))  # master-weight grads.
  flat32 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(g32)])
  flat16 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(g16)])
  cosine = flat32 @ flat16 / (np.linalg.norm(flat32) * np.linalg.norm(flat16))
  assert 0.99 <= cosine < 1.0, cosine


def test_bf16_compute_keeps_fp32_master_weights_an_adam_step_of_1e6_moves(setup):
  config, batch = setup
  c16 = dataclasses.replace(config, dtype="bfloat16")
  params, ref = random_params(config, 0), random_params(config, 1)
  obj = _obj("stage2")
  grads = jax.device_get(_grads(c16, params, ref, batch, obj))
  before = jax.device_get(params)
  state, hist = _run(c16, params, ref, batch, obj, opt=optax.adam(1e-6))
  after = jax.device_get(state["params"])
  assert hist[0]["skipped_update"] == 0.0
  for p0, p1, g in zip(jax.tree.leaves(before), jax.tree.leaves(after), jax.tree.leaves(grads)):
    assert p1.dtype == np.float32
    # Oracle: Adam's first step is -lr * g / (|g| + eps) (bias corrections cancel), i.e.
    # -1e-6 * sign(g) where |g| >> eps = 1e-8; fp32 holds it (ulp of 0.5 is 6e-8).
    big = np.abs(g) > 1e-5
    np.testing.assert_allclose((p1 - p0)[big], -1e-6 * np.sign(g[big]), rtol=0.1)
  # Why the master copy is fp32: stored in bf16 (ulp of 0.5 = 2^-9) the same step vanishes.
  w0 = jnp.asarray(before["layers"]["mlp"]["linear"]["w"], jnp.bfloat16)
  assert np.mean(np.asarray(w0 - jnp.bfloat16(1e-6)) == np.asarray(w0)) > 0.99


def test_mismatch_metrics_and_importance_correction(setup):
  config, batch = setup
  params = random_params(config, 0)
  ref = jax.tree.map(jnp.copy, params)  # pi_theta == pi_ref: the KL term has no gradient.
  terms = train_step.episode_terms(config, params, ref, batch["tokens"], batch["loss_mask"],
                                   "exact", 0)
  own = np.asarray(terms["logprob_el"]) * batch["loss_mask"].max(0)
  plain, hist = _run(config, params, jax.tree.map(jnp.copy, params),
                     {**batch, "sampler_logprobs": own}, _obj("stage2"), lr=1.0)
  # The sampler's log-probs are the trainer's: no mismatch.
  assert hist[0]["logprob_mismatch_max"] < 1e-5 and hist[0]["ratio_outside_frac"] == 0.0
  # A sampler 1 nat more confident on every token: ratio e^-1 (outside [0.8, 1.25]) and,
  # corrected, every token's policy-gradient weight e^-1 -- so with SGD and no KL
  # gradient the whole update scales by e^-1 (oracle: the uncorrected update).
  shifted = {**batch, "sampler_logprobs": own + batch["loss_mask"].max(0)}
  corrected, hist = _run(config, params, jax.tree.map(jnp.copy, params), shifted,
                         _obj("stage2", importance_correction=True, importance_cap=2.0), lr=1.0)
  np.testing.assert_allclose(hist[0]["logprob_mismatch_mean"], 1.0, rtol=1e-4)
  assert hist[0]["ratio_outside_frac"] == 1.0
  p0 = jax.device_get(params)
  jax.tree.map(lambda a, b, p: np.testing.assert_allclose(
      a - p, np.exp(-1.0) * (b - p), rtol=1e-3, atol=1e-6 * max(np.abs(b - p).max(), 1e-9)),
      jax.device_get(corrected["params"]), jax.device_get(plain["params"]), p0)
  with pytest.raises(ValueError, match="needs the rollout's 'sampler_logprobs'"):
    _run(config, params, ref, batch, _obj("stage2", importance_correction=True))


def test_nonfinite_update_is_skipped_and_a_streak_stops_the_run(setup):
  config, batch = setup
  params, ref = random_params(config, 0), random_params(config, 1)
  before = jax.device_get(params)
  poisoned = {**batch, "rewards": batch["rewards"].copy()}
  poisoned["rewards"][1, 0] = np.nan  # an injected NaN reaches the loss and every gradient.
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  opt = optax.adam(1e-3)
  state = sft.init_train_state(params, opt, mesh)
  opt_before = jax.device_get(state["opt_state"])
  ref = sharding.shard_params(ref, mesh)
  step = train_step.make_rl_step(config, opt, _obj("stage2"), state, ref, mesh)
  state, m = step(state, ref, poisoned)
  m = jax.device_get(m)
  assert not np.isfinite(m["loss"]) and m["skipped_update"] == 1.0
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["params"]), before)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["opt_state"]), opt_before)
  state, m = step(state, ref, batch)  # a finite batch updates again.
  assert jax.device_get(m["skipped_update"]) == 0.0
  assert not np.array_equal(jax.device_get(state["params"])["final_norm"]["scale"],
                            before["final_norm"]["scale"])
  # The run loop's counter: reset by a good step, an error naming the step at the limit.
  from score_jax import train  # pylint: disable=import-outside-toplevel
  bad, good = {"skipped_update": 1.0, "loss": np.nan}, {"skipped_update": 0.0}
  assert train.check_nonfinite(bad, 5, 0, limit=3) == 1
  assert train.check_nonfinite(good, 6, 2, limit=3) == 0
  with pytest.raises(FloatingPointError, match="RL step 7: 3 updates in a row"):
    train.check_nonfinite(bad, 7, 2, limit=3)
