"""Exactness tests for speculative (tree) decoding on toy bigram tables.

The contract: the sequence emitted by speculative decoding has exactly the target's
distribution. With a bigram target P[a, b] = p(b | a) the exact distribution of the
first K tokens is prod_i P[x_{i-1}, x_i]: we enumerate all V^K sequences and compare
the empirical counts of many vmapped decodes with a chi-square test at a fixed seed.
Compiled programs are shared between tests (XLA compile time dominates on CPU).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from algorithms import spec_trees as st

ALPHA = 1e-5  # chi-square false-alarm rate (fixed seeds, so results are deterministic)
V, K, START = 4, 3, 0

METHOD_KW = {
  "chain": dict(gamma=3),
  "iid": dict(num_drafts=3, depth=2),
  "rsd_c": dict(branching=(3, 2)),
  "rsd_s": dict(beam_width=3, depth=3),
}
SAMPLES_PER_PAIR = 40_000  # x 4 pairs = 160k draws per method


def _pairs():
  """(target, draft) bigram tables: close, far, draft-zero, target-zero."""
  rng = np.random.default_rng(1234)
  P = rng.dirichlet(np.ones(V), size=V)
  close = 0.85 * P + 0.15 * rng.dirichlet(np.ones(V), size=V)
  # Far: the draft puts its mass where the target puts little.
  far = rng.dirichlet(np.ones(V), size=V) ** 0.3 * (1.0 - P) ** 4
  # Draft zero where target > 0: supports of size 1 or 2 (fewer than 3 children, so
  # Gumbel-Top-3 / SBS yield q = 0 children and exhaust the remaining support).
  dz = rng.dirichlet(np.ones(V), size=V)
  dz[:, 2:] = 0.0
  dz[1] = [0.0, 0.0, 0.0, 1.0]
  # Target zero where draft > 0 (draft full support).
  Pz = rng.dirichlet(np.ones(V), size=V)
  Pz[:, 1] = 0.0
  Pz[3, 0] = 0.0
  pairs = {
    "close": (P, close),
    "far": (P, far),
    "draft_zero": (P, dz),
    "target_zero": (Pz, rng.dirichlet(np.ones(V), size=V)),
  }
  norm = lambda t: (t / t.sum(1, keepdims=True)).astype(np.float32)
  return {k: (norm(p), norm(q)) for k, (p, q) in pairs.items()}


PAIRS = _pairs()


def exact_sequence_probs(P, start, num_tokens):
  """p(x_1..x_K) for all V^K sequences (row-major), by enumeration."""
  P = np.asarray(P, np.float64)
  P = P / P.sum(1, keepdims=True)
  n = P.shape[0]
  out = np.zeros(n**num_tokens)
  for i, seq in enumerate(itertools.product(range(n), repeat=num_tokens)):
    pr, last = 1.0, start
    for t in seq:
      pr, last = pr * P[last, t], t
    out[i] = pr
  return out


def chi2_pvalue(counts, probs, min_expected=5.0):
  """Chi-square goodness of fit; cells with expected count < min_expected are pooled.

  Cells with probability 0 must be empty (asserted by the callers)."""
  counts, probs = np.asarray(counts, np.float64), np.asarray(probs, np.float64)
  expected = probs / probs.sum() * counts.sum()
  small = expected < min_expected
  obs = np.append(counts[~small], counts[small].sum())
  exp = np.append(expected[~small], expected[small].sum())
  keep = exp > 0
  return stats.chisquare(obs[keep], exp[keep]).pvalue


@functools.lru_cache(maxsize=None)
def _decoder(method, kw_items, num_tokens):
  kw = dict(kw_items)
  fn = lambda key, P, Q: st.bigram_generate(key, method, P, Q, START, num_tokens, **kw)
  return jax.jit(jax.vmap(fn, in_axes=(0, None, None)))


@functools.lru_cache(maxsize=None)
def decode_stats(
  method, kw_items, pair, num_samples, seed, num_tokens=K, chunk=100_000
):
  """Histogram over V^K of the first num_tokens emitted tokens, and per-sample ToyDecode
  counters (cached, so exactness and efficiency tests share one decode)."""
  P, Q = PAIRS[pair]
  f = _decoder(method, kw_items, num_tokens)
  counts = np.zeros(V**num_tokens, np.int64)
  outs = []
  for c in range(0, num_samples, chunk):
    n = min(chunk, num_samples - c)
    out = f(
      jax.random.split(jax.random.fold_in(jax.random.key(seed), c), n),
      jnp.asarray(P),
      jnp.asarray(Q),
    )
    toks = np.asarray(out.tokens_K)
    assert toks.min() >= 0 and toks.max() < V
    counts += np.bincount(
      np.ravel_multi_index(toks.T, (V,) * num_tokens), minlength=V**num_tokens
    )
    outs.append(jax.tree.map(np.asarray, out._replace(tokens_K=None)))
  return counts, jax.tree.map(lambda *x: np.concatenate(x), *outs)


def assert_exact(method, kw, pair, num_samples, seed, num_tokens=K):
  counts, _ = decode_stats(
    method, tuple(sorted(kw.items())), pair, num_samples, seed, num_tokens
  )
  probs = exact_sequence_probs(PAIRS[pair][0], START, num_tokens)
  assert counts[probs == 0].sum() == 0, (
    "emitted a sequence the target gives probability 0"
  )
  pval = chi2_pvalue(counts, probs)
  assert pval > ALPHA, f"{method}: chi-square p = {pval:.2e}"


# ----------------------------------------------------------------------------------
# Exactness of every method, four (target, draft) pairs
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("method", list(METHOD_KW))
def test_sequence_distribution_is_exact(method, pair):
  """RSD-S included: under SBS the number of kept children of a node is random (beams
  compete across subtrees from level 2 on), so RRS exactness there is not automatic. It
  holds because a kept sibling's token is independent of whether it survived the beam
  cut, given the earlier siblings (Gumbel / exponential-race memorylessness). This test
  and the slow 1M-sample variant check it rather than assume it."""
  seed = 100 * list(METHOD_KW).index(method) + list(PAIRS).index(pair)
  assert_exact(method, METHOD_KW[method], pair, SAMPLES_PER_PAIR, seed)


@pytest.mark.slow
@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize(
  "method,kw",
  [
    ("chain", dict(gamma=4)),
    ("iid", dict(num_drafts=4, depth=3)),
    ("rsd_c", dict(branching=(4, 2, 2))),
    ("rsd_s", dict(beam_width=2, depth=3)),
    ("rsd_s", dict(beam_width=4, depth=3)),
  ],
)
def test_sequence_distribution_is_exact_many_samples(method, kw, pair):
  assert_exact(method, kw, pair, 1_000_000, seed=11, num_tokens=4)


def _exact_chain_block_efficiency(P, Q, root, gamma):
  """E[tokens per block] = 1 + A(root, gamma), A(a, d) = sum_x min(P, Q)[a, x](1 + A(x, d-1))."""
  P, Q = np.asarray(P, np.float64), np.asarray(Q, np.float64)
  A = np.zeros(P.shape[0])
  for _ in range(gamma):
    A = (np.minimum(P, Q) * (1 + A[None, :])).sum(1)
  return 1 + A[root]


def test_chain_block_efficiency_matches_bigram_closed_form():
  """Tokens emitted by the first block of the chain decode vs the exact expectation."""
  gamma = METHOD_KW["chain"]["gamma"]
  for pair in ("close", "far"):
    _, out = decode_stats(
      "chain",
      tuple(METHOD_KW["chain"].items()),
      pair,
      SAMPLES_PER_PAIR,
      100 * 0 + list(PAIRS).index(pair),
    )
    exact = _exact_chain_block_efficiency(*PAIRS[pair], START, gamma)
    tau = out.first_block_emitted.mean()
    assert abs(tau - exact) < 5 * (gamma / 2) / np.sqrt(SAMPLES_PER_PAIR), (
      pair,
      tau,
      exact,
    )
    assert (out.num_emitted >= K).all() and (out.num_blocks <= K).all()


# ----------------------------------------------------------------------------------
# Building blocks against closed forms / enumeration
# ----------------------------------------------------------------------------------


def _ordered_draw_prob(q, seq):
  """P(the first len(seq) draws without replacement from q are seq, in this order)."""
  pr, left = 1.0, 1.0
  for x in seq:
    pr *= q[x] / left
    left -= q[x]
  return pr


def _check_ordered_draws(draws, q):
  """Chi-square of the ordered k-tuples, and their inclusion probabilities."""
  n, k = draws.shape
  tuples = list(itertools.permutations(range(len(q)), k))
  index = {t: i for i, t in enumerate(tuples)}
  counts = np.bincount([index[tuple(d)] for d in draws.tolist()], minlength=len(tuples))
  probs = np.array([_ordered_draw_prob(np.asarray(q, np.float64), t) for t in tuples])
  assert chi2_pvalue(counts, probs) > ALPHA
  incl = np.array([(draws == x).any(1).mean() for x in range(len(q))])
  incl_exact = np.array([probs[[x in t for t in tuples]].sum() for x in range(len(q))])
  np.testing.assert_allclose(incl, incl_exact, atol=5 * np.sqrt(0.25 / n))


def test_gumbel_top_k_is_sequential_sampling_without_replacement():
  q = np.array([0.45, 0.3, 0.15, 0.07, 0.03], np.float32)
  keys = jax.random.split(jax.random.key(3), 100_000)
  draws = np.asarray(
    jax.jit(jax.vmap(lambda kk: st.gumbel_top_k(kk, jnp.asarray(q), 3)))(keys)
  )
  assert (draws[:, 0] != draws[:, 1]).all() and (draws[:, 2] != draws[:, :2].T).all()
  _check_ordered_draws(draws[:, :2], q)  # the first 2 of top-3 are the top-2 draws
  _check_ordered_draws(draws, q)


def test_gumbel_top_k_puts_zero_mass_tokens_last():
  q = jnp.array([0.0, 0.6, 0.0, 0.4])
  draws = np.asarray(
    jax.vmap(lambda kk: st.gumbel_top_k(kk, q, 4))(
      jax.random.split(jax.random.key(0), 2000)
    )
  )
  assert set(map(tuple, draws[:, :2].tolist())) == {(1, 3), (3, 1)}
  assert (np.sort(draws[:, 2:], 1) == [0, 2]).all()


@functools.lru_cache(maxsize=None)
def _chain_program(verify_with_tree, gamma):
  """vmapped (keys, p, q) -> accepted counts of single chains with p, q at every position."""

  def one(key, p, q):
    draft_fn, state = st.node_table_draft_fn(
      jnp.broadcast_to(q, (gamma + 1, q.shape[0]))
    )
    k1, k2 = jax.random.split(key)
    tree, state = st.build_iid_tree(k1, jnp.int32(0), q, draft_fn, state, 1, gamma)
    p_MxV = jnp.broadcast_to(p, (gamma + 1, p.shape[0]))
    if verify_with_tree:
      return st.verify_tree(k2, tree, p_MxV).num_accepted
    toks, q_GxV = st.chain_from_tree(tree)
    return st.speculative_sample_chain(k2, toks, q_GxV, p_MxV).num_accepted

  return jax.jit(jax.vmap(one, in_axes=(0, None, None)))


def test_node_table_draft_fn_feeds_rows_in_bfs_order():
  q_MxV = jnp.arange(7 * 3, dtype=jnp.float32).reshape(7, 3) + 1.0
  draft_fn, state = st.node_table_draft_fn(q_MxV)
  state, q1 = draft_fn(state, jnp.zeros((3,), jnp.int32), jnp.zeros((3,), jnp.int32))
  state, q2 = draft_fn(state, jnp.zeros((2,), jnp.int32), jnp.ones((2,), jnp.int32))
  np.testing.assert_array_equal(q1, q_MxV[1:4])
  np.testing.assert_array_equal(q2, q_MxV[4:6])
  assert int(state) == 6


@pytest.mark.parametrize(
  "verify_with_tree", [False, True], ids=["chain", "rrs_on_chain"]
)
def test_chain_acceptance_matches_closed_form(verify_with_tree):
  """alpha = sum_x min(p, q); P(n = i) = alpha^i (1 - alpha) for i < gamma, alpha^gamma
  for i = gamma. Also p == q (zero-residual guard): everything is accepted, no NaN."""
  p = np.array([0.5, 0.2, 0.2, 0.1], np.float32)
  q = np.array([0.25, 0.4, 0.05, 0.3], np.float32)
  gamma, n = 4, 60_000
  f = _chain_program(verify_with_tree, gamma)
  keys = jax.random.split(jax.random.key(5), n)
  acc = np.asarray(f(keys, p, q))
  alpha = np.minimum(p, q).sum()
  probs = np.array([alpha**i * (1 - alpha) for i in range(gamma)] + [alpha**gamma])
  assert chi2_pvalue(np.bincount(acc, minlength=gamma + 1), probs) > ALPHA
  rate = (acc >= 1).mean()  # first-position acceptance rate alone (binomial, 5 sigma)
  assert abs(rate - alpha) < 5 * np.sqrt(alpha * (1 - alpha) / n)
  assert (np.asarray(f(keys, p, p)) == gamma).all()


# ----------------------------------------------------------------------------------
# Tree structure and guards
# ----------------------------------------------------------------------------------


def test_static_tree_topologies():
  _, Q = PAIRS["close"]
  fn = st.table_draft_fn(jnp.asarray(Q))
  q0 = jnp.asarray(Q[START])
  build = jax.jit(
    lambda key: (
      st.build_iid_tree(key, jnp.int32(START), q0, fn, None, 3, 2)[0],
      st.build_rsdc_tree(key, jnp.int32(START), q0, fn, None, (3, 2))[0],
      st.children_table(jnp.array([-1, 0, 0, 0, 1, 1, 2, 2, 3, 3]), 3),
    )
  )
  iid, rc, children = build(jax.random.key(0))
  np.testing.assert_array_equal(iid.parent_M, [-1, 0, 0, 0, 1, 2, 3])
  assert not iid.without_replacement
  assert rc.without_replacement
  np.testing.assert_array_equal(rc.parent_M, [-1, 0, 0, 0, 1, 1, 2, 2, 3, 3])
  np.testing.assert_array_equal(rc.depth_M, [0, 1, 1, 1, 2, 2, 2, 2, 2, 2])
  # q rows: draft distribution after each node (zeros on the deepest level).
  np.testing.assert_allclose(rc.q_MxV[:4], Q[np.asarray(rc.token_M[:4])])
  assert float(jnp.abs(rc.q_MxV[4:]).sum()) == 0.0
  np.testing.assert_array_equal(
    children, [[1, 2, 3], [4, 5, -1], [6, 7, -1], [8, 9, -1]] + [[-1, -1, -1]] * 6
  )


@functools.lru_cache(maxsize=None)
def _sbs_samples(n=40_000, W=3, L=3, pair="far"):
  """n RSD-S trees (bigram draft) and their verification, as numpy pytrees."""
  P, Q = (jnp.asarray(t) for t in PAIRS[pair])
  fn = st.table_draft_fn(Q)

  def one(key):
    k1, k2 = jax.random.split(key)
    tree, _ = st.build_rsds_tree(k1, jnp.int32(START), Q[START], fn, None, W, L)
    return tree, st.verify_tree(k2, tree, P[tree.token_M])

  out = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(4), n))
  return jax.tree.map(np.asarray, out)


def test_sbs_tree_structure():
  """W nodes per level, grouped by parent in BFS order, distinct (parent, token) pairs,
  and a parent's children in decreasing perturbed score order (= draw order)."""
  tree, _ = _sbs_samples()
  W = 3
  for b in range(200):
    par, tok = tree.parent_M[b], tree.token_M[b]
    assert par[0] == -1 and (par[1 : 1 + W] == 0).all()
    for lvl in range(2, 4):
      sl = slice(1 + W * (lvl - 1), 1 + W * lvl)
      assert (np.diff(par[sl]) >= 0).all()
      assert (par[sl] >= 1 + W * (lvl - 2)).all() and (
        par[sl] < 1 + W * (lvl - 1)
      ).all()
      assert len(set(zip(par[sl], tok[sl]))) == W


