"""Episodes: exact token bookkeeping, masks, and log-probs against independent recomputation."""

import jax
import numpy as np
import pytest

from score_jax import losses, model, rollout, sampling, sharding
from tests.utils import random_params

INSTR = (7, 8, 9, 10)
TURN_END = 5
STOPS = (3, 5)
MAX_NEW = 6


@pytest.fixture(scope="module")
def setup():
  config = model.get_config("tiny", vocab_size=48)
  params = random_params(config, seed=0)
  rng = np.random.default_rng(0)
  lengths = np.array([5, 9, 3, 7], np.int32)
  prompts = np.zeros((4, 9), np.int32)
  for i, n in enumerate(lengths):
    prompts[i, :n] = rng.integers(11, 48, n)
  return config, params, prompts, lengths


def _rc(**kw):
  base = dict(samples_per_prompt=2, max_new_tokens=MAX_NEW, instruction_ids=INSTR,
              stop_tokens=STOPS, turn_end_id=TURN_END, temperature=0.0)
  return rollout.RolloutConfig(**{**base, **kw})


def _attempt(ep, a, e):
  return np.asarray(ep.attempt_tokens[a, e, :int(ep.attempt_length[a, e])]).tolist()


def test_turn2_context_is_exact_concatenation_and_what_the_sampler_saw(setup):
  config, params, prompts, lengths = setup
  ep = rollout.rollout(config, params, prompts, lengths, jax.random.key(0), rc=_rc())
  assert ep.tokens.shape[0] == 8
  assert bool(ep.truncated.any()) and not bool(ep.truncated.all())  # both cases covered
  for e in range(8):
    p = e // 2
    x1 = prompts[p, :lengths[p]].tolist()
    y1 = _attempt(ep, 0, e)
    close = [TURN_END] if bool(ep.truncated[0, e]) else []
    expected_ctx2 = x1 + y1 + close + list(INSTR)
    ctx2_len = int(ep.context_length[1, e])
    assert np.asarray(ep.tokens[e, :ctx2_len]).tolist() == expected_ctx2
    # Greedy: the sampler given exactly this context reproduces y2.
    y2_again = sampling.generate(config, params, [expected_ctx2], max_new_tokens=MAX_NEW,
                                 stop_tokens=STOPS)[0]
    assert y2_again == _attempt(ep, 1, e)
    full = expected_ctx2 + _attempt(ep, 1, e)
    assert int(ep.length[e]) == len(full)
    assert np.asarray(ep.tokens[e, :len(full)]).tolist() == full
    assert np.all(np.asarray(ep.tokens[e, len(full):]) == 0)


def test_loss_masks_select_exactly_the_generated_tokens(setup):
  config, params, prompts, lengths = setup
  ep = rollout.rollout(config, params, prompts, lengths, jax.random.key(0), rc=_rc())
  mask = np.asarray(ep.loss_mask)
  assert mask.shape == (2,) + ep.tokens.shape
  assert not np.any(mask[0] * mask[1])  # attempts never overlap
  for a in range(2):
    for e in range(8):
      selected = np.asarray(ep.tokens[e])[mask[a, e] == 1].tolist()
      assert selected == _attempt(ep, a, e)


def test_teacher_forced_logprobs_equal_sampler_logprobs(setup):
  config, params, prompts, lengths = setup
  rc = _rc(temperature=1.0, samples_per_prompt=3)
  ep = rollout.rollout(config, params, prompts, lengths, jax.random.key(3), rc=rc)
  logits = model.logits(config, params, ep.tokens)
  recomputed = np.asarray(losses.next_token_logprobs(logits, ep.tokens))
  for a in range(2):
    m = np.asarray(ep.loss_mask[a]) == 1
    # fp32: 1e-5 absolute plus 1e-5 relative (log-probs here reach -10).
    np.testing.assert_allclose(recomputed[m], np.asarray(ep.sampler_logprobs)[m], atol=1e-5,
                               rtol=1e-5)
  outside = np.asarray(ep.loss_mask).sum(0) == 0
  assert np.all(np.asarray(ep.sampler_logprobs)[outside] == 0)


