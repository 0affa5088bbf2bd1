"""PRM beam search and DVTS (diverse verifier tree search), in one jit.

Both keep N rows per problem (P problems -> one batch of B = P * N rows) and
run rounds of one reasoning step each (`sample_step`), scored by any step
scorer. Rows are split into groups of G rows; each round every live row
proposes one candidate step, the top `keep` candidates of each group (by
score) survive and each survivor is expanded `beam_width` (M) times by
forking its KV-cache / logits / scorer-state rows (`reorder_rows`):

  beam: one group of G = N rows per problem, keep = N / M   (PRM beam search)
  dvts: N / M independent groups (subtrees) of G = M rows, keep = 1
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

Compute accounting follows algorithms/particle_filter.py (exact contexts,
FLOPs 0 for models without a `cfg`, verifier cost only for scorers that wrap a
model).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from algorithms.particle_filter import (add_hist, check_config_ids,
                                        compute_record, flatten_steps, id_tuple,
                                        prepare_prompts, step_contexts)
from algorithms.stepping import STOP, reorder_rows, sample_step
from jaxllm.sampling import make_sampling
from jaxllm.validation import check_int, check_token_id

TRACE_COUNT = {"beam_search": 0}
METHODS = ("beam", "dvts")
_WORST = -1e30  # rank of a live candidate with a NaN / -inf score


@dataclasses.dataclass(frozen=True)
class BeamConfig:
  """Static settings. n_paths N, beam_width M (N % M == 0); method 'beam' or
  'dvts'; max_steps rounds; max_step_tokens S per step; lookahead k greedy
  steps before scoring; sampling_* for the candidate steps; cache_size KV
  slots per row (default padded prompt + (K + lookahead) * S); pad_id the id
  written into padding; return_trace records every round (candidates,
  scores, kept indices) for inspection. Token ids (stop / delimiter / pad)
  are checked for type here and against the model's vocabulary by
  `run_beam_search` (ValueError naming the field)."""

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
    for name in ("delimiter_ids", "stop_ids"):
      object.__setattr__(self, name, id_tuple(f"BeamConfig.{name}",
                                              getattr(self, name)))
    object.__setattr__(self, "pad_id", check_token_id("BeamConfig.pad_id",
                                                      self.pad_id, None))
    if self.cache_size is not None:
      object.__setattr__(self, "cache_size", check_int(
          "BeamConfig.cache_size", self.cache_size, lo=1))
    if self.method not in METHODS:
      raise ValueError(f"BeamConfig.method must be one of {METHODS}, got "
                       f"{self.method!r}")
    for name in ("n_paths", "beam_width", "max_steps", "max_step_tokens"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"BeamConfig.{name} must be a positive int, got {v!r}")
    if self.n_paths % self.beam_width:
      raise ValueError(f"BeamConfig.n_paths={self.n_paths} must be a multiple of "
                       f"beam_width={self.beam_width}")
    if isinstance(self.lookahead, bool) or not isinstance(self.lookahead, int) \
        or self.lookahead < 0:
      raise ValueError(f"BeamConfig.lookahead must be an int >= 0, got "
                       f"{self.lookahead!r}")
    if not self.stop_ids:
      raise ValueError("BeamConfig.stop_ids is empty: beams could never finish")

  @property
  def group_size(self) -> int:
    return self.n_paths if self.method == "beam" else self.beam_width

  @property
  def keep(self) -> int:
    return self.n_paths // self.beam_width if self.method == "beam" else 1

  def sampling(self):
    return make_sampling(self.sampling_temperature, self.sampling_top_k,
                         self.sampling_top_p)

  def min_cache_size(self, padded_prompt_len: int) -> int:
    return padded_prompt_len + (self.max_steps + self.lookahead) * self.max_step_tokens


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class BeamResult:
  """Completed solutions per problem (pool of N = n_groups * G entries).

  tokens [P, N, K*S], lengths [P, N], step_tokens [P, N, K, S], step_lengths
  [P, N, K]; scores [P, N] (-inf = empty slot); finished [P, N] (ended with a
  stop token; False for truncated or empty); group [P, N] subtree of the
  entry; best [P] index of the best entry; rounds scalar. trace (only with
  return_trace), per round r: cand_tokens [R, B, S], cand_lengths [R, B],
  cand_scores [R, B], cand_active [R, B], cand_stop [R, B], source [R, B]
  (row of round r-1 whose prefix row b extended; -1 in round 0) and kept
  [R, P * n_groups, keep] (indices within the group).
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


