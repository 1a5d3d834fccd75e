"""Our params -> Tunix's Gemma state (benchmarks/tunix_sampler.py).

The mapping is checked without Tunix against the HF export (`params_to_hf_tensors`, itself
checked against transformers) taken through the rules of Tunix's own safetensors loader
(tunix/models/gemma/params_safetensors.py, google-tunix 0.1.7), and against the paths and
shapes Tunix's `Gemma` state has (printed from `nnx.split` of the tiny config). With Tunix
installed (.venv-tunix, see the benchmark's docstring) the model's logits and the quick
benchmark run are checked too.
"""

import dataclasses

import jax
import numpy as np
import pytest

from benchmarks import sampler as sampler_bench
from benchmarks import tunix_sampler
from score_jax import model
from score_jax.model import checkpoints


def _random_params(config, seed=0):
  """Every tensor random (norm scales too), so a swapped or misplaced tensor shows."""
  params = model.init_params(config, jax.random.key(seed))
  keys = iter(jax.random.split(jax.random.key(seed + 1), 32))
  return jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape, x.dtype), params)


def _tunix_loader_rules(config, hf):
  """HF tensors -> Tunix paths, the way Tunix's safetensors loader transforms them."""
  d, n, k, h = config.d_model, config.num_heads, config.num_kv_heads, config.head_dim
  out = {("embedder", "input_embedding"): hf["model.embed_tokens.weight"],
         ("final_norm", "scale"): hf["model.norm.weight"]}
  for i in range(config.num_layers):
    pre = f"model.layers.{i}."
    # q / k / v: permute (1, 0), reshape (D, heads, H), then _to_ndh / _to_kdh -> (heads, D, H).
    q = hf[pre + "self_attn.q_proj.weight"].T.reshape(d, n, h).transpose(1, 0, 2)
    kv = [hf[pre + f"self_attn.{x}_proj.weight"].T.reshape(d, k, h).transpose(1, 0, 2)
          for x in ("k", "v")]
    if n == k:
      out[("layers", i, "attn", "qkv_einsum", "w")] = np.stack([q, *kv])
    else:
      out[("layers", i, "attn", "q_einsum", "w")] = q
      out[("layers", i, "attn", "kv_einsum", "w")] = np.stack(kv)
    out[("layers", i, "attn", "attn_vec_einsum", "w")] = (
        hf[pre + "self_attn.o_proj.weight"].T.reshape(n, h, d))
    for name in ("gate_proj", "up_proj", "down_proj"):
      out[("layers", i, "mlp", name, "kernel")] = hf[pre + f"mlp.{name}.weight"].T
    for hf_name, name in (("input_layernorm", "pre_attention_norm"),
                          ("post_attention_layernorm", "post_attn_norm"),
                          ("pre_feedforward_layernorm", "pre_ffw_norm"),
                          ("post_feedforward_layernorm", "post_ffw_norm")):
      out[("layers", i, name, "scale")] = hf[pre + hf_name + ".weight"]
  return out


@pytest.mark.parametrize("kv_heads", [2, 4])  # GQA (q / kv einsums) and fused qkv_einsum.
def test_tunix_params_equal_hf_export_through_tunix_loader_rules(kv_heads):
  config = model.get_config("tiny", num_kv_heads=kv_heads)
  params = _random_params(config)
  ours = tunix_sampler.tunix_params(config, params)
  oracle = _tunix_loader_rules(config, checkpoints.params_to_hf_tensors(config, params))
  assert sorted(ours, key=str) == sorted(oracle, key=str)
  for path, value in oracle.items():
    np.testing.assert_array_equal(ours[path], value, err_msg=str(path))


def test_tunix_params_have_tunix_state_paths_and_shapes():
  config = sampler_bench.CONFIGS["tiny"]()  # V 512, D 64, N 4, K 2, H 16, F 128, 2 layers.
  params = sampler_bench.benchmark_params(config, 0)
  shapes = {path: x.shape for path, x in tunix_sampler.tunix_params(config, params).items()}
  per_layer = {("attn", "attn_vec_einsum", "w"): (4, 16, 64),
               ("attn", "kv_einsum", "w"): (2, 2, 64, 16), ("attn", "q_einsum", "w"): (4, 64, 16),
               ("mlp", "down_proj", "kernel"): (128, 64), ("mlp", "gate_proj", "kernel"): (64, 128),
               ("mlp", "up_proj", "kernel"): (64, 128), ("post_attn_norm", "scale"): (64,),
               ("post_ffw_norm", "scale"): (64,), ("pre_attention_norm", "scale"): (64,),
               ("pre_ffw_norm", "scale"): (64,)}
  expected = {("embedder", "input_embedding"): (512, 64), ("final_norm", "scale"): (64,)}
  expected |= {("layers", i, *path): shape for i in range(2) for path, shape in per_layer.items()}
  assert shapes == expected
  # One hand-placed value per kind of tensor: layer 1's up kernel is our gating_einsum[1, 1].
  up = tunix_sampler.tunix_params(config, params)[("layers", 1, "mlp", "up_proj", "kernel")]
  assert up[3, 5] == params["layers"]["mlp"]["gating_einsum"]["w"][1, 1, 3, 5]


@pytest.mark.parametrize("name,overrides,match", [
    ("tiny-gemma3", {}, "QK-norm"),
    ("tiny", {"query_pre_attn_scalar": 32}, "query_pre_attn_scalar"),
    ("tiny", {"rope_base_global": 1e6}, "RoPE"),
])
def test_unsupported_configs_name_the_problem(name, overrides, match):
  config = dataclasses.replace(model.get_config(name), **overrides)
  with pytest.raises(ValueError, match=match):
    tunix_sampler.check_supported(config)


# --- with Tunix installed (.venv-tunix) ----------------------------------------------------------


def test_tunix_model_logits_and_quick_benchmark(tmp_path):
  pytest.importorskip("tunix")
  config = sampler_bench.CONFIGS["tiny"]()
  params = sampler_bench.benchmark_params(config, 0)
  tokens_bt = jax.random.randint(jax.random.key(3), (2, 40), 3, config.vocab_size)
  # 40 tokens > the tiny config's 16-token window: the local layer's mask matters.
  np.testing.assert_allclose(
      tunix_sampler.tunix_logits(tunix_sampler.tunix_model(config, params), tokens_bt),
      model.logits(config, params, tokens_bt), atol=1e-4, rtol=1e-5)
  results = tunix_sampler.main(["--quick", "--out", str(tmp_path / "tunix.json")])
  (case,) = results["configs"]["tiny"]["cases"]
  assert case["tokens"]["full"] == {"rows_equal": 2, "rows": 2, "first_mismatch_step": None}
  assert all(rate > 0 for rates in case["systems"].values() for rate in rates.values())
