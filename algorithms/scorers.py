"""Step scorers: one small interface for every source of step rewards.

A search algorithm asks for the score of each row's latest step and never
cares where it comes from (a trained PRM with its own KV cache, the
generator's own confidence, an exact checker, a toy potential). The exact
or noisy reference oracle (`jaxllm.reward.ReferenceOracle`, jittable, noise
a function of the seed and the prefix) goes behind `ModelStepScorer` like
a trained PRM:

  init(params, tokens_BxT, lengths_B, cache_size) -> state
  score(params, state, step: Step, active_B) -> (state, score_B)
  reorder(state, index_N) -> state

Scores are in [0, 1] (a probability that the solution so far is correct)
unless a scorer documents otherwise. Inactive rows keep their state; their
score is unspecified and must be ignored by the caller.

`StepScoreAggregate` folds each row's step scores into the aggregate of
`algorithms.selection.aggregate_step_scores` (last / min / prod / mean) one
step at a time, inside jit.

Shape suffixes: B rows, S step token budget, T padded prompt length, N index
length.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from algorithms.selection import AGGREGATIONS
from algorithms.stepping import Step
from jaxllm.cache import take_rows


@dataclasses.dataclass(frozen=True)
class ModelStepScorer:
  """Wraps a reward model with the decode-interface shape (jaxllm.reward):
  prefill(params, tokens, lengths, cache_size) -> (state, score_B) and
  extend(params, state, tokens_BxS, valid_BxS) -> (state, scores_BxS).
  The step is scored incrementally: only its new tokens are run, against the
  reward model's cached prefix. Score = the score at the step's last token."""

  model: Any

  def init(self, params, tokens_BxT, lengths_B, cache_size: int):
    state, _ = self.model.prefill(params, tokens_BxT, lengths_B, cache_size)
    return state

  def score(self, params, state, step: Step, active_B):
    S = step.tokens.shape[1]
    n = jnp.where(active_B, step.length, 0)
    valid = jnp.arange(S)[None, :] < n[:, None]
    state, scores = self.model.extend(params, state, step.tokens, valid)
    last = jnp.take_along_axis(scores, jnp.maximum(n - 1, 0)[:, None], 1)[:, 0]
    return state, last

  def reorder(self, state, index):
    return self.model.reorder(state, index)


@dataclasses.dataclass(frozen=True)
class ConfidenceScorer:
  """No trained verifier: the generator's own confidence in the step.

  kind='mean_logprob': exp(mean token log-prob of the step) (geometric-mean
  token probability, in (0, 1]); kind='min_prob': the least likely token's
  probability. Stateless; needs no params."""

  kind: str = "mean_logprob"

  def __post_init__(self):
    if self.kind not in ("mean_logprob", "min_prob"):
      raise ValueError(
        f"ConfidenceScorer.kind must be 'mean_logprob' or 'min_prob', got {self.kind!r}"
      )

  def init(self, params, tokens_BxT, lengths_B, cache_size: int):
    return jnp.zeros((tokens_BxT.shape[0],), jnp.int32)

  def score(self, params, state, step: Step, active_B):
    S = step.tokens.shape[1]
    valid = jnp.arange(S)[None, :] < step.length[:, None]
    n = jnp.maximum(step.length, 1)
    if self.kind == "mean_logprob":
      s = jnp.exp(jnp.sum(jnp.where(valid, step.logprob, 0.0), 1) / n)
    else:
      s = jnp.exp(jnp.min(jnp.where(valid, step.logprob, 0.0), 1))
    return state, s

  def reorder(self, state, index):
    return take_rows(state, index)


@flax.struct.dataclass
class StepScoreAggregate:
  """Running aggregate of each row's step scores (B rows), jit-friendly.

  The incremental form of `algorithms.selection.aggregate_step_scores` (and
  tested against it): after feeding step t's scores with `add(score_B,
  active_B)` for t = 1..K, `value(agg)` equals aggregate_step_scores(scores,
  active, agg) with the same edge cases: a row with no scored step gives -inf;
  a NaN step score makes 'min', 'prod', 'mean' NaN, and 'last' NaN while it is
  the latest. ('prod' and 'mean' are summed in step order, so they can differ
  from the one-shot reduction in the last float32 bits.)

  Fields (all [B]): last float32 (latest score), min float32, prod float32,
  sum float32, count int32 (scored steps).
  """

  last: Any
  min: Any
  prod: Any
  sum: Any
  count: Any

  @classmethod
  def empty(cls, n_rows: int) -> StepScoreAggregate:
    """No step scored yet (every value is -inf)."""
    f = lambda v: jnp.full((n_rows,), v, jnp.float32)
    return cls(
      last=f(-jnp.inf),
      min=f(jnp.inf),
      prod=f(1.0),
      sum=f(0.0),
      count=jnp.zeros((n_rows,), jnp.int32),
    )

  def add(self, score_B, active_B) -> StepScoreAggregate:
    """Fold in one step's scores for the active rows (others unchanged)."""
    s = score_B.astype(jnp.float32)
    on = lambda new, old: jnp.where(active_B, new, old)
    return StepScoreAggregate(
      last=on(s, self.last),
      min=on(jnp.minimum(self.min, s), self.min),
      prod=on(self.prod * s, self.prod),
      sum=on(self.sum + s, self.sum),
      count=self.count + active_B.astype(jnp.int32),
    )

  def value(self, aggregation: str):
    """float32 [B]: the aggregate ('last', 'min', 'prod' or 'mean'); -inf for a
    row with no scored step.

    Raises:
      ValueError: an unknown aggregation.
    """
    if aggregation == "last":
      out = self.last
    elif aggregation == "min":
      out = self.min
    elif aggregation == "prod":
      out = self.prod
    elif aggregation == "mean":
      out = self.sum / jnp.maximum(self.count, 1).astype(jnp.float32)
    else:
      raise ValueError(
        f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}"
      )
    return jnp.where(self.count > 0, out, -jnp.inf)

  def reorder(self, index) -> StepScoreAggregate:
    """Gather rows (resampling, forks); index [N] or blocked [P, N]
    (`jaxllm.cache.take_rows`)."""
    return jax.tree_util.tree_map(lambda x: take_rows(x, index), self)
