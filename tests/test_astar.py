"""A*-decoding against exhaustive enumeration and a Python best-first search.

Toy problems: the BigramLM over V = 4 tokens, one token = one step (enumerate
mode), token 3 = STOP, at most L = 4 solution tokens; a synthetic
non-negative step cost c[problem, prev, tok] delivered by a toy scorer as
r = exp(-c), so g = sum of -log r = path cost.
"""

import dataclasses
import heapq
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms import astar
from algorithms.astar import AStarConfig, run_astar
from algorithms.scorers import ConfidenceScorer, ModelStepScorer
from jaxllm import BigramLM, ModelConfig, Transformer, abstract_params, forward
from jaxllm import flops as flops_lib
from jaxllm.cache import take_rows
from jaxllm.reward import RewardModel, RewardParams

V, STOP, L = 4, 3, 4
P = 24  # random instances, searched in one call


@dataclasses.dataclass(frozen=True)
class ToyCostScorer:
  """Score of a step = exp(-sum of c[problem, prev, tok] over its tokens).
  params: c [P, V, V] >= 0. State: (problem [B], last token [B])."""

  def init(self, params, tokens_BxT, lengths_B, cache_size):
    B = tokens_BxT.shape[0]
    return (jnp.arange(B), tokens_BxT[jnp.arange(B), lengths_B - 1])

  def score(self, params, state, step, active_B):
    prob, last = state
    cost = jnp.zeros(last.shape, jnp.float32)
    for s in range(step.tokens.shape[1]):
      ok = active_B & (s < step.length)
      tok = step.tokens[:, s]
      cost = cost + jnp.where(ok, params[prob, last, tok], 0.0)
      last = jnp.where(ok, tok, last)
    return (prob, last), jnp.exp(-cost)

  def reorder(self, state, index_N):
    return tuple(take_rows(x, index_N) for x in state)


def table_heuristic(hp_PxVxL1, inp):
  return hp_PxVxL1[inp.problem, inp.last_token, inp.length]


def make_instances(seed, n=P):
  rng = np.random.default_rng(seed)
  cost = rng.uniform(0.1, 2.0, (n, V, V)).astype(np.float32)
  lengths = rng.integers(1, 3, n)
  tokens = rng.integers(0, STOP, (n, 2))  # prompts never contain STOP
  table = rng.normal(size=(V, V)).astype(np.float32) * 2
  start = tokens[np.arange(n), lengths - 1]
  return cost, tokens, lengths, table, start


def path_cost(c_VxV, start, seq):
  total, prev = 0.0, start
  for x in seq:
    total, prev = total + float(c_VxV[prev, x]), x
  return total


def exhaustive_optimum(c_VxV, start):
  """Min cost over every complete solution (<= L tokens, STOP only last)."""
  best = np.inf
  for n in range(L):
    for prefix in itertools.product(range(STOP), repeat=n):
      best = min(best, path_cost(c_VxV, start, prefix + (STOP,)))
  return best


def heuristic_tables(cost):
  """h1: one-step lower bound min_x c[last, x]; hstar: exact cost-to-go."""
  n = cost.shape[0]
  h1 = np.broadcast_to(cost.min(2)[:, :, None], (n, V, L + 1)).copy()
  hstar = np.zeros((n, V, L + 1))
  for length in range(L - 1, -1, -1):
    for last in range(V):
      best = cost[:, last, STOP].astype(np.float64)
      if length + 2 <= L:
        for x in range(STOP):
          best = np.minimum(best, cost[:, last, x] + hstar[:, x, length + 1])
      hstar[:, last, length] = best
  return h1.astype(np.float32), hstar.astype(np.float32)


