"""The guess-and-check task: problems, gold and wrong attempts, checked by brute force."""

import re

import numpy as np
import pytest

from score_jax.data import missing_operand, synthetic

_STEP = re.compile(r"(\d+)([+-])(\d+)=(-?\d+)")


def brute_force_operand(question: str) -> list[int]:
  """Every first operand in 0..200 whose chain, read from the text, ends at the target."""
  body, target = question.split("=")
  terms = [(op, int(x)) for op, x in re.findall(r"([+-])(\d+)", body)]
  hits = []
  for guess in range(201):
    value = guess
    for op, x in terms:
      value = value + x if op == "+" else value - x
    if value == int(target):
      hits.append(guess)
  return hits


def read_attempt(text: str) -> tuple[int, list[tuple[int, str, int, int]], int]:
  head, rest = text.split(": ", 1)
  body, answer = rest.split(". Answer: ")
  steps = [tuple(int(g) if g.lstrip("-").isdigit() else g for g in _STEP.fullmatch(s).groups())
           for s in body.split(", ")]
  return int(head.removeprefix("Try ")), steps, int(answer)


def test_answer_is_the_unique_operand_and_the_gold_solution_checks_out():
  problems = missing_operand.make_problems(3, 200, "single_digit_long")
  assert len({p.question for p in problems}) == 200
  for p in problems:
    assert brute_force_operand(p.question) == [int(p.answer)]
    assert missing_operand.solve(p.question) == int(p.answer)
    assert missing_operand.reward(p.solution, p.answer) == 1.0
    guess, steps, answer = read_attempt(p.solution)
    assert guess == answer == int(p.answer)
    *chain, check = steps
    assert 3 <= len(chain) + 1 <= 4  # single_digit_long: 3 or 4 terms
    value = guess
    for a, op, b, c in chain:
      assert a == value and c == (a + b if op == "+" else a - b)
      value = c
    target = int(p.question.split("=")[1])
    assert value == target and check == (value, "-", target, 0)


def test_wrong_attempt_is_honest_near_and_wrong():
  rng = np.random.default_rng(0)
  for p in missing_operand.make_problems(4, 100, "single_digit"):
    text = missing_operand.wrong_attempt(p, rng)
    guess, steps, answer = read_attempt(text)
    assert guess == answer and 1 <= abs(guess - int(p.answer)) <= 3
    assert missing_operand.reward(text, p.answer) == 0.0
    *chain, check = steps
    value = guess
    for a, op, b, c in chain:  # computed with the wrong guess, every value non-negative.
      assert a == value and c == (a + b if op == "+" else a - b) and c >= 0
      value = c
    # The check step: the chain misses the target by exactly the guess's error, which is
    # what attempt 2 can read.
    target = int(p.question.split("=")[1])
    assert check == (value, "-", target, guess - int(p.answer))


def test_problems_are_the_synthetic_chains_and_exclude_is_respected():
  chains = synthetic.make_problems(5, 30, "single_digit")
  hidden = missing_operand.make_problems(5, 30, "single_digit")
  for c, h in zip(chains, hidden):
    assert missing_operand._chain_of(h.question) == c.question
    assert h.answer == str(synthetic.parse_question(c.question)[0])
  held_out = missing_operand.make_problems(6, 50, "single_digit",
                                           exclude={p.question for p in hidden})
  assert not {p.question for p in held_out} & {p.question for p in hidden}


def test_bad_question_names_the_expected_form():
  with pytest.raises(ValueError, match=r"\?\+7-4=12"):
    missing_operand.parse_question("9+7-4=?")


def test_check_free_responses_end_at_the_chain_value():
  """check=False (the hard regime): the honest chain without the `value-target=d` step."""
  question = "?+7-4=12"
  assert missing_operand.attempt(question, 8, check=False) == "Try 8: 8+7=15, 15-4=11. Answer: 8"
  assert missing_operand.attempt(question, 8) == "Try 8: 8+7=15, 15-4=11, 11-12=-1. Answer: 8"
  rng = np.random.default_rng(0)
  for p in missing_operand.make_problems(4, 50, "single_digit", check=False):
    _, gold_steps, gold = read_attempt(p.solution)
    assert gold_steps[-1][3] == int(p.question.split("=")[1])  # no check step: ends at the target
    assert len(gold_steps) == p.question.count("+") + p.question.count("-")
    guess, steps, answer = read_attempt(missing_operand.wrong_attempt(p, rng, check=False))
    assert guess == answer != gold and len(steps) == len(gold_steps)
    assert steps[-1][3] != gold_steps[-1][3]  # an honest chain of a wrong guess misses the target


def test_task_splits_are_disjoint_and_train_does_not_depend_on_validation():
  import ml_collections
  from score_jax import tasks
  cfg = lambda **kw: ml_collections.ConfigDict(dict(
      name="missing_operand", difficulty="single_digit", train_seed=1, eval_seed=2, num_train=300,
      num_eval=100, instruction="", **kw))
  plain, split = tasks.make_task(cfg()), tasks.make_task(cfg(num_validation=120, check_step=False))
  questions = lambda xs: [x.prompt for x in xs]
  assert questions(plain.train) == questions(split.train)
  assert len(split.validation) == 120 and len(split.eval) == 100
  train, val, test = (set(questions(x)) for x in (split.train, split.validation, split.eval))
  assert not (train & val) and not (train & test) and not (val & test)
  n_ops = lambda q: q.count("+") + q.count("-")
  assert all(len(read_attempt(x.solution)[1]) == n_ops(x.prompt) for x in split.train)  # no check
  assert all(len(read_attempt(x.solution)[1]) == n_ops(x.prompt) + 1 for x in plain.train)
  assert tasks.eval_examples(split, "validation") == split.validation
  assert tasks.eval_examples(split, "test") == split.eval
  with pytest.raises(ValueError, match="num_validation"):
    tasks.eval_examples(plain, "validation")
  with pytest.raises(ValueError, match="eval.split"):
    tasks.eval_examples(plain, "train")
