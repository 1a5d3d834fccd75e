"""A task: problems with gold answers, its verifier, its instruction, and its prompt ids.

The training loop and the evaluation see tasks only through this module, so a
new data set (MATH, MBPP, reasoning-gym, ...) means a new `make_*` function here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from score_jax.data import synthetic


@dataclasses.dataclass(frozen=True)
class Example:
  id: str
  prompt: str  # the turn-1 user text.
  gold: str  # what the verifier compares against.
  solution: str | None = None  # a reference response, for supervised warm-starts.


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  train: tuple[Example, ...]
  eval: tuple[Example, ...]
  instruction: str  # the self-correction instruction between attempts.
  reward: Callable[[str, str], float]  # (response, gold) -> 0/1.
  answer: Callable[[str], str | None]  # the final answer of a response (changed-answer rate).
  # (example, rng) -> a plausible wrong response, for warm-starting a base that errs.
  corrupt: Callable[[Example, np.random.Generator], str] | None = None


def make_synthetic(cfg: ml_collections.ConfigDict) -> Task:
  """The synthetic multi-step arithmetic task (score_jax.data.synthetic)."""
  train = synthetic.make_problems(cfg.train_seed, cfg.num_train, cfg.difficulty)
  evals = synthetic.make_problems(cfg.eval_seed, cfg.num_eval, cfg.difficulty,
                                  exclude={p.question for p in train})
  to_example = lambda p: Example(id=p.id, prompt=p.question, gold=p.answer, solution=p.solution)
  by_question = {p.question: p for p in (*train, *evals)}

  def corrupt(example: Example, rng: np.random.Generator) -> str:
    return synthetic.corrupt_solution(by_question[example.prompt], rng)

  return Task(name="synthetic", train=tuple(map(to_example, train)),
              eval=tuple(map(to_example, evals)),
              instruction=synthetic.SELF_CORRECTION_INSTRUCTION, reward=synthetic.reward,
              answer=synthetic.extract_answer, corrupt=corrupt)


TASKS = {"synthetic": make_synthetic}


def make_task(cfg: ml_collections.ConfigDict) -> Task:
  """The task named by cfg.name; a non-empty cfg.instruction replaces its turn-2 instruction."""
  if cfg.name not in TASKS:
    raise ValueError(f"unknown task {cfg.name!r}; known tasks: {sorted(TASKS)}.")
  task = TASKS[cfg.name](cfg)
  if cfg.get("instruction"):
    task = dataclasses.replace(task, instruction=cfg.instruction)
  return task


def batch_prompts(prompt_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray,
                                                                               np.ndarray]:
  """Left-aligned int32 [N, W] prompt ids (W = longest) and lengths [N]."""
  lengths = np.array([len(p) for p in prompt_ids], np.int32)
  out = np.full((len(prompt_ids), int(lengths.max())), pad_id, np.int32)
  for i, ids in enumerate(prompt_ids):
    out[i, :len(ids)] = ids
  return out, lengths
