"""Parity of jaxllm's encoder-decoder with transformers' T5Gemma on tiny random
models built locally (tests/_hf_models.py T5GEMMA_CASES), import and export.

Reference: transformers' eager PyTorch T5GemmaForConditionalGeneration (float32).
Cases cover GQA / MQA, both soft-caps, sliding windows shorter than the sequences
in encoder and decoder, tied and untied heads, an unbalanced encoder / decoder
(different widths, depths and heads) and ragged (padded) encoder inputs.
"""

from __future__ import annotations

import functools

import _hf_models as hfm
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxllm import t5gemma
from jaxllm.encdec import EncDecConfig, forward
from jaxllm.encdec_decoding import EncDecTransformer

CASES = sorted(hfm.T5GEMMA_CASES)
REL_TOL = 1e-5
B, E, T = 3, 11, 9  # longer than every window in the cases
LENGTHS = np.array([11, 7, 3])  # ragged encoder inputs
MAX_ERR = {}


def rel_err(ours, theirs):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))


def _inputs(seed):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 128, (B, E)), rng.integers(0, 128, (B, T))


@functools.lru_cache(maxsize=None)
def _jit_forward(cfg):
  return jax.jit(lambda p, e, d, n: forward(p, e, d, cfg, enc_lengths_B=n)[0])


def our_logits(cfg, params, enc, dec, lengths=LENGTHS):
  out = _jit_forward(cfg)(
    params,
    jnp.asarray(enc, jnp.int32),
    jnp.asarray(dec, jnp.int32),
    jnp.asarray(lengths),
  )
  return np.asarray(out)


@pytest.fixture(scope="module", params=CASES, ids=CASES)
def case(request):
  """(name, torch model, our (cfg, params) imported from its state dict)."""
  name = request.param
  model = hfm.build_t5gemma(name, seed=CASES.index(name) + 1)
  cfg = t5gemma.config_from_t5gemma(model.config)
  params = t5gemma.params_from_t5gemma(cfg, model.state_dict())
  return name, model, cfg, params


def test_config_import(case):
  name, model, cfg, _ = case
  assert isinstance(cfg, EncDecConfig)
  _enc_kw, _dec_kw, tied = hfm.T5GEMMA_CASES[name]
  assert cfg.decoder.tie_embeddings == tied
  assert cfg.encoder.d_model == model.config.encoder.hidden_size
  assert cfg.decoder.d_model == model.config.decoder.hidden_size
  assert cfg.decoder_start_id == model.config.decoder.bos_token_id
  # encoder windows admit |i - j| <= sliding_window in transformers: ours is + 1
  sw = model.config.encoder.sliding_window
  assert max(cfg.encoder.windows) == sw + 1


def test_logit_parity_ragged(case):
  name, model, cfg, params = case
  enc, dec = _inputs(0)
  theirs = hfm.t5gemma_logits(model, enc, LENGTHS, dec)
  err = rel_err(our_logits(cfg, params, enc, dec), theirs)
  MAX_ERR[name] = err
  assert err < REL_TOL, f"{name}: relative error {err:.2e}"


def test_window_off_by_one_would_be_caught(case):
  """The parity above is sensitive to the window convention: an encoder window
  one smaller (transformers' number taken as ours) gives different logits."""
  _name, model, cfg, params = case
  enc, dec = _inputs(1)
  theirs = hfm.t5gemma_logits(model, enc, LENGTHS, dec)
  wrong_enc = cfg.encoder.replace(
    layer_windows=tuple(max(w - 1, 0) if w else 0 for w in cfg.encoder.windows)
  )
  wrong = cfg.replace(encoder=wrong_enc)
  assert rel_err(our_logits(wrong, params, enc, dec), theirs) > 1e-3


