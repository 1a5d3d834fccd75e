"""Gemma 2 2B, SCoRe on MATH, on a v5litepod-8 (v5e, 8 chips x 16 GiB HBM).

FSDP over 4 chips x tensor parallelism over 2: pure FSDP over 8 would gather the whole
fp32 embedding (256k x 2304) on every chip for the policy, the reference and the gradient.

  launch/run.sh --name N --zone Z --config configs/recipes/gemma2_2b_v5e_8.py --workdir DIR \\
      --config.model.checkpoint=... --config.tokenizer.path=... --config.task.source_dir=...
"""

from configs.recipes import common


def get_config():
  return common.recipe(preset="gemma2-2b", accelerator="v5litepod-8", mesh_shape=(1, 4, 2),
                       micro_batches=128, rollout_micro_batch=4)