def ref_search(
  c,
  logp,
  start,
  *,
  g_mode="sum",
  h=None,
  prm_w=1.0,
  lm_w=0.0,
  tok_cost=0.0,
  capacity=10**9,
  call_budget=np.inf,
):
  """Python best-first search with the same rules (float64, heapq, seq ties).

  Returns (by_search, tokens, expanded)."""
  h = h or (lambda last, length, depth, r: 0.0)
  # state: (tokens, last, cost_sum, depth, complete)
  heap = [(h(start, 0, 0, 1.0), 0, ((), start, 0.0, 0, False))]
  seq, calls, expanded = 1, 0, 0
  while heap and calls < call_budget:
    f, _, (toks, last, csum, depth, done) = heapq.heappop(heap)
    if done:
      return True, toks, expanded
    expanded += 1
    for x in range(V):
      complete = x == STOP
      if not complete and len(toks) + 2 > L:
        continue  # dead: no room for another step (not scored)
      calls += 1
      cc = (
        csum + prm_w * c[last, x] + tok_cost + (lm_w * -logp[last, x] if lm_w else 0.0)
      )
      g = cc if g_mode == "sum" else cc / (depth + 1)
      r = np.exp(-c[last, x])
      hh = 0.0 if complete else h(x, len(toks) + 1, depth + 1, r)
      heapq.heappush(heap, (g + hh, seq, (toks + (x,), x, cc, depth + 1, complete)))
      seq += 1
    heap = heapq.nsmallest(capacity, heap)
    heapq.heapify(heap)
  if heap:
    _, _, (toks, last, _, _, done) = min(heap)
  else:
    toks, last, done = (), start, False
  while not done and len(toks) < L:  # greedy fallback
    x = int(np.argmax(logp[last]))
    toks, last, done = toks + (x,), x, x == STOP
  return False, toks, expanded


def answers(res):
  tok, n = np.asarray(res.tokens), np.asarray(res.length)
  return [tuple(int(t) for t in tok[i, : n[i]]) for i in range(tok.shape[0])]


def run_toy(cfg, cost, tokens, lengths, table, hparams=None, seed=0):
  return run_astar(
    BigramLM(V),
    jnp.asarray(table),
    ToyCostScorer(),
    jnp.asarray(cost),
    jnp.asarray(tokens),
    jax.random.key(seed),
    cfg,
    prompt_lengths=jnp.asarray(lengths),
    heuristic_params=hparams,
  )


TOY = dict(expansion="enumerate", max_solution_tokens=L, stop_ids=(STOP,), capacity=128)


@pytest.mark.parametrize("seed", [0, 1])
def test_astar_optimal_and_expands_no_more_than_ucs(seed):
  cost, tokens, lengths, table, start = make_instances(seed)
  h1, hstar = heuristic_tables(cost)
  cfg = AStarConfig(heuristic=table_heuristic, **TOY)
  runs = {
    name: run_toy(cfg, cost, tokens, lengths, table, jnp.asarray(h))[0]
    for name, h in [("ucs", np.zeros_like(h1)), ("h1", h1), ("hstar", hstar)]
  }
  tables = dict(ucs=np.zeros_like(h1), h1=h1, hstar=hstar)
  for name, res in runs.items():
    assert np.asarray(res.by_search).all() and np.asarray(res.complete).all()
    for i, sol in enumerate(answers(res)):
      opt = exhaustive_optimum(cost[i], start[i])
      assert sol[-1] == STOP and STOP not in sol[:-1] and len(sol) <= L
      assert abs(path_cost(cost[i], start[i], sol) - opt) < 1e-5, (name, i)
      assert abs(float(res.g[i]) - opt) < 1e-4
      hi = tables[name][i]
      _, ref_sol, ref_exp = ref_search(
        cost[i].astype(np.float64),
        None,
        start[i],
        h=lambda last, n, d, r, hi=hi: float(hi[last, n]),
      )
      assert ref_sol == sol and ref_exp == int(res.expanded[i]), (name, i)
  e = {k: np.asarray(r.expanded) for k, r in runs.items()}
  assert (e["h1"] <= e["ucs"]).all() and (e["hstar"] <= e["h1"]).all()
  assert e["hstar"].sum() < e["ucs"].sum()  # the heuristic does prune