def test_cached_decoding_matches_transformers(case):
  """Prefill (encoder once, cross K/V cached) + one extend of the teacher tokens
  equals transformers' teacher-forced logits after the start token."""
  _name, model, cfg, params = case
  enc, dec = _inputs(2)
  dec[:, 0] = cfg.decoder_start_id
  theirs = hfm.t5gemma_logits(model, enc, LENGTHS, dec)
  m = EncDecTransformer(cfg)
  prefill = jax.jit(m.prefill, static_argnums=3)
  state, first = prefill(params, jnp.asarray(enc), jnp.asarray(LENGTHS), 16)
  _, rest = jax.jit(m.extend)(params, state, jnp.asarray(dec[:, 1:], jnp.int32))
  ours = np.concatenate([np.asarray(first)[:, None], np.asarray(rest)], axis=1)
  assert rel_err(ours, theirs) < REL_TOL


def test_export_reproduces_logits(case, tmp_path):
  _name, model, cfg, params = case
  t5gemma.save_t5gemma(str(tmp_path), cfg, params)
  back = transformers.T5GemmaForConditionalGeneration.from_pretrained(
    str(tmp_path), attn_implementation="eager", dtype=torch.float32
  )
  back.eval()
  enc, dec = _inputs(3)
  want = hfm.t5gemma_logits(model, enc, LENGTHS, dec)
  got = hfm.t5gemma_logits(back, enc, LENGTHS, dec)
  assert rel_err(got, want) < REL_TOL
  cfg2, params2 = t5gemma.load_t5gemma(str(tmp_path))
  assert cfg2 == cfg
  for a, b in zip(
    jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2)
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_import_errors_name_the_problem(case):
  _name, model, cfg, _ = case
  sd = dict(model.state_dict())
  sd.pop("model.decoder.layers.0.cross_attn.k_proj.weight")
  with pytest.raises(ValueError, match="missing.*cross_attn.k_proj"):
    t5gemma.params_from_t5gemma(cfg, sd)
  sd = dict(model.state_dict())
  sd["model.encoder.norm.weight"] = sd["model.encoder.norm.weight"][:-1]
  with pytest.raises(ValueError, match=r"model\.encoder\.norm\.weight has shape"):
    t5gemma.params_from_t5gemma(cfg, sd)
  bad = model.config.to_dict()
  bad["decoder"]["attention_bias"] = True
  with pytest.raises(ValueError, match="decoder.attention_bias"):
    t5gemma.config_from_t5gemma(bad)


def test_export_refuses_what_t5gemma_cannot_express(case):
  _, _, cfg, _ = case
  llama_dec = cfg.decoder.replace(norm_plus_one=False)
  with pytest.raises(ValueError, match="EncDecConfig.decoder"):
    t5gemma.config_to_t5gemma(cfg.replace(decoder=llama_dec))
  with pytest.raises(ValueError, match="cross_n_kv_heads"):
    t5gemma.config_to_t5gemma(cfg.replace(cross_n_kv_heads=1))  # decoder has 2 / 4


def test_import_refuses_a_config_without_a_section(case):
  _, model, _, _ = case
  for part in ("encoder", "decoder"):
    d = model.config.to_dict()
    del d[part]
    with pytest.raises(ValueError, match=f"no '{part}' section"):
      t5gemma.config_from_t5gemma(d)


def test_save_refuses_params_of_another_config(case, tmp_path):
  """Params that do not match the config are refused before anything is
  written (they used to be saved and only failed at load)."""
  import dataclasses

  _, _, cfg, params = case
  dec = params.decoder
  short = dataclasses.replace(
    params, decoder=dataclasses.replace(dec, layers=dec.layers[:-1])
  )
  with pytest.raises(ValueError, match="decoder"):
    t5gemma.save_t5gemma(str(tmp_path / "ck"), cfg, short)
  assert not (tmp_path / "ck").exists()


def test_report_max_errors():
  """Prints the measured parity errors (run with -s)."""
  print({k: f"{v:.2e}" for k, v in MAX_ERR.items()})
