"""MATH answer verifier: final-answer extraction, equivalence, and the 0/1 reward.

The verifier is SCoRe's whole reward signal, and the Stage II bonus pays 11 for a
wrong -> right flip, so every leniency is a reward-hacking hole. The policy here:

1. Extraction. The paper's "Final Answer: The final answer is $...$. I hope it is
   correct." form (its last occurrence) decides when present; otherwise the last
   \\boxed{...} / \\fbox{...} (braces matched, also "\\boxed 5"). Empty or
   unterminated -> None -> reward 0.
2. Normalisation (`normalize_answer`): \\left/\\right, \\dfrac/\\tfrac, spacing
   commands, "$", "\\$", percent signs (MATH convention: "3\\%" equals "3"),
   degree signs, trailing units in \\text{...}, trailing periods, thousands
   separators ("1,000" only when the whole answer is one such number).
3. Guards before any symbolic check (each one closes a hole that math-verify 0.9
   leaves open; the tests pin them):
   - integer gold: the prediction must be an integer literal ("5", "x = 5",
     "5.0"), so "5!" or "2^{10}" copied from the problem never scores;
   - the prediction may not use an evaluation operator the gold does not use
     (^, !, \\binom, \\sqrt, \\log, trig, \\sum, \\cdot, binary +/-, ...);
   - same shape: scalar, unordered collection ("1, 2" or "\\{1,2\\}"), bracketed
     tuple/interval with the same end brackets and arity, matrix, or union;
   - "x = 3" and "x \\in [1,2]" count as their right-hand side, but a relation
     anywhere else (e.g. "4 = 3", "3 \\approx 3") only matches a gold relation;
   - text golds ("\\text{odd}", "\\text{(C)}") compare as case-folded text.
4. Symbolic check: math-verify (`parse` + `verify`), with decimals passed as
   exact fractions (so 0.3333333 is not 1/3), in a helper process of
   `VERIFIER_POOL` (`score_jax.rewards.worker_pool`). math-verify's own timeout
   uses SIGALRM, which works only in the main thread, and a sympy call stuck
   in C code ignores signals; a pool worker that has not answered within
   `timeout_s` is killed instead: a hard limit from any thread.

Deliberately strict (false negatives rather than exploitable positives): an
unevaluated form of an integer ("\\frac{10}{2}" for 5), decimal approximations,
an inequality for an interval, text lists in another order. `is_equivalent` and
`reward` never raise; `parse_gold` raises at dataset load time instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from absl import logging

from score_jax.rewards import worker_pool

DEFAULT_TIMEOUT_S = 3.0
# MATH gold answers are under ~200 characters; longer predictions are junk and
# would only spend the time budget.
MAX_ANSWER_CHARS = 1000

# ---------------------------------------------------------------- extraction

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_FINAL_ANSWER = re.compile(r"final answer is:?\s*", re.IGNORECASE)
_HOPE = re.compile(r"\.?\s*I hope it is correct", re.IGNORECASE)


def _matched_brace_end(text: str, start: int) -> int | None:
  """Index of the "}" closing the "{" at `start` (escaped braces skipped), else None."""
  depth = 0
  i = start
  while i < len(text):
    char = text[i]
    if char == "\\":
      i += 2
      continue
    if char == "{":
      depth += 1
    elif char == "}":
      depth -= 1
      if depth == 0:
        return i
    i += 1
  return None


def last_boxed(text: str) -> str | None:
  """Content of the last \\boxed{...} / \\fbox{...}; None if absent, empty or unterminated."""
  start = max(text.rfind(command) for command in _BOX_COMMANDS)
  if start < 0:
    return None
  command = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
  rest_start = start + len(command)
  if text.startswith("{", rest_start):
    end = _matched_brace_end(text, rest_start)
    content = text[rest_start + 1:end].strip() if end is not None else ""
    return content or None
  match = re.match(r" +([^\s$]+)", text[rest_start:])  # "\boxed 5": one token.
  return match.group(1) if match else None


def _final_answer_form(text: str) -> tuple[bool, str | None]:
  """(form used, its answer) for the last "The final answer is $...$" in `text`."""
  matches = list(_FINAL_ANSWER.finditer(text))
  if not matches:
    return False, None
  rest = text[matches[-1].end():]
  if rest.startswith("$"):
    i = 1
    while i < len(rest) and rest[i] != "$":
      i += 2 if rest[i] == "\\" else 1
    if i >= len(rest):
      return True, None  # Unterminated: the generation was cut off.
    return True, rest[1:i].strip() or None
  hope = _HOPE.search(rest)
  if hope and "\\boxed" not in rest[:hope.start()]:  # "... is 5. I hope it is correct."
    return True, rest[:hope.start()].strip() or None
  return False, None


def extract_answer(text: str) -> str | None:
  """The final answer of a response: the Final Answer form, else the last box."""
  if not isinstance(text, str):
    return None
  used, answer = _final_answer_form(text)
  return answer if used else last_boxed(text)


def gold_from_solution(solution: str) -> str | None:
  """Gold answer of a Hendrycks MATH `solution`: its last \\boxed{...}."""
  return last_boxed(solution) if isinstance(solution, str) else None


# ------------------------------------------------------------- normalisation

_UNICODE = {"\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u00b7": "\\cdot ",
            "\u00f7": "\\div ", "\u03c0": "\\pi ", "\u221e": "\\infty ", "\u221a": "\\sqrt ",
            "\u2264": "\\le ", "\u2265": "\\ge ", "\u2260": "\\ne ", "\u00b0": "^\\circ",
            "\u00a0": " "}
_TEXT_WRAPPERS = r"\\(?:text|textbf|textit|textrm|textnormal|mbox|mathrm|mathbf)"
_WHOLE_WRAPPER = re.compile(r"^(?:" + _TEXT_WRAPPERS + r"|\\boxed|\\fbox)\s*\{")
# A unit follows a number or a closing bracket: "5 \text{ cm}^2", "\frac{1}{2}\text{ inch}".
_TRAILING_UNIT = re.compile(r"(?<=[\d})])\s*" + _TEXT_WRAPPERS +
                            r"\{\s*[A-Za-z][A-Za-z .]*\}(?:\^\{?[23]\}?)?$")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree")
# A row break (two backslashes) is consumed whole, so "1 \\ 2" keeps it.
_SPACING = re.compile(r"(\\\\)|\\[;: ]|\\(?:displaystyle|quad|qquad)(?![A-Za-z])|~")
_THIN_SPACE = re.compile(r"(\\\\)|\\[,!]")  # Also a digit-group separator: "10,\!080".
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_DECIMAL = re.compile(r"(?<![\d.])(\d*)\.(\d+)(?![\d.])")
_REPEATING_DECIMAL = re.compile(r"(?<![\d.])(\d*)\.(\d*)\\overline\{(\d+)\}")
_INTEGER = re.compile(r"^[+-]?\d+$")
_INTEGER_LIKE = re.compile(r"^[+-]?\d+(?:\.0*)?$")


def _unwrap_whole(s: str) -> str:
  """"\\text{X}" / "\\boxed{X}" / "{X}" spanning the whole answer -> "X" (repeatedly)."""
  while True:
    s = s.strip()
    match = _WHOLE_WRAPPER.match(s)
    open_at = match.end() - 1 if match else (0 if s.startswith("{") else -1)
    if open_at < 0 or _matched_brace_end(s, open_at) != len(s) - 1:
      return s
    s = s[open_at + 1:-1]


def normalize_answer(answer: str) -> str:
  """Canonical text of an answer: formatting, units and separators removed."""
  s = "".join(_UNICODE.get(c, c) for c in answer)
  s = s.replace("\\$", "").replace("$", "")
  s = re.sub(r"\\(?:left|right)(?:\.|(?![A-Za-z]))", "", s)
  s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
  s = re.sub(r"\\[dt]binom(?![A-Za-z])", r"\\binom", s)
  s = _SPACING.sub(lambda m: m.group(1) or " ", s)
  s = _THIN_SPACE.sub(lambda m: m.group(1) or "", s).replace("{,}", ",")
  s = _DEGREES.sub("", s)
  s = re.sub(r"\\?%", "", s)
  s = _unwrap_whole(s)
  for _ in range(2):  # "5 \text{ cm}^2", then a unit written twice.
    s = _TRAILING_UNIT.sub("", s).strip()
  s = _unwrap_whole(s.rstrip(". "))
  if _THOUSANDS.match(s):
    s = s.replace(",", "")
  return " ".join(s.split()).rstrip(". ")


# ------------------------------------------------------------------- guards

_VARIABLE = r"(?:[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?|\\[a-zA-Z]+)"
_ASSIGNMENT = re.compile(r"^\s*(" + _VARIABLE + r")\s*(?:=|\\in(?![A-Za-z]))\s*(.+)$", re.DOTALL)
_RELATION = re.compile(r"[=<>]|\\(?:le|leq|ge|geq|lt|gt|ne|neq|approx|equiv|sim|simeq|cong|"
                       r"propto|to|in|subset|subseteq|Rightarrow|implies|iff)(?![A-Za-z])")
_OPERATOR_COMMANDS = re.compile(
    r"\\(binom|choose|log|ln|lg|exp|sin|cos|tan|cot|sec|csc|arcsin|arccos|arctan|sinh|cosh|"
    r"tanh|sum|prod|int|lim|lfloor|lceil|gcd|lcm|operatorname|max|min|det|mod|bmod|pmod|"
    r"cdot|times|div|ast|sqrt|pm|mp)(?![A-Za-z])")
_WORD_ANSWER = re.compile(r"^[A-Za-z][A-Za-z' ]*[A-Za-z]$")  # "odd", "Monday".
_CHOICE_ANSWER = re.compile(r"^\([A-Za-z]\)$")  # "(C)"; also "\text{C}", not a bare "C".


def _depth_zero_split(s: str, separator: str = ",") -> list[str]:
  """Split at separators outside any (), [], {} (intervals may mix brackets)."""
  parts, depth, start = [], 0, 0
  for i, char in enumerate(s):
    if char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    elif char == separator and depth == 0:
      parts.append(s[start:i])
      start = i + 1
  return parts + [s[start:]]


def _named_values(s: str) -> dict[str, str] | None:
  """"x = 6, y = 5" -> {"x": "6", "y": "5"} when every part assigns a distinct variable."""
  named = {}
  for part in _depth_zero_split(s):
    match = _ASSIGNMENT.match(part)
    if not match or _RELATION.search(match.group(2)) or match.group(1) in named:
      return None
    named[match.group(1)] = match.group(2).strip()
  return named


def _strip_assignments(s: str) -> tuple[str, set[str]]:
  """"x = 3, x = 4" -> ("3, 4", {"x"}): a simple variable on the left counts as its value."""
  values, variables = [], set()
  for part in _depth_zero_split(s):
    match = _ASSIGNMENT.match(part)
    if match and not _RELATION.search(match.group(2)):
      variables.add(match.group(1))
      part = match.group(2)
    values.append(part.strip())
  return ", ".join(values), variables


def _closing_bracket(s: str, open_at: int) -> int | None:
  depth = 0
  for i in range(open_at, len(s)):
    if s[i] in "([{":
      depth += 1
    elif s[i] in ")]}":
      depth -= 1
      if depth == 0:
        return i
  return None


def _shape(s: str) -> tuple:
  """Coarse structure that must agree before the symbolic check."""
  if "\\begin{" in s:
    return ("matrix",)
  if re.search(r"\\(?:cup|cap)(?![A-Za-z])", s):
    return ("union", len(re.findall(r"\\cup|\\cap", s)))
  if s.startswith("\\{") and _closing_bracket(s, 1) == len(s) - 1:
    return ("collection",)
  if s[:1] in "([" and s[-1:] in ")]" and _closing_bracket(s, 0) == len(s) - 1:
    items = _depth_zero_split(s[1:-1])
    if len(items) > 1:
      return ("bracketed", s[0], s[-1], len(items))
  if len(_depth_zero_split(s)) > 1 or re.search(r"\\(?:pm|mp)(?![A-Za-z])", s):
    return ("collection",)
  return ("scalar",)


def _operators(s: str) -> set[str]:
  """Evaluation operators written in `s` (binary +/- counted, unary minus not)."""
  ops = set(_OPERATOR_COMMANDS.findall(s))
  ops.update(c for c in "^!*" if c in s)
  if "+" in s or re.search(r"[\w)\]}!]\s*-", s) or ops & {"pm", "mp"}:
    ops.add("+-")
  return ops


def _text_key(s: str) -> str:
  s = re.sub(_TEXT_WRAPPERS + r"\s*\{([^{}]*)\}", r"\1", s)
  s = re.sub(r"^\(([A-Za-z])\)$", r"\1", s.strip())  # Multiple choice: "(C)" == "C".
  return "".join(s.split()).casefold()


def _integer_key(s: str) -> str:
  sign = "-" if s.startswith("-") else ""
  digits = s.lstrip("+-").split(".")[0].lstrip("0") or "0"
  return (sign if digits != "0" else "") + digits


def _exact_decimals(s: str) -> str:
  """Decimals as exact fractions, so sympy never rounds 0.3333333 into 1/3."""
  def repeating(match: re.Match) -> str:  # 0.1\overline{6} = (16 - 1) / 90.
    whole, fixed, period = match.groups()
    numerator = int(whole + fixed + period or "0") - int(whole + fixed or "0")
    return f"\\frac{{{numerator}}}{{{'9' * len(period)}{'0' * len(fixed)}}}"

  def terminating(match: re.Match) -> str:
    whole, frac = match.groups()
    return f"\\frac{{{(whole + frac).lstrip('0') or '0'}}}{{1{'0' * len(frac)}}}"
  return _DECIMAL.sub(terminating, _REPEATING_DECIMAL.sub(repeating, s))


# ------------------------------------------------------------- equivalence

def _is_text_answer(original: str, norm: str) -> bool:
  wrapped = re.match(_TEXT_WRAPPERS + r"\s*\{", original.strip()) is not None
  return bool(_WORD_ANSWER.match(norm) or _CHOICE_ANSWER.match(norm)
              or (wrapped and re.fullmatch(r"[A-Za-z]", norm)))


def is_equivalent(pred: str, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
  """Whether answer `pred` is equivalent to gold answer `gold`; never raises.

  The symbolic part runs in a worker process that is killed if it has not
  answered after `timeout_s` seconds; a timeout counts as not equivalent.
  """
  try:
    return _is_equivalent(pred, gold, timeout_s)
  except Exception:  # pylint: disable=broad-except
    logging.exception("math verifier error; scoring the answer 0")
    return False


def _is_equivalent(pred: str, gold: str, timeout_s: float) -> bool:
  if not isinstance(pred, str) or not isinstance(gold, str) or len(pred) > MAX_ANSWER_CHARS:
    return False
  pred_norm, gold_norm = normalize_answer(pred), normalize_answer(gold)
  if not pred_norm or not gold_norm:
    return False
  if _is_text_answer(gold, gold_norm):
    return _text_key(pred_norm) == _text_key(gold_norm)
  gold_named = _named_values(gold_norm)
  if gold_named is not None and len(gold_named) > 1:
    # "x = 6, y = 5": each variable's value must match ("x = 5, y = 6" is wrong), in any order.
    pred_named = _named_values(pred_norm)
    return pred_named is not None and set(pred_named) == set(gold_named) and all(
        _is_equivalent(pred_named[v], gold_named[v], timeout_s) for v in gold_named)
  gold_value, gold_vars = _strip_assignments(gold_norm)
  pred_value, pred_vars = _strip_assignments(pred_norm)
  if gold_vars and pred_vars and gold_vars != pred_vars:
    return False  # "y = 3" does not answer "x = 3".
  if "".join(pred_value.split()) == "".join(gold_value.split()):
    return True
  if _INTEGER.match(gold_value):
    return bool(_INTEGER_LIKE.match(pred_value)) and (
        _integer_key(pred_value) == _integer_key(gold_value))
  if _RELATION.search(pred_value) and not _RELATION.search(gold_value):
    return False  # "4 = 3" or "3 \approx 3" is not the answer 3.
  if _shape(pred_value) != _shape(gold_value):
    return False
  if not _operators(pred_value) <= _operators(gold_value):
    return False  # An unevaluated expression, e.g. the problem's own "\binom{10}{3}".
  request = {"op": "equal", "pred": _exact_decimals(pred_value),
             "gold": _exact_decimals(gold_value)}
  return VERIFIER_POOL.run(request, timeout_s) is True


def reward(response: str, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> float:
  """1.0 iff the response's extracted final answer is equivalent to `gold`, else 0.0."""
  answer = extract_answer(response)
  return 1.0 if answer is not None and is_equivalent(answer, gold, timeout_s) else 0.0


