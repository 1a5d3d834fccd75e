"""Official Gemma Flax checkpoint layout: miniature checkpoints written by hand load exactly.

The official tree is built here with explicit per-layer loops and numpy
transposes (not with gemma_flax's own mapping), following google-deepmind/gemma's
gm/nn/_modules.py: q_einsum [N, D, H], kv_einsum [2, K, D, H], qkv_einsum
[3, N, D, H] when K == N, attn_vec_einsum [N, H, D], gating_einsum [2, D, F] or
[2, F, D] (transpose_gating_einsum), linear [F, D].
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from score_jax import model
from score_jax.model import gemma_flax

TOKENS = np.array([[5, 17, 3, 250, 9, 64, 1, 511, 2, 40, 77, 8],
                   [0, 300, 12, 7, 7, 91, 450, 33, 2, 19, 6, 128]], np.int32)

# (config, gating stored as [2, F, D] like the released model of that generation).
CASES = {
    "gemma1-mqa": (model.get_config("tiny-gemma"), False),
    "gemma1-mha": (model.get_config("tiny-gemma", num_kv_heads=4), False),  # qkv_einsum
    "gemma2": (model.get_config("tiny"), False),
    "gemma3": (model.get_config("tiny-gemma3"), True),
}


def _random_params(config, seed=0):
  """Random numpy params in init_params' structure, norm scales included (their init is 0)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda key: model.init_params(config, key), jax.random.key(seed))
  return jax.tree.map(lambda x: (rng.normal(size=x.shape) * 0.3).astype(np.float32), shapes)


def _official_flat(config, params, transposed):
  """The released FLAT tree {'transformer/<module>': {leaf: array}}, built by hand."""
  layers = params["layers"]
  attn, mlp = layers["attn"], layers["mlp"]
  flat = {"transformer/embedder": {"input_embedding": params["embedder"]["input_embedding"]},
          "transformer/final_norm": {"scale": params["final_norm"]["scale"]}}
  for i in range(config.num_layers):
    pre = f"transformer/layer_{i}/"
    q = attn["q_einsum"]["w"][i]                       # [N, D, H]
    k, v = attn["kv_einsum"]["w"][i]                   # [K, D, H] each
    if config.num_heads == config.num_kv_heads:
      flat[pre + "attn/qkv_einsum"] = {"w": np.stack([q, k, v])}
    else:
      flat[pre + "attn/q_einsum"] = {"w": q}
      flat[pre + "attn/kv_einsum"] = {"w": np.stack([k, v])}
    flat[pre + "attn/attn_vec_einsum"] = {"w": attn["attn_vec_einsum"]["w"][i]}
    if config.use_qk_norm:
      flat[pre + "attn/_query_norm"] = {"scale": attn["query_norm"]["scale"][i]}
      flat[pre + "attn/_key_norm"] = {"scale": attn["key_norm"]["scale"][i]}
    gate, up = mlp["gating_einsum"]["w"][i]            # [D, F] each
    if transposed:
      gate, up = np.transpose(gate), np.transpose(up)  # [F, D]
    flat[pre + "mlp/gating_einsum"] = {"w": np.stack([gate, up])}
    flat[pre + "mlp/linear"] = {"w": mlp["linear"]["w"][i]}
    flat[pre + "pre_attention_norm"] = {"scale": layers["pre_attention_norm"]["scale"][i]}
    flat[pre + "pre_ffw_norm"] = {"scale": layers["pre_ffw_norm"]["scale"][i]}
    if config.use_post_attn_norm:
      flat[pre + "post_attention_norm"] = {"scale": layers["post_attention_norm"]["scale"][i]}
    if config.use_post_ffw_norm:
      flat[pre + "post_ffw_norm"] = {"scale": layers["post_ffw_norm"]["scale"][i]}
  return flat


def _nested(flat):
  """gm's NESTED form: module paths as nested dicts, MLP kernels bare (param_remapper)."""
  nested = {}
  for key, leaves in flat.items():
    *parents, module = key.removeprefix("transformer/").split("/")
    node = nested
    for part in parents:
      node = node.setdefault(part, {})
    node[module] = leaves["w"] if parents[-1:] == ["mlp"] else dict(leaves)
  return nested


def _write(path, tree):
  ocp.PyTreeCheckpointer().save(os.fspath(path), tree)
  return os.fspath(path)


