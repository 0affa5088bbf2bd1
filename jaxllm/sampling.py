"""Token sampling: temperature, top-k, top-p, min-p, greedy.

`Sampling` is a pytree: temperature / top_p / min_p are array leaves (changing
their values never recompiles); top_k is static (lax.top_k needs a static k)
and so are the flags saying which filters are active. Filters apply in the
order transformers uses: temperature, top-k, top-p, min-p.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Sampling:
  temperature: Any  # scalar; 0 means greedy
  top_p: Any  # scalar in (0, 1]
  min_p: Any  # scalar in [0, 1)
  top_k: int = dataclasses.field(default=0, metadata=dict(static=True))
  use_top_p: bool = dataclasses.field(default=False, metadata=dict(static=True))
  use_min_p: bool = dataclasses.field(default=False, metadata=dict(static=True))


def make_sampling(temperature: float = 1.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None,
                  min_p: Optional[float] = None) -> Sampling:
  """Validated sampling settings (ValueError names the bad field)."""
  if not temperature >= 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
    raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
  if top_p is not None and not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  if min_p is not None and not 0 <= min_p < 1:
    raise ValueError(f"min_p must be in [0, 1), got {min_p}")
  return Sampling(temperature=jnp.float32(temperature),
                  top_p=jnp.float32(1.0 if top_p is None else top_p),
                  min_p=jnp.float32(0.0 if min_p is None else min_p),
                  top_k=top_k or 0,
                  use_top_p=top_p is not None and top_p < 1,
                  use_min_p=bool(min_p))


def filter_logits(logits_BxV, s: Sampling):
  """Temperature-scaled logits with excluded tokens set to -inf (float32)."""
  logits = logits_BxV.astype(jnp.float32)
  t = jnp.where(s.temperature > 0, s.temperature, 1.0)
  logits = logits / t
  V = logits.shape[-1]
  if s.top_k and s.top_k < V:
    kth = jax.lax.top_k(logits, s.top_k)[0][..., -1:]
    logits = jnp.where(logits >= kth, logits, NEG_INF)
  if s.use_top_p:
    # Keep the smallest set of most likely tokens whose mass reaches top_p
    # (the token that crosses the threshold is kept).
    sorted_desc = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < s.top_p
    n_keep = jnp.maximum(keep_sorted.sum(-1, keepdims=True), 1)
    cutoff = jnp.take_along_axis(sorted_desc, n_keep - 1, axis=-1)
    logits = jnp.where(logits >= cutoff, logits, NEG_INF)
  if s.use_min_p:
    probs = jax.nn.softmax(logits, axis=-1)
    pmax = probs.max(-1, keepdims=True)
    logits = jnp.where(probs >= s.min_p * pmax, logits, NEG_INF)
  return logits


def _inverse_cdf(key, w_BxN):
  """Index drawn with probability proportional to w (w >= 0, positive sum).

  u is drawn in (0, 1], so an index with zero weight is never returned."""
  cdf = jnp.cumsum(w_BxN, axis=-1)
  u = (1.0 - jax.random.uniform(key, w_BxN.shape[:-1] + (1,))) * cdf[..., -1:]
  idx = jnp.sum(cdf < u, axis=-1)
  return jnp.minimum(idx, w_BxN.shape[-1] - 1).astype(jnp.int32)


def sample_from_logits(key, logits_BxV, block: int = 256):
  """Categorical draw by two-level CDF inversion (block, then token).

  Needs 2 uniforms per row instead of the B*V Gumbel variates of
  jax.random.categorical, whose generation dominates a CPU decode step at
  large V. Two levels keep float32 cumulative sums short (<= V/block and
  block terms), so small probabilities are not swamped by rounding.
  """
  *lead, V = logits_BxV.shape
  nb = -(-V // block)
  lg = logits_BxV.astype(jnp.float32)
  lg = jnp.pad(lg, [(0, 0)] * len(lead) + [(0, nb * block - V)],
               constant_values=-jnp.inf)
  w = jnp.exp(lg - lg.max(-1, keepdims=True)).reshape(*lead, nb, block)
  k1, k2 = jax.random.split(key)
  blk = _inverse_cdf(k1, w.sum(-1))
  inner = jnp.take_along_axis(w, blk[..., None, None], axis=-2)[..., 0, :]
  return blk * block + _inverse_cdf(k2, inner)


def sample(key, logits_BxV, s: Sampling):
  """Draw one token per row; temperature 0 gives argmax of the raw logits."""
  greedy = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  drawn = sample_from_logits(key, filter_logits(logits_BxV, s))
  return jnp.where(s.temperature > 0, drawn, greedy)


def log_probs(logits_BxV, s: Optional[Sampling] = None):
  """Log-probabilities of the model (s None) or of the sampling distribution."""
  lg = logits_BxV.astype(jnp.float32) if s is None else filter_logits(
      logits_BxV, s)
  return jax.nn.log_softmax(lg, axis=-1)
