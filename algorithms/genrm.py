"""Generative-verifier (GenRM) selection: budgets and unbiased accuracy estimators.

The method ("When to solve, when to verify"): sample S solutions, sample V
verification chains per solution from a generative verifier, score each solution
by the fraction of its V verdicts that say Yes, submit the highest-scoring
solution. Its cost in solution-units is C(S, V) = S * (1 + lambda * V), lambda =
(mean verification tokens) / (mean solution tokens). Self-consistency is V = 0.

Every estimator here reads ONE pool per problem: N solutions, M verdicts each
(yes_PxN = number of Yes among the M), and returns the expected accuracy of the
method that saw a uniformly random S-subset of the N solutions and, for each of
them independently, a uniformly random V-subset of its M verdicts.

- `genrm_accuracy`: exact, ties broken uniformly at random. The Yes count K_n of
  a random V-subset is hypergeometric(M, yes_n, V), independent across
  solutions. A uniform tie-break is the same as giving every solution an iid
  uniform priority U and picking the lexicographic maximum of (K, U). Given that
  n is in the subset with (K_n, U_n) = (k, u), each other member j is below it
  with probability q_j(k, u) = P(K_j < k) + P(K_j = k) * u, independently, so
  P(n picked) = sum_k P(K_n = k) * int_0^1 e_{S-1}(q_{-n}(k, u)) du / C(N, S),
  e_t the elementary symmetric polynomial over the other N-1 solutions. The
  integrand is a polynomial of degree S-1 in u, integrated exactly by
  Gauss-Legendre with ceil(N/2) nodes. All terms are non-negative (stable).
- `genrm_accuracy_mc`: Monte Carlo over random subsets for either tie-break,
  'random' or 'majority' (among the tied top-scored solutions, the answer with
  the most tied members wins; remaining ties uniform; its expectation is used).
numpy, float64.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
from scipy import stats

TIE_BREAKS = ("random", "majority")


def budget(s, v, lam: float) -> np.ndarray:
  """C(S, V) = S * (1 + lam * V), in units of one solution's tokens."""
  s, v = np.asarray(s, np.float64), np.asarray(v, np.float64)
  if lam < 0 or not np.isfinite(lam):
    raise ValueError(f"lambda must be a finite number >= 0, got {lam}")
  if (s < 1).any() or (v < 0).any():
    raise ValueError("need S >= 1 and V >= 0")
  return s * (1.0 + lam * v)


def token_ratio(verification_tokens, solution_tokens) -> float:
  """lambda = mean verification tokens / mean solution tokens (generated)."""
  vt = np.asarray(verification_tokens, np.float64)
  st = np.asarray(solution_tokens, np.float64)
  if vt.size == 0 or st.size == 0 or st.mean() <= 0:
    raise ValueError("need non-empty token counts with a positive solution mean")
  return float(vt.mean() / st.mean())


def _check_pool(yes_PxN, num_verdicts: int, correct_PxN):
  yes = np.asarray(yes_PxN)
  correct = np.asarray(correct_PxN)
  if yes.ndim != 2 or yes.shape[1] == 0:
    raise ValueError(f"yes_PxN must be 2-D (problems x solutions), got {yes.shape}")
  if correct.shape != yes.shape:
    raise ValueError(f"correct_PxN shape {correct.shape} != yes_PxN {yes.shape}")
  if not np.isin(correct, (0, 1)).all():
    raise ValueError("correct_PxN must be boolean (0/1)")
  if not isinstance(num_verdicts, (int, np.integer)) or num_verdicts < 1:
    raise ValueError(f"num_verdicts must be a positive int, got {num_verdicts!r}")
  if (
    not np.issubdtype(yes.dtype, np.integer)
    or yes.min() < 0
    or yes.max() > num_verdicts
  ):
    raise ValueError(f"yes_PxN must be integer counts in [0, {num_verdicts}]")
  return yes.astype(np.int64), correct.astype(np.float64)


