"""Batched generation: one prefill, then a `lax.while_loop` decode.

Works with any model behind the decode interface (jaxllm.decoding). Prompts
of different lengths share a batch (right-padded, per-row lengths). Prompt
lengths are padded up to a bucket so a new length in the same bucket reuses
the compiled program; the per-row token budget (`max_new_B`) is an array, so
sweeping budgets below `max_new_tokens` does not recompile either.
`bucket_length` is jaxllm's one bucketing function (jaxllm.train uses it too,
with its "multiple" rounding policy).

Shape letters: B rows (prompts, times num_samples after the fork), T
bucketed prompt length, N max_new_tokens, V vocab.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.decoding import prefill_and_fork
from jaxllm.sampling import Sampling, log_probs, make_sampling, sample
from jaxllm.validation import (
  INT32_LIMIT,
  check_int,
  check_length,
  check_token_id,
  check_token_ids,
  token_id_array,
)

TRACE_COUNT = {"generate": 0}  # incremented at trace time (compile checks)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class GenerateOutput:
  tokens: Any  # [B, N] generated tokens (pad_id after a row stops)
  lengths: Any  # [B] tokens generated per row, stop token included
  logprobs: Any  # [B, N] model log-prob (temperature 1, unfiltered) per token
  steps: Any  # scalar: decode steps run (model calls after the prefill)


BUCKET_POLICIES = ("pow2", "multiple")


def bucket_length(
  n: int,
  buckets: Optional[Sequence[int]] = None,
  *,
  policy: str = "pow2",
  multiple: int = 16,
) -> int:
  """The padded length for a sequence of n tokens: the smallest bucket >= n.

  The one bucketing function of jaxllm (prompts here, training batches in
  jaxllm.train). With explicit `buckets` the smallest one >= n; otherwise the
  rounding `policy`:
    "pow2"      powers of two from `multiple` (16, 32, 64, ...): few distinct
                shapes, hence few compilations (prompts; the default).
    "multiple"  the next multiple of `multiple` (16, 32, 48, ...): less
                padding where the shape set matters less (training batches).

  Args:
    n: the length to cover, an int >= 1 (tokens).
    buckets: allowed lengths (any order), or None for the policy.
    policy: one of BUCKET_POLICIES. multiple: the rounding unit, >= 1.

  Returns:
    The bucket, a Python int >= n.

  Raises:
    ValueError: n < 1, an unknown policy, multiple < 1, or n larger than
      every bucket ("length n exceeds the largest bucket ...").
  """
  n = check_int("length", n, lo=1)
  if buckets:
    for b in sorted(buckets):
      if b >= n:
        return int(b)
    raise ValueError(f"length {n} exceeds the largest bucket {max(buckets)}")
  multiple = check_int("multiple", multiple, lo=1)
  if policy == "multiple":
    return int(-(-n // multiple) * multiple)
  if policy != "pow2":
    raise ValueError(f"bucket policy must be one of {BUCKET_POLICIES}, got {policy!r}")
  b = multiple
  while b < n:
    b *= 2
  return b


def _generate_impl(
  model,
  params,
  tokens_BxT,
  lengths_B,
  key,
  sampling,
  stop_ids,
  max_new_B,
  pad_id,
  *,
  max_new_tokens: int,
  cache_size: int,
  num_samples: int,
):
  TRACE_COUNT["generate"] += 1
  # Each prompt prefilled once, its state forked into num_samples rows.
  state, logits = prefill_and_fork(
    model, params, tokens_BxT, lengths_B, cache_size, num_samples
  )
  B = logits.shape[0]
  out = jnp.full((B, max_new_tokens), pad_id, jnp.int32)
  lps = jnp.zeros((B, max_new_tokens), jnp.float32)
  done = max_new_B <= 0
  n_gen = jnp.zeros((B,), jnp.int32)

  def cond(c):
    step, _, _, done, *_ = c
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(c):
    step, state, logits, done, n_gen, out, lps, key = c
    key, sub = jax.random.split(key)
    tok = sample(sub, logits, sampling)
    lp = jnp.take_along_axis(log_probs(logits), tok[:, None], axis=1)[:, 0]
    tok = jnp.where(done, pad_id, tok)
    out = out.at[:, step].set(tok)
    lps = lps.at[:, step].set(jnp.where(done, 0.0, lp))
    n_gen = n_gen + (~done).astype(jnp.int32)
    is_stop = jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
    done = done | is_stop | (n_gen >= max_new_B)
    state, nxt = model.extend(params, state, tok[:, None])
    return step + 1, state, nxt[:, 0], done, n_gen, out, lps, key

  init = (jnp.int32(0), state, logits, done, n_gen, out, lps, key)
  step, _, _, _, n_gen, out, lps, _ = jax.lax.while_loop(cond, body, init)
  return GenerateOutput(tokens=out, lengths=n_gen, logprobs=lps, steps=step)


_generate_jit = jax.jit(
  _generate_impl,
  static_argnames=("model", "max_new_tokens", "cache_size", "num_samples"),
)


def _prompt_list(prompts) -> list:
  """`prompts` (a list of token-id lists, or rows of a [B, T] array) as a
  list of 1-D int64 arrays; raises ValueError naming `prompts`."""
  if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__"):
    raise ValueError(
      f"prompts must be a list of token-id lists, or a [B, T] "
      f"array with prompt_lengths [B]; got {prompts!r:.200}"
    )
  if len(prompts) == 0:
    raise ValueError("prompts is empty")
  out = []
  for i, p in enumerate(prompts):
    arr = token_id_array("prompts", p)
    if arr.ndim != 1:
      raise ValueError(
        f"prompts must be a list of token-id lists, or a "
        f"[B, T] array with prompt_lengths [B]; prompts[{i}] "
        f"has shape {arr.shape}"
      )
    if arr.size == 0:
      raise ValueError(f"every prompt needs at least one token (prompts[{i}] is empty)")
    out.append(arr)
  return out


def pad_prompts(
  prompts: Sequence[Sequence[int]],
  pad_id: int = 0,
  buckets: Optional[Sequence[int]] = None,
):
  """Right-pad token lists to a bucketed length: (tokens_BxT, lengths_B).

  Checks the form (a non-empty list of non-empty integer lists) and that ids
  fit int32; the vocabulary range is `check_prompts`' job.

  Raises:
    ValueError: naming `prompts` or `pad_id`.
  """
  pad_id = check_token_id("pad_id", pad_id, INT32_LIMIT + 1)
  rows = _prompt_list(prompts)
  check_token_ids("prompts", np.concatenate(rows), INT32_LIMIT + 1)
  lens = np.array([len(p) for p in rows], np.int32)
  T = bucket_length(int(lens.max()), buckets)
  arr = np.full((len(rows), T), pad_id, np.int32)
  for i, p in enumerate(rows):
    arr[i, : len(p)] = p
  return arr, lens


def check_prompts(
  model,
  prompts,
  prompt_lengths=None,
  pad_id: int = 0,
  buckets: Optional[Sequence[int]] = None,
  *,
  pad_id_name: str = "pad_id",
):
  """Validated, right-padded, bucketed prompts: (tokens_BxT, lengths_B).

  The one prompt convention of every decoding entry point (generate, particle
  filtering, beam search / DVTS, A*, speculative decoding).

  Args:
    model: a decode-interface model; its `vocab_size` (if any) bounds the ids.
    prompts: a list of B token-id lists (each >= 1 token), or a right-padded
      int array [B, T] together with `prompt_lengths` [B] (ints in [1, T];
      positions at or after a row's length are ignored and re-padded).
    pad_id: written into padding positions; checked first (named
      `pad_id_name`, e.g. "PFConfig.pad_id").
    buckets: prompt-length buckets (default powers of two from 16).

  Returns:
    (tokens_BxT int32 with T the bucketed length, lengths_B int32).

  Raises:
    ValueError: naming `pad_id_name`, `prompts` or `prompt_lengths`: a bad
      pad id, a malformed prompt list, non-integer ids, ids outside
      [0, vocab_size) (`jaxllm.validation.check_token_ids`), or lengths out of
      [1, T].
  """
  vocab = getattr(model, "vocab_size", None)
  limit = INT32_LIMIT + 1 if vocab is None else vocab
  pad_id = check_token_id(pad_id_name, pad_id, limit)
  if prompt_lengths is None:
    rows = _prompt_list(prompts)
    check_token_ids("prompts", np.concatenate(rows), limit)
    return pad_prompts(rows, pad_id, buckets)
  tokens = token_id_array("prompts", prompts)
  lengths = np.asarray(prompt_lengths)
  if tokens.ndim != 2 or lengths.shape != (tokens.shape[0],):
    raise ValueError(
      f"prompts must be [B, T] with prompt_lengths [B]; got "
      f"{tokens.shape} and {lengths.shape}"
    )
  B, T = tokens.shape
  if B == 0 or T == 0:
    raise ValueError(f"prompts is empty (shape {tokens.shape})")
  if lengths.dtype.kind not in "iu" or lengths.min() < 1 or lengths.max() > T:
    raise ValueError(
      f"prompt_lengths must be integers in [1, {T}], got {prompt_lengths!r:.200}"
    )
  lengths = lengths.astype(np.int32)
  valid = np.arange(T)[None, :] < lengths[:, None]
  check_token_ids("prompts", tokens[valid], limit)
  T_b = bucket_length(T, buckets)
  out = np.full((B, T_b), pad_id, np.int32)
  out[:, :T] = np.where(valid, tokens, pad_id)
  return out, lengths


def generate(
  model,
  params,
  prompts,
  key,
  max_new_tokens: int,
  sampling: Optional[Sampling] = None,
  *,
  prompt_lengths=None,
  stop_tokens: Sequence[int] = (),
  max_new_B=None,
  pad_id: int = 0,
  cache_size: Optional[int] = None,
  buckets: Optional[Sequence[int]] = None,
  num_samples: int = 1,
) -> GenerateOutput:
  """Sample continuations for a batch of prompts.

  Args:
    model: a decode-interface model (e.g. `Transformer(cfg)` or `BigramLM`).
    prompts: a list of token-id lists, or a right-padded int array [B, T] with
      `prompt_lengths` [B] (see `check_prompts`).
    max_new_tokens: static upper bound on generated tokens (output width N),
      an int >= 1; prompt + N must fit ModelConfig.max_seq_len and cache_size.
    sampling: `make_sampling(...)`; default temperature 1, no filters.
    stop_tokens: token ids in [0, V); a row stops after emitting any of them
      (e.g. EOS). Empty: rows run to their budget.
    max_new_B: optional per-row budget, integers in [0, max_new_tokens] of
      shape [B * num_samples] (an array: changing it does not recompile).
    pad_id: id in [0, V) written after a row stops and into prompt padding.
    cache_size: KV slots per row; default bucketed prompt length +
      max_new_tokens.
    num_samples: samples per prompt. Each prompt is prefilled ONCE and its
      cache forked (`reorder`) into num_samples rows; outputs are
      prompt-major [B * num_samples, ...]; max_new_B then has that length.

  Returns:
    GenerateOutput: tokens [B * num_samples, N], lengths, logprobs, steps.

  Raises:
    ValueError: naming the argument, for a non-positive num_samples or
      max_new_tokens, a bad pad_id, prompts or stop_tokens (ids outside
      [0, V), non-integers), a max_new_B of the wrong shape or range, or a
      prompt + max_new_tokens that does not fit the cache or max_seq_len.
  """
  num_samples = check_int("num_samples", num_samples, lo=1)
  max_new_tokens = check_int("max_new_tokens", max_new_tokens, lo=1)
  sampling = make_sampling() if sampling is None else sampling
  tokens, lengths = check_prompts(model, prompts, prompt_lengths, pad_id, buckets)
  stop = _check_stop_tokens(model, stop_tokens)
  cache_size = _check_fits(model, tokens, lengths, max_new_tokens, cache_size)
  B = tokens.shape[0] * num_samples
  max_new_B = _check_budgets(max_new_B, B, max_new_tokens)
  # prompts given as a (possibly sharded) jax.Array keep their placement,
  # e.g. rows split over a mesh's data axis (jaxllm.sharding.shard_batch)
  tokens = _placed_like(tokens, prompts)
  lengths = _placed_like(lengths, prompt_lengths)
  return _generate_jit(
    model,
    params,
    tokens,
    lengths,
    key,
    sampling,
    jnp.asarray(stop),
    jnp.asarray(max_new_B, jnp.int32),
    jnp.int32(pad_id),
    max_new_tokens=max_new_tokens,
    cache_size=cache_size,
    num_samples=num_samples,
  )


def _placed_like(x_np, given):
  """x (a checked numpy copy of `given`) on `given`'s sharding when `given`
  was a jax.Array, else on the default device."""
  if isinstance(given, jax.Array) and x_np.ndim == given.ndim:
    return jax.device_put(x_np, given.sharding)
  return jnp.asarray(x_np)


def _check_stop_tokens(model, stop_tokens) -> np.ndarray:
  """`generate`'s stop_tokens as int32 [n] (a -1 sentinel when empty).

  Raises:
    ValueError: ids outside [0, V) or not a flat sequence."""
  vocab = getattr(model, "vocab_size", None)
  stop = check_token_ids(
    "stop_tokens",
    () if stop_tokens is None else stop_tokens,
    INT32_LIMIT + 1 if vocab is None else vocab,
  )
  if stop.ndim != 1:
    raise ValueError(
      f"stop_tokens must be a flat sequence of token ids, got shape {stop.shape}"
    )
  return stop.astype(np.int32) if stop.size else np.array([-1], np.int32)


def _check_fits(model, tokens, lengths, max_new_tokens: int, cache_size) -> int:
  """The cache size (default: padded prompt + max_new_tokens), after checking
  that the longest prompt + max_new_tokens fits int32 positions,
  ModelConfig.max_seq_len and the cache.

  Raises:
    ValueError: naming what does not fit, or a bad cache_size."""
  what = f"prompt length {int(lengths.max())} + max_new_tokens={max_new_tokens}"
  need = int(lengths.max()) + max_new_tokens
  check_length(what, need, "the int32 position range", INT32_LIMIT)
  max_seq = getattr(getattr(model, "cfg", None), "max_seq_len", None)
  if max_seq is not None:
    check_length(what, need, "ModelConfig.max_seq_len", max_seq)
  if cache_size is None:
    cache_size = tokens.shape[1] + max_new_tokens
  cache_size = check_int("cache_size", cache_size, lo=1)
  check_length(what, need, "cache_size", cache_size)
  check_length(
    f"padded prompt length {tokens.shape[1]}", tokens.shape[1], "cache_size", cache_size
  )
  return cache_size


def _check_budgets(max_new_B, B: int, max_new_tokens: int) -> np.ndarray:
  """`generate`'s per-row budgets as int32 [B] (default max_new_tokens).

  Raises:
    ValueError: a shape other than [B] or values outside [0, max_new_tokens]."""
  if max_new_B is None:
    return np.full((B,), max_new_tokens, np.int32)
  budget = np.asarray(max_new_B)
  if budget.shape != (B,):
    raise ValueError(
      f"max_new_B must have shape [B * num_samples] = [{B}], got {budget.shape}"
    )
  if budget.dtype.kind not in "iu" or (
    B and (budget.min() < 0 or budget.max() > max_new_tokens)
  ):
    raise ValueError(
      f"max_new_B must be integers in [0, max_new_tokens="
      f"{max_new_tokens}], got {max_new_B!r:.200}"
    )
  return budget.astype(np.int32)