def parse_gold(gold: str, problem_id: str, timeout_s: float = 10.0) -> str:
  """Validates a dataset's gold answer at load time; returns it stripped.

  Raises ValueError naming `problem_id` when the answer is empty, has unbalanced
  braces, or is neither a text answer nor parseable by math-verify: a gold that
  cannot be parsed must stop the data load, never score silently.
  """
  text = gold.strip() if isinstance(gold, str) else ""
  norm = normalize_answer(text)
  fix = ("Fix or drop this problem in the source file; a gold answer is the content of "
         "the solution's last \\boxed{...}, e.g. '\\frac{1}{2}' or '(1, 2]'.")
  if not norm:
    raise ValueError(f"Problem {problem_id!r}: empty gold answer {gold!r}. {fix}")
  if _matched_brace_end("{" + norm + "}", 0) != len(norm) + 1:
    raise ValueError(f"Problem {problem_id!r}: unbalanced braces in gold answer {gold!r}. {fix}")
  if _is_text_answer(text, norm):
    return text
  parsed = VERIFIER_POOL.run({"op": "parses", "text": _exact_decimals(norm)}, timeout_s)
  if parsed is not True:
    reason = "cannot parse" if parsed is False else "timed out or failed parsing"
    raise ValueError(f"Problem {problem_id!r}: math-verify {reason} gold answer {gold!r} "
                     f"(normalised: {norm!r}). {fix}")
  return text


