"""Tests for algorithms/estimators.py against brute-force enumeration of k-subsets."""

import collections
import fractions
import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest

from algorithms import estimators as est
from algorithms import selection as sel


# ----------------------------------------------------------------------------------
# Brute-force references: average a per-subset outcome over every k-subset.


def brute(n, k, outcome):
  vals = [outcome(list(s)) for s in itertools.combinations(range(n), k)]
  return float(np.mean(vals))


def bon_outcome(scores, correct):
  """Expected correctness of best-of-subset with uniform random tie-breaking."""

  def f(s):
    best = max(scores[i] for i in s)
    tied = [i for i in s if scores[i] == best]
    return np.mean([correct[i] for i in tied])

  return f


def vote_outcome(answers, correct, weights=None, tie_break="random"):
  def f(s):
    totals = collections.defaultdict(float)
    ok = {}
    for i in s:
      if answers[i] >= 0:
        totals[answers[i]] += 1.0 if weights is None else weights[i]
        ok[answers[i]] = correct[i]
    if not totals:
      return 0.0
    best = max(totals.values())
    tied = sorted(a for a, t in totals.items() if t == best)
    if tie_break == "random":
      return np.mean([ok[a] for a in tied])
    return float(ok[tied[0]])

  return f


def bom_outcome(answers, scores, correct, alpha, num_submit, reward):
  agg = {"mean": lambda v: sum(v) / len(v), "max": max, "sum": sum}[reward]

  def f(s):
    groups = collections.defaultdict(list)
    ok = {}
    for i in s:
      if answers[i] >= 0:
        groups[answers[i]].append(scores[i])
        ok[answers[i]] = correct[i]
    kept = {a: v for a, v in groups.items() if len(v) / len(s) >= alpha} or groups
    top = sorted(kept, key=lambda a: (-agg(kept[a]), a))[:num_submit]
    return float(any(ok[a] for a in top))

  return f


def random_case(rng, p, n, num_answers=4):
  """Answers in [-1, num_answers); the correct answer per problem is id 0 (so equal
  answers agree on correctness); scores on a coarse grid, so ties are frequent."""
  answers = rng.integers(-1, num_answers, size=(p, n))
  correct = answers == 0
  scores = rng.integers(0, 4, size=(p, n)) / 4.0
  return answers, scores, correct


# ----------------------------------------------------------------------------------
# pass@k.


def test_pass_at_k_closed_form_known_cases():
  ks = [1, 2, 5, 10]
  got = est.pass_at_k(10, np.array([0, 1, 5, 10]), ks)
  np.testing.assert_allclose(got[0], 0.0)
  np.testing.assert_allclose(got[1], np.array(ks) / 10)  # one correct: k / n
  np.testing.assert_allclose(got[2], [0.5, 1 - (5 * 4) / (10 * 9), 1 - 1 / 252, 1.0])
  np.testing.assert_allclose(got[3], 1.0)
  assert est.pass_at_k(7, 3, [5]).shape == (1,)
  np.testing.assert_allclose(est.pass_at_k(7, 3, [5]), [1.0])  # n - c < k


def test_pass_at_k_large_n_stable_vs_exact_fractions():
  n, cs, ks = 10_000, np.array([1, 5, 137, 9_000]), [1, 10, 100, 1_000, 5_000]
  got = est.pass_at_k(n, cs, ks)
  for i, c in enumerate(cs):
    for j, k in enumerate(ks):
      want = 1 - fractions.Fraction(math.comb(n - c, k), math.comb(n, k))
      assert abs(got[i, j] - float(want)) <= 1e-12, (c, k)


def test_pass_at_k_per_problem_n_and_brute_force():
  rng = np.random.default_rng(0)
  for _ in range(20):
    n = int(rng.integers(1, 11))
    c = int(rng.integers(0, n + 1))
    correct = np.zeros(n, bool)
    correct[rng.choice(n, c, replace=False)] = True
    ks = list(range(1, n + 1))
    got = est.pass_at_k(n, np.array([c]), ks)[0]
    want = [brute(n, k, lambda s: float(correct[s].any())) for k in ks]
    np.testing.assert_allclose(got, want, atol=1e-12)
  got = est.pass_at_k(np.array([4, 6]), np.array([1, 1]), [1, 2])
  np.testing.assert_allclose(got, [[1 / 4, 1 / 2], [1 / 6, 1 / 3]])


# ----------------------------------------------------------------------------------
# BoN@k.


