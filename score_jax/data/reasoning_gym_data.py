"""Procedural problems from reasoning-gym, with gold answers our math verifier scores.

reasoning-gym (`pip install reasoning-gym==0.1.25`, an optional dependency)
generates seeded problems: `create_dataset(name, size=, seed=, **params)`, item
i drawn from `Random(seed + i)`. Two of its seeds s and s + 1 therefore give the
same problems shifted by one, so a run's seed is mapped to a far-away 31-bit
reasoning-gym seed first (`rg_seed`); the evaluation set is additionally
deduplicated against the training set by whitespace-normalised question text
(`make_problems(..., exclude=)`), and `split_counts` reports what was skipped.

Why no tfds builder: the problems are generated in milliseconds from (name,
params, seed, n), so there is no source file to prepare once and nothing to
cache; the `Task` interface takes them directly.

Gold answers: the item's `answer`, stripped, which must be a gold our verifier
can read (`score_jax.rewards.math.parse_gold`; an integer literal trivially
is). The turn-1 prompt is the MATH prompt (`prompts.math_turn1`), which asks
for "Final Answer: The final answer is $answer$." -- the form
`score_jax.rewards.math.extract_answer` reads. `check_agreement` compares our
reward with the data set's own `score_answer` on the gold answer (both 1) and
on a wrong one (0 for us, below 1 for them); `make_problems` runs it on the first few problems, so
a data set whose answers our verifier judges differently fails at load time.
Data sets checked in tests: `CHECKED_DATASETS`.

Reference solutions (for the supervised warm-start): gsm_symbolic's own chain
of thought; chain_sum's left-to-right partial sums; otherwise the final-answer
line alone. Each ends with the final-answer sentence.
"""

from __future__ import annotations

import dataclasses
import decimal
import re
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from score_jax.rewards import math as math_reward

INSTALL_HINT = "pip install reasoning-gym==0.1.25"
# Math-answer data sets whose gold answers and `score_answer` agreement the tests check.
CHECKED_DATASETS = ("basic_arithmetic", "chain_sum", "gsm_symbolic", "simple_equations")
FINAL_ANSWER_TEMPLATE = "Final Answer: The final answer is ${answer}$. I hope it is correct."
_INTEGER = re.compile(r"^-?\d+$")
_DECIMAL = re.compile(r"^-?\d+\.\d+$")
# Items a data set generates that are not valid problems, dropped and counted as "invalid":
# gsm_symbolic's templates can produce a negative count or age (1 in 2,000 with seed 1: "How old
# was David ...?" -> -1), which its own score_answer then cannot match (its regex drops the "-").
_INVALID = {"gsm_symbolic": lambda answer: answer.startswith("-")}
_GSM_FINAL = re.compile(r"\n?####\s*(\S+)\s*$")
_CHAIN = re.compile(r"^\s*(-?\d+)((?:\s*[+-]\s*-?\d+)+)\s*$")
_CHAIN_TERM = re.compile(r"([+-])\s*(-?\d+)")


@dataclasses.dataclass(frozen=True)
class Problem:
  id: str  # "reasoning_gym/<name>/<our seed>/<item index>".
  question: str  # the data set's question text (the prompt wraps it).
  answer: str  # the gold answer, validated by `parse_gold`.
  solution: str  # a reference response ending in the final-answer sentence.
  entry: Mapping[str, Any]  # the raw reasoning-gym item (for its `score_answer`).


def import_reasoning_gym():
  """The `reasoning_gym` module, or ImportError saying how to install it."""
  try:
    import reasoning_gym  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"task.name='reasoning_gym' needs the reasoning-gym package: "
                      f"{INSTALL_HINT}") from e
  return reasoning_gym


def rg_seed(seed: int) -> int:
  """A 31-bit reasoning-gym seed far from those of nearby `seed`s (see the module docstring)."""
  return int(np.random.SeedSequence([int(seed), 0x5C0E]).generate_state(1, np.uint32)[0] >> 1)


