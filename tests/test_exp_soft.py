"""experiments/soft.py on a tiny config: both fine-tunes run, every depth and the
layer-skip baselines are evaluated and written; bad configs are refused first."""

import json
import os

import pytest

from experiments import config_utils
from experiments import soft as exp
from experiments import workdir as wd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_config():
  c = config_utils.load_config_file(os.path.join(ROOT, "configs", "soft_arith.py"))
  c.model.d_model = 16
  c.model.n_layers = 2
  c.model.n_heads = 2
  c.model.n_kv_heads = 2
  c.model.d_ff = 32
  c.train.steps = 0  # the start = the random init (its training is the standard step)
  c.train.batch_size = 2
  c.finetune.steps = 1
  c.soft.exits = (1,)
  c.eval.n_problems = 3
  c.eval.loss_problems = 3
  c.eval.max_new_tokens = 6
  c.eval.skip_speedups = (2,)
  c.eval.early_exit_thresholds = (0.5,)
  c.eval.spec_depths = (1,)
  c.eval.spec_gamma = 2
  return c


def test_tiny_run_writes_every_depth(tmp_path):
  report = exp.run(_tiny_config(), str(tmp_path), log=lambda s: None)
  rows = report["rows"]
  got = {(r["branch"], r["decoder"], r["depth"]) for r in rows}
  for b in ("standard", "soft"):
    assert {(b, "sub_model", d) for d in (1, 2)} <= got  # exits + the full depth
    assert (b, "skip_s2", 2) in got  # first and last always kept
    ee = [r for r in rows if r["branch"] == b and r["decoder"] == "exit_0.5"]
    assert len(ee) == 1 and 1.0 <= ee[0]["depth"] <= 2.0
  sub = [r for r in rows if r["decoder"] == "sub_model" and r["branch"] == "soft"]
  fl = [r["flops_per_token"] for r in sorted(sub, key=lambda r: r["depth"])]
  assert fl[0] < fl[1]  # deeper costs more
  assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
  assert all(r["loss"] > 0 for r in sub)
  spec = report["self_speculation"]
  assert [(r["branch"], r["draft_depth"]) for r in spec] == [
    ("standard", 1),
    ("soft", 1),
  ]
  assert all(1.0 <= r["tokens_per_target_call"] <= 3.0 for r in spec)  # gamma + 1
  assert all(0.0 <= r["accept_rate"] <= 1.0 for r in spec)
  with open(tmp_path / "results.json") as f:
    assert json.load(f)["rows"] == rows
  assert os.path.exists(tmp_path / "config.json")
  assert os.path.getsize(tmp_path / "accuracy_vs_flops.png") > 0
  cfg, params = wd.load_model(str(tmp_path), "soft")
  assert cfg.n_layers == 2 and len(params.layers) == 2


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("soft.exits", (0, 1), r"config.soft.exits\[0\]"),
    ("soft.exits", (2, 1), "config.soft.exits"),
    ("soft.exits_per_step", 2, "exits_per_step"),
    ("soft.exit_weights", (1.0, 1.0), "exit_weights"),
    ("eval.skip_speedups", (0.5,), "skip_speedups"),
    ("eval.early_exit_thresholds", (1.5,), "early_exit_thresholds"),
    ("eval.spec_depths", (3,), "spec_depths"),
  ],
)
def test_bad_config_is_refused_before_anything_runs(tmp_path, field, value, match):
  c = _tiny_config()
  section, name = field.split(".")
  c[section][name] = value
  with pytest.raises(ValueError, match=match):
    exp.run(c, str(tmp_path / "w"), log=lambda s: None)
  assert not os.path.exists(tmp_path / "w")


# ----------------------------------------------------------------------------------
# The SmolLM2 branch (configs/soft_smollm2.py), a tiny random Llama-like stand-in
# ----------------------------------------------------------------------------------


class _WordTokenizer:
  """A stand-in for SmolLM2's tokenizer: one id per word (hashed), EOS = 1."""

  eos_id = 1

  def apply_chat_template(self, messages):
    text = " ".join(m["content"] for m in messages)
    return [2] + [2 + sum(map(ord, w)) % 60 for w in text.split()][:200]


def _tiny_smollm2_config():
  c = config_utils.load_config_file(os.path.join(ROOT, "configs", "soft_smollm2.py"))
  c.data.train_templates = 3
  c.data.max_new_tokens = 4
  c.data.gen_batch = 2
  c.finetune.steps = 2
  c.finetune.batch_size = 2
  c.finetune.seq_len = 32
  c.finetune.log_every = 1
  c.soft.exits = (1, 2)
  c.eval.n_answers = 2
  return c


def _tiny_load(log=None):
  import jax

  from jaxllm.params import init_params
  from tests._tiny_models import three_layer_config

  cfg = three_layer_config(64, d_model=16, n_heads=2, n_kv_heads=1, max_seq_len=600)
  return cfg, init_params(cfg, jax.random.PRNGKey(0)), _WordTokenizer()


