"""Sampling: exact distributions by chi-square, filters, greedy, keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxllm.sampling import filter_logits, make_sampling, sample

N = 200_000
ALPHA = 1e-6  # false-alarm rate of each chi-square test


def draw(logits_V, s, n=N, seed=0):
  keys = jax.random.split(jax.random.key(seed), 8)
  lg = jnp.broadcast_to(jnp.asarray(logits_V, jnp.float32),
                        (n // 8, len(logits_V)))
  f = jax.jit(lambda k: sample(k, lg, s))
  return np.concatenate([np.asarray(f(k)) for k in keys])


def chi2_pvalue(samples, probs):
  probs = np.asarray(probs, np.float64)
  counts = np.bincount(samples, minlength=len(probs))
  assert counts[probs == 0].sum() == 0, "drew a zero-probability token"
  keep = probs > 0
  exp = probs[keep] / probs[keep].sum() * len(samples)
  return stats.chisquare(counts[keep], exp).pvalue


LOGITS = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0, 1.5, -0.5], np.float32)


@pytest.mark.parametrize("temp", [1.0, 0.7, 2.5])
def test_temperature_distribution(temp):
  s = make_sampling(temp)
  p = jax.nn.softmax(LOGITS / temp)
  assert chi2_pvalue(draw(LOGITS, s, seed=int(temp * 10)), p) > ALPHA


def test_large_vocab_with_tiny_and_masked_probabilities():
  """Two-level CDF inversion over V=1000 (several blocks): a few large
  probabilities, many small ones, and -inf entries that must never appear."""
  rng = np.random.default_rng(0)
  lg = rng.normal(size=1000).astype(np.float32)
  lg[[3, 400, 999]] += 6.0
  lg[rng.choice(1000, 100, replace=False)] = -np.inf
  p = np.asarray(jax.nn.softmax(jnp.asarray(lg)), np.float64)
  smp = draw(lg, make_sampling(1.0), n=400_000, seed=3)
  counts = np.bincount(smp, minlength=1000)
  assert counts[np.isinf(lg)].sum() == 0
  # Pool small-probability tokens into bins so expected counts are >= 20.
  order = np.argsort(p)
  bins, acc, cur = np.zeros(1000, int), 0.0, 0
  for i in order:
    bins[i] = cur
    acc += p[i] * len(smp)
    if acc >= 20:
      cur, acc = cur + 1, 0.0
  obs = np.bincount(bins, weights=counts)
  exp = np.bincount(bins, weights=p) * len(smp)
  assert stats.chisquare(obs, exp / exp.sum() * obs.sum()).pvalue > ALPHA


def test_top_k_distribution_and_exclusion():
  s = make_sampling(1.0, top_k=3)
  smp = draw(LOGITS, s, seed=1)
  top3 = np.argsort(-LOGITS)[:3]
  p = np.zeros(8)
  p[top3] = np.exp(LOGITS[top3])
  assert set(np.unique(smp)) <= set(top3)
  assert chi2_pvalue(smp, p / p.sum()) > ALPHA


def test_top_p_distribution_and_exclusion():
  probs = np.asarray(jax.nn.softmax(LOGITS), np.float64)
  order = np.argsort(-probs)
  cum = np.cumsum(probs[order])
  top_p = 0.8
  n_keep = int(np.searchsorted(cum, top_p) + 1)  # first prefix reaching top_p
  keep = order[:n_keep]
  s = make_sampling(1.0, top_p=top_p)
  smp = draw(LOGITS, s, seed=2)
  assert set(np.unique(smp)) <= set(keep)
  p = np.zeros(8)
  p[keep] = probs[keep]
  assert chi2_pvalue(smp, p / p.sum()) > ALPHA


def test_min_p_and_combined_filters():
  s = make_sampling(0.8, top_k=5, min_p=0.2)
  lg = filter_logits(jnp.asarray(LOGITS)[None], s)[0]
  scaled = LOGITS / 0.8
  top5 = np.argsort(-scaled)[:5]
  pk = np.exp(scaled[top5] - scaled.max())
  pk = pk / pk.sum()
  keep = top5[pk >= 0.2 * pk.max()]
  assert set(np.flatnonzero(np.isfinite(lg))) == set(keep)
  smp = draw(LOGITS, s, seed=4)
  p = np.zeros(8)
  p[keep] = np.exp(scaled[keep])
  assert chi2_pvalue(smp, p / p.sum()) > ALPHA


def test_greedy_is_argmax_and_keys():
  lg = jax.random.normal(jax.random.key(0), (16, 50))
  g = sample(jax.random.key(1), lg, make_sampling(0.0))
  np.testing.assert_array_equal(g, jnp.argmax(lg, -1))
  s = make_sampling(1.0)
  a = sample(jax.random.key(5), lg, s)
  b = sample(jax.random.key(5), lg, s)
  c = sample(jax.random.key(6), lg, s)
  np.testing.assert_array_equal(a, b)
  assert (np.asarray(a) != np.asarray(c)).any()
