"""The encoder-decoder core (jaxllm.encdec, jaxllm.encdec_decoding): config errors,
cached decoding against the uncached forward pass, forks and reorders, trees,
building from decoder-only checkpoints, FLOPs, and generate / particle filtering /
speculative decoding running unchanged on it.

References are independent of the decode interface: the uncached teacher-forced
`jaxllm.encdec.forward` run one row at a time on the unpadded input (so padding,
caching, forks and trees are all checked against a plain pass), the decoder-only
`jaxllm.model.forward`, and brute-force counts for the FLOPs.
"""

import dataclasses
import functools
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from algorithms.particle_filter import PFConfig, run_particle_filter
from algorithms.scorers import ConfidenceScorer
from algorithms.speculative import SpecConfig, speculative_generate
from jaxllm import flops as flops_lib
from jaxllm import model as model_lib
from jaxllm.config import ModelConfig
from jaxllm.decoding import fork_rows
from jaxllm.encdec import (
  EncDecConfig,
  EncDecParams,
  check_encdec_params,
  encdec_from_decoders,
  forward,
  init_encdec_params,
)
from jaxllm.encdec_decoding import EncDecTransformer
from jaxllm.generate import generate
from jaxllm.params import init_params
from jaxllm.sampling import make_sampling

V = 11
START = 1


def _module(d, layers, heads, kv, hd, windows, **kw):
  return ModelConfig(
    vocab_size=kw.pop("vocab_size", V),
    d_model=d,
    n_layers=layers,
    n_heads=heads,
    n_kv_heads=kv,
    d_ff=2 * d,
    head_dim=hd,
    activation="gelu_tanh",
    norm_plus_one=True,
    post_norms=True,
    embed_scale=True,
    attn_softcap=50.0,
    final_softcap=30.0,
    query_pre_attn_scalar=hd,
    layer_windows=windows,
    max_seq_len=64,
    **kw,
  )


def tiny_cfg(**kw) -> EncDecConfig:
  """Unbalanced: encoder 24 wide, 2 layers (window 3, global); decoder 16 wide,
  2 layers (window 3, global), GQA 4/2."""
  enc = _module(24, 2, 2, 1, 12, (3, 0))
  dec = _module(16, 2, 4, 2, 8, (3, 0))
  return EncDecConfig(enc, dec, decoder_start_id=START, **kw)


@functools.lru_cache(maxsize=None)
def _tiny(seed=0, sharpen=6.0):
  cfg = tiny_cfg()
  params = init_encdec_params(cfg, jax.random.key(seed))
  # (1 + w) final norm scaled up: peaked next-token distributions (a stronger test).
  dec = dataclasses.replace(
    params.decoder, final_norm=params.decoder.final_norm + sharpen
  )
  return cfg, dataclasses.replace(params, decoder=dec)


E_PAD, T_PAD = 8, 12  # one compiled reference per config


@functools.lru_cache(maxsize=None)
def _jit_forward(cfg):
  return jax.jit(lambda p, e, d, n: forward(p, e, d, cfg, enc_lengths_B=n)[0])


def ref_logits(cfg, params, enc_tokens, dec_tokens):
  """Uncached logits [T, V] of ONE row: the teacher-forced pass with the encoder
  reading enc_tokens (masked padding to E_PAD) and the decoder [start] +
  dec_tokens (T = len(dec_tokens) + 1; causal, so trailing padding is inert)."""
  enc, dec = list(enc_tokens), [cfg.decoder_start_id] + list(dec_tokens)
  e = jnp.asarray([enc + [0] * (E_PAD - len(enc))], jnp.int32)
  d = jnp.asarray([dec + [0] * (T_PAD - len(dec))], jnp.int32)
  out = _jit_forward(cfg)(params, e, d, jnp.asarray([len(enc)], jnp.int32))
  return np.asarray(out[0, : len(dec)])


