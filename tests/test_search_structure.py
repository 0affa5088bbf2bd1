"""Beam search / DVTS / A*: sampling values are traced (a temperature sweep
compiles once), the traced settings really reach the sampler, and the
pluggable pieces (A* costs / heuristics, beam vs DVTS group rules) behave
like the config names they stand for.

References are independent of the code under test: greedy decoding from one
prompt gives identical candidates (so temperature 0 must make every row of a
problem agree), and exhaustive enumeration / the closed-form g for the A*
objects.
"""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms import astar, beam_search
from algorithms.astar import AStarConfig, run_astar
from algorithms.beam_search import BeamConfig, run_beam_search
from algorithms.scorers import ConfidenceScorer
from jaxllm import BigramLM

V, EOS, DELIM = 6, 5, 4


def _table(seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(V, V)) * 1.5, jnp.float32)


def _beam(temperature, seed, **kw):
  cfg = BeamConfig(
    n_paths=4,
    beam_width=2,
    max_steps=3,
    max_step_tokens=3,
    delimiter_ids=(DELIM,),
    stop_ids=(EOS,),
    sampling_temperature=temperature,
    return_trace=True,
    **kw,
  )
  return run_beam_search(
    BigramLM(V),
    _table(),
    ConfidenceScorer(),
    None,
    [[0], [1, 2]],
    jax.random.key(seed),
    cfg,
  )[0]


def test_beam_temperature_sweep_traces_once():
  _beam(1.0, 0)
  before = beam_search.TRACE_COUNT["beam_search"]
  _beam(0.7, 0)
  _beam(0.0, 1)
  assert beam_search.TRACE_COUNT["beam_search"] == before


@pytest.mark.parametrize("method", ["beam", "dvts"])
def test_beam_traced_temperature_reaches_the_sampler(method):
  """Temperature 0: the round-0 candidates of a problem are N greedy copies
  of one step; temperature 5 on a 6-token vocabulary: they are not."""
  cold = jax.tree_util.tree_map(np.asarray, _beam(0.0, 3, method=method).trace)
  hot = jax.tree_util.tree_map(np.asarray, _beam(5.0, 3, method=method).trace)
  for p in range(2):
    rows = slice(4 * p, 4 * p + 4)
    assert (cold["cand_tokens"][0, rows] == cold["cand_tokens"][0, 4 * p]).all()
  assert any(
    (hot["cand_tokens"][0, 4 * p : 4 * p + 4] != hot["cand_tokens"][0, 4 * p]).any()
    for p in range(2)
  )


def test_group_rules_are_the_config_names():
  cfg = BeamConfig(n_paths=8, beam_width=2, stop_ids=(1,))
  assert (cfg.group_size, cfg.keep) == (8, 4)
  dv = dataclasses.replace(cfg, method="dvts")
  assert (dv.group_size, dv.keep) == (2, 1)
  assert beam_search.METHODS == tuple(beam_search.GROUP_RULES)


def _astar(temperature, seed, **kw):
  cfg = AStarConfig(
    expansion="sample",
    num_children=3,
    capacity=8,
    max_step_tokens=2,
    max_solution_tokens=6,
    delimiter_ids=(DELIM,),
    stop_ids=(EOS,),
    heuristic="zero",
    prm_weight=0.0,
    lm_weight=1.0,
    temperature=temperature,
    **kw,
  )
  return run_astar(
    BigramLM(V),
    _table(1),
    ConfidenceScorer(),
    None,
    [[0], [2, 3]],
    jax.random.key(seed),
    cfg,
  )[0]


def _answers(res):
  tok, n = np.asarray(res.tokens), np.asarray(res.length)
  return [tuple(tok[i, : n[i]]) for i in range(tok.shape[0])]


def test_astar_temperature_and_budget_sweep_traces_once():
  _astar(1.0, 0)
  before = astar.TRACE_COUNT["astar"]
  _astar(0.5, 0)
  _astar(0.0, 0, token_budget=10.0, expected_total_steps=2.0)
  assert astar.TRACE_COUNT["astar"] == before


def test_astar_traced_temperature_reaches_the_sampler():
  """Temperature 0: every child of a state is the same greedy step, so the
  whole search is deterministic (the key does not matter); at temperature 5
  different keys give different searches."""
  cold = {_answers(_astar(0.0, s))[0] for s in range(4)}
  assert len(cold) == 1
  hot = [
    (_answers(r), np.asarray(r.expanded).tolist())
    for r in (_astar(5.0, s) for s in range(4))
  ]
  assert len({repr(h) for h in hot}) > 1