@pytest.mark.parametrize(
  "variant",
  [
    dict(g_mode="sum", heuristic="latest", expected_total_steps=3.0, lm_weight=0.5),
    dict(g_mode="mean", heuristic="zero", capacity=6),
    # MAP-like search with a per-token price; the h = 0 table reuses the
    # first test's compiled search (only traced fields differ).
    dict(
      g_mode="sum",
      heuristic=table_heuristic,
      prm_weight=0.0,
      lm_weight=1.0,
      token_cost=0.3,
    ),
  ],
)
def test_builtin_costs_match_reference(variant):
  cost, tokens, lengths, table, start = make_instances(7)
  cfg = AStarConfig(**{**TOY, **variant})
  h0 = jnp.zeros((P, V, L + 1)) if callable(cfg.heuristic) else None
  res, _ = run_toy(cfg, cost, tokens, lengths, table, h0)
  logp = np.asarray(jax.nn.log_softmax(jnp.asarray(table), -1), np.float64)
  E = variant.get("expected_total_steps", 0.0)
  latest = lambda last, n, d, r: -np.log(r) * max(E - d, 1.0)
  evicted = 0
  for i, sol in enumerate(answers(res)):
    by, ref_sol, ref_exp = ref_search(
      cost[i].astype(np.float64),
      logp,
      start[i],
      g_mode=cfg.g_mode,
      h=latest if cfg.heuristic == "latest" else None,
      prm_w=cfg.prm_weight,
      lm_w=cfg.lm_weight,
      tok_cost=cfg.token_cost,
      capacity=cfg.capacity,
    )
    assert (by, ref_sol, ref_exp) == (
      bool(res.by_search[i]),
      sol,
      int(res.expanded[i]),
    ), i
    evicted += int(res.evicted[i])
  if cfg.capacity < 128:
    assert evicted > 0  # eviction was exercised


def test_batched_pops_stay_optimal():
  cost, tokens, lengths, table, start = make_instances(3)
  h1, _ = heuristic_tables(cost)
  cfg = AStarConfig(heuristic=table_heuristic, pop_batch=3, **TOY)
  res, _ = run_toy(cfg, cost, tokens, lengths, table, jnp.asarray(h1))
  assert np.asarray(res.by_search).all()
  for i, sol in enumerate(answers(res)):
    opt = exhaustive_optimum(cost[i], start[i])
    assert abs(path_cost(cost[i], start[i], sol) - opt) < 1e-5, i


CANDS = ((0,), (1, 2), (2, 0), (1, STOP), (STOP,))


def test_candidate_steps_find_the_optimum():
  """Enumerate mode over multi-token candidate steps (ragged extend), cost =
  toy PRM cost + 0.5 * (-log p) under the bigram; UCS must return the best
  concatenation of candidates (exhaustive DFS)."""
  Lc, S = 6, 2
  cost, tokens, lengths, table, start = make_instances(11)
  logp = np.asarray(jax.nn.log_softmax(jnp.asarray(table), -1), np.float64)
  cfg = AStarConfig(
    expansion="enumerate",
    candidate_steps=CANDS,
    max_solution_tokens=Lc,
    stop_ids=(STOP,),
    capacity=128,
    heuristic="zero",
    lm_weight=0.5,
  )
  res, _ = run_toy(cfg, cost, tokens, lengths, table)

  def step_cost(i, last, cand):
    total = 0.0
    for x in cand:
      total, last = total + cost[i, last, x] + 0.5 * -logp[last, x], x
    return total

  def best(i, last, length):  # min cost to finish from a state (DFS)
    out = np.inf
    for cand in CANDS:
      m, c = length + len(cand), step_cost(i, last, cand)
      if cand[-1] == STOP:
        out = min(out, c)
      elif m + S <= Lc:
        out = min(out, c + best(i, cand[-1], m))
    return out

  assert np.asarray(res.by_search).all()
  for i, sol in enumerate(answers(res)):
    # Split the answer back into candidates and price it.
    rest, last, total = sol, start[i], 0.0
    while rest:
      cand = next(c for c in CANDS if rest[: len(c)] == c)
      total, last, rest = total + step_cost(i, last, cand), cand[-1], rest[len(cand) :]
    opt = best(i, start[i], 0)
    assert abs(total - opt) < 1e-4 and abs(float(res.g[i]) - opt) < 1e-4, i


