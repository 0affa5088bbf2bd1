"""SoFT, early exit and unified layer skipping (algorithms/soft.py).

References are independent of the code under test:
  * the full model's own decode interface (`Transformer`) and plain `forward` passes
    without a cache (every layer kept => identical logits);
  * `_ref_decode`: a plain per-token decoder written here (one token at a time, a
    Python-list KV cache, its own attention), where each token follows a per-layer
    plan: run the layer, or only write the layer's K/V from the stream entering it
    (state propagation / skipped-layer fill);
  * `jaxllm.train.lm_loss` of each sub-model separately (one forward per exit);
  * exact two-token probabilities by enumerating plain forwards (speculative chi-square).
"""

import dataclasses
import functools
import itertools
import operator

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from algorithms import soft
from algorithms.speculative import SpecConfig, speculative_generate
from jaxllm.config import ModelConfig
from jaxllm.decoding import Transformer
from jaxllm.generate import generate
from jaxllm.model import (
  _mlp,
  _qkv,
  apply_rope,
  forward,
  lm_head,
  rms_norm,
  rope_inv_freq,
)
from jaxllm.params import init_params
from jaxllm.sampling import make_sampling
from jaxllm.train import init_train_state, lm_loss, make_optimizer, make_train_step

V = 8
L = 4
TOL = {"atol": 2e-5, "rtol": 2e-5}


@functools.cache
def _tiny():
  cfg = ModelConfig(
    vocab_size=V,
    d_model=32,
    n_layers=L,
    n_heads=4,
    n_kv_heads=2,
    d_ff=64,
    max_seq_len=64,
  )
  params = init_params(cfg, jax.random.key(7))
  # Peaked next-token distributions (the default init is near uniform).
  return cfg, dataclasses.replace(params, final_norm=params.final_norm * 8.0)


PROMPTS = np.array(
  [[3, 1, 4, 1, 5, 2], [2, 6, 5, 0, 0, 0], [7, 7, 0, 0, 0, 0]], np.int32
)
LENS = np.array([6, 3, 2], np.int32)
EXT = np.array([[1, 2, 3], [4, 0, 0], [5, 6, 0]], np.int32)  # ragged first step
EXT_VALID = np.array([[1, 1, 1], [1, 0, 0], [1, 1, 0]], bool)
STEPS = np.array([[2, 0, 5], [1, 7, 3], [6, 6, 4]], np.int32)  # then 3 single tokens


# ----------------------------------------------------------------------------------
# Independent per-token reference
# ----------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=3)
def _ref_qkv(lp, x_D, pos, cfg):
  """One layer's RoPE'd q [H, K], k and v [Kv, K] for one token's stream x [D]."""
  inv = rope_inv_freq(cfg)
  q, k, v = _qkv(rms_norm(x_D[None, None], lp.attn_norm, cfg), lp)
  p = jnp.reshape(pos, (1, 1))
  return apply_rope(q, p, inv)[0, 0], apply_rope(k, p, inv)[0, 0], v[0, 0]


@functools.partial(jax.jit, static_argnums=3)
def _ref_rest(lp, x_D, o_HxK, cfg):
  """The rest of the layer: output projection, residual, MLP, residual."""
  x = x_D + jnp.einsum("hk,hkd->d", o_HxK, lp.wo)
  return x + _mlp(rms_norm(x[None, None], lp.mlp_norm, cfg), lp, cfg)[0, 0]


