"""The synthetic task: generation, gold and corrupted scratchpads, and the verifier."""

import io
import re

import numpy as np
import pytest
import sentencepiece as spm

from score_jax.data import synthetic

# The test's own reading of a scratchpad: "a+b=c" steps, then "Answer: n".
_STEP = re.compile(r"(-?\d+)([+-])(\d+)=(-?\d+)")


def read_scratchpad(text: str) -> tuple[list[tuple[int, str, int, int]], str]:
  body, answer = text.split(". Answer: ")
  steps = []
  for step in body.split(", "):
    a, op, b, c = _STEP.fullmatch(step).groups()
    steps.append((int(a), op, int(b), int(c)))
  return steps, answer


def question_terms(question: str) -> list[tuple[str, int]]:
  return [(op, int(x)) for op, x in re.findall(r"([+-]?)(\d+)", question.removesuffix("=?"))]


def test_same_seed_same_problems_and_prefix_stable():
  a = synthetic.make_problems(7, 40)
  assert a == synthetic.make_problems(7, 40)
  assert a[:10] == synthetic.make_problems(7, 10)
  assert [p.question for p in a] != [p.question for p in synthetic.make_problems(8, 40)]
  assert len({p.question for p in a}) == 40
  assert len({p.id for p in a}) == 40


@pytest.mark.parametrize("name", sorted(synthetic.DIFFICULTIES))
def test_problems_respect_their_difficulty(name):
  d = synthetic.DIFFICULTIES[name]
  for p in synthetic.make_problems(3, 300, name):
    terms = question_terms(p.question)
    assert d.min_terms <= len(terms) <= d.max_terms
    running = []
    for op, x in terms:
      assert d.min_operand <= x <= d.max_operand
      assert op in ("",) + tuple(d.operators)
      running.append(x if not op else running[-1] + (x if op == "+" else -x))
    assert all(0 <= v <= d.max_value for v in running)


def test_single_operator_difficulties_never_get_stuck():
  plus = synthetic.Difficulty(4, 5, 5, 40, max_value=100, operators="+")
  minus = synthetic.Difficulty(4, 5, 5, 40, max_value=100, operators="-")
  for d in (plus, minus):
    for p in synthetic.make_problems(0, 200, d):
      assert 0 <= eval(p.question.removesuffix("=?")) <= 100  # pylint: disable=eval-used
      assert d.operators in p.question and ({"+", "-"} - {d.operators}).isdisjoint(p.question)


@pytest.mark.parametrize("name", sorted(synthetic.DIFFICULTIES))
def test_gold_solution_is_correct_step_by_step(name):
  for p in synthetic.make_problems(11, 500, name):
    expected = eval(p.question.removesuffix("=?"))  # pylint: disable=eval-used
    assert p.answer == str(expected)
    assert p.solution == synthetic.gold_solution(p)
    assert synthetic.reward(p.solution, p.answer) == 1.0
    steps, answer = read_scratchpad(p.solution)
    terms = question_terms(p.question)
    assert steps[0][0] == terms[0][1]
    for i, (a, op, b, c) in enumerate(steps):
      assert (op, b) == terms[i + 1]
      assert c == (a + b if op == "+" else a - b)
      if i:
        assert a == steps[i - 1][3]
    assert answer == str(steps[-1][3]) == p.answer


def test_corrupt_solution_has_one_wrong_step_carried_to_a_wrong_answer():
  rng = np.random.default_rng(0)
  slips = set()
  for p in synthetic.make_problems(5, 500, "hard"):
    wrong = synthetic.corrupt_solution(p, rng)
    assert synthetic.reward(wrong, p.answer) == 0.0
    assert synthetic.extract_answer(wrong) is not None  # well-formed, just wrong.
    steps, answer = read_scratchpad(wrong)
    terms = question_terms(p.question)
    bad = [i for i, (a, op, b, c) in enumerate(steps) if c != (a + b if op == "+" else a - b)]
    assert len(bad) == 1
    for i, (a, op, b, c) in enumerate(steps):
      assert (op, b) == terms[i + 1]
      assert a == (steps[i - 1][3] if i else terms[0][1])  # later steps build on the slip.
      assert c >= 0
    slip = int(answer) - int(p.answer)
    assert slip in (-10, -2, -1, 1, 2, 10)
    slips.add(slip)
  assert len(slips) >= 4


