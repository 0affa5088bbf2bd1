"""algorithms/encdec_adaptation.py: UL2 / PrefixLM transforms on hand-built
examples and against exact distributions, the PrefixLM + KD loss against a direct
numpy computation, the teacher's target logits against per-row parent runs, the
parent checks after balanced initialisation, and the cross-attention-only warm-up.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from algorithms import encdec_adaptation as A
from jaxllm import encdec, train
from jaxllm.config import ModelConfig
from jaxllm.model import forward
from jaxllm.params import init_params

V_TEXT = 23


def ids40(n_sentinels=12):
  return A.reserved_ids(40, n_sentinels, text_vocab=V_TEXT)


# ----------------------------------------------------------------------------------
# Reserved ids
# ----------------------------------------------------------------------------------


def test_reserved_ids_at_the_top():
  ids = A.reserved_ids(40, 3, text_vocab=V_TEXT)
  assert ids.modes == {"R": 37, "S": 38, "X": 39}
  assert ids.sentinels == (36, 35, 34)


@pytest.mark.parametrize(
  "kw, match",
  [
    ({"sentinels": (30, 31), "modes": {"R": 37, "S": 38, "X": 40}}, "UL2Ids.modes"),
    ({"sentinels": (3, 31), "modes": {"R": 37, "S": 38, "X": 39}}, "UL2Ids.sentinels"),
    ({"sentinels": (30, 37), "modes": {"R": 37, "S": 38, "X": 39}}, "must all differ"),
    ({"sentinels": (), "modes": {"R": 37, "S": 38, "X": 39}}, "sentinels is empty"),
    ({"sentinels": (30,), "modes": {"R": 37, "S": 38}}, "UL2Ids.modes must map"),
  ],
)
def test_ul2_ids_rejected(kw, match):
  with pytest.raises(ValueError, match=match):
    A.UL2Ids(vocab_size=40, text_vocab=V_TEXT, **kw)


def test_reserved_ids_that_do_not_fit():
  with pytest.raises(ValueError, match="n_sentinels=15"):
    A.reserved_ids(40, 15, text_vocab=V_TEXT)
  with pytest.raises(ValueError, match="n_sentinels must be"):
    A.reserved_ids(40, 0)


# ----------------------------------------------------------------------------------
# Hand-built examples
# ----------------------------------------------------------------------------------


def test_span_corrupt_hand_built():
  toks = [10, 11, 12, 13, 14, 15, 16, 17]
  inp, tgt = A.span_corrupt(toks, [1, 4, 7], [2, 1, 1], [30, 31, 32])
  assert inp.tolist() == [10, 30, 13, 31, 15, 16, 32]
  assert tgt.tolist() == [30, 11, 12, 31, 14, 32, 17]
  # a span at the very start
  inp, tgt = A.span_corrupt(toks, [0], [3], [30])
  assert inp.tolist() == [30, 13, 14, 15, 16, 17]
  assert tgt.tolist() == [30, 10, 11, 12]


def test_prefix_lm_split_hand_built():
  inp, tgt = A.prefix_lm_split([5, 6, 7, 8, 9], 2)
  assert inp.tolist() == [5, 6] and tgt.tolist() == [7, 8, 9]
  inp, tgt = A.prefix_lm_split([5, 6, 7, 8, 9], 4, mode_id=38)
  assert inp.tolist() == [38, 5, 6, 7, 8] and tgt.tolist() == [9]


def test_span_counts_hand_computed():
  assert A.span_counts(100, 0.15, 3.0) == (15, 5)
  assert A.span_counts(100, 0.5, 32.0) == (50, 2)  # round(50 / 32) = 2
  assert A.span_counts(10, 0.15, 3.0) == (2, 1)  # round(1.5) = 2 tokens, 1 span
  assert A.span_counts(4, 0.5, 1.0) == (2, 2)
  assert A.span_counts(3, 0.9, 1.0) == (2, 2)  # capped at length - 1 tokens


@pytest.mark.parametrize("mode", ["R", "S", "X"])
def test_mode_token_first(mode):
  ids = ids40()
  d = {x.mode: x for x in A.DEFAULT_DENOISERS}[mode]
  rng = np.random.default_rng(0)
  for _ in range(20):
    inp, tgt = A.ul2_example(rng, rng.integers(3, V_TEXT, 60), d, ids)
    assert inp[0] == ids.modes[mode]
    assert not set(inp[1:].tolist()) & set(ids.modes.values())
    assert not set(tgt.tolist()) & set(ids.modes.values())


def test_encdec_batch_hand_built():
  b = A.encdec_batch(
    [([1, 5, 6], [7, 8, 2]), ([1, 9], [2])], start_id=1, vocab_size=23, enc_len=4
  )
  assert b["enc_tokens"].tolist() == [[1, 5, 6, 0], [1, 9, 0, 0]]
  assert b["enc_lengths"].tolist() == [3, 2]
  T = b["targets"].shape[1]
  assert T == 16  # bucketed to a multiple of 16
  assert b["dec_inputs"][0, :3].tolist() == [1, 7, 8]
  assert b["dec_inputs"][1, :1].tolist() == [1]
  assert b["targets"][0, :3].tolist() == [7, 8, 2]
  assert b["loss_mask"].sum(1).tolist() == [3.0, 1.0]
  with pytest.raises(ValueError, match="enc_len=2"):
    A.encdec_batch([([1, 5, 6], [7])], start_id=1, vocab_size=23, enc_len=2)
  with pytest.raises(ValueError, match=r"examples\[0\] targets"):
    A.encdec_batch([([1], [99])], start_id=1, vocab_size=23)


# ----------------------------------------------------------------------------------
# Reconstruction and statistics
# ----------------------------------------------------------------------------------


def reconstruct(inputs, targets, sentinels):
  """The original sequence from a span-corrupted pair, written independently:
  walk the input; at a sentinel, splice in the target tokens after that same
  sentinel up to the next sentinel."""
  sent = set(sentinels)
  chunks, cur, key = {}, None, None
  for t in targets:
    if t in sent:
      if key is not None:
        chunks[key] = cur
      key, cur = t, []
    else:
      cur.append(t)
  if key is not None:
    chunks[key] = cur
  out = []
  for t in inputs:
    out.extend(chunks.pop(t) if t in sent else [t])
  assert not chunks, "a target span had no sentinel in the input"
  return out


@pytest.mark.parametrize("d", A.DEFAULT_DENOISERS, ids=lambda d: d.mode)
def test_reconstruction_is_exact(d):
  ids = ids40(n_sentinels=12)
  rng = np.random.default_rng(1)
  for _ in range(200):
    n = int(rng.integers(2, 120))
    toks = rng.integers(3, V_TEXT, n)
    inp, tgt = A.ul2_example(rng, toks, d, ids)
    if d.mode == "S":
      assert inp[1:].tolist() + tgt.tolist() == toks.tolist()
      continue
    got = reconstruct(inp[1:].tolist(), tgt.tolist(), ids.sentinels)
    assert got == toks.tolist()
    # the input's sentinels are the target's, in the same order, sentinel 0 first
    s_in = [t for t in inp[1:] if t in ids.sentinels]
    s_tg = [t for t in tgt if t in ids.sentinels]
    assert s_in == s_tg == list(ids.sentinels[: len(s_in)])
    assert tgt[0] == ids.sentinels[0]


def composition_part_pmf(n, k):
  """P(first part = j) of a uniform composition of n into k positive parts:
  C(n - j - 1, k - 2) / C(n - 1, k - 1) (stars and bars)."""
  return {
    j: math.comb(n - j - 1, k - 2) / math.comb(n - 1, k - 1)
    for j in range(1, n - k + 2)
  }


def test_span_lengths_follow_the_exact_distribution():
  rng = np.random.default_rng(2)
  n_draws = 4000
  L, rate, mean_span = 200, 0.15, 3.0
  n_noise, k = A.span_counts(L, rate, mean_span)
  assert (n_noise, k) == (30, 10)
  firsts, spans, gaps_ok = [], [], True
  for _ in range(n_draws):
    starts, lens = A.random_spans(rng, L, rate, mean_span)
    assert lens.sum() == n_noise and len(lens) == k
    ends = starts + lens
    gaps_ok &= bool(np.all(starts[1:] > ends[:-1])) and starts[0] >= 0 and ends[-1] <= L
    firsts.append(int(lens[0]))
    spans.extend(lens.tolist())
  assert gaps_ok  # spans never overlap or touch
  assert np.mean(spans) == pytest.approx(mean_span)
  pmf = composition_part_pmf(n_noise, k)
  # pool the tail so every expected count is >= 5
  cut = max(j for j in pmf if n_draws * sum(p for i, p in pmf.items() if i >= j) >= 5)
  obs = [sum(f == j for f in firsts) for j in range(1, cut)] + [
    sum(f >= cut for f in firsts)
  ]
  exp = [n_draws * pmf[j] for j in range(1, cut)]
  exp.append(n_draws - sum(exp))
  _, p = scipy.stats.chisquare(obs, exp)
  assert p > 1e-4


def test_measured_rate_and_mean_span_over_many_samples():
  ids = A.reserved_ids(100, 40, text_vocab=V_TEXT)
  rng = np.random.default_rng(3)
  for d in A.DEFAULT_DENOISERS:
    noise, total, n_spans, frac = 0, 0, 0, []
    for _ in range(400):
      n = int(rng.integers(64, 257))
      toks = rng.integers(3, V_TEXT, n)
      _inp, tgt = A.ul2_example(rng, toks, d, ids)
      if d.mode == "S":
        frac.append(len(tgt) / n)
        continue
      k = sum(t in ids.sentinels for t in tgt)
      noise += len(tgt) - k
      n_spans += k
      total += n
    if d.mode == "S":
      # target length uniform on [1, 2 round(rate n) - 1]: mean round(rate n) / n
      se = np.std(frac) / np.sqrt(len(frac))
      assert abs(np.mean(frac) - d.rate) < 5 * se + 0.005
    else:
      assert noise / total == pytest.approx(d.rate, abs=0.5 / 64)  # rounding only
      assert noise / n_spans == pytest.approx(d.mean_span, rel=0.1)


# ----------------------------------------------------------------------------------
# Bad values
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "kw, match",
  [
    ({"mode": "Y"}, "Denoiser.mode"),
    ({"mode": "R", "rate": 0.0}, "Denoiser.rate"),
    ({"mode": "R", "rate": 1.5}, "Denoiser.rate"),
    ({"mode": "R", "mean_span": 0.5}, "Denoiser.mean_span"),
    ({"mode": "X", "rate": 0.15, "mean_span": 3.0}, "not extreme"),
    ({"mode": "R", "rate": 0.15, "mean_span": 32.0}, "is extreme"),
  ],
)
def test_denoiser_rejected(kw, match):
  with pytest.raises(ValueError, match=match):
    A.Denoiser(**kw)


def test_transform_errors_name_the_argument():
  ids = ids40(n_sentinels=2)
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="reserved"):
    A.ul2_example(rng, [3, 4, 37], A.Denoiser("R"), ids)
  with pytest.raises(ValueError, match=r"tokens token ids must be in \[0, 40\)"):
    A.ul2_example(rng, [3, 4, 40], A.Denoiser("R"), ids)
  with pytest.raises(ValueError, match="ids.sentinels"):
    A.ul2_example(rng, np.arange(3, 23).tolist() * 5, A.Denoiser("R"), ids)
  with pytest.raises(ValueError, match="split"):
    A.prefix_lm_split([1, 2, 3], 3)
  with pytest.raises(ValueError, match="sorted, non-overlapping"):
    A.span_corrupt([1, 2, 3, 4], [0, 1], [2, 1], [30, 31])
  with pytest.raises(ValueError, match="sentinels"):
    A.span_corrupt([1, 2, 3, 4], [0, 2], [1, 1], [30])
  with pytest.raises(ValueError, match="length must be"):
    A.random_spans(rng, 1, 0.5, 1.0)
  with pytest.raises(ValueError, match="kd_weight"):
    A.make_prefix_lm_loss_fn(None, kd_weight=1.5)
  with pytest.raises(ValueError, match="kd_temperature"):
    A.make_prefix_lm_loss_fn(None, kd_weight=0.5, kd_temperature=0)


# ----------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------


def tiny_cfg(**kw):
  base = {
    "vocab_size": V_TEXT,
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "d_ff": 64,
    "max_seq_len": 64,
  }
  return ModelConfig(**{**base, **kw})


GEMMA2 = {
  "activation": "gelu_tanh",
  "norm_plus_one": True,
  "post_norms": True,
  "attn_softcap": 50.0,
  "final_softcap": 30.0,
  "embed_scale": True,
  "query_pre_attn_scalar": 8.0,
}


fwd = jax.jit(forward, static_argnums=2, static_argnames="return_hidden")
enc_fwd = jax.jit(encdec.forward, static_argnums=3)
encode = jax.jit(encdec.encode, static_argnums=2, static_argnames="return_hidden")


def padded(rows, length=32, pad=0):
  """Token lists right-padded into one int32 [B, length] array."""
  out = np.full((len(rows), length), pad, np.int32)
  for b, r in enumerate(rows):
    out[b, : len(r)] = r
  return out


def arith_like_batch(rng, B=3, start_id=1):
  """Rows of BOS + prompt (encoder) and a continuation + EOS (decoder)."""
  ex = []
  for _ in range(B):
    p = [1] + rng.integers(3, V_TEXT, int(rng.integers(3, 9))).tolist()
    t = rng.integers(3, V_TEXT, int(rng.integers(2, 7))).tolist() + [2]
    ex.append((p, t))
  return ex, A.encdec_batch(ex, start_id=start_id, vocab_size=V_TEXT)


@pytest.mark.parametrize("extra", [{}, GEMMA2], ids=["llama", "gemma2"])
def test_balanced_init_checks_against_the_parent(extra):
  """Right after balanced init: (1) the cross-attention weights are the same
  layer's self-attention weights; (2) with cross-attention's output projection
  zeroed, the decoder's logits are the parent's forward pass on [BOS] + target;
  (3) the encoder's layers are the parent's with an all-True attention mask."""
  cfg = tiny_cfg(**extra)
  parent = init_params(cfg, jax.random.key(0))
  ecfg, p = A.balanced_init(cfg, parent, decoder_start_id=1)
  for lp, cp in zip(parent.layers, p.cross):
    for a, b in ((lp.wq, cp.wq), (lp.wk, cp.wk), (lp.wv, cp.wv), (lp.wo, cp.wo)):
      np.testing.assert_array_equal(a, b)
      assert a is not b  # copied: a train step donates its parameters
  ex, batch = arith_like_batch(np.random.default_rng(0))
  silent = dataclasses.replace(
    p, cross=tuple(dataclasses.replace(c, wo=jnp.zeros_like(c.wo)) for c in p.cross)
  )
  logits, _ = enc_fwd(
    silent,
    batch["enc_tokens"],
    batch["dec_inputs"],
    ecfg,
    enc_lengths_B=batch["enc_lengths"],
  )
  # the parent on each row's [BOS] + target (right-padded: causal, so the padding
  # changes nothing before it)
  want, _, _ = fwd(parent, jnp.asarray(padded([[1] + t[:-1] for _, t in ex])), cfg)
  for b, (_, t) in enumerate(ex):
    np.testing.assert_allclose(
      logits[b, : len(t)], want[b, : len(t)], rtol=1e-5, atol=1e-5
    )
  # the encoder = the parent with bidirectional attention, layer by layer
  toks = jnp.asarray([ex[0][0]])
  E = toks.shape[1]
  _, h_enc = encode(p, toks, ecfg, return_hidden=True)
  full = jnp.ones((1, E, E), bool)
  _, _, h_par = fwd(parent, toks, cfg, attn_mask_BxTxT=full, return_hidden=True)
  for a, b in zip(h_enc, h_par):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_unbalanced_init_and_its_errors():
  big = tiny_cfg(d_model=48, n_layers=3, n_heads=6, n_kv_heads=3)
  small = tiny_cfg()
  pb, ps = init_params(big, jax.random.key(1)), init_params(small, jax.random.key(2))
  _ecfg, p = A.unbalanced_init(big, pb, small, ps, jax.random.key(3), 1)
  assert p.cross[0].wk.shape == (48, small.n_kv_heads, small.head_dim)
  np.testing.assert_array_equal(p.encoder.layers[2].w_up, pb.layers[2].w_up)
  np.testing.assert_array_equal(p.decoder.embed, ps.embed)
  with pytest.raises(ValueError, match="vocab_size"):
    A.unbalanced_init(
      big.replace(vocab_size=30),
      init_params(big.replace(vocab_size=30), jax.random.key(1)),
      small,
      ps,
      jax.random.key(3),
      1,
    )
  with pytest.raises(ValueError, match="cross_n_kv_heads"):
    A.unbalanced_init(big, pb, small, ps, jax.random.key(3), 1, cross_n_kv_heads=3)


def test_extend_vocab_keeps_the_old_rows():
  cfg = tiny_cfg(tie_embeddings=False)
  p = init_params(cfg, jax.random.key(0))
  cfg2, p2 = A.extend_vocab(cfg, p, 5, jax.random.key(1))
  assert cfg2.vocab_size == V_TEXT + 5 and p2.embed.shape == (V_TEXT + 5, 32)
  assert p2.lm_head.shape == (32, V_TEXT + 5)
  np.testing.assert_array_equal(p2.embed[:V_TEXT], p.embed)
  toks = jnp.asarray([[1, 5, 6, 7]])
  a, _, _ = fwd(p, toks, cfg)
  b, _, _ = fwd(p2, toks, cfg2)
  np.testing.assert_allclose(b[..., :V_TEXT], a, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="n_new"):
    A.extend_vocab(cfg, p, 0, jax.random.key(1))


# ----------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_teacher_logits_equal_per_row_parent_runs():
  cfg = tiny_cfg()
  parent = init_params(cfg, jax.random.key(0))
  ex, batch = arith_like_batch(np.random.default_rng(4), B=4)
  toks, idx = A.teacher_sequences(batch)
  got = np.asarray(A.make_teacher_fn(cfg)(parent, jnp.asarray(toks), jnp.asarray(idx)))
  full, _, _ = fwd(parent, jnp.asarray(padded([x + t for x, t in ex])), cfg)
  for b, (x, t) in enumerate(ex):
    # logits at the last input token and the targets but the last predict t
    want = np.asarray(full[b, len(x) - 1 : len(x) - 1 + len(t)])
    np.testing.assert_allclose(got[b, : len(t)], want, rtol=1e-5, atol=1e-5)
  # a leading mode token is dropped from the teacher's view
  ids = A.reserved_ids(V_TEXT, 2, text_vocab=18)
  ex2 = [([ids.modes["S"]] + x, t) for x, t in ex]
  b2 = A.encdec_batch(ex2, start_id=1, vocab_size=V_TEXT)
  toks2, idx2 = A.teacher_sequences(b2, mode_ids=ids.modes.values())
  np.testing.assert_array_equal(toks2, toks)
  np.testing.assert_array_equal(idx2, idx)


@pytest.mark.parametrize("w, temp", [(0.0, 1.0), (0.5, 1.0), (1.0, 2.0)])
def test_prefix_lm_kd_loss_against_numpy(w, temp):
  cfg = tiny_cfg()
  parent = init_params(cfg, jax.random.key(0))
  ecfg, p = A.balanced_init(cfg, parent, decoder_start_id=1)
  _, batch = arith_like_batch(np.random.default_rng(5), B=3)
  rng = np.random.default_rng(6)
  batch["teacher_logits"] = rng.normal(size=batch["targets"].shape + (V_TEXT,)) * 3
  loss, n, aux = A.make_prefix_lm_loss_fn(ecfg, w, temp)(p, batch, None)
  logits, _ = encdec.forward(
    p,
    batch["enc_tokens"],
    batch["dec_inputs"],
    ecfg,
    enc_lengths_B=batch["enc_lengths"],
  )
  m = batch["loss_mask"] > 0
  lp = np_log_softmax(np.asarray(logits))
  nll = -np.take_along_axis(lp, batch["targets"][..., None], -1)[..., 0][m].sum()
  s = np_log_softmax(np.asarray(logits) / temp)[m]
  t = np_log_softmax(batch["teacher_logits"] / temp)[m]
  kl = (np.exp(t) * (t - s)).sum() * temp**2
  assert float(n) == m.sum()
  np.testing.assert_allclose(float(aux["nll"]), nll, rtol=1e-5)
  np.testing.assert_allclose(
    float(loss), (1 - w) * nll + w * (kl if w else 0), rtol=1e-5
  )
  if w:
    np.testing.assert_allclose(float(aux["kd"]), kl, rtol=1e-4)


def test_kd_is_zero_against_itself_and_needs_teacher_logits():
  x = jax.random.normal(jax.random.key(0), (2, 3, 7))
  assert float(A.kd_terms(x, x, jnp.ones((2, 3)))) == pytest.approx(0.0, abs=1e-5)
  cfg = tiny_cfg()
  ecfg, p = A.balanced_init(cfg, init_params(cfg, jax.random.key(0)), 1)
  _, batch = arith_like_batch(np.random.default_rng(0))
  with pytest.raises(ValueError, match="teacher_logits"):
    A.make_prefix_lm_loss_fn(ecfg, kd_weight=0.5)(p, batch, None)


# ----------------------------------------------------------------------------------
# Warm-up
# ----------------------------------------------------------------------------------


def test_warmup_changes_only_cross_attention_then_everything():
  big = tiny_cfg(d_model=48, n_layers=3, n_heads=6, n_kv_heads=3)
  small = tiny_cfg()
  ecfg, p0 = A.unbalanced_init(
    big,
    init_params(big, jax.random.key(1)),
    small,
    init_params(small, jax.random.key(2)),
    jax.random.key(3),
    1,
  )
  before = jax.tree_util.tree_map(np.asarray, p0)
  opt, _ = train.make_optimizer(1e-2, warmup_steps=0, total_steps=10, weight_decay=0.1)
  loss_fn = A.make_prefix_lm_loss_fn(ecfg)
  rng = np.random.default_rng(7)
  batches = [arith_like_batch(rng, B=4)[1] for _ in range(3)]
  warm = A.cross_only(opt)
  state = train.init_train_state(p0, warm, jax.random.key(0))
  step = train.make_train_step(loss_fn, warm)
  for b in batches:
    state, _ = step(state, b)
  after = jax.tree_util.tree_map(np.asarray, state.params)
  for part in ("encoder", "decoder"):
    leaves_b = jax.tree_util.tree_leaves(getattr(before, part))
    leaves_a = jax.tree_util.tree_leaves(getattr(after, part))
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_b, leaves_a):
      np.testing.assert_array_equal(x, y)  # bit-identical
  for c_b, c_a in zip(before.cross, after.cross):
    for f in ("norm", "wq", "wk", "wv", "wo"):
      assert not np.array_equal(getattr(c_b, f), getattr(c_a, f)), f
  # then all parameters
  state = train.init_train_state(state.params, opt, jax.random.key(1))
  full = train.make_train_step(loss_fn, opt)
  for b in batches[:2]:  # the schedule's first step has learning rate 0
    state, _ = full(state, b)
  enc_a = jax.tree_util.tree_leaves(after.encoder)
  enc_c = jax.tree_util.tree_leaves(
    jax.tree_util.tree_map(np.asarray, state.params.encoder)
  )
  assert all(not np.array_equal(x, y) for x, y in zip(enc_a, enc_c) if x.ndim >= 2)


def test_cross_labels_rejects_decoder_only_params():
  cfg = tiny_cfg()
  with pytest.raises(ValueError, match="EncDecParams"):
    A.cross_labels(init_params(cfg, jax.random.key(0)))


# ----------------------------------------------------------------------------------
# Argument types: ints are ints (no str / float / bool / None coercion)
# ----------------------------------------------------------------------------------

MODES40 = {"R": 37, "S": 38, "X": 39}


@pytest.mark.parametrize("sentinels", ["35", (35.7,), None, (True,), 35, [[35]]])
def test_ul2_ids_refuse_non_int_sentinels(sentinels):
  with pytest.raises(ValueError, match="UL2Ids.sentinels"):
    A.UL2Ids(sentinels, MODES40, 40)


@pytest.mark.parametrize("bad", ["37", 37.9, True, None])
def test_ul2_ids_refuse_non_int_modes(bad):
  with pytest.raises(ValueError, match="UL2Ids.modes"):
    A.UL2Ids((35,), {**MODES40, "R": bad}, 40)


def test_ul2_ids_accept_numpy_integers():
  ids = A.UL2Ids(np.array([35, 36]), {**MODES40, "R": np.int64(37)}, np.int32(40))
  assert ids.sentinels == (35, 36) and ids.modes == MODES40
  assert all(type(i) is int for i in (*ids.sentinels, *ids.modes.values()))


@pytest.mark.parametrize(
  "args, kw, match",
  [
    (([1, 2, 3], 1), {"mode_id": -7}, "mode_id"),
    (([1, 2, 3], 1), {"mode_id": 3.7}, "mode_id"),
    (([1, 2, 3], 1), {"mode_id": "S"}, "mode_id"),
    (([1, 2, 3], True), {}, "split must be an int"),
    (([1, 2, 3], 1.0), {}, "split must be an int"),
    (([], 1), {}, "tokens must hold >= 2 ids"),
    (([5], 1), {}, "tokens must hold >= 2 ids"),
  ],
)
def test_prefix_lm_split_rejected(args, kw, match):
  with pytest.raises(ValueError, match=match):
    A.prefix_lm_split(*args, **kw)


def test_prefix_lm_split_accepts_numpy_ints():
  x, t = A.prefix_lm_split([1, 2, 3], np.int64(2), mode_id=np.int32(38))
  assert x.tolist() == [38, 1, 2] and t.tolist() == [3]


@pytest.mark.parametrize("field", ["enc_len", "dec_len"])
@pytest.mark.parametrize("bad", [0, -1, 3.5, True, "8"])
def test_encdec_batch_rejects_bad_lengths(field, bad):
  with pytest.raises(ValueError, match=field):
    A.encdec_batch([([3, 4], [5])], 1, 40, **{field: bad})


def test_encdec_batch_none_is_bucketed_and_numpy_int_accepted():
  b = A.encdec_batch([([3, 4], [5])], 1, 40, enc_len=None, dec_len=np.int64(4))
  assert b["enc_tokens"].shape == (1, train.bucket_length(2))
  assert b["targets"].shape == (1, 4)


def test_denoiser_accepts_numpy_numbers_refuses_bools():
  d = A.Denoiser("R", rate=np.float32(0.1), mean_span=np.int64(3))
  assert math.isclose(d.rate, 0.1, rel_tol=1e-6)
  with pytest.raises(ValueError, match="Denoiser.rate"):
    A.Denoiser("R", rate=True)
  with pytest.raises(ValueError, match="kd_weight"):
    A.make_prefix_lm_loss_fn(None, kd_weight=True)
  A.make_prefix_lm_loss_fn(None, kd_weight=np.float32(0.5))


def test_reserved_ids_refuse_bool_accept_numpy_int():
  with pytest.raises(ValueError, match="n_sentinels"):
    A.reserved_ids(40, True)
  assert len(A.reserved_ids(40, np.int64(2)).sentinels) == 2


@pytest.mark.parametrize("rng", [0, None, np.random.RandomState(0)])
def test_ul2_example_rejects_non_generator_rng(rng):
  with pytest.raises(ValueError, match="rng must be a numpy Generator"):
    A.ul2_example(rng, [3, 4, 5, 6], A.Denoiser("R"), ids40())
