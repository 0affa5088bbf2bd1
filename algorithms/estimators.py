"""Unbiased estimators of selection accuracy at budget k from one pool of n >= k samples.

Draw n samples per problem once; every estimator here returns the expected accuracy of
a method that had seen only k of them (a uniformly random k-subset), for a whole list of
ks at once, so one sampling run yields the whole budget curve. numpy, float64.

- pass@k: 1 - C(n-c, k) / C(n, k) for c correct out of n (closed form, stable product).
- BoN@k: best-of-k by score, ties broken uniformly at random (closed form, see
  `best_of_n_at_k` for the tie derivation).
- maj@k, weighted-maj@k, BoM@k: the expectation over k-subsets of the method's
  correctness. Exact by enumerating all C(n, k) subsets when that is at most
  `max_exact_subsets`, otherwise Monte Carlo over `num_subsets` uniformly random
  k-subsets per problem (independent across problems). The result says which was used
  per k and carries the Monte Carlo standard error per problem.

Conventions match `algorithms.selection`: answers are int ids per problem, a negative id
means "no answer" (never wins a vote unless all are invalid, which counts as wrong), vote
ties go to the lowest answer id unless random tie-breaking is asked for. NaN scores are
missing scores, as in `selection`: a NaN ranks below every number (-inf included) when
samples or groups are ranked, and contributes nothing to a group's sum, mean or max.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, NamedTuple, Sequence

import numpy as np

TIE_BREAKS = ("random", "lowest_id")
METHODS = ("auto", "exact", "monte_carlo")
GROUP_REWARDS = ("mean", "max", "sum")
_CHUNK_ELEMS = 1 << 22  # cap on the size of the per-chunk work arrays


class SubsetEstimate(NamedTuple):
  """Expected accuracy per problem and budget k, from subsampling one pool."""

  value_PxK: np.ndarray  # estimate of E[correct] over k-subsets
  stderr_PxK: np.ndarray  # Monte Carlo standard error (0 where exact)
  exact_K: np.ndarray  # bool: True where all C(n, k) subsets were enumerated
  num_subsets_K: np.ndarray  # number of subsets evaluated per problem


# ----------------------------------------------------------------------------------
# Validation helpers.


def _check_ks(ks: Sequence[int], n: int) -> np.ndarray:
  ks_arr = np.atleast_1d(np.asarray(ks))
  if ks_arr.ndim != 1 or ks_arr.size == 0:
    raise ValueError(f"ks must be a non-empty 1-D list of ints, got {ks!r}")
  if not np.all(np.equal(np.mod(ks_arr, 1), 0)):
    raise ValueError(f"ks must be integers, got {ks!r}")
  ks_arr = ks_arr.astype(np.int64)
  for k in ks_arr:
    if k < 1:
      raise ValueError(f"k={k} must be >= 1")
    if k > n:
      raise ValueError(f"k={k} > n={n}: need at least k samples in the pool")
  return ks_arr


def _check_pool(answers_PxN=None, scores_PxN=None, correct_PxN=None):
  shape = None
  out = []
  for name, x in (
    ("answers_PxN", answers_PxN),
    ("scores_PxN", scores_PxN),
    ("correct_PxN", correct_PxN),
  ):
    if x is None:
      out.append(None)
      continue
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] == 0:
      raise ValueError(f"{name} must be 2-D (problems x samples), got shape {x.shape}")
    if shape is not None and x.shape != shape:
      raise ValueError(f"{name} shape {x.shape} does not match {shape}")
    shape = x.shape
    if name == "answers_PxN":
      if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"answers_PxN must be integer answer ids, got {x.dtype}")
      x = x.astype(np.int64)
    elif name == "scores_PxN":
      if not (
        np.issubdtype(x.dtype, np.floating)
        or np.issubdtype(x.dtype, np.integer)
        or x.dtype == bool
      ):
        raise ValueError(f"scores_PxN must be numeric, got {x.dtype}")
      x = x.astype(np.float64)  # NaN allowed: a missing score (module docstring)
    else:
      if not np.isin(x, (0, 1)).all():
        raise ValueError("correct_PxN must be boolean (0/1)")
      x = x.astype(bool)
    out.append(x)
  return out


# ----------------------------------------------------------------------------------
# Closed forms: pass@k and BoN@k.


def pass_at_k(n, c, ks: Sequence[int]) -> np.ndarray:
  """Unbiased pass@k = 1 - C(n-c, k) / C(n, k), for each problem and each k.

  `n`: samples per problem (int or array of shape (P,)); `c`: correct samples (P,).
  Computed as 1 - prod_{j<k} (n-c-j)/(n-j): a cumulative product over j yields every k
  up to max(ks) in one pass, without large binomials. Returns shape (P, K) (or (K,) for
  scalar c).
  """
  c_arr = np.asarray(c)
  scalar = c_arr.ndim == 0
  c_arr = np.atleast_1d(c_arr)
  n_arr = np.broadcast_to(np.asarray(n), c_arr.shape)
  if c_arr.ndim != 1:
    raise ValueError(f"c must be a scalar or 1-D (problems,), got shape {c_arr.shape}")
  for name, x in (("n", n_arr), ("c", c_arr)):
    if not np.all(np.equal(np.mod(x, 1), 0)):
      raise ValueError(f"{name} must be integers")
  n_arr = n_arr.astype(np.int64)
  c_arr = c_arr.astype(np.int64)
  if (c_arr < 0).any() or (c_arr > n_arr).any():
    raise ValueError(f"need 0 <= c <= n, got c={c_arr}, n={n_arr}")
  ks_arr = _check_ks(ks, int(n_arr.min()))
  j = np.arange(ks_arr.max())
  ratio_PxJ = (n_arr[:, None] - c_arr[:, None] - j) / (n_arr[:, None] - j)
  ratio_PxJ = np.clip(ratio_PxJ, 0.0, None)  # C(n-c, k) = 0 once k > n-c
  miss_PxJ = np.cumprod(ratio_PxJ, axis=1)  # [:, k-1] = C(n-c, k) / C(n, k)
  out = 1.0 - miss_PxJ[:, ks_arr - 1]
  return out[0] if scalar else out


def best_of_n_weights(n: int, ks: Sequence[int]) -> np.ndarray:
  """W[k, i] = C(n-i-1, k-1) / C(n, k): probability that the i-th best of n (0-based)
  is the best of a uniform k-subset. Rows sum to 1. Shape (K, n).

  Stable recursion: W[k, 0] = k/n, W[k, i+1] / W[k, i] = (n-i-k) / (n-i-1).
  """
  ks_arr = _check_ks(ks, n)
  i = np.arange(n - 1)
  ratio_KxI = np.clip((n - i - ks_arr[:, None]) / (n - i - 1), 0.0, None)
  head = (ks_arr / n)[:, None]
  return head * np.concatenate([np.ones((len(ks_arr), 1)), np.cumprod(ratio_KxI, 1)], 1)


def best_of_n_at_k(scores_PxN, correct_PxN, ks: Sequence[int]) -> np.ndarray:
  """Unbiased BoN@k: expected correctness of the top-scored sample of a random
  k-subset, ties in score broken uniformly at random. Returns (P, K).

  Without ties, sort by score (descending); the i-th best is selected iff it is in the
  subset and none of the i better ones is: probability C(n-i-1, k-1) / C(n, k).
  With ties: let a tied group occupy sorted positions a..b-1. The group supplies the
  pick iff none of the first a samples is in the subset and at least one of the group
  is, probability (C(n-a, k) - C(n-b, k)) / C(n, k), which telescopes to the sum of the
  no-tie weights over positions a..b-1. Given that event and the subset's members of
  the group, the uniform tie-break picks each member equally, and by exchangeability of
  the subset every member of the group is equally likely to be the pick: the group
  contributes its *mean* correctness. So: replace each sample's correctness by its
  tie-group mean, then apply the no-tie weights.

  NaN scores rank below every number (-inf included) and tie with each other, as in
  `selection.best_of_n` with a key: a NaN sample is picked only from a subset whose
  scores are all NaN, uniformly among them.

  Args:
    scores_PxN: float [P, N]; correct_PxN: bool / 0-1 [P, N]; ks: budgets, 1 <= k <= N.

  Raises:
    ValueError: bad shapes or dtypes, or a k outside [1, N].
  """
  _, scores, correct = _check_pool(None, scores_PxN, correct_PxN)
  p, n = scores.shape
  weights_KxN = best_of_n_weights(n, ks)
  order = np.argsort(-scores, axis=1, kind="stable")  # numpy sorts NaN last
  s = np.take_along_axis(scores, order, axis=1)
  corr = np.take_along_axis(correct.astype(np.float64), order, axis=1)
  new_group = np.ones_like(s, dtype=bool)
  same = (s[:, 1:] == s[:, :-1]) | (np.isnan(s[:, 1:]) & np.isnan(s[:, :-1]))
  new_group[:, 1:] = ~same
  gid = (np.cumsum(new_group, axis=1) - 1) + (np.arange(p) * n)[:, None]
  sums = np.bincount(gid.ravel(), weights=corr.ravel(), minlength=p * n)
  cnts = np.bincount(gid.ravel(), minlength=p * n)
  corr_tied = (sums / np.maximum(cnts, 1))[gid]
  return corr_tied @ weights_KxN.T


# ----------------------------------------------------------------------------------
# Subset machinery: exact enumeration or Monte Carlo over k-subsets.


def _dense_groups(answers_PxN, correct_PxN):
  """Maps answer ids to dense group indices 0..G-1 per problem (ascending id, so the
  lowest index is the lowest id); invalid samples go to the dummy group G. Returns
  (group_PxN, group_correct_PxG, G). Checks that equal answers agree on correctness."""
  p, _ = answers_PxN.shape
  groups = np.empty_like(answers_PxN)
  uniques = []
  for i in range(p):
    valid = answers_PxN[i] >= 0
    u, inv = np.unique(answers_PxN[i][valid], return_inverse=True)
    groups[i][valid] = inv
    uniques.append((u, inv, valid))
  num_groups = max(1, max(len(u) for u, _, _ in uniques))
  groups[answers_PxN < 0] = num_groups
  group_correct = np.zeros((p, num_groups), bool)
  for i, (u, inv, valid) in enumerate(uniques):
    c = correct_PxN[i][valid]
    any_c = np.bincount(inv, weights=c, minlength=len(u))
    cnt = np.bincount(inv, minlength=len(u))
    if not np.all((any_c == 0) | (any_c == cnt)):
      raise ValueError(
        f"problem {i}: samples with the same answer id disagree on correctness"
      )
    group_correct[i, : len(u)] = any_c > 0
  return groups, group_correct, num_groups


def _subset_indices(
  p: int,
  n: int,
  k: int,
  exact: bool,
  num_subsets: int,
  chunk: int,
  rng: np.random.Generator,
):
  """Yields index chunks of shape (1, m, k) (exact: every k-subset once, shared by all
  problems) or (P, m, k) (Monte Carlo: independent uniform k-subsets per problem)."""
  if exact:
    combos = itertools.combinations(range(n), k)
    while True:
      block = list(itertools.islice(combos, chunk))
      if not block:
        return
      yield np.asarray(block, dtype=np.int64).reshape(1, len(block), k)
  else:
    done = 0
    while done < num_subsets:
      m = min(chunk, num_subsets - done)
      # The k smallest of n iid uniforms index a uniformly random k-subset.
      u = rng.random((p, m, n))
      yield np.argpartition(u, k - 1, axis=-1)[..., :k]
      done += m


def _estimate_over_subsets(
  evaluate: Callable,
  p: int,
  n: int,
  ks_arr: np.ndarray,
  width: int,
  method: str,
  max_exact_subsets: int,
  num_subsets: int,
  seed,
) -> SubsetEstimate:
  """Runs `evaluate(idx_Pxmxk, k) -> correct_Pxm` over k-subsets for every k."""
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  if num_subsets < 2:
    raise ValueError(f"num_subsets must be >= 2, got {num_subsets}")
  rng = np.random.default_rng(seed)
  values = np.zeros((p, len(ks_arr)))
  stderrs = np.zeros((p, len(ks_arr)))
  exact_k = np.zeros(len(ks_arr), bool)
  counts_k = np.zeros(len(ks_arr), np.int64)
  for j, k in enumerate(ks_arr):
    k = int(k)
    total = math.comb(n, k)
    exact = method == "exact" or (method == "auto" and total <= max_exact_subsets)
    chunk = max(1, _CHUNK_ELEMS // (p * (width + n + k)))
    # Sums of (outcome - shift) with shift = the first outcome: numerically stable,
    # and exactly zero variance when every subset gives the same outcome.
    shift = None
    acc = np.zeros(p)
    acc2 = np.zeros(p)
    m_total = 0
    for idx in _subset_indices(p, n, k, exact, num_subsets, chunk, rng):
      ok = evaluate(np.broadcast_to(idx, (p,) + idx.shape[1:]), k).astype(np.float64)
      if shift is None:
        shift = ok[:, :1].copy()
      d = ok - shift
      acc += d.sum(1)
      acc2 += (d * d).sum(1)
      m_total += ok.shape[1]
    values[:, j] = shift[:, 0] + acc / m_total
    if not exact:
      var = np.maximum(acc2 - acc**2 / m_total, 0.0) / (m_total - 1)
      stderrs[:, j] = np.sqrt(var / m_total)
    exact_k[j] = exact
    counts_k[j] = m_total
  return SubsetEstimate(values, stderrs, exact_k, counts_k)


def _group_totals(groups_PxN, weights_PxN, idx_Pxmxk, width: int):
  """Per-subset count and weight sum of every group (plus the invalid dummy group):
  arrays of shape (P, m, width) via one flat bincount. NaN weights must have been
  replaced (by 0) by the caller."""
  p, m, _ = idx_Pxmxk.shape
  g = groups_PxN[np.arange(p)[:, None, None], idx_Pxmxk]
  flat = (np.arange(p * m).reshape(p, m, 1) * width + g).ravel()
  counts = np.bincount(flat, minlength=p * m * width).reshape(p, m, width)
  sums = None
  if weights_PxN is not None:
    w = weights_PxN[np.arange(p)[:, None, None], idx_Pxmxk]
    sums = np.bincount(flat, weights=w.ravel(), minlength=p * m * width)
    sums = sums.reshape(p, m, width)
  return counts, sums, flat


def _vote_correct(value_Pxmxg, present_Pxmxg, group_correct_PxG, tie_break: str):
  """Correctness of the arg-max group among present ones; 0 when none is present.
  A NaN value ranks below every number (NaN groups tie with each other).
  'random': exact expectation under a uniform tie-break = mean correctness of the tied
  groups. 'lowest_id': the first tied group (dense index order = answer id order)."""
  nan = np.isnan(value_Pxmxg)
  scored = present_Pxmxg & ~nan
  pool = np.where(scored.any(-1, keepdims=True), scored, present_Pxmxg)
  value = np.where(pool & ~nan, value_Pxmxg, -np.inf)
  best = value.max(-1, keepdims=True)
  tied = pool & (value == best)
  gc = group_correct_PxG[:, None, :]
  any_present = present_Pxmxg.any(-1)
  if tie_break == "random":
    out = (tied & gc).sum(-1) / np.maximum(tied.sum(-1), 1)
  else:
    first = np.argmax(tied, axis=-1)
    out = np.take_along_axis(np.broadcast_to(gc, tied.shape), first[..., None], -1)[
      ..., 0
    ]
  return np.where(any_present, out, 0.0)


def majority_at_k(
  answers_PxN,
  correct_PxN,
  ks: Sequence[int],
  *,
  tie_break: str = "random",
  method: str = "auto",
  max_exact_subsets: int = 20_000,
  num_subsets: int = 2_000,
  seed=0,
) -> SubsetEstimate:
  """maj@k: expected correctness of the majority vote over a uniform k-subset.

  `tie_break`: 'random' (uniform among tied answer groups; its expectation, the mean
  correctness of the tied groups, is used exactly) or 'lowest_id' (as in
  `selection.self_consistency` without a key). `method`: 'auto' (exact iff
  C(n, k) <= max_exact_subsets), 'exact' or 'monte_carlo' (num_subsets per problem).
  """
  opts = (tie_break, method, max_exact_subsets, num_subsets, seed)
  return _vote_at_k(False, answers_PxN, None, correct_PxN, ks, *opts)


def weighted_majority_at_k(
  answers_PxN,
  scores_PxN,
  correct_PxN,
  ks: Sequence[int],
  *,
  tie_break: str = "random",
  method: str = "auto",
  max_exact_subsets: int = 20_000,
  num_subsets: int = 2_000,
  seed=0,
) -> SubsetEstimate:
  """Weighted-maj@k: as `majority_at_k`, voting with the sum of scores per answer
  group (`selection.weighted_self_consistency`: a NaN score contributes nothing to its
  group's sum; a NaN group sum, from +inf and -inf in one group, ranks last)."""
  opts = (tie_break, method, max_exact_subsets, num_subsets, seed)
  return _vote_at_k(True, answers_PxN, scores_PxN, correct_PxN, ks, *opts)


def _vote_at_k(
  weighted: bool,
  answers_PxN,
  scores_PxN,
  correct_PxN,
  ks,
  tie_break,
  method,
  max_exact_subsets,
  num_subsets,
  seed,
) -> SubsetEstimate:
  """`majority_at_k` (each answer group votes with its count; scores_PxN None)
  or, when `weighted`, `weighted_majority_at_k` (with the sum of its non-NaN
  scores)."""
  if tie_break not in TIE_BREAKS:
    raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
  answers, scores, correct = _check_pool(answers_PxN, scores_PxN, correct_PxN)
  if weighted:
    scores = np.where(np.isnan(scores), 0.0, scores)
  p, n = answers.shape
  ks_arr = _check_ks(ks, n)
  groups, group_correct, num_groups = _dense_groups(answers, correct)

  def evaluate(idx, k):
    counts, sums, _ = _group_totals(groups, scores, idx, num_groups + 1)
    votes = sums if weighted else counts
    return _vote_correct(
      votes[..., :num_groups], counts[..., :num_groups] > 0, group_correct, tie_break
    )

  return _estimate_over_subsets(
    evaluate, p, n, ks_arr, num_groups + 1, method, max_exact_subsets, num_subsets, seed
  )


def best_of_majority_at_k(
  answers_PxN,
  scores_PxN,
  correct_PxN,
  ks: Sequence[int],
  *,
  alpha: float,
  num_submit: int = 1,
  reward: str = "mean",
  method: str = "auto",
  max_exact_subsets: int = 20_000,
  num_subsets: int = 2_000,
  seed=0,
) -> SubsetEstimate:
  """BoM@k: probability that Best-of-Majority run on a uniform k-subset submits a
  correct answer among its `num_submit` answers (the pass@k setting of BoM; here k is
  the sample budget and `num_submit` the number of submitted answers).

  Within each subset: groups with frequency count / k >= alpha are kept (all groups
  if none passes), ranked by `reward` ('mean', 'max' or 'sum' of the group's scores),
  ties to the lowest answer id, as `selection.best_of_majority` without a key. NaN
  scores as there: they count towards frequency, the reward uses the group's non-NaN
  scores only, and a group with none has reward NaN ('mean', 'max'; ranked last) or
  0 ('sum').
  """
  if reward not in GROUP_REWARDS:
    raise ValueError(f"reward must be one of {GROUP_REWARDS}, got {reward!r}")
  if (
    isinstance(alpha, bool)
    or not isinstance(alpha, (int, float, np.number))
    or not 0.0 <= alpha <= 1.0
  ):
    raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
  if (
    isinstance(num_submit, bool)
    or not isinstance(num_submit, (int, np.integer))
    or num_submit < 1
  ):
    raise ValueError(f"num_submit must be an int >= 1, got {num_submit!r}")
  answers, scores, correct = _check_pool(answers_PxN, scores_PxN, correct_PxN)
  p, n = answers.shape
  ks_arr = _check_ks(ks, n)
  groups, group_correct, num_groups = _dense_groups(answers, correct)
  width = num_groups + 1
  is_scored = ~np.isnan(scores)
  scores0 = np.where(is_scored, scores, 0.0)

  def evaluate(idx, k):
    counts, sums, flat = _group_totals(groups, scores0, idx, width)
    _, num_scored, _ = _group_totals(groups, is_scored.astype(np.float64), idx, width)
    if reward == "mean":
      value = np.where(num_scored > 0, sums / np.maximum(num_scored, 1), np.nan)
    elif reward == "sum":
      value = sums
    else:
      value = np.full(counts.size, -np.inf)
      w = np.where(is_scored, scores, -np.inf)[np.arange(p)[:, None, None], idx]
      np.maximum.at(value, flat, w.ravel())
      value = np.where(num_scored > 0, value.reshape(counts.shape), np.nan)
    counts, value = counts[..., :num_groups], value[..., :num_groups]
    present = counts > 0
    passes = present & (counts / k >= alpha)
    eligible = np.where(passes.any(-1, keepdims=True), passes, present)
    nan = np.isnan(value)
    value = np.where(eligible & ~nan, value, -np.inf)
    lowest_id = np.broadcast_to(np.arange(num_groups), value.shape)
    order = np.lexsort((lowest_id, -value, nan, ~eligible), axis=-1)[..., :num_submit]
    hit = np.take_along_axis(eligible, order, -1) & np.take_along_axis(
      np.broadcast_to(group_correct[:, None, :], value.shape), order, -1
    )
    return hit.any(-1)

  return _estimate_over_subsets(
    evaluate, p, n, ks_arr, width, method, max_exact_subsets, num_subsets, seed
  )
