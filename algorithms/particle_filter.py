"""Step-level particle filtering, particle Gibbs and entropic PF, in one jit.

A particle is a partial solution. The whole population (P problems x N
particles) is ONE batch of B = P * N rows (row p * N + i is particle i of
problem p). Each iteration of the step loop (`_pf_step`) runs five named
steps on all rows at once:

  extend    `_extend`    sample one step for every live row (`sample_step`);
                         particle Gibbs replays the reference in slot 0
  score     `_score`     score the step (any step scorer) and fold the score
                         into the particle's running PRM aggregate
  lookahead `_lookahead` optional discarded extra step, scored (a twist)
  weight    `_weight`    turn the aggregate score into weights
  resample  `_resample`  draw ancestors *within each problem's block of N
                         rows* and gather the rows (`_gather`)

and a sweep ends with `_finish_sweep` (final weights, next reference).
Resampling forks rows of the model state (the KV cache), the next-token
logits and the scorer state by gathering them (`stepping.reorder`); a prefix
is never re-prefilled. The prompt is prefilled once per problem and forked
into N rows (`stepping.prefill_prompts` / `stepping.fork`). The step loop is
a `lax.while_loop`; the particle-Gibbs sweeps are a `lax.scan`; one `jax.jit`
per static configuration (`PFConfig`). The sampling settings and the weight
temperature (and an ESS threshold's value) are traced (`PFSettings`): a sweep
over them does not recompile.

Weighting (`PFConfig.weighting`); r_i is particle i's PRM score, by default
the latest step's (`score_aggregation='last'`), else the aggregate of all its
step scores ('min' / 'prod' / 'mean', `algorithms.selection`'s rules,
computed incrementally by `scorers.StepScoreAggregate`); T is
`weight_temperature`.
  'prm_logit'  the reference implementation (Puri et al. 2025, "A
               probabilistic inference approach to inference-time scaling of
               LLMs using particle-based Monte Carlo methods"): log w_i =
               logit(r_i) / T, not accumulated, resample every step. Its
               log-normaliser is the same formula as SMC's but has no
               probabilistic meaning. (Formerly 'reference', still accepted
               with a DeprecationWarning: particle Gibbs also has a
               "reference" trajectory.)
  'smc'        proper SMC with incremental log-weights: log w_i += log(r_i) / T
               (potential G = r^(1/T)); resample every step or only when
               ESS < ess_threshold * N (weights reset after a resample). The
               weighted final particles target
                 pi(x) ∝ p_model(x) * prod_t G_t(x_{1:t})
               and log_z is the (unbiased in Z, not in log Z) estimate of
               log sum_x p_model(x) prod_t G_t(x_{1:t}).

Finished particles (their step ended with a stop sequence) stay in the pool:
they are not extended, and their potential is 1 from then on (SMC: their
weight is carried unchanged and only renormalised; prm_logit: their weight
keeps using their last score). They are resampled like the others (a copy of
a finished particle is finished). The loop ends when every particle has
finished or after `max_steps` steps (particles still live then are truncated
and keep their weight). No resampling happens after the last step, so the
returned weights are the final importance weights.

Resampling with proposal q (plain: q = W the normalised weights; entropic: a
tempered q) gives particle j the weight W_a / q_a (a = its ancestor), and the
log-normaliser gains log mean_j W_a / q_a; with q = W both are trivial (weights
reset to uniform, increment 0), with a tempered q this keeps SMC consistent and
Z_hat unbiased. The scheme is a function (key, probs_N, num) -> ancestors
(`resampling.RESAMPLERS`, or pass the function as `PFConfig.scheme`).

Entropic PF
  entropic='ess'|'entropy' (or an EntropicMode function): resample from
  softmax(log w / T_ent) with T_ent = resampling.entropic_temperature(W,
  t / max_steps, mode); the final selection stays untempered.
  lookahead='greedy'|'sample': after each step every live particle takes one
  extra step (greedy or sampled) that is scored by the same scorer and then
  discarded (nothing is committed: the states are functional values; the
  cache copy this implies is counted as time, not FLOPs). With L_t the
  look-ahead score: prm_logit weighting multiplies w by L_t^(1/T); SMC uses
  L^(1/T) as a twist, potential G_t * L_t / L_{t-1} (L = 1 before the first
  step and once a particle has finished or at the last step), so the product
  telescopes and the target is unchanged (exact for greedy look-ahead, which
  is a deterministic function of the prefix). Look-ahead tokens and scorer
  calls are counted in the Compute record (generated tokens / model calls /
  verifier calls). A NaN look-ahead score counts as 0; look-ahead scores are
  floored at max(score_eps, 1e-12) so the twist stays finite. The look-ahead
  score is the latest (look-ahead) step's score, not an aggregate.

Particle Gibbs (n_sweeps > 1)
  Sweep 1 is a plain PF. After each sweep one particle per problem is drawn
  from the final weights as the reference; the next sweep runs conditional
  SMC: particle 0 of every block is the reference, its steps are *replayed*
  (its stored step tokens are forced through the model with one ragged
  `extend` per step, scored like any step; forced tokens count as prefill
  tokens), and resampling is `resampling.conditional_resample` with the
  reference kept in slot 0. The final population is the last sweep's.

Degenerate scores: a NaN step score gives the particle weight 0; score 0 gives
weight 0 with score_eps=0 (SMC; prm_logit clips r into [eps, 1-eps]). If every
particle of a problem has weight 0 the weights become uniform and log_z
becomes -inf (never NaN). See `resampling`'s conventions.

Compute (`stepping.compute_record`): prefill tokens / FLOPs count each prompt
once (forks are free) plus forced reference tokens; generated tokens include
look-ahead tokens; FLOPs use the exact context of every processed token (a
histogram over positions) with jaxllm.flops. A model without a ModelConfig
must declare itself free (the BigramLM toy) or the record raises. Verifier
tokens / FLOPs are counted only for scorers that wrap a model (a `model`
attribute, e.g. ModelStepScorer); ConfidenceScorer is free. A reward model's
FLOPs use decode_flops of its config, which includes an LM head it does not
run (an upper bound by 2 * V * D per token).

Shape suffixes: P problems, N particles per problem, B = P * N rows, K step
cap (max_steps), S step token budget (max_step_tokens), T padded prompt
length, V vocabulary, C context-histogram bins (cache_size + 1).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable, Optional, Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from algorithms import resampling as rs
from algorithms import stepping
from algorithms.scorers import StepScoreAggregate
from algorithms.selection import AGGREGATIONS
from algorithms.stepping import (
  BUDGET,
  STOP,
  Rows,
  StepCounters,
  compute_record,
  flatten_steps,
  forced_step,
  merge_steps,
  sample_step,
)
from jaxllm.cache import take_rows
from jaxllm.decoding import fork_index
from jaxllm.sampling import Sampling, make_sampling
from jaxllm.validation import check_token_ids

TRACE_COUNT = {"particle_filter": 0}  # incremented at trace time
WEIGHTINGS = ("prm_logit", "smc")
DEPRECATED_WEIGHTINGS = {"reference": "prm_logit"}  # old name -> new name
LOOKAHEADS = (None, "greedy", "sample")


@dataclasses.dataclass(frozen=True)
class PFConfig:
  """Particle-filter settings (hashable).

  Structure (a new value recompiles): n_particles N per problem; max_steps K
  step cap; max_step_tokens S token budget of one step; delimiter_ids /
  stop_ids end a step / a solution: single token ids, or token sequences
  matched on a step's last tokens (`stepping.id_sequences`, e.g.
  `delimiter_ids=((198, 198), (271,))`); weighting 'prm_logit' or 'smc'
  (module doc; 'reference' is a deprecated alias of 'prm_logit');
  score_aggregation 'last' / 'min' / 'prod' / 'mean' (the PRM score r the
  weights use); score_eps: scores are clipped to [eps, 1 - eps]
  ('prm_logit') or [eps, 1] ('smc'; 0 lets a zero score kill a particle);
  scheme: a name in `resampling.RESAMPLERS` or a resampling function
  (key, probs_N, num) -> ancestors; ess_threshold: None = resample every
  step, else resample a problem's block when ESS < threshold * N ('smc'
  only; its value is traced); entropic: None, 'ess', 'entropy' or an
  EntropicMode function; lookahead: None, 'greedy' or 'sample'; n_sweeps > 1
  runs particle Gibbs; sampling_top_k and whether top-p is on; cache_size
  KV slots per row (default padded prompt + (K + lookahead) * S); pad_id;
  return_logits also returns each final particle's next-token logits;
  allow_no_stop accepts an empty stop_ids (every particle runs exactly
  max_steps steps; for benchmarks that need equal token counts).

  Traced (`settings()`; a new value does not recompile): weight_temperature
  T of the weights (> 0), sampling_temperature / sampling_top_p of the
  policy, the ess_threshold value.

  Token ids (stop / delimiter / pad) are checked for type here and against
  the model's vocabulary by `run_particle_filter`.

  Raises:
    ValueError: naming the field, for any value out of its domain.
  """

  n_particles: int = 16
  max_steps: int = 16
  max_step_tokens: int = 32
  delimiter_ids: tuple = ()
  stop_ids: tuple = ()
  weighting: str = "prm_logit"
  weight_temperature: float = 1.0
  score_aggregation: str = "last"
  score_eps: float = rs.DEFAULT_SCORE_EPS
  scheme: Union[str, Callable] = "multinomial"
  ess_threshold: Optional[float] = None
  entropic: Union[None, str, Callable] = None
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
    stepping.normalize_step_config(
      self, "PFConfig", ("n_particles", "max_steps", "max_step_tokens", "n_sweeps")
    )
    if not self.stop_ids and not self.allow_no_stop:
      raise ValueError(
        "PFConfig.stop_ids is empty: particles could never "
        "finish (set allow_no_stop=True to run max_steps steps)"
      )
    self._check_weighting()
    self._check_resampling()

  def _check_weighting(self):
    if self.weighting in DEPRECATED_WEIGHTINGS:
      new = DEPRECATED_WEIGHTINGS[self.weighting]
      warnings.warn(
        f"PFConfig.weighting={self.weighting!r} is deprecated; use {new!r}",
        DeprecationWarning,
        stacklevel=4,
      )
      object.__setattr__(self, "weighting", new)
    if self.weighting not in WEIGHTINGS:
      raise ValueError(
        f"PFConfig.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}"
      )
    if not self.weight_temperature > 0:
      raise ValueError(
        f"PFConfig.weight_temperature must be > 0, got {self.weight_temperature}"
      )
    if self.score_aggregation not in AGGREGATIONS:
      raise ValueError(
        f"PFConfig.score_aggregation must be one of "
        f"{AGGREGATIONS}, got {self.score_aggregation!r}"
      )
    upper = 0.5 if self.weighting == "prm_logit" else 1.0
    if not 0 <= self.score_eps < upper:
      raise ValueError(
        f"PFConfig.score_eps must be in [0, {upper}) for "
        f"weighting={self.weighting!r}, got {self.score_eps}"
      )

  def _check_resampling(self):
    try:
      rs.get_scheme(self.scheme)
      if self.n_sweeps > 1:
        rs.get_conditional(self.scheme)
      if self.entropic is not None:
        rs.get_entropic_mode(self.entropic)
    except ValueError as e:
      field = "entropic" if "entropic" in str(e) else "scheme"
      raise ValueError(f"PFConfig.{field}: {e}") from None
    if self.ess_threshold is not None:
      if self.weighting != "smc":
        raise ValueError(
          "PFConfig.ess_threshold needs weighting='smc' (the "
          "prm_logit weights are not accumulated)"
        )
      if not 0 <= self.ess_threshold:
        raise ValueError(
          f"PFConfig.ess_threshold must be >= 0, got {self.ess_threshold}"
        )
    if self.lookahead not in LOOKAHEADS:
      raise ValueError(
        f"PFConfig.lookahead must be one of {LOOKAHEADS}, got {self.lookahead!r}"
      )

  def sampling(self) -> Sampling:
    """The policy's sampling settings (a traced pytree)."""
    return make_sampling(
      self.sampling_temperature, self.sampling_top_k, self.sampling_top_p
    )

  def settings(self) -> "PFSettings":
    """The traced settings: changing them does not recompile."""
    return PFSettings(
      sampling=self.sampling(),
      weight_temperature=jnp.float32(self.weight_temperature),
      ess_threshold=jnp.float32(self.ess_threshold or 0.0),
    )

  def static(self) -> "PFConfig":
    """This config with the traced settings replaced by fixed placeholders:
    the jit's static key (the values travel in `settings()`)."""
    top_p = self.sampling_top_p
    return dataclasses.replace(
      self,
      weight_temperature=1.0,
      sampling_temperature=1.0,
      sampling_top_p=None if top_p is None or top_p >= 1 else 0.5,
      ess_threshold=None if self.ess_threshold is None else 0.5,
    )

  def min_cache_size(self, padded_prompt_len: int) -> int:
    """KV slots a row needs: padded prompt + (K + look-ahead step) * S."""
    extra = 1 if self.lookahead else 0
    return padded_prompt_len + (self.max_steps + extra) * self.max_step_tokens


