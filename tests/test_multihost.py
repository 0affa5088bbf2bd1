"""Two processes on localhost through `jax.distributed`
(experiments/distributed.py): each computes its share of a small batch of
per-problem results (greedy continuations of a tiny random transformer), the
shares are merged with one collective, and the merge equals the
single-process run; only process 0 writes.

The workers are this file run as a script (`python tests/test_multihost.py
worker ...`): jax.distributed must start before JAX initialises its backend,
which under pytest-xdist has already happened in this process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
N_PROBLEMS = 7  # not a multiple of 2: the shares differ in size


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env() -> dict:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("XLA_FLAGS", None)  # one CPU device per process
  env["PYTHONPATH"] = os.pathsep.join(
    [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
  )
  return env


def _start(*args) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, HERE, *args],
    env=_env(),
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _finish(proc: subprocess.Popen, timeout: int = 120) -> dict:
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"worker timed out:\n{out[-2000:]}\n{err[-3000:]}")
  assert proc.returncode == 0, f"worker failed:\n{out[-2000:]}\n{err[-4000:]}"
  lines = [l for l in out.splitlines() if l.startswith("{")]
  assert lines, f"worker printed no JSON:\n{out[-2000:]}\n{err[-2000:]}"
  return json.loads(lines[-1])


def test_two_processes_merge_equals_one_process(tmp_path):
  port = _free_port()
  procs = [
    _start(
      "worker",
      str(tmp_path / f"w{i}"),
      "--num_processes=2",
      f"--process_id={i}",
      f"--coordinator_address=localhost:{port}",
    )
    for i in range(2)
  ]
  single = _start("worker", str(tmp_path / "single"))
  outs = [_finish(p) for p in procs]
  ref = _finish(single)

  assert ref["initialized"] is None and ref["process_count"] == 1
  assert [o["initialized"] for o in outs] == ["flags", "flags"]
  assert [o["process_count"] for o in outs] == [2, 2]
  assert [o["process_index"] for o in outs] == [0, 1]
  assert [o["global_devices"] for o in outs] == [2, 2]
  # Strided shares: 0, 2, 4, 6 and 1, 3, 5.
  assert outs[0]["mine"] == [0, 2, 4, 6] and outs[1]["mine"] == [1, 3, 5]
  # Every process sees the merged results; they equal one process's.
  assert outs[0]["merged"] == ref["merged"]
  assert outs[1]["merged"] == ref["merged"]
  assert len(ref["merged"]) == N_PROBLEMS
  # Only process 0 wrote.
  assert [o["writer"] for o in outs] == [True, False]
  assert os.path.exists(tmp_path / "w0" / "results.json")
  assert not os.path.exists(tmp_path / "w1" / "results.json")
  with open(tmp_path / "w0" / "results.json") as f:
    assert json.load(f) == ref["merged"]


def test_cluster_from_env_and_flag_checks():
  from experiments import distributed as dist

  assert dist.cluster_from_env({}) is None
  slurm = dict(
    SLURM_JOB_ID="7",
    SLURM_STEP_NODELIST="n[1-2]",
    SLURM_NTASKS="2",
    SLURM_PROCID="0",
    SLURM_LOCALID="0",
  )
  assert dist.cluster_from_env(slurm) == "slurm"
  assert dist.cluster_from_env(dict(slurm, SLURM_NTASKS="1")) is None
  assert (
    dist.cluster_from_env(
      dict(OMPI_MCA_orte_hnp_uri="1.0;tcp://x:1", OMPI_COMM_WORLD_SIZE="4")
    )
    == "ompi"
  )
  assert dist.cluster_from_env(dict(TPU_WORKER_HOSTNAMES="a,b")) == "tpu"
  assert dist.cluster_from_env(dict(TPU_WORKER_HOSTNAMES="a")) is None
  assert dist.split_for_process(range(5), process_id=1, num_processes=2) == [1, 3]
  with pytest.raises(
    ValueError,
    match=r"process_id=2 is outside \[0, "
    r"num_processes=2\)",
  ):
    dist.split_for_process(range(5), process_id=2, num_processes=2)
  with pytest.raises(ValueError, match="--process_id=3 is outside"):
    dist.maybe_initialize(num_processes=2, process_id=3, coordinator_address="x:1")
  with pytest.raises(ValueError, match="needs --coordinator_address"):
    dist.maybe_initialize(num_processes=2, process_id=0)
  with pytest.raises(ValueError, match="--distributed must be one of"):
    dist.maybe_initialize(mode="maybe")
  # A single process: nothing to start, and the gather is the identity.
  if not os.environ.get("SLURM_JOB_ID") and not os.environ.get("OMPI_MCA_orte_hnp_uri"):
    assert dist.maybe_initialize(mode="auto") is None
  assert dist.gather_split(["a", "b"], 2) == ["a", "b"]


# ----------------------------------------------------------------------------
# The worker (run as a script)
# ----------------------------------------------------------------------------


def _problems():
  import numpy as np

  rng = np.random.default_rng(0)
  return [[int(t) for t in rng.integers(1, 32, size=n)] for n in (3, 5, 2, 7, 4, 6, 1)]


def _solve(cfg, params, prompt):
  """One problem's result: the greedy continuation and its log-probs."""
  import jax
  from jaxllm.decoding import Transformer
  from jaxllm.generate import generate
  from jaxllm.sampling import make_sampling

  out = generate(
    Transformer(cfg),
    params,
    [prompt],
    jax.random.key(0),
    6,
    make_sampling(temperature=0.0),
  )
  return dict(
    tokens=[int(t) for t in out.tokens[0]],
    logprobs=[round(float(x), 5) for x in out.logprobs[0]],
  )


def worker(argv):
  from absl import flags
  from experiments import distributed as dist

  dist.define_flags()
  rest = flags.FLAGS(argv)  # parses the shared flags
  workdir = rest[2]
  initialized = dist.maybe_initialize(timeout_s=60)

  import jax
  from jaxllm.config import ModelConfig
  from jaxllm.params import init_params

  cfg = ModelConfig(
    vocab_size=32,
    d_model=32,
    n_layers=1,
    n_heads=2,
    n_kv_heads=2,
    d_ff=64,
    max_seq_len=64,
  )
  params = init_params(cfg, jax.random.key(0))  # same on every process
  problems = _problems()
  assert len(problems) == N_PROBLEMS
  ids = list(range(len(problems)))
  mine = dist.split_for_process(ids)
  local = [_solve(cfg, params, problems[i]) for i in mine]
  merged = dist.gather_split(local, len(problems))
  if dist.is_writer():
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(merged, f)
  print(
    json.dumps(
      dict(
        initialized=initialized,
        process_count=jax.process_count(),
        process_index=jax.process_index(),
        global_devices=len(jax.devices()),
        mine=mine,
        merged=merged,
        writer=dist.is_writer(),
      )
    )
  )
  sys.stdout.flush()


if __name__ == "__main__":
  if sys.argv[1] == "worker":
    worker(sys.argv)
