"""Guards shared by the experiment entry points (experiments/workdir.py,
experiments/config_utils.py): a resumed run must have the settings its output
directory was made with, one run per directory, configs checked against their
schema and every value checked before any model is loaded, summaries that
work for any method subset, and the sweep's PRM best-of-N scored by
algorithms.selection.

The sweep runs its real code path here with its model functions replaced by
fakes that serve hand-made pools (no model is loaded or called), so expected
rows are hand-computed and a refused run provably did no work."""

import json
import os
import signal
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from configs import genrm_arith, scaling_arith
from experiments import config_utils
from experiments import genrm_allocation as ga
from experiments import scaling, sweep_search
from experiments import train_genverifier as tg
from experiments import train_policy as tp
from experiments import workdir
from experiments.tasks import arith
from jaxllm import checkpoint
from jaxllm.config import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------ hand-made pools ------------------------------

# Two problems x three samples x two PRM step slots. Sample 2 of problem 0 has
# no scored step (its step scores are masked out: 0.99 would win if read).
PRM_STEPS = np.array(
  [[[0.9, 0.2], [0.5, 0.7], [0.99, 0.99]], [[0.9, 0.1], [0.3, 0.4], [0.2, 0.0]]],
  np.float32,
)
PRM_MASK = np.array([[[1, 1], [1, 1], [0, 0]], [[1, 1], [1, 1], [1, 0]]], bool)
CORRECT = np.array([[0, 1, 0], [1, 0, 0]], bool)
# BoN@k by hand (k = 1, 2, 3), ties impossible. Per sample aggregates:
#   problem 0: min .2 .5 -inf | last .2 .7 -inf | prod .18 .35 -inf | mean .55 .6 -inf
#     -> ranking 1 > 0 > 2 under every aggregation: the correct sample 1 is
#        picked from every subset holding it: [1/3, 2/3, 1].
#   problem 1: min .1 .3 .2 | last .1 .4 .2 | prod .09 .12 .2 | mean .5 .35 .2
#     -> min, last, prod rank a wrong sample first and sample 0 (correct) last:
#        [1/3, 0, 0]; mean ranks sample 0 first: [1/3, 2/3, 1].
BON_PRM = {
  "min": [1 / 3, 1 / 3, 1 / 2],
  "last": [1 / 3, 1 / 3, 1 / 2],
  "prod": [1 / 3, 1 / 3, 1 / 2],
  "mean": [1 / 3, 2 / 3, 1.0],
}
# The sweep's deleted copy gave problem 0's unscored sample 1.0 under "min":
# problem 0 -> [1/3, 1/3, 0], mean over problems [1/3, 1/6, 0].
OLD_BON_PRM_MIN = [1 / 3, 1 / 6, 0.0]


def hand_pool(seed=0):
  """The pool above (the seed only shifts lengths, so pools differ)."""
  return dict(
    answers=np.array([[0, 1, 2], [0, 1, 1]], np.int32),
    correct=CORRECT,
    lengths=np.array([[5, 6, 7], [8, 9, 10]]) + seed,
    prompt_lengths=np.array([7, 9]),
    orm=np.array([[0.1, 0.8, 0.5], [0.6, 0.2, 0.3]], np.float32),
    prm_steps=PRM_STEPS,
    prm_mask=PRM_MASK,
  )


TINY = ModelConfig(
  vocab_size=arith.TOKENIZER.vocab_size,
  d_model=16,
  n_layers=1,
  n_heads=2,
  n_kv_heads=2,
  d_ff=32,
  max_seq_len=64,
)


