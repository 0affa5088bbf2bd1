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
  lg = jnp.broadcast_to(jnp.asarray(logits_V, jnp.float32), (n // 8, len(logits_V)))
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


# ----------------------------------------------------------------------------------
# Ties at a set-size cutoff: top-p and top-k keep exactly their set (lowest index
# first among tied tokens); min-p is a threshold and keeps every tied token.


_filter_jit = jax.jit(filter_logits)


def kept(logits_V, s, pad_to=None):
  """Indices `filter_logits` keeps. With `pad_to`, the logits are padded with
  -inf (zero-probability tokens, never kept) to that width, so many
  vocabulary sizes share one compiled program."""
  lg = np.asarray(logits_V, np.float32)
  V = lg.shape[0]
  if pad_to is not None:
    lg = np.concatenate([lg, np.full(pad_to - V, -np.inf, np.float32)])
  out = np.asarray(_filter_jit(jnp.asarray(lg)[None], s)[0])[:V]
  return np.flatnonzero(np.isfinite(out))


def hf_kept(warper, logits_V):
  import torch

  out = warper(None, torch.tensor(np.asarray(logits_V, np.float32))[None])
  return np.flatnonzero(torch.isfinite(out[0]).numpy())


@pytest.mark.parametrize(
  "probs,top_p,want",
  [
    # mass before each sorted token: 0, .4, .6, .8 -> the first two reach .5.
    ([0.4, 0.2, 0.2, 0.2], 0.5, [0, 1]),
    # 0, .5, .7, .9 -> two tokens; the tied 0.2s are not both kept.
    ([0.5, 0.2, 0.2, 0.1], 0.6, [0, 1]),
    # Tie at the top: a tiny top_p keeps only the lowest-index argmax (greedy).
    ([0.4, 0.4, 0.15, 0.05], 1e-6, [0]),
    ([0.1, 0.3, 0.3, 0.3], 1e-6, [1]),
  ],
)
def test_top_p_ties_keep_smallest_set(probs, top_p, want):
  from transformers.generation.logits_process import TopPLogitsWarper

  lg = np.log(np.asarray(probs, np.float32))
  got = kept(lg, make_sampling(1.0, top_p=top_p))
  np.testing.assert_array_equal(got, want)
  # transformers keeps a set of the same size and the same probabilities (it may pick
  # another member of a tie: its ascending sort keeps the highest index).
  ref = hf_kept(TopPLogitsWarper(top_p), lg)
  assert len(ref) == len(want)
  np.testing.assert_allclose(
    np.sort(np.asarray(probs)[ref]), np.sort(np.asarray(probs)[want])
  )


def test_top_p_tie_distribution():
  """[0.4, 0.2, 0.2, 0.2], top_p 0.5: P(token 0) = 0.4 / 0.6 = 2/3, not 0.4."""
  lg = np.log(np.array([0.4, 0.2, 0.2, 0.2], np.float32))
  smp = draw(lg, make_sampling(1.0, top_p=0.5), seed=11)
  assert chi2_pvalue(smp, [2 / 3, 1 / 3, 0.0, 0.0]) > ALPHA
  lg = np.log(np.array([0.5, 0.2, 0.2, 0.1], np.float32))
  smp = draw(lg, make_sampling(1.0, top_p=0.6), seed=12)
  assert chi2_pvalue(smp, [5 / 7, 2 / 7, 0.0, 0.0]) > ALPHA


def test_top_p_matches_transformers_on_random_logits():
  from transformers.generation.logits_process import TopPLogitsWarper

  rng = np.random.default_rng(0)
  checked = 0
  for trial in range(300):
    V = int(rng.integers(2, 200))
    lg = (rng.normal(size=V) * rng.uniform(0.3, 4.0)).astype(np.float32)
    top_p = float(rng.uniform(0.01, 0.99))
    p = np.sort(np.asarray(jax.nn.softmax(jnp.asarray(lg)), np.float64))[::-1]
    if np.min(np.abs(np.cumsum(p) - top_p)) < 1e-4:
      continue  # within float rounding of the boundary: either answer is right
    got = kept(lg, make_sampling(1.0, top_p=top_p), pad_to=256)
    np.testing.assert_array_equal(
      got, hf_kept(TopPLogitsWarper(top_p), lg), err_msg=f"trial {trial}"
    )
    checked += 1
  assert checked > 250


def test_top_k_ties_keep_exactly_k():
  lg = np.array([1.0, 2.0, 2.0, 2.0, 0.0], np.float32)
  np.testing.assert_array_equal(kept(lg, make_sampling(1.0, top_k=2)), [1, 2])
  np.testing.assert_array_equal(kept(lg, make_sampling(1.0, top_k=1)), [1])
  np.testing.assert_array_equal(kept(lg, make_sampling(1.0, top_k=4)), [0, 1, 2, 3])
  # k = V and k > V keep everything.
  np.testing.assert_array_equal(kept(lg, make_sampling(1.0, top_k=5)), range(5))
  np.testing.assert_array_equal(kept(lg, make_sampling(1.0, top_k=10**9)), range(5))
  # Distribution: two tokens of equal logit -> 1/2 each.
  smp = draw(lg, make_sampling(1.0, top_k=2), seed=13)
  assert chi2_pvalue(smp, [0, 0.5, 0.5, 0, 0]) > ALPHA


def test_top_k_matches_transformers_on_untied_logits():
  from transformers.generation.logits_process import TopKLogitsWarper

  rng = np.random.default_rng(1)
  for trial in range(100):
    V = int(rng.integers(2, 100))
    lg = rng.normal(size=V).astype(np.float32)
    k = int(rng.integers(1, V + 3))
    np.testing.assert_array_equal(
      kept(lg, make_sampling(1.0, top_k=k), pad_to=128),
      hf_kept(TopKLogitsWarper(k), lg),
      err_msg=f"trial {trial}",
    )


def test_min_p_keeps_every_token_at_threshold():
  from transformers.generation.logits_process import MinPLogitsWarper

  # p = [.4, .2, .2, .1, .1]; min_p .45 -> threshold .18: the tied .2s both stay
  # (a threshold, not a set size), the .1s go.
  lg = np.log(np.array([0.4, 0.2, 0.2, 0.1, 0.1], np.float32))
  got = kept(lg, make_sampling(1.0, min_p=0.45))
  np.testing.assert_array_equal(got, [0, 1, 2])
  np.testing.assert_array_equal(got, hf_kept(MinPLogitsWarper(0.45), lg))
  # Exactly at the threshold: equal logits, p = pmax, kept for any min_p < 1.
  lg = np.array([0.0, 0.0, -5.0, 0.0], np.float32)
  got = kept(lg, make_sampling(1.0, min_p=0.999))
  np.testing.assert_array_equal(got, [0, 1, 3])
  np.testing.assert_array_equal(got, hf_kept(MinPLogitsWarper(0.999), lg))