def test_offline_first_attempts_come_from_reference(setup):
  config, params, prompts, lengths = setup
  ref = random_params(config, seed=1)
  ep = rollout.rollout(config, params, prompts, lengths, jax.random.key(0),
                       rc=_rc(offline_first_fraction=0.5), ref_params=ref)
  np.testing.assert_array_equal(ep.offline_first, [True] * 4 + [False] * 4)
  for e in range(8):
    p = e // 2
    source = ref if e < 4 else params
    y1 = sampling.generate(config, source, [prompts[p, :lengths[p]].tolist()],
                           max_new_tokens=MAX_NEW, stop_tokens=STOPS)[0]
    assert y1 == _attempt(ep, 0, e)
  with pytest.raises(ValueError, match="needs ref_params"):
    rollout.rollout(config, params, prompts, lengths, jax.random.key(0),
                    rc=_rc(offline_first_fraction=0.5))


def test_offline_first_attempts_take_whole_prompt_groups(setup):
  # 0.4 of 4 prompts rounds to 2 prompts = 4 of 8 episodes (0.4 of the 8 episodes would be 3,
  # splitting prompt 1's group between pi_ref and pi_theta).
  config, params, prompts, lengths = setup
  ep = rollout.rollout(config, params, prompts, lengths, jax.random.key(0),
                       rc=_rc(offline_first_fraction=0.4), ref_params=random_params(config, 1))
  offline_pk = np.asarray(ep.offline_first).reshape(4, 2)
  np.testing.assert_array_equal(offline_pk, [[True, True], [True, True], [False, False],
                                             [False, False]])


def test_chunked_and_sharded_rollouts_equal_single_call(setup):
  config, params, prompts, lengths = setup
  rc = _rc()
  whole = rollout.rollout(config, params, prompts, lengths, jax.random.key(0), rc=rc)
  done = []  # the progress callback: prompts done after each chunk, and no change to the result
  chunked = rollout.rollout_in_chunks(config, params, prompts, lengths, jax.random.key(0), rc=rc,
                                      micro_batch=2, on_chunk=done.append)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(chunked), jax.device_get(whole))
  assert done == list(range(2, prompts.shape[0] + 1, 2))
  mesh = sharding.make_mesh((2, 2, 2))
  with jax.set_mesh(mesh):
    sharded = rollout.rollout(config, sharding.shard_params(params, mesh),
                              jax.device_put(prompts, sharding.batch_sharding(mesh, 2)),
                              jax.device_put(lengths, sharding.batch_sharding(mesh, 1)),
                              jax.random.key(0), rc=rc)
  np.testing.assert_array_equal(sharded.tokens, whole.tokens)
  np.testing.assert_allclose(sharded.sampler_logprobs, whole.sampler_logprobs, atol=1e-4)
  with pytest.raises(ValueError, match="do not split into micro-batches"):
    rollout.rollout_in_chunks(config, params, prompts, lengths, jax.random.key(0), rc=rc,
                              micro_batch=3)


def test_three_attempts_and_texts(setup):
  config, params, prompts, lengths = setup
  ep = rollout.rollout(config, params, prompts[:2], lengths[:2], jax.random.key(0),
                       rc=_rc(num_attempts=3, samples_per_prompt=1))
  assert ep.attempt_tokens.shape[:2] == (3, 2)
  for e in range(2):
    ctx3 = int(ep.context_length[2, e])
    ctx2 = int(ep.context_length[1, e])
    y2 = _attempt(ep, 1, e)
    close = [TURN_END] if bool(ep.truncated[1, e]) else []
    assert np.asarray(ep.tokens[e, ctx2:ctx3]).tolist() == y2 + close + list(INSTR)
  texts = rollout.attempt_texts(ep, lambda ids: ",".join(map(str, ids)), stop_tokens=STOPS)
  for a in range(3):
    ids = _attempt(ep, a, 0)
    if ids and ids[-1] in STOPS:
      ids = ids[:-1]
    assert texts[a][0] == ",".join(map(str, ids))


def test_memory_function_and_micro_batch_choice():
  config = model.get_config("tiny")
  rc = _rc()
  per_prompt = rollout.rollout_memory_bytes(config, rc, 1, 16)
  assert rollout.rollout_memory_bytes(config, rc, 8, 16) == 8 * per_prompt
  # Last attempt's context: 16 + 6 + 1 + 4 = 27 -> bucket 32; cache 32 + 6 - 1 = 37 slots.
  assert per_prompt > sampling.kv_cache_bytes(config, 2, 37)
  assert rollout.pick_micro_batch(config, rc, 8, 16, budget_bytes=4 * per_prompt) == 4
  with pytest.raises(ValueError, match="over the budget"):
    rollout.pick_micro_batch(config, rc, 8, 16, budget_bytes=per_prompt // 2)
