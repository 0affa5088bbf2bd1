"""One reasoning step for a whole batch of rows, inside jit.

Step-level search (particle filtering, beam search, DVTS, A*) extends every
live row by one *step*: tokens are sampled until a step delimiter (e.g. the
newline token), a stop token (EOS: the solution is finished) or a per-step
token budget. Rows end their step at different lengths; a row that has ended
stops committing tokens (`valid = False`), so its cache stays exact.

A row is carried as (model state row, next-token logits row): the logits after
the committed prefix. Reordering rows (resampling, beam selection) must gather
both (`reorder_rows`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from jaxllm.sampling import Sampling, log_probs, sample
from jaxllm.validation import (check_int, check_token_id, check_token_ids,
                               is_concrete)

BUDGET, DELIMITER, STOP = 0, 1, 2  # how a step ended


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Step:
  tokens: Any  # [B, S] step tokens, pad after the step's end
  length: Any  # [B] tokens in the step (0 for inactive rows)
  logprob: Any  # [B, S] model log-prob (temperature 1) of each token
  ended: Any  # [B] BUDGET, DELIMITER or STOP
  calls: Any  # scalar: model calls made (one per token position)


def _member(tok_B, ids):
  ids = jnp.asarray(ids, jnp.int32).reshape(-1)
  return jnp.any(tok_B[:, None] == ids[None, :], axis=-1)


def sample_step(model, params, state, logits_BxV, key, sampling: Sampling, *,
                max_step_tokens: int, delimiter_ids: Sequence[int],
                stop_ids: Sequence[int], active_B=None, pad_id: int = 0):
  """Extend each active row by one step. Returns (state, logits_BxV, Step).

  `max_step_tokens` (S) is static (the Step arrays' width), an int >= 1; the
  delimiter and stop tokens are part of the step. Inactive rows are
  untouched. `delimiter_ids` / `stop_ids` / `pad_id` are token ids in
  [0, V) with V = logits_BxV.shape[-1]; either id set may be empty (a step
  then ends only by the other or by the budget S).

  Raises:
    ValueError: naming `max_step_tokens`, `delimiter_ids`, `stop_ids` or
      `pad_id` (checked at trace time when they are Python / numpy values;
      traced id arrays are not checked).
  """
  V = logits_BxV.shape[-1]
  check_int("max_step_tokens", max_step_tokens, lo=1)
  for name, ids in (("delimiter_ids", delimiter_ids), ("stop_ids", stop_ids)):
    if is_concrete(ids):
      check_token_ids(name, ids, V)
  if is_concrete(pad_id):
    check_token_id("pad_id", pad_id, V)
  B = logits_BxV.shape[0]
  S = max_step_tokens
  active = jnp.ones((B,), bool) if active_B is None else active_B
  toks = jnp.full((B, S), pad_id, jnp.int32)
  lps = jnp.zeros((B, S), jnp.float32)
  ended = jnp.full((B,), BUDGET, jnp.int32)
  length = jnp.zeros((B,), jnp.int32)
  live = active

  def cond(c):
    t, _, _, live = c[:4]
    return (t < S) & jnp.any(live)

  def body(c):
    t, state, logits, live, toks, lps, ended, length, key = c
    key, sub = jax.random.split(key)
    tok = sample(sub, logits, sampling)
    lp = jnp.take_along_axis(log_probs(logits), tok[:, None], axis=1)[:, 0]
    tok = jnp.where(live, tok, pad_id)
    toks = toks.at[:, t].set(tok)
    lps = lps.at[:, t].set(jnp.where(live, lp, 0.0))
    length = length + live.astype(jnp.int32)
    state, nxt = model.extend(params, state, tok[:, None], live[:, None])
    logits = jnp.where(live[:, None], nxt[:, 0], logits)
    is_stop = live & _member(tok, stop_ids)
    is_delim = live & ~is_stop & _member(tok, delimiter_ids)
    ended = jnp.where(is_stop, STOP, jnp.where(is_delim, DELIMITER, ended))
    live = live & ~is_stop & ~is_delim
    return t + 1, state, logits, live, toks, lps, ended, length, key

  t, state, logits, _, toks, lps, ended, length, _ = jax.lax.while_loop(
      cond, body,
      (jnp.int32(0), state, logits_BxV, live, toks, lps, ended, length, key))
  return state, logits, Step(tokens=toks, length=length,
                             logprob=lps, ended=jnp.where(active, ended, BUDGET),
                             calls=t)


def reorder_rows(model, state, logits_BxV, index_N):
  """Gather rows of (state, logits) — resampling / beam selection / forks."""
  return model.reorder(state, index_N), jnp.take(logits_BxV, index_N, axis=0)
