"""The synthetic self-correction task: chains of two-digit additions and subtractions.

Used by the default demo, where a tiny Gemma-style model with a tiny
sentencepiece vocabulary is trained from scratch on CPU. A problem is a chain
evaluated left to right, and its solution is a scratchpad with one checkable
step per operator, then the answer:

  question: 63+18-61-17=?
  solution: 63+18=81, 81-61=20, 20-17=3. Answer: 3

Why this task:
- A tiny model often slips on a carry or a borrow, so its first attempt is often
  wrong; the reward is exact.
- Every step "a+b=c" can be checked on its own, and an error propagates
  visibly, so READING a wrong first attempt tells the second attempt where to
  look: the analogue of self-correcting a MATH solution.
- Every running value stays within [0, max_value] (99 by default), so each
  number is at most two digits and a solution is about 20-30 pieces with a BPE
  vocabulary of ~500 (byte fallback included).

The question text is the turn-1 prompt; `SELF_CORRECTION_INSTRUCTION` is the
turn-2 instruction (the analogue of the paper's; it does not say whether the
first attempt was right).

Reward rule (`extract_answer`): the response must contain "Answer:" exactly
once, followed by nothing but one integer in canonical form (no sign on 0, no
leading zeros, surrounding whitespace allowed). Anything else scores 0: no
answer, an empty answer, "Answer: 13 14", "Answer: 13.", or several "Answer:"
markers, which would otherwise let a policy hedge between values.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterator

import numpy as np

ANSWER_MARKER = "Answer:"
STEP_SEPARATOR = ", "
SELF_CORRECTION_INSTRUCTION = (
    "There might be an error in the solution above. Check each step and rewrite the solution.")

_INTEGER = re.compile(r"0|-?[1-9][0-9]*")
_QUESTION = re.compile(r"([0-9]+)((?:[+-][0-9]+)+)=\?")
TERM = re.compile(r"([+-])([0-9]+)")  # one signed step of a chain; missing_operand reads it too.
# Slips a person (or a small model) makes: a dropped carry/borrow, off by one or two.
_SLIPS = (-10, -2, -1, 1, 2, 10)


@dataclasses.dataclass(frozen=True)
class Difficulty:
  """The knobs that set how hard problems are.

  Attributes:
    min_terms, max_terms: number of operands per chain (steps = terms - 1),
      drawn uniformly.
    min_operand, max_operand: range of each operand, drawn uniformly among the
      values that keep the running value within [0, max_value].
    max_value: bound on every running value (and so on the answer); 99 keeps
      every number at two digits.
    operators: the operators to draw from, "+", "-" or "+-".
  """
  min_terms: int
  max_terms: int
  min_operand: int
  max_operand: int
  max_value: int = 99
  operators: str = "+-"

  def __post_init__(self):
    if not 2 <= self.min_terms <= self.max_terms:
      raise ValueError(f"Need 2 <= min_terms <= max_terms, got {self.min_terms}, {self.max_terms}.")
    if not 0 <= self.min_operand <= self.max_operand <= self.max_value:
      raise ValueError("Need 0 <= min_operand <= max_operand <= max_value, got "
                       f"{self.min_operand}, {self.max_operand}, {self.max_value}.")
    if self.operators not in ("+", "-", "+-"):
      raise ValueError(f"operators must be '+', '-' or '+-', got {self.operators!r}.")
    # Every running value must leave some operator a legal operand, or a chain
    # could get stuck; with "-" alone the first term would have to cover the rest.
    if self.operators == "+" and self.min_operand * self.max_terms > self.max_value:
      raise ValueError(f"With '+' only, {self.max_terms} terms of at least {self.min_operand} "
                       f"exceed max_value {self.max_value}.")
    if self.operators == "-" and self.min_operand * (self.max_terms - 1) > self.max_operand:
      raise ValueError(f"With '-' only, the first term (at most {self.max_operand}) cannot cover "
                       f"{self.max_terms - 1} subtractions of at least {self.min_operand}.")
    if self.operators == "+-" and 2 * self.min_operand > self.max_value + 1:
      raise ValueError(f"min_operand {self.min_operand} is too large for max_value "
                       f"{self.max_value}: some running values could neither grow nor shrink.")


DIFFICULTIES: dict[str, Difficulty] = {
    # Single-digit operands, values below 20: learnable by a ~1M-parameter model in a few
    # CPU minutes (the default demo).
    "single_digit": Difficulty(min_terms=2, max_terms=3, min_operand=1, max_operand=9,
                               max_value=19),
    # Three or four single-digit terms: hiding the first (data/missing_operand.py) makes a
    # guess that a tiny model gets right about half the time.
    "single_digit_long": Difficulty(min_terms=3, max_terms=4, min_operand=1, max_operand=9,
                                    max_value=19),
    "easy": Difficulty(min_terms=2, max_terms=3, min_operand=1, max_operand=30, max_value=50),
    "medium": Difficulty(min_terms=3, max_terms=4, min_operand=10, max_operand=99),
    "hard": Difficulty(min_terms=4, max_terms=5, min_operand=10, max_operand=99),
}


@dataclasses.dataclass(frozen=True)
class Problem:
  """One problem: `question` is the turn-1 prompt, `answer` the gold integer as text,
  `solution` the gold scratchpad; `id` ("synthetic/<seed>/<index>") is unique within
  one `make_problems` call."""
  id: str
  question: str
  answer: str
  solution: str


def _resolve(difficulty: str | Difficulty) -> Difficulty:
  if isinstance(difficulty, Difficulty):
    return difficulty
  if difficulty not in DIFFICULTIES:
    raise ValueError(f"Unknown difficulty {difficulty!r}; use one of {sorted(DIFFICULTIES)} "
                     "or a Difficulty.")
  return DIFFICULTIES[difficulty]


def _draw_chain(rng: np.random.Generator, d: Difficulty) -> tuple[int, list[tuple[str, int]]]:
  """A first operand and (operator, operand) steps with every running value in [0, max_value]."""

  def room(steps_left: int) -> int:
    # With one operator, leave room for the steps still to come; with both,
    # some operator is always legal (see Difficulty's checks).
    return d.min_operand * steps_left if len(d.operators) == 1 else 0

  n_terms = int(rng.integers(d.min_terms, d.max_terms + 1))
  low = max(d.min_operand, room(n_terms - 1) if d.operators == "-" else 0)
  high = min(d.max_operand, d.max_value - (room(n_terms - 1) if d.operators == "+" else 0))
  value = first = int(rng.integers(low, high + 1))
  steps = []
  for steps_left in reversed(range(n_terms - 1)):
    ranges = {"+": (d.min_operand, min(d.max_operand, d.max_value - value - room(steps_left))),
              "-": (d.min_operand, min(d.max_operand, value - room(steps_left)))}
    legal = [op for op in d.operators if ranges[op][0] <= ranges[op][1]]
    op = legal[int(rng.integers(len(legal)))]
    operand = int(rng.integers(ranges[op][0], ranges[op][1] + 1))
    value = value + operand if op == "+" else value - operand
    steps.append((op, operand))
  return first, steps


def parse_question(question: str) -> tuple[int, list[tuple[str, int]]]:
  """(first operand, [(operator, operand), ...]) of a question such as "63+18-61=?"."""
  match = _QUESTION.fullmatch(question)
  if not match:
    raise ValueError(f"Not a synthetic question: {question!r}; expected e.g. '63+18-61=?'.")
  return int(match.group(1)), [(op, int(x)) for op, x in TERM.findall(match.group(2))]


def _scratchpad(first: int, steps: list[tuple[str, int]], slip_step: int = -1,
                slip: int = 0) -> str:
  """Step-by-step solution; `slip` is added to the result of step `slip_step` and carried on."""
  value, lines = first, []
  for i, (op, operand) in enumerate(steps):
    result = value + operand if op == "+" else value - operand
    if i == slip_step:
      result += slip
    lines.append(f"{value}{op}{operand}={result}")
    value = result
  return f"{STEP_SEPARATOR.join(lines)}. {ANSWER_MARKER} {value}"


def evaluate(question: str) -> int:
  """The exact value of a question's chain, left to right."""
  value, steps = parse_question(question)
  for op, operand in steps:
    value = value + operand if op == "+" else value - operand
  return value


