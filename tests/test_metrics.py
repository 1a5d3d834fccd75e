"""The console (compact lines, bars on terminals only, verbose lines); metrics.jsonl on resume."""

import io
import json
import re

from score_jax import console, metrics as metrics_lib

RL_METRICS = {"acc_t1": 0.3125, "acc_t2": 0.375, "delta": 0.0625, "delta_i_to_c": 0.125,
              "changed_answer_rate": 0.1875, "kl_1": 0.00123, "kl_2": 0.0456, "loss": -0.5,
              "grad_norm": 2.0, "stage": "stage1"}


class Terminal(io.StringIO):
  def isatty(self):
    return True


def _writer(tmp_path, stream, **kw):
  return metrics_lib.MetricWriter(str(tmp_path), tensorboard=False, stream=stream, **kw)


def test_summary_line_from_a_known_metrics_dict():
  line = console.summary_line("RL stage1", 12, 20, RL_METRICS, seconds_per_step=2.104)
  assert line == ("RL stage1 12/20 | acc@t1 0.312 acc@t2 0.375 Δ +0.062 changed 0.188 "
                  "KL1 0.00123 KL2 0.0456 loss -0.5 | 2.10 s/step")
  # warm-start: only its loss; no total known and no timing yet.
  assert console.summary_line("warmstart", 50, None, {"loss": 1.23456, "grad_norm": 3.0}) == (
      "warmstart 50 | loss 1.235")


def test_not_a_terminal_prints_plain_lines_every_log_every_steps_and_no_bar(tmp_path):
  out = io.StringIO()
  writer = _writer(tmp_path, out, every=2)
  bar = writer.progress("RL stage1", 5, 0, offset=10)  # run steps 11..15 are this bar's 1..5
  for step in range(11, 16):
    writer.write(step, RL_METRICS, prefix="rl/")
  bar.close()
  writer.close()
  lines = out.getvalue().splitlines()
  assert [line.split(" | ")[0] for line in lines] == [
      "RL stage1 2/5", "RL stage1 4/5", "RL stage1 5/5"]  # every 2 steps and the last
  assert all(re.fullmatch(r".* \| \d+\.\d\d s/step", line) for line in lines)
  assert "\r" not in out.getvalue() and "%|" not in out.getvalue()  # tqdm's bar


def test_a_terminal_gets_a_bar_with_the_lines_above_it(tmp_path):
  out = Terminal()
  writer = _writer(tmp_path, out, every=2)
  bar = writer.progress("warm-start", 4)
  for step in range(1, 5):
    writer.write(step, {"loss": 1.5}, prefix="warmstart/")
  bar.close()
  text = out.getvalue()
  assert "\r" in text and "4/4" in text and "%|" in text  # a tqdm bar, step / total
  assert "warm-start 2/4 | loss 1.5 |" in text and "warm-start 4/4 | loss 1.5 |" in text
  assert "[step" not in text


def test_verbose_restores_the_full_line(tmp_path):
  out = io.StringIO()
  writer = _writer(tmp_path, out, every=100, verbose=True)
  writer.write(3, {"loss": 0.25, "kl_1": 1e-5, "stage": "stage1"}, prefix="rl/")
  assert out.getvalue() == "[step 3] rl/loss=0.25 rl/kl_1=1e-05 rl/stage=stage1\n"


def test_resume_drops_the_records_past_the_resumed_step(tmp_path):
  writer = _writer(tmp_path, io.StringIO())
  writer.write(800, {"loss": 1.0}, prefix="warmstart/")  # another phase: kept as it is
  for step in range(1, 11):
    writer.write(step, {"loss": float(step)}, prefix="rl/")
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 11, "rl/lo')  # the write the kill cut short
  resumed = _writer(tmp_path, io.StringIO())
  resumed.drop_after("rl/", 6)  # the checkpoint the run resumed from
  for step in (7, 8):
    resumed.write(step, {"loss": 10.0 * step}, prefix="rl/")
  resumed.close()
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  rl = [(r["step"], r["rl/loss"]) for r in records if "rl/loss" in r]
  assert rl == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0), (6, 6.0), (7, 70.0),
                (8, 80.0)]
  assert [r["warmstart/loss"] for r in records if "warmstart/loss" in r] == [1.0]
