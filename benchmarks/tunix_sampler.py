"""Sampler throughput: our KV-cache `sample` beside Tunix's `Sampler`, same weights, one process.

For each model config (`benchmarks.sampler.CONFIGS`) and batch size, on the weights of
`benchmarks.sampler.benchmark_params` and the same random prompts:

  ours   `score_jax.sampling.sample`, greedy, compiled ahead of time (compile timed apart),
         its `decode_weights` copies made inside every timed call (as benchmarks/sampler.py).
  tunix  `tunix.generate.sampler.Sampler` (google-tunix) over `tunix.models.gemma.model.Gemma`
         holding the same weights (`tunix_params` maps our pytree onto Tunix's nnx state),
         called through its public `__call__` (greedy, `max_prompt_length` = the prompt
         length, so no padding), with a tokenizer that maps "id id id" strings to ids; the
         pad and EOS id is -1, which no row can emit, so every row gets `new_tokens` tokens.
         Its cache holds exactly prompt_len + new_tokens slots.

Both run in this process on the same JAX, repetitions interleaved (one untimed warm-up
call each), medians reported:

  generate tok/s  B * new_tokens / time of one full call (prefill included).
  decode tok/s    B * (new_tokens - 1) / (full time - time of a one-token call).

Before any timing, Tunix's forward logits on the prompts are compared with
`score_jax.model.logits` (max |diff|), and the greedy tokens of every timed call are
compared row by row; a mismatch is reported, not hidden.

Tunix pins `safetensors<0.8` (this repo pins 0.8.0), so it lives in its own venv with the
same jax / flax / numpy as `.venv` (checked: jax 0.10.2, flax 0.12.8, numpy 2.4.6):

  python3.11 -m venv .venv-tunix
  .venv-tunix/bin/pip install google-tunix==0.1.7 "jax[cpu]==0.10.2"
  grep -v '^safetensors' requirements.txt > /tmp/req-tunix.txt
  .venv-tunix/bin/pip install -r /tmp/req-tunix.txt pytest

  nice .venv-tunix/bin/python -m benchmarks.tunix_sampler --out runs/tunix_sampler.json
  .venv-tunix/bin/python -m benchmarks.tunix_sampler --quick       # smoke run, seconds

`tunix_params` and `check_supported` need no Tunix (tests/test_tunix_sampler.py runs them
in the normal venv).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import sampler as hf_bench
from score_jax import model, sampling

TunixPath = tuple[str | int, ...]
_NO_TOKEN = -1  # Tunix's pad and EOS id here: never an argmax, so no row stops or is masked.


def check_supported(config: model.ModelConfig) -> None:
  """Raises ValueError if Tunix's Gemma (1 / 2) module cannot express `config` exactly."""
  problems = []
  if config.use_qk_norm:
    problems.append("QK-norm (Gemma 3) is in tunix.models.gemma3, not mapped here")
  if abs(config.query_scale - config.head_dim ** -0.5) > 1e-12:
    problems.append(f"query_pre_attn_scalar={config.query_pre_attn_scalar} != head_dim "
                    f"{config.head_dim} (Tunix scales queries by head_dim ** -0.5)")
  if (config.rope_base_global, config.rope_base_local, config.rope_scale_global) != (
      10_000.0, 10_000.0, 1.0):
    problems.append("RoPE base must be 10000 and unscaled on every layer (Tunix's fixed RoPE)")
  if config.norm_eps != 1e-6:
    problems.append(f"norm_eps={config.norm_eps} (Tunix's RMSNorm uses 1e-6)")
  if problems:
    raise ValueError("config cannot be mapped onto tunix.models.gemma exactly: "
                     + "; ".join(problems) + ". Pick a Gemma 1 / 2 style config.")