def test_fallback_when_budget_is_tiny():
  cost, tokens, lengths, table, start = make_instances(5)
  logp = np.asarray(jax.nn.log_softmax(jnp.asarray(table), -1), np.float64)
  cfg0 = AStarConfig(heuristic=table_heuristic, **TOY)  # h = 0 table: UCS
  h0 = jnp.zeros((P, V, L + 1))
  n_fallback = 0
  for budget in (0.0, V, 2 * V):  # prompt only, one, two expansions
    cfg = dataclasses.replace(cfg0, scorer_call_budget=budget)
    res, comp = run_toy(cfg, cost, tokens, lengths, table, h0)
    if budget == 0.0:
      n_compiled = astar._search_jit._cache_size()
    assert astar._search_jit._cache_size() == n_compiled  # budgets are traced
    for i, sol in enumerate(answers(res)):
      by, ref_sol, ref_exp = ref_search(
        cost[i].astype(np.float64), logp, start[i], call_budget=budget
      )
      assert (by, ref_sol, ref_exp) == (
        bool(res.by_search[i]),
        sol,
        int(res.expanded[i]),
      ), (budget, i)
      n_fallback += int(res.fallback_tokens[i] > 0)
    assert (np.asarray(res.scorer_calls) <= budget).all()
    assert comp.generated_tokens == float(
      np.sum(res.search_tokens) + np.sum(res.fallback_tokens)
    )
    if budget == 0.0:  # greedy from the prompt
      assert (np.asarray(res.search_length) == 0).all()
  assert n_fallback > 0


TINY = ModelConfig(
  vocab_size=5, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32
)
_forward = jax.jit(forward, static_argnums=2)


def random_params(cfg, seed):
  """Random weights from numpy (init_params' eager init is slow on CPU)."""
  rng = np.random.default_rng(seed)
  leaf = lambda a: jnp.asarray(
    rng.normal(0.0, 0.4, a.shape) if len(a.shape) > 1 else np.ones(a.shape), a.dtype
  )
  return jax.tree_util.tree_map(leaf, abstract_params(cfg))


def test_compute_record_matches_hand_count():
  """Enumerate mode, one problem, budget = one expansion, L = 2: the root
  spawns V one-token children; the best (lm cost, h = 0) is the argmax of the
  root's logits; the fallback adds exactly one greedy token."""
  params = random_params(TINY, 0)
  rparams = RewardParams(
    lm=random_params(TINY, 1),
    head_w=jnp.asarray(np.linspace(-1, 1, 16), jnp.float32),
    head_b=jnp.float32(0.0),
  )
  prompt = jnp.array([[1, 2, 4]])
  # Causal: position 2's logits do not depend on the token after it.
  best = int(jnp.argmax(_forward(params, jnp.array([[1, 2, 4, 0]]), TINY)[0][0, 2]))
  stop = (best + 1) % TINY.vocab_size
  cfg = AStarConfig(
    expansion="enumerate",
    max_solution_tokens=2,
    stop_ids=(stop,),
    heuristic="zero",
    prm_weight=0.0,
    lm_weight=1.0,
    capacity=8,
    scorer_call_budget=5,
  )
  res, comp = run_astar(
    Transformer(TINY),
    params,
    ModelStepScorer(RewardModel(TINY)),
    rparams,
    prompt,
    jax.random.key(2),
    cfg,
  )
  nxt = _forward(params, jnp.array([[1, 2, 4, best]]), TINY)[0][0, -1]
  assert answers(res)[0] == (best, int(jnp.argmax(nxt)))
  assert not bool(res.by_search[0]) and int(res.search_length[0]) == 1
  Vn, d, pf = TINY.vocab_size, flops_lib.decode_flops, flops_lib.prefill_flops
  want = flops_lib.Compute(
    prefill_tokens=3,
    generated_tokens=Vn + 1,
    model_calls=3,
    verifier_tokens=3 + Vn,
    verifier_calls=Vn,
    prefill_flops=float(pf(TINY, 3)),
    decode_flops=float(Vn * d(TINY, 4) + d(TINY, 5)),
    verifier_flops=float(pf(TINY, 3) + Vn * d(TINY, 4)),
  )
  for k, v in dataclasses.asdict(want).items():
    np.testing.assert_allclose(getattr(comp, k), v, rtol=1e-9, err_msg=k)