class FakeModels:
  """Replaces the sweep's model functions; counts what would touch a model."""

  def __init__(self, monkeypatch, root, fail=False):
    self.loads, self.builds, self.searches = 0, [], 0
    self.fail = fail
    self.policy_dir = os.path.join(root, "policy")
    self.verifier_dir = os.path.join(root, "verifier")
    for d, names in (
      (self.policy_dir, ("policy",)),
      (self.verifier_dir, ("prm", "orm")),
    ):
      for n in names:
        os.makedirs(os.path.join(d, n), exist_ok=True)
      checkpoint.save_model_config(os.path.join(d, checkpoint.MODEL_CONFIG_FILE), TINY)
    with open(os.path.join(self.policy_dir, "config.json"), "w") as f:
      json.dump({}, f)
    monkeypatch.setattr(scaling, "load_models", self.load_models)
    monkeypatch.setattr(scaling, "build_pool", self.build_pool)
    monkeypatch.setattr(sweep_search, "run_search", self.run_search)
    monkeypatch.setattr(tp, "heldout_problems", lambda pconfig, n: [None] * n)

  def _check(self, what):
    if self.fail:
      raise AssertionError(f"{what} called: the run should have been refused")

  def load_models(self, config):
    self._check("load_models")
    self.loads += 1
    return (TINY, None), None, TINY, {}

  def build_pool(self, policy, verifiers, problems, config, seed):
    self._check("build_pool")
    self.builds.append(seed)
    return hand_pool(seed)

  def run_search(self, method, k, policy, verifiers, problems, config, seed):
    self._check("run_search")
    self.searches += 1
    return 0.5, dict(flops=1e6 * k, generated_tokens=10.0 * k, verifier_tokens=5.0 * k)


def sweep_config(models, **kw):
  c = scaling_arith.get_config()
  c.policy_dir, c.verifier_dir = models.policy_dir, models.verifier_dir
  c.n_problems, c.pool_size, c.max_steps = 2, 3, 2
  c.budgets, c.seeds = (1, 2, 3), (0,)
  c.methods = ("coverage", "bon_orm", "bon_prm_min", "bon_prm_mean")
  c.search_methods, c.search_budgets, c.search_seeds = (), (4,), (0,)
  c.temperature, c.max_new_tokens = 1.0, 16
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def rows_of(out):
  with open(os.path.join(out, "rows.jsonl")) as f:
    return [json.loads(line) for line in f]


def quiet(_):
  pass


# --------------------------- 1. settings are pinned ---------------------------


def test_resume_with_other_settings_is_refused_naming_fields(tmp_path, monkeypatch):
  models = FakeModels(monkeypatch, str(tmp_path))
  out = str(tmp_path / "sweep")
  s1 = scaling.run_sweep(sweep_config(models), out, log=quiet)
  assert models.builds == [0] and s1["new_rows"] == 4 * 3
  before = {
    n: open(os.path.join(out, n)).read()
    for n in ("rows.jsonl", "config.json", "settings.json")
  }

  c2 = sweep_config(models, temperature=0.3, max_new_tokens=4)
  with pytest.raises(ValueError, match="other settings") as e:
    scaling.run_sweep(c2, out, log=quiet)
  assert "temperature: 1.0 -> 0.3" in str(e.value)
  assert "max_new_tokens: 16 -> 4" in str(e.value)
  assert "pool_size" not in str(e.value)  # only the differing fields
  with pytest.raises(ValueError, match="temperature: 1.0 -> 0.3"):
    scaling.check_sweep(c2, out)  # the CLI's dry run says the same
  assert models.builds == [0]  # nothing rebuilt, nothing overwritten
  for n, text in before.items():
    assert open(os.path.join(out, n)).read() == text, n


def test_more_budgets_seeds_and_methods_extend_without_changing_rows(
  tmp_path, monkeypatch
):
  models = FakeModels(monkeypatch, str(tmp_path))
  out = str(tmp_path / "sweep")
  scaling.run_sweep(sweep_config(models, budgets=(1, 2)), out, log=quiet)
  first = {(r["method"], r["budget"], r["seed"]): r for r in rows_of(out)}
  c = sweep_config(
    models,
    budgets=(1, 2, 3),
    seeds=(0, 1),
    methods=("coverage", "bon_orm", "bon_prm_min", "bon_prm_mean", "majority"),
  )
  s = scaling.run_sweep(c, out, log=quiet)
  assert models.builds == [0, 1]  # only the new seed's pool
  rows = {(r["method"], r["budget"], r["seed"]): r for r in rows_of(out)}
  assert len(rows_of(out)) == len(rows) == 5 * 3 * 2  # no row written twice
  assert s["new_rows"] == 5 * 3 * 2 - len(first)
  for key, r in first.items():
    assert rows[key] == r
  # a config asking for fewer rows reports only its own
  s = scaling.run_sweep(sweep_config(models, budgets=(1,)), out, log=quiet)
  assert s["new_rows"] == 0
  assert s["table"]["bon_prm_mean"]["budgets"] == [1]


