"""Weight-only int8 quantisation (jaxllm.quant): the codes and scales equal a
numpy absmax reference, a quantised tree computes exactly what its dequantised
float tree computes (decoder-only with tied / untied heads and QKV bias, and
encoder-decoder), it runs through generate, and it is a quarter of the bytes.
The accuracy cost against the float32 model is measured on SmolLM2 by
experiments/bench_precision.py, not asserted here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import (
  ModelConfig,
  Transformer,
  forward,
  generate,
  init_params,
  make_sampling,
)
from jaxllm.encdec import EncDecConfig, init_encdec_params
from jaxllm.encdec import forward as encdec_forward
from jaxllm.quant import (
  Int8Weight,
  dequantize_int8,
  param_bytes,
  quantize_int8,
  quantize_matrix,
)

BASE = dict(vocab_size=97, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96)
TOKENS = np.array([[5, 3, 9, 1, 4, 4, 2, 8], [7, 8, 1, 2, 3, 0, 0, 0]], np.int32)
# Same tree, two association orders of the same float32 products (scale after
# vs inside the contraction): rounding-level differences only.
ATOL = 2e-5


def test_codes_and_scales_match_a_numpy_reference():
  w = np.array(jax.random.normal(jax.random.key(0), (6, 3, 5)), np.float32)
  w[:, 1, 2] = 0.0  # an all-zero output channel
  qw = quantize_matrix(jnp.asarray(w), (0,))
  amax = np.abs(w).max(axis=0)
  scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
  np.testing.assert_allclose(np.asarray(qw.scale), scale, rtol=1e-7)
  np.testing.assert_array_equal(
    np.asarray(qw.q), np.clip(np.round(w / scale), -127, 127).astype(np.int8)
  )
  assert qw.q.dtype == jnp.int8 and qw.input_axes == (0,)
  err = np.abs(np.asarray(qw.dequantize()) - w)
  assert np.all(err <= scale / 2 + 1e-7)
  assert np.abs(np.asarray(qw.q)).max() == 127


def test_block_codes_and_scales_match_a_numpy_reference():
  w = np.array(jax.random.normal(jax.random.key(5), (4, 8, 6)), np.float32)
  qw = quantize_matrix(jnp.asarray(w), (0, 1), block_size=4)  # wo-like [H, K, D]
  blocks = w.reshape(4, 2, 4, 6)  # axis 1 (the last input axis) in blocks of 4
  amax = np.abs(blocks).max(axis=2)
  scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
  np.testing.assert_allclose(np.asarray(qw.scale), scale, rtol=1e-7)
  want = np.clip(np.round(blocks / scale[:, :, None]), -127, 127).astype(np.int8)
  np.testing.assert_array_equal(np.asarray(qw.q), want.reshape(w.shape))
  err = np.abs(np.asarray(qw.dequantize()) - w)
  assert np.all(err <= np.repeat(scale, 4, axis=1) / 2 + 1e-7)
  with pytest.raises(ValueError, match="block_size=5 does not divide axis 1"):
    quantize_matrix(jnp.asarray(w), (0, 1), block_size=5)


@pytest.mark.parametrize("block_size", [0, 4], ids=["per_channel", "block4"])
@pytest.mark.parametrize(
  "extra", [dict(), dict(tie_embeddings=False, qkv_bias=True)], ids=["tied", "untied"]
)
def test_quantized_forward_equals_dequantized_forward(extra, block_size):
  cfg = ModelConfig(**BASE, **extra)
  qparams = quantize_int8(init_params(cfg, jax.random.key(1)), block_size=block_size)
  assert qparams.layers[0].w_down.block_size == block_size
  layer = qparams.layers[0]
  assert isinstance(layer.wq, Int8Weight) and isinstance(qparams.embed, Int8Weight)
  assert layer.attn_norm.dtype == jnp.float32  # norms stay float
  if cfg.qkv_bias:
    assert not isinstance(layer.bq, Int8Weight)
  logits_q, _, _ = forward(qparams, jnp.asarray(TOKENS), cfg)
  logits_f, _, _ = forward(dequantize_int8(qparams), jnp.asarray(TOKENS), cfg)
  np.testing.assert_allclose(logits_q, logits_f, atol=ATOL, rtol=0)


def test_quantized_model_generates_what_its_float_tree_generates():
  cfg = ModelConfig(**BASE, max_seq_len=64)
  params = init_params(cfg, jax.random.key(2))
  params = jax.tree_util.tree_map(lambda x: x * 3.0 if x.ndim == 2 else x, params)
  qparams = quantize_int8(params)
  prompts = [[5, 3, 9, 1], [7, 8]]
  greedy, key = make_sampling(temperature=0.0), jax.random.key(0)
  out_q = generate(Transformer(cfg), qparams, prompts, key, 12, greedy)
  out_f = generate(Transformer(cfg), dequantize_int8(qparams), prompts, key, 12, greedy)
  np.testing.assert_array_equal(out_q.tokens, out_f.tokens)
  # a quarter of the float32 bytes, plus the scales (and float32 norms)
  ratio = param_bytes(qparams) / param_bytes(params)
  assert 0.25 < ratio < 0.30, ratio


def test_quantized_encoder_decoder_equals_dequantized():
  def module(d, heads, kv):
    return ModelConfig(
      vocab_size=61,
      d_model=d,
      n_layers=2,
      n_heads=heads,
      n_kv_heads=kv,
      d_ff=2 * d,
      head_dim=8,
      max_seq_len=32,
    )

  cfg = EncDecConfig(module(24, 2, 1), module(16, 4, 2), decoder_start_id=2)
  qparams = quantize_int8(init_encdec_params(cfg, jax.random.key(3)))
  assert isinstance(qparams.cross[0].wk, Int8Weight)
  enc = jnp.asarray([[4, 5, 6, 7, 8, 9]], jnp.int32)
  dec = jnp.asarray([[2, 10, 11, 12]], jnp.int32)
  logits_q = encdec_forward(qparams, enc, dec, cfg)[0]
  logits_f = encdec_forward(dequantize_int8(qparams), enc, dec, cfg)[0]
  np.testing.assert_allclose(logits_q, logits_f, atol=ATOL, rtol=0)


def test_quantized_tree_passes_the_shape_check_and_bad_input_is_named():
  cfg = ModelConfig(**BASE)
  qparams = quantize_int8(init_params(cfg, jax.random.key(4)))
  from jaxllm.params import check_params

  check_params(cfg, qparams)  # an Int8Weight is one parameter
  with pytest.raises(TypeError, match="quantize_int8: params"):
    quantize_int8({"wq": jnp.ones((2, 2))})
  with pytest.raises(ValueError, match="block_size must be an int >= 0"):
    quantize_int8(init_params(cfg, jax.random.key(4)), block_size=-1)
  with pytest.raises(
    ValueError, match=r"block_size=7 does not divide axis 1 \(size 48\)"
  ):
    quantize_int8(init_params(cfg, jax.random.key(4)), block_size=7)
