"""Resampling and weighting primitives for particle filtering.

Small, pure, static-shape jnp functions used by the particle filter, particle Gibbs and
entropic particle filter (see ALGORITHMS.md, "Particle filtering"). None of them is
jitted here: they are meant to be called inside the caller's jitted loop body; all of
them trace under `jax.jit` and batch under `jax.vmap` (one problem = one 1-D weight
vector of N particles; vmap over problems). Random functions take a `jax.random` key.

Conventions
-----------
* `probs_N`: normalised resampling probabilities (non-negative, finite, sum 1). The
  resamplers divide by the sum, so float drift in the normalisation is harmless, but
  negative, NaN or all-zero inputs give meaningless (though always in-range) indices.
  Raw scores belong in `normalize_log_weights` first, which handles degenerate inputs.
* `logw_N`: unnormalised log-weights. Degenerate values are handled, never NaN out:
    - NaN is treated as -inf (a particle whose score is undefined gets zero weight);
    - -inf entries get zero weight;
    - if every entry is -inf (or NaN) the weights are uniform and the log-normaliser
      increment is -inf (the evidence estimate correctly becomes zero);
    - if some entries are +inf they share the mass equally, the others get zero, and
      the log-normaliser increment is +inf.
* Shape suffixes: N particles of one problem, M = num_samples ancestors drawn.
* Ancestor indices are int32 `[num_samples]`; zero-probability particles are never
  chosen (the inverse CDF uses half-open intervals [cdf_{i-1}, cdf_i)).

Resampling schemes (all unbiased: E[offspring_i] = num_samples * p_i)
---------------------------------------------------------------------
Every scheme is one function with one signature (blackjax style),

  scheme(key, probs_N, num_samples) -> ancestors int32 [num_samples],

and `RESAMPLERS` is the one registry mapping config names to them (`get_scheme`
accepts a name or the function itself). Adding a scheme = writing one function
and, for particle Gibbs, its conditional version
`conditional(key, probs_N, ref_index, ref_slot) -> ancestors_N` registered in
`CONDITIONAL_RESAMPLERS` (keyed by the scheme function).
* multinomial: i.i.d. categorical draws, in draw order.
* stratified: one uniform per stratum [k/M, (k+1)/M); output sorted by particle.
* systematic: one shared uniform offset; offspring count of particle i is always
  floor(M p_i) or ceil(M p_i). Lowest variance in practice, sorted output.
* residual: floor(M p_i) deterministic copies (first D slots, sorted), the remaining
  R = M - D slots drawn multinomially from the residuals M p_i - floor(M p_i).
  The floors are computed in floating point (M * p_i), so a weight whose exact value
  makes M p_i an integer may round to the integer below.

Incremental weights and the log-normaliser
------------------------------------------
`reweight(logw_N, log_potential_N)` multiplies the current (normalised) weights by
the potentials G_i and returns log sum_i W_i G_i, the SMC estimate of the normalising
constant's increment; summing the increments over steps gives log Z_hat. After a
resample the weights are reset to uniform (log-weights 0). The reference particle
filter's weights softmax(logit(r) / T) are a heuristic, not an SMC weight; their
log-normaliser has no probabilistic meaning.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Union

import jax
import jax.numpy as jnp

Array = jax.Array
# (key, probs_N, num_samples) -> ancestors [num_samples] int32
Resampler = Callable[[Array, Array, int], Array]
# (key, probs_N, ref_index, ref_slot) -> ancestors_N int32 with [ref_slot] = ref_index
ConditionalResampler = Callable[[Array, Array, Array, Array], Array]
# (probs_N, progress) -> untruncated entropic temperature (scalar, may be inf)
EntropicMode = Callable[[Array, Array], Array]

# Default clipping of PRM scores r into [eps, 1 - eps]: logit stays within about +-13.8,
# and 1 - 1e-6 is still resolvable in float32 (its spacing near 1 is 6e-8).
DEFAULT_SCORE_EPS = 1e-6


# ----------------------------------------------------------------------------------
# Validation helpers (they run at trace time: shapes and Python scalars only)
# ----------------------------------------------------------------------------------


def _float_dtype(x: Array):
  return jnp.promote_types(x.dtype, jnp.float32)


def _as_1d(x, name: str) -> Array:
  x = jnp.asarray(x)
  if x.ndim != 1:
    raise ValueError(
      f"{name} must be 1-D [N] (vmap over batch axes), got shape {x.shape}"
    )
  if x.shape[0] == 0:
    raise ValueError(f"{name} must have at least one particle, got shape {x.shape}")
  return x.astype(_float_dtype(x))


def _check_num_samples(num_samples) -> int:
  if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral):
    raise ValueError(
      f"num_samples must be a static Python int, got {type(num_samples).__name__}"
    )
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  return int(num_samples)


def _is_concrete_number(x) -> bool:
  return isinstance(x, numbers.Number) and not isinstance(x, bool)


def _check_positive(x, name: str):
  """Raise for a Python number <= 0 or NaN; arrays / tracers pass (checked by caller)."""
  if _is_concrete_number(x) and not x > 0:
    raise ValueError(f"{name} must be > 0, got {x}")


def _check_index(x, n: int, name: str):
  if _is_concrete_number(x) and not (isinstance(x, numbers.Integral) and 0 <= x < n):
    raise ValueError(f"{name} must be an integer in [0, {n}), got {x}")


# ----------------------------------------------------------------------------------
# Log-weights: normalisation, ESS, entropy
# ----------------------------------------------------------------------------------


def log_normalize(logw_N: Array) -> tuple[Array, Array]:
  """Degenerate-safe log-softmax: returns (log_probs_N, logsumexp(logw)).

  NaN counts as -inf; all -inf -> uniform log-probs and logsumexp -inf; any +inf ->
  the +inf entries share the mass and logsumexp is +inf. Never returns NaN.
  """
  x = _as_1d(logw_N, "logw_N")
  n = x.shape[0]
  x = jnp.where(jnp.isnan(x), -jnp.inf, x)
  m = jnp.max(x)
  finite_m = jnp.isfinite(m)
  shifted = jnp.where(finite_m, x - jnp.where(finite_m, m, 0.0), 0.0)
  lse_shifted = jnp.log(jnp.sum(jnp.exp(shifted)))  # >= 0: the max entry gives exp(0)
  logp_regular = shifted - lse_shifted
  is_pos_inf = x == jnp.inf
  num_pos_inf = jnp.maximum(jnp.sum(is_pos_inf), 1).astype(x.dtype)
  logp_pos_inf = jnp.where(is_pos_inf, -jnp.log(num_pos_inf), -jnp.inf)
  logp_uniform = jnp.full_like(x, -math.log(n))
  logp = jnp.where(
    m == jnp.inf, logp_pos_inf, jnp.where(m == -jnp.inf, logp_uniform, logp_regular)
  )
  lse = jnp.where(finite_m, m + lse_shifted, m)
  return logp, lse


def normalize_log_weights(logw_N: Array) -> tuple[Array, Array]:
  """Log-weights -> (probs_N, log_normaliser_increment).

  The increment is log mean_i exp(logw_i) = logsumexp(logw) - log N: the evidence
  increment when `logw_N` are the log-potentials of equally weighted particles (as
  right after a resample). Degenerate inputs follow the module conventions (NaN as
  -inf; all -inf -> uniform probs and increment -inf; +inf entries share the mass and
  increment +inf). Never returns NaN.
  """
  logp, lse = log_normalize(logw_N)
  return jnp.exp(logp), lse - math.log(logp.shape[0])


def reweight(
  logw_N: Array, log_potential_N: Array, active_N: Array | None = None
) -> tuple[Array, Array]:
  """One SMC reweighting: (new_logw_N, log_normaliser_increment).

  new_logw = log W + log G where W = normalise(logw) and G the potential, so the
  increment log sum_i W_i G_i is the SMC evidence increment; sum the increments over
  steps for log Z_hat. `active_N` (bool) zeroes the log-potential of particles that did
  not move this step (e.g. finished particles kept in the pool). NaN potentials count as
  -inf; a zero-weight particle stays at zero weight even with a +inf potential.
  """
  logp, _ = log_normalize(logw_N)
  pot = _as_1d(log_potential_N, "log_potential_N")
  if pot.shape != logp.shape:
    raise ValueError(
      f"log_potential_N shape {pot.shape} does not match logw_N shape {logp.shape}"
    )
  pot = jnp.where(jnp.isnan(pot), -jnp.inf, pot)
  if active_N is not None:
    active_N = jnp.asarray(active_N)
    if active_N.shape != logp.shape:
      raise ValueError(
        f"active_N shape {active_N.shape} does not match logw_N shape {logp.shape}"
      )
    pot = jnp.where(active_N, pot, 0.0)
  new_logw = logp + pot
  new_logw = jnp.where(jnp.isnan(new_logw), -jnp.inf, new_logw)  # -inf + inf
  _, increment = log_normalize(new_logw)
  return new_logw, increment


def ess(probs_N: Array) -> Array:
  """Effective sample size 1 / sum p^2 (computed as (sum p)^2 / sum p^2, so scale-free).

  In [1, N] for a valid distribution; 0 for an all-zero vector.
  """
  p = _as_1d(probs_N, "probs_N")
  s2 = jnp.sum(p * p)
  return jnp.where(s2 > 0, jnp.sum(p) ** 2 / jnp.where(s2 > 0, s2, 1.0), 0.0)


def entropy_normalised(probs_N: Array) -> Array:
  """H(p) / ln N in [0, 1] (0 log 0 = 0; p is renormalised). Defined as 1 when N = 1."""
  p = _as_1d(probs_N, "probs_N")
  n = p.shape[0]
  if n == 1:
    return jnp.ones((), p.dtype)
  total = jnp.sum(p)
  p = p / jnp.where(total > 0, total, 1.0)
  plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
  return -jnp.sum(plogp) / math.log(n)


# ----------------------------------------------------------------------------------
# Resampling schemes
# ----------------------------------------------------------------------------------


def _normalised_cdf(p_N: Array) -> Array:
  cdf = jnp.cumsum(p_N)
  return cdf / cdf[-1]  # x / x == 1 exactly, so the last entry is exactly 1


def _inverse_cdf(cdf_N: Array, u_M: Array) -> Array:
  """Index i with cdf_{i-1} <= u < cdf_i (half-open: zero-width intervals never hit)."""
  below_one = jnp.nextafter(jnp.ones((), cdf_N.dtype), jnp.zeros((), cdf_N.dtype))
  u_M = jnp.minimum(u_M.astype(cdf_N.dtype), below_one)  # (k + U) / M may round to 1
  idx = jnp.searchsorted(cdf_N, u_M, side="right")
  return jnp.clip(idx, 0, cdf_N.shape[0] - 1).astype(jnp.int32)


def multinomial(key: Array, probs_N: Array, num_samples: int) -> Array:
  """num_samples i.i.d. draws from probs_N (ancestor indices, int32, draw order)."""
  p = _as_1d(probs_N, "probs_N")
  m = _check_num_samples(num_samples)
  u = jax.random.uniform(key, (m,), p.dtype)
  return _inverse_cdf(_normalised_cdf(p), u)


def stratified(key: Array, probs_N: Array, num_samples: int) -> Array:
  """Stratified resampling: u_k = (k + U_k) / M with independent U_k ~ U[0, 1)."""
  p = _as_1d(probs_N, "probs_N")
  m = _check_num_samples(num_samples)
  u = (jnp.arange(m, dtype=p.dtype) + jax.random.uniform(key, (m,), p.dtype)) / m
  return _inverse_cdf(_normalised_cdf(p), u)


def systematic(key: Array, probs_N: Array, num_samples: int) -> Array:
  """Systematic resampling: u_k = (k + U) / M with one shared U ~ U[0, 1)."""
  p = _as_1d(probs_N, "probs_N")
  m = _check_num_samples(num_samples)
  u = (jnp.arange(m, dtype=p.dtype) + jax.random.uniform(key, (), p.dtype)) / m
  return _inverse_cdf(_normalised_cdf(p), u)


def _residual_parts(p_N: Array, m: int):
  """Deterministic ancestors (valid in slots < D), D, and the residual distribution."""
  p = p_N / jnp.sum(p_N)
  scaled = m * p
  floors = jnp.floor(scaled)
  cum = jnp.cumsum(floors.astype(jnp.int32))
  num_det = jnp.minimum(cum[-1], m)  # guards a float-rounding overshoot of sum(floors)
  slots = jnp.arange(m, dtype=jnp.int32)
  det = jnp.clip(jnp.searchsorted(cum, slots, side="right"), 0, p.shape[0] - 1)
  res = jnp.maximum(scaled - floors, 0.0)
  res_total = jnp.sum(res)
  # With no residual mass R = 0 and the residual draws are never used.
  res_p = jnp.where(res_total > 0, res, p)
  return det.astype(jnp.int32), num_det, res_p, scaled, floors


def residual(key: Array, probs_N: Array, num_samples: int) -> Array:
  """Residual resampling: floor(M p_i) copies of i (first slots), rest multinomial."""
  p = _as_1d(probs_N, "probs_N")
  m = _check_num_samples(num_samples)
  det, num_det, res_p, _, _ = _residual_parts(p, m)
  draws = multinomial(key, res_p, m)  # only slots >= D use them (i.i.d., so any R do)
  return jnp.where(jnp.arange(m) < num_det, det, draws)


RESAMPLERS: dict[str, Resampler] = {
  "multinomial": multinomial,
  "systematic": systematic,
  "stratified": stratified,
  "residual": residual,
}
SCHEMES = tuple(RESAMPLERS)  # the registered names


def get_scheme(scheme: Union[str, Resampler]) -> Resampler:
  """The resampling function of a registered name, or `scheme` itself if callable.

  Raises:
    ValueError: an unknown name (naming the registered ones) or a non-callable.
  """
  if callable(scheme):
    return scheme
  if isinstance(scheme, str) and scheme in RESAMPLERS:
    return RESAMPLERS[scheme]
  raise ValueError(
    f"unknown resampling scheme {scheme!r}; expected one of {SCHEMES} "
    f"or a function (key, probs_N, num_samples) -> ancestors"
  )


def resample(
  key: Array,
  probs_N: Array,
  num_samples: int,
  scheme: Union[str, Resampler] = "multinomial",
) -> Array:
  """Ancestor indices [num_samples] from probs_N with `scheme` (a registered name,
  static, or a Resampler function)."""
  return get_scheme(scheme)(key, probs_N, num_samples)


def resample_log_weights(
  key: Array,
  logw_N: Array,
  num_samples: int,
  scheme: Union[str, Resampler] = "multinomial",
) -> Array:
  """Resample from unnormalised log-weights (degenerate inputs per module conventions)."""
  probs, _ = normalize_log_weights(logw_N)
  return resample(key, probs, num_samples, scheme)


# ----------------------------------------------------------------------------------
# Resample-when (adaptive resampling)
# ----------------------------------------------------------------------------------


def should_resample(probs_N: Array, threshold) -> Array:
  """True iff ESS < threshold * N. threshold 0 -> never, any value > 1 -> always."""
  p = _as_1d(probs_N, "probs_N")
  return ess(p) < threshold * p.shape[0]


def maybe_resample(
  key: Array, logw_N: Array, threshold, scheme: Union[str, Resampler] = "multinomial"
) -> tuple[Array, Array, Array]:
  """Adaptive resampling: (ancestors_N, logw_after_N, resampled).

  If ESS < threshold * N: ancestors from `scheme` and log-weights reset to 0 (uniform);
  otherwise identity ancestors and the log-weights unchanged (NaN mapped to -inf).
  Both branches are computed and selected with jnp.where (cheap next to a model step,
  and what lax.cond becomes under vmap anyway).
  """
  x = _as_1d(logw_N, "logw_N")
  n = x.shape[0]
  probs, _ = normalize_log_weights(x)
  do = should_resample(probs, threshold)
  ancestors = jnp.where(
    do, resample(key, probs, n, scheme), jnp.arange(n, dtype=jnp.int32)
  )
  clean = jnp.where(jnp.isnan(x), -jnp.inf, x)
  return ancestors, jnp.where(do, jnp.zeros_like(clean), clean), do


# ----------------------------------------------------------------------------------
# Weights from PRM scores
# ----------------------------------------------------------------------------------


def _check_eps(eps, upper: float):
  if _is_concrete_number(eps) and not 0 <= eps < upper:
    raise ValueError(f"eps must be in [0, {upper}), got {eps}")


def prm_logit_log_weights(
  scores_N: Array, temperature=1.0, eps=DEFAULT_SCORE_EPS
) -> Array:
  """prm_logit log-weights logit(r) / T (the reference PF implementation of Puri
  et al. 2025), r = a PRM score clipped to [eps, 1 - eps] (so r = 0 or 1 stays
  finite). NaN scores stay NaN -> zero weight. `temperature` may be traced.

  Raises:
    ValueError: a concrete temperature <= 0 or eps outside [0, 0.5).
  """
  _check_positive(temperature, "temperature")
  _check_eps(eps, 0.5)
  r = _as_1d(scores_N, "scores_N")
  r = jnp.clip(r, eps, 1.0 - eps)
  return (jnp.log(r) - jnp.log1p(-r)) / temperature


def prm_logit_probs(scores_N: Array, temperature=1.0, eps=DEFAULT_SCORE_EPS) -> Array:
  """The prm_logit resampling weights w = softmax(logit(r) / T), [N]."""
  probs, _ = normalize_log_weights(prm_logit_log_weights(scores_N, temperature, eps))
  return probs


prm_reference_probs = prm_logit_probs  # old name (the reference implementation's)


def prm_log_potential(scores_N: Array, temperature=1.0, eps=DEFAULT_SCORE_EPS) -> Array:
  """Proper-SMC log-potential log(r) / T of the latest step's score r in [eps, 1].

  Accumulate with `reweight`. eps = 0 lets a zero score kill a particle (-inf)."""
  _check_positive(temperature, "temperature")
  _check_eps(eps, 1.0)
  r = _as_1d(scores_N, "scores_N")
  return jnp.log(jnp.clip(r, eps, 1.0)) / temperature


# ----------------------------------------------------------------------------------
# Entropic annealing
# ----------------------------------------------------------------------------------


def ess_mode_temperature(probs_N: Array, progress) -> Array:
  """Entropic mode "ess": T = (1 / ess_ratio) * (1 - progress), ess_ratio = ESS / N
  (inf when ESS = 0). Untruncated; `entropic_temperature` gates and floors it."""
  p = _as_1d(probs_N, "probs_N")
  ratio = ess(p) / p.shape[0]
  return jnp.where(
    ratio > 0, (1.0 - progress) / jnp.where(ratio > 0, ratio, 1.0), jnp.inf
  )


def entropy_mode_temperature(probs_N: Array, progress) -> Array:
  """Entropic mode "entropy": beta = H_n + (1 - H_n) * progress with
  H_n = H(p) / ln N, T = 1 / beta (inf when beta = 0). Untruncated."""
  p = _as_1d(probs_N, "probs_N")
  h = entropy_normalised(p)
  beta = h + (1.0 - h) * progress
  return jnp.where(beta > 0, 1.0 / jnp.where(beta > 0, beta, 1.0), jnp.inf)


ENTROPIC: dict[str, EntropicMode] = {
  "ess": ess_mode_temperature,
  "entropy": entropy_mode_temperature,
}
ENTROPIC_MODES = tuple(ENTROPIC)  # the registered names


def get_entropic_mode(mode: Union[str, EntropicMode]) -> EntropicMode:
  """The temperature function of a registered entropic mode, or `mode` if callable.

  Raises:
    ValueError: an unknown mode name.
  """
  if callable(mode):
    return mode
  if isinstance(mode, str) and mode in ENTROPIC:
    return ENTROPIC[mode]
  raise ValueError(
    f"unknown entropic mode {mode!r}; expected one of {ENTROPIC_MODES} "
    f"or a function (probs_N, progress) -> temperature"
  )


def entropic_temperature(
  probs_N: Array,
  progress,
  mode: Union[str, EntropicMode] = "ess",
  ess_ratio_threshold=0.5,
  progress_threshold=0.5,
  max_temperature=jnp.inf,
) -> Array:
  """Entropic-PF resampling temperature T >= 1 (scalar array).

  ess_ratio = ESS / N, progress = t / max_steps. Only when ess_ratio <
  ess_ratio_threshold and progress < progress_threshold (0.5 and 0.5 in the paper):
    mode "ess":     T = max(1, (1 / ess_ratio) * (1 - progress))
    mode "entropy": beta = H_n + (1 - H_n) * progress, H_n = H(p) / ln N,
                    T = max(1, 1 / beta)
  else T = 1. beta = 0 (one-hot p at progress 0) gives T = inf, i.e. uniform
  resampling over the live particles; `max_temperature` caps T (our flag, not in the
  paper). Resample from `tempered_probs(logw, T)`; final selection stays untempered.
  `mode` is a name in `ENTROPIC` or an EntropicMode function.

  Raises:
    ValueError: an unknown mode name.
  """
  raw_fn = get_entropic_mode(mode)
  p = _as_1d(probs_N, "probs_N")
  progress = jnp.asarray(progress, p.dtype)
  ratio = ess(p) / p.shape[0]
  raw = raw_fn(p, progress)
  active = (ratio < ess_ratio_threshold) & (progress < progress_threshold)
  temperature = jnp.where(active, jnp.maximum(1.0, raw), 1.0)
  return jnp.minimum(temperature, max_temperature).astype(p.dtype)


def tempered_probs(logw_N: Array, temperature) -> Array:
  """softmax(logw / T), degenerate-safe; T = inf -> uniform over entries > -inf
  (the limit; +inf entries, if any, still take all the mass). T must be > 0."""
  _check_positive(temperature, "temperature")
  x = _as_1d(logw_N, "logw_N")
  t = jnp.asarray(temperature, x.dtype)
  scaled = jnp.where(
    jnp.isinf(t),
    jnp.where(jnp.isfinite(x), 0.0, x),
    x / jnp.where(jnp.isinf(t), 1.0, t),
  )
  probs, _ = normalize_log_weights(scaled)
  return probs


# ----------------------------------------------------------------------------------
# Particle Gibbs: conditional resampling
# ----------------------------------------------------------------------------------


def _swap(a_N: Array, i, j) -> Array:
  ai, aj = a_N[i], a_N[j]
  return a_N.at[i].set(aj).at[j].set(ai)


def _conditional_strat_sys(key, p, ref_index, ref_slot, systematic_: bool):
  n = p.shape[0]
  cdf = _normalised_cdf(p)
  lo_b = jnp.where(ref_index > 0, cdf[jnp.maximum(ref_index - 1, 0)], 0.0)
  hi_b = cdf[ref_index]
  k_lo = jnp.arange(n, dtype=p.dtype) / n
  k_hi = (jnp.arange(n, dtype=p.dtype) + 1) / n
  overlap = jnp.maximum(jnp.minimum(hi_b, k_hi) - jnp.maximum(lo_b, k_lo), 0.0)
  key_k, key_u, key_rest = jax.random.split(key, 3)
  # The slot that carries the reference, chosen with P(k) ∝ P(A^k = ref_index).
  has_mass = jnp.sum(overlap) > 0
  k_draw = _inverse_cdf(
    _normalised_cdf(jnp.where(has_mass, overlap, 1.0)),
    jax.random.uniform(key_k, (1,), p.dtype),
  )[0]
  k = jnp.where(has_mass, k_draw, ref_slot)
  lo = jnp.maximum(lo_b, k_lo[k])
  hi = jnp.maximum(jnp.minimum(hi_b, k_hi[k]), lo)
  u_k = lo + (hi - lo) * jax.random.uniform(key_u, (), p.dtype)
  slots = jnp.arange(n, dtype=p.dtype)
  if systematic_:
    offset = jnp.clip(n * u_k - k, 0.0, 1.0)
    u = (slots + offset) / n
  else:
    u = (slots + jax.random.uniform(key_rest, (n,), p.dtype)) / n
    u = u.at[k].set(u_k)
  ancestors = _inverse_cdf(cdf, u).at[k].set(ref_index)  # exact despite float edges
  return ancestors, k


def _conditional_residual(key, p, ref_index):
  n = p.shape[0]
  det, num_det, res_p, scaled, floors = _residual_parts(p, n)
  key_c, key_d = jax.random.split(key)
  # The reference copy is deterministic with prob floor(N w_b) / (N w_b), else residual.
  prob_det = jnp.where(
    scaled[ref_index] > 0,
    floors[ref_index] / jnp.where(scaled[ref_index] > 0, scaled[ref_index], 1.0),
    1.0,
  )
  use_det = (jax.random.uniform(key_c, (), p.dtype) < prob_det) | (num_det >= n)
  slots = jnp.arange(n)
  draws = multinomial(key_d, res_p, n)
  ancestors = jnp.where(slots < num_det, det, draws)
  ancestors = jnp.where(~use_det & (slots == num_det), ref_index, ancestors)
  first_det_copy = jnp.argmax((slots < num_det) & (det == ref_index))
  k = jnp.where(use_det, first_det_copy, jnp.minimum(num_det, n - 1))
  return ancestors.at[k].set(ref_index), k


def conditional_multinomial(key: Array, probs_N: Array, ref_index, ref_slot) -> Array:
  """Conditional multinomial: the other N - 1 ancestors are i.i.d. from probs
  (textbook CSMC); ancestors[ref_slot] = ref_index."""
  return multinomial(key, probs_N, probs_N.shape[0]).at[ref_slot].set(ref_index)


def conditional_stratified(key: Array, probs_N: Array, ref_index, ref_slot) -> Array:
  """Conditional stratified resampling (see `conditional_resample`)."""
  ancestors, k = _conditional_strat_sys(key, probs_N, ref_index, ref_slot, False)
  return _swap(ancestors, k, ref_slot)


def conditional_systematic(key: Array, probs_N: Array, ref_index, ref_slot) -> Array:
  """Conditional systematic resampling (see `conditional_resample`)."""
  ancestors, k = _conditional_strat_sys(key, probs_N, ref_index, ref_slot, True)
  return _swap(ancestors, k, ref_slot)


def conditional_residual(key: Array, probs_N: Array, ref_index, ref_slot) -> Array:
  """Conditional residual resampling (see `conditional_resample`)."""
  ancestors, k = _conditional_residual(key, probs_N, ref_index)
  return _swap(ancestors, k, ref_slot)


CONDITIONAL_RESAMPLERS: dict[Resampler, ConditionalResampler] = {
  multinomial: conditional_multinomial,
  stratified: conditional_stratified,
  systematic: conditional_systematic,
  residual: conditional_residual,
}


def get_conditional(scheme: Union[str, Resampler]) -> ConditionalResampler:
  """The conditional (particle-Gibbs) version of a scheme.

  Raises:
    ValueError: an unknown scheme, or one without a registered conditional version.
  """
  fn = get_scheme(scheme)
  if fn not in CONDITIONAL_RESAMPLERS:
    raise ValueError(
      f"resampling scheme {scheme!r} has no conditional version for "
      f"particle Gibbs; register one in CONDITIONAL_RESAMPLERS"
    )
  return CONDITIONAL_RESAMPLERS[fn]


def conditional_resample(
  key: Array,
  probs_N: Array,
  ref_index,
  scheme: Union[str, Resampler] = "multinomial",
  ref_slot=0,
) -> Array:
  """Conditional-SMC resampling for particle Gibbs: N ancestors with
  ancestors[ref_slot] == ref_index, the others resampled given that constraint.

  `ref_index` is the slot (in the current population) of the reference trajectory's
  ancestor, usually `ref_slot` itself since the reference is kept in place. Each scheme
  is conditioned exactly, for its exchangeable (slot-permuted) version: the slot k that
  carries the reference is drawn with P(k) ∝ P(A^k = ref_index), the scheme's
  randomness is drawn conditionally on A^k = ref_index, and slots k and ref_slot are
  swapped. Consequently the offspring-count vector c has law P(c | ref) = c_ref P(c) /
  (N w_ref), and drawing ref ~ w first recovers the unconditional scheme.
    multinomial: the other N - 1 ancestors are i.i.d. from probs (textbook CSMC).
    stratified / systematic: k ∝ |[cdf_{b-1}, cdf_b) ∩ [k/N, (k+1)/N)|, u_k uniform on
      that overlap (systematic: the shared offset follows from u_k).
    residual: the reference is one of the floor(N w_b) deterministic copies with prob
      floor(N w_b) / (N w_b), otherwise it is one of the residual draws.
  Slot labels other than ref_slot are not uniformly permuted (they need not be:
  the particle filter treats non-reference slots symmetrically). If w_ref = 0 (an
  impossible conditioning event) the slot is simply overwritten.

  Raises:
    ValueError: an unknown scheme or one without a conditional version
      (`get_conditional`), or a concrete ref_index / ref_slot outside [0, N).
  """
  p = _as_1d(probs_N, "probs_N")
  n = p.shape[0]
  conditional = get_conditional(scheme)
  _check_index(ref_index, n, "ref_index")
  _check_index(ref_slot, n, "ref_slot")
  ref_index = jnp.asarray(ref_index, jnp.int32)
  ref_slot = jnp.asarray(ref_slot, jnp.int32)
  return conditional(key, p / jnp.sum(p), ref_index, ref_slot)