def _ref_decode(params, cfg, seq, plans):
  """Decode `seq` one token at a time. plans[t][l]: True = run layer l on token t;
  False = only append layer l's K/V computed from the stream entering it (the stream
  is left unchanged). Returns (logits [len(seq), V], per-layer streams
  [len(seq), L, D] (the stream after layer l)). Attention is numpy over a list
  cache; the per-token projections and the MLP are the model's own pieces."""
  Kv, Kd, H = cfg.n_kv_heads, cfg.head_dim, cfg.n_heads
  keys = [[] for _ in range(cfg.n_layers)]
  vals = [[] for _ in range(cfg.n_layers)]
  logits, streams = [], []
  for t, tok in enumerate(seq):
    x = params.embed[int(tok)]  # [D]
    after = []
    for l, lp in enumerate(params.layers):
      q, k, v = _ref_qkv(lp, x, t, cfg)
      keys[l].append(np.asarray(k, np.float64))
      vals[l].append(np.asarray(v, np.float64))
      if plans[t][l]:
        q = np.asarray(q, np.float64).reshape(Kv, H // Kv, Kd)
        kk, vv = np.stack(keys[l]), np.stack(vals[l])  # [t + 1, Kv, Kd]
        s = np.einsum("kgd,tkd->kgt", q, kk) * cfg.attn_scale
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        o = np.einsum("kgt,tkd->kgd", p, vv).reshape(H, Kd)
        x = _ref_rest(lp, x, jnp.asarray(o, jnp.float32), cfg)
      after.append(x)
    logits.append(x)
    streams.append(jnp.stack(after))
  logits = _head_jit(params, jnp.stack(logits), cfg)
  return np.asarray(logits), np.asarray(jnp.stack(streams))


@functools.partial(jax.jit, static_argnums=2)
def _head_jit(params, x, cfg):
  return lm_head(params, x, cfg)


def _row_tokens(b):
  """Prompt, first (ragged) step and single-token steps of row b."""
  prompt = list(PROMPTS[b, : LENS[b]])
  step1 = list(EXT[b, : EXT_VALID[b].sum()])
  return prompt, step1, list(STEPS[b])


@functools.partial(jax.jit, static_argnums=0)
def _decode_steps(model, params):
  st, _ = model.prefill(params, jnp.asarray(PROMPTS), jnp.asarray(LENS), 16)
  st, l_ext = model.extend(params, st, jnp.asarray(EXT), jnp.asarray(EXT_VALID))
  l_steps = []
  for s in range(STEPS.shape[1]):
    st, lg = model.extend(params, st, jnp.asarray(STEPS[:, s : s + 1]))
    l_steps.append(lg[:, 0])
  return l_ext, jnp.stack(l_steps, 1), st


def _run_decoder(model, params):
  """Prefill, one ragged 3-token extend, 3 single-token extends (one jitted
  program). Returns (logits per valid new token per row, state)."""
  l_ext, l_steps, st = _decode_steps(model, params)
  l_ext, l_steps = np.asarray(l_ext), np.asarray(l_steps)
  out = [
    list(l_ext[b, : EXT_VALID[b].sum()]) + list(l_steps[b]) for b in range(len(LENS))
  ]
  return out, st


# ----------------------------------------------------------------------------------
# Layer selection
# ----------------------------------------------------------------------------------


def test_skip_layers_rule():
  assert soft.skip_layers(30, 5) == (0, 6, 12, 18, 24, 29)  # the source's case
  assert soft.skip_layers(30, 1) == tuple(range(30))
  assert soft.skip_layers(8, 2) == (0, 2, 5, 7)  # n = 4, interval 8 / 3
  assert soft.skip_layers(8, 3) == (0, 7)  # n = floor(8 / 3) = 2: first and last
  assert soft.skip_layers(8, 100) == (0, 7)
  assert soft.skip_layers(1, 4) == (0,)
  assert soft.skip_layers(12, 1.5) == (0, 1, 3, 5, 6, 8, 10, 11)  # n = 8
  for Ln, s in itertools.product((2, 5, 24, 30, 32), (1, 1.3, 2, 3, 4, 7)):
    kept = soft.skip_layers(Ln, s)
    n = max(2, int(Ln // s)) if Ln >= 2 else 1
    assert len(kept) == n and kept[0] == 0 and kept[-1] == Ln - 1
    assert all(b > a for a, b in itertools.pairwise(kept))
  for bad in (0, 0.5, -1, float("nan"), "2", True):
    with pytest.raises(ValueError, match="^s must"):
      soft.skip_layers(8, bad)
  with pytest.raises(ValueError, match="n_layers"):
    soft.skip_layers(0, 2)


# ----------------------------------------------------------------------------------
# Every layer kept => the full model
# ----------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _interface_calls(model, params):
  """Logits of prefill, a ragged extend, a 4-node tree; then commit a 2-node path
  and extend one token (all through the decode interface)."""
  st, l_pre = model.prefill(params, jnp.asarray(PROMPTS), jnp.asarray(LENS), 16)
  st, l_ext = model.extend(params, st, jnp.asarray(EXT), jnp.asarray(EXT_VALID))
  parent = jnp.asarray([-1, 0, 0, 1], jnp.int32)
  st, l_tree = model.score_tree(params, st, jnp.asarray([[1, 2, 3, 4]] * 3), parent)
  path = jnp.asarray([[0, 1], [0, 2], [0, 1]], jnp.int32)
  st = model.commit(st, path, jnp.asarray([2, 2, 1], jnp.int32))
  st, l_last = model.extend(params, st, jnp.asarray([[5], [6], [7]]))
  return l_pre, l_ext, l_tree, l_last


def test_every_layer_kept_reproduces_the_full_model():
  cfg, params = _tiny()
  want = _interface_calls(Transformer(cfg), params)
  models = [
    soft.sub_model(cfg, L),
    soft.SkipDecoder.for_speedup(cfg, 1),
    soft.EarlyExitDecoder(cfg, (1, 2, 3), threshold=1.0),
    soft.EarlyExitDecoder(cfg, (1, 2, 3), threshold=1.0, confidence="margin"),
  ]
  for model in models:
    got = _interface_calls(model, params)
    chex.assert_trees_all_close(got, want, **TOL)


def test_early_exit_threshold_zero_is_the_first_exit_sub_model():
  """threshold 0 with max_prob: every token exits at the first exit, so the logits
  of the new tokens are those of the depth-e1 stream over a cache whose layers >= e1
  were filled from it (checked per token by the reference)."""
  cfg, params = _tiny()
  ee = soft.EarlyExitDecoder(cfg, (2, 3), threshold=0.0)
  got, st = _run_decoder(ee, params)
  for b in range(3):
    prompt, step1, steps = _row_tokens(b)
    seq = prompt + step1 + steps
    plans = [[True] * L] * len(prompt) + [[True, True, False, False]] * (
      len(step1) + len(steps)
    )
    ref, _ = _ref_decode(params, cfg, seq, plans)
    np.testing.assert_allclose(np.stack(got[b]), ref[len(prompt) :], **TOL)
  n_new = EXT_VALID.sum(-1) + STEPS.shape[1]
  np.testing.assert_array_equal(st.exit_tokens_B, n_new)
  np.testing.assert_array_equal(st.exit_layers_B, 2 * n_new)


# ----------------------------------------------------------------------------------
# Depth-n sub-model
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3])
def test_sub_model_with_cache_equals_its_forward(n):
  cfg, params = _tiny()
  sub = soft.sub_model(cfg, n)
  assert sub.cfg.n_layers == n
  got, st = _run_decoder(sub, params)
  assert len(st.k) == n  # its own cache holds only n layers
  seqs = [list(itertools.chain(*_row_tokens(b))) for b in range(3)]
  T = max(map(len, seqs))
  batch = jnp.asarray([q + [0] * (T - len(q)) for q in seqs], jnp.int32)  # causal
  # Reference 1: its own config and the first n layers' params, no cache.
  sub_params = dataclasses.replace(params, layers=params.layers[:n])
  want = _forward_jit(sub_params, batch, cfg.replace(n_layers=n))
  # Reference 2: the full model's stream after layer n through the shared head.
  _, _, hid = forward(params, batch, cfg, return_hidden=True)
  np.testing.assert_allclose(lm_head(params, hid[n - 1], cfg), want, **TOL)
  for b in range(3):
    n0, n1 = len(_row_tokens(b)[0]), len(seqs[b])
    np.testing.assert_allclose(np.stack(got[b]), want[b, n0:n1], **TOL)


@functools.partial(jax.jit, static_argnums=2)
def _forward_jit(params, tokens, cfg):
  return forward(params, tokens, cfg)[0]


def test_sub_model_bad_depth():
  cfg, _ = _tiny()
  for bad in (0, L + 1, 1.5):
    with pytest.raises(ValueError, match="^n must"):
      soft.sub_model(cfg, bad)


# ----------------------------------------------------------------------------------
# Early exit with state propagation vs one-token-at-a-time reference
# ----------------------------------------------------------------------------------

EXITS = (1, 2, 3)


_early_exit_jit = jax.jit(soft.early_exit_forward, static_argnums=(1, 4, 6))


@functools.partial(jax.jit, static_argnums=0)
def _prefill(model, params):
  return model.prefill(params, jnp.asarray(PROMPTS), jnp.asarray(LENS), 16)


@functools.partial(jax.jit, static_argnums=0)
def _extend(model, params, state, tokens_BxS):
  return model.extend(params, state, tokens_BxS)


def _early_exit_run(threshold, confidence):
  cfg, params = _tiny()
  cache, _ = _prefill(Transformer(cfg), params)
  logits, depths = [], []
  steps = [(EXT, EXT_VALID)] + [
    (STEPS[:, s : s + 1], np.ones((3, 1), bool)) for s in range(STEPS.shape[1])
  ]
  for toks, valid in steps:
    lg, cache, d = _early_exit_jit(
      params,
      cfg,
      cache,
      jnp.asarray(toks),
      EXITS,
      jnp.float32(threshold),  # an array threshold: no recompile per value
      confidence,
      n_valid_B=jnp.asarray(valid.sum(-1), jnp.int32),
    )
    for b in range(3):
      for j in range(valid[b].sum()):
        if len(logits) <= b:
          logits.append([])
          depths.append([])
        logits[b].append(np.asarray(lg[b, j]))
        depths[b].append(int(d[b, j]))
  # One more token through the FULL model: it attends to the propagated entries.
  _, last = _extend(Transformer(cfg), params, cache, jnp.asarray([[3], [0], [6]]))
  return cfg, params, logits, depths, np.asarray(last[:, 0])


@pytest.mark.parametrize("confidence,threshold", [("max_prob", 0.98), ("margin", 0.96)])
def test_early_exit_equals_per_token_reference(confidence, threshold):
  cfg, params, logits, depths, last = _early_exit_run(threshold, confidence)
  all_depths = functools.reduce(operator.iadd, depths, [])
  assert len(set(all_depths)) >= 3, f"want mixed exit depths, got {all_depths}"
  for b in range(3):
    prompt, step1, steps = _row_tokens(b)
    seq = prompt + step1 + steps + [[3, 0, 6][b]]
    plans = [[True] * L] * len(prompt)
    plans += [[l < d for l in range(L)] for d in depths[b]]
    plans += [[True] * L]
    ref, streams = _ref_decode(params, cfg, seq, plans)
    n0 = len(prompt)
    np.testing.assert_allclose(np.stack(logits[b]), ref[n0:-1], **TOL)
    np.testing.assert_allclose(last[b], ref[-1], **TOL)
    # The exit decisions follow the rule on the reference's own streams.
    head = np.asarray(_head_jit(params, jnp.asarray(streams[n0:-1]), cfg), np.float64)
    pr = np.exp(head - head.max(-1, keepdims=True))
    pr = np.sort(pr / pr.sum(-1, keepdims=True), -1)  # [T, L, V] ascending
    confs = pr[..., -1] if confidence == "max_prob" else pr[..., -1] - pr[..., -2]
    for t, d in enumerate(depths[b]):
      for e in EXITS:
        c = confs[t, e - 1]
        if e < d:
          assert c <= threshold + 1e-5
        elif e == d:
          assert c > threshold - 1e-5


def test_early_exit_decoder_counts_depths():
  cfg, params = _tiny()
  _, _, _, depths, _ = _early_exit_run(0.98, "max_prob")
  _, st = _run_decoder(soft.EarlyExitDecoder(cfg, EXITS, 0.98), params)
  np.testing.assert_array_equal(st.exit_layers_B, [sum(d) for d in depths])
  np.testing.assert_array_equal(st.exit_tokens_B, [len(d) for d in depths])


# ----------------------------------------------------------------------------------
# Unified layer skipping vs the reference
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kept", [(0, 3), (0, 2, 3), (1, 3)])
def test_layer_skip_equals_per_token_reference(kept):
  cfg, params = _tiny()
  model = soft.SkipDecoder(cfg, kept)
  got, st = _run_decoder(model, params)
  _, last = _extend(Transformer(cfg), params, st, jnp.asarray([[3], [0], [6]]))
  for b in range(3):
    prompt, step1, steps = _row_tokens(b)
    seq = prompt + step1 + steps + [[3, 0, 6][b]]
    plan = [l in kept for l in range(L)]
    plans = [[True] * L] * len(prompt) + [plan] * (len(seq) - len(prompt) - 1)
    ref, _ = _ref_decode(params, cfg, seq, plans + [[True] * L])
    np.testing.assert_allclose(np.stack(got[b]), ref[len(prompt) : -1], **TOL)
    np.testing.assert_allclose(np.asarray(last[b, 0]), ref[-1], **TOL)


@pytest.mark.parametrize("which", ["skip", "early_exit"])
def test_chain_tree_then_commit_equals_extend(which):
  """score_tree over a chain + commit of the whole chain == extend with the chain."""
  cfg, params = _tiny()
  model = (
    soft.SkipDecoder(cfg, (0, 2, 3))
    if which == "skip"
    else soft.EarlyExitDecoder(cfg, EXITS, 0.98)
  )
  np.testing.assert_allclose(*_chain_vs_extend(model, params), **TOL)


@functools.partial(jax.jit, static_argnums=0)
def _chain_vs_extend(model, params):
  """(logits of extend + next step, logits of score_tree + commit + next step)."""
  st0, _ = model.prefill(params, jnp.asarray(PROMPTS), jnp.asarray(LENS), 16)
  chain = jnp.asarray(STEPS)
  st_a, l_a = model.extend(params, st0, chain)
  st_b, l_b = model.score_tree(params, st0, chain, jnp.asarray([-1, 0, 1], jnp.int32))
  st_b = model.commit(st_b, jnp.asarray([[0, 1, 2]] * 3), jnp.full((3,), 3, jnp.int32))
  _, n_a = model.extend(params, st_a, jnp.asarray([[1], [2], [3]]))
  _, n_b = model.extend(params, st_b, jnp.asarray([[1], [2], [3]]))
  return jnp.concatenate([l_a, n_a], 1), jnp.concatenate([l_b, n_b], 1)


# ----------------------------------------------------------------------------------
# Sorted loss
# ----------------------------------------------------------------------------------


def _loss_batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, V, (3, 10)).astype(np.int32)
  mask = np.ones((3, 10), bool)
  mask[:, :4] = False  # prompt
  mask[2, 7:] = False  # padding
  return jnp.asarray(tokens), jnp.asarray(mask)