def test_results_without_a_record_or_from_an_older_version(tmp_path, monkeypatch):
  models = FakeModels(monkeypatch, str(tmp_path), fail=True)
  c = sweep_config(models)
  # rows and pools nobody recorded the settings of
  anon = str(tmp_path / "anon")
  os.makedirs(anon)
  workdir.save_npz_atomic(os.path.join(anon, "pool_seed0.npz"), **hand_pool())
  with pytest.raises(
    ValueError,
    match=r"holds results \(pool_seed0.npz\) but "
    r"no settings.json",
  ):
    scaling.run_sweep(c, anon, log=quiet)
  # an earlier version wrote only config.json (its whole config)
  old = str(tmp_path / "old")
  os.makedirs(old)
  workdir.save_npz_atomic(os.path.join(old, "pool_seed0.npz"), **hand_pool())
  with open(os.path.join(old, "config.json"), "w") as f:
    f.write(config_utils.to_json(sweep_config(models, temperature=0.7)))
  with pytest.raises(ValueError, match=r"temperature: 0.7 -> 1.0"):
    scaling.run_sweep(c, old, log=quiet)
  assert not os.path.exists(os.path.join(old, "settings.json"))
  # same settings: adopted (written as settings.json), pool reused
  models.fail = False
  with open(os.path.join(old, "config.json"), "w") as f:
    f.write(config_utils.to_json(c))
  scaling.run_sweep(c, old, log=quiet)
  assert models.builds == [] and models.loads == 0
  assert os.path.exists(os.path.join(old, "settings.json"))


def test_genrm_refuses_other_settings_and_a_verifier_trained_otherwise(
  tmp_path, monkeypatch
):
  monkeypatch.setattr(tg, "train_verifier", _must_not_run("train_verifier"))
  monkeypatch.setattr(workdir, "load_policy", _must_not_run("load_policy"))
  c = _genrm_config(tmp_path)
  # a pool made by an earlier version (pool_meta.json) with another seed
  out = str(tmp_path / "study")
  os.makedirs(out)
  open(os.path.join(out, "solutions.npz"), "w").close()
  meta = {
    k: c[k]
    for k in (
      "policy_dir",
      "verifier_dir",
      "n_problems",
      "pool_size",
      "sc_pool_size",
      "verifications",
      "temperature",
      "max_new_tokens",
      "max_verify_tokens",
    )
  }
  with open(os.path.join(out, "pool_meta.json"), "w") as f:
    json.dump(dict(meta, seed=5), f)
  with pytest.raises(ValueError, match=r"seed: 5 -> 0") as e:
    ga.run(c, out, log=quiet)
  # the earlier version did not record these: named, not assumed
  assert "Fields the record does not have" in str(e.value)
  assert "chunk_problems" in str(e.value) and "sc_subsets" in str(e.value)
  # a finished verifier trained with other settings
  other = _genrm_config(tmp_path)
  other.verifier.steps = 7
  os.makedirs(c.verifier_dir)
  tg.pin_verifier_dir(other, c.verifier_dir)
  open(os.path.join(c.verifier_dir, "model_config.json"), "w").close()
  with pytest.raises(ValueError, match=r"verifier.steps: 7 -> 2"):
    ga.run(c, str(tmp_path / "fresh"), log=quiet)


