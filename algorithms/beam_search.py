"""PRM beam search and DVTS (diverse verifier tree search), in one jit.

Both keep N rows per problem (P problems -> one batch of B = P * N rows) and
run rounds of one reasoning step each (`sample_step`), scored by any step
scorer. Rows are split into groups of G rows; each round every live row
proposes one candidate step, the top E candidates of each group (by score)
survive and each survivor is expanded `beam_width` (M) times by forking its
KV-cache / logits / scorer-state rows (`stepping.reorder`). The split is the
method's *group rule* (`GROUP_RULES`, the one place `BeamConfig.method` is
read):

  beam: one group of G = N rows per problem, E = N / M   (PRM beam search)
  dvts: N / M independent groups (subtrees) of G = M rows, E = 1
        (each subtree greedily keeps its best of M; subtrees never mix)

Round 0 forks the prompt (prefilled once per problem) into N rows, so the
first N candidates are independent samples. Optional look-ahead: before a
candidate is scored, `lookahead` further greedy (temperature-0) steps are
taken from it and the score of the last one is used; the look-ahead tokens are
discarded (the states are functional values) but counted in the Compute record.

Finished candidates (step ended with a stop token) take part in the selection
like the others; a kept finished candidate goes to its group's pool of
completed solutions (capacity G, the best G by score are kept) instead of
being expanded, so its M child rows go idle. Finished candidates that are not
kept are discarded (a bad complete solution is pruned like a bad partial one).
A group ends when it has no live row; at the step cap `max_steps` the kept
candidates of the last round go to the pool unfinished. The answer is the
pool entry with the best score across the problem's groups; all pool entries
and scores are returned for weighted voting. NaN / -inf scores rank below
every finite score (but a live candidate always ranks above an idle row).

Shape letters (this module)
  P  problems            N  paths per problem (n_paths)   M  beam width
  B  = P * N rows        G  rows per group                NG = B / G groups
  E  candidates kept per group per round                  R  rounds (max_steps)
  S  tokens per step (max_step_tokens)                    V  vocabulary
  T  padded prompt length    C  context-histogram bins (cache_size + 1)

One round, step by step (each a function below)
  _expand   every live row samples one step (traced `Sampling`)
  _score    the scorer scores it (after `lookahead` greedy steps); rank
  _select   the top E candidates of every group
  _keep     kept finished candidates enter their group's pool (best G kept)
  _fork     row j of a group continues kept candidate j // M
and after the loop, _finish builds the BeamResult.

Sampling settings travel as a traced `Sampling` pytree, so a temperature /
top-p sweep does not recompile (`BeamConfig.static_part` is the jit key).
Compute accounting is `stepping.StepCounters` / `stepping.compute_record`
(exact contexts; a model without a ModelConfig must declare itself FLOPs-free;
verifier cost only for scorers that wrap a model).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import flax.struct
import jax
import jax.numpy as jnp

from algorithms.stepping import (
  STOP,
  Rows,
  StepCounters,
  compute_record,
  flatten_steps,
  normalize_step_config,
  prefill_and_fork,
  prepare_search,
  reorder,
  sample_step,
)
from jaxllm.cache import flat_index
from jaxllm.sampling import Sampling, make_sampling

TRACE_COUNT = {"beam_search": 0}  # incremented at trace time (compile checks)
_WORST = -1e30  # rank of a live candidate with a NaN / -inf score


# ----------------------------------------------------------------------------
# Group rules: how beam search and DVTS differ
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BeamRule:
  """PRM beam search: a problem's N rows are one group; the best N / M
  candidates survive and each is expanded M times."""

  def group_size(self, n_paths: int, beam_width: int) -> int:
    return n_paths

  def keep(self, n_paths: int, beam_width: int) -> int:
    return n_paths // beam_width


@dataclasses.dataclass(frozen=True)
class DvtsRule:
  """DVTS: N / M independent subtrees of M rows; each keeps its best
  candidate and expands it M times."""

  def group_size(self, n_paths: int, beam_width: int) -> int:
    return beam_width

  def keep(self, n_paths: int, beam_width: int) -> int:
    return 1


GROUP_RULES = {"beam": BeamRule(), "dvts": DvtsRule()}  # BeamConfig.method
METHODS = tuple(GROUP_RULES)
# Sampling values travel as a traced `Sampling`; the jit key holds these.
_SAMPLING = dict(sampling_temperature=1.0, sampling_top_k=None, sampling_top_p=None)


@dataclasses.dataclass(frozen=True)
class BeamConfig:
  """Beam search / DVTS settings (hashable; shape fields recompile, sampling
  values do not).

  method: 'beam' or 'dvts' (`GROUP_RULES`); n_paths N, beam_width M
  (N % M == 0); max_steps R rounds; max_step_tokens S per step; delimiter_ids
  / stop_ids end a step / a solution; lookahead k greedy steps before
  scoring; sampling_* for the candidate steps (traced: `sampling()`);
  cache_size KV slots per row (default padded prompt + (R + lookahead) * S);
  pad_id the id written into padding; return_trace records every round
  (candidates, scores, kept indices) for inspection.

  Raises (on construction):
    ValueError: naming the field: an unknown method, non-positive sizes,
      N not a multiple of M, a negative lookahead, empty stop_ids, malformed
      token ids (checked against the vocabulary by `run_beam_search`).
  """

  method: str = "beam"
  n_paths: int = 16
  beam_width: int = 4
  max_steps: int = 16
  max_step_tokens: int = 32
  delimiter_ids: tuple = ()
  stop_ids: tuple = ()
  lookahead: int = 0
  sampling_temperature: float = 1.0
  sampling_top_k: Optional[int] = None
  sampling_top_p: Optional[float] = None
  cache_size: Optional[int] = None
  pad_id: int = 0
  return_trace: bool = False

  def __post_init__(self):
    normalize_step_config(
      self,
      "BeamConfig",
      ("n_paths", "beam_width", "max_steps", "max_step_tokens"),
      token_sequences=False,
    )
    if self.method not in GROUP_RULES:
      raise ValueError(
        f"BeamConfig.method must be one of {METHODS}, got {self.method!r}"
      )
    if self.n_paths % self.beam_width:
      raise ValueError(
        f"BeamConfig.n_paths={self.n_paths} must be a multiple of "
        f"beam_width={self.beam_width}"
      )
    if (
      isinstance(self.lookahead, bool)
      or not isinstance(self.lookahead, int)
      or self.lookahead < 0
    ):
      raise ValueError(
        f"BeamConfig.lookahead must be an int >= 0, got {self.lookahead!r}"
      )
    if not self.stop_ids:
      raise ValueError("BeamConfig.stop_ids is empty: beams could never finish")

  @property
  def group_size(self) -> int:
    """G: rows per group (the method's group rule)."""
    return GROUP_RULES[self.method].group_size(self.n_paths, self.beam_width)

  @property
  def keep(self) -> int:
    """E: candidates kept per group per round (the method's group rule)."""
    return GROUP_RULES[self.method].keep(self.n_paths, self.beam_width)

  def sampling(self) -> Sampling:
    """The candidate steps' sampling settings as a traced `Sampling`.

    Raises:
      ValueError: naming the bad setting (`make_sampling`).
    """
    return make_sampling(
      self.sampling_temperature, self.sampling_top_k, self.sampling_top_p
    )

  def static_part(self) -> "BeamConfig":
    """The config with neutral sampling values: the jit cache key."""
    return dataclasses.replace(self, **_SAMPLING)

  def min_cache_size(self, padded_prompt_len: int) -> int:
    """KV slots a row needs: padded prompt + (R + lookahead) * S."""
    return padded_prompt_len + (self.max_steps + self.lookahead) * self.max_step_tokens


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class BeamResult:
  """Completed solutions per problem (pool of N = n_groups * G entries).

  tokens [P, N, R*S], lengths [P, N], step_tokens [P, N, R, S], step_lengths
  [P, N, R]; scores [P, N] (-inf = empty slot); finished [P, N] (ended with a
  stop token; False for truncated or empty); group [P, N] subtree of the
  entry; best [P] index of the best entry; rounds scalar. trace (only with
  return_trace) is a dict, per round r: cand_tokens [R, B, S], cand_lengths
  [R, B], cand_scores [R, B], cand_active [R, B], cand_stop [R, B], source
  [R, B] (row of round r-1 whose prefix row b extended; -1 in round 0) and
  kept [R, NG, E] (indices within the group).
  """

  tokens: Any
  lengths: Any
  step_tokens: Any
  step_lengths: Any
  scores: Any
  finished: Any
  group: Any
  best: Any
  rounds: Any
  trace: Any = None


# ----------------------------------------------------------------------------
# Loop state
# ----------------------------------------------------------------------------


@flax.struct.dataclass
class Pool:
  """Each group's completed solutions (the best G by score)."""

  traj: Any  # int32 [NG, G, R, S] step tokens (pad_id after each step)
  length: Any  # int32 [NG, G, R] step lengths
  score: Any  # float32 [NG, G] rank score; -inf = empty slot
  finished: Any  # bool [NG, G] ended with a stop token (else truncated)


@flax.struct.dataclass
class Trace:
  """Every round's candidates (return_trace); see BeamResult.trace."""

  cand_tokens: Any  # int32 [R, B, S]
  cand_lengths: Any  # int32 [R, B]
  cand_scores: Any  # float32 [R, B]
  cand_active: Any  # bool [R, B]
  cand_stop: Any  # bool [R, B]
  source: Any  # int32 [R, B]
  kept: Any  # int32 [R, NG, E]


@flax.struct.dataclass
class BeamLoop:
  """The carry of the round loop."""

  t: Any  # int32 [] rounds done
  key: Any  # PRNG key
  rows: Rows  # B rows: model state, logits [B, V], scorer state
  traj: Any  # int32 [B, R, S] each row's steps so far
  tlen: Any  # int32 [B, R] their lengths
  alive: Any  # bool [B] the row extends a kept, unfinished candidate
  source: Any  # int32 [B] the previous round's row it continues (-1: prompt)
  pool: Pool
  counts: StepCounters  # C bins
  trace: Optional[Trace]  # None without return_trace


@flax.struct.dataclass
class Selection:
  """One round's survivors, per group."""

  kept: Any  # int32 [NG, E] kept candidates (index within the group)
  row: Any  # int32 [NG, E] their batch rows
  done: Any  # bool [NG, E] kept and finished (or the last round): to the pool
  go: Any  # bool [NG, E] kept and unfinished: to be expanded


class _Env(NamedTuple):
  """What every step of one traced search reads (a plain bundle)."""

  model: Any
  scorer: Any
  cfg: BeamConfig  # static part
  params: Any
  sparams: Any
  sampling: Sampling
  P: int
  N: int
  M: int
  R: int
  S: int
  G: int
  E: int

  @property
  def B(self) -> int:
    return self.P * self.N

  @property
  def NG(self) -> int:
    return self.B // self.G

  def step_kw(self) -> dict:
    c = self.cfg
    return dict(
      max_step_tokens=self.S,
      delimiter_ids=c.delimiter_ids,
      stop_ids=c.stop_ids,
      pad_id=c.pad_id,
    )


# ----------------------------------------------------------------------------
# One round, step by step
# ----------------------------------------------------------------------------


def _init(env: _Env, tokens_PxT, lengths_P, key, cache_size: int) -> BeamLoop:
  """Prefill each prompt once and fork it into N rows; empty pools."""
  B, R, S, NG, G = env.B, env.R, env.S, env.NG, env.G
  pad = env.cfg.pad_id
  rows = prefill_and_fork(
    env.model,
    env.params,
    env.scorer,
    env.sparams,
    tokens_PxT,
    lengths_P,
    cache_size,
    env.N,
  )
  pool = Pool(
    traj=jnp.full((NG, G, R, S), pad, jnp.int32),
    length=jnp.zeros((NG, G, R), jnp.int32),
    score=jnp.full((NG, G), -jnp.inf, jnp.float32),
    finished=jnp.zeros((NG, G), bool),
  )
  trace = None
  if env.cfg.return_trace:
    z = lambda *s: jnp.zeros(s, jnp.int32)
    trace = Trace(
      cand_tokens=z(R, B, S),
      cand_lengths=z(R, B),
      cand_scores=jnp.full((R, B), -jnp.inf, jnp.float32),
      cand_active=jnp.zeros((R, B), bool),
      cand_stop=jnp.zeros((R, B), bool),
      source=jnp.full((R, B), -1, jnp.int32),
      kept=z(R, NG, env.E),
    )
  return BeamLoop(
    t=jnp.int32(0),
    key=key,
    rows=rows,
    traj=jnp.full((B, R, S), pad, jnp.int32),
    tlen=jnp.zeros((B, R), jnp.int32),
    alive=jnp.ones((B,), bool),
    source=jnp.full((B,), -1, jnp.int32),
    pool=pool,
    counts=StepCounters.zeros(cache_size + 1),
    trace=trace,
  )


def _expand(env: _Env, rows: Rows, counts: StepCounters, active_B, key):
  """Every active row samples one candidate step (traced sampling settings).
  Returns (Rows, Step, counts)."""
  ctx0 = env.model.lengths(rows.state)
  state, logits, step = sample_step(
    env.model,
    env.params,
    rows.state,
    rows.logits_BxV,
    key,
    env.sampling,
    active_B=active_B,
    **env.step_kw(),
  )
  counts = counts.count_step(ctx0, step.length, env.S).replace(
    calls=counts.calls + step.calls
  )
  return rows.replace(state=state, logits_BxV=logits), step, counts


def _score(env: _Env, rows: Rows, counts: StepCounters, step, active_B, stop_B, key):
  """Score the candidates: the scorer's score of the new step, or, with
  lookahead k, of the k-th greedy step taken after it (unfinished
  candidates only; the look-ahead states are discarded, their tokens and
  scorer calls counted).

  Returns (Rows with the scorer state advanced, rank float32 [B], score
  float32 [B], counts). rank: the score with NaN / -inf mapped to _WORST for
  active rows and -inf for idle rows, so a live candidate outranks an idle
  row."""
  sstate, score = env.scorer.score(env.sparams, rows.sstate, step, active_B)
  counts = counts.replace(vcalls=counts.vcalls + 1)
  rows = rows.replace(sstate=sstate)
  la_rows, la_live = rows, active_B & ~stop_B
  greedy = make_sampling(0.0)
  for _ in range(env.cfg.lookahead):
    ctx = env.model.lengths(la_rows.state)
    st, lg, la_step = sample_step(
      env.model,
      env.params,
      la_rows.state,
      la_rows.logits_BxV,
      key,
      greedy,
      active_B=la_live,
      **env.step_kw(),
    )
    ss, la_sc = env.scorer.score(env.sparams, la_rows.sstate, la_step, la_live)
    la_rows = Rows(state=st, logits_BxV=lg, sstate=ss)
    score = jnp.where(la_live, la_sc, score)
    counts = counts.count_step(ctx, la_step.length, env.S).replace(
      calls=counts.calls + la_step.calls,
      vcalls=counts.vcalls + jnp.any(la_live).astype(jnp.int32),
    )
    la_live = la_live & (la_step.ended != STOP)
  score = score.astype(jnp.float32)
  rank = jnp.where(
    active_B, jnp.where(jnp.isnan(score), _WORST, jnp.maximum(score, _WORST)), -jnp.inf
  )
  return rows, rank, score, counts


def _select(env: _Env, rank_B, active_B, stop_B, t) -> Selection:
  """The top E candidates of every group (ties: lowest index). A kept
  candidate is done if it finished or this is the last round R."""
  NG, G = env.NG, env.G
  _, kept = jax.lax.top_k(rank_B.reshape(NG, G), env.E)
  kept = kept.astype(jnp.int32)
  row = kept + (jnp.arange(NG, dtype=jnp.int32) * G)[:, None]
  ok = jnp.take(active_B, row)
  done = ok & (jnp.take(stop_B, row) | (t + 1 >= env.R))
  return Selection(kept=kept, row=row, done=done, go=ok & ~done)


def _keep(env: _Env, pool: Pool, sel: Selection, rank_B, stop_B, traj, tlen):
  """The group's pool becomes the best G of (pool, kept done candidates),
  by rank (ties: pool entries first, then lower index)."""
  NG, G = env.NG, env.G
  new_score = jnp.where(sel.done, jnp.take(rank_B, sel.row), -jnp.inf)
  all_score = jnp.concatenate([pool.score, new_score], 1)  # [NG, G + E]
  top_s, top_i = jax.lax.top_k(all_score, G)

  def best(old, new):
    both = jnp.concatenate([old, new], 1)
    idx = top_i.reshape(NG, G, *([1] * (both.ndim - 2)))
    return jnp.take_along_axis(both, idx, axis=1)

  return Pool(
    traj=best(pool.traj, traj[sel.row]),
    length=best(pool.length, tlen[sel.row]),
    score=top_s,
    finished=best(pool.finished, sel.done & jnp.take(stop_B, sel.row)),
  )


def _fork(env: _Env, rows: Rows, sel: Selection):
  """Row j of a group continues kept candidate j // M (a gather of the model
  / scorer rows within the group: a blocked index, so groups split over
  devices move nothing); rows of a done or unkept candidate go idle.
  Returns (Rows, index_B source rows, alive_B)."""
  j = jnp.arange(env.G) // env.M
  in_group = jnp.take(sel.kept, j, axis=1)  # [NG, G]
  alive = jnp.take(sel.go, j, axis=1).reshape(env.B)
  rows = reorder(env.model, env.scorer, rows, in_group)
  return rows, flat_index(in_group, env.B), alive


def _record(trace: Trace, t, step, score_B, active_B, stop_B, source_B, kept) -> Trace:
  """Write round t's candidates into the trace."""
  return Trace(
    cand_tokens=trace.cand_tokens.at[t].set(step.tokens),
    cand_lengths=trace.cand_lengths.at[t].set(step.length),
    cand_scores=trace.cand_scores.at[t].set(score_B),
    cand_active=trace.cand_active.at[t].set(active_B),
    cand_stop=trace.cand_stop.at[t].set(stop_B),
    source=trace.source.at[t].set(source_B),
    kept=trace.kept.at[t].set(kept),
  )


def _round(env: _Env, v: BeamLoop) -> BeamLoop:
  """One round: expand, score, select, keep (pool), fork."""
  t, active = v.t, v.alive
  key, k_step = jax.random.split(v.key)
  rows, step, counts = _expand(env, v.rows, v.counts, active, k_step)
  stop = active & (step.ended == STOP)
  rows, rank, score, counts = _score(env, rows, counts, step, active, stop, k_step)
  pad = env.cfg.pad_id
  traj = v.traj.at[:, t].set(jnp.where(active[:, None], step.tokens, pad))
  tlen = v.tlen.at[:, t].set(jnp.where(active, step.length, 0))
  sel = _select(env, rank, active, stop, t)
  pool = _keep(env, v.pool, sel, rank, stop, traj, tlen)
  rows, index, alive = _fork(env, rows, sel)
  trace = v.trace
  if trace is not None:
    trace = _record(trace, t, step, score, active, stop, v.source, sel.kept)
  return BeamLoop(
    t=t + 1,
    key=key,
    rows=rows,
    traj=traj[index],
    tlen=tlen[index],
    alive=alive,
    source=index,
    pool=pool,
    counts=counts,
    trace=trace,
  )


def _finish(env: _Env, v: BeamLoop) -> BeamResult:
  """The pools as per-problem results (N entries per problem)."""
  P, N, R, S, NG, G = env.P, env.N, env.R, env.S, env.NG, env.G
  pool = v.pool
  toks, lens = flatten_steps(
    pool.traj.reshape(NG * G, R, S), pool.length.reshape(NG * G, R), env.cfg.pad_id
  )
  scores = pool.score.reshape(P, N)
  groups = jnp.broadcast_to((jnp.arange(NG) % (N // G))[:, None], (NG, G))
  trace = None
  if v.trace is not None:
    trace = {f.name: getattr(v.trace, f.name) for f in dataclasses.fields(v.trace)}
  return BeamResult(
    tokens=toks.reshape(P, N, R * S),
    lengths=lens.reshape(P, N),
    step_tokens=pool.traj.reshape(P, N, R, S),
    step_lengths=pool.length.reshape(P, N, R),
    scores=scores,
    finished=pool.finished.reshape(P, N),
    group=groups.reshape(P, N),
    best=jnp.argmax(scores, axis=1).astype(jnp.int32),
    rounds=v.t,
    trace=trace,
  )


def _beam_impl(
  model,
  scorer,
  config: BeamConfig,
  params,
  scorer_params,
  tokens_PxT,
  lengths_P,
  key,
  sampling: Sampling,
  cache_size: int,
):
  """The whole search (jitted as `_beam_jit`; model, scorer, the static
  config and cache_size are static). Returns (BeamResult, StepCounters)."""
  TRACE_COUNT["beam_search"] += 1
  c = config
  env = _Env(
    model=model,
    scorer=scorer,
    cfg=c,
    params=params,
    sparams=scorer_params,
    sampling=sampling,
    P=tokens_PxT.shape[0],
    N=c.n_paths,
    M=c.beam_width,
    R=c.max_steps,
    S=c.max_step_tokens,
    G=c.group_size,
    E=c.keep,
  )
  v = _init(env, tokens_PxT, lengths_P, key, cache_size)
  v = jax.lax.while_loop(
    lambda v: (v.t < env.R) & jnp.any(v.alive), lambda v: _round(env, v), v
  )
  return _finish(env, v), v.counts


_beam_jit = jax.jit(
  _beam_impl, static_argnames=("model", "scorer", "config", "cache_size")
)


def run_beam_search(
  model,
  params,
  scorer,
  scorer_params,
  prompts,
  key,
  config: BeamConfig,
  *,
  prompt_lengths=None,
):
  """PRM beam search (config.method='beam') or DVTS ('dvts').

  Source: the search-and-learn baselines (Hugging Face, 2024) as summarised
  in ALGORITHMS.md ("Beam search and DVTS").
  One compiled program per (model, scorer, static config, shapes); the
  sampling values are traced.

  Args:
    model / params: a decode-interface model and its parameters.
    scorer / scorer_params: a step scorer (algorithms.scorers).
    prompts: P token lists, or [P, T] with prompt_lengths (the convention of
      `jaxllm.generate.check_prompts`).
    key: PRNG key.
    config: BeamConfig.

  Returns:
    (BeamResult, jaxllm.flops.Compute).

  Raises:
    ValueError: naming the argument or config field: config.pad_id /
      stop_ids / delimiter_ids or prompt ids outside [0, V), malformed
      prompts, bad sampling settings, prompt + max_steps * max_step_tokens
      beyond ModelConfig.max_seq_len or config.cache_size, or a model without
      a ModelConfig that does not declare itself FLOPs-free
      (`stepping.compute_record`)."""
  tokens, lengths, size = prepare_search(
    model, config, BeamConfig, prompts, prompt_lengths
  )
  result, counts = _beam_jit(
    model,
    scorer,
    config.static_part(),
    params,
    scorer_params,
    tokens,
    lengths,
    key,
    config.sampling(),
    cache_size=size,
  )
  rows = tokens.shape[0] * config.n_paths
  return result, compute_record(model, scorer, lengths, counts, rows=rows)


def run_dvts(
  model, params, scorer, scorer_params, prompts, key, config: BeamConfig, **kw
):
  """DVTS: `run_beam_search` with method='dvts' (same arguments, returns and
  Raises)."""
  return run_beam_search(
    model,
    params,
    scorer,
    scorer_params,
    prompts,
    key,
    dataclasses.replace(config, method="dvts"),
    **kw,
  )
