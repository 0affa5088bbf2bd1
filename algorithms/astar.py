"""A*-decoding: best-first search over partial solutions, guided by a step scorer.

A *state* is a partial solution at a step boundary (prompt + whole reasoning
steps). Each problem keeps a priority queue of states ordered by f = g + h
(`algorithms.array_queue`, smaller = better). Every iteration pops the B best
states of every problem (B = 1: classic A*; B > 1: batched A*), expands each
into K children (K sampled next steps with `sample_step`, or every candidate
step in enumerate mode), scores each child's new step with the step scorer
(a PRM, or the generator's confidence), and pushes the children back. A
problem stops when a complete solution (its last step ended with a stop token)
is popped, or when its budget is spent; then the best complete solution is
returned, or, if none was found, the best state in the queue is completed
greedily (fallback). Everything (all problems, all iterations, the fallback)
runs in one jitted function: a `lax.while_loop` over search iterations and a
second one for the greedy fallback.

Shape letters (this module)
---------------------------
  P  problems (prompts) searched at once
  Q  queue capacity = pool rows per problem (`capacity`)
  B  states popped and expanded per problem per iteration (`pop_batch`)
  K  children per expanded state (`num_children`, or the candidate count)
  W  = B * K children per problem per iteration
  N  rows of a flat batch: P * W in the working batch, P * Q in the pool
  S  step width: the most tokens one step adds (`step_width`)
  L  solution-token cap (`max_solution_tokens`)
  T  padded prompt length; H = T + L positions (KV slots per row)
  V  vocabulary size

One iteration, step by step (each a function below)
---------------------------------------------------
  _pop       pop the B best states per problem; a popped complete state may
             become the incumbent; pick the states to expand
  _fork      gather K copies of every popped pool row into the working batch
  _expand    one step per working row (sampled, or a teacher-forced candidate)
  _score     score the new steps; children's tokens, costs g and f = g + h
  _push      push the live children (evict-worst keeps the Q best)
  _rebuild_pool   pool slot i <- queue entry i, by one blocked gather
and after the loop: _answer (incumbent, or the best queued state) and
_fallback (greedy completion when no complete state was popped).

State pool (how model states move)
----------------------------------
Each problem owns a pool of Q rows = the queue capacity: the model state row
(KV cache) + next-token logits row + scorer state row + bookkeeping (solution
tokens, length, depth, cost so far) of every queued state. After every push
the pool is rebuilt as ONE gather (`reorder`) from the old pool and the
children, concatenated per problem (problem p's Q pool rows, then its W
children), so that pool slot i holds queue entry i. A popped state's row is
gathered into the working batch (K copies: the fork), expanded there, and its
pool slot is simply not carried over. Evicted states are dropped the same way.
So the pool never needs a free list, rows never alias, and all shapes are
static: P problems x Q rows in the pool, P x B x K rows in the working batch.
Every row gather (the prompts' fork into the pool, the fork into the working
batch, the rebuild, the answer's rows) is blocked per problem: a [P, n] index
relative to the problem's own rows (`jaxllm.cache.take_rows`), so with the
problems split over the `data` mesh axis no gather moves rows between devices
(tests/test_sharding.py checks the rebuild's and the fork's compiled HLO: no
collective). The per-problem concat assumes every leaf of a model / scorer
state has the row axis first, P equal blocks of rows (true of `KVCache`,
`BigramState` and the scorer states here; it is what `reorder = take(axis=0)`
already assumes).

Costs g and heuristics h (small objects; config names via REGISTRY)
-------------------------------------------------------------------
The paper's exact g / h were not available; this is our documented choice.
A child's step cost is
    c = prm_weight * (-log r) + lm_weight * (-log p(step)) + token_cost * n
with r the scorer's score of the new step (clipped to [1e-30, 1]), p(step)
the generator's probability of the step's tokens and n its token count
(`step_cost`). The path cost g of a state with d steps is an object with a
method `g(cost_sum, depth)` (`AStarConfig.g_mode`):
    'sum'  -> SumCost:   g = sum of c          (path cost; A* proper)
    'mean' -> MeanCost:  g = (sum of c) / d    (length-normalised: long
              solutions are not penalised for having more steps)
token_cost > 0 is the other length-aware knob (a per-token price).
The heuristic h estimates what remains (h = 0 for complete states, always);
it is any callable `h(heuristic_params, HeuristicInput) -> float32 [N]`
(`AStarConfig.heuristic`):
    'zero'   -> ZeroHeuristic:        h = 0    (uniform-cost search)
    'latest' -> LatestStepHeuristic:  h = -log r_latest * max(E - d, 1) with
              E = expected_total_steps (the latest step's PRM cost, paid again
              on each step expected to remain; needs prm_weight's scale: it is
              not multiplied by it)
    a user callable, e.g. an exact admissible bound in tests
              (`heuristic_params` is a traced pytree passed to `run_astar`,
              so changing it does not recompile).
A new g or h is one small frozen dataclass (hashable: it is part of the
static config); `REGISTRY` maps the config's string names to the built-in
objects (`resolve`), so configs stay readable.
With 'sum', non-negative costs and an admissible h, the first complete state
popped is optimal among the states the search can reach (tests check this
against exhaustive enumeration). In batched mode (B > 1) a popped complete
state becomes the *incumbent*; the search stops once no queued state has a
smaller f (which keeps optimality), and popped states with f not below the
incumbent's are not expanded.

Budgets, caps and the fallback
------------------------------
Budgets are per problem and are traced arrays (`Knobs`; a sweep does not
recompile): `token_budget` (tokens generated by the search),
`scorer_call_budget` (steps scored) and `max_iterations`; so are the cost
weights, `expected_total_steps` and the sampling settings (a `Sampling`
pytree: a temperature sweep does not recompile either). Budgets are checked
before each iteration, so the last iteration may overshoot by at most B * K
steps. Solution tokens are capped at `max_solution_tokens` (L): a child that
is not complete and has no room for another full step (length + S > L) is
dropped ("dead": neither scored nor pushed). When a problem stops without a
complete solution popped, the best queued state (complete or not; the prompt
itself if the queue is empty) is completed greedily, one temperature-0 token
at a time, until a stop token or L tokens; those tokens are counted
(generated tokens, model calls, FLOPs) but not scored and not charged to the
budget.

Expansion modes
---------------
'sample':    K = num_children steps sampled from the generator (`sample_step`
             with the config's sampling settings; duplicates are not merged).
'enumerate': every candidate step: `candidate_steps` (token tuples, fed with
             one `extend` call: `stepping.forced_step`), or, when None, every
             single vocabulary token (one token = one step). Children the
             generator gives probability 0 are dropped. For exactness tests
             and small action spaces.

What is counted (`jaxllm.flops.Compute`)
----------------------------------------
prefill_tokens: prompt tokens (one prefill of P rows); generated_tokens: every
token appended to a row (children's steps, including children later dropped,
and fallback tokens); model_calls: batched generator calls (1 prefill + one per
decode position of each iteration's expansion + one per fallback token);
verifier_calls: steps scored (dead children are not scored; this is also what
`scorer_call_budget` counts; the scorer's own prefill is not a call);
verifier_tokens: prompt + scored step tokens, when the scorer runs a model (it
has a `.model`); 0 for the stateless `ConfidenceScorer`. FLOPs come from
`jaxllm.flops` with each token's exact context (prompt length + its position
in the solution), through `stepping.compute_record`: every model needs a
`ModelConfig` as `.cfg` (found through `.model` links for scorers) or must
declare itself free (BigramLM does; 0 FLOPs), else `compute_record` raises.
Only committed tokens are counted: the padded positions of a ragged step and
the inactive rows of the static-shape batch are computed by the hardware but
not charged (the count an ideal ragged implementation pays).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from algorithms import array_queue as aq
from algorithms.stepping import (
  DELIMITER,
  STOP,
  Rows,
  Step,
  StepCounters,
  check_config_ids,
  compute_record as step_compute_record,
  forced_step,
  id_tuple,
  prefill_prompts,
  reorder,
  reorder_rows,
  sample_step,
)
from jaxllm import flops as flops_lib
from jaxllm.decoding import fork_rows
from jaxllm.flops import model_config
from jaxllm.generate import check_prompts
from jaxllm.sampling import Sampling, make_sampling
from jaxllm.validation import (
  INT32_LIMIT,
  check_int,
  check_length,
  check_token_ids,
  token_id_array,
)

TRACE_COUNT = {"astar": 0}  # incremented at trace time (compile checks)
_TINY = 1e-30  # scores are clipped to [_TINY, 1] before -log


# ----------------------------------------------------------------------------
# Costs and heuristics: small objects, named in configs through REGISTRY
# ----------------------------------------------------------------------------


@flax.struct.dataclass
class HeuristicInput:
  """What a heuristic sees about N states (rows of one batch)."""

  tokens: Any  # int32 [N, L] solution tokens so far (0 after `length`)
  length: Any  # int32 [N] solution tokens
  depth: Any  # int32 [N] completed steps
  last_score: Any  # float32 [N] scorer score of the latest step (1 at the root)
  last_token: Any  # int32 [N] last token of prompt + solution
  complete: Any  # bool [N] latest step ended with a stop token
  problem: Any  # int32 [N] index of the problem (prompt row) of the state
  g: Any  # float32 [N] cost so far (the path cost's g)
  expected_total_steps: Any  # float32 [] the config's (traced) E


@dataclasses.dataclass(frozen=True)
class SumCost:
  """g = sum of the step costs: the path cost of A* proper (with non-negative
  step costs and an admissible h the first complete state popped is optimal)."""

  def g(self, cost_N, depth_N):
    """cost_N: float32 [N] summed step costs; depth_N: int32 [N] steps."""
    del depth_N
    return cost_N


@dataclasses.dataclass(frozen=True)
class MeanCost:
  """g = (sum of the step costs) / depth: length-normalised, so long solutions
  are not penalised for having more steps (the root, depth 0, has g = 0)."""

  def g(self, cost_N, depth_N):
    """cost_N: float32 [N] summed step costs; depth_N: int32 [N] steps."""
    return cost_N / jnp.maximum(depth_N, 1).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class ZeroHeuristic:
  """h = 0: uniform-cost search (Dijkstra); admissible for costs >= 0."""

  def __call__(self, params, inp: HeuristicInput):
    del params
    return jnp.zeros_like(inp.g)


@dataclasses.dataclass(frozen=True)
class LatestStepHeuristic:
  """h = -log r_latest * max(E - d, 1): the latest step's PRM cost, paid again
  on every step expected to remain (E = expected_total_steps, d = depth).
  Not admissible in general; not multiplied by prm_weight."""

  def __call__(self, params, inp: HeuristicInput):
    del params
    remaining = jnp.maximum(
      inp.expected_total_steps - inp.depth.astype(jnp.float32), 1.0
    )
    return -jnp.log(jnp.clip(inp.last_score, _TINY, 1.0)) * remaining


# Config names -> objects: the one place a string in an AStarConfig is read.
REGISTRY = {
  "g_mode": {"sum": SumCost(), "mean": MeanCost()},
  "heuristic": {"zero": ZeroHeuristic(), "latest": LatestStepHeuristic()},
}


def resolve(field: str, value):
  """The object behind `AStarConfig.<field>` ('g_mode' or 'heuristic').

  A registered name gives its object; an object is returned as it is, if it
  has the right shape: a path cost needs a `g(cost_N, depth_N)` method, a
  heuristic must be callable as `h(heuristic_params, HeuristicInput)`.

  Raises:
    ValueError: naming `AStarConfig.<field>`, for an unknown name or an object
      of the wrong shape.
  """
  table = REGISTRY[field]
  if isinstance(value, str):
    if value in table:
      return table[value]
  elif field == "g_mode" and callable(getattr(value, "g", None)):
    return value
  elif field == "heuristic" and callable(value):
    return value
  what = (
    "an object with a g(cost, depth) method"
    if field == "g_mode"
    else "a callable h(heuristic_params, HeuristicInput)"
  )
  raise ValueError(
    f"AStarConfig.{field} must be one of {sorted(table)} or {what}, got {value!r}"
  )


def step_cost(knobs: "Knobs", score_N, logprob_N, n_tokens_N):
  """c = prm_weight * (-log r) + lm_weight * (-log p) + token_cost * n, float32
  [N]; r is clipped to [1e-30, 1]; the lm term is skipped (not 0 * inf) when
  lm_weight is 0, so a step of probability 0 costs inf only when it counts."""
  r = jnp.clip(score_N.astype(jnp.float32), _TINY, 1.0)
  return (
    knobs.prm_weight * -jnp.log(r)
    + jnp.where(knobs.lm_weight > 0, knobs.lm_weight * -logprob_N, 0.0)
    + knobs.token_cost * n_tokens_N
  )


# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------


_KNOBS = (
  "expected_total_steps",
  "prm_weight",
  "lm_weight",
  "token_cost",
  "token_budget",
  "scorer_call_budget",
  "max_iterations",
)
# Sampling travels as a traced `Sampling` pytree (its static part, top_k and
# which filters are on, is in the pytree's structure), so the static config
# holds neutral values for these.
_SAMPLING = dict(temperature=1.0, top_k=None, top_p=None, min_p=None)


@flax.struct.dataclass
class Knobs:
  """The traced settings of one search (float32 scalars; a new value does not
  recompile). See `AStarConfig` for their meaning."""

  expected_total_steps: Any
  prm_weight: Any
  lm_weight: Any
  token_cost: Any
  token_budget: Any  # per problem: tokens generated by the search
  scorer_call_budget: Any  # per problem: steps scored
  max_iterations: Any  # loop iterations (shared by all problems)


@dataclasses.dataclass(frozen=True)
class AStarConfig:
  """A*-decoding settings. Shape-changing fields are static (changing them
  recompiles); budgets, cost weights and sampling values are traced (`Knobs`,
  `sampling()`). Token ids are checked for type here and against the
  vocabulary by `run_astar`.

  Raises (on construction):
    ValueError: naming the field: non-positive sizes, pop_batch > capacity,
      an unknown expansion / g_mode / heuristic, bad candidate steps, a step
      wider than max_solution_tokens, non-finite weights, negative budgets.
  """

  capacity: int = 64  # Q: queue size = pool rows per problem
  pop_batch: int = 1  # B: states popped and expanded per iteration
  expansion: str = "sample"  # 'sample' | 'enumerate'
  num_children: int = 4  # K in sample mode
  candidate_steps: Optional[tuple] = None  # enumerate mode; None = every token
  max_step_tokens: int = 32  # S in sample mode
  max_solution_tokens: int = 256  # L: cap on solution tokens (cache headroom)
  delimiter_ids: tuple = ()
  stop_ids: tuple = ()
  g_mode: Any = "sum"  # a REGISTRY name ('sum' | 'mean') or a path-cost object
  # a REGISTRY name ('zero' | 'latest') or a callable h(params, HeuristicInput)
  heuristic: Union[str, Callable] = "latest"
  # Sampling (sample mode); temperature 1 = the generator's distribution.
  temperature: float = 1.0
  top_k: Optional[int] = None
  top_p: Optional[float] = None
  min_p: Optional[float] = None
  # Traced (no recompilation when they change):
  expected_total_steps: float = 8.0
  prm_weight: float = 1.0
  lm_weight: float = 0.0
  token_cost: float = 0.0
  token_budget: float = float("inf")
  scorer_call_budget: float = float("inf")
  max_iterations: float = 1e6

  def __post_init__(self):
    for name in ("delimiter_ids", "stop_ids"):
      object.__setattr__(
        self, name, id_tuple(f"AStarConfig.{name}", getattr(self, name))
      )
    for name in (
      "capacity",
      "pop_batch",
      "num_children",
      "max_step_tokens",
      "max_solution_tokens",
    ):
      object.__setattr__(
        self, name, check_int(f"AStarConfig.{name}", getattr(self, name), lo=1)
      )
    if self.pop_batch > self.capacity:
      raise ValueError(
        f"AStarConfig.pop_batch={self.pop_batch} exceeds capacity={self.capacity}"
      )
    if self.expansion not in ("sample", "enumerate"):
      raise ValueError(
        f"AStarConfig.expansion must be 'sample' or 'enumerate', got {self.expansion!r}"
      )
    resolve("g_mode", self.g_mode)
    resolve("heuristic", self.heuristic)
    if self.candidate_steps is not None:
      object.__setattr__(
        self,
        "candidate_steps",
        _check_candidates(self.candidate_steps, self.expansion, self.stop_ids),
      )
    if self.step_width > self.max_solution_tokens:
      raise ValueError(
        f"AStarConfig.max_solution_tokens="
        f"{self.max_solution_tokens} is smaller than one step "
        f"({self.step_width} tokens)"
      )
    for name in ("prm_weight", "lm_weight", "token_cost", "expected_total_steps"):
      if not np.isfinite(getattr(self, name)):
        raise ValueError(
          f"AStarConfig.{name} must be finite, got {getattr(self, name)}"
        )
    for name in (
      "prm_weight",
      "lm_weight",
      "token_budget",
      "scorer_call_budget",
      "max_iterations",
    ):
      if not getattr(self, name) >= 0:
        raise ValueError(f"AStarConfig.{name} must be >= 0, got {getattr(self, name)}")

  @property
  def step_width(self) -> int:
    """S: the widest step a child can add."""
    if self.expansion == "sample":
      return self.max_step_tokens
    if self.candidate_steps is None:
      return 1
    return max(len(c) for c in self.candidate_steps)

  def num_expansions(self, vocab_size: int) -> int:
    """K: children per expanded state."""
    if self.expansion == "sample":
      return self.num_children
    if self.candidate_steps is None:
      return vocab_size
    return len(self.candidate_steps)

  @property
  def path_cost(self):
    """The g object (`resolve('g_mode', ...)`)."""
    return resolve("g_mode", self.g_mode)

  @property
  def heuristic_fn(self):
    """The h callable (`resolve('heuristic', ...)`)."""
    return resolve("heuristic", self.heuristic)

  def sampling(self) -> Sampling:
    """The sampling settings as a `Sampling` pytree (traced values).

    Raises:
      ValueError: naming the bad field (`make_sampling`).
    """
    return make_sampling(self.temperature, self.top_k, self.top_p, self.min_p)

  def static_part(self) -> "AStarConfig":
    """The config without its traced fields (the jit cache key): knobs and
    sampling values replaced by neutral ones."""
    return dataclasses.replace(self, **{n: 0.0 for n in _KNOBS}, **_SAMPLING)

  def dynamic_part(self) -> Knobs:
    """The traced knobs (float32 scalars)."""
    return Knobs(**{n: jnp.float32(getattr(self, n)) for n in _KNOBS})


def _check_candidates(candidate_steps, expansion: str, stop_ids: tuple) -> tuple:
  """candidate_steps as a tuple of non-empty int tuples, a stop id only last.

  Raises:
    ValueError: naming AStarConfig.candidate_steps (or needing 'enumerate').
  """
  if expansion != "enumerate":
    raise ValueError("AStarConfig.candidate_steps needs expansion='enumerate'")
  cands = []
  for c in candidate_steps:
    arr = token_id_array("AStarConfig.candidate_steps", c)
    if arr.ndim != 1 or arr.size == 0:
      raise ValueError(
        "AStarConfig.candidate_steps must be a non-empty "
        "sequence of non-empty token sequences"
      )
    cands.append(tuple(int(t) for t in arr))
  if not cands:
    raise ValueError(
      "AStarConfig.candidate_steps must be a non-empty "
      "sequence of non-empty token sequences"
    )
  for c in cands:
    if any(t in stop_ids for t in c[:-1]):
      raise ValueError(
        f"AStarConfig.candidate_steps: stop token inside "
        f"candidate {c} (only allowed last)"
      )
  return tuple(cands)


# ----------------------------------------------------------------------------
# Results and loop state
# ----------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class AStarResult:
  """Per problem (leading axis P) unless noted."""

  tokens: Any  # [P, L] answer tokens (solution only, no prompt; 0-padded)
  length: Any  # [P]
  complete: Any  # [P] answer ends with a stop token
  by_search: Any  # [P] a complete state was popped (no fallback)
  search_length: Any  # [P] tokens chosen by the search (the rest: fallback)
  g: Any  # [P] g of the searched part (0 if fallback from the prompt)
  f: Any  # [P] its f (+inf if fallback from the prompt)
  expanded: Any  # [P] states expanded
  pushed: Any  # [P] children pushed into the queue
  evicted: Any  # [P] entries evicted from a full queue
  dead: Any  # [P] children not pushed (length cap / zero probability)
  scorer_calls: Any  # [P] steps scored (children that were not dead)
  search_tokens: Any  # [P] tokens generated by the search
  fallback_tokens: Any  # [P] tokens generated by the greedy fallback
  iterations: Any  # [] while-loop iterations
  model_calls: Any  # [] batched generator calls after the prefill
  hist_search: Any  # [H] search tokens per absolute position (FLOPs)
  hist_scored: Any  # [H] scored step tokens per absolute position
  hist_fallback: Any  # [H] fallback tokens per absolute position


@flax.struct.dataclass
class Meta:
  """Bookkeeping of search states: leading axes [P, Q] in the pool, [P, B]
  for pops, [N] in the working batch."""

  tok: Any  # int32 [..., L] solution tokens (0 after `length`)
  length: Any  # int32 [...] solution tokens
  depth: Any  # int32 [...] completed steps
  cost: Any  # float32 [...] sum of step costs (g = path_cost.g(cost, depth))
  last_token: Any  # int32 [...] last token of prompt + solution
  complete: Any  # bool [...] latest step ended with a stop token


@flax.struct.dataclass
class Incumbent:
  """The best complete state popped so far, per problem."""

  tok: Any  # int32 [P, L]
  length: Any  # int32 [P]
  g: Any  # float32 [P]
  f: Any  # float32 [P], +inf while none
  found: Any  # bool [P] a complete state was popped


@flax.struct.dataclass
class Counters:
  """What the search spent so far (per problem unless noted)."""

  search_tokens: Any  # int32 [P] tokens generated (children's steps)
  scorer_calls: Any  # int32 [P] steps scored
  expanded: Any  # int32 [P] states expanded
  pushed: Any  # int32 [P] children pushed
  evicted: Any  # int32 [P] queue entries evicted
  dead: Any  # int32 [P] children dropped (length cap / probability 0)
  hist_search: Any  # float32 [H] generated tokens per absolute position
  hist_scored: Any  # float32 [H] scored tokens per absolute position
  model_calls: Any  # int32 [] batched generator calls after the prefill
  iterations: Any  # int32 [] loop iterations


@flax.struct.dataclass
class SearchLoop:
  """The carry of the search's while loop."""

  queue: Any  # aq.ArrayQueue with leading axis P (capacity Q; payload = slot)
  pool: Rows  # P * Q rows (stepping.Rows, float32 logits); row p * Q + i
  #             holds queue entry i of problem p
  meta: Meta  # [P, Q] bookkeeping of the pool rows
  key: Any  # PRNG key (sample mode)
  best: Incumbent
  counts: Counters


