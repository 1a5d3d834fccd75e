"""configs/math_gemma.py and configs/mbpp_gemma.py end to end: tiny checkpoint, fixture data.

Each run loads a tiny Gemma 2 checkpoint written in the transformers format (the
configs' preset stays gemma2-2b: the checkpoint defines the architecture), reads
fixture files through the tfds builders, trains one Stage I and one Stage II
step with the verifier inside the loop, evaluates, and exports the policy.
"""

import dataclasses
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import math_gemma, mbpp_gemma
from score_jax import model, pipeline, tasks, tokenizer as tokenizer_lib, train
from score_jax.model import checkpoints
from score_jax.rewards import code, math as math_reward
from tests.data.test_math_dataset import write_jsonl
from tests.data.test_mbpp import task as mbpp_task, write_mbpp
from tests.utils import random_params

_TINY = dict(d_model=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16, ffw_hidden=64,
             query_pre_attn_scalar=16.0)


def _math_files(root):
  """5 train problems, 3 test problems of which 2 are MATH500 (held out)."""
  row = lambda i, answer: {"problem": f"What is ${i} - {i - answer}$?", "level": "Level 1",
                           "type": "Algebra", "solution": f"It is $\\boxed{{{answer}}}$."}
  root.mkdir()
  write_jsonl(root / "train.jsonl", [row(i, i % 3) for i in range(5, 10)])
  test = [dict(row(i, i % 4), unique_id=f"test/algebra/{i}.json") for i in range(20, 23)]
  write_jsonl(root / "test.jsonl", test)
  math500 = [{"problem": r["problem"], "answer": str(i % 4), "subject": "Algebra",
              "unique_id": r["unique_id"]}
             for i, r in zip(range(20, 22), test)]
  return root, write_jsonl(root / "math500.jsonl", math500)


def _mbpp_file(path):
  """Every split non-empty (tfds needs it); train = tasks 601-604 (def f(): return id)."""
  return write_mbpp(path, [mbpp_task(i) for i in (1, 11, 511, 601, 602, 603, 604)])


def _tiny_config(config, tmp_path):
  """The real config with a tiny transformers checkpoint + tokenizer, one step per stage."""
  task = tasks.make_task(config.task)
  tok = tokenizer_lib.train_tokenizer(
      [ex.prompt for ex in task.train + task.eval] + [task.instruction] * 20, vocab_size=400)
  tok.save(str(tmp_path / "tokenizer.model"))
  model_config = model.get_config("tiny", vocab_size=tok.vocab_size, **_TINY)
  checkpoints.save_hf(model_config, random_params(model_config, seed=0), str(tmp_path / "ckpt"))
  config.model.checkpoint = str(tmp_path / "ckpt")
  config.model.remat = False
  config.tokenizer.path = str(tmp_path / "tokenizer.model")
  config.rl.update(stage_schedule="stage1:1,stage2:1", prompts_per_step=4, samples_per_prompt=2,
                   max_new_tokens=6, rollout_micro_batch=4, micro_batches=1)
  config.eval.batch_size = 2
  config.checkpoint.every = 1
  return config, model_config


def _rl_records(workdir):
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  return [r for r in records if "rl/loss" in r]


def _assert_export_is_the_trained_policy(workdir, model_config):
  steps = sorted(int(d) for d in os.listdir(workdir / "rl") if d.isdigit())
  trained = ocp.StandardCheckpointer().restore(str(workdir / "rl" / str(steps[-1]) / "state"))
  exported_config, exported = checkpoints.load_hf(str(workdir / "export" / "hf"))
  assert exported_config == model_config
  jax.tree.map(np.testing.assert_array_equal, exported, jax.device_get(trained["params"]))
  assert (workdir / "export" / "hf" / "tokenizer.model").read_bytes() == (
      workdir.parent / "tokenizer.model").read_bytes()


def test_math_config_end_to_end(tmp_path, monkeypatch):
  source, math500 = _math_files(tmp_path / "MATH")
  config = math_gemma.get_config()
  config.task.update(source_dir=str(source), math500_path=str(math500),
                     data_dir=str(tmp_path / "tfds"))
  config, model_config = _tiny_config(config, tmp_path)
  checked = []  # (response, gold) pairs the loop's batch verifier scored.
  real_reward = math_reward.reward
  monkeypatch.setattr(math_reward, "reward",
                      lambda r, g: checked.append((r, g)) or real_reward(r, g))
  workdir = tmp_path / "run"
  results = pipeline.train_and_evaluate(config, str(workdir))

  assert set(results) == {"base", "score"}
  assert all(len(r["texts"][0]) == 2 for r in results.values())  # MATH500 fixture: 2 problems.
  rl = _rl_records(workdir)
  assert [r["rl/stage"] for r in rl] == ["stage1", "stage2"]
  assert all(r["rl/time_verify"] > 0 for r in rl)
  # steps x attempts x episodes through the batch path, then eval (base, score) x 2 x 2.
  assert len(checked) == 2 * 2 * 8 + 2 * 2 * 2
  golds = {g for _, g in checked}
  assert golds <= {"0", "1", "2"}  # training golds only: MATH500 stays held out.
  _assert_export_is_the_trained_policy(workdir, model_config)


