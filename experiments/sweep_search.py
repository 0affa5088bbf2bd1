"""The search rows of the scaling sweep (experiments/scaling.py).

A search row is one search method run for real at one budget and seed on
every problem of the sweep: particle filtering (the reference weighting
'pf', SMC with ESS-triggered resampling 'pf_smc', entropic annealing 'epf'),
PRM beam search ('beam'), DVTS ('dvts') and A* ('astar'), each under a step
verifier as the row `method@verifier` (plain `method` for 'learned'); the
greedy baseline ('greedy': greedy decoding, one sample at temperature 0)
runs here too. Every search goes through the one method registry
(`algorithms.methods.run`; budget = particles / paths / A* sample-equivalent
tokens) with the config fields of `SEARCH_FIELDS` and the task's step /
stop / pad ids (`search_method`), guided by the task's step scorer, in
blocks of config.search_problems_per_call problems (0 or absent: all at
once). The task (experiments/sweep_tasks.py) grades every output under each
of its rules; a method that returns importance weights is judged by the
weighted vote of its candidates' answers.

The sweep checks every method's settings at every budget with
`search_config` before any model is loaded (`scaling.validate_sweep`) and
splits the rows, one `search_row` each, across processes
(`scaling._search_rows`).
"""

from __future__ import annotations

import time

import jax
import numpy as np

from algorithms import methods as methods_lib
from algorithms import particle_filter
from experiments import analysis, sweep_tasks
from experiments import verifiers as vlib
from jaxllm import Transformer, generate, make_sampling
from jaxllm import flops as flops_lib

# Search methods run for real at every budget through the one method registry
# (algorithms.methods: N particles / paths; A*: a generated-token budget of
# N * config.astar_tokens_per_sample), guided by the PRM through its own KV
# cache (algorithms.scorers.ModelStepScorer).
SEARCH_METHODS = ("pf", "pf_smc", "epf", "beam", "dvts", "astar")
assert all(m in methods_lib.REGISTRY for m in SEARCH_METHODS)
# Each search method's settings (algorithms.methods) -> the config field it is
# read from; every method also gets the task's step / stop / pad ids.
_PF_FIELDS = {
  "max_steps": "max_steps",
  "max_step_tokens": "max_step_tokens",
  "sampling_temperature": "temperature",
}
SEARCH_FIELDS = {
  "pf": _PF_FIELDS,
  "pf_smc": _PF_FIELDS,
  "epf": _PF_FIELDS,
  "beam": {"beam_width": "beam_width", **_PF_FIELDS},
  "dvts": {"beam_width": "beam_width", **_PF_FIELDS},
  "astar": {
    "capacity": "astar_capacity",
    "num_children": "astar_children",
    "max_step_tokens": "max_step_tokens",
    "max_solution_tokens": "max_new_tokens",
    "expected_total_steps": "astar_expected_steps",
    "tokens_per_sample": "astar_tokens_per_sample",
    "temperature": "temperature",
  },
}


def search_method(method: str, config, task=None) -> methods_lib.Method:
  """The registered method (`algorithms.methods`) with the settings this sweep
  gives it: the config fields of `SEARCH_FIELDS[method]` and the task's
  delimiter / stop / pad ids (`task`; None: placeholder ids, enough to
  validate the settings before any tokenizer is loaded). pf is the reference
  weighting, pf_smc SMC with ESS-triggered resampling, epf entropic
  annealing (ESS mode): the registry's presets; beam / DVTS cap the beam
  width at the budget.

  Raises:
    ValueError: a method this sweep does not run, listing the ones it does.
  """
  method = vlib.split_name(method)[0]
  if method not in SEARCH_FIELDS:
    raise ValueError(f"unknown search method {method!r}; known: {SEARCH_METHODS}")
  ids = (task.delimiter_ids, task.stop_ids, task.pad_id) if task else ((1,), (2,), 0)
  return methods_lib.method(
    method,
    delimiter_ids=ids[0],
    stop_ids=ids[1],
    pad_id=ids[2],
    **{s: config[f] for s, f in SEARCH_FIELDS[method].items()},
  )


def search_config(method: str, k: int, config):
  """The algorithm config of a search method at budget k
  (`algorithms.methods.Method.config`); each validates itself.

  Raises:
    ValueError: an unknown method, or the algorithm config's own error.
  """
  return search_method(method, config).config(k)


def run_search(method: str, k: int, policy, verifiers, problems, config, seed: int):
  """Run a search row (or a baseline) with budget k on every problem.

  method: a row name, `m` or `m@verifier` (`verifiers.split_name`): the
  search is guided by that verifier's step scores through the one scorer
  interface (`algorithms.scorers`; the task's `step_scorer`): on arith the
  learned PRM through its own KV cache, or the in-graph oracle
  (`verifiers.oracle_model`, charged the learned PRM's FLOPs) with its
  noise; on gsm8k the generator's confidence. The PRNG key depends on
  (seed, k) only, so every verifier sees the same policy randomness.
  'greedy' runs `run_greedy`. A method that returns importance weights
  (particle filtering) is judged by the weighted vote of its candidates'
  answers; the others by their chosen answer. With
  config.search_problems_per_call (gsm8k) the problems run in blocks of
  that many, block c with the key folded with c (a search keeps per-row
  state: A* a KV cache per frontier node, so memory grows with the
  problems run together).

  Returns (per-problem correctness float64 [P] of 0 / 1 under the task's
  headline rule, per-problem mean Compute dict, {rule: (correct [P],
  unparsable [P])} for every rule of the task).
  """
  base, vname = vlib.split_name(method)
  task = sweep_tasks.for_config(config)
  if base == "greedy":
    return run_greedy(policy, problems, config)
  key = jax.random.key(seed * 104729 + k)
  P = len(problems)
  n = config.get("search_problems_per_call", 0) or P
  by_rule = {rule: ([], []) for rule in task.rules}
  total = flops_lib.Compute()
  for c, i in enumerate(range(0, P, n)):
    block = problems[i : i + n]
    got, rec = _search_block(
      task, base, vname, k, policy, verifiers, block, config,
      key if n >= P else jax.random.fold_in(key, c),
    )  # fmt: skip
    total = total + rec
    for rule, (correct, unparsable) in got.items():
      by_rule[rule][0].extend(correct)
      by_rule[rule][1].extend(unparsable)
  return _search_result(task, by_rule, total.per_problem(P).as_dict())