def test_train_policy_resume_with_other_settings_is_refused(tmp_path, monkeypatch):
  from jaxllm import train

  monkeypatch.setattr(train, "train_loop", _must_not_run("train_loop"))
  monkeypatch.setattr(tp, "init_params", _must_not_run("init_params"))
  c = config_utils.load_config_file(os.path.join(ROOT, "configs", "arith_policy.py"))
  work = str(tmp_path / "policy")
  tp.pin_workdir(c, work)
  os.makedirs(os.path.join(work, "checkpoints"))  # a run got this far
  c.train.learning_rate = 1e-2
  c.train.log_every = 7  # not pinned: logs only
  with pytest.raises(ValueError, match=r"train.learning_rate: 0.003 -> 0.01") as e:
    tp.run(c, work)
  assert "log_every" not in str(e.value)


# ----------------------------- 1b. one run per dir -----------------------------


def _hold_lock(path):
  """A child process holding `path`'s lock until killed; returns it."""
  code = (
    "import sys, time; sys.path.insert(0, sys.argv[1]);"
    "from experiments import workdir;"
    "cm = workdir.lock(sys.argv[2]); cm.__enter__();"
    "print('locked', flush=True); time.sleep(600)"
  )
  proc = subprocess.Popen(
    [sys.executable, "-c", code, ROOT, path], stdout=subprocess.PIPE, text=True
  )
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_second_sweep_on_a_directory_is_refused(tmp_path, monkeypatch):
  models = FakeModels(monkeypatch, str(tmp_path), fail=True)
  out = str(tmp_path / "sweep")
  holder = _hold_lock(out)
  try:
    with pytest.raises(workdir.WorkdirBusy, match=f"pid {holder.pid}"):
      scaling.run_sweep(sweep_config(models), out, log=quiet)
    with pytest.raises(workdir.WorkdirBusy, match=f"pid {holder.pid}"):
      ga.run(_genrm_config(tmp_path), out, log=quiet)
  finally:
    holder.send_signal(signal.SIGKILL)  # dies holding it: a stale lock file
    holder.wait()
  assert not os.path.exists(os.path.join(out, "rows.jsonl"))
  with open(os.path.join(out, workdir.LOCK_FILE)) as f:
    assert f.read().strip() == str(holder.pid)  # the dead holder's pid
  models.fail = False
  s = scaling.run_sweep(sweep_config(models), out, log=quiet)
  assert s["new_rows"] == 12 and models.builds == [0]


def test_lock_file_of_a_dead_process_is_not_a_lock(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  d = str(tmp_path / "d")
  os.makedirs(d)
  with open(os.path.join(d, workdir.LOCK_FILE), "w") as f:
    f.write(f"{dead.pid}\n")
  with workdir.lock(d):
    with open(os.path.join(d, workdir.LOCK_FILE)) as f:
      assert f.read().strip() == str(os.getpid())
    with workdir.lock(d):  # reentrant in one process
      pass


# ---------------------- 3. one schema check for every config -------------------


def test_misspelt_field_is_rejected_with_a_suggestion(tmp_path, monkeypatch):
  models = FakeModels(monkeypatch, str(tmp_path), fail=True)
  c = sweep_config(models)
  c.temprature = 0.5
  out = str(tmp_path / "sweep")
  with pytest.raises(
    ValueError,
    match=r"unknown config field "
    r"'config.temprature' \(did you mean "
    r"'temperature'\?",
  ):
    scaling.run_sweep(c, out, log=quiet)
  assert not os.path.exists(out)
  g = _genrm_config(tmp_path)
  g.verifier.stpes = 3
  with pytest.raises(
    ValueError,
    match=r"'config.verifier.stpes' \(did you "
    r"mean 'steps'\?",
  ):
    ga.run(g, out, log=quiet)


def test_wrong_type_is_rejected_naming_the_field(tmp_path, monkeypatch):
  models = FakeModels(monkeypatch, str(tmp_path), fail=True)
  # as a config file writing `c.temperature = "hot"` makes it
  c = ml_collections.ConfigDict(dict(sweep_config(models).to_dict(), temperature="hot"))
  with pytest.raises(
    ValueError,
    match=r"config field 'config.temperature' "
    r"must be of type float",
  ):
    scaling.run_sweep(c, str(tmp_path / "sweep"), log=quiet)


def test_sweep_cli_rejects_a_misspelt_config_file(tmp_path):
  cfg = tmp_path / "bad_config.py"
  cfg.write_text(
    "from configs import scaling_arith\n\n\ndef get_config():\n"
    "  c = scaling_arith.get_config()\n  c.temprature = 0.5\n"
    "  return c\n"
  )
  out = tmp_path / "sweep"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.scaling",
      f"--config={cfg}",
      f"--workdir={out}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=300,
  )
  assert proc.returncode != 0
  assert "did you mean 'temperature'" in proc.stderr
  assert not out.exists()


