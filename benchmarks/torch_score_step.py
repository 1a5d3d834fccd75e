"""One SCoRe Stage II step: ours beside a plain PyTorch / transformers step (issue #9).

Both systems start from the same weights and train on the same problems of each step
(`train.rl_batch`'s draw), with the same prompts_per_step x samples_per_prompt episodes,
max_new_tokens, temperature, stop tokens, reward and hyper-parameters:

  ours   `train.rl_batch` (jitted KV-cache rollout of 2 attempts, decode, verify) and the
         jitted Stage II step (`train_step.make_rl_step`) on a 1-device mesh.
  torch  what public PyTorch reimplementations write: transformers `generate`
         (do_sample, temperature 1, no top-k / top-p, stop on <end_of_turn> / <eos>,
         `num_return_sequences=k`) for attempt 1; turn-2 context = x1 + y1
         (+ <end_of_turn> if y1 was cut) + instruction, concatenated as ids like our
         rollout; `generate` for attempt 2; decode + the task's reward; then a teacher-
         forced forward of the policy and of a frozen reference copy, the Stage II loss
         (`stage_loss`), backward, grad-norm clip and `torch.optim.Adam`.

Phases: sample (both attempts + decode to text), verify (rewards), update (until the
loss is on the host). Repetitions alternate between the systems (load from other
processes hits both alike); medians after one warm-up step each (compiles, caches).
The systems sample different tokens (different RNGs), so mean tokens per attempt are
reported beside the times: the work is comparable only when they are close.

`stage_loss` is also the independent oracle of our objective:
tests/test_torch_score_step.py checks its value and gradient norm against
`train_step.make_rl_step` on one batch of our rollout.

  python -m benchmarks.torch_score_step                       # the BENCHMARKS.md table
  python -m benchmarks.torch_score_step --ab_trim 32          # + ours on trimmed episodes
  python -m benchmarks.torch_score_step --model gemma2-91m    # sampler.py's larger layout
  python -m benchmarks.torch_score_step --quick               # a smoke run
  python -m benchmarks.torch_score_step --model gemma2-91m --dtype bfloat16

--dtype bfloat16: both systems compute in bf16 over fp32 master weights (the optimizer's
copy). Ours: `model.dtype="bfloat16"` (bf16 dot operands, fp32 accumulation, bf16 KV cache
and decode weight copies). Torch: the same fp32 modules under `torch.autocast("cpu",
bfloat16)` for generate and for the loss's forwards (autocast caches each weight's bf16
cast for the length of one generate call, the analogue of our decode copies); softmax,
log-probs and the loss in fp32, backward and Adam on the fp32 params.
"""

from __future__ import annotations

import os
import sys

# As in benchmarks/sampler.py: passive OpenMP waiting keeps torch from stalling when other
# processes share the cores (only effective if torch is not imported yet).
_TORCH_PREIMPORTED = "torch" in sys.modules
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks import sampler, score_step  # noqa: E402
from configs import demo  # noqa: E402
from score_jax import hostinfo, model, sft, sharding, train, train_step  # noqa: E402
from score_jax.model import checkpoints  # noqa: E402

PHASES = ("sample", "verify", "update")


# --- the PyTorch side ------------------------------------------------------------------------


def load_torch_model(config: model.ModelConfig, params: model.Params):
  """transformers' causal LM on our params (save_hf -> from_pretrained), fp32, eager attention."""
  import torch  # Deferred: only this benchmark and its test need torch.
  import transformers
  transformers.utils.logging.disable_progress_bar()
  scalar = config.query_pre_attn_scalar
  if scalar is not None and float(scalar).is_integer():
    # transformers 5.23's Gemma 2 config accepts only an int here (configs/demo.py has 32.0).
    config = dataclasses.replace(config, query_pre_attn_scalar=int(scalar))
  with tempfile.TemporaryDirectory() as path:
    checkpoints.save_hf(config, jax.device_get(params), path)
    # Eager: Gemma 2's attention soft-cap has no SDPA path.
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager")


def _rloo(r_e, k: int):
  r_pk = r_e.reshape(-1, k)
  return (r_pk - (r_pk.sum(1, keepdim=True) - r_pk) / (k - 1)).reshape(-1)