def test_sbs_first_level_is_gumbel_top_k():
  """The root's W children are the first W draws without replacement from q_root."""
  tree, _ = _sbs_samples()
  _check_ordered_draws(tree.token_M[:, 1:4], PAIRS["far"][1][START])


def test_truncated_gumbel_matches_direct_formula():
  """G' = -log(exp(-G) - exp(-Z) + exp(-G~)); the sibling max becomes G."""
  G = np.array([0.0, -1.3])
  Gt = np.array([[0.2, -0.7, -3.0, -np.inf], [0.5, 1.0, -2.0, -0.1]])
  trunc = jax.jit(st._truncated_gumbel)
  Gp = np.asarray(trunc(jnp.asarray(G), jnp.asarray(Gt)))
  with np.errstate(divide="ignore"):
    ref = -np.log(np.exp(-G[:, None]) - np.exp(-Gt.max(1, keepdims=True)) + np.exp(-Gt))
  np.testing.assert_allclose(Gp, ref, rtol=1e-5)
  np.testing.assert_allclose(Gp.max(1), G, atol=1e-6)
  invalid = np.asarray(trunc(jnp.array([-jnp.inf, -jnp.inf]), jnp.full((2, 4), 0.1)))
  assert np.isneginf(invalid).all()


def test_verify_outputs_are_consistent():
  """The path walks down the tree from the root, tokens_Dp1 = path tokens + extra token."""
  tree, res = _sbs_samples()
  for b in range(2000):
    n = int(res.num_accepted[b])
    path = res.path_D[b]
    assert (path[n:] == -1).all() and (path[:n] >= 0).all()
    prev = 0
    for d in range(n):
      assert tree.parent_M[b, path[d]] == prev
      prev = path[d]
    emitted = res.tokens_Dp1[b]
    np.testing.assert_array_equal(emitted[:n], tree.token_M[b, path[:n]])
    assert emitted[n] == res.extra_token[b] and (emitted[n + 1 :] == -1).all()
    assert res.num_emitted[b] == n + 1


