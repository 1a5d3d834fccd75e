"""The pre-registered miniature study (RESULTS.md, "The decisive study"): two regimes.

  python -m score_jax.experiments.miniature --config=configs/miniature_study.py:hard \
      --workdir=runs/study/hard --tune_lrs=3e-5,1e-4,3e-4 --seeds=0,1,2,3,4,5,6,7

"easy" is the guess-and-check task (responses end with the check `value-target=d`, so a
second attempt can correct with one subtraction: correcting is easier than answering).
"hard" drops the check step: a response ends at the chain's last value, so correcting
needs the model to notice the miss and turn it into a new guess, while repeating
attempt 1 stays easy: copying is easier than correcting, the regime of the paper's
collapse argument. The regime was chosen by the task and the warm-start alone, before any
method ran (criteria and measurements: RESULTS.md): p_second_repeats 0.5 and 0.6 gave sampled
second attempts that change 16.4% / 15.3% of answers (the band is 5-15%), 0.7 gives 10.1%.

Everything the study depends on is set here, not inherited from configs/demo.py, so the
demo can change without changing the study. fp32 compute: on the tiny model the update
is overhead-bound and bf16 did not help on the 2-core CPUs (BENCHMARKS.md).
"""

import ml_collections

from configs import demo

# Regime -> (task.check_step, warmstart.p_corrupt_context, warmstart.p_second_repeats).
REGIMES = {"easy": (True, 0.4, 0.6), "hard": (False, 0.3, 0.7)}


def get_config(regime: str = "hard") -> ml_collections.ConfigDict:
  if regime not in REGIMES:
    raise ValueError(f"unknown regime {regime!r}: use configs/miniature_study.py:hard or :easy.")
  check_step, p_corrupt, p_repeat = REGIMES[regime]
  c = demo.get_config()
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(
      preset="tiny", d_model=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
      ffw_hidden=256, sliding_window=64, query_pre_attn_scalar=32.0, dtype="float32"))
  c.tokenizer.update(path="", vocab_size=512, corpus_size=4000, chat_template=True)
  # single_digit has 1,905 distinct problems: 1,336 train, 256 validation (learning-rate
  # selection only), 256 test.
  c.task = ml_collections.ConfigDict(dict(
      name="missing_operand", difficulty="single_digit", train_seed=1, eval_seed=2,
      num_train=1336, num_validation=256, num_eval=256, check_step=check_step, instruction=""))
  c.warmstart.update(steps=800, batch_size=32, learning_rate=3e-3, warmup_steps=50, seq_len=160,
                     p_corrupt_context=p_corrupt, p_second_repeats=p_repeat,
                     train_wrong_first=True, log_every=50)
  # 150 updates of 16 prompts x 4 samples for every method (SCoRe: 50 Stage I + 100 Stage II;
  # experiments/miniature.py sets the schedule per method). The learning rate is tuned per
  # method on the validation split (--tune_lrs); 1e-4 is only the untuned default.
  c.rl.update(stage_schedule="stage1:50,stage2:100", prompts_per_step=16, samples_per_prompt=4,
              num_attempts=2, max_new_tokens=48, temperature=1.0, learning_rate=1e-4,
              adam_b1=0.9, adam_b2=0.999, grad_clip=1.0, alpha=10.0, beta1=0.01, beta2=0.1,
              estimator="rloo", kl_estimator="exact", micro_batches=1, rollout_micro_batch=16,
              offline_first_fraction=0.0, logits_chunk=128, freeze_embedding=False,
              adaptive_beta2=False)
  c.method = "score"
  c.baseline.update(steps=0, round_steps=1, batch_size=0, learning_rate=1e-4,
                    include_correct_to_correct=False)
  c.checkpoint.update(every=50, keep=2)
  c.eval.update(batch_size=64, base=True, self_refine=False, num_attempts=0, scaling_budgets=(),
                split="test")
  c.export.enabled = False
  return c