def stage_loss(policy, ref, tokens_el, loss_mask_ael, rewards_ae, *, stage: str,
               samples_per_prompt: int, alpha: float, beta1: float, beta2: float):
  """SCoRe's Stage I / II loss in PyTorch over whole episodes: (loss, metrics).

  tokens_el int64 [E, L] (pad after each episode), loss_mask_ael float [A, E, L] (1 at
  the positions of attempt a's generated tokens), rewards_ae float [A, E]. Normalisation
  follows ours exactly (losses.stage1_loss / stage2_loss), which is not what a torch user
  often writes (a mean over tokens): per attempt the log-probs and the exact per-token
  KL(pi || pi_ref) are SUMMED over its generated tokens, then every term is a MEAN over
  the E episodes:
    stage2: -mean(A(R1) lp1) - mean(A(R2) lp2) + beta1 (mean KL1 + mean KL2),
            R1 = r1, R2 = r2 + alpha (r2 - r1)
    stage1: -mean(A(r2) lp2) + beta2 mean KL1 + beta1 mean KL2
  with A the RLOO advantage over each prompt's k consecutive episodes.
  """
  import torch
  import torch.nn.functional as F
  k = samples_per_prompt
  # Pads come after each episode and attention is causal: no mask changes a trained position.
  logp_elv = F.log_softmax(policy(input_ids=tokens_el).logits[:, :-1].float(), dim=-1)
  with torch.no_grad():
    logq_elv = F.log_softmax(ref(input_ids=tokens_el).logits[:, :-1].float(), dim=-1)
  token_lp_el = logp_elv.gather(-1, tokens_el[:, 1:, None])[..., 0]
  kl_el = (logp_elv.exp() * (logp_elv - logq_elv)).sum(-1)
  mask_ael = loss_mask_ael[:, :, 1:]  # position t predicts token t + 1
  seq_lp_ae = (token_lp_el[None] * mask_ael).sum(-1)
  kl_ae = (kl_el[None] * mask_ael).sum(-1)
  r1, r2 = rewards_ae[0], rewards_ae[1]
  kl1, kl2 = kl_ae[0].mean(), kl_ae[1].mean()
  if stage == "stage2":
    adv1, adv2 = _rloo(r1, k), _rloo(r2 + alpha * (r2 - r1), k)
    pg = -(adv1 * seq_lp_ae[0]).mean() - (adv2 * seq_lp_ae[1]).mean()
    loss = pg + beta1 * (kl1 + kl2)
  elif stage == "stage1":
    pg = -(_rloo(r2, k) * seq_lp_ae[1]).mean()
    loss = pg + beta2 * kl1 + beta1 * kl2
  else:
    raise ValueError(f"stage must be 'stage1' or 'stage2', got {stage!r}.")
  return loss, {"pg_loss": pg.item(), "kl_1": kl1.item(), "kl_2": kl2.item()}


def turn2_context(x1: Sequence[int], y1: Sequence[int], truncated1: bool,
                  between: Sequence[int], turn_end_id: int) -> list[int]:
  """x1 + y1 (+ the turn end if y1 hit max_new_tokens) + instruction, as ids (no re-tokenising)."""
  return list(x1) + list(y1) + ([turn_end_id] if truncated1 else []) + list(between)


