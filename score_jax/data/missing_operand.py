"""The guess-and-check task: find the missing first operand of an arithmetic chain.

The miniature reproduction's task (RESULTS.md). A problem hides the first operand
of a `synthetic` chain; a solution guesses it, then evaluates the chain with the
guess, step by step, then answers with the guess:

  question: ?+7-4=12
  solution: Try 9: 9+7=16, 16-4=12, 12-12=0. Answer: 9
  a wrong first attempt: Try 8: 8+7=15, 15-4=11, 11-12=-1. Answer: 8

The last step is the check: the chain's value minus the target, 0 exactly when
the guess is right.

Why this task for self-correction at toy scale. On the plain chains of
`synthetic`, a tiny model's second attempt can only redo the same computation
with the same weights, so a greedy second attempt has nothing the first lacked.
Here the two attempts differ in difficulty the way the paper's do: the guess of
attempt 1 has to invert the chain in one step (no scratchpad before the guess),
but a checked wrong attempt tells attempt 2 exactly how far off it was (the
chain ended at 11, not 12, and the chain is the guess plus a constant). Nothing in the instruction says
whether attempt 1 was right; the model must compare the chain's last value with
the question's target itself; the check step spells that comparison out, so the
correction is one subtraction: 8 - (-1). The reward checks only the answer, so a
right answer after an inconsistent check still scores 1, as on MATH.

Without the check step (`check=False`, the study's "hard" regime, configs/miniature_hard.py)
a response ends at the chain's last value ("Try 8: 8+7=15, 15-4=11. Answer: 8"): to
correct, attempt 2 must itself notice that 11 is not the target 12 and turn the
miss into a new guess, two steps a tiny model rarely gets right, while repeating
attempt 1 is easy. That is the regime the paper's collapse argument is about:
copying is easier than correcting.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from score_jax.data import synthetic

ANSWER_MARKER = synthetic.ANSWER_MARKER
SELF_CORRECTION_INSTRUCTION = (
    "There might be an error in the solution above. Check the result and rewrite the solution.")

_QUESTION = re.compile(r"\?((?:[+-][0-9]+)+)=([0-9]+)")
# Wrong guesses a guesser makes: near the true operand.
_GUESS_ERRORS = (-3, -2, -1, 1, 2, 3)

extract_answer = synthetic.extract_answer
reward = synthetic.reward


@dataclasses.dataclass(frozen=True)
class Problem:
  """`question` is the turn-1 prompt, `answer` the missing operand, `solution` the gold response."""
  id: str
  question: str
  answer: str
  solution: str


def parse_question(question: str) -> tuple[list[tuple[str, int]], int]:
  """([(operator, operand), ...], target) of a question such as "?+7-4=12"."""
  match = _QUESTION.fullmatch(question)
  if not match:
    raise ValueError(f"Not a missing-operand question: {question!r}; expected e.g. '?+7-4=12'.")
  return [(op, int(x)) for op, x in synthetic.TERM.findall(match.group(1))], int(match.group(2))


def _run_chain(first: int, steps: list[tuple[str, int]]) -> list[int]:
  values, value = [], first
  for op, operand in steps:
    value = value + operand if op == "+" else value - operand
    values.append(value)
  return values


def attempt(question: str, guess: int, check: bool = True) -> str:
  """The response that tries `guess`: the chain evaluated honestly with it, the check step
  (chain value minus target: 0 iff the guess is right; left out with check=False), then
  the guess."""
  steps, target = parse_question(question)
  lines, value = [], guess
  for (op, operand), result in zip(steps, _run_chain(guess, steps)):
    lines.append(f"{value}{op}{operand}={result}")
    value = result
  if check:
    lines.append(f"{value}-{target}={value - target}")
  return f"Try {guess}: {synthetic.STEP_SEPARATOR.join(lines)}. {ANSWER_MARKER} {guess}"


def solve(question: str) -> int:
  """The missing operand: the target with the chain undone right to left."""
  steps, value = parse_question(question)
  for op, operand in reversed(steps):
    value = value - operand if op == "+" else value + operand
  return value


def wrong_attempt(problem: Problem, rng: np.random.Generator, check: bool = True) -> str:
  """A checked wrong guess near the answer (off by 1-3), its chain computed honestly.

  Guesses whose chain would go negative are skipped, so every number stays a
  plain non-negative integer, as in the gold solutions.
  """
  steps, _ = parse_question(problem.question)
  gold = int(problem.answer)
  errors = [e for e in _GUESS_ERRORS if gold + e >= 0 and min(_run_chain(gold + e, steps)) >= 0]
  return attempt(problem.question, gold + errors[int(rng.integers(len(errors)))], check)


def make_problems(seed: int, n: int, difficulty: str | synthetic.Difficulty = "single_digit",
                  exclude: set[str] | frozenset[str] = frozenset(),
                  check: bool = True) -> list[Problem]:
  """`n` distinct problems: `synthetic` chains of the same seed with the first operand hidden;
  `check` says whether the gold solutions end with the check step."""
  chains = synthetic.make_problems(seed, n, difficulty,
                                   exclude={_chain_of(q) for q in exclude})
  problems = []
  for p in chains:
    first, steps = synthetic.parse_question(p.question)
    question = "?" + "".join(f"{op}{x}" for op, x in steps) + f"={p.answer}"
    problems.append(Problem(id=p.id.replace("synthetic/", "missing_operand/"), question=question,
                            answer=str(first), solution=attempt(question, first, check)))
  return problems


def _chain_of(question: str) -> str:
  """The `synthetic` question a missing-operand question was made from."""
  steps, _ = parse_question(question)
  return str(solve(question)) + "".join(f"{op}{x}" for op, x in steps) + "=?"
