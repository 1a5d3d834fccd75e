"""SCoRe objective terms pinned to the paper's equations with hand-computed values.

Episodes below: 2 prompts x k=2 samples, attempts (y1, y2) with rewards
  r1 = [0, 1, 1, 0],  r2 = [1, 1, 0, 0]
so the four 0/1 transitions are i->c, c->c, c->i, i->i.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import losses

R1 = np.array([0.0, 1.0, 1.0, 0.0])
R2 = np.array([1.0, 1.0, 0.0, 0.0])
REWARDS = np.stack([R1, R2])
SEQ_LP = np.array([[-3.0, -2.0, -4.0, -1.0], [-5.0, -1.5, -2.5, -3.5]])
KL = np.array([[0.2, 0.4, 0.6, 0.8], [1.0, 0.5, 0.0, 1.5]])


def test_shaped_rewards_alpha_10():
  # docs/method.md §2.5's table: 0->1: 11, 1->0: -10, 1->1: 1, 0->0: 0.
  big_r1, big_r2 = losses.shaped_rewards(R1, R2, alpha=10.0)
  np.testing.assert_array_equal(big_r1, R1)
  np.testing.assert_array_equal(big_r2, [11.0, 1.0, -10.0, 0.0])


def test_rloo_leave_one_out():
  rewards = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])  # 2 prompts x k=3
  # prompt 0: baselines (0+1)/2, (1+1)/2, (1+0)/2; prompt 1: (0+0)/2, (1+0)/2, (1+0)/2
  np.testing.assert_allclose(losses.rloo_advantages(rewards, 3),
                             [0.5, -1.0, 0.5, 1.0, -0.5, -0.5])
  np.testing.assert_allclose(losses.advantages(rewards, 3, "reinforce"), rewards)
  with pytest.raises(ValueError, match="samples_per_prompt >= 2"):
    losses.rloo_advantages(rewards, 1)
  with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
    losses.advantages(rewards, 3, "ppo")


def test_stage1_loss_value_and_gradients():
  beta1, beta2 = 0.01, 0.1
  loss_fn = lambda lp, kl: losses.stage1_loss(lp, kl, REWARDS, samples_per_prompt=2,
                                              beta1=beta1, beta2=beta2)[0]
  # A(r2) with k=2: prompt 0 [1,1] -> [0, 0]; prompt 1 [0,0] -> [0, 0]. Use other rewards:
  rewards = np.stack([R1, np.array([1.0, 0.0, 0.0, 1.0])])
  adv2 = np.array([1.0, -1.0, -1.0, 1.0])
  expected = (-np.mean(adv2 * SEQ_LP[1]) + beta2 * KL[0].mean() + beta1 * KL[1].mean())
  loss, _ = losses.stage1_loss(SEQ_LP, KL, rewards, samples_per_prompt=2, beta1=beta1,
                               beta2=beta2)
  assert float(loss) == pytest.approx(expected, rel=1e-6)
  g_lp, g_kl = jax.grad(lambda lp, kl: losses.stage1_loss(
      lp, kl, rewards, samples_per_prompt=2, beta1=beta1, beta2=beta2)[0], argnums=(0, 1))(
          jnp.asarray(SEQ_LP), jnp.asarray(KL))
  np.testing.assert_array_equal(g_lp[0], 0.0)  # no policy gradient on y1 in Stage I
  np.testing.assert_allclose(g_lp[1], -adv2 / 4)
  np.testing.assert_allclose(g_kl[0], beta2 / 4)  # y1 held by the strong KL
  np.testing.assert_allclose(g_kl[1], beta1 / 4)
  assert float(loss_fn(SEQ_LP, KL)) == pytest.approx(
      beta2 * KL[0].mean() + beta1 * KL[1].mean())  # r2 constant per prompt: A = 0


def test_stage2_loss_per_turn_credit():
  alpha, beta1 = 10.0, 0.01
  loss, metrics = losses.stage2_loss(SEQ_LP, KL, REWARDS, samples_per_prompt=2, alpha=alpha,
                                     beta1=beta1)
  adv1 = np.array([-1.0, 1.0, 1.0, -1.0])    # R1 = [0,1 | 1,0]
  adv2 = np.array([10.0, -10.0, -10.0, 10.0])  # R2 = [11,1 | -10,0]
  expected = (-np.mean(adv1 * SEQ_LP[0]) - np.mean(adv2 * SEQ_LP[1])
              + beta1 * (KL[0].mean() + KL[1].mean()))
  assert float(loss) == pytest.approx(expected, rel=1e-6)
  g_lp = jax.grad(lambda lp: losses.stage2_loss(lp, KL, REWARDS, samples_per_prompt=2,
                                                alpha=alpha, beta1=beta1)[0])(jnp.asarray(SEQ_LP))
  # Each attempt's log-prob is weighted by its own advantage (not one episode scalar).
  np.testing.assert_allclose(g_lp[0], -adv1 / 4)
  np.testing.assert_allclose(g_lp[1], -adv2 / 4)
  assert float(metrics["shaped_r2_mean"]) == pytest.approx(np.mean([11, 1, -10, 0]))


def test_exact_kl_direction_and_gradient():
  rng = np.random.default_rng(0)
  p_logits = rng.normal(size=(1, 3, 5)).astype(np.float32)
  q_logits = rng.normal(size=(1, 3, 5)).astype(np.float32)
  p = np.exp(p_logits) / np.exp(p_logits).sum(-1, keepdims=True)
  q = np.exp(q_logits) / np.exp(q_logits).sum(-1, keepdims=True)
  forward = (p * np.log(p / q)).sum(-1)   # KL(pi_theta || pi_ref): method.md §2.3's direction
  reverse = (q * np.log(q / p)).sum(-1)
  got = np.asarray(losses.exact_kl(p_logits, q_logits))
  np.testing.assert_allclose(got, forward, rtol=1e-5)
  assert not np.allclose(got, reverse, rtol=1e-2)
  np.testing.assert_allclose(losses.exact_kl(p_logits, p_logits), 0.0, atol=1e-6)
  g_p, g_q = jax.grad(lambda a, b: losses.exact_kl(a, b).sum(), argnums=(0, 1))(p_logits,
                                                                                 q_logits)
  assert np.abs(g_p).max() > 1e-3   # gradient flows into the policy ...
  np.testing.assert_array_equal(g_q, 0.0)  # ... and never into the frozen reference


def test_sample_kl_estimators():
  lp, lq = np.array([[-1.0, -2.0]]), np.array([[-1.5, -1.0]])
  np.testing.assert_allclose(losses.k1_kl(lp, lq), [[0.5, -1.0]])
  log_r = lq - lp
  np.testing.assert_allclose(losses.k3_kl(lp, lq), np.expm1(log_r) - log_r, rtol=1e-6)
  assert np.all(np.asarray(losses.k3_kl(lp, lq)) >= 0)
  g = jax.grad(lambda a: losses.k3_kl(a, lq).sum())(jnp.asarray(lp))
  assert np.abs(np.asarray(g)).min() > 0


def test_per_attempt_sum_and_target_shift():
  x = np.arange(6, dtype=np.float32).reshape(1, 6)
  mask = np.array([[[0, 1, 1, 0, 0, 0]], [[0, 0, 0, 0, 1, 1]]], np.float32)
  np.testing.assert_array_equal(losses.per_attempt_sum(x, mask), [[3.0], [9.0]])
  np.testing.assert_array_equal(losses.shift_to_targets(x), [[0, 0, 1, 2, 3, 4]])


def test_adaptive_beta2_controller_by_hand():
  kw = dict(target_ratio=2.0, gain=0.1, beta_min=0.01, beta_max=1.0)
  ctl = lambda beta2, kl1, m2, **over: float(losses.adaptive_beta2(beta2, kl1, m2,
                                                                   **{**kw, **over}))
  # rho = 0.1 * 3 / (2 * 0.5) = 0.3 -> e = 0.7 clipped to 0.2 -> 0.1 * (1 + 0.02).
  assert ctl(0.1, 3.0, 0.5) == pytest.approx(0.102, rel=1e-6)
  # rho = 0.1 * 11 / (2 * 0.5) = 1.1 -> e = -0.1 -> 0.1 * 0.99 (KL term too big: beta2 falls).
  assert ctl(0.1, 11.0, 0.5) == pytest.approx(0.099, rel=1e-6)
  # rho = 0.5 * 40 / 1 = 20 -> e = -0.2 (clipped) -> 0.5 * 0.98.
  assert ctl(0.5, 40.0, 0.5) == pytest.approx(0.49, rel=1e-6)
  assert ctl(0.1, 10.0, 0.5) == pytest.approx(0.1, rel=1e-6)  # balanced: rho = 1 holds
  assert ctl(0.1, 0.0, 0.5) == pytest.approx(0.102, rel=1e-6)  # KL_1 = 0 (step 0): rises
  assert ctl(0.1, 5.0, 0.0) == pytest.approx(0.1, rel=1e-6)    # no y2 signal: holds
  assert ctl(1.0, 0.0, 0.5) == pytest.approx(1.0)              # clipped to beta_max ...
  assert ctl(0.0101, 1e3, 0.5) == pytest.approx(0.01)          # ... and to beta_min
  # The controller's input M2 = mean |A2 log pi(y2)| is a stage1_loss metric.
  rewards = np.stack([R1, np.array([1.0, 0.0, 0.0, 1.0])])
  _, m = losses.stage1_loss(SEQ_LP, KL, rewards, samples_per_prompt=2, beta1=0.01, beta2=0.1)
  assert float(m["pg_2_abs"]) == pytest.approx(np.mean(np.abs([1, -1, -1, 1] * SEQ_LP[1])))


def test_logprob_mismatch_by_hand():
  trainer = np.array([[-1.0, -2.0, -0.5, -3.0]])
  sampler = np.array([[-1.1, -2.0, -0.1, -9.0]])
  mask = np.array([[1.0, 1.0, 1.0, 0.0]])  # the last token is not generated: ignored.
  m = losses.logprob_mismatch(trainer, sampler, mask)
  # |delta| = 0.1, 0, 0.4; ratios e^0.1 = 1.105 and 1 inside [0.8, 1.25], e^-0.4 = 0.670 out.
  np.testing.assert_allclose(m["logprob_mismatch_mean"], 0.5 / 3, rtol=1e-6)
  np.testing.assert_allclose(m["logprob_mismatch_max"], 0.4, rtol=1e-6)
  np.testing.assert_allclose(m["ratio_outside_frac"], 1 / 3, rtol=1e-6)


def test_truncated_importance_weights_by_hand():
  logprob = jnp.array([[-1.0, -2.0, -0.7]])
  sampler = jnp.array([[-1.5, -1.0, -0.7]])
  w = losses.truncated_importance_weights(logprob, sampler, cap=1.5)
  # ratios e^0.5 = 1.6487 -> capped at 1.5, e^-1 = 0.3679, e^0 = 1.
  np.testing.assert_allclose(w, [[1.5, np.exp(-1.0), 1.0]], rtol=1e-6)
  # As a policy-gradient weight the ratio is a constant: d/dlogp of sum(w * logp) is w.
  mask = jnp.array([[[1.0, 1.0, 0.0]]])
  def weighted(lp):
    return losses.per_attempt_sum(losses.truncated_importance_weights(lp, sampler, 1.5) * lp,
                                  mask)[0, 0]
  np.testing.assert_allclose(weighted(logprob), 1.5 * -1.0 + np.exp(-1.0) * -2.0, rtol=1e-6)
  np.testing.assert_allclose(jax.grad(weighted)(logprob), [[1.5, np.exp(-1.0), 0.0]], rtol=1e-6)
  with pytest.raises(ValueError, match="cap must be > 0"):
    losses.truncated_importance_weights(logprob, sampler, cap=0.0)


# --- the RL baselines and offline first attempts, through train_step.objective_loss ---------------

# r1 = [0, 1 | 1, 0], r2 = [1, 0 | 0, 1] (k = 2): every group has signal in both attempts.
R2_MIXED = np.array([1.0, 0.0, 0.0, 1.0])
ADV1 = np.array([-1.0, 1.0, 1.0, -1.0])       # A(r1)
ADV2 = np.array([1.0, -1.0, -1.0, 1.0])       # A(r2), no bonus
ADV2_SHAPED = np.array([21.0, -21.0, -21.0, 21.0])  # R2 = r2 + 10 (r2 - r1) = [11, -10 | -10, 11]
BETA1, BETA2 = 0.01, 0.1


def _objective_grads(name, offline_first=None, **kw):
  from score_jax import train_step
  obj = train_step.ObjectiveConfig(name=name, samples_per_prompt=2, alpha=10.0, beta1=BETA1,
                                   beta2=BETA2, **kw)
  rewards = np.stack([R1, R2_MIXED])
  offline = None if offline_first is None else jnp.asarray(offline_first, jnp.float32)
  return jax.grad(lambda lp, kl: train_step.objective_loss(obj, lp, kl, rewards,
                                                           offline_first_e=offline)[0],
                  argnums=(0, 1))(jnp.asarray(SEQ_LP), jnp.asarray(KL))


def test_naive_r2_gradient_by_hand():
  # -A(r2) log pi(y2) + beta1 (KL_1 + KL_2): no y1 policy gradient, no beta2 pin on y1.
  g_lp, g_kl = _objective_grads("naive_r2")
  np.testing.assert_array_equal(g_lp[0], 0.0)
  np.testing.assert_allclose(g_lp[1], -ADV2 / 4)
  np.testing.assert_allclose(g_kl, np.full((2, 4), BETA1 / 4))


def test_naive_sum_gradient_by_hand():
  # -A(r1) log pi(y1) - A(r2) log pi(y2) + beta1 (KL_1 + KL_2): per-turn rewards, no bonus.
  g_lp, g_kl = _objective_grads("naive_sum")
  np.testing.assert_allclose(g_lp[0], -ADV1 / 4)
  np.testing.assert_allclose(g_lp[1], -ADV2 / 4)
  np.testing.assert_allclose(g_kl, np.full((2, 4), BETA1 / 4))


def test_single_turn_gradient_by_hand():
  # -A(r1) log pi(y1) + beta1 KL_1: y2 is neither rewarded nor regularised.
  g_lp, g_kl = _objective_grads("single_turn")
  np.testing.assert_allclose(g_lp[0], -ADV1 / 4)
  np.testing.assert_array_equal(g_lp[1], 0.0)
  np.testing.assert_allclose(g_kl[0], BETA1 / 4)
  np.testing.assert_array_equal(g_kl[1], 0.0)


@pytest.mark.parametrize("name,adv2", [("stage2", ADV2_SHAPED), ("naive_sum", ADV2),
                                       ("single_turn", None)])
def test_offline_first_attempts_get_no_first_policy_gradient(name, adv2):
  # Group 0's first attempts came from pi_ref: they only prompt y2 (paper §5.3).
  offline = np.array([1.0, 1.0, 0.0, 0.0])
  g_lp, g_kl = _objective_grads(name, offline)
  np.testing.assert_allclose(g_lp[0], -ADV1 * (1 - offline) / 4)
  np.testing.assert_array_equal(g_lp[0, :2], 0.0)
  if adv2 is not None:  # y2 is on-policy on every row: its term is unchanged.
    np.testing.assert_allclose(g_lp[1], -adv2 / 4)
  _, g_kl_online = _objective_grads(name)
  np.testing.assert_array_equal(g_kl, g_kl_online)  # the KL terms are unchanged.


@pytest.mark.parametrize("name", ["stage1", "naive_r2"])
def test_offline_first_attempts_leave_objectives_without_a_y1_term_unchanged(name):
  with_offline = _objective_grads(name, [1.0, 1.0, 0.0, 0.0])
  without = _objective_grads(name)
  jax.tree.map(np.testing.assert_array_equal, with_offline, without)


def test_objective_loss_refuses_attempt_counts_it_is_not_defined_for():
  from score_jax import train_step
  obj = train_step.ObjectiveConfig(name="stage2", samples_per_prompt=2)
  three = np.concatenate([REWARDS, REWARDS[:1]])
  with pytest.raises(ValueError, match="rl.num_attempts=2 .*got rl.num_attempts=3"):
    train_step.objective_loss(obj, np.concatenate([SEQ_LP, SEQ_LP[:1]]),
                              np.concatenate([KL, KL[:1]]), three)
  single = train_step.ObjectiveConfig(name="single_turn", samples_per_prompt=2)
  loss, _ = train_step.objective_loss(single, SEQ_LP[:1], KL[:1], REWARDS[:1])
  assert float(loss) == pytest.approx(-np.mean(np.array([-1.0, 1.0, 1.0, -1.0]) * SEQ_LP[0])
                                      + 0.01 * KL[0].mean())