_lm_loss = jax.jit(lm_loss, static_argnums=1)
_sorted = jax.jit(
  soft.sorted_loss_terms,
  static_argnums=(1, 4),
  static_argnames=("exit_weights", "exits_per_step"),
)


def _per_exit_ce(params, cfg, tokens, mask, exits):
  """Reference: one forward per exit, through a standalone depth-e model."""
  return np.array(
    [
      float(
        _lm_loss(
          dataclasses.replace(params, layers=params.layers[:e]),
          cfg.replace(n_layers=e),
          tokens,
          mask,
        )
      )
      for e in exits
    ]
  )


def test_sorted_loss_equals_mean_of_per_exit_losses():
  cfg, params = _tiny()
  tokens, mask = _loss_batch()
  exits = (1, 3, 4)
  ce = _per_exit_ce(params, cfg, tokens, mask, exits)
  s, n, aux = _sorted(params, cfg, tokens, mask, exits)
  assert float(n) == float(mask[:, 1:].sum())
  np.testing.assert_allclose(float(s / n), ce.mean(), rtol=1e-5)
  for e, c in zip(exits, ce):
    np.testing.assert_allclose(float(aux[f"nll_exit{e}"] / n), c, rtol=1e-5)
  # Weighted.
  w = np.array([1.0, 0.0, 3.0])
  s, n, _ = _sorted(params, cfg, tokens, mask, exits, exit_weights=tuple(w))
  np.testing.assert_allclose(float(s / n), (w * ce).sum() / w.sum(), rtol=1e-5)
  # Sampled: (E / k) * sum over the sampled exits of w_e CE_e / sum w.
  for seed in range(3):
    key = jax.random.key(seed)
    s, n, _ = _sorted(
      params, cfg, tokens, mask, exits, exit_weights=tuple(w), exits_per_step=2, key=key
    )
    sel = np.asarray(soft.sample_exits(key, 3, 2))
    want = 3 / 2 * (w[sel] * ce[sel]).sum() / w.sum()
    np.testing.assert_allclose(float(s / n), want, rtol=1e-5)
  # The estimator is unbiased: its mean over all 2-subsets is the all-exit loss.
  subsets = list(itertools.combinations(range(3), 2))
  mean = np.mean([3 / 2 * (w[list(c)] * ce[list(c)]).sum() / w.sum() for c in subsets])
  np.testing.assert_allclose(mean, (w * ce).sum() / w.sum(), rtol=1e-12)


