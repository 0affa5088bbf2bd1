"""Tests for jaxllm/train.py and experiments/config_utils.py (tiny sizes)."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from _tiny_models import one_layer_config

from experiments import config_utils
from jaxllm import checkpoint, train
from jaxllm.model import forward
from jaxllm.params import init_params

CFG = one_layer_config()
_terms = jax.jit(train.lm_loss_terms, static_argnames=("cfg", "compute_dtype"))
_forward = jax.jit(lambda p, t: forward(p, t, CFG)[0])


def _batch(seed=0, B=4, T=12, V=11):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, V, (B, T)).astype(np.int32)
  # Ragged masks: different target counts per row (and per microbatch).
  mask = np.zeros((B, T), np.int32)
  for b, start in enumerate([2, 5, 9, 3][:B]):
    mask[b, start : T - b] = 1
  return {"tokens": tokens, "loss_mask": mask}


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_masked_lm_loss_matches_numpy_reference():
  params = init_params(CFG, jax.random.PRNGKey(0))
  b = _batch()
  logits = np.asarray(_forward(params, jnp.asarray(b["tokens"])), np.float64)
  lp = _np_log_softmax(logits)
  total, count = 0.0, 0
  B, T = b["tokens"].shape
  for i in range(B):
    for t in range(T - 1):
      if b["loss_mask"][i, t + 1]:
        total -= lp[i, t, b["tokens"][i, t + 1]]
        count += 1
  s, n, _ = _terms(params, CFG, jnp.asarray(b["tokens"]), jnp.asarray(b["loss_mask"]))
  assert int(n) == count
  np.testing.assert_allclose(float(s), total, rtol=1e-5)


def test_packed_loss_equals_padded_loss():
  params = init_params(CFG, jax.random.PRNGKey(1))
  exs = [
    train.lm_example([1, 3, 4], [5, 6, 7, 2]),
    train.lm_example([1, 8], [9, 10, 2]),
    train.lm_example([1, 4, 4, 4], [3, 2]),
  ]
  padded = train.pad_batch(exs, length=8)
  packed = train.pack_batch(exs, length=16)
  assert packed["tokens"].shape == (2, 16)  # 7 + 5 in row 0, 6 in row 1
  np.testing.assert_array_equal(packed["segment_ids"][0, :13], [1] * 7 + [2] * 5 + [0])
  np.testing.assert_array_equal(packed["positions"][0, 7:12], np.arange(5))
  sp, npad, _ = _terms(params, CFG, padded["tokens"], padded["loss_mask"])
  sk, nk, _ = _terms(
    params,
    CFG,
    packed["tokens"],
    packed["loss_mask"],
    packed["segment_ids"],
    packed["positions"],
  )
  assert int(npad) == int(nk) == 4 + 3 + 2 - 0
  np.testing.assert_allclose(float(sk), float(sp), rtol=1e-5)


def test_batching_validation():
  with pytest.raises(ValueError, match="longer than the batch length"):
    train.pad_batch([[1, 2, 3, 4, 5]], length=4)
  with pytest.raises(ValueError, match="do not fit"):
    train.pack_batch([[1] * 5, [2] * 5, [3] * 5], length=8, rows=2)
  batch, n = train.pack_stream(iter([[1] * 5, [2] * 3, [3] * 5, [4] * 3, [5]]), 8, 2)
  assert n == 4  # the 5th example ([5]) does not fit any more
  assert batch["tokens"].shape == (2, 8)
  assert train.bucket_length(17) == 32 and train.bucket_length(16) == 16
  assert train.bucket_length(5, buckets=[8, 4]) == 8


def test_schedule_warmup_cosine_closed_form():
  _, sched = train.make_optimizer(
    1e-2, warmup_steps=10, total_steps=110, end_lr_ratio=0.1
  )
  for step in (0, 5, 10, 60, 110):
    if step <= 10:
      want = 1e-2 * step / 10
    else:
      frac = (step - 10) / 100
      want = 1e-3 + (1e-2 - 1e-3) * 0.5 * (1 + math.cos(math.pi * frac))
    np.testing.assert_allclose(float(sched(step)), want, rtol=1e-5, atol=1e-9)


def _state(opt, seed=0):
  return train.init_train_state(
    init_params(CFG, jax.random.PRNGKey(seed)), opt, jax.random.PRNGKey(seed + 100)
  )


def test_train_steps_lower_loss_on_fixed_batch():
  opt, _ = train.make_optimizer(1e-2, warmup_steps=2, total_steps=30)
  step = train.make_train_step(train.make_lm_loss_fn(CFG), opt)
  b = _batch()
  state = _state(opt)
  first = None
  for _ in range(30):
    state, m = step(state, b)
    first = float(m["loss"]) if first is None else first
  s, n, _ = _terms(state.params, CFG, b["tokens"], b["loss_mask"])
  final = float(s / n)
  assert final < 0.5 * first, (first, final)
  assert int(state.step) == 30


def test_grad_accumulation_equals_big_batch():
  """2 microbatches with different target counts == one step on the batch
  (a mean of per-microbatch means would differ)."""
  opt, _ = train.make_optimizer(1e-2, warmup_steps=1, total_steps=10)
  loss_fn = train.make_lm_loss_fn(CFG)
  b = _batch()
  a, ma = train.make_train_step(loss_fn, opt, accum_steps=1)(_state(opt), b)
  c, mc = train.make_train_step(loss_fn, opt, accum_steps=2)(_state(opt), b)
  np.testing.assert_allclose(float(ma["loss"]), float(mc["loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(ma["grad_norm"]), float(mc["grad_norm"]), rtol=1e-5)
  assert float(ma["weight"]) == float(b["loss_mask"][:, 1:].sum())
  for x, y in zip(
    jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(c.params)
  ):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_accum_steps_must_divide_batch():
  opt, _ = train.make_optimizer(1e-2, warmup_steps=1, total_steps=10)
  step = train.make_train_step(train.make_lm_loss_fn(CFG), opt, accum_steps=3)
  with pytest.raises(ValueError, match="not divisible by accum_steps=3"):
    step(_state(opt), _batch())


def test_mixed_precision_keeps_f32_master_params():
  opt, _ = train.make_optimizer(1e-2, warmup_steps=1, total_steps=10)
  b = _batch()
  st = _state(opt)
  loss = jax.jit(train.lm_loss, static_argnames=("cfg", "compute_dtype"))
  l32 = float(loss(st.params, CFG, b["tokens"], b["loss_mask"]))
  l16 = float(
    loss(st.params, CFG, b["tokens"], b["loss_mask"], compute_dtype="bfloat16")
  )
  assert abs(l16 - l32) < 0.05 * l32  # bf16 rounding only
  step = train.make_train_step(train.make_lm_loss_fn(CFG, "bfloat16"), opt)
  st, m = step(st, b)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(st.params))
  assert np.isfinite(float(m["loss"]))


def _noisy_loss_fn(cfg):
  """LM loss with a random target dropout drawn from the step key, so the
  result depends on the rng carried in the train state."""
  base = train.make_lm_loss_fn(cfg)

  def loss_fn(params, batch, key):
    keep = jax.random.bernoulli(key, 0.7, batch["loss_mask"].shape)
    return base(params, dict(batch, loss_mask=batch["loss_mask"] * keep), key)

  return loss_fn


def _batch_fn(step):
  rng = train.step_rng(7, step)
  tokens = rng.integers(1, CFG.vocab_size, (4, 10)).astype(np.int32)
  return {"tokens": tokens, "loss_mask": np.ones_like(tokens)}


def test_resume_after_interruption_is_identical(tmp_path):
  opt, _ = train.make_optimizer(1e-2, warmup_steps=2, total_steps=6)
  step = train.make_train_step(_noisy_loss_fn(CFG), opt)
  full, _ = train.train_loop(_state(opt), step, _batch_fn, 6)

  mgr = checkpoint.CheckpointManager(str(tmp_path / "ck"), save_every=3, keep=2)
  part, _ = train.train_loop(_state(opt), step, _batch_fn, 3, checkpoint_manager=mgr)
  del part  # "interrupted" here
  mgr.close()
  mgr = checkpoint.CheckpointManager(str(tmp_path / "ck"), save_every=3, keep=2)
  assert mgr.latest_step() == 3
  fresh = _state(opt, seed=5)  # different init: everything must come from disk
  resumed = train.restore_train_state(mgr, CFG, fresh)
  assert int(resumed.step) == 3
  resumed, _ = train.train_loop(resumed, step, _batch_fn, 6, checkpoint_manager=mgr)
  mgr.close()
  for x, y in zip(
    jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(resumed.params)
  ):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  np.testing.assert_array_equal(np.asarray(full.rng), np.asarray(resumed.rng))


def _schema():
  c = ml_collections.ConfigDict()
  c.steps = 10
  c.lr = 1e-3
  c.name = "x"
  c.flag = False
  c.sizes = (1, 2)
  c.optional = None
  c.model = ml_collections.ConfigDict()
  c.model.d_model = 32
  return c


def test_config_validation_accepts_default_and_promotes_int_to_float():
  cfg = _schema()
  cfg.lr = 1  # int where float is expected: fine
  cfg.optional = "anything"
  cfg.sizes = [3, 4, 5]
  out = config_utils.validate(cfg, _schema())
  with pytest.raises(AttributeError):
    out.new_field = 1  # locked


@pytest.mark.parametrize(
  "edit, field",
  [
    (lambda c: setattr(c, "stpes", 3), "config.stpes"),
    (lambda c: setattr(c.model, "n_layer", 3), "config.model.n_layer"),
  ],
)
def test_config_unknown_field_is_rejected(edit, field):
  cfg = _schema()
  edit(cfg)
  with pytest.raises(ValueError, match=f"unknown config field '{field}'"):
    config_utils.validate(cfg, _schema())


@pytest.mark.parametrize(
  "build, field",
  [
    (
      lambda: ml_collections.ConfigDict(dict(_schema().to_dict(), steps="ten")),
      "config.steps",
    ),
    (
      lambda: ml_collections.ConfigDict(dict(_schema().to_dict(), steps=True)),
      "config.steps",
    ),
    (
      lambda: ml_collections.ConfigDict(dict(_schema().to_dict(), lr="fast")),
      "config.lr",
    ),
    (
      lambda: ml_collections.ConfigDict(
        dict(_schema().to_dict(), model={"d_model": 3.5})
      ),
      "config.model.d_model",
    ),
    (
      lambda: ml_collections.ConfigDict(dict(_schema().to_dict(), sizes=(1, "a"))),
      r"config.sizes\[1\]",
    ),
  ],
)
def test_config_wrong_type_is_rejected(build, field):
  with pytest.raises(ValueError, match=f"config field '{field}' must be of type"):
    config_utils.validate(build(), _schema())


def test_config_missing_field_is_rejected():
  d = _schema().to_dict()
  del d["flag"]
  with pytest.raises(ValueError, match="'config.flag' is missing"):
    config_utils.validate(ml_collections.ConfigDict(d), _schema())


def test_policy_and_verifier_configs_validate_against_themselves():
  import os

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for name in ("arith_policy.py", "arith_verifier.py"):
    path = os.path.join(root, "configs", name)
    config_utils.validate(
      config_utils.load_config_file(path), config_utils.load_config_file(path)
    )
