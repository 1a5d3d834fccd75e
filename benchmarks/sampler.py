"""Sampler throughput: our KV-cache `sample` beside transformers' `generate` and a naive loop.

For each model config and batch size, on the same random weights and prompts:

  ours   `score_jax.sampling.sample`, greedy, compiled ahead of time (compile timed apart),
         with its `decode_weights` copies made inside every timed call.
  hf     transformers' `generate` on the same weights exported with `checkpoints.save_hf`,
         fp32, eager attention (Gemma 2 has no SDPA path: SDPA cannot soft-cap), greedy,
         EOS disabled so every row gets exactly `new_tokens` tokens; timed for every
         `--hf_cache` implementation (dynamic / static KV cache) and `--torch_threads`
         count, and compared at its fastest (a conservative baseline).
  naive  a jitted `fori_loop` that reruns the full `score_jax.model.logits` forward on
         a fixed [B, prompt_len + new_tokens] buffer per new token (no KV cache; one
         compile). Every step costs the same, so it runs only `--naive_steps` steps
         and its throughput is B * steps / time.

Throughputs (median over `--reps` repetitions, run interleaved so that load from
other processes hits all systems alike):

  generate tok/s  B * new_tokens / time of one full generate call (prefill included);
                  the headline number, since RL rollouts pay for both.
  prefill tok/s   B * prompt_len / time of a call producing one new token.
  decode tok/s    B * (new_tokens - 1) / (full time - one-token time).

All prompts have `prompt_len` tokens (a power of two, so `pad_prompts` adds no
padding and both libraries see identical inputs). The greedy tokens of ours, hf
and naive are compared; a mismatch is reported, not hidden.

  python -m benchmarks.sampler                 # the full run recorded in BENCHMARKS.md
  python -m benchmarks.sampler --quick         # a smoke run (tiny config, seconds)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import hostinfo, model, sampling
from score_jax.model import checkpoints

# OpenMP's default busy-waiting makes multi-threaded torch stall for seconds when other
# processes share the cores (measured here: 0.4-21 s for a call that takes 0.06 s on one
# thread); passive waiting avoids it. It only applies if torch was not imported before us.
_TORCH_PREIMPORTED = "torch" in sys.modules
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# A ~91M-parameter Gemma 2 (d 640, 12 layers, 32k vocab); heads sized like Gemma 2 2B's
# ratio (GQA 2:1), MLP 4x, Gemma 2's 4096-token window (wider than any run here).
CONFIGS: dict[str, Callable[[], model.ModelConfig]] = {
    "tiny": lambda: model.get_config("tiny"),
    "gemma2-91m": lambda: model.get_config(
        "tiny", vocab_size=32_000, d_model=640, num_layers=12, num_heads=8, num_kv_heads=4,
        head_dim=64, ffw_hidden=2560, sliding_window=4096, query_pre_attn_scalar=64),
}
HF_CACHES = ("dynamic", "static")


def benchmark_params(config: model.ModelConfig, seed: int) -> model.Params:
  """`init_params` with a 0.1x embedding and random norm scales (final norm around 4).

  With `init_params` as is (zero norm scales) the embedding dominates the residual
  stream and greedy decoding repeats the last token, which would make the token
  comparison moot. These params give varied continuations, and fan-in scaled blocks
  keep fp32 differences between implementations (~1e-5 on the logits) far below the
  typical top-1 / top-2 logit gap (~0.1), so greedy ties are rare.
  """
  params = model.init_params(config, jax.random.key(seed))
  keys = iter(jax.random.split(jax.random.key(seed + 1), 16))

  def rescale(path, x):
    if path[0].key == "embedder":
      return 0.1 * x
    if path[-1].key != "scale":
      return x
    offset = 4.0 if path[0].key == "final_norm" else 0.0
    return offset + 0.5 * jax.random.normal(next(keys), x.shape, x.dtype)

  return jax.tree_util.tree_map_with_path(rescale, params)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def _naive_loop(config: model.ModelConfig, steps: int):
  """Jitted greedy loop: full `model.logits` over the whole buffer for every new token."""

  @jax.jit
  def run(params, buffer_bt, prompt_len):
    def step(i, buffer_bt):
      logits_btv = model.logits(config, params, buffer_bt)
      last_bv = jax.lax.dynamic_index_in_dim(logits_btv, prompt_len + i - 1, axis=1,
                                             keepdims=False)
      token_b = jnp.argmax(last_bv, axis=-1).astype(jnp.int32)
      return jax.lax.dynamic_update_index_in_dim(buffer_bt, token_b, prompt_len + i, axis=1)
    return jax.lax.fori_loop(0, steps, step, buffer_bt)

  return run


class _Hf:
  """transformers' Gemma 2 on our weights (save_hf -> from_pretrained), greedy generate."""

  def __init__(self, config: model.ModelConfig, params: model.Params, dtype: str):
    import torch  # Deferred: only the benchmark needs torch.
    import transformers
    self.torch = torch
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as path:
      # Exported in fp32; from_pretrained rounds to `dtype` as `astype` does for ours.
      checkpoints.save_hf(dataclasses.replace(config, dtype="float32"),
                          jax.tree.map(lambda x: x.astype(jnp.float32), params), path)
      self.model = transformers.AutoModelForCausalLM.from_pretrained(
          path, dtype=getattr(torch, dtype), attn_implementation="eager").eval()
    # No EOS: every row generates exactly max_new_tokens, as in `sample` without stop tokens
    # (min_new_tokens would instead mask EOS out of the argmax).
    self.model.generation_config.eos_token_id = None
    self.model.generation_config.pad_token_id = 0

  def generate(self, prompts_bp: np.ndarray, new_tokens: int, cache: str,
               threads: int) -> np.ndarray:
    self.torch.set_num_threads(threads)
    ids = self.torch.from_numpy(prompts_bp).long()
    out = self.model.generate(ids, attention_mask=self.torch.ones_like(ids), do_sample=False,
                              max_new_tokens=new_tokens, cache_implementation=cache)
    return out[:, prompts_bp.shape[1]:].numpy()


