"""Numeric guards: bad config / sampling settings raise ValueError naming the field up
front; extreme but valid settings behave as their limit."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.config import ModelConfig, RopeScaling
from jaxllm.model import rope_inv_freq
from jaxllm.sampling import filter_logits, log_probs, make_sampling, sample

NAN, INF = float("nan"), float("inf")
BASE = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48)


# ----------------------------------------------------------------------------------
# RopeScaling.


@pytest.mark.parametrize(
  "kw,field",
  [
    (dict(factor=0.0), "factor"),
    (dict(factor=-2.0), "factor"),
    (dict(factor=NAN), "factor"),
    (dict(factor=INF), "factor"),
    (dict(factor="abc"), "factor"),
    (dict(factor=None), "factor"),
    (dict(factor=True), "factor"),
    (dict(low_freq_factor=0.0), "low_freq_factor"),
    (dict(low_freq_factor=-1.0), "low_freq_factor"),
    (dict(low_freq_factor=NAN), "low_freq_factor"),
    (dict(high_freq_factor=1.0), "high_freq_factor"),  # == low_freq_factor
    (dict(high_freq_factor=0.5), "high_freq_factor"),  # < low_freq_factor
    (dict(high_freq_factor=INF), "high_freq_factor"),
    (dict(original_max_position=0), "original_max_position"),
    (dict(original_max_position=8192.0), "original_max_position"),
    (dict(original_max_position="abc"), "original_max_position"),
  ],
)
def test_rope_scaling_rejects_bad_fields(kw, field):
  with pytest.raises(ValueError, match=f"RopeScaling.{field}"):
    RopeScaling(**kw)


def test_rope_scaling_bad_dict_through_model_config():
  with pytest.raises(ValueError, match="factor"):
    ModelConfig(**BASE, rope_scaling=dict(factor=0))
  with pytest.raises(ValueError, match="rope_scaling"):
    ModelConfig(**BASE, rope_scaling=dict(type="llama3", factor=2.0))
  with pytest.raises(ValueError, match="rope_scaling"):
    ModelConfig(**BASE, rope_scaling=8.0)


def test_rope_scaling_factor_one_is_unscaled():
  """factor = 1 divides by 1 in the low band and interpolates inv with itself in the
  middle band: exactly the unscaled frequencies (hand-derived)."""
  cfg = ModelConfig(
    **BASE,
    rope_scaling=RopeScaling(
      factor=1, low_freq_factor=1, high_freq_factor=4, original_max_position=16
    ),
  )
  assert isinstance(cfg.rope_scaling.factor, float)
  K = cfg.head_dim
  want = 1.0 / (10000.0 ** (np.arange(0, K, 2) / K))
  np.testing.assert_allclose(np.asarray(rope_inv_freq(cfg)), want, rtol=1e-5)
  scaled = ModelConfig(**BASE, rope_scaling=dict(factor=8.0, original_max_position=16))
  assert np.isfinite(np.asarray(rope_inv_freq(scaled))).all()


# ----------------------------------------------------------------------------------
# ModelConfig.

INT_FIELDS = (
  "vocab_size",
  "d_model",
  "n_layers",
  "n_heads",
  "n_kv_heads",
  "d_ff",
  "max_seq_len",
  "head_dim",
  "sliding_window",
  "sliding_window_pattern",
)


@pytest.mark.parametrize("field", INT_FIELDS)
@pytest.mark.parametrize("bad", ["abc", "8", 8.0, True, NAN])
def test_int_fields_reject_non_ints(field, bad):
  with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
    ModelConfig(**{**BASE, field: bad})


@pytest.mark.parametrize(
  "field,bad",
  [
    ("vocab_size", 0),
    ("d_model", -8),
    ("n_layers", 0),
    ("n_heads", 0),
    ("n_kv_heads", -1),
    ("d_ff", 0),
    ("max_seq_len", 0),
    ("head_dim", 0),
    ("head_dim", 7),
    ("sliding_window", 0),
    ("sliding_window_pattern", 0),
  ],
)
def test_int_fields_reject_out_of_range(field, bad):
  with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
    ModelConfig(**{**BASE, field: bad})


@pytest.mark.parametrize(
  "field",
  ["norm_eps", "rope_theta", "attn_softcap", "final_softcap", "query_pre_attn_scalar"],
)
@pytest.mark.parametrize("bad", [0.0, -1.0, NAN, INF, -INF, "abc", "1e-5", True])
def test_float_fields_reject_bad_values(field, bad):
  with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
    ModelConfig(**{**BASE, field: bad})


@pytest.mark.parametrize(
  "field", ["norm_plus_one", "post_norms", "tie_embeddings", "qkv_bias", "embed_scale"]
)
@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_flag_fields_must_be_bools(field, bad):
  with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
    ModelConfig(**{**BASE, field: bad})


@pytest.mark.parametrize(
  "kw,field",
  [
    (dict(layer_windows=(0, "a")), "layer_windows"),
    (dict(layer_windows=(0, 2.5)), "layer_windows"),
    (dict(layer_windows=(0, -1)), "layer_windows"),
    (dict(layer_windows=4), "layer_windows"),
    (dict(activation=3), "activation"),
    (dict(dtype=None), "dtype"),
  ],
)
def test_other_fields_named(kw, field):
  with pytest.raises(ValueError, match=field):
    ModelConfig(**{**BASE, **kw})


def test_numpy_numbers_accepted_as_python_values():
  cfg = ModelConfig(
    **{**BASE, "vocab_size": np.int64(64), "d_model": np.int32(32)},
    norm_eps=np.float32(1e-6),
    rope_theta=np.float64(5e5),
    tie_embeddings=np.bool_(False),
    layer_windows=[np.int64(4), 0],
  )
  assert type(cfg.vocab_size) is int and type(cfg.d_model) is int
  assert type(cfg.norm_eps) is float and type(cfg.rope_theta) is float
  assert cfg.tie_embeddings is False and cfg.layer_windows == (4, 0)
  assert type(cfg.layer_windows[0]) is int
  hash(cfg)  # still a valid static argument
  assert cfg == ModelConfig(
    **BASE,
    norm_eps=float(np.float32(1e-6)),
    rope_theta=5e5,
    tie_embeddings=False,
    layer_windows=(4, 0),
  )
  assert dataclasses.replace(cfg, n_layers=2) == cfg  # re-validates cleanly


# ----------------------------------------------------------------------------------
# make_sampling: bad settings.


@pytest.mark.parametrize(
  "kw,field",
  [
    (dict(temperature=NAN), "temperature"),
    (dict(temperature=INF), "temperature"),
    (dict(temperature=-1e-9), "temperature"),
    (dict(temperature=1e-40), "temperature"),  # float32 subnormal: would flush to 0
    (dict(temperature=1e39), "temperature"),  # float32 overflow to inf
    (dict(temperature="abc"), "temperature"),
    (dict(temperature="0.7"), "temperature"),
    (dict(temperature=None), "temperature"),
    (dict(temperature=True), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=-3), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_k=4.0), "top_k"),
    (dict(top_k="4"), "top_k"),
    (dict(top_k=True), "top_k"),
    (dict(top_k=65, vocab_size=64), "top_k"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(vocab_size="64"), "vocab_size"),
    (dict(top_p=NAN), "top_p"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=-0.5), "top_p"),
    (dict(top_p=1.0 + 1e-6), "top_p"),
    (dict(top_p=INF), "top_p"),
    (dict(top_p="0.9"), "top_p"),
    (dict(min_p=NAN), "min_p"),
    (dict(min_p=-0.1), "min_p"),
    (dict(min_p=1.0), "min_p"),
    (dict(min_p="x"), "min_p"),
  ],
)
def test_make_sampling_rejects_bad_settings(kw, field):
  with pytest.raises(ValueError, match=field):
    make_sampling(**kw)


def test_make_sampling_accepts_numpy_numbers():
  s = make_sampling(
    np.float32(0.7),
    top_k=np.int64(5),
    top_p=np.float64(0.9),
    min_p=jnp.float32(0.1),
    vocab_size=64,
  )
  assert s.top_k == 5 and type(s.top_k) is int
  assert s.use_top_p and s.use_min_p
  make_sampling(1.0, top_k=64, vocab_size=64)  # k = V is allowed (no filter)


# ----------------------------------------------------------------------------------
# Extreme but valid sampling settings behave as their limit.

LOGITS = jnp.array([[1.0, 3.0, 3.0, -2.0, 0.5], [9.0, -9.0, 4.0, 8.9, 0.0]])


def test_temperature_zero_is_greedy_everywhere():
  s = make_sampling(0.0, top_k=3, top_p=0.5)
  # argmax, lowest index on the tie in row 0.
  np.testing.assert_array_equal(sample(jax.random.key(0), LOGITS, s), [1, 0])
  lp = np.asarray(log_probs(LOGITS, s))
  np.testing.assert_array_equal(np.isfinite(lp), [[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
  np.testing.assert_allclose(lp[np.isfinite(lp)], 0.0)


@pytest.mark.parametrize("t", [1e-30, 1.2e-38])
def test_tiny_temperature_is_the_greedy_limit(t):
  """The T -> 0+ limit: all mass on the maximum, split evenly over tied maxima; no
  NaN from logits / T overflowing."""
  s = make_sampling(t)
  p = np.asarray(jax.nn.softmax(filter_logits(LOGITS, s), axis=-1))
  assert np.isfinite(p).all()
  np.testing.assert_allclose(p, [[0, 0.5, 0.5, 0, 0], [1, 0, 0, 0, 0]], atol=1e-7)
  draws = np.asarray(
    jax.vmap(lambda k: sample(k, LOGITS, s))(jax.random.split(jax.random.key(1), 400))
  )
  assert set(draws[:, 0].tolist()) == {1, 2}
  assert (draws[:, 1] == 0).all()


def test_huge_temperature_is_uniform():
  s = make_sampling(1e30)
  lp = np.asarray(log_probs(LOGITS, s))
  np.testing.assert_allclose(lp, np.full(lp.shape, -math.log(5)), rtol=1e-6)
  # Filters still apply: top_k = 2 -> uniform over the two largest.
  lp = np.asarray(log_probs(LOGITS, make_sampling(1e30, top_k=2)))
  np.testing.assert_allclose(
    np.exp(lp), [[0, 0.5, 0.5, 0, 0], [0.5, 0, 0, 0.5, 0]], atol=1e-6
  )


def test_huge_top_k_is_no_filter_and_tiny_top_p_is_greedy():
  base = np.asarray(log_probs(LOGITS, make_sampling(1.0)))
  big = np.asarray(log_probs(LOGITS, make_sampling(1.0, top_k=10**9)))
  np.testing.assert_allclose(big, base, rtol=1e-6)
  lp = np.asarray(log_probs(LOGITS, make_sampling(1.0, top_p=1e-30)))
  np.testing.assert_array_equal(np.isfinite(lp), [[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
  lp = np.asarray(log_probs(LOGITS, make_sampling(1.0, top_k=1)))
  np.testing.assert_array_equal(np.isfinite(lp), [[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]])


def test_min_p_near_one_keeps_only_the_maxima():
  lp = np.asarray(log_probs(LOGITS, make_sampling(1.0, min_p=1 - 1e-7)))
  np.testing.assert_array_equal(np.isfinite(lp), [[0, 1, 1, 0, 0], [1, 0, 0, 0, 0]])


def test_sampling_values_stay_traced_leaves():
  """Validation happens in make_sampling; changing a value does not retrace."""
  traces = []

  @jax.jit
  def f(key, s):
    traces.append(1)
    return sample(key, LOGITS, s)

  f(jax.random.key(0), make_sampling(0.5, top_p=0.9))
  f(jax.random.key(0), make_sampling(1e-20, top_p=0.3))
  assert len(traces) == 1
