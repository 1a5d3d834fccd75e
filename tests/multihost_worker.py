"""One process of tests/test_multihost.py: warm-start + RL of a tiny demo config, then params out.

  python tests/multihost_worker.py WORKDIR OVERRIDES_JSON [COORDINATOR NUM_PROCESSES PROCESS_ID]

With a coordinator, it first checks the multihost helpers across processes; then process 1
alone receives a SIGTERM right after the warm-start's preemption vote of step
`last - 1` (the racy window: after one vote, before that step's save decision). Every
process must then skip that step's save, agree to stop at the last step, save it and exit
(no process left waiting in a collective); the worker resumes the phase as a restarted
job would. The RL rewards come from a stand-in verifier (a checksum of the response text)
that gives the untrained model's episodes different rewards, so the advantages are not zero
and an episode verified on one host but credited to another row would change the update.
Writes WORKDIR/result_<process>.json and params_<process>.npz.
"""

import dataclasses
import json
import os
import signal
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

from configs import demo  # noqa: E402
from score_jax import metrics, multihost, sharding, train  # noqa: E402


def _config(overrides):
  config = demo.get_config()
  for key, value in overrides.items():
    node = config
    *path, leaf = key.split(".")
    for part in path:
      node = node[part]
    node[leaf] = tuple(value) if isinstance(value, list) else value
  return config


def _helper_checks(result):
  """The multihost helpers on a 2-process mesh (values known by construction)."""
  pid = jax.process_index()
  result["any_of_process_1"] = multihost.any_process(pid == 1)
  result["any_of_none"] = multihost.any_process(False)
  mesh = sharding.make_mesh((-1, 1, 1))
  rows = multihost.host_rows(8, sharding.batch_sharding(mesh, 1))
  result["rows"] = [rows.start, rows.stop]
  full = np.arange(24, dtype=np.float32).reshape(3, 8)  # [A, E]: rows along axis 1.
  result["gathered_ok"] = bool(np.array_equal(
      multihost.gather_rows(full[:, rows], rows, 8, axis=1), full))
  glob = multihost.global_from_full(full.T, sharding.batch_sharding(mesh, 2))
  result["global_rows_ok"] = bool(np.array_equal(multihost.fetch(glob), full.T))
  multihost.barrier("helper_checks")


def _signal_process_1_after_vote(vote: int):
  """Process 1 gets SIGTERM just after the `vote`-th preemption vote (1-based) returns."""
  real, calls = multihost.any_process, [0]

  def any_process(flag):
    out = real(flag)
    calls[0] += 1
    if calls[0] == vote and jax.process_index() == 1:
      os.kill(os.getpid(), signal.SIGTERM)
    return out
  train.multihost.any_process = any_process


def main():
  workdir, overrides = sys.argv[1], json.loads(sys.argv[2])
  multi = len(sys.argv) > 3
  if multi:
    multihost.initialize(sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
  result = {"process": jax.process_index(), "processes": jax.process_count(),
            "devices": jax.device_count()}
  run = train.setup(_config(overrides), workdir)
  # Reward 0/1 by the response's own text (same in every process; the real verifier calls
  # every untrained response wrong, which would make every advantage 0).
  run.task = dataclasses.replace(run.task, batch_reward=None,
                                 reward=lambda text, gold: float(zlib.crc32(text.encode()) % 2))
  writer = metrics.MetricWriter(workdir, tensorboard=False)
  if multi:
    _helper_checks(result)
    _signal_process_1_after_vote(run.config.warmstart.steps - 1)
    try:
      train.run_warmstart(run, writer)
    except SystemExit as e:  # the agreed stop: every process saved the same step.
      result["preempted"] = str(e)
      multihost.barrier("preempted")
      result["saved_steps"] = sorted(int(d) for d in os.listdir(os.path.join(workdir, "warmstart"))
                                     if d.isdigit())
  base = train.run_warmstart(run, writer)  # resumes after a preemption.
  params = train.run_rl(run, base, writer)
  writer.close()
  flat = traverse_util.flatten_dict(multihost.fetch(params), sep="/")
  np.savez(os.path.join(workdir, f"params_{jax.process_index()}.npz"), **flat)
  with open(os.path.join(workdir, f"result_{jax.process_index()}.json"), "w") as f:
    json.dump(result, f)


if __name__ == "__main__":
  main()