def tunix_params(config: model.ModelConfig, params: model.Params) -> dict[TunixPath, np.ndarray]:
  """Our params pytree -> {Tunix Gemma nnx state path: array} (pure numpy, no Tunix needed).

  Tunix's layer i holds the slice i of our stacked weights with the same axis order
  (q_einsum [N, D, H], kv_einsum [2, K, D, H], attn_vec_einsum [N, H, D]); where N == K
  it fuses them into qkv_einsum [3, N, D, H]. Its MLP is three nnx.Linear kernels,
  gate / up [D, F] (our gating_einsum[0] / [1]) and down [F, D]. Norm scales are w in
  (1 + w) in both.
  """
  check_supported(config)
  p = jax.tree.map(np.asarray, jax.device_get(params))
  layers, attn = p["layers"], p["layers"]["attn"]
  out: dict[TunixPath, np.ndarray] = {
      ("embedder", "input_embedding"): p["embedder"]["input_embedding"],
      ("final_norm", "scale"): p["final_norm"]["scale"]}
  norms = {"pre_attention_norm": "pre_attention_norm", "pre_ffw_norm": "pre_ffw_norm",
           "post_attention_norm": "post_attn_norm", "post_ffw_norm": "post_ffw_norm"}
  for i in range(config.num_layers):
    q_ndh, kv_ckdh = attn["q_einsum"]["w"][i], attn["kv_einsum"]["w"][i]
    if config.num_heads == config.num_kv_heads:
      out[("layers", i, "attn", "qkv_einsum", "w")] = np.concatenate([q_ndh[None], kv_ckdh])
    else:
      out[("layers", i, "attn", "q_einsum", "w")] = q_ndh
      out[("layers", i, "attn", "kv_einsum", "w")] = kv_ckdh
    out[("layers", i, "attn", "attn_vec_einsum", "w")] = attn["attn_vec_einsum"]["w"][i]
    gating_cdf = layers["mlp"]["gating_einsum"]["w"][i]
    out[("layers", i, "mlp", "gate_proj", "kernel")] = gating_cdf[0]
    out[("layers", i, "mlp", "up_proj", "kernel")] = gating_cdf[1]
    out[("layers", i, "mlp", "down_proj", "kernel")] = layers["mlp"]["linear"]["w"][i]
    for ours, theirs in norms.items():
      if ours in layers:
        out[("layers", i, theirs, "scale")] = layers[ours]["scale"][i]
  return out


def tunix_model(config: model.ModelConfig, params: model.Params):
  """A `tunix.models.gemma.model.Gemma` holding `params` (its shapes checked path by path)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from tunix.models.gemma import model as tunix_gemma  # pylint: disable=import-outside-toplevel

  kinds = {"local": tunix_gemma.AttentionType.LOCAL_SLIDING,
           "global": tunix_gemma.AttentionType.GLOBAL}
  tunix_config = tunix_gemma.ModelConfig(
      num_layers=config.num_layers, num_embed=config.vocab_size, embed_dim=config.d_model,
      hidden_dim=config.ffw_hidden, num_heads=config.num_heads, head_dim=config.head_dim,
      num_kv_heads=config.num_kv_heads, final_logit_softcap=config.final_logit_softcap,
      use_post_attn_norm=config.use_post_attn_norm, use_post_ffw_norm=config.use_post_ffw_norm,
      attention_types=tuple(kinds[t] for t in config.layer_types),
      attn_logits_soft_cap=config.attn_logit_softcap, sliding_window_size=config.sliding_window,
      shd_config=tunix_gemma.ShardingConfig.get_default_sharding(is_sampling=True))
  values = tunix_params(config, params)
  abstract = nnx.eval_shape(lambda: tunix_gemma.Gemma(tunix_config, rngs=nnx.Rngs(params=0)))
  graphdef, state = nnx.split(abstract)
  expected = {path: tuple(v.shape) for path, v in state.flat_state()}
  got = {path: tuple(v.shape) for path, v in values.items()}
  if expected != got:
    diff = sorted(set(expected.items()) ^ set(got.items()), key=str)
    raise ValueError(f"tunix_params does not match Tunix's Gemma state (path, shape): {diff}")
  nested: dict[Any, Any] = {}
  for path, value in values.items():
    node = nested
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jnp.asarray(value)
  state.replace_by_pure_dict(nested)
  return nnx.merge(graphdef, state)


def tunix_logits(tunix_gemma_model, tokens_bt: jax.Array) -> jax.Array:
  """Tunix's forward without a cache (causal mask; its sliding window applies inside)."""
  b, t = tokens_bt.shape
  positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  mask_btt = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
  logits_btv, _ = tunix_gemma_model(tokens_bt, positions_bt, None, mask_btt)
  return logits_btv