@functools.lru_cache(maxsize=None)
def _jm(cfg):
  """The decode interface with each call jitted (cache_size static)."""
  m = EncDecTransformer(cfg)
  return m, types.SimpleNamespace(
    prefill=jax.jit(m.prefill, static_argnums=3),
    extend=jax.jit(m.extend),
    reorder=jax.jit(m.reorder),
    score_tree=jax.jit(m.score_tree),
    commit=jax.jit(m.commit),
  )


def _padded(rows, pad=0):
  T = max(len(r) for r in rows)
  arr = np.array([list(r) + [pad] * (T - len(r)) for r in rows], np.int32)
  return jnp.asarray(arr), jnp.asarray([len(r) for r in rows], jnp.int32)


TOL = dict(atol=2e-5, rtol=2e-5)
_FWD = jax.jit(forward, static_argnums=3)  # forward(params, enc, dec, cfg, ...)


# ----------------------------------------------------------------------------------
# Config and parameter checks
# ----------------------------------------------------------------------------------


def test_config_errors_name_the_field():
  enc = _module(24, 2, 2, 1, 12, (3, 0))
  dec = _module(16, 2, 4, 2, 8, (3, 0))
  with pytest.raises(ValueError, match=r"EncDecConfig\.decoder\.vocab_size"):
    EncDecConfig(enc, dec.replace(vocab_size=V + 1))
  with pytest.raises(ValueError, match=r"EncDecConfig\.cross_n_kv_heads=3"):
    EncDecConfig(enc, dec, cross_n_kv_heads=3)  # 4 query heads cannot join 3
  with pytest.raises(ValueError, match=r"EncDecConfig\.cross_n_kv_heads"):
    EncDecConfig(enc, dec, cross_n_kv_heads=0)
  with pytest.raises(ValueError, match=r"EncDecConfig\.decoder_start_id"):
    EncDecConfig(enc, dec, decoder_start_id=V)
  with pytest.raises(ValueError, match=r"EncDecConfig\.encoder"):
    EncDecConfig({"d_model": 4}, dec)
  with pytest.raises(ValueError, match=r"EncDecTransformer\.cfg"):
    EncDecTransformer(enc)
  # cross_n_kv_heads that divides n_heads is fine (MQA cross-attention).
  assert EncDecConfig(enc, dec, cross_n_kv_heads=1).cross_n_kv_heads == 1


def test_param_tree_and_shape_errors():
  cfg, params = _tiny()
  check_encdec_params(cfg, params)
  assert params.encoder.lm_head is None and params.decoder.lm_head is None
  assert params.cross[0].wk.shape == (24, 2, 8)  # from the encoder width
  assert params.cross[0].wq.shape == (16, 4, 8)
  bad = dataclasses.replace(
    params,
    cross=(dataclasses.replace(params.cross[0], wk=params.cross[0].wk[:5]),)
    + params.cross[1:],
  )
  with pytest.raises(ValueError, match=r"cross\[0\]\.wk"):
    check_encdec_params(cfg, bad)


def test_bad_inputs_raise_before_compute():
  cfg, params = _tiny()
  m = EncDecTransformer(cfg)
  with pytest.raises(ValueError, match="tokens_BxE"):
    m.prefill(params, jnp.zeros((4,), jnp.int32), jnp.ones((1,), jnp.int32), 8)
  with pytest.raises(ValueError, match="cache_size=4"):
    m.prefill(params, jnp.zeros((1, 6), jnp.int32), jnp.ones((1,), jnp.int32), 4)
  with pytest.raises(ValueError, match="rows"):
    forward(params, jnp.zeros((2, 3), jnp.int32), jnp.zeros((1, 3), jnp.int32), cfg)


# ----------------------------------------------------------------------------------
# Cached decoding = the uncached pass
# ----------------------------------------------------------------------------------

