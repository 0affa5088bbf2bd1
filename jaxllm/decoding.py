"""The narrow decode interface the algorithms drive, and two implementations.

An algorithm reaches a model only through these calls (t5x's
`tokens_to_logits` idea, extended to the cache operations search needs):

  prefill(params, tokens_BxT, lengths_B, cache_size) -> (state, logits_BxV)
  extend(params, state, tokens_BxS, valid_BxS=None)  -> (state, logits_BxSxV)
      ragged multi-token step: row b appends its first sum(valid_BxS[b]) tokens
      (valid must be a prefix mask); logits[b, s] is the next-token
      distribution after token s.
  reorder(state, index) -> state
      gather rows (`jaxllm.cache.take_rows`): index [N] flat, or [P, N]
      blocked (each index relative to its problem's block of rows): fork a
      prompt into N samples, resample particles, reorder beams, move rows
      between a queue and the working batch. Searches within a problem pass
      the blocked form, which keeps a population sharded over devices local.
  score_tree(params, state, tokens_BxM, parent_M) -> (state, logits_BxMxV)
      nodes in BFS order, parent -1 = child of the committed prefix; nothing is
      committed (speculative decoding).
  commit(state, path_BxL, n_accept_B) -> state
      keep the accepted tree nodes path[b, :n_accept[b]] (node indices).
  lengths(state) -> [B] committed tokens per row.
  prefill_to_root(params, tokens_BxT, lengths_B, cache_size) -> (state, root_B)
      OPTIONAL (speculative decoding): the state without the first tree root,
      and the root; absent, the root is the last prompt token and the rest is
      prefilled. The encoder-decoder defines it (root = decoder start token).

`Transformer` implements it with the KV-cached model; `BigramLM` is a toy
model with an exactly known next-token distribution p(x_t | x_{t-1}) =
softmax(table[x_{t-1}]), which makes exactness tests possible.

N samples per prompt: `prefill_and_fork` prefills each prompt ONCE and forks
its state into N rows with one blocked gather (`fork_rows`: zeros [P, N]; its
flat equivalent is `fork_index`); `generate(num_samples=)`
and the step-level searches (algorithms.stepping) go through it.

FLOPs: a model either has a `cfg` (jaxllm ModelConfig) that jaxllm.flops
counts from, or declares `flops_free = True` (BigramLM); anything else is an
error when FLOPs are counted (`jaxllm.flops.flops_config`), never a silent 0.

Shape letters: B rows, P prompts, N samples per prompt (B = P * N after a
fork), T prompt tokens, S tokens of a step, M tree nodes, L path length,
V vocab.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxllm import cache as cache_lib
from jaxllm.config import ModelConfig
from jaxllm.model import forward
from jaxllm.params import check_params
from jaxllm.validation import check_int


def tree_depths(parent_M) -> jax.Array:
  """Depth of each node (1 for children of the prefix); parents precede children."""
  parent_M = jnp.asarray(parent_M)
  M = parent_M.shape[0]

  def body(i, d):
    p = parent_M[i]
    return d.at[i].set(jnp.where(p < 0, 1, d[jnp.maximum(p, 0)] + 1))

  return jax.lax.fori_loop(0, M, body, jnp.zeros((M,), jnp.int32))


def tree_ancestor_mask(parent_M) -> jax.Array:
  """mask[i, j] = node j is node i or one of its ancestors."""
  parent_M = jnp.asarray(parent_M)
  M = parent_M.shape[0]

  def body(i, m):
    p = parent_M[i]
    row = jnp.where(p < 0, jnp.zeros((M,), bool), m[jnp.maximum(p, 0)])
    return m.at[i].set(row.at[i].set(True))

  return jax.lax.fori_loop(0, M, body, jnp.zeros((M, M), bool))


def fork_index(n_prompts: int, n_samples: int) -> jax.Array:
  """int32 [P * N]: row p * N + i of a forked batch copies prompt row p
  (prompt-major, the row order of every N-per-prompt output)."""
  return jnp.repeat(jnp.arange(n_prompts, dtype=jnp.int32), n_samples)


def fork_rows(n_prompts: int, n_samples: int) -> jax.Array:
  """int32 zeros [P, N]: the blocked `reorder` index of a fork (row p * N + i
  copies the one row of block p); the same rows as `fork_index`, but each
  gather stays inside its prompt's block (no collective when sharded)."""
  return jnp.zeros((n_prompts, n_samples), jnp.int32)