# ------------------------------------------------------------ worker side

def math_verify_handler() -> Callable[[dict], bool]:
  """Builds the verifier pool's request handler (it runs in a worker process).

  Requests: {"op": "parses", "text"} -> whether math-verify parses `text` to
  a mathematical object; {"op": "equal", "pred", "gold"} -> whether they verify
  as equal. math-verify's own timeouts are off: the pool enforces the limits.
  """
  import functools  # pylint: disable=g-import-not-at-top
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  std_logging.disable(std_logging.CRITICAL)  # math-verify logs every parse failure.
  import math_verify  # pylint: disable=g-import-not-at-top

  @functools.lru_cache(maxsize=4096)  # Gold answers repeat across samples and attempts.
  def parsed(text: str) -> tuple:
    candidates = math_verify.parse(f"${text}$", parsing_timeout=None)
    return tuple(c for c in candidates if not isinstance(c, str))

  def handle(request: dict) -> bool:
    if request["op"] == "parses":
      return bool(parsed(request["text"]))
    gold, pred = parsed(request["gold"]), parsed(request["pred"])
    return bool(gold and pred and math_verify.verify(list(gold), list(pred), timeout_seconds=None))
  return handle


# Shared by every thread of the process; `VERIFIER_POOL.close()` ends its workers.
VERIFIER_POOL = worker_pool.WorkerPool(f"{__name__}:math_verify_handler",
                                       max_workers=max(2, os.cpu_count() or 2))
