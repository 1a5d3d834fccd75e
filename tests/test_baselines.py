"""STaR / Pair-SFT example building (hand-built episodes), their training loops, Self-Refine."""

import json

import jax
import numpy as np
import pytest

from score_jax import (baselines, metrics as metrics_lib, model, pipeline, self_refine, sharding,
                       train)
from tests.test_train import small_config

PAD, EOT, STOP2 = 0, 9, 8  # EOT: <end_of_turn> (stop + turn close); STOP2: another stop id.
INSTR = [6, 7]


def _episode(x1, y1, y2, length):
  """tokens [L] and loss mask [2, L] of x1 ‖ y1 ‖ close? ‖ INSTR ‖ y2, as the rollout lays it out."""
  close = [] if y1[-1] in (EOT, STOP2) else [EOT]
  tokens = x1 + y1 + close + INSTR + y2
  start2 = len(x1 + y1 + close + INSTR)
  mask = np.zeros((2, length), np.float32)
  mask[0, len(x1):len(x1) + len(y1)] = 1
  mask[1, start2:start2 + len(y2)] = 1
  return tokens + [PAD] * (length - len(tokens)), mask


def _episodes(rows, length=16):
  tokens, masks = zip(*(_episode(*row, length) for row in rows))
  return np.array(tokens, np.int32), np.stack(masks, axis=1)


# Two problems (x1 = [1, 2] and [3]) with k = 3 samples each.
ROWS = [([1, 2], [20, 21, EOT], [30, EOT]),  # e0
        ([1, 2], [22, 23], [31, 32]),  # e1: y1 and y2 truncated
        ([1, 2], [24, STOP2], [33, EOT]),  # e2
        ([3], [40, EOT], [41, EOT]),  # e3
        ([3], [42, EOT], [43, EOT]),  # e4
        ([3], [44, EOT], [45, EOT])]  # e5
REWARDS = np.array([[0, 0, 1, 1, 0, 1],
                    [1, 1, 1, 1, 0, 0]], np.float32)
STOPS = (STOP2, EOT)


def test_star_keeps_wrong_to_right_and_trains_only_y2():
  tokens, mask = _episodes(ROWS)
  examples, kept = baselines.star_examples(tokens, mask, REWARDS, stop_tokens=STOPS,
                                           turn_end_id=EOT)
  assert kept == [(0, 1), (1, 1)]  # r1=0, r2=1; e2/e3 (1 -> 1) and e5 (1 -> 0) are dropped.
  assert examples == [
      [([1, 2, 20, 21, EOT, 6, 7], False), ([30, EOT], True)],
      # y1 was truncated: the context carries the rollout's closing token; the truncated
      # target y2 gets one appended so the model learns to end its turn.
      [([1, 2, 22, 23, EOT, 6, 7], False), ([31, 32, EOT], True)]]
  plus, kept_plus = baselines.star_examples(tokens, mask, REWARDS, stop_tokens=STOPS,
                                            turn_end_id=EOT, include_correct_to_correct=True)
  assert kept_plus == [(0, 1), (1, 1), (2, 1), (3, 1)]
  assert plus[2] == [([1, 2, 24, STOP2, 6, 7], False), ([33, EOT], True)]
  # Packed, the loss mask covers exactly the target tokens.
  batch = baselines.pack_rows(examples, rows=4, pad_id=PAD, bucket=4)
  np.testing.assert_array_equal(batch["tokens"][1, :12], [1, 2, 22, 23, EOT, 6, 7, 31, 32, EOT,
                                                           PAD, PAD])
  np.testing.assert_array_equal(batch["loss_mask"][1, :12], [0] * 7 + [1, 1, 1, 0, 0])
  assert batch["tokens"].shape == (4, 12) and not batch["loss_mask"][2:].any()