class IdTokenizer:
  """The tokenizer interface Tunix's Sampler accepts, over "id id id" strings."""

  def encode(self, text: str) -> list[int]:
    return [int(x) for x in text.split()]

  def decode(self, ids: Sequence[int]) -> str:
    return " ".join(str(int(x)) for x in ids)

  def bos_id(self) -> int:
    return 0  # falsy: the Sampler then prepends no BOS.

  def eos_id(self) -> int:
    return _NO_TOKEN

  def pad_id(self) -> int:
    return _NO_TOKEN


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def bench_case(config: model.ModelConfig, params: model.Params, tunix_gemma_model, batch: int,
               args: argparse.Namespace) -> dict[str, Any]:
  """Ours and Tunix at one batch size: medians, compile / first-call times, token checks."""
  from tunix.generate import sampler as tunix_sampler  # pylint: disable=import-outside-toplevel
  p, m = args.prompt_len, args.new_tokens
  prompts_bp, tokens_bp, lengths_b = hf_bench.bench_prompts(config, batch, p, args.seed)
  compile_s, ours = hf_bench.compiled_ours(config, params, tokens_bp, lengths_b, m)
  runs = {f"ours_{name}": lambda fn=fn: np.asarray(fn().tokens) for name, fn in ours.items()}
  if args.stored_layout:  # ours with the block weights in the stored layout, as Tunix has them.
    settings = sampling.SamplingConfig(max_new_tokens=m)
    compile_s["ours_stored_full"], compiled = _timed(lambda: sampling.sample.lower(
        config, params, tokens_bp, lengths_b, None, settings=settings, dparams=None).compile())
    runs["ours_stored_full"] = lambda c=compiled: np.asarray(jax.block_until_ready(c(
        params, tokens_bp, lengths_b, None, dparams=None)).tokens)

  tunix = tunix_sampler.Sampler(
      tunix_gemma_model, IdTokenizer(),
      tunix_sampler.CacheConfig(cache_size=p + m, num_layers=config.num_layers,
                                num_kv_heads=config.num_kv_heads, head_dim=config.head_dim))
  texts = [IdTokenizer().decode(row) for row in prompts_bp]

  def tunix_call(new: int) -> np.ndarray:
    out = tunix(texts, max_generation_steps=new, max_prompt_length=p, echo=False,
                eos_tokens=[_NO_TOKEN], temperature=0.0)
    return np.stack([np.asarray(row) for row in out.tokens])

  runs["tunix_full"] = lambda: tunix_call(m)
  runs["tunix_one"] = lambda: tunix_call(1)

  # Warm-up: Tunix jits on its first call, so its first call is its compile (+ one run).
  warmup_s, outputs = {}, {}
  for name, fn in runs.items():
    warmup_s[name], outputs[name] = _timed(fn)
  # At least --reps passes, more until --min_seconds: the tiny config's ms-long calls are
  # otherwise at the mercy of the other processes on the machine.
  times: dict[str, list[float]] = {name: [] for name in runs}
  start = time.perf_counter()
  while len(times["ours_full"]) < args.reps or (
      time.perf_counter() - start < args.min_seconds and len(times["ours_full"]) < 100):
    for name, fn in runs.items():
      times[name].append(_timed(fn)[0])
  med = {name: statistics.median(ts) for name, ts in times.items()}
  for name in ("tunix_full", "tunix_one"):
    compile_s[f"{name}_first_call_minus_median"] = warmup_s[name] - med[name]

  def rates(full: float, one: float) -> dict[str, float]:
    return {"generate_tok_s": batch * m / full, "prefill_tok_s": batch * p / one,
            "decode_tok_s": batch * (m - 1) / max(full - one, 1e-9)}

  systems = {name: rates(med[f"{name}_full"], med[f"{name}_one"]) for name in ("ours", "tunix")}
  if args.stored_layout:
    systems["ours_stored"] = rates(med["ours_stored_full"], med["ours_one"])
  ratios = {f"{k.split('_')[0]}_vs_tunix": systems["ours"][k] / systems["tunix"][k]
            for k in systems["ours"]}
  tokens = {"full": hf_bench.compare("tunix", outputs["ours_full"], outputs["tunix_full"]),
            "one": hf_bench.compare("tunix (1 token)", outputs["ours_one"],
                                     outputs["tunix_one"])}
  if args.stored_layout:
    ratios["stored_decode_vs_tunix"] = (systems["ours_stored"]["decode_tok_s"]
                                        / systems["tunix"]["decode_tok_s"])
    tokens["stored"] = hf_bench.compare("ours, stored layout", outputs["ours_full"],
                                         outputs["ours_stored_full"])
  return {"batch": batch, "prompt_len": p, "new_tokens": m, "systems": systems,
          "ratios": ratios, "median_s": med, "times_s": times, "compile_s": compile_s,
          "warmup_s": warmup_s, "tokens": tokens}