def test_sorted_loss_single_final_exit_is_lm_loss_packed():
  """exits=(L,) is the standard loss, also with packed segments."""
  cfg, params = _tiny()
  tokens, mask = _loss_batch()
  seg = jnp.asarray(np.array([[1] * 5 + [2] * 5] * 3, np.int32))
  pos = jnp.asarray(np.array([list(range(5)) * 2] * 3, np.int32))
  s, n, _ = _sorted(
    params, cfg, tokens, mask, (L,), segment_ids_BxT=seg, positions_BxT=pos
  )
  want = _lm_loss(params, cfg, tokens, mask, seg, pos)
  np.testing.assert_allclose(float(s / n), float(want), rtol=1e-5)


def test_sorted_loss_in_the_train_step():
  cfg, params = _tiny()
  tokens, mask = _loss_batch()
  batch = {"tokens": tokens, "loss_mask": mask}
  opt, _ = make_optimizer(1e-2, warmup_steps=0, total_steps=10)
  for k in (None, 2):
    step = make_train_step(soft.sorted_loss_fn(cfg, (1, 2, 4), exits_per_step=k), opt)
    state = init_train_state(
      jax.tree_util.tree_map(jnp.copy, params), opt, jax.random.key(0)
    )
    losses = []
    for _ in range(6):
      state, m = step(state, batch)
      losses.append(float(m["loss"]))
    assert np.all(np.isfinite(losses))
    if k is None:
      assert losses[-1] < losses[0]
      assert {"nll_exit1", "nll_exit2", "nll_exit4", "correct"} <= set(m)


