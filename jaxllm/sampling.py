"""Token sampling: temperature, top-k, top-p, min-p, greedy.

`Sampling` is a pytree: temperature / top_p / min_p are array leaves (changing
their values never recompiles); top_k is static (lax.top_k needs a static k)
and so are the flags saying which filters are active. Filters apply in the
order transformers uses: temperature, top-k, top-p, min-p.

Set-size filters keep exactly the set they name, even when probabilities tie at
the cutoff: top-k keeps k tokens, top-p the smallest prefix of the tokens sorted
by decreasing probability whose mass reaches top_p (as transformers'
TopPLogitsWarper). Ties in that order go to the lowest token index, the order of
`jnp.argmax` and `lax.top_k`, so top_k=1 and a tiny top_p both equal greedy.
(transformers' TopKLogitsWarper keeps every token tied with the k-th instead;
the two agree whenever the k-th and (k+1)-th logits differ.) min-p is a
threshold filter (keep p >= min_p * p_max), so every token at the threshold is
kept.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import as_int, as_real

NEG_INF = -jnp.inf
_F32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32
_F32_MAX = float(np.finfo(np.float32).max)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Sampling:
  """Sampling settings; build it with `make_sampling`, which validates them."""

  temperature: Any  # float32 scalar >= 0, finite; 0 means greedy
  top_p: Any  # float32 scalar in (0, 1]
  min_p: Any  # float32 scalar in [0, 1)
  top_k: int = dataclasses.field(default=0, metadata=dict(static=True))  # 0: off
  use_top_p: bool = dataclasses.field(default=False, metadata=dict(static=True))
  use_min_p: bool = dataclasses.field(default=False, metadata=dict(static=True))


def make_sampling(
  temperature: float = 1.0,
  top_k: Optional[int] = None,
  top_p: Optional[float] = None,
  min_p: Optional[float] = None,
  *,
  vocab_size: Optional[int] = None,
) -> Sampling:
  """Validated sampling settings.

  Args:
    temperature: 0 or in float32's normal range [1.2e-38, 3.4e38]. 0 means greedy
      (argmax, lowest index on ties; the filters are then irrelevant). A tiny
      positive temperature behaves as its limit (uniform over the tokens tied at the
      maximum), a huge one as uniform over the tokens the filters keep.
    top_k: None (off) or an int >= 1. k >= the vocabulary keeps every token. Checked
      against `vocab_size` when that is given.
    top_p: None (off) or in (0, 1]; 1 is off. A tiny top_p keeps only the argmax.
    min_p: None (off) or in [0, 1).
    vocab_size: optional vocabulary size, to reject top_k > vocab_size up front.

  Raises:
    ValueError: naming the argument, for a value of the wrong type (a bool or a
      string is not a number), NaN or inf, or out of range.
  """
  temperature = as_real("temperature", temperature)
  if not temperature >= 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
  if temperature > 0 and not _F32_TINY <= temperature <= _F32_MAX:
    # Stored as float32: below `tiny` it is subnormal (flushed to 0 by XLA, i.e.
    # silently greedy), above `max` it overflows to inf (-inf / inf = NaN).
    raise ValueError(
      f"temperature must be 0 (greedy) or in [{_F32_TINY:.8g}, "
      f"{_F32_MAX:.8g}] (float32 normal range), got {temperature}"
    )
  if vocab_size is not None:
    vocab_size = as_int("vocab_size", vocab_size)
    if vocab_size < 1:
      raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
  if top_k is not None:
    top_k = as_int("top_k", top_k)
    if top_k < 1:
      raise ValueError(f"top_k must be a positive int or None, got {top_k}")
    if vocab_size is not None and top_k > vocab_size:
      raise ValueError(f"top_k={top_k} exceeds vocab_size={vocab_size}")
  if top_p is not None:
    top_p = as_real("top_p", top_p)
    if not 0 < top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  if min_p is not None:
    min_p = as_real("min_p", min_p)
    if not 0 <= min_p < 1:
      raise ValueError(f"min_p must be in [0, 1), got {min_p}")
  return Sampling(
    temperature=jnp.float32(temperature),
    top_p=jnp.float32(1.0 if top_p is None else top_p),
    min_p=jnp.float32(0.0 if min_p is None else min_p),
    top_k=top_k or 0,
    use_top_p=top_p is not None and top_p < 1,
    use_min_p=bool(min_p),
  )


def _keep_first(logits_BxV, cutoff_Bx1, n_keep_Bx1):
  """Mask of the first n_keep tokens in decreasing-logit order, ties broken by the
  lowest index, given the n_keep-th largest logit `cutoff`."""
  above = logits_BxV > cutoff_Bx1
  at = logits_BxV == cutoff_Bx1
  room = n_keep_Bx1 - above.sum(-1, keepdims=True)
  return above | (at & (jnp.cumsum(at, axis=-1) <= room))


def filter_logits(logits_BxV, s: Sampling):
  """Log-weights of the sampling distribution: temperature-scaled logits, shifted
  so each row's maximum is 0, with excluded tokens set to -inf (float32, [..., V]).

  Temperature 0 gives the greedy distribution: 0 at the argmax (lowest index on
  ties), -inf elsewhere. See the module docstring for the filters and ties.
  """
  logits = logits_BxV.astype(jnp.float32)
  V = logits.shape[-1]
  # Shift before dividing, so a tiny temperature sends the gaps to -inf instead of
  # overflowing the maximum to +inf (inf - inf = NaN in the softmax).
  top = logits.max(-1, keepdims=True)
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  t = jnp.where(s.temperature > 0, s.temperature, 1.0)
  scaled = (logits - top) / t
  greedy = jnp.arange(V) == jnp.argmax(logits, axis=-1, keepdims=True)
  logits = jnp.where(s.temperature > 0, scaled, jnp.where(greedy, 0.0, NEG_INF))
  if s.top_k and s.top_k < V:
    kth = jax.lax.top_k(logits, s.top_k)[0][..., -1:]
    keep = _keep_first(logits, kth, jnp.full(kth.shape, s.top_k))
    logits = jnp.where(keep, logits, NEG_INF)
  if s.use_top_p:
    # Keep the smallest prefix (by decreasing probability) whose mass reaches
    # top_p: a token is kept iff the mass strictly before it is < top_p.
    sorted_desc = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    n_keep = jnp.maximum((mass_before < s.top_p).sum(-1, keepdims=True), 1)
    cutoff = jnp.take_along_axis(sorted_desc, n_keep - 1, axis=-1)
    logits = jnp.where(_keep_first(logits, cutoff, n_keep), logits, NEG_INF)
  if s.use_min_p:
    probs = jax.nn.softmax(logits, axis=-1)
    pmax = probs.max(-1, keepdims=True)
    logits = jnp.where(probs >= s.min_p * pmax, logits, NEG_INF)
  return logits


def inverse_cdf(u, w_xN):
  """Inverse-CDF draw: index i with probability w_i / sum(w), from uniforms u.

  The one inverse-CDF sampler of the project (token sampling here, draft and
  residual draws in `algorithms.spec_trees`).

  Args:
    u: uniforms in (0, 1], shape w_xN.shape[:-1] (one per row).
    w_xN: non-negative weights (unnormalised), positive sum per row.

  Returns:
    int32 indices [...]: the number of cumulative sums < u * total. A
    zero-weight entry is never returned (its cumulative sum equals its
    predecessor's, which already reached u * total); the clamp to the last
    positive entry only guards float rounding.
  """
  N = w_xN.shape[-1]
  cdf = jnp.cumsum(w_xN, axis=-1)
  idx = jnp.sum(cdf < u[..., None] * cdf[..., -1:], axis=-1)
  last_pos = N - 1 - jnp.argmax((w_xN > 0)[..., ::-1], axis=-1)
  return jnp.minimum(idx, last_pos).astype(jnp.int32)


def _inverse_cdf(key, w_BxN):
  """`inverse_cdf` with u = 1 - U[0, 1) drawn from `key` (u in (0, 1])."""
  return inverse_cdf(1.0 - jax.random.uniform(key, w_BxN.shape[:-1]), w_BxN)


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
  lg = jnp.pad(
    lg, [(0, 0)] * len(lead) + [(0, nb * block - V)], constant_values=-jnp.inf
  )
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
  lg = logits_BxV.astype(jnp.float32) if s is None else filter_logits(logits_BxV, s)
  return jax.nn.log_softmax(lg, axis=-1)