def test_pair_sft_pairs_wrong_with_right_first_attempts():
  tokens, mask = _episodes(ROWS)
  examples, pairs = baselines.pair_sft_examples(tokens, mask, REWARDS, 3, instruction_ids=INSTR,
                                                stop_tokens=STOPS, turn_end_id=EOT)
  # Problem 0: wrong e0, e1; right e2 only. Problem 1: wrong e4; right e3, e5 -> e4 with e3.
  assert pairs == [(0, 2), (1, 2), (4, 3)]
  assert examples[0] == [([1, 2], False), ([20, 21, EOT], False), (INSTR, False),
                         ([24, STOP2], True)]
  assert examples[1] == [([1, 2], False), ([22, 23, EOT], False), (INSTR, False),
                         ([24, STOP2], True)]
  assert examples[2] == [([3], False), ([42, EOT], False), (INSTR, False), ([40, EOT], True)]
  _, pairs_plus = baselines.pair_sft_examples(tokens, mask, REWARDS, 3, instruction_ids=INSTR,
                                              stop_tokens=STOPS, turn_end_id=EOT,
                                              include_correct_to_correct=True)
  assert pairs_plus == [(0, 2), (1, 2), (2, 2), (4, 3), (3, 5), (5, 3)]
  no_right = np.zeros_like(REWARDS)
  assert baselines.pair_sft_examples(tokens, mask, no_right, 3, instruction_ids=INSTR,
                                     stop_tokens=STOPS, turn_end_id=EOT) == ([], [])
  with pytest.raises(ValueError, match="samples_per_prompt=4"):
    baselines.pair_sft_examples(tokens, mask, REWARDS, 4, instruction_ids=INSTR,
                                stop_tokens=STOPS, turn_end_id=EOT)


def test_refine_context_is_an_id_concatenation():
  tokens = np.array([[1, 2, 3, 0], [4, 5, 0, 0]], np.int32)
  context, length = self_refine.refine_context(tokens, np.array([3, 2]), np.array([True, False]),
                                               [6, 7], turn_end_id=EOT, pad_id=0)
  np.testing.assert_array_equal(length, [6, 4])
  np.testing.assert_array_equal(context, [[1, 2, 3, EOT, 6, 7, 0], [4, 5, 6, 7, 0, 0, 0]])


def _config(method, steps=2):
  config = small_config()
  config.method = method
  config.rl.stage_schedule = f"stage1:{steps}"  # sets the budget: `steps` updates.
  config.rl.samples_per_prompt = 4
  config.task.num_eval = 4
  config.eval.batch_size = 4
  # D+ (more kept examples), and a learning rate that visibly moves the params in two steps.
  config.baseline.include_correct_to_correct = True
  config.baseline.learning_rate = 1e-2
  config.mesh_shape = (8, 1, 1)  # data-parallel only: fewer collectives to compile.
  config.model.num_layers, config.rl.max_new_tokens = 1, 8
  return config


