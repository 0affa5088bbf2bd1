"""Speculative (tree) decoding on probability arrays: drafting, verification, toy loop.

Shape letters (suffixes of array names): V vocabulary; M tree nodes in BFS order, root
included (M = 1 + budget); N nodes of one new level; D = L the deepest level (most
draft tokens one block accepts), Dp1 = D + 1; G = gamma, the chain length (Gp1 =
G + 1); K the number of i.i.d. chains / of top-down draws; W the SBS beam width; B beams
of one SBS level; C the most children of a node.

Model-agnostic core of speculative decoding. A draft model proposes a token tree; the
target model scores every node once; the verifier decides which root-to-node path is
accepted and which extra token is emitted, such that the emitted sequence has exactly
the target's distribution. Everything here works on distributions (probability
vectors), so the same code runs with a toy bigram model (exact tests) and with a
transformer behind the decode interface.

Tree shapes: one frozen class per family owns its topology (`level_sizes`, `budget`,
`max_depth`, `draft_width`), how it is built (`propose`) and verified (`verify`);
`make_tree(name, **fields)` is the one name -> shape registry (`TREES`) used by
`SpecConfig(method=...)` and the command lines, `tree_for_budget` / `tree_for_depth`
size a family for benchmark comparisons. A new family is one `@register_tree` class.
  * `Autoregressive()` ("autoregressive"): no draft, the baseline.
  * `Chain(gamma)` ("chain", Leviathan et al. 2023 / Chen et al. 2023): one draft
    chain, verified by `speculative_sample_chain`.
  * `IIDTree(num_drafts, depth)` ("iid", SpecInfer-style, k chains drawn with
    replacement): `build_iid_tree`, verified by RRS *with* replacement.
  * `RSDC(branching)` ("rsd_c", Jeon et al. 2024): Gumbel-Top-k at every node, fixed
    branching (b_1..b_L): `build_rsdc_tree`, verified by RRS *without* replacement.
  * `RSDS(beam_width, depth)` ("rsd_s"): stochastic beam search (Kool et al. 2019) of
    width W and depth L: `build_rsds_tree`, verified by RRS without replacement.
    Exactness is tested, not assumed (tests/test_spec_trees.py): under SBS the number
    of kept children of a node is random (beams compete across subtrees), but given
    the earlier siblings a kept sibling's token is independent of whether it survived
    the beam cut (the perturbed values form an exponential race: each next value
    depends only on the tokens drawn before it, and the next token is independent of
    the values), so RRS stays exact. The chi-square tests agree (160k draws per
    method, 1M in the slow variants).

Tree representation (one sequence; vmap for a batch)
  Nodes are flattened in BFS order, node 0 is the root (the last committed token; it
  has no draft token of its own). Siblings are contiguous and in draw order.
    token_M   int32  token at each node (root: the last committed token)
    parent_M  int32  parent node index, -1 for the root
    depth_M   int32  0 for the root
    q_MxV     float  draft next-token distribution after each node's prefix (what the
                     node's children were drawn from). Rows of deepest-level nodes are 0:
                     the draft model is never run on them.
  The verifier needs p_MxV, the target next-token distribution after each node's prefix
  (one target call on the flattened tree).

Draft callback
  Construction is level by level. `draft_fn(state, tokens_N, parents_N) -> (state, q_NxV)`
  returns the draft distributions after the N new nodes (global node indices of their
  parents are given so a transformer can build the tree attention mask and positions;
  the new nodes occupy the next N BFS slots). `state` is any pytree the draft model
  threads through (e.g. its KV cache); a bigram table ignores it (`table_draft_fn`);
  precomputed per-node q (token-independent drafts) use `node_table_draft_fn`.
  Level sizes are static, so the loop over levels is a Python loop (unrolled under jit).

Guards (exact-arithmetic probability-zero events, documented choices)
  * zero residual: if max(0, r - Q) sums to 0 then r <= Q pointwise, i.e. r == Q, and a
    rejection has probability sum(max(0, r - Q)) = 0; should float noise reject anyway
    we keep r unchanged (the natural limit) instead of dividing by zero.
  * zero Q: a child whose token has Q_j(x) = 0 (Gumbel-Top-k / SBS asked for more
    children than the draft's support, or the remaining support is exhausted) is an
    invalid draft: it is skipped, leaving r and Q unchanged. This is exactly RRS with
    fewer children, so exactness holds. Such nodes (and their subtrees) are never
    accepted. (In Gumbel-Top-k / SBS trees such a child only follows the exhaustion of
    the support, where Q_j = 0 and the residual step would be a no-op anyway; the guard
    makes the rule explicit and protects other tree sources.) In the single chain a
    draft token with q(x) = 0 is rejected.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxllm.sampling import inverse_cdf
from jaxllm.validation import check_int

Array = jax.Array
DraftFn = Callable[[Any, Array, Array], tuple[Any, Array]]


# ----------------------------------------------------------------------------------
# Tree container
# ----------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DraftTree:
  """A draft token tree in BFS order (see module docstring).

  Static fields: `max_depth` (deepest level L), `max_children` (most children any node
  can have, the width of `children_table`), `without_replacement` (how RRS updates Q
  after a rejection: siblings were drawn without replacement, or i.i.d.).
  """

  token_M: Array
  parent_M: Array
  depth_M: Array
  q_MxV: Array
  max_depth: int = dataclasses.field(metadata=dict(static=True))
  max_children: int = dataclasses.field(metadata=dict(static=True))
  without_replacement: bool = dataclasses.field(metadata=dict(static=True))


def table_draft_fn(table_VxV: Array) -> DraftFn:
  """Draft callback of a bigram model: q(next | node) = table[token of node]."""

  def draft_fn(state, tokens_N, parents_N):
    del parents_N
    return state, table_VxV[tokens_N]

  return draft_fn


def node_table_draft_fn(q_MxV: Array) -> tuple[DraftFn, Array]:
  """Draft callback from precomputed q per node (row i = q after BFS node i).

  For position-wise drafts that do not depend on the drafted tokens (unit tests,
  replaying recorded distributions). Returns (draft_fn, initial_state); the state is
  the BFS index of the next new node (nodes are created in BFS order, level by level).
  """

  def draft_fn(next_node, tokens_N, parents_N):
    del parents_N
    N = tokens_N.shape[0]
    return next_node + N, lax.dynamic_slice_in_dim(q_MxV, next_node, N, axis=0)

  return draft_fn, jnp.int32(1)


def _sibling_rank(group_N: Array) -> Array:
  """rank_N[i] = number of j < i with group[j] == group[i] (sort-free, O(N^2))."""
  N = group_N.shape[0]
  same_NxN = group_N[:, None] == group_N[None, :]
  before_NxN = jnp.arange(N)[None, :] < jnp.arange(N)[:, None]
  return jnp.sum(same_NxN & before_NxN, axis=1).astype(jnp.int32)


def children_table(parent_M: Array, max_children: int) -> Array:
  """children_MxC[n] = children of node n in BFS (= draw) order, padded with -1.

  Dense and sort-free (M is small; sorts are slow under vmap on CPU). Children beyond
  max_children are dropped, so max_children must bound every node's branching.
  """
  M = parent_M.shape[0]
  idx_M = jnp.arange(M, dtype=jnp.int32)
  is_child_MxM = parent_M[None, :] == idx_M[:, None]  # [n, i]: i is a child of n
  slot_MxC = _sibling_rank(parent_M)[:, None] == jnp.arange(max_children)[None, :]
  sel_MxCxM = is_child_MxM[:, None, :] & slot_MxC.T[None, :, :]
  found_MxC = sel_MxCxM.any(-1)
  return jnp.where(found_MxC, jnp.sum(sel_MxCxM * idx_M, -1), -1).astype(jnp.int32)


def _log(q):
  return jnp.where(q > 0, jnp.log(jnp.where(q > 0, q, 1.0)), -jnp.inf)


def _normalise(x_V):
  s = x_V.sum(-1, keepdims=True)
  return jnp.where(s > 0, x_V / jnp.where(s > 0, s, 1.0), x_V)


def residual(p_V: Array, q_V: Array) -> Array:
  """normalise(max(0, p - q)); returns p itself if the residual mass is 0 (p == q)."""
  res_V = jnp.maximum(p_V - q_V, 0.0)
  s = res_V.sum(-1, keepdims=True)
  return jnp.where(s > 0, res_V / jnp.where(s > 0, s, 1.0), p_V)


def _sample_from_uniform(u, probs_V):
  """Inverse-CDF sample of an (unnormalised) probability vector from u ~ U[0, 1):
  `jaxllm.sampling.inverse_cdf` at 1 - u (zero-mass entries are never returned).
  One uniform instead of a `categorical` call keeps the number of PRNG expansions
  per block, and so the compile time, small.
  """
  return inverse_cdf(1.0 - u, probs_V)


def _accept(u, r_x, q_x):
  """u < r/q, i.e. accept with prob min(1, r/q); always for r >= q; never for q = 0."""
  return (q_x > 0) & (u < r_x / jnp.where(q_x > 0, q_x, 1.0))


def top_down_gumbel_top_k(key: Array, q_V: Array, k: int) -> tuple[Array, Array]:
  """The top k of log q(x) + Gumbel_x over all x (indices and values, decreasing),
  drawn top-down in k passes over V instead of V Gumbel variates (which dominate a
  draft step at V = 49k on a CPU).

  Exact joint law: the max of log q(x) + G_x over a set S is Gumbel(log q(S)) and its
  argmax is an independent draw from q restricted to S; given the top j (tokens and
  values), the rest are independent Gumbels conditioned to lie below the j-th value.
  So draw x_j ~ q on the untaken tokens (inverse CDF) and its value as
  Gumbel(log q(untaken)) truncated at the previous value: -log(e^-prev + e^-g).
  q must be normalised (sum 1) for the values to be those of log q + Gumbel. When q's
  support is exhausted the remaining entries are distinct zero-mass tokens with value
  -inf (invalid draws).
  """
  u_Kx2 = jax.random.uniform(
    key, (k, 2), dtype=q_V.dtype, minval=jnp.finfo(q_V.dtype).tiny
  )
  taken_V = jnp.zeros(q_V.shape, bool)
  prev = jnp.asarray(jnp.inf, q_V.dtype)
  idx, val = [], []
  for j in range(k):  # k is small and static
    w_V = jnp.where(taken_V, 0.0, q_V)
    s = w_V.sum()
    x = jnp.where(
      s > 0, _sample_from_uniform(u_Kx2[j, 0], w_V), jnp.argmax(~taken_V & (q_V <= 0))
    ).astype(jnp.int32)
    g = jnp.log(s) - jnp.log(-jnp.log(u_Kx2[j, 1]))
    prev = -jnp.logaddexp(-prev, -g)
    taken_V = taken_V.at[x].set(True)
    idx.append(x)
    val.append(prev)
  return jnp.stack(idx), jnp.stack(val)


def gumbel_top_k(key: Array, q_V: Array, k: int) -> Array:
  """k draws without replacement from q, in draw order (= the top-k of
  log q + Gumbel, see `top_down_gumbel_top_k`). If k exceeds the support of q the
  trailing entries are zero-mass tokens (invalid draws)."""
  return top_down_gumbel_top_k(key, _normalise(q_V), k)[0]


def _draw(key, q_NxV):
  """One draw per row of q (inverse CDF: one uniform per row, no Gumbel variates)."""
  u_N = jax.random.uniform(key, q_NxV.shape[:1], dtype=q_NxV.dtype)
  return jax.vmap(_sample_from_uniform)(u_N, q_NxV).astype(jnp.int32)


# ----------------------------------------------------------------------------------
# Single chain
# ----------------------------------------------------------------------------------


class ChainResult(NamedTuple):
  tokens_Gp1: Array  # emitted tokens, -1 after num_emitted
  num_emitted: Array  # num_accepted + 1
  num_accepted: Array


def speculative_sample_chain(
  key: Array, draft_tokens_G: Array, q_GxV: Array, p_Gp1xV: Array
) -> ChainResult:
  """Leviathan/Chen speculative sampling of one draft chain of gamma tokens.

  q_GxV[i]: draft distribution x_i was drawn from; p_Gp1xV[i]: target distribution at
  the same prefix (p_Gp1xV[gamma] is the bonus distribution after all drafts).
  Accept x_i with prob min(1, p/q); at the first rejection emit a sample of
  normalise(max(0, p - q)); if all gamma are accepted emit a bonus sample of p.
  """
  G = draft_tokens_G.shape[0]
  if q_GxV.shape[0] != G or p_Gp1xV.shape[0] != G + 1:
    raise ValueError(
      f"q must be (gamma, V) and p (gamma+1, V) for gamma={G}; "
      f"got q {q_GxV.shape}, p {p_Gp1xV.shape}"
    )
  qx_G = jnp.take_along_axis(q_GxV, draft_tokens_G[:, None], 1)[:, 0]
  px_G = jnp.take_along_axis(p_Gp1xV[:G], draft_tokens_G[:, None], 1)[:, 0]
  u_Gp1 = jax.random.uniform(key, (G + 1,), dtype=q_GxV.dtype)
  u_G = u_Gp1[:G]
  accept_G = _accept(u_G, px_G, qx_G)
  n = jnp.sum(jnp.cumprod(accept_G.astype(jnp.int32)))
  q_at = q_GxV[jnp.minimum(n, G - 1)]
  r_V = jnp.where(n < G, residual(p_Gp1xV[n], q_at), p_Gp1xV[n])
  y = _sample_from_uniform(u_Gp1[G], r_V)
  i_Gp1 = jnp.arange(G + 1)
  drafts_Gp1 = jnp.concatenate([draft_tokens_G, jnp.zeros((1,), jnp.int32)])
  tokens = jnp.where(i_Gp1 < n, drafts_Gp1, jnp.where(i_Gp1 == n, y, -1))
  return ChainResult(tokens.astype(jnp.int32), n + 1, n)


def chain_from_tree(tree: DraftTree) -> tuple[Array, Array]:
  """(draft_tokens_G, q_GxV) of a single-chain tree (build_iid_tree, num_drafts=1)."""
  if tree.max_children != 1:
    raise ValueError(f"not a chain: max_children={tree.max_children}")
  return tree.token_M[1:], tree.q_MxV[:-1]


# ----------------------------------------------------------------------------------
# Tree construction
# ----------------------------------------------------------------------------------


def _check_root(q_root_V, V_needed=None):
  if q_root_V.ndim != 1:
    raise ValueError(f"q_root_V must be one distribution (V,), got {q_root_V.shape}")
  if V_needed is not None and V_needed > q_root_V.shape[0]:
    raise ValueError(
      f"{V_needed} draws without replacement > vocab {q_root_V.shape[0]}"
    )


def build_iid_tree(
  key: Array,
  root_token: Array,
  q_root_V: Array,
  draft_fn: DraftFn,
  draft_state: Any,
  num_drafts: int,
  depth: int,
) -> tuple[DraftTree, Any]:
  """k = num_drafts independent draft chains of length `depth` (with replacement).

  Chains are not merged when they share a prefix (static topology): node (level l,
  chain c) is at index 1 + (l-1) k + c, its parent is (l-1, c) or the root. RRS with
  replacement stays exact: a chain's continuation is a fresh draft given its prefix.
  num_drafts=1 gives the single chain. (The without-replacement update is exact here
  too, as a repeated sibling then has Q = 0 and is skipped, but measured on the toy
  pairs it accepts slightly less, so i.i.d. trees use the with-replacement rule.)
  """
  if num_drafts < 1 or depth < 1:
    raise ValueError(f"num_drafts and depth must be >= 1, got {num_drafts}, {depth}")
  _check_root(q_root_V)
  k, V = num_drafts, q_root_V.shape[0]
  keys = jax.random.split(key, depth)
  tokens = [jnp.asarray(root_token, jnp.int32)[None]]
  parents = [jnp.array([-1], jnp.int32)]
  qs = [q_root_V[None]]
  q_KxV = jnp.broadcast_to(q_root_V, (k, V))
  for l in range(1, depth + 1):
    tok_K = _draw(keys[l - 1], q_KxV)
    par_K = (
      jnp.zeros((k,), jnp.int32)
      if l == 1
      else 1 + (l - 2) * k + jnp.arange(k, dtype=jnp.int32)
    )
    tokens.append(tok_K)
    parents.append(par_K)
    if l < depth:
      draft_state, q_KxV = draft_fn(draft_state, tok_K, par_K)
      qs.append(q_KxV)
    else:
      qs.append(jnp.zeros((k, V), q_root_V.dtype))
  depth_M = jnp.concatenate(
    [jnp.zeros((1,), jnp.int32)]
    + [jnp.full((k,), l, jnp.int32) for l in range(1, depth + 1)]
  )
  tree = DraftTree(
    jnp.concatenate(tokens),
    jnp.concatenate(parents),
    depth_M,
    jnp.concatenate(qs),
    max_depth=depth,
    max_children=k,
    without_replacement=False,
  )
  return tree, draft_state


def build_rsdc_tree(
  key: Array,
  root_token: Array,
  q_root_V: Array,
  draft_fn: DraftFn,
  draft_state: Any,
  branching: Sequence[int],
) -> tuple[DraftTree, Any]:
  """RSD-C: every level-(l-1) node gets b_l children by Gumbel-Top-b_l of its q.

  Level l has prod(b_1..b_l) nodes; the children of the i-th node of level l-1 are
  nodes i*b_l .. i*b_l + b_l - 1 of level l, in draw order (fixed topology).
  """
  branching = tuple(int(b) for b in branching)
  if not branching or min(branching) < 1:
    raise ValueError(
      f"branching must be a non-empty tuple of ints >= 1, got {branching}"
    )
  _check_root(q_root_V, max(branching))
  V = q_root_V.shape[0]
  L = len(branching)
  sizes = [1]
  for b in branching[:-1]:
    sizes.append(sizes[-1] * b)
  keys = jax.random.split(key, L)
  tokens = [jnp.asarray(root_token, jnp.int32)[None]]
  parents = [jnp.array([-1], jnp.int32)]
  depths = [jnp.zeros((1,), jnp.int32)]
  qs = [q_root_V[None]]
  q_NxV, start, n = q_root_V[None], 0, 1  # current level: q, first index, size
  for l, b in enumerate(branching, start=1):
    node_keys = jax.random.split(keys[l - 1], n)  # Gumbel-Top-b per node:
    tok_NxB = jax.vmap(gumbel_top_k, in_axes=(0, 0, None))(node_keys, q_NxV, b)
    tok = tok_NxB.reshape(-1).astype(jnp.int32)
    par = (start + jnp.arange(n * b, dtype=jnp.int32) // b).astype(jnp.int32)
    tokens.append(tok)
    parents.append(par)
    depths.append(jnp.full((n * b,), l, jnp.int32))
    start, n = start + n, n * b
    if l < L:
      draft_state, q_NxV = draft_fn(draft_state, tok, par)
      qs.append(q_NxV)
    else:
      qs.append(jnp.zeros((n, V), q_root_V.dtype))
  tree = DraftTree(
    jnp.concatenate(tokens),
    jnp.concatenate(parents),
    jnp.concatenate(depths),
    jnp.concatenate(qs),
    max_depth=L,
    max_children=max(branching),
    without_replacement=True,
  )
  return tree, draft_state


def _truncated_gumbel(G_B, Gt_BxV):
  """Kool et al. (2019) SBS: shift sibling perturbed scores so their max equals G.

  v = G - G~ + log1p(-exp(G~ - Z)),  G' = G - relu(v) - log1p(exp(-|v|)).
  Beams with G = -inf (invalid) get all children -inf.
  """
  Z_B = jnp.max(Gt_BxV, axis=1)
  G = G_B[:, None]
  diff = jnp.where(jnp.isfinite(Z_B)[:, None], Gt_BxV - Z_B[:, None], -jnp.inf)
  v = G - Gt_BxV + jnp.log1p(-jnp.exp(diff))
  Gp = G - jax.nn.relu(v) - jnp.log1p(jnp.exp(-jnp.abs(v)))
  ok = jnp.isfinite(G) & jnp.isfinite(Gt_BxV)
  return jnp.where(ok, Gp, -jnp.inf)


def build_rsds_tree(
  key: Array,
  root_token: Array,
  q_root_V: Array,
  draft_fn: DraftFn,
  draft_state: Any,
  beam_width: int,
  depth: int,
) -> tuple[DraftTree, Any]:
  """RSD-S: stochastic beam search of width W for `depth` levels; the tree is the union
  of all beams kept at every level (W nodes per level, M = 1 + W L).

  Per beam: phi (log-prob of its prefix under q) and G (perturbed score, root 0). For
  every child phi' = phi + log q(x), G~ = phi' + Gumbel, Z = max over siblings,
  G' = truncated Gumbel (see `_truncated_gumbel`); keep the global top W by G'. Level l
  is stored grouped by parent, siblings in decreasing G' (= their draw order without
  replacement). A node whose G' is -inf (fewer than W candidates with q > 0) is invalid
  and gets skipped by the verifier because its token has q = 0 under its parent.
  """
  W, L = int(beam_width), int(depth)
  if W < 1 or L < 1:
    raise ValueError(f"beam_width and depth must be >= 1, got {W}, {L}")
  _check_root(q_root_V, W)
  V = q_root_V.shape[0]
  dt = q_root_V.dtype
  keys = jax.random.split(key, L)
  tokens = [jnp.asarray(root_token, jnp.int32)[None]]
  parents = [jnp.array([-1], jnp.int32)]
  depths = [jnp.zeros((1,), jnp.int32)]
  qs = [q_root_V[None]]
  q_BxV = q_root_V[None]
  phi_B = jnp.zeros((1,), dt)
  G_B = jnp.zeros((1,), dt)
  start = 0
  for l in range(1, L + 1):
    B = q_BxV.shape[0]
    # Only a beam's W best children (by G~) can enter the global top W (the truncation
    # is monotone within a beam), so draw just those, top-down: tok, log q + Gumbel.
    tok_BxW, g_BxW = jax.vmap(top_down_gumbel_top_k, in_axes=(0, 0, None))(
      jax.random.split(keys[l - 1], B), jax.vmap(_normalise)(q_BxV), W
    )
    logq_BxW = _log(jnp.take_along_axis(q_BxV, tok_BxW, axis=1))
    alive_B = jnp.isfinite(phi_B)[:, None]
    phic_BxW = jnp.where(alive_B, phi_B[:, None] + logq_BxW, -jnp.inf)
    Gt_BxW = jnp.where(alive_B, phi_B[:, None] + g_BxW, -jnp.inf)
    Gp_BxW = _truncated_gumbel(G_B, Gt_BxW)
    Gsel_W, flat_W = lax.top_k(Gp_BxW.reshape(-1), W)
    # Group by parent, keeping top_k's decreasing-G' order within a parent (a stable
    # sort by parent, done sort-free: position = #beams with smaller parent + rank).
    pl_W = flat_W // W
    pos_W = jnp.sum(pl_W[None, :] < pl_W[:, None], axis=1) + _sibling_rank(pl_W)
    inv_W = jnp.zeros((W,), jnp.int32).at[pos_W].set(jnp.arange(W, dtype=jnp.int32))
    flat_W, Gsel_W = flat_W[inv_W], Gsel_W[inv_W]
    par_local_W, tok_W = flat_W // W, tok_BxW.reshape(-1)[flat_W].astype(jnp.int32)
    phi_B = phic_BxW.reshape(-1)[flat_W]
    G_B = Gsel_W
    par_W = (start + par_local_W).astype(jnp.int32)
    tokens.append(tok_W)
    parents.append(par_W)
    depths.append(jnp.full((W,), l, jnp.int32))
    start += B
    if l < L:
      draft_state, q_BxV = draft_fn(draft_state, tok_W, par_W)
      qs.append(q_BxV)
    else:
      qs.append(jnp.zeros((W, V), dt))
  tree = DraftTree(
    jnp.concatenate(tokens),
    jnp.concatenate(parents),
    jnp.concatenate(depths),
    jnp.concatenate(qs),
    max_depth=L,
    max_children=W,
    without_replacement=True,
  )
  return tree, draft_state


# ----------------------------------------------------------------------------------
# Verification: recursive rejection sampling
# ----------------------------------------------------------------------------------


class TreeResult(NamedTuple):
  path_D: Array  # accepted node indices, -1 after num_accepted
  num_accepted: Array  # accepted draft tokens
  extra_token: Array  # the token emitted after the accepted path
  tokens_Dp1: Array  # emitted tokens (accepted drafts, then extra), -1 padded
  num_emitted: Array  # num_accepted + 1


def verify_tree(key: Array, tree: DraftTree, p_MxV: Array) -> TreeResult:
  """Recursive rejection sampling down the tree (Jeon et al. 2024; SpecInfer).

  At node n with children x_1..x_m in draw order: r_1 = p_n, Q_1 = q_n; for j = 1..m
  accept x_j with prob min(1, r_j(x_j) / Q_j(x_j)) and descend into it, else
  r_{j+1} = normalise(max(0, r_j - Q_j)) and Q_{j+1} = Q_j without x_j, renormalised
  (tree.without_replacement) or Q_j (i.i.d. siblings). If all are rejected (or n is a
  leaf, m = 0) emit y ~ r_{m+1}. Guards: see module docstring.
  """
  M, V = p_MxV.shape
  if tree.q_MxV.shape != (M, V) or tree.token_M.shape != (M,):
    raise ValueError(
      f"p_MxV {p_MxV.shape} does not match tree q {tree.q_MxV.shape}, "
      f"tokens {tree.token_M.shape}"
    )
  C, D = tree.max_children, tree.max_depth
  children_MxC = children_table(tree.parent_M, C)
  u = jax.random.uniform(key, (M * C + 1,), dtype=p_MxV.dtype)
  u_MxC = u[:-1].reshape(M, C)
  wo = tree.without_replacement

  def visit(node):
    q_V = tree.q_MxV[node]

    def child(j, carry):
      r_V, keep_V, acc = carry
      c = children_MxC[node, j]
      x = tree.token_M[jnp.maximum(c, 0)]
      Q_V = _normalise(q_V * keep_V) if wo else q_V
      Qx = Q_V[x]
      active = (acc < 0) & (c >= 0) & (Qx > 0)
      accept = active & _accept(u_MxC[node, j], r_V[x], Qx)
      reject = active & ~accept
      r_V = jnp.where(reject, residual(r_V, Q_V), r_V)
      if wo:
        keep_V = jnp.where(reject, keep_V.at[x].set(0.0), keep_V)
      return r_V, keep_V, jnp.where(accept, c, acc)

    init = (p_MxV[node], jnp.ones((V,), p_MxV.dtype), jnp.int32(-1))
    r_V, _, acc = lax.fori_loop(0, C, child, init)
    return r_V, acc

  def cond(s):
    return ~s[1]

  def body(s):
    node, done, n, path_D, r_fin = s
    r_V, acc = visit(node)
    took = acc >= 0
    path_D = jnp.where(took, path_D.at[jnp.minimum(n, D - 1)].set(acc), path_D)
    return (
      jnp.where(took, acc, node),
      ~took,
      n + took.astype(jnp.int32),
      path_D,
      jnp.where(took, r_fin, r_V),
    )

  init = (
    jnp.int32(0),
    jnp.bool_(False),
    jnp.int32(0),
    jnp.full((D,), -1, jnp.int32),
    jnp.zeros((V,), p_MxV.dtype),
  )
  _, _, n, path_D, r_V = lax.while_loop(cond, body, init)
  y = _sample_from_uniform(u[-1], r_V)
  i_Dp1 = jnp.arange(D + 1)
  drafts = tree.token_M[jnp.maximum(jnp.concatenate([path_D, jnp.array([-1])]), 0)]
  tokens = jnp.where(i_Dp1 < n, drafts, jnp.where(i_Dp1 == n, y, -1)).astype(jnp.int32)
  return TreeResult(path_D, n, y, tokens, n + 1)


# ----------------------------------------------------------------------------------
# Tree shapes: one small frozen class per family, and the name registry
# ----------------------------------------------------------------------------------


def counts_field(default: tuple):
  """A TreeShape field holding a non-empty tuple of counts >= 1 (e.g. a branching
  schedule); fields without it hold one count >= 1."""
  return dataclasses.field(default=default, metadata=dict(kind="counts"))


def _kind(f: dataclasses.Field) -> str:
  return f.metadata.get("kind", "count")


def _check_shape_field(name: str, kind: str, value):
  """Validate one shape field (kind "count" or "counts"); returns the normalised value.

  Raises:
    ValueError: "`name` must be ..." naming the field.
  """
  if kind == "count":
    return check_int(name, value, lo=1)
  iterable = hasattr(value, "__iter__") and not isinstance(value, (str, bytes, dict))
  entries = tuple(value) if iterable else None
  if not entries:
    raise ValueError(
      f"{name} must be a non-empty tuple of integers >= 1, got {value!r:.200}"
    )
  return tuple(check_int(f"{name}[{i}]", v, lo=1) for i, v in enumerate(entries))


@dataclasses.dataclass(frozen=True)
class TreeShape:
  """A speculative tree family with its static topology (hashable: a jit static).

  Subclasses are frozen dataclasses whose fields are the family's sizes (each a count
  >= 1, or a tuple of them declared with `counts_field`; validated on construction),
  with a registry `name` (a ClassVar) and:
    level_sizes        tuple, nodes per tree level 1..L (root excluded)
    label              short text for tables, e.g. "W=2 L=3"
    propose(...)       build one DraftTree (see `propose`)
  and optionally
    draft_width        most distinct tokens drawn without replacement from ONE draft
                       distribution (must not exceed the vocabulary); default 1
    verify(...)        the verifier; default recursive rejection sampling
    for_budget / for_depth   the family's tree at a draft budget / depth and width.
  Register a new family with `@register_tree`; nothing else needs to change.

  Raises (on construction):
    ValueError: naming the field, when a size is not an integer >= 1.
  """

  name: ClassVar[str] = ""

  def __post_init__(self):
    for f in dataclasses.fields(self):
      object.__setattr__(
        self,
        f.name,
        _check_shape_field(
          f"{type(self).__name__}.{f.name}", _kind(f), getattr(self, f.name)
        ),
      )

  @property
  def level_sizes(self) -> tuple[int, ...]:
    """Nodes per level 1..L (root excluded); () for no tree."""
    raise NotImplementedError

  @property
  def label(self) -> str:
    """Short text for tables, e.g. "W=2 L=3"."""
    raise NotImplementedError

  @property
  def max_depth(self) -> int:
    """L: levels below the root = most draft tokens one block can accept."""
    return len(self.level_sizes)

  @property
  def budget(self) -> int:
    """Draft tokens the target scores per call (root excluded): sum(level_sizes)."""
    return sum(self.level_sizes)

  @property
  def tree_tokens(self) -> int:
    """M = budget + 1: tokens the target scores per call, root included."""
    return 1 + self.budget

  @property
  def draft_width(self) -> int:
    """Most distinct tokens drawn without replacement from one draft distribution."""
    return 1

  @property
  def uses_draft(self) -> bool:
    """False for plain autoregressive sampling (no draft model, no tree)."""
    return self.max_depth > 0

  def propose(
    self,
    key: Array,
    root_token: Array,
    q_root_V: Array,
    draft_fn: DraftFn,
    draft_state: Any,
  ) -> tuple[DraftTree, Any]:
    """Build one draft tree of this shape below `root_token`.

    Args:
      key: PRNG key.
      root_token: int32 scalar, the last committed token (node 0).
      q_root_V: [V] float, the draft's next-token distribution after the root.
      draft_fn: `draft_fn(state, tokens_N, parents_N) -> (state, q_NxV)` (module
        docstring), called once per non-leaf level below the root.
      draft_state: pytree threaded through draft_fn.
    Returns:
      (DraftTree with M = tree_tokens nodes in BFS order, final draft_state).
    Raises:
      ValueError: q_root_V is not one distribution, or draft_width > V.
    """
    raise NotImplementedError

  def verify(self, key: Array, tree: DraftTree, p_MxV: Array) -> "TreeResult":
    """Accepted path and extra token of a tree from `propose`.

    Args:
      key: PRNG key.
      tree: the DraftTree (M nodes).
      p_MxV: [M, V] float, the target's next-token distribution after every node.
    Returns:
      TreeResult: path_D [D] accepted BFS node indices (-1 padded), num_accepted,
      extra_token, tokens_Dp1 [D + 1] (accepted drafts then the extra token, -1
      padded), num_emitted = num_accepted + 1.
    Default: recursive rejection sampling (`verify_tree`); Chain overrides it with
    chain-style verification (`speculative_sample_chain`).
    """
    return verify_tree(key, tree, p_MxV)

  @classmethod
  def for_budget(cls, budget: int, width: int) -> "TreeShape":
    """This family's tree drafting about `budget` tokens per call at `width`."""
    raise ValueError(f"tree method {cls.name!r} has no tree to size by budget")

  @classmethod
  def for_depth(cls, depth: int, width: int) -> "TreeShape":
    """This family's tree of `depth` levels and about `width` leaves."""
    raise ValueError(f"tree method {cls.name!r} has no tree to size by depth")