@flax.struct.dataclass
class PFSettings:
  """The traced part of a PFConfig (one compiled program serves every value).

  sampling: jaxllm.sampling.Sampling of the policy (temperature / top_p
    traced; top_k and which filters are on are static in its treedef).
  weight_temperature: float32 [] T of the weights.
  ess_threshold: float32 [] resample when ESS < threshold * N (used only
    when PFConfig.ess_threshold is not None).
  """

  sampling: Sampling
  weight_temperature: Any
  ess_threshold: Any


@flax.struct.dataclass
class Reference:
  """Particle Gibbs' reference trajectory, one per problem.

  step_tokens: int32 [P, K, S]; step_lengths: int32 [P, K]; step_ended:
  int32 [P, K] (BUDGET / DELIMITER / STOP); active: bool [] whether the
  sweep conditions on it (False in a plain first sweep).
  """

  step_tokens: Any
  step_lengths: Any
  step_ended: Any
  active: Any


@flax.struct.dataclass
class Particles:
  """Per-particle arrays (B rows), gathered together when resampling.

  step_tokens: int32 [B, K, S] each step's tokens, pad_id after its end.
  step_lengths: int32 [B, K] tokens per step (0 for steps not taken).
  step_ended: int32 [B, K] BUDGET / DELIMITER / STOP.
  n_steps: int32 [B] steps taken.
  finished: bool [B] the latest step ended with a stop sequence.
  scores: StepScoreAggregate [B] running aggregate of the step scores.
  twist: float32 [B] look-ahead log-twist log(L_t) / T of the latest step
    (0 without look-ahead or once finished).
  """

  step_tokens: Any
  step_lengths: Any
  step_ended: Any
  n_steps: Any
  finished: Any
  scores: StepScoreAggregate
  twist: Any


