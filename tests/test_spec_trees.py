"""Exactness tests for speculative (tree) decoding on toy bigram tables.

The contract: the sequence emitted by speculative decoding has exactly the target's
distribution. With a bigram target P[a, b] = p(b | a) the exact distribution of the
first K tokens is prod_i P[x_{i-1}, x_i]: we enumerate all V^K sequences and compare
the empirical counts of many vmapped decodes with a chi-square test at a fixed seed.
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
    "rsd_s": dict(beam_width=3, depth=2),
}


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
  pairs = {"close": (P, close), "far": (P, far), "draft_zero": (P, dz),
           "target_zero": (Pz, rng.dirichlet(np.ones(V), size=V))}
  norm = lambda t: (t / t.sum(1, keepdims=True)).astype(np.float32)
  return {k: (norm(p), norm(q)) for k, (p, q) in pairs.items()}


PAIRS = _pairs()


def exact_sequence_probs(P, start, num_tokens):
  """p(x_1..x_K) for all V^K sequences (row-major), by enumeration."""
  P = np.asarray(P, np.float64)
  P = P / P.sum(1, keepdims=True)
  n = P.shape[0]
  out = np.zeros(n ** num_tokens)
  for i, seq in enumerate(itertools.product(range(n), repeat=num_tokens)):
    pr, last = 1.0, start
    for t in seq:
      pr, last = pr * P[last, t], t
    out[i] = pr
  return out


def chi2_pvalue(counts, probs, min_expected=5.0):
  """Chi-square goodness of fit; cells with expected count < min_expected are pooled.

  Cells with probability 0 must be empty (asserted by the caller)."""
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


def decode_counts(method, kw, P, Q, num_samples, seed, num_tokens=K, chunk=100_000):
  """Histogram over V^K of the first num_tokens emitted tokens, and total blocks/tokens."""
  f = _decoder(method, tuple(sorted(kw.items())), num_tokens)
  counts = np.zeros(V ** num_tokens, np.int64)
  blocks = emitted = 0
  for c in range(0, num_samples, chunk):
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), c), min(chunk, num_samples - c))
    out = f(keys, jnp.asarray(P), jnp.asarray(Q))
    toks = np.asarray(out.tokens_K)
    assert toks.min() >= 0 and toks.max() < V
    counts += np.bincount(np.ravel_multi_index(toks.T, (V,) * num_tokens),
                          minlength=V ** num_tokens)
    blocks += int(np.asarray(out.num_blocks).sum())
    emitted += int(np.asarray(out.num_emitted).sum())
  return counts, blocks, emitted


def assert_exact(method, kw, P, Q, num_samples, seed, num_tokens=K):
  counts, _, _ = decode_counts(method, kw, P, Q, num_samples, seed, num_tokens)
  probs = exact_sequence_probs(P, START, num_tokens)
  assert counts[probs == 0].sum() == 0, "emitted a sequence the target gives probability 0"
  pval = chi2_pvalue(counts, probs)
  assert pval > ALPHA, f"{method}: chi-square p = {pval:.2e}"


# ----------------------------------------------------------------------------------
# Exactness of every method, four (target, draft) pairs
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("method", list(METHOD_KW))
def test_sequence_distribution_is_exact(method, pair):
  P, Q = PAIRS[pair]
  assert_exact(method, METHOD_KW[method], P, Q, 100_000, 
               seed=100 * list(METHOD_KW).index(method) + list(PAIRS).index(pair))


def test_rsds_deep_tree_is_exact():
  """RSD-S at depth 3, beam 2: beams compete across subtrees from level 2 on, which is
  where sibling counts become random. RRS stays exact there: a kept sibling's token is
  independent of whether it survived the beam cut given the earlier siblings (Gumbel /
  exponential-race memorylessness); this test checks it instead of assuming it."""
  P, Q = PAIRS["far"]
  assert_exact("rsd_s", dict(beam_width=2, depth=3), P, Q, 100_000, seed=7, num_tokens=4)


@pytest.mark.slow
@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("method,kw", [
    ("chain", dict(gamma=4)),
    ("iid", dict(num_drafts=4, depth=3)),
    ("rsd_c", dict(branching=(4, 2, 2))),
    ("rsd_s", dict(beam_width=2, depth=3)),
    ("rsd_s", dict(beam_width=4, depth=3)),
])
def test_sequence_distribution_is_exact_many_samples(method, kw, pair):
  P, Q = PAIRS[pair]
  assert_exact(method, kw, P, Q, 1_000_000, seed=11, num_tokens=4)


# ----------------------------------------------------------------------------------
# Building blocks against closed forms / enumeration
# ----------------------------------------------------------------------------------


def _ordered_draw_prob(q, seq):
  """P(first len(seq) draws without replacement from q are seq, in this order)."""
  pr, left = 1.0, 1.0
  for x in seq:
    pr *= q[x] / left
    left -= q[x]
  return pr


@pytest.mark.parametrize("k", [2, 3])
def test_gumbel_top_k_is_sequential_sampling_without_replacement(k):
  q = np.array([0.45, 0.3, 0.15, 0.07, 0.03], np.float32)
  n = 200_000
  keys = jax.random.split(jax.random.key(3), n)
  draws = np.asarray(jax.jit(jax.vmap(lambda kk: st.gumbel_top_k(kk, jnp.asarray(q), k)))(keys))
  assert (np.sort(draws, 1)[:, 1:] != np.sort(draws, 1)[:, :-1]).all(), "repeated token"
  tuples = list(itertools.permutations(range(len(q)), k))
  index = {t: i for i, t in enumerate(tuples)}
  counts = np.bincount([index[tuple(d)] for d in draws.tolist()], minlength=len(tuples))
  probs = np.array([_ordered_draw_prob(q.astype(np.float64), t) for t in tuples])
  assert chi2_pvalue(counts, probs) > ALPHA
  # Inclusion probabilities (a marginal of the above, checked directly as well).
  incl = np.array([(draws == x).any(1).mean() for x in range(len(q))])
  incl_exact = np.array([probs[[x in t for t in tuples]].sum() for x in range(len(q))])
  np.testing.assert_allclose(incl, incl_exact, atol=5 * np.sqrt(0.25 / n))


def test_gumbel_top_k_puts_zero_mass_tokens_last():
  q = jnp.array([0.0, 0.6, 0.0, 0.4])
  draws = np.asarray(jax.vmap(lambda kk: st.gumbel_top_k(kk, q, 4))(
      jax.random.split(jax.random.key(0), 2000)))
  assert set(map(tuple, draws[:, :2].tolist())) == {(1, 3), (3, 1)}
  assert (np.sort(draws[:, 2:], 1) == [0, 2]).all()


def _chain_accepted(verify_with_tree, p, q, gamma, n, seed):
  """Accepted-count samples of single chains whose every position has p, q."""
  p, q = jnp.asarray(p), jnp.asarray(q)
  const = lambda state, tok, par: (state, jnp.broadcast_to(q, (tok.shape[0], q.shape[0])))

  def one(key):
    k1, k2 = jax.random.split(key)
    tree, _ = st.build_iid_tree(k1, jnp.int32(0), q, const, None, 1, gamma)
    p_MxV = jnp.broadcast_to(p, (gamma + 1, p.shape[0]))
    if verify_with_tree:
      return st.verify_tree(k2, tree, p_MxV).num_accepted
    toks, q_GxV = st.chain_from_tree(tree)
    return st.speculative_sample_chain(k2, toks, q_GxV, p_MxV).num_accepted

  return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed), n)))


@pytest.mark.parametrize("verify_with_tree", [False, True], ids=["chain", "rrs_on_chain"])
def test_chain_acceptance_matches_closed_form(verify_with_tree):
  """alpha = sum_x min(p, q); P(n accepted = i) = alpha^i (1 - alpha), P(n = gamma) = alpha^gamma."""
  p = np.array([0.5, 0.2, 0.2, 0.1], np.float32)
  q = np.array([0.25, 0.4, 0.05, 0.3], np.float32)
  gamma, n = 4, 100_000
  alpha = np.minimum(p, q).sum()
  acc = _chain_accepted(verify_with_tree, p, q, gamma, n, seed=5)
  probs = np.array([alpha ** i * (1 - alpha) for i in range(gamma)] + [alpha ** gamma])
  assert chi2_pvalue(np.bincount(acc, minlength=gamma + 1), probs) > ALPHA
  # First-position acceptance rate alone (binomial, 5 sigma).
  rate = (acc >= 1).mean()
  assert abs(rate - alpha) < 5 * np.sqrt(alpha * (1 - alpha) / n)


def test_chain_accepts_everything_when_draft_equals_target():
  """Zero-residual guard: p == q means acceptance prob 1 at every position, no NaN."""
  p = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
  acc = _chain_accepted(False, p, p, 3, 1000, seed=0)
  assert (acc == 3).all()
  acc = _chain_accepted(True, p, p, 3, 1000, seed=0)
  assert (acc == 3).all()


def _exact_chain_block_efficiency(P, Q, root, gamma):
  """E[tokens per block] = 1 + E[accepted] with A(a, d) = sum_x min(P, Q)[a, x](1 + A(x, d-1))."""
  P, Q = np.asarray(P, np.float64), np.asarray(Q, np.float64)
  A = np.zeros(P.shape[0])
  for _ in range(gamma):
    A = (np.minimum(P, Q) * (1 + A[None, :])).sum(1)
  return 1 + A[root]


def test_chain_block_efficiency_matches_bigram_closed_form():
  P, Q = PAIRS["close"]
  gamma, n = 3, 100_000
  counts, blocks, emitted = decode_counts("chain", dict(gamma=gamma), P, Q, n, seed=9,
                                          num_tokens=1)
  assert blocks == n  # one block always yields >= 1 token
  tau = emitted / n
  exact = _exact_chain_block_efficiency(P, Q, START, gamma)
  assert abs(tau - exact) < 5 * np.sqrt(gamma ** 2 / 4 / n), (tau, exact)


# ----------------------------------------------------------------------------------
# Tree structure and guards
# ----------------------------------------------------------------------------------


def test_tree_topologies():
  _, Q = PAIRS["close"]
  fn = st.table_draft_fn(jnp.asarray(Q))
  key, q0 = jax.random.key(0), jnp.asarray(Q[START])
  iid, _ = st.build_iid_tree(key, jnp.int32(START), q0, fn, None, 3, 2)
  np.testing.assert_array_equal(iid.parent_M, [-1, 0, 0, 0, 1, 2, 3])
  rc, _ = st.build_rsdc_tree(key, jnp.int32(START), q0, fn, None, (3, 2))
  np.testing.assert_array_equal(rc.parent_M, [-1, 0, 0, 0, 1, 1, 2, 2, 3, 3])
  np.testing.assert_array_equal(rc.depth_M, [0, 1, 1, 1, 2, 2, 2, 2, 2, 2])
  # q rows: draft distribution after each node (zeros on the deepest level).
  np.testing.assert_allclose(rc.q_MxV[:4], Q[np.asarray(rc.token_M[:4])])
  assert float(jnp.abs(rc.q_MxV[4:]).sum()) == 0.0
  np.testing.assert_array_equal(
      st.children_table(rc.parent_M, 3),
      [[1, 2, 3], [4, 5, -1], [6, 7, -1], [8, 9, -1]] + [[-1, -1, -1]] * 6)
  # SBS: W nodes per level, parents sorted (siblings contiguous), distinct siblings.
  for s in range(20):
    rs, _ = st.build_rsds_tree(jax.random.key(s), jnp.int32(START), q0, fn, None, 3, 3)
    par, tok = np.asarray(rs.parent_M), np.asarray(rs.token_M)
    assert rs.token_M.shape == (10,) and par[0] == -1 and (par[1:4] == 0).all()
    for lvl in range(2, 4):
      sl = slice(1 + 3 * (lvl - 1), 1 + 3 * lvl)
      assert (np.diff(par[sl]) >= 0).all() and (par[sl] >= 1 + 3 * (lvl - 2)).all()
      pairs = list(zip(par[sl], tok[sl]))
      assert len(set(pairs)) == 3


def test_sbs_first_level_is_gumbel_top_k_and_scores_are_consistent():
  """The root's W children are top-W draws w/o replacement; a kept beam's best child keeps
  its parent's perturbed score (the truncation sets the sibling max to G)."""
  q = jnp.array([0.5, 0.3, 0.15, 0.05])
  fn = lambda s, tok, par: (s, jnp.broadcast_to(q, (tok.shape[0], 4)))
  n = 100_000
  toks = np.asarray(jax.jit(jax.vmap(
      lambda kk: st.build_rsds_tree(kk, jnp.int32(0), q, fn, None, 2, 2)[0].token_M[1:3]))(
          jax.random.split(jax.random.key(4), n)))
  tuples = list(itertools.permutations(range(4), 2))
  counts = np.bincount([tuples.index(tuple(t)) for t in toks.tolist()], minlength=len(tuples))
  probs = [_ordered_draw_prob(np.asarray(q, np.float64), t) for t in tuples]
  assert chi2_pvalue(counts, probs) > ALPHA
  G = np.array([0.0, -1.3])
  Gt = np.array([[0.2, -0.7, -3.0, -np.inf], [0.5, 1.0, -2.0, -0.1]])
  Gp = np.asarray(st._truncated_gumbel(jnp.asarray(G), jnp.asarray(Gt)))
  ref = -np.log(np.exp(-G[:, None]) - np.exp(-Gt.max(1, keepdims=True)) + np.exp(-Gt))
  np.testing.assert_allclose(Gp, ref, rtol=1e-5)
  np.testing.assert_allclose(Gp.max(1), G, atol=1e-6)


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

  res = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), 40_000))
  assert (np.asarray(res.num_accepted) == 0).all()
  assert (np.asarray(res.path_D) == -1).all()
  y = np.asarray(res.extra_token)
  assert chi2_pvalue(np.bincount(y, minlength=4), np.asarray(p)) > ALPHA
  np.testing.assert_array_equal(np.asarray(res.tokens_Dp1)[:, 1], -1)


