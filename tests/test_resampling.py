"""Tests for algorithms/resampling.py.

Statistical tests use fixed seeds and compare against exact laws computed independently
in float64 numpy (enumeration / closed forms); every threshold is at p < 1e-6 (z > 5.3),
so a correct implementation essentially never fails. Weights in the exact-law tests are
dyadic so float32 CDF boundaries coincide with the float64 reference.
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from algorithms import resampling as rs

SCHEMES = rs.SCHEMES
P_MIN = 1e-6
Z_MAX = 5.3  # two-sided p ~ 1.2e-7 per comparison
NUM_DRAWS = 20_000

N = (
  8  # one particle count for the whole file: each sampler is compiled only a few times
)

# Dyadic weights (exact in float32) with zero-weight particles interleaved;
# N * w = [.5, 0, 1.5, 2.5, 0, 0, 3.5, 0] and [.25, 0, 1.75, .75, 0, 2.25, 3, 0].
DYADIC_WEIGHTS = [
  np.array([1, 0, 3, 5, 0, 0, 7, 0]) / 16,
  np.array([1, 0, 7, 3, 0, 9, 12, 0]) / 32,
]


# ----------------------------------------------------------------------------------
# Independent float64 references: exact law {count vector: prob} of the offspring
# counts when drawing n ancestors from w (enumeration over the support of w).
# ----------------------------------------------------------------------------------


def _compositions(total, parts):
  for bars in itertools.combinations(range(total + parts - 1), parts - 1):
    edges = (-1,) + bars + (total + parts - 1,)
    yield tuple(edges[i + 1] - edges[i] - 1 for i in range(parts))


def _embed(support, counts, size):
  c = np.zeros(size, int)
  c[list(support)] = counts
  return tuple(c)


def _exact_multinomial(w, n):
  support = np.flatnonzero(w)
  return {
    _embed(support, c, len(w)): scipy.stats.multinomial.pmf(c, n, w[support])
    for c in _compositions(n, len(support))
  }


def _exact_systematic(w, n):
  cdf = np.cumsum(w)
  cdf[-1] = 1.0
  # Offsets U where some point (k + U) / n crosses a CDF boundary.
  cuts = {0.0, 1.0}
  for k in range(n):
    for c in cdf:
      if 0 < n * c - k < 1:
        cuts.add(n * c - k)
  cuts = sorted(cuts)
  law = {}
  for a, b in zip(cuts[:-1], cuts[1:]):
    idx = np.searchsorted(cdf, (np.arange(n) + (a + b) / 2) / n, side="right")
    c = tuple(np.bincount(idx, minlength=len(w)))
    law[c] = law.get(c, 0.0) + (b - a)
  return law


def _stratum_law(w, n):
  """P[k, j] = P(the point of stratum k falls in particle j's CDF interval)."""
  cdf = np.concatenate([[0.0], np.cumsum(w)])
  lo, hi = cdf[:-1], cdf[1:]
  out = np.zeros((n, len(w)))
  for k in range(n):
    out[k] = n * np.clip(np.minimum(hi, (k + 1) / n) - np.maximum(lo, k / n), 0, None)
  return out


def _exact_stratified(w, n):
  per = _stratum_law(w, n)
  supports = [np.flatnonzero(per[k]) for k in range(n)]
  law = {}
  for choice in itertools.product(*supports):
    prob = np.prod([per[k, j] for k, j in enumerate(choice)])
    c = tuple(np.bincount(choice, minlength=len(w)))
    law[c] = law.get(c, 0.0) + prob
  return law


def _exact_residual(w, n):
  floors = np.floor(n * w).astype(int)
  r = n - floors.sum()
  if r == 0:
    return {tuple(floors): 1.0}
  return {
    tuple(floors + np.array(c)): p
    for c, p in _exact_multinomial((n * w - floors) / r, r).items()
  }


EXACT = {
  "multinomial": _exact_multinomial,
  "systematic": _exact_systematic,
  "stratified": _exact_stratified,
  "residual": _exact_residual,
}


# ----------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------


# One compiled function per (scheme, M), always fed NUM_DRAWS rows of [N] problems, so
# the whole file compiles each sampler only a few times (compilation dominates runtime).
@functools.lru_cache(maxsize=None)
def _batched_resample(scheme, num_samples):
  return jax.jit(jax.vmap(lambda k, p: rs.resample(k, p, num_samples, scheme)))


@functools.lru_cache(maxsize=None)
def _batched_conditional(scheme):
  return jax.jit(
    jax.vmap(lambda k, p, b, s: rs.conditional_resample(k, p, b, scheme, s))
  )


_resample_jit = jax.jit(rs.resample, static_argnums=(2, 3))
_resample_log_weights_jit = jax.jit(rs.resample_log_weights, static_argnums=(2, 3))


def _keys(seed):
  return jax.random.split(jax.random.PRNGKey(seed), NUM_DRAWS)


def _rows(x):
  """[NUM_DRAWS, N] float32: one problem [N] repeated, or already one per row."""
  x = np.asarray(x, np.float32)
  if x.ndim == 1:
    x = np.broadcast_to(x, (NUM_DRAWS, x.shape[0]))
  return np.ascontiguousarray(x)


def _draw(scheme, probs, seed, num_samples=None):
  """[NUM_DRAWS, M] ancestors: vmapped, jitted draws with independent keys.

  probs: one problem [N] (repeated) or NUM_DRAWS problems [NUM_DRAWS, N]."""
  probs = _rows(probs)
  m = probs.shape[-1] if num_samples is None else num_samples
  return np.asarray(_batched_resample(scheme, m)(_keys(seed), probs))


def _offspring(ancestors_KxM, n):
  return (ancestors_KxM[:, :, None] == np.arange(n)).sum(axis=1)


def _assert_law(counts_KxN, law):
  """Chi-square goodness of fit of observed count vectors to an exact law."""
  support = {c for c, p in law.items() if p > 0}
  observed = {}
  for row in map(tuple, counts_KxN):
    observed[row] = observed.get(row, 0) + 1
  outside = set(observed) - support
  assert not outside, f"count vectors outside the exact support: {outside}"
  k = counts_KxN.shape[0]
  cells = sorted(support, key=lambda c: -law[c])
  expected = np.array([k * law[c] for c in cells])
  obs = np.array([observed.get(c, 0) for c in cells], float)
  big = expected >= 5
  if (~big).any():  # pool the rare cells into one
    expected = np.append(expected[big], expected[~big].sum())
    obs = np.append(obs[big], obs[~big].sum())
  if len(expected) == 1:
    assert obs[0] == k
    return
  expected *= obs.sum() / expected.sum()  # float64 rounding of the total only
  pvalue = scipy.stats.chisquare(obs, expected).pvalue
  assert pvalue > P_MIN, (pvalue, dict(zip(cells, obs)))


# ----------------------------------------------------------------------------------
# Resampling schemes
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("widx", range(len(DYADIC_WEIGHTS)))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_offspring_count_law_is_exact(scheme, widx):
  w = DYADIC_WEIGHTS[widx]
  anc = _draw(scheme, w, seed=11 + widx)
  assert anc.dtype == np.int32 and anc.shape == (NUM_DRAWS, N)
  _assert_law(_offspring(anc, N), EXACT[scheme](w, N))


@pytest.mark.parametrize("num_samples", [N, 5])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_unbiased_offspring_counts(scheme, num_samples):
  rng = np.random.default_rng(0)
  w = rng.dirichlet(np.ones(N) * 0.7).astype(np.float32)
  w /= w.sum()
  anc = _draw(scheme, w, seed=3, num_samples=num_samples)
  assert anc.shape == (NUM_DRAWS, num_samples)
  assert anc.min() >= 0 and anc.max() < N
  counts = _offspring(anc, N)
  target = num_samples * w.astype(np.float64)
  mean, sd = counts.mean(0), counts.std(0, ddof=1)
  for j in range(N):
    if sd[j] == 0:  # deterministic count (e.g. systematic with integer M w_j)
      assert abs(mean[j] - target[j]) < 1e-4, (j, mean[j], target[j])
    else:
      z = (mean[j] - target[j]) / (sd[j] / math.sqrt(NUM_DRAWS))
      assert abs(z) < Z_MAX, (scheme, j, z)


def test_low_variance_schemes_beat_multinomial():
  w = np.array([0.3, 0.05, 0.15, 0.02, 0.2, 0.08, 0.12, 0.08], np.float32)
  w /= w.sum()
  n = N
  var = {s: _offspring(_draw(s, w, seed=5), n).var(0, ddof=1).sum() for s in SCHEMES}
  # Closed-form sums of per-particle offspring variances (float64):
  w64 = w.astype(np.float64)
  frac = n * w64 - np.floor(n * w64)
  per = _stratum_law(w64, n)
  exact = {
    "multinomial": (n * w64 * (1 - w64)).sum(),  # 6.53
    "systematic": (frac * (1 - frac)).sum(),  # count is floor or ceil: 1.51
    "stratified": (per * (1 - per)).sum(),  # independent strata: 2.19
    "residual": (frac * (1 - frac / frac.sum())).sum(),  # R r (1 - r): 3.37
  }
  for s in SCHEMES:
    assert abs(var[s] - exact[s]) < 0.08 * exact[s], (s, var[s], exact[s])
  for s in ("systematic", "stratified", "residual"):
    assert var[s] < 0.6 * var["multinomial"], var
  assert var["systematic"] < var["stratified"], var


def test_systematic_counts_are_floor_or_ceil():
  w = np.array([0.3, 0.05, 0.15, 0.02, 0.2, 0.08, 0.12, 0.08], np.float32)
  counts = _offspring(_draw("systematic", w, seed=6), N)
  lo = np.floor(N * w.astype(np.float64))
  assert ((counts == lo) | (counts == lo + 1)).all()


def test_residual_deterministic_part_is_exact():
  w = np.array([0.41, 0.02, 0.26, 0.0, 0.31, 0.0, 0.0, 0.0], np.float32)
  w /= w.sum()
  m = N
  floors = np.floor(m * w.astype(np.float64)).astype(int)
  assert floors.tolist() == [3, 0, 2, 0, 2, 0, 0, 0]
  det = np.repeat(np.arange(N), floors)
  anc = _draw("residual", w, seed=7, num_samples=m)
  np.testing.assert_array_equal(
    anc[:, : len(det)], np.broadcast_to(det, (NUM_DRAWS, len(det)))
  )
  counts = _offspring(anc, N)
  assert (counts >= floors).all()
  assert (counts[:, 3] == 0).all()  # zero weight: never drawn, not even as a residual


@pytest.mark.parametrize("scheme", SCHEMES)
def test_degenerate_probabilities(scheme):
  for j in (0, 5, 7):  # one-hot, including both ends of the CDF (u = 0, u -> 1)
    np.testing.assert_array_equal(_draw(scheme, np.eye(N)[j], seed=j), j)
    np.testing.assert_array_equal(_draw(scheme, np.eye(N)[j], seed=j, num_samples=5), j)
  sparse = np.zeros(N, np.float32)
  sparse[[0, 5, 7]] = [0.2, 0.5, 0.3]
  assert set(np.unique(_draw(scheme, sparse, seed=8))) <= {0, 5, 7}
  # Unnormalised probabilities are accepted (divided by their sum).
  np.testing.assert_array_equal(_draw(scheme, 3.0 * np.eye(N)[2], seed=9), 2)


def test_resample_log_weights_degenerate():
  key = jax.random.PRNGKey(1)
  anc = _resample_log_weights_jit(key, jnp.full(N, -jnp.inf), N, "systematic")
  np.testing.assert_array_equal(anc, np.arange(N))  # uniform: one copy each
  logw = jnp.array([jnp.nan, 0.0, jnp.inf, -jnp.inf, jnp.inf, 3.0, 1e30, -1e30])
  for scheme in SCHEMES:
    anc = np.asarray(_resample_log_weights_jit(key, logw, N, scheme))
    assert set(np.unique(anc)) <= {2, 4}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_vmap_over_problems_matches_per_problem(scheme):
  rng = np.random.default_rng(1)
  probs_BxN = rng.dirichlet(np.ones(N), size=NUM_DRAWS).astype(np.float32)
  batched = _draw(scheme, probs_BxN, seed=2)
  assert batched.shape == (NUM_DRAWS, N) and batched.dtype == np.int32
  keys = _keys(2)
  for b in (0, NUM_DRAWS - 1):  # each row is that problem's own unbatched draw
    np.testing.assert_array_equal(
      batched[b], _resample_jit(keys[b], probs_BxN[b], N, scheme)
    )
    np.testing.assert_array_equal(
      batched[b], _resample_log_weights_jit(keys[b], np.log(probs_BxN[b]), N, scheme)
    )


def test_invalid_arguments_raise():
  key = jax.random.PRNGKey(0)
  p = jnp.ones(4) / 4
  with pytest.raises(ValueError, match="1-D"):
    rs.systematic(key, jnp.ones((2, 4)), 4)
  with pytest.raises(ValueError, match="at least one"):
    rs.multinomial(key, jnp.ones(0), 4)
  with pytest.raises(ValueError, match="num_samples"):
    rs.stratified(key, p, 0)
  with pytest.raises(ValueError, match="num_samples"):
    rs.residual(key, p, 2.5)
  with pytest.raises(ValueError, match="scheme"):
    rs.resample(key, p, 4, "bogus")
  with pytest.raises(ValueError, match="ref_slot"):
    rs.conditional_resample(key, p, 0, "multinomial", ref_slot=4)
  with pytest.raises(ValueError, match="ref_index"):
    rs.conditional_resample(key, p, -1)
  with pytest.raises(ValueError, match="temperature"):
    rs.tempered_probs(jnp.zeros(4), 0.0)
  with pytest.raises(ValueError, match="temperature"):
    rs.prm_logit_log_weights(jnp.full(4, 0.5), temperature=-1.0)
  with pytest.raises(ValueError, match="eps"):
    rs.prm_logit_log_weights(jnp.full(4, 0.5), eps=0.5)
  with pytest.raises(ValueError, match="mode"):
    rs.entropic_temperature(p, 0.1, mode="kl")
  with pytest.raises(ValueError, match="shape"):
    rs.reweight(jnp.zeros(4), jnp.zeros(3))


# ----------------------------------------------------------------------------------
# Log-weight normalisation, ESS, entropy
# ----------------------------------------------------------------------------------


def test_normalize_matches_scipy_on_finite_inputs():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(5, N)) * 30 + rng.normal(size=(5, 1)) * 1e3
  probs, inc = jax.jit(jax.vmap(rs.normalize_log_weights))(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(
    probs, scipy.special.softmax(x, axis=1), rtol=1e-4, atol=1e-7
  )
  np.testing.assert_allclose(
    inc, scipy.special.logsumexp(x, axis=1) - math.log(N), rtol=1e-5
  )


@pytest.mark.parametrize(
  "logw, probs, inc",
  [
    ([3.7] * 5, [0.2] * 5, 3.7),
    ([0.0, -np.inf, math.log(3.0)], [0.25, 0.0, 0.75], math.log(4 / 3)),
    ([-np.inf] * 4, [0.25] * 4, -np.inf),
    ([np.nan, 0.0, math.log(3.0)], [0.0, 0.25, 0.75], math.log(4 / 3)),
    ([np.nan] * 3, [1 / 3] * 3, -np.inf),
    ([np.inf, 1.0, np.inf, np.nan, -np.inf], [0.5, 0, 0.5, 0, 0], np.inf),
    ([1e30, -1e30, 0.0], [1.0, 0.0, 0.0], 1e30 - math.log(3)),
    ([-1e30, -1e30], [0.5, 0.5], -1e30),
    ([5.0], [1.0], 5.0),
  ],
)
def test_normalize_degenerate(logw, probs, inc):
  fn = jax.jit(rs.normalize_log_weights)
  p, i = fn(jnp.asarray(logw, jnp.float32))
  assert not np.isnan(p).any() and not np.isnan(i)
  np.testing.assert_allclose(p, probs, rtol=1e-6, atol=1e-7)
  if np.isinf(inc):
    assert i == inc
  else:
    np.testing.assert_allclose(i, inc, rtol=1e-6)


def test_normalize_vmap_over_degenerate_batch():
  batch = jnp.array(
    [[0.0, 1.0, 2.0], [-jnp.inf] * 3, [jnp.nan, jnp.inf, 0.0], [jnp.nan] * 3],
    jnp.float32,
  )
  p, inc = jax.jit(jax.vmap(rs.normalize_log_weights))(batch)
  assert not np.isnan(p).any() and not np.isnan(inc).any()
  np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(inc[1:], [-np.inf, np.inf, -np.inf])


def test_ess_and_entropy_closed_forms():
  two = np.zeros(N)
  two[[1, 6]] = 0.5
  random = np.random.default_rng(3).dirichlet(np.ones(N), size=4)
  rows = np.concatenate(
    [[np.full(N, 1 / N), np.eye(N)[3], two, 5 * two, np.zeros(N)], random]
  )
  fn = jax.jit(jax.vmap(lambda p: (rs.ess(p), rs.entropy_normalised(p))))
  ess, ent = map(np.asarray, fn(rows.astype(np.float32)))
  np.testing.assert_allclose(ess[:5], [N, 1, 2, 2, 0], rtol=1e-6)  # 5 * two: scale-free
  np.testing.assert_allclose(ess[5:], 1 / (random**2).sum(1), rtol=1e-5)
  np.testing.assert_allclose(
    ent[:4],
    [1, 0, math.log(2) / math.log(N), math.log(2) / math.log(N)],
    rtol=1e-6,
    atol=1e-7,
  )
  np.testing.assert_allclose(
    ent[5:], scipy.stats.entropy(random, axis=1) / math.log(N), rtol=1e-5
  )
  assert rs.entropy_normalised(jnp.ones(1)) == 1.0


# ----------------------------------------------------------------------------------
# PRM weights and incremental weights
# ----------------------------------------------------------------------------------


def test_prm_reference_probs():
  r = np.array([0.9, 0.5, 0.2, 0.0, 1.0, 0.75, 0.33, 0.999])
  eps, t = 1e-6, 0.7
  # The clip bounds are float32 numbers (1 - 1e-6 rounds to 0.99999899).
  rc = np.clip(r, np.float32(eps), np.float32(1 - eps)).astype(np.float64)
  expected = scipy.special.softmax(np.log(rc / (1 - rc)) / t)
  with_nan = np.array([np.nan, 0.5, 0.5, np.nan, np.nan, np.nan, np.nan, np.nan])
  rows = np.stack([r, with_nan, np.full(N, np.nan)]).astype(np.float32)
  fn = jax.jit(
    jax.vmap(
      lambda s: (rs.prm_reference_probs(s, t, eps), rs.prm_logit_log_weights(s, t, eps))
    )
  )
  probs, logw = map(np.asarray, fn(rows))
  np.testing.assert_allclose(probs[0], expected, rtol=2e-4, atol=1e-9)
  assert np.isfinite(logw[0]).all()  # scores 0 and 1 are clipped
  np.testing.assert_allclose(probs[1], [0, 0.5, 0.5, 0, 0, 0, 0, 0])  # NaN: zero weight
  np.testing.assert_allclose(probs[2], np.full(N, 1 / N), rtol=1e-6)  # all NaN: uniform


_reweight_jit = jax.jit(rs.reweight)
_normalize_jit = jax.jit(rs.normalize_log_weights)


def test_prm_log_potential_and_reweight_evidence():
  rng = np.random.default_rng(4)
  r1, r2 = rng.uniform(0.05, 1.0, size=(2, N))
  pot = jax.jit(jax.vmap(rs.prm_log_potential))(
    np.stack([r1, r2, np.zeros(N)]), np.array([1.0, 2.0, 1.0])
  )
  np.testing.assert_allclose(pot[0], np.log(r1), rtol=1e-5)
  np.testing.assert_allclose(pot[1], np.log(r2) / 2, rtol=1e-5)
  assert np.isfinite(pot[2]).all()  # a zero score is clipped to eps by default ...
  np.testing.assert_array_equal(
    rs.prm_log_potential(jnp.zeros(2), eps=0.0), [-np.inf] * 2
  )  # ... and kills the particle with eps = 0
  logw, inc1 = _reweight_jit(np.zeros(N), pot[0])
  logw, inc2 = _reweight_jit(logw, pot[1])
  total = np.log(r1) + np.log(r2) / 2
  # Without resampling: log Z_hat = log mean_i prod_t G_t(i); weights ∝ prod_t G_t.
  np.testing.assert_allclose(
    inc1 + inc2, scipy.special.logsumexp(total) - math.log(N), rtol=1e-5
  )
  np.testing.assert_allclose(
    _normalize_jit(logw)[0], scipy.special.softmax(total), rtol=1e-5
  )


def test_reweight_active_mask_and_degenerate():
  w = np.array([0.3, 0.1, 0.1, 0.2, 0.05, 0.05, 0.1, 0.1])
  g = np.array([0.1, 0.8, 0.4, 0.9, 0.2, 0.5, 0.7, 0.3])
  active = np.array([True, False, True, True, True, False, True, True])
  new, inc = rs.reweight(np.log(w), np.log(g), active)
  g_eff = np.where(active, g, 1.0)  # finished particles keep their weight (G = 1)
  np.testing.assert_allclose(inc, np.log((w * g_eff).sum()), rtol=1e-6)
  np.testing.assert_allclose(
    _normalize_jit(new)[0], w * g_eff / (w * g_eff).sum(), rtol=1e-5
  )
  # All potentials -inf: evidence increment -inf, weights uniform, nothing NaN.
  new, inc = _reweight_jit(np.log(w), np.full(N, -np.inf))
  assert inc == -np.inf and not np.isnan(new).any()
  np.testing.assert_allclose(_normalize_jit(new)[0], np.full(N, 1 / N), rtol=1e-6)
  # A dead particle (-inf) with +inf potential stays dead; live +inf takes the mass.
  prev = np.array([-np.inf] + [0.0] * 7)
  pot = np.array([np.inf, np.nan, np.inf, 0, 0, 0, 0, 0])
  new, inc = _reweight_jit(prev, pot)
  assert inc == np.inf and not np.isnan(new).any()
  np.testing.assert_allclose(_normalize_jit(new)[0], np.eye(N)[2])
  # Previous weights all -inf count as uniform.
  new, inc = _reweight_jit(np.full(N, -np.inf), np.log(g))
  np.testing.assert_allclose(inc, np.log(g.mean()), rtol=1e-6)


# ----------------------------------------------------------------------------------
# Resample-when
# ----------------------------------------------------------------------------------


def test_should_and_maybe_resample():
  flat = np.zeros(N)
  peaked = np.log(np.array([0.93] + [0.01] * 7))  # ESS ~ 1.16 < N / 2
  with_nan = np.array([np.nan] + [0.0] * 7)  # ESS = 7 >= N / 2
  should = jax.jit(jax.vmap(rs.should_resample))
  probs = np.stack(
    [np.full(N, 1 / N), np.exp(peaked), np.exp(peaked), np.full(N, 1 / N)]
  )
  np.testing.assert_array_equal(
    should(probs, np.array([0.5, 0.5, 0.0, 1.01])), [False, True, False, True]
  )  # 0: never, > 1: always
  fn = jax.jit(jax.vmap(lambda k, lw: rs.maybe_resample(k, lw, 0.5, "systematic")))
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  anc, logw_after, did = fn(keys, np.stack([flat, peaked, with_nan]))
  np.testing.assert_array_equal(did, [False, True, False])
  np.testing.assert_array_equal(anc[0], np.arange(N))
  np.testing.assert_array_equal(anc[2], np.arange(N))
  np.testing.assert_array_equal(logw_after[0], flat)
  np.testing.assert_array_equal(logw_after[1], np.zeros(N))
  np.testing.assert_array_equal(
    logw_after[2], np.where(np.isnan(with_nan), -np.inf, 0.0)
  )
  # Systematic with N w_0 = 7.44: particle 0 gets 7 or 8 copies.
  assert 7 <= int((anc[1] == 0).sum()) <= 8
  np.testing.assert_array_equal(
    anc[1], rs.systematic(keys[1], rs.normalize_log_weights(peaked)[0], N)
  )


# ----------------------------------------------------------------------------------
# Entropic annealing
# ----------------------------------------------------------------------------------


def test_entropic_temperature_hand_computed():
  p = jnp.array([0.7, 0.1, 0.1, 0.1])
  # sum p^2 = 0.52, ESS = 1/0.52, ess_ratio = 1 / (4 * 0.52) = 0.4808 < 0.5.
  # ESS mode at progress 0.2: T = (1 - 0.2) * 4 * 0.52 = 1.664.
  np.testing.assert_allclose(rs.entropic_temperature(p, 0.2, "ess"), 1.664, rtol=1e-5)
  # Entropy mode: H = -(0.7 ln 0.7 + 0.3 ln 0.1) = 0.940448, H_n = H / ln 4 = 0.678391,
  # beta = 0.678391 + 0.321609 * 0.2 = 0.742713, T = 1 / beta = 1.346417.
  np.testing.assert_allclose(
    rs.entropic_temperature(p, 0.2, "entropy"), 1.346417, rtol=1e-5
  )
  for mode in ("ess", "entropy"):
    assert rs.entropic_temperature(p, 0.5, mode) == 1.0  # progress not < 0.5
    assert rs.entropic_temperature(jnp.full(4, 0.25), 0.1, mode) == 1.0  # ratio 1
    # ess_ratio = 1 / (4 * 0.5) = 0.5 is not < 0.5.
    assert rs.entropic_temperature(jnp.array([0.5, 0.5, 0, 0]), 0.0, mode) == 1.0
  one_hot = jnp.array([1.0, 0.0, 0.0, 0.0])
  np.testing.assert_allclose(rs.entropic_temperature(one_hot, 0.25, "ess"), 3.0)
  assert rs.entropic_temperature(one_hot, 0.0, "entropy") == np.inf  # beta = 0
  assert rs.entropic_temperature(one_hot, 0.0, "entropy", max_temperature=10.0) == 10.0
  np.testing.assert_allclose(rs.entropic_temperature(one_hot, 0.25, "entropy"), 4.0)
  # Thresholds are flags, and progress may be a traced array.
  fn = jax.jit(
    lambda pr: rs.entropic_temperature(p, pr, "ess", ess_ratio_threshold=0.4)
  )
  assert fn(jnp.float32(0.2)) == 1.0


def test_tempered_probs():
  logw = np.array([0.0, 2.0, -1.0, -np.inf, 0.5, -3.0, 1.0, -np.inf])
  live = np.isfinite(logw)
  rows = np.stack([logw, logw, logw, logw, [np.inf, 0, np.nan, 1, 2, 3, 4, -np.inf]])
  temps = np.array([1.0, 2.5, 4.0, np.inf, np.inf])
  got = np.asarray(jax.jit(jax.vmap(rs.tempered_probs))(rows, temps))
  for b, t in enumerate(temps[:3]):
    np.testing.assert_allclose(
      got[b, live], scipy.special.softmax(logw[live] / t), rtol=1e-5
    )
    assert (got[b, ~live] == 0.0).all()
  np.testing.assert_allclose(got[3], live / live.sum(), rtol=1e-6)  # T = inf: uniform
  np.testing.assert_array_equal(got[4], np.eye(N)[0])  # +inf keeps all the mass


# ----------------------------------------------------------------------------------
# Particle Gibbs: conditional resampling
# ----------------------------------------------------------------------------------


def _conditional_draws(scheme, w, ref_index, ref_slot, seed):
  """[NUM_DRAWS, N]; w, ref_index, ref_slot: one problem (repeated) or per-row."""
  probs = _rows(w)
  refs = np.broadcast_to(np.asarray(ref_index, np.int32), (NUM_DRAWS,))
  slots = np.broadcast_to(np.asarray(ref_slot, np.int32), (NUM_DRAWS,))
  return np.asarray(_batched_conditional(scheme)(_keys(seed), probs, refs, slots))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(
  "widx, ref_index, ref_slot", [(0, 0, 0), (0, 6, 5), (1, 3, 7), (1, 6, 0)]
)
def test_conditional_resample_law(scheme, widx, ref_index, ref_slot):
  """Keeps the reference, and the count law is c_b P(c) / (N w_b) (exact, exchangeable)."""
  w = DYADIC_WEIGHTS[widx]
  assert w[ref_index] > 0
  anc = _conditional_draws(scheme, w, ref_index, ref_slot, seed=21 + ref_slot)
  assert anc.dtype == np.int32 and anc.shape == (NUM_DRAWS, N)
  assert (anc[:, ref_slot] == ref_index).all()
  law = {
    c: c[ref_index] * p / (N * w[ref_index]) for c, p in EXACT[scheme](w, N).items()
  }
  _assert_law(_offspring(anc, N), law)


def test_conditional_multinomial_others_iid():
  w = np.array([0.1, 0.0, 0.3, 0.25, 0.05, 0.0, 0.18, 0.12])  # need not be dyadic
  anc = _conditional_draws("multinomial", w, 1, 0, seed=9)
  assert (anc[:, 0] == 1).all()  # even a zero-weight reference is kept
  others = anc[:, 1:].ravel()
  obs = np.bincount(others, minlength=N)
  live = w > 0
  assert obs[~live].sum() == 0
  pvalue = scipy.stats.chisquare(obs[live], others.size * w[live]).pvalue
  assert pvalue > P_MIN


@pytest.mark.parametrize("scheme", SCHEMES)
def test_conditional_resample_vmap_traced_reference(scheme):
  rng = np.random.default_rng(5)
  probs_BxN = rng.dirichlet(np.ones(N), size=NUM_DRAWS).astype(np.float32)
  probs_BxN[:100, 2] = 0.0  # zero-weight reference (an impossible event) in some rows
  refs = rng.integers(0, N, size=NUM_DRAWS).astype(np.int32)
  refs[:100] = 2
  slots = rng.integers(0, N, size=NUM_DRAWS).astype(np.int32)
  anc = _conditional_draws(scheme, probs_BxN, refs, slots, seed=4)
  assert anc.shape == (NUM_DRAWS, N) and anc.min() >= 0 and anc.max() < N
  np.testing.assert_array_equal(anc[np.arange(NUM_DRAWS), slots], refs)
  # Apart from the reference slot, zero-weight particles are never drawn.
  others = anc[:100].copy()
  others[np.arange(100), slots[:100]] = -1
  assert not (others == 2).any()
