"""Gemma 2 2B, SCoRe on MATH, on a v4-8 (4 chips x 32 GiB HBM): pure FSDP over the 4 chips.

  launch/run.sh --name N --zone Z --config configs/recipes/gemma2_2b_v4_8.py --workdir DIR \\
      --config.model.checkpoint=... --config.tokenizer.path=... --config.task.source_dir=...
"""

from configs.recipes import common


def get_config():
  return common.recipe(preset="gemma2-2b", accelerator="v4-8", mesh_shape=(1, 4, 1),
                       micro_batches=128, rollout_micro_batch=4)
