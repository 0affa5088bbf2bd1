"""Scaling sweep: resumable rows, no regeneration on rerun, forked prefill."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from _tiny_policy import save_tiny_policy
from configs import scaling_arith
from experiments import scaling, sweep_tasks
from jaxllm import checkpoint, reward


def _tiny_models(root):
  """A random tiny policy and random PRM/ORM, saved as the training scripts
  save them (the sweep's machinery does not care that they are untrained)."""
  pol, cfg = save_tiny_policy(root)
  ver = os.path.join(root, "verifier")
  os.makedirs(ver)
  checkpoint.save_model_config(os.path.join(ver, checkpoint.MODEL_CONFIG_FILE), cfg)
  for i, name in enumerate(("prm", "orm")):
    reward.save_reward_params(
      os.path.join(ver, name), reward.init_reward_params(cfg, jax.random.key(i))
    )
  return pol, ver


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("sweep")
  pol, ver = _tiny_models(str(root))
  c = scaling_arith.get_config()
  c.policy_dir, c.verifier_dir = pol, ver
  c.n_problems, c.pool_size, c.budgets, c.seeds = 6, 8, (1, 2, 4, 8), (0, 1)
  c.max_new_tokens, c.rows_per_call = 16, 48
  c.search_methods, c.search_budgets, c.search_seeds = ("pf",), (2,), (0,)
  c.max_step_tokens, c.max_steps = 6, 3
  return root, c


def _rows(out):
  with open(os.path.join(out, "rows.jsonl")) as f:
    rows = [json.loads(l) for l in f if l.strip()]
  return {(r["method"], r["budget"], r["seed"]): r for r in rows}


def test_rerun_does_no_work_and_kill_resume_matches(setup):
  root, c = setup
  full = str(root / "full")
  s1 = scaling.run_sweep(c, full)
  assert s1["pools_generated"] == 2
  n_rows = len(c.methods) * len(c.budgets) * len(c.seeds) + 1  # + one PF row
  assert s1["new_rows"] == n_rows
  s2 = scaling.run_sweep(c, full)  # second run: nothing to do
  assert s2["pools_generated"] == 0 and s2["new_rows"] == 0
  assert s2["table"] == s1["table"]
  ref = _rows(full)
  assert len(ref) == n_rows

  # A "killed" run: seed 1's pool never written, rows cut mid-line. Its
  # settings.json was written before any pool (as a real run does).
  killed = str(root / "killed")
  os.makedirs(killed)
  with open(os.path.join(full, "settings.json")) as f:
    settings = f.read()
  with open(os.path.join(killed, "settings.json"), "w") as f:
    f.write(settings)
  with open(os.path.join(full, "rows.jsonl")) as f:
    lines = f.readlines()
  keep = [l for l in lines if json.loads(l)["seed"] == 0][:9]
  with open(os.path.join(killed, "rows.jsonl"), "w") as f:
    f.writelines(keep)
    f.write(lines[-1][:20])  # a torn line
  os.link(os.path.join(full, "pool_seed0.npz"), os.path.join(killed, "pool_seed0.npz"))
  s3 = scaling.run_sweep(c, killed)
  assert s3["pools_generated"] == 1  # only seed 1's pool
  got = _rows(killed)
  assert got.keys() == ref.keys()
  for k in ref:
    assert got[k]["accuracy"] == pytest.approx(ref[k]["accuracy"])
    assert got[k]["compute"] == pytest.approx(ref[k]["compute"])


def test_pool_prefills_each_prompt_once(setup, monkeypatch):
  """Sampling N candidates prefills a problem's prompt once (forked cache);
  the compute record charges one prompt prefill per problem."""
  root, c = setup
  from jaxllm.decoding import Transformer

  calls = []
  orig = Transformer.prefill

  def counting(self, params, tokens, lengths, cache_size):
    calls.append(tokens.shape[0])
    return orig(self, params, tokens, lengths, cache_size)

  monkeypatch.setattr(Transformer, "prefill", counting)
  policy, pconfig, vcfg, verifiers = scaling.load_models(c)
  from experiments import train_policy as tp

  problems = tp.heldout_problems(pconfig, c.n_problems)
  c2 = ml_collections.ConfigDict(c.to_dict())
  c2.rows_per_call = 48  # 6 problems x 8 samples in one call
  jax.clear_caches()
  pool = scaling.build_pool(policy, verifiers, problems, c2, seed=5)
  assert calls == [6]  # one prefill row per problem, not per sample
  rec = sweep_tasks.selection_compute("majority", pool, 8, policy[0], vcfg)
  assert rec["prefill_tokens"] == pytest.approx(pool["prompt_lengths"].mean())
  assert rec["generated_tokens"] == pytest.approx(8 * pool["lengths"].mean())


@pytest.mark.slow  # ~1-2 min of CPU: a pool, PF compiled for two scorers
def test_verifier_axis_rows_carry_standard_errors_and_resume(setup):
  """The verifier axis on the tiny models: selection rows per verifier from
  one pool (its oracle arrays saved with it), a search row guided by a noisy
  oracle, the greedy baseline; every table row has a standard error; a
  killed run resumes to the same rows; the per-verifier report and plots."""
  root, c0 = setup
  c = ml_collections.ConfigDict(c0.to_dict())
  c.seeds, c.budgets = (0,), (1, 2, 4)
  c.methods = ("coverage", "majority", "bon_orm", "bon_prm_min")
  c.verifiers = ("oracle", "flip0.3", "learned")
  c.search_methods, c.search_budgets = ("pf",), (2,)
  c.baselines = ("greedy",)
  out = str(root / "verifiers")
  s = scaling.run_sweep(c, out)
  n_sel = (2 + 2 * 3) * 3  # (free + per-verifier methods) x budgets
  assert s["new_rows"] == n_sel + 3 + 1  # + pf under 3 verifiers + greedy
  pool = dict(np.load(os.path.join(out, "pool_seed0.npz")))
  assert pool["oracle_steps"].shape == pool["prm_steps"].shape
  rows = _rows(out)
  assert {r["verifier"] for r in rows.values()} == {"oracle", "flip0.3", "learned"}
  for r in rows.values():
    assert len(r["per_problem"]) == c.n_problems
    assert r["accuracy"] == pytest.approx(np.mean(r["per_problem"]))
    assert r["accuracy_se"] == pytest.approx(
      np.std(r["per_problem"], ddof=1) / np.sqrt(c.n_problems)
    )
  for name, t in s["table"].items():
    assert all(se is not None and np.isfinite(se) for se in t["se"]), name
  # the oracle ORM is the exact final-answer label: best-of-N = coverage
  np.testing.assert_allclose(
    s["table"]["bon_orm@oracle"]["accuracy"], s["table"]["coverage"]["accuracy"]
  )
  assert set(s["verifiers"]) == {"oracle", "flip0.3", "learned"}
  q = s["verifiers"]["oracle"]["quality"]["orm_within_auroc"]
  assert q == 1.0 or np.isnan(q)  # nan: no problem with both classes
  for f in ("accuracy_vs_flops.png", "table.md", "verifier_quality.json"):
    assert os.path.exists(os.path.join(out, f)), f
  # kill: drop the flip0.3 search row and half the rows; resume
  with open(os.path.join(out, "rows.jsonl")) as f:
    lines = f.readlines()
  with open(os.path.join(out, "rows.jsonl"), "w") as f:
    f.writelines(l for i, l in enumerate(lines) if i % 2 and "pf@flip" not in l)
  s2 = scaling.run_sweep(c, out)
  assert s2["pools_generated"] == 0 and s2["new_rows"] > 0
  again = _rows(out)
  assert again.keys() == rows.keys()
  for k in rows:
    assert again[k]["accuracy"] == pytest.approx(rows[k]["accuracy"]), k
    assert again[k]["per_problem"] == pytest.approx(rows[k]["per_problem"]), k
