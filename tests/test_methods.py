"""algorithms/methods.py: one budget-driven entry point for every method.

Checked against independent references: the underlying runners called
directly with the same key and hand-built configs (so the registry's presets
are pinned too), numpy replays of the selection rules and of the step split,
full-sequence reward-model scoring (`RewardModel.score_all`, no cache) for the
incremental step scores, and jaxllm.flops sums for the Compute record.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms import methods
from algorithms.astar import AStarConfig, run_astar
from algorithms.beam_search import BeamConfig, run_beam_search
from algorithms.particle_filter import PFConfig, run_particle_filter
from algorithms.scorers import ConfidenceScorer, ModelStepScorer
from algorithms.speculative import SpecConfig, speculative_generate
from algorithms.stepping import BUDGET, DELIMITER, STOP
from jaxllm import (
  BigramLM,
  ModelConfig,
  Transformer,
  generate,
  init_params,
  make_sampling,
)
from jaxllm import flops as flops_lib
from jaxllm.cache import take_rows
from jaxllm.flops import Compute
from jaxllm.reward import RewardModel, init_reward_params

V, EOS, DELIM = 6, 2, 3
TABLE = jax.random.normal(jax.random.key(0), (V, V))
MODEL = BigramLM(V)
PROMPTS = [[1], [4, 5]]
P = len(PROMPTS)
KEY = jax.random.key(7)
STEP = dict(delimiter_ids=(DELIM,), stop_ids=(EOS,))
# Each family's settings for the tiny runs (a script keeps one such dict).
SETTINGS = {
  "selection": dict(max_new_tokens=8, **STEP),
  "particle_filter": dict(max_steps=3, max_step_tokens=3, **STEP),
  "beam_search": dict(beam_width=2, max_steps=3, max_step_tokens=3, **STEP),
  "astar": dict(
    max_step_tokens=3, max_solution_tokens=9, capacity=16, num_children=2, **STEP
  ),
  "speculative": dict(max_new_tokens=8),
}
BUDGET_N = 4
DRAFT = dict(draft=BigramLM(V), draft_params=0.5 * TABLE)


def _settings(name):
  return SETTINGS[methods.REGISTRY[name].family]


def _run(name, budget=BUDGET_N, **kw):
  return methods.run(
    name,
    MODEL,
    TABLE,
    PROMPTS,
    KEY,
    budget,
    scorer=ConfidenceScorer(),
    **DRAFT,
    **kw,
    **_settings(name),
  )


def _assert_same_tree(a, b):
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------- every method -------------------------------


@pytest.mark.parametrize("name", methods.NAMES)
def test_every_method_returns_the_documented_shapes(name):
  out = _run(name)
  assert out.method == name and out.budget == BUDGET_N
  assert isinstance(out.compute, Compute)
  assert out.compute.prefill_tokens > 0 and out.compute.generated_tokens > 0
  L = out.tokens.shape[1]
  assert out.tokens.shape == (P, L) and out.lengths.shape == (P,)
  assert np.all((np.asarray(out.lengths) >= 1) & (np.asarray(out.lengths) <= L))
  if out.candidates is not None:
    N = out.candidates.shape[1]
    assert N == BUDGET_N  # samples / particles / pool paths
    assert out.candidates.shape == (P, N, L)
    assert out.candidate_lengths.shape == (P, N)
    index = np.asarray(out.index)
    assert index.shape == (P,)
    chosen = np.asarray(out.candidates)[np.arange(P), index]
    np.testing.assert_array_equal(chosen, out.tokens)
    np.testing.assert_array_equal(
      np.asarray(out.candidate_lengths)[np.arange(P), index], out.lengths
    )
    for arr in (out.scores, out.weights, out.answers):
      assert arr is None or arr.shape == (P, N)
  family = methods.REGISTRY[name].family
  assert (out.candidates is None) == (family in ("astar", "speculative"))
  assert (out.weights is not None) == (family == "particle_filter")


def test_swapping_methods_is_one_string():
  base = methods.method("pf", max_steps=3, max_step_tokens=3, **STEP)
  for name in ("pf", "pf_smc", "epf", "particle_gibbs"):
    a = methods.run(
      base.replace(name), MODEL, TABLE, PROMPTS, KEY, 4, scorer=ConfidenceScorer()
    )
    b = methods.run(
      name,
      MODEL,
      TABLE,
      PROMPTS,
      KEY,
      4,
      scorer=ConfidenceScorer(),
      max_steps=3,
      max_step_tokens=3,
      **STEP,
    )
    assert a.method == b.method == name
    _assert_same_tree(a.raw, b.raw)
    assert a.compute == b.compute


# ----------------------- equal to the runner called directly -----------------


PF_KW = dict(n_particles=4, max_steps=3, max_step_tokens=3, **STEP)
BEAM_KW = dict(n_paths=4, beam_width=2, max_steps=3, max_step_tokens=3, **STEP)
ASTAR_KW = dict(
  max_step_tokens=3, max_solution_tokens=9, capacity=16, num_children=2, **STEP
)
SCORER = ConfidenceScorer()


def _direct(runner, config_cls, **config):
  """`runner` (a step search) called directly on the shared test problem."""
  return lambda: runner(MODEL, TABLE, SCORER, None, PROMPTS, KEY, config_cls(**config))


DIRECT = {
  "pf": _direct(run_particle_filter, PFConfig, **PF_KW),
  "pf_smc": _direct(
    run_particle_filter, PFConfig, weighting="smc", ess_threshold=0.5, **PF_KW
  ),
  "epf": _direct(run_particle_filter, PFConfig, entropic="ess", **PF_KW),
  "particle_gibbs": _direct(run_particle_filter, PFConfig, n_sweeps=2, **PF_KW),
  "beam": _direct(run_beam_search, BeamConfig, method="beam", **BEAM_KW),
  "dvts": _direct(run_beam_search, BeamConfig, method="dvts", **BEAM_KW),
  "astar": _direct(run_astar, AStarConfig, max_iterations=4.0, **ASTAR_KW),
  "speculative": lambda: speculative_generate(
    MODEL,
    TABLE,
    DRAFT["draft"],
    DRAFT["draft_params"],
    PROMPTS,
    KEY,
    SpecConfig(method="chain", gamma=4, max_new_tokens=8),
  ),
}


@pytest.mark.parametrize("name", sorted(DIRECT))
def test_search_methods_equal_their_runner_with_the_same_key(name):
  out = _run(name)
  res, rec = DIRECT[name]()
  _assert_same_tree(out.raw, res)
  assert out.compute == rec


def test_astar_token_budget_is_budget_times_tokens_per_sample():
  out = methods.run(
    "astar",
    MODEL,
    TABLE,
    PROMPTS,
    KEY,
    3,
    scorer=SCORER,
    tokens_per_sample=5,
    **SETTINGS["astar"],
  )
  res, rec = run_astar(
    MODEL, TABLE, SCORER, None, PROMPTS, KEY, AStarConfig(token_budget=15.0, **ASTAR_KW)
  )
  _assert_same_tree(out.raw, res)
  assert out.compute == rec
  np.testing.assert_array_equal(out.tokens, res.tokens)
  np.testing.assert_array_equal(out.lengths, res.length)


# ------------------------------ selection ------------------------------------


def _answer_fn(tokens, lengths):
  """Answers that collide often: the sample length mod 3."""
  assert tokens.shape[:2] == lengths.shape
  return lengths % 3


def _np_steps(seq, delims=(DELIM,), stops=(EOS,)):
  """A sample's steps by `stepping.sample_step`'s rule, single-token ids."""
  steps, cur = [], []
  for t in seq:
    cur.append(int(t))
    if t in stops or t in delims:
      steps.append(cur)
      cur = []
  return steps + ([cur] if cur else [])


def _np_choice(name, answers, scores):
  """Reference selection for one problem: (answer, index)."""
  ids = sorted(set(answers.tolist()))
  first = lambda a: int(np.flatnonzero(answers == a)[0])
  if name in ("best_of_n", "best_of_n_prm"):
    i = int(np.argmax(scores))
    return answers[i], i
  if name == "majority":
    value = {a: np.sum(answers == a) for a in ids}
  elif name == "weighted_majority":
    value = {a: scores[answers == a].astype(np.float64).sum() for a in ids}
  else:  # best_of_majority, alpha = 0.3, reward = mean
    kept = [a for a in ids if np.mean(answers == a) >= 0.3] or ids
    value = {a: scores[answers == a].astype(np.float64).mean() for a in kept}
  best = max(value.values())
  a = min(a for a in value if value[a] == best)
  return a, first(a)


SELECTION = (
  "majority",
  "weighted_majority",
  "best_of_n",
  "best_of_n_prm",
  "best_of_majority",
)


@pytest.mark.parametrize("name", SELECTION)
def test_selection_equals_generate_then_a_numpy_reference(name):
  N, L = 6, 8
  extra = dict(alpha=0.3) if name == "best_of_majority" else {}
  out = methods.run(
    name,
    MODEL,
    TABLE,
    PROMPTS,
    KEY,
    N,
    scorer=SCORER,
    answer_fn=_answer_fn,
    **SETTINGS["selection"],
    **extra,
  )
  gen = generate(
    MODEL, TABLE, PROMPTS, KEY, L, make_sampling(1.0), stop_tokens=[EOS], num_samples=N
  )
  toks = np.asarray(gen.tokens).reshape(P, N, L)
  lens = np.asarray(gen.lengths).reshape(P, N)
  lps = np.asarray(gen.logprobs).reshape(P, N, L)
  np.testing.assert_array_equal(out.candidates, toks)
  np.testing.assert_array_equal(out.candidate_lengths, lens)
  answers = lens % 3
  np.testing.assert_array_equal(out.answers, answers)
  # ConfidenceScorer: exp(mean log-prob) of the whole sample (outcome) or of
  # each step, aggregated by min (best_of_n_prm's default).
  scores = np.zeros((P, N))
  for p in range(P):
    for n in range(N):
      if name == "best_of_n_prm":
        steps, off = _np_steps(toks[p, n, : lens[p, n]]), 0
        per = []
        for s in steps:
          per.append(np.exp(lps[p, n, off : off + len(s)].mean()))
          off += len(s)
        scores[p, n] = min(per)
      else:
        scores[p, n] = np.exp(lps[p, n, : lens[p, n]].mean())
  if name == "majority":
    assert out.scores is None
  else:
    np.testing.assert_allclose(out.scores, scores, rtol=1e-5)
  for p in range(P):
    _, i = _np_choice(name, answers[p], scores[p])
    assert int(out.index[p]) == i
    np.testing.assert_array_equal(out.tokens[p], toks[p, i])
    assert int(out.lengths[p]) == lens[p, i]
  # Compute: one prefill per prompt, every sample token generated; the
  # generator's confidence costs no verifier.
  assert out.compute == Compute(
    prefill_tokens=3.0,
    generated_tokens=float(lens.sum()),
    model_calls=1.0 + int(gen.steps),
    # every one of the P x N rows runs at every decode call
    executed_tokens=float(P * N * int(gen.steps)),
  )


def test_default_answers_are_equal_token_sequences():
  toks = np.array([[[1, 2, 9], [1, 2, 7], [1, 3, 0], [1, 2, 0]]])
  lens = np.array([[2, 2, 2, 3]])
  np.testing.assert_array_equal(methods.sequence_answer_ids(toks, lens), [[0, 0, 1, 2]])


MOD = 4099


@dataclasses.dataclass(frozen=True)
class StepProbe:
  """score = 1e5 * step length + 1e4 * how it ended + a hash of its tokens
  (exact in float32): tells exactly which tokens the step held."""

  def init(self, params, tokens_BxT, lengths_B, cache_size):
    return jnp.zeros((tokens_BxT.shape[0],), jnp.int32)

  def score(self, params, state, step, active_B):
    h = jnp.zeros(step.length.shape, jnp.int32)
    for i in range(step.tokens.shape[1]):
      h = jnp.where(i < step.length, (h * 7 + step.tokens[:, i] + 1) % MOD, h)
    return state, (1e5 * step.length + 1e4 * step.ended + h).astype(jnp.float32)

  def reorder(self, state, index_N):
    return take_rows(state, index_N)


def _np_probe(tokens, ended):
  h = 0
  for t in tokens:
    h = (h * 7 + t + 1) % MOD
  return 1e5 * len(tokens) + 1e4 * ended + h


def _np_seq_steps(seq, delims, stops):
  """Steps with token-sequence delimiters: a sequence matches on the step's
  last tokens (never across the step boundary); stop wins over delimiter."""
  steps, cur = [], []
  for t in seq:
    cur.append(int(t))
    if any(cur[-len(q) :] == list(q) for q in stops if len(cur) >= len(q)):
      steps.append((cur, STOP))
      cur = []
    elif any(cur[-len(q) :] == list(q) for q in delims if len(cur) >= len(q)):
      steps.append((cur, DELIMITER))
      cur = []
  return steps + ([(cur, BUDGET)] if cur else [])


@pytest.mark.parametrize("outcome", [False, True])
def test_score_samples_splits_steps_like_the_step_searches(outcome):
  rng = np.random.default_rng(0)
  Pn, N, L = 2, 5, 9
  toks = rng.integers(0, 5, (Pn * N, L)).astype(np.int32)
  lens = rng.integers(1, L + 1, Pn * N).astype(np.int32)
  delims, stops = ((3, 3), (4,)), ((2,),)
  prompts = np.array([[1] * 16, [2] * 16], np.int32)
  scores, mask, calls = methods.score_samples(
    StepProbe(),
    None,
    prompts,
    np.array([1, 3]),
    toks,
    np.zeros(toks.shape, np.float32),
    lens,
    delimiter_ids=delims,
    stop_ids=stops,
    outcome=outcome,
  )
  scores, mask = np.asarray(scores).reshape(Pn * N, -1), np.asarray(mask)
  mask = mask.reshape(Pn * N, -1)
  most = 0
  for b in range(Pn * N):
    seq = toks[b, : lens[b]]
    steps = _np_seq_steps(seq, () if outcome else delims, stops)
    most = max(most, len(steps))
    assert mask[b].sum() == len(steps) and mask[b, : len(steps)].all()
    for k, (s, ended) in enumerate(steps):
      assert scores[b, k] == _np_probe(s, ended), (b, k, s)
  assert int(calls) == most


# ----------------------- a tiny Transformer and a real PRM -------------------


TINY = ModelConfig(
  vocab_size=V, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=32, max_seq_len=64
)


@pytest.mark.parametrize("name", ["best_of_n", "best_of_n_prm"])
def test_transformer_with_a_reward_model_scores_and_compute(name):
  model, params = Transformer(TINY), init_params(TINY, jax.random.key(1))
  rm = RewardModel(TINY)
  rparams = init_reward_params(TINY, jax.random.key(2))
  N = 3
  out = methods.run(
    name,
    model,
    params,
    PROMPTS,
    KEY,
    N,
    scorer=ModelStepScorer(rm),
    scorer_params=rparams,
    **SETTINGS["selection"],
  )
  toks, lens = np.asarray(out.candidates), np.asarray(out.candidate_lengths)
  # Reference scores: the reward model over each full sequence, no cache,
  # read at each step's last token (the outcome: the sample's last token).
  seqs = [
    PROMPTS[p] + list(toks[p, n, : lens[p, n]]) for p in range(P) for n in range(N)
  ]
  flat = np.zeros((P * N, 16), np.int32)  # right-padded: causal, so unaffected
  for r, seq in enumerate(seqs):
    flat[r, : len(seq)] = seq
  flat_s = np.asarray(rm.score_all(rparams, jnp.asarray(flat)))
  want = np.zeros((P, N))
  n_steps = 0
  for p in range(P):
    for n in range(N):
      seq, all_s = seqs[p * N + n], flat_s[p * N + n]
      ends, off = [], len(PROMPTS[p])
      for s in _np_steps(toks[p, n, : lens[p, n]]):
        off += len(s)
        ends.append(off - 1)
      n_steps = max(n_steps, len(ends))
      want[p, n] = (
        min(all_s[e] for e in ends) if name == "best_of_n_prm" else all_s[len(seq) - 1]
      )
  np.testing.assert_allclose(out.scores, want, atol=2e-5)
  assert np.array_equal(out.index, np.argmax(want, axis=1))
  # Compute: prompts prefilled once (forks are free), each sample token at its
  # exact context, the reward model over prompts + samples.
  plens = np.array([len(q) for q in PROMPTS])
  dec = sum(
    flops_lib.decode_flops(TINY, plens[p] + t + 1)
    for p in range(P)
    for n in range(N)
    for t in range(lens[p, n])
  )
  pre = flops_lib.prefill_flops(TINY, plens).sum()
  c = out.compute
  assert c.prefill_tokens == plens.sum()
  assert c.generated_tokens == lens.sum()
  assert c.model_calls == 1 + int(out.raw.steps)
  assert c.prefill_flops == pytest.approx(pre)
  assert c.decode_flops == pytest.approx(dec)
  assert c.verifier_tokens == plens.sum() + lens.sum()
  assert c.verifier_flops == pytest.approx(pre + dec)
  assert c.verifier_calls == 1 + (n_steps if name == "best_of_n_prm" else 1)


@pytest.mark.parametrize("name", ["pf_smc", "dvts", "astar", "speculative"])
def test_transformer_search_methods_run_and_count_flops(name):
  model, params = Transformer(TINY), init_params(TINY, jax.random.key(1))
  rm = RewardModel(TINY)
  out = methods.run(
    name,
    model,
    params,
    PROMPTS,
    KEY,
    BUDGET_N,
    scorer=ModelStepScorer(rm),
    scorer_params=init_reward_params(TINY, jax.random.key(2)),
    draft=model,
    draft_params=params,
    **_settings(name),
  )
  assert out.tokens.shape[0] == P and out.compute.flops > 0
  assert out.compute.decode_flops > 0


# ------------------------------ the registry ----------------------------------


def test_unknown_method_names_raise_naming_the_known_ones():
  for call in (
    lambda: methods.method("beem"),
    lambda: methods.build("beem", 4),
    lambda: methods.run("beem", MODEL, TABLE, PROMPTS, KEY, 4),
  ):
    with pytest.raises(ValueError, match="unknown method 'beem'") as e:
      call()
    for name in methods.NAMES:
      assert repr(name) in str(e.value)


@pytest.mark.parametrize(
  "name, settings, message",
  [
    (
      "pf",
      dict(beam_width=2),
      (
        r"'pf' does not take setting\(s\) \['beam_width'\]; it takes "
        r"\[.*'max_steps'"
      ),
    ),
    ("pf", dict(n_particles=2), r"does not take .*n_particles.*particles"),
    ("dvts", dict(method="beam"), r"'dvts' does not take setting\(s\) \['method'\]"),
    ("majority", dict(rule=None), r"does not take setting\(s\) \['rule'\]"),
    ("speculative", dict(gamma=3), r"does not take .*gamma"),
  ],
)
def test_settings_a_method_does_not_take_raise(name, settings, message):
  with pytest.raises(ValueError, match=message):
    methods.method(name, **settings)


def test_budgets_and_inputs_are_checked():
  with pytest.raises(ValueError, match="budget"):
    methods.build("pf", 0, **SETTINGS["particle_filter"])
  with pytest.raises(ValueError, match="multiple of pop_batch=2"):
    methods.build("astar", 3, pop_batch=2, **SETTINGS["astar"])
  with pytest.raises(ValueError, match="budget sets max_iterations"):
    methods.build("astar", 3, max_iterations=5.0, **SETTINGS["astar"])
  with pytest.raises(ValueError, match="'best_of_n' needs a scorer"):
    methods.run("best_of_n", MODEL, TABLE, PROMPTS, KEY, 2, **SETTINGS["selection"])
  with pytest.raises(ValueError, match="needs a draft"):
    methods.run("speculative", MODEL, TABLE, PROMPTS, KEY, 2, max_new_tokens=4)
  m = methods.method("pf", **SETTINGS["particle_filter"])
  with pytest.raises(ValueError, match="given with a Method"):
    methods.run(m, MODEL, TABLE, PROMPTS, KEY, 2, scorer=SCORER, max_steps=2)
  with pytest.raises(ValueError, match=r"answer_fn must return .*\[P, N\]"):
    methods.run(
      "majority",
      MODEL,
      TABLE,
      PROMPTS,
      KEY,
      2,
      answer_fn=lambda t, l: l[:, 0],
      **SETTINGS["selection"],
    )


def test_presets_and_budget_rules():
  s = SETTINGS
  assert methods.build("beam", 2, **s["beam_search"]).beam_width == 2
  assert methods.build("beam", 8, **s["beam_search"]) == BeamConfig(
    method="beam", **dict(BEAM_KW, n_paths=8)
  )
  assert methods.build("pf_smc", 4, **s["particle_filter"]) == PFConfig(
    weighting="smc", ess_threshold=0.5, **PF_KW
  )
  # A preset's default can be overridden, the budget cannot.
  assert (
    methods.build("pf_smc", 4, ess_threshold=0.25, **s["particle_filter"]).ess_threshold
    == 0.25
  )
  plan = methods.build("astar", 6, pop_batch=2, pad_id=1, **s["astar"])
  assert plan == methods.AStarRun(
    AStarConfig(pop_batch=2, max_iterations=3.0, **ASTAR_KW), pad_id=1
  )
  assert methods.build("speculative", 5, max_new_tokens=8) == SpecConfig(
    method="chain", gamma=5, max_new_tokens=8
  )
  # Tree families: budget 8 draft tokens per call at width 2 (hand-sized).
  assert methods.build("speculative_iid", 8, width=2, max_new_tokens=8) == (
    SpecConfig(method="iid", num_drafts=2, depth=4, max_new_tokens=8)
  )
  assert methods.build("speculative_rsd_s", 8, width=2, max_new_tokens=8) == (
    SpecConfig(method="rsd_s", beam_width=2, depth=4, max_new_tokens=8)
  )
  assert methods.build("speculative_rsd_c", 8, width=2, max_new_tokens=8) == (
    SpecConfig(method="rsd_c", branching=(2, 1, 1, 1), max_new_tokens=8)
  )
  with pytest.raises(ValueError, match="cannot spend exactly"):
    methods.build("speculative_iid", 9, width=2, max_new_tokens=8)
  sel = methods.build("best_of_majority", 16, alpha=0.2, **s["selection"])
  assert sel.n_samples == 16 and sel.rule == methods.BestOfMajority(0.2)
  prm = methods.build("best_of_n_prm", 2, **s["selection"])
  assert prm.aggregation == "min"
  for name, e in methods.REGISTRY.items():
    assert e.settings() and name in methods.describe()


@pytest.mark.parametrize("name", ["pf", "beam", "best_of_n"])
def test_executed_work_counts_every_row_at_every_call(name):
  """Executed decode row-positions = rows x model calls after the prefill
  (finished rows and padded positions included), never below the useful
  generated tokens; the rows are the P x budget particles / paths / samples."""
  rec = _run(name).compute
  assert rec.executed_tokens == P * BUDGET_N * (rec.model_calls - 1)
  assert rec.executed_tokens >= rec.generated_tokens > 0