class _Env(NamedTuple):
  """What every step of one traced search reads: the callbacks, the static
  sizes and the traced inputs (a plain bundle, built once per trace)."""

  model: Any
  scorer: Any
  cfg: AStarConfig  # static part
  params: Any
  sparams: Any
  knobs: Knobs
  sampling: Sampling
  hparams: Any  # heuristic_params
  lengths_P: Any  # int32 [P] prompt lengths
  path_cost: Any
  heuristic: Any
  P: int
  Q: int
  B: int
  K: int
  S: int
  L: int
  H: int

  @property
  def W(self) -> int:
    return self.B * self.K


def _concat_rows(P: int, a, b):
  """Per-problem row concatenation of two pytrees whose leaves have the row
  axis first, P equal blocks each (the pool and the working batch): problem
  p's rows of `a`, then its rows of `b`, then problem p + 1's, so each
  problem's rows stay contiguous and a blocked [P, n] index (relative to the
  problem's Ra + Rb rows, `jaxllm.cache.take_rows`) gathers from them.
  A*-only: the other searches keep a fixed batch, so stepping has no such
  helper."""

  def cat(x, y):
    bx = x.reshape((P, x.shape[0] // P) + x.shape[1:])
    by = y.reshape((P, y.shape[0] // P) + y.shape[1:])
    both = jnp.concatenate([bx, by], 1)
    return both.reshape((-1,) + x.shape[1:])

  return jax.tree_util.tree_map(cat, a, b)


def _take_meta(meta: Meta, slot_PxB) -> Meta:
  """Gather [P, Q] bookkeeping at slots [P, B]."""

  def take(x):
    idx = slot_PxB.reshape(slot_PxB.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)

  return jax.tree_util.tree_map(take, meta)


def _f(env: _Env, inp: HeuristicInput):
  """f = g + h of N states (float32 [N]); h = 0 for complete states."""
  h = jnp.asarray(env.heuristic(env.hparams, inp), jnp.float32)
  return inp.g + jnp.where(inp.complete, 0.0, h)


# ----------------------------------------------------------------------------
# The search, step by step
# ----------------------------------------------------------------------------


def _init(env: _Env, tokens_PxT, key):
  """Prefill the P prompts once; every pool row starts as a copy of its
  problem's root, and each queue holds the root with f = h(root).

  Returns (SearchLoop, root Rows [P]) (the root rows seed the fallback when a
  queue ends empty)."""
  P, Q, L, H = env.P, env.Q, env.L, env.H
  pidx = jnp.arange(P)
  root = prefill_prompts(
    env.model, env.params, env.scorer, env.sparams, tokens_PxT, env.lengths_P, H
  )
  root = root.replace(logits_BxV=root.logits_BxV.astype(jnp.float32))
  prompt_last = tokens_PxT[pidx, env.lengths_P - 1]
  zi, zf = jnp.zeros((P,), jnp.int32), jnp.zeros((P,), jnp.float32)
  meta = Meta(
    tok=jnp.zeros((P, Q, L), jnp.int32),
    length=jnp.zeros((P, Q), jnp.int32),
    depth=jnp.zeros((P, Q), jnp.int32),
    cost=jnp.zeros((P, Q), jnp.float32),
    last_token=jnp.broadcast_to(prompt_last[:, None], (P, Q)),
    complete=jnp.zeros((P, Q), bool),
  )
  f_root = _f(
    env,
    HeuristicInput(
      tokens=jnp.zeros((P, L), jnp.int32),
      length=zi,
      depth=zi,
      last_score=jnp.ones((P,)),
      last_token=prompt_last,
      complete=jnp.zeros((P,), bool),
      problem=pidx,
      g=zf,
      expected_total_steps=env.knobs.expected_total_steps,
    ),
  )
  queue = jax.vmap(lambda _: aq.empty(Q))(pidx)
  queue, _ = jax.vmap(aq.push)(
    queue, f_root[:, None], jnp.zeros((P, 1), jnp.int32), jnp.ones((P, 1), bool)
  )
  best = Incumbent(
    tok=jnp.zeros((P, L), jnp.int32),
    length=zi,
    g=zf,
    f=jnp.full((P,), jnp.inf),
    found=jnp.zeros((P,), bool),
  )
  counts = Counters(
    search_tokens=zi,
    scorer_calls=zi,
    expanded=zi,
    pushed=zi,
    evicted=zi,
    dead=zi,
    hist_search=jnp.zeros((H,), jnp.float32),
    hist_scored=jnp.zeros((H,), jnp.float32),
    model_calls=jnp.int32(0),
    iterations=jnp.int32(0),
  )
  # Pool slot p * Q + j starts as a copy of problem p's root (the P -> P * Q
  # fork, a blocked gather: zeros [P, Q]).
  pool = reorder(env.model, env.scorer, root, fork_rows(P, Q))
  loop = SearchLoop(
    queue=queue, pool=pool, meta=meta, key=key, best=best, counts=counts
  )
  return loop, root


def _done(env: _Env, loop: SearchLoop):
  """bool [P]: the problem's search is over: its incumbent beats every queued
  f, its queue is empty, or a budget is spent."""
  q, c, k = loop.queue, loop.counts, env.knobs
  return (
    (loop.best.found & (loop.best.f <= jax.vmap(aq.peek)(q)))
    | (jax.vmap(aq.size)(q) == 0)
    | (c.search_tokens >= k.token_budget)
    | (c.scorer_calls >= k.scorer_call_budget)
    | (c.iterations >= k.max_iterations)
  )


def _pop(env: _Env, loop: SearchLoop, act_P):
  """Pop the B best states of every active problem (act_P: bool [P]).

  The first popped complete state (best f) becomes the incumbent if its f
  beats the incumbent's; popped non-complete states with f below the
  (updated) incumbent's are to be expanded.

  Returns (loop with the new queue / incumbent / `expanded` count, parents
  Meta [P, B], slot_PxB pool slots, expand_PxB bool)."""
  P, B = env.P, env.B
  pidx = jnp.arange(P)
  popped, f_PxB, slot_PxB, valid_PxB = jax.vmap(lambda q: aq.pop(q, B))(loop.queue)
  queue = jax.tree_util.tree_map(
    lambda new, old: jnp.where(act_P.reshape((P,) + (1,) * (new.ndim - 1)), new, old),
    popped,
    loop.queue,
  )
  valid_PxB = valid_PxB & act_P[:, None]
  par = _take_meta(loop.meta, slot_PxB)  # [P, B, ...]
  par_g = env.path_cost.g(par.cost, par.depth)
  comp_PxB = valid_PxB & par.complete
  has = comp_PxB.any(1)
  first = jnp.argmax(comp_PxB, 1)
  cand_f = jnp.where(has, f_PxB[pidx, first], jnp.inf)
  old = loop.best
  better = cand_f < old.f
  best = Incumbent(
    tok=jnp.where(better[:, None], par.tok[pidx, first], old.tok),
    length=jnp.where(better, par.length[pidx, first], old.length),
    g=jnp.where(better, par_g[pidx, first], old.g),
    f=jnp.where(better, cand_f, old.f),
    found=old.found | has,
  )
  expand_PxB = valid_PxB & ~par.complete & (f_PxB < best.f[:, None])
  counts = loop.counts.replace(
    expanded=loop.counts.expanded + expand_PxB.sum(1, dtype=jnp.int32)
  )
  loop = loop.replace(queue=queue, best=best, counts=counts)
  return loop, par, slot_PxB, expand_PxB


def _fork(env: _Env, pool: Rows, par: Meta, slot_PxB, expand_PxB):
  """K copies of every popped pool row form the working batch of N = P * B * K
  rows (row (p * B + b) * K + k = child k of pop b of problem p), gathered by
  the blocked index [P, B * K] of pool slots (relative to problem p's Q rows).

  Returns (Rows [N], parents Meta [N], act_N bool: the row is expanded)."""
  P, B, K = env.P, env.B, env.K
  rep = lambda x: jnp.repeat(x.reshape((P * B,) + x.shape[2:]), K, axis=0)
  return (
    reorder(env.model, env.scorer, pool, jnp.repeat(slot_PxB, K, axis=1)),
    jax.tree_util.tree_map(rep, par),
    rep(expand_PxB),
  )


def _candidate_table(cfg: AStarConfig, K: int, S: int):
  """Enumerate mode's K candidate steps as numpy arrays: tokens int32 [K, S]
  (0-padded), lengths int32 [K] and how each step ends, int32 [K] (STOP when
  its last token is a stop id, else DELIMITER); every vocabulary token when
  candidate_steps is None."""
  if cfg.candidate_steps is None:
    cand, clen = np.arange(K, dtype=np.int32)[:, None], np.ones((K,), np.int32)
  else:
    cand = np.zeros((K, S), np.int32)
    for i, s in enumerate(cfg.candidate_steps):
      cand[i, : len(s)] = s
    clen = np.array([len(s) for s in cfg.candidate_steps], np.int32)
  last = cand[np.arange(K), clen - 1]
  ended = np.where(np.isin(last, cfg.stop_ids), STOP, DELIMITER).astype(np.int32)
  return cand, clen, ended


def _expand(env: _Env, rows: Rows, act_N, key):
  """One step for every active working row: sampled (`sample_step` with the
  traced sampling settings) or, in enumerate mode, candidate n % K teacher
  forced into row n (`forced_step`, one `extend` call). The scorer state is
  not touched here. Returns (Rows, Step)."""
  cfg, N = env.cfg, env.P * env.W
  if cfg.expansion == "sample":
    st, lg, step = sample_step(
      env.model,
      env.params,
      rows.state,
      rows.logits_BxV,
      key,
      env.sampling,
      max_step_tokens=env.S,
      delimiter_ids=cfg.delimiter_ids,
      stop_ids=cfg.stop_ids,
      active_B=act_N,
    )
  else:
    cand, clen, ended = (
      jnp.asarray(np.tile(x, (N // env.K,) + (1,) * (x.ndim - 1)))
      for x in _candidate_table(cfg, env.K, env.S)
    )
    st, lg, step = forced_step(
      env.model, env.params, rows.state, rows.logits_BxV, cand, clen, ended, act_N
    )
  return rows.replace(state=st, logits_BxV=lg), step


@flax.struct.dataclass
class Children:
  """The N = P * W children of one iteration (working-batch rows)."""

  meta: Meta  # [N] their bookkeeping
  f: Any  # float32 [N] f = g + h
  n: Any  # int32 [N] tokens their step added (0 for inactive rows)
  writ: Any  # bool [N, S] step token s was written
  pos: Any  # int32 [N, S] solution position of step token s
  scored: Any  # bool [N] the scorer read the step (= a scorer call)
  alive: Any  # bool [N] scored with a finite f: to be pushed


def _score(env: _Env, rows: Rows, par: Meta, step: Step, act_N):
  """Children of the working batch: tokens, score, cost, g and f = g + h.

  A child is *scored* when it is active, has non-zero probability under the
  generator and is complete or has room for another full step; the rest are
  dead (neither scored nor pushed). A scored child with a non-finite f is
  dead too. Returns (Rows with the scorer state advanced, Children)."""
  P, S, L, W = env.P, env.S, env.L, env.W
  n = jnp.where(act_N, step.length, 0)
  writ = jnp.arange(S)[None, :] < n[:, None]
  pos = par.length[:, None] + jnp.arange(S)[None, :]
  tok = par.tok.at[jnp.arange(P * W)[:, None], jnp.where(writ, pos, L)].set(
    step.tokens, mode="drop"
  )
  length = par.length + n
  complete = act_N & (step.ended == STOP)
  lp_sum = jnp.sum(jnp.where(writ, step.logprob, 0.0), 1)
  scored = act_N & jnp.isfinite(lp_sum) & (complete | (length + S <= L))
  sstate, r = env.scorer.score(env.sparams, rows.sstate, step, scored)
  r = jnp.clip(r.astype(jnp.float32), _TINY, 1.0)
  last_tok = jnp.where(
    n > 0,
    jnp.take_along_axis(step.tokens, jnp.maximum(n - 1, 0)[:, None], 1)[:, 0],
    par.last_token,
  )
  meta = Meta(
    tok=tok,
    length=length,
    depth=par.depth + 1,
    cost=par.cost + step_cost(env.knobs, r, lp_sum, n),
    last_token=last_tok,
    complete=complete,
  )
  f = _f(
    env,
    HeuristicInput(
      tokens=tok,
      length=length,
      depth=meta.depth,
      last_score=r,
      last_token=last_tok,
      complete=complete,
      problem=jnp.repeat(jnp.arange(P), W),
      g=env.path_cost.g(meta.cost, meta.depth),
      expected_total_steps=env.knobs.expected_total_steps,
    ),
  )
  kids = Children(
    meta=meta,
    f=f,
    n=n,
    writ=writ,
    pos=pos,
    scored=scored,
    alive=scored & jnp.isfinite(f),
  )
  return rows.replace(sstate=sstate), kids


def _count_children(env: _Env, counts: Counters, kids: Children, act_N) -> Counters:
  """Charge the children's tokens (per problem and per absolute position),
  steps scored and dead children."""
  P, W, H = env.P, env.W, env.H
  abs_pos = jnp.where(kids.writ, jnp.repeat(env.lengths_P, W)[:, None] + kids.pos, H)
  per_P = lambda x: x.reshape(P, W).sum(1, dtype=jnp.int32)
  return counts.replace(
    hist_search=counts.hist_search.at[abs_pos].add(1.0, mode="drop"),
    hist_scored=counts.hist_scored.at[jnp.where(kids.scored[:, None], abs_pos, H)].add(
      1.0, mode="drop"
    ),
    search_tokens=counts.search_tokens + per_P(kids.n),
    scorer_calls=counts.scorer_calls + per_P(kids.scored),
    dead=counts.dead + per_P(act_N & ~kids.alive),
  )


def _push(env: _Env, queue, counts: Counters, f_N, alive_N):
  """Push the live children (payload Q + child index w within its problem);
  evict-worst keeps the Q best of queue + children. Returns (queue, counts)."""
  P, Q, W = env.P, env.Q, env.W
  size0 = jax.vmap(aq.size)(queue)
  queue, _ = jax.vmap(aq.push)(
    queue,
    f_N.reshape(P, W),
    jnp.broadcast_to(Q + jnp.arange(W, dtype=jnp.int32), (P, W)),
    alive_N.reshape(P, W),
  )
  n_alive = alive_N.reshape(P, W).sum(1, dtype=jnp.int32)
  counts = counts.replace(
    pushed=counts.pushed + n_alive,
    evicted=counts.evicted + size0 + n_alive - jax.vmap(aq.size)(queue),
  )
  return queue, counts


def _rebuild_pool(
  env: _Env, loop: SearchLoop, queue, rows: Rows, child: Meta
) -> SearchLoop:
  """Pool slot i <- queue entry i: ONE blocked gather from the per-problem
  concatenation of the old pool and the children (problem p's Q pool rows,
  then its W children: `_concat_rows`), by the payloads [P, Q] themselves:
  row `payload` of the problem's Q + W rows is its old slot `payload` (< Q)
  or its child `payload - Q` (>= Q). Queue payloads become 0..Q-1 again."""
  P, Q, W = env.P, env.Q, env.W
  pl = jnp.where(queue.valid, queue.payload, jnp.arange(Q)[None, :])
  both = jax.tree_util.tree_map(
    lambda a, b: jnp.concatenate([a, b.reshape((P, W) + b.shape[1:])], 1),
    loop.meta,
    child,
  )
  return loop.replace(
    pool=reorder(env.model, env.scorer, _concat_rows(P, loop.pool, rows), pl),
    meta=_take_meta(both, pl),
    queue=dataclasses.replace(
      queue, payload=jnp.broadcast_to(jnp.arange(Q, dtype=jnp.int32), (P, Q))
    ),
  )


def _iteration(env: _Env, loop: SearchLoop) -> SearchLoop:
  """One search iteration: pop, fork, expand, score, push, rebuild the pool."""
  loop, par, slot_PxB, expand_PxB = _pop(env, loop, ~_done(env, loop))
  rows, par, act = _fork(env, loop.pool, par, slot_PxB, expand_PxB)
  key, sub = jax.random.split(loop.key)
  rows, step = _expand(env, rows, act, sub)
  rows, kids = _score(env, rows, par, step, act)
  counts = _count_children(env, loop.counts, kids, act)
  counts = counts.replace(
    model_calls=counts.model_calls + step.calls, iterations=counts.iterations + 1
  )
  queue, counts = _push(env, loop.queue, counts, kids.f, kids.alive)
  loop = loop.replace(key=key, counts=counts)
  return _rebuild_pool(env, loop, queue, rows, kids.meta)


def _answer(env: _Env, loop: SearchLoop, root: Rows):
  """The searched answer per problem: the incumbent if one was popped; else
  the best queued state; else (empty queue) the prompt.

  Returns (Incumbent-shaped answer: tok [P, L], length, g, f, found = the
  answer is complete; its model rows (state, logits [P, V]) for the
  fallback)."""
  P, Q = env.P, env.Q
  q, inc = loop.queue, loop.best
  best_ok = q.valid[:, 0]
  best = jax.tree_util.tree_map(
    lambda x: x[:, 0], _take_meta(loop.meta, q.payload[:, :1])
  )
  found = inc.found
  ans = Incumbent(
    tok=jnp.where(found[:, None], inc.tok, jnp.where(best_ok[:, None], best.tok, 0)),
    length=jnp.where(found, inc.length, jnp.where(best_ok, best.length, 0)),
    g=jnp.where(
      found, inc.g, jnp.where(best_ok, env.path_cost.g(best.cost, best.depth), 0.0)
    ),
    f=jnp.where(found, inc.f, jnp.where(best_ok, q.f[:, 0], jnp.inf)),
    found=found | (best_ok & best.complete),
  )
  # blocked over problem p's Q pool rows + its root row (row Q)
  src = jnp.where(best_ok, q.payload[:, 0], Q)[:, None]
  return (ans,) + reorder_rows(
    env.model,
    _concat_rows(P, loop.pool.state, root.state),
    _concat_rows(P, loop.pool.logits_BxV, root.logits_BxV),
    src,
  )


def _fallback(env: _Env, ans: Incumbent, state, logits_PxV, key):
  """Complete the unfinished answers greedily, one temperature-0 token at a
  time, until a stop token or L solution tokens.

  Returns (tok [P, L], length [P], complete [P], fallback tokens [P],
  hist [H] fallback tokens per absolute position, model calls [])."""
  P, L, H = env.P, env.L, env.H
  pidx = jnp.arange(P)
  greedy = make_sampling(0.0)

  def body(fc):
    live, st, lg, tok, length, complete, n_fb, hist, calls = fc
    st, lg, step = sample_step(
      env.model,
      env.params,
      st,
      lg,
      key,
      greedy,
      max_step_tokens=1,
      delimiter_ids=(),
      stop_ids=env.cfg.stop_ids,
      active_B=live,
    )
    tok = tok.at[pidx, jnp.where(live, length, L)].set(step.tokens[:, 0], mode="drop")
    hist = hist.at[jnp.where(live, env.lengths_P + length, H)].add(1.0, mode="drop")
    stopped = live & (step.ended == STOP)
    length = length + live
    n_fb = n_fb + live
    complete = complete | stopped
    live = live & ~stopped & (length < L)
    return live, st, lg, tok, length, complete, n_fb, hist, calls + 1

  live0 = ~ans.found & (ans.length < L)
  out = jax.lax.while_loop(
    lambda fc: jnp.any(fc[0]),
    body,
    (
      live0,
      state,
      logits_PxV,
      ans.tok,
      ans.length,
      ans.found,
      jnp.zeros((P,), jnp.int32),
      jnp.zeros((H,), jnp.float32),
      jnp.int32(0),
    ),
  )
  _, _, _, tok, length, complete, n_fb, hist, calls = out
  return tok, length, complete, n_fb, hist, calls


def _search(
  model,
  scorer,
  cfg: AStarConfig,
  params,
  sparams,
  tokens_PxT,
  lengths_P,
  key,
  knobs: Knobs,
  sampling: Sampling,
  hparams,
):
  """The whole search for P problems (jitted as `_search_jit`; model, scorer
  and the static config are static). Returns AStarResult."""
  TRACE_COUNT["astar"] += 1
  P, T = tokens_PxT.shape
  L = cfg.max_solution_tokens
  env = _Env(
    model=model,
    scorer=scorer,
    cfg=cfg,
    params=params,
    sparams=sparams,
    knobs=knobs,
    sampling=sampling,
    hparams=hparams,
    lengths_P=lengths_P,
    path_cost=cfg.path_cost,
    heuristic=cfg.heuristic_fn,
    P=P,
    Q=cfg.capacity,
    B=cfg.pop_batch,
    K=cfg.num_expansions(model.vocab_size),
    S=cfg.step_width,
    L=L,
    H=T + L,
  )
  loop, root = _init(env, tokens_PxT, key)
  loop = jax.lax.while_loop(
    lambda c: jnp.any(~_done(env, c)), lambda c: _iteration(env, c), loop
  )
  ans, st, lg = _answer(env, loop, root)
  tok, length, complete, n_fb, hist_fb, fb_calls = _fallback(env, ans, st, lg, loop.key)
  c = loop.counts
  return AStarResult(
    tokens=tok,
    length=length,
    complete=complete,
    by_search=loop.best.found,
    search_length=ans.length,
    g=ans.g,
    f=ans.f,
    expanded=c.expanded,
    pushed=c.pushed,
    evicted=c.evicted,
    dead=c.dead,
    scorer_calls=c.scorer_calls,
    search_tokens=c.search_tokens,
    fallback_tokens=n_fb,
    iterations=c.iterations,
    model_calls=c.model_calls + fb_calls,
    hist_search=c.hist_search,
    hist_scored=c.hist_scored,
    hist_fallback=hist_fb,
  )


_search_jit = jax.jit(_search, static_argnums=(0, 1, 2))


# ----------------------------------------------------------------------------
# Compute record and the entry point
# ----------------------------------------------------------------------------


def compute_record(
  result: AStarResult, model, scorer, lengths_P
) -> "flops_lib.Compute":
  """What the search spent (module docstring: "What is counted").

  `stepping.compute_record` from the result's position histograms (a token
  at position i attends to i + 1 keys), except verifier_calls: A* reports
  the steps scored (what `scorer_call_budget` bounds; also for a free
  scorer), not batched scorer calls.

  Raises:
    ValueError: the policy or the scorer's model has no ModelConfig and does
      not declare itself FLOPs-free (`jaxllm.flops.flops_config`).
  """
  ctx = lambda h: np.concatenate([[0.0], np.asarray(h, np.float64)])
  counts = StepCounters(
    gen=ctx(np.asarray(result.hist_search) + np.asarray(result.hist_fallback)),
    forced=np.zeros((1,)),
    scored=ctx(result.hist_scored),
    calls=result.model_calls,
    vcalls=0,
  )
  rec = step_compute_record(model, scorer, lengths_P, counts)
  return dataclasses.replace(rec, verifier_calls=float(np.sum(result.scorer_calls)))


def run_astar(
  model,
  params,
  scorer,
  scorer_params,
  prompts,
  key,
  config: AStarConfig,
  *,
  prompt_lengths=None,
  pad_id: int = 0,
  heuristic_params=None,
):
  """A*-decoding for P problems at once. Returns (AStarResult, Compute).

  Source: A*-decoding as summarised in ALGORITHMS.md
  ("A*-decoding"); the paper's exact g / h were not available, so the costs
  and heuristics here are our documented choice (module docstring).

  One compiled search per (model, scorer, static config, shapes): budgets,
  cost weights, expected_total_steps, sampling values and heuristic_params
  are traced, so sweeping them does not recompile.

  Args:
    model: a decode-interface model (jaxllm.decoding); params its parameters.
    scorer / scorer_params: a step scorer (algorithms.scorers).
    prompts: a list of P token-id lists, or a right-padded int array [P, T]
      with `prompt_lengths` [P] (the convention of `generate`:
      `jaxllm.generate.check_prompts`; prompts are bucketed, padded with
      `pad_id`).
    key: PRNG key (sample mode).
    config: AStarConfig.
    pad_id: id in [0, V) written into prompt padding (answers are 0-padded).
    heuristic_params: pytree passed to the heuristic (a traced argument).

  Raises:
    ValueError: naming the argument or field: pad_id, prompt ids,
      AStarConfig.stop_ids / delimiter_ids / candidate_steps outside [0, V)
      (`jaxllm.validation.check_token_ids`), malformed prompts, bad sampling
      settings (`make_sampling`), or prompt + max_solution_tokens beyond
      ModelConfig.max_seq_len (of the model, or of the scorer's model).
  """
  if not isinstance(config, AStarConfig):
    raise ValueError(f"config must be an AStarConfig, got {type(config)}")
  V = getattr(model, "vocab_size", None)
  check_config_ids(model, config, "AStarConfig")
  if config.candidate_steps is not None:
    check_token_ids(
      "AStarConfig.candidate_steps", [t for c in config.candidate_steps for t in c], V
    )
  tokens, lengths = check_prompts(model, prompts, prompt_lengths, pad_id)
  L = config.max_solution_tokens
  what = f"prompt length {int(lengths.max())} + max_solution_tokens={L}"
  check_length(what, int(lengths.max()) + L, "the int32 position range", INT32_LIMIT)
  for m in (model, getattr(scorer, "model", None)):
    cfg = model_config(m)
    if cfg is not None:
      check_length(
        what, int(lengths.max()) + L, "ModelConfig.max_seq_len", cfg.max_seq_len
      )
  sampling = config.sampling()
  tokens, lengths = jnp.asarray(tokens), jnp.asarray(lengths)
  result = _search_jit(
    model,
    scorer,
    config.static_part(),
    params,
    scorer_params,
    tokens,
    lengths,
    key,
    config.dynamic_part(),
    sampling,
    heuristic_params,
  )
  return result, compute_record(result, model, scorer, lengths)
