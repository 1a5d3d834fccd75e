"""A task: problems with gold answers, its verifier, its instruction, and its prompt ids.

The training loop and the evaluation see tasks only through this module, so a
new data set (MATH, MBPP, reasoning-gym, ...) means a new `make_*` function here.

Tasks: `synthetic` (chains to evaluate), `missing_operand` (guess a chain's hidden
first operand and check it: the demo and the miniature reproduction), `math` (MATH from local files, MATH500 held out;
reward = the MATH verifier) and `mbpp` (MBPP from a local `mbpp.jsonl`; reward
= the unit tests run in the code sandbox; evaluated on HumanEval by default, as
in the paper). A code task's gold is a JSON string {"tests", "prefix"}: the
test code, and the text the response continues (HumanEval's prompt; "" for
MBPP). `reasoning_gym` (a seeded reasoning-gym generator; train and eval
seeds disjoint) and `champ` (CHAMP's 270 problems, split per category) use
the MATH prompts and verifier. `Task.rewards` verifies a whole batch at once
(the code sandbox runs programs in parallel), which is what the training loop
calls.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from score_jax.data import missing_operand, synthetic


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
  eval: tuple[Example, ...]  # the held-out test problems.
  instruction: str  # the self-correction instruction between attempts.
  reward: Callable[[str, str], float]  # (response, gold) -> 0/1.
  answer: Callable[[str], str | None]  # the final answer of a response (changed-answer rate).
  # (example, rng) -> a plausible wrong response, for warm-starting a base that errs.
  corrupt: Callable[[Example, np.random.Generator], str] | None = None
  # (responses, golds) -> 0/1 each, verified concurrently; None: `reward` one by one.
  batch_reward: Callable[[Sequence[str], Sequence[str]], Sequence[float]] | None = None
  # Problems in neither train nor eval, for choosing hyper-parameters (`eval.split`).
  validation: tuple[Example, ...] = ()

  def rewards(self, responses: Sequence[str], golds: Sequence[str]) -> np.ndarray:
    """float32 [N] rewards of N (response, gold) pairs, through the batch verifier if any."""
    if len(responses) != len(golds):
      raise ValueError(f"got {len(responses)} responses but {len(golds)} golds.")
    if self.batch_reward is not None:
      out = self.batch_reward(list(responses), list(golds))
    else:
      out = [self.reward(r, g) for r, g in zip(responses, golds)]
    return np.asarray(out, np.float32).reshape(len(responses))


def _generated_task(name: str, module, wrong_attempt, cfg: ml_collections.ConfigDict,
                    make_problems=None) -> Task:
  """A task of problems generated from seeds by `module`: train, validation, eval disjoint.

  The `num_validation` validation problems are drawn from the train seed after the
  train problems (so the train set does not depend on it); eval excludes both.
  """
  make_problems = make_problems or module.make_problems
  num_val = cfg.get("num_validation", 0)
  drawn = make_problems(cfg.train_seed, cfg.num_train + num_val, cfg.difficulty)
  train, val = drawn[:cfg.num_train], drawn[cfg.num_train:]
  evals = make_problems(cfg.eval_seed, cfg.num_eval, cfg.difficulty,
                        exclude={p.question for p in drawn})
  to_example = lambda p: Example(id=p.id, prompt=p.question, gold=p.answer, solution=p.solution)
  by_question = {p.question: p for p in (*drawn, *evals)}

  def corrupt(example: Example, rng: np.random.Generator) -> str:
    return wrong_attempt(by_question[example.prompt], rng)

  return Task(name=name, train=tuple(map(to_example, train)), eval=tuple(map(to_example, evals)),
              instruction=module.SELF_CORRECTION_INSTRUCTION, reward=module.reward,
              answer=module.extract_answer, corrupt=corrupt,
              validation=tuple(map(to_example, val)))


def make_synthetic(cfg: ml_collections.ConfigDict) -> Task:
  """The synthetic multi-step arithmetic task (score_jax.data.synthetic)."""
  return _generated_task("synthetic", synthetic, synthetic.corrupt_solution, cfg)


def make_missing_operand(cfg: ml_collections.ConfigDict) -> Task:
  """Guess-and-check: find a chain's hidden first operand (score_jax.data.missing_operand).

  cfg.check_step (default True) ends every response with the check `value-target=d`;
  False leaves it out (the hard regime, where correcting is harder than copying).
  """
  check = bool(cfg.get("check_step", True))
  return _generated_task(
      "missing_operand", missing_operand,
      lambda problem, rng: missing_operand.wrong_attempt(problem, rng, check), cfg,
      make_problems=lambda seed, n, difficulty, exclude=frozenset():
          missing_operand.make_problems(seed, n, difficulty, exclude, check))


SPLITS = ("test", "validation")


def eval_examples(task: Task, split: str = "test") -> tuple[Example, ...]:
  """The problems evaluation runs on: "test" (task.eval, the held-out set) or "validation"."""
  if split not in SPLITS:
    raise ValueError(f"eval.split={split!r}: use one of {SPLITS}.")
  if split == "validation":
    if not task.validation:
      raise ValueError(f"eval.split='validation' but task {task.name!r} has no validation "
                       "problems: set --config.task.num_validation=N (generated tasks).")
    return task.validation
  return task.eval


# --- local data sets ---------------------------------------------------------------------------


def _require_path(cfg: ml_collections.ConfigDict, key: str, what: str) -> str:
  path = cfg.get(key) or ""
  if not path:
    raise ValueError(f"task.{key} is empty: set --config.task.{key}=<path to {what}>. The data "
                     "sets are read from local files (README.md, \"The paper's settings on "
                     "Gemma 2 2B\").")
  return os.path.expanduser(path)


def _data_dir(cfg: ml_collections.ConfigDict, *sources: str) -> str:
  """Where tfds writes the prepared records: cfg.data_dir, else one folder per source version.

  tfds reuses prepared files by builder name, so the default folder is keyed by
  the sources' paths, sizes and modification times: a changed file is re-read.
  """
  if cfg.get("data_dir"):
    return os.path.expanduser(cfg.data_dir)
  key = hashlib.sha256()
  for path in sources:
    stat = os.stat(path) if os.path.exists(path) else None
    key.update(repr((os.path.abspath(path), stat and (stat.st_size, stat.st_mtime_ns))).encode())
  return os.path.join(os.path.expanduser("~"), "tensorflow_datasets", "score_jax",
                      key.hexdigest()[:16])


def _take(records: Sequence, limit: int) -> list:
  """The first `limit` records (all when limit <= 0)."""
  return list(records[:limit]) if limit and limit > 0 else list(records)


def _verify_threads(cfg: ml_collections.ConfigDict) -> int | None:
  return cfg.get("verify_workers") or None  # None: the verifier's default.


def make_math(cfg: ml_collections.ConfigDict) -> Task:
  """MATH (train + test minus MATH500) for training, MATH500 for evaluation (paper §4)."""
  # Imported here: tensorflow_datasets takes seconds to import, and the demo never needs it.
  from score_jax.data import math_dataset, prompts  # pylint: disable=g-import-not-at-top
  from score_jax.rewards import math as math_reward  # pylint: disable=g-import-not-at-top
  source_dir = _require_path(cfg, "source_dir", "the MATH data: a directory with train/ and "
                             "test/ (Hendrycks layout) or train.jsonl and test.jsonl")
  math500_path = _require_path(cfg, "math500_path", "MATH500: PRM800K's "
                               "prm800k/math_splits/test.jsonl")
  data_dir = _data_dir(cfg, source_dir, math500_path)
  kwargs = dict(allow_unmatched_eval=bool(cfg.get("allow_unmatched_eval", False)))

  def examples(split: str, limit: int) -> tuple[Example, ...]:
    rows = math_dataset.load(source_dir, math500_path, data_dir, split, **kwargs)
    return tuple(Example(id=r["id"], prompt=prompts.math_turn1(r["problem"]), gold=r["answer"])
                 for r in _take(rows, limit))

  workers = _verify_threads(cfg) or 2 * (os.cpu_count() or 1)

  def batch_reward(responses: Sequence[str], golds: Sequence[str]) -> list[float]:
    # The verifier's worker pool is shared by threads; each check waits on a worker process.
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      return list(pool.map(math_reward.reward, responses, golds))

  return Task(name="math", train=examples("train", cfg.num_train),
              eval=examples("eval", cfg.num_eval), instruction=prompts.MATH_TURN2_INSTRUCTION,
              reward=math_reward.reward, answer=math_reward.extract_answer,
              batch_reward=batch_reward)


# --- code ---------------------------------------------------------------------------------------

_FENCED = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_program(response: str) -> str | None:
  """The program in a response; None when there is none.

  MBPP's few-shot format ends code with "[DONE]" (text after it is ignored) and
  may repeat "[BEGIN]"; a chat model may fence its code in ``` blocks (the
  last block counts; an unclosed fence, e.g. a truncated response, runs to the
  end).
  """
  text = response.split("[DONE]", 1)[0]
  text = text.rsplit("[BEGIN]", 1)[-1]
  blocks = _FENCED.findall(text)
  if blocks:
    text = blocks[-1]
  elif "```" in text:
    after = text.split("```", 1)[1]
    text = after.split("\n", 1)[1] if "\n" in after else ""
  return text if text.strip() else None


