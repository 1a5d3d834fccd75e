"""The run end to end on a miniature config: outputs, resume after SIGTERM, config errors."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import demo
from score_jax import pipeline, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A miniature of configs/demo.py: seconds, not minutes.
OVERRIDES = {
    "model.d_model": 32, "model.num_layers": 2, "model.num_heads": 2, "model.num_kv_heads": 1,
    "model.head_dim": 16, "model.ffw_hidden": 64, "model.query_pre_attn_scalar": 16.0,
    "tokenizer.vocab_size": 330, "tokenizer.corpus_size": 200, "task.num_train": 400,
    "task.num_eval": 8, "warmstart.steps": 4, "warmstart.batch_size": 8,
    "warmstart.log_every": 2, "warmstart.seq_len": 256, "rl.stage_schedule": "stage1:2,stage2:3",
    "rl.prompts_per_step": 4, "rl.samples_per_prompt": 2, "rl.max_new_tokens": 12,
    "rl.rollout_micro_batch": 4, "checkpoint.every": 1, "eval.batch_size": 8,
    "mesh_shape": (2, 2, 2),
}


def small_config():
  config = demo.get_config()
  for key, value in OVERRIDES.items():
    node = config
    *path, leaf = key.split(".")
    for part in path:
      node = node[part]
    node[leaf] = value
  return config


def _cli_args(workdir):
  args = [sys.executable, "-m", "score_jax.main", "--config=configs/demo.py",
          f"--workdir={workdir}"]
  for key, value in OVERRIDES.items():
    value = ",".join(map(str, value)) if isinstance(value, tuple) else value
    args.append(f"--config.{key}={value}")
  return args


def _final_params(workdir):
  import orbax.checkpoint as ocp
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "rl")) if d.isdigit())
  path = os.path.join(workdir, "rl", str(steps[-1]), "state")
  return steps[-1], ocp.StandardCheckpointer().restore(path)["params"]


def test_end_to_end_outputs(tmp_path, capsys):
  results = pipeline.train_and_evaluate(small_config(), str(tmp_path))
  # The last line says where the wall time went, phase by phase, adding up to the total.
  last = capsys.readouterr().out.strip().splitlines()[-1]
  total, phases = re.fullmatch(r"wall time (\d+) s \((.*)\); results in .*", last).groups()
  seconds = dict(re.fullmatch(r"(.+) (\d+) s", p).groups() for p in phases.split(", "))
  assert list(seconds) == ["setup", "warm-start", "evaluation", "RL", "export"]
  assert abs(sum(int(s) for s in seconds.values()) - int(total)) <= len(seconds)
  assert set(results) == {"base", "score"}
  assert results["score"]["checkpoint"] == {"rule": "final", "step": 5}
  saved = json.load(open(tmp_path / "eval" / "eval.json"))
  assert saved["score"]["checkpoint"]["step"] == 5  # eval.json names the evaluated step.
  for r in results.values():
    assert set(evaluation_keys := ("acc_t1", "acc_t2", "delta", "delta_i_to_c",
                                   "delta_c_to_i", "changed_answer_rate")) <= set(r["metrics"])
    assert len(r["texts"][0]) == 8
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  rl = [r for r in records if "rl/loss" in r]
  assert [r["step"] for r in rl] == [1, 2, 3, 4, 5]
  assert [r["rl/stage"] for r in rl] == ["stage1"] * 2 + ["stage2"] * 3
  assert rl[0]["rl/kl_1"] == pytest.approx(0.0, abs=1e-6)  # pi_theta == pi_ref at step 0
  assert os.listdir(tmp_path / "tensorboard")
  assert (tmp_path / "eval" / "eval.png").exists() and (tmp_path / "tokenizer.model").exists()


def test_sigterm_mid_run_then_resume_equals_uninterrupted(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  straight = tmp_path / "straight"
  subprocess.run(_cli_args(straight), cwd=REPO, env=env, check=True, capture_output=True)
  interrupted = tmp_path / "interrupted"
  proc = subprocess.Popen(_cli_args(interrupted), cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  metrics = interrupted / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and '"rl/loss"' in metrics.read_text():
      proc.send_signal(signal.SIGTERM)  # preemption during RL step 2 or later
      break
    time.sleep(0.05)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode != 0 and "preempted during RL" in out, out[-2000:]
  assert "Rerun the same command to resume" in out
  saved_steps = sorted(int(d) for d in os.listdir(interrupted / "rl") if d.isdigit())
  assert saved_steps and saved_steps[-1] < 5
  resumed = subprocess.run(_cli_args(interrupted), cwd=REPO, env=env, capture_output=True,
                           text=True)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  step_a, params_a = _final_params(straight)
  step_b, params_b = _final_params(interrupted)
  assert step_a == step_b == 5
  import jax
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)  # bitwise


def test_unknown_config_key_is_named(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "score_jax.main", "--config=configs/demo.py",
                         f"--workdir={tmp_path}", "--config.rl.learning_rat=1e-4"], cwd=REPO,
                        capture_output=True, text=True)
  assert proc.returncode != 0
  assert "learning_rat" in proc.stderr


def test_bad_schedule_is_a_clear_error():
  with pytest.raises(ValueError, match="bad stage_schedule entry 'stage3:10'"):
    train.parse_schedule("stage1:10,stage3:10")
  assert train.parse_schedule("stage1:2, stage2:3,stage1:1") == [
      ("stage1", 2), ("stage2", 3), ("stage1", 1)]


def test_instruction_override():
  from score_jax import tasks
  config = small_config()
  assert tasks.make_task(config.task).instruction.startswith("There might be an error")
  config.task.instruction = "Please check again."
  assert tasks.make_task(config.task).instruction == "Please check again."


def test_evaluation_n_attempt_curve_and_compute_scaling(tmp_path):
  config = small_config()
  config.mesh_shape = (-1, 1, 1)
  config.eval.num_attempts = 3
  config.eval.scaling_budgets = (2, 4)
  run = train.setup(config, str(tmp_path))
  from score_jax import eval as evaluation, model
  params = model.init_params(run.model_config, jax.random.key(0))
  result = train.evaluate_params(run, params)
  assert np.asarray(result["correct"]).shape == (3, config.task.num_eval)  # 3 greedy attempts
  scaling = result["scaling"]
  assert scaling["budgets"] == [2, 4]
  assert all(0.0 <= v <= 1.0 for v in scaling["parallel"] + scaling["self_correct"])
  evaluation.write_report({"base": result}, str(tmp_path / "eval"))
  assert (tmp_path / "eval" / "eval.png").stat().st_size > 0


def test_update_width_is_the_longest_episode_rounded_up_within_the_buffer():
  assert train.trimmed_width(97, 194) == 128
  assert train.trimmed_width(128, 194) == 128
  assert train.trimmed_width(129, 194) == 160
  assert train.trimmed_width(190, 194) == 192
  assert train.trimmed_width(193, 194) == 194  # never wider than the rollout's buffer.
  assert train.trimmed_width(5, 194, multiple=8) == 8


def test_ctrl_c_outside_a_phase_says_that_rerunning_resumes(tmp_path, monkeypatch, capsys):
  from absl import flags
  from score_jax import main as main_lib, multihost

  def interrupted(config, workdir):
    raise KeyboardInterrupt  # e.g. Ctrl-C during evaluation, where no checkpointer listens

  monkeypatch.setattr(pipeline, "train_and_evaluate", interrupted)
  monkeypatch.setattr(multihost, "initialize", lambda *args: None)
  flags.FLAGS(["main", "--config=configs/demo.py", f"--workdir={tmp_path}"])
  try:
    with pytest.raises(SystemExit) as stop:
      main_lib.main(["main"])
  finally:
    flags.FLAGS.unparse_flags()
  assert stop.value.code == 130
  assert "rerun the same command to resume" in capsys.readouterr().err
