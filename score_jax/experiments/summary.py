"""Tables, curves and histograms of a miniature-reproduction workdir (see miniature.py).

Reads only the run directories' files (eval/eval.json, metrics.jsonl, wall_time.json), so
it can be re-run at any time, also while runs are missing (those rows say so).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence

import numpy as np

from score_jax import eval as evaluation
from score_jax.experiments import stats

COLUMNS = ("acc_t1", "acc_t2", "delta", "delta_i_to_c", "delta_c_to_i", "changed_answer_rate")
HEADER = ("method", "Acc@t1", "Acc@t2", "Δ(t1,t2)", "Δi→c", "Δc→i", "changed", "seeds")
# Paper Table (MATH500, Gemini 1.5 Flash): Acc@t1 / Acc@t2 / Δ / Δi→c / Δc→i; blanks not reported.
PAPER_MATH500 = {
    "base": (52.6, 41.4, -11.2, 4.6, 15.8),
    "self_refine": (52.8, 51.8, -1.0, None, None),
    "star": (53.6, 54.0, 0.4, None, None),
    "pair_sft": (52.4, 54.2, 1.8, None, None),
    "score": (60.0, 64.4, 4.4, 5.8, 1.4),
}
PAPER_ABLATION_DELTA = {"single_turn": -2.4, "score_no_stage1": 2.2, "score_alpha0": 2.6}


def _load(path: str):
  with open(path) as f:
    return json.load(f)


def collect(workdir: str) -> dict[str, list[dict]]:
  """method -> list over seeds of {"seed", "metrics", "texts"} from every finished run."""
  rows: dict[str, list[dict]] = {}
  for path in sorted(glob.glob(os.path.join(workdir, "seed*", "*", "eval", "eval.json"))):
    run_dir = os.path.dirname(os.path.dirname(path))
    seed = int(os.path.basename(os.path.dirname(run_dir))[len("seed"):])
    method = os.path.basename(run_dir)
    for name, result in _load(path).items():
      # The base run holds the base model and Self-Refine rows; method runs hold their policy.
      if (method == "base") != (name in ("base", "self_refine")):
        continue
      rows.setdefault(method if method != "base" else name, []).append(
          {"seed": seed, "metrics": result["metrics"], "texts": result["texts"]})
  return rows


def mean_spread(values: Sequence[float]) -> str:
  """'mean ± std' in percent (sample std over seeds; '±0' never claimed for one seed)."""
  v = 100 * np.asarray(values, np.float64)
  if v.size == 1:
    return f"{v[0]:.1f}"
  return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def results_table(rows: dict[str, list[dict]], order: Sequence[str]) -> str:
  lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
  for method in [m for m in order if m in rows] + sorted(set(rows) - set(order)):
    runs = rows[method]
    cells = [mean_spread([r["metrics"].get(c, np.nan) for r in runs]) for c in COLUMNS]
    lines.append(f"| {method} | " + " | ".join(cells) + f" | {len(runs)} |")
  return "\n".join(lines)


def per_seed_table(rows: dict[str, list[dict]], order: Sequence[str]) -> str:
  """One cell per (method, seed): 'Acc@t1 → Acc@t2 (Δi→c / Δc→i)' in percent."""
  seeds = sorted({r["seed"] for runs in rows.values() for r in runs})
  lines = ["| method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
           "|---|" + "---|" * len(seeds)]
  for method in [m for m in order if m in rows] + sorted(set(rows) - set(order)):
    by_seed = {r["seed"]: r["metrics"] for r in rows[method]}
    cells = []
    for seed in seeds:
      m = by_seed.get(seed)
      cells.append("–" if m is None else (
          f"{100 * m['acc_t1']:.1f} → {100 * m['acc_t2']:.1f} "
          f"({100 * m['delta_i_to_c']:.1f} / {100 * m['delta_c_to_i']:.1f})"))
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def interval_table(rows: dict[str, list[dict]], order: Sequence[str]) -> str:
  """Per method: mean [95% bootstrap interval over seeds] of every column, in percent."""
  lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
  for method in [m for m in order if m in rows] + sorted(set(rows) - set(order)):
    cells = []
    for c in COLUMNS:
      mean, lo, hi = stats.bootstrap_ci([100 * r["metrics"].get(c, np.nan) for r in rows[method]])
      cells.append(f"{mean:.1f} [{lo:.1f}, {hi:.1f}]")
    lines.append(f"| {method} | " + " | ".join(cells) + f" | {len(rows[method])} |")
  return "\n".join(lines)


PAIRED_METRICS = ("acc_t2", "delta")


def paired_table(rows: dict[str, list[dict]], order: Sequence[str], reference: str = "score"
                 ) -> str:
  """reference − X per seed for every other method X: mean [95% interval], sign test, verdict."""
  if reference not in rows:
    return f"(no {reference} runs yet)"
  by_seed = lambda method, c: {r["seed"]: 100 * r["metrics"][c] for r in rows[method]}
  header = ["X"] + [f"{reference} − X, {c}" for c in PAIRED_METRICS] + [
      f"sign test ({c}: +/−, p)" for c in PAIRED_METRICS] + ["verdict (Acc@t2 / Δ)", "seeds"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for method in [m for m in order if m in rows and m != reference] + sorted(
      set(rows) - set(order) - {reference}):
    cmp = {c: stats.paired(by_seed(reference, c), by_seed(method, c)) for c in PAIRED_METRICS}
    cells = [f"{cmp[c]['mean']:+.1f} [{cmp[c]['lo']:+.1f}, {cmp[c]['hi']:+.1f}]"
             for c in PAIRED_METRICS]
    cells += [f"{cmp[c]['positive']}/{cmp[c]['negative']}, {cmp[c]['p']:.3f}"
              for c in PAIRED_METRICS]
    cells.append(" / ".join(stats.verdict(cmp[c]) for c in PAIRED_METRICS))
    lines.append(f"| {method} | " + " | ".join(cells) + f" | {cmp['acc_t2']['seeds']} |")
  return "\n".join(lines)


def collapse_table(workdir: str, methods: Sequence[str], window: int = 10) -> str:
  """Per method and seed: training-batch changed-answer rate, first vs last `window` updates;
  'collapsed' (pre-registered) when the last window's mean is below half the first's."""
  lines = ["| method | changed, first 10 updates | changed, last 10 updates | collapsed seeds |",
           "|---|---|---|---|"]
  for method in methods:
    curves = training_curves(workdir, method, ["changed_answer_rate"])["changed_answer_rate"]
    if curves.shape[1] < 2 * window:
      continue
    first, last = curves[:, :window].mean(1), curves[:, -window:].mean(1)
    collapsed = int((last < first / 2).sum())
    f, l = (stats.bootstrap_ci(100 * x) for x in (first, last))
    lines.append(f"| {method} | {f[0]:.1f} [{f[1]:.1f}, {f[2]:.1f}] | "
                 f"{l[0]:.1f} [{l[1]:.1f}, {l[2]:.1f}] | {collapsed} of {len(first)} |")
  return "\n".join(lines)


def paper_table() -> str:
  lines = ["| method (paper, MATH500) | Acc@t1 | Acc@t2 | Δ(t1,t2) | Δi→c | Δc→i |", "|---|---|---|---|---|---|"]
  for method, values in PAPER_MATH500.items():
    lines.append(f"| {method} | " + " | ".join("–" if v is None else f"{v:.1f}" for v in values)
                 + " |")
  for method, delta in PAPER_ABLATION_DELTA.items():
    lines.append(f"| {method} (ablation) | – | – | {delta:+.1f} | – | – |")
  return "\n".join(lines)


def training_curves(workdir: str, method: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
  """key -> [seeds, steps] of the RL metrics (rl/<key>) of one method's runs."""
  out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
  for path in sorted(glob.glob(os.path.join(workdir, "seed*", method, "metrics.jsonl"))):
    by_step: dict[int, dict] = {}
    with open(path) as f:
      for line in f:
        record = json.loads(line)
        if any(k.startswith("rl/") for k in record):
          by_step[record["step"]] = record  # a resumed run rewrites its steps: keep the last.
    steps = sorted(by_step)
    for k in keys:
      out[k].append(np.array([by_step[s].get(f"rl/{k}", np.nan) for s in steps], np.float64))
  return {k: _stack(v) for k, v in out.items()}