@flax.struct.dataclass
class PFState:
  """The step loop's carry.

  t: int32 [] steps run in this sweep. key: PRNG key.
  rows: stepping.Rows (model state, logits [B, V], scorer state; B rows).
  particles: Particles [B].
  log_weights: float32 [B] 'smc': accumulated log-weights (0 after a plain
    resample); 'prm_logit': the latest weights (informational).
  log_z: float32 [P] log-normaliser estimate so far.
  counters: stepping.StepCounters (compute spent in this sweep).
  """

  t: Any
  key: Any
  rows: Rows
  particles: Particles
  log_weights: Any
  log_z: Any
  counters: StepCounters


@flax.struct.dataclass
class SweepOutput:
  """What one sweep returns (stacked over sweeps by the scan).

  particles: Particles [B] at the end of the sweep. log_weights: float32
  [P, N] normalised final log-weights (untempered). log_z: float32 [P].
  ref_index: int32 [P] particle drawn from the final weights (the next
  reference). steps_run: int32 []. counters: StepCounters. logits: float
  [B, V] next-token logits, or None unless return_logits.
  """

  particles: Particles
  log_weights: Any
  log_z: Any
  ref_index: Any
  steps_run: Any
  counters: StepCounters
  logits: Any = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PFResult:
  """Final population of each problem (P problems, N particles).

  tokens [P, N, K*S] the generated tokens (steps concatenated, pad after);
  lengths [P, N]; step_tokens [P, N, K, S] / step_lengths [P, N, K] per step;
  n_steps [P, N] steps taken; finished [P, N] (ended with a stop sequence);
  log_weights [P, N] normalised final log-weights (untempered); weights
  [P, N] = exp(log_weights); best [P] argmax of the weights; scores [P, N]
  the latest step score; aggregated_scores [P, N] the PRM aggregate the
  weights used (PFConfig.score_aggregation; equals scores for 'last');
  log_z [P] log-normaliser estimate (last sweep); log_z_sweeps [n_sweeps,
  P]; ref_index [n_sweeps, P] particle drawn from each sweep's final
  weights (particle Gibbs' next reference); steps_run scalar; logits
  [P, N, V] next-token logits (only with return_logits).
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
  aggregated_scores: Any
  log_z: Any
  log_z_sweeps: Any
  ref_index: Any
  steps_run: Any
  logits: Any = None


# ----------------------------------------------------------------------------
# The jitted filter, step by step
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Run:
  """What every step of one traced run reads (static config and shapes, the
  model and scorer, and the traced params / settings it closes over)."""

  model: Any
  scorer: Any
  config: PFConfig  # static: never read its traced fields (use settings)
  params: Any
  scorer_params: Any
  settings: PFSettings
  P: int
  gibbs: bool  # some sweep conditions on a reference

  @property
  def N(self) -> int:
    return self.config.n_particles

  @property
  def K(self) -> int:
    return self.config.max_steps

  @property
  def S(self) -> int:
    return self.config.max_step_tokens

  @property
  def B(self) -> int:
    return self.P * self.N

  @property
  def smc(self) -> bool:
    return self.config.weighting == "smc"

  def blocks(self, x_B):
    """[B, ...] -> [P, N, ...] (one block of N rows per problem)."""
    return x_B.reshape(self.P, self.N, *x_B.shape[1:])

  def sample_step(self, rows: Rows, key, sampling, active_B):
    c = self.config
    return sample_step(
      self.model,
      self.params,
      rows.state,
      rows.logits_BxV,
      key,
      sampling,
      max_step_tokens=c.max_step_tokens,
      delimiter_ids=c.delimiter_ids,
      stop_ids=c.stop_ids,
      active_B=active_B,
      pad_id=c.pad_id,
    )


def _init_state(run: _Run, prompt_rows: Rows, key, n_contexts: int) -> PFState:
  """Fork the prefilled prompts into N particles each; empty trajectories."""
  B, K, S = run.B, run.K, run.S
  zi = lambda *s: jnp.zeros(s, jnp.int32)
  particles = Particles(
    step_tokens=jnp.full((B, K, S), run.config.pad_id, jnp.int32),
    step_lengths=zi(B, K),
    step_ended=zi(B, K),
    n_steps=zi(B),
    finished=jnp.zeros((B,), bool),
    scores=StepScoreAggregate.empty(B),
    twist=jnp.zeros((B,), jnp.float32),
  )
  return PFState(
    t=jnp.int32(0),
    key=key,
    rows=stepping.fork(run.model, run.scorer, prompt_rows, run.N),
    particles=particles,
    log_weights=jnp.zeros((B,), jnp.float32),
    log_z=jnp.zeros((run.P,), jnp.float32),
    counters=StepCounters.zeros(n_contexts),
  )


def _extend(run: _Run, v: PFState, ref: Reference, active_B, key):
  """Extend: sample one step for every active row; with a reference, replay
  its step t in slot 0 of each block instead (forced, one `extend` call).

  Returns (rows, Step [B], counters) with the generated / forced tokens and
  model calls counted.
  """
  ctx0 = run.model.lengths(v.rows.state)
  slot = jnp.arange(run.B, dtype=jnp.int32) % run.N
  is_ref = ref.active & (slot == 0)
  state, logits, step = run.sample_step(
    v.rows, key, run.settings.sampling, active_B & ~is_ref
  )
  n = v.counters.count_step(ctx0, step.length, run.S, into=("gen",))
  n = n.replace(calls=n.calls + step.calls)
  if run.gibbs:
    fork = fork_index(run.P, run.N)  # the P -> B fork: row b reads problem b // N
    at_t = lambda x: jnp.take(x[:, v.t], fork, axis=0)  # [P, ...] -> [B, ...]
    forced_on = active_B & is_ref
    state, logits, fstep = forced_step(
      run.model,
      run.params,
      state,
      logits,
      at_t(ref.step_tokens),
      at_t(ref.step_lengths),
      at_t(ref.step_ended),
      forced_on,
    )
    step = merge_steps(step, fstep, is_ref)
    n = n.count_step(ctx0, fstep.length, run.S, into=("forced",))
    n = n.replace(calls=n.calls + jnp.any(forced_on).astype(jnp.int32))
  return Rows(state, logits, v.rows.sstate), step, n


def _score(run: _Run, rows: Rows, step, active_B, ctx0_B, counters):
  """Score: the scorer reads the step's tokens (incrementally, for a reward
  model with its own cache). Returns (rows, score_B float32, counters)."""
  sstate, score = run.scorer.score(run.scorer_params, rows.sstate, step, active_B)
  counters = counters.count_step(ctx0_B, step.length, run.S, into=("scored",))
  counters = counters.replace(vcalls=counters.vcalls + 1)
  return rows.replace(sstate=sstate), score.astype(jnp.float32), counters


def _lookahead(run: _Run, rows: Rows, going_B, key, counters):
  """Look-ahead: one extra step per continuing row (greedy or sampled), scored
  and discarded. Returns (log-twist_B = log(max(L, eps)) / T, 0 for the other
  rows; counters with the look-ahead tokens and calls)."""
  c = run.config
  if not c.lookahead:
    return jnp.zeros((run.B,), jnp.float32), counters
  sampling = make_sampling(0.0) if c.lookahead == "greedy" else run.settings.sampling
  ctx1 = run.model.lengths(rows.state)
  _, _, la_step = run.sample_step(rows, key, sampling, going_B)
  _, la_score = run.scorer.score(run.scorer_params, rows.sstate, la_step, going_B)
  counters = counters.count_step(ctx1, la_step.length, run.S)
  counters = counters.replace(
    calls=counters.calls + la_step.calls, vcalls=counters.vcalls + 1
  )
  la_score = jnp.nan_to_num(la_score.astype(jnp.float32), nan=0.0)
  la_eps = max(c.score_eps, 1e-12)
  logpot = jnp.log(jnp.clip(la_score, la_eps, 1.0)) / run.settings.weight_temperature
  return jnp.where(going_B, logpot, 0.0), counters


def _record_step(
  run: _Run, p: Particles, step, score_B, active_B, finished_B, t
) -> Particles:
  """Write step t of the active rows into the trajectories and fold its score
  into the running aggregate."""
  pad = run.config.pad_id
  return p.replace(
    step_tokens=p.step_tokens.at[:, t].set(
      jnp.where(active_B[:, None], step.tokens, pad)
    ),
    step_lengths=p.step_lengths.at[:, t].set(jnp.where(active_B, step.length, 0)),
    step_ended=p.step_ended.at[:, t].set(jnp.where(active_B, step.ended, BUDGET)),
    n_steps=p.n_steps + active_B.astype(jnp.int32),
    finished=finished_B,
    scores=p.scores.add(score_B, active_B),
  )


def _weight(run: _Run, v: PFState, scores: StepScoreAggregate, active_B, twist_B):
  """Weight: log-weights [P, N] and log_z [P] from the aggregate PRM score.

  'smc': log w += where(active, log(r) / T, 0) + twist_t - twist_{t-1}
  (`resampling.reweight`, log_z += the evidence increment); 'prm_logit':
  log w = logit(r) / T + twist_t (log_z += log mean w, no meaning).
  """
  c, T = run.config, run.settings.weight_temperature
  r = scores.value(c.score_aggregation)
  if run.smc:
    pot = jnp.where(active_B, rs.prm_log_potential(r, T, c.score_eps), 0.0)
    pot = pot + twist_B - v.particles.twist
    logw, inc = jax.vmap(rs.reweight)(run.blocks(v.log_weights), run.blocks(pot))
    return logw, v.log_z + inc
  logw = run.blocks(rs.prm_logit_log_weights(r, T, c.score_eps) + twist_B)
  return logw, v.log_z + jax.vmap(rs.normalize_log_weights)(logw)[1]


def _proposal(run: _Run, logw_PxN, W_PxN, t):
  """Resampling distribution q [P, N]: W, or entropic-tempered softmax(log w / T_ent)."""
  c = run.config
  if not c.entropic:
    return W_PxN
  progress = t.astype(jnp.float32) / run.K
  temp = jax.vmap(lambda p: rs.entropic_temperature(p, progress, c.entropic))(W_PxN)
  return jax.vmap(rs.tempered_probs)(logw_PxN, temp)


def _resample(run: _Run, logw_PxN, log_z_P, t, last_iter, key, has_ref):
  """Resample: ancestors [P, N] within each block (identity where a block does
  not resample: ESS above threshold, or after the last step), the log-weights
  after resampling (W_a / q_a for SMC) and log_z with the proposal correction.

  Returns (ancestors_PxN, logw_PxN, log_z_P, do_P).
  """
  c, P, N = run.config, run.P, run.N
  logW, _ = jax.vmap(rs.log_normalize)(logw_PxN)
  W = jnp.exp(logW)
  q = _proposal(run, logw_PxN, W, t)
  if c.ess_threshold is None:
    do = jnp.ones((P,), bool)
  else:
    thr = run.settings.ess_threshold
    do = jax.vmap(lambda p: rs.should_resample(p, thr))(W)
  do = do & ~last_iter
  keys = jax.random.split(key, P)
  scheme = rs.get_scheme(c.scheme)
  anc = jax.vmap(lambda k, p: scheme(k, p, N))(keys, q)
  if run.gibbs:
    cond_anc = jax.vmap(lambda k, p: rs.conditional_resample(k, p, 0, c.scheme, 0))(
      keys, q
    )
    anc = jnp.where(has_ref, cond_anc, anc)
  anc = jnp.where(do[:, None], anc, jnp.arange(N, dtype=jnp.int32)[None])
  if run.smc:
    new = jnp.take_along_axis(logW, anc, 1) - jnp.take_along_axis(jnp.log(q), anc, 1)
    new = jnp.where(jnp.isnan(new), -jnp.inf, new)
    log_z_P = log_z_P + jnp.where(do, jax.vmap(_log_mean_exp)(new), 0.0)
    logw_PxN = jnp.where(do[:, None], new, logw_PxN)
  return anc, logw_PxN, log_z_P, do


def _gather(run: _Run, rows: Rows, particles: Particles, anc_PxN, do_P):
  """Gather the resampled rows (model / scorer state, logits, particles);
  skipped entirely when no block resamples. The ancestors are a blocked index
  (each relative to its problem's N rows, `jaxllm.cache.take_rows`), so with
  problems split over devices the gather moves nothing between them."""

  def gather(x):
    r, p = x
    return (
      stepping.reorder(run.model, run.scorer, r, anc_PxN),
      jax.tree_util.tree_map(lambda a: take_rows(a, anc_PxN), p),
    )

  return jax.lax.cond(jnp.any(do_P), gather, lambda x: x, (rows, particles))


def _pf_step(run: _Run, ref: Reference, v: PFState) -> PFState:
  """One iteration: extend, score, look ahead, weight, resample."""
  key, k_step, k_la, k_res = jax.random.split(v.key, 4)
  active = ~v.particles.finished
  ctx0 = run.model.lengths(v.rows.state)
  rows, step, counters = _extend(run, v, ref, active, k_step)
  rows, score, counters = _score(run, rows, step, active, ctx0, counters)
  finished = v.particles.finished | (active & (step.ended == STOP))
  last_iter = (v.t + 1 >= run.K) | jnp.all(finished)
  going = active & ~finished & ~last_iter
  twist, counters = _lookahead(run, rows, going, k_la, counters)
  particles = _record_step(run, v.particles, step, score, active, finished, v.t)
  logw, log_z = _weight(run, v, particles.scores, active, twist)
  anc, logw, log_z, do = _resample(run, logw, log_z, v.t, last_iter, k_res, ref.active)
  rows, particles = _gather(run, rows, particles.replace(twist=twist), anc, do)
  return PFState(
    t=v.t + 1,
    key=key,
    rows=rows,
    particles=particles,
    log_weights=logw.reshape(run.B),
    log_z=log_z,
    counters=counters,
  )


def _final_log_weights(run: _Run, v: PFState):
  """Final (untempered, no look-ahead) normalised log-weights [P, N]."""
  c = run.config
  if run.smc:
    raw = v.log_weights
  else:
    r = v.particles.scores.value(c.score_aggregation)
    raw = rs.prm_logit_log_weights(r, run.settings.weight_temperature, c.score_eps)
  logp, _ = jax.vmap(rs.log_normalize)(run.blocks(raw))
  return logp


def _finish_sweep(run: _Run, v: PFState):
  """Finish a sweep: final weights and the next reference drawn from them.
  Returns (key, next Reference, SweepOutput)."""
  logp = _final_log_weights(run, v)
  key, k_ref = jax.random.split(v.key)
  ref_idx = jax.vmap(lambda k, lp: jax.random.categorical(k, lp))(
    jax.random.split(k_ref, run.P), logp
  ).astype(jnp.int32)
  rows = jnp.arange(run.P) * run.N + ref_idx
  p = v.particles
  ref = Reference(
    step_tokens=p.step_tokens[rows],
    step_lengths=p.step_lengths[rows],
    step_ended=p.step_ended[rows],
    active=jnp.bool_(True),
  )
  out = SweepOutput(
    particles=p,
    log_weights=logp,
    log_z=v.log_z,
    ref_index=ref_idx,
    steps_run=v.t,
    counters=v.counters,
    logits=v.rows.logits_BxV if run.config.return_logits else None,
  )
  return key, ref, out


def _sweep(run: _Run, prompt_rows: Rows, n_contexts: int, carry, _):
  """One PF sweep (conditional on `ref` when ref.active): the step loop."""
  key, ref = carry
  v = _init_state(run, prompt_rows, key, n_contexts)
  v = jax.lax.while_loop(
    lambda v: (v.t < run.K) & ~jnp.all(v.particles.finished),
    lambda v: _pf_step(run, ref, v),
    v,
  )
  key, ref, out = _finish_sweep(run, v)
  return (key, ref), out


def _assemble(run: _Run, outs: SweepOutput):
  """PFResult of the last sweep, and the counters summed over sweeps."""
  c, P, N, K, S = run.config, run.P, run.N, run.K, run.S
  last = jax.tree_util.tree_map(lambda x: x[-1], outs)
  p = last.particles
  tokens, lengths = flatten_steps(p.step_tokens, p.step_lengths, c.pad_id)
  logp = last.log_weights
  result = PFResult(
    tokens=tokens.reshape(P, N, K * S),
    lengths=lengths.reshape(P, N),
    step_tokens=p.step_tokens.reshape(P, N, K, S),
    step_lengths=p.step_lengths.reshape(P, N, K),
    n_steps=p.n_steps.reshape(P, N),
    finished=p.finished.reshape(P, N),
    log_weights=logp,
    weights=jnp.exp(logp),
    best=jnp.argmax(logp, axis=1).astype(jnp.int32),
    scores=p.scores.last.reshape(P, N),
    aggregated_scores=p.scores.value(c.score_aggregation).reshape(P, N),
    log_z=last.log_z,
    log_z_sweeps=outs.log_z,
    ref_index=outs.ref_index,
    steps_run=last.steps_run,
    logits=last.logits.reshape(P, N, -1) if c.return_logits else None,
  )
  counts = jax.tree_util.tree_map(lambda x: x.sum(0), outs.counters)
  return result, counts


def _pf_impl(
  model,
  scorer,
  config: PFConfig,
  params,
  scorer_params,
  settings: PFSettings,
  tokens_PxT,
  lengths_P,
  key,
  init_ref: Optional[Reference],
  cache_size: int,
):
  """The jitted filter: prefill once, then `n_sweeps` sweeps (a scan)."""
  TRACE_COUNT["particle_filter"] += 1
  P = tokens_PxT.shape[0]
  run = _Run(
    model=model,
    scorer=scorer,
    config=config,
    params=params,
    scorer_params=scorer_params,
    settings=settings,
    P=P,
    gibbs=config.n_sweeps > 1 or init_ref is not None,
  )
  prompt_rows = stepping.prefill_prompts(
    model, params, scorer, scorer_params, tokens_PxT, lengths_P, cache_size
  )
  K, S = config.max_steps, config.max_step_tokens
  if init_ref is None:
    init_ref = Reference(
      step_tokens=jnp.full((P, K, S), config.pad_id, jnp.int32),
      step_lengths=jnp.zeros((P, K), jnp.int32),
      step_ended=jnp.zeros((P, K), jnp.int32),
      active=jnp.bool_(False),
    )
  sweep = lambda carry, x: _sweep(run, prompt_rows, cache_size + 1, carry, x)
  _, outs = jax.lax.scan(sweep, (key, init_ref), None, length=config.n_sweeps)
  return _assemble(run, outs)


_pf_jit = jax.jit(_pf_impl, static_argnames=("model", "scorer", "config", "cache_size"))


def _log_mean_exp(x_N):
  _, lse = rs.log_normalize(x_N)
  return lse - math.log(x_N.shape[0])


def _check_reference(model, config: PFConfig, init_reference, P: int) -> Reference:
  """Validated init_reference tuple -> Reference (active)."""
  K, S = config.max_steps, config.max_step_tokens
  if len(init_reference) != 3:
    raise ValueError("init_reference must be (step_tokens, step_lengths, step_ended)")
  rt = check_token_ids(
    "init_reference step_tokens", init_reference[0], getattr(model, "vocab_size", None)
  )
  rl, re = (np.asarray(x) for x in init_reference[1:])
  if rt.shape != (P, K, S) or rl.shape != (P, K) or re.shape != (P, K):
    raise ValueError(
      f"init_reference must be ([P,K,S], [P,K], [P,K]) = "
      f"({(P, K, S)}, {(P, K)}, {(P, K)}); got "
      f"{rt.shape}, {rl.shape}, {re.shape}"
    )
  if rl.dtype.kind not in "iu" or rl.min() < 0 or rl.max() > S:
    raise ValueError(f"init_reference step_lengths must be integers in [0, {S}]")
  try:
    rs.get_conditional(config.scheme)
  except ValueError as e:
    raise ValueError(f"init_reference (particle Gibbs): {e}") from None
  rt, rl, re = (jnp.asarray(x, jnp.int32) for x in (rt, rl, re))
  return Reference(
    step_tokens=rt, step_lengths=rl, step_ended=re, active=jnp.bool_(True)
  )


def run_particle_filter(
  model,
  params,
  scorer,
  scorer_params,
  prompts,
  key,
  config: PFConfig,
  *,
  prompt_lengths=None,
  init_reference=None,
):
  """Particle filter / particle Gibbs / entropic PF over a batch of problems.

  Args:
    model: decode-interface model (Transformer, BigramLM, ...); params its
      parameters. scorer / scorer_params: a step scorer (algorithms.scorers).
    prompts: list of P token lists, or a right-padded [P, T] array with
      `prompt_lengths` [P].
    key: PRNG key.
    config: PFConfig (one compiled program per static part and shape; the
      sampling settings and weight temperature are traced).
    init_reference: optional (step_tokens [P, K, S], step_lengths [P, K],
      step_ended [P, K]) reference trajectory: the first sweep is then already
      conditional (particle Gibbs started from a given reference).
  Returns: (PFResult, jaxllm.flops.Compute).

  Raises:
    ValueError: naming the argument or config field: PFConfig.pad_id /
      stop_ids / delimiter_ids, prompt or init_reference ids outside [0, V),
      malformed prompts (`jaxllm.generate.check_prompts`), prompt + steps
      beyond ModelConfig.max_seq_len or PFConfig.cache_size, a scheme
      without a conditional version with init_reference, or a model / scorer
      model without a ModelConfig that does not declare itself free
      (`stepping.compute_record`).
  """
  tokens, lengths, size = stepping.prepare_search(
    model, config, PFConfig, prompts, prompt_lengths
  )
  ref = None
  if init_reference is not None:
    ref = _check_reference(model, config, init_reference, tokens.shape[0])
  result, counts = _pf_jit(
    model,
    scorer,
    config.static(),
    params,
    scorer_params,
    config.settings(),
    tokens,
    lengths,
    key,
    ref,
    cache_size=size,
  )
  rows = tokens.shape[0] * config.n_particles
  return result, compute_record(model, scorer, lengths, counts, rows=rows)


def weighted_vote(answers, weights) -> list:
  """Weighted majority per problem: answers [P][N] hashables (None = no
  answer, ignored), weights [P, N]. Returns the answer with the largest total
  weight per problem (None if no particle has an answer).

  Raises:
    ValueError: when answers and weights disagree on P or N.
  """
  weights = np.asarray(weights, np.float64)
  if len(answers) != weights.shape[0]:
    raise ValueError(f"answers has {len(answers)} problems, weights {weights.shape[0]}")
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