def _beam_impl(model, scorer, config: BeamConfig, params, scorer_params, tokens_PxT,
               lengths_P, key, cache_size: int):
  TRACE_COUNT["beam_search"] += 1
  c = config
  P = tokens_PxT.shape[0]
  N, M, R, S = c.n_paths, c.beam_width, c.max_steps, c.max_step_tokens
  G, Kp = c.group_size, c.keep
  B = P * N
  NG = B // G  # groups in the batch
  C = cache_size + 1
  sampling = c.sampling()
  greedy = make_sampling(0.0)
  kw = dict(max_step_tokens=S, delimiter_ids=c.delimiter_ids, stop_ids=c.stop_ids,
            pad_id=c.pad_id)

  state_p, logits_p = model.prefill(params, tokens_PxT, lengths_P, cache_size)
  sstate_p = scorer.init(scorer_params, tokens_PxT, lengths_P, cache_size)
  fork = jnp.repeat(jnp.arange(P, dtype=jnp.int32), N)
  state, logits = reorder_rows(model, state_p, logits_p, fork)
  sstate = scorer.reorder(sstate_p, fork)
  z = lambda *s, dt=jnp.int32: jnp.zeros(s, dt)
  v0 = dict(
      t=jnp.int32(0), key=key, state=state, logits=logits, sstate=sstate,
      traj=jnp.full((B, R, S), c.pad_id, jnp.int32), tlen=z(B, R),
      alive=jnp.ones((B,), bool), source=jnp.full((B,), -1, jnp.int32),
      pool_traj=jnp.full((NG, G, R, S), c.pad_id, jnp.int32),
      pool_len=z(NG, G, R), pool_score=jnp.full((NG, G), -jnp.inf, jnp.float32),
      pool_fin=jnp.zeros((NG, G), bool),
      n=dict(gen=z(C, dt=jnp.float32), forced=z(C, dt=jnp.float32),
             scored=z(C, dt=jnp.float32), calls=z(), vcalls=z()))
  if c.return_trace:
    v0["tr"] = dict(cand_tokens=z(R, B, S), cand_lengths=z(R, B),
                    cand_scores=jnp.full((R, B), -jnp.inf, jnp.float32),
                    cand_active=jnp.zeros((R, B), bool),
                    cand_stop=jnp.zeros((R, B), bool),
                    source=jnp.full((R, B), -1, jnp.int32), kept=z(R, NG, Kp))

  def cond(v):
    return (v["t"] < R) & jnp.any(v["alive"])

  def body(v):
    t = v["t"]
    key, k_step = jax.random.split(v["key"])
    active = v["alive"]
    n = dict(v["n"])
    ctx0 = model.lengths(v["state"])
    state, logits, step = sample_step(model, params, v["state"], v["logits"], k_step,
                                      sampling, active_B=active, **kw)
    sstate, score = scorer.score(scorer_params, v["sstate"], step, active)
    ctx, valid = step_contexts(ctx0, step.length, S)
    n["gen"] = add_hist(n["gen"], ctx, valid)
    n["scored"] = add_hist(n["scored"], ctx, valid)
    n["calls"] = n["calls"] + step.calls
    n["vcalls"] = n["vcalls"] + 1
    stop = active & (step.ended == STOP)
    # Look-ahead: k greedy steps from each unfinished candidate, then discarded.
    la_state, la_logits, la_sstate = state, logits, sstate
    la_live = active & ~stop
    for _ in range(c.lookahead):
      la_ctx = model.lengths(la_state)
      la_state, la_logits, la_step = sample_step(model, params, la_state, la_logits,
                                                 k_step, greedy, active_B=la_live, **kw)
      la_sstate, la_sc = scorer.score(scorer_params, la_sstate, la_step, la_live)
      score = jnp.where(la_live, la_sc, score)
      ctx, valid = step_contexts(la_ctx, la_step.length, S)
      n["gen"] = add_hist(n["gen"], ctx, valid)
      n["scored"] = add_hist(n["scored"], ctx, valid)
      n["calls"] = n["calls"] + la_step.calls
      n["vcalls"] = n["vcalls"] + jnp.any(la_live).astype(jnp.int32)
      la_live = la_live & (la_step.ended != STOP)
    score = score.astype(jnp.float32)
    rank = jnp.where(active, jnp.where(jnp.isnan(score), _WORST,
                                       jnp.maximum(score, _WORST)), -jnp.inf)
    traj = v["traj"].at[:, t].set(jnp.where(active[:, None], step.tokens, c.pad_id))
    tlen = v["tlen"].at[:, t].set(jnp.where(active, step.length, 0))

    # Selection: top `keep` candidates of every group.
    _, kept = jax.lax.top_k(rank.reshape(NG, G), Kp)  # [NG, Kp] local
    kept = kept.astype(jnp.int32)
    kept_row = kept + (jnp.arange(NG, dtype=jnp.int32) * G)[:, None]
    kept_ok = jnp.take(active, kept_row)
    kept_done = kept_ok & (jnp.take(stop, kept_row) | (t + 1 >= R))
    kept_go = kept_ok & ~kept_done

    # Pool: best G of (pool, kept finished candidates).
    new_score = jnp.where(kept_done, jnp.take(rank, kept_row), -jnp.inf)
    all_score = jnp.concatenate([v["pool_score"], new_score], 1)  # [NG, G + Kp]
    all_traj = jnp.concatenate([v["pool_traj"], traj[kept_row]], 1)
    all_len = jnp.concatenate([v["pool_len"], tlen[kept_row]], 1)
    all_fin = jnp.concatenate([v["pool_fin"], kept_done & jnp.take(stop, kept_row)], 1)
    top_s, top_i = jax.lax.top_k(all_score, G)
    take = lambda x: jnp.take_along_axis(x, top_i.reshape(NG, G, *([1] * (x.ndim - 2))),
                                         axis=1)
    pool = dict(pool_traj=take(all_traj), pool_len=take(all_len), pool_score=top_s,
                pool_fin=take(all_fin))

    # Expansion: row j of a group continues kept candidate j // M.
    j = jnp.arange(G) // M
    index = jnp.take(kept_row, j, axis=1).reshape(B)
    alive = jnp.take(kept_go, j, axis=1).reshape(B)
    state, logits = reorder_rows(model, state, logits, index)
    sstate = scorer.reorder(sstate, index)
    out = dict(t=t + 1, key=key, state=state, logits=logits, sstate=sstate,
               traj=traj[index], tlen=tlen[index], alive=alive, source=index, n=n,
               **pool)
    if c.return_trace:
      tr = v["tr"]
      out["tr"] = dict(
          cand_tokens=tr["cand_tokens"].at[t].set(step.tokens),
          cand_lengths=tr["cand_lengths"].at[t].set(step.length),
          cand_scores=tr["cand_scores"].at[t].set(score),
          cand_active=tr["cand_active"].at[t].set(active),
          cand_stop=tr["cand_stop"].at[t].set(stop),
          source=tr["source"].at[t].set(v["source"]), kept=tr["kept"].at[t].set(kept))
    return out

  v = jax.lax.while_loop(cond, body, v0)
  Np = N  # pool entries per problem
  toks, lens = flatten_steps(v["pool_traj"].reshape(NG * G, R, S),
                             v["pool_len"].reshape(NG * G, R), c.pad_id)
  scores = v["pool_score"].reshape(P, Np)
  groups = jnp.broadcast_to((jnp.arange(NG) % (N // G))[:, None], (NG, G))
  result = BeamResult(
      tokens=toks.reshape(P, Np, R * S), lengths=lens.reshape(P, Np),
      step_tokens=v["pool_traj"].reshape(P, Np, R, S),
      step_lengths=v["pool_len"].reshape(P, Np, R), scores=scores,
      finished=v["pool_fin"].reshape(P, Np), group=groups.reshape(P, Np),
      best=jnp.argmax(scores, axis=1).astype(jnp.int32), rounds=v["t"],
      trace=v.get("tr"))
  return result, v["n"]


_beam_jit = jax.jit(_beam_impl, static_argnames=("model", "scorer", "config",
                                                 "cache_size"))


def run_beam_search(model, params, scorer, scorer_params, prompts, key,
                    config: BeamConfig, *, prompt_lengths=None):
  """PRM beam search (config.method='beam') or DVTS ('dvts').

  prompts: P token lists, or [P, T] with prompt_lengths (the convention of
  `jaxllm.generate.check_prompts`). Returns (BeamResult, jaxllm.flops.Compute).

  Raises:
    ValueError: naming the argument or config field: config.pad_id /
      stop_ids / delimiter_ids or prompt ids outside [0, V), malformed
      prompts, or prompt + max_steps * max_step_tokens beyond
      ModelConfig.max_seq_len or config.cache_size."""
  if not isinstance(config, BeamConfig):
    raise ValueError(f"config must be a BeamConfig, got {type(config)}")
  check_config_ids(model, config, "BeamConfig")
  tokens, lengths, size = prepare_prompts(model, prompts, prompt_lengths,
                                          config.pad_id, config.min_cache_size,
                                          config.cache_size, prefix="BeamConfig")
  result, counts = _beam_jit(model, scorer, config, params, scorer_params, tokens,
                             lengths, key, cache_size=size)
  return result, compute_record(model, scorer, lengths, counts)


def run_dvts(model, params, scorer, scorer_params, prompts, key, config: BeamConfig,
             **kw):
  """DVTS: `run_beam_search` with method='dvts'."""
  return run_beam_search(model, params, scorer, scorer_params, prompts, key,
                         dataclasses.replace(config, method="dvts"), **kw)