def prefill_and_fork(
  model, params, tokens_PxT, lengths_P, cache_size: int, n_samples: int
):
  """Prefill each of P prompts ONCE and fork it into N rows.

  Args:
    model: a decode-interface model; params its parameters.
    tokens_PxT / lengths_P: right-padded prompts and their lengths.
    cache_size: static KV slots per row. n_samples: N, a static int >= 1.

  Returns:
    (state, logits_BxV) with B = P * N rows, row p * N + i = sample i of
    prompt p; one prefill model call on P rows (the fork is a gather).
  """
  state, logits = model.prefill(params, tokens_PxT, lengths_P, cache_size)
  if n_samples == 1:
    return state, logits
  index = fork_rows(tokens_PxT.shape[0], n_samples)
  return model.reorder(state, index), cache_lib.take_rows(logits, index)


def valid_count(tokens_BxS, valid_BxS):
  """int32 [B]: tokens per row an `extend` appends (all S when valid_BxS is None,
  else the row's count of True; valid is a prefix mask)."""
  if valid_BxS is None:
    return jnp.full((tokens_BxS.shape[0],), tokens_BxS.shape[1], jnp.int32)
  return valid_BxS.astype(jnp.int32).sum(-1)


def prefill_in_chunks(params, cfg: ModelConfig, state, tokens_BxT, lengths_B, chunk):
  """Prefill right-padded prompts into `state` at most `chunk` tokens a pass.

  Args:
    params / cfg: the model. state: an empty KVCache (lengths 0) of S slots.
    tokens_BxT / lengths_B: right-padded prompts and their lengths (<= T).
    chunk: static int; 0 or >= T runs one pass over the whole prompt.

  Returns:
    (state, logits_BxV): the cache holding every prompt, and each row's
    next-token logits after its last prompt token.

  With T > chunk, a `lax.scan` over ceil(T / chunk) chunks runs `forward` on
  each through the cache (row b takes clip(length_b - start, 0, chunk) valid
  tokens of the chunk starting at `start`) and keeps each row's logits from
  the chunk holding its last token. Causal attention over the cache makes this
  the same computation as one pass (up to float summation order) while the
  attention scores held at once shrink from [B, H, T, S] to [B, H, chunk, S]:
  what lets long prompts at large batch fit in memory (vLLM's chunked
  prefill, here for memory rather than scheduling). One chunk's program is
  compiled once, whatever the number of chunks.
  """
  lengths_B = lengths_B.astype(jnp.int32)
  B, T = tokens_BxT.shape
  if not chunk or T <= chunk:
    logits, state, _ = forward(
      params, tokens_BxT, cfg, cache=state, n_valid_B=lengths_B, logits_at="last"
    )
    return state, logits
  n = -(-T // chunk)
  padded = jnp.pad(tokens_BxT, ((0, 0), (0, n * chunk - T)))
  chunks_NxBxC = padded.reshape(B, n, chunk).transpose(1, 0, 2)
  starts_N = jnp.arange(n, dtype=jnp.int32) * chunk

  def body(carry, xs):
    state, logits_BxV = carry
    tokens_BxC, start = xs
    n_valid_B = jnp.clip(lengths_B - start, 0, chunk)
    lg, state, _ = forward(
      params, tokens_BxC, cfg, cache=state, n_valid_B=n_valid_B, logits_at="last"
    )
    return (state, jnp.where(n_valid_B[:, None] > 0, lg, logits_BxV)), None

  logits0 = jnp.zeros((B, cfg.vocab_size), jnp.float32)
  (state, logits), _ = jax.lax.scan(body, (state, logits0), (chunks_NxBxC, starts_N))
  return state, logits


@dataclasses.dataclass(frozen=True)
class Transformer:
  """The decode interface over the KV-cached transformer (state = KVCache)."""

  cfg: ModelConfig

  @property
  def vocab_size(self) -> int:
    return self.cfg.vocab_size

  def prefill(self, params, tokens_BxT, lengths_B, cache_size: int):
    """Raises ValueError for params whose shapes are not cfg's (naming the
    parameter; checked on shapes, so free under jit) or a prompt longer than
    the cache."""
    check_params(self.cfg, params)
    B, T = tokens_BxT.shape
    if T > cache_size:
      raise ValueError(
        f"prompt length {T} is longer than the cache (cache_size={cache_size})"
      )
    state = cache_lib.init_cache(self.cfg, B, cache_size)
    return prefill_in_chunks(
      params, self.cfg, state, tokens_BxT, lengths_B, self.cfg.prefill_chunk
    )

  def extend(self, params, state, tokens_BxS, valid_BxS=None):
    logits, state, _ = forward(
      params,
      tokens_BxS,
      self.cfg,
      cache=state,
      n_valid_B=valid_count(tokens_BxS, valid_BxS),
    )
    return state, logits

  def reorder(self, state, index):
    return cache_lib.reorder(state, index)

  def lengths(self, state):
    return state.lengths

  def score_tree(self, params, state, tokens_BxM, parent_M):
    B, M = tokens_BxM.shape
    depth = tree_depths(parent_M)
    pos = state.lengths[:, None] + depth[None, :] - 1
    mask = jnp.broadcast_to(tree_ancestor_mask(parent_M), (B, M, M))
    logits, state, _ = forward(
      params,
      tokens_BxM,
      self.cfg,
      cache=state,
      positions_BxT=pos,
      attn_mask_BxTxT=mask,
      n_valid_B=jnp.zeros((B,), jnp.int32),
    )
    return state, logits

  def commit(self, state, path_BxL, n_accept_B):
    return cache_lib.commit_path(state, path_BxL, n_accept_B)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class BigramState:
  last: Any  # [B] last committed token
  lengths: Any  # [B]
  pending: Any = None  # [B, M] tokens of the last scored tree


@dataclasses.dataclass(frozen=True)
class BigramLM:
  """Toy model: params = table_VxV of logits, next ~ softmax(table[last]).

  It has no ModelConfig and declares itself free of FLOPs (`flops_free`), so
  compute records count its tokens and calls and report 0 FLOPs on purpose.

  Raises ValueError naming `BigramLM.vocab_size` unless it is an int >= 1.
  """

  vocab_size: int
  flops_free: ClassVar[bool] = True

  def __post_init__(self):
    object.__setattr__(
      self, "vocab_size", check_int("BigramLM.vocab_size", self.vocab_size, lo=1)
    )

  def prefill(self, table_VxV, tokens_BxT, lengths_B, cache_size: int = 0):
    lengths_B = lengths_B.astype(jnp.int32)
    last = jnp.take_along_axis(
      tokens_BxT, jnp.maximum(lengths_B - 1, 0)[:, None], axis=1
    )[:, 0]
    return BigramState(last=last, lengths=lengths_B), table_VxV[last]

  def extend(self, table_VxV, state, tokens_BxS, valid_BxS=None):
    n = valid_count(tokens_BxS, valid_BxS)
    idx = jnp.maximum(n - 1, 0)[:, None]
    new_last = jnp.take_along_axis(tokens_BxS, idx, axis=1)[:, 0]
    last = jnp.where(n > 0, new_last, state.last)
    return BigramState(last=last, lengths=state.lengths + n), table_VxV[tokens_BxS]

  def reorder(self, state, index):
    return jax.tree_util.tree_map(lambda x: cache_lib.take_rows(x, index), state)

  def lengths(self, state):
    return state.lengths

  def score_tree(self, table_VxV, state, tokens_BxM, parent_M):
    return (BigramState(state.last, state.lengths, tokens_BxM), table_VxV[tokens_BxM])

  def commit(self, state, path_BxL, n_accept_B):
    idx = jnp.maximum(n_accept_B - 1, 0)
    node = jnp.take_along_axis(path_BxL, idx[:, None], axis=1)
    tok = jnp.take_along_axis(state.pending, node, axis=1)[:, 0]
    last = jnp.where(n_accept_B > 0, tok, state.last)
    return BigramState(last=last, lengths=state.lengths + n_accept_B)
