"""Selection over N samples: best-of-N (ORM / PRM), self-consistency, weighted
self-consistency and best-of-majority (BoM).

Everything is vectorised over a batch of P problems x N samples, jittable, with static
shapes. Conventions:

- `answers_PxN` (int32): an answer id per sample. The task layer maps normalised answer
  strings to ids per problem (equal strings -> equal ids). Any negative id means "no
  answer extracted"; -1 is the conventional sentinel and the value returned when there
  is nothing to return. Invalid samples never win a vote; if every sample of a problem
  is invalid the vote returns -1.
- `scores_PxN` (float): one verifier score per sample (ORM, or PRM steps aggregated by
  `aggregate_step_scores`). Higher is better.
- NaN scores (a verifier that failed on a sample) are "missing": a NaN ranks below
  every number, -inf included, wherever a sample is ranked (best-of-N, the beam search
  convention too), and contributes nothing where scores are summed or averaged over an
  answer group (see `answer_groups`). A NaN never makes another sample lose.
- Grouping samples by answer uses an N x N equality matrix per problem: O(N^2) memory and
  work, which is simple, shape-static and cheap for N up to a few hundred (N = 256 is
  65K comparisons per problem). For much larger N, sort-based grouping would be needed.
- Ties. Deterministic by default: a vote tie goes to the lowest answer id, a best-of-N
  tie to the lowest sample index. Passing a `key` breaks ties uniformly at random among
  the tied answer groups (or tied samples for best-of-N) instead.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

INVALID = -1
AGGREGATIONS = ("last", "min", "prod", "mean")
GROUP_REWARDS = ("mean", "max", "sum")


def _check_pn(name: str, x, ndim: int = 2) -> None:
  # np.shape reads .shape of jax / numpy arrays and tracers, and converts lists.
  if len(np.shape(x)) != ndim:
    raise ValueError(f"{name} must have {ndim} dims, got shape {np.shape(x)}")


def _check_same_shape(name_a: str, a, name_b: str, b) -> None:
  if np.shape(a) != np.shape(b):
    raise ValueError(f"{name_a} shape {np.shape(a)} != {name_b} shape {np.shape(b)}")


# ----------------------------------------------------------------------------------
# PRM step aggregation and best-of-N.


def aggregate_step_scores(step_scores_PxNxS, step_mask_PxNxS, aggregation: str):
  """Aggregates PRM step scores into one score per sample.

  Args:
    step_scores_PxNxS: float step scores, problems x samples x steps (jax or numpy
      array, or nested lists).
    step_mask_PxNxS: bool (or 0/1), same shape: which steps were scored. Need not be
      contiguous; masked-out entries are ignored whatever their value (NaN included).
    aggregation: 'last' (score of the last valid step), 'min', 'prod' (product of the
      step scores, i.e. the probability that every step is correct when scores are
      probabilities) or 'mean' over valid steps.

  Returns:
    float32 jax array [P, N]. Rules for the edge cases, the same for every
    aggregation:
    - no scored step: -inf (so such a sample only wins when no sample has a step; not
      1.0 or 0.0, which would let an unscored sample beat a scored one).
    - a NaN valid step: the aggregate is NaN under 'min', 'prod' and 'mean', and under
      'last' when it is the last valid step. `best_of_n` and the other rankers rank
      NaN below every number (-inf included), so one NaN step sends that sample last
      instead of poisoning the whole problem.

  Raises:
    ValueError: unknown `aggregation`, inputs that are not 3-D, or shapes that differ.
  """
  if aggregation not in AGGREGATIONS:
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
  _check_pn("step_scores_PxNxS", step_scores_PxNxS, 3)
  _check_same_shape(
    "step_scores_PxNxS", step_scores_PxNxS, "step_mask_PxNxS", step_mask_PxNxS
  )
  return _aggregate_step_scores(
    jnp.asarray(step_scores_PxNxS, jnp.float32),
    jnp.asarray(step_mask_PxNxS, bool),
    aggregation,
  )


@functools.partial(jax.jit, static_argnames=("aggregation",))
def _aggregate_step_scores(s, m, aggregation: str):
  num_steps = s.shape[-1]
  if aggregation == "last":
    last_PxN = num_steps - 1 - jnp.argmax(m[..., ::-1], axis=-1)
    out = jnp.take_along_axis(s, last_PxN[..., None], axis=-1)[..., 0]
  elif aggregation == "min":
    out = jnp.min(jnp.where(m, s, jnp.inf), axis=-1)  # jnp.min propagates NaN
  elif aggregation == "prod":
    out = jnp.prod(jnp.where(m, s, 1.0), axis=-1)
  else:  # mean
    out = jnp.sum(jnp.where(m, s, 0.0), axis=-1) / jnp.maximum(m.sum(-1), 1)
  return jnp.where(m.any(-1), out, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("skip_invalid",))
def best_of_n(scores_PxN, answers_PxN, key=None, *, skip_invalid: bool = True):
  """Best-of-N: the sample with the highest score.

  Args:
    scores_PxN: float, one score per sample (higher is better).
    answers_PxN: int answer ids (negative = no answer).
    key: optional PRNG key for random tie-breaking.
    skip_invalid: rank samples without an extracted answer below every valid one.

  Returns:
    (answer_P int32, index_P int32): the chosen sample's answer (-1 if it has none)
    and its index.

  Ranking, best first: valid samples before invalid ones (with `skip_invalid`, the
  default: submitting "no answer" is never better than submitting one; all invalid ->
  answer -1), then by score; a NaN score ranks below every number, -inf included, so
  a NaN sample is chosen only when every candidate's score is NaN. Ties (equal scores,
  or all-NaN candidates) go to the lowest sample index, or uniformly at random among
  the tied samples when `key` is given.

  Raises:
    ValueError: inputs that are not 2-D or whose shapes differ.
  """
  _check_pn("scores_PxN", scores_PxN)
  _check_same_shape("scores_PxN", scores_PxN, "answers_PxN", answers_PxN)
  scores = jnp.asarray(scores_PxN, jnp.float32)
  answers = jnp.asarray(answers_PxN, jnp.int32)
  valid = answers >= 0
  if skip_invalid:
    candidate = jnp.where(valid.any(-1, keepdims=True), valid, True)
  else:
    candidate = jnp.ones_like(valid)
  nan = jnp.isnan(scores)
  scored = candidate & ~nan
  # NaN ranks last: compare scored candidates only, unless no candidate is scored.
  pool = jnp.where(scored.any(-1, keepdims=True), scored, candidate)
  masked = jnp.where(pool & ~nan, scores, -jnp.inf)
  tied = pool & (masked == masked.max(-1, keepdims=True))
  if key is None:
    index_P = jnp.argmax(tied, axis=-1)  # first True = lowest index
  else:
    noise = jax.random.uniform(key, scores.shape)
    index_P = jnp.argmax(jnp.where(tied, noise, -1.0), axis=-1)
  index_P = index_P.astype(jnp.int32)
  answer_P = jnp.take_along_axis(answers, index_P[:, None], axis=-1)[:, 0]
  return jnp.where(answer_P >= 0, answer_P, INVALID), index_P


def best_of_n_prm(
  step_scores_PxNxS,
  step_mask_PxNxS,
  answers_PxN,
  aggregation: str,
  key=None,
  *,
  skip_invalid: bool = True,
):
  """Best-of-N with a PRM: aggregate step scores (see `aggregate_step_scores` for the
  no-step (-inf) and NaN rules), then `best_of_n`. Returns (answer_P, index_P)."""
  scores_PxN = aggregate_step_scores(step_scores_PxNxS, step_mask_PxNxS, aggregation)
  return best_of_n(scores_PxN, answers_PxN, key, skip_invalid=skip_invalid)


# ----------------------------------------------------------------------------------
# Answer groups and votes.


class AnswerGroups(NamedTuple):
  """Per-sample statistics of the sample's answer group (O(N^2) pairwise grouping).

  Group-level quantities are read at each group's representative (its first sample);
  invalid samples belong to no group (`first` False, `count` 0). A NaN weight is a
  missing score: it counts in `count` (the sample still votes for its answer) but
  contributes nothing to `sum`, `max` or `scored`.
  """

  first_PxN: jax.Array  # True at the first sample of each valid answer group
  count_PxN: jax.Array  # size of the sample's group (int32)
  sum_PxN: jax.Array  # sum of the group's non-NaN weights (0 if none)
  max_PxN: jax.Array  # max of the group's non-NaN weights (NaN if none; -inf for
  # invalid samples)
  scored_PxN: jax.Array  # number of non-NaN weights in the group (int32)


@jax.jit
def answer_groups(answers_PxN, weights_PxN=None) -> AnswerGroups:
  """Groups samples by answer id with an N x N equality matrix per problem.

  `answers_PxN`: int [P, N]; `weights_PxN`: float [P, N] or None (all ones). NaN
  weights follow the rules of `AnswerGroups`. Raises ValueError on bad shapes.
  """
  _check_pn("answers_PxN", answers_PxN)
  answers = jnp.asarray(answers_PxN, jnp.int32)
  n = answers.shape[-1]
  if weights_PxN is None:
    weights = jnp.ones(answers.shape, jnp.float32)
  else:
    _check_same_shape("answers_PxN", answers_PxN, "weights_PxN", weights_PxN)
    weights = jnp.asarray(weights_PxN, jnp.float32)
  valid = answers >= 0
  same_PxNxN = (
    (answers[:, :, None] == answers[:, None, :]) & valid[:, :, None] & valid[:, None, :]
  )
  earlier_NxN = jnp.tril(jnp.ones((n, n), bool), k=-1)  # [i, j]: j < i
  first = valid & ~jnp.any(same_PxNxN & earlier_NxN, axis=-1)
  count = same_PxNxN.sum(-1).astype(jnp.int32)
  scored_PxNxN = same_PxNxN & ~jnp.isnan(weights)[:, None, :]
  total = jnp.sum(jnp.where(scored_PxNxN, weights[:, None, :], 0.0), axis=-1)
  best = jnp.max(jnp.where(scored_PxNxN, weights[:, None, :], -jnp.inf), axis=-1)
  num_scored = scored_PxNxN.sum(-1).astype(jnp.int32)
  best = jnp.where(valid & (num_scored == 0), jnp.nan, best)
  return AnswerGroups(first, count, total, best, num_scored)


def _rank_groups(value_PxN, eligible_PxN, answers_PxN, key, k: int):
  """Top-k answer ids among eligible group representatives, by value (desc; a NaN
  value ranks below every number), ties by lowest answer id or by random noise when
  `key` is given; padded with -1."""
  if key is None:
    tiebreak = answers_PxN
  else:
    tiebreak = jax.random.uniform(key, answers_PxN.shape)
  nan = jnp.isnan(value_PxN)
  value = jnp.where(eligible_PxN & ~nan, value_PxN, -jnp.inf)
  # lexsort: last key is primary. Eligible first, then non-NaN, then larger value,
  # then tiebreak.
  order_PxN = jnp.lexsort((tiebreak, -value, nan, ~eligible_PxN), axis=-1)
  top = order_PxN[:, : min(k, answers_PxN.shape[-1])]
  ids = jnp.take_along_axis(answers_PxN, top, axis=-1)
  ok = jnp.take_along_axis(eligible_PxN, top, axis=-1)
  ids = jnp.where(ok, ids, INVALID)
  if k > answers_PxN.shape[-1]:
    pad = jnp.full((ids.shape[0], k - ids.shape[1]), INVALID, ids.dtype)
    ids = jnp.concatenate([ids, pad], axis=-1)
  return ids


@jax.jit
def self_consistency(answers_PxN, key=None):
  """Majority vote over answer groups. Returns answer_P (int32; -1 if all invalid).

  Ties: lowest answer id, or uniformly at random among tied groups with `key`.
  """
  g = answer_groups(answers_PxN)
  answers = jnp.asarray(answers_PxN, jnp.int32)
  return _rank_groups(g.count_PxN.astype(jnp.float32), g.first_PxN, answers, key, 1)[
    :, 0
  ]


@jax.jit
def weighted_self_consistency(answers_PxN, scores_PxN, key=None):
  """Weighted majority vote: the answer group with the largest sum of scores.

  `answers_PxN` int [P, N], `scores_PxN` float [P, N]; returns answer_P (int32).
  Scores should be non-negative (e.g. ORM probabilities) for the sum to mean "weighted
  votes". Invalid samples are ignored; -1 if all invalid. A NaN score contributes
  nothing to its group's sum (weight 0: it neither wins nor poisons the group), so a
  group whose scores are all NaN sums to 0; a group sum that is itself NaN (+inf and
  -inf in one group) ranks below every number. Ties as in `self_consistency`.

  Raises:
    ValueError: inputs that are not 2-D or whose shapes differ.
  """
  _check_same_shape("answers_PxN", answers_PxN, "scores_PxN", scores_PxN)
  g = answer_groups(answers_PxN, scores_PxN)
  answers = jnp.asarray(answers_PxN, jnp.int32)
  return _rank_groups(g.sum_PxN, g.first_PxN, answers, key, 1)[:, 0]


def best_of_majority(
  answers_PxN, scores_PxN, alpha, key=None, *, k: int = 1, reward: str = "mean"
):
  """Best-of-Majority (BoM) for the pass@k setting. Returns top-k answer ids, PxK.

  Keeps the answer groups whose empirical frequency count / N (N counts every sample,
  invalid ones included) is >= `alpha`; if no group passes, all valid groups are kept.
  Kept groups are ranked by their reward (`reward`: 'mean' (default), 'max' or 'sum' of
  the scores of the group's samples) and the top k are submitted. Fewer than k groups
  -> padded with -1. Ties: lowest answer id, or random among tied groups with `key`.
  `alpha` may be a traced scalar (no recompile when sweeping it).

  NaN scores are missing scores: a NaN-scored sample still counts towards its
  answer's frequency, but the reward is taken over the group's non-NaN scores only
  ('mean' divides by their number). A group with no non-NaN score has reward NaN
  under 'mean' and 'max' (ranked below every group that has a score) and 0 under 'sum'.

  Shapes: answers_PxN int [P, N], scores_PxN float [P, N]; returns int32 [P, k].

  Raises:
    ValueError: k < 1, unknown `reward`, a Python `alpha` outside [0, 1] (or NaN), or
      bad input shapes.
  """
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f"k must be an int >= 1, got {k!r}")
  if reward not in GROUP_REWARDS:
    raise ValueError(f"reward must be one of {GROUP_REWARDS}, got {reward!r}")
  if isinstance(alpha, (int, float)) and not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha}")
  return _best_of_majority(
    answers_PxN, scores_PxN, jnp.asarray(alpha, jnp.float32), key, k=k, reward=reward
  )


@functools.partial(jax.jit, static_argnames=("k", "reward"))
def _best_of_majority(answers_PxN, scores_PxN, alpha, key, *, k: int, reward: str):
  _check_same_shape("answers_PxN", answers_PxN, "scores_PxN", scores_PxN)
  g = answer_groups(answers_PxN, scores_PxN)
  answers = jnp.asarray(answers_PxN, jnp.int32)
  n = answers.shape[-1]
  freq = g.count_PxN / n
  passes = g.first_PxN & (freq >= alpha)
  eligible = jnp.where(passes.any(-1, keepdims=True), passes, g.first_PxN)
  mean = g.sum_PxN / jnp.maximum(g.scored_PxN, 1)
  value = {
    "mean": jnp.where(g.scored_PxN > 0, mean, jnp.nan),
    "max": g.max_PxN,
    "sum": g.sum_PxN,
  }[reward]
  return _rank_groups(value, eligible, answers, key, k)
