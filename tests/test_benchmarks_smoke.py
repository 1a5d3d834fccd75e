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


# --- train-step MFU, FLOP count, SCoRe step breakdown (no torch needed) ------------------------

from benchmarks import flops, score_step, train_step as train_step_bench  # noqa: E402


@pytest.mark.parametrize("remat,length,chunk", [(False, 33, 8), (True, 32, 8), (False, 32, 0)])
def test_analytic_flops_equal_the_traced_matmuls(remat, length, chunk):
  """Oracle: every dot_general JAX traces for the step's loss and its gradient."""
  import jax
  import jax.numpy as jnp
  from score_jax import model, train_step
  config = model.get_config("tiny", remat=remat)
  params = jax.eval_shape(lambda key: model.init_params(config, key), jax.random.key(0))
  tokens = jax.ShapeDtypeStruct((4, length), jnp.int32)
  mask = jax.ShapeDtypeStruct((2, 4, length), jnp.float32)

  def loss(p, ref, t, m):
    terms = train_step.episode_terms(config, p, ref, t, m, "exact", chunk)
    return jnp.sum(terms["seq_logprob"]) + jnp.sum(terms["kl"])

  count = flops.rl_step_flops(config, 4, length, chunk)
  forward = flops.jaxpr_matmul_flops(jax.make_jaxpr(loss)(params, params, tokens, mask))
  grad = flops.jaxpr_matmul_flops(jax.make_jaxpr(jax.grad(loss))(params, params, tokens, mask))
  # Logits over L - 1 useful positions; the last block's padding (or, unchunked, the
  # last position) is computed too.
  exact = chunk and (length - 1) % chunk == 0
  assert forward == pytest.approx(2 * (count.body_forward + count.logits_forward),
                                  rel=1e-9 if exact else 0.05)
  assert grad == count.hardware
  assert count.model < count.hardware  # remat and padding are extra work.
  if chunk == 0 and not remat:  # nothing rematerialised: only the last position's logits.
    assert count.hardware - count.model == pytest.approx(4 * count.logits_forward / (length - 1))


def test_train_step_quick_reports_mfu_without_recompiles(capsys):
  (row,) = train_step_bench.main(["--quick"])
  assert row["config"] == "tiny" and (row["episodes"], row["length"]) == (4, 32)
  assert row["recompiles"] == 0  # the timed steps reuse one executable.
  assert 0 < row["mfu"] <= row["hfu"] and row["peak_flops_s"] > 0
  assert row["model_flops"] == flops.rl_step_flops(
      train_step_bench.CONFIGS["tiny"](), 4, 32, 128).model
  assert len(row["times_s"]["step"]) == 2
  assert "| tiny | float32 | row_major | 0.1M | 4 x 32 |" in capsys.readouterr().out


def test_train_step_backward_ab_swaps_the_models_bf16_backward_while_tracing():
  import jax
  import jax.numpy as jnp
  from score_jax.model import contract, forward_hidden, init_params
  config = train_step_bench.CONFIGS["tiny"](dtype="bfloat16")
  params = init_params(config, jax.random.key(0))
  tokens_bt = jnp.ones((2, 8), jnp.int32)
  positions_bt = jnp.broadcast_to(jnp.arange(8), (2, 8))
  loss = lambda p: forward_hidden(config, p, tokens_bt, positions_bt)[0].astype(
      jnp.float32).sum()
  barriers = {}
  for kind in ("row_major", "autodiff"):
    with train_step_bench.backward_of(kind):
      hlo = jax.jit(jax.grad(loss)).lower(params).as_text()
    barriers[kind] = hlo.count("optimization_barrier")
  # The model's VJP forces each transposed operand through a barrier; jnp.einsum's has none.
  assert barriers["row_major"] > 0 and barriers["autodiff"] == 0, barriers
  assert contract.einsum.__module__ == contract.__name__  # the patch is undone afterwards
  rows = train_step_bench.main(["--quick", "--dtypes", "bfloat16",
                                "--backwards", "row_major,autodiff"])
  assert [r["backward"] for r in rows] == ["row_major", "autodiff"]
  assert rows[0]["loss"] == rows[1]["loss"]  # the same forward: only the backward differs
  with pytest.raises(SystemExit):
    train_step_bench.parse_args(["--backwards", "autodiff"])  # fp32 only: nothing to compare


def test_score_step_quick_times_every_phase_on_both_meshes(tmp_path):
  result = score_step.main(["--quick", "--out", str(tmp_path / "s.json")])
  assert list(result["median_s"]) == ["1 device", "8 devices (8, 1, 1)"]
  for med in result["median_s"].values():
    assert all(med[k] >= 0 for k in score_step.PHASES) and med["update"] > 0
    assert med["step"] == pytest.approx(sum(med[k] for k in score_step.PHASES[:4]))
    assert med["tokens"] > 0
  assert set(result["ratio_8_to_1"]) == {*score_step.PHASES, "step"}
  # Same problems and keys on both meshes: the same episodes are sampled (mean lengths).
  for step in range(len(result["times_s"]["1 device"])):
    lengths = [times[step]["tokens"] for times in result["times_s"].values()]
    assert lengths[0] == lengths[1]


def test_benchmark_flags_name_the_problem():
  with pytest.raises(SystemExit):
    train_step_bench.parse_args(["--configs", "tiny,huge"])
  with pytest.raises(SystemExit):
    train_step_bench.parse_args(["--shape", "8by128"])
  with pytest.raises(SystemExit):
    score_step.parse_args(["--mesh", "4,1,1"])
  with pytest.raises(SystemExit):
    score_step.parse_args(["--prompts", "6", "--mesh", "4,2,1"])


def test_dots_quick_measures_every_variant(capsys):
  from benchmarks import dots  # pylint: disable=import-outside-toplevel
  pytest.importorskip("torch")
  (row,) = dots.main(["--quick"])
  assert set(dots.VARIANTS) <= set(row) and all(row[k] > 0 for k in dots.VARIANTS)
  assert "| x.w 64x32x128 |" in capsys.readouterr().out
  # FLOPs by hand: 2 * M * K * N for x.w, and for the backward's g.wT (M, N) x (K, N).
  assert dots.flop_count("mk,kn->mn", (64, 32), (32, 128)) == 2 * 64 * 32 * 128
  assert dots.flop_count("mn,kn->mk", (8, 5), (3, 5)) == 2 * 8 * 5 * 3
