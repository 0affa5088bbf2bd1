"""Draft models (algorithms/drafts.py): the sub-vocabulary draft against plain forward
passes of the target, the distillation loss against closed forms, save/load."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tiny_models import three_layer_config

from algorithms import drafts
from jaxllm.decoding import Transformer
from jaxllm.model import forward
from jaxllm.params import init_params

V = 12


def _target():
  cfg = three_layer_config(V, tie_embeddings=False)
  params = init_params(cfg, jax.random.key(1))
  return cfg, dataclasses.replace(params, final_norm=params.final_norm * 4.0)


PROMPTS = np.array([[3, 1, 4, 1, 5, 9], [2, 6, 5, 0, 0, 0]], np.int32)
LENS = np.array([6, 3], np.int32)


def _decode_calls(model, params):
  """Logits of prefill, a ragged extend and a 4-node tree (batch of 2 rows)."""
  st, l_pre = model.prefill(params, jnp.asarray(PROMPTS), jnp.asarray(LENS), 16)
  st, l_ext = model.extend(
    params,
    st,
    jnp.asarray([[7, 8], [10, 0]]),
    jnp.asarray([[True, True], [True, False]]),
  )
  _, l_tree = model.score_tree(
    params, st, jnp.asarray([[1, 2, 3, 4]] * 2), jnp.asarray([-1, 0, 0, 1], jnp.int32)
  )
  return np.asarray(l_pre), np.asarray(l_ext), np.asarray(l_tree)


def test_full_subset_all_layers_reproduces_target():
  """Subset = the whole vocabulary (permuted), all layers: the draft IS the target."""
  cfg, params = _target()
  ids = np.random.default_rng(0).permutation(V)
  draft, dp = drafts.init_sub_vocab_draft(cfg, params, ids, cfg.n_layers)
  assert draft.vocab_size == V and draft.cfg.vocab_size == V + 1
  for got, want in zip(
    _decode_calls(draft, dp), _decode_calls(Transformer(cfg), params)
  ):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_subset_logits_are_inner_logits_scattered():
  cfg, params = _target()
  ids = np.array([9, 2, 5, 11, 0])
  draft, dp = drafts.init_sub_vocab_draft(cfg, params, ids, 1)
  _, l_ext, _ = _decode_calls(draft, dp)
  assert np.isneginf(np.delete(l_ext, ids, axis=-1)).all()
  # Reference: a plain causal forward of the inner model over mapped ids (token 7, 8,
  # 10 are outside the subset: inner id 0).
  to_sub = {int(t): i + 1 for i, t in enumerate(ids)}
  seq = [to_sub.get(t, 0) for t in [3, 1, 4, 1, 5, 9, 7, 8]]
  ref, _, _ = forward(dp.inner, jnp.asarray([seq]), draft.cfg)
  np.testing.assert_allclose(
    l_ext[0, :, ids], np.asarray(ref)[0, -2:, 1:].T, rtol=1e-5, atol=1e-5
  )


def test_distill_loss_closed_form():
  """Teacher = the draft's own distribution (all V tokens, k = V): the loss is the
  draft's entropy and the acceptance bound sum min(p, q) is 1; a point-mass teacher
  gives -log q of that token; teacher mass outside the subset is dropped."""
  cfg, params = _target()
  draft, dp = drafts.init_sub_vocab_draft(cfg, params, np.arange(V), 2)
  toks = jnp.asarray(PROMPTS)
  logits, _, _ = forward(dp.inner, dp.to_sub_V[toks], draft.cfg)
  q = np.asarray(jax.nn.softmax(draft.full_logits(dp, logits), -1), np.float64)
  ids = np.broadcast_to(np.arange(V), q.shape).astype(np.int32)
  w = np.ones(PROMPTS.shape, np.float32)
  loss = drafts.distill_loss_fn(draft, dp.to_sub_V)
  s, n, aux = loss(
    dp.inner,
    dict(
      tokens=toks,
      topk_ids=jnp.asarray(ids),
      topk_p=jnp.asarray(q, jnp.float32),
      weight=jnp.asarray(w),
    ),
    None,
  )
  want = -(q * np.log(q)).sum(-1).sum()
  assert float(n) == w.sum()
  np.testing.assert_allclose(float(s), want, rtol=1e-4)
  np.testing.assert_allclose(float(aux["accept_lb"]), w.sum(), rtol=1e-4)
  # point mass on token 4 at every position
  onehot = np.zeros_like(q)
  onehot[..., 4] = 1.0
  s1, _, aux1 = loss(
    dp.inner,
    dict(
      tokens=toks,
      topk_ids=jnp.asarray(ids),
      topk_p=jnp.asarray(onehot, jnp.float32),
      weight=jnp.asarray(w),
    ),
    None,
  )
  np.testing.assert_allclose(float(s1), -np.log(q[..., 4]).sum(), rtol=1e-4)
  np.testing.assert_allclose(float(aux1["accept_lb"]), q[..., 4].sum(), rtol=1e-4)


def test_frequent_tokens_and_maps():
  got = drafts.frequent_tokens([[5, 5, 3, 7], [3, 5, 1]], 3, always=[9])
  np.testing.assert_array_equal(got, [9, 5, 3])  # 9 forced; 5 (3x), 3 (2x)
  got = drafts.frequent_tokens([[5, 3, 3], [7, 5]], 2, weights=[[1, 1, 1], [0.5, 2.5]])
  np.testing.assert_array_equal(got, [5, 3])  # weights 3.5, 2, 0.5
  to_sub, to_full = drafts.sub_vocab_maps([4, 2], 6)
  np.testing.assert_array_equal(to_sub, [0, 0, 2, 0, 1, 0])
  np.testing.assert_array_equal(to_full, [4, 2])
  with pytest.raises(ValueError, match="repeated"):
    drafts.sub_vocab_maps([1, 1], 6)
  with pytest.raises(ValueError, match=r"\[0, 6\)"):
    drafts.sub_vocab_maps([1, 6], 6)
  with pytest.raises(ValueError, match="distinct tokens"):
    drafts.frequent_tokens([[1, 2]], 3)
  cfg, params = _target()
  with pytest.raises(ValueError, match="n_layers"):
    drafts.init_sub_vocab_draft(cfg, params, [1, 2], 4)


def test_save_load_round_trip(tmp_path):
  cfg, params = _target()
  draft, dp = drafts.init_sub_vocab_draft(cfg, params, [3, 0, 7], 2)
  drafts.save_draft(str(tmp_path / "d"), draft, dp, meta=dict(note="x"))
  d2, dp2, meta = drafts.load_draft(str(tmp_path / "d"))
  assert d2 == draft and meta == {"note": "x"}
  for a, b in zip(jax.tree_util.tree_leaves(dp), jax.tree_util.tree_leaves(dp2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="no draft"):
    drafts.load_draft(str(tmp_path / "missing"))


def test_distill_loss_ignores_teacher_mass_outside_subset():
  cfg, params = _target()
  draft, dp = drafts.init_sub_vocab_draft(cfg, params, [1, 4, 6], 1)
  toks = jnp.asarray(PROMPTS)
  logits, _, _ = forward(dp.inner, dp.to_sub_V[toks], draft.cfg)
  q = np.asarray(jax.nn.softmax(draft.full_logits(dp, logits), -1), np.float64)
  ids = np.broadcast_to(np.array([4, 0, 6]), q.shape[:-1] + (3,)).astype(np.int32)
  p = np.broadcast_to(np.array([0.3, 0.5, 0.2]), ids.shape).astype(np.float32)
  s, n, aux = drafts.distill_loss_fn(draft, dp.to_sub_V)(
    dp.inner,
    dict(
      tokens=toks,
      topk_ids=jnp.asarray(ids),
      topk_p=jnp.asarray(p),
      weight=jnp.ones(PROMPTS.shape),
    ),
    None,
  )
  want = -(0.6 * np.log(q[..., 4]) + 0.4 * np.log(q[..., 6])).sum()
  np.testing.assert_allclose(float(s), want, rtol=1e-4)
  lb = np.minimum(0.3, q[..., 4]) + np.minimum(0.2, q[..., 6])
  np.testing.assert_allclose(float(aux["accept_lb"]), lb.sum(), rtol=1e-4)
