"""Solve-versus-verify study: GenRM estimators against brute-force enumeration,
budget accounting, the generative verifier's targets against arith.step_labels,
and a tiny end-to-end run that resumes."""

import itertools
import json
import os

import numpy as np
import pytest

from algorithms import genrm
from _tiny_policy import save_tiny_policy
from configs import genrm_arith
from experiments import genrm_allocation as ga
from experiments import train_genverifier as tg
from experiments.tasks import arith
from jaxllm import ModelConfig
from jaxllm import flops as flops_lib


# ------------------------------ brute force --------------------------------


def brute_force(verdicts_NxM, correct_N, answers_N, s, v, tie_break):
  """Average over every S-subset of solutions and every V-subset of each chosen
  solution's verdicts of the submitted solution's correctness (exact
  expectation over the final uniform tie-break)."""
  n, m = verdicts_NxM.shape
  total, count = 0.0, 0
  for sub in itertools.combinations(range(n), s):
    for vs in itertools.product(*[itertools.combinations(range(m), v) for _ in sub]):
      score = [verdicts_NxM[i, list(c)].mean() for i, c in zip(sub, vs)]
      top = [i for i, x in zip(sub, score) if x == max(score)]
      if tie_break == "majority":
        votes = {}
        for i in top:
          if answers_N[i] >= 0:
            votes[answers_N[i]] = votes.get(answers_N[i], 0) + 1
        if votes:
          best = max(votes.values())
          top = [i for i in top if answers_N[i] >= 0 and votes[answers_N[i]] == best]
      total += np.mean([correct_N[i] for i in top])
      count += 1
  return total / count


def random_pool(rng, p, n, m, n_answers=3):
  verdicts = rng.random((p, n, m)) < rng.random((p, n, 1))
  answers = rng.integers(-1, n_answers, (p, n))
  good = rng.integers(0, n_answers, (p, 1))
  correct = (answers == good) & (answers >= 0)
  return verdicts, answers, correct


@pytest.mark.parametrize("n,m", [(4, 3), (5, 2), (3, 4)])
def test_exact_estimator_matches_brute_force(n, m):
  rng = np.random.default_rng(n * 10 + m)
  verdicts, answers, correct = random_pool(rng, 4, n, m)
  yes = verdicts.sum(-1)
  ss = list(range(1, n + 1))
  for v in range(1, m + 1):
    got = genrm.genrm_accuracy(yes, m, correct, ss, v)
    want = np.array(
      [
        [brute_force(verdicts[i], correct[i], answers[i], s, v, "random") for s in ss]
        for i in range(4)
      ]
    )
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_pick_probabilities_sum_to_one_and_closed_forms():
  rng = np.random.default_rng(1)
  yes = rng.integers(0, 6, (3, 7))
  probs = genrm.pick_probabilities(yes, 5, [1, 3, 7], 2)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-12)
  # S = 1: each solution equally likely, whatever the verdicts
  np.testing.assert_allclose(probs[:, 0], 1 / 7, atol=1e-12)
  # V = M and S = N: deterministic scores, uniform among the top yes count
  p = genrm.pick_probabilities(yes, 5, [7], 5)[:, 0]
  top = yes == yes.max(1, keepdims=True)
  np.testing.assert_allclose(p, top / top.sum(1, keepdims=True), atol=1e-12)


def test_monte_carlo_matches_brute_force_both_tie_breaks():
  rng = np.random.default_rng(7)
  verdicts, answers, correct = random_pool(rng, 3, 5, 3)
  yes = verdicts.sum(-1)
  ss = [1, 2, 3, 5]
  for tie in ("random", "majority"):
    for v in (1, 2):
      est = genrm.genrm_accuracy_mc(
        yes,
        3,
        correct,
        ss,
        v,
        answers_PxN=answers,
        tie_break=tie,
        num_subsets=20_000,
        seed=v,
      )
      want = np.array(
        [
          [brute_force(verdicts[i], correct[i], answers[i], s, v, tie) for s in ss]
          for i in range(3)
        ]
      )
      # 5 standard errors (plus float slack where the outcome is constant)
      assert np.all(np.abs(est.value_PxS - want) <= 5 * est.stderr_PxS + 1e-9), (
        tie,
        v,
        est.value_PxS,
        want,
      )


def test_estimator_input_errors():
  yes = np.array([[1, 2]])
  with pytest.raises(ValueError, match="S values"):
    genrm.genrm_accuracy(yes, 2, [[1, 0]], [3], 1)
  with pytest.raises(ValueError, match="V must be"):
    genrm.genrm_accuracy(yes, 2, [[1, 0]], [1], 3)
  with pytest.raises(ValueError, match="yes_PxN"):
    genrm.genrm_accuracy(np.array([[1, 5]]), 2, [[1, 0]], [1], 1)
  with pytest.raises(ValueError, match="correct_PxN"):
    genrm.genrm_accuracy(yes, 2, [[1, 0, 1]], [1], 1)
  with pytest.raises(ValueError, match="answers_PxN"):
    genrm.genrm_accuracy_mc(yes, 2, [[1, 0]], [1], 1, tie_break="majority")
  with pytest.raises(ValueError, match="tie_break"):
    genrm.genrm_accuracy_mc(yes, 2, [[1, 0]], [1], 1, tie_break="first")


