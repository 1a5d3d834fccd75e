"""SCoRe on MATH (paper §6.1, Table 5 hyper-parameters) with Gemma 2 2B as the base model.

  python -m score_jax.main --config=configs/math_gemma.py --workdir=runs/math \
      --config.model.checkpoint=/data/gemma-2-2b-it \
      --config.tokenizer.path=/data/gemma-2-2b-it/tokenizer.model \
      --config.task.source_dir=/data/MATH \
      --config.task.math500_path=/data/prm800k/math_splits/test.jsonl

Paths are empty by default; the run stops with an error naming the one to set.
The data: MATH in the Hendrycks layout (train/<subject>/<n>.json, test/...) or
as train.jsonl / test.jsonl, and MATH500 (PRM800K's test.jsonl); training uses
the 12,000 problems minus MATH500, evaluation MATH500 (score_jax/data/math_dataset.py).
The base model: a transformers Gemma directory (config.json + *.safetensors),
or an official Gemma Flax checkpoint with model.checkpoint_format=gemma_flax.
The trained policy is written to <workdir>/export/hf (export.hf_dir).

From the paper: Adam, lr 5e-6, 3000 steps, batch 512, temperature 1.0,
alpha 10, beta1 0.01, beta2 0.1. Our choices where it is silent: a batch of
512 episodes = 128 problems x 4 samples (RLOO needs k >= 2), Stage I / Stage II
split 1000 / 2000 steps, 1024 new tokens per attempt, Adam betas (0.9, 0.999),
gradient clipping at 1.0, no warm-up, the Gemma chat template (an instruction-
tuned checkpoint), all devices on the FSDP axis.
"""

import ml_collections

from configs import demo


def get_config() -> ml_collections.ConfigDict:
  c = demo.get_config()  # every key the run reads; the values below replace the demo's.
  c.mesh_shape = (1, -1, 1)  # (data, fsdp, tensor): parameters sharded over every device.

  c.model = ml_collections.ConfigDict(dict(
      preset="gemma2-2b",
      checkpoint="",  # the base model's directory (see the module docstring).
      checkpoint_format="hf",  # "hf" (transformers safetensors) or "gemma_flax" (orbax).
      dtype="float32",  # compute; configs/recipes/ use bfloat16 (the TPU's native mode).
      param_dtype="float32",  # master weights: Adam steps of lr 5e-6 vanish in bfloat16.
      remat=True))

  c.tokenizer.path = ""  # the checkpoint's tokenizer.model.
  c.tokenizer.chat_template = True

  c.task = ml_collections.ConfigDict(dict(
      name="math",
      source_dir="",  # MATH: train/ and test/ (Hendrycks) or train.jsonl and test.jsonl.
      math500_path="",  # PRM800K prm800k/math_splits/test.jsonl.
      data_dir="",  # prepared tfds records; empty: ~/tensorflow_datasets/score_jax/<hash>.
      allow_unmatched_eval=False,
      num_train=0, num_eval=0,  # 0: all problems.
      verify_workers=0,  # concurrent answer checks; 0: twice the host's cores.
      instruction=""))  # empty: the paper's MATH turn-2 instruction.

  c.warmstart.steps = 0  # the pretrained checkpoint is the base model.

  c.rl.update(dict(  # other rl keys keep the demo's values.
      stage_schedule="stage1:1000,stage2:2000", prompts_per_step=128, samples_per_prompt=4,
      num_attempts=2, max_new_tokens=1024, temperature=1.0, learning_rate=5e-6, adam_b1=0.9,
      adam_b2=0.999, grad_clip=1.0, alpha=10.0, beta1=0.01, beta2=0.1, estimator="rloo",
      kl_estimator="exact", micro_batches=16, rollout_micro_batch=64,
      offline_first_fraction=0.0))

  c.checkpoint.update(every=100, keep=3)
  c.eval.batch_size = 128
  return c