TREES: dict[str, type[TreeShape]] = {}


def register_tree(cls: type[TreeShape]) -> type[TreeShape]:
  """Class decorator: make a TreeShape family known by its `name` (CLI, SpecConfig)."""
  if not (isinstance(cls, type) and issubclass(cls, TreeShape)) or not cls.name:
    raise ValueError(f"register_tree needs a named TreeShape subclass, got {cls!r}")
  if cls.name in TREES:
    raise ValueError(f"tree method {cls.name!r} is already registered")
  TREES[cls.name] = cls
  return cls


def _tree_class(name: str, owner: Optional[str]) -> type[TreeShape]:
  if not isinstance(name, str) or name not in TREES:
    what = f"{owner}.method" if owner else "tree method"
    raise ValueError(f"{what} must be one of {tuple(TREES)}, got {name!r}")
  return TREES[name]


def make_tree(name: str, owner: Optional[str] = None, **kwargs) -> TreeShape:
  """The registry: build the tree shape registered as `name` from its fields.

  `make_tree("rsd_s", beam_width=4, depth=3) == RSDS(beam_width=4, depth=3)`; fields
  not given take the class defaults. `owner` (e.g. "SpecConfig") names the caller's
  fields in error messages ("SpecConfig.gamma must be ...").

  Raises:
    ValueError: unknown name (lists the known ones), a field the family does not
      have, or a size that is not an integer >= 1 (naming the field).
  """
  cls = _tree_class(name, owner)
  kinds = {f.name: _kind(f) for f in dataclasses.fields(cls)}
  checked = {}
  for f, v in kwargs.items():
    if f not in kinds:
      raise ValueError(
        f"{owner + '.' if owner else ''}{f} does not apply to tree method "
        f"{name!r} (its fields: {tuple(kinds)})"
      )
    checked[f] = _check_shape_field(f"{owner or cls.__name__}.{f}", kinds[f], v)
  return cls(**checked)


