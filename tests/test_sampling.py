"""The KV-cache sampler against independent oracles: the cache-free training forward,
softmax frequencies, hand-computed sizes, and single-device runs for sharded ones."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from score_jax import model, sampling, sharding
from score_jax.model import transformer
from tests.utils import random_params

# Left-padded together into one 32-token bucket; 25 is longer than the sliding
# windows of tiny Gemma 2 (16) and tiny Gemma 3 (8), and generation runs past them.
PROMPT_LENGTHS = (25, 3, 11)
MAX_NEW = 10


@pytest.fixture(scope="module")
def models():
  """Preset name -> (config, params), one per Gemma generation."""
  return {name: (model.get_config(name), random_params(model.get_config(name), 0, 1.0))
          for name in ("tiny-gemma", "tiny", "tiny-gemma3")}


def _prompts(vocab: int, lengths=PROMPT_LENGTHS, seed: int = 0) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return [rng.integers(1, vocab, size=n).tolist() for n in lengths]


def _sample_at_temperature_1(config, params):
  """(prompts, sampler output, new tokens per row) of the standard prompts, key 3."""
  prompts = _prompts(config.vocab_size)
  tokens, lengths = sampling.pad_prompts(prompts)
  settings = sampling.SamplingConfig(max_new_tokens=MAX_NEW, temperature=1.0)
  out = sampling.sample(config, params, tokens, lengths, jax.random.key(3), settings=settings)
  return prompts, out, [row.tolist() for row in np.asarray(out.tokens)]


def _right_padded(seqs: list[list[int]], width: int) -> jnp.ndarray:
  out = np.zeros((len(seqs), width), np.int32)
  for row, seq in enumerate(seqs):
    out[row, :len(seq)] = seq
  return jnp.asarray(out)


_full_logits = jax.jit(model.logits, static_argnums=0)


def _teacher_forced_logits(config, params, prompts, new_tokens) -> list[np.ndarray]:
  """Cache-free forward on prompt + new tokens: row b gives logits [n_new, V] that
  predicted each new token (causal, so right padding does not affect them)."""
  seqs = [p + t for p, t in zip(prompts, new_tokens)]
  logits = np.asarray(_full_logits(config, params, _right_padded(seqs, max(map(len, seqs)))))
  return [logits[b, len(p) - 1:len(p) - 1 + len(t)] for b, (p, t) in
          enumerate(zip(prompts, new_tokens))]


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny", "tiny-gemma3"])
def test_greedy_equals_stepwise_argmax_of_full_forward(models, name):
  config, params = models[name]
  prompts = _prompts(config.vocab_size)
  got = sampling.generate(config, params, prompts, max_new_tokens=MAX_NEW)

  # Oracle: re-run the full forward on each growing sequence (no cache, no left
  # padding); one fixed width so it compiles once.
  seqs = [list(p) for p in prompts]
  width = max(PROMPT_LENGTHS) + MAX_NEW
  min_gap = np.inf
  for _ in range(MAX_NEW):
    logits = np.asarray(_full_logits(config, params, _right_padded(seqs, width)))
    for row, seq in enumerate(seqs):
      last = logits[row, len(seq) - 1]
      top2 = np.sort(last)[-2:]
      min_gap = min(min_gap, top2[1] - top2[0])
      seq.append(int(last.argmax()))
  want = [s[len(p):] for s, p in zip(seqs, prompts)]
  assert min_gap > 1e-4, f"argmax margin {min_gap} too small for a meaningful comparison"
  assert got == want
  assert any(len(set(w)) > 3 for w in want), f"degenerate continuations {want}"


def test_logprobs_equal_training_forward_with_softcaps(models):
  config = model.get_config("tiny")
  assert config.final_logit_softcap and config.attn_logit_softcap  # Gemma 2 caps are on.
  # A milder final norm than `models`: fp32 round-off grows with the logits' size
  # (|logits| <= 3.3 here; 1e-5 is ~20 ulp of them), while the cap still matters.
  params = random_params(config, 0, 1.0)
  prompts, out, new = _sample_at_temperature_1(config, params)
  logits = _teacher_forced_logits(config, params, prompts, new)
  want = np.stack([np.take_along_axis(np.asarray(jax.nn.log_softmax(lg)),
                                      np.asarray(t)[:, None], 1)[:, 0]
                   for lg, t in zip(logits, new)])
  np.testing.assert_allclose(np.asarray(out.logprobs), want, atol=1e-5, rtol=0)
  # The comparison is sharp enough to catch a dropped final soft-cap (mistake 8).
  uncapped = [np.arctanh(lg / config.final_logit_softcap) * config.final_logit_softcap
              for lg in logits]
  want_uncapped = np.stack([np.take_along_axis(np.asarray(jax.nn.log_softmax(lg)),
                                               np.asarray(t)[:, None], 1)[:, 0]
                            for lg, t in zip(uncapped, new)])
  assert np.abs(want_uncapped - np.asarray(out.logprobs)).max() > 1e-3


# XLA may skip a program's bf16 roundings inside fusions (xla_allow_excess_precision, on
# by default), and the sampler's and the trainer's programs fuse differently: a
# sampler/trainer mismatch of ~0.004-0.008 nats per token on these models (~0.4-0.75x
# the bf16-vs-fp32 gap; train_step logs it as rl/logprob_mismatch_*). With the flag off
# both round at the same points and agree to fp32 round-off, which this test pins.
EXACT_BF16 = "--xla_allow_excess_precision=false"


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny", "tiny-gemma3"])
def test_bf16_sampler_logprobs_equal_bf16_training_forward(name):
  if EXACT_BF16 not in os.environ.get("XLA_FLAGS", ""):  # the flag is read at JAX start-up.
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {EXACT_BF16}"}
    test = f"{__file__}::test_bf16_sampler_logprobs_equal_bf16_training_forward[{name}]"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             test], env=env, capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)), check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return
  c16 = model.get_config(name, dtype="bfloat16")
  params = random_params(c16, 0, 1.0)
  prompts, out, new = _sample_at_temperature_1(c16, params)

  def teacher_forced(config):
    return np.stack([np.take_along_axis(np.asarray(jax.nn.log_softmax(lg)),
                                        np.asarray(t)[:, None], 1)[:, 0] for lg, t in
                     zip(_teacher_forced_logits(config, params, prompts, new), new)])

  # Oracle: the cache-free bf16 forward; as tight as the fp32 test (measured <= 1e-6).
  np.testing.assert_allclose(np.asarray(out.logprobs), teacher_forced(c16), atol=1e-5, rtol=0)
  # ... and it really ran in bf16: the fp32 forward is 1e-2 away.
  vs_fp32 = np.abs(np.asarray(out.logprobs) - teacher_forced(model.get_config(name)))
  assert vs_fp32.mean() > 1e-3


def test_top_k_top_p_stay_in_support_and_logprobs_stay_untempered(models):
  config, params = models["tiny"]
  temperature, top_k, top_p = 0.7, 20, 0.6
  prompts = _prompts(config.vocab_size, lengths=(5,) * 8, seed=1)
  tokens, lengths = sampling.pad_prompts(prompts)
  settings = sampling.SamplingConfig(max_new_tokens=MAX_NEW, temperature=temperature,
                                     top_k=top_k, top_p=top_p)
  out = sampling.sample(config, params, tokens, lengths, jax.random.key(5), settings=settings)
  new = [row.tolist() for row in np.asarray(out.tokens)]
  logits = _teacher_forced_logits(config, params, prompts, new)
  for lg_tv, toks, logps in zip(logits, new, np.asarray(out.logprobs)):
    for lg_v, tok, logp in zip(lg_tv, toks, logps):
      order = np.argsort(-lg_v, kind="stable")[:top_k]
      probs = np.exp(lg_v[order] / temperature - np.max(lg_v[order] / temperature))
      probs /= probs.sum()
      nucleus = order[np.cumsum(probs) - probs < top_p]
      assert tok in nucleus
      # The sampler's decode path (unrolled layers, [out, in] weight copies, cached K/V) sums
      # in another order than the teacher-forced forward: fp32 rounding of logits ~O(10).
      # Measured max 1.4e-5 on an AMD avx512 CPU (<= 1e-5 on the AVX2 one); bound 3e-5.
      np.testing.assert_allclose(logp, jax.nn.log_softmax(lg_v)[tok], atol=3e-5)


@pytest.fixture(scope="module")
def vocab8():
  """A vocab-8 Gemma 2 model and the first-token distribution for one prompt."""
  config = model.get_config("tiny", vocab_size=8)
  params = random_params(config, 0, 0.0)
  prompt = [1, 2, 3, 4]
  logits = np.asarray(model.logits(config, params, jnp.asarray([prompt])))[0, -1]
  return config, params, prompt, logits.astype(np.float64)


def _first_token_counts(vocab8, num: int = 4000, **settings_kw) -> np.ndarray:
  config, params, prompt, _ = vocab8
  tokens, lengths = sampling.pad_prompts([prompt] * num)
  settings = sampling.SamplingConfig(max_new_tokens=1, **settings_kw)
  out = sampling.sample(config, params, tokens, lengths, jax.random.key(11), settings=settings)
  return np.bincount(np.asarray(out.tokens)[:, 0], minlength=config.vocab_size)


def _softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max())
  return e / e.sum()


def _chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
  support = probs > 0
  assert counts[~support].sum() == 0, f"tokens outside the support: {counts}"
  expected = probs[support] * counts.sum()
  assert expected.min() >= 5, "too few expected draws per token for the chi-square test"
  return stats.chisquare(counts[support], expected).pvalue


# Tolerance: under a correct sampler the statistic is chi-square with (support - 1)
# dof, so p > 1e-3 rejects a correct sampler for 0.1% of seeds (the seed is fixed,
# so the test is deterministic); with 4000 draws a distribution off by a factor 2
# in temperature gives p < 1e-6, as asserted below.
P_MIN = 1e-3


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_temperature_sampling_matches_softmax_frequencies(vocab8, temperature):
  logits = vocab8[3]
  counts = _first_token_counts(vocab8, temperature=temperature)
  assert _chi2_pvalue(counts, _softmax(logits / temperature)) > P_MIN
  wrong_temperature = temperature * 2.0
  assert _chi2_pvalue(counts, _softmax(logits / wrong_temperature)) < 1e-6


def test_top_k_samples_exactly_the_top_k_renormalised(vocab8):
  logits, k = vocab8[3], 3
  counts = _first_token_counts(vocab8, temperature=1.0, top_k=k)
  top = np.argsort(-logits)[:k]
  probs = np.zeros_like(logits)
  probs[top] = _softmax(logits[top])
  assert set(np.flatnonzero(counts)) == set(top.tolist())
  assert _chi2_pvalue(counts, probs) > P_MIN


def test_top_p_samples_only_the_nucleus(vocab8):
  logits = vocab8[3]
  order = np.argsort(-logits)
  cumulative = np.cumsum(_softmax(logits)[order])
  # p halfway between the 3rd and 4th cumulative masses: the nucleus is the top 4.
  top_p = float((cumulative[2] + cumulative[3]) / 2)
  nucleus = order[:4]
  counts = _first_token_counts(vocab8, temperature=1.0, top_p=top_p)
  probs = np.zeros_like(logits)
  probs[nucleus] = _softmax(logits[nucleus])
  assert set(np.flatnonzero(counts)) == set(nucleus.tolist())
  assert _chi2_pvalue(counts, probs) > P_MIN


def _first_new_token_once(seq: list[int]) -> int:
  """Index of a token in `seq` that does not occur earlier in it (beyond index 1)."""
  for i in range(2, len(seq)):
    if seq[i] not in seq[:i]:
      return i
  raise AssertionError(f"no usable stop position in {seq}")


def _length_until_stop(seq: list[int], stops) -> int:
  return next((i + 1 for i, t in enumerate(seq) if t in stops), len(seq))


def test_stop_tokens_lengths_and_truncation(models):
  config, params = models["tiny"]
  prompts = _prompts(config.vocab_size, lengths=(6, 9), seed=2)
  free = sampling.generate(config, params, prompts, max_new_tokens=MAX_NEW)
  stop_at = _first_new_token_once(free[0])
  stop = free[0][stop_at]
  # Two stop tokens, one of them absent from the greedy paths: row 0 stops, row 1 does not.
  stops = (stop, 0)
  assert not set(stops) & set(free[1]), "pick another seed: row 1 must not hit a stop token"
  tokens, lengths = sampling.pad_prompts(prompts)
  settings = sampling.SamplingConfig(max_new_tokens=MAX_NEW, stop_tokens=stops, pad_id=7)
  out = sampling.sample(config, params, tokens, lengths, None, settings=settings)

  np.testing.assert_array_equal(out.lengths, [stop_at + 1, MAX_NEW])
  np.testing.assert_array_equal(out.truncated, [False, True])
  np.testing.assert_array_equal(out.tokens[0],
                                free[0][:stop_at + 1] + [7] * (MAX_NEW - stop_at - 1))
  np.testing.assert_array_equal(out.tokens[1], free[1])
  assert np.all(np.asarray(out.logprobs)[0, stop_at + 1:] == 0)
  assert np.all(np.asarray(out.logprobs)[0, :stop_at + 1] < 0)
  assert int(out.num_steps) == MAX_NEW

  # Both rows stop: the loop exits early, after the longer of the two; `generate`
  # (same settings, so the same compiled sampler) cuts each row after its stop.
  both = (stop, free[1][_first_new_token_once(free[1])])
  want_lengths = [_length_until_stop(row, both) for row in free]
  settings = sampling.SamplingConfig(max_new_tokens=MAX_NEW, stop_tokens=both)
  out = sampling.sample(config, params, tokens, lengths, None, settings=settings)
  np.testing.assert_array_equal(out.lengths, want_lengths)
  assert int(out.num_steps) == max(want_lengths) < MAX_NEW
  assert not np.any(out.truncated)
  assert sampling.generate(config, params, prompts, max_new_tokens=MAX_NEW,
                           stop_tokens=list(both)) == [
                               row[:n] for row, n in zip(free, want_lengths)]


def test_per_sequence_limits(models):
  config, params = models["tiny"]
  prompts = _prompts(config.vocab_size, lengths=(6, 9), seed=2)
  free = sampling.generate(config, params, prompts, max_new_tokens=MAX_NEW)
  tokens, lengths = sampling.pad_prompts(prompts)
  settings = sampling.SamplingConfig(max_new_tokens=MAX_NEW)
  out = sampling.sample(config, params, tokens, lengths, None, settings=settings,
                        max_new_tokens_b=jnp.array([2, 5]))
  np.testing.assert_array_equal(out.lengths, [2, 5])
  np.testing.assert_array_equal(out.truncated, [True, True])
  np.testing.assert_array_equal(out.tokens[0], free[0][:2] + [0] * (MAX_NEW - 2))
  np.testing.assert_array_equal(out.tokens[1], free[1][:5] + [0] * (MAX_NEW - 5))
  assert int(out.num_steps) == 5


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (1, 2, 4), (8, 1, 1)])
def test_sharded_greedy_equals_single_device(models, mesh_shape):
  config, params = models["tiny"]  # 4 query heads, 2 kv heads of dim 16, 2 layers
  prompts = _prompts(config.vocab_size, lengths=(25, 3, 11, 7, 16, 1, 30, 9), seed=4)
  tokens, lengths = sampling.pad_prompts(prompts)
  settings = sampling.SamplingConfig(max_new_tokens=MAX_NEW)
  single = sampling.sample(config, params, tokens, lengths, None, settings=settings)

  mesh = sharding.make_mesh(mesh_shape)
  with jax.set_mesh(mesh):
    params = sharding.shard_params(params, mesh)
    tokens = jax.device_put(tokens, sharding.batch_sharding(mesh, 2))
    lengths = jax.device_put(lengths, sharding.batch_sharding(mesh, 1))
    dparams = sampling.decode_weights(config, params)  # as rollout_in_chunks does.
    compiled = sampling.sample.lower(config, params, tokens, lengths, None,
                                     settings=settings, dparams=dparams).compile()
    out = compiled(params, tokens, lengths, None, dparams=dparams)
  np.testing.assert_array_equal(out.tokens, single.tokens)
  np.testing.assert_array_equal(out.lengths, single.lengths)
  # Sharded matmuls add partial sums in another order: fp32 round-off (~1e-5
  # here), not a different computation.
  np.testing.assert_allclose(out.logprobs, single.logprobs, atol=1e-4)

  # Each device holds its slice of every layer's decode cache (keys [B, K, S, H],
  # values [B, K, H, S]) and of the stacked prefill cache [L, B, P, K, H]: batch
  # over data x fsdp, kv heads over tensor when it divides them (not for tensor=4).
  data, fsdp, tensor = mesh_shape
  width = tokens.shape[1]
  cache_len = sampling.cache_length(width, MAX_NEW)
  heads, layers, head_dim = config.num_kv_heads, config.num_layers, config.head_dim
  local_heads = heads // tensor if heads % tensor == 0 else heads
  local_batch = len(prompts) // (data * fsdp)
  hlo = compiled.as_text()
  assert f"f32[{local_batch},{local_heads},{cache_len},{head_dim}]" in hlo
  assert f"f32[{local_batch},{local_heads},{head_dim},{cache_len}]" in hlo
  assert f"f32[{len(prompts)},{heads},{cache_len},{head_dim}]" not in hlo
  assert f"f32[{layers},{local_batch},{width},{local_heads},{head_dim}]" in hlo
  assert f"f32[{layers},{len(prompts)},{width},{heads},{head_dim}]" not in hlo
  assert out.tokens.sharding.shard_shape(out.tokens.shape)[0] == len(prompts) // (data * fsdp)


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny", "tiny-gemma3"])
def test_unrolled_decode_forward_equals_training_forward(models, name):
  # The decode loop's forward (per-layer transposed weights, per-layer cache) against
  # the cache-free training forward on the whole sequence: prefill 20 tokens (more
  # than the tiny Gemma 3 window of 8), then feed 3 more one at a time.
  config, params = models[name]
  tokens_bt = jnp.asarray(np.random.default_rng(1).integers(1, config.vocab_size, (2, 23)),
                          jnp.int32)
  positions_bt = jnp.broadcast_to(jnp.arange(23, dtype=jnp.int32), tokens_bt.shape)
  want_btd, _ = model.forward_hidden(config, params, tokens_bt, positions_bt)
  dparams = transformer.decode_params(config, params)
  assert dparams["layers"][0]["attn"]["q_einsum"]["w"].shape == (
      config.num_heads * config.head_dim, config.d_model)
  prompt_cache = model.init_cache(config, 2, 20)
  _, prompt_cache = model.forward_hidden(config, params, tokens_bt[:, :20], positions_bt[:, :20],
                                         cache=prompt_cache)
  cache = transformer.unstack_cache(prompt_cache, 23)
  assert len(cache["k"]) == config.num_layers
  assert cache["k"][0].shape == (2, config.num_kv_heads, 23, config.head_dim)
  assert cache["v"][0].shape == (2, config.num_kv_heads, config.head_dim, 23)
  np.testing.assert_array_equal(cache["pos"][:, 20:], -1)
  for t in range(20, 23):
    got_b1d, cache = transformer.forward_hidden_unrolled(
        config, dparams, tokens_bt[:, t:t + 1], positions_bt[:, t:t + 1], cache=cache,
        write_index=t)
    # Transposed weights change the fp32 summation order: round-off (~3e-5 on
    # hidden values up to ~6 here), where a wrong layout or mask would be O(1).
    np.testing.assert_allclose(got_b1d[:, 0], want_btd[:, t], atol=1e-4, rtol=1e-4)
  with pytest.raises(ValueError, match="smaller than the cache"):
    transformer.unstack_cache(prompt_cache, 19)


def test_one_compile_per_bucket(models):
  config, params = models["tiny-gemma"]
  # max_new_tokens=3 is used by no other test, so the first call here compiles.
  kw = dict(max_new_tokens=3)
  before = sampling.sample._cache_size()
  for lengths in [(3, 16), (9, 2), (12, 5)]:  # all in the 16-token bucket
    sampling.generate(config, params, _prompts(config.vocab_size, lengths), **kw)
  assert sampling.sample._cache_size() - before == 1
  sampling.generate(config, params, _prompts(config.vocab_size, (17, 4)), **kw)  # bucket 32
  assert sampling.sample._cache_size() - before == 2


def test_bucket_length():
  assert [sampling.bucket_length(n) for n in (1, 15, 16, 17, 33, 100)] == [16, 16, 16, 32, 64,
                                                                           128]
  tokens, lengths = sampling.pad_prompts([[5, 6, 7], [8]], pad_id=0)
  np.testing.assert_array_equal(lengths, [3, 1])
  np.testing.assert_array_equal(tokens[:, -3:], [[5, 6, 7], [0, 0, 8]])
  assert tokens.shape == (2, 16) and not tokens[:, :-3].any()


def test_kv_cache_bytes():
  config = model.get_config("tiny")  # 2 layers, 2 kv heads of dim 16
  # k and v: 2 * L2 * B3 * S10 * K2 * H16 floats of 4 bytes, plus int32 positions [3, 10].
  assert sampling.kv_cache_bytes(config, 3, 10) == 2 * 2 * 3 * 10 * 2 * 16 * 4 + 3 * 10 * 4
  assert sampling.kv_cache_bytes(config, 3, 10, "bfloat16") == 2 * 2 * 3 * 10 * 2 * 16 * 2 + 120
  cache = model.init_cache(config, 3, 10)
  assert sampling.kv_cache_bytes(config, 3, 10) == sum(x.nbytes for x in cache.values())
  per_layer = jax.tree.leaves(transformer.unstack_cache(model.init_cache(config, 3, 4), 10))
  assert sampling.kv_cache_bytes(config, 3, 10) == sum(x.nbytes for x in per_layer)
  assert sampling.cache_length(prompt_width=16, max_new_tokens=8) == 23


def test_bad_inputs_raise_clear_errors(models):
  config, params = models["tiny-gemma"]
  with pytest.raises(ValueError, match="needs a PRNG key"):
    sampling.generate(config, params, [[1, 2]], max_new_tokens=2, temperature=1.0)
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    sampling.pad_prompts([[1], []])
  with pytest.raises(ValueError, match="no prompts"):
    sampling.pad_prompts([])
  with pytest.raises(ValueError, match="max_new_tokens"):
    sampling.SamplingConfig(max_new_tokens=0)
  with pytest.raises(ValueError, match="temperature"):
    sampling.SamplingConfig(max_new_tokens=1, temperature=-1.0)
  with pytest.raises(ValueError, match="top_k"):
    sampling.SamplingConfig(max_new_tokens=1, top_k=0)
  with pytest.raises(ValueError, match="top_p"):
    sampling.SamplingConfig(max_new_tokens=1, top_p=1.5)
  with pytest.raises(ValueError, match="stop_tokens"):
    sampling.SamplingConfig(max_new_tokens=1, stop_tokens=("<eos>",))


def _decode_loop_copies(config, batch: int, width: int, new: int) -> list[tuple[str, tuple]]:
  """(op name, output dims) of every copy / transpose in the compiled decode loop's body."""
  import re  # pylint: disable=import-outside-toplevel
  params = jax.eval_shape(lambda: model.init_params(config, jax.random.key(0)))
  dparams = jax.eval_shape(sampling.decode_weights, config, params)
  prompt = jax.ShapeDtypeStruct((batch, width), jnp.int32)
  hlo = sampling.sample.lower(config, params, prompt, jax.ShapeDtypeStruct((batch,), jnp.int32),
                              None, settings=sampling.SamplingConfig(max_new_tokens=new),
                              dparams=dparams).compile().as_text()
  bodies = {m.group(1): m.group(2) for m in re.finditer(
      r"\n%?([\w.\-]+) \([^\n]*\) -> [^\n]*\{\n(.*?)\n\}", hlo, re.S)}
  # The decode loop is the while whose body holds the most instructions (the unrolled layers).
  body = max((bodies[m.group(1)] for m in re.finditer(r"while\([^\n]*?body=%?([\w.\-]+)", hlo)),
             key=len)
  copies = []
  for m in re.finditer(r"%?([\w.\-]+) = \w+\[([\d,]*)\]\S* (\w[\w-]*)\(", body):
    name, dims, op = m.groups()
    if "copy" in name or "transpose" in name or op in ("copy", "transpose"):
      copies.append((name, tuple(int(d) for d in dims.split(",") if d)))
  return copies


def test_decode_loop_copies_no_weight_and_no_cache():
  # The decode step must read each layer's weights and KV cache where they lie: a
  # per-token copy of either is most of a memory-bound step (BENCHMARKS.md, sampler).
  # Oracle: sizes of the weights and caches, against every copy XLA left in the loop.
  config = model.get_config("tiny", d_model=128, num_heads=4, num_kv_heads=2, head_dim=32,
                            ffw_hidden=512, vocab_size=512)
  batch, width, new = 8, 32, 9
  cache_len = sampling.cache_length(width, new)
  dparams = jax.eval_shape(sampling.decode_weights, config,
                           jax.eval_shape(lambda: model.init_params(config, jax.random.key(0))))
  big = {int(np.prod(x.shape)) for x in jax.tree.leaves(dparams["layers"])}
  big.add(batch * config.num_kv_heads * cache_len * config.head_dim)
  copies = _decode_loop_copies(config, batch, width, new)
  offending = [(n, d) for n, d in copies if int(np.prod(d)) in big]
  assert not offending, f"the decode loop copies weights or caches every token: {offending}"