def test_best_of_n_weights_match_binomials():
  n, ks = 9, [1, 2, 4, 9]
  w = est.best_of_n_weights(n, ks)
  for r, k in enumerate(ks):
    want = [math.comb(n - i - 1, k - 1) / math.comb(n, k) for i in range(n)]
    np.testing.assert_allclose(w[r], want, atol=1e-15)
  np.testing.assert_allclose(w.sum(1), 1.0)


def test_best_of_n_at_k_brute_force_with_ties():
  rng = np.random.default_rng(1)
  for n in range(1, 11):
    answers, scores, correct = random_case(rng, p=4, n=n)
    ks = list(range(1, n + 1))
    got = est.best_of_n_at_k(scores, correct, ks)
    for i in range(4):
      want = [brute(n, k, bon_outcome(scores[i], correct[i])) for k in ks]
      np.testing.assert_allclose(got[i], want, atol=1e-12, err_msg=f"n={n}")


def test_best_of_n_at_k_hand_case():
  # Scores [3, 3, 1], correct [1, 0, 1]: k=1 -> 2/3; k=2 -> subsets {0,1}: 1/2,
  # {0,2}: 1, {1,2}: 0 -> 1/2; k=3 -> 1/2 (tie between 0 and 1).
  got = est.best_of_n_at_k(
    np.array([[3.0, 3.0, 1.0]]), np.array([[1, 0, 1]]), [1, 2, 3]
  )
  np.testing.assert_allclose(got, [[2 / 3, 1 / 2, 1 / 2]])


# ----------------------------------------------------------------------------------
# maj@k, weighted maj@k, BoM@k.


@pytest.mark.parametrize("tie_break", ["random", "lowest_id"])
def test_majority_at_k_exact_brute_force(tie_break):
  rng = np.random.default_rng(2)
  for n in (1, 3, 6, 9):
    answers, _, correct = random_case(rng, p=5, n=n)
    ks = list(range(1, n + 1))
    res = est.majority_at_k(answers, correct, ks, tie_break=tie_break)
    assert res.exact_K.all()
    np.testing.assert_array_equal(res.num_subsets_K, [math.comb(n, k) for k in ks])
    np.testing.assert_array_equal(res.stderr_PxK, 0.0)
    for i in range(5):
      want = [
        brute(n, k, vote_outcome(answers[i], correct[i], tie_break=tie_break))
        for k in ks
      ]
      np.testing.assert_allclose(res.value_PxK[i], want, atol=1e-12)


def check_weighted_majority_brute_force(answers, scores, correct, vote_weights):
  """weighted_majority_at_k(scores) equals brute-force enumeration of the vote
  with `vote_weights` for every k and both tie-breaks (5 problems)."""
  n = answers.shape[1]
  ks = list(range(1, n + 1))
  for tie_break in ("random", "lowest_id"):
    res = est.weighted_majority_at_k(answers, scores, correct, ks, tie_break=tie_break)
    for i in range(5):
      want = [
        brute(n, k, vote_outcome(answers[i], correct[i], vote_weights[i], tie_break))
        for k in ks
      ]
      np.testing.assert_allclose(res.value_PxK[i], want, atol=1e-12)


def test_weighted_majority_at_k_exact_brute_force():
  rng = np.random.default_rng(3)
  for n in (2, 5, 8):
    answers, scores, correct = random_case(rng, p=5, n=n)
    check_weighted_majority_brute_force(answers, scores, correct, scores)


def check_bom_brute_force(answers, scores, correct, reward, settings, outcome_fn):
  """best_of_majority_at_k equals brute-force enumeration of `outcome_fn`
  (bom_outcome or bom_outcome_nan) for every k and (alpha, num_submit) in
  `settings` (6 problems)."""
  n = answers.shape[1]
  ks = list(range(1, n + 1))
  for alpha, num_submit in settings:
    res = est.best_of_majority_at_k(
      answers, scores, correct, ks, alpha=alpha, num_submit=num_submit, reward=reward
    )
    for i in range(6):
      want = [
        brute(
          n,
          k,
          outcome_fn(answers[i], scores[i], correct[i], alpha, num_submit, reward),
        )
        for k in ks
      ]
      np.testing.assert_allclose(
        res.value_PxK[i], want, atol=1e-12, err_msg=f"alpha={alpha} submit={num_submit}"
      )


@pytest.mark.parametrize("reward", ["mean", "max", "sum"])
def test_best_of_majority_at_k_exact_brute_force(reward):
  rng = np.random.default_rng(4)
  n = 8
  answers, scores, correct = random_case(rng, p=6, n=n)
  settings = ((0.0, 1), (0.3, 1), (0.3, 2), (0.6, 2))
  check_bom_brute_force(answers, scores, correct, reward, settings, bom_outcome)


