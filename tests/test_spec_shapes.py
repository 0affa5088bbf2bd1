"""Speculative tree shapes (algorithms/spec_trees.py): topology, registry, name form.

Every registered family's level sizes, budget and depth are checked against values
worked out by hand (not from the code's own formulas); the legacy name form
(`SpecConfig(method=..., gamma=...)`, `make_tree`) must build the same object as the
class; a built tree must have exactly the advertised topology; a new family is one
registered class that the toy decode loop and SpecConfig accept unchanged.

Shape letters: V vocabulary, M tree nodes (root included), K emitted tokens.
"""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from algorithms import spec_trees as st
from algorithms.speculative import METHODS, SpecConfig

# (shape, the legacy name form, level sizes, draft width) worked out by hand:
# budget = draft tokens per target call (root excluded), M = budget + 1.
HAND = [
  (st.Autoregressive(), ("autoregressive", {}), (), 0),
  (st.Chain(1), ("chain", dict(gamma=1)), (1,), 1),
  (st.Chain(4), ("chain", dict(gamma=4)), (1, 1, 1, 1), 1),
  (st.IIDTree(3, 2), ("iid", dict(num_drafts=3, depth=2)), (3, 3), 1),
  (st.IIDTree(1, 5), ("iid", dict(num_drafts=1, depth=5)), (1, 1, 1, 1, 1), 1),
  (st.RSDC((3, 2)), ("rsd_c", dict(branching=(3, 2))), (3, 6), 3),
  (st.RSDC((4, 2, 2)), ("rsd_c", dict(branching=(4, 2, 2))), (4, 8, 16), 4),
  (st.RSDC((2, 1, 1)), ("rsd_c", dict(branching=(2, 1, 1))), (2, 2, 2), 2),
  (st.RSDS(3, 3), ("rsd_s", dict(beam_width=3, depth=3)), (3, 3, 3), 3),
  (st.RSDS(4, 1), ("rsd_s", dict(beam_width=4, depth=1)), (4,), 4),
]
BUDGETS = {  # sum of the hand level sizes above, in order
  0: 0,
  1: 1,
  2: 4,
  3: 6,
  4: 5,
  5: 9,
  6: 28,
  7: 6,
  8: 9,
  9: 4,
}


def test_registry_is_exactly_the_known_families():
  """A new family must add its hand-computed rows to HAND (this fails until it does)."""
  assert tuple(st.TREES) == ("autoregressive", "chain", "iid", "rsd_c", "rsd_s")
  assert METHODS == tuple(st.TREES)
  assert {type(s).name for s, *_ in HAND} == set(st.TREES)


@pytest.mark.parametrize("i", range(len(HAND)))
def test_level_sizes_and_budget_match_hand_values(i):
  shape, _, sizes, width = HAND[i]
  assert shape.level_sizes == sizes
  assert shape.budget == BUDGETS[i]
  assert shape.tree_tokens == BUDGETS[i] + 1
  assert shape.max_depth == len(sizes)
  assert shape.draft_width == width
  assert shape.uses_draft == (len(sizes) > 0)


@pytest.mark.parametrize("i", range(len(HAND)))
def test_name_form_builds_the_same_object(i):
  shape, (name, kw), _, _ = HAND[i]
  assert st.make_tree(name, **kw) == shape
  assert hash(st.make_tree(name, **kw)) == hash(shape)
  cfg = SpecConfig(method=name, max_new_tokens=5, **kw)
  assert cfg.tree == shape
  assert cfg == SpecConfig(tree=shape, max_new_tokens=5)
  assert hash(cfg) == hash(SpecConfig(tree=shape, max_new_tokens=5))
  assert cfg.draft_calls_per_block == len(HAND[i][2])


def test_name_form_defaults_are_the_old_spec_config_defaults():
  """SpecConfig used to default to gamma=4, num_drafts=2, depth=3, branching=(2, 2),
  beam_width=2 and method="chain"."""
  assert SpecConfig().tree == st.Chain(4)
  assert SpecConfig(method="iid").tree == st.IIDTree(2, 3)
  assert SpecConfig(method="rsd_c").tree == st.RSDC((2, 2))
  assert SpecConfig(method="rsd_s").tree == st.RSDS(2, 3)
  assert SpecConfig(method="rsd_s", depth=5).tree == st.RSDS(2, 5)
  assert SpecConfig(method="rsd_c", branching=[3, 1]).tree == st.RSDC((3, 1))