def compare(name: str, ours_bn: np.ndarray, other_bn: np.ndarray) -> dict[str, Any]:
  """Rows of `other` equal to ours (over other's length), and the first differing step."""
  ours_bn = ours_bn[:, :other_bn.shape[1]]
  same_b = (ours_bn == other_bn).all(axis=1)
  diff = np.argwhere(ours_bn != other_bn)
  result = {"rows_equal": int(same_b.sum()), "rows": int(same_b.size),
            "first_mismatch_step": int(diff[:, 1].min()) if diff.size else None}
  if diff.size:
    print(f"  MISMATCH vs {name}: {result}", file=sys.stderr)
  return result


def bench_prompts(config: model.ModelConfig, batch: int, prompt_len: int,
                  seed: int) -> tuple[np.ndarray, jax.Array, jax.Array]:
  """Random prompts of exactly `prompt_len` tokens: (numpy [B, P], our tokens, our lengths)."""
  prompts_bp = np.random.default_rng(seed + batch).integers(
      3, config.vocab_size, (batch, prompt_len)).astype(np.int32)
  tokens_bp, lengths_b = (jnp.asarray(x) for x in sampling.pad_prompts(prompts_bp.tolist()))
  if tokens_bp.shape[1] != prompt_len:
    raise ValueError(f"--prompt_len {prompt_len} is not a sampler bucket (a power of two >= "
                     f"{sampling.MIN_BUCKET}); pick one so that no padding is added.")
  return prompts_bp, tokens_bp, lengths_b


def compiled_ours(config: model.ModelConfig, params: model.Params, tokens_bp: jax.Array,
                  lengths_b: jax.Array, new_tokens: int
                  ) -> tuple[dict[str, float], dict[str, Callable[[], sampling.SampleOutput]]]:
  """Our greedy `sample`, compiled ahead of time for `new_tokens` ("full") and 1 ("one") new
  tokens: (compile seconds, calls). The decode loop's weight copies (`decode_weights`, made
  outside `sample` as `generate` and `rollout_in_chunks` do) are made inside every full call."""
  compile_s, calls = {}, {}
  jax.block_until_ready(sampling.decode_weights(config, params))  # compile
  for name, new in (("full", new_tokens), ("one", 1)):
    settings = sampling.SamplingConfig(max_new_tokens=new)
    dparams = jax.eval_shape(sampling.decode_weights, config, params) if new > 1 else None
    compile_s[f"ours_{name}"], compiled = _timed(lambda: sampling.sample.lower(
        config, params, tokens_bp, lengths_b, None, settings=settings,
        dparams=dparams).compile())
    if new > 1:
      calls[name] = lambda c=compiled: jax.block_until_ready(c(
          params, tokens_bp, lengths_b, None, dparams=sampling.decode_weights(config, params)))
    else:
      calls[name] = lambda c=compiled: jax.block_until_ready(c(params, tokens_bp, lengths_b, None,
                                                               dparams=None))
  return compile_s, calls


