"""reasoning-gym problems: determinism, held-out seeds, golds our verifier and theirs agree on."""

import ml_collections
import numpy as np
import pytest

from score_jax import tasks
from score_jax.data import prompts
from score_jax.data import reasoning_gym_data as rgd
from score_jax.rewards import math as math_reward

reasoning_gym = pytest.importorskip("reasoning_gym")  # requirements-test.txt pins it.


@pytest.mark.parametrize("name", rgd.CHECKED_DATASETS)
def test_our_reward_and_score_answer_agree(name):
  problems, _ = rgd.make_problems(name, {}, seed=3, n=40, num_checked=0)
  dataset = reasoning_gym.create_dataset(name, size=4 * 40 + 64, seed=rgd.rg_seed(3))
  for p in problems:
    assert p.entry == dataset[int(p.id.rsplit("/", 1)[1])]  # the problem is the data set's item.
    wrong = str(int(p.answer) + 1)  # all four give integer answers.
    assert math_reward.reward(rgd.final_answer(p.answer), p.answer) == 1.0
    assert dataset.score_answer(p.answer, p.entry) == 1.0
    assert math_reward.reward(rgd.final_answer(wrong), p.answer) == 0.0
    assert dataset.score_answer(wrong, p.entry) < 1.0
    assert p.solution.endswith(rgd.final_answer(p.answer))
    assert math_reward.reward(p.solution, p.answer) == 1.0  # the warm-start target is right.


def test_same_seed_same_problems_and_prefix_stable():
  a, _ = rgd.make_problems("chain_sum", {"max_terms": 3}, seed=5, n=20)
  b, _ = rgd.make_problems("chain_sum", {"max_terms": 3}, seed=5, n=20)
  c, _ = rgd.make_problems("chain_sum", {"max_terms": 3}, seed=6, n=20)
  assert [(p.id, p.question, p.answer) for p in a] == [(p.id, p.question, p.answer) for p in b]
  assert [p.question for p in a] != [p.question for p in c]


def test_neighbouring_seeds_do_not_share_items():
  # reasoning-gym seeds item i with seed + i: raw seeds 1 and 2 would share all but one item.
  raw1 = [reasoning_gym.create_dataset("chain_sum", size=30, seed=1)[i]["question"]
          for i in range(30)]
  raw2 = [reasoning_gym.create_dataset("chain_sum", size=30, seed=2)[i]["question"]
          for i in range(30)]
  assert raw1[1:] == raw2[:-1]  # the property that forces `rg_seed`.
  ours1 = {p.question for p in rgd.make_problems("chain_sum", {}, seed=1, n=30)[0]}
  ours2 = {p.question for p in rgd.make_problems("chain_sum", {}, seed=2, n=30)[0]}
  assert not ours1 & ours2


def test_eval_excludes_train_questions_and_counts_them():
  # Two one-digit terms (<= 200 questions): the two seeds collide often.
  params = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1)
  train, evals, counts = rgd.make_splits("chain_sum", params, 1, 2, 30, 30)
  train_q = {rgd.normalise_question(p.question) for p in train}
  eval_q = [rgd.normalise_question(p.question) for p in evals]
  assert len(train) == len(train_q) == 30 and len(set(eval_q)) == 30
  assert not train_q & set(eval_q)
  assert counts["eval_excluded"] > 0 and counts["train_duplicates"] > 0
  # The eval items skipped are exactly the train questions met in the eval stream.
  raw, _ = rgd.make_problems("chain_sum", params, 2, 60)
  met = [rgd.normalise_question(p.question) for p in raw
         if int(p.id.rsplit("/", 1)[1]) <= int(evals[-1].id.rsplit("/", 1)[1])]
  assert sum(q in train_q for q in met) == counts["eval_excluded"]