def test_best_of_majority_at_k_agrees_with_selection_module():
  # The numpy estimator and the jnp selection rule must agree subset by subset.
  rng = np.random.default_rng(5)
  n, k, alpha, num_submit = 7, 4, 0.3, 2
  answers, scores, correct = random_case(rng, p=3, n=n)
  subsets = np.array(list(itertools.combinations(range(n), k)))
  res = est.best_of_majority_at_k(
    answers, scores, correct, [k], alpha=alpha, num_submit=num_submit
  )
  for i in range(3):
    top = np.asarray(
      sel.best_of_majority(
        jnp.asarray(answers[i][subsets], jnp.int32),
        jnp.asarray(scores[i][subsets], jnp.float32),
        alpha,
        k=num_submit,
      )
    )
    hit = (top == 0).any(1)  # id 0 is the correct answer
    np.testing.assert_allclose(res.value_PxK[i, 0], hit.mean(), atol=1e-12)


def test_majority_at_k_monte_carlo_within_standard_errors():
  rng = np.random.default_rng(6)
  n, ks = 12, [3, 6, 9]
  answers = rng.integers(-1, 3, size=(15, n))
  correct = answers == 0
  exact = est.majority_at_k(answers, correct, ks, method="exact")
  mc = est.majority_at_k(
    answers, correct, ks, method="monte_carlo", num_subsets=3000, seed=7
  )
  assert exact.exact_K.all() and not mc.exact_K.any()
  np.testing.assert_array_equal(mc.num_subsets_K, 3000)
  varying = mc.stderr_PxK > 0
  assert varying.mean() > 0.5  # the check below is not vacuous
  z = np.abs(mc.value_PxK - exact.value_PxK)[varying] / mc.stderr_PxK[varying]
  assert z.max() < 5.5, z.max()
  # Where the MC outcome never varied, the exact value must agree too (here: always).
  np.testing.assert_allclose(mc.value_PxK[~varying], exact.value_PxK[~varying])


def test_auto_method_switches_on_subset_count():
  rng = np.random.default_rng(8)
  answers, scores, correct = random_case(rng, p=2, n=10)
  res = est.weighted_majority_at_k(
    answers, scores, correct, [1, 5, 10], max_exact_subsets=100, num_subsets=50
  )
  np.testing.assert_array_equal(res.exact_K, [True, False, True])  # C(10,5) = 252
  np.testing.assert_array_equal(res.num_subsets_K, [10, 50, 1])


def test_validation_errors():
  answers = np.array([[0, 1, 1]])
  correct = np.array([[True, False, False]])
  scores = np.array([[0.1, 0.2, 0.3]])
  with pytest.raises(ValueError, match=r"k=4 > n=3"):
    est.majority_at_k(answers, correct, [1, 4])
  with pytest.raises(ValueError, match=r"k=5 > n=3"):
    est.best_of_n_at_k(scores, correct, [5])
  with pytest.raises(ValueError, match=r"k=11 > n=10"):
    est.pass_at_k(10, [3], [11])
  with pytest.raises(ValueError, match="k=0"):
    est.pass_at_k(10, [3], [0])
  with pytest.raises(ValueError, match="c <= n"):
    est.pass_at_k(10, [11], [1])
  with pytest.raises(ValueError, match="disagree"):
    est.majority_at_k(answers, np.array([[True, True, False]]), [1])
  with pytest.raises(ValueError, match="integer"):
    est.majority_at_k(answers.astype(float), correct, [1])
  # A NaN score is a missing score (ranks last), no longer an error: the correct
  # sample 0 is only picked alone (k=1: 1/3); with any other sample it loses.
  np.testing.assert_allclose(
    est.best_of_n_at_k(np.array([[np.nan, 1.0, 2.0]]), correct, [1, 2, 3]),
    [[1 / 3, 0.0, 0.0]],
  )
  with pytest.raises(ValueError, match="shape"):
    est.weighted_majority_at_k(answers, scores[:, :2], correct, [1])
  with pytest.raises(ValueError, match="method"):
    est.majority_at_k(answers, correct, [1], method="sometimes")
  with pytest.raises(ValueError, match="tie_break"):
    est.majority_at_k(answers, correct, [1], tie_break="coin")
  with pytest.raises(ValueError, match="alpha"):
    est.best_of_majority_at_k(answers, scores, correct, [1], alpha=2.0)


# ----------------------------------------------------------------------------------
# NaN scores (missing): rank below every number, contribute nothing to group sums,
# means and maxima -- the rules of algorithms.selection.