def test_smollm2_branch_runs_end_to_end(tmp_path):
  from experiments.tasks import gsm8k

  if not gsm8k.data_available():
    pytest.skip("no GSM8K data (make gsm8k-data)")
  c = _tiny_smollm2_config()
  assert exp.schema_path(c) == exp.SMOLLM2_CONFIG
  report = exp.run(c, str(tmp_path), log=lambda s: None, load=_tiny_load)
  assert [(r["stage"], r["depth"]) for r in report["rows"]] == [
    (s, d) for s in ("pretrained", "soft") for d in (1, 2, 3)
  ]
  for r in report["rows"]:
    assert r["loss"] > 0 and 0 <= r["agreement"] <= 1 and 0 <= r["accuracy"] <= 1
    assert 0 <= r["acceptance"] <= 1 + 1e-6
    if r["depth"] == 3:
      assert r["agreement"] == 1.0  # the full model agrees with itself
      assert r["acceptance"] == pytest.approx(1.0, abs=1e-5)
  # A random tiny model is not worth drafting with: the full model (speed-up 1)
  # or a shallow exit whose predicted speed-up beats 1.
  pick = report["self_draft"]
  assert report["best_exit"] == pick["depth"] in (1, 2, 3)
  assert pick["predicted_speedup"] >= 1.0
  assert report["train_answers"] == 3 and report["heldout_answers"] == 2
  assert len(report["history"]) == 2
  cfg, params = wd.load_model(str(tmp_path), "soft")
  assert cfg.n_layers == 3 and len(params.layers) == 3
  data = sorted(os.listdir(tmp_path / "data"))
  assert len(data) == 2
  # A rerun reuses the cached answers (same files, nothing regenerated).
  mtimes = [os.path.getmtime(tmp_path / "data" / f) for f in data]
  exp.run(c, str(tmp_path), log=lambda s: None, load=_tiny_load)
  assert [os.path.getmtime(tmp_path / "data" / f) for f in data] == mtimes


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("data.train_templates", 100, "train_templates"),
    ("eval.n_answers", 98, "n_answers"),
    ("finetune.steps", 0, "finetune.steps"),
    ("soft.exits_per_step", 5, "exits_per_step"),
    ("soft.exits", (), "soft.exits"),
  ],
)
def test_bad_smollm2_config_is_refused_before_loading(tmp_path, field, value, match):
  c = _tiny_smollm2_config()
  section, name = field.split(".")
  c[section][name] = value

  def load(log=None):
    raise AssertionError("loaded before the config was checked")

  with pytest.raises(ValueError, match=match):
    exp.run(c, str(tmp_path / "w"), log=lambda s: None, load=load)
  assert not os.path.exists(tmp_path / "w")


def test_smollm2_exits_are_checked_against_the_loaded_model(tmp_path):
  c = _tiny_smollm2_config()
  c.soft.exits = (2, 4)  # the stand-in has 3 layers
  with pytest.raises(ValueError, match="3 layers"):
    exp.run(c, str(tmp_path), log=lambda s: None, load=_tiny_load)


def _bench(tmp_path, *args):
  import subprocess
  import sys

  return subprocess.run(
    [sys.executable, "-m", "experiments.bench_speculative", f"--out={tmp_path}/o.json"]
    + list(args),
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=300,
  )


def test_bench_smollm_soft_pair_skips_without_a_soft_run(tmp_path):
  proc = _bench(tmp_path, "--pairs=smollm_soft", f"--soft_dir={tmp_path}/none")
  assert proc.returncode == 0, proc.stderr
  assert "skipping smollm_soft: no SoFT params" in proc.stdout
  with open(tmp_path / "o.json") as f:
    assert json.load(f)["pairs"] == []


def test_bench_smollm_soft_flags_are_checked(tmp_path):
  proc = _bench(tmp_path, "--pairs=smollm_soft", "--soft_draft_layers=30")
  assert proc.returncode != 0 and "--soft_draft_layers must be in [0, 30)" in (
    proc.stderr
  )
  proc = _bench(tmp_path, "--pairs=smollm_soft", "--soft_budgets=4,10")
  assert proc.returncode != 0 and "--soft_budgets" in proc.stderr


def test_best_self_draft_maximises_the_closed_form():
  """best_self_draft picks the (depth, gamma) maximising Leviathan et al.'s
  speed-up over a brute-force grid, with the FLOPs cost ratio of each depth."""
  from algorithms import soft
  from jaxllm import flops
  from tests._tiny_models import three_layer_config

  cfg = three_layer_config(64, d_model=16, n_heads=2, n_kv_heads=1, max_seq_len=64)
  metrics = {1: {"acceptance": 0.5}, 2: {"acceptance": 0.9}, 3: {"acceptance": 1.0}}
  pick = exp.best_self_draft(cfg, metrics, context=20, max_gamma=6)
  full = float(flops.decode_flops(cfg, 20))
  grid = {}
  for d in (1, 2):
    c = float(flops.decode_flops(soft.sub_model(cfg, d).cfg, 20)) / full
    a = metrics[d]["acceptance"]
    for g in range(1, 7):
      grid[(d, g)] = (1 - a ** (g + 1)) / (1 - a) / (g * c + 1)
  (d, g), sp = max(grid.items(), key=lambda kv: kv[1])
  assert (pick["depth"], pick["gamma"]) == (d, g)
  assert pick["predicted_speedup"] == pytest.approx(sp)
  assert pick["cost_ratio"] < 1