def gold_solution(problem: Problem) -> str:
  """The correct scratchpad and final answer, e.g. "63+18=81, 81-61=20. Answer: 20"."""
  first, steps = parse_question(problem.question)
  return _scratchpad(first, steps)


def corrupt_solution(problem: Problem, rng: np.random.Generator) -> str:
  """A plausible wrong solution: one step's result is off by a small slip, carried to the answer.

  The slip (one of -10, -2, -1, +1, +2, +10) is drawn among those that keep
  every later running value non-negative, so the text looks like a real
  attempt; the final answer is then gold + slip, hence always wrong.
  """
  first, steps = parse_question(problem.question)
  slip_step = int(rng.integers(len(steps)))
  values, value = [], first
  for op, operand in steps:
    value = value + operand if op == "+" else value - operand
    values.append(value)
  lowest_after = min(values[slip_step:])
  slips = [s for s in _SLIPS if lowest_after + s >= 0]
  return _scratchpad(first, steps, slip_step, slips[int(rng.integers(len(slips)))])


def make_problems(seed: int, n: int, difficulty: str | Difficulty = "medium",
                  exclude: Collection[str] = ()) -> list[Problem]:
  """`n` distinct problems drawn deterministically from `seed`.

  Questions in `exclude` (e.g. an evaluation set's) are skipped, so train and
  eval sets drawn from different seeds can be made disjoint. The first k
  problems do not depend on n.
  """
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}.")
  d = _resolve(difficulty)
  rng = np.random.default_rng(seed)
  taken, problems = set(exclude), []
  max_draws = 100 * n + 1000
  for _ in range(max_draws):
    if len(problems) == n:
      break
    first, steps = _draw_chain(rng, d)
    question = str(first) + "".join(f"{op}{x}" for op, x in steps) + "=?"
    if question in taken:
      continue
    taken.add(question)
    value = evaluate(question)
    problems.append(Problem(id=f"synthetic/{seed}/{len(problems)}", question=question,
                            answer=str(value), solution=_scratchpad(first, steps)))
  if len(problems) < n:
    raise ValueError(f"Only {len(problems)} distinct problems found after {max_draws} draws; "
                     f"{d} is too small for n={n}. Widen the ranges or ask for fewer.")
  return problems