def _search_block(task, base, vname, k, policy, verifiers, problems, config, key):
  """One call of a search method on `problems`: ({rule: (correct [P],
  unparsable [P])}, total Compute)."""
  cfg, params = policy
  scorer, sparams = task.step_scorer(vname, verifiers, problems)
  out = methods_lib.run(
    search_method(base, config, task),
    Transformer(cfg),
    params,
    task.prompts(problems),
    key,
    k,
    scorer=scorer,
    scorer_params=sparams,
  )
  if out.weights is None:
    toks, lens = np.asarray(out.tokens), np.asarray(out.lengths)
    return _graded_outputs(task, problems, toks, lens), out.compute
  toks, lens = np.asarray(out.candidates), np.asarray(out.candidate_lengths)
  graded = [
    [task.grade(problems[p], task.decode(toks[p, n, : lens[p, n]])) for n in range(k)]
    for p in range(len(problems))
  ]
  by_rule = {}
  for rule in task.rules:
    keys = [[g[rule][0] for g in row] for row in graded]
    picked = particle_filter.weighted_vote(keys, np.asarray(out.weights))
    by_rule[rule] = (
      [
        sweep_tasks.answer_key_is_gold(task, p, a, rule)
        for a, p in zip(picked, problems)
      ],
      [a is None for a in picked],
    )
  return by_rule, out.compute


def _graded_outputs(task, problems, toks, lens) -> dict:
  """{rule: (correct [P], unparsable [P])} of one output per problem."""
  graded = [
    task.grade(p, task.decode(toks[i, : lens[i]])) for i, p in enumerate(problems)
  ]
  return {
    rule: ([g[rule][1] for g in graded], [g[rule][0] is None for g in graded])
    for rule in task.rules
  }


def _search_result(task, by_rule, compute) -> tuple:
  rules = {
    r: (np.asarray(c, np.float64), np.asarray(u, np.float64))
    for r, (c, u) in by_rule.items()
  }
  return rules[task.rules[0]][0], compute, rules


def run_greedy(policy, problems, config):
  """Greedy decoding (temperature 0, one sample per problem), in blocks of
  `rows_per_call` problems. Returns what `run_search` returns: per-problem
  correctness [P], the per-problem mean Compute dict (the prompt's prefill
  and the decode FLOPs of the greedy lengths, as
  `sweep_tasks.selection_compute` counts one sample) and the per-rule
  outcomes."""
  task = sweep_tasks.for_config(config)
  cfg, params = policy
  prompts = task.prompts(problems)
  step = min(len(prompts), config.rows_per_call)
  toks, lens = [], []
  for i in range(0, len(prompts), step):
    chunk = prompts[i : i + step]
    n = len(chunk)
    out = generate(
      Transformer(cfg),
      params,
      chunk + [chunk[-1]] * (step - n),  # one shape, one compile
      jax.random.key(0),
      config.max_new_tokens,
      make_sampling(0.0),
      stop_tokens=list(task.stop_ids),
      pad_id=task.pad_id,
    )
    toks += list(np.asarray(out.tokens)[:n])
    lens += list(np.asarray(out.lengths)[:n])
  by_rule = _graded_outputs(task, problems, np.asarray(toks), np.asarray(lens))
  pool = dict(
    prompt_lengths=np.array([len(x) for x in prompts]),
    lengths=np.asarray(lens)[:, None],
  )
  return _search_result(
    task, by_rule, sweep_tasks.selection_compute("majority", pool, 1, cfg, None)
  )


def search_row(method, k, seed, models, config) -> dict:
  """One search (or baseline) row at budget k and seed (`run_search`), with
  per-problem correctness and its binomial standard error, and with several
  grading rules each rule's accuracy and unparsable fraction (`rules`). A
  run_search returning a plain accuracy (no per-problem values) gets se =
  nan."""
  policy, verifiers, problems = models
  t0 = time.perf_counter()
  acc, comp, *by_rule = run_search(method, k, policy, verifiers, problems, config, seed)
  per = np.atleast_1d(np.asarray(acc, np.float64))
  row = dict(
    method=method,
    budget=k,
    seed=seed,
    verifier=vlib.split_name(method)[1],
    accuracy=float(per.mean()),
    accuracy_se=float("nan"),
    compute=comp,
    wall_s=time.perf_counter() - t0,
    n_problems=config.n_problems,
  )
  if per.size == config.n_problems:
    row.update(
      accuracy_se=float(analysis.standard_error(per)), per_problem=per.tolist()
    )
  if by_rule and len(by_rule[0]) > 1:
    row["rules"] = {
      rule: dict(
        accuracy=float(c.mean()),
        accuracy_se=float(analysis.standard_error(c)),
        unparsable=float(u.mean()),
      )
      for rule, (c, u) in by_rule[0].items()
    }
  return row
