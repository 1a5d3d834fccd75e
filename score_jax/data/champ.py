"""CHAMP (Mao et al. 2024): 270 competition problems, with gold answers our math verifier reads.

The problems ship in the `champ-dataset` package (`pip install
champ-dataset==1.0.0`, an optional dependency) as `champ_dataset/dataset_files/
v0.json`: {"problems": {id: {"_text", "_answer", "category", "solution":
{"steps": [{"_text"}]}, ...}}}. CHAMP's answers are free-form ("C(10, 5), or
equivalently 252", "0 is the only possible value", "2^(n-1)", "No integer
solutions"), graded in the paper by a model, so each is turned into a gold
answer `score_jax.rewards.math` can verify (`checker_gold`):

- integer: the answer itself (79 problems);
- yes_no: "Yes" / "No", a text gold (case-folded exact match) (33);
- leading_number: a number with words around it, e.g. "0 is the only possible
  value", "100 (i.e., all values)", "2 inequalities", "At least 1 number",
  "Exactly one", "The limit exists and is equal to 3" -> that number (55);
- expression: `_EXPRESSIONS`, CHAMP's ASCII math (marked with @@ in its
  `_raw_answer`) written by hand as LaTeX: "2^(n-1)" -> "2^{n-1}", "C(10, 5),
  or equivalently 252" -> "252" (the evaluated form where one is given),
  several solutions -> a collection ("376 and 625" -> "376, 625"; solution
  pairs -> "(0, 2), (9, 11)") (81). `tests/data/test_champ.py` checks each
  against CHAMP's ASCII: numerically with sympy at an exact point, or the same
  numbers in the same order for collections;
- text: statements with no number to check (`_TEXT_ANSWER`, `_TEXT`), case-folded exact
  match: "No integer solutions", "The limit does not exist", ... (22). They are
  strict: a paraphrase ("There are no solutions") scores 0.

Every gold passes `parse_gold` and `reward(final_answer(gold), gold) == 1`
(test_champ.py): none fails after this mapping. The one that failed on the way:
Polynomial_2 written with "\\pm" inside a product ("a(1\\pm\\sqrt{2}), ..."),
which math-verify cannot parse; it is written as its four roots. Known
verifier leniency: assignments "x=6, y=5" are compared as the unordered values
{6, 5}, so "x=5, y=6" also scores 1 (Number-Theory_4, _31, Polynomial_13, _21).
Answers this mapping changes beyond notation (read them before citing a CHAMP
number): Combinatorics_29 ("C(n, 4)" kept, not the expanded
form), Sequence_43 (the sequence's general term 1/8^n for "Yes, and the
sequence is 1/2^3, 1/2^6, ..."), Sequence_2 ("\\text{always greater}" for the
choice "Always greater than 20"), Polynomial_15 ("0, 1": the values f(x) can
take), Polynomial_46 (the product written with \\prod).

Why no tfds builder: the 270 problems are one small JSON file inside an
installed package, read in milliseconds; a prepared copy would add nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence

import numpy as np

INSTALL_HINT = "pip install champ-dataset==1.0.0"
NUM_PROBLEMS = 270
FINAL_ANSWER_TEMPLATE = "Final Answer: The final answer is ${answer}$. I hope it is correct."

_INTEGER = re.compile(r"^-?\d+$")
_NUMBER = r"(-?\d+)"
# "<number> <words>" and "<words> <number>" answers whose number is the whole answer.
_LEADING_NUMBER = (
    re.compile(rf"^{_NUMBER} (?:is the only possible value|values?|inequalities|pairs|roots|"
               r"\((?:i\.e\., )?[^()]*\))$"),
    re.compile(rf"^(?:At least|At most) {_NUMBER} [a-z -]+(?: \(i\.e\., [^()]*\))?$"),
    re.compile(rf"^(?:The limit exists and is equal to|The only possible value for the limit is"
               rf"|The function is periodic, with a period of) {_NUMBER}$"),
)
_WORD_NUMBERS = {"Exactly one": "1", "Exactly one sequence": "1"}

# CHAMP's ASCII math -> LaTeX (by hand; the test compares each pair numerically).
_EXPRESSIONS = {
    "P_Combinatorics_2": "252",  # "C(10, 5), or equivalently 252"
    "P_Combinatorics_3": r"2^{\lfloor n/2 \rfloor} \cdot \lfloor n/2 \rfloor!",
    "P_Combinatorics_6": "2^{n-1}",
    "P_Combinatorics_9": "n",
    "P_Combinatorics_10": "2^{n-1}",
    "P_Combinatorics_11": r"\frac{n(n-3)}{2}",
    "P_Combinatorics_12": "(n+1)^{n-1}",
    "P_Combinatorics_13": "4^n",
    "P_Combinatorics_14": r"\frac{5}{14}",  # "5/14, or approximately 35.7%"
    "P_Combinatorics_16": r"\binom{n+1}{2m+1}",
    "P_Combinatorics_19": r"n(n+1) \cdot 2^{n-2}",
    "P_Combinatorics_22": r"\frac{n+1}{r+1}",
    "P_Combinatorics_23": r"\frac{4^n+2^n}{2}",
    "P_Combinatorics_25": "n!",
    "P_Combinatorics_27": "504",  # "2*C(10, 5), or equivalently 504"
    "P_Combinatorics_29": r"\binom{n}{4}",  # "C(n, 4), or ... n(n-1)(n-2)(n-3)/4!"
    "P_Combinatorics_33": r"\left(\frac{n(n+1)}{2}\right)^2",  # "sum i^3, or equivalently ..."
    "P_Combinatorics_34": r"(n-k+3) \cdot 2^{n-k-2}",
    "P_Combinatorics_35": r"\frac{(2n)!}{2^n \cdot n!}",
    "P_Combinatorics_36": r"\frac{n!}{2n}",
    "P_Combinatorics_37": r"\frac{n(n+1)(2n+1)}{6}",  # "sum i^2, or equivalently ..."
    "P_Inequality_1": "[-1, 1]",
    "P_Inequality_2": r"\frac{1}{2}",
    "P_Inequality_3": r"\frac{1}{3}",
    "P_Inequality_9": "x(n)<y(n-1)",  # "... for all n≥3" (the question's choice)
    "P_Inequality_11": "2^n",
    "P_Inequality_12": r"\sum_{k=1}^{n} \frac{1}{k}",
    "P_Inequality_16": r"\frac{3}{2}",
    "P_Inequality_17": r"1-\frac{1}{2^{1/n}}",
    "P_Inequality_18": r"\frac{\sqrt{3}}{3}",  # "sqrt(3)/3, or equivalently 1/sqrt(3)"
    "P_Inequality_20": r"\frac{3}{2}",
    "P_Inequality_21": r"\frac{1}{n+1}",
    "P_Inequality_29": "2^{m+1}",
    "P_Inequality_30": r"\frac{n}{n-1}",
    "P_Inequality_31": r"\frac{n^2}{n-1}",
    "P_Inequality_32": "x(n)>y(n-1)",  # "... for all n≥2"
    "P_Inequality_34": r"\sqrt{2}",
    "P_Inequality_37": r"\sqrt{3}",
    "P_Inequality_41": r"\frac{2^n}{n+1}",
    "P_Inequality_46": r"\frac{1}{n}",
    "P_Number-Theory_3": "376, 625",
    "P_Number-Theory_4": "x=6, y=5",
    "P_Number-Theory_6": "9642, 87531",
    "P_Number-Theory_28": "n",  # "n times"
    "P_Number-Theory_31": "x=2, y=1",
    "P_Number-Theory_36": "1, 19",
    "P_Number-Theory_39": "(0, 2), (9, 11)",  # (x, y) pairs
    "P_Number-Theory_44": "x=0, y=0",  # "x=y=0"
    "P_Number-Theory_51": "1176470588235294",  # "(20*10^15-2)/17, or equivalently ..."
    "P_Number-Theory_53": "1, 4, 9",
    "P_Number-Theory_65": "(3, 2), (5, 3)",  # (p, q) pairs
    "P_Number-Theory_70": "(1, 1), (3, 2)",  # (x, y) pairs
    "P_Number-Theory_72": "1, 3",
    # "a(1±sqrt(2)), a(1±sqrt(5))/2": math-verify cannot parse "\pm" inside a product.
    "P_Polynomial_2": (r"a(1+\sqrt{2}), a(1-\sqrt{2}), \frac{a(1+\sqrt{5})}{2}, "
                       r"\frac{a(1-\sqrt{5})}{2}"),
    "P_Polynomial_5": "(8, 2), (2, 8)",  # (x, y) pairs
    "P_Polynomial_6": "(1, 2), (2, 1)",  # (x, y) pairs
    "P_Polynomial_7": "-2x+2",
    "P_Polynomial_13": "a=3, b=-4",
    "P_Polynomial_14": "(x^2+x+1)(x^2-x+1)",
    "P_Polynomial_15": "0, 1",  # "f(x)=0 or f(x)=1": the values f(x) can take
    "P_Polynomial_16": "k-2",  # "k-2 (i.e., all of them)"
    "P_Polynomial_18": "(x^2+x+1)(x^2-x+1)(x^4-x^2+1)",
    "P_Polynomial_19": "(x+y+z)(x^2+y^2+z^2-xy-yz-xz)",
    "P_Polynomial_20": "f(x)=0",
    "P_Polynomial_21": "a=3, b=-7, c=4",
    "P_Polynomial_22": r"x=\pm 1",
    "P_Polynomial_28": r"\frac{(-1)^{n+1}+n+1}{n+2}",
    "P_Polynomial_29": "(x+1)(x-1)(x^2+1)(x^3-x^2+1)(x^2+x+1)",
    "P_Polynomial_31": r"\frac{a^3+2b}{3a}",
    "P_Polynomial_37": "16, 81",  # "x=16 and x=81"
    "P_Polynomial_38": r"\pm 1, \pm 2, \pm \frac{1}{2}",
    "P_Polynomial_39": "x^3-1",
    "P_Polynomial_46": r"\prod_{k=0}^{2022} (x-k)",  # "x(x-1)(x-2)...(x-2022)"
    "P_Sequence_8": r"\frac{1}{18}",
    "P_Sequence_16": r"\sqrt{a}",
    "P_Sequence_23": r"-\frac{1}{2}",
    "P_Sequence_29": r"\frac{2}{3}",
    "P_Sequence_30": r"\frac{a+3b}{2}",
    "P_Sequence_34": "2^{997}",
    "P_Sequence_41": r"\frac{1+\sqrt{4a+1}}{2}",
    "P_Sequence_43": r"\frac{1}{8^n}",  # "Yes, and the sequence is 1/2^3, 1/2^6, 1/2^9, ..."
}
# Answers with no number to check: compared as case-folded text.
_TEXT = {
    "P_Sequence_2": r"\text{always greater}",  # the choice "Always greater than 20"
}
_TEXT_ANSWER = re.compile(r"^[A-Z][a-z]*(?: [a-z]+)*$")  # "No integer solutions".


@dataclasses.dataclass(frozen=True)
class Problem:
  id: str  # CHAMP's identifier, e.g. "P_Combinatorics_1".
  category: str  # Combinatorics, Inequality, Number-Theory, Polynomial, Sequence.
  question: str
  champ_answer: str  # CHAMP's answer text, as published.
  gold: str  # what our verifier compares against (`checker_gold`).
  kind: str  # integer | yes_no | leading_number | expression | text.
  solution: str  # CHAMP's solution steps, then the final-answer sentence.


def final_answer(answer: str) -> str:
  """The final-answer sentence our verifier extracts `answer` from."""
  return FINAL_ANSWER_TEMPLATE.format(answer=answer)


def checker_gold(problem_id: str, answer: str) -> tuple[str, str]:
  """(gold for our verifier, kind) of CHAMP problem `problem_id` with answer text `answer`.

  Raises ValueError for an answer none of the rules (module docstring) covers.
  """
  answer = answer.strip()
  if problem_id in _EXPRESSIONS:
    return _EXPRESSIONS[problem_id], "expression"
  if problem_id in _TEXT:
    return _TEXT[problem_id], "text"
  if _INTEGER.match(answer):
    return answer, "integer"
  if answer in ("Yes", "No"):
    return answer, "yes_no"
  if answer in _WORD_NUMBERS:
    return _WORD_NUMBERS[answer], "leading_number"
  for pattern in _LEADING_NUMBER:
    match = pattern.match(answer)
    if match:
      return match.group(1), "leading_number"
  if _TEXT_ANSWER.match(answer):
    return answer, "text"
  raise ValueError(f"CHAMP problem {problem_id!r}: no rule turns answer {answer!r} into a gold "
                   "our verifier can check; add it to champ._EXPRESSIONS (as LaTeX) or _TEXT.")


def default_path() -> str:
  """v0.json inside the installed champ-dataset package (ImportError saying how to install it)."""
  try:
    import champ_dataset  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"task.name='champ' needs the champ-dataset package: {INSTALL_HINT}") from e
  return os.path.join(os.path.dirname(champ_dataset.__file__), "dataset_files", "v0.json")


def load_problems(path: str | None = None) -> list[Problem]:
  """CHAMP's problems in file order, each with its verifier gold (ValueError if one lacks it)."""
  path = path or default_path()
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  raw = data.get("problems") if isinstance(data, dict) else None
  if not isinstance(raw, dict) or not raw:
    raise ValueError(f"{path} has no 'problems' object; expected CHAMP's v0.json.")
  problems = []
  for problem_id, p in raw.items():
    missing = [k for k in ("_text", "_answer", "category") if not isinstance(p.get(k), str)]
    if missing:
      raise ValueError(f"{path}: problem {problem_id!r} lacks {missing}.")
    gold, kind = checker_gold(problem_id, p["_answer"])
    steps = [s["_text"] for s in (p.get("solution") or {}).get("steps", []) if s.get("_text")]
    problems.append(Problem(id=problem_id, category=p["category"], question=p["_text"],
                            champ_answer=p["_answer"], gold=gold, kind=kind,
                            solution="\n".join([*steps, final_answer(gold)])))
  return problems


def split(problems: Sequence[Problem], num_eval: int, seed: int
          ) -> tuple[list[Problem], list[Problem]]:
  """(train, eval): `num_eval` problems held out, the same share of each category, by `seed`.

  num_eval >= len(problems) holds out everything (eval only; train is empty).
  Both lists keep the file order.
  """
  if num_eval < 0:
    raise ValueError(f"num_eval must be >= 0, got {num_eval}.")
  rng = np.random.default_rng(seed)
  categories = sorted({p.category for p in problems})
  held = set()
  fraction = min(1.0, num_eval / max(1, len(problems)))
  for category in categories:
    ids = [p.id for p in problems if p.category == category]
    take = int(round(fraction * len(ids)))
    held.update(rng.permutation(ids)[:take].tolist())
  # Rounding per category can miss the total by a few: fix it up from a seeded order.
  order = rng.permutation([p.id for p in problems]).tolist()
  for problem_id in order:
    if len(held) >= num_eval:
      break
    held.add(problem_id)
  for problem_id in order[::-1]:
    if len(held) <= num_eval:
      break
    held.discard(problem_id)
  return ([p for p in problems if p.id not in held], [p for p in problems if p.id in held])