def bon_outcome_nan(scores, correct):
  """bon_outcome where NaN ranks below -inf and NaNs tie with each other."""

  def f(s):
    scored = [i for i in s if not math.isnan(scores[i])]
    if not scored:
      return np.mean([correct[i] for i in s])
    best = max(scores[i] for i in scored)
    return np.mean([correct[i] for i in scored if scores[i] == best])

  return f


def bom_outcome_nan(answers, scores, correct, alpha, num_submit, reward):
  def agg(v):
    v = [x for x in v if not math.isnan(x)]
    if reward == "sum":
      return sum(v)
    if not v:
      return None
    return sum(v) / len(v) if reward == "mean" else max(v)

  def f(s):
    groups = collections.defaultdict(list)
    ok = {}
    for i in s:
      if answers[i] >= 0:
        groups[answers[i]].append(scores[i])
        ok[answers[i]] = correct[i]
    kept = {a: v for a, v in groups.items() if len(v) / len(s) >= alpha} or groups

    def rank(a):
      r = agg(kept[a])
      return (r is None, 0.0 if r is None else -r, a)

    top = sorted(kept, key=rank)[:num_submit]
    return float(any(ok[a] for a in top))

  return f


def with_nans(rng, scores, frac=0.3):
  scores = scores.copy()
  scores[rng.random(scores.shape) < frac] = np.nan
  return scores


def test_best_of_n_at_k_nan_hand_case():
  # Scores [NaN, 1, NaN, 0], correct [1, 0, 1, 0]. k=1: 1/2. k=2 (6 subsets): {0,2}
  # both NaN -> 1; {0,1}, {0,3}, {1,2}, {1,3}, {2,3} pick a scored sample -> 0.
  # So 1/6. k >= 3: always a scored sample -> 0.
  got = est.best_of_n_at_k(
    np.array([[np.nan, 1.0, np.nan, 0.0]]), np.array([[1, 0, 1, 0]]), [1, 2, 3, 4]
  )
  np.testing.assert_allclose(got, [[1 / 2, 1 / 6, 0.0, 0.0]], atol=1e-12)


def test_best_of_n_at_k_nan_brute_force():
  rng = np.random.default_rng(11)
  for n in range(1, 9):
    _, scores, correct = random_case(rng, p=4, n=n)
    scores = with_nans(rng, scores)
    scores[0, :] = np.nan  # one problem fully NaN
    ks = list(range(1, n + 1))
    got = est.best_of_n_at_k(scores, correct, ks)
    for i in range(4):
      want = [brute(n, k, bon_outcome_nan(scores[i], correct[i])) for k in ks]
      np.testing.assert_allclose(got[i], want, atol=1e-12, err_msg=f"n={n}")


def test_weighted_majority_at_k_nan_brute_force():
  rng = np.random.default_rng(12)
  for n in (3, 7):
    answers, scores, correct = random_case(rng, p=5, n=n)
    scores = with_nans(rng, scores)
    zeroed = np.where(np.isnan(scores), 0.0, scores)  # NaN contributes nothing
    check_weighted_majority_brute_force(answers, scores, correct, zeroed)


@pytest.mark.parametrize("reward", ["mean", "max", "sum"])
def test_best_of_majority_at_k_nan_brute_force(reward):
  rng = np.random.default_rng(13)
  n = 7
  answers, scores, correct = random_case(rng, p=6, n=n)
  scores = with_nans(rng, scores, 0.4)
  settings = ((0.0, 1), (0.3, 2))
  check_bom_brute_force(answers, scores, correct, reward, settings, bom_outcome_nan)


@pytest.mark.parametrize("reward", ["mean", "max", "sum"])
def test_nan_rules_agree_with_selection_module(reward):
  rng = np.random.default_rng(14)
  n, k = 7, 4
  answers, scores, correct = random_case(rng, p=3, n=n)
  scores = with_nans(rng, scores, 0.4)
  subsets = np.array(list(itertools.combinations(range(n), k)))
  res = est.best_of_majority_at_k(
    answers, scores, correct, [k], alpha=0.3, num_submit=2, reward=reward
  )
  wres = est.weighted_majority_at_k(
    answers, scores, correct, [k], tie_break="lowest_id"
  )
  for i in range(3):
    a = jnp.asarray(answers[i][subsets], jnp.int32)
    s = jnp.asarray(scores[i][subsets], jnp.float32)
    top = np.asarray(sel.best_of_majority(a, s, 0.3, k=2, reward=reward))
    np.testing.assert_allclose(
      res.value_PxK[i, 0], (top == 0).any(1).mean(), atol=1e-12
    )
    vote = np.asarray(sel.weighted_self_consistency(a, s))
    np.testing.assert_allclose(wres.value_PxK[i, 0], (vote == 0).mean(), atol=1e-12)