PROMPTS = [[3, 1, 4, 1, 5, 9, 2], [6, 5], [3, 5, 8, 9, 7]]  # ragged, > window 3


def test_prefill_and_ragged_extends_equal_uncached_forward():
  cfg, params = _tiny()
  m, j = _jm(cfg)
  toks, lens = _padded(PROMPTS)
  state, first = j.prefill(params, toks, lens, 16)
  chex.assert_shape(first, (3, V))
  np.testing.assert_array_equal(np.asarray(m.lengths(state)), [8, 3, 6])
  # a ragged 4-token step: rows append 4, 1 and 3 tokens
  steps = [[2, 7, 1, 8], [2, 0, 0, 0], [8, 2, 8, 0]]
  n = [4, 1, 3]
  valid = jnp.arange(4)[None] < jnp.asarray(n)[:, None]
  state, lg = j.extend(params, state, jnp.asarray(steps, jnp.int32), valid)
  # then one token each
  nxt = [[4], [5], [9]]
  state, lg2 = j.extend(params, state, jnp.asarray(nxt, jnp.int32))
  np.testing.assert_array_equal(
    np.asarray(m.lengths(state)), [len(p) + 1 + k + 1 for p, k in zip(PROMPTS, n)]
  )
  for b, p in enumerate(PROMPTS):
    ref = ref_logits(cfg, params, p, steps[b][: n[b]] + nxt[b])
    np.testing.assert_allclose(np.asarray(first[b]), ref[0], **TOL)
    np.testing.assert_allclose(np.asarray(lg[b, : n[b]]), ref[1 : 1 + n[b]], **TOL)
    np.testing.assert_allclose(np.asarray(lg2[b, 0]), ref[-1], **TOL)


