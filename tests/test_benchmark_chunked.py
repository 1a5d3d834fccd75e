"""Smoke test: the chunked-logits memory benchmark runs end to end (--quick)."""

import json

import pytest

from benchmarks import chunked_logprobs


def test_quick_run_chunking_cuts_memory_and_keeps_the_loss(tmp_path, capsys):
  out = tmp_path / "chunked.json"
  rows = chunked_logprobs.main(["--quick", "--out", str(out)])
  assert json.loads(out.read_text()) == json.loads(json.dumps(rows))
  full, chunked, indexed = rows
  assert (full["logits_chunk"], chunked["logits_chunk"], indexed["logits_chunk"]) == (0, 8, 8)
  assert [r["target_index"] for r in rows] == [False, False, True]
  # Same step, same numbers: the second step's loss agrees to fp32 tolerance, also when only
  # the trained half of the positions is projected.
  assert chunked["loss"] == pytest.approx(full["loss"], rel=1e-5)
  assert indexed["loss"] == pytest.approx(full["loss"], rel=1e-5)
  # [4, 32, 4096] fp32 logits are 2 MiB per copy; blocks of 8 positions need far fewer bytes.
  assert chunked["temp_bytes"] < 0.6 * full["temp_bytes"]
  assert chunked["arg_bytes"] == full["arg_bytes"]
  assert all(r["step_s"] > 0 for r in rows)
  assert "| quick | 4 x 32 | 0.5 | 8 | no | yes |" in capsys.readouterr().out