def test_mbpp_config_end_to_end_runs_programs_in_the_sandbox(tmp_path, monkeypatch):
  config = mbpp_gemma.get_config()
  config.task.update(source_path=str(_mbpp_file(tmp_path / "mbpp.jsonl")), train_splits="train",
                     num_eval=2, data_dir=str(tmp_path / "tfds"), timeout_s=5.0)
  config, model_config = _tiny_config(config, tmp_path)
  batches = []  # each sandbox batch the training loop ran: (programs, results).
  real_execute_many = code.execute_many

  def spy(programs, tests_list, **kwargs):
    results = real_execute_many(programs, tests_list, **kwargs)
    batches.append((list(programs), results))
    return results

  monkeypatch.setattr(code, "execute_many", spy)
  workdir = tmp_path / "run"
  results = pipeline.train_and_evaluate(config, str(workdir))

  assert set(results) == {"base", "score"}
  assert [len(r["texts"][0]) for r in results.values()] == [2, 2]  # HumanEval/0, HumanEval/1
  rl = _rl_records(workdir)
  assert [r["rl/stage"] for r in rl] == ["stage1", "stage2"]
  assert len(batches) == 2  # one parallel sandbox batch per RL step
  for programs, outcomes in batches:
    assert 0 < len(programs) <= 2 * 8 and len(outcomes) == len(programs)
    assert {o.status for o in outcomes} <= set(code.sandbox.STATUSES)
  _assert_export_is_the_trained_policy(workdir, model_config)

  # The same reward path scores a correct program 1 and a wrong one 0.
  task = tasks.make_task(config.task)
  gold = task.train[0].gold  # task 601: def f(): return 601
  responses = ["def f():\n  return 601\n[DONE]\nmore text", "```python\ndef f():\n  return 601\n```",
               "def f():\n  return 600\n[DONE]", "no code at all ```"]
  assert task.rewards(responses, [gold] * 4).tolist() == [1.0, 1.0, 0.0, 0.0]
  assert task.reward(task.eval[0].solution, task.eval[0].gold) == 1.0  # HumanEval canonical


def test_missing_paths_are_named(tmp_path):
  config = math_gemma.get_config()
  with pytest.raises(ValueError, match="task.source_dir is empty"):
    train.setup(config, str(tmp_path))
  config = mbpp_gemma.get_config()
  config.task.source_path = str(_mbpp_file(tmp_path / "mbpp.jsonl"))
  config.task.data_dir = str(tmp_path / "tfds")
  with pytest.raises(ValueError, match="tokenizer.path is empty"):
    config.model.checkpoint = str(tmp_path / "ckpt")
    train.setup(config, str(tmp_path))
  config.tokenizer.path = str(tmp_path / "missing.model")
  with pytest.raises(FileNotFoundError, match="missing.model"):
    train.setup(config, str(tmp_path))
  config.model.checkpoint = ""
  config.tokenizer.path = ""
  with pytest.raises(ValueError, match="model.checkpoint is empty"):
    train.setup(config, str(tmp_path))
  config.task.eval_set = "mbpp_train"
  with pytest.raises(ValueError, match="held out of training"):
    train.setup(config, str(tmp_path))


@pytest.mark.parametrize("response,program", [
    ("def f():\n  return 1\n[DONE]\n[BEGIN]\nignored", "def f():\n  return 1\n"),
    ("[BEGIN]\nx = 1\n[DONE]", "\nx = 1\n"),
    ("Here:\n```python\nx = 0\n```\nFixed:\n```python\nx = 1\n```\nDone.", "x = 1\n"),
    ("```py\nx = 2\n", "x = 2\n"),  # truncated inside an unclosed fence
    ("  \n[DONE] x = 3", None),
    ("```", None),
])
def test_extract_program(response, program):
  assert tasks.extract_program(response) == program


