"""The Gemma-style decoder as pure functions over an explicit params pytree.

One forward implementation serves training (whole sequences), prefill and
decoding (a fixed-size KV cache): the sampler and the trainer therefore compute
identical log-probs, soft-caps included.

Params layout (layers stacked on a leading `L` axis and scanned):

  embedder/input_embedding          [V, D]   (tied with the output projection)
  layers/pre_attention_norm/scale   [L, D]
  layers/attn/q_einsum/w            [L, N, D, H]
  layers/attn/kv_einsum/w           [L, 2, K, D, H]
  layers/attn/attn_vec_einsum/w     [L, N, H, D]
  layers/attn/query_norm/scale      [L, H]   (Gemma 3)
  layers/attn/key_norm/scale        [L, H]   (Gemma 3)
  layers/post_attention_norm/scale  [L, D]   (Gemma 2, 3)
  layers/pre_ffw_norm/scale         [L, D]
  layers/mlp/gating_einsum/w        [L, 2, D, F]  (gate, up)
  layers/mlp/linear/w               [L, F, D]
  layers/post_ffw_norm/scale        [L, D]   (Gemma 2, 3)
  final_norm/scale                  [D]

Axis letters: B batch, T query positions, S key positions, D model, N query
heads, K kv heads, G query heads per kv head, H head dim, F MLP hidden, V vocab.

KV cache (decoding): {"k": [L, B, S, K, H], "v": [L, B, S, K, H],
"pos": [B, S] int32}; `pos` is the token position held in each slot, -1 for an
empty or padding slot. Masks are built from positions, so left-padded prompts
and sliding windows need no separate mask argument.

Decode loops use `forward_hidden_unrolled`: the same `_block` per layer, over
`decode_params` (per-layer 2-D `[out, in]` weight copies, see `_DECODE_TRANSPOSES`)
and a per-layer cache {"k": L x [B, K, S, H], "v": L x [B, K, H, S], "pos": [B, S]}
(`unstack_cache`), so no weight or cache is sliced or transposed per generated token.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from score_jax import sharding
from score_jax.model import contract
from score_jax.model.config import ModelConfig

Params = dict[str, Any]
Cache = dict[str, jax.Array]

_MASKED = -2.3819763e38  # finite "minus infinity": fully masked rows stay NaN-free.


def _dtype(config: ModelConfig):
  """The compute dtype: matmul operands and activations."""
  return jnp.dtype(config.dtype)


def _contract(eq: str, x: jax.Array, w: jax.Array, dt) -> jax.Array:
  """einsum with `dt` operands, accumulated in fp32, result cast to `dt`.

  XLA:CPU and TPUs reach their bf16 matrix units only when a bf16 dot accumulates
  in fp32 (a bf16 -> bf16 dot is slower than fp32 on CPU, BENCHMARKS.md). In fp32
  the casts are no-ops and the dot is the plain fp32 one.
  """
  return _contract_f32(eq, x, w, dt).astype(dt)


def _contract_f32(eq: str, x: jax.Array, w: jax.Array, dt) -> jax.Array:
  """`_contract` before the cast: the fp32 result (attention scores, logits). bf16 operands go
  through contract.einsum, whose backward dots are the row-major kind XLA:CPU runs fast."""
  x, w = x.astype(dt), w.astype(dt)
  if dt == jnp.float32:
    return jnp.einsum(eq, x, w, preferred_element_type=jnp.float32)
  return contract.einsum(eq, x, w)


def init_params(config: ModelConfig, rng: jax.Array) -> Params:
  """Random `param_dtype` params: fan-in scaled normal weights, zero norm scales (1 + w)."""
  d, n, k, h, f, l, v = (config.d_model, config.num_heads, config.num_kv_heads, config.head_dim,
                         config.ffw_hidden, config.num_layers, config.vocab_size)
  dt = jnp.dtype(config.param_dtype)
  keys = iter(jax.random.split(rng, 8))

  def normal(shape, fan_in):
    return (jax.random.normal(next(keys), shape, jnp.float32) * fan_in ** -0.5).astype(dt)

  zeros = lambda *shape: jnp.zeros(shape, dt)
  attn = {
      "q_einsum": {"w": normal((l, n, d, h), d)},
      "kv_einsum": {"w": normal((l, 2, k, d, h), d)},
      "attn_vec_einsum": {"w": normal((l, n, h, d), n * h)},
  }
  if config.use_qk_norm:
    attn["query_norm"] = {"scale": zeros(l, h)}
    attn["key_norm"] = {"scale": zeros(l, h)}
  layers = {
      "pre_attention_norm": {"scale": zeros(l, d)},
      "attn": attn,
      "pre_ffw_norm": {"scale": zeros(l, d)},
      "mlp": {"gating_einsum": {"w": normal((l, 2, d, f), d)},
              "linear": {"w": normal((l, f, d), f)}},
  }
  if config.use_post_attn_norm:
    layers["post_attention_norm"] = {"scale": zeros(l, d)}
  if config.use_post_ffw_norm:
    layers["post_ffw_norm"] = {"scale": zeros(l, d)}
  return {
      "embedder": {"input_embedding": normal((v, d), d)},
      "layers": layers,
      "final_norm": {"scale": zeros(d)},
  }


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """Gemma RMSNorm, computed in fp32 with weight (1 + scale)."""
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


def apply_rope(x_btnh: jax.Array, positions_bt: jax.Array, base: jax.Array,
               scale: jax.Array) -> jax.Array:
  """Rotary embedding on the two halves of the head dim (Gemma / HF convention)."""
  h = x_btnh.shape[-1]
  inv_freq = 1.0 / (base ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h)) / scale
  angles_bth = positions_bt.astype(jnp.float32)[..., None] * inv_freq
  sin = jnp.sin(angles_bth)[:, :, None, :].astype(x_btnh.dtype)
  cos = jnp.cos(angles_bth)[:, :, None, :].astype(x_btnh.dtype)
  x1, x2 = jnp.split(x_btnh, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
  return x if cap is None else jnp.tanh(x / cap) * cap


def attention_mask(q_pos_bt: jax.Array, k_pos_bs: jax.Array, window: jax.Array) -> jax.Array:
  """[B, T, S] bool: causal, key slot filled, and within `window` on local layers (window>0)."""
  q = q_pos_bt[:, :, None]
  k = k_pos_bs[:, None, :]
  allowed = (k >= 0) & (k <= q)
  return allowed & ((window <= 0) | (q - k < window))


# The block's contractions for each weight layout. "stored" is the params layout above
# (training, prefill); "decode" is `decode_params`' per-layer copies, each a 2-D
# [out, in] matrix whose output axes are merged into one (E). With multi-axis weights
# XLA's CPU layout assignment permutes their axes inside the decode loop to suit the
# dot's consumers: a transposed copy of weights or activations per layer per token.
_EINSUMS = {
    "stored": {"q": "BTD,NDH->BTNH", "kv": "BTD,CKDH->CBTKH", "attn_out": "BTNH,NHD->BTD",
               "gating": "BTD,DF->BTF", "linear": "BTF,FD->BTD"},
    "decode": {"q": "BTD,ED->BTE", "kv": "BTD,ED->BTE", "attn_out": "BTE,DE->BTD",
               "gating": "BTD,ED->BTE", "linear": "BTF,DF->BTD"},
}
# Axes of the keys and of the values of one layer's cache, per layout.
_CACHE_LAYOUT = {"stored": ("BSKH", "BSKH"), "decode": ("BKSH", "BKHS")}
# (group, weight, axis permutation of one layer's stored weight into the decode layout,
#  (first, count) of the axes that then merge into one, E, or None). The major axis
#  of each merge is the sharded one (heads, KV heads, MLP), so E keeps its sharding.
_DECODE_TRANSPOSES = (
    ("attn", "q_einsum", (0, 2, 1), (0, 2)),          # [N, D, H] -> [(N H), D]
    ("attn", "kv_einsum", (1, 0, 3, 2), (0, 3)),      # [C, K, D, H] -> [(K C H), D]
    ("attn", "attn_vec_einsum", (2, 0, 1), (1, 2)),   # [N, H, D] -> [D, (N H)]
    ("mlp", "gating_einsum", (2, 0, 1), (0, 2)),      # [C, D, F] -> [(F C), D]
    ("mlp", "linear", (1, 0), None),                  # [F, D] -> [D, F]
)


def _attention(config: ModelConfig, p: Params, x_btd, q_pos_bt, layer_cache, k_pos_bs,
               write_index, consts, layout):
  b, t, _ = x_btd.shape
  k_heads, g = config.num_kv_heads, config.num_heads // config.num_kv_heads
  eq, dt = _EINSUMS[layout], _dtype(config)
  q_btnh = _contract(eq["q"], x_btd, p["q_einsum"]["w"], dt).reshape(
      b, t, config.num_heads, config.head_dim)
  if layout == "decode":  # E = (K, C, H): each KV head's key and value side by side.
    kv_btkch = _contract(eq["kv"], x_btd, p["kv_einsum"]["w"], dt).reshape(
        b, t, k_heads, 2, config.head_dim)
    k_btkh, v_btkh = kv_btkch[:, :, :, 0], kv_btkch[:, :, :, 1]
  else:
    k_btkh, v_btkh = _contract(eq["kv"], x_btd, p["kv_einsum"]["w"], dt)
  if config.use_qk_norm:
    q_btnh = rms_norm(q_btnh, p["query_norm"]["scale"], config.norm_eps)
    k_btkh = rms_norm(k_btkh, p["key_norm"]["scale"], config.norm_eps)
  # RoPE and the query scale in fp32 (no-op casts in fp32): bf16 sin/cos at positions
  # in the thousands would shift the angles.
  q_btnh = (apply_rope(q_btnh.astype(jnp.float32), q_pos_bt, consts["rope_base"],
                       consts["rope_scale"]) * jnp.float32(config.query_scale)).astype(dt)
  k_btkh = apply_rope(k_btkh.astype(jnp.float32), q_pos_bt, consts["rope_base"],
                      consts["rope_scale"]).astype(dt)

  # Keys and values as the score and value contractions read them: [B, S, K, H]
  # for training and prefill; the decode cache keeps keys [B, K, S, H] and values
  # [B, K, H, S] so that no step transposes a layer's whole cache.
  k_axes, v_axes = _CACHE_LAYOUT[layout]
  k_new = jnp.einsum(f"BSKH->{k_axes}", k_btkh)
  v_new = jnp.einsum(f"BSKH->{v_axes}", v_btkh)
  if layer_cache is None:
    keys, values, new_cache = k_new, v_new, None
  else:
    keys = jax.lax.dynamic_update_slice_in_dim(
        layer_cache["k"], k_new.astype(layer_cache["k"].dtype), write_index, k_axes.index("S"))
    values = jax.lax.dynamic_update_slice_in_dim(
        layer_cache["v"], v_new.astype(layer_cache["v"].dtype), write_index, v_axes.index("S"))
    new_cache = {"k": keys, "v": values}

  q_btkgh = q_btnh.reshape(b, t, k_heads, g, config.head_dim)
  logits_bkgts = _contract_f32(f"BTKGH,{k_axes}->BKGTS", q_btkgh, keys, dt)
  logits_bkgts = softcap(logits_bkgts, config.attn_logit_softcap)
  mask_bts = attention_mask(q_pos_bt, k_pos_bs, consts["window"])
  logits_bkgts = jnp.where(mask_bts[:, None, None], logits_bkgts, _MASKED)
  probs_bkgts = jax.nn.softmax(logits_bkgts, axis=-1)
  out_btkgh = _contract(f"BKGTS,{v_axes}->BTKGH", probs_bkgts, values, dt)
  out_btnh = out_btkgh.reshape(b, t, config.num_heads, config.head_dim)
  out_btnh = sharding.constrain(out_btnh, ("batch", None, "heads", None))
  if layout == "decode":
    out_btnh = out_btnh.reshape(b, t, config.num_heads * config.head_dim)
  return _contract(eq["attn_out"], out_btnh, p["attn_vec_einsum"]["w"], dt), new_cache


def _mlp(config: ModelConfig, p: Params, x_btd: jax.Array, layout: str) -> jax.Array:
  eq, dt = _EINSUMS[layout], _dtype(config)
  if layout == "decode":  # gate and up interleaved: E = (F, C), so F keeps its sharding.
    gate_up_btfc = _contract(eq["gating"], x_btd, p["gating_einsum"]["w"], dt).reshape(
        x_btd.shape[:2] + (-1, 2))
    gate_btf, up_btf = gate_up_btfc[..., 0], gate_up_btfc[..., 1]
  else:  # One dot per half: a [C, B, T, F] result makes XLA:CPU transpose it for the GELU.
    w_cdf = p["gating_einsum"]["w"]
    gate_btf, up_btf = (_contract(eq["gating"], x_btd, w_cdf[c], dt) for c in range(2))
  hidden_btf = jax.nn.gelu(gate_btf, approximate=True) * up_btf
  hidden_btf = sharding.constrain(hidden_btf, ("batch", None, "mlp"))
  return _contract(eq["linear"], hidden_btf, p["linear"]["w"], dt)


def _block(config: ModelConfig, p: Params, consts: dict[str, jax.Array], x_btd: jax.Array,
           positions_bt: jax.Array, layer_cache: Cache | None, k_pos_bs: jax.Array,
           write_index: jax.Array | int, layout: str) -> tuple[jax.Array, Cache | None]:
  """One decoder layer (the only implementation of it): returns (x_btd, new layer cache)."""
  h_btd = rms_norm(x_btd, p["pre_attention_norm"]["scale"], config.norm_eps)
  h_btd, new_layer_cache = _attention(config, p["attn"], h_btd, positions_bt, layer_cache,
                                      k_pos_bs, write_index, consts, layout)
  if config.use_post_attn_norm:
    h_btd = rms_norm(h_btd, p["post_attention_norm"]["scale"], config.norm_eps)
  x_btd = x_btd + h_btd
  h_btd = rms_norm(x_btd, p["pre_ffw_norm"]["scale"], config.norm_eps)
  h_btd = _mlp(config, p["mlp"], h_btd, layout)
  if config.use_post_ffw_norm:
    h_btd = rms_norm(h_btd, p["post_ffw_norm"]["scale"], config.norm_eps)
  return sharding.constrain(x_btd + h_btd, ("batch", None, None)), new_layer_cache


def _layer_constants(config: ModelConfig) -> dict[str, jax.Array]:
  """Per-layer window / RoPE values, scanned alongside the stacked params."""
  local = jnp.array([t == "local" for t in config.layer_types])
  return {
      "window": jnp.where(local, config.sliding_window or 0, 0).astype(jnp.int32),
      "rope_base": jnp.where(local, config.rope_base_local, config.rope_base_global),
      "rope_scale": jnp.where(local, 1.0, config.rope_scale_global),
  }


def _embed(config: ModelConfig, params: Params, tokens_bt: jax.Array) -> jax.Array:
  dt = _dtype(config)
  # Gather from a table replicated over the batch axes (an FSDP all-gather);
  # gathering from the 2-D sharded table makes XLA rematerialise it anyway.
  table_vd = sharding.constrain(params["embedder"]["input_embedding"], ("vocab", None))
  x_btd = table_vd[tokens_bt].astype(dt)
  x_btd = x_btd * jnp.asarray(config.embed_scale, dt)
  return sharding.constrain(x_btd, ("batch", None, None))


def _write_positions(cache: Cache, positions_bt: jax.Array, write_index) -> jax.Array:
  return jax.lax.dynamic_update_slice_in_dim(cache["pos"], positions_bt.astype(
      cache["pos"].dtype), write_index, axis=1)


def forward_hidden(config: ModelConfig, params: Params, tokens_bt: jax.Array,
                   positions_bt: jax.Array, *, cache: Cache | None = None,
                   write_index: jax.Array | int = 0) -> tuple[jax.Array, Cache | None]:
  """Final-normed hidden states [B, T, D] (and the updated cache).

  positions_bt: position of each token, -1 for padding (padding keys are never
  attended to). With `cache`, the T new keys/values are written at slots
  [write_index, write_index + T) and the queries attend over the whole cache.
  """
  x_btd = _embed(config, params, tokens_bt)
  if cache is None:
    k_pos_bs = positions_bt
    cache_kv = None
  else:
    k_pos_bs = _write_positions(cache, positions_bt, write_index)
    cache_kv = {"k": cache["k"], "v": cache["v"]}

  def layer(x_btd, scanned):
    p, consts, layer_cache = scanned
    return _block(config, p, consts, x_btd, positions_bt, layer_cache, k_pos_bs, write_index,
                  "stored")

  if config.remat:
    layer = jax.checkpoint(layer)
  x_btd, new_kv = jax.lax.scan(layer, x_btd, (params["layers"], _layer_constants(config),
                                              cache_kv))
  h_btd = rms_norm(x_btd, params["final_norm"]["scale"], config.norm_eps)
  new_cache = None if cache is None else {**new_kv, "pos": k_pos_bs}
  return h_btd, new_cache


def decode_params(config: ModelConfig, params: Params) -> Params:
  """`params` with the block weights as per-layer copies in the decode layout.

  For `forward_hidden_unrolled`, made once before a decode loop. Inside a loop,
  XLA's CPU backend would otherwise re-slice every layer out of the stacked
  weights and transpose the ones whose contracted axis is not last, every token
  (most of a decode step's time for small batches). Costs one extra copy of
  the block weights while it lives; each copy keeps its parameter's sharding.
  The copies (and the tied embedding, read by every step's logits) are made in the
  compute dtype, so a bf16 decode reads half the bytes of fp32 master weights.
  """
  dt = _dtype(config)
  layers = []
  for i in range(config.num_layers):
    layer = jax.tree.map(lambda x, i=i: x[i], params["layers"])
    for group, name, perm, merge in _DECODE_TRANSPOSES:
      stored_axes = sharding.param_logical_axes(f"layers/{group}/{name}/w", len(perm) + 1)[1:]
      w = jnp.transpose(layer[group][name]["w"].astype(dt), perm)
      axes = tuple(stored_axes[a] for a in perm)
      if merge is not None:
        first, count = merge
        w = w.reshape(w.shape[:first] + (-1,) + w.shape[first + count:])
        axes = axes[:first + 1] + axes[first + count:]
      layer[group] = {**layer[group], name: {"w": sharding.constrain(w, axes)}}
    layers.append(layer)
  embedding_vd = params["embedder"]["input_embedding"]
  if embedding_vd.dtype != dt:  # fp32 compute keeps the params' own table (no copy).
    embedding_vd = sharding.constrain(embedding_vd.astype(dt), sharding.param_logical_axes(
        "embedder/input_embedding", 2))
  return {**params, "embedder": {**params["embedder"], "input_embedding": embedding_vd},
          "layers": tuple(layers)}


def forward_hidden_unrolled(config: ModelConfig, dparams: Params, tokens_bt: jax.Array,
                            positions_bt: jax.Array, *, cache: Cache,
                            write_index: jax.Array | int) -> tuple[jax.Array, Cache]:
  """`forward_hidden` with a cache, layers unrolled over `decode_params` weights.

  The same `_block` math; the cache holds one array per layer (see
  `unstack_cache`), so a step updates each layer's keys in place rather than a
  slice of one [L, ...] buffer. Compile time grows with the number of layers.
  """
  x_btd = _embed(config, dparams, tokens_bt)
  k_pos_bs = _write_positions(cache, positions_bt, write_index)
  consts = _layer_constants(config)
  new_k, new_v = [], []
  for i, p in enumerate(dparams["layers"]):
    x_btd, layer_cache = _block(config, p, jax.tree.map(lambda c, i=i: c[i], consts), x_btd,
                                positions_bt, {"k": cache["k"][i], "v": cache["v"][i]},
                                k_pos_bs, write_index, "decode")
    new_k.append(layer_cache["k"])
    new_v.append(layer_cache["v"])
  h_btd = rms_norm(x_btd, dparams["final_norm"]["scale"], config.norm_eps)
  return h_btd, {"k": tuple(new_k), "v": tuple(new_v), "pos": k_pos_bs}


def logits_from_hidden(config: ModelConfig, params: Params, h_btd: jax.Array) -> jax.Array:
  """Tied output projection (compute-dtype operands, fp32 accumulation), then Gemma 2's
  final soft-cap: float32 [B, T, V]."""
  dt = _dtype(config)
  logits_btv = _contract_f32("BTD,VD->BTV", h_btd, params["embedder"]["input_embedding"], dt)
  logits_btv = sharding.constrain(logits_btv, ("batch", None, "vocab"))
  return softcap(logits_btv, config.final_logit_softcap)


def logits(config: ModelConfig, params: Params, tokens: jax.Array) -> jax.Array:
  """Causal logits, float32 [B, T, V], for int32 tokens [B, T] with every position valid."""
  tokens = jnp.asarray(tokens, jnp.int32)
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [batch, time], got shape {tokens.shape}.")
  positions_bt = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  h_btd, _ = forward_hidden(config, params, tokens, positions_bt)
  return logits_from_hidden(config, params, h_btd)


def init_cache(config: ModelConfig, batch_size: int, cache_size: int,
               dtype: str | None = None) -> Cache:
  """An empty KV cache with `cache_size` slots per sequence."""
  dt = jnp.dtype(dtype or config.dtype)
  shape = (config.num_layers, batch_size, cache_size, config.num_kv_heads, config.head_dim)
  return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt),
          "pos": jnp.full((batch_size, cache_size), -1, jnp.int32)}


def unstack_cache(cache: Cache, cache_size: int) -> Cache:
  """A stacked cache as per-layer arrays in the decode layout (for `forward_hidden_unrolled`),
  padded with empty slots (position -1) to `cache_size`:
  {"k": (L x [B, K, S, H]), "v": (L x [B, K, H, S]), "pos": [B, S]}."""
  extra = cache_size - cache["pos"].shape[1]
  if extra < 0:
    raise ValueError(f"cache_size {cache_size} is smaller than the cache's "
                     f"{cache['pos'].shape[1]} slots.")
  k_axes, v_axes = _CACHE_LAYOUT["decode"]

  def per_layer(stacked, axes):
    pad = [(0, extra if a == "S" else 0) for a in axes]
    return tuple(jnp.pad(jnp.einsum(f"BSKH->{axes}", x), pad) for x in stacked)

  return {"k": per_layer(cache["k"], k_axes), "v": per_layer(cache["v"], v_axes),
          "pos": jnp.pad(cache["pos"], ((0, 0), (0, extra)), constant_values=-1)}
