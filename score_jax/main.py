"""Entry point: python -m score_jax.main --config=configs/demo.py --workdir=runs/demo

Any config value can be overridden as --config.<path>=<value>; an unknown key or a
value of the wrong type is an error that names it. Running the same command with
the same workdir resumes from the last checkpoint.
"""

import logging
import os

import jax
from absl import app, flags
from ml_collections import config_flags

from score_jax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, results.")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed() -> None:
  """jax.distributed.initialize() when this is one process of a multi-host job.

  On a multi-host TPU slice JAX finds the coordinator itself (TPU_WORKER_HOSTNAMES
  lists the hosts); elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
  JAX_PROCESS_ID. A single host needs nothing.
  """
  multi_host_tpu = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if multi_host_tpu or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; pass options as --flag=value.")
  logging.getLogger("absl").setLevel(logging.WARNING)
  initialize_distributed()
  print(f"score_jax process {jax.process_index()}/{jax.process_count()}: "
        f"{jax.local_device_count()} local / {jax.device_count()} global devices "
        f"({jax.devices()[0].platform})", flush=True)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
