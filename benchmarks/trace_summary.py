"""Per-op time from a `jax.profiler` trace: what an XLA:CPU step spends its time on.

`jax.profiler.trace(dir, create_perfetto_trace=True)` writes a Chrome-trace JSON
with one event per executed HLO op (thunk). `summarize` adds their durations by op
kind (the fusion name without its number: `ynn_fusion` = XNNPACK/YNNPACK matmul
fusions, `dot` = other matmuls, `copy*` / `transpose*` = layout copies,
`*dynamic-update-slice*` = writes into a scan's stacked buffers, `wrapped_broadcast`
= buffer initialisation, `all-reduce` etc. = collectives, the rest elementwise /
reductions). Waiting (`Wait…`, `Rendezvous`: threads blocked on each other or on a
collective; `np.asarray`: the host waiting for a result) is summed apart as "waiting";
Python events and container ops (`while`, `call`, the executor) are skipped, so nested
time is not counted twice. With several devices, op time is summed over their threads.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
from typing import Any

_WAITS = ("Wait", "Rendezvous", "np.")
_CONTAINERS = ("while", "call", "conditional", "ThunkExecutor", "PjitFunction",
               "CommonPjRtLoadedExecutable", "SlinkyThreadPool")
MATMUL_KINDS = ("ynn_fusion", "dot", "onednn", "xnn_fusion", "custom-call")


def latest_trace(log_dir: str) -> str:
  paths = glob.glob(os.path.join(log_dir, "**", "perfetto_trace.json.gz"), recursive=True)
  if not paths:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {log_dir}; trace with "
                            "jax.profiler.trace(dir, create_perfetto_trace=True).")
  return max(paths, key=os.path.getmtime)


def summarize(log_dir: str, top: int = 12, module: str = "") -> dict[str, Any]:
  """{"kinds": {kind: s}, "ops": [(name, s, calls)], "total_s", "waiting_s", "matmul_fraction",
  "modules": {hlo module: s}}; with `module` (e.g. "jit_step"), only that module's ops."""
  with gzip.open(latest_trace(log_dir)) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  op_s: collections.Counter = collections.Counter()
  calls: collections.Counter = collections.Counter()
  modules: collections.Counter = collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or name.startswith("$") or name.startswith(_CONTAINERS):
      continue
    hlo_module = (e.get("args") or {}).get("hlo_module", "")
    if module and hlo_module != module:
      continue
    if hlo_module and not name.startswith(_WAITS):
      modules[hlo_module] += e.get("dur", 0) / 1e6
    op_s[name] += e.get("dur", 0) / 1e6
    calls[name] += 1
  kinds: collections.Counter = collections.Counter()
  waiting = 0.0
  for name, s in op_s.items():
    if name.startswith(_WAITS):
      waiting += s
    else:
      kinds[name.split(".")[0]] += s
  total = sum(kinds.values())
  matmul = sum(s for k, s in kinds.items() if k.startswith(MATMUL_KINDS))
  return {"kinds": dict(kinds.most_common(top)), "total_s": total, "waiting_s": waiting,
          "modules": dict(modules.most_common(top)),
          "matmul_fraction": matmul / total if total else 0.0,
          "ops": [(n, s, calls[n]) for n, s in op_s.most_common(top) if not n.startswith(_WAITS)]}


def markdown(summary: dict[str, Any]) -> str:
  lines = ["| op kind | s | share |", "|---|---:|---:|"]
  for kind, s in summary["kinds"].items():
    lines.append(f"| {kind} | {s:.3f} | {s / summary['total_s']:.0%} |")
  lines.append(f"| (all ops) | {summary['total_s']:.3f} | matmuls "
               f"{summary['matmul_fraction']:.0%} |")
  if summary["waiting_s"]:  # waits carry no HLO module: absent from per-module tables.
    lines.append(f"| (waiting, apart) | {summary['waiting_s']:.3f} | |")
  return "\n".join(lines)