def _check_sv(ss, v: int, n: int, m: int) -> np.ndarray:
  ss = np.atleast_1d(np.asarray(ss))
  if ss.ndim != 1 or ss.size == 0 or not np.issubdtype(ss.dtype, np.integer):
    raise ValueError(f"S values must be a non-empty 1-D list of ints, got {ss!r}")
  if ss.min() < 1 or ss.max() > n:
    raise ValueError(f"S values must be in [1, {n}] (solutions in the pool), got {ss}")
  if not isinstance(v, (int, np.integer)) or not 1 <= v <= m:
    raise ValueError(f"V must be an int in [1, {m}] (verdicts per solution), got {v!r}")
  return ss.astype(np.int64)


def verdict_count_pmf(yes_PxN, num_verdicts: int, v: int) -> np.ndarray:
  """P(K = k), k = 0..V, for the Yes count K of a uniform V-subset of M verdicts
  with yes_n Yes: hypergeometric. Shape (P, N, V+1)."""
  k = np.arange(v + 1)
  return stats.hypergeom.pmf(k, num_verdicts, np.asarray(yes_PxN)[..., None], v)


def pick_probabilities(
  yes_PxN, num_verdicts: int, ss: Sequence[int], v: int, chunk: int = 8
) -> np.ndarray:
  """P(solution n is submitted) at each S in `ss`, V verdicts each, uniform
  tie-break (module docstring). Shape (P, len(ss), N); sums to 1 over N."""
  yes = np.asarray(yes_PxN, np.int64)
  p, n = yes.shape
  ss = _check_sv(ss, v, n, num_verdicts)
  h_PxNxK = verdict_count_pmf(yes, num_verdicts, v)
  below_PxNxK = np.cumsum(h_PxNxK, -1) - h_PxNxK
  x, w = np.polynomial.legendre.leggauss(max(1, (n + 1) // 2))
  u_U, w_U = (x + 1) / 2, w / 2
  smax = int(ss.max())
  out = np.zeros((p, len(ss), n))
  not_self_NxN = ~np.eye(n, dtype=bool)
  for lo in range(0, p, chunk):
    # q[b, k, u, j] = P(other j ranks below a solution at level k with priority u)
    q = (
      below_PxNxK[lo : lo + chunk].transpose(0, 2, 1)[:, :, None, :]
      + h_PxNxK[lo : lo + chunk].transpose(0, 2, 1)[:, :, None, :]
      * u_U[None, None, :, None]
    )  # [b, K, U, N]
    b = q.shape[0]
    # e[..., n, t] = e_t(q over j != n), t < smax, by a product over j.
    e = np.zeros((b, v + 1, len(u_U), n, smax))
    e[..., 0] = 1.0
    for j in range(n):
      qj = q[..., j][..., None] * not_self_NxN[j]  # [b, K, U, N]
      e[..., 1:] = e[..., 1:] + qj[..., None] * e[..., :-1]
    # integrate over u, weight by P(K_n = k)
    e_int = np.einsum("bkunt,u->bknt", e, w_U)
    h = h_PxNxK[lo : lo + chunk]  # [b, N, K]
    prob = np.einsum("bnk,bknt->btn", h, e_int)  # [b, t, N]
    norm = np.array([math.comb(n, int(s)) for s in ss], np.float64)
    out[lo : lo + chunk] = prob[:, ss - 1, :] / norm[None, :, None]
  return out


def genrm_accuracy(
  yes_PxN, num_verdicts: int, correct_PxN, ss: Sequence[int], v: int
) -> np.ndarray:
  """Exact expected accuracy per problem of GenRM best-of-S with V verdicts per
  solution (uniform tie-break), from a pool of N solutions x M verdicts.
  Returns (P, len(ss))."""
  yes, correct = _check_pool(yes_PxN, num_verdicts, correct_PxN)
  probs = pick_probabilities(yes, num_verdicts, ss, v)
  return np.einsum("psn,pn->ps", probs, correct)


class MCEstimate(NamedTuple):
  value_PxS: np.ndarray
  stderr_PxS: np.ndarray
  num_subsets: int


def genrm_accuracy_mc(
  yes_PxN,
  num_verdicts: int,
  correct_PxN,
  ss: Sequence[int],
  v: int,
  *,
  answers_PxN=None,
  tie_break: str = "random",
  num_subsets: int = 2000,
  seed=0,
) -> MCEstimate:
  """Monte Carlo estimate of the same accuracy, for tie_break 'random' or
  'majority' (needs answers_PxN: int answer ids, < 0 = no answer; the tied
  solutions vote, the top answer group's correctness counts, equal votes
  averaged). The expectation over the final uniform tie-break is taken exactly
  inside each draw; draws are iid, so the estimate is unbiased."""
  if tie_break not in TIE_BREAKS:
    raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
  yes, correct = _check_pool(yes_PxN, num_verdicts, correct_PxN)
  p, n = yes.shape
  ss = _check_sv(ss, v, n, num_verdicts)
  if num_subsets < 2:
    raise ValueError(f"num_subsets must be >= 2, got {num_subsets}")
  if tie_break == "majority":
    if answers_PxN is None:
      raise ValueError("tie_break='majority' needs answers_PxN")
    answers = np.asarray(answers_PxN)
    if answers.shape != yes.shape or not np.issubdtype(answers.dtype, np.integer):
      raise ValueError(f"answers_PxN must be integer ids of shape {yes.shape}")
  rng = np.random.default_rng(seed)
  value = np.zeros((p, len(ss)))
  stderr = np.zeros((p, len(ss)))
  r = num_subsets
  for si, s in enumerate(ss):
    s = int(s)
    idx = np.argpartition(rng.random((p, r, n)), s - 1, axis=-1)[..., :s]  # [P,R,S]
    y = np.take_along_axis(yes[:, None, :], idx, -1)
    k = rng.hypergeometric(y, num_verdicts - y, v)  # [P,R,S]
    c = np.take_along_axis(correct[:, None, :], idx, -1)
    top = k == k.max(-1, keepdims=True)
    if tie_break == "random":
      ok = (top * c).sum(-1) / top.sum(-1)
    else:
      a = np.take_along_axis(answers[:, None, :], idx, -1)
      # votes of each tied member's answer among the tied (invalid answers: 0)
      same = (a[..., :, None] == a[..., None, :]) & top[..., None, :]
      votes = np.where(top & (a >= 0), same.sum(-1), 0)
      best = votes.max(-1, keepdims=True)
      # no valid answer among the tied: all tied members (all wrong anyway)
      win = np.where(best > 0, top & (votes == best), top)
      ok = (win * c).sum(-1) / win.sum(-1)
    value[:, si] = ok.mean(-1)
    stderr[:, si] = ok.std(-1, ddof=1) / math.sqrt(r)
  return MCEstimate(value, stderr, r)


def crossover_budget(budgets, verify_acc, sc_acc, margin: float = 0.0):
  """Smallest budget from which the verification curve beats SC at every larger
  budget in range (verify > sc + margin), or None ('never in range'). Budgets
  where either value is NaN (not measured) are skipped."""
  b = np.asarray(budgets, np.float64)
  va, sa = np.asarray(verify_acc, np.float64), np.asarray(sc_acc, np.float64)
  if not (b.shape == va.shape == sa.shape) or b.ndim != 1:
    raise ValueError("budgets, verify_acc and sc_acc must be 1-D of equal length")
  ok = np.isfinite(va) & np.isfinite(sa)
  order = np.argsort(b[ok])
  bb, wins = b[ok][order], (va[ok] > sa[ok] + margin)[order]
  cross = None
  for i in range(len(bb) - 1, -1, -1):
    if not wins[i]:
      break
    cross = float(bb[i])
  return cross