def build_episodes(x1: Sequence[Sequence[int]], y1: Sequence[Sequence[int]],
                   y2: Sequence[Sequence[int]], truncated1: Sequence[bool],
                   between: Sequence[int], turn_end_id: int, pad_id: int, k: int):
  """Episodes turn2_context + y2, right-padded: (tokens [E, L], loss_mask [2, E, L]), numpy.

  x1 holds one prompt per problem (episode e uses x1[e // k]); loss_mask[a] is 1 at the
  positions of attempt a's tokens.
  """
  rows, spans = [], []
  for e, (a, b, cut) in enumerate(zip(y1, y2, truncated1)):
    context2 = turn2_context(x1[e // k], a, cut, between, turn_end_id)
    rows.append(context2 + list(b))
    spans.append(((len(x1[e // k]), len(a)), (len(context2), len(b))))
  tokens = np.full((len(rows), max(map(len, rows))), pad_id, np.int64)
  mask = np.zeros((2, *tokens.shape), np.float32)
  for e, (row, attempt_spans) in enumerate(zip(rows, spans)):
    tokens[e, :len(row)] = row
    for a, (start, n) in enumerate(attempt_spans):
      mask[a, e, start:start + n] = 1.0
  return tokens, mask


class TorchScore:
  """The PyTorch SCoRe Stage II step on a `train.Run`'s problems, tokenizer and settings.

  dtype "bfloat16": fp32 modules run under CPU autocast to bf16 (see the module doc).
  """

  def __init__(self, run: train.Run, params: model.Params, threads: int,
               dtype: str = "float32"):
    import torch
    self.torch, self.run = torch, run
    self.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16,
                                           enabled=dtype == "bfloat16")
    torch.set_num_threads(threads)
    torch.manual_seed(run.config.seed)
    self.policy = load_torch_model(run.model_config, params).train()
    self.ref = load_torch_model(run.model_config, params).eval().requires_grad_(False)
    cfg = run.config.rl
    self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.learning_rate,
                                      betas=(cfg.adam_b1, cfg.adam_b2), eps=1e-8)  # = optax

  def generate(self, contexts: Sequence[Sequence[int]], num_samples: int
               ) -> tuple[list[list[int]], list[bool]]:
    """Sampled continuations (stop token included) and whether each hit max_new_tokens."""
    torch, rl, tok = self.torch, self.run.config.rl, self.run.tok
    width = max(map(len, contexts))
    ids = torch.full((len(contexts), width), tok.pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for i, c in enumerate(contexts):  # left padding, as decoder-only generate expects
      ids[i, width - len(c):] = torch.tensor(c)
      attention[i, width - len(c):] = 1
    with torch.no_grad(), self.autocast():
      out = self.policy.generate(
          ids, attention_mask=attention, do_sample=True, temperature=rl.temperature, top_k=0,
          top_p=1.0, max_new_tokens=rl.max_new_tokens, eos_token_id=list(self.run.stop_tokens),
          pad_token_id=tok.pad_id, num_return_sequences=num_samples)
    stops = set(self.run.stop_tokens)
    new, cut = [], []
    for row in out[:, width:].tolist():
      end = next((i + 1 for i, t in enumerate(row) if t in stops), None)
      new.append(row[:end] if end else row)
      cut.append(end is None)
    return new, cut

  def _texts(self, attempts: list[list[int]]) -> list[str]:
    stops = set(self.run.stop_tokens)
    return [self.run.tok.decode(a[:-1] if a and a[-1] in stops else a) for a in attempts]

  def one_step(self, step: int) -> dict[str, float]:
    """Samples, verifies and trains on step `step`'s problems; returns phase seconds."""
    torch, run, cfg = self.torch, self.run, self.run.config.rl
    chosen = step_problems(run, step)
    x1 = [train.prompt_ids(run, ex) for ex in chosen]
    t0 = time.perf_counter()
    self.policy.eval()
    k, between, eot = cfg.samples_per_prompt, run.between_ids, run.tok.model_turn_end_id
    y1, cut1 = self.generate(x1, k)  # k consecutive rows per problem, as ours
    y2, _ = self.generate([turn2_context(x1[e // k], y, cut, between, eot)
                           for e, (y, cut) in enumerate(zip(y1, cut1))], 1)
    tokens, mask = build_episodes(x1, y1, y2, cut1, between, eot, run.tok.pad_id, k)
    texts = self._texts(y1) + self._texts(y2)
    t1 = time.perf_counter()
    golds = [chosen[e // cfg.samples_per_prompt].gold for e in range(len(y1))]
    rewards = run.task.rewards(texts, golds * 2).reshape(2, -1)
    t2 = time.perf_counter()
    self.policy.train()
    with self.autocast():  # the forwards; stage_loss takes log-probs in fp32
      loss, _ = stage_loss(self.policy, self.ref, torch.from_numpy(tokens), torch.from_numpy(mask),
                           torch.from_numpy(rewards), stage="stage2",
                           samples_per_prompt=cfg.samples_per_prompt, alpha=cfg.alpha,
                           beta1=cfg.beta1, beta2=cfg.beta2)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
    self.optimizer.step()
    loss = loss.item()
    t3 = time.perf_counter()
    return {"sample": t1 - t0, "verify": t2 - t1, "update": t3 - t2, "loss": loss,
            "tokens_per_attempt": float(mask.sum() / (2 * len(y1))),
            "reward_2": float(rewards[1].mean()), "width": tokens.shape[1]}


# --- our side --------------------------------------------------------------------------------


def step_problems(run: train.Run, step: int):
  """The problems `train.rl_batch` draws for step `step` (same generator and seed)."""
  rng = np.random.default_rng([run.config.seed, 11, step])
  return [run.task.train[i] for i in rng.choice(len(run.task.train), run.config.rl.prompts_per_step,
                                                 replace=False)]


class OursScore:
  """Our step as `train.run_rl` takes it (no checkpoint): `rl_batch` + the jitted Stage II step.

  trim > 0 (an A/B, not what a run does): the update sees the episodes cut after the
  last generated token, rounded up to a multiple of `trim` (the loss is unchanged:
  pads trail and attention is causal), instead of the rollout's full buffer
  (prompt bucket + A x max_new_tokens + instructions). A new width compiles anew.
  """

  def __init__(self, run: train.Run, params: model.Params, trim: int = 0):
    cfg = run.config.rl
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                      optax.adam(cfg.learning_rate, b1=cfg.adam_b1, b2=cfg.adam_b2))
    self.run, self.trim = run, trim
    self.ref = jax.tree.map(jnp.copy, sharding.shard_params(params, run.mesh))
    self.state = sft.init_train_state(params, opt, run.mesh)
    self.step_fn = train_step.make_rl_step(run.model_config, opt, train.objective_config(run, "stage2"),
                                           self.state, self.ref, run.mesh)

  def one_step(self, step: int) -> dict[str, float]:
    batch, m = train.rl_batch(self.run, self.state["params"], self.ref, step)
    mask = np.asarray(batch["loss_mask"])
    if self.trim:
      used = int(np.nonzero(mask.any(axis=(0, 1)))[0].max()) + 1
      width = min(-(-used // self.trim) * self.trim, mask.shape[-1])
      batch = {**batch, "tokens": np.asarray(batch["tokens"])[:, :width],
               "loss_mask": mask[..., :width]}
    t0 = time.perf_counter()
    self.state, metrics = self.step_fn(self.state, self.ref, batch)
    loss = float(jax.device_get(metrics["loss"]))
    t1 = time.perf_counter()
    return {"sample": m["time_sample"], "verify": m["time_verify"], "update": t1 - t0,
            "loss": loss, "tokens_per_attempt": float(mask.sum() / (2 * mask.shape[1])),
            "reward_2": float(np.mean(batch["rewards"][1])),
            "width": int(batch["tokens"].shape[1])}


# --- the benchmark ---------------------------------------------------------------------------


def make_config(args: argparse.Namespace):
  c = score_step.make_config(args)  # the demo at this batch; --quick: a tiny model.
  if args.model != "demo" and not args.quick:  # sampler.py's layout, the demo's vocabulary.
    layout = sampler.CONFIGS[args.model]()
    c.model.update({f: getattr(layout, f) for f in (
        "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "ffw_hidden",
        "sliding_window", "query_pre_attn_scalar")})
  c.model.dtype = args.dtype  # compute; params (the optimizer's master copy) stay fp32
  return c


def bench(args: argparse.Namespace) -> dict[str, Any]:
  config = make_config(args)
  root = tempfile.mkdtemp(prefix="torch_score_step_")
  try:
    run = train.setup(config, root)
    run.mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])  # (tests emulate 8 devices)
    # Varied continuations (sampler.py): init_params' zero norm scales make a model that
    # repeats its last token, which no real base model does.
    params = sampler.benchmark_params(run.model_config, args.seed)
    systems = {"torch": TorchScore(run, params, args.torch_threads, args.dtype),
               "ours": OursScore(run, params)}
    if args.ab_trim:
      systems["ours_trim"] = OursScore(run, params, trim=args.ab_trim)
    first = {name: s.one_step(0) for name, s in systems.items()}  # compiles, warms caches
    times: dict[str, list[dict[str, float]]] = {name: [] for name in systems}
    for rep in range(args.reps):
      for name, s in systems.items():
        times[name].append(s.one_step(rep + 1))
  finally:
    shutil.rmtree(root, ignore_errors=True)
  episodes = args.prompts * args.samples
  med = {}
  for name, ts in times.items():
    med[name] = {k: statistics.median(t[k] for t in ts)
                 for k in (*PHASES, "tokens_per_attempt", "reward_2", "width")}
    med[name]["step"] = statistics.median(sum(t[k] for k in PHASES) for t in ts)
    med[name]["episodes_s"] = episodes / med[name]["step"]
  speedup = {k: med["torch"][k] / med["ours"][k] for k in (*PHASES, "step")}
  return {"command": " ".join(["python -m benchmarks.torch_score_step", *args.argv]),
          "model": repr(run.model_config), "params": run.model_config.num_params(),
          "dtype": args.dtype, "prompts": args.prompts, "samples": args.samples,
          "new_tokens": args.new_tokens,
          "episodes": episodes, "median_s": med, "speedup_torch_over_ours": speedup,
          "first_step_s": first, "times_s": times,
          "load_before_after": [args.load, os.getloadavg()],
          "cpus": os.cpu_count(), "cpu": hostinfo.describe(), "torch_threads": args.torch_threads,
          "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
          "torch_imported_first": _TORCH_PREIMPORTED, "versions": sampler.versions()}


def markdown_table(r: dict[str, Any]) -> str:
  med, speed = r["median_s"], r["speedup_torch_over_ours"]
  names = list(med)  # torch, ours (, ours_trim)
  lines = ["| phase | " + " | ".join(f"{n} s" for n in names) + " | torch / ours |",
           "|---|" + "---:|" * (len(names) + 1)]
  for k in (*PHASES, "step"):
    lines.append(f"| {k} | " + " | ".join(f"{med[n][k]:.3f}" for n in names)
                 + f" | {speed[k]:.2f} |")
  ratio = med["ours"]["episodes_s"] / med["torch"]["episodes_s"]
  lines.append("| episodes/s | " + " | ".join(f"{med[n]['episodes_s']:.1f}" for n in names)
               + f" | ours/torch {ratio:.2f} |")
  for k, label in (("tokens_per_attempt", "tokens per attempt"),
                   ("width", "episode width (update)")):
    lines.append(f"| {label} | " + " | ".join(f"{med[n][k]:.1f}" for n in names) + " | |")
  return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  d = demo.get_config().rl
  parser = argparse.ArgumentParser(prog="python -m benchmarks.torch_score_step",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="demo", choices=["demo", *sorted(set(sampler.CONFIGS)
                                                                         - {"tiny"})],
                      help="configs/demo.py's model, or a benchmarks/sampler.py layout")
  parser.add_argument("--prompts", type=int, default=d.prompts_per_step, help="problems per step")
  parser.add_argument("--samples", type=int, default=d.samples_per_prompt,
                      help="k samples per problem")
  parser.add_argument("--new_tokens", type=int, default=d.max_new_tokens,
                      help="max new tokens per attempt")
  parser.add_argument("--reps", type=int, default=3, help="timed steps per system (median)")
  parser.add_argument("--torch_threads", type=int, default=os.cpu_count())
  parser.add_argument("--ab_trim", type=int, default=0,
                      help="also time ours with the update's episodes cut after the last "
                      "generated token, rounded up to this multiple (an A/B; 0 = off)")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="compute dtype of both systems (master weights stay fp32)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: d 32 model, 4 prompts x 2, 8 new tokens, 1 rep")
  parser.add_argument("--out", default="", help="write the JSON results here")
  args = parser.parse_args(argv)
  if args.quick:
    args.prompts, args.samples, args.new_tokens, args.reps = 4, 2, 8, 1
  if args.reps < 1 or args.samples < 2 or args.prompts < 1 or args.new_tokens < 1:
    parser.error("--reps, --prompts and --new_tokens must be >= 1 and --samples >= 2 "
                 "(RLOO needs 2 samples per prompt).")
  args.argv, args.load = list(argv), os.getloadavg()
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(sys.argv[1:] if argv is None else list(argv))
  result = bench(args)
  print(result["command"])
  print(f"{result['params'] / 1e6:.2f}M params, {result['episodes']} episodes/step, "
        f"load average {result['load_before_after']}, {result['cpus']} CPUs ({result['cpu']}), "
        f"{args.torch_threads} torch threads")
  print(markdown_table(result))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1, default=str)
  return result


if __name__ == "__main__":
  main()
