"""Entry point: python -m score_jax.main --config=configs/demo.py --workdir=runs/demo

Any config value can be overridden as --config.<path>=<value>; an unknown key or a
value of the wrong type is an error that names it. Running the same command with
the same workdir resumes from the last checkpoint.
"""

import logging
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from score_jax import multihost, pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, results.")
flags.mark_flags_as_required(["config", "workdir"])
# Multi-process jobs off TPU (on a TPU slice JAX finds all three itself); each defaults to
# JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID. See score_jax/multihost.py.
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0's coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0 .. n-1.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; pass options as --flag=value.")
  logging.getLogger("absl").setLevel(logging.WARNING)
  multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  print(f"score_jax process {jax.process_index()}/{jax.process_count()}: "
        f"{jax.local_device_count()} local / {jax.device_count()} global devices "
        f"({jax.devices()[0].platform})", flush=True)
  try:
    pipeline.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except KeyboardInterrupt:  # Ctrl-C outside a training phase (inside one it saves and exits).
    print(f"\ninterrupted; rerun the same command to resume: finished phases and the last "
          f"checkpoint are in {_WORKDIR.value}", file=sys.stderr, flush=True)
    sys.exit(130)


if __name__ == "__main__":
  app.run(main)