def test_verify_outputs_are_consistent():
  P, Q = PAIRS["far"]
  fn = st.table_draft_fn(jnp.asarray(Q))

  def one(key):
    k1, k2 = jax.random.split(key)
    tree, _ = st.build_rsds_tree(k1, jnp.int32(START), jnp.asarray(Q[START]), fn, None, 3, 3)
    return tree, st.verify_tree(k2, tree, jnp.asarray(P)[tree.token_M])

  tree, res = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(1), 2000))
  par, tok = np.asarray(tree.parent_M), np.asarray(tree.token_M)
  for b in range(2000):
    n = int(res.num_accepted[b])
    path = np.asarray(res.path_D[b])
    assert (path[n:] == -1).all() and (path[:n] >= 0).all()
    prev = 0
    for d in range(n):  # the path goes down the tree, one level at a time
      assert par[b, path[d]] == prev
      prev = path[d]
    emitted = np.asarray(res.tokens_Dp1[b])
    np.testing.assert_array_equal(emitted[:n], tok[b, path[:n]])
    assert emitted[n] == int(res.extra_token[b]) and (emitted[n + 1:] == -1).all()
    assert int(res.num_emitted[b]) == n + 1


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
    st.speculative_sample_chain(key, jnp.zeros((3,), jnp.int32), jnp.ones((3, 4)) / 4,
                                jnp.ones((3, 4)) / 4)
  tree, _ = st.build_iid_tree(key, 0, q, fn, None, 2, 2)
  with pytest.raises(ValueError, match="p_MxV"):
    st.verify_tree(key, tree, jnp.ones((4, 4)) / 4)
  with pytest.raises(ValueError, match="chain"):
    st.chain_from_tree(tree)
  with pytest.raises(ValueError, match="method"):
    st.bigram_generate(key, "beam", jnp.eye(4), jnp.eye(4), 0, 3)
