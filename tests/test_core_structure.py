"""One implementation per concept in the core: the attention switch point,
the cache layout owned by jaxllm.cache, one bucket_length, one fork, one
Compute record.

References are independent of the code under test: attention against a
float64 numpy loop over heads, other cache layouts against today's layout
and against the cache-free forward, bucket sizes and compute sums by hand.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import cache as cache_lib
from jaxllm import flops as flops_lib
from jaxllm import model as model_lib
from jaxllm import train
from jaxllm.config import ModelConfig
from jaxllm.decoding import BigramLM, Transformer, fork_index, prefill_and_fork
from jaxllm.generate import bucket_length, pad_prompts
from jaxllm.params import init_params

CFG = ModelConfig(
  vocab_size=61,
  d_model=32,
  n_layers=2,
  n_heads=4,
  n_kv_heads=2,
  d_ff=48,
  head_dim=8,
  max_seq_len=64,
  layer_windows=(0, 3),
)


def _params(cfg=CFG, seed=0):
  return init_params(cfg, jax.random.key(seed))


# --------------------------------------------------------------------------
# attention: the reference path against a float64 loop; the registry
# --------------------------------------------------------------------------


def _numpy_attention(q_BxTxHxK, k_BxSxKvxK, v_BxSxKvxK, mask_BxTxS, scale, cap):
  q, k, v = (np.asarray(a, np.float64) for a in (q_BxTxHxK, k_BxSxKvxK, v_BxSxKvxK))
  B, T, H, K = q.shape
  G = H // k.shape[2]
  out = np.zeros_like(q)
  for b in range(B):
    for h in range(H):
      s = q[b, :, h] @ k[b, :, h // G].T * scale  # [T, S]
      if cap is not None:
        s = cap * np.tanh(s / cap)
      s = np.where(mask_BxTxS[b], s, -1e30)
      p = np.exp(s - s.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      out[b, :, h] = p @ v[b, :, h // G]
  return out


@pytest.mark.parametrize("cap", [None, 2.0])
def test_attention_jnp_matches_numpy_loop(cap):
  cfg = CFG.replace(attn_softcap=cap)
  rng = np.random.default_rng(0)
  B, T, S, H, Kv, K = 2, 3, 5, 4, 2, 8
  q = rng.standard_normal((B, T, H, K)).astype(np.float32)
  k = rng.standard_normal((B, S, Kv, K)).astype(np.float32)
  v = rng.standard_normal((B, S, Kv, K)).astype(np.float32)
  mask = rng.random((B, T, S)) < 0.6
  mask[1, 2] = False  # a fully masked row: uniform, not NaN
  out = model_lib.attention_jnp(
    jnp.asarray(q),
    cache_lib.relayout(jnp.asarray(k), "bskd", cache_lib.K_LAYOUT),
    cache_lib.relayout(jnp.asarray(v), "bskd", cache_lib.V_LAYOUT),
    jnp.asarray(mask),
    cfg,
  )
  want = _numpy_attention(q, k, v, mask, cfg.attn_scale, cap)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    np.asarray(out)[1, 2], v[1].mean(0).repeat(2, 0), rtol=1e-5, atol=1e-6
  )


def test_attention_impl_is_one_registry_entry(monkeypatch):
  """A new implementation is one function + one registry entry + the config
  field; forward then calls it (and only it) for every layer."""
  calls = []

  def counting(q, keys, values, mask, cfg):
    calls.append(q.shape)
    return model_lib.attention_jnp(q, keys, values, mask, cfg)

  monkeypatch.setitem(model_lib.ATTENTION_IMPLS, "counting", counting)
  cfg = CFG.replace(attention_impl="counting")
  params = _params()
  toks = jnp.asarray(np.random.default_rng(1).integers(0, 61, (2, 7)))
  ours = model_lib.forward(params, toks, cfg)[0]
  ref = model_lib.forward(params, toks, CFG)[0]
  assert len(calls) == CFG.n_layers
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))


def test_unknown_attention_impl_names_the_field():
  with pytest.raises(ValueError, match="attention_impl"):
    CFG.replace(attention_impl="flash-that-does-not-exist")
  with pytest.raises(ValueError, match="attention_impl.*registered"):
    model_lib.get_attention("nope")
  assert CFG.attention_impl == "jnp"
  assert model_lib.get_attention("jnp") is model_lib.attention_jnp


# --------------------------------------------------------------------------
# cache layout: owned by jaxllm.cache; another layout is that file's change
# --------------------------------------------------------------------------


def _decode_run(cfg, params):
  """Prefill (ragged), a 2-token extend, a tree score + commit, a reorder:
  logits of every step and the committed lengths."""
  model = Transformer(cfg)
  toks = jnp.asarray(np.random.default_rng(2).integers(0, 61, (2, 6)), jnp.int32)
  state, l0 = model.prefill(params, toks, jnp.array([6, 4]), 16)
  state, l1 = model.extend(
    params, state, jnp.array([[5, 9], [7, 0]]), jnp.array([[True, True], [True, False]])
  )
  state, l2 = model.score_tree(
    params, state, jnp.array([[1, 2, 3], [4, 5, 6]]), jnp.array([-1, 0, 0])
  )
  state = model.commit(state, jnp.array([[0, 2], [0, 1]]), jnp.array([2, 1]))
  state = model.reorder(state, jnp.array([1, 0, 1]))
  state, l3 = model.extend(params, state, jnp.array([[11], [12], [13]]))
  return [np.asarray(x) for x in (l0, l1, l2, l3)], np.asarray(state.lengths)


@pytest.mark.parametrize(
  "k_layout,v_layout", [("bskd", "bskd"), ("bksd", "bkds"), ("kbds", "sbkd")]
)
def test_other_cache_layouts_change_only_cache_py(monkeypatch, k_layout, v_layout):
  params = _params()
  want, want_len = _decode_run(CFG, params)
  monkeypatch.setattr(cache_lib, "K_LAYOUT", k_layout)
  monkeypatch.setattr(cache_lib, "V_LAYOUT", v_layout)
  c = cache_lib.init_cache(CFG, 3, 16)
  sizes = {"b": 3, "k": CFG.n_kv_heads, "d": CFG.head_dim, "s": 16}
  assert c.k[0].shape == tuple(sizes[a] for a in k_layout)
  assert c.v[0].shape == tuple(sizes[a] for a in v_layout)
  assert c.size == 16
  got, got_len = _decode_run(CFG, params)
  np.testing.assert_array_equal(got_len, want_len)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # And the cached logits still match the cache-free forward.
  toks = jnp.asarray(np.random.default_rng(3).integers(0, 61, (1, 9)))
  full = model_lib.forward(params, toks, CFG)[0]
  c = cache_lib.init_cache(CFG, 1, 12)
  part, c, _ = model_lib.forward(params, toks[:, :5], CFG, cache=c)
  rest, c, _ = model_lib.forward(params, toks[:, 5:], CFG, cache=c)
  np.testing.assert_allclose(
    np.concatenate([part, rest], 1), full, rtol=1e-5, atol=1e-5
  )


def test_layout_helpers():
  x = jnp.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # [B, T, Kv, K]
  k = cache_lib.layout_keys(x)
  v = cache_lib.layout_values(x)
  assert k.shape == (2, 4, 5, 3) and v.shape == (2, 4, 3, 5)
  assert int(k[1, 2, 3, 0]) == int(x[1, 0, 2, 3])
  assert int(v[1, 2, 0, 3]) == int(x[1, 0, 2, 3])
  with pytest.raises(ValueError, match="relayout"):
    cache_lib.relayout(x, "bskd", "bsk")


# --------------------------------------------------------------------------
# bucket_length: one function, two documented policies
# --------------------------------------------------------------------------


def test_bucket_length_policies():
  bl = bucket_length
  assert [bl(n) for n in (1, 16, 17, 33, 100)] == [16, 16, 32, 64, 128]
  assert [bl(n, policy="multiple") for n in (1, 16, 17, 33, 100)] == [
    16,
    16,
    32,
    48,
    112,
  ]
  assert bl(9, policy="multiple", multiple=8) == 16
  assert bl(5, buckets=[8, 4]) == 8 and bl(5, [8, 4], policy="multiple") == 8
  # jaxllm.train's name is this function with the training policy preset.
  assert train.bucket_length.func is bl
  assert train.bucket_length(33) == 48
  assert train.pad_batch([[1] * 33])["tokens"].shape == (1, 48)
  assert pad_prompts([[1] * 33])[0].shape == (1, 64)
  for bad, msg in (
    (dict(n=0), "length"),
    (dict(n=3, policy="odd"), "policy"),
    (dict(n=9, buckets=[4, 8]), "largest bucket"),
  ):
    with pytest.raises(ValueError, match=msg):
      bl(**bad)


# --------------------------------------------------------------------------
# N samples per prompt: one prefill, one gather
# --------------------------------------------------------------------------


def test_prefill_and_fork_prefills_once():
  np.testing.assert_array_equal(fork_index(2, 3), [0, 0, 0, 1, 1, 1])
  calls = []

  @dataclasses.dataclass(frozen=True)
  class Counting(BigramLM):
    def prefill(self, table, tokens, lengths, cache_size=0):
      calls.append(tokens.shape)
      return super().prefill(table, tokens, lengths, cache_size)

  table = jnp.asarray(np.random.default_rng(0).standard_normal((7, 7)))
  state, logits = prefill_and_fork(
    Counting(7), table, jnp.array([[1, 2, 0], [3, 4, 5]]), jnp.array([2, 3]), 8, 3
  )
  assert calls == [(2, 3)]
  np.testing.assert_array_equal(state.last, [2, 2, 2, 5, 5, 5])
  np.testing.assert_array_equal(logits, table[jnp.array([2, 2, 2, 5, 5, 5])])


# --------------------------------------------------------------------------
# Compute: one record, documented totals, no silent 0 FLOPs
# --------------------------------------------------------------------------


def test_compute_totals_and_per_problem():
  a = flops_lib.Compute(
    prefill_tokens=10, generated_tokens=30, model_calls=4, decode_flops=300.0
  )
  b = flops_lib.Compute(
    prefill_tokens=2, verifier_tokens=8, verifier_calls=1, verifier_flops=50.0
  )
  total = sum([a, b])
  assert total == a + b
  assert total.flops == 350.0
  per = total.per_problem(2)
  assert (
    per.prefill_tokens,
    per.generated_tokens,
    per.model_calls,
    per.verifier_calls,
    per.flops,
  ) == (6.0, 15.0, 2.0, 0.5, 175.0)
  assert per.as_dict()["flops"] == 175.0
  for bad in (0, 1.5, True):
    with pytest.raises(ValueError, match="n_problems"):
      total.per_problem(bad)


def test_flops_need_a_config_or_a_declared_free_model():
  assert BigramLM.flops_free is True
  assert flops_lib.is_flops_free(BigramLM(5))
  assert flops_lib.flops_config(BigramLM(5)) is None
  assert flops_lib.flops_config(Transformer(CFG)) is CFG

  class Wrapper:  # a scorer wrapping a model
    model = Transformer(CFG)

  assert flops_lib.flops_config(Wrapper()) is CFG
  with pytest.raises(ValueError, match="policy object has no `cfg`"):
    flops_lib.flops_config(object(), "policy")
  with pytest.raises(ValueError, match="ModelConfig"):
    flops_lib.decode_flops(None, 3)
  with pytest.raises(ValueError, match="ModelConfig"):
    flops_lib.prefill_flops(None, 3)
  # Hand count: one token with 3 keys on a 2-layer model whose second layer
  # has window 3: matmuls 2 * (layers + head) + 4 * H * K * keys per layer.
  c = CFG.param_counts()
  want = 2 * (c["layers"] + 61 * 32) + 4 * 4 * 8 * (3 + 3)
  assert float(flops_lib.decode_flops(CFG, 3)) == want
