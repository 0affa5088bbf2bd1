"""Two processes on localhost through `jax.distributed`
(experiments/distributed.py): each computes its share of a small batch of
per-problem results (greedy continuations of a tiny random transformer), the
shares are merged with one collective, and the merge equals the
single-process run; only process 0 writes. Then the scaling sweep
(experiments/scaling.py) through its command line in two processes and in
one: the same rows and pools, written by process 0 only (the search-row split
and a resume of the pair are the slow tier).

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
from absl import app

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


def _start(*args, script=HERE, env=None) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, *([script] if script else []), *args],
    env=dict(_env(), **(env or {})),
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _wait(proc: subprocess.Popen, timeout: int = 120) -> str:
  """The process's stdout, once it has exited with status 0."""
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"worker timed out:\n{out[-2000:]}\n{err[-3000:]}")
  assert proc.returncode == 0, f"worker failed:\n{out[-2000:]}\n{err[-4000:]}"
  return out


def _finish(proc: subprocess.Popen, timeout: int = 120) -> dict:
  out = _wait(proc, timeout)
  lines = [l for l in out.splitlines() if l.startswith("{")]
  assert lines, f"worker printed no JSON:\n{out[-2000:]}"
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
  # The helpers built on the gather: split_map ran each item on one process
  # (strided), from_writer gave process 0's value to both, and process 1's
  # failure was raised on both (process 0: a RuntimeError naming process 1).
  assert [o["split_map_ran"] for o in outs] == [[0, 2, 4], [1, 3]]
  assert [o["split_map"] for o in outs] == [[0, 1, 4, 9, 16]] * 2
  assert [o["from_writer"] for o in outs] == ["from 0", "from 0"]
  assert outs[0]["raised"] == "RuntimeError: process 1 failed, so this one " + (
    "stops too: ValueError: boom on 1"
  )
  assert outs[1]["raised"] == "ValueError: boom on 1"
  assert ref["raised"] is None  # one process: nothing failed, nothing raised


# A tiny sweep: 5 problems x 4 samples, 2 problems per generate call (3 calls,
# split 2 / 1) and 8 rows per verifier call (3 calls per verifier), 2 seeds'
# pools; with `search`, 3 particle-filter rows too (split 2 / 1 in two
# rounds).
SWEEP_CONFIG = """
from configs import scaling_arith


def get_config():
  c = scaling_arith.get_config()
  c.policy_dir, c.verifier_dir = {pol!r}, {ver!r}
  c.n_problems, c.pool_size, c.budgets, c.seeds = 5, 4, (1, 2, 4), (0, 1)
  c.max_new_tokens, c.rows_per_call = 16, 8
  c.methods = ("coverage", "majority", "bon_orm", "bon_prm_min", "bom_orm")
  c.search_methods, c.search_budgets, c.search_seeds = {search!r}, (2,), (0, 1, 2)
  c.max_step_tokens, c.max_steps = 6, 3
  return c
"""
N_SELECTION_ROWS = 2 * 5 * 3  # seeds x methods x budgets