def _assert_same_params(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hand_written_official_checkpoint_loads_exactly(case, tmp_path):
  config, transposed = CASES[case]
  params = _random_params(config)
  path = _write(tmp_path / "ckpt", _official_flat(config, params, transposed))
  loaded = gemma_flax.load_gemma_flax(path, config)
  _assert_same_params(loaded, params)
  logits = jax.jit(model.logits, static_argnums=0)
  np.testing.assert_array_equal(np.asarray(logits(config, loaded, TOKENS)),
                                np.asarray(logits(config, params, TOKENS)))


@pytest.mark.parametrize("case", ["gemma1-mha", "gemma3"])
def test_save_writes_the_official_flat_tree(case, tmp_path):
  config, transposed = CASES[case]
  params = _random_params(config, seed=1)
  gemma_flax.save_gemma_flax(config, params, tmp_path / "ckpt")
  written = ocp.PyTreeCheckpointer().restore(os.fspath(tmp_path / "ckpt"))
  want = _official_flat(config, params, transposed)
  assert set(written) == set(want)
  for key, leaves in want.items():
    assert set(written[key]) == set(leaves), key
    for leaf, array in leaves.items():
      np.testing.assert_array_equal(written[key][leaf], array, err_msg=f"{key}/{leaf}")
  _assert_same_params(gemma_flax.load_gemma_flax(tmp_path / "ckpt", config), params)


def test_nested_form_and_preset_name(tmp_path):
  config, transposed = CASES["gemma2"]
  params = _random_params(config, seed=2)
  nested = _nested(_official_flat(config, params, transposed))
  assert nested["layer_1"]["mlp"]["linear"].shape == (config.ffw_hidden, config.d_model)
  with ocp.StandardCheckpointer() as checkpointer:  # As gm.ckpts.save_params writes it.
    checkpointer.save(os.fspath(tmp_path / "ckpt"), nested)
  _assert_same_params(gemma_flax.load_gemma_flax(tmp_path / "ckpt", "tiny"), params)


def test_stacked_form(tmp_path):
  # 8 Gemma 3 layers over a 6-type pattern: types 0 and 1 stack two layers (0, 6 and 1, 7).
  config = model.get_config("tiny-gemma3", num_layers=8)
  params = _random_params(config, seed=3)
  flat = _official_flat(config, params, transposed=True)
  stacked = {k: v for k, v in flat.items() if "/layer_" not in k}
  for j in range(6):
    for suffix in {k.split("/", 2)[2] for k in flat if k.startswith("transformer/layer_0/")}:
      members = [flat[f"transformer/layer_{i}/{suffix}"] for i in range(j, 8, 6)]
      stacked[f"transformer/stacked_layers/attention_type_{j}/{suffix}"] = {
          leaf: np.stack([m[leaf] for m in members]) for leaf in members[0]}
  path = _write(tmp_path / "ckpt", stacked)
  _assert_same_params(gemma_flax.load_gemma_flax(path, config), params)


def test_gating_layout_inferred_from_shape_or_forced(tmp_path):
  config = model.get_config("tiny")  # The 2B layout is [2, D, F]; write it like 9B instead.
  params = _random_params(config, seed=4)
  path = _write(tmp_path / "ckpt", _official_flat(config, params, transposed=True))
  _assert_same_params(gemma_flax.load_gemma_flax(path, config), params)
  with pytest.raises(ValueError, match=r"layer_0/mlp/gating_einsum has shape \(2, 128, 64\), "
                                       r"expected \(2, 64, 128\)"):
    gemma_flax.load_gemma_flax(path, config, transpose_gating_einsum=False)
  # d_model == ffw_hidden: shapes cannot tell, so the family convention (Gemma 3: [2, F, D]) does.
  square = model.get_config("tiny-gemma3", ffw_hidden=64)
  params = _random_params(square, seed=5)
  gemma_flax.save_gemma_flax(square, params, tmp_path / "square")
  gate_written = ocp.PyTreeCheckpointer().restore(os.fspath(tmp_path / "square"))[
      "transformer/layer_0/mlp/gating_einsum"]["w"][0]
  np.testing.assert_array_equal(gate_written, params["layers"]["mlp"]["gating_einsum"]["w"][0, 0].T)
  _assert_same_params(gemma_flax.load_gemma_flax(tmp_path / "square", square), params)


def test_official_gating_convention():
  transposed = {name: gemma_flax.official_gating_transposed(model.get_config(name))
                for name in ("gemma-2b", "gemma-7b", "gemma2-2b", "gemma2-9b", "gemma2-27b",
                             "gemma3-1b", "gemma3-27b")}
  assert transposed == {"gemma-2b": False, "gemma-7b": False, "gemma2-2b": False,
                        "gemma2-9b": True, "gemma2-27b": True, "gemma3-1b": True,
                        "gemma3-27b": True}


def test_vision_tower_is_skipped(tmp_path):
  config, transposed = CASES["gemma3"]
  params = _random_params(config, seed=6)
  flat = _official_flat(config, params, transposed)
  # As in the released Gemma 3 4B+ checkpoints (names from gm/nn/_modules.py Embedder).
  flat["transformer/embedder/mm_input_projection"] = {"w": np.ones((3, 64), np.float32)}
  flat["transformer/embedder/mm_soft_embedding_norm"] = {"scale": np.ones(3, np.float32)}
  flat["SigLiPFromPatches_0/siglip_encoder/embedding"] = {"kernel": np.ones((2, 3), np.float32)}
  path = _write(tmp_path / "ckpt", flat)
  _assert_same_params(gemma_flax.load_gemma_flax(path, config), params)


@pytest.fixture(scope="module")
def gemma2_flat():
  config, transposed = CASES["gemma2"]
  return config, _official_flat(config, _random_params(config, seed=7), transposed)


def test_missing_key(gemma2_flat, tmp_path):
  config, flat = gemma2_flat
  flat = {k: v for k, v in flat.items() if k != "transformer/layer_1/pre_ffw_norm"}
  path = _write(tmp_path / "ckpt", flat)
  with pytest.raises(ValueError, match=r"missing layer_1/pre_ffw_norm/scale \(expected shape "
                                       r"\(64,\)\)"):
    gemma_flax.load_gemma_flax(path, config)


def test_wrong_shape(gemma2_flat, tmp_path):
  config, flat = gemma2_flat
  flat = dict(flat)
  flat["transformer/layer_0/attn/attn_vec_einsum"] = {"w": np.zeros((4, 8, 64), np.float32)}
  path = _write(tmp_path / "ckpt", flat)
  with pytest.raises(ValueError, match=r"layer_0/attn/attn_vec_einsum/w has shape \(4, 8, 64\), "
                                       r"expected \(4, 16, 64\)"):
    gemma_flax.load_gemma_flax(path, config)


def test_unknown_key_and_wrong_family(gemma2_flat, tmp_path):
  config, flat = gemma2_flat
  extra = {**flat, "transformer/layer_0/attn/rel_bias": {"w": np.zeros(3, np.float32)}}
  path = _write(tmp_path / "extra", extra)
  with pytest.raises(ValueError, match=r"unexpected layer_0/attn/rel_bias/w with shape \(3,\)"):
    gemma_flax.load_gemma_flax(path, config)
  # A Gemma 2 checkpoint read as Gemma 1: its post-norms are not part of the architecture.
  path = _write(tmp_path / "gemma2", flat)
  gemma1 = model.get_config("tiny-gemma", num_kv_heads=2)
  with pytest.raises(ValueError, match=r"unexpected layer_0/post_attention_norm/scale"):
    gemma_flax.load_gemma_flax(path, gemma1)


def test_wrong_number_of_layers(gemma2_flat, tmp_path):
  config, flat = gemma2_flat
  path = _write(tmp_path / "ckpt", flat)
  with pytest.raises(ValueError, match=r"has 2 transformer layers \(layer_0 .. layer_1\) but the "
                                       r"config has num_layers=4"):
    gemma_flax.load_gemma_flax(path, model.get_config("tiny", num_layers=4))


def test_vocabulary_mismatch_hint(gemma2_flat, tmp_path):
  config, flat = gemma2_flat
  path = _write(tmp_path / "ckpt", flat)
  with pytest.raises(ValueError, match=r"(?s)embedder/input_embedding has shape \(512, 64\), "
                                       r"expected \(520, 64\).*vocab_size=512"):
    gemma_flax.load_gemma_flax(path, model.get_config("tiny", vocab_size=520))


def test_bad_config_and_paths(gemma2_flat, tmp_path):
  config, flat = gemma2_flat
  path = _write(tmp_path / "ckpt", flat)
  with pytest.raises(ValueError, match="unknown model preset 'gemma9-1b'"):
    gemma_flax.load_gemma_flax(path, "gemma9-1b")
  with pytest.raises(TypeError, match="preset name or a ModelConfig"):
    gemma_flax.load_gemma_flax(path, {"family": "gemma2"})
  with pytest.raises(FileNotFoundError, match="no checkpoint directory at .*nowhere"):
    gemma_flax.load_gemma_flax(tmp_path / "nowhere", config)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="not a readable orbax checkpoint"):
    gemma_flax.load_gemma_flax(tmp_path / "empty", config)
  with pytest.raises(FileExistsError, match="already exists"):
    gemma_flax.save_gemma_flax(config, _random_params(config), path)


