"""The experiments' one shared helpers module (experiments/workdir.py) and the
convention around it: no experiment reaches into another's private names,
JSONL rows survive a torn line, and bench_search checks every flag before it
builds anything and keeps the rows it measured when a later one fails."""

import ast
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = sorted(
  os.path.splitext(os.path.basename(p))[0]
  for p in glob.glob(os.path.join(ROOT, "experiments", "*.py"))
  if not p.endswith("__init__.py")
)


def _private_uses(path):
  """(line, text) of every `from experiments.X import _y` and `X._y` where X
  names an experiments module imported into the file at `path`."""
  tree = ast.parse(open(path).read())
  aliases, out = {}, []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      parts = node.module.split(".")
      if parts[0] != "experiments":
        continue
      for a in node.names:
        if len(parts) == 2 and parts[1] in EXPERIMENTS and a.name.startswith("_"):
          out.append((node.lineno, f"from {node.module} import {a.name}"))
        if len(parts) == 1 and a.name in EXPERIMENTS:
          aliases[a.asname or a.name] = a.name
    elif isinstance(node, ast.Import):
      for a in node.names:
        parts = a.name.split(".")
        if parts[0] == "experiments" and len(parts) == 2 and a.asname:
          aliases[a.asname] = parts[1]
  for node in ast.walk(tree):
    if (
      isinstance(node, ast.Attribute)
      and isinstance(node.value, ast.Name)
      and node.value.id in aliases
      and node.attr.startswith("_")
      and not node.attr.startswith("__")
    ):
      out.append((node.lineno, f"{node.value.id}.{node.attr}"))
  return out


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_no_experiment_uses_another_experiments_private_names(name):
  path = os.path.join(ROOT, "experiments", f"{name}.py")
  assert _private_uses(path) == [], (
    f"{path} uses private names of other experiments; move what they share "
    f"into experiments/workdir.py"
  )


def test_private_use_finder_finds_both_forms(tmp_path):
  p = tmp_path / "x.py"
  p.write_text(
    "from experiments import scaling as sc\n"
    "from experiments.scaling import _hidden\n"
    "sc._dense(1)\nsc.public(2)\n"
  )
  assert _private_uses(str(p)) == [
    (2, "from experiments.scaling import _hidden"),
    (3, "sc._dense"),
  ]


def test_rows_keep_every_whole_line_and_drop_a_torn_one(tmp_path):
  path = str(tmp_path / "rows.jsonl")
  rows = [dict(method="m", budget=b, seed=0, accuracy=b / 10) for b in (1, 2)]
  for r in rows:
    workdir.append_row(path, r)
  with open(path, "a") as f:
    f.write('{"method": "m", "bud')  # a kill in the middle of a line
  got = workdir.read_rows(path)
  assert got == {("m", 1, 0): rows[0], ("m", 2, 0): rows[1]}
  with open(path) as f:  # rewritten without the torn line
    assert [json.loads(line) for line in f] == rows
  workdir.append_row(path, dict(rows[0], seed=1))
  assert len(workdir.read_rows(path)) == 3
  assert workdir.read_rows(path, key=("seed",)).keys() == {(0,), (1,)}


def test_atomic_writes_leave_no_temporary_file(tmp_path):
  workdir.save_npz_atomic(str(tmp_path / "a.npz"), x=np.arange(3))
  workdir.write_json_atomic(str(tmp_path / "a.json"), {"k": [1, 2]}, indent=1)
  assert sorted(os.listdir(tmp_path)) == ["a.json", "a.npz"]
  np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["x"], [0, 1, 2])
  assert workdir.read_json(str(tmp_path / "a.json")) == {"k": [1, 2]}


def test_require_files_names_the_field_and_the_file(tmp_path):
  (tmp_path / "present").write_text("")
  cfg = {"policy_dir": str(tmp_path)}
  workdir.require_files(cfg, "policy_dir", ("present",))
  with pytest.raises(
    ValueError,
    match=r"config.policy_dir=.* has no missing "
    r"\(.*missing does not exist; run X\)",
  ):
    workdir.require_files(cfg, "policy_dir", ("present", "missing"), hint="; run X")


TINY_BENCH = [
  "--steps=2",
  "--step_tokens=4",
  "--d_model=32",
  "--layers=1",
  "--prompt_len=8",
  "--vocab=16",
  "--repeats=1",
  "--reprefill=false",
]


def _bench_search(args, tmp_path, fail_on_call=0):
  """Runs experiments.bench_search in a child; with fail_on_call=n the
  particle filter raises on its n-th call (after the earlier rows)."""
  code = (
    "import sys; sys.argv = ['bench_search'] + sys.argv[1:];"
    "from absl import app; from experiments import bench_search as b;"
    f"n = [0]; real = b.run_particle_filter\n"
    "def pf(*a, **k):\n"
    "  n[0] += 1\n"
    f"  if n[0] == {fail_on_call}: raise RuntimeError('injected failure')\n"
    "  return real(*a, **k)\n"
    "b.run_particle_filter = pf; app.run(b.main)"
  )
  return subprocess.run(
    [sys.executable, "-c", code, f"--workdir={tmp_path}/w"] + args,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )


@pytest.mark.parametrize(
  "flag, message",
  [
    ("--particles=2,x", "--particles: 'x' is not an int"),
    ("--particles=2,0", "--particles must be a non-empty list of ints >= 1"),
    ("--d_model=30", "--d_model=30 must be a multiple of 4"),
    ("--vocab=3", "--vocab must be >= 4, got 3"),
  ],
)
def test_bench_search_checks_every_flag_before_building(tmp_path, flag, message):
  proc = _bench_search(TINY_BENCH + [flag], tmp_path, fail_on_call=1)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert "injected failure" not in proc.stderr  # nothing was run
  assert not os.listdir(tmp_path)


def test_bench_search_writes_each_row_as_it_is_measured(tmp_path):
  # calls per particle count: warm-up + 1 timed repeat; fail in the second N
  proc = _bench_search(TINY_BENCH + ["--particles=2,4"], tmp_path, fail_on_call=3)
  assert proc.returncode != 0 and "injected failure" in proc.stderr
  with open(tmp_path / "w" / workdir.RESULTS_FILE) as f:
    rec = json.load(f)
  assert not rec["complete"] and [r["N"] for r in rec["rows"]] == [2]
  assert rec["rows"][0]["pf_tokens"] == 2 * 2 * 4  # N particles x K x S
  # The baseline forks the once-prefilled prompt into the same N rows.
  assert rec["rows"][0]["sample_tokens"] == 2 * 2 * 4