def final_answer(answer: str) -> str:
  """The final-answer sentence our verifier extracts `answer` from."""
  return FINAL_ANSWER_TEMPLATE.format(answer=answer)


def normalise_question(question: str) -> str:
  """Whitespace-collapsed question text: the key for deduplication."""
  return " ".join(question.split())


def _chain_steps(expression: str) -> str | None:
  """"57 + 87 + 70" -> "57 + 87 = 144, 144 + 70 = 214." (None if not a +/- chain)."""
  match = _CHAIN.match(expression)
  if not match:
    return None
  value, lines = int(match.group(1)), []
  for op, operand in _CHAIN_TERM.findall(match.group(2)):
    result = value + int(operand) if op == "+" else value - int(operand)
    lines.append(f"{value} {op} {operand} = {result}")
    value = result
  return ", ".join(lines) + "."


def reference_solution(name: str, entry: Mapping[str, Any], answer: str) -> str:
  """A reference response for `entry` (see the module docstring), ending in `final_answer`."""
  metadata = entry.get("metadata") or {}
  reasoning = None
  if name == "gsm_symbolic" and isinstance(metadata.get("answer_cot"), str):
    reasoning = _GSM_FINAL.sub("", metadata["answer_cot"]).strip()
  elif name == "chain_sum" and isinstance(metadata.get("expression"), str):
    reasoning = _chain_steps(metadata["expression"])
    if reasoning is not None and not reasoning.endswith(f"= {answer}."):
      reasoning = None  # A chain we misread: never teach a solution that contradicts the gold.
  return f"{reasoning}\n{final_answer(answer)}" if reasoning else final_answer(answer)


def wrong_answer(gold: str, others: Collection[str] = ()) -> str | None:
  """A wrong answer that does not contain `gold` (reasoning-gym gives partial credit to those).

  Integers: gold + 1. Otherwise the first of `others` that differs from and does
  not contain `gold`; None if there is none.
  """
  if _INTEGER.match(gold):
    return str(int(gold) + 1)
  return next((o for o in others if o != gold and gold not in o), None)


def check_agreement(dataset, problems: list[Problem], name: str) -> None:
  """Raises ValueError unless our reward and `dataset.score_answer` agree on each problem.

  Both must give 1 to the gold answer, and to `wrong_answer(gold)` we give 0 and
  they less than 1.
  """
  golds = [p.answer for p in problems]
  for p in problems:
    wrong = wrong_answer(p.answer, golds)
    checks = [(p.answer, 1.0)] + ([(wrong, 0.0)] if wrong is not None else [])
    for answer, expected in checks:
      ours = math_reward.reward(final_answer(answer), p.answer)
      theirs = float(dataset.score_answer(answer, dict(p.entry)))
      # Below 1 is "wrong" for them: gsm_symbolic gives 0.01 to any wrong answer (format credit).
      if ours != expected or (theirs == 1.0) != (expected == 1.0):
        raise ValueError(
            f"reasoning-gym {name!r} problem {p.id}: answer {answer!r} (gold {p.answer!r}) scores "
            f"{ours} with our math verifier and {theirs} with the data set's score_answer; "
            f"expected {expected} (theirs below 1 when 0). Use a data set with math answers, "
            f"e.g. one of {CHECKED_DATASETS}.")