def code_gold(tests: str, prefix: str = "") -> str:
  """A code task's gold: the test code, and the text the response continues (HumanEval)."""
  return json.dumps({"tests": tests, "prefix": prefix})


def _program_and_tests(response: str, gold: str) -> tuple[str | None, str]:
  spec = json.loads(gold)
  program = extract_program(response)
  # HumanEval: the prompt (imports, signature, docstring) then the completion; a
  # completion that restates the whole function simply redefines it.
  return (None if program is None else spec["prefix"] + program), spec["tests"]


def program_answer(response: str) -> str | None:
  """The response's program without blank lines or trailing spaces (changed-answer rate)."""
  program = extract_program(response)
  if program is None:
    return None
  return "\n".join(line.rstrip() for line in program.splitlines() if line.strip())


def _code_rewards(cfg: ml_collections.ConfigDict):
  """(reward, batch_reward) for code: unit tests in the sandbox, a batch in parallel."""
  from score_jax.rewards import code  # pylint: disable=g-import-not-at-top
  code.detect_isolation()  # A host without a working sandbox fails now, not at step 1.
  timeout_s = float(cfg.get("timeout_s", 10.0))

  def reward(response: str, gold: str) -> float:
    program, tests = _program_and_tests(response, gold)
    return 0.0 if program is None else code.reward(program, tests, timeout_s)

  def batch_reward(responses: Sequence[str], golds: Sequence[str]) -> list[float]:
    pairs = [_program_and_tests(r, g) for r, g in zip(responses, golds)]
    runnable = [i for i, (program, _) in enumerate(pairs) if program is not None]
    results = code.execute_many([pairs[i][0] for i in runnable], [pairs[i][1] for i in runnable],
                                max_workers=_verify_threads(cfg), timeout_s=timeout_s)
    out = [0.0] * len(pairs)
    for i, result in zip(runnable, results):
      out[i] = 1.0 if result.passed else 0.0
    return out

  return reward, batch_reward