def test_too_narrow_difficulty_and_same_seeds_fail_clearly():
  params = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1)
  with pytest.raises(ValueError, match="distinct problems"):
    rgd.make_problems("chain_sum", params, seed=1, n=250)  # <= 200 exist.
  with pytest.raises(ValueError, match="held-out seed"):
    rgd.make_splits("chain_sum", {}, 4, 4, 5, 5)
  with pytest.raises(ValueError, match="task.params"):
    rgd.make_problems("chain_sum", {"no_such_param": 1}, seed=1, n=5)


def test_disagreeing_scorer_is_rejected():
  class Lenient:  # accepts everything: a data set our verifier does not judge like this.
    def score_answer(self, answer, entry):
      del answer, entry
      return 1.0

  problems, _ = rgd.make_problems("basic_arithmetic", {}, seed=1, n=2)
  with pytest.raises(ValueError, match="score_answer"):
    rgd.check_agreement(Lenient(), problems, "lenient")


def test_chain_sum_solution_and_corruption_by_hand():
  assert rgd._chain_steps("57 + 87 - 70") == "57 + 87 = 144, 144 - 70 = 74."
  problem = rgd.Problem(id="x", question="q", answer="74",
                        solution="57 + 87 = 144, 144 - 70 = 74.\n" + rgd.final_answer("74"),
                        entry={})
  rng = np.random.default_rng(0)
  for _ in range(10):
    wrong = rgd.corrupt_solution(problem, rng)
    assert wrong.startswith("57 + 87 = 144, 144 - 70 = 74.\n")
    assert math_reward.reward(wrong, "74") == 0.0
    assert int(math_reward.extract_answer(wrong)) - 74 in (-10, -2, -1, 1, 2, 10)


def test_make_task_reasoning_gym():
  cfg = ml_collections.ConfigDict(dict(
      name="reasoning_gym", dataset="gsm_symbolic", params={"difficulty": 1.0}, train_seed=1,
      eval_seed=2, num_train=12, num_eval=6, instruction=""))
  task = tasks.make_task(cfg)
  assert (len(task.train), len(task.eval)) == (12, 6)
  assert not {e.prompt for e in task.train} & {e.prompt for e in task.eval}
  ex = task.train[0]
  assert ex.prompt.startswith(prompts.MATH_TURN1_INSTRUCTION) and "####" not in ex.solution
  assert task.instruction == prompts.MATH_TURN2_INSTRUCTION
  responses = [e.solution for e in task.eval] + [task.corrupt(e, np.random.default_rng(1))
                                                 for e in task.eval]
  rewards = task.rewards(responses, [e.gold for e in task.eval] * 2)
  np.testing.assert_array_equal(rewards, [1.0] * 6 + [0.0] * 6)
  assert task.answer(ex.solution) == ex.gold

  cfg.update(turn1_instruction="", instruction="Check it.")
  bare = tasks.make_task(cfg)
  assert [e.prompt for e in bare.train] == [
      "Problem:\n" + e.prompt.split("Problem:\n", 1)[1] for e in task.train]
  assert bare.instruction == "Check it."


def test_reasoning_gym_validation_is_disjoint_and_leaves_train_unchanged():
  cfg = ml_collections.ConfigDict(dict(
      name="reasoning_gym", dataset="chain_sum", params={"max_terms": 3}, train_seed=1,
      eval_seed=2, num_train=30, num_eval=20, instruction=""))
  plain = tasks.make_task(cfg)
  cfg.num_validation = 15
  task = tasks.make_task(cfg)
  assert len(plain.validation) == 0 and len(task.validation) == 15
  assert [e.prompt for e in task.train] == [e.prompt for e in plain.train]
  train, val, evals = ({e.prompt for e in s} for s in (task.train, task.validation, task.eval))
  assert len(val) == 15 and not (val & train) and not (val & evals) and not (train & evals)
  assert tasks.eval_examples(task, "validation") == task.validation
  ex = task.validation[0]
  assert task.answer(ex.solution) == ex.gold and task.rewards([ex.solution], [ex.gold])[0] == 1.0
  assert task.corrupt(ex, np.random.default_rng(0)) != ex.solution