def bench_case(config: model.ModelConfig, params: model.Params, hf: _Hf, batch: int,
               args: argparse.Namespace) -> dict[str, Any]:
  """All systems at one batch size; returns medians, compile times and token checks."""
  p, m = args.prompt_len, args.new_tokens
  naive_steps = min(args.naive_steps or m, m)
  prompts_bp, tokens_bp, lengths_b = bench_prompts(config, batch, p, args.seed)
  compile_s, ours = compiled_ours(config, params, tokens_bp, lengths_b, m)
  buffer_bt = jnp.zeros((batch, p + m), jnp.int32).at[:, :p].set(prompts_bp)
  naive_fn = _naive_loop(config, naive_steps)
  compile_s["naive"], naive_compiled = _timed(
      lambda: naive_fn.lower(params, buffer_bt, p).compile())
  runs: dict[str, Callable[[], Any]] = {
      "ours_full": ours["full"], "ours_one": ours["one"],
      "naive": lambda: jax.block_until_ready(naive_compiled(params, buffer_bt, p))}
  for cache, threads in args.hf_variants:
    name = f"hf_{cache}_t{threads}"
    runs[f"{name}_full"] = lambda c=cache, t=threads: hf.generate(prompts_bp, m, c, t)
    runs[f"{name}_one"] = lambda c=cache, t=threads: hf.generate(prompts_bp, 1, c, t)

  # One untimed warm-up call each (HF's first call sets up caches), then interleaved reps.
  warmup_s, outputs = {}, {}
  for name, fn in runs.items():
    warmup_s[name], outputs[name] = _timed(fn)
  times: dict[str, list[float]] = {name: [] for name in runs}
  for _ in range(args.reps):
    for name, fn in runs.items():
      times[name].append(_timed(fn)[0])
  med = {name: statistics.median(ts) for name, ts in times.items()}

  ours_tokens = np.asarray(outputs["ours_full"].tokens)
  naive_tokens = np.asarray(outputs["naive"])[:, p:p + naive_steps]
  checks = {"naive": compare("naive", ours_tokens, naive_tokens)}
  hf_names = [f"hf_{cache}_t{threads}" for cache, threads in args.hf_variants]
  for name in hf_names:
    checks[name] = compare(name, ours_tokens, outputs[f"{name}_full"])

  def rates(full: float, one: float) -> dict[str, float]:
    return {"generate_tok_s": batch * m / full, "prefill_tok_s": batch * p / one,
            "decode_tok_s": batch * (m - 1) / max(full - one, 1e-9)}

  systems = {"ours": rates(med["ours_full"], med["ours_one"]),
             "naive": {"generate_tok_s": batch * naive_steps / med["naive"]}}
  for name in hf_names:
    systems[name] = rates(med[f"{name}_full"], med[f"{name}_one"])
  best_hf = max(hf_names, key=lambda name: systems[name]["generate_tok_s"])
  hf_best = systems[best_hf]
  ratios = {
      "generate_vs_hf": systems["ours"]["generate_tok_s"] / hf_best["generate_tok_s"],
      "decode_vs_hf": systems["ours"]["decode_tok_s"] / hf_best["decode_tok_s"],
      "prefill_vs_hf": systems["ours"]["prefill_tok_s"] / hf_best["prefill_tok_s"],
      "generate_vs_naive": (systems["ours"]["generate_tok_s"]
                            / systems["naive"]["generate_tok_s"]),
  }
  return {"batch": batch, "prompt_len": p, "new_tokens": m, "naive_steps": naive_steps,
          "systems": systems, "best_hf": best_hf, "ratios": ratios,
          "median_s": med, "times_s": times, "compile_s": compile_s, "warmup_s": warmup_s,
          "tokens": checks}


def markdown_table(results: dict[str, Any]) -> str:
  """The BENCHMARKS.md table: one row per (config, batch)."""
  head = ("| config | batch | ours gen tok/s | HF gen tok/s (best setting) | naive tok/s "
          "| ours/HF gen | ours/HF decode | ours/naive | ours prefill tok/s "
          "| HF prefill tok/s | ours/HF prefill | ours compile s | tokens = HF / naive |")
  lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
  for name, entry in results["configs"].items():
    for case in entry["cases"]:
      s, r = case["systems"], case["ratios"]
      hf = s[case["best_hf"]]
      # Token agreement: the worst of the HF variants timed.
      hf_check = min((v for k, v in case["tokens"].items() if k.startswith("hf_")),
                     key=lambda check: check["rows_equal"])
      _, cache, threads = case["best_hf"].split("_")
      naive_check = case["tokens"]["naive"]
      lines.append(
          f"| {name} | {case['batch']} | {s['ours']['generate_tok_s']:,.0f} "
          f"| {hf['generate_tok_s']:,.0f} ({cache}, {threads[1:]} thr) "
          f"| {s['naive']['generate_tok_s']:,.0f} | {r['generate_vs_hf']:.2f} "
          f"| {r['decode_vs_hf']:.2f} | {r['generate_vs_naive']:.1f} "
          f"| {s['ours']['prefill_tok_s']:,.0f} | {hf['prefill_tok_s']:,.0f} "
          f"| {r['prefill_vs_hf']:.2f} | {case['compile_s']['ours_full']:.1f} "
          f"| {hf_check['rows_equal']}/{hf_check['rows']} "
          f"/ {naive_check['rows_equal']}/{naive_check['rows']} |")
  return "\n".join(lines)