def make_mbpp(cfg: ml_collections.ConfigDict) -> Task:
  """MBPP for training (3-shot prompts); HumanEval (default) or an MBPP split for evaluation."""
  from score_jax.data import humaneval, mbpp, prompts  # pylint: disable=g-import-not-at-top
  from score_jax.rewards import code  # pylint: disable=g-import-not-at-top
  source_path = _require_path(cfg, "source_path", "the standard MBPP file mbpp.jsonl")
  data_dir = _data_dir(cfg, source_path)
  train_splits = [s.strip() for s in cfg.train_splits.split(",") if s.strip()]
  eval_set = cfg.eval_set
  eval_sets = ("humaneval",) + tuple(f"mbpp_{s}" for s in ("test", "validation", "train"))
  bad = [s for s in train_splits if s not in ("train", "validation", "test")]
  if bad or not train_splits:
    raise ValueError(f"task.train_splits={cfg.train_splits!r}: use a comma list of MBPP splits "
                     "from train, validation, test (the prompt split holds the exemplars).")
  if eval_set not in eval_sets:
    raise ValueError(f"task.eval_set={eval_set!r}: use one of {eval_sets}.")
  if eval_set.removeprefix("mbpp_") in train_splits:
    raise ValueError(f"task.eval_set={eval_set!r} is also in task.train_splits="
                     f"{cfg.train_splits!r}; evaluate on problems held out of training.")

  def mbpp_example(r: dict) -> Example:
    tests = "\n".join([r["test_setup_code"], *r["test_list"]]).strip() + "\n"
    return Example(id=f"mbpp/{r['task_id']}", prompt=prompts.mbpp_turn1(r["text"], r["test_list"]),
                   gold=code_gold(tests), solution=f"{r['code']}\n[DONE]")

  train = [mbpp_example(r) for s in train_splits
           for r in mbpp.load(source_path, data_dir, s)]
  if eval_set == "humaneval":
    path = cfg.get("humaneval_path") or humaneval.PACKAGED_PATH
    rows = _take(humaneval.load(_data_dir(cfg, path), path), cfg.num_eval)
    evals = [Example(id=r["task_id"], prompt=prompts.humaneval_turn1(r["prompt"]),
                     gold=code_gold(code.humaneval_tests(r), prefix=r["prompt"]),
                     solution=r["canonical_solution"]) for r in rows]
  else:
    evals = [mbpp_example(r) for r in _take(mbpp.load(source_path, data_dir,
                                                      eval_set.removeprefix("mbpp_")),
                                            cfg.num_eval)]
  reward, batch_reward = _code_rewards(cfg)
  return Task(name="mbpp", train=tuple(_take(train, cfg.num_train)), eval=tuple(evals),
              instruction=prompts.CODE_TURN2_INSTRUCTION, reward=reward, answer=program_answer,
              batch_reward=batch_reward)