def tree_for_budget(name: str, budget: int, width: int) -> TreeShape:
  """The `name` family's tree that drafts exactly `budget` tokens per target call (root
  excluded), `width` wide (chain: width unused; iid: width chains; rsd_s: beam width;
  rsd_c: width children at the root, single children below).

  Raises:
    ValueError: unknown name, a non-positive budget / width, or a budget the family
      cannot spend exactly at this width (e.g. iid at budget 10, width 4).
  """
  shape = _tree_class(name, None).for_budget(
    check_int("budget", budget, lo=1), check_int("width", width, lo=1)
  )
  if shape.budget != budget:
    raise ValueError(
      f"method {name!r} cannot spend exactly {budget} draft tokens per "
      f"call at width {width} (its tree would draft {shape.budget})"
    )
  return shape


def tree_for_depth(name: str, depth: int, width: int) -> TreeShape:
  """The `name` family's tree of exactly `depth` levels with `width` leaves (chain: 1;
  rsd_c: width's prime factors as the first branchings, then single children).

  Raises:
    ValueError: unknown name, non-positive depth / width, or a depth the family cannot
      reach exactly at this width (rsd_c at width 4 needs depth >= 2).
  """
  shape = _tree_class(name, None).for_depth(
    check_int("depth", depth, lo=1), check_int("width", width, lo=1)
  )
  if shape.max_depth != depth:
    raise ValueError(
      f"method {name!r} at width {width} has {shape.max_depth} levels, "
      f"not depth {depth}"
    )
  return shape


