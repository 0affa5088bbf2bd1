"""Pre-allocated KV cache with per-row lengths; this file owns its layout.

Shape letters: B batch rows, T new tokens, S cache slots, Kv KV heads, K head
dim, L layers, N gathered rows, P path length.

Slot j of row b holds the token at position j for j < lengths[b] (committed
tokens). Shapes are static. Rows are independent sequences, so forking a
prompt into N samples, resampling particles or reordering beams is a gather
along the batch axis (`reorder`).

Layout. One layer's keys and values are stored in the axis orders named by
`K_LAYOUT` and `V_LAYOUT`, einsum-style strings over b (batch row), k (KV
head), d (head dim) and s (slot). Today keys are transposed, [B, Kv, K, S],
and values are [B, Kv, S, K]: both attention products are then plain batched
matmuls over (B, Kv) with contiguous operands and no transpose of the cache
(on CPU this halves the time of decode attention, which reads the whole cache
every step). Everything that depends on the layout reads these two strings
(`init_cache`, `layout_keys` / `layout_values`, `write_new`, `commit_path`,
`KVCache.size`, and the einsums of `jaxllm.model.attention_jnp`), so a
different layout is a change to this file only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig

K_LAYOUT = "bkds"  # keys: [B, Kv, K, S] (transposed)
V_LAYOUT = "bksd"  # values: [B, Kv, S, K]
_NEW = "bskd"  # the order the model produces new entries in: [B, T, Kv, K]


def relayout(x, src: str, dst: str):
  """`x` with axes in order `src` permuted to order `dst` (letters b, k, d, s).

  Raises:
    ValueError: if `src` and `dst` are not permutations of each other.
  """
  if sorted(src) != sorted(dst) or len(set(src)) != len(src):
    raise ValueError(f"cannot relayout {src!r} to {dst!r}")
  if src == dst:
    return x
  return x.transpose(tuple(src.index(c) for c in dst))


def _shape(layout: str, B: int, Kv: int, K: int, S: int) -> tuple:
  sizes = {"b": B, "k": Kv, "d": K, "s": S}
  return tuple(sizes[c] for c in layout)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  k: tuple  # per layer, K_LAYOUT: [B, Kv, K, S] (transposed keys)
  v: tuple  # per layer, V_LAYOUT: [B, Kv, S, K]
  lengths: Any  # [B] int32: committed tokens per row

  @property
  def batch(self) -> int:
    return self.lengths.shape[0]

  @property
  def size(self) -> int:
    """S, the slots per row."""
    return self.v[0].shape[V_LAYOUT.index("s")]


def init_cache(cfg: ModelConfig, batch: int, size: int, dtype=None) -> KVCache:
  """An empty cache of `size` slots per row (all lengths 0).

  Args:
    cfg: the model config (n_layers, n_kv_heads, head_dim, dtype).
    batch: B rows. size: S slots per row. dtype: default cfg.dtype.

  Raises:
    ValueError: if size <= 0.
  """
  if size <= 0:
    raise ValueError(f"cache size must be > 0, got {size}")
  dtype = jnp.dtype(dtype or cfg.dtype)
  dims = (batch, cfg.n_kv_heads, cfg.head_dim, size)
  z = lambda shape: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers))
  return KVCache(
    k=z(_shape(K_LAYOUT, *dims)),
    v=z(_shape(V_LAYOUT, *dims)),
    lengths=jnp.zeros((batch,), jnp.int32),
  )


def layout_keys(k_BxTxKvxK):
  """New keys [B, T, Kv, K] in the cache's key layout (T as the slot axis).

  The no-cache path of `jaxllm.model.forward` attends to these directly, the
  cached path writes them with `write_new`; both hand attention the same
  layout.
  """
  return relayout(k_BxTxKvxK, _NEW, K_LAYOUT)


def layout_values(v_BxTxKvxK):
  """New values [B, T, Kv, K] in the cache's value layout (see layout_keys)."""
  return relayout(v_BxTxKvxK, _NEW, V_LAYOUT)


def _rows_slots(layout: str, rows, slots):
  """An index for buf.at[...] that picks (row, slot) pairs of a buffer in
  `layout`: advanced indices at b and s, full slices elsewhere. The picked
  block has shape [*rows/slots broadcast shape, remaining axes in layout
  order]."""
  return tuple(rows if c == "b" else slots if c == "s" else slice(None) for c in layout)


def _rest(layout: str) -> str:
  """The axis order of the block `_rows_slots` picks (numpy advanced-index
  rules): the broadcast (b, s) pair in place when b and s are adjacent in
  `layout`, else first; the other axes keep their order."""
  ib, i_s = layout.index("b"), layout.index("s")
  if abs(ib - i_s) == 1:
    lo = min(ib, i_s)
    return layout[:lo] + "bs" + layout[lo + 2 :]
  return "bs" + "".join(c for c in layout if c not in "bs")


def write_new(buf, new_BxTxKvxK, lengths_B, keys: bool = False):
  """Write T new entries per row at slots [lengths, lengths + T).

  Args:
    buf: one layer's value buffer (V_LAYOUT) or, with keys=True, its key
      buffer (K_LAYOUT).
    new_BxTxKvxK: the new entries.
    lengths_B: int32 first slot written per row.

  Returns:
    The updated buffer. Writes past the end are dropped (never wrapped or
    shifted); callers bound lengths + T <= S statically (see generate.py).
  """
  layout = K_LAYOUT if keys else V_LAYOUT
  B, T = new_BxTxKvxK.shape[:2]
  rows = jnp.arange(B)[:, None]
  slots = lengths_B[:, None] + jnp.arange(T)[None, :]
  new = relayout(new_BxTxKvxK.astype(buf.dtype), _NEW, _rest(layout))
  return buf.at[_rows_slots(layout, rows, slots)].set(new, mode="drop")


def reorder(cache: KVCache, index_N) -> KVCache:
  """Gather rows: row n of the result is row index_N[n] of `cache`.

  N may differ from B (fork one prompt into N samples with index = zeros(N)).
  """
  take = lambda x, layout: jnp.take(x, index_N, axis=layout.index("b"))
  return KVCache(
    k=tuple(take(x, K_LAYOUT) for x in cache.k),
    v=tuple(take(x, V_LAYOUT) for x in cache.v),
    lengths=jnp.take(cache.lengths, index_N, axis=0),
  )


def commit_path(cache: KVCache, path_BxP, n_accept_B) -> KVCache:
  """Keep the entries of an accepted tree path.

  After `forward(..., n_valid_B=0)` wrote M tree tokens at slots
  [lengths, lengths + M), `path_BxP[b, :n_accept_B[b]]` lists which of them
  (0-based, in path order) were accepted; they are moved to slots
  [lengths, lengths + n_accept) and the length advances by n_accept.
  """
  B, P = path_BxP.shape
  lengths = cache.lengths
  rows = jnp.arange(B)[:, None]
  src = lengths[:, None] + path_BxP  # [B, P]
  keep = jnp.arange(P)[None, :] < n_accept_B[:, None]
  dst = jnp.where(
    keep, lengths[:, None] + jnp.arange(P)[None, :], cache.size
  )  # out of range -> dropped
  src = jnp.clip(src, 0, cache.size - 1)

  def move(buf, layout):
    return buf.at[_rows_slots(layout, rows, dst)].set(
      buf[_rows_slots(layout, rows, src)], mode="drop"
    )

  return KVCache(
    k=tuple(move(b, K_LAYOUT) for b in cache.k),
    v=tuple(move(b, V_LAYOUT) for b in cache.v),
    lengths=lengths + n_accept_B,
  )