def _stack(series: list[np.ndarray]) -> np.ndarray:
  if not series:
    return np.zeros((0, 0))
  n = min(len(s) for s in series)
  return np.stack([s[:n] for s in series])


def _smooth(x: np.ndarray, window: int = 5) -> np.ndarray:
  if x.size < window:
    return x
  return np.convolve(x, np.ones(window) / window, mode="valid")


def _band(per_seed_st: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mean over seeds and its 95% bootstrap interval, per step (one seed: no band)."""
  cis = np.array([stats.bootstrap_ci(col, resamples=2000) for col in per_seed_st.T])
  return cis[:, 0], cis[:, 1], cis[:, 2]


def plot_curves(workdir: str, methods: Sequence[str], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  keys = ("acc_t1", "acc_t2", "changed_answer_rate")
  fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8))
  for method in methods:
    curves = training_curves(workdir, method, keys)
    for ax, k in zip(axes, keys):
      if curves[k].size:
        per_seed = np.stack([_smooth(c) for c in curves[k]])
        y, lo, hi = _band(per_seed)
        x = np.arange(len(y)) + 1
        (line,) = ax.plot(x, 100 * y, label=f"{method} ({len(per_seed)} seeds)")
        ax.fill_between(x, 100 * lo, 100 * hi, color=line.get_color(), alpha=0.15)
  for ax, k in zip(axes, keys):
    ax.set_title(f"{k} (%), training batches")
    ax.set_xlabel("update (5-update moving mean; band: 95% bootstrap interval over seeds)",
                  fontsize=8)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_edit_distance(rows: dict[str, list[dict]], methods: Sequence[str], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  present = [m for m in methods if m in rows]
  cols = min(max(len(present), 1), 5)
  nrows = -(-max(len(present), 1) // cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(3.5 * cols, 3 * nrows), squeeze=False)
  for ax in axes.flat[len(present):]:
    ax.axis("off")
  for ax, method in zip(axes.flat, present):
    ratios = np.concatenate([evaluation.edit_distance_ratios(*r["texts"][:2])
                             for r in rows[method]])
    ax.hist(ratios, bins=np.linspace(0, 1, 21))
    ax.set_title(method)
    ax.set_xlabel("ED(y1, y2) / (|y1| + |y2|)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write(workdir: str, order: Sequence[str]) -> str:
  """Writes results.md, curves.png and edit_distance.png into workdir; returns the markdown."""
  rows = collect(workdir)
  curve_methods = [m for m in ("naive_r2", "naive_sum", "score") if m in rows]
  plot_curves(workdir, curve_methods, os.path.join(workdir, "curves.png"))  # Fig. 5/6 analogue.
  plot_edit_distance(rows, ["base", "self_refine", *order], os.path.join(workdir, "edit_distance.png"))
  walls = [_load(p)["seconds"] for p in glob.glob(os.path.join(workdir, "seed*", "*", "wall_time.json"))]
  text = (f"## Ours (greedy evaluation, %, mean ± std over seeds)\n\n"
          f"{results_table(rows, ['base', 'self_refine', *order])}\n\n"
          f"Mean [95% bootstrap interval over seeds]:\n\n"
          f"{interval_table(rows, ['base', 'self_refine', *order])}\n\n"
          f"Paired over seeds, SCoRe − X (points):\n\n"
          f"{paired_table(rows, ['base', 'self_refine', *order])}\n\n"
          f"Changed-answer rate on training batches (collapse: last < first / 2):\n\n"
          f"{collapse_table(workdir, curve_methods)}\n\n"
          f"Per seed, Acc@t1 → Acc@t2 (Δi→c / Δc→i):\n\n"
          f"{per_seed_table(rows, ['base', 'self_refine', *order])}\n\n"
          f"## Paper\n\n{paper_table()}\n\n"
          f"Runs: {len(walls)}, total wall time {sum(walls) / 60:.1f} min.\n")
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(text)
  return text