def _prime_factors(n: int) -> tuple[int, ...]:
  out, p = [], 2
  while n > 1:
    while n % p == 0:
      out.append(p)
      n //= p
    p += 1
  return tuple(out)


@register_tree
@dataclasses.dataclass(frozen=True)
class Autoregressive(TreeShape):
  """No draft: one token sampled from the target per call (the baseline). Its tree is
  the root alone (M = 1) and `verify` samples the extra token from p at the root."""

  name: ClassVar[str] = "autoregressive"

  @property
  def level_sizes(self):
    return ()

  @property
  def label(self):
    return "-"

  @property
  def draft_width(self):
    return 0

  def propose(self, key, root_token, q_root_V, draft_fn, draft_state):
    del key, draft_fn
    _check_root(q_root_V)
    tree = DraftTree(
      jnp.asarray(root_token, jnp.int32)[None],
      jnp.array([-1], jnp.int32),
      jnp.zeros((1,), jnp.int32),
      q_root_V[None],
      max_depth=0,
      max_children=0,
      without_replacement=False,
    )
    return tree, draft_state

  def verify(self, key, tree, p_MxV):
    u = jax.random.uniform(key, (), dtype=p_MxV.dtype)
    y = _sample_from_uniform(u, p_MxV[0])
    return TreeResult(
      jnp.zeros((0,), jnp.int32), jnp.int32(0), y, y[None], jnp.int32(1)
    )