@dataclasses.dataclass(frozen=True)
class DoubleSum:
  """A user path cost: twice the summed step cost (same optimum as 'sum')."""

  def g(self, cost_N, depth_N):
    del depth_N
    return 2.0 * cost_N


def test_registry_names_resolve_to_objects():
  assert isinstance(astar.resolve("g_mode", "sum"), astar.SumCost)
  assert isinstance(astar.resolve("g_mode", "mean"), astar.MeanCost)
  assert isinstance(astar.resolve("heuristic", "zero"), astar.ZeroHeuristic)
  assert isinstance(astar.resolve("heuristic", "latest"), astar.LatestStepHeuristic)
  obj = DoubleSum()
  assert astar.resolve("g_mode", obj) is obj
  with pytest.raises(ValueError, match=r"AStarConfig\.g_mode"):
    AStarConfig(g_mode="median")
  with pytest.raises(ValueError, match=r"AStarConfig\.g_mode"):
    AStarConfig(g_mode=lambda c, d: c)  # no g method
  with pytest.raises(ValueError, match=r"AStarConfig\.heuristic"):
    AStarConfig(heuristic=3)


def test_builtin_objects_compute_the_documented_formulas():
  cost = jnp.array([3.0, 6.0, 0.5])
  depth = jnp.array([0, 3, 1])
  np.testing.assert_allclose(astar.SumCost().g(cost, depth), [3.0, 6.0, 0.5])
  np.testing.assert_allclose(astar.MeanCost().g(cost, depth), [3.0, 2.0, 0.5])
  inp = astar.HeuristicInput(
    tokens=jnp.zeros((3, 2), jnp.int32),
    length=depth,
    depth=depth,
    last_score=jnp.array([0.5, 0.25, 1.0]),
    last_token=depth,
    complete=jnp.zeros((3,), bool),
    problem=depth,
    g=cost,
    expected_total_steps=jnp.float32(2.5),
  )
  want = [np.log(2) * 2.5, np.log(4) * 1.0, 0.0]  # max(E - d, 1)
  np.testing.assert_allclose(astar.LatestStepHeuristic()(None, inp), want, rtol=1e-6)
  np.testing.assert_array_equal(astar.ZeroHeuristic()(None, inp), 0.0)


def test_objects_and_names_give_the_same_search():
  """heuristic / g_mode given as objects equal their registry names; a user
  g object (twice the sum) is used as given: with h = 0, non-negative costs
  and enumeration (uniform-cost search) the answer is the complete solution
  of least cost (exhaustive check) and its g is twice that cost."""
  table = _table(2)
  logp = np.asarray(jax.nn.log_softmax(table, -1), np.float64)
  base = dict(
    expansion="enumerate",
    max_solution_tokens=3,
    stop_ids=(EOS,),
    capacity=512,
    prm_weight=0.0,
    lm_weight=1.0,
  )
  run = lambda **kw: run_astar(
    BigramLM(V),
    table,
    ConfidenceScorer(),
    None,
    [[0], [3]],
    jax.random.key(0),
    AStarConfig(**base, **kw),
  )[0]
  for name in ("sum", "mean"):
    by_name = run(g_mode=name, heuristic="zero")
    by_obj = run(g_mode=astar.resolve("g_mode", name), heuristic=astar.ZeroHeuristic())
    assert _answers(by_name) == _answers(by_obj)
    np.testing.assert_array_equal(by_name.expanded, by_obj.expanded)
    np.testing.assert_array_equal(by_name.g, by_obj.g)
  double = run(g_mode=DoubleSum(), heuristic="zero")
  for i, start in enumerate((0, 3)):
    best, best_cost = None, np.inf
    for n in range(3):  # at most 2 steps before the stop (L = 3)
      for prefix in itertools.product([t for t in range(V) if t != EOS], repeat=n):
        seq, last, total = prefix + (EOS,), start, 0.0
        for x in seq:
          total, last = total - logp[last, x], x
        if total < best_cost:
          best, best_cost = seq, total
    assert _answers(double)[i] == best
    np.testing.assert_allclose(float(double.g[i]), 2 * best_cost, rtol=1e-5)
