"""bf16 compute over fp32 master weights: dtypes, accuracy against the fp32 forward, and
the compiled dots' operand / result types."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import model, sampling
from tests.utils import random_params

NAMES = ("tiny-gemma", "tiny", "tiny-gemma3")  # Gemma 1, 2, 3


def test_config_dtypes_and_init_params():
  config = model.get_config("tiny", dtype="bfloat16")
  assert (config.dtype, config.param_dtype) == ("bfloat16", "float32")
  leaves = jax.tree.leaves(model.init_params(config, jax.random.key(0)))
  assert all(x.dtype == jnp.float32 for x in leaves)
  stored16 = model.get_config("tiny", param_dtype="bfloat16")
  assert all(x.dtype == jnp.bfloat16
             for x in jax.tree.leaves(model.init_params(stored16, jax.random.key(0))))
  with pytest.raises(ValueError, match="param_dtype must be 'float32' or 'bfloat16'"):
    model.get_config("tiny", param_dtype="float16")
  with pytest.raises(ValueError, match="dtype must be 'float32' or 'bfloat16'"):
    model.get_config("tiny", dtype="bf16")


def _logprobs(config, params, tokens):
  return np.asarray(jax.nn.log_softmax(model.logits(config, params, tokens)))


@pytest.mark.parametrize("name", NAMES)
def test_bf16_compute_logprobs_near_fp32(name):
  # Oracle: the fp32 forward on the same fp32 params. How far bf16 rounding may move
  # these (random, steep) models is measured independently, in fp32: the same forward
  # on the weights alone rounded to bf16 (relative error <= 2^-9). Rounding the
  # activations and every matmul operand as well stays within 2.5x of that (measured
  # 1.7x for all three); an fp32-accumulation slip or a wrong cast goes far beyond.
  c32 = model.get_config(name)
  c16 = model.get_config(name, dtype="bfloat16")
  params = random_params(c32, 0, 1.0)
  tokens = np.random.default_rng(0).integers(0, c32.vocab_size, (4, 64))
  logp32 = _logprobs(c32, params, tokens)
  assert model.logits(c16, params, tokens).dtype == jnp.float32
  logp16 = _logprobs(c16, params, tokens)
  rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), params)
  logp_rounded = _logprobs(c32, rounded, tokens)

  def mean_abs_delta(logp):  # E_{v ~ p32} |log p(v) - log p32(v)|, averaged over positions.
    return float((np.exp(logp32) * np.abs(logp - logp32)).sum(-1).mean())

  def greedy_agreement(logp):
    return float((logp.argmax(-1) == logp32.argmax(-1)).mean())

  weights_only = mean_abs_delta(logp_rounded)
  assert 0 < mean_abs_delta(logp16) < 2.5 * weights_only, (mean_abs_delta(logp16), weights_only)
  assert mean_abs_delta(logp16) < 0.05
  # Measured 0.91-0.97 (weights only: 0.96-0.99); ties within ~0.1 logits flip.
  assert greedy_agreement(logp16) >= min(0.9, greedy_agreement(logp_rounded) - 0.06)


def _dots(hlo: str) -> list[tuple[str, str, str]]:
  """(lhs dtype, rhs dtype, result dtype) of every dot in compiled HLO text.

  Compiled dots sit in fusions whose operands are the fusion's parameters, so
  operand types are looked up among the instructions of the same computation.
  """
  out = []
  for body in re.findall(r"\{\n(.*?)\n\}", hlo, re.S):
    types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", body))
    for result, lhs, rhs in re.findall(
        r"= (\w+)\[[^\n]*? dot\(%([\w.\-]+), %([\w.\-]+)\)", body):
      out.append((types[lhs], types[rhs], result))
  return out


@pytest.mark.parametrize("name", NAMES)
def test_compiled_forward_dots_are_bf16_operands_fp32_results(name):
  config = model.get_config(name, dtype="bfloat16")
  params = jax.eval_shape(lambda: model.init_params(config, jax.random.key(0)))
  tokens = jax.ShapeDtypeStruct((2, 16), jnp.int32)
  hlo = jax.jit(model.logits, static_argnums=0).lower(config, params, tokens).compile().as_text()
  dots = _dots(hlo)
  # Per scanned layer: q, k|v, scores, values, attention out, gate, up, down; + the logits.
  assert len(dots) == 9, dots
  assert set(dots) == {("bf16", "bf16", "f32")}, dots
  # The parser sees fp32 dots as such: the fp32 config's forward has no bf16 at all.
  c32 = model.get_config(name)
  hlo32 = jax.jit(model.logits, static_argnums=0).lower(c32, params, tokens).compile().as_text()
  assert set(_dots(hlo32)) == {("f32", "f32", "f32")}


def test_compiled_decode_loop_dots_are_bf16_operands_fp32_results():
  # The sampler: decode copies and the KV cache in bf16, every dot accumulating in fp32.
  config = model.get_config("tiny-gemma3", dtype="bfloat16")
  params = jax.eval_shape(lambda: model.init_params(config, jax.random.key(0)))
  dparams = jax.eval_shape(sampling.decode_weights, config, params)
  assert {x.dtype for x in jax.tree.leaves(dparams["layers"])} == {jnp.dtype(jnp.float32),
                                                                   jnp.dtype(jnp.bfloat16)}
  for path, x in jax.tree_util.tree_flatten_with_path(dparams)[0]:
    is_norm = "scale" in jax.tree_util.keystr(path)  # RMSNorm scales stay fp32 (tiny).
    assert x.dtype == (jnp.float32 if is_norm else jnp.bfloat16), path
  assert model.init_cache(config, 2, 8)["k"].dtype == jnp.bfloat16
  hlo = sampling.sample.lower(config, params, jax.ShapeDtypeStruct((2, 16), jnp.int32),
                              jax.ShapeDtypeStruct((2,), jnp.int32), None,
                              settings=sampling.SamplingConfig(max_new_tokens=4),
                              dparams=dparams).compile().as_text()
  dots = _dots(hlo)
  # Prefill: 8 in the scanned layer + the logits; decode: 7 per unrolled layer (k|v and
  # gate|up merged) + the logits.
  assert len(dots) == 8 + 1 + 7 * config.num_layers + 1
  assert set(dots) == {("bf16", "bf16", "f32")}, sorted(set(dots))