def test_bad_arguments_raise_before_compute():
  cfg, params = _tiny()
  tokens, mask = _loss_batch()
  with pytest.raises(ValueError, match=r"exits\[1\]"):
    soft.sorted_loss_terms(params, cfg, tokens, mask, (1, L + 1))
  with pytest.raises(ValueError, match="exits"):
    soft.sorted_loss_fn(cfg, (2, 1))
  with pytest.raises(ValueError, match="exits"):
    soft.sorted_loss_fn(cfg, ())
  with pytest.raises(ValueError, match=r"exits\[0\]"):
    soft.EarlyExitDecoder(cfg, (0, 2), 0.5)
  with pytest.raises(ValueError, match="exit_weights"):
    soft.sorted_loss_fn(cfg, (1, 2), exit_weights=[1.0])
  with pytest.raises(ValueError, match="exit_weights"):
    soft.sorted_loss_fn(cfg, (1, 2), exit_weights=[1.0, -1.0])
  with pytest.raises(ValueError, match="exits_per_step"):
    soft.sorted_loss_fn(cfg, (1, 2), exits_per_step=3)
  with pytest.raises(ValueError, match="key"):
    soft.sorted_loss_terms(params, cfg, tokens, mask, (1, 2), exits_per_step=1)
  for bad in (-0.1, 1.5, float("nan"), None):
    with pytest.raises(ValueError, match="^threshold"):
      soft.EarlyExitDecoder(cfg, (1, 2), bad)
  with pytest.raises(ValueError, match="^threshold"):
    cache, _ = _prefill(Transformer(cfg), params)
    soft.early_exit_forward(params, cfg, cache, jnp.asarray(EXT), (1,), 2.0)
  with pytest.raises(ValueError, match="confidence"):
    soft.EarlyExitDecoder(cfg, (1, 2), 0.5, confidence="entropy")
  with pytest.raises(ValueError, match="layers"):
    soft.SkipDecoder(cfg, (0, L))
  with pytest.raises(ValueError, match="layers"):
    soft.SkipDecoder(cfg, (2, 1))