@pytest.mark.parametrize("method,round_steps", [("star", 1), ("pair_sft", 2)])
def test_sft_baseline_trains_two_steps(tmp_path, method, round_steps, monkeypatch):
  config = _config(method)
  config.baseline.round_steps = round_steps  # 2: both steps' samples pooled, then 2 updates.
  run = train.setup(config, str(tmp_path))
  base = model.init_params(run.model_config, jax.random.key(0))
  # Rewards from a stand-in verifier that calls alternating episodes right, so every group
  # has wrong and right attempts to learn from (the untrained model is never right).
  real_batch = train.rl_batch

  def rl_batch(run, params, ref_params, step):
    batch, m = real_batch(run, params, ref_params, step)
    e = batch["rewards"].shape[1]
    batch["rewards"] = np.stack([np.arange(e) % 2 == 1, np.ones(e, bool)]).astype(np.float32)
    return batch, m

  monkeypatch.setattr(train, "rl_batch", rl_batch)
  writer = metrics_lib.MetricWriter(str(tmp_path), tensorboard=False)
  trained = baselines.run_sft_baseline(run, base, writer, method)
  writer.close()
  diff = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                      jax.device_get(trained), base)
  assert max(jax.tree.leaves(diff)) > 1e-4
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in records] == [1, 2]
  # 16 episodes, r1 = 0 1 0 1 ...: STaR keeps 8 wrong->right + 8 right->right (D+); Pair-SFT
  # pairs each of the 8 wrong and (D+) 8 right first attempts with a right one.
  for r in records:
    assert r[f"{method}/kept"] == 16 and r[f"{method}/updated"] == 1.0
    assert r[f"{method}/pool_size"] == 16 * round_steps and r[f"{method}/rows"] == 16
    assert np.isfinite(r[f"{method}/loss"]) and r[f"{method}/loss"] > 0
  # Resume: the checkpoint holds the last step, so a second call does no more work.
  again = baselines.run_sft_baseline(run, base, metrics_lib.MetricWriter(
      str(tmp_path / "again"), tensorboard=False), method)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(again), jax.device_get(trained))


def test_self_refine_row(tmp_path):
  config = _config("score")
  run = train.setup(config, str(tmp_path))
  params = sharding.shard_params(model.init_params(run.model_config, jax.random.key(1)), run.mesh)
  refine = baselines.evaluate_self_refine(run, params)
  base = train.evaluate_params(run, params)
  assert len(refine["texts"]) == 2 and len(refine["texts"][0]) == 4 and len(refine["feedback"]) == 4
  m = refine["metrics"]
  for key in ("acc_t1", "acc_t2", "delta_i_to_c", "delta_c_to_i", "changed_answer_rate",
              "truncation_rate", "feedback_truncation_rate"):
    assert 0.0 <= m[key] <= 1.0, key
  assert m["delta"] == pytest.approx(m["delta_i_to_c"] - m["delta_c_to_i"])
  # Self-Refine's first attempt is the same greedy y1 as the plain evaluation's.
  assert refine["texts"][0] == base["texts"][0]


def test_train_and_evaluate_selects_the_method(tmp_path, monkeypatch):
  calls = []
  fake = {"metrics": {"acc_t1": 0.5, "acc_t2": 0.5}, "texts": [["a"], ["a"]],
          "correct": [[1.0], [1.0]], "answers": [[1], [1]]}
  monkeypatch.setattr(train, "run_warmstart", lambda run, writer: "base-params")
  monkeypatch.setattr(train, "evaluate_params", lambda run, params: {**fake, "of": params})
  monkeypatch.setattr(train, "run_rl", lambda run, base, writer: calls.append("rl") or "rl")
  monkeypatch.setattr(train, "export_hf", lambda *args: None)
  monkeypatch.setattr(baselines, "run_sft_baseline",
                      lambda run, base, writer, method: calls.append(method) or method)
  monkeypatch.setattr(baselines, "evaluate_self_refine",
                      lambda run, params: calls.append(("self_refine", params)) or fake)
  config = _config("pair_sft", steps=1)
  config.eval.self_refine = True
  results = pipeline.train_and_evaluate(config, str(tmp_path / "a"))
  assert calls == [("self_refine", "base-params"), "pair_sft"]
  assert list(results) == ["base", "self_refine", "pair_sft"]
  assert results["pair_sft"]["of"] == "pair_sft" and results["base"]["of"] == "base-params"
  calls.clear()
  config.method, config.eval.self_refine = "score", False
  config.rl.stage_schedule = "naive_r2:2,single_turn:1"  # RL baselines are schedule entries.
  assert list(pipeline.train_and_evaluate(config, str(tmp_path / "b"))) == ["base", "score"]
  assert calls == ["rl"]
  config.method = "stra"
  with pytest.raises(ValueError, match="unknown method 'stra'"):
    pipeline.train_and_evaluate(config, str(tmp_path / "c"))