def test_batch_prompts_rounds_the_width_so_steps_share_one_compilation():
  prompts, lengths = tasks.batch_prompts([[5, 6, 7], [8]], pad_id=0, multiple=4)
  np.testing.assert_array_equal(prompts, [[5, 6, 7, 0], [8, 0, 0, 0]])
  np.testing.assert_array_equal(lengths, [3, 1])
  assert tasks.batch_prompts([[1] * 65], pad_id=0)[0].shape == (1, 128)


def test_load_base_model_reads_both_formats_and_refuses_a_mismatched_architecture(tmp_path):
  from score_jax.model import gemma_flax  # pylint: disable=g-import-not-at-top
  tok = tokenizer_lib.train_tokenizer(["a tiny corpus of words"] * 5, vocab_size=300)
  model_config = model.get_config("tiny", vocab_size=tok.vocab_size, **_TINY)
  params = jax.device_get(random_params(model_config, seed=1))
  checkpoints.save_hf(model_config, params, str(tmp_path / "hf"))
  gemma_flax.save_gemma_flax(model_config, params, tmp_path / "flax")
  config = math_gemma.get_config()
  config.model.update(checkpoint=str(tmp_path / "hf"), remat=True)
  loaded_config, loaded = train.load_base_model(config, tok)
  assert loaded_config == dataclasses.replace(model_config, remat=True)  # remat: from config
  jax.tree.map(np.testing.assert_array_equal, loaded, params)

  config.model.update(checkpoint=str(tmp_path / "flax"), checkpoint_format="gemma_flax",
                      preset="tiny", vocab_size=tok.vocab_size, **_TINY)
  loaded_config, loaded = train.load_base_model(config, tok)
  assert loaded_config == dataclasses.replace(model_config, remat=True)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)

  config.model.update(checkpoint=str(tmp_path / "hf"), checkpoint_format="hf", d_model=64)
  with pytest.raises(ValueError, match=r"disagrees with .*d_model \(config 64, checkpoint 32\)"):
    train.load_base_model(config, tok)
  config.model.update(checkpoint_format="safetensors")
  with pytest.raises(ValueError, match="checkpoint_format='safetensors'"):
    train.load_base_model(config, tok)


def test_gemma3_270m_config_end_to_end_on_a_tiny_gguf(tmp_path):
  """configs/gemma3_270m_arith.py with model.checkpoint = a tiny Gemma 3 GGUF (model + vocab)."""
  pytest.importorskip("gguf")
  pytest.importorskip("reasoning_gym")
  from configs import gemma3_270m_arith  # pylint: disable=g-import-not-at-top
  from score_jax.model import gguf as gguf_lib  # pylint: disable=g-import-not-at-top
  config = gemma3_270m_arith.get_config()
  config.task.update(num_train=8, num_validation=3, num_eval=2)
  task = tasks.make_task(config.task)
  tok = tokenizer_lib.train_tokenizer(
      [ex.prompt for ex in task.train + task.eval] + [task.instruction] * 20, vocab_size=400)
  model_config = model.get_config("tiny-gemma3", vocab_size=tok.vocab_size, **_TINY)
  gguf_lib.save_gguf(model_config, random_params(model_config, seed=0), tmp_path / "tiny.gguf",
                     tokenizer=tok)
  config.model.update(checkpoint=str(tmp_path / "tiny.gguf"), remat=False)
  config.warmstart.update(steps=1, batch_size=8, seq_len=512)  # a 400-piece vocabulary.
  config.rl.update(stage_schedule="stage1:1,stage2:1", prompts_per_step=4, samples_per_prompt=2,
                   max_new_tokens=6, rollout_micro_batch=4, micro_batches=1)
  config.eval.batch_size = 2
  workdir = tmp_path / "run"
  results = pipeline.train_and_evaluate(config, str(workdir))
  assert set(results) == {"base", "score"}
  assert (workdir / "warmstart").is_dir()  # the warm-start ran on the GGUF's params.
  assert [r["rl/stage"] for r in _rl_records(workdir)] == ["stage1", "stage2"]
  exported_config, _ = checkpoints.load_hf(str(workdir / "export" / "hf"))
  assert exported_config == model_config
  # The pre-RL regime check reuses the finished warm-start and measures on validation only.
  from score_jax.experiments import regime  # pylint: disable=g-import-not-at-top
  check = regime.check(config, str(workdir), repeats=1)
  assert check["criteria"] == {"greedy_acc_t1": (0.3, 0.6), "sampled_changed_answer_rate": (0.05, 1.0)}
  assert check["problems"] == 3 and set(check["met"]) == set(check["criteria"])
  assert check["sampled"]["episodes"] == 3.0 and (workdir / "regime_check.json").is_file()
  assert all(0.0 <= v <= 1.0 for v in check["values"].values() if v == v)  # nan: none changed.
