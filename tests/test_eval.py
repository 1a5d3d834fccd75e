"""Self-correction metrics against hand-computed values (docs/method.md §5)."""

import numpy as np
import pytest

from score_jax import eval as evaluation


def test_transition_metrics_identity():
  c = np.array([[0, 1, 1, 0, 1], [1, 1, 0, 0, 1]])
  m = evaluation.transition_metrics(c)
  assert m["acc_t1"] == pytest.approx(0.6) and m["acc_t2"] == pytest.approx(0.6)
  assert m["delta_i_to_c"] == pytest.approx(0.2) and m["delta_c_to_i"] == pytest.approx(0.2)
  assert m["delta"] == pytest.approx(m["delta_i_to_c"] - m["delta_c_to_i"])
  three = evaluation.transition_metrics(np.array([[0, 0], [0, 1], [1, 1]]))
  assert three["acc_t3"] == 1.0 and three["delta"] == 0.5


def test_changed_answers_and_edit_distance():
  assert evaluation.changed_answer_rate([["3", "4", None, "5"], ["3", "5", None, "6"]]) == 0.5
  ratios = evaluation.edit_distance_ratios(["abc", "", "kitten"], ["abc", "", "sitting"])
  np.testing.assert_allclose(ratios, [0.0, 0.0, 3 / 13])


def test_majority_vote():
  answer = lambda t: t.split("=")[-1] if "=" in t else None
  reward = lambda t, g: float(answer(t) == g)
  assert evaluation.majority_correct(["x=1", "y=2", "z=2", "junk"], "2", reward, answer) == 1.0
  assert evaluation.majority_correct(["x=1", "y=2"], "2", reward, answer) == 0.0  # tie: earliest
  assert evaluation.majority_correct(["junk", "nothing"], "2", reward, answer) == 0.0


def test_table_and_report(tmp_path):
  results = {"base": {"metrics": {"acc_t1": 0.5, "acc_t2": 0.25, "delta": -0.25,
                                  "delta_i_to_c": 0.0, "delta_c_to_i": 0.25,
                                  "changed_answer_rate": 0.5},
                      "correct": [[1, 1, 0, 0], [1, 0, 0, 0]]}}
  table = evaluation.write_report(results, str(tmp_path))
  assert "50.0" in table and "-25.0" in table
  assert (tmp_path / "eval.png").stat().st_size > 1000
  assert (tmp_path / "eval.json").exists()


def test_accuracy_per_attempt_plot_has_integer_attempt_ticks(tmp_path):
  for attempts in (2, 3, 7):
    correct = [[1, 0, 0, 0]] * attempts
    fig = evaluation.plot_report({"base": {"correct": correct}}, str(tmp_path / "eval.png"))
    ax = fig.axes[-1]
    assert ax.get_xlabel() == "attempt"
    low, high = ax.get_xlim()
    shown = [t for t in ax.get_xticks() if low <= t <= high]
    assert shown == list(range(1, attempts + 1))  # matplotlib's default has 1.2, 1.4, ...


def test_compute_scaling_votes_over_each_problems_own_samples(monkeypatch):
  import collections
  import types
  from score_jax import rollout
  n, two_k = 5, 4
  rng = np.random.default_rng(0)
  # Episode e belongs to problem e // 2K (rollout's layout); answers 0..3 or none.
  answers = rng.integers(0, 5, size=(2, n * two_k))
  texts = [[f"a={v}" if v < 4 else "junk" for v in row] for row in answers]
  golds = [str(g) for g in rng.integers(0, 4, size=n)]
  seen = {}

  def fake_rollout(config, params, prompts, lengths, rng, *, rc, micro_batch):
    seen["rc"] = rc
    return types.SimpleNamespace(prompt_index=np.arange(n * two_k) // rc.samples_per_prompt)

  monkeypatch.setattr(rollout, "rollout_in_chunks", fake_rollout)
  monkeypatch.setattr(rollout, "attempt_texts", lambda episodes, decode, stops: texts)
  answer = lambda t: t.split("=")[-1] if "=" in t else None
  reward = lambda t, g: float(answer(t) == g)
  rc = rollout.RolloutConfig(samples_per_prompt=2, max_new_tokens=4, instruction_ids=(),
                             stop_tokens=(1,))
  out = evaluation.compute_scaling(None, None, np.zeros((n, 3), np.int32), np.ones(n), golds,
                                   rc=rc, budgets=(2, 4), decode=None, reward_fn=reward,
                                   answer_fn=answer, micro_batch=n)
  assert seen["rc"].samples_per_prompt == two_k and seen["rc"].num_attempts == 2

  def brute_force(attempt, problem, count):  # the problem's first `count` samples, by index.
    rows = [e for e in range(n * two_k) if e // two_k == problem][:count]
    votes = collections.Counter(answer(texts[attempt][e]) for e in rows)
    votes.pop(None, None)
    return float(bool(votes) and votes.most_common(1)[0][0] == golds[problem])

  for b, budget in enumerate((2, 4)):
    assert out["parallel"][b] == pytest.approx(np.mean([brute_force(0, i, budget)
                                                        for i in range(n)]))
    assert out["self_correct"][b] == pytest.approx(np.mean([brute_force(1, i, budget // 2)
                                                            for i in range(n)]))
