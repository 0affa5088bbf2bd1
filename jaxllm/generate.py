"""Batched generation: one prefill, then a `lax.while_loop` decode.

Works with any model behind the decode interface (jaxllm.decoding). Prompts
of different lengths share a batch (right-padded, per-row lengths). Prompt
lengths are padded up to a bucket so a new length in the same bucket reuses
the compiled program; the per-row token budget (`max_new_B`) is an array, so
sweeping budgets below `max_new_tokens` does not recompile either.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.sampling import Sampling, log_probs, make_sampling, sample

TRACE_COUNT = {"generate": 0}  # incremented at trace time (compile checks)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class GenerateOutput:
  tokens: Any  # [B, N] generated tokens (pad_id after a row stops)
  lengths: Any  # [B] tokens generated per row, stop token included
  logprobs: Any  # [B, N] model log-prob (temperature 1, unfiltered) per token
  steps: Any  # scalar: decode steps run (model calls after the prefill)


def bucket_length(n: int, buckets: Optional[Sequence[int]] = None) -> int:
  """Smallest bucket >= n: powers of two from 16 by default."""
  if buckets:
    for b in sorted(buckets):
      if b >= n:
        return b
    raise ValueError(f"prompt length {n} exceeds the largest bucket "
                     f"{max(buckets)}")
  b = 16
  while b < n:
    b *= 2
  return b


def _generate_impl(model, params, tokens_BxT, lengths_B, key, sampling,
                   stop_ids, max_new_B, pad_id, *, max_new_tokens: int,
                   cache_size: int, num_samples: int):
  TRACE_COUNT["generate"] += 1
  state, logits = model.prefill(params, tokens_BxT, lengths_B, cache_size)
  if num_samples > 1:  # fork each prefilled prompt into num_samples rows
    fork = jnp.repeat(jnp.arange(tokens_BxT.shape[0]), num_samples)
    state, logits = model.reorder(state, fork), logits[fork]
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


_generate_jit = jax.jit(_generate_impl,
                        static_argnames=("model", "max_new_tokens",
                                         "cache_size", "num_samples"))


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int = 0,
                buckets: Optional[Sequence[int]] = None):
  """Right-pad token lists to a bucketed length: (tokens_BxT, lengths_B)."""
  if len(prompts) == 0:
    raise ValueError("prompts is empty")
  lens = np.array([len(p) for p in prompts], np.int32)
  if lens.min() < 1:
    raise ValueError("every prompt needs at least one token")
  T = bucket_length(int(lens.max()), buckets)
  arr = np.full((len(prompts), T), pad_id, np.int32)
  for i, p in enumerate(prompts):
    arr[i, :len(p)] = p
  return arr, lens


def check_prompts(model, prompts, prompt_lengths=None, pad_id: int = 0,
                  buckets: Optional[Sequence[int]] = None):
  """Validated, right-padded, bucketed prompts: (tokens_BxT, lengths_B).

  `prompts` is a list of token lists, or a padded [B, T] array with
  `prompt_lengths` [B]. Token ids are checked against the model's vocabulary.
  """
  if prompt_lengths is None:
    tokens, lengths = pad_prompts(prompts, pad_id, buckets)
  else:
    tokens = np.asarray(prompts, np.int32)
    lengths = np.asarray(prompt_lengths, np.int32)
    if tokens.ndim != 2 or lengths.shape != (tokens.shape[0],):
      raise ValueError(f"prompts must be [B, T] with prompt_lengths [B]; got "
                       f"{tokens.shape} and {lengths.shape}")
    if lengths.min() < 1 or lengths.max() > tokens.shape[1]:
      raise ValueError("prompt_lengths must be in [1, T]")
    T = bucket_length(tokens.shape[1], buckets)
    tokens = np.pad(tokens, ((0, 0), (0, T - tokens.shape[1])),
                    constant_values=pad_id)
  vocab = getattr(model, "vocab_size", None)
  if vocab is not None and (tokens.min() < 0 or tokens.max() >= vocab):
    raise ValueError(f"prompt token ids must be in [0, {vocab}), got range "
                     f"[{tokens.min()}, {tokens.max()}]")
  return tokens, lengths


def generate(model, params, prompts, key, max_new_tokens: int,
             sampling: Optional[Sampling] = None, *,
             prompt_lengths=None, stop_tokens: Sequence[int] = (),
             max_new_B=None, pad_id: int = 0, cache_size: Optional[int] = None,
             buckets: Optional[Sequence[int]] = None,
             num_samples: int = 1) -> GenerateOutput:
  """Sample continuations for a batch of prompts.

  Args:
    model: a decode-interface model (e.g. `Transformer(cfg)` or `BigramLM`).
    prompts: a list of token-id lists, or a right-padded int array [B, T] with
      `prompt_lengths` [B].
    max_new_tokens: static upper bound on generated tokens (output width).
    sampling: `make_sampling(...)`; default temperature 1, no filters.
    stop_tokens: a row stops after emitting any of these (e.g. EOS).
    max_new_B: optional per-row budget <= max_new_tokens (an array: changing
      it does not recompile).
    cache_size: KV slots per row; default bucketed prompt length +
      max_new_tokens.
    num_samples: samples per prompt. Each prompt is prefilled ONCE and its
      cache forked (`reorder`) into num_samples rows; outputs are
      prompt-major [B * num_samples, ...]; max_new_B then has that length.
  """
  if not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
  if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be a positive int, got "
                     f"{max_new_tokens!r}")
  sampling = make_sampling() if sampling is None else sampling
  tokens, lengths = check_prompts(model, prompts, prompt_lengths, pad_id,
                                  buckets)
  need = int(lengths.max()) + max_new_tokens
  if cache_size is None:
    cache_size = tokens.shape[1] + max_new_tokens
  if need > cache_size or tokens.shape[1] > cache_size:
    raise ValueError(f"prompt (length {int(lengths.max())}, padded "
                     f"{tokens.shape[1]}) + max_new_tokens={max_new_tokens} "
                     f"does not fit in cache_size={cache_size}")
  max_seq = getattr(getattr(model, "cfg", None), "max_seq_len", None)
  if max_seq is not None and need > max_seq:
    raise ValueError(f"prompt length {int(lengths.max())} + max_new_tokens="
                     f"{max_new_tokens} exceeds ModelConfig.max_seq_len="
                     f"{max_seq}")
  B = tokens.shape[0] * num_samples
  if max_new_B is None:
    max_new_B = np.full((B,), max_new_tokens, np.int32)
  stop = np.asarray(list(stop_tokens) or [-1], np.int32)
  return _generate_jit(model, params, jnp.asarray(tokens), jnp.asarray(lengths),
                       key, sampling, jnp.asarray(stop),
                       jnp.asarray(max_new_B, jnp.int32), jnp.int32(pad_id),
                       max_new_tokens=max_new_tokens, cache_size=cache_size,
                       num_samples=num_samples)
