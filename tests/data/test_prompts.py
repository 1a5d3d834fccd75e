"""The paper's prompts and the few-shot MBPP prompt."""

import pytest

from score_jax.data import prompts

# Transcribed from the paper's appendix (see the method spec, section 1).
FINAL_ANSWER_FORM = ('write it in the form "Final Answer: The final answer is $answer$. '
                     'I hope it is correct."')


def test_math_prompts_are_the_papers():
  assert prompts.MATH_TURN1_INSTRUCTION == (
      "You are a math expert. When you respond, respond only with the Solution of the final "
      "Problem, thinking step by step. At the end of the Solution, when you give your final "
      "answer, " + FINAL_ANSWER_FORM)
  assert prompts.MATH_TURN2_INSTRUCTION == (
      "There might be an error in the solution above because of lack of understanding of the "
      "question. Please correct the error, if any, and rewrite the solution. Only output the "
      "final solution! At the end of the Solution, when you give your final answer, "
      + FINAL_ANSWER_FORM)
  assert prompts.CODE_TURN2_INSTRUCTION == (
      "There might be an error in the code above because of lack of understanding of the "
      "question. Please correct the error, if any, and rewrite the solution. Only output the "
      "final correct Python program!")


def test_math_turn1_puts_the_problem_last_and_asks_for_the_solution():
  text = prompts.math_turn1("What is $1+1$?")
  assert text == (prompts.MATH_TURN1_INSTRUCTION + "\n\nProblem:\nWhat is $1+1$?\n\nSolution:")
  assert prompts.math_turn1("What is $1+1$?", "") == "Problem:\nWhat is $1+1$?\n\nSolution:"


def test_mbpp_turn1_is_three_solved_shots_then_the_open_task():
  tests = ["assert f(1) == 2", "assert f(2) == 3"]
  text = prompts.mbpp_turn1("Write a function f that adds one.", tests)
  assert text.count("You are an expert Python programmer, and here is your task: ") == 4
  assert text.count("[BEGIN]\n") == 4 and text.count("\n[DONE]") == 3
  assert text.endswith("You are an expert Python programmer, and here is your task: Write a "
                        "function f that adds one. Your code should pass these tests:\n\n"
                        "assert f(1) == 2\nassert f(2) == 3\n[BEGIN]\n")
  first_shot = text.split("\n[DONE]")[0]
  assert first_shot == (
      "You are an expert Python programmer, and here is your task: Write a function to find the "
      "similar elements from the given two tuple lists. Your code should pass these tests:\n\n"
      "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n"
      "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\n"
      "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n[BEGIN]\n"
      "def similar_elements(test_tup1, test_tup2):\n"
      "  res = tuple(set(test_tup1) & set(test_tup2))\n"
      "  return (res) ")
  assert [e["task_id"] for e in prompts.MBPP_EXEMPLARS] == [2, 3, 4]
  with pytest.raises(TypeError):
    prompts.mbpp_turn1("text", "assert f(1) == 2")


@pytest.mark.parametrize("exemplar", prompts.MBPP_EXEMPLARS, ids=lambda e: str(e["task_id"]))
def test_mbpp_exemplar_code_passes_its_own_tests(exemplar):
  namespace = {}
  exec(exemplar["code"], namespace)  # pylint: disable=exec-used
  for test in exemplar["test_list"]:
    exec(test, namespace)  # pylint: disable=exec-used
  entry = exemplar["test_list"][0].split("assert ")[1].split("(")[0]
  assert callable(namespace[entry])


def test_humaneval_turn1_is_the_prompt_itself():
  prompt = 'def f(x):\n    """Adds one."""\n'
  assert prompts.humaneval_turn1(prompt) == prompt
  with pytest.raises(ValueError, match="empty"):
    prompts.humaneval_turn1("  \n")
