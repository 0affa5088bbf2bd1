"""Array priority queue against a Python reference (sorted list of tuples)."""

import heapq

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms import array_queue as aq

Q, N = 6, 5  # capacity, entries per push
POPS = (1, 3)

_push = jax.jit(aq.push)
_pop = {b: jax.jit(lambda q, b=b: aq.pop(q, b)) for b in POPS}
_size = jax.jit(aq.size)
_peek = jax.jit(aq.peek)


class RefQueue:
  """heapq of (f, seq, payload), truncated to the `cap` best after each push."""

  def __init__(self, cap):
    self.cap, self.heap, self.seq = cap, [], 0

  def push(self, f, payload, valid):
    kept_ids = []
    for fi, pi, vi in zip(f, payload, valid):
      if vi and np.isfinite(fi):
        heapq.heappush(self.heap, (float(fi), self.seq, int(pi)))
        kept_ids.append(self.seq)
        self.seq += 1
    self.heap = heapq.nsmallest(self.cap, self.heap)  # evict the worst
    heapq.heapify(self.heap)
    alive = {e[1] for e in self.heap}
    return [s in alive for s in kept_ids]

  def pop(self, b):
    return [heapq.heappop(self.heap) for _ in range(min(b, len(self.heap)))]


@pytest.mark.parametrize("seed", range(60))
def test_random_operations_match_reference(seed):
  rng = np.random.default_rng(seed)
  q, ref = aq.empty(Q), RefQueue(Q)
  for _ in range(25):
    if rng.random() < 0.55:
      # Priorities on a coarse grid (many ties), a few non-finite ones.
      f = rng.integers(0, 6, N).astype(np.float32) / 2
      f[rng.random(N) < 0.1] = np.inf
      f[rng.random(N) < 0.05] = np.nan
      payload = rng.integers(0, 1000, N)
      valid = rng.random(N) < 0.7
      q, kept = _push(q, jnp.asarray(f), jnp.asarray(payload), jnp.asarray(valid))
      ref_kept = ref.push(f, payload, valid)
      accepted = valid & np.isfinite(f)
      np.testing.assert_array_equal(np.asarray(kept)[accepted], ref_kept)
      assert not np.asarray(kept)[~accepted].any()
    else:
      b = int(rng.choice(POPS))
      q, f, payload, valid = _pop[b](q)
      got = [
        (float(fi), int(pi))
        for fi, pi, vi in zip(np.asarray(f), np.asarray(payload), np.asarray(valid))
        if vi
      ]
      want = [(e[0], e[2]) for e in ref.pop(b)]
      assert got == want
      assert not np.asarray(valid)[len(want) :].any()
    assert int(_size(q)) == len(ref.heap)
    best = min(ref.heap)[0] if ref.heap else np.inf
    assert float(_peek(q)) == best
    # Contents: the same (f, payload) multiset, valid entries first and sorted.
    v = np.asarray(q.valid)
    assert (np.sort(~v) == ~v).all()
    got = sorted(zip(np.asarray(q.f)[v].tolist(), np.asarray(q.payload)[v].tolist()))
    assert got == sorted((e[0], e[2]) for e in ref.heap)


def test_vmap_over_queues():
  qs = jax.vmap(lambda _: aq.empty(4))(jnp.arange(3))
  f = jnp.array([[3.0, 1.0, 2.0], [0.0, 0.0, 0.0], [9.0, 8.0, 7.0]])
  qs, kept = jax.vmap(aq.push)(
    qs, f, jnp.arange(9).reshape(3, 3), jnp.ones((3, 3), bool)
  )
  qs, fb, pb, vb = jax.vmap(lambda q: aq.pop(q, 2))(qs)
  np.testing.assert_array_equal(fb, [[1.0, 2.0], [0.0, 0.0], [7.0, 8.0]])
  np.testing.assert_array_equal(pb, [[1, 2], [3, 4], [8, 7]])
  np.testing.assert_array_equal(jax.vmap(aq.size)(qs), [1, 1, 1])


def test_bad_input_raises():
  with pytest.raises(ValueError, match="capacity"):
    aq.empty(0)
  q = aq.empty(3)
  with pytest.raises(ValueError, match="pop size"):
    aq.pop(q, 4)
  with pytest.raises(ValueError, match="payload_N"):
    aq.push(q, jnp.zeros(2), jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match="vmap"):
    aq.push(
      jax.vmap(lambda _: aq.empty(3))(jnp.arange(2)),
      jnp.zeros(2),
      jnp.zeros(2, jnp.int32),
    )
