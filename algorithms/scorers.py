"""Step scorers: one small interface for every source of step rewards.

A search algorithm asks for the score of each row's latest step and never
cares where it comes from (a trained PRM with its own KV cache, the
generator's own confidence, an exact checker, a toy potential):

  init(params, tokens_BxT, lengths_B, cache_size) -> state
  score(params, state, step: Step, active_B) -> (state, score_B)
  reorder(state, index_N) -> state

Scores are in [0, 1] (a probability that the solution so far is correct)
unless a scorer documents otherwise. Inactive rows keep their state; their
score is unspecified and must be ignored by the caller.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from algorithms.stepping import Step


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

  def reorder(self, state, index_N):
    return self.model.reorder(state, index_N)


@dataclasses.dataclass(frozen=True)
class ConfidenceScorer:
  """No trained verifier: the generator's own confidence in the step.

  kind='mean_logprob': exp(mean token log-prob of the step) (geometric-mean
  token probability, in (0, 1]); kind='min_prob': the least likely token's
  probability. Stateless; needs no params."""

  kind: str = "mean_logprob"

  def __post_init__(self):
    if self.kind not in ("mean_logprob", "min_prob"):
      raise ValueError(f"ConfidenceScorer.kind must be 'mean_logprob' or "
                       f"'min_prob', got {self.kind!r}")

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

  def reorder(self, state, index_N):
    return jnp.take(state, index_N, axis=0)