def test_default_configs_pass_the_full_validation():
  scaling.validate_sweep(scaling_arith.get_config())
  ga.validate_study(genrm_arith.get_config())
  tp.validate_policy_config(
    config_utils.load_config_file(os.path.join(ROOT, "configs", "arith_policy.py"))
  )


# ------------------ 4. every value checked before any model ------------------


@pytest.mark.parametrize(
  "edit, message",
  [
    (dict(budgets=(1, 0)), r"config.budgets\[1\]=0 must be >= 1"),
    (dict(budgets=(-2,)), r"config.budgets\[0\]=-2 must be >= 1"),
    (dict(budgets=(1, 4)), r"config.budgets\[1\]=4 exceeds config.pool_size=3"),
    (dict(budgets=(2, 2)), r"config.budgets lists \[2\] more than once"),
    (dict(budgets=()), r"config.budgets is empty"),
    (dict(seeds=()), r"config.seeds is empty"),
    (dict(n_problems=0), r"config.n_problems must be > 0"),
    (dict(max_step_tokens=0), r"config.max_step_tokens must be > 0"),
    (
      dict(methods=("coverage", "bon_prm_minn")),
      r"config.methods: unknown name 'bon_prm_minn' \(did you mean "
      r"'bon_prm_min'\?",
    ),
    (dict(methods=(), search_methods=()), r"both empty: nothing to run"),
    (
      dict(search_methods=("beam",), search_budgets=(4, 6)),
      r"config.search_budgets: budget 6 does not work for search method 'beam' "
      r"\(with config.beam_width=4.*multiple",
    ),
    (
      dict(search_methods=("pf",), search_budgets=()),
      r"config.search_budgets is empty",
    ),
    (
      dict(search_methods=("astar",), max_new_tokens=4, max_step_tokens=8),
      r"search method 'astar' .*config.max_new_tokens=4",
    ),
  ],
)
def test_bad_sweep_values_fail_before_any_model_call(
  tmp_path, monkeypatch, edit, message
):
  models = FakeModels(monkeypatch, str(tmp_path), fail=True)
  out = str(tmp_path / "sweep")
  with pytest.raises(ValueError, match=message):
    scaling.run_sweep(sweep_config(models, **edit), out, log=quiet)
  assert not os.path.exists(out)  # nothing written, not even config.json


def _must_not_run(name):
  def fail(*a, **k):
    raise AssertionError(f"{name} called: the run should have been refused")

  return fail


def _genrm_config(root):
  c = genrm_arith.get_config()
  c.policy_dir = str(root / "no_policy")
  c.verifier_dir = str(root / "genrm_verifier")
  c.n_problems, c.pool_size, c.sc_pool_size, c.verifications = 5, 4, 6, 3
  c.s_grid, c.v_grid, c.plot_v = (1, 2, 4), (1, 3), (1, 3)
  c.verifier.steps = 2
  return c


