"""Gemma 2 9B, SCoRe on MATH, on a v5p-16 (8 chips x 95 GiB HBM, 2 hosts): FSDP over 8 chips.

  launch/run.sh --name N --zone Z --config configs/recipes/gemma2_9b_v5p_16.py --workdir DIR \\
      --config.model.checkpoint=... --config.tokenizer.path=... --config.task.source_dir=...
"""

from configs.recipes import common


def get_config():
  return common.recipe(preset="gemma2-9b", accelerator="v5p-16", mesh_shape=(1, 8, 1),
                       micro_batches=64, rollout_micro_batch=8)
