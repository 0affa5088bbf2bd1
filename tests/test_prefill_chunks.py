"""Chunked prefill (`ModelConfig.prefill_chunk`, `decoding.prefill_in_chunks`):
the same prefill as one pass over the whole prompt (logits, cache contents at
every committed slot, lengths, and the tokens decoded after it), for ragged
prompts, chunk sizes that do and do not divide the prompt, sliding windows and
a bfloat16 cache; smaller compiled temporaries; named config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import Transformer, generate, init_params, make_sampling
from jaxllm.cache import K_LAYOUT, V_LAYOUT
from tests._tiny_models import three_layer_config

V = 37
LENGTHS = np.array([13, 5, 1, 16])


def _prompts(T=16):
  rng = np.random.default_rng(0)
  toks = rng.integers(1, V, (len(LENGTHS), T)).astype(np.int32)
  toks[np.arange(T)[None, :] >= LENGTHS[:, None]] = 0  # right padding
  return jnp.asarray(toks), jnp.asarray(LENGTHS, jnp.int32)


def _committed(buf, layout, lengths):
  """Per row, the buffer's entries at slots < length (slot axis last)."""
  s = np.moveaxis(np.asarray(buf, np.float32), layout.index("s"), -1)
  return [s[b, ..., :n] for b, n in enumerate(lengths)]


def _prefill(cfg, params, cache_size=24):
  toks, lens = _prompts()
  return Transformer(cfg).prefill(params, toks, lens, cache_size)


@pytest.mark.parametrize(
  "overrides",
  [{}, {"layer_windows": (4, 0, 3)}, {"cache_dtype": "bfloat16"}],
  ids=["global", "sliding_windows", "bf16_cache"],
)
def test_chunked_prefill_equals_one_pass(overrides):
  base = three_layer_config(V, prefill_chunk=0, **overrides)
  params = init_params(base, jax.random.key(1))
  ref_state, ref_logits = _prefill(base, params)
  tol = 2e-2 if overrides.get("cache_dtype") else 2e-5
  for chunk in (1, 3, 5, 16, 64):
    state, logits = _prefill(base.replace(prefill_chunk=chunk), params)
    np.testing.assert_allclose(logits, ref_logits, atol=tol, rtol=tol, err_msg=chunk)
    np.testing.assert_array_equal(state.lengths, LENGTHS)
    for i in range(base.n_layers):
      for got, ref, layout in (
        (state.k, ref_state.k, K_LAYOUT),
        (state.v, ref_state.v, V_LAYOUT),
      ):
        for g, r in zip(
          _committed(got[i], layout, LENGTHS), _committed(ref[i], layout, LENGTHS)
        ):
          np.testing.assert_allclose(g, r, atol=tol, rtol=tol, err_msg=f"{chunk} {i}")


def test_generate_after_chunked_prefill_is_token_identical():
  cfg = three_layer_config(V, prefill_chunk=0)
  params = init_params(cfg, jax.random.key(2))
  toks, lens = _prompts()
  prompts = [list(np.asarray(t[:n])) for t, n in zip(toks, lens)]
  out = [
    generate(
      Transformer(cfg.replace(prefill_chunk=c)),
      params,
      prompts,
      jax.random.key(3),
      8,
      make_sampling(0.0),
    )
    for c in (0, 4)
  ]
  np.testing.assert_array_equal(out[0].tokens, out[1].tokens)
  np.testing.assert_array_equal(out[0].lengths, out[1].lengths)


def test_chunked_prefill_holds_smaller_temporaries():
  """XLA's own accounting of the compiled prefill: with 16-token chunks the
  temporaries (attention scores among them) are well under the one pass's."""
  cfg = three_layer_config(V, max_seq_len=256)
  params = init_params(cfg, jax.random.key(0))
  toks = jax.ShapeDtypeStruct((8, 256), jnp.int32)
  lens = jax.ShapeDtypeStruct((8,), jnp.int32)

  def temp_bytes(chunk):
    model = Transformer(cfg.replace(prefill_chunk=chunk))
    f = jax.jit(lambda p, t, n: model.prefill(p, t, n, 256))
    return f.lower(params, toks, lens).compile().memory_analysis().temp_size_in_bytes

  one_pass, chunked = temp_bytes(0), temp_bytes(16)
  assert chunked < one_pass / 4, (chunked, one_pass)


@pytest.mark.parametrize("bad", [-1, 2.5, True, "8"])
def test_prefill_chunk_must_be_a_nonnegative_int(bad):
  with pytest.raises(ValueError, match="prefill_chunk"):
    three_layer_config(V, prefill_chunk=bad)