def test_sample_mode_keeps_pool_rows_exact():
  """Sampled steps, batched pops, a small queue (evictions): the g of the
  returned solution (= -log p of its searched tokens) matches a fresh
  forward pass, and the fallback tokens are the forward pass's argmax, so
  every pool gather kept the KV cache rows aligned with their states."""
  cfg_m = dataclasses.replace(TINY, vocab_size=7)
  params = random_params(cfg_m, 3)
  prompts = jnp.array([[1, 2, 3], [4, 1, 0]])
  lengths = jnp.array([3, 2])
  cfg = AStarConfig(
    expansion="sample",
    num_children=3,
    pop_batch=2,
    capacity=5,
    max_step_tokens=3,
    max_solution_tokens=12,
    delimiter_ids=(5,),
    stop_ids=(6,),
    heuristic="zero",
    prm_weight=0.0,
    lm_weight=1.0,
    token_budget=40,
  )
  res, comp = run_astar(
    Transformer(cfg_m),
    params,
    ConfidenceScorer(),
    None,
    prompts,
    jax.random.key(4),
    cfg,
    prompt_lengths=lengths,
  )
  assert int(np.sum(res.evicted)) > 0
  np.testing.assert_array_equal(
    np.asarray(res.pushed) + np.asarray(res.dead), 3 * np.asarray(res.expanded)
  )
  np.testing.assert_array_equal(res.scorer_calls, res.pushed)
  for i, sol in enumerate(answers(res)):
    seq = list(np.asarray(prompts[i, : lengths[i]])) + list(sol)
    seq = seq + [0] * (15 - len(seq))  # one padded shape (causal: harmless)
    lp = jax.nn.log_softmax(_forward(params, jnp.array([seq]), cfg_m)[0][0], -1)
    n0, m = int(lengths[i]), int(res.search_length[i])
    g = -sum(float(lp[n0 - 1 + t, sol[t]]) for t in range(m))
    np.testing.assert_allclose(float(res.g[i]), g, rtol=1e-4, atol=1e-4)
    for t in range(m, len(sol)):  # greedy fallback
      assert sol[t] == int(jnp.argmax(lp[n0 - 1 + t]))
  assert comp.generated_tokens == float(
    np.sum(res.search_tokens) + np.sum(res.fallback_tokens)
  )


def test_bad_config_raises():
  with pytest.raises(ValueError, match="expansion"):
    AStarConfig(expansion="beam")
  with pytest.raises(ValueError, match="pop_batch"):
    AStarConfig(capacity=2, pop_batch=3)
  with pytest.raises(ValueError, match="heuristic"):
    AStarConfig(heuristic="h2")
  with pytest.raises(ValueError, match="stop token inside"):
    AStarConfig(expansion="enumerate", candidate_steps=((3, 1),), stop_ids=(3,))
  with pytest.raises(ValueError, match="max_solution_tokens"):
    AStarConfig(max_step_tokens=8, max_solution_tokens=4)
  with pytest.raises(ValueError, match="scorer_call_budget"):
    AStarConfig(scorer_call_budget=-1)
  cfg = AStarConfig(expansion="enumerate", stop_ids=(9,), max_solution_tokens=4)
  with pytest.raises(ValueError, match="token ids"):
    run_astar(
      BigramLM(V),
      jnp.zeros((V, V)),
      ConfidenceScorer(),
      None,
      jnp.zeros((1, 1), jnp.int32),
      jax.random.key(0),
      cfg,
    )
  with pytest.raises(ValueError, match="prompt_lengths"):
    run_astar(
      BigramLM(V),
      jnp.zeros((V, V)),
      ConfidenceScorer(),
      None,
      jnp.zeros((1, 2), jnp.int32),
      jax.random.key(0),
      AStarConfig(stop_ids=(3,), max_step_tokens=2, max_solution_tokens=4),
      prompt_lengths=jnp.array([3]),
    )