# --- real problems: reasoning-gym, CHAMP ------------------------------------------------------


def _math_rewards(cfg: ml_collections.ConfigDict):
  """(reward, batch_reward) of the MATH verifier, a batch checked on threads over its pool."""
  from score_jax.rewards import math as math_reward  # pylint: disable=g-import-not-at-top
  workers = _verify_threads(cfg) or 2 * (os.cpu_count() or 1)

  def batch_reward(responses: Sequence[str], golds: Sequence[str]) -> list[float]:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      return list(pool.map(math_reward.reward, responses, golds))
  return math_reward.reward, batch_reward


def make_reasoning_gym(cfg: ml_collections.ConfigDict) -> Task:
  """A reasoning-gym data set (cfg.dataset, difficulty cfg.params), train / eval from two seeds.

  Prompts and verifier are MATH's (data/reasoning_gym_data.py); eval questions
  that also occur in train are skipped (counts logged). Config, e.g.:
    task=dict(name="reasoning_gym", dataset="chain_sum",
              params=dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2),
              train_seed=1, eval_seed=2, num_train=2000, num_eval=256, instruction="",
              turn1_instruction="math", num_validation=0)
  `params` are the data set's config fields (reasoning-gym's *Config dataclass).
  turn1_instruction: "math" (MATH's, the default), "" (the bare Problem/Solution
  format: shorter episodes for a warm-started base model) or any other text.
  num_validation (default 0): problems for eval.split="validation" (model selection before
  any test-set number), drawn from the train seed after the train problems.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  from score_jax.data import prompts, reasoning_gym_data  # pylint: disable=g-import-not-at-top
  from score_jax.rewards import math as math_reward  # pylint: disable=g-import-not-at-top
  params = cfg.get("params") or {}
  params = params.to_dict() if isinstance(params, ml_collections.ConfigDict) else dict(params)
  # Validation problems come from the train seed after the train problems (the train set does
  # not depend on num_validation); eval excludes both.
  num_val = cfg.get("num_validation", 0)
  drawn, evals, counts = reasoning_gym_data.make_splits(
      cfg.dataset, params, cfg.train_seed, cfg.eval_seed, cfg.num_train + num_val, cfg.num_eval)
  train, val = drawn[:cfg.num_train], drawn[cfg.num_train:]
  logging.info("reasoning-gym %s %s: %d train, %d validation, %d eval problems; %s", cfg.dataset,
               params, len(train), len(val), len(evals), counts)
  turn1 = cfg.get("turn1_instruction", "math")
  turn1 = prompts.MATH_TURN1_INSTRUCTION if turn1 == "math" else turn1
  to_example = lambda p: Example(id=p.id, prompt=prompts.math_turn1(p.question, turn1),
                                 gold=p.answer, solution=p.solution)
  by_id = {p.id: p for p in (*drawn, *evals)}

  def corrupt(example: Example, rng: np.random.Generator) -> str:
    return reasoning_gym_data.corrupt_solution(by_id[example.id], rng)

  reward, batch_reward = _math_rewards(cfg)
  return Task(name="reasoning_gym", train=tuple(map(to_example, train)),
              eval=tuple(map(to_example, evals)), instruction=prompts.MATH_TURN2_INSTRUCTION,
              reward=reward, answer=math_reward.extract_answer, corrupt=corrupt,
              batch_reward=batch_reward, validation=tuple(map(to_example, val)))


def make_champ(cfg: ml_collections.ConfigDict) -> Task:
  """CHAMP's 270 problems (data/champ.py): cfg.num_eval held out per category by cfg.split_seed.

  The rest is the train split (reference solutions: CHAMP's steps). CHAMP is
  small: mostly an evaluation set; num_eval=270 leaves no train problems, which
  make_task rejects, so keep some for train or evaluate it from another task.
  """
  from score_jax.data import champ, prompts  # pylint: disable=g-import-not-at-top
  from score_jax.rewards import math as math_reward  # pylint: disable=g-import-not-at-top
  problems = champ.load_problems(cfg.get("source_path") or None)
  train, evals = champ.split(problems, cfg.num_eval, cfg.get("split_seed", 0))
  to_example = lambda p: Example(id=p.id, prompt=prompts.math_turn1(p.question), gold=p.gold,
                                 solution=p.solution)
  reward, batch_reward = _math_rewards(cfg)
  return Task(name="champ", train=tuple(map(to_example, _take(train, cfg.get("num_train", 0)))),
              eval=tuple(map(to_example, evals)), instruction=prompts.MATH_TURN2_INSTRUCTION,
              reward=reward, answer=math_reward.extract_answer, batch_reward=batch_reward)


TASKS = {"synthetic": make_synthetic, "missing_operand": make_missing_operand, "math": make_math,
         "mbpp": make_mbpp, "reasoning_gym": make_reasoning_gym, "champ": make_champ}


def make_task(cfg: ml_collections.ConfigDict) -> Task:
  """The task named by cfg.name; a non-empty cfg.instruction replaces its turn-2 instruction."""
  if cfg.name not in TASKS:
    raise ValueError(f"unknown task {cfg.name!r}; known tasks: {sorted(TASKS)}.")
  task = TASKS[cfg.name](cfg)
  if not task.train or not task.eval:
    raise ValueError(f"task {cfg.name!r} has {len(task.train)} train and {len(task.eval)} eval "
                     "problems; both must be non-empty (check the data paths and num_* limits).")
  if cfg.get("instruction"):
    task = dataclasses.replace(task, instruction=cfg.instruction)
  return task


def batch_prompts(prompt_ids: Sequence[Sequence[int]], pad_id: int, multiple: int = 64
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Left-aligned int32 [N, W] prompt ids and lengths [N]; W = longest, rounded up to `multiple`.

  The rollout and the train step compile once per W: rounding keeps a run whose
  problems differ in length from recompiling at every step.
  """
  lengths = np.array([len(p) for p in prompt_ids], np.int32)
  width = -(-int(lengths.max()) // multiple) * multiple
  out = np.full((len(prompt_ids), width), pad_id, np.int32)
  for i, ids in enumerate(prompt_ids):
    out[i, :len(ids)] = ids
  return out, lengths