def test_fork_and_reorder_give_from_scratch_logits():
  """Fork 2 prompts into 3 rows each (blocked index), extend each row with its own
  tokens, then permute rows (flat index): every row's logits equal a fresh
  uncached run of its own prompt and continuation."""
  cfg, params = _tiny()
  _m, j = _jm(cfg)
  prompts = PROMPTS[:2]
  toks, lens = _padded(prompts)
  state, _ = j.prefill(params, toks, lens, 12)
  state = j.reorder(state, fork_rows(2, 3))
  conts = [[i % V, (3 * i + 1) % V] for i in range(6)]
  state, lg = j.extend(params, state, jnp.asarray(conts, jnp.int32))
  perm = jnp.asarray([4, 0, 5, 2, 1, 3], jnp.int32)
  state = j.reorder(state, perm)
  nxt = jnp.asarray([[7]] * 6, jnp.int32)
  state, lg2 = j.extend(params, state, nxt)
  for r in range(6):
    src = int(perm[r])
    ref = ref_logits(cfg, params, prompts[src // 3], conts[src] + [7])
    np.testing.assert_allclose(np.asarray(lg[src]), ref[1:3], **TOL)
    np.testing.assert_allclose(np.asarray(lg2[r, 0]), ref[3], **TOL)


def test_score_tree_and_commit_equal_uncached_paths():
  cfg, params = _tiny()
  m, j = _jm(cfg)
  prompt = PROMPTS[0]
  toks, lens = _padded([prompt])
  state, _ = j.prefill(params, toks, lens, 16)
  state, _ = j.extend(params, state, jnp.asarray([[4, 6]], jnp.int32))
  # tree: 0 -> (1, 2), 1 -> 3, 3 -> 4   (BFS order, parents first)
  tree = [5, 2, 9, 3, 8]
  parent = jnp.asarray([-1, 0, 0, 1, 3], jnp.int32)
  scored, lg = j.score_tree(params, state, jnp.asarray([tree], jnp.int32), parent)
  paths = {0: [5], 1: [5, 2], 2: [5, 9], 3: [5, 2, 3], 4: [5, 2, 3, 8]}
  for node, path in paths.items():
    ref = ref_logits(cfg, params, prompt, [4, 6] + path)
    np.testing.assert_allclose(np.asarray(lg[0, node]), ref[-1], **TOL)
  # nothing committed by score_tree
  np.testing.assert_array_equal(np.asarray(m.lengths(scored)), [len(prompt) + 3])
  state = j.commit(scored, jnp.asarray([[0, 1, 3]], jnp.int32), jnp.asarray([3]))
  state, lg2 = j.extend(params, state, jnp.asarray([[10]], jnp.int32))
  ref = ref_logits(cfg, params, prompt, [4, 6, 5, 2, 3, 10])
  np.testing.assert_allclose(np.asarray(lg2[0, 0]), ref[-1], **TOL)


def test_encoder_is_bidirectional_and_padding_is_masked():
  cfg, params = _tiny()
  d = jnp.asarray([[START, 3, 4]], jnp.int32)
  a = _FWD(params, jnp.asarray([[1, 2, 3, 4]]), d, cfg)[0]
  b = _FWD(params, jnp.asarray([[1, 2, 3, 5]]), d, cfg)[0]
  assert np.abs(np.asarray(a - b)).max() > 1e-3  # the last input token matters
  # padding with any ids changes nothing when lengths mask it
  c = _FWD(params, jnp.asarray([[1, 2, 3, 4, 7, 7]]), d, cfg, enc_lengths_B=[4])[0]
  np.testing.assert_allclose(np.asarray(a), np.asarray(c), **TOL)


# ----------------------------------------------------------------------------------
# Building from decoder-only checkpoints
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("gemma", [True, False], ids=["gemma2_block", "llama_block"])
def test_from_decoders_zero_cross_output_equals_parent_decoder(gemma):
  """With cross-attention contributing nothing (wo = 0), the decoder computes the
  parent decoder-only forward pass on its tokens; the encoder is the other parent
  (unbalanced: 24-wide encoder, 16-wide decoder)."""
  if gemma:
    enc_cfg, dec_cfg = tiny_cfg().encoder, tiny_cfg().decoder
  else:
    enc_cfg = ModelConfig(V, 24, 2, 2, 1, 48, tie_embeddings=False)
    dec_cfg = ModelConfig(V, 16, 2, 4, 2, 32, sliding_window=3)
  cfg = EncDecConfig(enc_cfg, dec_cfg, decoder_start_id=START)
  enc_p = init_params(enc_cfg, jax.random.key(1))
  dec_p = init_params(dec_cfg, jax.random.key(2))
  params = encdec_from_decoders(cfg, enc_p, dec_p, "zero_output", key=jax.random.key(3))
  check_encdec_params(cfg, params)
  y = jnp.asarray([[START, 4, 2, 7, 7, 1, 0]], jnp.int32)
  ours = _FWD(params, jnp.asarray([[3, 1, 4, 1, 5]]), y, cfg)[0]
  parent = jax.jit(model_lib.forward, static_argnums=2)(dec_p, y, dec_cfg)[0]
  np.testing.assert_allclose(np.asarray(ours), np.asarray(parent), **TOL)
  with pytest.raises(ValueError, match="encoder.d_model"):
    encdec_from_decoders(cfg, enc_p, dec_p, "self_attention")
  with pytest.raises(ValueError, match="key is required"):
    encdec_from_decoders(cfg, enc_p, dec_p, "random")
  with pytest.raises(ValueError, match="cross_init"):
    encdec_from_decoders(cfg, enc_p, dec_p, "copy")


def test_from_decoders_balanced_copies_self_attention():
  dec_cfg = tiny_cfg().decoder
  cfg = EncDecConfig(dec_cfg.replace(layer_windows=(4, 0)), dec_cfg)
  enc_p = init_params(cfg.encoder, jax.random.key(1))
  dec_p = init_params(dec_cfg, jax.random.key(2))
  params = encdec_from_decoders(cfg, enc_p, dec_p)
  assert isinstance(params, EncDecParams)
  for cp, lp in zip(params.cross, dec_p.layers):
    assert cp.wq is lp.wq and cp.wk is lp.wk and cp.wv is lp.wv and cp.wo is lp.wo
    assert cp.norm is lp.attn_norm and cp.post_norm is lp.post_attn_norm
  with pytest.raises(ValueError, match="dec_params"):
    encdec_from_decoders(cfg, enc_p, enc_p.layers)


# ----------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------


def test_flops_formulas():
  cfg = tiny_cfg()
  m = EncDecTransformer(cfg)
  assert flops_lib.flops_config(m) is cfg
  e, d = cfg.encoder, cfg.decoder
  n = 7
  # encoder attention: brute-force count of (query, key) pairs per layer
  pairs = sum(
    sum(1 for i in range(n) for j in range(n) if not w or abs(i - j) < w)
    for w in e.windows
  )
  enc_mm = 2 * e.param_counts()["layers"] + 2 * 2 * e.d_model * 2 * 8 * d.n_layers
  want_enc = n * enc_mm + 4 * e.n_heads * e.head_dim * pairs
  assert flops_lib.encoder_flops(cfg, n) == pytest.approx(want_enc)
  # one decoder token: self keys 5 (window 3 on layer 0), n cross keys per layer
  dec_mm = 2 * (
    d.param_counts()["layers"] + V * d.d_model + 2 * d.d_model * 4 * 8 * d.n_layers
  )
  want_tok = dec_mm + 4 * 4 * 8 * (min(5, 3) + 5 + d.n_layers * n)
  assert flops_lib.encdec_token_flops(cfg, n, 5) == pytest.approx(want_tok)
  assert flops_lib.prefill_flops(cfg, n) == pytest.approx(
    want_enc + flops_lib.encdec_token_flops(cfg, n, 1)
  )
  # the one-context form charges the whole context on every layer: exact without
  # decoder windows, an upper bound with them
  glob = tiny_cfg().replace(decoder=d.replace(layer_windows=(0, 0)))
  assert flops_lib.decode_flops(glob, n + 5) == pytest.approx(
    flops_lib.encdec_token_flops(glob, n, 5)
  )
  assert flops_lib.decode_flops(cfg, n + 5) >= flops_lib.encdec_token_flops(cfg, n, 5)
  gen = flops_lib.generate_flops(glob, n, 3)
  want = flops_lib.prefill_flops(glob, n) + sum(
    flops_lib.encdec_token_flops(glob, n, k) for k in (2, 3, 4)
  )
  assert gen == pytest.approx(want)


# ----------------------------------------------------------------------------------
# The algorithms, unchanged
# ----------------------------------------------------------------------------------


def _greedy_reference(cfg, params, enc, n_new):
  ys = []
  for _ in range(n_new):
    ys.append(int(np.argmax(ref_logits(cfg, params, enc, ys)[-1])))
  return ys


def test_generate_greedy_equals_uncached_argmax_and_counts_flops():
  cfg, params = _tiny()
  m = EncDecTransformer(cfg)
  out = generate(m, params, PROMPTS, jax.random.key(0), 6, make_sampling(0.0))
  for b, p in enumerate(PROMPTS):
    assert list(np.asarray(out.tokens[b])) == _greedy_reference(cfg, params, p, 6)
  # num_samples forks after one prefill: every sample of a greedy run is equal
  out2 = generate(
    m, params, PROMPTS[:2], jax.random.key(1), 4, make_sampling(0.0), num_samples=3
  )
  np.testing.assert_array_equal(
    np.asarray(out2.tokens), np.repeat(np.asarray(out.tokens[:2, :4]), 3, axis=0)
  )


def test_particle_filter_runs_and_forks_match_uncached():
  """PF (resampling, look-ahead, two sweeps): each particle's next-token logits
  equal a fresh uncached encoder-decoder run of its prompt and text."""
  cfg, params = _tiny(sharpen=2.0)
  pf = PFConfig(
    n_particles=4,
    max_steps=3,
    max_step_tokens=2,
    delimiter_ids=(10,),
    stop_ids=(0,),
    lookahead="greedy",
    n_sweeps=2,
    return_logits=True,
    scheme="systematic",
  )
  prompts = PROMPTS[:2]
  r, comp = run_particle_filter(
    EncDecTransformer(cfg),
    params,
    ConfidenceScorer(),
    None,
    prompts,
    jax.random.key(1),
    pf,
  )
  toks, lens = np.asarray(r.tokens), np.asarray(r.lengths)
  for p in range(2):
    for i in range(4):
      ref = ref_logits(cfg, params, prompts[p], list(toks[p, i, : lens[p, i]]))
      np.testing.assert_allclose(np.asarray(r.logits[p, i]), ref[-1], **TOL)
  assert comp.model_calls > 1 and comp.decode_flops > 0
  assert comp.prefill_flops >= float(np.sum(flops_lib.prefill_flops(cfg, [7, 2])))


# Speculative decoding roots its first tree at the decoder start token with the
# whole prompt encoded (`EncDecTransformer.prefill_to_root`), so it samples
# generate's conditional p(y | encoder(prompt), decoder [start, y...]); the
# references below compute it by uncached passes.
V_SD = 8
SD_PROMPT = [3, 1, 4, 1, 5]


@functools.lru_cache(maxsize=None)
def _spec_models():
  def cfg_of(dec_layers, d):
    enc = _module(24, 2, 2, 1, 12, (3, 0), vocab_size=V_SD)
    dec = _module(d, dec_layers, 4, 2, 8, (3, 0)[:dec_layers], vocab_size=V_SD)
    return EncDecConfig(enc, dec, decoder_start_id=START)

  t_cfg, d_cfg = cfg_of(2, 16), cfg_of(1, 16)
  tp = init_encdec_params(t_cfg, jax.random.key(7))
  tp = dataclasses.replace(
    tp, decoder=dataclasses.replace(tp.decoder, final_norm=tp.decoder.final_norm + 5)
  )
  # the draft: the target's encoder and first decoder layer (a layer-skip draft)
  dp = EncDecParams(
    encoder=tp.encoder,
    decoder=dataclasses.replace(tp.decoder, layers=tp.decoder.layers[:1]),
    cross=tp.cross[:1],
  )
  return t_cfg, tp, d_cfg, dp


def _np_softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max())
  return e / e.sum()


def _spec_ref_logits(cfg, params, prompt, ys):
  return ref_logits(cfg, params, prompt, list(ys))


@pytest.mark.slow
def test_speculative_greedy_equals_generate_conditional():
  t_cfg, tp, d_cfg, dp = _spec_models()
  prompts = [SD_PROMPT, [2, 7], [6, 0, 6]]
  sc = SpecConfig(method="chain", gamma=3, max_new_tokens=6, sampling_temperature=0.0)
  out, comp = speculative_generate(
    EncDecTransformer(t_cfg),
    tp,
    EncDecTransformer(d_cfg),
    dp,
    prompts,
    jax.random.key(0),
    sc,
  )
  for b, p in enumerate(prompts):
    ys = []
    for _ in range(6):
      ys.append(int(np.argmax(_spec_ref_logits(t_cfg, tp, p, ys)[-1])))
    assert list(np.asarray(out.tokens[b])) == ys
  assert comp.decode_flops > 0 and comp.prefill_flops > 0


def test_speculative_sampling_is_exact():
  """Two tokens sampled by speculative decoding (chain of 2, a 1-layer draft) follow
  the target's distribution (chi-square against enumeration)."""
  t_cfg, tp, d_cfg, dp = _spec_models()
  n = 6000
  sc = SpecConfig(method="chain", gamma=2, max_new_tokens=2)
  out, _ = speculative_generate(
    EncDecTransformer(t_cfg),
    tp,
    EncDecTransformer(d_cfg),
    dp,
    [SD_PROMPT] * n,
    jax.random.key(5),
    sc,
  )
  toks = np.asarray(out.tokens)
  counts = np.bincount(toks[:, 0] * V_SD + toks[:, 1], minlength=V_SD**2)
  lg = _spec_ref_logits(t_cfg, tp, SD_PROMPT, [])
  p1 = _np_softmax(lg[-1])
  exact = np.zeros(V_SD**2)
  for a in range(V_SD):
    p2 = _np_softmax(_spec_ref_logits(t_cfg, tp, SD_PROMPT, [a])[-1])
    exact[a * V_SD : (a + 1) * V_SD] = p1[a] * p2
  exact /= exact.sum()
  big = exact * n >= 5
  obs = np.append(counts[big], counts[~big].sum())
  ex = np.append(exact[big], exact[~big].sum()) * n
  pval = stats.chisquare(obs, ex * obs.sum() / ex.sum()).pvalue
  assert pval > 1e-5, f"p-value {pval:.2e}"
  assert np.asarray(out.accepted).mean() > 0.1


def test_beam_and_astar_match_the_parent_when_cross_attention_is_silent():
  """Beam search and A* (confidence scorer) run unchanged on the encoder-decoder:
  with cross-attention's output zeroed its decoder IS the decoder-only parent on
  [start] + continuation, so every search returns the parent's tokens and scores
  when the parent is prompted with [start] (same keys), whatever the prompt."""
  from algorithms import astar, beam_search
  from jaxllm.decoding import Transformer

  enc_cfg = ModelConfig(V, 16, 1, 2, 1, 32, tie_embeddings=False, max_seq_len=64)
  dec_cfg = ModelConfig(V, 16, 2, 4, 2, 32, max_seq_len=64)
  cfg = EncDecConfig(enc_cfg, dec_cfg, decoder_start_id=START)
  dec_p = init_params(dec_cfg, jax.random.key(2))
  params = encdec_from_decoders(
    cfg,
    init_params(enc_cfg, jax.random.key(1)),
    dec_p,
    "zero_output",
    key=jax.random.key(3),
  )
  ids = dict(delimiter_ids=(0,), stop_ids=(7,))
  beam_cfg = beam_search.BeamConfig(
    n_paths=4, beam_width=2, max_steps=3, max_step_tokens=2, **ids
  )
  astar_cfg = astar.AStarConfig(
    num_children=2, capacity=8, max_step_tokens=2, max_solution_tokens=6, **ids
  )

  def searches(model, p, prompts):
    key = jax.random.key(9)
    b = beam_search.run_beam_search(
      model, p, ConfidenceScorer(), None, prompts, key, beam_cfg
    )
    a = astar.run_astar(model, p, ConfidenceScorer(), None, prompts, key, astar_cfg)
    return jax.tree_util.tree_map(np.asarray, (b[0], a[0]))

  got = searches(EncDecTransformer(cfg), params, [[3, 1, 4, 1, 5], [6, 2]])
  want = searches(Transformer(dec_cfg), dec_p, [[START], [START]])
  flat_got = jax.tree_util.tree_flatten_with_path(got)[0]
  flat_want = dict(jax.tree_util.tree_flatten_with_path(want)[0])
  differ = [
    jax.tree_util.keystr(k)
    for k, v in flat_got
    if v.shape != flat_want[k].shape or not np.allclose(v, flat_want[k], atol=1e-5)
  ]
  # A*'s FLOPs histograms are indexed by context (encoder + decoder tokens on
  # the encoder-decoder, `lengths`): they differ by design; all else is equal.
  assert sorted(differ) == ["[1].hist_fallback", "[1].hist_scored", "[1].hist_search"]