def extract_answer(response: str) -> int | None:
  """The integer after the only "Answer:" of `response`, or None (see the module's reward rule)."""
  if response.count(ANSWER_MARKER) != 1:
    return None
  tail = response.split(ANSWER_MARKER, 1)[1].strip()
  return int(tail) if _INTEGER.fullmatch(tail) else None


def reward(response: str, gold: str) -> float:
  """1.0 if the response's answer equals the gold integer, else 0.0.

  A gold that is not an integer raises ValueError: a broken problem must never
  silently score (it would reward or punish every attempt alike).
  """
  if not _INTEGER.fullmatch(gold.strip()):
    raise ValueError(f"Gold answer {gold!r} is not an integer.")
  answer = extract_answer(response)
  return float(answer is not None and answer == int(gold))


def corpus(seed: int, n: int, difficulty: str | Difficulty = "medium") -> Iterator[str]:
  """Lines of text to train the tokenizer on.

  Per problem: its question, gold solution, a corrupted solution and the turn-2
  instruction, i.e. everything the model reads or writes in an episode.
  """
  rng = np.random.default_rng([seed, 1])  # independent of the problem stream.
  for problem in make_problems(seed, n, difficulty):
    yield problem.question
    yield problem.solution
    yield corrupt_solution(problem, rng)
    yield SELF_CORRECTION_INSTRUCTION
