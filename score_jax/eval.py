"""Self-correction metrics (docs/method.md §5) and greedy multi-attempt evaluation.

The metric functions are pure numpy over per-attempt correctness / answers /
texts; `evaluate` runs a greedy rollout of N attempts on a problem set, verifies
each attempt and returns them. `write_report` prints the table, writes JSON and
plots the 2x2 transition matrix and the accuracy per attempt.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from rapidfuzz.distance import Levenshtein

from score_jax import multihost, rollout
from score_jax.model import ModelConfig, Params

METRIC_ORDER = ("acc_t1", "acc_t2", "delta", "delta_i_to_c", "delta_c_to_i", "changed_answer_rate")


def transition_metrics(correct_an: np.ndarray) -> dict[str, float]:
  """Acc@t for every attempt, and Δ, Δ^{i→c}, Δ^{c→i} between attempts 1 and 2.

  correct_an: {0, 1} [A, N] correctness of attempt t on problem n.
  """
  c = np.asarray(correct_an, np.float64)
  out = {f"acc_t{t + 1}": float(c[t].mean()) for t in range(c.shape[0])}
  if c.shape[0] >= 2:
    out["delta"] = out["acc_t2"] - out["acc_t1"]
    out["delta_i_to_c"] = float(np.mean((c[0] == 0) & (c[1] == 1)))
    out["delta_c_to_i"] = float(np.mean((c[0] == 1) & (c[1] == 0)))
  return out


def changed_answer_rate(answers_a: Sequence[Sequence[str | None]]) -> float:
  """Fraction of episodes whose second-attempt answer differs from the first (None = no answer)."""
  first, second = answers_a[0], answers_a[1]
  return float(np.mean([a != b for a, b in zip(first, second)])) if first else 0.0


def edit_distance_ratios(texts1: Sequence[str], texts2: Sequence[str]) -> np.ndarray:
  """ED(y1, y2) / (|y1| + |y2|) per episode (character Levenshtein; 0 for two empty texts)."""
  return np.array([Levenshtein.distance(a, b) / max(len(a) + len(b), 1)
                   for a, b in zip(texts1, texts2)])


def pad_to_micro_batches(prompts: np.ndarray, prompt_lengths: np.ndarray, micro_batch: int
                         ) -> tuple[int, np.ndarray, np.ndarray]:
  """(chunk size, prompts, lengths) padded with copies of the first problem to whole chunks;
  callers drop the padded rows (the first n) after the rollout."""
  n = prompts.shape[0]
  size = min(micro_batch, n)
  pad = (-n) % size
  if pad:
    prompts = np.concatenate([prompts, np.repeat(prompts[:1], pad, 0)])
    prompt_lengths = np.concatenate([prompt_lengths, np.repeat(prompt_lengths[:1], pad)])
  return size, prompts, prompt_lengths


def evaluate(config: ModelConfig, params: Params, prompts: np.ndarray, prompt_lengths: np.ndarray,
             golds: Sequence[str], *, rc: rollout.RolloutConfig,
             decode: Callable[[list[int]], str], reward_fn: Callable[[str, str], float],
             answer_fn: Callable[[str], str | None], micro_batch: int,
             on_chunk: Callable[[int], None] | None = None) -> dict[str, Any]:
  """Greedy N-attempt evaluation: metrics plus per-problem texts and correctness.

  on_chunk(problems sampled, padding included) after each micro-batch: a progress bar.
  """
  if rc.temperature != 0.0 or rc.samples_per_prompt != 1:
    raise ValueError("evaluation is greedy with one sample per problem: use temperature=0 and "
                     "samples_per_prompt=1 in its RolloutConfig.")
  n = prompts.shape[0]
  size, prompts, prompt_lengths = pad_to_micro_batches(prompts, prompt_lengths, micro_batch)
  episodes = rollout.rollout_in_chunks(config, params, prompts, prompt_lengths,
                                       jax.random.key(0), rc=rc, micro_batch=size,
                                       on_chunk=on_chunk)
  texts = [t[:n] for t in rollout.attempt_texts(episodes, decode, rc.stop_tokens)]
  truncated = multihost.fetch(episodes.truncated)[:, :n]
  return score_attempts(texts, golds, truncated, reward_fn=reward_fn, answer_fn=answer_fn)


def score_attempts(texts: Sequence[Sequence[str]], golds: Sequence[str], truncated_an: np.ndarray,
                   *, reward_fn: Callable[[str, str], float],
                   answer_fn: Callable[[str], str | None]) -> dict[str, Any]:
  """Verifies attempt texts [A][N] and returns `evaluate`'s result (metrics, texts, correct, ...)."""
  correct = np.array([[reward_fn(text, gold) for text, gold in zip(attempt, golds)]
                      for attempt in texts])
  answers = [[answer_fn(text) for text in attempt] for attempt in texts]
  metrics = transition_metrics(correct)
  metrics["truncation_rate"] = float(np.asarray(truncated_an).mean())
  result = {"metrics": metrics, "texts": [list(t) for t in texts], "correct": correct.tolist(),
            "answers": answers}
  if len(texts) >= 2:
    metrics["changed_answer_rate"] = changed_answer_rate(answers)
    ratios = edit_distance_ratios(texts[0], texts[1])
    metrics["edit_distance_ratio_mean"] = float(ratios.mean())
    result["edit_distance_ratio_hist"] = np.histogram(ratios, bins=10, range=(0, 1))[0].tolist()
  return result


