"""CHAMP: every gold answer is one our verifier reads, and each LaTeX gold is CHAMP's answer."""

import collections
import json
import re

import ml_collections
import numpy as np
import pytest
import sympy
from latex2sympy2_extended import latex2sympy
from sympy.parsing import sympy_parser

from score_jax import tasks
from score_jax.data import champ
from score_jax.data import prompts
from score_jax.rewards import math as math_reward

pytest.importorskip("champ_dataset")  # requirements-test.txt pins it.


@pytest.fixture(scope="module")
def problems():
  return champ.load_problems()


@pytest.fixture(scope="module")
def raw_answers():
  with open(champ.default_path(), encoding="utf-8") as f:
    return {k: v["_raw_answer"] for k, v in json.load(f)["problems"].items()}


def test_all_270_load_with_the_documented_kinds(problems):
  assert len(problems) == len({p.id for p in problems}) == champ.NUM_PROBLEMS
  kinds = collections.Counter(p.kind for p in problems)
  assert kinds == {"integer": 79, "expression": 81, "leading_number": 55, "yes_no": 33,
                   "text": 22}
  for p in problems:
    if p.kind in ("integer", "yes_no", "text") and p.id not in champ._TEXT:
      assert p.gold == p.champ_answer  # unchanged when CHAMP's answer is already a gold.


def test_every_gold_parses_and_scores_its_own_final_answer(problems):
  failures = []
  for p in problems:
    try:
      math_reward.parse_gold(p.gold, p.id)
    except ValueError as e:
      failures.append(str(e))
      continue
    if math_reward.reward(champ.final_answer(p.gold), p.gold) != 1.0:
      failures.append(f"{p.id}: {p.gold!r} does not score its own final answer")
    if math_reward.reward(p.solution, p.gold) != 1.0:
      failures.append(f"{p.id}: the reference solution does not score 1")
  assert not failures, failures


def test_wrong_answers_score_zero(problems):
  for p in problems:
    if p.kind in ("integer", "leading_number"):
      wrong = str(int(p.gold) + 1)
    elif p.kind == "yes_no":
      wrong = {"Yes": "No", "No": "Yes"}[p.gold]
    else:
      continue
    assert math_reward.reward(champ.final_answer(wrong), p.gold) == 0.0, p.id


# ---- the hand-written LaTeX against CHAMP's ASCII, numerically ---------------------------------

# Exact points: integers where the answer counts something, rationals elsewhere.
_POINT = {"n": 7, "m": 2, "k": 3, "r": 2, "a": sympy.Rational(13, 10), "b": sympy.Rational(7, 10),
          "x": sympy.Rational(9, 10), "y": sympy.Rational(11, 10), "z": sympy.Rational(17, 10)}
_TRANSFORMS = (sympy_parser.standard_transformations + (
    sympy_parser.implicit_multiplication, sympy_parser.convert_xor,
    sympy_parser.factorial_notation))
# CHAMP notation sympy's parser cannot read, rewritten in sympy's own.
_ASCII_BY_HAND = {
    "P_Inequality_12": ["Sum(1/j, (j, 1, n))"],  # "sum_(k=1)^n 1/k"
    "P_Polynomial_46": ["Product(x - j, (j, 0, 2022))"],  # "x(x-1)(x-2)...(x-2022)"
}
# Answers checked in the tests below instead.
_OTHER_CHECKS = {"P_Polynomial_2", "P_Sequence_43", "P_Number-Theory_44"}


def _ascii_value(text: str):
  local = {"C": sympy.binomial, "floor": sympy.floor, "sqrt": sympy.sqrt,
           "Sum": sympy.Sum, "Product": sympy.Product, "j": sympy.Symbol("j")}
  local.update({name: sympy.Symbol(name) for name in _POINT})
  expr = sympy_parser.parse_expr(text.replace("\u2212", "-"), local_dict=local,
                                 transformations=_TRANSFORMS)
  return sympy.nsimplify(expr.subs(_POINT).doit())


def _latex_value(latex: str):
  return sympy.nsimplify(latex2sympy(latex).subs(
      {sympy.Symbol(k): v for k, v in _POINT.items()}).doit())


def _integers(text: str) -> list[str]:
  return re.findall(r"-?\d+", text.replace("\u2212", "-"))


