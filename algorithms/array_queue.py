"""A fixed-capacity priority queue held in arrays (jit / vmap friendly).

Best-first search (A*-decoding) needs a priority queue inside a jitted
`lax.while_loop`, where a Python heap cannot live. This one is four arrays of
static capacity Q, kept sorted best-first:

  f        [Q] float32  priority, smaller = better (+inf in empty entries)
  payload  [Q] int32    what the entry refers to (A*: a row of the state pool)
  seq      [Q] int32    insertion counter: ties in f pop first-in first-out
  valid    [Q] bool     entry in use (valid entries come first)
  next_seq []  int32    counter for the next push

Order is the total order (f, seq): equal priorities pop in insertion order and
the most recent of equal-priority entries is evicted first, so the queue
behaves exactly like a Python heap of (f, seq, payload) tuples truncated to its
Q best entries (the tests check this against `heapq`).

Shape letters: Q capacity, N entries per push, B entries per pop.

Operations (one queue; `jax.vmap` them for one queue per problem):

  empty(Q)                          a queue with no entries
  push(q, f_N, payload_N, valid_N)  insert the valid new entries (in index
      order); if more than Q entries result, keep the Q best of queue + new
      (evict-worst). O((Q+N) log(Q+N)): one lexsort of the concatenation.
  pop(q, B)                         remove and return the B best entries
      (fewer are valid when the queue holds fewer). O(Q): the queue is sorted,
      so this is a slice and a shift.
  peek(q)                           best priority (+inf when empty), O(1).
  size(q)                           number of valid entries, O(Q).

All shapes are static; Q, B and N are Python ints fixed at trace time. At the
sizes search uses (Q up to a few thousand) a full sort per push is cheaper in
practice than a scatter-based heap on accelerators, and far simpler.

Entries pushed with a non-finite (NaN or +-inf) priority are rejected (treated
as invalid), so +inf can mark empty entries unambiguously.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax.numpy as jnp


@flax.struct.dataclass
class ArrayQueue:
  """One queue (leading axes [...] are added by `jax.vmap`)."""

  f: Any  # float32 [Q] priority, ascending among valid entries (+inf empty)
  payload: Any  # int32 [Q] what each entry refers to
  seq: Any  # int32 [Q] insertion counter (FIFO among equal f)
  valid: Any  # bool [Q] entry in use; valid entries first
  next_seq: Any  # int32 [] counter for the next push

  @property
  def capacity(self) -> int:
    return self.f.shape[-1]


def empty(capacity: int) -> ArrayQueue:
  """A queue of `capacity` (Q) entries, none in use.

  Raises:
    ValueError: capacity is not a positive int.
  """
  if not isinstance(capacity, int) or capacity < 1:
    raise ValueError(f"queue capacity must be a positive int, got {capacity!r}")
  return ArrayQueue(
    f=jnp.full((capacity,), jnp.inf, jnp.float32),
    payload=jnp.zeros((capacity,), jnp.int32),
    seq=jnp.zeros((capacity,), jnp.int32),
    valid=jnp.zeros((capacity,), bool),
    next_seq=jnp.int32(0),
  )


def size(q: ArrayQueue):
  """Number of entries in use."""
  return jnp.sum(q.valid.astype(jnp.int32), axis=-1)


def peek(q: ArrayQueue):
  """Best priority in the queue, +inf when it is empty."""
  return jnp.where(q.valid[..., 0], q.f[..., 0], jnp.inf)


def _check_1d(name, x, n):
  if x.ndim != 1 or x.shape[0] != n:
    raise ValueError(f"{name} must have shape [{n}], got {tuple(x.shape)}")


def push(q: ArrayQueue, f_N, payload_N, valid_N=None):
  """Insert the valid new entries; keep the Q best of queue + new.

  f_N float32 [N] priorities, payload_N int32 [N], valid_N bool [N] (default
  all). Returns (queue, kept_N): kept_N[n] says whether new entry n is in the
  queue afterwards (False if it was invalid, had a non-finite priority or was
  evicted straight away).

  Raises:
    ValueError: a batched queue (vmap instead) or inputs not of shape [N].
  """
  if q.f.ndim != 1:
    raise ValueError(
      "push works on one queue; jax.vmap it over a batch of "
      f"queues (got f of shape {tuple(q.f.shape)})"
    )
  f_N = jnp.asarray(f_N, jnp.float32)
  N = f_N.shape[0] if f_N.ndim == 1 else -1
  _check_1d("f_N", f_N, N)
  payload_N = jnp.asarray(payload_N, jnp.int32)
  _check_1d("payload_N", payload_N, N)
  valid_N = jnp.ones((N,), bool) if valid_N is None else jnp.asarray(valid_N, bool)
  _check_1d("valid_N", valid_N, N)
  Q = q.capacity

  valid_N = valid_N & jnp.isfinite(f_N)
  # New entries get consecutive seq numbers in index order (valid ones only).
  rank_N = jnp.cumsum(valid_N.astype(jnp.int32)) - 1
  seq_N = q.next_seq + rank_N

  f = jnp.concatenate([q.f, f_N])
  payload = jnp.concatenate([q.payload, payload_N])
  seq = jnp.concatenate([q.seq, seq_N])
  valid = jnp.concatenate([q.valid, valid_N])
  # Sort by (valid first, f, seq): jnp.lexsort's last key is the primary one.
  order = jnp.lexsort((seq, jnp.where(valid, f, jnp.inf), ~valid))[:Q]
  new = ArrayQueue(
    f=jnp.where(valid[order], f[order], jnp.inf),
    payload=payload[order],
    seq=seq[order],
    valid=valid[order],
    next_seq=q.next_seq + jnp.sum(valid_N.astype(jnp.int32)),
  )
  kept = jnp.zeros((Q + N,), bool).at[order].set(valid[order])
  return new, kept[Q:]


def pop(q: ArrayQueue, num: int):
  """Remove the `num` (B) best entries. Returns (queue, f_B, payload_B,
  valid_B), best first; entries beyond the queue's size come back with valid
  False.

  Raises:
    ValueError: a batched queue (vmap instead) or num not an int in [1, Q].
  """
  if q.f.ndim != 1:
    raise ValueError(
      "pop works on one queue; jax.vmap it over a batch of "
      f"queues (got f of shape {tuple(q.f.shape)})"
    )
  Q = q.capacity
  if not isinstance(num, int) or not 1 <= num <= Q:
    raise ValueError(f"pop size must be an int in [1, capacity={Q}], got {num!r}")
  shift = lambda x, fill: jnp.concatenate([x[num:], jnp.full((num,), fill, x.dtype)])
  rest = ArrayQueue(
    f=shift(q.f, jnp.inf),
    payload=shift(q.payload, 0),
    seq=shift(q.seq, 0),
    valid=shift(q.valid, False),
    next_seq=q.next_seq,
  )
  return rest, q.f[:num], q.payload[:num], q.valid[:num]