def _sweep_rows(workdir):
  """rows.jsonl in file order, without wall_s (a timing)."""
  with open(os.path.join(workdir, "rows.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  for r in rows:
    del r["wall_s"]
  return rows


def _assert_same_pools(workdir, reference):
  import numpy as np

  for seed in (0, 1):
    a = np.load(os.path.join(workdir, f"pool_seed{seed}.npz"))
    b = np.load(os.path.join(reference, f"pool_seed{seed}.npz"))
    assert sorted(a.files) == sorted(b.files)
    for k in b.files:
      np.testing.assert_array_equal(a[k], b[k], err_msg=f"seed {seed}: {k}")


def _sweep_one_and_two_processes(tmp_path, search):
  """experiments/scaling.py through its command line: one process, then two
  processes on localhost (jax.distributed, CPU collectives); process 1 has
  its own --workdir (as on hosts without a shared filesystem). Checks that
  process 0 wrote what one process writes -- the same rows in the same order
  (up to wall_s) and the same pools -- and process 1 nothing, not even a
  lock. Returns (process 0's workdir, the reference workdir, a function
  rerunning the pair and returning both outputs).

  The runs share a persistent compilation cache: process 0 of the pair loads
  what the single process compiled (process 1's programs, for another
  device, are its own); a cache miss only makes the test slower."""
  from test_scaling import _tiny_models

  pol, ver = _tiny_models(str(tmp_path / "models"))
  cfg = tmp_path / "sweep_config.py"
  cfg.write_text(SWEEP_CONFIG.format(pol=pol, ver=ver, search=search))
  w0, w1, single = (str(tmp_path / d) for d in ("w0", "w1", "single"))
  env = dict(
    JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
  )
  sweep = ("-m", "experiments.scaling", f"--config={cfg}")
  _wait(_start(*sweep, f"--workdir={single}", script=None, env=env), 300)

  def run_pair():
    port = _free_port()
    pair = [
      _start(
        *sweep,
        f"--workdir={w}",
        "--num_processes=2",
        f"--process_id={i}",
        f"--coordinator_address=localhost:{port}",
        script=None,
        env=env,
      )
      for i, w in enumerate((w0, w1))
    ]
    outs = [_wait(p, timeout=300) for p in pair]
    assert not os.path.exists(w1)  # process 1 wrote nothing
    return outs

  outs = run_pair()
  assert f"results in {w0}" in outs[0]
  # Process 1 built both pools with process 0 (and ran 1 of the 3 PF rows).
  done = f"process 1 of 2 done: built 2 pools with the others, ran {len(search)}"
  assert done + " search rows" in outs[1]
  assert sorted(os.listdir(w0)) == sorted(os.listdir(single))
  ref = _sweep_rows(single)
  assert len(ref) == N_SELECTION_ROWS + 3 * len(search)
  assert _sweep_rows(w0) == ref
  _assert_same_pools(w0, single)
  return w0, single, run_pair


def test_scaling_sweep_two_processes_equals_one(tmp_path):
  """The selection part of the sweep: the pools' generate and verifier calls
  split across two processes (see `_sweep_one_and_two_processes`)."""
  _sweep_one_and_two_processes(tmp_path, search=())


@pytest.mark.slow  # ~70 s of CPU: every process compiles the particle filter
def test_scaling_sweep_two_processes_search_and_resume(tmp_path):
  """Search rows split across the processes as well; then a resume of the
  pair: seed 1's selection rows and pool deleted from process 0's workdir
  (and a torn line left), which process 0 finds and process 1 learns from
  it, building the pool with it."""
  w0, single, run_pair = _sweep_one_and_two_processes(tmp_path, search=("pf",))
  rows_path = os.path.join(w0, "rows.jsonl")
  with open(rows_path) as f:
    lines = f.readlines()
  with open(rows_path, "w") as f:
    f.writelines(l for l in lines if json.loads(l)["seed"] == 0 or '"pf"' in l)
    f.write(lines[0][:20])
  os.remove(os.path.join(w0, "pool_seed1.npz"))
  outs = run_pair()
  done = "process 1 of 2 done: built 1 pools with the others, ran 0 search rows"
  assert done in outs[1]
  assert "sweep: 15 new rows, 1 pools generated" in outs[0]
  assert sorted(_sweep_rows(w0), key=str) == sorted(_sweep_rows(single), key=str)
  _assert_same_pools(w0, single)


def test_single_process_scripts_refuse_two_processes_and_mesh():
  """A one-process script (experiments/demo.py, the lightest) takes the shared
  flags, starts jax.distributed, and then both processes stop with its
  reason; --mesh is refused by it and by the scaling sweep (which splits work
  instead of sharding it)."""

  def fails(proc):
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    return err

  port = _free_port()
  pair = [
    _start(
      "-m",
      "experiments.demo",
      "--num_processes=2",
      f"--process_id={i}",
      f"--coordinator_address=localhost:{port}",
      script=None,
    )
    for i in range(2)
  ]
  for err in [fails(p) for p in pair]:
    assert "experiments.demo runs in one process (it launches each stage" in err
    assert "this run has 2 processes" in err
  err = fails(_start("-m", "experiments.demo", "--mesh=data=1", script=None))
  assert "--mesh: experiments.demo does not shard over a mesh" in err
  err = fails(_start("-m", "experiments.scaling", "--mesh=data=1", script=None))
  assert "--mesh: the scaling sweep does not shard a model over a mesh" in err


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
  # absl prints a UsageError as a usage line (no traceback).
  with pytest.raises(app.UsageError, match="--num_processes must be >= 1"):
    dist.maybe_initialize(num_processes=0)
  with pytest.raises(app.UsageError, match="needs --coordinator_address"):
    dist.maybe_initialize(process_id=1)  # alone it was silently ignored


def test_coordinator_port_in_use_is_named():
  """Process 0 refuses a coordinator port another socket listens on, naming the
  flag, before jax.distributed tries (and fails vaguely after its timeout)."""
  from experiments import distributed as dist

  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    with pytest.raises(dist.FlagError, match=f"port {port} is already in use"):
      dist._check_port_free(f"127.0.0.1:{port}", port)
  # The address form is checked on every process, before JAX parses it.
  for bad in ("localhost", "bogus", ":1234", "localhost:notaport", "h:99999"):
    with pytest.raises(dist.FlagError, match="HOST:PORT"):
      dist.maybe_initialize(coordinator_address=bad, num_processes=2, process_id=1)
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
  ran = []
  squares = dist.split_map(lambda x: ran.append(x) or x * x, range(5))
  from_writer = dist.from_writer(f"from {jax.process_index()}")
  try:
    dist.raise_together(ValueError("boom on 1") if jax.process_index() == 1 else None)
    raised = None
  except (ValueError, RuntimeError) as e:
    raised = f"{type(e).__name__}: {e}"
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
        split_map_ran=ran,
        split_map=squares,
        from_writer=from_writer,
        raised=raised,
      )
    )
  )
  sys.stdout.flush()


if __name__ == "__main__":
  if sys.argv[1] == "worker":
    worker(sys.argv)
