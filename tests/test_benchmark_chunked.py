"""Smoke test: the chunked-logits memory benchmark runs end to end (--quick)."""

import json

import pytest

from benchmarks import chunked_logprobs


def test_quick_run_chunking_cuts_memory_and_keeps_the_loss(tmp_path, capsys):
  out = tmp_path / "chunked.json"
  rows = chunked_logprobs.main(["--quick", "--out", str(out)])
  assert json.loads(out.read_text()) == json.loads(json.dumps(rows))
  full, chunked = rows
  assert (full["logits_chunk"], chunked["logits_chunk"]) == (0, 8)
  # Same step, same numbers: the second step's loss agrees to fp32 tolerance.
  assert chunked["loss"] == pytest.approx(full["loss"], rel=1e-5)
  # [4, 32, 4096] fp32 logits are 2 MiB per copy; blocks of 8 positions need far fewer bytes.
  assert chunked["temp_bytes"] < 0.6 * full["temp_bytes"]
  assert chunked["arg_bytes"] == full["arg_bytes"]
  assert all(r["step_s"] > 0 for r in rows)
  assert "| quick | 4 x 32 | 8 | no |" in capsys.readouterr().out
