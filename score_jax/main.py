"""Entry point: python -m score_jax.main --config=configs/demo.py --workdir=runs/demo

Any config value can be overridden as --config.<path>=<value>; an unknown key or a
value of the wrong type is an error that names it. Running the same command with
the same workdir resumes from the last checkpoint.
"""

import logging

from absl import app, flags
from ml_collections import config_flags

from score_jax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; pass options as --flag=value.")
  logging.getLogger("absl").setLevel(logging.WARNING)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