# ----------------------------------------------------------------------------------
# The algorithms run on them unchanged
# ----------------------------------------------------------------------------------


def test_generate_runs_on_every_decoder():
  cfg, params = _tiny()
  prompts = [[3, 1, 4], [2, 6]]
  greedy = make_sampling(temperature=0.0)
  key = jax.random.key(0)
  full = generate(Transformer(cfg), params, prompts, key, 4, greedy, num_samples=2)
  ee = soft.EarlyExitDecoder(cfg, EXITS, 1.0)
  out = generate(ee, params, prompts, key, 4, greedy, num_samples=2)
  np.testing.assert_array_equal(out.tokens, full.tokens)  # never exits: the full model
  for model in (soft.sub_model(cfg, 2), soft.SkipDecoder.for_speedup(cfg, 2)):
    out = generate(model, params, prompts, key, 4, num_samples=2)
    assert out.tokens.shape == (4, 4)


def _search_answers(model, params, prompts, key):
  """Particle filtering, beam search and A* (confidence scorer, tiny settings)
  on `model`: their token outputs."""
  from algorithms import astar, beam_search, particle_filter
  from algorithms.scorers import ConfidenceScorer

  ids = dict(delimiter_ids=(0,), stop_ids=(7,))
  pf = particle_filter.run_particle_filter(
    model,
    params,
    ConfidenceScorer(),
    None,
    prompts,
    key,
    particle_filter.PFConfig(n_particles=4, max_steps=3, max_step_tokens=2, **ids),
  )[0]
  beam = beam_search.run_beam_search(
    model,
    params,
    ConfidenceScorer(),
    None,
    prompts,
    key,
    beam_search.BeamConfig(
      n_paths=4, beam_width=2, max_steps=3, max_step_tokens=2, **ids
    ),
  )[0]
  a_star = astar.run_astar(
    model,
    params,
    ConfidenceScorer(),
    None,
    prompts,
    key,
    astar.AStarConfig(
      num_children=2,
      capacity=8,
      max_step_tokens=2,
      max_solution_tokens=6,
      heuristic="zero",
      **ids,
    ),
  )[0]
  return jax.tree_util.tree_map(np.asarray, (pf, beam, a_star))