def test_verify_skips_zero_q_children_and_never_accepts_zero_p():
  """Draft support {1}; branching 3 gives two q = 0 children, which are skipped; the
  target gives token 1 probability 0, so the drafted 1 is always rejected and the
  extra token comes from the residual (= p, since p and q are disjoint)."""
  q = jnp.array([0.0, 1.0, 0.0, 0.0])
  p = jnp.array([0.5, 0.0, 0.25, 0.25])
  fn = lambda s, tok, par: (s, jnp.broadcast_to(q, (tok.shape[0], 4)))

  def one(key):
    k1, k2 = jax.random.split(key)
    tree, _ = st.build_rsdc_tree(k1, jnp.int32(0), q, fn, None, (3,))
    return st.verify_tree(k2, tree, jnp.broadcast_to(p, (4, 4)))

  res = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), 20_000))
  assert (np.asarray(res.num_accepted) == 0).all()
  assert (np.asarray(res.path_D) == -1).all()
  y = np.asarray(res.extra_token)
  assert chi2_pvalue(np.bincount(y, minlength=4), np.asarray(p)) > ALPHA
  np.testing.assert_array_equal(np.asarray(res.tokens_Dp1)[:, 1], -1)


def test_bad_inputs_raise():
  q = jnp.ones((4,)) / 4
  fn = lambda s, tok, par: (s, jnp.broadcast_to(q, (tok.shape[0], 4)))
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="vocab"):
    st.build_rsdc_tree(key, 0, q, fn, None, (5,))
  with pytest.raises(ValueError, match="branching"):
    st.build_rsdc_tree(key, 0, q, fn, None, ())
  with pytest.raises(ValueError, match="vocab"):
    st.build_rsds_tree(key, 0, q, fn, None, 5, 2)
  with pytest.raises(ValueError, match="num_drafts"):
    st.build_iid_tree(key, 0, q, fn, None, 0, 2)
  with pytest.raises(ValueError, match="q_root_V"):
    st.build_iid_tree(key, 0, q[None], fn, None, 2, 2)
  with pytest.raises(ValueError, match="gamma"):
    st.speculative_sample_chain(
      key, jnp.zeros((3,), jnp.int32), jnp.ones((3, 4)) / 4, jnp.ones((3, 4)) / 4
    )
  tree, _ = jax.eval_shape(lambda k: st.build_iid_tree(k, 0, q, fn, None, 2, 2), key)
  with pytest.raises(ValueError, match="p_MxV"):
    st.verify_tree(key, tree, jnp.ones((4, 4)) / 4)
  with pytest.raises(ValueError, match="chain"):
    st.chain_from_tree(tree)
  with pytest.raises(ValueError, match="method"):
    st.bigram_generate(key, "beam", jnp.eye(4), jnp.eye(4), 0, 3)
  with pytest.raises(ValueError, match="tables"):
    st.bigram_generate(key, "chain", jnp.eye(4), jnp.eye(3), 0, 3, gamma=2)