@pytest.mark.parametrize(
  "edit, message",
  [
    (dict(s_grid=(1, 8)), r"config.s_grid\[1\]=8 exceeds config.pool_size=4"),
    (dict(s_grid=(0, 1)), r"config.s_grid\[0\]=0 must be >= 1"),
    (dict(v_grid=(1, 4)), r"config.v_grid\[1\]=4 exceeds config.verifications=3"),
    (dict(v_grid=()), r"config.v_grid is empty"),
    (dict(plot_v=(2,)), r"config.plot_v\[0\]=2 is not in config.v_grid"),
    (dict(budgets=()), r"config.budgets is empty"),
    (dict(n_problems=0), r"config.n_problems must be > 0"),
    (dict(sc_pool_size=3), r"config.sc_pool_size=3 must be >= config.pool_size"),
    (dict(tie_break="first"), r"config.tie_break must be one of"),
  ],
)
def test_bad_study_values_fail_before_verifier_training(
  tmp_path, monkeypatch, edit, message
):
  monkeypatch.setattr(tg, "train_verifier", _must_not_run("train_verifier"))
  monkeypatch.setattr(workdir, "load_policy", _must_not_run("load_policy"))
  c = _genrm_config(tmp_path)
  for k, v in edit.items():
    setattr(c, k, v)
  out = str(tmp_path / "study")
  with pytest.raises(ValueError, match=message):
    ga.run(c, out, log=quiet)
  assert not os.path.exists(out)


def test_bad_training_values_fail_before_training(tmp_path, monkeypatch):
  from jaxllm import train

  monkeypatch.setattr(train, "train_loop", _must_not_run("train_loop"))
  c = config_utils.load_config_file(os.path.join(ROOT, "configs", "arith_policy.py"))
  c.train.compute_dtype = "float16"
  with pytest.raises(
    ValueError,
    match=r"config.train.compute_dtype must be "
    r"one of \('float32', 'bfloat16'\)",
  ):
    tp.run(c, str(tmp_path / "p"))
  c.train.compute_dtype, c.train.seq_len = "float32", 8
  with pytest.raises(ValueError, match=r"config.train.seq_len=8 is shorter"):
    tp.run(c, str(tmp_path / "p"))
  g = _genrm_config(tmp_path)
  g.verifier.batch_size = 0
  with pytest.raises(ValueError, match=r"config.verifier.batch_size must be > 0"):
    tg.train_verifier(g, str(tmp_path / "v"))
  assert not os.path.exists(tmp_path / "p") and not os.path.exists(tmp_path / "v")


@pytest.mark.parametrize(
  "module, args, message",
  [
    (
      "experiments.bench_speculative",
      ["--pairs=tiny,smolm"],
      "--pairs: unknown pair 'smolm'",
    ),
    (
      "experiments.bench_speculative",
      ["--budgets=4,10"],
      "method 'iid' cannot spend exactly 10 draft tokens",
    ),
    ("experiments.train_draft", ["--steps=0"], "--steps must be >= 1"),
    (
      "experiments.bench_compile",
      ["--drivers=generate,pff"],
      "--drivers: unknown ['pff']",
    ),
    ("experiments.bench_compile", ["--draft_layers=30"], "--draft_layers must be < 30"),
  ],
)
def test_flag_scripts_reject_bad_flags_before_loading(tmp_path, module, args, message):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      module,
      f"--out={tmp_path}/o.json"
      if module == "experiments.bench_speculative"
      else f"--workdir={tmp_path}/w",
    ]
    + args,
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=300,
  )
  assert proc.returncode != 0
  assert message in proc.stderr
  assert not os.listdir(tmp_path)


# ---------------------- 5. any non-empty method subset -----------------------


def test_coverage_only_sweep_runs_and_reruns(tmp_path, monkeypatch):
  models = FakeModels(monkeypatch, str(tmp_path))
  out = str(tmp_path / "sweep")
  c = sweep_config(models, methods=("coverage",), search_methods=())
  s1 = scaling.run_sweep(c, out, log=quiet)
  # pass@k by hand: problem 0 has 1 correct of 3, problem 1 has 1 of 3
  # -> pass@k = 1 - C(2, k) / C(3, k) = 1/3, 2/3, 1 for k = 1, 2, 3
  np.testing.assert_allclose(s1["table"]["coverage"]["accuracy"], [1 / 3, 2 / 3, 1.0])
  assert "coverage_fit" in s1 and "compute_optimal" not in s1
  assert os.path.exists(os.path.join(out, "coverage.png"))
  s2 = scaling.run_sweep(c, out, log=quiet)  # the rerun used to crash
  assert s2["new_rows"] == 0 and s2["table"] == s1["table"]
  with open(os.path.join(out, "summary.json")) as f:
    assert json.load(f)["table"] == s1["table"]
  # two budgets: no coverage fit, still a summary
  s3 = scaling.run_sweep(
    sweep_config(models, methods=("coverage",), budgets=(1, 2)), out, log=quiet
  )
  assert "coverage_fit" not in s3 and s3["new_rows"] == 0


