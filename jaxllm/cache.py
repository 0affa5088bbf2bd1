"""Pre-allocated KV cache with per-row lengths.

Slot j of row b holds the token at position j for j < lengths[b] (committed
tokens). Shapes are static. Keys are stored transposed, [B, Kv, K, S], and
values as [B, Kv, S, K]: both attention products are then plain batched
matmuls over (B, Kv) with contiguous operands and no transpose of the cache
(on CPU this halves the time of decode attention, which reads the whole
cache every step). Rows are
independent sequences, so forking a prompt into N samples, resampling particles
or reordering beams is a gather along the batch axis (`reorder`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  k: tuple  # per layer [B, Kv, K, S] (transposed keys)
  v: tuple  # per layer [B, Kv, S, K]
  lengths: Any  # [B] int32: committed tokens per row

  @property
  def batch(self) -> int:
    return self.lengths.shape[0]

  @property
  def size(self) -> int:
    return self.v[0].shape[2]


def init_cache(cfg: ModelConfig, batch: int, size: int, dtype=None) -> KVCache:
  """An empty cache of `size` slots per row."""
  if size <= 0:
    raise ValueError(f"cache size must be > 0, got {size}")
  dtype = jnp.dtype(dtype or cfg.dtype)
  kshape = (batch, cfg.n_kv_heads, cfg.head_dim, size)
  vshape = (batch, cfg.n_kv_heads, size, cfg.head_dim)
  z = lambda shape: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers))
  return KVCache(k=z(kshape), v=z(vshape),
                 lengths=jnp.zeros((batch,), jnp.int32))


def write_new(buf, new_BxTxKvxK, lengths_B, keys: bool = False):
  """Write T new entries per row at slots [lengths, lengths + T).

  buf is a value buffer [B, Kv, S, K] or (keys=True) a transposed key buffer
  [B, Kv, K, S]. Writes past the end are dropped (never wrapped or shifted);
  callers bound lengths + T <= S statically (see generate.py).
  """
  B, T = new_BxTxKvxK.shape[:2]
  rows = jnp.arange(B)[:, None]
  slots = lengths_B[:, None] + jnp.arange(T)[None, :]
  new = new_BxTxKvxK.astype(buf.dtype)
  # Advanced indices (rows, slots) around slices put [B, T] first: the update
  # is [B, T, Kv, K], exactly the new entries.
  if keys:
    return buf.at[rows, :, :, slots].set(new, mode="drop")
  return buf.at[rows, :, slots].set(new, mode="drop")


def reorder(cache: KVCache, index_N) -> KVCache:
  """Gather rows: row n of the result is row index_N[n] of `cache`.

  N may differ from B (fork one prompt into N samples with index = zeros(N)).
  """
  take = lambda x: jnp.take(x, index_N, axis=0)
  return jax.tree_util.tree_map(take, cache)


def commit_path(cache: KVCache, path_BxL, n_accept_B) -> KVCache:
  """Keep the entries of an accepted tree path.

  After `forward(..., n_valid_B=0)` wrote M tree tokens at slots
  [lengths, lengths + M), `path_BxL[b, :n_accept_B[b]]` lists which of them
  (0-based, in path order) were accepted; they are moved to slots
  [lengths, lengths + n_accept) and the length advances by n_accept.
  """
  B, L = path_BxL.shape
  lengths = cache.lengths
  rows = jnp.arange(B)[:, None]
  src = lengths[:, None] + path_BxL  # [B, L]
  keep = jnp.arange(L)[None, :] < n_accept_B[:, None]
  dst = jnp.where(keep, lengths[:, None] + jnp.arange(L)[None, :],
                  cache.size)  # out of range -> dropped

  src = jnp.clip(src, 0, cache.size - 1)

  def move_v(buf):  # [B, Kv, S, K]
    return buf.at[rows, :, dst].set(buf[rows, :, src], mode="drop")

  def move_k(buf):  # [B, Kv, K, S]
    return buf.at[rows, :, :, dst].set(buf[rows, :, :, src], mode="drop")

  return KVCache(k=tuple(move_k(b) for b in cache.k),
                 v=tuple(move_v(b) for b in cache.v),
                 lengths=lengths + n_accept_B)