@register_tree
@dataclasses.dataclass(frozen=True)
class Chain(TreeShape):
  """Single draft chain of `gamma` tokens (Leviathan et al. 2023 / Chen et al. 2023),
  verified by `speculative_sample_chain`. Level sizes (1,) * gamma."""

  name: ClassVar[str] = "chain"
  gamma: int = 4

  @property
  def level_sizes(self):
    return (1,) * self.gamma

  @property
  def label(self):
    return f"gamma={self.gamma}"

  def propose(self, key, root_token, q_root_V, draft_fn, draft_state):
    return build_iid_tree(
      key, root_token, q_root_V, draft_fn, draft_state, 1, self.gamma
    )

  def verify(self, key, tree, p_MxV):
    """Chain-style verification (`speculative_sample_chain`); the path is BFS 1..n."""
    toks_G, q_GxV = chain_from_tree(tree)
    res = speculative_sample_chain(key, toks_G, q_GxV, p_MxV)
    G, n = self.gamma, res.num_accepted
    path_G = jnp.where(jnp.arange(G) < n, jnp.arange(1, G + 1), -1).astype(jnp.int32)
    return TreeResult(path_G, n, res.tokens_Gp1[n], res.tokens_Gp1, res.num_emitted)

  @classmethod
  def for_budget(cls, budget, width):
    del width
    return cls(budget)

  @classmethod
  def for_depth(cls, depth, width):
    del width
    return cls(depth)


