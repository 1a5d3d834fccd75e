"""Gemma 3 4B, SCoRe on MATH, on a v5litepod-8 (v5e, 8 chips x 16 GiB HBM). Tight.

FSDP over 2 x tensor parallelism over 4 (vocab 262k and 8 heads split 4 ways), and 768 new
tokens per attempt instead of 1024: fp32 params + Adam + reference of a 3.9B model leave
little of 16 GiB. Keep fp32: Adam steps of lr 5e-6 vanish in bfloat16 weights. With more
room (v5p, v4-16) use 1024 tokens.

  launch/run.sh --name N --zone Z --config configs/recipes/gemma3_4b_v5e_8.py --workdir DIR \\
      --config.model.checkpoint=... --config.tokenizer.path=... --config.task.source_dir=...
"""

from configs.recipes import common


def get_config():
  return common.recipe(preset="gemma3-4b", accelerator="v5litepod-8", mesh_shape=(1, 2, 4),
                       micro_batches=128, rollout_micro_batch=2, max_new_tokens=768)