def test_top_down_gumbel_values_match_direct_gumbel_perturbation():
  """top_down_gumbel_top_k's (tokens, values) have the law of the top-k of
  log q + Gumbel computed directly from V Gumbel variates: two-sample KS tests on each
  of the k values and on the second value given the first token (the token order law
  is checked by test_gumbel_top_k_is_sequential_sampling_without_replacement)."""
  q = np.array([0.45, 0.3, 0.15, 0.07, 0.03], np.float32)
  n = 40_000
  keys = jax.random.split(jax.random.key(8), n)
  tok, val = jax.jit(
    jax.vmap(lambda kk: st.top_down_gumbel_top_k(kk, jnp.asarray(q), 3))
  )(keys)
  tok, val = np.asarray(tok), np.asarray(val)
  g = np.random.default_rng(0).gumbel(size=(n, len(q))) + np.log(q)
  ref_tok = np.argsort(-g, axis=1)[:, :3]
  ref_val = -np.sort(-g, axis=1)[:, :3]
  assert (np.diff(val, axis=1) <= 0).all()
  for j in range(3):
    assert stats.ks_2samp(val[:, j], ref_val[:, j]).pvalue > 1e-4
  for x in range(2):  # values given the first token (independence is part of the law)
    assert (
      stats.ks_2samp(val[tok[:, 0] == x, 1], ref_val[ref_tok[:, 0] == x, 1]).pvalue
      > 1e-4
    )
  # exhausted support: distinct zero-mass tokens with value -inf
  t2, v2 = st.top_down_gumbel_top_k(
    jax.random.key(1), jnp.array([0.0, 0.7, 0.0, 0.3]), 4
  )
  assert sorted(np.asarray(t2)[:2].tolist()) == [1, 3]
  assert (
    sorted(np.asarray(t2)[2:].tolist()) == [0, 2]
    and np.isneginf(np.asarray(v2)[2:]).all()
  )