def machine() -> dict[str, Any]:
  """The machine a run measured on: CPUs, processor, JAX devices, load average at the start."""
  return {"cpus": os.cpu_count(), "processor": hostinfo.describe(),
          "jax_devices": [str(d) for d in jax.devices()], "loadavg_start": os.getloadavg()}


def write_results(results: dict[str, Any], out: str | None) -> None:
  """The JSON results to `out`, or to stdout when no path is given."""
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
      json.dump(results, f, indent=1)
  else:
    print(json.dumps(results, indent=1))


def versions() -> dict[str, str]:
  import jaxlib
  import torch
  import transformers
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "torch": torch.__version__,
          "transformers": transformers.__version__, "numpy": np.__version__,
          "python": platform.python_version()}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.sampler", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  ints = lambda s: [int(x) for x in s.split(",")]
  parser.add_argument("--configs", default=",".join(CONFIGS),
                      help=f"comma-separated model configs, from {sorted(CONFIGS)}")
  parser.add_argument("--batches", type=ints, default=[1, 8, 32], help="e.g. 1,8,32")
  parser.add_argument("--prompt_len", type=int, default=64,
                      help="prompt tokens per row (a power of two >= 16)")
  parser.add_argument("--new_tokens", type=int, default=64, help="greedy tokens per row")
  parser.add_argument("--naive_steps", type=int, default=4,
                      help="decode steps the naive loop runs (0 = all new_tokens)")
  parser.add_argument("--hf_cache", default="dynamic",
                      help=f"transformers cache_implementation(s) to time, from {HF_CACHES}; "
                      "the ratios use the fastest")
  parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median)")
  parser.add_argument("--torch_threads", type=ints, default=sorted({1, os.cpu_count()}),
                      help="torch thread count(s) to time HF with; the ratios use the fastest")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="params and activations, for both ours and transformers'")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: tiny config, batch 2, 16+8 tokens, 1 rep, "
                      "dynamic cache, 1 torch thread")
  parser.add_argument("--out", help="write the JSON results here (default: print to stdout)")
  args = parser.parse_args(argv)
  if args.quick:
    args.configs, args.batches, args.prompt_len, args.new_tokens = "tiny", [2], 16, 8
    args.reps, args.hf_cache, args.torch_threads = 1, "dynamic", [1]
  args.configs = args.configs.split(",")
  args.hf_caches = args.hf_cache.split(",")
  args.hf_variants = [(cache, threads) for cache in args.hf_caches
                      for threads in args.torch_threads]
  unknown = sorted(set(args.configs) - set(CONFIGS))
  if unknown:
    parser.error(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}.")
  bad_caches = sorted(set(args.hf_caches) - set(HF_CACHES))
  if bad_caches:
    parser.error(f"unknown --hf_cache value(s) {bad_caches}; choose from {list(HF_CACHES)}.")
  if args.reps < 1 or args.new_tokens < 2 or min(args.batches + args.torch_threads) < 1:
    parser.error("--reps, batches and torch threads must be >= 1, and --new_tokens >= 2 "
                 "(decode throughput subtracts a one-token call).")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark; prints the table (and the JSON unless --out); returns the results."""
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  results: dict[str, Any] = {
      "command": " ".join(["python -m benchmarks.sampler", *argv]),
      "machine": {**machine(), "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
                  "torch_imported_first": _TORCH_PREIMPORTED},
      "versions": versions(), "configs": {}}
  for name in args.configs:
    config = CONFIGS[name]()
    params = benchmark_params(config, args.seed)
    if args.dtype != config.dtype:  # bf16 compute on the same random weights, rounded to
      # bf16 (HF's weights) and kept as fp32 master weights (ours: bf16 decode copies).
      config = dataclasses.replace(config, dtype=args.dtype)
      params = jax.tree.map(lambda x: x.astype(args.dtype).astype(jnp.float32), params)
    load_s, hf = _timed(lambda: _Hf(config, params, args.dtype))
    print(f"{name}: {config.num_params() / 1e6:.1f}M params (HF export + load {load_s:.1f} s)",
          file=sys.stderr)
    cases = []
    for batch in args.batches:
      case = bench_case(config, params, hf, batch, args)
      cases.append(case)
      print(f"  batch {batch}: ours/HF generate {case['ratios']['generate_vs_hf']:.2f}, "
            f"ours/naive {case['ratios']['generate_vs_naive']:.1f}", file=sys.stderr)
    results["configs"][name] = {"num_params": config.num_params(), "config": repr(config),
                                "cases": cases}
  print(markdown_table(results))
  write_results(results, args.out)
  return results


if __name__ == "__main__":
  main()
