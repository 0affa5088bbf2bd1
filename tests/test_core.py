"""Transformer core: cache consistency, causality, reorder, ragged extension,
tree scoring, generation and input validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import (
  BigramLM,
  ModelConfig,
  RopeScaling,
  Transformer,
  forward,
  generate,
  init_cache,
  init_params,
  make_sampling,
  reorder,
)
from jaxllm.cache import commit_path
from jaxllm.generate import TRACE_COUNT

BASE = dict(
  vocab_size=97,
  d_model=48,
  n_layers=3,
  n_heads=4,
  n_kv_heads=2,
  d_ff=96,
  max_seq_len=128,
)
CONFIGS = {
  "gqa_tied": dict(),
  "mqa_untied": dict(n_kv_heads=1, tie_embeddings=False),
  "mha_qkv_bias": dict(n_kv_heads=4, qkv_bias=True),
  "sliding_softcap": dict(
    sliding_window=4, sliding_window_pattern=2, attn_softcap=5.0, final_softcap=3.0
  ),
  "gemma_like": dict(
    activation="gelu_tanh",
    norm_plus_one=True,
    post_norms=True,
    embed_scale=True,
    query_pre_attn_scalar=16.0,
    head_dim=16,
    sliding_window=3,
  ),
  "llama3_rope": dict(
    rope_scaling=RopeScaling(factor=8.0, original_max_position=16), rope_theta=500000.0
  ),
}


def make(name, seed=0):
  cfg = ModelConfig(**{**BASE, **CONFIGS[name]})
  params = init_params(cfg, jax.random.key(seed))
  # Non-trivial norm weights and biases, so every parameter matters.
  params = jax.tree_util.tree_map(
    lambda x: (
      x + 0.1 * jax.random.normal(jax.random.key(seed + 1), x.shape)
      if x.ndim <= 2 and x.shape[0] != cfg.vocab_size
      else x
    ),
    params,
  )
  return cfg, params


def toks(shape, seed=1, vocab=97):
  return jax.random.randint(jax.random.key(seed), shape, 0, vocab)


_FWD = jax.jit(forward, static_argnames=("cfg",))


def ref_logits(params, cfg, seq, pad_to=32):
  """Uncached causal forward over one sequence (padded to one shape, so a
  single compilation serves every length): logits [len(seq), V]."""
  seq = [int(t) for t in seq]
  arr = jnp.array([seq + [0] * (pad_to - len(seq))])
  return _FWD(params, arr, cfg=cfg)[0][0, : len(seq)]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_decode_matches_full_forward(name):
  cfg, params = make(name)
  x = toks((2, 13))
  full, _, _ = forward(params, x, cfg)
  cache = init_cache(cfg, 2, 20)
  step = jax.jit(lambda p, t, c: forward(p, t, cfg, cache=c)[:2])
  l0, cache = step(params, x[:, :6], cache)
  pieces = [l0]
  for t in range(6, 10):  # single-token decode
    l, cache = step(params, x[:, t : t + 1], cache)
    pieces.append(l)
  l, cache = step(params, x[:, 10:13], cache)  # multi-token extension
  pieces.append(l)
  np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, atol=2e-5, rtol=2e-5)
  np.testing.assert_array_equal(cache.lengths, [13, 13])


@pytest.mark.parametrize("name", ["gqa_tied", "sliding_softcap"])
def test_causality(name):
  cfg, params = make(name)
  x = toks((1, 10))
  y = x.at[0, 7].set((x[0, 7] + 1) % cfg.vocab_size)
  a, _, _ = forward(params, x, cfg)
  b, _, _ = forward(params, y, cfg)
  np.testing.assert_array_equal(a[:, :7], b[:, :7])
  assert np.abs(a[:, 7:] - b[:, 7:]).max() > 1e-4


def test_sliding_window_limits_context():
  """With window w, a token w or more positions back has no influence."""
  cfg = ModelConfig(**{**BASE, "sliding_window": 3, "n_layers": 1})
  params = init_params(cfg, jax.random.key(0))
  x = toks((1, 8))
  y = x.at[0, 2].set((x[0, 2] + 5) % cfg.vocab_size)
  a, _, _ = forward(params, x, cfg)
  b, _, _ = forward(params, y, cfg)
  np.testing.assert_allclose(a[:, 5:], b[:, 5:], atol=1e-6)  # 5 - 2 >= 3
  assert np.abs(a[:, 2:5] - b[:, 2:5]).max() > 1e-4


def test_reorder_then_decode_equals_scratch():
  cfg, params = make("gqa_tied")
  x = toks((3, 9))
  cache = init_cache(cfg, 3, 16)
  _, cache, _ = forward(params, x[:, :8], cfg, cache=cache)
  idx = jnp.array([2, 0, 0, 1, 2])
  cache = reorder(cache, idx)
  nxt = toks((5, 1), seed=7)
  got, _, _ = forward(params, nxt, cfg, cache=cache)
  ref, _, _ = forward(params, jnp.concatenate([x[idx, :8], nxt], 1), cfg)
  np.testing.assert_allclose(got[:, 0], ref[:, -1], atol=2e-5, rtol=2e-5)


def test_ragged_extend_matches_per_row():
  cfg, params = make("sliding_softcap")
  model = Transformer(cfg)
  x = toks((2, 12))
  state, _ = model.prefill(params, x[:, :4], jnp.array([4, 3]), 24)
  step = toks((2, 5), seed=3)
  valid = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  state, logits = model.extend(params, state, step, valid)
  np.testing.assert_array_equal(state.lengths, [7, 8])
  seq0 = list(x[0, :4]) + list(step[0, :3])
  seq1 = list(x[1, :3]) + list(step[1])
  r0, r1 = ref_logits(params, cfg, seq0), ref_logits(params, cfg, seq1)
  np.testing.assert_allclose(logits[0, :3], r0[4:], atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(logits[1], r1[3:], atol=2e-5, rtol=2e-5)
  # The next step continues from the right place in both rows.
  state, l2 = model.extend(params, state, jnp.array([[5], [6]]))
  s0 = ref_logits(params, cfg, seq0 + [5])
  s1 = ref_logits(params, cfg, seq1 + [6])
  np.testing.assert_allclose(
    l2[:, 0], jnp.stack([s0[-1], s1[-1]]), atol=2e-5, rtol=2e-5
  )


@pytest.mark.parametrize("name", ["gqa_tied", "sliding_softcap"])
def test_tree_scoring_matches_per_path_forward_and_commit(name):
  cfg, params = make(name)
  model = Transformer(cfg)
  prompt = toks((1, 5))
  #        0   1   2   3   4   5
  parent = jnp.array([-1, -1, 0, 0, 1, 3])
  tree = toks((1, 6), seed=9)
  state, _ = model.prefill(params, prompt, jnp.array([5]), 16)
  state, logits = model.score_tree(params, state, tree, parent)
  np.testing.assert_array_equal(state.lengths, [5])  # nothing committed
  paths = {0: [0], 1: [1], 2: [0, 2], 3: [0, 3], 4: [1, 4], 5: [0, 3, 5]}
  for node, path in paths.items():
    ref = ref_logits(params, cfg, list(prompt[0]) + list(tree[0, jnp.array(path)]))
    np.testing.assert_allclose(logits[0, node], ref[-1], atol=2e-5, rtol=2e-5)
  # Commit path 0 -> 3 -> 5 and check the next token's logits.
  state = model.commit(state, jnp.array([[0, 3, 5]]), jnp.array([3]))
  np.testing.assert_array_equal(state.lengths, [8])
  state, nxt = model.extend(params, state, jnp.array([[11]]))
  ref = ref_logits(
    params, cfg, list(prompt[0]) + list(tree[0, jnp.array([0, 3, 5])]) + [11]
  )
  np.testing.assert_allclose(nxt[0, 0], ref[-1], atol=2e-5, rtol=2e-5)


def test_hidden_states_and_layer_subset():
  cfg, params = make("gqa_tied")
  x = toks((2, 6))
  logits, _, hidden = forward(params, x, cfg, return_hidden=True)
  assert len(hidden) == cfg.n_layers and hidden[0].shape == (2, 6, cfg.d_model)
  from jaxllm.model import lm_head

  np.testing.assert_allclose(lm_head(params, hidden[-1], cfg), logits, atol=1e-5)
  # Early exit after layer 1 == running only layers (0, 1).
  sub, _, _ = forward(params, x, cfg, layers=(0, 1))
  np.testing.assert_allclose(sub, lm_head(params, hidden[1], cfg), atol=1e-5)


# ----------------------------- generation --------------------------------


def test_batch_of_ragged_prompts_matches_single_greedy():
  cfg, params = make("sliding_softcap")
  model = Transformer(cfg)
  prompts = [[3, 5, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [42]]
  greedy = make_sampling(0.0)
  batch = generate(model, params, prompts, jax.random.key(0), 12, greedy)
  for i, p in enumerate(prompts):
    one = generate(model, params, [p], jax.random.key(0), 12, greedy)
    np.testing.assert_array_equal(batch.tokens[i], one.tokens[0])
  # Reference: argmax by full forward passes.
  seq = list(prompts[1])
  for _ in range(12):
    seq.append(int(jnp.argmax(ref_logits(params, cfg, seq)[-1])))
  np.testing.assert_array_equal(batch.tokens[1], seq[9:])


def test_stop_tokens_budgets_and_logprobs():
  cfg, params = make("gqa_tied")
  model = Transformer(cfg)
  out = generate(
    model,
    params,
    [[1, 2, 3]] * 4,
    jax.random.key(3),
    16,
    make_sampling(2.0),
    max_new_B=jnp.array([16, 5, 0, 16]),
    stop_tokens=[7],
    pad_id=0,
  )
  toks_, lens = np.asarray(out.tokens), np.asarray(out.lengths)
  assert lens[1] <= 5 and lens[2] == 0
  for i in range(4):
    gen = toks_[i, : lens[i]]
    assert 7 not in gen[:-1]  # nothing after a stop token
    assert (toks_[i, lens[i] :] == 0).all()
    if lens[i] < {0: 16, 1: 5, 2: 0, 3: 16}[i]:
      assert gen[-1] == 7
  # Log-probs equal the model's log-softmax at each generated token.
  seq = [1, 2, 3] + list(toks_[0, : lens[0]])
  lg = ref_logits(params, cfg, seq)
  ref = jax.nn.log_softmax(lg[2:-1])[jnp.arange(lens[0]), toks_[0, : lens[0]]]
  np.testing.assert_allclose(out.logprobs[0, : lens[0]], ref, atol=1e-4)


def test_keys_determinism_and_bucket_reuse():
  cfg, params = make("gqa_tied")
  model = Transformer(cfg)
  s = make_sampling(1.0)
  a = generate(model, params, [[1, 2, 3]], jax.random.key(0), 20, s)
  b = generate(model, params, [[1, 2, 3]], jax.random.key(0), 20, s)
  c = generate(model, params, [[1, 2, 3]], jax.random.key(1), 20, s)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert (np.asarray(a.tokens) != np.asarray(c.tokens)).any()
  before = TRACE_COUNT["generate"]
  generate(model, params, [[1, 2, 3, 4, 5]], jax.random.key(0), 20, s)
  generate(
    model, params, [[1, 2, 3, 4, 5]], jax.random.key(0), 20, make_sampling(0.5)
  )  # new temperature value: no retrace either
  assert TRACE_COUNT["generate"] == before


def test_bigram_generation_matches_exact_distribution():
  """Sequences of 3 tokens from the toy model: chi-square against the exact
  product of bigram probabilities."""
  from scipy import stats

  V = 4
  table = jax.random.normal(jax.random.key(5), (V, V)) * 1.5
  model = BigramLM(V)
  n = 40000
  out = generate(model, table, [[2]] * n, jax.random.key(11), 3, make_sampling(1.0))
  seqs = np.asarray(out.tokens)
  codes = seqs[:, 0] * V * V + seqs[:, 1] * V + seqs[:, 2]
  counts = np.bincount(codes, minlength=V**3)
  p = np.asarray(jax.nn.softmax(table, -1), np.float64)
  exp = np.array(
    [p[2, a] * p[a, b] * p[b, c] for a in range(V) for b in range(V) for c in range(V)]
  )
  exp = exp / exp.sum() * n
  _, pval = stats.chisquare(counts, exp)
  assert pval > 1e-6


# ------------------------------ bad input ---------------------------------


@pytest.mark.parametrize(
  "kw,field",
  [
    (dict(d_model=50, n_heads=4), "n_heads"),
    (dict(n_kv_heads=3), "n_kv_heads"),
    (dict(activation="relu6"), "activation"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(sliding_window=-2), "sliding_window"),
    (dict(layer_windows=(0, 4)), "layer_windows"),
    (dict(dtype="float8"), "dtype"),
  ],
)
def test_bad_config_names_field(kw, field):
  with pytest.raises(ValueError, match=field):
    ModelConfig(**{**BASE, **kw})


@pytest.mark.parametrize(
  "kw,field",
  [
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(min_p=1.0), "min_p"),
  ],
)
def test_bad_sampling_names_field(kw, field):
  with pytest.raises(ValueError, match=field):
    make_sampling(**kw)


def test_prompt_longer_than_cache():
  cfg, params = make("gqa_tied")
  model = Transformer(cfg)
  with pytest.raises(ValueError, match="cache_size"):
    generate(model, params, [list(range(30))], jax.random.key(0), 8, cache_size=32)
  with pytest.raises(ValueError, match="max_seq_len"):
    generate(model, params, [[i % 90 for i in range(100)]], jax.random.key(0), 64)
  with pytest.raises(ValueError, match="token ids"):
    generate(model, params, [[1, 500]], jax.random.key(0), 4)
  with pytest.raises(ValueError, match="cache"):
    model.prefill(params, jnp.zeros((1, 40), jnp.int32), jnp.array([40]), 32)


def test_commit_path_moves_entries():
  cfg, _ = make("gqa_tied")
  cache = init_cache(cfg, 1, 10)
  marks = jnp.arange(10, dtype=jnp.float32)
  cache = cache.__class__(
    k=tuple(jnp.broadcast_to(marks[None, None, None, :], c.shape) for c in cache.k),
    v=tuple(jnp.broadcast_to(marks[None, None, :, None], c.shape) for c in cache.v),
    lengths=jnp.array([3]),
  )
  out = commit_path(cache, jnp.array([[1, 4, 0]]), jnp.array([2]))
  np.testing.assert_array_equal(out.k[0][0, 0, 0, :6], [0, 1, 2, 4, 7, 5])
  np.testing.assert_array_equal(out.v[0][0, 0, :6, 0], [0, 1, 2, 4, 7, 5])
  np.testing.assert_array_equal(out.lengths, [5])


def test_num_samples_forks_prefilled_prompt():
  """num_samples=n equals generating from n copies of the prompt (same key
  stream), while the prompt is prefilled once per prompt."""
  cfg, params = make("gqa_tied")
  model = Transformer(cfg)
  s = make_sampling(1.0)
  a = generate(
    model, params, [[1, 2, 3], [4, 5]], jax.random.key(0), 6, s, num_samples=3
  )
  b = generate(model, params, [[1, 2, 3]] * 3 + [[4, 5]] * 3, jax.random.key(0), 6, s)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
  calls = []

  class Counting(Transformer):
    def prefill(self, params, tokens, lengths, cache_size):
      calls.append(tokens.shape)
      return super().prefill(params, tokens, lengths, cache_size)

  generate(
    Counting(cfg), params, [[1, 2, 3], [4, 5]], jax.random.key(0), 6, s, num_samples=4
  )
  assert calls == [(2, 16)]  # one prefill of the 2 prompts (bucket 16)
