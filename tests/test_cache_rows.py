"""The cache's row operations against plain numpy references: flat and blocked
row gathers (`take_rows`, `flat_index`, `fork_rows`), the per-row scatter of
new entries (`write_new`, writes past the end dropped) and `commit_path`.
(Their sharded lowering is checked in tests/test_sharding.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import cache as cache_lib
from jaxllm.config import llama_like
from jaxllm.decoding import fork_index, fork_rows


def test_take_rows_blocked_equals_flat_reference():
  rng = np.random.default_rng(0)
  P, R, N = 3, 4, 5
  x = rng.normal(size=(2, P * R, 3)).astype(np.float32)  # rows on axis 1
  index = rng.integers(0, R, size=(P, N)).astype(np.int32)
  want = np.stack([x[:, p * R + index[p, n]] for p in range(P) for n in range(N)], 1)
  got = cache_lib.take_rows(jnp.asarray(x), jnp.asarray(index), axis=1)
  np.testing.assert_array_equal(got, want)
  flat = cache_lib.flat_index(jnp.asarray(index), P * R)
  np.testing.assert_array_equal(
    flat, [p * R + index[p, n] for p in range(P) for n in range(N)]
  )
  np.testing.assert_array_equal(cache_lib.take_rows(jnp.asarray(x), flat, axis=1), want)


def test_fork_rows_is_fork_index_blocked():
  x = jnp.arange(3 * 2).reshape(3, 2)
  np.testing.assert_array_equal(
    cache_lib.take_rows(x, fork_rows(3, 4)), jnp.take(x, fork_index(3, 4), axis=0)
  )
  np.testing.assert_array_equal(
    cache_lib.flat_index(fork_rows(3, 4), 3), fork_index(3, 4)
  )


def test_take_rows_rejects_bad_index():
  x = jnp.zeros((6, 2))
  with pytest.raises(ValueError, match="blocks do not divide"):
    cache_lib.take_rows(x, jnp.zeros((4, 2), jnp.int32))
  with pytest.raises(ValueError, match=r"\[N\] or \[P, N\]"):
    cache_lib.take_rows(x, jnp.zeros((1, 2, 3), jnp.int32))
  with pytest.raises(ValueError, match=r"\[0, 3\] outside \[0, 3\)"):
    cache_lib.take_rows(x, jnp.array([[3, 0], [0, 0]], jnp.int32))  # blocks of 3
  with pytest.raises(ValueError, match=r"\[-1, 0\] outside \[0, 6\)"):
    cache_lib.take_rows(x, jnp.array([0, -1], jnp.int32))


def _cfg():
  return llama_like(
    vocab_size=16, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=32
  )


def _dense(buf, layout):
  """A buffer in `layout` as [B, S, Kv, K] numpy."""
  return np.asarray(cache_lib.relayout(buf, layout, "bskd"))


@pytest.mark.parametrize("keys", [True, False])
def test_write_new_matches_numpy_and_drops_past_the_end(keys):
  cfg = _cfg()
  B, S, T = 3, 6, 3
  layout = cache_lib.K_LAYOUT if keys else cache_lib.V_LAYOUT
  c = cache_lib.init_cache(cfg, B, S)
  rng = np.random.default_rng(1)
  old = rng.normal(size=(B, S, cfg.n_kv_heads, cfg.head_dim)).astype(np.float32)
  buf = cache_lib.relayout(jnp.asarray(old), "bskd", layout).astype(c.k[0].dtype)
  new = rng.normal(size=(B, T, cfg.n_kv_heads, cfg.head_dim)).astype(np.float32)
  lengths = np.array([0, 2, 5], np.int32)  # row 2 writes slot 5, drops 6 and 7
  got = _dense(
    cache_lib.write_new(buf, jnp.asarray(new), jnp.asarray(lengths), keys), layout
  )
  want = old.copy()
  for b in range(B):
    for t in range(T):
      if lengths[b] + t < S:
        want[b, lengths[b] + t] = new[b, t]
  np.testing.assert_array_equal(got, want)


def test_commit_path_matches_numpy():
  cfg = _cfg()
  B, S = 2, 8
  c = cache_lib.init_cache(cfg, B, S)
  rng = np.random.default_rng(2)
  dense = rng.normal(size=(B, S, cfg.n_kv_heads, cfg.head_dim)).astype(np.float32)
  c = cache_lib.KVCache(
    k=(cache_lib.relayout(jnp.asarray(dense), "bskd", cache_lib.K_LAYOUT),),
    v=(cache_lib.relayout(jnp.asarray(dense), "bskd", cache_lib.V_LAYOUT),),
    lengths=jnp.array([2, 3], jnp.int32),
  )
  path = np.array([[3, 1, 4], [0, 2, 1]], np.int32)
  n_acc = np.array([2, 3], np.int32)
  out = jax.jit(cache_lib.commit_path)(c, jnp.asarray(path), jnp.asarray(n_acc))
  want = dense.copy()
  for b in range(B):
    L = int(c.lengths[b])
    for i in range(n_acc[b]):
      want[b, L + i] = dense[b, L + path[b, i]]
  np.testing.assert_array_equal(_dense(out.k[0], cache_lib.K_LAYOUT), want)
  np.testing.assert_array_equal(_dense(out.v[0], cache_lib.V_LAYOUT), want)
  np.testing.assert_array_equal(out.lengths, [4, 6])