def test_replace_keeps_or_swaps_the_tree():
  cfg = SpecConfig(method="rsd_s", beam_width=3, depth=2)
  assert dataclasses.replace(cfg, max_new_tokens=7).tree == st.RSDS(3, 2)
  assert dataclasses.replace(cfg, tree=st.Chain(2)).tree == st.Chain(2)


@pytest.mark.parametrize(
  "name,budget,width,want",
  [
    ("chain", 5, 2, st.Chain(5)),
    ("iid", 8, 2, st.IIDTree(2, 4)),
    ("iid", 16, 4, st.IIDTree(4, 4)),
    ("rsd_s", 12, 4, st.RSDS(4, 3)),
    ("rsd_c", 8, 2, st.RSDC((2, 1, 1, 1))),
    ("rsd_c", 16, 4, st.RSDC((4, 1, 1, 1))),
  ],
)
def test_tree_for_budget(name, budget, width, want):
  got = st.tree_for_budget(name, budget, width)
  assert got == want and got.budget == budget


@pytest.mark.parametrize(
  "name,depth,width,want",
  [
    ("chain", 3, 4, st.Chain(3)),
    ("iid", 3, 4, st.IIDTree(4, 3)),
    ("rsd_s", 2, 4, st.RSDS(4, 2)),
    ("rsd_c", 4, 4, st.RSDC((2, 2, 1, 1))),  # 4 leaves
    ("rsd_c", 3, 6, st.RSDC((2, 3, 1))),
    ("rsd_c", 2, 1, st.RSDC((1, 1))),
  ],
)
def test_tree_for_depth(name, depth, width, want):
  got = st.tree_for_depth(name, depth, width)
  assert got == want and got.max_depth == depth


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match="cannot spend exactly 10 draft tokens"):
    st.tree_for_budget("iid", 10, 4)
  with pytest.raises(ValueError, match="not depth 1"):
    st.tree_for_depth("rsd_c", 1, 4)
  with pytest.raises(ValueError, match="no tree to size"):
    st.tree_for_budget("autoregressive", 4, 2)
  with pytest.raises(ValueError, match=r"tree method must be one of \("):
    st.make_tree("beam")
  with pytest.raises(ValueError, match=r"depth does not apply to tree method 'chain'"):
    st.make_tree("chain", depth=3)
  with pytest.raises(ValueError, match=r"Chain\.gamma must be an integer >= 1, got 0"):
    st.Chain(0)
  with pytest.raises(ValueError, match=r"RSDC\.branching must be a non-empty tuple"):
    st.RSDC(())
  with pytest.raises(ValueError, match=r"RSDC\.branching\[1\] must be an integer"):
    st.RSDC((2, 1.5))
  with pytest.raises(ValueError, match=r"SpecConfig\.method must be one of"):
    SpecConfig(method="nope")
  with pytest.raises(ValueError, match=r"SpecConfig\.depth does not apply"):
    SpecConfig(method="chain", depth=3)
  with pytest.raises(ValueError, match=r"SpecConfig\.beam_width must be an integer"):
    SpecConfig(method="rsd_s", beam_width=0)
  with pytest.raises(ValueError, match="not both"):
    SpecConfig(tree=st.Chain(3), gamma=3)
  with pytest.raises(ValueError, match="not both"):
    SpecConfig(tree=st.Chain(3), method="chain")
  with pytest.raises(ValueError, match="must be a spec_trees.TreeShape"):
    SpecConfig(tree="chain")
  with pytest.raises(ValueError, match="already registered"):
    st.register_tree(st.Chain)


# ----------------------------------------------------------------------------------
# Built trees have the advertised topology
# ----------------------------------------------------------------------------------

V = 5
_Q = np.random.default_rng(0).dirichlet(np.ones(V), size=V).astype(np.float32)


