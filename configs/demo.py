"""The embedded default: a tiny Gemma-2-style model on the guess-and-check arithmetic task, on CPU.

  python -m score_jax.main --config=configs/demo.py --workdir=runs/demo \
      --config.rl.stage_schedule=stage1:20,stage2:40 --config.model.d_model=96

The task (score_jax/data/missing_operand.py): find the hidden first operand of a
chain such as "?+7-4=12"; a response guesses, evaluates the chain with the guess and
checks it against the target ("Try 8: 8+7=15, 15-4=11, 11-12=-1. Answer: 8"). The
warm-start makes a base model that guesses right ~20-25% of the time and mostly repeats
itself when asked to correct (a few of its warm-start second attempts fix the first,
so wrong→right flips exist to be learned); SCoRe then teaches the second attempt to
use the check. `--config.task.name=synthetic` runs the plain chains instead.

Every value below can be overridden from the command line as --config.<path>=<value>.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # (data, fsdp, tensor); -1 takes the remaining devices.
  c.mesh_shape = (-1, 1, 1)

  # A Gemma 2 layout (soft-caps, local/global layers, GQA) at toy size; vocab_size comes
  # from the tokenizer.
  # bf16 compute over fp32 master weights, as a TPU runs: on CPUs with AMX the warm-start
  # step is ~1.45x the fp32 one (BENCHMARKS.md), on CPUs without bf16 instructions the same
  # speed; the demo's base and SCoRe's gain were re-measured with it (RESULTS.md, "The demo").
  c.model = ml_collections.ConfigDict(dict(
      preset="tiny", d_model=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
      ffw_hidden=256, sliding_window=64, query_pre_attn_scalar=32.0, dtype="bfloat16",
      param_dtype="float32"))

  c.tokenizer = ml_collections.ConfigDict(dict(
      path="",  # a sentencepiece .model; empty = train one on the task's corpus.
      vocab_size=512, corpus_size=4000,
      chat_template=True))  # Gemma's turn template; False: plain "{prompt}\n" turns.

  c.task = ml_collections.ConfigDict(dict(
      # single_digit has 1,905 distinct problems: 1,500 train, 256 held out for evaluation.
      name="missing_operand", difficulty="single_digit", train_seed=1, eval_seed=2,
      num_train=1500,
      num_eval=256,
      instruction=""))  # the self-correction instruction; empty = the task's own.

  # Supervised warm-start that makes the base model (see train.warmstart_examples).
  # Tuned so that the base model's Acc@t1 is ~20% and it rarely changes its answer
  # (RESULTS.md): its first attempts are honest guesses, wrong ones included
  # (train_wrong_first); its second attempts repeat a wrong first one 60% of the time.
  c.warmstart = ml_collections.ConfigDict(dict(
      steps=800, batch_size=32, learning_rate=3e-3, warmup_steps=50, seq_len=160,
      p_corrupt_context=0.4, p_second_repeats=0.6, train_wrong_first=True, log_every=50))

  # SCoRe (paper Table 5 values where they carry over: alpha, beta1, beta2, temperature).
  c.rl = ml_collections.ConfigDict(dict(
      stage_schedule="stage1:20,stage2:50", prompts_per_step=16, samples_per_prompt=4,
      num_attempts=2, max_new_tokens=48, temperature=1.0, learning_rate=1e-4, adam_b1=0.9,
      adam_b2=0.999, grad_clip=1.0, alpha=10.0, beta1=0.01, beta2=0.1, estimator="rloo",
      kl_estimator="exact", micro_batches=1, rollout_micro_batch=16,
      offline_first_fraction=0.0,
      logits_chunk=128,  # positions per logits block in the loss (0: full [E, L, V] logits).
      freeze_embedding=False,  # True: the tied embedding gets no gradient and no update.
      # Token-level truncated importance weights min(pi_theta / pi_sampler, cap) on the
      # policy-gradient term: corrects only the sampler/trainer round-off (temperature 1).
      importance_correction=False, importance_cap=2.0,
      max_nonfinite_in_a_row=3,  # skipped non-finite updates in a row that stop the run.
      # Stage I adaptive beta2 (losses.adaptive_beta2): keep beta2 * KL_1 near
      # beta2_target_ratio x mean |A2 log pi(y2)|; beta2 above is its starting value.
      adaptive_beta2=False, beta2_target_ratio=1.0, beta2_gain=0.1, beta2_min=1e-3,
      beta2_max=10.0))
  # LoRA (score_jax/lora.py) for the RL stages and the SFT baselines: rank 0 = full
  # fine-tuning; rank > 0 trains W + (alpha / rank) A.B on the weights whose '/'-joined
  # param path fully matches `targets` (default: attention and MLP projections), with the
  # frozen base as the reference policy. The warm-start stays a full fine-tune.
  c.rl.lora = ml_collections.ConfigDict(dict(
      rank=0, alpha=16.0,
      targets=r"layers/(attn/(q|kv|attn_vec)_einsum|mlp/(gating_einsum|linear))/w"))

  # "score" (the rl.stage_schedule above; naive_r2 / single_turn ... are schedule entries),
  # or an SFT baseline on the same budget: "star" | "pair_sft" (score_jax/baselines.py).
  c.method = "score"
  c.baseline = ml_collections.ConfigDict(dict(
      steps=0,  # gradient updates; 0 = the stage schedule's total.
      round_steps=1,  # steps per sample-then-fine-tune round (1: sample with the newest params).
      batch_size=0,  # SFT rows per update; 0 = prompts_per_step * samples_per_prompt.
      learning_rate=0.0,  # 0 = rl.learning_rate (the paper keeps it equal across methods).
      include_correct_to_correct=False))  # True: the paper's D+ variants.

  c.checkpoint = ml_collections.ConfigDict(dict(every=50, keep=3))
  # Console: a progress bar per phase (on a terminal) and a compact line every `every` steps;
  # verbose=True prints every logged step's full metrics (all of them are in metrics.jsonl
  # and TensorBoard either way).
  c.log = ml_collections.ConfigDict(dict(every=10, verbose=False))
  # base: also evaluate the base model (an experiment sharing one base turns it off);
  # self_refine: also evaluate the base model with generate -> feedback -> refine prompting
  # (instructions: score_jax/self_refine.py; empty = its defaults).
  # num_attempts: greedy attempts per problem (0 = rl.num_attempts; more gives the N-attempt
  # curve); scaling_budgets: sample budgets 2K for the compute-scaling study, e.g. (2, 4, 8).
  # split: the problems evaluated, "test" (held out) or "validation" (task.num_validation
  # problems drawn after the train ones; for choosing hyper-parameters, see
  # configs/miniature_study.py).
  # checkpoint: which RL step is evaluated (and exported): "final", or "best_train_reward"
  # (the paper's: the checkpoint whose batches since the previous one had the highest mean
  # last-attempt reward; RL schedule only); eval.json names the step.
  c.eval = ml_collections.ConfigDict(dict(batch_size=64, base=True, self_refine=False,
                                          checkpoint="final",
                                          self_refine_feedback="", self_refine_refine="",
                                          num_attempts=0, scaling_budgets=(),
                                          scaling_temperature=0.7, split="test"))
  # The final policy as a transformers checkpoint (+ tokenizer.model); empty: <workdir>/export/hf.
  c.export = ml_collections.ConfigDict(dict(enabled=True, hf_dir=""))
  return c
