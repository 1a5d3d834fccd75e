"""Cross-implementation oracle: our SCoRe objective == a PyTorch / transformers one.

On ONE batch of episodes from our rollout, `benchmarks.torch_score_step.stage_loss`
(transformers' Gemma 2 on the same weights, full log-softmax, explicit KL sum) gives
the same Stage I / II loss and gradient norm as `train_step.make_rl_step` (chunked
logits, our transformer), and its id-level turn-2 context / episode assembly
reproduces our rollout's episode tokens and loss masks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from benchmarks import torch_score_step as tss  # noqa: E402
from score_jax import model, rollout, sft, sharding, train_step  # noqa: E402
from tests.utils import random_params  # noqa: E402

K, VOCAB = 2, 64
STOPS = tuple(range(1, 9))  # many stop ids: some attempts stop, others hit max_new_tokens
RC = rollout.RolloutConfig(samples_per_prompt=K, max_new_tokens=6, instruction_ids=(40, 41, 42),
                           stop_tokens=STOPS, turn_end_id=1, pad_id=0)
PROMPTS = [[2, 20, 21, 22, 23], [2, 30, 31, 32, 33, 34, 35], [2, 50, 51]]


@pytest.fixture(scope="module")
def setup():
  config = model.get_config("tiny", vocab_size=VOCAB)  # d 64, 2 layers, window 16
  params = random_params(config, 0)
  # The reference: a perturbed copy, so KL != 0 and has a gradient.
  noise = random_params(config, 1)
  ref = jax.tree.map(lambda p, n: p + 0.05 * n, params, noise)
  tokens = np.zeros((len(PROMPTS), 8), np.int32)
  for i, p in enumerate(PROMPTS):
    tokens[i, :len(p)] = p
  lengths = np.array([len(p) for p in PROMPTS], np.int32)
  episodes = rollout.rollout(config, params, tokens, lengths, jax.random.key(3), rc=RC)
  # Fixed rewards with within-group variance in both attempts: every term is non-zero.
  rewards = np.array([[0, 1, 1, 0, 1, 1], [1, 1, 0, 1, 0, 1]], np.float32)
  batch = {"tokens": np.asarray(episodes.tokens), "loss_mask": np.asarray(episodes.loss_mask),
           "rewards": rewards}
  return config, params, ref, episodes, batch


def _ours(config, params, ref, batch, obj):
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-4))
  state = sft.init_train_state(jax.tree.map(jnp.copy, params), opt, mesh)
  ref = sharding.shard_params(ref, mesh)
  step = train_step.make_rl_step(config, opt, obj, state, ref, mesh)
  _, metrics = step(state, ref, batch)
  return jax.device_get(metrics)


@pytest.mark.parametrize("stage,flat", [("stage2", False), ("stage1", False), ("stage2", True)])
def test_torch_loss_and_grad_norm_equal_ours(setup, stage, flat):
  """flat: equal rewards, so A = 0 and the whole gradient is the KL's (else the PG dominates)."""
  config, params, ref, _, batch = setup
  if flat:
    batch = {**batch, "rewards": np.ones_like(batch["rewards"])}
  # 5 positions per logits block: ours takes the chunked path, torch the full logits.
  obj = train_step.ObjectiveConfig(name=stage, samples_per_prompt=K, alpha=10.0, beta1=0.01,
                                   beta2=0.1, logits_chunk=5)
  ours = _ours(config, params, ref, batch, obj)
  policy = tss.load_torch_model(config, params).train()
  ref_model = tss.load_torch_model(config, ref).eval().requires_grad_(False)
  loss, terms = tss.stage_loss(policy, ref_model, torch.tensor(batch["tokens"]).long(),
                               torch.tensor(batch["loss_mask"]), torch.tensor(batch["rewards"]),
                               stage=stage, samples_per_prompt=K, alpha=10.0, beta1=0.01,
                               beta2=0.1)
  loss.backward()
  grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0))
  assert ours["kl_1"] > 1e-3 and ours["kl_2"] > 1e-3
  assert (ours["pg_loss"] == 0.0) if flat else abs(ours["pg_loss"]) > 0.1
  assert loss.item() == pytest.approx(float(ours["loss"]), rel=1e-4)
  for name in ("pg_loss", "kl_1", "kl_2"):
    assert terms[name] == pytest.approx(float(ours[name]), rel=1e-4, abs=1e-6), name
  assert grad_norm > 0 and grad_norm == pytest.approx(float(ours["grad_norm"]), rel=1e-3)


def test_stage_loss_rejects_an_unknown_stage(setup):
  config, params, _, _, batch = setup
  policy = tss.load_torch_model(config, params)
  with pytest.raises(ValueError, match="stage1' or 'stage2"):
    tss.stage_loss(policy, policy, torch.tensor(batch["tokens"]).long(),
                   torch.tensor(batch["loss_mask"]), torch.tensor(batch["rewards"]),
                   stage="naive", samples_per_prompt=K, alpha=1.0, beta1=0.0, beta2=0.0)


def test_torch_episode_assembly_equals_our_rollout(setup):
  _, _, _, episodes, _ = setup
  tokens_ae, lengths_ae = np.asarray(episodes.attempt_tokens), np.asarray(episodes.attempt_length)
  truncated = np.asarray(episodes.truncated)[0]
  assert truncated.any() and not truncated.all()  # both turn-2 context forms are covered
  y1 = [row[:n].tolist() for row, n in zip(tokens_ae[0], lengths_ae[0])]
  y2 = [row[:n].tolist() for row, n in zip(tokens_ae[1], lengths_ae[1])]
  tokens, mask = tss.build_episodes(PROMPTS, y1, y2, truncated.tolist(), RC.instruction_ids,
                                    RC.turn_end_id, RC.pad_id, K)
  ours_tokens, ours_mask = np.asarray(episodes.tokens), np.asarray(episodes.loss_mask)
  width = tokens.shape[1]  # torch pads to the longest episode; ours to the buffer length
  assert not ours_tokens[:, width:].any() and not ours_mask[:, :, width:].any()
  np.testing.assert_array_equal(tokens, ours_tokens[:, :width])
  np.testing.assert_array_equal(mask, ours_mask[:, :, :width])
  # The attempt-2 context is what our rollout conditioned y2 on.
  for e in range(len(y1)):
    context = tss.turn2_context(PROMPTS[e // K], y1[e], truncated[e], RC.instruction_ids,
                                RC.turn_end_id)
    assert len(context) == int(np.asarray(episodes.context_length)[1, e])


def test_benchmark_flags_name_the_problem():
  with pytest.raises(SystemExit):
    tss.parse_args(["--samples", "1"])  # RLOO needs two samples per prompt
  with pytest.raises(SystemExit):
    tss.parse_args(["--model", "huge"])
  args = tss.parse_args(["--quick"])
  assert (args.prompts, args.samples, args.new_tokens, args.reps) == (4, 2, 8, 1)