def test_save_rejects_params_of_another_config(tmp_path):
  config = model.get_config("tiny")
  with pytest.raises(ValueError, match=r"params hold \[2\] stacked layers .* num_layers=4"):
    gemma_flax.save_gemma_flax(model.get_config("tiny", num_layers=4), _random_params(config),
                               tmp_path / "a")
  with pytest.raises(ValueError, match=r"(?s)params does not match .*\n  layer_0/mlp/linear has "
                                       r"shape \(128, 64\), expected \(256, 64\)"):
    gemma_flax.save_gemma_flax(model.get_config("tiny", ffw_hidden=256), _random_params(config),
                               tmp_path / "b")
  assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_bfloat16_config(gemma2_flat, tmp_path):
  config, flat = gemma2_flat
  path = _write(tmp_path / "ckpt", flat)
  # bf16 compute alone keeps fp32 master weights; param_dtype sets the storage.
  loaded = gemma_flax.load_gemma_flax(path, model.get_config("tiny", dtype="bfloat16"))
  assert loaded["embedder"]["input_embedding"].dtype.name == "float32"
  loaded = gemma_flax.load_gemma_flax(path, model.get_config("tiny", param_dtype="bfloat16"))
  embed = loaded["embedder"]["input_embedding"]
  assert embed.dtype.name == "bfloat16"
  np.testing.assert_array_equal(
      embed, flat["transformer/embedder"]["input_embedding"].astype(embed.dtype))

