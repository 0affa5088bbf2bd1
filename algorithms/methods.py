"""One budget-driven entry point for every inference-time method.

  out = methods.run("pf", model, params, prompts, key, budget=8,
                    scorer=scorer, scorer_params=scorer_params,
                    max_steps=4, max_step_tokens=8, delimiter_ids=(3,),
                    stop_ids=(2,))
  out.tokens[p, :out.lengths[p]]      # problem p's chosen answer
  out.candidates, out.scores, out.weights   # every candidate, where it has them
  out.compute                          # ONE jaxllm.flops.Compute record

Swapping methods is one string ("pf" -> "pf_smc" -> "epf"), or one `Method`
object (`method(name, **settings)`, a name plus its settings; the budget is
given at run time so one object serves a whole budget sweep). Peer of
its_hub's `infer(lm, prompt, budget)`, but batched over P problems: the
runners underneath are jitted over the whole population (problems x samples /
particles / paths).

The registry
------------
`REGISTRY` maps every method name to an `Entry`: how the budget and the
settings build the algorithm's own config (`Entry.build`) and which runner
runs it (`Entry.run`). It is the only place a method name is read. A name is
a preset: it fixes the fields that make the method what it is (`fixed`, e.g.
beam vs DVTS) and sets defaults (`defaults`, e.g. pf_smc's weighting='smc'
and ess_threshold=0.5) that settings may override; every other field of the
family's config is a setting, except the fields the budget sets.

What the budget N means, per method

  name               family            budget N                    needs
  -----------------  ----------------  --------------------------  -----------
  majority           selection         N samples per problem       -
  weighted_majority  selection         N samples                   scorer
  best_of_n          selection         N samples                   scorer
  best_of_n_prm      selection         N samples                   scorer
  best_of_majority   selection         N samples                   scorer
  pf                 particle filter   N particles per problem     scorer
  pf_smc             particle filter   N particles                 scorer
  epf                particle filter   N particles                 scorer
  particle_gibbs     particle filter   N particles per sweep       scorer
  beam               beam search       N paths (beams x width)     scorer
  dvts               beam search       N paths (N / M subtrees)    scorer
  astar              A*                N expansions, or N * t      scorer
                                       tokens (tokens_per_sample=t)
  speculative        speculative       N draft tokens per target   draft
                                       call (a chain, gamma = N)
  speculative_iid    speculative       N draft tokens: `width`     draft
  speculative_rsd_c  speculative       chains / root children /    draft
  speculative_rsd_s  speculative       beams (spec_trees.          draft
                                       tree_for_budget)

- Selection (`SelectionConfig`): `jaxllm.generate(num_samples=N)` samples N
  solutions per problem (each prompt prefilled ONCE, its cache forked), the
  scorer scores them (`score_samples`) and a selection rule picks one
  (`algorithms.selection`): majority = self-consistency; weighted_majority =
  votes weighted by score; best_of_n = highest score; best_of_majority = BoM
  (alpha=0.1, reward='mean', one submission). The score is an OUTCOME score
  (`aggregation=None`: the whole sample is one step, scored at its last
  token: an ORM behind `scorers.ModelStepScorer`, or the generator's own
  confidence) or, with `aggregation` 'min' / 'last' / 'prod' / 'mean'
  (best_of_n_prm: 'min'), a PRM's step scores (steps end at `delimiter_ids`
  / `stop_ids`, as in the step searches) aggregated by
  `selection.aggregate_step_scores`.
- Particle filtering (`particle_filter.PFConfig`, n_particles = N): pf =
  weighting 'prm_logit'; pf_smc = 'smc' with ESS-triggered resampling at 0.5;
  epf = entropic annealing ('ess'); particle_gibbs = n_sweeps=2 sweeps of N
  particles (conditional SMC after the first).
- Beam search / DVTS (`beam_search.BeamConfig`, n_paths = N): beam_width M
  (default 4) is capped at N (`min(beam_width, N)`); N must be a multiple of M.
- A* (`AStarRun`: `astar.AStarConfig` plus the prompt pad id): by default
  N = states expanded (max_iterations = N / pop_batch); with the setting
  `tokens_per_sample=t`, N is a sample-equivalent token budget: the search
  generates at most about N * t tokens (token_budget = N * t), which is how
  the scaling sweep compares A* with N-sample methods.
- Speculative decoding (`speculative.SpecConfig(method="chain", gamma=N)`): a
  generation method, one sample per problem exactly distributed as sampling
  from the target; N is the draft chain length, i.e. the tree tokens the
  target scores per call (root excluded). Needs `draft` / `draft_params`.

What every method returns: `MethodOutput` (shapes below), with the chosen
answer of each problem, every candidate and its score / weight where the
method has them, the runner's own result (`raw`) and one `Compute` record.

Inputs: `model` / `params` a decode-interface model (`jaxllm.decoding`);
`scorer` / `scorer_params` a step scorer (`algorithms.scorers`: init / score /
reorder; a reward model through `ModelStepScorer`, `ConfidenceScorer`, a toy);
`prompts` in `jaxllm.generate.check_prompts`' one convention (P token lists,
or a right-padded [P, T] array with `prompt_lengths` [P]); a PRNG key, passed
unchanged to the runner (so a run equals calling the runner with that key).
Arguments a method does not use (a scorer for majority, a draft for a search)
are ignored.

Shape suffixes: P problems, N candidates per problem (samples / particles /
pool entries), L answer tokens, K steps, S step width, T padded prompt length,
B = P * N rows.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, ClassVar, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from algorithms import astar as astar_lib
from algorithms import (
  beam_search,
  particle_filter,
  selection,
  spec_trees,
  speculative,
  stepping,
)
from algorithms.stepping import BUDGET, DELIMITER, STOP, Step, StepCounters
from jaxllm import flops as flops_lib
from jaxllm.generate import check_prompts, generate
from jaxllm.sampling import Sampling, make_sampling
from jaxllm.validation import check_int, check_token_id, check_token_ids

# ----------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MethodOutput:
  """What any method returns (jax arrays; None where the method has no such
  thing).

  method: the registered name; budget: the budget it ran at (`run` sets
    both).
  tokens: int32 [P, L] each problem's chosen answer (pad after its length).
  lengths: int32 [P] its length.
  index: int32 [P] the chosen candidate in `candidates` (None without
    candidates: A*, speculative).
  candidates: int32 [P, N, L] every candidate (selection: the N samples; PF:
    the final particles; beam / DVTS: the pool of completed paths).
  candidate_lengths: int32 [P, N].
  scores: float32 [P, N] the score each candidate was ranked by (selection:
    outcome or aggregated PRM score, None for majority; PF: the aggregated
    PRM score its weights used; beam: the pool score, -inf = empty slot).
  weights: float32 [P, N] normalised importance weights (PF only).
  answers: int32 [P, N] answer ids the selection rule voted on (selection
    only; negative = no answer).
  compute: jaxllm.flops.Compute, everything the run spent (one record).
  raw: the runner's own result (GenerateOutput, PFResult, BeamResult,
    AStarResult or SpecOutput) for method-specific fields.
  """

  method: str
  budget: int
  tokens: Any
  lengths: Any
  compute: flops_lib.Compute
  raw: Any
  index: Any = None
  candidates: Any = None
  candidate_lengths: Any = None
  scores: Any = None
  weights: Any = None
  answers: Any = None


class Inputs(NamedTuple):
  """The run-time inputs beside model, params, prompts and key."""

  scorer: Any = None
  scorer_params: Any = None
  draft: Any = None
  draft_params: Any = None
  answer_fn: Optional[Callable] = None
  prompt_lengths: Any = None


def _pick(candidates_PxNxL, lengths_PxN, index_P):
  """(tokens_PxL, lengths_P) of candidate index_P[p] of every problem."""
  idx = jnp.asarray(index_P, jnp.int32)
  toks = jnp.take_along_axis(candidates_PxNxL, idx[:, None, None], axis=1)[:, 0]
  lens = jnp.take_along_axis(lengths_PxN, idx[:, None], axis=1)[:, 0]
  return toks, lens


def _need_scorer(name: str, inputs: Inputs) -> None:
  if inputs.scorer is None:
    raise ValueError(
      f"method {name!r} needs a scorer (a step scorer of "
      f"algorithms.scorers); got scorer=None"
    )


# ----------------------------------------------------------------------------
# Selection over N samples
# ----------------------------------------------------------------------------


def _first_with(answers_PxN, answer_P):
  """Index of the first sample whose answer is answer_P (0 when none is)."""
  hit = jnp.asarray(answers_PxN) == jnp.asarray(answer_P)[:, None]
  return jnp.argmax(hit, axis=1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Majority:
  """Self-consistency: the most frequent answer (`selection.self_consistency`);
  the chosen sample is the first one with that answer."""

  needs_scores: ClassVar[bool] = False

  def __call__(self, answers_PxN, scores_PxN):
    """Returns (answer_P int32, index_P int32)."""
    a = selection.self_consistency(answers_PxN)
    return a, _first_with(answers_PxN, a)


@dataclasses.dataclass(frozen=True)
class WeightedMajority:
  """Votes weighted by score (`selection.weighted_self_consistency`); the
  chosen sample is the first one with the winning answer."""

  needs_scores: ClassVar[bool] = True

  def __call__(self, answers_PxN, scores_PxN):
    """Returns (answer_P int32, index_P int32)."""
    a = selection.weighted_self_consistency(answers_PxN, scores_PxN)
    return a, _first_with(answers_PxN, a)


@dataclasses.dataclass(frozen=True)
class BestOfN:
  """The highest-scored sample (`selection.best_of_n`: samples without an
  answer rank last, NaN scores below every number, ties to the lowest index)."""

  needs_scores: ClassVar[bool] = True

  def __call__(self, answers_PxN, scores_PxN):
    """Returns (answer_P int32, index_P int32)."""
    return selection.best_of_n(scores_PxN, answers_PxN)


@dataclasses.dataclass(frozen=True)
class BestOfMajority:
  """Best-of-majority with one submission (`selection.best_of_majority`):
  among answers with frequency >= alpha, the best by `reward` ('mean', 'max'
  or 'sum' of the group's scores); the chosen sample is the first one with
  that answer."""

  alpha: float = 0.1
  reward: str = "mean"
  needs_scores: ClassVar[bool] = True

  def __post_init__(self):
    if self.reward not in selection.GROUP_REWARDS:
      raise ValueError(
        f"BestOfMajority.reward must be one of "
        f"{selection.GROUP_REWARDS}, got {self.reward!r}"
      )
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"BestOfMajority.alpha must be in [0, 1], got {self.alpha!r}")

  def __call__(self, answers_PxN, scores_PxN):
    """Returns (answer_P int32, index_P int32)."""
    a = selection.best_of_majority(
      answers_PxN, scores_PxN, self.alpha, reward=self.reward
    )[:, 0]
    return a, _first_with(answers_PxN, a)


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
  """Sample N solutions per problem, score them, select one.

  n_samples: N (the budget). max_new_tokens: L, tokens per sample. rule: a
  selection rule (`Majority()`, `WeightedMajority()`, `BestOfN()`,
  `BestOfMajority(alpha, reward)`, or any object with `needs_scores` and
  `__call__(answers_PxN, scores_PxN) -> (answer_P, index_P)`).
  aggregation: None = outcome score (the whole sample is one step, scored at
  its last token); else 'last' / 'min' / 'prod' / 'mean' over the step scores
  (steps end at delimiter_ids / stop_ids, `score_samples`).
  delimiter_ids / stop_ids: single token ids; a sample stops at a stop id
  (`generate`'s stop_tokens). pad_id: written after a sample's end and into
  prompt padding. sampling_*: the policy's sampling settings.

  Raises (on construction):
    ValueError: naming the field, for a value out of its domain.
  """

  n_samples: int = 8
  max_new_tokens: int = 32
  rule: Any = Majority()
  aggregation: Optional[str] = None
  delimiter_ids: tuple = ()
  stop_ids: tuple = ()
  pad_id: int = 0
  sampling_temperature: float = 1.0
  sampling_top_k: Optional[int] = None
  sampling_top_p: Optional[float] = None

  def __post_init__(self):
    for name in ("n_samples", "max_new_tokens"):
      object.__setattr__(
        self, name, check_int(f"SelectionConfig.{name}", getattr(self, name), lo=1)
      )
    for name in ("delimiter_ids", "stop_ids"):
      object.__setattr__(
        self, name, stepping.id_tuple(f"SelectionConfig.{name}", getattr(self, name))
      )
    object.__setattr__(
      self, "pad_id", check_token_id("SelectionConfig.pad_id", self.pad_id, None)
    )
    if not (callable(self.rule) and hasattr(self.rule, "needs_scores")):
      raise ValueError(
        f"SelectionConfig.rule must be a selection rule (e.g. "
        f"methods.BestOfN()), got {self.rule!r}"
      )
    if self.aggregation is not None and self.aggregation not in selection.AGGREGATIONS:
      raise ValueError(
        f"SelectionConfig.aggregation must be None (outcome "
        f"score) or one of {selection.AGGREGATIONS}, got "
        f"{self.aggregation!r}"
      )
    self.sampling()  # raises for bad sampling settings

  def sampling(self) -> Sampling:
    """The policy's sampling settings.

    Raises:
      ValueError: naming the bad setting (`make_sampling`).
    """
    return make_sampling(
      self.sampling_temperature, self.sampling_top_k, self.sampling_top_p
    )


def sequence_answer_ids(tokens_PxNxL, lengths_PxN) -> np.ndarray:
  """Default answer ids: equal token sequences get equal ids, per problem, in
  order of first appearance (int32 [P, N]). For a task, pass `answer_fn`
  (e.g. extracted numbers) instead."""
  toks, lens = np.asarray(tokens_PxNxL), np.asarray(lengths_PxN)
  P, N = lens.shape
  ids = np.zeros((P, N), np.int32)
  for p in range(P):
    table: dict = {}
    for n in range(N):
      seq = toks[p, n, : lens[p, n]].tobytes()
      ids[p, n] = table.setdefault(seq, len(table))
  return ids


def _pow2(n: int) -> int:
  return 1 << max(int(n) - 1, 0).bit_length()


def _shifted(toks_BxL, off: int):
  """toks[:, t - off], -1 where t < off."""
  if off == 0:
    return toks_BxL
  pad = jnp.full((toks_BxL.shape[0], off), -1, toks_BxL.dtype)
  return jnp.concatenate([pad, toks_BxL[:, :-off]], axis=1)


def _matches(toks_BxL, seqs):
  """[(bool [B, L], len)]: position t ends sequence q (ignoring steps)."""
  out = []
  for q in seqs:
    m = jnp.ones(toks_BxL.shape, bool)
    for i, tok in enumerate(q):
      m = m & (_shifted(toks_BxL, len(q) - 1 - i) == tok)
    out.append((m, len(q)))
  return out


@functools.partial(jax.jit, static_argnames=("delims", "stops"))
def _step_layout(toks_BxL, len_B, delims: tuple, stops: tuple):
  """Split samples into steps with `stepping.sample_step`'s rule: a step ends
  at the first token completing a stop sequence (STOP) or else a delimiter
  sequence (DELIMITER) inside the step; the rest of a sample is a last step
  (BUDGET). Returns step_BxL (step of each token), pos_BxL (its position in
  the step), kind_BxL (how a step ends at t, BUDGET elsewhere), n_steps_B."""
  B, L = toks_BxL.shape
  valid = jnp.arange(L)[None, :] < len_B[:, None]
  ms, md = _matches(toks_BxL, stops), _matches(toks_BxL, delims)

  def hit(found, t, span_B):
    acc = jnp.zeros((B,), bool)
    for m, n in found:
      acc = acc | (m[:, t] & (span_B >= n))
    return acc

  def body(carry, t):
    start, k = carry
    span = t + 1 - start
    v = valid[:, t]
    is_stop = v & hit(ms, t, span)
    is_delim = v & ~is_stop & hit(md, t, span)
    kind = jnp.where(is_stop, STOP, jnp.where(is_delim, DELIMITER, BUDGET))
    end = is_stop | is_delim
    out = (k, t - start, kind)
    return (jnp.where(end, t + 1, start), k + end.astype(jnp.int32)), out

  zeros = jnp.zeros((B,), jnp.int32)
  (start, k), (step, pos, kind) = jax.lax.scan(body, (zeros, zeros), jnp.arange(L))
  n_steps = k + (start < len_B).astype(jnp.int32)
  return step.T, pos.T, kind.T, n_steps


def _score_impl(
  scorer,
  sparams,
  ptoks_PxT,
  plens_P,
  toks_BxL,
  lps_BxL,
  len_B,
  step_BxL,
  pos_BxL,
  kind_BxL,
  *,
  N: int,
  K: int,
  S: int,
  cache_size: int,
  pad_id: int,
):
  P, B = ptoks_PxT.shape[0], toks_BxL.shape[0]
  sstate = scorer.init(sparams, ptoks_PxT, plens_P, cache_size)
  sstate = scorer.reorder(sstate, stepping.fork_index(P, N))
  valid = jnp.arange(toks_BxL.shape[1])[None, :] < len_B[:, None]
  k_idx = jnp.where(valid, step_BxL, K)  # out of range: dropped
  rows = jnp.arange(B)[:, None]
  tok = (
    jnp.full((B, K, S), pad_id, jnp.int32)
    .at[rows, k_idx, pos_BxL]
    .set(toks_BxL, mode="drop")
  )
  lp = (
    jnp.zeros((B, K, S), jnp.float32).at[rows, k_idx, pos_BxL].set(lps_BxL, mode="drop")
  )
  length = jnp.zeros((B, K), jnp.int32).at[rows, k_idx].add(1, mode="drop")
  ends = jnp.where(kind_BxL != BUDGET, k_idx, K)
  ended = jnp.full((B, K), BUDGET, jnp.int32).at[rows, ends].set(kind_BxL, mode="drop")

  def body(st, k):
    step = Step(
      tokens=tok[:, k],
      length=length[:, k],
      logprob=lp[:, k],
      ended=ended[:, k],
      calls=jnp.int32(1),
    )
    st, s = scorer.score(sparams, st, step, length[:, k] > 0)
    return st, s.astype(jnp.float32)

  _, scores_KxB = jax.lax.scan(body, sstate, jnp.arange(K))
  mask = length > 0
  return scores_KxB.T, mask, jnp.sum(jnp.any(mask, axis=0)).astype(jnp.int32)


_score_jit = jax.jit(
  _score_impl, static_argnames=("scorer", "N", "K", "S", "cache_size", "pad_id")
)


def _check_sample_shapes(P: int, toks_shape, lens_shape, logprobs_shape) -> None:
  """Raises ValueError unless the samples are B = P * N rows of [B, L] tokens
  with [B] lengths and [B, L] logprobs."""
  B = toks_shape[0]
  if B % P or lens_shape != (B,) or logprobs_shape != toks_shape:
    raise ValueError(
      f"samples [B, L] = {toks_shape}, lengths {lens_shape} "
      f"and logprobs {logprobs_shape} must be P * N = "
      f"B rows for P = {P} prompts"
    )


def _step_buckets(lens_B, pos_BxL, n_steps_B, L: int) -> tuple[int, int]:
  """(K, S): the static step count (a power of two >= the most steps of any
  sample) and step width (a power of two >= the longest step, at most L)."""
  valid = np.arange(L)[None, :] < np.asarray(lens_B)[:, None]
  K = _pow2(max(int(np.max(n_steps_B)), 1))
  S = min(_pow2(int(np.max(np.where(valid, np.asarray(pos_BxL), 0))) + 1), L)
  return K, S


def score_samples(
  scorer,
  scorer_params,
  prompt_tokens_PxT,
  prompt_lengths_P,
  tokens_BxL,
  logprobs_BxL,
  lengths_B,
  *,
  delimiter_ids=(),
  stop_ids=(),
  outcome: bool = False,
  pad_id: int = 0,
):
  """Score N sampled solutions per problem with a step scorer.

  The scorer prefills each prompt ONCE and forks its state into N rows
  (`stepping.fork_index`); each sample is then fed to it step by step (the
  `algorithms.scorers` interface: a reward model scores only the new tokens
  against its cache). Steps end as in the step searches (`_step_layout`);
  with `outcome` only stop sequences end a step, so a sample from `generate`
  (which holds a stop token only at its end) is one step: its score is the
  score at its last token (an ORM, or the generator's confidence in the
  whole sample).

  Args:
    scorer / scorer_params: a step scorer and its parameters.
    prompt_tokens_PxT / prompt_lengths_P: the right-padded prompts
      (`check_prompts`).
    tokens_BxL / logprobs_BxL / lengths_B: B = P * N samples, prompt-major
      (row p * N + i = sample i of problem p), as `generate(num_samples=N)`
      returns them; logprobs at temperature 1 (ConfidenceScorer reads them).
    delimiter_ids / stop_ids: token ids or token sequences
      (`stepping.id_sequences`) ending a step.
    outcome: one step per sample.
    pad_id: id after a step's end.

  Returns:
    (step_scores float32 [P, N, K], step_mask bool [P, N, K], scorer_calls
    int32 [] = steps scored by the batched loop); feed the first two to
    `selection.aggregate_step_scores`. K (a power of two >= the most steps of
    any sample; 1 for `generate`'s samples with `outcome`) and the step width
    S (a power of two >= the longest step, at most L) are static: one
    compiled scorer per bucket, not per value.

  Raises:
    ValueError: B not a multiple of P, or shapes that disagree.
  """
  ptoks, plens = jnp.asarray(prompt_tokens_PxT), jnp.asarray(prompt_lengths_P)
  toks = jnp.asarray(tokens_BxL, jnp.int32)
  lens = jnp.asarray(lengths_B, jnp.int32)
  _check_sample_shapes(ptoks.shape[0], toks.shape, lens.shape, np.shape(logprobs_BxL))
  P, B, L = ptoks.shape[0], toks.shape[0], toks.shape[1]
  delims = () if outcome else delimiter_ids
  seqs = tuple(
    stepping.as_sequences(stepping.id_sequences(n, ids))
    for n, ids in (("delimiter_ids", delims), ("stop_ids", stop_ids))
  )
  step, pos, kind, n_steps = _step_layout(toks, lens, *seqs)
  K, S = _step_buckets(lens, pos, n_steps, L)
  scores, mask, calls = _score_jit(
    scorer,
    scorer_params,
    ptoks,
    plens,
    toks,
    jnp.asarray(logprobs_BxL, jnp.float32),
    lens,
    step,
    pos,
    kind,
    N=B // P,
    K=K,
    S=S,
    cache_size=ptoks.shape[1] + L,
    pad_id=pad_id,
  )
  N = B // P
  return scores.reshape(P, N, K), mask.reshape(P, N, K), calls


def _sample_counters(
  plens_P, lens_B, N: int, C: int, calls, scored: bool, vcalls
) -> StepCounters:
  """StepCounters of N samples per prompt: token t of a sample attends to
  prompt + t + 1 keys; every sample token is scored when `scored`."""
  ctx0 = jnp.repeat(jnp.asarray(plens_P, jnp.int32), N)
  L = int(np.max(np.asarray(lens_B))) if np.size(lens_B) else 0
  ctx, valid = stepping.step_contexts(ctx0, jnp.asarray(lens_B), max(L, 1))
  hist = stepping.add_hist(jnp.zeros((C,), jnp.float32), ctx, valid)
  zero = jnp.zeros((C,), jnp.float32)
  return StepCounters(
    gen=hist,
    forced=zero,
    scored=hist if scored else zero,
    calls=jnp.int32(calls),
    vcalls=jnp.int32(vcalls),
  )


def _sample_answers(answer_fn, cands_PxNxL, lens_PxN):
  """Answer ids int32 [P, N] of the candidates by `answer_fn` (default
  `sequence_answer_ids`). Raises ValueError for a result of the wrong shape or
  dtype."""
  P, N = lens_PxN.shape
  answer_fn = answer_fn or sequence_answer_ids
  answers = np.asarray(answer_fn(np.asarray(cands_PxNxL), np.asarray(lens_PxN)))
  if answers.shape != (P, N) or answers.dtype.kind not in "iu":
    raise ValueError(
      f"answer_fn must return integer answer ids of shape "
      f"[P, N] = {(P, N)}, got {answers.dtype} {answers.shape}"
    )
  return jnp.asarray(answers, jnp.int32)


def _selection_scores(config: SelectionConfig, inputs: Inputs, ptoks, plens, out):
  """(scores float32 [P, N], scorer calls) of `generate`'s samples `out`:
  `score_samples` by `inputs.scorer`, aggregated per `config.aggregation`
  (one outcome step per sample when it is None)."""
  step_scores, mask, vcalls = score_samples(
    inputs.scorer,
    inputs.scorer_params,
    ptoks,
    plens,
    out.tokens,
    out.logprobs,
    out.lengths,
    delimiter_ids=config.delimiter_ids,
    stop_ids=config.stop_ids,
    outcome=config.aggregation is None,
    pad_id=config.pad_id,
  )
  scores = selection.aggregate_step_scores(
    step_scores, mask, config.aggregation or "last"
  )
  return scores, vcalls


def _check_selection_inputs(
  config: SelectionConfig, model, prompts, inputs: Inputs, name: str
):
  """(prompt_tokens_PxT, prompt_lengths_P) by `check_prompts`, after checking
  that a scoring rule has a scorer and the delimiters are in the vocabulary.
  Raises ValueError otherwise."""
  if config.rule.needs_scores:
    _need_scorer(name, inputs)
  check_token_ids(
    "SelectionConfig.delimiter_ids",
    config.delimiter_ids,
    getattr(model, "vocab_size", None),
  )
  return check_prompts(
    model,
    prompts,
    inputs.prompt_lengths,
    config.pad_id,
    pad_id_name="SelectionConfig.pad_id",
  )


def run_selection(
  config: SelectionConfig,
  model,
  params,
  prompts,
  key,
  inputs: Inputs,
  name: str = "selection",
) -> MethodOutput:
  """N samples per problem (`generate(num_samples=N)`), scored, one selected.

  Args:
    config: SelectionConfig. model / params / prompts / key: as `run`.
    inputs: the scorer (needed when `config.rule.needs_scores`), answer_fn
      (host callable (tokens int [P, N, L], lengths int [P, N]) -> int
      [P, N] answer ids, negative = no answer; default
      `sequence_answer_ids`) and prompt_lengths.
    name: the method name for messages and the output.

  Returns:
    MethodOutput with candidates [P, N, L], answers, scores (None when the
    rule reads none), the chosen index and a Compute record (one prefill per
    prompt; verifier cost when the scorer wraps a model).

  Raises:
    ValueError: a missing scorer, ids outside the vocabulary, malformed
      prompts (`check_prompts`), an answer_fn result of the wrong shape, or
      a model without a ModelConfig that does not declare itself free.
  """
  rule, N, L = config.rule, config.n_samples, config.max_new_tokens
  ptoks, plens = _check_selection_inputs(config, model, prompts, inputs, name)
  out = generate(
    model,
    params,
    prompts,
    key,
    L,
    config.sampling(),
    prompt_lengths=inputs.prompt_lengths,
    stop_tokens=config.stop_ids,
    pad_id=config.pad_id,
    num_samples=N,
  )
  P = ptoks.shape[0]
  cands = out.tokens.reshape(P, N, L)
  cand_lens = out.lengths.reshape(P, N)
  answers = _sample_answers(inputs.answer_fn, cands, cand_lens)
  scores, scorer, vcalls = None, None, 0
  if rule.needs_scores:
    scorer = inputs.scorer
    scores, vcalls = _selection_scores(config, inputs, ptoks, plens, out)
  _, index = rule(answers, jnp.zeros((P, N), jnp.float32) if scores is None else scores)
  counts = _sample_counters(
    plens, out.lengths, N, ptoks.shape[1] + L + 1, out.steps, scorer is not None, vcalls
  )
  rec = stepping.compute_record(model, scorer, plens, counts, rows=P * N)
  toks, lens = _pick(cands, cand_lens, index)
  return MethodOutput(
    method=name,
    budget=N,
    tokens=toks,
    lengths=lens,
    compute=rec,
    raw=out,
    index=index,
    candidates=cands,
    candidate_lengths=cand_lens,
    scores=scores,
    answers=answers,
  )


# ----------------------------------------------------------------------------
# The search runners (thin adapters)
# ----------------------------------------------------------------------------


def _run_search(
  runner, config, model, params, prompts, key, inputs: Inputs, name, **kw
):
  """`runner(model, params, scorer, scorer_params, prompts, key, config,
  prompt_lengths=..., **kw)` -> (result, Compute), the call shared by the
  step searches. Raises as the runner, or for a missing scorer."""
  _need_scorer(name, inputs)
  return runner(
    model,
    params,
    inputs.scorer,
    inputs.scorer_params,
    prompts,
    key,
    config,
    prompt_lengths=inputs.prompt_lengths,
    **kw,
  )


def _candidates_output(name: str, res, rec, scores, **extra) -> MethodOutput:
  """MethodOutput of a search whose result holds candidates (tokens [P, N, L],
  lengths [P, N]) and the chosen index `best` [P]."""
  toks, lens = _pick(res.tokens, res.lengths, res.best)
  return MethodOutput(
    method=name,
    budget=0,
    tokens=toks,
    lengths=lens,
    compute=rec,
    raw=res,
    index=res.best,
    candidates=res.tokens,
    candidate_lengths=res.lengths,
    scores=scores,
    **extra,
  )


def _run_pf(
  config, model, params, prompts, key, inputs: Inputs, name: str = "pf"
) -> MethodOutput:
  """`particle_filter.run_particle_filter`; chosen = the largest weight
  (`PFResult.best`). Raises as the runner, or for a missing scorer."""
  run = particle_filter.run_particle_filter
  res, rec = _run_search(run, config, model, params, prompts, key, inputs, name)
  return _candidates_output(name, res, rec, res.aggregated_scores, weights=res.weights)


def _run_beam(
  config, model, params, prompts, key, inputs: Inputs, name: str = "beam"
) -> MethodOutput:
  """`beam_search.run_beam_search` (beam or DVTS by `config.method`); chosen =
  the best pool entry. Raises as the runner, or for a missing scorer."""
  run = beam_search.run_beam_search
  res, rec = _run_search(run, config, model, params, prompts, key, inputs, name)
  return _candidates_output(name, res, rec, res.scores)


@dataclasses.dataclass(frozen=True)
class AStarRun:
  """A* settings: the search config and the prompt pad id (`run_astar`'s
  pad_id; answers are 0-padded)."""

  config: astar_lib.AStarConfig
  pad_id: int = 0


def _run_astar(
  plan: AStarRun, model, params, prompts, key, inputs: Inputs, name: str = "astar"
) -> MethodOutput:
  """`astar.run_astar`: one answer per problem (no candidates). Raises as the
  runner, or for a missing scorer."""
  run, cfg = astar_lib.run_astar, plan.config
  res, rec = _run_search(
    run, cfg, model, params, prompts, key, inputs, name, pad_id=plan.pad_id
  )
  return MethodOutput(
    method=name, budget=0, tokens=res.tokens, lengths=res.length, compute=rec, raw=res
  )


def _run_speculative(
  config, model, params, prompts, key, inputs: Inputs, name: str = "speculative"
) -> MethodOutput:
  """`speculative.speculative_generate` with `model` as the target and
  `inputs.draft` as the draft: one sample of exactly `max_new_tokens` tokens
  per problem (no stop tokens). Raises as the runner (e.g. a missing draft)."""
  out, rec = speculative.speculative_generate(
    model,
    params,
    inputs.draft,
    inputs.draft_params,
    prompts,
    key,
    config,
    prompt_lengths=inputs.prompt_lengths,
  )
  toks = out.tokens
  lens = jnp.full((toks.shape[0],), toks.shape[1], jnp.int32)
  return MethodOutput(
    method=name, budget=0, tokens=toks, lengths=lens, compute=rec, raw=out
  )


# ----------------------------------------------------------------------------
# Builders: budget + settings -> the algorithm's config
# ----------------------------------------------------------------------------


def _budget(budget) -> int:
  return check_int("budget", budget, lo=1)


def _build_selection(budget, *, rule=Majority, **settings) -> SelectionConfig:
  rule_fields = {f.name for f in dataclasses.fields(rule)}
  rule_kw = {k: settings.pop(k) for k in list(settings) if k in rule_fields}
  return SelectionConfig(n_samples=_budget(budget), rule=rule(**rule_kw), **settings)


def _build_pf(budget, **settings) -> particle_filter.PFConfig:
  return particle_filter.PFConfig(n_particles=_budget(budget), **settings)


def _build_beam(budget, *, beam_width: int = 4, **settings):
  n = _budget(budget)
  check_int("beam_width", beam_width, lo=1)
  return beam_search.BeamConfig(n_paths=n, beam_width=min(beam_width, n), **settings)


def _build_astar(
  budget, *, tokens_per_sample=None, pad_id: int = 0, **settings
) -> AStarRun:
  n = _budget(budget)
  if tokens_per_sample is None:
    if "max_iterations" in settings:
      raise ValueError(
        "astar: the budget sets max_iterations (N expansions); "
        "pass tokens_per_sample to budget tokens instead"
      )
    pop = check_int("pop_batch", settings.get("pop_batch", 1), lo=1)
    if n % pop:
      raise ValueError(
        f"astar: budget {n} (states expanded) must be a multiple of pop_batch={pop}"
      )
    settings["max_iterations"] = float(n // pop)
  else:
    if "token_budget" in settings:
      raise ValueError(
        "astar: with tokens_per_sample the budget sets "
        "token_budget (N * tokens_per_sample)"
      )
    t = check_int("tokens_per_sample", tokens_per_sample, lo=1)
    settings["token_budget"] = float(n * t)
  return AStarRun(config=astar_lib.AStarConfig(**settings), pad_id=pad_id)


def _build_speculative(
  budget, tree: str = "chain", width: int = 2, **settings
) -> speculative.SpecConfig:
  """SpecConfig whose `tree` family drafts exactly `budget` tokens per target
  call (`spec_trees.tree_for_budget`; `width` is unused by the chain)."""
  shape = spec_trees.tree_for_budget(tree, _budget(budget), width)
  return speculative.SpecConfig(tree=shape, **settings)


# ----------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------


def _fields(cls, *drop) -> tuple:
  return tuple(f.name for f in dataclasses.fields(cls) if f.name not in drop)


@dataclasses.dataclass(frozen=True)
class Entry:
  """A registered method.

  family: which runner family (for tables). budget: what the budget counts.
  builder: (budget, **settings) -> the algorithm's config. runner: (config,
  model, params, prompts, key, Inputs, name) -> MethodOutput. fixed: builder
  arguments the name sets and settings may not change; defaults: the name's
  defaults, which settings may override. accepts: () -> the setting names
  (evaluated lazily, from the config's fields).
  """

  family: str
  budget: str
  builder: Callable
  runner: Callable
  accepts: Callable[[], tuple]
  fixed: Mapping = dataclasses.field(default_factory=dict)
  defaults: Mapping = dataclasses.field(default_factory=dict)

  def settings(self) -> tuple:
    """The setting names this method accepts (sorted)."""
    return tuple(sorted(set(self.accepts()) - set(self.fixed)))

  def check_settings(self, name: str, settings: Mapping) -> None:
    """Raises ValueError naming the settings `name` does not take, and the
    ones it takes."""
    unknown = sorted(set(settings) - set(self.settings()))
    if unknown:
      raise ValueError(
        f"method {name!r} does not take setting(s) {unknown}; "
        f"it takes {list(self.settings())} (the budget sets "
        f"the {self.budget})"
      )

  def build(self, name: str, budget, settings: Mapping):
    """The algorithm's config at `budget`.

    Raises:
      ValueError: an unknown setting (naming the accepted ones), a bad budget,
        or the algorithm config's own error.
    """
    self.check_settings(name, settings)
    return self.builder(budget, **{**self.defaults, **settings, **self.fixed})


_SEL = functools.partial(_fields, SelectionConfig, "n_samples", "rule")
_PF = functools.partial(_fields, particle_filter.PFConfig, "n_particles")
_BEAM = functools.partial(_fields, beam_search.BeamConfig, "n_paths")
_ASTAR = lambda: _fields(astar_lib.AStarConfig) + ("tokens_per_sample", "pad_id")
_SPEC = lambda: _fields(speculative.SpecConfig, "tree") + ("width",)


def _speculative(tree: str, what: str) -> Entry:
  return Entry(
    "speculative",
    f"draft tokens per target call ({what})",
    _build_speculative,
    _run_speculative,
    _SPEC,
    fixed=dict(tree=tree),
  )


def _selection(rule, **defaults) -> Entry:
  accepts = lambda: _SEL() + _fields(rule)
  return Entry(
    "selection",
    "number of samples per problem",
    _build_selection,
    run_selection,
    accepts,
    fixed=dict(rule=rule),
    defaults=defaults,
  )


def _pf(**defaults) -> Entry:
  return Entry(
    "particle_filter",
    "number of particles per problem",
    _build_pf,
    _run_pf,
    _PF,
    defaults=defaults,
  )


def _beam(method: str) -> Entry:
  return Entry(
    "beam_search",
    "number of paths per problem",
    _build_beam,
    _run_beam,
    lambda: _BEAM() + ("beam_width",),
    fixed=dict(method=method),
  )


REGISTRY: dict[str, Entry] = {
  "majority": _selection(Majority),
  "weighted_majority": _selection(WeightedMajority),
  "best_of_n": _selection(BestOfN),
  "best_of_n_prm": _selection(BestOfN, aggregation="min"),
  "best_of_majority": _selection(BestOfMajority),
  "pf": _pf(weighting="prm_logit"),
  "pf_smc": _pf(weighting="smc", ess_threshold=0.5),
  "epf": _pf(weighting="prm_logit", entropic="ess"),
  "particle_gibbs": _pf(weighting="prm_logit", n_sweeps=2),
  "beam": _beam("beam"),
  "dvts": _beam("dvts"),
  "astar": Entry(
    "astar",
    "states expanded (or N * tokens_per_sample generated tokens)",
    _build_astar,
    _run_astar,
    _ASTAR,
  ),
  "speculative": _speculative("chain", "chain length gamma"),
  "speculative_iid": _speculative("iid", "width i.i.d. chains"),
  "speculative_rsd_c": _speculative("rsd_c", "width children at the root"),
  "speculative_rsd_s": _speculative("rsd_s", "stochastic beam of width"),
}
NAMES = tuple(REGISTRY)


def entry(name: str) -> Entry:
  """The registry entry of `name`.

  Raises:
    ValueError: an unknown name, listing the known ones.
  """
  if not isinstance(name, str) or name not in REGISTRY:
    raise ValueError(f"unknown method {name!r}; known methods: {NAMES}")
  return REGISTRY[name]


@dataclasses.dataclass(frozen=True)
class Method:
  """A method name with its settings (the budget comes at run time).

  Build with `method(name, **settings)`; `config(budget)` gives the
  algorithm's own config (PFConfig, BeamConfig, AStarRun, SpecConfig or
  SelectionConfig). `settings` is a dict (so a Method is not hashable).

  Raises (on construction):
    ValueError: an unknown name (listing the known ones) or a setting the
      method does not take (listing the ones it takes).
  """

  name: str
  settings: Mapping = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    object.__setattr__(self, "settings", dict(self.settings))
    entry(self.name).check_settings(self.name, self.settings)

  def config(self, budget):
    """The algorithm's config at `budget` (an int >= 1).

    Raises:
      ValueError: a bad budget or the algorithm config's own error.
    """
    return entry(self.name).build(self.name, budget, self.settings)

  def replace(self, name: Optional[str] = None, **settings) -> "Method":
    """Another name and / or more settings (e.g. `m.replace("pf_smc")`)."""
    return Method(self.name if name is None else name, {**self.settings, **settings})


def method(name: str, **settings) -> Method:
  """`Method(name, settings)`, checked: the one way to name a method.

  Raises:
    ValueError: an unknown name (listing the known ones) or a setting the
      method does not take (listing the ones it takes).
  """
  return Method(name, settings)


def build(name: str, budget, **settings):
  """The algorithm's config of method `name` at `budget` (`Method.config`).

  Raises:
    ValueError: as `method` and `Method.config`.
  """
  return method(name, **settings).config(budget)


def run(
  method_or_name,
  model,
  params,
  prompts,
  key,
  budget,
  *,
  scorer=None,
  scorer_params=None,
  draft=None,
  draft_params=None,
  answer_fn=None,
  prompt_lengths=None,
  **settings,
) -> MethodOutput:
  """Run any registered method at a budget: the one entry point.

  Args:
    method_or_name: a registered name (then `settings` are its settings) or a
      `Method` (then no `settings`).
    model / params: the policy (decode interface) and its parameters; the
      TARGET for speculative decoding.
    prompts: P token lists, or a right-padded [P, T] array with
      `prompt_lengths` [P] (`jaxllm.generate.check_prompts`).
    key: PRNG key, passed unchanged to the runner.
    budget: int >= 1; what it counts depends on the method (module table).
    scorer / scorer_params: a step scorer (`algorithms.scorers`) for the
      methods that score.
    draft / draft_params: the draft model for speculative decoding.
    answer_fn: selection only: (tokens int [P, N, L], lengths int [P, N]) ->
      int [P, N] answer ids (negative = no answer) the votes group by;
      default: equal token sequences (`sequence_answer_ids`).
    **settings: the method's settings (`REGISTRY[name].settings()`).

  Returns:
    MethodOutput: tokens [P, L] / lengths [P] of each problem's answer, the
    candidates and their scores / weights where the method has them, the
    runner's result (`raw`) and one `jaxllm.flops.Compute`.

  Raises:
    ValueError: an unknown method (listing the known ones), an unknown
      setting (listing the accepted ones), settings given with a Method, a
      bad budget, a missing scorer / draft, or any error of the runner
      (ids outside the vocabulary, malformed prompts, sizes that do not fit).
  """
  if isinstance(method_or_name, Method):
    if settings:
      raise ValueError(
        f"settings {sorted(settings)} given with a Method: put "
        f"them in the Method (method(name, **settings))"
      )
    m = method_or_name
  else:
    m = method(method_or_name, **settings)
  config = m.config(budget)
  inputs = Inputs(
    scorer=scorer,
    scorer_params=scorer_params,
    draft=draft,
    draft_params=draft_params,
    answer_fn=answer_fn,
    prompt_lengths=prompt_lengths,
  )
  out = entry(m.name).runner(config, model, params, prompts, key, inputs, name=m.name)
  return dataclasses.replace(out, budget=int(budget))


def describe() -> str:
  """A table of every registered method: family, what the budget counts, the
  settings it takes."""
  lines = []
  for name, e in REGISTRY.items():
    lines.append(
      f"{name:<18} {e.family:<16} budget = {e.budget}\n"
      f"{'':<18} settings: {', '.join(e.settings())}"
    )
  return "\n".join(lines)