def majority_correct(texts: Sequence[str], gold: str, reward_fn, answer_fn) -> float:
  """Reward of the most common answer among `texts` (ties: the earliest; no answer never wins)."""
  answers = [answer_fn(t) for t in texts]
  counts: dict[str, int] = {}
  for a in answers:
    if a is not None:
      counts[a] = counts.get(a, 0) + 1
  if not counts:
    return 0.0
  best = max(counts, key=lambda a: (counts[a], -answers.index(a)))
  return reward_fn(texts[answers.index(best)], gold)


def compute_scaling(config: ModelConfig, params: Params, prompts: np.ndarray,
                    prompt_lengths: np.ndarray, golds: Sequence[str], *,
                    rc: rollout.RolloutConfig, budgets: Sequence[int],
                    decode: Callable[[list[int]], str], reward_fn, answer_fn,
                    micro_batch: int, seed: int = 0) -> dict[str, list[float]]:
  """Inference-compute scaling (method.md §5): with 2K samples per problem, majority vote over 2K
  parallel first attempts vs over K first attempts each followed by one self-correction.

  One rollout of max(budgets) = 2K_max episodes per problem at rc.temperature (0.7 in the
  paper) serves every budget: budget 2K uses the first 2K episodes' y1 (parallel) or the
  first K episodes' y2 (sequential).
  """
  two_k = max(budgets)
  if any(b % 2 for b in budgets):
    raise ValueError(f"budgets must be even (2K samples), got {list(budgets)}.")
  rc = dataclasses.replace(rc, samples_per_prompt=two_k, num_attempts=2)
  n = prompts.shape[0]
  size = min(micro_batch, n)
  if n % size:
    raise ValueError(f"{n} problems do not split into micro-batches of {size}.")
  episodes = rollout.rollout_in_chunks(config, params, prompts, prompt_lengths,
                                       jax.random.key(seed), rc=rc, micro_batch=size)
  texts = rollout.attempt_texts(episodes, decode, rc.stop_tokens)
  out = {"budgets": list(budgets), "parallel": [], "self_correct": []}
  for budget in budgets:
    par, seq = [], []
    for i, gold in enumerate(golds):
      first = texts[0][i * two_k:(i + 1) * two_k]
      second = texts[1][i * two_k:(i + 1) * two_k]
      par.append(majority_correct(first[:budget], gold, reward_fn, answer_fn))
      seq.append(majority_correct(second[:budget // 2], gold, reward_fn, answer_fn))
    out["parallel"].append(float(np.mean(par)))
    out["self_correct"].append(float(np.mean(seq)))
  return out


def format_table(rows: dict[str, dict[str, float]]) -> str:
  """A text table, one row per model (e.g. base, SCoRe), percentages like the paper."""
  header = ["model", "Acc@t1", "Acc@t2", "Δ(t1,t2)", "Δi→c", "Δc→i", "changed"]
  width = max([10, *map(len, rows)])
  lines = [" | ".join([f"{header[0]:>{width}}", *(f"{h:>10}" for h in header[1:])])]
  for name, m in rows.items():
    cells = [f"{name:>{width}}"] + [f"{100 * m.get(k, float('nan')):>10.1f}" for k in METRIC_ORDER]
    lines.append(" | ".join(cells))
  return "\n".join(lines)


def write_report(results: dict[str, dict[str, Any]], directory: str) -> str:
  """Writes eval.json, the table (eval.txt) and eval.png; returns the table."""
  os.makedirs(directory, exist_ok=True)
  table = format_table({name: r["metrics"] for name, r in results.items()})
  with open(os.path.join(directory, "eval.json"), "w") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(directory, "eval.txt"), "w") as f:
    f.write(table + "\n")
  plot_report(results, os.path.join(directory, "eval.png"))
  return table


def plot_report(results: dict[str, dict[str, Any]], path: str):
  """Writes eval.png (transitions per method, accuracy per attempt, scaling); returns the figure."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator

  names = list(results)
  scaled = [name for name in names if "scaling" in results[name]]
  panels = len(names) + 1 + bool(scaled)
  fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.5))
  if scaled:  # majority vote over 2K parallel samples vs K self-corrected ones (method.md §5).
    ax = axes[-1]
    for name in scaled:
      sc = results[name]["scaling"]
      ax.plot(sc["budgets"], [100 * v for v in sc["parallel"]], "--o", label=f"{name} parallel")
      ax.plot(sc["budgets"], [100 * v for v in sc["self_correct"]], "-o",
              label=f"{name} self-correct")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("samples per problem (2K)")
    ax.set_ylabel("majority-vote accuracy (%)")
    ax.legend(fontsize=7)
    axes = axes[:-1]
  for ax, name in zip(axes, names):
    c = np.asarray(results[name]["correct"])
    if c.shape[0] < 2:
      ax.axis("off")
      continue
    matrix = np.array([[np.mean((c[0] == i) & (c[1] == j)) for j in (0, 1)] for i in (0, 1)])
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    for i in (0, 1):
      for j in (0, 1):
        ax.text(j, i, f"{100 * matrix[i, j]:.1f}%", ha="center", va="center")
    ax.set_xticks([0, 1], ["y2 wrong", "y2 right"])
    ax.set_yticks([0, 1], ["y1 wrong", "y1 right"])
    ax.set_title(f"{name}: transitions")
  ax = axes[-1]
  for name in names:
    c = np.asarray(results[name]["correct"])
    ax.plot(np.arange(1, c.shape[0] + 1), 100 * c.mean(1), marker="o", label=name)
  ax.set_xlabel("attempt")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # attempts 1, 2, ..., never 1.5
  ax.set_ylabel("accuracy (%)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return fig