# ------------------------------ budgets ------------------------------------


def test_budget_and_lambda():
  np.testing.assert_allclose(
    genrm.budget([1, 4, 8], [0, 2, 16], 0.5), [1.0, 4 * 2.0, 8 * 9.0]
  )
  assert genrm.token_ratio([[30, 10]], [10, 30, 20]) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="lambda"):
    genrm.budget(1, 1, -0.1)
  with pytest.raises(ValueError, match="S >= 1"):
    genrm.budget(0, 1, 1.0)


def test_crossover_budget():
  b = [1, 2, 4, 8, 16]
  assert (
    genrm.crossover_budget(b, [0.1, 0.3, 0.2, 0.5, 0.6], [0.2, 0.2, 0.3, 0.4, 0.5]) == 8
  )
  assert (
    genrm.crossover_budget(b, [0.1, 0.3, 0.5, 0.5, 0.4], [0.2, 0.2, 0.3, 0.4, 0.5])
    is None
  )
  assert genrm.crossover_budget(b, [0.3] * 5, [0.2, 0.2, np.nan, 0.2, 0.2]) == 1


def test_cost_model_flops_match_per_sample_sums():
  cfg = ModelConfig(
    vocab_size=22,
    d_model=16,
    n_layers=2,
    n_heads=2,
    n_kv_heads=2,
    d_ff=32,
    max_seq_len=256,
  )
  rng = np.random.default_rng(0)
  P, N, M = 3, 4, 2
  pool = dict(
    lengths=rng.integers(3, 20, (P, 6)),
    prompt_lengths=rng.integers(5, 12, P),
    chain_lengths=rng.integers(4, 30, (P, N, M)),
    verifier_prompt_lengths=rng.integers(20, 40, (P, N)),
  )
  cost = ga.cost_model(pool, cfg, cfg)
  gen = [
    float(flops_lib.generate_flops(cfg, pool["prompt_lengths"][p], n))
    for p in range(P)
    for n in pool["lengths"][p]
  ]
  ver = [
    float(flops_lib.generate_flops(cfg, pool["verifier_prompt_lengths"][p, n], c))
    for p in range(P)
    for n in range(N)
    for c in pool["chain_lengths"][p, n]
  ]
  pre = np.mean(
    [float(flops_lib.prefill_flops(cfg, x)) for x in pool["prompt_lengths"]]
  )
  vpre = np.mean(
    [
      float(flops_lib.prefill_flops(cfg, x))
      for x in pool["verifier_prompt_lengths"].ravel()
    ]
  )
  # per problem: prompt prefill once + S decodes; verifier: S prefills + S*V decodes
  for s, v in ((1, 0), (4, 0), (2, 3), (4, 1)):
    want = pre + s * (np.mean(gen) - pre)
    if v:
      want += s * vpre + s * v * (np.mean(ver) - vpre)
    assert cost.compute(s, v)["flops"] == pytest.approx(want, rel=1e-12)
  lam = pool["chain_lengths"].mean() / pool["lengths"].mean()
  assert cost.lam == pytest.approx(lam)
  assert cost.budget(4, 2) == pytest.approx(4 * (1 + 2 * lam))


# ------------------------------ the verifier format ------------------------


def corrupt(rng, p: arith.ArithProblem) -> str:
  """A candidate solution: correct, or with one line altered/dropped/added."""
  lines = list(p.steps) + [f"A:{p.answer}"]
  kind = rng.integers(6)
  i = int(rng.integers(len(lines)))
  if kind == 1:
    lines[i] = lines[i][:-1] + str((int(lines[i][-1]) + 1) % 10)
  elif kind == 2:
    del lines[i]
  elif kind == 3:
    lines.insert(i, lines[i])
  elif kind == 4:
    lines = lines[:i]
  elif kind == 5:
    lines.append("1+1=2")
  return arith.DELIM.join(lines)


