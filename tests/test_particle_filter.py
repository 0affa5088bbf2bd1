"""Particle filtering: exactness against enumeration (toy bigram model and a
prefix potential), unbiased evidence, particle-Gibbs invariance, degenerate
weights, and KV-cache forks checked against an uncached forward pass."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tiny_models import one_layer_config
from scipy import stats

from algorithms.particle_filter import PFConfig, run_particle_filter, weighted_vote
from algorithms.scorers import ConfidenceScorer
from algorithms.stepping import BUDGET, STOP
from jaxllm import BigramLM, Transformer, forward, init_params
from jaxllm import flops as flops_lib
from jaxllm.cache import take_rows

# Toy problem: tokens 0, 1 and STOP=2, one-token steps, K=3 steps, prompt [0].
V, EOS, K = 3, 2, 3
BASE = V + 1  # prefix hash h' = h * BASE + tok + 1 (unique per prefix)
H = BASE**K


@dataclasses.dataclass(frozen=True)
class PrefixPotential:
  """Toy step scorer: score = table[hash of the whole prefix] (params = table).

  State = the running prefix hash; a potential defined on every prefix."""

  def init(self, params, tokens_BxT, lengths_B, cache_size):
    return jnp.zeros((tokens_BxT.shape[0],), jnp.int32)

  def score(self, table, h_B, step, active_B):
    for s in range(step.tokens.shape[1]):
      go = active_B & (s < step.length)
      h_B = jnp.where(go, h_B * BASE + step.tokens[:, s] + 1, h_B)
    return h_B, table[h_B]

  def reorder(self, h_B, index_N):
    return take_rows(h_B, index_N)


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(V, V)) * 1.2
  pot = np.exp(rng.uniform(np.log(0.02), 0.0, size=H))  # skewed potentials
  return jnp.asarray(logits, jnp.float32), jnp.asarray(pot, jnp.float32)


def _enumerate(logits, pot):
  """Exact target over complete trajectories: {hash: prob}, and Z."""
  lg = np.asarray(logits, np.float64)
  p = np.exp(lg - lg.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  pot = np.asarray(pot, np.float64)
  out, seqs = {}, {}
  for n in range(1, K + 1):
    for seq in itertools.product(range(V), repeat=n):
      if EOS in seq[:-1] or (n < K and seq[-1] != EOS):
        continue
      prob, prev, h, g = 1.0, 0, 0, 1.0
      for tok in seq:
        prob *= p[prev, tok]
        prev = tok
        h = h * BASE + tok + 1
        g *= pot[h]
      out[h] = prob * g
      seqs[h] = seq
  Z = sum(out.values())
  return {h: w / Z for h, w in out.items()}, Z, seqs


def _hashes(result):
  """Final prefix hash of every particle [P, N] from its step tokens."""
  toks = np.asarray(result.step_tokens)[..., 0]  # [P, N, K]
  lens = np.asarray(result.step_lengths)  # [P, N, K]
  h = np.zeros(toks.shape[:2], np.int64)
  for k in range(K):
    h = np.where(lens[..., k] > 0, h * BASE + toks[..., k] + 1, h)
  return h


def _smc(**kw):
  return PFConfig(
    max_steps=K,
    max_step_tokens=1,
    stop_ids=(EOS,),
    weighting="smc",
    score_eps=0.0,
    **kw,
  )


def _run(cfg, P, seed, logits, pot):
  prompts = np.zeros((P, 1), np.int32)
  return run_particle_filter(
    BigramLM(V),
    logits,
    PrefixPotential(),
    pot,
    prompts,
    jax.random.key(seed),
    cfg,
    prompt_lengths=np.ones(P, np.int32),
  )


def _tv_per_problem(result, target):
  h = _hashes(result)
  w = np.asarray(result.weights, np.float64)
  tv = []
  for hp, wp in zip(h, w):
    est = {}
    for hi, wi in zip(hp, wp):
      est[hi] = est.get(hi, 0.0) + wi
    keys = set(est) | set(target)
    tv.append(0.5 * sum(abs(est.get(k, 0.0) - target.get(k, 0.0)) for k in keys))
  return np.array(tv)


@pytest.mark.parametrize(
  "Ns", [(64, 1024), pytest.param((64, 256, 1024, 4096), marks=pytest.mark.slow)]
)
def test_weighted_particles_converge_at_root_n_rate(Ns):
  logits, pot = _problem(0)
  target, _, _ = _enumerate(logits, pot)
  seeds = 24
  tvs = []
  for i, N in enumerate(Ns):
    result, _ = _run(_smc(n_particles=N), seeds, i, logits, pot)
    assert np.all(np.isfinite(np.asarray(result.weights)))
    np.testing.assert_allclose(np.asarray(result.weights).sum(1), 1.0, rtol=1e-5)
    tvs.append(_tv_per_problem(result, target).mean())
  slope = np.polyfit(np.log(Ns), np.log(tvs), 1)[0]
  assert -0.8 <= slope <= -0.3, (slope, tvs)
  assert tvs[-1] < 0.03, tvs


# Each config: (kwargs); all must keep Z_hat unbiased (proper SMC).
Z_CONFIGS = {
  "multinomial_every_step": dict(scheme="multinomial"),
  "systematic_ess_lookahead_entropic": dict(
    scheme="systematic", ess_threshold=0.5, lookahead="greedy", entropic="ess"
  ),
  "residual_entropic": dict(scheme="residual", entropic="ess"),
  "stratified_entropy_slow": dict(
    scheme="stratified", entropic="entropy", lookahead="sample"
  ),
}


@pytest.mark.parametrize(
  "name",
  [
    "multinomial_every_step",
    "systematic_ess_lookahead_entropic",
    pytest.param("residual_entropic", marks=pytest.mark.slow),
    pytest.param("stratified_entropy_slow", marks=pytest.mark.slow),
  ],
)
def test_log_normaliser_unbiased(name):
  logits, pot = _problem(1)
  _, Z, _ = _enumerate(logits, pot)
  P = 4000
  result, _ = _run(_smc(n_particles=8, **Z_CONFIGS[name]), P, 7, logits, pot)
  zhat = np.exp(np.asarray(result.log_z, np.float64))
  se = zhat.std(ddof=1) / np.sqrt(P)
  assert abs(zhat.mean() - Z) < 4.5 * se, (zhat.mean(), Z, se)
  assert se < 0.05 * Z  # the test has power
  # Unbiased unnormalised measure: E[Z_hat * sum_i W_i 1{x_i = x}] = Z * pi(x)
  # (twisted / tempered variants included).
  target, _, _ = _enumerate(logits, pot)
  h, w = _hashes(result), np.asarray(result.weights, np.float64)
  for k in target:
    m = zhat * (w * (h == k)).sum(1)
    se_k = m.std(ddof=1) / np.sqrt(P)
    assert abs(m.mean() - Z * target[k]) < 5 * se_k + 1e-9, (
      k,
      m.mean(),
      Z * target[k],
      se_k,
    )


def test_particle_gibbs_kernel_leaves_target_invariant():
  """Reference ~ pi, one conditional sweep, next reference ~ pi (exactly)."""
  logits, pot = _problem(2)
  target, _, seqs = _enumerate(logits, pot)
  keys = sorted(target)
  probs = np.array([target[k] for k in keys])
  P = 20000
  rng = np.random.default_rng(3)
  draw = rng.choice(len(keys), size=P, p=probs / probs.sum())
  rt = np.zeros((P, K, 1), np.int32)
  rl = np.zeros((P, K), np.int32)
  re = np.full((P, K), BUDGET, np.int32)
  for p, d in enumerate(draw):
    seq = seqs[keys[d]]
    rt[p, : len(seq), 0] = seq
    rl[p, : len(seq)] = 1
    re[p, : len(seq)] = [STOP if t == EOS else BUDGET for t in seq]
  cfg = _smc(n_particles=4, scheme="multinomial")
  result, comp = run_particle_filter(
    BigramLM(V),
    logits,
    PrefixPotential(),
    pot,
    np.zeros((P, 1), np.int32),
    jax.random.key(4),
    cfg,
    prompt_lengths=np.ones(P, np.int32),
    init_reference=(rt, rl, re),
  )
  # The reference was replayed verbatim in slot 0.
  np.testing.assert_array_equal(np.asarray(result.step_tokens)[:, 0], rt)
  np.testing.assert_array_equal(np.asarray(result.step_lengths)[:, 0], rl)
  assert comp.prefill_tokens == P + rl.sum()  # prompts + forced reference tokens
  h = _hashes(result)
  new_ref = h[np.arange(P), np.asarray(result.ref_index[-1])]
  counts = np.array([(new_ref == k).sum() for k in keys])
  assert counts.sum() == P
  assert stats.chisquare(counts, probs / probs.sum() * P).pvalue > 1e-5


@dataclasses.dataclass(frozen=True)
class TokenScore:
  """Score = params[first token of the step] (may hold 0 or NaN)."""

  def init(self, params, tokens_BxT, lengths_B, cache_size):
    return jnp.zeros((tokens_BxT.shape[0],), jnp.int32)

  def score(self, params, state, step, active_B):
    return state, params[step.tokens[:, 0]]

  def reorder(self, state, index_N):
    return take_rows(state, index_N)


@pytest.mark.parametrize(
  "weighting", ["smc", pytest.param("prm_logit", marks=pytest.mark.slow)]
)
def test_degenerate_weights_never_nan(weighting):
  table = jnp.zeros((4, 4))  # uniform bigram over 4 tokens, STOP = 2
  eps = 0.0 if weighting == "smc" else 1e-6
  cfg = PFConfig(
    n_particles=16,
    max_steps=3,
    max_step_tokens=2,
    delimiter_ids=(3,),
    stop_ids=(2,),
    weighting=weighting,
    score_eps=eps,
  )
  nan = np.nan
  cases = {
    "equal": [0.5, 0.5, 0.5, 0.5],
    "one_zero": [0.5, 0.0, 0.5, 0.5],
    "all_zero": [0.0, 0.0, 0.0, 0.0],
    "nan": [nan, 0.5, 0.5, 0.5],
    "all_nan": [nan] * 4,
  }
  N = cfg.n_particles
  for name, scores in cases.items():
    r, _ = run_particle_filter(
      BigramLM(4),
      table,
      TokenScore(),
      jnp.asarray(scores, jnp.float32),
      [[1], [0]],
      jax.random.key(5),
      cfg,
    )
    w, lw, lz = (np.asarray(x) for x in (r.weights, r.log_weights, r.log_z))
    assert not np.isnan(w).any() and not np.isnan(lw).any(), name
    assert not np.isnan(lz).any(), name
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-5, err_msg=name)
    toks = np.asarray(r.step_tokens)
    first = toks[..., 0]  # first token of each step [P, N, K]
    taken = np.asarray(r.step_lengths) > 0
    if name in ("all_zero", "all_nan") or (
      name == "equal" and weighting == "prm_logit"
    ):
      # Nothing distinguishes particles: uniform weights.
      np.testing.assert_allclose(w, 1.0 / N, rtol=1e-5, err_msg=name)
    if name == "equal" and weighting == "smc":
      # Weights reset at each resample; at the last step live particles get
      # potential 0.5, finished ones 1 (finished particles are not reweighted).
      live = np.asarray(r.n_steps) == int(r.steps_run)
      g = np.where(live, 0.5, 1.0)
      np.testing.assert_allclose(w, g / g.sum(1, keepdims=True), rtol=1e-5)
    if name in ("all_zero", "all_nan") and weighting == "smc":
      assert np.all(lz == -np.inf), name  # every particle has zero weight
    if name == "nan":
      # A NaN-scored step gives weight zero (the latest step for 'prm_logit').
      if weighting == "smc":
        bad = (taken & (first == 0)).any(-1)
      else:
        last = np.asarray(r.n_steps) - 1
        bad = np.take_along_axis(first, last[..., None], -1)[..., 0] == 0
      assert np.all(w[bad] == 0), name
      assert np.all(w[~bad] > 0), name
    if name == "one_zero" and weighting == "smc":
      bad = (taken & (first == 1)).any(-1)
      assert np.all(w[bad] == 0) and np.all(w[~bad] > 0)
      assert np.all(np.isfinite(lz))
    if name == "one_zero" and weighting == "prm_logit":
      assert np.all(w > 0)  # clipped to eps: tiny but positive


def test_bad_config_raises():
  with pytest.raises(ValueError, match="weighting"):
    PFConfig(weighting="nope", stop_ids=(1,))
  with pytest.raises(ValueError, match="ess_threshold"):
    PFConfig(ess_threshold=0.5, stop_ids=(1,))
  with pytest.raises(ValueError, match="stop_ids"):
    PFConfig()
  with pytest.raises(ValueError, match="n_particles"):
    PFConfig(n_particles=0, stop_ids=(1,))
  with pytest.raises(ValueError, match="scheme"):
    PFConfig(scheme="x", stop_ids=(1,))


def test_weighted_vote():
  answers = [["a", "b", "b", None], [None, None, None, None]]
  w = np.array([[0.6, 0.3, 0.05, 0.05], [0.25] * 4])
  assert weighted_vote(answers, w) == ["a", None]
  with pytest.raises(ValueError, match="problems"):
    weighted_vote(answers[:1], w)


def _tiny_transformer():
  cfg = one_layer_config()
  return cfg, init_params(cfg, jax.random.key(0))


def test_cache_forks_match_uncached_forward():
  """After resampling (and replaying a Gibbs reference, and look-ahead steps that
  must not commit), each particle's next-token logits equal a fresh forward."""
  cfg, params = _tiny_transformer()
  pf = PFConfig(
    n_particles=6,
    max_steps=4,
    max_step_tokens=3,
    delimiter_ids=(10,),
    stop_ids=(0,),
    lookahead="greedy",
    n_sweeps=2,
    return_logits=True,
    scheme="systematic",
  )
  prompts = [[1, 4, 5], [2, 3]]
  r, comp = run_particle_filter(
    Transformer(cfg), params, ConfidenceScorer(), None, prompts, jax.random.key(1), pf
  )
  toks, lens = np.asarray(r.tokens), np.asarray(r.lengths)
  texts = [
    prompts[p] + list(toks[p, i, : lens[p, i]]) for p in range(2) for i in range(6)
  ]
  T = max(len(t) for t in texts)
  arr = jnp.array([t + [0] * (T - len(t)) for t in texts])
  ref, _, _ = forward(params, arr, cfg)
  last = jnp.array([len(t) - 1 for t in texts])
  want = np.asarray(ref[jnp.arange(len(texts)), last])
  np.testing.assert_allclose(
    np.asarray(r.logits).reshape(12, -1), want, atol=3e-5, rtol=3e-5
  )
  assert comp.model_calls > 1 and comp.decode_flops > 0
  # Particle Gibbs bookkeeping: one log-normaliser and reference per sweep.
  assert r.log_z_sweeps.shape == (2, 2) and r.ref_index.shape == (2, 2)
  assert np.all(np.isfinite(np.asarray(r.log_z_sweeps)))
  assert comp.prefill_tokens > 5  # sweep 2 replays its reference (forced tokens)