def test_corrupt_solution_is_deterministic_given_the_rng():
  p = synthetic.make_problems(0, 1)[0]
  draw = lambda: [synthetic.corrupt_solution(p, np.random.default_rng(3)) for _ in range(3)]
  assert draw() == draw()


@pytest.mark.parametrize("response", [
    "",
    "Answer:",
    "Answer:   ",
    "12+3=15. Answer: 15 16",
    "Answer: 15. Answer: 15",
    "Answer: 14\nAnswer: 15",
    "Answer: 15.",
    "Answer: 015",
    "Answer: +15",
    "Answer: 15.0",
    "Answer: 1.5e1",
    "Answer: fifteen",
    "answer: 15",
    "12+3=15",
    "Answer: 15 Answer",
])
def test_reward_rejects_malformed_and_hedged_answers(response):
  assert synthetic.reward(response, "15") == 0.0


@pytest.mark.parametrize("response,gold", [
    ("12+3=15. Answer: 15", "15"),
    ("Answer:15", "15"),
    ("12+3=15. Answer: 15\n", "15"),
    ("3-5=-2. Answer: -2", "-2"),
    ("Answer: 0", "0"),
])
def test_reward_accepts_the_exact_integer(response, gold):
  assert synthetic.reward(response, gold) == 1.0


def test_wrong_value_scores_zero_and_bad_gold_raises():
  assert synthetic.reward("Answer: 14", "15") == 0.0
  for gold in ("", "15.", "x", "Answer: 15"):
    with pytest.raises(ValueError, match="not an integer"):
      synthetic.reward("Answer: 15", gold)


def test_bad_difficulties_and_questions_are_refused():
  with pytest.raises(ValueError, match="Unknown difficulty"):
    synthetic.make_problems(0, 1, "impossible")
  with pytest.raises(ValueError, match="min_terms"):
    synthetic.Difficulty(1, 3, 1, 9)
  with pytest.raises(ValueError, match="operators"):
    synthetic.Difficulty(2, 3, 1, 9, operators="*")
  with pytest.raises(ValueError, match="too large"):
    synthetic.Difficulty(2, 3, 60, 99)
  with pytest.raises(ValueError, match="'\\+' only"):
    synthetic.Difficulty(2, 5, 30, 99, operators="+")
  with pytest.raises(ValueError, match="Not a synthetic question"):
    synthetic.gold_solution(synthetic.Problem("x", "3*4=?", "12", ""))


def test_exclude_keeps_sets_disjoint_and_small_spaces_run_out():
  held_out = {p.question for p in synthetic.make_problems(1, 200, "easy")}
  train = synthetic.make_problems(2, 2000, "easy", exclude=held_out)
  assert held_out.isdisjoint(p.question for p in train)
  tiny = synthetic.Difficulty(2, 2, 1, 2, max_value=4, operators="+")  # 4 questions exist.
  assert len(synthetic.make_problems(0, 4, tiny)) == 4
  with pytest.raises(ValueError, match="distinct problems"):
    synthetic.make_problems(0, 5, tiny)


def test_corpus_lines_and_token_budget_with_a_tiny_tokenizer():
  lines = list(synthetic.corpus(0, 1500, "hard"))
  assert lines == list(synthetic.corpus(0, 1500, "hard"))
  assert len(lines) == 4 * 1500
  assert lines[3::4] == [synthetic.SELF_CORRECTION_INSTRUCTION] * 1500
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=model, vocab_size=500, model_type="bpe",
      byte_fallback=True, hard_vocab_limit=False, minloglevel=2)
  sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
  rng = np.random.default_rng(1)
  for name in ("medium", "hard"):
    for p in synthetic.make_problems(99, 300, name):  # unseen problems.
      assert len(sp.encode(p.question)) <= 16
      assert len(sp.encode(p.solution)) <= 32
      assert len(sp.encode(synthetic.corrupt_solution(p, rng))) <= 32
  assert len(sp.encode(synthetic.SELF_CORRECTION_INSTRUCTION)) <= 24
