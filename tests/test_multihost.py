"""Two CPU processes (gloo collectives, a localhost coordinator) train like one process.

Both runs do the same work on 2 devices in total — one process holding 2 emulated
devices, or two processes holding 1 each — with the same global batch: a 3-step
warm-start (interrupted by a SIGTERM that only process 1 receives) and 2 RL steps
(sampling, verification, update). The final parameters must agree to 1e-5: the
programs are the same SPMD computation, and the only difference is how the data-parallel
gradient all-reduce adds its two terms (in-process vs gloo), a float32 rounding
difference of ~1e-7 relative that Adam can magnify by a few ulps per step.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "multihost_worker.py")
TIMEOUT_S = 600  # a hang (a process waiting in a collective) fails the test, never blocks CI.

OVERRIDES = {
    "model.d_model": 32, "model.num_layers": 1, "model.num_heads": 2, "model.num_kv_heads": 1,
    "model.head_dim": 16, "model.ffw_hidden": 64, "model.query_pre_attn_scalar": 16.0,
    "tokenizer.vocab_size": 330, "tokenizer.corpus_size": 200, "task.num_train": 400,
    "task.num_eval": 4, "warmstart.steps": 3, "warmstart.batch_size": 4,
    "warmstart.log_every": 1, "warmstart.seq_len": 256, "rl.stage_schedule": "stage2:2",
    "rl.prompts_per_step": 2, "rl.samples_per_prompt": 2, "rl.max_new_tokens": 8,
    "rl.rollout_micro_batch": 2, "checkpoint.every": 0, "mesh_shape": [-1, 1, 1],
}


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, devices, *extra):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  log = open(f"{workdir}.{extra[-1] if extra else 'single'}.log", "w")
  return subprocess.Popen([sys.executable, WORKER, str(workdir), json.dumps(OVERRIDES), *extra],
                          cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log.name


def _wait(procs):
  try:
    for proc, log in procs:
      proc.wait(timeout=TIMEOUT_S)
  finally:
    for proc, _ in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  for proc, log in procs:
    assert proc.returncode == 0, f"{log}:\n" + open(log).read()[-3000:]


def _params(workdir, process):
  with np.load(os.path.join(workdir, f"params_{process}.npz")) as z:
    return {k: z[k] for k in z.files}


def _checkpoint_params(workdir, like):
  """The params of the newest RL checkpoint, restored onto this process's first device."""
  import jax
  import orbax.checkpoint as ocp
  from flax import traverse_util
  step = max(int(d) for d in os.listdir(os.path.join(workdir, "rl")) if d.isdigit())
  path = os.path.join(workdir, "rl", str(step), "state")
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = ocp.StandardCheckpointer().metadata(path)
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device)
                        if hasattr(m, "shape") else m,
                        getattr(target, "item_metadata", target))
  restored = ocp.StandardCheckpointer().restore(path, target)
  flat = traverse_util.flatten_dict(restored["params"], sep="/")
  assert set(flat) == set(like)
  return step, {k: np.asarray(v) for k, v in flat.items()}


@pytest.mark.slow  # ~95 s of CPU over three processes (~1 min on 2 idle cores).
def test_two_processes_match_one_process(tmp_path):
  single, multi = tmp_path / "single", tmp_path / "multi"
  port = _free_port()
  procs = [_start(single, 2)]
  procs += [_start(multi, 1, f"127.0.0.1:{port}", "2", str(i)) for i in range(2)]
  _wait(procs)

  results = [json.load(open(multi / f"result_{i}.json")) for i in range(2)]
  for i, r in enumerate(results):
    assert (r["process"], r["processes"], r["devices"]) == (i, 2, 2)
    assert r["any_of_process_1"] is True and r["any_of_none"] is False
    assert r["rows"] == [4 * i, 4 * i + 4] and r["gathered_ok"] and r["global_rows_ok"]
    # Only process 1 saw SIGTERM, after step 2's vote: nobody saved step 2 alone; both
    # agreed at step 3, saved it together and stopped.
    assert r["preempted"] == ("preempted during warm-start; saved step 3. Rerun the same command "
                              "to resume from it.")
    assert r["saved_steps"] == [3]

  expected = _params(single, 0)
  got = [_params(multi, i) for i in range(2)]
  assert set(got[0]) == set(got[1]) == set(expected)
  print("max |multi - single| over params:",
        max(float(np.abs(got[0][k] - v).max()) for k, v in expected.items()))
  for name, want in expected.items():
    np.testing.assert_array_equal(got[0][name], got[1][name], err_msg=name)  # one model.
    np.testing.assert_allclose(got[0][name], want, rtol=1e-5, atol=1e-5, err_msg=name)
  step, saved = _checkpoint_params(multi, got[0])  # what the two processes wrote together.
  assert step == 2
  for name, want in got[0].items():
    np.testing.assert_array_equal(saved[name], want, err_msg=name)
  # Metrics come from process 0 only: each step once in the shared workdir.
  steps = [json.loads(line)["step"] for line in open(multi / "metrics.jsonl")
           if "rl/loss" in line]
  assert steps == [1, 2]
  # The update had a signal to misplace: rewards differ within some prompt's group (non-zero
  # advantages), and the two jobs verified the same episodes the same way.
  for workdir in (single, multi):
    rl = [json.loads(line) for line in open(workdir / "metrics.jsonl") if "rl/loss" in line]
    assert min(r["rl/zero_variance_groups"] for r in rl) < 1.0, workdir
    assert max(r["rl/adv_1_abs"] + r["rl/adv_2_abs"] for r in rl) > 0, workdir
  for key in ("rl/acc_t1", "rl/acc_t2", "rl/zero_variance_groups"):
    assert ([json.loads(line)[key] for line in open(single / "metrics.jsonl") if "rl/loss" in line]
            == [json.loads(line)[key] for line in open(multi / "metrics.jsonl")
                if "rl/loss" in line]), key


# --- the helpers on one process (no collective runs) -------------------------------------------


def test_initialize_is_a_no_op_without_a_job_and_names_missing_settings(monkeypatch):
  from score_jax import multihost
  for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
              "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(var, raising=False)
  assert multihost.initialize() is False
  assert multihost.initialize("127.0.0.1:1", num_processes=1, process_id=0) is False
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES and JAX_PROCESS_ID"):
    multihost.initialize()
  with pytest.raises(ValueError, match=r"process id 2 is not in \[0, 2\)"):
    multihost.initialize(num_processes=2, process_id=2)


def test_single_process_helpers_are_local():
  import jax
  from score_jax import multihost, sharding
  mesh = sharding.make_mesh((-1, 1, 1))  # 8 emulated devices (conftest).
  rows = multihost.host_rows(16, sharding.batch_sharding(mesh, 1))
  assert rows == slice(0, 16)
  full = np.arange(32, dtype=np.int32).reshape(16, 2)
  glob = multihost.global_from_full(full, sharding.batch_sharding(mesh, 2))
  assert isinstance(glob, jax.Array) and len(glob.sharding.device_set) == 8
  np.testing.assert_array_equal(multihost.fetch({"x": glob})["x"], full)
  np.testing.assert_array_equal(multihost.gather_rows(full.T, rows, 16, axis=1), full.T)
  with pytest.raises(ValueError, match="must hold all 16 rows"):
    multihost.gather_rows(full[:8], slice(0, 8), 16)
  assert multihost.any_process(True) and not multihost.any_process(False)
  multihost.barrier("no-op")