def test_searches_run_on_the_decoders():
  """PF, beam and A* on the SoFT decoders: a depth-n sub-model searches exactly
  as the standalone truncated Transformer does (same keys, same tokens), and
  early exit that never exits as the full model; layer skipping runs."""
  cfg, params = _tiny()
  prompts, key = [[3, 1, 4], [2, 6]], jax.random.key(5)
  sub = soft.sub_model(cfg, 2)
  got = _search_answers(sub, params, prompts, key)
  want = _search_answers(Transformer(sub.cfg), sub.sub_params(params), prompts, key)
  chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)
  full = _search_answers(Transformer(cfg), params, prompts, key)
  never = _search_answers(soft.EarlyExitDecoder(cfg, EXITS, 1.0), params, prompts, key)
  chex.assert_trees_all_close(never, full, atol=1e-5, rtol=1e-5)
  skip = _search_answers(soft.SkipDecoder.for_speedup(cfg, 2), params, prompts, key)
  chex.assert_trees_all_equal_shapes(skip, full)


# ----------------------------------------------------------------------------------
# Self-speculation: a SoFT sub-model drafts for the full model, exactly
# ----------------------------------------------------------------------------------

PROMPT = [3, 1, 4, 1, 5]
ALPHA = 1e-5


def _exact_two_token_probs(cfg, params, prompt, top_k):
  seqs = np.array([prompt + [a, b] for a in range(V) for b in range(V)], np.int32)
  logits, _, _ = forward(params, jnp.asarray(seqs), cfg)
  logits = np.asarray(logits, np.float64)

  def probs(x):
    kth = np.sort(x, -1)[..., -top_k][..., None]
    x = np.where(x >= kth, x, -np.inf)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  n = len(prompt)
  p1, p2 = probs(logits[:, n - 1]), probs(logits[:, n])
  i = np.arange(len(seqs))
  return p1[i, seqs[:, n]] * p2[i, seqs[:, n + 1]]


def test_speculative_with_soft_sub_model_draft_is_exact():
  cfg, params = _tiny()
  n = 8_000
  sc = SpecConfig(method="chain", gamma=2, max_new_tokens=2, sampling_top_k=6)
  out, comp = speculative_generate(
    Transformer(cfg), params, soft.sub_model(cfg, 2), params, [PROMPT] * n,
    jax.random.key(11), sc,
  )  # fmt: skip
  toks = np.asarray(out.tokens)
  counts = np.bincount(toks[:, 0] * V + toks[:, 1], minlength=V * V)
  exact = _exact_two_token_probs(cfg, params, PROMPT, top_k=6)
  assert counts[exact == 0].sum() == 0
  big = exact * n >= 5
  obs = np.append(counts[big], counts[~big].sum())
  ex = np.append(exact[big], exact[~big].sum()) * n
  pval = stats.chisquare(obs, ex * obs.sum() / ex.sum()).pvalue
  assert pval > ALPHA, f"p-value {pval:.2e}"
  assert np.asarray(out.accepted).mean() > 0.1  # the draft is used
  assert comp.decode_flops > 0
