"""MATH verifier: extraction, equivalence (with hard negatives), time limit, robustness."""

import concurrent.futures
import os
import random
import signal
import time

import pytest

from score_jax.rewards import math as math_reward
from score_jax.rewards import worker_pool

# (prediction, gold, equivalent?) — every row decided by hand from the MATH convention.
EQUIVALENCE_CASES = [
    # Numbers, fractions, decimals.
    ("0.5", "\\frac{1}{2}", True),
    ("\\frac{1}{2}", "0.5", True),
    ("\\frac12", "\\frac{1}{2}", True),
    ("\\dfrac{1}{2}", "\\frac12", True),
    ("\\tfrac{3}{4}", "\\frac{3}{4}", True),
    ("1/2", "\\frac{1}{2}", True),
    ("\\frac{-1}{2}", "-\\frac{1}{2}", True),
    ("1.50", "\\frac{3}{2}", True),
    ("2\\frac{1}{4}", "\\frac{9}{4}", True),  # A mixed number.
    ("\\frac{1}{2}", "2\\frac{1}{4}", False),  # Not 2 * 1/4.
    ("1\\frac{1}{2}", "\\frac{1}{2}", False),  # Nor is 1 1/2 the same as 1 * 1/2.
    (".5", "0.5", True),
    ("0.3333333", "\\frac{1}{3}", False),  # An approximation is not the exact answer.
    ("0.33", "\\frac{1}{3}", False),
    ("3.14", "\\pi", False),
    ("1.4142", "\\sqrt{2}", False),
    ("0.1", "\\frac{1}{9}", False),
    ("0.123456789", "0.123456788", False),
    ("\\frac{1}{3}", "0.\\overline{3}", True),
    ("\\frac{1}{6}", "0.1\\overline{6}", True),
    ("0.3", "0.\\overline{3}", False),
    # Integers: sign, digits, powers of ten, separators.
    ("-3", "3", False),
    ("3", "-3", False),
    ("-3", "-3", True),
    ("+3", "3", True),
    ("3.0", "3", True),
    ("1000", "1000", True),
    ("1,000", "1000", True),
    ("1{,}000", "1000", True),
    ("1\\,000", "1000", True),
    ("1,000,000", "1000000", True),
    ("10080", "10,\\!080", True),
    ("1000001", "1000000", False),
    ("1,2", "12", False),
    ("12", "1,2", False),
    ("10,00", "1000", False),
    ("0,5", "0.5", False),
    ("10^3", "10^4", False),
    ("10^{3}", "10^3", True),
    ("123456789", "123456788", False),
    # The problem's own expression copied back is not an answer.
    ("10^3", "1000", False),
    ("2^{10}", "1024", False),
    ("5!", "120", False),
    ("\\binom{10}{3}", "120", False),
    ("\\frac{10}{2}", "5", False),
    ("4=3", "3", False),
    ("x=4=3", "3", False),
    ("3 \\approx 3", "3", False),
    ("3=\\frac{1}{2}", "\\frac{1}{2}", False),
    ("x \\approx \\sqrt{2}", "\\sqrt{2}", False),
    ("\\sqrt{\\frac{1}{4}}", "\\frac{1}{2}", False),
    ("1-\\frac{1}{2}", "\\frac{1}{2}", False),
    ("\\log_2 8", "3", False),
    # Formatting: units, degrees, percent, dollars, text, trailing period.
    ("3\\%", "3", True),
    ("3", "3\\%", True),
    ("0.03", "3\\%", False),
    ("5^\\circ", "5", True),
    ("90^{\\circ}", "90", True),
    ("5\\text{ cm}", "5", True),
    ("5 \\text{ cm}^2", "5", True),
    ("5\\text{ inches}", "6", False),
    ("\\$5.00", "5", True),
    ("\\$18.90", "18.90", True),
    ("5.", "5", True),
    ("\\text{5}", "5", True),
    ("\\left( 1, 2 \\right)", "(1,2)", True),
    ("\\boxed{7}", "7", True),
    ("{7}", "7", True),
    ("\u22123", "-3", True),  # Unicode minus sign.
    # Variables and equations.
    ("x=3", "3", True),
    ("x = 3", "x=3", True),
    ("3", "x=3", True),
    ("y=3", "x=3", False),
    ("3=x", "3", False),
    ("x", "3", False),
    ("3x", "3", False),
    ("y=2x+1", "y = 2x + 1", True),
    ("2x+1", "y=2x+1", True),
    ("2x-1", "y=2x+1", False),
    ("y^2+x^2=1", "x^2+y^2=1", True),
    ("x^2+y^2-1=0", "x^2+y^2=1", True),
    ("1", "x^2+y^2=1", False),
    ("\\frac{1}{2}x", "\\frac{1}{2}", False),
    ("x^2+2x+1", "(x+1)^2", True),
    ("a+b", "b+a", True),
    ("x \\in [1,2]", "[1,2]", True),
    # Radicals and constants.
    ("2\\sqrt{3}", "\\sqrt{12}", True),
    ("3\\sqrt{2}", "\\sqrt{18}", True),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", True),
    ("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}", True),
    ("2\\sqrt{3}", "-2\\sqrt{3}", False),
    ("3+2i", "3-2i", False),
    ("i", "-i", False),
    ("\\infty", "-\\infty", False),
    ("\\frac{\\pi}{2}", "90^\\circ", False),
    # Tuples, intervals, sets, lists.
    ("(1,2)", "(1,2)", True),
    ("(2,1)", "(1,2)", False),
    ("(1,2,3)", "(3,2,1)", False),
    ("(1, 2, 3)", "(1,2,3)", True),
    ("\\{1,2\\}", "(2,1)", False),
    ("\\{1,2\\}", "(1,2)", False),
    ("1, 2", "(1,2)", False),
    ("(1,2)", "1,2", False),
    ("[1,2)", "[1,2]", False),
    ("(1,2]", "[1,2]", False),
    ("[1,2]", "[1,2]", True),
    ("(-\\infty,3)", "(-\\infty,3]", False),
    ("(-\\infty, 3]", "(-\\infty,3]", True),
    ("(-\\infty,0)\\cup(0,\\infty)", "(-\\infty, 0) \\cup (0, \\infty)", True),
    ("(-\\infty,0]\\cup(0,\\infty)", "(-\\infty, 0) \\cup (0, \\infty)", False),
    ("\\{1,2\\}", "\\{2,1\\}", True),
    ("2, 1", "1,2", True),
    ("1, 2", "\\{1,2\\}", True),
    ("x = 3, x = 4", "3, 4", True),
    ("3, 4", "3", False),
    ("3 \\text{ or } 4", "3", False),
    ("3", "3, 4", False),
    ("2", "\\{2\\}", False),
    ("2, -2", "\\pm 2", True),
    ("3+\\sqrt{5}, 3-\\sqrt{5}", "3 \\pm \\sqrt{5}", True),
    ("3+\\sqrt{5}", "3 \\pm \\sqrt{5}", False),
    ("2", "\\pm 2", False),
    ("\\{1,2\\}", "[1,2]", False),
    # Matrices.
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1 \\\\ 2\\end{pmatrix}", True),
    ("\\begin{pmatrix}2\\\\1\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),
    ("\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
    ("\\begin{pmatrix}1&2\\\\4&3\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", False),
    ("\\begin{pmatrix}1\\\\-2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),
    # Text and multiple choice.
    ("\\text{(C)}", "\\text{(C)}", True),
    ("C", "\\text{(C)}", True),
    ("(C)", "\\text{(C)}", True),
    ("\\text{(B)}", "\\text{(C)}", False),
    ("\\text{odd}", "\\text{odd}", True),
    ("Odd", "\\text{odd}", True),
    ("even", "\\text{odd}", False),
    ("dod", "odd", False),
    ("\\text{neve}", "\\text{even}", False),
    ("\\text{Devon}", "\\text{Devon}", True),
    # Empty and unparseable predictions.
    ("", "3", False),
    ("   ", "3", False),
    ("\\frac{1}{", "\\frac{1}{2}", False),
    ("}{", "\\frac{1}{2}", False),
    ("\\frac{1}{0}", "\\frac{1}{2}", False),
]


@pytest.mark.parametrize("pred, gold, expected", EQUIVALENCE_CASES)
def test_is_equivalent(pred, gold, expected):
  assert math_reward.is_equivalent(pred, gold) is expected


@pytest.mark.parametrize("pred, expected", [
    ("x = 6, y = 5", True), ("y=5, x=6", True), ("x = 6.0, y = 5", True),
    ("x = 5, y = 6", False),  # swapped values: a set comparison would accept it.
    ("x = 6", False), ("x = 6, z = 5", False), ("6, 5", False)])
def test_several_variables_compare_by_name(pred, expected):
  assert math_reward.is_equivalent(pred, "x = 6, y = 5") is expected


def test_case_table_is_large_and_balanced():
  outcomes = [expected for _, _, expected in EQUIVALENCE_CASES]
  assert len(outcomes) >= 60 and outcomes.count(True) >= 25 and outcomes.count(False) >= 25


@pytest.mark.parametrize("text, expected", [
    ("So x = 2.\nFinal Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.",
     "\\frac{1}{2}"),
    ("The final answer is $\\$5$. I hope it is correct.", "\\$5"),  # An escaped dollar inside.
    ("Final Answer: The final answer is $3$. ... Final Answer: The final answer is $4$. "
     "I hope it is correct.", "4"),  # The last statement decides.
    ("The final answer is 12. I hope it is correct.", "12"),  # Dollars left out.
    ("The final answer is: $-2$.", "-2"),
    ("Final Answer: The final answer is $\\boxed{7}$.", "\\boxed{7}"),
    ("The final answer is \\boxed{8}.", "8"),
    ("We get $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("First \\boxed{1}, then \\boxed{2}.", "2"),  # The last box wins.
    ("$\\boxed{\\{1,2\\}}$", "\\{1,2\\}"),  # Escaped braces inside.
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("\\fbox{x+1}", "x+1"),
    ("the answer is $\\boxed 5$", "5"),
    ("\\boxed{}", None),  # Empty.
    ("\\boxed{  }", None),
    ("\\boxed{3} and then \\boxed{\\frac{1}{2}", None),  # The last box is unterminated.
    ("Final Answer: The final answer is $3", None),  # Cut off mid-answer.
    ("Final Answer: The final answer is $$. I hope it is correct.", None),
    ("no answer here", None),
    ("", None),
])
def test_extract_answer(text, expected):
  assert math_reward.extract_answer(text) == expected


@pytest.mark.parametrize("solution, expected", [
    ("Since $x^2 = 4$, $x = \\pm 2$. The sum is $\\boxed{0}$, and the product is "
     "$\\boxed{\\frac{-4}{1}}$.", "\\frac{-4}{1}"),  # The last box, not the first.
    ("$\\boxed{\\{1, 2\\}}$ and $\\fbox{x^{2}}$", "x^{2}"),
    ("so the answer is $\\boxed 7$.", "7"),
    ("Final Answer: The final answer is $3$. So $\\boxed{4}$", "4"),  # Only boxes count.
    ("no box", None),
    ("empty $\\boxed{}$", None),
    ("unbalanced \\boxed{1", None),
    ("bare \\boxed", None),
    (None, None),
])
def test_gold_from_solution(solution, expected):
  assert math_reward.gold_from_solution(solution) == expected


@pytest.mark.parametrize("response, gold, expected", [
    ("... Final Answer: The final answer is $x = 3$. I hope it is correct.", "3", 1.0),
    ("... Final Answer: The final answer is $-3$. I hope it is correct.", "3", 0.0),
    ("so the answer is $\\boxed{(1, 2]}$", "(1,2]", 1.0),
    ("so the answer is $\\boxed{(1, 2)}$", "(1,2]", 0.0),
    ("\\boxed{}", "0", 0.0),  # An empty box never matches, not even an empty-ish gold.
    ("I am not sure.", "0", 0.0),
    ("\\boxed{\\frac{1}{2}", "\\frac{1}{2}", 0.0),
])
def test_reward(response, gold, expected):
  assert math_reward.reward(response, gold) == expected


@pytest.mark.parametrize("gold", ["3", "\\frac{1}{2}", "(1, 2]", "\\text{(C)}", "\\text{odd}",
                                  "5\\text{ cm}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"])
def test_parse_gold_accepts_math_answers(gold):
  assert math_reward.parse_gold(f"  {gold} ", "test/algebra/1.json") == gold


@pytest.mark.parametrize("gold, problem", [("", "a/1.json"), ("   ", "a/2.json"),
                                           ("\\frac{1}{2", "a/3.json"), ("}{", "a/4.json"),
                                           ("\\frac{}{}", "a/5.json")])
def test_parse_gold_rejects_unparseable_with_problem_id(gold, problem):
  with pytest.raises(ValueError, match=problem):
    math_reward.parse_gold(gold, problem)


PATHOLOGICAL = ["9^{9^{9^{9}}}", "10^{10^{10}}", "2^{2^{2^{2^{2^{2}}}}}", "3^{3^{20}}+1"]


def _timed_check(pred: str) -> tuple[bool, float]:
  start = time.monotonic()
  result = math_reward.is_equivalent(pred, "2^{10}+1", timeout_s=0.5)
  return result, time.monotonic() - start


def test_pathological_expression_times_out_in_main_thread():
  math_reward.is_equivalent("1", "\\frac{1}{2}")  # Start a worker outside the timing.
  for pred in PATHOLOGICAL:
    result, seconds = _timed_check(pred)
    # At least 0.3 s: the guards let it through to sympy, which ran out of time.
    # The upper bound leaves room for restarting a worker killed by a timeout.
    assert result is False and 0.3 <= seconds < 3.0, (pred, seconds)


def test_pathological_expression_times_out_in_worker_threads():
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    pool.submit(math_reward.is_equivalent, "1", "\\frac{1}{2}").result()  # Warm up.
    outcomes = list(pool.map(_timed_check, PATHOLOGICAL))
  # Worker startup (~1 s on a loaded machine) may add to a thread's first call.
  assert all(result is False and 0.3 <= seconds < 4.0 for result, seconds in outcomes), outcomes
  assert math_reward.is_equivalent("2^{10} + 1", "1+2^{10}")  # Still working afterwards.


def test_frozen_worker_is_killed_at_the_hard_limit():
  # A worker stopped by SIGSTOP stands for sympy stuck in C code, where no
  # signal inside the worker helps: only the caller's deadline and kill do.
  pool = math_reward.VERIFIER_POOL
  pool.close()
  assert math_reward.is_equivalent("\\frac{2}{4}", "\\frac{1}{2}")
  (frozen,) = pool.worker_pids()
  os.kill(frozen, signal.SIGSTOP)
  start = time.monotonic()
  assert math_reward.is_equivalent("\\frac{2}{4}", "\\frac{1}{2}", timeout_s=0.5) is False
  assert time.monotonic() - start < 2.0
  assert pool.worker_pids() == []
  with pytest.raises(ProcessLookupError):  # Killed and reaped, not left behind.
    os.kill(frozen, 0)
  assert math_reward.is_equivalent("\\frac{2}{4}", "\\frac{1}{2}")  # A fresh worker answers.
  assert len(pool.worker_pids()) == 1 and pool.worker_pids() != [frozen]


def test_close_ends_every_worker():
  pool = math_reward.VERIFIER_POOL
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as threads:
    # Two checks at once: one worker or two, as the threads happen to interleave.
    list(threads.map(math_reward.is_equivalent, ["2^{10}+1", "x^2+2x+1"], ["1+2^{10}", "(x+1)^2"]))
  pids = pool.worker_pids()
  assert pids
  pool.close()
  assert pool.worker_pids() == []
  for pid in pids:
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)


def test_worker_that_cannot_start_names_its_handler():
  pool = worker_pool.WorkerPool("score_jax.rewards.no_such_module:handler", max_workers=1)
  with pytest.raises(RuntimeError, match=r"no_such_module.*failed to start"):
    pool.run({"op": "parses", "text": "1"}, timeout_s=1.0)
  assert pool.worker_pids() == []
  with pytest.raises(ValueError, match="module:factory_function"):
    worker_pool.WorkerPool("score_jax.rewards.math", max_workers=1)


def _garbage_responses(count: int, seed: int) -> list[str]:
  rng = random.Random(seed)
  pieces = ["\\boxed{", "}", "{", "\\frac", "^", "\\sqrt", "$", "\\left(", "\\right]", ",",
            "\\text{", "=", "\\\\", "&", "\\begin{pmatrix}", "\\end{pmatrix}", "9" * 50, "!",
            "\\infty", "Final Answer: The final answer is $", "\\%", "\x00", "\ud7ff", "\u202e"]
  responses = ["", "\\boxed{}", "\\boxed{" * 300, "}" * 300, "\\boxed{" + "9" * 5000 + "}",
               "\\boxed{" + "(" * 500 + "}", "\\boxed{9^{9^{9^{9^{9}}}}}"]
  while len(responses) < count:
    if rng.random() < 0.5:
      text = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 30)))
    else:
      text = "".join(chr(rng.randrange(1, 0x2FFFF)) for _ in range(rng.randrange(0, 80)))
    responses.append(text if rng.random() < 0.5 else f"\\boxed{{{text}}}")
  return responses


def test_garbage_responses_never_raise_and_never_score():
  golds = ["3", "\\frac{1}{2}", "(1,2]", "\\text{(C)}", "x^2+1", "2^{10}+1"]
  for i, response in enumerate(_garbage_responses(256, seed=0)):
    assert math_reward.reward(response, golds[i % len(golds)], timeout_s=0.5) == 0.0, response


@pytest.mark.parametrize("bad", [None, 3, b"\\boxed{3}"])
def test_non_string_inputs_score_zero(bad):
  assert math_reward.extract_answer(bad) is None
  assert math_reward.is_equivalent(bad, "3") is False
  assert math_reward.is_equivalent("3", bad) is False
