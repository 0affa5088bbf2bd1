"""Tests for algorithms/selection.py against hand-built pools and plain-Python references."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from algorithms import selection as sel


# ----------------------------------------------------------------------------------
# Plain-Python references (independent of the O(N^2) jnp grouping).


def ref_vote(answers, weights=None):
  """Answer with the largest (weighted) vote; ties -> lowest id; -1 if none valid."""
  totals = collections.defaultdict(float)
  for i, a in enumerate(answers):
    if a >= 0:
      totals[a] += 1.0 if weights is None else weights[i]
  if not totals:
    return -1
  best = max(totals.values())
  return min(a for a, t in totals.items() if t == best)


def ref_bom(answers, scores, alpha, k, reward="mean"):
  n = len(answers)
  groups = collections.defaultdict(list)
  for a, s in zip(answers, scores):
    if a >= 0:
      groups[a].append(s)
  agg = {"mean": lambda v: sum(v) / len(v), "max": max, "sum": sum}[reward]
  kept = {a: v for a, v in groups.items() if len(v) / n >= alpha} or groups
  ranked = sorted(kept, key=lambda a: (-agg(kept[a]), a))[:k]
  return ranked + [-1] * (k - len(ranked))


def random_pool(rng, p, n, num_answers, dyadic=True):
  answers = rng.integers(-1, num_answers, size=(p, n)).astype(np.int32)
  if dyadic:  # exact in float32, so sums/means are exact and ties are real ties
    scores = rng.integers(0, 8, size=(p, n)) / 8.0
  else:
    scores = rng.random((p, n))
  return answers, scores.astype(np.float32)


# ----------------------------------------------------------------------------------
# PRM aggregation and best-of-N.


def test_aggregate_step_scores_hand_built():
  # 1 problem, 3 samples, 4 steps; sample 1 has a non-contiguous mask, sample 2 none.
  steps = jnp.array(
    [[[0.9, 0.5, 0.8, 0.0], [0.6, 0.7, 0.2, 0.4], [0.3, 0.3, 0.3, 0.3]]]
  )
  mask = jnp.array([[[1, 1, 1, 0], [1, 0, 0, 1], [0, 0, 0, 0]]], bool)
  expected = {
    "last": [0.8, 0.4, -np.inf],
    "min": [0.5, 0.4, -np.inf],
    "prod": [0.9 * 0.5 * 0.8, 0.6 * 0.4, -np.inf],
    "mean": [(0.9 + 0.5 + 0.8) / 3, 0.5, -np.inf],
  }
  for agg, want in expected.items():
    got = np.asarray(sel.aggregate_step_scores(steps, mask, agg))[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=agg)


def test_best_of_n_prm_each_aggregation_picks_its_sample():
  # Each aggregation has a different winner (values hand-computed in the comments).
  steps = jnp.array(
    [
      [
        [0.1, 0.1, 0.1, 0.1, 0.1, 0.99],  # last .99
        [0.8, 0.8, 0.8, 0.8, 0.8, 0.8],  # min .8
        [1.0, 1.0, 1.0, 0.7, 0.0, 0.0],  # 4 steps: prod .7, mean .925
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.62],
      ]
    ]
  )  # prod .62, mean .9367
  mask = jnp.ones(steps.shape, bool).at[0, 2, 4:].set(False)
  answers = jnp.array([[10, 11, 12, 13]], jnp.int32)
  want = {"last": 0, "min": 1, "prod": 2, "mean": 3}
  for agg, idx in want.items():
    ans, index = sel.best_of_n_prm(steps, mask, answers, agg)
    assert int(index[0]) == idx, agg
    assert int(ans[0]) == 10 + idx, agg


def test_best_of_n_invalid_and_ties():
  scores = jnp.array([[0.9, 0.5, 0.7, 0.7], [0.9, 0.5, 0.7, 0.7], [0.1, 0.2, 0.3, 0.4]])
  answers = jnp.array([[-1, 3, 4, 5], [-1, 3, 4, 5], [-1, -1, -1, -1]], jnp.int32)
  ans, idx = sel.best_of_n(scores, answers)
  np.testing.assert_array_equal(idx, [2, 2, 3])  # invalid skipped; tie -> lowest index
  np.testing.assert_array_equal(ans, [4, 4, -1])
  ans, idx = sel.best_of_n(scores, answers, skip_invalid=False)
  np.testing.assert_array_equal(idx, [0, 0, 3])
  np.testing.assert_array_equal(ans, [-1, -1, -1])


def test_best_of_n_random_ties_uniform():
  scores = jnp.array([[0.7, 0.2, 0.7, 0.7, 0.1]])
  answers = jnp.array([[1, 2, 3, 4, 5]], jnp.int32)
  keys = jax.random.split(jax.random.key(0), 600)
  _, idx = jax.vmap(lambda k: sel.best_of_n(scores, answers, k))(keys)
  idx = np.asarray(idx)[:, 0]
  assert set(idx.tolist()) <= {0, 2, 3}
  counts = np.array([(idx == i).sum() for i in (0, 2, 3)])
  assert stats.chisquare(counts).pvalue > 1e-6


# ----------------------------------------------------------------------------------
# Votes.


def test_self_consistency_matches_counter_reference():
  rng = np.random.default_rng(0)
  answers, _ = random_pool(rng, p=300, n=9, num_answers=4)
  answers[:5] = -1  # some problems with no valid answer
  got = np.asarray(sel.self_consistency(jnp.asarray(answers)))
  want = [ref_vote(row.tolist()) for row in answers]
  np.testing.assert_array_equal(got, want)


def test_weighted_self_consistency_matches_reference():
  rng = np.random.default_rng(1)
  answers, scores = random_pool(rng, p=300, n=9, num_answers=4)
  got = np.asarray(
    sel.weighted_self_consistency(jnp.asarray(answers), jnp.asarray(scores))
  )
  want = [ref_vote(a.tolist(), s.tolist()) for a, s in zip(answers, scores)]
  np.testing.assert_array_equal(got, want)


def test_invalid_never_wins_vote():
  answers = jnp.array([[-1, -1, -1, 7], [-1, -1, -1, -1]], jnp.int32)
  scores = jnp.array([[5.0, 5.0, 5.0, 0.1], [1, 1, 1, 1]])
  np.testing.assert_array_equal(sel.self_consistency(answers), [7, -1])
  np.testing.assert_array_equal(sel.weighted_self_consistency(answers, scores), [7, -1])


def test_weighted_vote_random_ties_uniform_over_groups():
  # Groups {0: two samples of .25} and {1: one sample of .5} tie on weight; a uniform
  # pick over *samples* would favour answer 0 2:1, over groups it is 1:1.
  answers = jnp.array([[0, 0, 1, 2]], jnp.int32)
  scores = jnp.array([[0.25, 0.25, 0.5, 0.125]])
  keys = jax.random.split(jax.random.key(1), 800)
  got = np.asarray(
    jax.vmap(lambda k: sel.weighted_self_consistency(answers, scores, k))(keys)
  )[:, 0]
  assert set(got.tolist()) <= {0, 1}
  counts = np.array([(got == 0).sum(), (got == 1).sum()])
  assert stats.chisquare(counts).pvalue > 1e-6
  assert int(sel.weighted_self_consistency(answers, scores)[0]) == 0  # lowest id


# ----------------------------------------------------------------------------------
# Best-of-majority.


def test_bom_hand_built():
  answers = jnp.array([[3, 1, 1, -1, 3, 2]], jnp.int32)
  scores = jnp.array([[0.9, 0.2, 0.3, 0.99, 0.8, 0.95]])
  # alpha = 0.3: answers 3 (freq 2/6, mean .85) and 1 (2/6, mean .25) pass; 2 does not.
  np.testing.assert_array_equal(
    sel.best_of_majority(answers, scores, 0.3, k=3), [[3, 1, -1]]
  )
  # alpha = 0.5: nobody passes -> rank all valid groups by mean: 2 (.95), 3, 1.
  np.testing.assert_array_equal(
    sel.best_of_majority(answers, scores, 0.5, k=2), [[2, 3]]
  )
  # Padding when fewer groups than k (k > N too).
  np.testing.assert_array_equal(
    sel.best_of_majority(answers, scores, 0.0, k=8), [[2, 3, 1, -1, -1, -1, -1, -1]]
  )
  # reward = max / sum.
  np.testing.assert_array_equal(
    sel.best_of_majority(answers, scores, 0.3, k=2, reward="max"), [[3, 1]]
  )
  np.testing.assert_array_equal(
    sel.best_of_majority(answers, scores, 0.0, k=3, reward="sum"), [[3, 2, 1]]
  )
  # Everything invalid -> all -1.
  np.testing.assert_array_equal(
    sel.best_of_majority(jnp.full((1, 4), -1, jnp.int32), jnp.ones((1, 4)), 0.2, k=2),
    [[-1, -1]],
  )


def test_bom_ties_lowest_id_and_random():
  answers = jnp.array([[5, 5, 2, 2, 9]], jnp.int32)
  scores = jnp.array([[0.5, 0.5, 0.25, 0.75, 1.0]])  # means: 5 -> .5, 2 -> .5, 9 -> 1
  np.testing.assert_array_equal(
    sel.best_of_majority(answers, scores, 0.4, k=2), [[2, 5]]
  )
  keys = jax.random.split(jax.random.key(2), 400)
  top = np.asarray(
    jax.vmap(lambda k: sel.best_of_majority(answers, scores, 0.4, k, k=1))(keys)
  )[:, 0, 0]
  assert set(top.tolist()) <= {2, 5}
  assert stats.chisquare([(top == 2).sum(), (top == 5).sum()]).pvalue > 1e-6


@pytest.mark.parametrize("reward", ["mean", "max", "sum"])
def test_bom_matches_reference_on_random_pools(reward):
  rng = np.random.default_rng({"mean": 3, "max": 4, "sum": 5}[reward])
  answers, scores = random_pool(rng, p=200, n=10, num_answers=5)
  for alpha in (0.0, 0.25, 0.45):
    got = np.asarray(
      sel.best_of_majority(
        jnp.asarray(answers), jnp.asarray(scores), alpha, k=3, reward=reward
      )
    )
    want = [
      ref_bom(a.tolist(), s.tolist(), alpha, 3, reward) for a, s in zip(answers, scores)
    ]
    np.testing.assert_array_equal(got, want, err_msg=f"alpha={alpha}")


def test_answer_groups_counts_and_sums():
  answers = jnp.array([[4, -1, 4, 2, 4]], jnp.int32)
  w = jnp.array([[1.0, 9.0, 2.0, 3.0, 0.5]])
  g = sel.answer_groups(answers, w)
  np.testing.assert_array_equal(g.first_PxN, [[True, False, False, True, False]])
  np.testing.assert_array_equal(g.count_PxN, [[3, 0, 3, 1, 3]])
  np.testing.assert_allclose(g.sum_PxN, [[3.5, 0.0, 3.5, 3.0, 3.5]])
  np.testing.assert_allclose(g.max_PxN, [[2.0, -np.inf, 2.0, 3.0, 2.0]])


def test_validation_errors():
  answers = jnp.zeros((2, 3), jnp.int32)
  scores = jnp.zeros((2, 3))
  steps = jnp.zeros((2, 3, 4))
  with pytest.raises(ValueError, match="aggregation"):
    sel.aggregate_step_scores(steps, steps > 0, "median")
  with pytest.raises(ValueError, match="step_mask"):
    sel.aggregate_step_scores(steps, jnp.zeros((2, 3, 5), bool), "min")
  with pytest.raises(ValueError, match="reward"):
    sel.best_of_majority(answers, scores, 0.5, k=1, reward="median")
  with pytest.raises(ValueError, match="k must be"):
    sel.best_of_majority(answers, scores, 0.5, k=0)
  with pytest.raises(ValueError, match="alpha"):
    sel.best_of_majority(answers, scores, 1.5, k=1)
  with pytest.raises(ValueError, match="shape"):
    sel.weighted_self_consistency(answers, jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="dims"):
    sel.self_consistency(jnp.zeros((3,), jnp.int32))


# ----------------------------------------------------------------------------------
# NaN scores: a NaN ranks below every number (-inf included) and contributes nothing
# to a group's sum / mean / max.


NAN = float("nan")


def test_best_of_n_nan_score_ranks_last():
  scores = jnp.array(
    [
      [0.1, NAN, 0.2, 0.9],
      [NAN, -np.inf, NAN, NAN],  # -inf still beats NaN
      [NAN, NAN, NAN, NAN],
    ]
  )  # all NaN: tie -> lowest index
  answers = jnp.array([[10, 11, 12, 13]] * 3, jnp.int32)
  ans, idx = sel.best_of_n(scores, answers)
  np.testing.assert_array_equal(idx, [3, 1, 0])
  np.testing.assert_array_equal(ans, [13, 11, 10])
  for seed in range(20):
    _, idx = sel.best_of_n(scores[:2], answers[:2], jax.random.key(seed))
    np.testing.assert_array_equal(idx, [3, 1])


def test_best_of_n_all_nan_random_tie_is_uniform():
  scores = jnp.array([[NAN, NAN, NAN]])
  answers = jnp.array([[1, 2, 3]], jnp.int32)
  keys = jax.random.split(jax.random.key(3), 600)
  _, idx = jax.vmap(lambda k: sel.best_of_n(scores, answers, k))(keys)
  counts = np.bincount(np.asarray(idx)[:, 0], minlength=3)
  assert stats.chisquare(counts).pvalue > 1e-6


def test_best_of_n_nan_valid_beats_invalid():
  # A valid sample with a NaN score still beats "no answer" (skip_invalid); without
  # skip_invalid the invalid sample's number beats the NaN.
  scores = jnp.array([[0.9, NAN]])
  answers = jnp.array([[-1, 5]], jnp.int32)
  ans, idx = sel.best_of_n(scores, answers)
  assert int(idx[0]) == 1 and int(ans[0]) == 5
  ans, idx = sel.best_of_n(scores, answers, skip_invalid=False)
  assert int(idx[0]) == 0 and int(ans[0]) == -1


def test_aggregate_step_scores_nan_rules_and_numpy_inputs():
  steps = np.array(
    [
      [
        [0.9, NAN, 0.8, 0.0],  # NaN in the middle
        [0.6, 0.7, NAN, NAN],  # NaN only where masked out
        [0.5, 0.4, 0.3, NAN],  # NaN as the last valid step
        [NAN, NAN, NAN, NAN],
      ]
    ]
  )  # no valid step
  mask = np.array(
    [[[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]], np.int64
  )  # 0/1 ints, numpy
  expected = {
    "last": [0.8, 0.7, NAN, -np.inf],
    "min": [NAN, 0.6, NAN, -np.inf],
    "prod": [NAN, 0.6 * 0.7, NAN, -np.inf],
    "mean": [NAN, 0.65, NAN, -np.inf],
  }
  for agg, want in expected.items():
    for s, m in (
      (steps, mask),
      (steps.tolist(), mask.tolist()),
      (jnp.asarray(steps), jnp.asarray(mask, bool)),
    ):
      got = np.asarray(sel.aggregate_step_scores(s, m, agg))[0]
      np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=agg)


def test_aggregate_no_scored_step_is_minus_inf_for_numpy_min():
  """A sample with no scored step scores -inf under 'min' (not 1.0), so a scored
  sample with any score beats it."""
  steps = np.zeros((1, 2, 3), np.float64)
  steps[0, 0] = [0.2, 0.1, 0.3]
  mask = np.array([[[True, True, True], [False, False, False]]])
  got = np.asarray(sel.aggregate_step_scores(steps, mask, "min"))
  np.testing.assert_allclose(got, [[0.1, -np.inf]], rtol=1e-6)
  _, idx = sel.best_of_n_prm(steps, mask, np.array([[4, 7]]), "min")
  assert int(idx[0]) == 0


@pytest.mark.parametrize("agg", ["min", "prod", "mean", "last"])
def test_best_of_n_prm_one_nan_step_ranks_that_sample_last(agg):
  # Sample 0 has a NaN step (the last one, so 'last' sees it too); sample 2 is best.
  steps = jnp.array(
    [[[0.9, 0.9, NAN], [0.5, 0.5, 0.5], [0.8, 0.8, 0.8], [0.6, 0.6, 0.6]]]
  )
  mask = jnp.ones(steps.shape, bool)
  answers = jnp.array([[10, 11, 12, 13]], jnp.int32)
  for key in (None, jax.random.key(0)):
    ans, idx = sel.best_of_n_prm(steps, mask, answers, agg, key)
    assert int(idx[0]) == 2 and int(ans[0]) == 12, agg


def test_weighted_self_consistency_nan_weight_contributes_nothing():
  answers = jnp.array([[0, 0, 1], [0, 1, 1], [2, 2, 1], [2, 2, 1]], jnp.int32)
  scores = jnp.array(
    [
      [0.9, NAN, 0.4],  # group 0: .9 (NaN adds 0) > .4
      [0.5, 0.3, NAN],  # group 1: .3 < .5
      [NAN, NAN, 0.1],  # all-NaN group sums to 0 < .1
      [NAN, NAN, -0.1],
    ]
  )  # 0 > -.1
  np.testing.assert_array_equal(
    sel.weighted_self_consistency(answers, scores), [0, 0, 1, 2]
  )
  for seed in range(10):
    np.testing.assert_array_equal(
      sel.weighted_self_consistency(answers, scores, jax.random.key(seed)), [0, 0, 1, 2]
    )
  # +inf and -inf in one group give a NaN sum: ranked below every number.
  np.testing.assert_array_equal(
    sel.weighted_self_consistency(
      jnp.array([[0, 0, 1]], jnp.int32), jnp.array([[np.inf, -np.inf, -5.0]])
    ),
    [1],
  )


def test_answer_groups_nan_weights():
  answers = jnp.array([[4, 4, 2, 2, -1]], jnp.int32)
  w = jnp.array([[1.0, NAN, NAN, NAN, 3.0]])
  g = sel.answer_groups(answers, w)
  np.testing.assert_array_equal(g.count_PxN, [[2, 2, 2, 2, 0]])
  np.testing.assert_array_equal(g.scored_PxN, [[1, 1, 0, 0, 0]])
  np.testing.assert_allclose(g.sum_PxN, [[1.0, 1.0, 0.0, 0.0, 0.0]])
  np.testing.assert_allclose(g.max_PxN, [[1.0, 1.0, NAN, NAN, -np.inf]])


def test_bom_nan_scores():
  answers = jnp.array([[3, 3, 1, 2, 2]], jnp.int32)
  scores = jnp.array([[0.8, NAN, 0.5, NAN, NAN]])
  # Means over non-NaN scores: 3 -> .8, 1 -> .5, 2 -> none (NaN, ranked last).
  np.testing.assert_array_equal(
    sel.best_of_majority(answers, scores, 0.0, k=3), [[3, 1, 2]]
  )
  np.testing.assert_array_equal(
    sel.best_of_majority(answers, scores, 0.0, k=3, reward="max"), [[3, 1, 2]]
  )
  # 'sum': group 2 sums to 0 and beats nobody here (.8, .5 > 0).
  np.testing.assert_array_equal(
    sel.best_of_majority(answers, scores, 0.0, k=3, reward="sum"), [[3, 1, 2]]
  )
  # Frequency still counts NaN-scored samples: alpha .4 keeps groups 3 and 2 (2/5).
  np.testing.assert_array_equal(
    sel.best_of_majority(answers, scores, 0.4, k=2), [[3, 2]]
  )
  neg = jnp.array([[NAN, NAN, -0.5, -0.2, NAN]])
  answers = jnp.array([[3, 3, 1, 2, 2]], jnp.int32)
  # mean: 1 -> -.5, 2 -> -.2, 3 -> NaN (last); sum: 3 -> 0 first.
  np.testing.assert_array_equal(
    sel.best_of_majority(answers, neg, 0.0, k=3), [[2, 1, 3]]
  )
  np.testing.assert_array_equal(
    sel.best_of_majority(answers, neg, 0.0, k=3, reward="sum"), [[3, 2, 1]]
  )


def ref_vote_nan(answers, weights):
  """ref_vote with NaN weights counted as 0 (written independently of selection)."""
  return ref_vote(answers, [0.0 if w != w else w for w in weights])


def ref_bom_nan(answers, scores, alpha, k, reward):
  n = len(answers)
  groups = collections.defaultdict(list)
  for a, s in zip(answers, scores):
    if a >= 0:
      groups[a].append(s)

  def agg(v):
    v = [x for x in v if x == x]
    if reward == "sum":
      return sum(v)
    if not v:
      return None  # missing: ranked last
    return sum(v) / len(v) if reward == "mean" else max(v)

  kept = {a: v for a, v in groups.items() if len(v) / n >= alpha} or groups

  def rank(a):
    r = agg(kept[a])
    return (r is None, 0.0 if r is None else -r, a)

  ranked = sorted(kept, key=rank)[:k]
  return ranked + [-1] * (k - len(ranked))


@pytest.mark.parametrize("reward", ["mean", "max", "sum"])
def test_votes_with_nan_match_reference_on_random_pools(reward):
  rng = np.random.default_rng({"mean": 6, "max": 7, "sum": 8}[reward])
  answers, scores = random_pool(rng, p=200, n=8, num_answers=4)
  scores[rng.random(scores.shape) < 0.3] = np.nan
  got = np.asarray(
    sel.weighted_self_consistency(jnp.asarray(answers), jnp.asarray(scores))
  )
  want = [ref_vote_nan(a.tolist(), s.tolist()) for a, s in zip(answers, scores)]
  np.testing.assert_array_equal(got, want)
  for alpha in (0.0, 0.3):
    got = np.asarray(
      sel.best_of_majority(
        jnp.asarray(answers), jnp.asarray(scores), alpha, k=3, reward=reward
      )
    )
    want = [
      ref_bom_nan(a.tolist(), s.tolist(), alpha, 3, reward)
      for a, s in zip(answers, scores)
    ]
    np.testing.assert_array_equal(got, want, err_msg=f"alpha={alpha}")


def test_bad_k_type_names_k():
  with pytest.raises(ValueError, match="k must be"):
    sel.best_of_majority(jnp.zeros((1, 3), jnp.int32), jnp.zeros((1, 3)), 0.5, k="2")
