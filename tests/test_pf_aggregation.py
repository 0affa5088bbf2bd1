"""PRM score aggregation in particle filtering: the running aggregate agrees
with algorithms.selection.aggregate_step_scores, and the filter's final
weights match an independent numpy recomputation from the returned
trajectories (prm_logit and SMC weighting, several weight temperatures)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms import selection
from algorithms.particle_filter import PFConfig, run_particle_filter
from algorithms.scorers import StepScoreAggregate
from jaxllm import BigramLM
from jaxllm.cache import take_rows


@pytest.mark.parametrize("aggregation", selection.AGGREGATIONS)
def test_running_aggregate_matches_selection(aggregation):
  rng = np.random.default_rng(0)
  P, N, K = 3, 5, 6
  scores = rng.uniform(0.05, 1.0, size=(P, N, K)).astype(np.float32)
  scores[0, 1, 2] = np.nan  # a NaN step (valid)
  scores[1, 2, 4] = np.nan  # a NaN step that is masked out
  mask = rng.uniform(size=(P, N, K)) < 0.6  # not contiguous
  mask[1, 2, 4] = False
  mask[0, 1, 2] = True
  mask[2, 3] = False  # a sample with no scored step
  mask[2, 4, :] = True
  mask[2, 4, -1] = False  # NaN at a step that is not the last valid one
  scores[2, 4, 1] = np.nan
  want = np.asarray(selection.aggregate_step_scores(scores, mask, aggregation))
  agg = StepScoreAggregate.empty(P * N)
  for t in range(K):
    agg = agg.add(
      jnp.asarray(scores[..., t].reshape(-1)), jnp.asarray(mask[..., t].reshape(-1))
    )
  got = np.asarray(agg.value(aggregation)).reshape(P, N)
  np.testing.assert_allclose(got, want, rtol=1e-6)  # NaN and -inf positions too
  assert got[2, 3] == -np.inf


def test_running_aggregate_rejects_unknown_name():
  with pytest.raises(ValueError, match="aggregation"):
    StepScoreAggregate.empty(2).value("median")
  with pytest.raises(ValueError, match="score_aggregation"):
    PFConfig(stop_ids=(1,), score_aggregation="median")


class FirstTokenScore:
  """Score = params[first token of the step] (hashable, stateless)."""

  def init(self, params, tokens_BxT, lengths_B, cache_size):
    return jnp.zeros((tokens_BxT.shape[0],), jnp.int32)

  def score(self, params, state, step, active_B):
    return state, params[step.tokens[:, 0]]

  def reorder(self, state, index_N):
    return take_rows(state, index_N)


TABLE = jnp.zeros((4, 4))  # uniform bigram over 4 tokens; STOP = 2, delimiter 3
SCORES = np.array([0.9, 0.3, 0.6, 0.5], np.float32)


def _np_aggregate(step_scores, aggregation):
  s = np.asarray(step_scores, np.float64)
  return {"last": s[-1], "min": s.min(), "prod": s.prod(), "mean": s.mean()}[
    aggregation
  ]


def _step_scores(result, p, i):
  first = np.asarray(result.step_tokens)[p, i, :, 0]
  taken = np.asarray(result.step_lengths)[p, i] > 0
  return SCORES[first[taken]]


@pytest.mark.parametrize(
  "aggregation,T", [("min", 1.0), ("prod", 0.5), ("mean", 2.0), ("last", 1.0)]
)
def test_prm_logit_weights_use_the_aggregate(aggregation, T):
  eps = 1e-6
  cfg = PFConfig(
    n_particles=8,
    max_steps=4,
    max_step_tokens=2,
    delimiter_ids=(3,),
    stop_ids=(2,),
    weighting="prm_logit",
    score_aggregation=aggregation,
    weight_temperature=T,
    score_eps=eps,
  )
  r, _ = run_particle_filter(
    BigramLM(4),
    TABLE,
    FirstTokenScore(),
    jnp.asarray(SCORES),
    [[1], [0], [3]],
    jax.random.key(0),
    cfg,
  )
  w = np.asarray(r.weights, np.float64)
  for p in range(3):
    agg = np.array(
      [_np_aggregate(_step_scores(r, p, i), aggregation) for i in range(8)]
    )
    np.testing.assert_allclose(np.asarray(r.aggregated_scores)[p], agg, rtol=1e-5)
    x = np.clip(agg, eps, 1 - eps)
    logit = np.log(x) - np.log1p(-x)
    want = np.exp((logit - logit.max()) / T)
    np.testing.assert_allclose(w[p], want / want.sum(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("aggregation", ["prod", "min"])
def test_smc_without_resampling_accumulates_aggregate_potentials(aggregation):
  """ESS threshold 0 never resamples: log w_i = sum_t log(A_t(x_i)) / T with
  A_t the aggregate of the first t step scores, and Z_hat = mean_i w_i."""
  T = 0.7
  cfg = PFConfig(
    n_particles=6,
    max_steps=3,
    max_step_tokens=2,
    delimiter_ids=(3,),
    stop_ids=(2,),
    weighting="smc",
    ess_threshold=0.0,
    score_eps=0.0,
    score_aggregation=aggregation,
    weight_temperature=T,
  )
  r, _ = run_particle_filter(
    BigramLM(4),
    TABLE,
    FirstTokenScore(),
    jnp.asarray(SCORES),
    [[1], [0]],
    jax.random.key(3),
    cfg,
  )
  for p in range(2):
    logw = []
    for i in range(6):
      s = _step_scores(r, p, i)
      logw.append(
        sum(np.log(_np_aggregate(s[: t + 1], aggregation)) for t in range(len(s))) / T
      )
    logw = np.array(logw)
    want = np.exp(logw - logw.max())
    np.testing.assert_allclose(
      np.asarray(r.weights)[p], want / want.sum(), rtol=1e-4, atol=1e-7
    )
    np.testing.assert_allclose(
      float(r.log_z[p]), np.log(np.mean(np.exp(logw))), rtol=1e-4
    )
