"""A study's run files across machines: what is committed of each finished run, restoring
them on a new machine, and the seed's base model, which every method of a seed must share bit
for bit: its fingerprint, its re-creation (checkpoints are never committed), and what happens
to a seed whose base a machine cannot re-create (XLA:CPU's numerics differ per instruction set).
"""

from __future__ import annotations

import json
import os
import shutil
import time

import ml_collections

from score_jax import hostinfo


# The small files of a finished run that are committed (never checkpoints): enough to rebuild
# every table and plot with --summarize_only on the archive.
ARCHIVED = ("eval/eval.json", "eval/eval.txt", "metrics.jsonl", "config.json", "wall_time.json",
            "commits.txt", "regime_check.json", "tokenizer.model", "rebuilds.txt")
BASE_MISMATCH = ("skip", "supersede")  # what run_all does with a seed whose base differs here.


def archive_run(workdir: str, run_dir: str, archive: str) -> None:
  """Copies run_dir's ARCHIVED files to the same relative place under `archive`."""
  rel = os.path.relpath(run_dir, workdir)
  for name in ARCHIVED:
    src = os.path.join(run_dir, name)
    if os.path.exists(src):
      dst = os.path.join(archive, rel, name)
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      shutil.copy(src, dst)


def restore_from_archive(archive: str, workdir: str) -> int:
  """Copies the archive's run files that `workdir` lacks into it (a new machine resumes an
  experiment from its committed files: finished runs count as done); returns how many."""
  copied = 0
  for root, dirs, files in os.walk(archive):
    dirs[:] = [d for d in dirs if d != "superseded"]
    rel = os.path.relpath(root, archive)
    if rel == "." or not rel.startswith(("seed", "tune")):
      continue
    for name in files:
      dst = os.path.join(workdir, rel, name)
      if not os.path.exists(dst):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy(os.path.join(root, name), dst)
        copied += 1
  return copied


def base_sha(base_dir: str) -> str | None:
  """The base params' recorded sha256 (regime_check.json), None before the base finished."""
  path = os.path.join(base_dir, "regime_check.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get("base_params_sha256")


def known_mismatch(base_dir: str) -> bool:
  """Whether a base re-created on this machine type (the same `machine()` text) already
  failed to match the recorded fingerprint (base/rebuilds.txt): XLA:CPU picks its kernels
  per instruction set, so another try here would only spend the warm-start's time."""
  path = os.path.join(base_dir, "rebuilds.txt")
  if not os.path.exists(path):
    return False
  here = machine()
  with open(path) as f:
    for line in f:
      fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
      if f" {here} " in line and fields.get("sha") != fields.get("expected"):
        return True
  return False


def rebuild_base_checkpoint(config: ml_collections.ConfigDict, base_dir: str) -> bool:
  """Re-creates a finished base run's warm-start checkpoint (restored from the archive, so
  its eval and fingerprint exist but its checkpoint does not), in a scratch directory, and
  moves it in only if the params are bit-identical to the recorded fingerprint (and the
  tokenizer to the archived one). Returns False on a mismatch
  (`run_all` then skips the seed here, or supersedes it)."""
  from score_jax import metrics as metrics_lib
  from score_jax import train
  from score_jax.experiments import regime

  expected = base_sha(base_dir)
  if expected is None:
    raise FileNotFoundError(f"{base_dir}/regime_check.json (the base fingerprint) is missing: "
                            "the base checkpoint cannot be re-created verifiably; delete "
                            f"{base_dir} to rerun the seed from scratch.")
  scratch = base_dir.rstrip("/") + ".rebuild"  # kept on interruption: the warm-start resumes.
  run = train.setup(ml_collections.ConfigDict(config.to_dict()), scratch)
  writer = metrics_lib.MetricWriter(os.path.join(scratch, "logs"), tensorboard=False)
  try:
    params = train.run_warmstart(run, writer)
  finally:
    writer.close()
  actual = regime.params_sha256(params)
  tok_same = True
  if os.path.exists(os.path.join(base_dir, "tokenizer.model")):
    with open(os.path.join(base_dir, "tokenizer.model"), "rb") as a, \
         open(os.path.join(scratch, "tokenizer.model"), "rb") as b:
      tok_same = a.read() == b.read()
  with open(os.path.join(base_dir, "rebuilds.txt"), "a") as f:  # the audit trail.
    f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {git_commit()} {machine()} "
            f"sha={actual} expected={expected} tokenizer_same={tok_same}\n")
  if actual != expected or not tok_same:
    return False
  shutil.move(os.path.join(scratch, "warmstart"), os.path.join(base_dir, "warmstart"))
  shutil.copy(os.path.join(scratch, "tokenizer.model"), os.path.join(base_dir, "tokenizer.model"))
  shutil.rmtree(scratch)
  return True


def supersede_seed(workdir: str, seed: int, archive: str | None, reason: str) -> None:
  """Moves a seed's runs aside (in the workdir and the archive), with the reason, so the
  seed reruns from scratch: a seed's runs must share one bit-exact base model."""
  stamp = time.strftime("%Y%m%dT%H%M%S")
  for root in filter(None, [workdir, archive]):
    src = os.path.join(root, f"seed{seed}")
    if os.path.exists(src):
      dst = os.path.join(root, "superseded", f"seed{seed}-{stamp}")
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      shutil.move(src, dst)
      with open(os.path.join(dst, "REASON.txt"), "w") as f:
        f.write(reason + "\n")


def git_commit() -> str:
  import subprocess
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.abspath(__file__)), check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def machine() -> str:
  """CPU model and its bf16 matrix features: XLA:CPU's numerics can differ across machines,
  so every run records where it ran (a seed's runs must share one bit-exact base)."""
  model, flags = hostinfo.cpu()
  return f"cpu={model.replace(' ', '_')} flags={','.join(flags)}"
