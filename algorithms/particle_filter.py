"""Step-level particle filtering, particle Gibbs and entropic PF, in one jit.

A particle is a partial solution. The whole population (P problems x N
particles) is ONE batch of B = P * N rows (row p * N + i is particle i of
problem p); every step extends all live rows at once (`sample_step`), scores
the step (any step scorer), turns scores into weights and resamples *within
each problem's block of N rows*. Resampling forks rows of the model state
(the KV cache), the next-token logits and the scorer state by gathering them
(`reorder_rows`); a prefix is never re-prefilled. The prompt is prefilled once
per problem and forked into N rows. The step loop is a `lax.while_loop`; the
particle-Gibbs sweeps are a `lax.scan`; one `jax.jit` per configuration.

Weighting (`PFConfig.weighting`)
  'reference'  the reference implementation: log w_i = logit(r_i) / T with r_i
               the latest step score of particle i (not accumulated), resample
               every step. Its log-normaliser is the same formula as SMC's but
               has no probabilistic meaning.
  'smc'        proper SMC with incremental log-weights: log w_i += log(r_i) / T
               (potential G = r^(1/T) of the latest step); resample every step
               or only when ESS < ess_threshold * N (weights reset after a
               resample). The weighted final particles target
                 pi(x) ∝ p_model(x) * prod_t G_t(x_{1:t})
               and log_z is the (unbiased in Z, not in log Z) estimate of
               log sum_x p_model(x) prod_t G_t(x_{1:t}).

Finished particles (their step ended with a stop token) stay in the pool: they
are not extended, and their potential is 1 from then on (SMC: their weight is
carried unchanged and only renormalised; reference: their weight keeps using
their last step score). They are resampled like the others (a copy of a
finished particle is finished). The loop ends when every particle has finished
or after `max_steps` steps (particles still live then are truncated and keep
their weight). No resampling happens after the last step, so the returned
weights are the final importance weights.

Resampling with proposal q (plain: q = W the normalised weights; entropic: a
tempered q) gives particle j the weight W_a / q_a (a = its ancestor), and the
log-normaliser gains log mean_j W_a / q_a; with q = W both are trivial (weights
reset to uniform, increment 0), with a tempered q this keeps SMC consistent and
Z_hat unbiased.

Entropic PF
  entropic='ess'|'entropy': resample from softmax(log w / T_ent) with
  T_ent = resampling.entropic_temperature(W, t / max_steps, mode); the final
  selection stays untempered.
  lookahead='greedy'|'sample': after each step every live particle takes one
  extra step (greedy or sampled) that is scored by the same scorer and then
  discarded (nothing is committed: the states are functional values; the
  cache copy this implies is counted as time, not FLOPs). With L_t the
  look-ahead score: reference weighting multiplies w by L_t^(1/T); SMC uses
  L^(1/T) as a twist, potential G_t * L_t / L_{t-1} (L = 1 before the first
  step and once a particle has finished or at the last step), so the product
  telescopes and the target is unchanged (exact for greedy look-ahead, which
  is a deterministic function of the prefix). Look-ahead tokens and scorer
  calls are counted in the Compute record (generated tokens / model calls /
  verifier calls). A NaN look-ahead score counts as 0; look-ahead scores are
  floored at max(score_eps, 1e-12) so the twist stays finite.

Particle Gibbs (n_sweeps > 1)
  Sweep 1 is a plain PF. After each sweep one particle per problem is drawn
  from the final weights as the reference; the next sweep runs conditional
  SMC: particle 0 of every block is the reference, its steps are *replayed*
  (its stored step tokens are forced through the model with one ragged
  `extend` per step, scored like any step; forced tokens count as prefill
  tokens), and resampling is `resampling.conditional_resample` with the
  reference kept in slot 0. The final population is the last sweep's.

Degenerate scores: a NaN step score gives the particle weight 0; score 0 gives
weight 0 with score_eps=0 (SMC; the reference weighting clips r into
[eps, 1-eps]). If every particle of a problem has weight 0 the weights become
uniform and log_z becomes -inf (never NaN). See `resampling`'s conventions.

Compute: prefill tokens / FLOPs count each prompt once (forks are free) plus
forced reference tokens; generated tokens include look-ahead tokens; FLOPs
use the exact context of every processed token (a histogram over positions)
with jaxllm.flops, and are 0 for models without a `cfg` (the BigramLM toy).
Verifier tokens / FLOPs are counted only for scorers that wrap a model (a
`model` attribute, e.g. ModelStepScorer); ConfidenceScorer is free. A reward
model's FLOPs use decode_flops of its config, which includes an LM head it
does not run (an upper bound by 2 * V * D per token).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from algorithms import resampling as rs
from algorithms.stepping import (  # noqa: F401 (re-exports, see below)
    BUDGET, STOP, Step, add_hist, check_config_ids, compute_record,
    flatten_steps, forced_step, hist_flops, id_tuple, merge_steps, model_config,
    prepare_prompts, prompt_flops, reorder_rows, sample_step, scorer_model,
    step_contexts)
from jaxllm.sampling import make_sampling
from jaxllm.validation import check_int, check_token_id, check_token_ids

TRACE_COUNT = {"particle_filter": 0}  # incremented at trace time
WEIGHTINGS = ("reference", "smc")
LOOKAHEADS = (None, "greedy", "sample")


@dataclasses.dataclass(frozen=True)
class PFConfig:
  """Static particle-filter settings (hashable; a new value recompiles).

  n_particles: N per problem. max_steps: step cap K. max_step_tokens: S, the
  token budget of one step. delimiter_ids / stop_ids: end a step / a solution.
  weighting: 'reference' or 'smc' (module doc). temperature: T of the weights.
  score_eps: scores are clipped to [eps, 1 - eps] ('reference') or
  [eps, 1] ('smc'; 0 lets a zero score kill a particle).
  scheme: multinomial / systematic / stratified / residual.
  ess_threshold: None = resample every step; else resample a problem's block
  when ESS < threshold * N ('smc' only).
  entropic: None, 'ess' or 'entropy' (entropic annealing of resampling).
  lookahead: None, 'greedy' or 'sample' (one discarded extra step, see doc).
  n_sweeps: > 1 runs particle Gibbs. sampling_*: the policy's sampling.
  cache_size: KV slots per row (default padded prompt + (K + lookahead) * S).
  pad_id: id written into padding. return_logits: also return each final
  particle's next-token logits. allow_no_stop: accept an empty stop_ids (no
  particle can finish: every one runs exactly max_steps steps; for
  benchmarks that need equal token counts). Token ids (stop / delimiter /
  pad) are checked for type here and against the model's vocabulary by
  `run_particle_filter` (ValueError naming the field).
  """

  n_particles: int = 16
  max_steps: int = 16
  max_step_tokens: int = 32
  delimiter_ids: tuple = ()
  stop_ids: tuple = ()
  weighting: str = "reference"
  temperature: float = 1.0
  score_eps: float = rs.DEFAULT_SCORE_EPS
  scheme: str = "multinomial"
  ess_threshold: Optional[float] = None
  entropic: Optional[str] = None
  lookahead: Optional[str] = None
  n_sweeps: int = 1
  sampling_temperature: float = 1.0
  sampling_top_k: Optional[int] = None
  sampling_top_p: Optional[float] = None
  cache_size: Optional[int] = None
  pad_id: int = 0
  return_logits: bool = False
  allow_no_stop: bool = False

  def __post_init__(self):
    for name in ("delimiter_ids", "stop_ids"):
      object.__setattr__(self, name, id_tuple(f"PFConfig.{name}",
                                              getattr(self, name)))
    object.__setattr__(self, "pad_id", check_token_id("PFConfig.pad_id",
                                                      self.pad_id, None))
    for name in ("n_particles", "max_steps", "max_step_tokens", "n_sweeps"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"PFConfig.{name} must be a positive int, got {v!r}")
    if self.weighting not in WEIGHTINGS:
      raise ValueError(f"PFConfig.weighting must be one of {WEIGHTINGS}, "
                       f"got {self.weighting!r}")
    if not self.temperature > 0:
      raise ValueError(f"PFConfig.temperature must be > 0, got {self.temperature}")
    upper = 0.5 if self.weighting == "reference" else 1.0
    if not 0 <= self.score_eps < upper:
      raise ValueError(f"PFConfig.score_eps must be in [0, {upper}) for "
                       f"weighting={self.weighting!r}, got {self.score_eps}")
    if self.scheme not in rs.SCHEMES:
      raise ValueError(f"PFConfig.scheme must be one of {rs.SCHEMES}, "
                       f"got {self.scheme!r}")
    if self.ess_threshold is not None:
      if self.weighting != "smc":
        raise ValueError("PFConfig.ess_threshold needs weighting='smc' (the "
                         "reference weights are not accumulated)")
      if not 0 <= self.ess_threshold:
        raise ValueError(f"PFConfig.ess_threshold must be >= 0, got "
                         f"{self.ess_threshold}")
    if self.entropic not in (None,) + rs.ENTROPIC_MODES:
      raise ValueError(f"PFConfig.entropic must be None or one of "
                       f"{rs.ENTROPIC_MODES}, got {self.entropic!r}")
    if self.lookahead not in LOOKAHEADS:
      raise ValueError(f"PFConfig.lookahead must be one of {LOOKAHEADS}, "
                       f"got {self.lookahead!r}")
    if not self.stop_ids and not self.allow_no_stop:
      raise ValueError("PFConfig.stop_ids is empty: particles could never "
                       "finish (set allow_no_stop=True to run max_steps steps)")
    if self.cache_size is not None:
      object.__setattr__(self, "cache_size", check_int(
          "PFConfig.cache_size", self.cache_size, lo=1))

  def sampling(self):
    return make_sampling(self.sampling_temperature, self.sampling_top_k,
                         self.sampling_top_p)

  def min_cache_size(self, padded_prompt_len: int) -> int:
    extra = 1 if self.lookahead else 0
    return padded_prompt_len + (self.max_steps + extra) * self.max_step_tokens


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PFResult:
  """Final population of each problem (P problems, N particles).

  tokens [P, N, K*S] the generated tokens (steps concatenated, pad after);
  lengths [P, N]; step_tokens [P, N, K, S] / step_lengths [P, N, K] per step;
  n_steps [P, N] steps taken; finished [P, N] (ended with a stop token);
  log_weights [P, N] normalised final log-weights (untempered); weights
  [P, N] = exp(log_weights); best [P] argmax of the weights; scores [P, N]
  the latest step score; log_z [P] log-normaliser estimate (last sweep);
  log_z_sweeps [n_sweeps, P]; ref_index [n_sweeps, P] particle drawn from
  each sweep's final weights (particle Gibbs' next reference); steps_run
  scalar; logits [P, N, V] next-token logits (only with return_logits).
  """

  tokens: Any
  lengths: Any
  step_tokens: Any
  step_lengths: Any
  n_steps: Any
  finished: Any
  log_weights: Any
  weights: Any
  best: Any
  scores: Any
  log_z: Any
  log_z_sweeps: Any
  ref_index: Any
  steps_run: Any
  logits: Any = None


# Shared step-search plumbing now lives in algorithms/stepping.py; these names
# are re-exported for callers that still import them from here.
model_cfg = model_config


def _log_mean_exp(x_N):
  _, lse = rs.log_normalize(x_N)
  return lse - math.log(x_N.shape[0])


# ----------------------------------------------------------------------------
# The jitted filter
# ----------------------------------------------------------------------------


def _pf_impl(model, scorer, config: PFConfig, params, scorer_params, tokens_PxT,
             lengths_P, key, init_ref, cache_size: int):
  TRACE_COUNT["particle_filter"] += 1
  c = config
  P = tokens_PxT.shape[0]
  N, K, S = c.n_particles, c.max_steps, c.max_step_tokens
  B = P * N
  C = cache_size + 1  # context histogram bins
  gibbs = c.n_sweeps > 1 or init_ref is not None
  smc = c.weighting == "smc"
  sampling = c.sampling()
  la_sampling = make_sampling(0.0) if c.lookahead == "greedy" else sampling
  la_eps = max(c.score_eps, 1e-12)
  stop_kw = dict(max_step_tokens=S, delimiter_ids=c.delimiter_ids,
                 stop_ids=c.stop_ids, pad_id=c.pad_id)
  verifier_counted = scorer_model(scorer) is not None

  state_p, logits_p = model.prefill(params, tokens_PxT, lengths_P, cache_size)
  sstate_p = scorer.init(scorer_params, tokens_PxT, lengths_P, cache_size)
  fork = jnp.repeat(jnp.arange(P, dtype=jnp.int32), N)
  block = fork * N  # first row of each row's block
  slot = jnp.arange(B, dtype=jnp.int32) - block

  def blocks(x_B):
    return x_B.reshape(P, N)

  def weights_of(logw_B, last_score_B):
    """Final (untempered) normalised log-weights per block."""
    raw = logw_B if smc else rs.prm_logit_log_weights(last_score_B, c.temperature,
                                                      c.score_eps)
    logp, _ = jax.vmap(rs.log_normalize)(blocks(raw))
    return logp

  def sweep(carry, _):
    key, ref, has_ref = carry
    ref_tok, ref_len, ref_end = ref  # [P, K, S], [P, K], [P, K]
    is_ref = has_ref & (slot == 0)
    state, logits = reorder_rows(model, state_p, logits_p, fork)
    sstate = scorer.reorder(sstate_p, fork)
    z = lambda *s, dt=jnp.int32: jnp.zeros(s, dt)
    counters = dict(gen=z(C, dt=jnp.float32), forced=z(C, dt=jnp.float32),
                    scored=z(C, dt=jnp.float32), calls=z(), vcalls=z())
    init = dict(t=jnp.int32(0), key=key, state=state, logits=logits, sstate=sstate,
                traj=jnp.full((B, K, S), c.pad_id, jnp.int32), tlen=z(B, K),
                tend=z(B, K), nsteps=z(B), finished=jnp.zeros((B,), bool),
                logw=z(B, dt=jnp.float32), score=jnp.ones((B,), jnp.float32),
                twist=z(B, dt=jnp.float32), logz=z(P, dt=jnp.float32),
                n=counters)

    def cond(v):
      return (v["t"] < K) & ~jnp.all(v["finished"])

    def body(v):
      t = v["t"]
      key, k_step, k_la, k_res = jax.random.split(v["key"], 4)
      active = ~v["finished"]
      ctx0 = model.lengths(v["state"])
      n = dict(v["n"])
      logits_before = v["logits"]
      state, logits, step = sample_step(model, params, v["state"], logits_before,
                                        k_step, sampling,
                                        active_B=active & ~is_ref, **stop_kw)
      n["calls"] = n["calls"] + step.calls
      ctx, valid = step_contexts(ctx0, step.length, S)
      n["gen"] = add_hist(n["gen"], ctx, valid)
      if gibbs:
        ref_row = lambda x: jnp.take(x, fork, axis=0)
        f_act = active & is_ref
        state, logits, fstep = forced_step(
            model, params, state, logits, ref_row(ref_tok[:, t]),
            ref_row(ref_len[:, t]), ref_row(ref_end[:, t]), f_act)
        step = merge_steps(step, fstep, is_ref)
        n["calls"] = n["calls"] + jnp.any(f_act).astype(jnp.int32)
        fctx, fvalid = step_contexts(ctx0, fstep.length, S)
        n["forced"] = add_hist(n["forced"], fctx, fvalid)
      sstate, score = scorer.score(scorer_params, v["sstate"], step, active)
      n["vcalls"] = n["vcalls"] + 1
      ctx, valid = step_contexts(ctx0, step.length, S)
      n["scored"] = add_hist(n["scored"], ctx, valid)
      ended_now = active & (step.ended == STOP)
      finished = v["finished"] | ended_now
      last_iter = (t + 1 >= K) | jnp.all(finished)
      going = active & ~ended_now & ~last_iter

      la_logpot = jnp.zeros((B,), jnp.float32)
      if c.lookahead:
        ctx1 = model.lengths(state)
        _, _, la_step = sample_step(model, params, state, logits, k_la, la_sampling,
                                    active_B=going, **stop_kw)
        _, la_score = scorer.score(scorer_params, sstate, la_step, going)
        n["calls"] = n["calls"] + la_step.calls
        n["vcalls"] = n["vcalls"] + 1
        ctx, valid = step_contexts(ctx1, la_step.length, S)
        n["gen"] = add_hist(n["gen"], ctx, valid)
        n["scored"] = add_hist(n["scored"], ctx, valid)
        la_score = jnp.nan_to_num(la_score.astype(jnp.float32), nan=0.0)
        la_logpot = jnp.where(going, jnp.log(jnp.clip(la_score, la_eps, 1.0))
                              / c.temperature, 0.0)

      traj = v["traj"].at[:, t].set(jnp.where(active[:, None], step.tokens, c.pad_id))
      tlen = v["tlen"].at[:, t].set(jnp.where(active, step.length, 0))
      tend = v["tend"].at[:, t].set(jnp.where(active, step.ended, BUDGET))
      nsteps = v["nsteps"] + active.astype(jnp.int32)
      last_score = jnp.where(active, score.astype(jnp.float32), v["score"])

      if smc:
        pot = jnp.where(active, rs.prm_log_potential(last_score, c.temperature,
                                                     c.score_eps), 0.0)
        pot = pot + la_logpot - v["twist"]
        logw, inc = jax.vmap(rs.reweight)(blocks(v["logw"]), blocks(pot))
        logz = v["logz"] + inc
        twist = la_logpot
      else:
        lw = rs.prm_logit_log_weights(last_score, c.temperature, c.score_eps)
        logw = blocks(lw + la_logpot)
        logz = v["logz"] + jax.vmap(rs.normalize_log_weights)(logw)[1]
        twist = la_logpot
      # Resampling proposal q (per block).
      logW, _ = jax.vmap(rs.log_normalize)(logw)
      W = jnp.exp(logW)
      if c.entropic:
        progress = t.astype(jnp.float32) / K
        temp = jax.vmap(lambda p: rs.entropic_temperature(p, progress, c.entropic))(W)
        q = jax.vmap(rs.tempered_probs)(logw, temp)
      else:
        q = W
      if c.ess_threshold is None:
        do = jnp.ones((P,), bool)
      else:
        do = jax.vmap(lambda p: rs.should_resample(p, c.ess_threshold))(W)
      do = do & ~last_iter
      keys = jax.random.split(k_res, P)
      plain = jax.vmap(lambda k, p: rs.resample(k, p, N, c.scheme))(keys, q)
      if gibbs:
        cond_anc = jax.vmap(lambda k, p: rs.conditional_resample(
            k, p, 0, c.scheme, 0))(keys, q)
        plain = jnp.where(has_ref, cond_anc, plain)
      anc = jnp.where(do[:, None], plain, jnp.arange(N, dtype=jnp.int32)[None])
      if smc:
        logq = jnp.log(q)
        new = (jnp.take_along_axis(logW, anc, 1) - jnp.take_along_axis(logq, anc, 1))
        new = jnp.where(jnp.isnan(new), -jnp.inf, new)
        logz = logz + jnp.where(do, jax.vmap(_log_mean_exp)(new), 0.0)
        logw = jnp.where(do[:, None], new, logw)
      index = (anc + jnp.arange(P, dtype=jnp.int32)[:, None] * N).reshape(B)

      rows = (state, logits, sstate, traj, tlen, tend, nsteps, finished,
              last_score, twist)

      def gather(r):
        st, lg, ss, *rest = r
        st, lg = reorder_rows(model, st, lg, index)
        ss = scorer.reorder(ss, index)
        return (st, lg, ss, *[jnp.take(x, index, axis=0) for x in rest])

      rows = jax.lax.cond(jnp.any(do), gather, lambda r: r, rows)
      (state, logits, sstate, traj, tlen, tend, nsteps, finished, last_score,
       twist) = rows
      return dict(t=t + 1, key=key, state=state, logits=logits, sstate=sstate,
                  traj=traj, tlen=tlen, tend=tend, nsteps=nsteps,
                  finished=finished, logw=logw.reshape(B), score=last_score,
                  twist=twist, logz=logz, n=n)

    v = jax.lax.while_loop(cond, body, init)
    logp = weights_of(v["logw"], v["score"])  # [P, N]
    key, k_ref = jax.random.split(v["key"])
    ref_idx = jax.vmap(lambda k, lp: jax.random.categorical(k, lp))(
        jax.random.split(k_ref, P), logp).astype(jnp.int32)
    rows = jnp.arange(P) * N + ref_idx
    new_ref = (v["traj"][rows], v["tlen"][rows], v["tend"][rows])
    out = dict(traj=v["traj"], tlen=v["tlen"], nsteps=v["nsteps"],
               finished=v["finished"], logp=logp, score=v["score"],
               logz=v["logz"], ref_idx=ref_idx, steps=v["t"], n=v["n"])
    if c.return_logits:
      out["logits"] = v["logits"]
    return (key, new_ref, jnp.bool_(True)), out

  if init_ref is None:
    ref0 = (jnp.full((P, K, S), c.pad_id, jnp.int32), jnp.zeros((P, K), jnp.int32),
            jnp.zeros((P, K), jnp.int32))
    has0 = jnp.bool_(False)
  else:
    ref0, has0 = init_ref, jnp.bool_(True)
  _, outs = jax.lax.scan(sweep, (key, ref0, has0), None, length=c.n_sweeps)
  last = jax.tree_util.tree_map(lambda x: x[-1], outs)
  tokens, lengths = flatten_steps(last["traj"], last["tlen"], c.pad_id)
  logp = last["logp"]
  result = PFResult(
      tokens=tokens.reshape(P, N, K * S), lengths=lengths.reshape(P, N),
      step_tokens=last["traj"].reshape(P, N, K, S),
      step_lengths=last["tlen"].reshape(P, N, K),
      n_steps=last["nsteps"].reshape(P, N), finished=last["finished"].reshape(P, N),
      log_weights=logp, weights=jnp.exp(logp),
      best=jnp.argmax(logp, axis=1).astype(jnp.int32),
      scores=last["score"].reshape(P, N), log_z=last["logz"],
      log_z_sweeps=outs["logz"], ref_index=outs["ref_idx"],
      steps_run=last["steps"],
      logits=last["logits"].reshape(P, N, -1) if c.return_logits else None)
  counts = jax.tree_util.tree_map(lambda x: x.sum(0), outs["n"])
  return result, counts


_pf_jit = jax.jit(_pf_impl, static_argnames=("model", "scorer", "config",
                                             "cache_size"))


def run_particle_filter(model, params, scorer, scorer_params, prompts, key,
                        config: PFConfig, *, prompt_lengths=None,
                        init_reference=None):
  """Particle filter / particle Gibbs / entropic PF over a batch of problems.

  Args:
    model: decode-interface model (Transformer, BigramLM, ...); params its
      parameters. scorer / scorer_params: a step scorer (algorithms.scorers).
    prompts: list of P token lists, or a right-padded [P, T] array with
      `prompt_lengths` [P].
    config: PFConfig (static; one compiled program per config and shape).
    init_reference: optional (step_tokens [P, K, S], step_lengths [P, K],
      step_ended [P, K]) reference trajectory: the first sweep is then already
      conditional (particle Gibbs started from a given reference).
  Returns: (PFResult, jaxllm.flops.Compute).

  Raises:
    ValueError: naming the argument or config field: PFConfig.pad_id /
      stop_ids / delimiter_ids, prompt or init_reference ids outside [0, V),
      malformed prompts (`jaxllm.generate.check_prompts`), or prompt +
      steps beyond ModelConfig.max_seq_len or PFConfig.cache_size.
  """
  if not isinstance(config, PFConfig):
    raise ValueError(f"config must be a PFConfig, got {type(config)}")
  check_config_ids(model, config, "PFConfig")
  tokens, lengths, size = prepare_prompts(model, prompts, prompt_lengths,
                                          config.pad_id, config.min_cache_size,
                                          config.cache_size)
  if init_reference is not None:
    P, K, S = tokens.shape[0], config.max_steps, config.max_step_tokens
    if len(init_reference) != 3:
      raise ValueError("init_reference must be (step_tokens, step_lengths, "
                       "step_ended)")
    rt = check_token_ids("init_reference step_tokens", init_reference[0],
                         getattr(model, "vocab_size", None))
    rl, re = (np.asarray(x) for x in init_reference[1:])
    if rt.shape != (P, K, S) or rl.shape != (P, K) or re.shape != (P, K):
      raise ValueError(f"init_reference must be ([P,K,S], [P,K], [P,K]) = "
                       f"({(P, K, S)}, {(P, K)}, {(P, K)}); got "
                       f"{rt.shape}, {rl.shape}, {re.shape}")
    if rl.dtype.kind not in "iu" or rl.min() < 0 or rl.max() > S:
      raise ValueError(f"init_reference step_lengths must be integers in "
                       f"[0, {S}]")
    init_reference = tuple(jnp.asarray(x, jnp.int32) for x in (rt, rl, re))
  result, counts = _pf_jit(model, scorer, config, params, scorer_params, tokens,
                           lengths, key, init_reference, cache_size=size)
  return result, compute_record(model, scorer, lengths, counts)


def weighted_vote(answers, weights) -> list:
  """Weighted majority per problem: answers [P][N] hashables (None = no
  answer, ignored), weights [P, N]. Returns the answer with the largest total
  weight per problem (None if no particle has an answer)."""
  weights = np.asarray(weights, np.float64)
  if len(answers) != weights.shape[0]:
    raise ValueError(f"answers has {len(answers)} problems, weights "
                     f"{weights.shape[0]}")
  out = []
  for ans, w in zip(answers, weights):
    if len(ans) != w.shape[0]:
      raise ValueError(f"answers row has {len(ans)} particles, weights {w.shape[0]}")
    total: dict = {}
    for a, wi in zip(ans, w):
      if a is not None:
        total[a] = total.get(a, 0.0) + (wi if np.isfinite(wi) else 0.0)
    out.append(max(total, key=total.get) if total else None)
  return out