def markdown_table(results: dict[str, Any]) -> str:
  """One row per (config, batch)."""
  head = ("| config | batch | ours gen tok/s | Tunix gen tok/s | ours/Tunix gen "
          "| ours decode tok/s | Tunix decode tok/s | ours/Tunix decode | ours/Tunix prefill "
          "| ours compile s | Tunix first call - median s | tokens equal "
          "| ours stored layout / Tunix decode |")
  lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
  for name, entry in results["configs"].items():
    for case in entry["cases"]:
      s, r, c = case["systems"], case["ratios"], case["compile_s"]
      check = case["tokens"]["full"]
      stored = r.get("stored_decode_vs_tunix")
      lines.append(
          f"| {name} | {case['batch']} | {s['ours']['generate_tok_s']:,.0f} "
          f"| {s['tunix']['generate_tok_s']:,.0f} | {r['generate_vs_tunix']:.2f} "
          f"| {s['ours']['decode_tok_s']:,.0f} | {s['tunix']['decode_tok_s']:,.0f} "
          f"| {r['decode_vs_tunix']:.2f} | {r['prefill_vs_tunix']:.2f} "
          f"| {c['ours_full']:.1f} | {c['tunix_full_first_call_minus_median']:.1f} "
          f"| {check['rows_equal']}/{check['rows']} "
          f"| {'-' if stored is None else f'{stored:.2f}'} |")
  return "\n".join(lines)


def _versions() -> dict[str, str]:
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  return {name: metadata.version(name) for name in ("google-tunix", "jax", "jaxlib", "flax",
                                                     "numpy")} | {
      "python": platform.python_version()}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.tunix_sampler", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", default="tiny,gemma2-91m",
                      help=f"comma-separated model configs, from {sorted(hf_bench.CONFIGS)}")
  parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")],
                      default=[1, 8, 32], help="e.g. 1,8,32")
  parser.add_argument("--prompt_len", type=int, default=64,
                      help="prompt tokens per row (a power of two >= 16)")
  parser.add_argument("--new_tokens", type=int, default=64, help="greedy tokens per row")
  parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median)")
  parser.add_argument("--min_seconds", type=float, default=2.0,
                      help="keep repeating (up to 100 passes) until a case has run this long")
  parser.add_argument("--stored_layout", action="store_true",
                      help="also time ours without `decode_weights` (block weights in the "
                      "stored [N, D, H] / [D, F] layout inside the loop, as Tunix holds them)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: tiny config, batch 2, 16+8 tokens, 1 rep")
  parser.add_argument("--out", help="write the JSON results here (default: print to stdout)")
  args = parser.parse_args(argv)
  if args.quick:
    args.configs, args.batches, args.prompt_len, args.new_tokens, args.reps = (
        "tiny", [2], 16, 8, 1)
    args.min_seconds = 0.0
  args.configs = args.configs.split(",")
  unknown = sorted(set(args.configs) - set(hf_bench.CONFIGS))
  if unknown:
    parser.error(f"unknown config(s) {unknown}; choose from {sorted(hf_bench.CONFIGS)}.")
  if args.reps < 1 or args.new_tokens < 2 or min(args.batches) < 1:
    parser.error("--reps and batches must be >= 1, and --new_tokens >= 2 "
                 "(decode throughput subtracts a one-token call).")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark; prints the table (and the JSON unless --out); returns the results."""
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  results: dict[str, Any] = {
      "command": " ".join(["python -m benchmarks.tunix_sampler", *argv]),
      "machine": hf_bench.machine(),
      "versions": _versions(), "configs": {}}
  for name in args.configs:
    config = hf_bench.CONFIGS[name]()
    params = hf_bench.benchmark_params(config, args.seed)
    load_s, tunix_gemma_model = _timed(lambda: tunix_model(config, params))
    # Same weights, same math: the forward logits must agree before any timing means much.
    probe_bt = jnp.asarray(np.random.default_rng(args.seed).integers(
        3, config.vocab_size, (2, args.prompt_len + args.new_tokens)), jnp.int32)
    logits_diff = float(jnp.max(jnp.abs(tunix_logits(tunix_gemma_model, probe_bt)
                                        - model.logits(config, params, probe_bt))))
    print(f"{name}: {config.num_params() / 1e6:.1f}M params (Tunix model built in "
          f"{load_s:.1f} s), max |logits ours - Tunix| = {logits_diff:.2e}", file=sys.stderr)
    cases = []
    for batch in args.batches:
      case = bench_case(config, params, tunix_gemma_model, batch, args)
      cases.append(case)
      print(f"  batch {batch}: ours/Tunix generate {case['ratios']['generate_vs_tunix']:.2f}, "
            f"decode {case['ratios']['decode_vs_tunix']:.2f}", file=sys.stderr)
    results["configs"][name] = {"num_params": config.num_params(), "config": repr(config),
                                "logits_max_abs_diff": logits_diff, "cases": cases}
  results["machine"]["loadavg_end"] = os.getloadavg()
  print(markdown_table(results))
  hf_bench.write_results(results, args.out)
  return results


if __name__ == "__main__":
  main()
