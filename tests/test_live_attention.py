"""Live-prefix attention (jaxllm.model.attention_live, attention_impl="live"):
equal to the plain-jnp reference on every kind of mask, reading only the live
blocks of the cache, and the same greedy generations in a whole model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import ModelConfig, Transformer, generate, init_params, make_sampling
from jaxllm import model as model_lib
from jaxllm.cache import K_LAYOUT, V_LAYOUT, relayout
from jaxllm.model import attention_jnp, attention_live, live_range


def _cfg(n_heads=4, n_kv_heads=2, softcap=None) -> ModelConfig:
  return ModelConfig(
    vocab_size=11,
    d_model=8 * n_heads,
    n_layers=1,
    n_heads=n_heads,
    n_kv_heads=n_kv_heads,
    d_ff=16,
    attn_softcap=softcap,
  )


def _qkv(B, T, S, H, Kv, K=8, seed=0):
  """Random queries [B, T, H, K] and keys / values in the cache layouts."""
  r = np.random.default_rng(seed)
  q = jnp.asarray(r.normal(size=(B, T, H, K)) * 2, jnp.float32)
  k = jnp.asarray(r.normal(size=(B, S, Kv, K)) * 2, jnp.float32)
  v = jnp.asarray(r.normal(size=(B, S, Kv, K)), jnp.float32)
  return q, relayout(k, "bskd", K_LAYOUT), relayout(v, "bskd", V_LAYOUT)


def _ragged_mask(B, T, S, seed=0):
  """Cache-style: row b holds a committed prefix of lengths[b] slots plus T
  new tokens after it (causal among themselves), ragged over the rows."""
  r = np.random.default_rng(seed)
  lengths = r.integers(0, S - T + 1, size=B)
  j = np.arange(S)[None, None, :]
  t = np.arange(T)[None, :, None]
  L = lengths[:, None, None]
  return jnp.asarray((j < L) | ((j >= L) & (j - L <= t)))


def _tree_mask(B, T, S, seed=0):
  """A prefix plus T tree tokens that each see their ancestors and self
  (random parents), as `Transformer.score_tree` builds it."""
  r = np.random.default_rng(seed)
  parent = [-1] + [int(r.integers(0, i)) for i in range(1, T)]
  anc = np.eye(T, dtype=bool)
  for i in range(1, T):
    anc[i] |= anc[parent[i]]
  lengths = r.integers(0, S - T + 1, size=B)
  m = np.zeros((B, T, S), bool)
  for b, L in enumerate(lengths):
    m[b, :, :L] = True
    m[b, :, L : L + T] = anc
  return jnp.asarray(m)


def _random_mask(B, T, S, seed=0):
  """Arbitrary: random allowed slots, all of them before a random bound."""
  r = np.random.default_rng(seed)
  m = r.random((B, T, S)) < 0.4
  m[:, :, int(r.integers(1, S + 1)) :] = False
  m[:, :, 0] = True  # no fully masked row here (tested on its own)
  return jnp.asarray(m)


MASKS = {"ragged": _ragged_mask, "tree": _tree_mask, "random": _random_mask}
HEADS = {"gqa": (4, 2), "mqa": (4, 1), "mha": (2, 2)}
# (B, T, S, block, heads): S a multiple of the block or not, S below the
# block, block 1, single-token decode and multi-token extension; each head
# grouping at least once.
CASES = [
  (1, 1, 37, 8, "gqa"),
  (3, 1, 64, 16, "mqa"),
  (2, 4, 50, 16, "gqa"),
  (2, 5, 33, 128, "mha"),
  (3, 3, 20, 1, "gqa"),
]


def _live(block, cfg):
  return jax.jit(functools.partial(attention_live, cfg=cfg, block=block))


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("mask_kind", list(MASKS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_live_matches_jnp(case, mask_kind, softcap):
  B, T, S, block, heads = case
  H, Kv = HEADS[heads]
  cfg = _cfg(H, Kv, softcap)
  q, keys, vals = _qkv(B, T, S, H, Kv)
  mask = MASKS[mask_kind](B, T, S)
  want = attention_jnp(q, keys, vals, mask, cfg)
  got = _live(block, cfg)(q, keys, vals, mask)
  assert got.dtype == want.dtype and got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("block", [4, 7, 128])
def test_fully_masked_row_is_uniform_over_all_slots(block):
  """A query with no allowed slot averages the values of all S slots (the
  closed form of attention_jnp's finite NEG_INF rule), even when the other
  rows only need a short prefix; the other rows are unaffected."""
  B, T, S, H, Kv = 2, 3, 30, 4, 2
  cfg = _cfg(H, Kv)
  q, keys, vals = _qkv(B, T, S, H, Kv, seed=1)
  mask = _ragged_mask(B, T, 10).astype(bool)
  mask = jnp.pad(mask, ((0, 0), (0, 0), (0, S - 10))).at[1, 2].set(False)
  got = _live(block, cfg)(q, keys, vals, mask)
  mean_KvxK = relayout(vals, V_LAYOUT, "bskd")[1].mean(axis=0)  # [Kv, K]
  want_row = jnp.repeat(mean_KvxK, H // Kv, axis=0)  # [H, K]
  np.testing.assert_allclose(got[1, 2], want_row, atol=2e-6, rtol=2e-6)
  np.testing.assert_allclose(
    got, attention_jnp(q, keys, vals, mask, cfg), atol=2e-6, rtol=2e-6
  )


def test_live_range():
  m = np.zeros((2, 2, 40), bool)
  m[0, 0, 5:9] = True
  m[1, 1, 12:20] = True
  m[0, 1, 7] = m[1, 0, 30] = True
  assert [int(x) for x in live_range(jnp.asarray(m))] == [5, 31]
  m[1, 0] = False  # a row with no allowed slot needs every slot
  assert [int(x) for x in live_range(jnp.asarray(m))] == [0, 40]


@pytest.mark.parametrize("block", [8, 16])
def test_blocks_outside_the_live_range_are_not_read(block):
  """NaN in every slot before the live range's first block and after its
  last: attention_jnp turns NaN (0 * NaN), live never reads them."""
  B, T, S, H, Kv = 2, 2, 64, 4, 2
  cfg = _cfg(H, Kv)
  q, keys, vals = _qkv(B, T, S, H, Kv, seed=2)
  mask = np.zeros((B, T, S), bool)
  mask[0, :, 17:29] = mask[1, :, 20:24] = True  # live slots [17, 29)
  lo, hi = (17 // block) * block, -(-29 // block) * block
  dead = (np.arange(S) < lo) | (np.arange(S) >= hi)
  nan_at = lambda x, layout: jnp.where(
    jnp.asarray(dead).reshape([-1 if c == "s" else 1 for c in layout]), jnp.nan, x
  )
  mask = jnp.asarray(mask)
  want = attention_jnp(q, keys, vals, mask, cfg)
  got = _live(block, cfg)(q, nan_at(keys, K_LAYOUT), nan_at(vals, V_LAYOUT), mask)
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-6)
  poisoned = attention_jnp(q, nan_at(keys, K_LAYOUT), nan_at(vals, V_LAYOUT), mask, cfg)
  assert np.isnan(np.asarray(poisoned)).any()  # the poison is real


def test_bfloat16_values_return_the_query_dtype():
  """A bfloat16 cache under float32 activations: the output is float32 and
  both implementations agree (float32 accumulation)."""
  B, T, S, H, Kv = 2, 1, 40, 4, 2
  cfg = _cfg(H, Kv)
  q, keys, vals = _qkv(B, T, S, H, Kv, seed=3)
  keys, vals = keys.astype(jnp.bfloat16), vals.astype(jnp.bfloat16)
  mask = _ragged_mask(B, T, S, seed=3)
  want = attention_jnp(q, keys, vals, mask, cfg)
  got = _live(16, cfg)(q, keys, vals, mask)
  assert want.dtype == got.dtype == jnp.float32
  # p is rounded to bfloat16 before the values product in both, on
  # different scales (normalised vs. relative to the block's running max)
  np.testing.assert_allclose(got, want, atol=2e-2, rtol=2e-2)


def test_bad_block_is_named():
  cfg = _cfg()
  q, keys, vals = _qkv(1, 1, 8, 4, 2)
  mask = jnp.ones((1, 1, 8), bool)
  for bad in (0, -3, 2.0, True):
    with pytest.raises(ValueError, match="block"):
      attention_live(q, keys, vals, mask, cfg, block=bad)


# --- whole model ------------------------------------------------------------

MODEL = dict(vocab_size=97, d_model=48, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=96)
MODEL_VARIANTS = {
  "gqa": dict(),
  "sliding_softcap": dict(
    sliding_window=4, sliding_window_pattern=2, attn_softcap=5.0, final_softcap=3.0
  ),
}


@pytest.fixture
def live8(monkeypatch):
  """attention_live with 8-slot blocks registered as "live8", so a small
  cache spans several blocks."""
  monkeypatch.setitem(
    model_lib.ATTENTION_IMPLS, "live8", functools.partial(attention_live, block=8)
  )
  return "live8"


@pytest.mark.parametrize("variant", list(MODEL_VARIANTS))
def test_generate_greedy_live_equals_jnp(variant, live8):
  """Same greedy tokens (and logprobs up to rounding) with the live
  attention as with the reference, for ragged prompts in a cache much longer
  than they are, and with the default block."""
  cfg = ModelConfig(**MODEL, **MODEL_VARIANTS[variant], max_seq_len=128)
  p = init_params(cfg, jax.random.key(0))
  prompts = [[5, 3, 9, 1, 4, 4, 2], [7, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
  greedy = make_sampling(0.0)

  def run(impl):
    model = Transformer(cfg.replace(attention_impl=impl))
    key = jax.random.key(0)
    return generate(model, p, prompts, key, 20, greedy, cache_size=100)

  ref = run("jnp")
  for impl in (live8, "live"):
    out = run(impl)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-4)


def test_config_accepts_live_and_names_unknown():
  assert ModelConfig(**MODEL, attention_impl="live").attention_impl == "live"
  with pytest.raises(ValueError, match="attention_impl"):
    ModelConfig(**MODEL, attention_impl="flash")