class _UniformTree(TreeShape):
  """A family whose trees have `depth` levels of the same width (IIDTree, RSDS):
  subclasses declare the width field first and `depth` second, name the width in
  `_level_width` and the builder `(key, root_token, q_root_V, draft_fn,
  draft_state, width, depth)` in `_build`."""

  _build: ClassVar[Callable]

  @property
  def _level_width(self) -> int:
    raise NotImplementedError

  @property
  def level_sizes(self):
    return (self._level_width,) * self.depth

  def propose(self, key, root_token, q_root_V, draft_fn, draft_state):
    return self._build(
      key, root_token, q_root_V, draft_fn, draft_state, self._level_width, self.depth
    )

  @classmethod
  def for_budget(cls, budget, width):
    return cls(width, budget // width)

  @classmethod
  def for_depth(cls, depth, width):
    return cls(width, depth)


@register_tree
@dataclasses.dataclass(frozen=True)
class IIDTree(_UniformTree):
  """`num_drafts` i.i.d. chains of length `depth` (SpecInfer-style), RRS with
  replacement (`build_iid_tree`). Level sizes (num_drafts,) * depth."""

  name: ClassVar[str] = "iid"
  _build: ClassVar[Callable] = staticmethod(build_iid_tree)
  num_drafts: int = 2
  depth: int = 3

  @property
  def _level_width(self):
    return self.num_drafts

  @property
  def label(self):
    return f"k={self.num_drafts} d={self.depth}"


@register_tree
@dataclasses.dataclass(frozen=True)
class RSDC(TreeShape):
  """RSD-C (Jeon et al. 2024): Gumbel-Top-b_l children at every node of level l-1,
  RRS without replacement (`build_rsdc_tree`). Level l has b_1 * ... * b_l nodes."""

  name: ClassVar[str] = "rsd_c"
  branching: tuple = counts_field((2, 2))

  @property
  def level_sizes(self):
    sizes, n = [], 1
    for b in self.branching:
      n *= b
      sizes.append(n)
    return tuple(sizes)

  @property
  def label(self):
    return f"b={list(self.branching)}"

  @property
  def draft_width(self):
    return max(self.branching)

  def propose(self, key, root_token, q_root_V, draft_fn, draft_state):
    return build_rsdc_tree(
      key, root_token, q_root_V, draft_fn, draft_state, self.branching
    )

  @classmethod
  def for_budget(cls, budget, width):
    """width children at the root, then one child each: width * (budget // width)."""
    return cls((width,) + (1,) * (budget // width - 1))

  @classmethod
  def for_depth(cls, depth, width):
    """width's prime factors as the first branchings ((2, 2) for 4), then 1s."""
    f = _prime_factors(width)
    return cls(f + (1,) * max(depth - len(f), 0))


@register_tree
@dataclasses.dataclass(frozen=True)
class RSDS(_UniformTree):
  """RSD-S: stochastic beam search of width `beam_width` for `depth` levels, RRS
  without replacement (`build_rsds_tree`). Level sizes (beam_width,) * depth."""

  name: ClassVar[str] = "rsd_s"
  _build: ClassVar[Callable] = staticmethod(build_rsds_tree)
  beam_width: int = 2
  depth: int = 3

  @property
  def _level_width(self):
    return self.beam_width

  @property
  def label(self):
    return f"W={self.beam_width} L={self.depth}"

  @property
  def draft_width(self):
    return self.beam_width


# ----------------------------------------------------------------------------------
# Toy decode loop (bigram target and draft): exactness tests and block efficiency
# ----------------------------------------------------------------------------------


class ToyDecode(NamedTuple):
  tokens_K: Array  # first K emitted tokens
  num_blocks: Array  # target calls (blocks) needed for K tokens
  num_emitted: Array  # tokens emitted by those blocks (>= K, the last may overshoot)
  first_block_emitted: Array  # tokens emitted by the first block (from start_token)


def bigram_generate(
  key: Array,
  shape,
  target_VxV: Array,
  draft_VxV: Array,
  start_token,
  num_tokens: int,
  **tree_kwargs,
) -> ToyDecode:
  """Speculative decoding of num_tokens tokens with bigram target and draft tables.

  Args:
    key: PRNG key.
    shape: a TreeShape, or a registry name whose fields are `tree_kwargs`
      (`make_tree(shape, **tree_kwargs)`).
    target_VxV, draft_VxV: [V, V] float, p(next | token) per row (rows sum to 1).
    start_token: int, the token before the first emitted one.
    num_tokens: K, tokens to emit.
  Returns:
    ToyDecode (first K tokens, blocks, tokens emitted by them, first block's count).

  Runs num_tokens blocks (each emits >= 1 token) in a lax.scan; blocks after the first
  num_tokens tokens are computed but ignored. Each block is `shape.propose` then
  `shape.verify`. One sequence: vmap for a batch.

  Raises:
    ValueError: tables not [V, V], or a bad shape / name / field (`make_tree`).
  """
  V = target_VxV.shape[0]
  if target_VxV.shape != (V, V) or draft_VxV.shape != (V, V):
    raise ValueError(f"tables must be (V, V): {target_VxV.shape}, {draft_VxV.shape}")
  if isinstance(shape, str):
    shape = make_tree(shape, **tree_kwargs)
  elif tree_kwargs:
    raise ValueError(
      f"tree fields {tuple(tree_kwargs)} given with a TreeShape {shape!r}"
    )
  if not isinstance(shape, TreeShape):
    raise ValueError(f"shape must be a TreeShape or a tree method name, got {shape!r}")
  draft_fn = table_draft_fn(draft_VxV)
  D = shape.max_depth
  buf = jnp.full((num_tokens + D + 1,), -1, jnp.int32)

  def block(carry, key_b):
    buf, pos, last, nblk, nemit, first = carry
    k_t, k_v = jax.random.split(key_b)
    tree, _ = shape.propose(k_t, last, draft_VxV[last], draft_fn, None)
    res = shape.verify(k_v, tree, target_VxV[tree.token_M])
    tok_Dp1, n_emit = res.tokens_Dp1, res.num_emitted
    live = pos < num_tokens
    new_buf = lax.dynamic_update_slice(buf, tok_Dp1, (pos,))
    buf = jnp.where(live, new_buf, buf)
    last = jnp.where(live, tok_Dp1[n_emit - 1], last)
    live_i = live.astype(jnp.int32)
    first = jnp.where(nblk == 0, n_emit, first)
    return (
      buf,
      pos + live_i * n_emit,
      last,
      nblk + live_i,
      nemit + live_i * n_emit,
      first,
    ), None

  init = (
    buf,
    jnp.int32(0),
    jnp.asarray(start_token, jnp.int32),
    jnp.int32(0),
    jnp.int32(0),
    jnp.int32(0),
  )
  (buf, _, _, nblk, nemit, first), _ = lax.scan(
    block, init, jax.random.split(key, num_tokens)
  )
  return ToyDecode(buf[:num_tokens], nblk, nemit, first)