def test_expression_golds_equal_champ_answers(problems, raw_answers):
  checked = 0
  for p in problems:
    if p.kind != "expression" or p.id in _OTHER_CHECKS:
      continue
    spans = _ASCII_BY_HAND.get(p.id) or re.findall(r"@@(.*?)@@", raw_answers[p.id]) or [
        p.champ_answer]
    gold = "".join(p.gold.split())
    if any("".join(s.split()) == gold for s in spans):
      checked += 1  # written as CHAMP writes it (a relation, "n", "2^n", ...).
    elif "," in gold or "=" in gold or r"\pm" in gold:
      # Collections, assignments, solution pairs: the same numbers in the same order.
      assert _integers(" ".join(spans)) == _integers(gold), p.id
      checked += 1
    else:
      values = []
      for span in spans:
        try:
          values.append(_ascii_value(span))
        except (SyntaxError, TypeError, ValueError, sympy.SympifyError):
          pass  # e.g. "sum_(i=1)^n i^3" beside its closed form.
      assert values, f"{p.id}: none of {spans} parses"
      assert _latex_value(p.gold) in values, (p.id, p.gold, spans, values)
      checked += 1
  assert checked == 81 - len(_OTHER_CHECKS)


def test_polynomial_2_golds_are_the_roots(problems):
  p = next(p for p in problems if p.id == "P_Polynomial_2")
  a, x = sympy.Rational(13, 10), sympy.Symbol("x")
  roots = [latex2sympy(r).subs(sympy.Symbol("a"), a) for r in math_reward._depth_zero_split(
      p.gold)]
  poly = x**4 + a**4 - 3 * a * x**3 + 3 * a**3 * x  # the problem's equation.
  assert len(roots) == 4 and all(sympy.simplify(poly.subs(x, r)) == 0 for r in roots)


def test_other_hand_checked_golds(problems):
  gold = {p.id: p.gold for p in problems}
  n = sympy.Symbol("n")
  # "1/2^3, 1/2^6, 1/2^9, ...": the terms for n = 1, 2, 3.
  assert [latex2sympy(gold["P_Sequence_43"]).subs(n, i) for i in (1, 2, 3)] == [
      sympy.Rational(1, 2**3), sympy.Rational(1, 2**6), sympy.Rational(1, 2**9)]
  assert gold["P_Number-Theory_44"] == "x=0, y=0"  # "x=y=0"


def test_checker_gold_rules_by_hand():
  assert champ.checker_gold("P_X", "0 is the only possible value") == ("0", "leading_number")
  assert champ.checker_gold("P_X", "-3 is the only possible value") == ("-3", "leading_number")
  assert champ.checker_gold("P_X", "100 (i.e., all values)") == ("100", "leading_number")
  assert champ.checker_gold("P_X", "At most 0 values (i.e., no such values)") == (
      "0", "leading_number")
  assert champ.checker_gold("P_X", "The limit exists and is equal to 3") == ("3", "leading_number")
  assert champ.checker_gold("P_X", "Exactly one") == ("1", "leading_number")
  assert champ.checker_gold("P_X", "No integer solutions") == ("No integer solutions", "text")
  with pytest.raises(ValueError, match="_EXPRESSIONS"):
    champ.checker_gold("P_X", "2^(n+1)")  # ASCII math needs a hand-written LaTeX gold.


def test_split_is_seeded_stratified_and_disjoint(problems):
  train, evals = champ.split(problems, 100, seed=0)
  again = champ.split(problems, 100, seed=0)
  other = champ.split(problems, 100, seed=1)
  assert ([p.id for p in train], [p.id for p in evals]) == tuple(
      [p.id for p in s] for s in again)
  assert [p.id for p in evals] != [p.id for p in other[1]]
  assert len(evals) == 100 and len(train) == 170
  assert not {p.id for p in train} & {p.id for p in evals}
  total = collections.Counter(p.category for p in problems)
  held = collections.Counter(p.category for p in evals)
  for category, count in total.items():  # each category's share within one problem.
    assert abs(held[category] - 100 * count / 270) <= 1.5, category
  assert champ.split(problems, 270, seed=0) == ([], list(problems))


def test_make_task_champ():
  cfg = ml_collections.ConfigDict(dict(name="champ", num_eval=60, split_seed=0, num_train=0,
                                       instruction=""))
  task = tasks.make_task(cfg)
  assert (len(task.train), len(task.eval)) == (210, 60)
  assert task.eval[0].prompt == prompts.math_turn1(
      next(p.question for p in champ.load_problems() if p.id == task.eval[0].id))
  golds = [e.gold for e in task.eval[:8]]
  rewards = task.rewards([champ.final_answer(g) for g in golds] + ["no answer"] * 8, golds * 2)
  np.testing.assert_array_equal(rewards, [1.0] * 8 + [0.0] * 8)
