"""Smoke test: the sampler benchmark runs end to end on the tiny config (--quick)."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from benchmarks import sampler  # noqa: E402


def test_quick_run_measures_every_system_and_tokens_agree(tmp_path, capsys):
  out = tmp_path / "sampler.json"
  results = sampler.main(["--quick", "--out", str(out)])
  assert json.loads(out.read_text()) == json.loads(json.dumps(results))
  (case,) = results["configs"]["tiny"]["cases"]
  assert case["batch"] == 2 and case["new_tokens"] == 8 and case["prompt_len"] == 16
  for system in ("ours", "hf_dynamic_t1"):
    rates = case["systems"][system]
    assert set(rates) == {"generate_tok_s", "prefill_tok_s", "decode_tok_s"}
    assert all(rate > 0 for rate in rates.values())
  assert case["systems"]["naive"]["generate_tok_s"] > 0
  # fp32 greedy decoding of the same weights: all three systems emit the same tokens.
  for check in case["tokens"].values():
    assert check == {"rows_equal": 2, "rows": 2, "first_mismatch_step": None}
  assert "| tiny | 2 |" in capsys.readouterr().out


def test_bad_flags_name_the_problem():
  with pytest.raises(SystemExit):
    sampler.parse_args(["--configs", "tiny,huge"])
  with pytest.raises(SystemExit):
    sampler.parse_args(["--hf_cache", "paged"])
  args = sampler.parse_args(["--prompt_len", "24", "--batches", "1", "--configs", "tiny"])
  with pytest.raises(ValueError, match="not a sampler bucket"):
    sampler.bench_case(sampler.CONFIGS["tiny"](), None, None, 1, args)