def test_search_only_and_single_budget_sweeps_summarize(tmp_path, monkeypatch):
  models = FakeModels(monkeypatch, str(tmp_path))
  c = sweep_config(models, methods=(), search_methods=("pf",), search_budgets=(2, 4))
  s = scaling.run_sweep(c, str(tmp_path / "a"), log=quiet)
  assert models.builds == [] and models.searches == 2
  assert s["table"]["pf"]["accuracy"] == [0.5, 0.5]
  assert s["compute_optimal"]["method"] == ["pf"] * 6
  s = scaling.run_sweep(
    sweep_config(models, methods=("bon_orm",), budgets=(2,)),
    str(tmp_path / "b"),
    log=quiet,
  )
  assert s["accuracy_vs_log10_flops"] == {}  # one point: no fit, no crash


# -------------------- 2. the sweep's PRM BoN is selection's --------------------


@pytest.mark.parametrize("agg", ["min", "last", "prod", "mean"])
def test_prm_best_of_n_uses_selection_aggregation(agg):
  got = scaling.selection_accuracy(f"bon_prm_{agg}", hand_pool(), [1, 2, 3], 0)
  np.testing.assert_allclose(got, BON_PRM[agg], atol=1e-12)
  scores = scaling.prm_scores(hand_pool(), agg)
  assert scores[0, 2] == -np.inf  # no scored step: ranks below every sample


def test_sweep_rows_use_selection_prm_scores(tmp_path, monkeypatch):
  models = FakeModels(monkeypatch, str(tmp_path))
  out = str(tmp_path / "sweep")
  c = sweep_config(
    models, methods=("bon_prm_min", "bon_prm_last", "bon_prm_prod", "bon_prm_mean")
  )
  scaling.run_sweep(c, out, log=quiet)
  for r in rows_of(out):
    want = BON_PRM[r["method"][len("bon_prm_") :]][r["budget"] - 1]
    assert r["accuracy"] == pytest.approx(want, abs=1e-12), r
  got = [r["accuracy"] for r in rows_of(out) if r["method"] == "bon_prm_min"]
  assert not np.allclose(got, OLD_BON_PRM_MIN)  # what the old copy reported


def test_monte_carlo_rows_do_not_depend_on_the_other_budgets():
  rng = np.random.default_rng(0)
  P, N = 3, 30  # C(30, 8) > 20000 subsets: Monte Carlo
  answers = rng.integers(0, 4, (P, N)).astype(np.int32)
  pool = dict(
    answers=answers, correct=answers == 0, orm=rng.random((P, N)).astype(np.float32)
  )
  for m in ("majority", "weighted_majority_orm", "bom_orm"):
    both = scaling.selection_accuracy(m, pool, [2, 8], seed=3)
    alone = scaling.selection_accuracy(m, pool, [8], seed=3)
    assert both[1] == alone[0], m


# ------------------------------ config_utils -----------------------------------


def test_range_helpers_name_the_field():
  c = ml_collections.ConfigDict(dict(a=0, xs=(1, "b"), sec=dict(lr=-1.0)))
  with pytest.raises(ValueError, match=r"config.a must be > 0, got 0"):
    config_utils.positive(c, "a")
  with pytest.raises(ValueError, match=r"config.sec.lr must be >= 0"):
    config_utils.non_negative(c, "sec.lr")
  with pytest.raises(ValueError, match=r"config.xs\[1\] must be an int"):
    config_utils.int_list(c, "xs")
  assert config_utils.flatten(c, exclude=("xs",)) == {"a": 0, "sec.lr": -1.0}
