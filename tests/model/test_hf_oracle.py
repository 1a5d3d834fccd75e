"""Oracle: our logits equal HF transformers' Gemma / Gemma 2 / Gemma 3 logits (fp32, eager attention)."""

import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from score_jax import model  # noqa: E402
from score_jax.model import checkpoints  # noqa: E402

SEQ = 14  # longer than the sliding windows below, so the window is exercised.

# Tiny configs covering every feature: MQA (gemma), GQA + soft-caps + alternating
# windows + query_pre_attn_scalar != head_dim (gemma2), QK-norm + 5:1 pattern +
# separate local/global RoPE with linear scaling (gemma3).
HF_CONFIGS = {
    "gemma": dict(cls="GemmaConfig", vocab_size=96, hidden_size=48, intermediate_size=80,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=12,
                  rope_theta=10_000.0),
    "gemma2": dict(cls="Gemma2Config", vocab_size=96, hidden_size=48, intermediate_size=80,
                   num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                   sliding_window=5, query_pre_attn_scalar=20, attn_logit_softcapping=4.0,
                   final_logit_softcapping=3.0),
    "gemma3": dict(cls="Gemma3TextConfig", vocab_size=96, hidden_size=48, intermediate_size=80,
                   num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                   sliding_window=4, query_pre_attn_scalar=20,
                   rope_parameters={
                       "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
                       "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}),
}


def _hf_model(family: str, seed: int = 0):
  kw = dict(HF_CONFIGS[family])
  cls = getattr(transformers, kw.pop("cls"))
  cfg = cls(**kw)
  cfg._attn_implementation = "eager"  # soft-capping applies only in eager attention.
  torch.manual_seed(seed)
  hf = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
  with torch.no_grad():
    for p in hf.parameters():  # norms init to 0 (scale 1 + w): randomise everything.
      p.normal_(0.0, 0.3)
  return hf


def _hf_logits(hf, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return hf(torch.from_numpy(tokens).long()).logits.float().numpy()


def _tokens(vocab: int, batch: int = 2) -> np.ndarray:
  return np.random.default_rng(0).integers(0, vocab, size=(batch, SEQ)).astype(np.int32)


@pytest.fixture(scope="module", params=sorted(HF_CONFIGS))
def hf_checkpoint(request, tmp_path_factory):
  family = request.param
  hf = _hf_model(family)
  path = str(tmp_path_factory.mktemp(f"hf_{family}"))
  hf.save_pretrained(path)
  return family, hf, path


def test_load_hf_logits_match_transformers(hf_checkpoint):
  family, hf, path = hf_checkpoint
  config, params = checkpoints.load_hf(path)
  assert config.family == family
  if family == "gemma2":
    assert config.layer_types == ("local", "global", "local", "global")
    assert config.attn_logit_softcap == 4.0 and config.final_logit_softcap == 3.0
  if family == "gemma3":
    assert config.layer_types == ("local",) * 5 + ("global",)
    assert config.use_qk_norm and config.rope_scale_global == 8.0
  tokens = _tokens(config.vocab_size)
  ours = np.asarray(model.logits(config, params, tokens))
  theirs = _hf_logits(hf, tokens)
  assert ours.shape == theirs.shape
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  # The comparison is not vacuous: logits vary across positions and vocab.
  assert theirs.std() > 0.1


def test_save_hf_round_trip_through_transformers(hf_checkpoint, tmp_path):
  family, _, path = hf_checkpoint
  config, params = checkpoints.load_hf(path)
  params = model.init_params(config, jax.random.key(7))  # fresh weights, not HF's.
  params = jax.tree.map(lambda x: x + 0.1 * np.random.default_rng(1).standard_normal(x.shape)
                        .astype(np.float32), params)
  out = str(tmp_path / "exported")
  checkpoints.save_hf(config, params, out)
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
  hf = hf.float().eval()
  tokens = _tokens(config.vocab_size)
  np.testing.assert_allclose(np.asarray(model.logits(config, params, tokens)),
                             _hf_logits(hf, tokens), atol=1e-4, rtol=0)
  config2, params2 = checkpoints.load_hf(out)
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, params2, jax.device_get(params))


def test_transformers_4x_config_format(hf_checkpoint):
  """Old config.json keys (rope_theta / rope_local_base_freq / sliding_window_pattern) parse the same."""
  family, _, path = hf_checkpoint
  with open(os.path.join(path, "config.json")) as f:
    hf_cfg = json.load(f)
  new = checkpoints.config_from_hf(hf_cfg)
  old = {k: v for k, v in hf_cfg.items() if k not in ("rope_parameters", "layer_types")}
  rope = hf_cfg["rope_parameters"]
  if family == "gemma3":
    old.update(rope_theta=rope["full_attention"]["rope_theta"],
               rope_local_base_freq=rope["sliding_attention"]["rope_theta"],
               rope_scaling={"rope_type": "linear", "factor": 8.0}, sliding_window_pattern=6)
  else:
    old["rope_theta"] = rope["rope_theta"]
  assert checkpoints.config_from_hf(old) == new


def test_bf16_checkpoint_loads(tmp_path):
  hf = _hf_model("gemma2").to(torch.bfloat16)
  hf.save_pretrained(str(tmp_path))
  expected = hf.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()
  # bf16 compute, fp32 master weights (the default storage): the file's values, exactly.
  config, params = checkpoints.load_hf(str(tmp_path), dtype="bfloat16")
  assert (config.dtype, config.param_dtype) == ("bfloat16", "float32")
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
  got = np.asarray(params["layers"]["attn"]["q_einsum"]["w"][1])
  np.testing.assert_array_equal(got.transpose(0, 2, 1).reshape(expected.shape), expected)
  # bf16 storage only when asked.
  _, params16 = checkpoints.load_hf(str(tmp_path), param_dtype="bfloat16")
  assert params16["layers"]["attn"]["q_einsum"]["w"].dtype == jax.numpy.bfloat16
  got = np.asarray(params16["layers"]["attn"]["q_einsum"]["w"][1], np.float32)
  np.testing.assert_array_equal(got.transpose(0, 2, 1).reshape(expected.shape), expected)


def test_load_hf_errors(hf_checkpoint, tmp_path):
  _, _, path = hf_checkpoint
  with pytest.raises(FileNotFoundError, match="config.json"):
    checkpoints.load_hf(str(tmp_path / "nowhere"))
  with open(os.path.join(path, "config.json")) as f:
    hf_cfg = json.load(f)
  with pytest.raises(ValueError, match="model_type 'llama'"):
    checkpoints.config_from_hf({**hf_cfg, "model_type": "llama"})
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "config.json").write_text(json.dumps({**hf_cfg, "hidden_size": 64}))
  os.symlink(os.path.join(path, "model.safetensors"), bad / "model.safetensors")
  with pytest.raises(ValueError, match="has shape .* expected"):
    checkpoints.load_hf(str(bad))
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text(json.dumps(hf_cfg))
  with pytest.raises(FileNotFoundError, match="safetensors"):
    checkpoints.load_hf(str(empty))
  config, _ = checkpoints.load_hf(path)
  with pytest.raises(ValueError, match="missing tensor 'layers.0.self_attn.q_proj.weight'"):
    checkpoints.params_from_hf_tensors(config, {"embed_tokens.weight": np.zeros(1)})


def test_a_float_query_scalar_exports_as_transformers_int(tmp_path):
  """configs/demo.py says query_pre_attn_scalar=32.0; transformers' config refuses a float."""
  config = model.get_config("tiny", vocab_size=64, d_model=32, num_layers=2, num_heads=2,
                            num_kv_heads=1, head_dim=16, ffw_hidden=64, query_pre_attn_scalar=16.0)
  params = model.init_params(config, jax.random.key(3))
  checkpoints.save_hf(config, params, str(tmp_path))
  with open(tmp_path / "config.json") as f:
    assert type(json.load(f)["query_pre_attn_scalar"]) is int
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path),
                                                         attn_implementation="eager").float()
  tokens = _tokens(config.vocab_size)
  np.testing.assert_allclose(np.asarray(model.logits(config, params, tokens)),
                             _hf_logits(hf.eval(), tokens), atol=1e-4, rtol=0)
