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
`KVCache.size`, and the einsums and slot slices of `jaxllm.model`'s attention
functions), so a different layout is a change to this file only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import ModelConfig
from jaxllm.validation import is_concrete

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
    cfg: the model config (n_layers, n_kv_heads, head_dim, kv_dtype).
    batch: B rows. size: S slots per row. dtype: default cfg.kv_dtype
      (`ModelConfig.cache_dtype`, else cfg.dtype); `write_new` casts new
      entries to the buffers' dtype.

  Raises:
    ValueError: if size <= 0.
  """
  if size <= 0:
    raise ValueError(f"cache size must be > 0, got {size}")
  dtype = jnp.dtype(dtype or cfg.kv_dtype)
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

  The scatter is written per row and vmapped over b (a scatter with a batch
  dimension), so with rows split over devices each device writes its own
  rows: no collective (a scatter with (row, slot) index pairs makes GSPMD
  all-gather every row's new entries to every device).
  """
  layout = K_LAYOUT if keys else V_LAYOUT
  T = new_BxTxKvxK.shape[1]
  row_layout = layout.replace("b", "")
  # one row's block at T slots has the row's axis order (a single advanced
  # index keeps its place), with T entries on s
  new = relayout(new_BxTxKvxK.astype(buf.dtype), _NEW, "b" + row_layout)

  def write_row(row, new_row, length):
    at = _at_slots(row_layout, length + jnp.arange(T))
    return row.at[at].set(new_row, mode="drop")

  b = layout.index("b")
  return jax.vmap(write_row, in_axes=(b, 0, 0), out_axes=b)(buf, new, lengths_B)


def _at_slots(row_layout: str, slots):
  """An index for row.at[...] of one row (layout without b) picking slots."""
  return tuple(slots if c == "s" else slice(None) for c in row_layout)


def take_rows(x, index, axis: int = 0):
  """Gather rows of `x` along `axis`, by a flat or a blocked row index.

  Args:
    x: an array with B rows along `axis`.
    index: int [N], flat: output row n is row index[n]; or int [P, N],
      blocked: the B rows form P equal blocks of R = B // P rows (problem p's
      rows), and output row p * N + n is row p * R + index[p, n], i.e. each
      index is relative to its own block (a fork of P prompts into N samples
      is zeros [P, N] with R = 1; resampling N particles per problem is the
      ancestors [P, N] with R = N).
    axis: the row axis of `x`.

  Returns:
    x with N (flat) or P * N (blocked) rows along `axis`.

  The blocked form is what a population sharded over devices needs: each
  gather stays inside its block, so with blocks split over `data` no device
  reads another's rows (measured in tests/test_sharding.py: a flat gather
  makes GSPMD all-gather the whole operand, the blocked one moves nothing).

  Raises:
    ValueError: if index is not 1-D or 2-D, P does not divide B, or a concrete
      (not traced) index is out of range. A traced index is not checked: out
      of range, jnp.take's fill value (NaN, or the int minimum) comes back.
  """
  B = x.shape[axis]
  if index.ndim not in (1, 2):
    raise ValueError(f"take_rows: index must be [N] or [P, N], got {index.shape}")
  if index.ndim == 2 and B % index.shape[0]:
    raise ValueError(f"take_rows: {index.shape[0]} blocks do not divide {B} rows")
  rows = B if index.ndim == 1 else B // index.shape[0]
  if is_concrete(index) and index.size:
    lo, hi = int(np.min(index)), int(np.max(index))
    if lo < 0 or hi >= rows:
      raise ValueError(
        f"take_rows: index values [{lo}, {hi}] outside [0, {rows}) "
        f"({'rows' if index.ndim == 1 else 'rows per block'})"
      )
  if index.ndim == 1:
    return jnp.take(x, index, axis=axis)
  P, N = index.shape
  xb = jnp.moveaxis(x, axis, 0).reshape(
    (P, B // P) + x.shape[:axis] + x.shape[axis + 1 :]
  )
  out = jax.vmap(lambda blk, i: jnp.take(blk, i, axis=0))(xb, index)
  return jnp.moveaxis(out.reshape((P * N,) + out.shape[2:]), 0, axis)


def flat_index(index, n_rows: int):
  """The flat row index [N'] equal to a flat [N] or blocked [P, N] `take_rows`
  index over `n_rows` rows (for host-side states kept as Python lists)."""
  if index.ndim == 1:
    return index
  P = index.shape[0]
  return (index + (n_rows // P) * jnp.arange(P, dtype=index.dtype)[:, None]).reshape(-1)


def reorder(cache: KVCache, index) -> KVCache:
  """Gather rows (`take_rows`): index int [N] (flat) or [P, N] (blocked).

  N may differ from B (fork one prompt into N samples with index =
  zeros [N], or P prompts with zeros [P, N]).
  """
  take = lambda x, layout: take_rows(x, index, axis=layout.index("b"))
  return KVCache(
    k=tuple(take(x, K_LAYOUT) for x in cache.k),
    v=tuple(take(x, V_LAYOUT) for x in cache.v),
    lengths=take_rows(cache.lengths, index),
  )


def commit_path(cache: KVCache, path_BxP, n_accept_B) -> KVCache:
  """Keep the entries of an accepted tree path.

  After `forward(..., n_valid_B=0)` wrote M tree tokens at slots
  [lengths, lengths + M), `path_BxP[b, :n_accept_B[b]]` lists which of them
  (0-based, in path order) were accepted; they are moved to slots
  [lengths, lengths + n_accept) and the length advances by n_accept.
  """
  P = path_BxP.shape[1]
  lengths = cache.lengths

  def move_row(row, row_layout, length, path_P, n_accept):
    src = jnp.clip(length + path_P, 0, cache.size - 1)
    keep = jnp.arange(P) < n_accept
    dst = jnp.where(keep, length + jnp.arange(P), cache.size)  # out of range: dropped
    picked = row[_at_slots(row_layout, src)]
    return row.at[_at_slots(row_layout, dst)].set(picked, mode="drop")

  def move(buf, layout):
    b, row_layout = layout.index("b"), layout.replace("b", "")
    fn = lambda row, *a: move_row(row, row_layout, *a)
    return jax.vmap(fn, in_axes=(b, 0, 0, 0), out_axes=b)(
      buf, lengths, path_BxP, n_accept_B
    )

  return KVCache(
    k=tuple(move(b, K_LAYOUT) for b in cache.k),
    v=tuple(move(b, V_LAYOUT) for b in cache.v),
    lengths=lengths + n_accept_B,
  )