@pytest.mark.parametrize("i", range(len(HAND)))
def test_proposed_tree_has_the_advertised_topology(i):
  shape = HAND[i][0]
  if shape.draft_width > V:
    pytest.skip("wider than the toy vocabulary")
  fn = st.table_draft_fn(jnp.asarray(_Q))
  tree, _ = jax.jit(
    lambda k: shape.propose(k, jnp.int32(1), jnp.asarray(_Q[1]), fn, None)
  )(jax.random.key(i))
  depth = np.asarray(tree.depth_M)
  assert depth.shape == (shape.tree_tokens,) and tree.max_depth == shape.max_depth
  np.testing.assert_array_equal(
    np.bincount(depth, minlength=shape.max_depth + 1), (1,) + shape.level_sizes
  )
  par = np.asarray(tree.parent_M)
  assert par[0] == -1 and (depth[par[1:]] == depth[1:] - 1).all()


# ----------------------------------------------------------------------------------
# The baseline and a new family through the toy decode loop
# ----------------------------------------------------------------------------------


def _exact_probs(P, start, K):
  out = []
  for seq in itertools.product(range(P.shape[0]), repeat=K):
    pr, last = 1.0, start
    for t in seq:
      pr, last = pr * float(P[last, t]), t
    out.append(pr)
  return np.array(out)


def _chi2(toks_NxK, probs):
  n, K = toks_NxK.shape
  counts = np.bincount(np.ravel_multi_index(toks_NxK.T, (V,) * K), minlength=V**K)
  assert counts[probs == 0].sum() == 0
  return stats.chisquare(counts, probs / probs.sum() * n).pvalue


def _target():
  P = np.random.default_rng(1).dirichlet(np.ones(V), size=V)
  return (P / P.sum(1, keepdims=True)).astype(np.float32)


def test_autoregressive_baseline_in_the_toy_loop_is_exact():
  """Autoregressive(): one token per block, drawn from the target (2 tokens, V^2
  cells, 20k draws, chi-square at a fixed seed)."""
  P = _target()
  f = jax.jit(
    jax.vmap(
      lambda k: st.bigram_generate(
        k, st.Autoregressive(), jnp.asarray(P), jnp.asarray(_Q), 0, 2
      )
    )
  )
  out = f(jax.random.split(jax.random.key(2), 20_000))
  assert (np.asarray(out.num_blocks) == 2).all()
  assert (np.asarray(out.num_emitted) == 2).all()
  assert _chi2(np.asarray(out.tokens_K), _exact_probs(P, 0, 2)) > 1e-5


def test_a_new_family_is_one_registered_class():
  """A star (width children of the root, nothing below) needs only its class: the
  registry, SpecConfig and the toy loop take it unchanged, and it stays exact."""

  @dataclasses.dataclass(frozen=True)
  class Star(st.TreeShape):
    name = "test_star"
    width: int = 3

    @property
    def level_sizes(self):
      return (self.width,)

    @property
    def label(self):
      return f"star={self.width}"

    @property
    def draft_width(self):
      return self.width

    def propose(self, key, root_token, q_root_V, draft_fn, draft_state):
      return st.build_rsdc_tree(
        key, root_token, q_root_V, draft_fn, draft_state, (self.width,)
      )

  st.register_tree(Star)
  try:
    assert st.make_tree("test_star", width=2) == Star(2)
    assert SpecConfig(method="test_star").tree == Star(3)
    assert Star(4).budget == 4 and Star(4).tree_tokens == 5
    P = _target()
    f = jax.jit(
      jax.vmap(
        lambda k: st.bigram_generate(
          k, "test_star", jnp.asarray(P), jnp.asarray(_Q), 0, 2, width=3
        )
      )
    )
    out = f(jax.random.split(jax.random.key(3), 20_000))
    assert (np.asarray(out.num_emitted) <= 2 * np.asarray(out.num_blocks)).all()
    assert _chi2(np.asarray(out.tokens_K), _exact_probs(P, 0, 2)) > 1e-5
  finally:
    del st.TREES["test_star"]
