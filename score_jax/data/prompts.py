"""The paper's prompts, verbatim, and the functions that put a problem into them.

SCoRe (appendix) gives the instruction texts; the turn-2 instructions are
appended after the first attempt unchanged for every problem, and never say
whether that attempt was right (intrinsic self-correction). Where the paper
gives the instruction but not how the problem is joined to it, the join is a
module constant here, so it is visible and easy to change.

With a Gemma chat model each turn is additionally wrapped in Gemma's turn
template by the caller; these functions return the plain user text.
"""

from __future__ import annotations

from collections.abc import Sequence

MATH_TURN1_INSTRUCTION = (
    "You are a math expert. When you respond, respond only with the Solution of the final "
    "Problem, thinking step by step. At the end of the Solution, when you give your final "
    'answer, write it in the form "Final Answer: The final answer is $answer$. I hope it is '
    'correct."')

# The instruction speaks of "the Solution of the final Problem": the Minerva
# "Problem:/Solution:" format it was written for.
MATH_TURN1_TEMPLATE = "{instruction}\n\nProblem:\n{problem}\n\nSolution:"
# Without an instruction (a base model warm-started on the answer format needs none).
MATH_PROBLEM_TEMPLATE = "Problem:\n{problem}\n\nSolution:"

MATH_TURN2_INSTRUCTION = (
    "There might be an error in the solution above because of lack of understanding of the "
    "question. Please correct the error, if any, and rewrite the solution. Only output the "
    "final solution! At the end of the Solution, when you give your final answer, write it in "
    'the form "Final Answer: The final answer is $answer$. I hope it is correct."')

# Renderings of the paper differ on a leading "# "; the trainer's config may override it.
CODE_TURN2_INSTRUCTION = (
    "There might be an error in the code above because of lack of understanding of the "
    "question. Please correct the error, if any, and rewrite the solution. Only output the "
    "final correct Python program!")

MBPP_TEMPLATE = ("You are an expert Python programmer, and here is your task: {text} "
                 "Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")
MBPP_SHOT_SEPARATOR = "\n"

# The standard 3-shot exemplars: MBPP task ids 2, 3 and 4 (the file is not on
# this machine, so they are written out). The file's "\r\n" line ends are
# written "\n" and the trailing spaces of task 4's tests are dropped.
MBPP_EXEMPLARS: tuple[dict, ...] = (
    {
        "task_id": 2,
        "text": "Write a function to find the similar elements from the given two tuple lists.",
        "code": ("def similar_elements(test_tup1, test_tup2):\n"
                 "  res = tuple(set(test_tup1) & set(test_tup2))\n"
                 "  return (res) "),
        "test_list": ("assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
                      "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
                      "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)"),
    },
    {
        "task_id": 3,
        "text": "Write a python function to identify non-prime numbers.",
        "code": ("import math\n"
                 "def is_not_prime(n):\n"
                 "    result = False\n"
                 "    for i in range(2,int(math.sqrt(n)) + 1):\n"
                 "        if n % i == 0:\n"
                 "            result = True\n"
                 "    return result"),
        "test_list": ("assert is_not_prime(2) == False",
                      "assert is_not_prime(10) == True",
                      "assert is_not_prime(35) == True"),
    },
    {
        "task_id": 4,
        "text": ("Write a function to find the largest integers from a given list of numbers "
                 "using heap queue algorithm."),
        "code": ("import heapq as hq\n"
                 "def heap_queue_largest(nums,n):\n"
                 "  largest_nums = hq.nlargest(n, nums)\n"
                 "  return largest_nums"),
        "test_list": (
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65]",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75]",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)"
            "==[85, 75, 65, 58, 35]"),
    },
)


def math_turn1(problem: str, instruction: str = MATH_TURN1_INSTRUCTION) -> str:
  """The zero-shot MATH first-turn prompt for one problem ("" drops the instruction)."""
  if not instruction:
    return MATH_PROBLEM_TEMPLATE.format(problem=problem)
  return MATH_TURN1_TEMPLATE.format(instruction=instruction, problem=problem)


def mbpp_query(text: str, tests: Sequence[str]) -> str:
  """One MBPP task in the standard format, up to and including "[BEGIN]\\n"."""
  if isinstance(tests, str):
    raise TypeError("tests must be a sequence of assert lines, not one string.")
  return MBPP_TEMPLATE.format(text=text, tests="\n".join(tests))


def mbpp_shot(text: str, tests: Sequence[str], code: str) -> str:
  """A solved MBPP task: the query, the code, and "[DONE]"."""
  return f"{mbpp_query(text, tests)}{code}\n[DONE]"


def mbpp_turn1(text: str, tests: Sequence[str]) -> str:
  """The standard 3-shot MBPP prompt (tasks 2, 3, 4 solved), then this task open after "[BEGIN]"."""
  shots = [mbpp_shot(e["text"], e["test_list"], e["code"]) for e in MBPP_EXEMPLARS]
  return MBPP_SHOT_SEPARATOR.join([*shots, mbpp_query(text, tests)])


def humaneval_turn1(prompt: str) -> str:
  """HumanEval is zero-shot: the turn-1 text is the problem's prompt (signature + docstring).

  The model continues the function; the verifier joins prompt and completion.
  An empty prompt is rejected, since it means a record was read wrongly.
  """
  if not prompt.strip():
    raise ValueError("HumanEval prompt is empty; pass the problem's 'prompt' field.")
  return prompt