def test_verifier_targets_follow_step_labels():
  rng = np.random.default_rng(0)
  problems = arith.generate(300, 3, n_digits=1)
  verdicts = []
  for p in problems:
    cand = corrupt(rng, p)
    chain, verdict, marks = tg.verification_target(p, cand)
    labels = arith.step_labels(p, cand)
    need = p.n_steps + 1
    full = [bool(x) for x in labels[:need]] + [False] * (need - len(labels))
    # marks: the exact labels up to and including the first wrong line
    first_bad = full.index(False) if False in full else need
    assert marks == full[: first_bad + 1]
    assert verdict == all(full)
    if verdict:
      assert arith.check_answer(p, cand)
    lines = chain.split("\n")
    cand_lines = cand.split("\n") if cand else []
    expected = list(p.steps) + [f"A:{p.answer}"]
    stated = [
      l.split("=")[-1] if "=" in l else l.replace("A:", "", 1) for l in cand_lines
    ]
    want = [
      f"{expected[i]}:{stated[i] if i < len(stated) else ''}:{int(m)}"
      for i, m in enumerate(marks)
    ]
    assert lines[:-1] == want
    assert lines[-1] == ("=1" if verdict else "=0")
    assert tg.parse_verdict(chain) == verdict
    toks, mask = tg.verifier_example(p, cand)
    prompt = tg.verifier_prompt(p, cand)
    assert toks[0] == arith.TOKENIZER.bos_id and toks[-1] == arith.TOKENIZER.eos_id
    assert arith.TOKENIZER.decode(toks) == prompt + chain
    assert sum(mask) == len(chain) + 1 and mask[-(len(chain) + 1) :] == [1] * (
      len(chain) + 1
    )
    # weighted: the mark / verdict digit ending each chain line
    _, wmask = tg.verifier_example(p, cand, mark_weight=5)
    tail = wmask[-(len(chain) + 1) :]
    heavy = [i for i, w in enumerate(tail) if w == 5]
    assert [chain[i] for i in heavy] == [l[-1] for l in lines]
    assert all(w == 1 for i, w in enumerate(tail) if i not in heavy)
    verdicts.append(verdict)
  assert 0.1 < np.mean(verdicts) < 0.6  # both kinds exercised
  assert not tg.parse_verdict("3+4=7:1\n=")
  assert not tg.parse_verdict("3+4=7:1")


# ------------------------------ end to end ---------------------------------


def _tiny_config(root):
  c = genrm_arith.get_config()
  c.policy_dir, _ = save_tiny_policy(str(root))
  c.verifier_dir = str(root / "verifier")
  v = c.verifier
  v.train_problems, v.samples_per_problem, v.max_new_tokens = 8, 2, 8
  v.steps, v.batch_size, v.seq_len, v.log_every = 2, 2, 64, 0
  v.warmup_steps, v.checkpoint_every = 1, 1
  v.eval_problems, v.eval_samples, v.eval_verifications = 2, 2, 2
  c.n_problems, c.pool_size, c.sc_pool_size, c.verifications = 5, 4, 6, 3
  c.max_new_tokens, c.max_verify_tokens, c.rows_per_call = 8, 8, 24
  c.chunk_problems = 2
  c.s_grid, c.v_grid, c.plot_v = (1, 2, 4), (1, 3), (1, 3)
  c.budgets, c.mc_subsets = (1, 2, 4, 8), 50
  return c


def test_end_to_end_tiny_run_resumes(tmp_path):
  c = _tiny_config(tmp_path)
  out = str(tmp_path / "study")
  s1 = ga.run(c, out, log=lambda s: None)
  assert s1["verifier_trained"] and s1["solutions_generated"]
  assert s1["chunks_generated"] == 3
  assert os.path.exists(os.path.join(out, "genrm_allocation.png"))
  assert os.path.exists(os.path.join(out, "summary.json"))
  assert set(s1["table"]) == {f"S{s}_V{v}" for s in (1, 2, 4) for v in (1, 3)}
  pool, _ = ga.load_or_build_pool(c, out)
  assert pool["yes"].shape == (5, 4, 3) and pool["correct"].shape == (5, 6)
  # the table is the estimator applied to the saved pool
  acc = genrm.genrm_accuracy(
    pool["yes"].sum(-1), 3, pool["correct"][:, :4], [1, 2, 4], 3
  ).mean(0)
  np.testing.assert_allclose([s1["table"][f"S{s}_V3"] for s in (1, 2, 4)], acc)

  s2 = ga.run(c, out, log=lambda s: None)  # nothing left to do
  assert not s2["verifier_trained"] and not s2["solutions_generated"]
  assert s2["chunks_generated"] == 0 and s2["new_rows"] == 0
  assert s2["table"] == s1["table"]

  # a killed run: one verification chunk missing, rows.jsonl torn mid-line
  os.remove(os.path.join(out, "verify_chunk001.npz"))
  rows = os.path.join(out, "rows.jsonl")
  with open(rows) as f:
    lines = f.readlines()
  with open(rows, "w") as f:
    f.writelines(lines[:3] + [lines[3][:10]])
  s3 = ga.run(c, out, log=lambda s: None)
  assert s3["chunks_generated"] == 1 and not s3["solutions_generated"]
  assert s3["new_rows"] == len(lines) - 3
  assert s3["table"] == s1["table"]  # same keys per chunk: identical pool

  c2 = _tiny_config(tmp_path / "other")
  c2.verifier_dir = c.verifier_dir
  c2.verifications = 2
  # (a V grid beyond the verifications is itself refused, before anything)
  with pytest.raises(
    ValueError,
    match=r"config.v_grid\[1\]=3 exceeds "
    r"config.verifications=2",
  ):
    ga.run(c2, out, log=lambda s: None)
  c2.v_grid, c2.plot_v = (1, 2), (1, 2)
  with pytest.raises(ValueError, match="other settings"):
    ga.run(c2, out, log=lambda s: None)
