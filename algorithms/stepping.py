"""Step-level search plumbing shared by particle filtering, beam search / DVTS
and A*: one reasoning step for a whole batch of rows, inside jit.

Step-level search extends every live row by one *step*: tokens are sampled
until a step delimiter (e.g. the newline token), a stop token (EOS: the
solution is finished) or a per-step token budget. Rows end their step at
different lengths; a row that has ended stops committing tokens
(`valid = False`), so its cache stays exact.

A row is carried as (model state row, next-token logits row, scorer state
row): the logits after the committed prefix (`Rows`). Reordering rows
(forks, resampling, beam selection) gathers all three (`reorder`).

Contents
  sample_step / forced_step / merge_steps   one step per row (sampled/replayed)
  id_sequences                              delimiters / stops as token sequences
  id_tuple / check_config_ids / prepare_prompts   config ids and prompts
  prefill_prompts / fork / prefill_and_fork / reorder   prefill once, fork N
  flatten_steps                             concatenate a row's steps
  step_contexts / add_hist / StepCounters   exact compute counters in jit
  compute_record                            the Compute record (jaxllm.flops:
                                            flops_config / model_config)

Shape suffixes: B rows (= P problems x N rows per problem), P problems, N rows
per problem (or an index length), T padded prompt length, S step token budget,
K steps, V vocabulary, C context-histogram bins (cache_size + 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxllm import decoding
from jaxllm import flops as flops_lib

# fork_index is the core's (re-exported: algorithms.methods reads
# stepping.fork_index); model_config / flops_config are jaxllm.flops'.
from jaxllm.cache import take_rows
from jaxllm.config import ModelConfig
from jaxllm.decoding import fork_index, fork_rows  # noqa: F401 (re-exported)
from jaxllm.flops import flops_config, model_config
from jaxllm.generate import check_prompts
from jaxllm.sampling import Sampling, log_probs, sample
from jaxllm.validation import (
  INT32_LIMIT,
  check_int,
  check_length,
  check_token_id,
  check_token_ids,
  is_concrete,
  token_id_array,
)

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


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def id_sequences(name: str, ids) -> tuple:
  """A delimiter / stop set as Python ints, accepting token SEQUENCES.

  `ids` is an int (one single-token id), a flat sequence of ints (single-token
  ids; returned as a flat tuple of ints, as before) or a sequence whose items
  are ints or token-id sequences, e.g. `(2, (198, 198))` (returned as a tuple
  of int tuples, ints becoming 1-tuples). A sequence matches when a step's last
  tokens equal it (`sample_step`).

  Raises:
    ValueError: naming `name`, for non-integer ids, an empty sequence, or
      deeper nesting.
  """
  if _is_int(ids):
    return (int(ids),)
  if isinstance(ids, (np.ndarray, jax.Array)):
    return id_tuple(name, np.asarray(ids))
  if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
    return id_tuple(name, ids)  # raises the one "integer token ids" message
  items = list(ids)
  if all(_is_int(i) for i in items):
    return id_tuple(name, ids)
  out = []
  for item in items:
    seq = (int(item),) if _is_int(item) else id_tuple(name, item)
    if not seq:
      raise ValueError(f"{name} holds an empty token sequence: {ids!r:.200}")
    out.append(seq)
  return tuple(out)


def as_sequences(ids) -> tuple:
  """Normalised delimiter / stop set (`id_sequences`) as a tuple of int tuples."""
  return tuple(i if isinstance(i, tuple) else (i,) for i in ids)


def flat_ids(ids) -> tuple:
  """Every token id mentioned by a delimiter / stop set (for vocabulary checks)."""
  return tuple(t for seq in as_sequences(ids) for t in seq)


def _ends_with(toks_BxS, t, seqs):
  """bool [B]: the step's tokens 0..t end with one of `seqs` (static int tuples).

  Single tokens use a membership test; longer sequences compare the last
  L = max length tokens, right-aligned (a sequence longer than t + 1 tokens
  cannot match: it never reaches into the previous step)."""
  if not seqs:
    return jnp.zeros((toks_BxS.shape[0],), bool)
  L = max(len(q) for q in seqs)
  if L == 1:
    return _member(toks_BxS[:, t], [q[0] for q in seqs])
  pat = np.full((len(seqs), L), -1, np.int32)
  for d, q in enumerate(seqs):
    pat[d, L - len(q) :] = q
  need = np.array([len(q) for q in seqs], np.int32)
  idx = t - (L - 1) + jnp.arange(L)
  win = jnp.take(toks_BxS, jnp.clip(idx, 0, toks_BxS.shape[1] - 1), axis=1)
  eq = (win[:, None, :] == pat[None]) | (pat[None] < 0)  # [B, D, L]
  return jnp.any(jnp.all(eq, -1) & (t + 1 >= need)[None], -1)


def _step_end_sets(delimiter_ids, stop_ids, V: int, S: int):
  """Validated (delimiter, stop) matchers for sample_step: tuples of int tuples,
  or traced flat id arrays (single tokens, unchecked)."""
  out = []
  for name, ids in (("delimiter_ids", delimiter_ids), ("stop_ids", stop_ids)):
    if not is_concrete(ids):
      out.append(ids)
      continue
    seqs = as_sequences(id_sequences(name, ids))
    check_token_ids(name, [t for q in seqs for t in q], V)
    for q in seqs:
      if len(q) > S:
        raise ValueError(
          f"{name} sequence {q} is longer than max_step_tokens="
          f"{S}: it could never end a step"
        )
    out.append(seqs)
  return out


def _matches(toks_BxS, t, tok_B, ids):
  if isinstance(ids, tuple):
    return _ends_with(toks_BxS, t, ids)
  return _member(tok_B, ids)


def sample_step(
  model,
  params,
  state,
  logits_BxV,
  key,
  sampling: Sampling,
  *,
  max_step_tokens: int,
  delimiter_ids,
  stop_ids,
  active_B=None,
  pad_id: int = 0,
):
  """Extend each active row by one step. Returns (state, logits_BxV, Step).

  A step ends after the first token that completes a stop sequence (ended =
  STOP; stop wins over a delimiter ending at the same token), else one that
  completes a delimiter sequence (DELIMITER), else after S tokens (BUDGET).
  The delimiter / stop tokens are part of the step.

  Args:
    model / params / state / logits_BxV: the decode interface, its parameters
      and B rows of state with their next-token logits.
    key: PRNG key; sampling: the traced Sampling pytree (a new temperature
      does not recompile).
    max_step_tokens: S, static int >= 1 (the Step arrays' width).
    delimiter_ids / stop_ids: each an int, a flat sequence of single-token
      ids, or a sequence of token-id sequences (mixed with ints), e.g.
      `delimiter_ids=((198, 198), (271,))` for a blank line written as two
      "\n" tokens or one "\n\n" token (`id_sequences`). A sequence matches
      on the step's last tokens, never across the step boundary. Either set
      may be empty. Ids are in [0, V), V = logits_BxV.shape[-1]; a traced id
      array is taken as single-token ids (unchecked).
    active_B: bool [B] rows to extend (default all); inactive rows are
      untouched and get an empty step. pad_id: id in [0, V) after a step's end.

  Raises:
    ValueError: naming `max_step_tokens`, `delimiter_ids`, `stop_ids` or
      `pad_id` (checked at trace time when they are Python / numpy values),
      or a sequence longer than S.
  """
  V = logits_BxV.shape[-1]
  check_int("max_step_tokens", max_step_tokens, lo=1)
  S = max_step_tokens
  delims, stops = _step_end_sets(delimiter_ids, stop_ids, V, S)
  if is_concrete(pad_id):
    check_token_id("pad_id", pad_id, V)
  B = logits_BxV.shape[0]
  active = jnp.ones((B,), bool) if active_B is None else active_B
  state, logits, step = _step_loop(
    model, params, state, logits_BxV, key, sampling, S, delims, stops, active, pad_id
  )
  ended = jnp.where(active, step.ended, BUDGET)
  return state, logits, dataclasses.replace(step, ended=ended)


def _step_loop(
  model, params, state, logits_BxV, key, sampling, S, delims, stops, live, pad_id
):
  """`sample_step`'s token loop (its arguments validated): sample, extend and
  test the step's end for the `live` rows until none is live or S tokens.
  Returns (state, logits_BxV, Step)."""
  B = logits_BxV.shape[0]
  toks = jnp.full((B, S), pad_id, jnp.int32)
  lps = jnp.zeros((B, S), jnp.float32)
  ended = jnp.full((B,), BUDGET, jnp.int32)
  length = jnp.zeros((B,), jnp.int32)

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
    is_stop = live & _matches(toks, t, tok, stops)
    is_delim = live & ~is_stop & _matches(toks, t, tok, delims)
    ended = jnp.where(is_stop, STOP, jnp.where(is_delim, DELIMITER, ended))
    live = live & ~is_stop & ~is_delim
    return t + 1, state, logits, live, toks, lps, ended, length, key

  t, state, logits, _, toks, lps, ended, length, _ = jax.lax.while_loop(
    cond, body, (jnp.int32(0), state, logits_BxV, live, toks, lps, ended, length, key)
  )
  step = Step(tokens=toks, length=length, logprob=lps, ended=ended, calls=t)
  return state, logits, step


def reorder_rows(model, state, logits_BxV, index):
  """Gather rows of (state, logits) — resampling / beam selection / forks;
  index int32 [N] flat or [P, N] blocked (`jaxllm.cache.take_rows`)."""
  return model.reorder(state, index), take_rows(logits_BxV, index)


# ----------------------------------------------------------------------------
# Prompts: validation, bucketing and the cache size
# ----------------------------------------------------------------------------


def id_tuple(name: str, ids) -> tuple:
  """A config's token-id set as a tuple of Python ints.

  `ids` is a flat sequence of integers (the vocabulary range is checked later
  by `check_config_ids`, once the model is known).

  Raises:
    ValueError: naming `name`, for non-integers or a nested sequence.
  """
  arr = token_id_array(name, ids)
  if arr.ndim != 1:
    raise ValueError(f"{name} must be a flat sequence of token ids, got {ids!r:.200}")
  return tuple(int(i) for i in arr)


def normalize_step_config(config, prefix: str, positive, token_sequences=True):
  """The checks every step-level search config shares, in its __post_init__:
  `delimiter_ids` / `stop_ids` normalised (`id_sequences`, or `id_tuple` when
  token_sequences is False), `pad_id` an id, the fields named in `positive`
  positive ints, `cache_size` None or an int >= 1. Sets the normalised
  values on the frozen dataclass `config`.

  Raises:
    ValueError: naming the field as `{prefix}.{field}`.
  """
  ids = id_sequences if token_sequences else id_tuple
  put = lambda name, value: object.__setattr__(config, name, value)
  for name in ("delimiter_ids", "stop_ids"):
    put(name, ids(f"{prefix}.{name}", getattr(config, name)))
  put("pad_id", check_token_id(f"{prefix}.pad_id", config.pad_id, None))
  for name in positive:
    v = getattr(config, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{prefix}.{name} must be a positive int, got {v!r}")
  if config.cache_size is not None:
    put("cache_size", check_int(f"{prefix}.cache_size", config.cache_size, lo=1))


def check_config_ids(model, config, prefix: str) -> None:
  """Check a config's `delimiter_ids` / `stop_ids` (single ids or token
  sequences, `id_sequences`) against the model's vocabulary.

  Raises:
    ValueError: naming e.g. `PFConfig.stop_ids` for an id outside [0, V).
  """
  vocab = getattr(model, "vocab_size", None)
  for name in ("delimiter_ids", "stop_ids"):
    check_token_ids(f"{prefix}.{name}", flat_ids(getattr(config, name)), vocab)


def prepare_search(model, config, config_type: type, prompts, prompt_lengths):
  """The entry checks a step-level search shares: `config` is a
  `config_type`, its delimiter / stop ids fit the model's vocabulary
  (`check_config_ids`), and the prompts with the config's pad id and cache
  size (`prepare_prompts`, which needs `config.min_cache_size`).

  Returns:
    (tokens_PxT int32, lengths_P int32, cache_size int).

  Raises:
    ValueError: naming the config type or field (as those functions).
  """
  if not isinstance(config, config_type):
    raise ValueError(f"config must be a {config_type.__name__}, got {type(config)}")
  prefix = config_type.__name__
  check_config_ids(model, config, prefix)
  return prepare_prompts(
    model,
    prompts,
    prompt_lengths,
    config.pad_id,
    config.min_cache_size,
    config.cache_size,
    prefix=prefix,
  )


def prepare_prompts(
  model,
  prompts,
  prompt_lengths,
  pad_id: int,
  min_cache: Callable[[int], int],
  cache_size: int | None,
  prefix: str = "PFConfig",
):
  """Right-padded bucketed prompts, their lengths and a validated cache size.

  Args:
    model: a decode-interface model (its `vocab_size` and, through
      `model_config`, `max_seq_len` bound the prompts).
    prompts / prompt_lengths: `jaxllm.generate.check_prompts`'s convention (P
      token lists, or a right-padded [P, T] array with lengths [P]).
    pad_id: id written into the padding.
    min_cache: padded prompt length T -> KV slots the search needs per row
      (e.g. `PFConfig.min_cache_size`).
    cache_size: KV slots per row, or None for `min_cache(T)`.
    prefix: the config named in messages (e.g. "BeamConfig" -> "BeamConfig.pad_id").

  Returns:
    (tokens_PxT int32, lengths_P int32, cache_size int).

  Raises:
    ValueError: a bad pad id / prompt (`check_prompts`), or prompt + steps
      beyond the int32 range, ModelConfig.max_seq_len or `cache_size`.
  """
  tokens, lengths = check_prompts(
    model, prompts, prompt_lengths, pad_id, pad_id_name=f"{prefix}.pad_id"
  )
  T = tokens.shape[1]
  need = min_cache(T)
  steps = need - T
  what = f"prompt length {int(lengths.max())} + steps ({steps} tokens)"
  check_length(
    what, int(lengths.max()) + steps, "the int32 position range", INT32_LIMIT
  )
  max_seq = getattr(model_config(model), "max_seq_len", None)
  if max_seq is not None:
    check_length(what, int(lengths.max()) + steps, "ModelConfig.max_seq_len", max_seq)
  size = need if cache_size is None else cache_size
  check_length(
    f"padded prompt length {T} + steps ({steps} tokens)",
    need,
    f"{prefix}.cache_size",
    size,
  )
  return jnp.asarray(tokens), jnp.asarray(lengths), size


# ----------------------------------------------------------------------------
# Prefill once, fork N rows per problem
# ----------------------------------------------------------------------------


@flax.struct.dataclass
class Rows:
  """The per-row search state every step-level search carries (B rows).

  state: the model's decode state (KV cache) with B rows.
  logits_BxV: next-token logits after each row's committed prefix.
  sstate: the step scorer's state with B rows (e.g. a reward model's cache).
  """

  state: Any
  logits_BxV: Any
  sstate: Any


def prefill_prompts(
  model, params, scorer, scorer_params, tokens_PxT, lengths_P, cache_size: int
) -> Rows:
  """Prefill every prompt ONCE in the model and in the scorer: Rows with B = P.

  tokens_PxT / lengths_P: right-padded prompts (`prepare_prompts`);
  cache_size: static KV slots per row. Costs one model call (counted by
  `compute_record` as the prompt tokens' prefill).
  """
  state, logits = model.prefill(params, tokens_PxT, lengths_P, cache_size)
  sstate = scorer.init(scorer_params, tokens_PxT, lengths_P, cache_size)
  return Rows(state=state, logits_BxV=logits, sstate=sstate)


def reorder(model, scorer, rows: Rows, index) -> Rows:
  """Gather rows of the model state, the logits and the scorer state.

  index: int32 [N], the source row of each new row, or [P, N] blocked: each
  entry relative to its problem's block of rows (`jaxllm.cache.take_rows`),
  which a search within problems should pass, since it keeps a population
  sharded over devices local (forks, resampling, beam selection). The one
  row gather of every step-level search.
  """
  state, logits = reorder_rows(model, rows.state, rows.logits_BxV, index)
  return Rows(state=state, logits_BxV=logits, sstate=scorer.reorder(rows.sstate, index))


def fork(model, scorer, prompt_rows: Rows, n_rows: int) -> Rows:
  """Fork P prefilled prompt rows into B = P * N rows (row p * N + i = copy i of
  prompt p) by a blocked gather (`reorder` with `jaxllm.decoding.fork_rows`):
  the prompt is never re-prefilled."""
  P = prompt_rows.logits_BxV.shape[0]
  return reorder(model, scorer, prompt_rows, fork_rows(P, n_rows))


def prefill_and_fork(
  model,
  params,
  scorer,
  scorer_params,
  tokens_PxT,
  lengths_P,
  cache_size: int,
  n_rows: int,
) -> Rows:
  """Prefill each prompt once and fork it into N rows: Rows with B = P * N,
  row p * N + i = sample i of problem p.

  The model's state and logits are `jaxllm.decoding.prefill_and_fork`'s; the
  scorer is prefilled once too (`scorer.init`) and forked with the same
  `fork_rows` index (no gather for N = 1, as in the core).
  """
  state, logits = decoding.prefill_and_fork(
    model, params, tokens_PxT, lengths_P, cache_size, n_rows
  )
  sstate = scorer.init(scorer_params, tokens_PxT, lengths_P, cache_size)
  if n_rows != 1:
    sstate = scorer.reorder(sstate, fork_rows(tokens_PxT.shape[0], n_rows))
  return Rows(state=state, logits_BxV=logits, sstate=sstate)


# ----------------------------------------------------------------------------
# Forced steps and step bookkeeping
# ----------------------------------------------------------------------------


def forced_step(
  model, params, state, logits_BxV, tokens_BxS, length_B, ended_B, active_B
):
  """Replay given step tokens (ragged) through the model: (state, logits_BxV, Step).

  tokens_BxS: the step's tokens (row b uses its first length_B[b]); ended_B:
  how each step ended (BUDGET / DELIMITER / STOP). Inactive rows are untouched
  and get an empty step. One `extend` call of S tokens (particle Gibbs'
  reference replay); the Step's logprob are the model's (temperature 1).
  """
  B, S = tokens_BxS.shape
  n = jnp.where(active_B, length_B, 0)
  valid = jnp.arange(S)[None, :] < n[:, None]
  state, lg_BxSxV = model.extend(params, state, tokens_BxS, valid)
  before = jnp.concatenate([logits_BxV[:, None], lg_BxSxV[:, :-1]], axis=1)
  lp = jnp.take_along_axis(log_probs(before), tokens_BxS[..., None], -1)[..., 0]
  last = jnp.take_along_axis(lg_BxSxV, jnp.maximum(n - 1, 0)[:, None, None], 1)[:, 0]
  logits = jnp.where((n > 0)[:, None], last.astype(logits_BxV.dtype), logits_BxV)
  step = Step(
    tokens=jnp.where(valid, tokens_BxS, 0),
    length=n,
    logprob=jnp.where(valid, lp, 0.0),
    ended=jnp.where(active_B, ended_B, BUDGET),
    calls=jnp.int32(1),
  )
  return state, logits, step


def merge_steps(a: Step, b: Step, use_b_B) -> Step:
  """Row-wise choice between two Steps (use_b_B: bool [B]); calls add up."""
  pick = lambda x, y: jnp.where(use_b_B.reshape(-1, *([1] * (x.ndim - 1))), y, x)
  return Step(
    tokens=pick(a.tokens, b.tokens),
    length=pick(a.length, b.length),
    logprob=pick(a.logprob, b.logprob),
    ended=pick(a.ended, b.ended),
    calls=a.calls + b.calls,
  )


def flatten_steps(step_tokens_BxKxS, step_len_BxK, pad_id: int):
  """Concatenate each row's K steps: (tokens_Bx(K*S) pad-filled, lengths_B)."""
  B, K, S = step_tokens_BxKxS.shape
  offs = jnp.cumsum(step_len_BxK, axis=1) - step_len_BxK  # [B, K]
  s = jnp.arange(S)[None, None, :]
  pos = jnp.where(s < step_len_BxK[..., None], offs[..., None] + s, K * S)
  out = jnp.full((B, K * S), pad_id, jnp.int32)
  rows = jnp.arange(B)[:, None]
  out = out.at[rows, pos.reshape(B, K * S)].set(
    step_tokens_BxKxS.reshape(B, K * S), mode="drop"
  )
  return out, step_len_BxK.sum(1)


# ----------------------------------------------------------------------------
# Compute accounting: counters in jit, the Compute record outside
# ----------------------------------------------------------------------------


def step_contexts(lengths_B, length_B, S: int):
  """(context_BxS, valid_BxS) of a step's tokens: token s of row b attends to
  lengths_B[b] + s + 1 keys (lengths_B = committed tokens before the step);
  valid marks the step's length_B[b] tokens."""
  s = jnp.arange(S, dtype=jnp.int32)[None, :]
  return lengths_B[:, None] + s + 1, s < length_B[:, None]


def add_hist(hist_C, ctx_BxS, valid_BxS):
  """Add the valid tokens to a histogram over contexts (hist_C[c] = tokens that
  attended to c keys; contexts >= C are dropped). FLOPs follow exactly from it."""
  idx = jnp.where(valid_BxS, ctx_BxS, hist_C.shape[0])
  return hist_C.at[idx.ravel()].add(1.0, mode="drop")


@flax.struct.dataclass
class StepCounters:
  """What a step-level search spent, counted inside jit (C = cache_size + 1).

  gen: float32 [C] generated (sampled) tokens by context, look-ahead included.
  forced: float32 [C] tokens forced through the model (a replayed reference).
  scored: float32 [C] step tokens the scorer read, by context.
  calls: int32 [] model calls after the prefill (one per sampled position,
    one per forced step).
  vcalls: int32 [] scorer calls after its prefill.
  """

  gen: Any
  forced: Any
  scored: Any
  calls: Any
  vcalls: Any

  @classmethod
  def zeros(cls, n_contexts: int) -> StepCounters:
    """All-zero counters with histograms of `n_contexts` bins."""
    h = jnp.zeros((n_contexts,), jnp.float32)
    return cls(gen=h, forced=h, scored=h, calls=jnp.int32(0), vcalls=jnp.int32(0))

  def count_step(
    self, lengths_B, length_B, S: int, into: Sequence[str] = ("gen", "scored")
  ) -> StepCounters:
    """Add one step's tokens (lengths_B committed tokens before it, length_B
    in it, S its static width) to the histograms named in `into` (any of
    "gen", "forced", "scored")."""
    ctx, valid = step_contexts(lengths_B, length_B, S)
    return self.replace(**{k: add_hist(getattr(self, k), ctx, valid) for k in into})


def hist_flops(cfg: ModelConfig | None, hist_C) -> float:
  """FLOPs of the tokens in a context histogram (0 for cfg None)."""
  if cfg is None:
    return 0.0
  hist = np.asarray(hist_C, np.float64)
  return float(hist @ flops_lib.decode_flops(cfg, np.arange(hist.shape[0])))


def prompt_flops(cfg: ModelConfig | None, lengths_P) -> float:
  """FLOPs of prefilling prompts of the given lengths (0 for cfg None)."""
  if cfg is None:
    return 0.0
  return float(np.sum(flops_lib.prefill_flops(cfg, np.asarray(lengths_P))))


def scorer_model(scorer):
  """The model a scorer runs (`scorer.model`), or None for a free scorer (e.g.
  ConfidenceScorer, which reuses the policy's log-probs)."""
  return getattr(scorer, "model", None)


def compute_record(
  model, scorer, prompt_lengths, counts, *, count_flops: bool = True, rows: int = 0
) -> flops_lib.Compute:
  """The Compute record of a step-level search from its in-jit counters.

  Args:
    model: the policy (decode interface); scorer: the step scorer.
    prompt_lengths: [P] prompt lengths (each prompt prefilled once; forks free).
    counts: StepCounters (or a dict with the same keys), summed over sweeps.
    count_flops: False reports every FLOPs field as 0 (explicit opt-out).
    rows: the rows every decode call runs (the search's batch); executed
      tokens = rows x counted calls (0: not counted).

  Returns:
    jaxllm.flops.Compute: prefill = prompts + forced tokens, generated tokens,
    model calls (1 prefill + counted calls); for a scorer that wraps a model
    (`scorer.model`): verifier tokens (prompts + scored tokens), calls, FLOPs
    (a reward model's decode_flops include an LM head it does not run: an
    upper bound by 2 * V * D per token).

  Raises:
    ValueError: with count_flops, when the policy or the scorer's model has no
      ModelConfig and does not declare itself free (`flops_config`).
  """
  if isinstance(counts, dict):
    counts = StepCounters(**counts)
  smodel = scorer_model(scorer)
  cfg = vcfg = None
  if count_flops:
    cfg = flops_config(model, "model")
    if smodel is not None:
      vcfg = flops_config(smodel, "scorer model")
  lengths = np.asarray(prompt_lengths)
  gen, forced, scored = (
    np.asarray(x, np.float64) for x in (counts.gen, counts.forced, counts.scored)
  )
  rec = flops_lib.Compute(
    prefill_tokens=float(lengths.sum() + forced.sum()),
    generated_tokens=float(gen.sum()),
    model_calls=float(1 + int(counts.calls)),
    executed_tokens=float(rows * int(counts.calls)),
    prefill_flops=prompt_flops(cfg, lengths) + hist_flops(cfg, forced),
    decode_flops=hist_flops(cfg, gen),
  )
  if smodel is not None:
    rec.verifier_tokens = float(lengths.sum() + scored.sum())
    rec.verifier_calls = float(1 + int(counts.vcalls))
    rec.verifier_flops = prompt_flops(vcfg, lengths) + hist_flops(vcfg, scored)
  return rec