@pytest.mark.slow
def test_compute_record_without_resampling_is_exact():
  """Never resampling (ESS threshold 0): generated tokens and FLOPs follow from
  the final particles alone (independent closed-form count)."""
  cfg, params = _tiny_transformer()
  pf = PFConfig(
    n_particles=5,
    max_steps=3,
    max_step_tokens=4,
    delimiter_ids=(10,),
    stop_ids=(0,),
    weighting="smc",
    ess_threshold=0.0,
  )
  prompts = [[1, 4, 5], [2, 3]]
  r, comp = run_particle_filter(
    Transformer(cfg), params, ConfidenceScorer(), None, prompts, jax.random.key(2), pf
  )
  lens = np.asarray(r.lengths)
  assert comp.generated_tokens == lens.sum()
  want = sum(
    flops_lib.decode_flops(
      cfg, np.arange(len(prompts[p]) + 1, len(prompts[p]) + 1 + L)
    ).sum()
    for p in range(2)
    for L in lens[p]
  )
  np.testing.assert_allclose(comp.decode_flops, want, rtol=1e-6)
  np.testing.assert_allclose(
    comp.prefill_flops, flops_lib.prefill_flops(cfg, np.array([3, 2])).sum()
  )
  assert comp.prefill_tokens == 5 and comp.verifier_flops == 0.0