def make_problems(name: str, params: Mapping[str, Any], seed: int, n: int,
                  exclude: Collection[str] = (), num_checked: int = 8
                  ) -> tuple[list[Problem], dict[str, int]]:
  """`n` distinct problems of data set `name` with difficulty `params`, from `seed`.

  Items are taken in order from a reasoning-gym data set of 4n + 64 items
  seeded with `rg_seed(seed)`; a question already taken, or in `exclude`
  (normalised questions, e.g. the training set's), is skipped. Returns the
  problems and counts {"drawn", "duplicates", "excluded", "invalid"} (`_INVALID`). The first
  `num_checked` problems go through `check_agreement`.
  """
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}.")
  reasoning_gym = import_reasoning_gym()
  pool = 4 * n + 64
  try:
    dataset = reasoning_gym.create_dataset(name, size=pool, seed=rg_seed(seed), **dict(params))
  except (ValueError, TypeError, AssertionError) as e:
    raise ValueError(f"reasoning-gym cannot make data set {name!r} with params {dict(params)}: "
                     f"{e}. Check task.dataset and task.params (the data set's config fields).") \
        from e
  taken, problems = set(exclude), []
  counts = {"drawn": 0, "duplicates": 0, "excluded": 0, "invalid": 0}
  invalid = _INVALID.get(name, lambda answer: False)
  for index in range(pool):
    if len(problems) == n:
      break
    entry = dataset[index]
    counts["drawn"] += 1
    key = normalise_question(entry["question"])
    if key in taken:
      counts["excluded" if key in exclude else "duplicates"] += 1
      continue
    taken.add(key)
    problem_id = f"reasoning_gym/{name}/{seed}/{index}"
    answer = str(entry["answer"]).strip()
    if invalid(answer):
      counts["invalid"] += 1
      continue
    if not _INTEGER.match(answer):  # An integer literal needs no parse (and no verifier pool).
      answer = math_reward.parse_gold(answer, problem_id)
    problems.append(Problem(id=problem_id, question=entry["question"], answer=answer,
                            solution=reference_solution(name, entry, answer), entry=entry))
  if len(problems) < n:
    raise ValueError(f"Only {len(problems)} distinct problems of {name!r} with params "
                     f"{dict(params)} in {pool} draws ({counts}); ask for fewer (num_train / "
                     "num_eval) or widen the difficulty params.")
  check_agreement(dataset, problems[:num_checked], name)
  return problems, counts


def make_splits(name: str, params: Mapping[str, Any], train_seed: int, eval_seed: int,
                num_train: int, num_eval: int, num_checked: int = 8
                ) -> tuple[list[Problem], list[Problem], dict[str, int]]:
  """(train, eval, counts): eval drawn from `eval_seed` with every train question excluded.

  counts: train_/eval_duplicates, train_/eval_invalid, eval_excluded (eval
  questions that were in train and were skipped).
  """
  if train_seed == eval_seed:
    raise ValueError(f"train_seed and eval_seed are both {train_seed}: evaluation problems must "
                     "come from a held-out seed.")
  train, train_counts = make_problems(name, params, train_seed, num_train, num_checked=num_checked)
  evals, eval_counts = make_problems(name, params, eval_seed, num_eval,
                                     exclude={normalise_question(p.question) for p in train},
                                     num_checked=num_checked)
  counts = {"train_duplicates": train_counts["duplicates"],
            "eval_duplicates": eval_counts["duplicates"],
            "train_invalid": train_counts["invalid"], "eval_invalid": eval_counts["invalid"],
            "eval_excluded": eval_counts["excluded"]}
  return train, evals, counts


def corrupt_solution(problem: Problem, rng: np.random.Generator) -> str:
  """A plausible wrong response: the reference solution with its final answer off by a slip.

  Integer or decimal golds (the reasoning text is kept, so the error is in the last line).
  """
  slip = int(rng.choice([-10, -2, -1, 1, 2, 10]))
  if _INTEGER.match(problem.answer):
    wrong = str(int(problem.answer) + slip)
  elif _DECIMAL.match(problem.answer):
    wrong = str(decimal.Decimal(problem.answer) + slip)
  else:
    raise ValueError(f"{problem.id}: gold {problem.answer!r} is not an integer or a decimal; "
                     "only numeric golds can be corrupted.")
  head = problem.solution[:-len(final_answer(problem.answer))]
  return head + final_answer(wrong)
