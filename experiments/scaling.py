r"""Compute-optimal scaling sweep: methods x budgets x seeds -> accuracy vs FLOPs.

  python -m experiments.scaling --config=configs/scaling_arith.py \
      [--config.budgets=1,2,4,8] [--workdir=results/scaling/arith]

1. Per seed, one large sample pool: `pool_size` solutions per problem from the
   policy (each prompt prefilled ONCE and its cache forked, `num_samples`),
   labelled by the exact checker, scored by the ORM and (per step) the PRM.
   The pool is saved atomically (`pool_seed{S}.npz`); a rerun reuses it.
2. Selection methods at every budget k come from the pool with unbiased
   subset estimators (algorithms/estimators.py): coverage = pass@k,
   majority = maj@k, weighted majority (ORM), best-of-N (ORM; PRM with
   min / last / prod / mean aggregation) = BoN@k, best-of-majority = BoM@k.
   One pool therefore yields the whole budget curve.
   Search methods (particle filtering: reference / SMC / entropic, PRM beam
   search, DVTS, A*) are run for real at each of `search_budgets` through the
   one method registry (`algorithms.methods.run`, budget = particles / paths /
   A* sample-equivalent tokens), guided by the PRM through its own KV cache.
3. Each (method, budget, seed) row is appended to `rows.jsonl` as soon as it
   is computed (one line, flushed and fsynced); a killed sweep rerun with the
   same --workdir skips finished rows and loses nothing.
4. At the end: the table (mean over seeds), scaling-law fits (coverage as an
   exponentiated power law in k; accuracy against log10 FLOPs per method), the
   compute-optimal method per FLOPs budget, and PNG plots, all from the rows
   this config asks for (other rows in rows.jsonl are kept, not reported).

Before any model is loaded the config is checked (`validate_sweep`: the
schema of configs/scaling_arith.py, value ranges, and the algorithm config of
every search method at every budget), --workdir is locked against a second
sweep (experiments/workdir.py) and its settings.json must match the config in
every field except `EXTENDABLE` (budgets, seeds and method lists: a row is a
function of its (method, budget, seed), the pool of its seed and the pinned
fields only, so adding budgets, seeds or methods extends a finished sweep and
changes none of its rows).

Several processes (experiments/distributed.py flags: --coordinator_address,
--num_processes, --process_id, --distributed; every process runs the same
command): process 0 alone locks, reads and writes --workdir and tells the
others what is missing; each pool's generate and verifier calls, and the
search rows, are split across the processes and gathered, so the rows are a
single process's (see `run_sweep`; BUILD.md has the launch commands). Each
process computes on its first local device (--mesh is refused).

Compute per problem and budget k (FLOPs from jaxllm.flops): the prompt's
prefill once, k samples' decode FLOPs (mean generated length in the pool),
and for verifier methods k verifier passes over prompt + sample.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from algorithms import estimators, particle_filter, selection
from algorithms import methods as methods_lib
from experiments import analysis, config_utils, distributed, workdir
from experiments.tasks import arith
from jaxllm import Transformer, checkpoint, generate, make_sampling
from jaxllm import flops as flops_lib

DEFAULT_CONFIG = config_utils.config_path("scaling_arith.py")
TOK = arith.TOKENIZER
PRM_PREFIX = "bon_prm_"  # + an aggregation of algorithms.selection
SELECTION_METHODS = (
  ("coverage", "majority", "weighted_majority_orm", "bon_orm")
  + tuple(PRM_PREFIX + a for a in ("min", "last", "prod", "mean"))
  + ("bom_orm",)
)
assert all(
  m[len(PRM_PREFIX) :] in selection.AGGREGATIONS
  for m in SELECTION_METHODS
  if m.startswith(PRM_PREFIX)
)
# Search methods run for real at every budget through the one method registry
# (algorithms.methods: N particles / paths; A*: a generated-token budget of
# N * config.astar_tokens_per_sample), guided by the PRM through its own KV
# cache (algorithms.scorers.ModelStepScorer).
SEARCH_METHODS = ("pf", "pf_smc", "epf", "beam", "dvts", "astar")
assert all(m in methods_lib.REGISTRY for m in SEARCH_METHODS)
# Config fields that only choose which rows exist; every other field is pinned
# in out_dir/settings.json (see the module doc).
EXTENDABLE = (
  "budgets",
  "seeds",
  "methods",
  "search_methods",
  "search_budgets",
  "search_seeds",
)
RESULT_FILES = ("rows.jsonl", "pool_seed*.npz")
# Each search method's settings (algorithms.methods) -> the config field it is
# read from; every method also gets the arith step / stop / pad ids.
_PF_FIELDS = {"max_steps": "max_steps", "max_step_tokens": "max_step_tokens"}
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
  },
}


# ------------------------------ validation ---------------------------------


@dataclasses.dataclass(frozen=True)
class SweepPlan:
  """What a validated config asks for (tuples of ints / method names)."""

  methods: tuple
  budgets: tuple
  seeds: tuple
  search: tuple
  search_budgets: tuple
  search_seeds: tuple

  def keys(self) -> list:
    """Every (method, budget, seed) row of this config, selection first."""
    return [
      (m, k, s) for s in self.seeds for m in self.methods for k in self.budgets
    ] + [
      (m, k, s)
      for s in self.search_seeds
      for m in self.search
      for k in self.search_budgets
    ]


def search_method(method: str, config) -> methods_lib.Method:
  """The registered method (`algorithms.methods`) with the settings this sweep
  gives it: the config fields of `SEARCH_FIELDS[method]` and the arith
  delimiter / stop / pad ids. pf is the reference weighting, pf_smc SMC with
  ESS-triggered resampling, epf entropic annealing (ESS mode): the registry's
  presets; beam / DVTS cap the beam width at the budget.

  Raises:
    ValueError: a method this sweep does not run, listing the ones it does.
  """
  if method not in SEARCH_FIELDS:
    raise ValueError(f"unknown search method {method!r}; known: {SEARCH_METHODS}")
  return methods_lib.method(
    method,
    delimiter_ids=(TOK.newline_id,),
    stop_ids=(TOK.eos_id,),
    pad_id=TOK.pad_id,
    **{s: config[f] for s, f in SEARCH_FIELDS[method].items()},
  )


def search_config(method: str, k: int, config):
  """The algorithm config of a search method at budget k
  (`algorithms.methods.Method.config`); each validates itself.

  Raises:
    ValueError: an unknown method, or the algorithm config's own error.
  """
  return search_method(method, config).config(k)


def validate_sweep(config) -> SweepPlan:
  """Check a sweep config completely before any model is loaded: the schema of
  configs/scaling_arith.py (unknown fields, types), value ranges, non-empty
  method / budget / seed lists, budgets <= pool_size, and the algorithm config
  of every search method at every search budget (e.g. beam search needs a
  budget that is a multiple of its beam width). Pure: reads no file but the
  schema, writes nothing.

  Raises:
    ValueError: naming the offending config field(s).
  """
  config_utils.check(config, config_utils.load_config_file(DEFAULT_CONFIG))
  config_utils.positive(
    config,
    "n_problems",
    "pool_size",
    "max_new_tokens",
    "max_steps",
    "rows_per_call",
    "max_step_tokens",
    "beam_width",
    "astar_children",
    "astar_capacity",
    "astar_expected_steps",
    "astar_tokens_per_sample",
  )
  config_utils.non_negative(config, "temperature")
  methods = config_utils.str_list(config, "methods", SELECTION_METHODS)
  search = config_utils.str_list(config, "search_methods", SEARCH_METHODS)
  if not methods and not search:
    raise ValueError(
      "config.methods and config.search_methods are both empty: nothing to run"
    )
  budgets = config_utils.int_list(
    config,
    "budgets",
    high=config.pool_size,
    high_name="config.pool_size",
    allow_empty=not methods,
  )
  seeds = config_utils.int_list(config, "seeds", low=0, allow_empty=not methods)
  search_budgets = config_utils.int_list(
    config, "search_budgets", allow_empty=not search
  )
  search_seeds = config_utils.int_list(
    config, "search_seeds", low=0, allow_empty=not search
  )
  for m in search:
    for k in search_budgets:
      try:
        search_config(m, k, config)
      except ValueError as e:
        used = ", ".join(f"config.{f}={config[f]!r}" for f in SEARCH_FIELDS[m].values())
        raise ValueError(
          f"config.search_budgets: budget {k} does not work for "
          f"search method {m!r} (with {used}): {e}"
        ) from None
  return SweepPlan(
    tuple(methods),
    tuple(budgets),
    tuple(seeds),
    tuple(search),
    tuple(search_budgets),
    tuple(search_seeds),
  )


def sweep_settings(config) -> dict:
  """The settings pinned in out_dir/settings.json: every field but
  `EXTENDABLE`. Accepts a ConfigDict or the nested dict of a saved
  config.json (an earlier version's record)."""
  return {
    k: (v.to_dict() if hasattr(v, "to_dict") else v)
    for k, v in config.items()
    if k not in EXTENDABLE
  }


def _pin(config, out_dir, check_only=False) -> dict:
  # Sweeps before settings.json wrote their whole config to config.json first.
  return workdir.pin_settings(
    out_dir,
    sweep_settings(config),
    results=RESULT_FILES,
    legacy=workdir.legacy_config_json(sweep_settings),
    check_only=check_only,
  )


def check_sweep(config, out_dir) -> SweepPlan:
  """`validate_sweep`, plus the check that out_dir (if it exists) was made
  with the same settings. Writes nothing (a dry run).

  Raises:
    ValueError: naming the offending config field(s).
  """
  plan = validate_sweep(config)
  # With several processes only process 0 reads the workdir: its checks run
  # in `prepare` (under distributed.run_together), which stops every process
  # with process 0's message; a local check here would stop one process alone
  # and leave the others waiting in jax.distributed.
  if jax.process_count() == 1:
    _pin(config, out_dir, check_only=True)
  return plan


# ----------------------------- the sample pool -----------------------------


def dense_answer_ids(answers_PxN):
  """Per problem, map answer values to 0.. ids in order of first appearance;
  None -> -1 (the `answers` array of a pool, here and in the GenRM study)."""
  P, N = len(answers_PxN), len(answers_PxN[0])
  ids = np.full((P, N), -1, np.int32)
  for p in range(P):
    table = {}
    for n, a in enumerate(answers_PxN[p]):
      if a is not None:
        ids[p, n] = table.setdefault(a, len(table))
  return ids


def build_pool(policy, verifiers, problems, config, seed: int) -> dict:
  """Sample, label and score `pool_size` solutions per problem.

  Several processes (experiments/distributed.py): the generate calls (one
  per block of problems, each with its own key) and the verifier calls (one
  per block of `rows_per_call` rows) are split across processes and their
  results gathered, so every process returns the whole pool, in problem
  order, equal to one process's pool: each block is computed from the same
  inputs, shapes and key wherever it runs. Every process must call it.
  """
  cfg, params = policy
  P, N = len(problems), config.pool_size
  prompts = [TOK.encode(p.prompt, add_bos=True) for p in problems]
  step = max(1, config.rows_per_call // N)  # problems per generate call
  model = Transformer(cfg)

  def sample(i):
    chunk = prompts[i : i + step]
    n = len(chunk)
    chunk = chunk + [chunk[-1]] * (step - n)  # one shape, one compile
    out = generate(
      model,
      params,
      chunk,
      jax.random.key(seed * 7919 + i),
      config.max_new_tokens,
      make_sampling(config.temperature),
      stop_tokens=[TOK.eos_id],
      pad_id=TOK.pad_id,
      num_samples=N,
    )
    return np.asarray(out.tokens)[: n * N], np.asarray(out.lengths)[: n * N]

  blocks = distributed.split_map(sample, range(0, P, step))
  toks = np.concatenate([t for t, _ in blocks]).reshape(P, N, -1)
  lens = np.concatenate([n for _, n in blocks]).reshape(P, N)
  texts = [[TOK.decode(toks[p, n, : lens[p, n]]) for n in range(N)] for p in range(P)]
  answers = [[arith.extract_answer(t) for t in row] for row in texts]
  correct = np.array(
    [[arith.check_answer(problems[p], t) for t in texts[p]] for p in range(P)], bool
  )
  # Verifier scores: full sequences BOS + prompt + sample (one forward each).
  seqs = [
    [prompts[p] + list(toks[p, n, : lens[p, n]]) for n in range(N)] for p in range(P)
  ]
  T = max(len(s) for row in seqs for s in row)
  T = 1 << (T - 1).bit_length()
  flat = np.full((P * N, T), TOK.pad_id, np.int32)
  for r, s in enumerate(s for row in seqs for s in row):
    flat[r, : len(s)] = s
  scores = {}
  for name, (rm, rparams) in verifiers.items():
    fn = jax.jit(rm.score_all)
    out = distributed.split_map(
      lambda i, fn=fn, rparams=rparams: np.asarray(
        fn(rparams, jnp.asarray(flat[i : i + config.rows_per_call]))
      ),
      range(0, P * N, config.rows_per_call),
    )
    scores[name] = np.concatenate(out).reshape(P, N, T)
  # ORM: score at the last token. PRM: scores at step delimiters (newline or
  # EOS) inside the generated part.
  seq_len = np.array([[len(s) for s in row] for row in seqs])
  orm = np.take_along_axis(scores["orm"], (seq_len - 1)[..., None], 2)[..., 0]
  S = config.max_steps
  prm_steps = np.zeros((P, N, S), np.float32)
  prm_mask = np.zeros((P, N, S), bool)
  for p in range(P):
    for n in range(N):
      gen = toks[p, n, : lens[p, n]]
      ends = np.flatnonzero((gen == TOK.newline_id) | (gen == TOK.eos_id))[:S]
      pos = len(prompts[p]) + ends
      prm_steps[p, n, : len(ends)] = scores["prm"][p, n, pos]
      prm_mask[p, n, : len(ends)] = True
  return dict(
    answers=dense_answer_ids(answers),
    correct=correct,
    lengths=lens,
    prompt_lengths=np.array([len(x) for x in prompts]),
    orm=orm,
    prm_steps=prm_steps,
    prm_mask=prm_mask,
  )


def load_pool(path: str, config) -> dict:
  """A saved pool, checked against the config's shapes.

  Raises:
    ValueError: naming the file when its arrays do not have the shapes
      (n_problems, pool_size[, max_steps]) the config asks for.
  """
  pool = dict(np.load(path))
  P, N, S = config.n_problems, config.pool_size, config.max_steps
  want = dict(
    answers=(P, N),
    correct=(P, N),
    lengths=(P, N),
    orm=(P, N),
    prompt_lengths=(P,),
    prm_steps=(P, N, S),
    prm_mask=(P, N, S),
  )
  bad = {
    k: pool[k].shape if k in pool else None
    for k, w in want.items()
    if k not in pool or pool[k].shape != w
  }
  if bad:
    raise ValueError(
      f"{path} does not match the config (array: shape found, "
      f"None = missing) {bad}; expected {want}"
    )
  return pool


# ------------------------------ estimators --------------------------------


def prm_scores(pool: dict, aggregation: str) -> np.ndarray:
  """PRM score per sample [P, N] (float64): the pool's step scores aggregated
  by `algorithms.selection.aggregate_step_scores` (a sample with no scored
  step gets -inf, so it ranks below every scored sample)."""
  return np.asarray(
    selection.aggregate_step_scores(pool["prm_steps"], pool["prm_mask"], aggregation),
    np.float64,
  )


def selection_accuracy(method: str, pool: dict, ks, seed: int) -> np.ndarray:
  """Mean accuracy over problems for every k in ks, shape [len(ks)] (unbiased
  subset estimators).

  Each k's value depends only on (method, pool, k, seed): the Monte Carlo
  estimators (majority-type methods when C(n, k) is large) draw from a
  generator seeded by (seed, k), so a row is the same whether it was computed
  with other budgets, alone after a resume, or in a sweep with more budgets.

  Raises:
    ValueError: an unknown method, or a k outside [1, pool size].
  """
  a, c = pool["answers"], pool["correct"]
  n = a.shape[1]
  if method == "coverage":
    return estimators.pass_at_k(np.full(len(c), n), c.sum(1), ks).mean(0)
  subset = {
    "majority": lambda k: estimators.majority_at_k(a, c, [k], seed=[seed, k]),
    "weighted_majority_orm": lambda k: estimators.weighted_majority_at_k(
      a, pool["orm"], c, [k], seed=[seed, k]
    ),
    "bom_orm": lambda k: estimators.best_of_majority_at_k(
      a, pool["orm"], c, [k], alpha=0.1, seed=[seed, k]
    ),
  }
  if method in subset:
    return np.array([subset[method](int(k)).value_PxK[:, 0].mean() for k in ks])
  if method == "bon_orm":
    return estimators.best_of_n_at_k(pool["orm"], c, ks).mean(0)
  if method in SELECTION_METHODS and method.startswith(PRM_PREFIX):
    s = prm_scores(pool, method[len(PRM_PREFIX) :])
    return estimators.best_of_n_at_k(s, c, ks).mean(0)
  raise ValueError(f"unknown method {method!r}; known: {SELECTION_METHODS}")


def selection_compute(method, pool, k, policy_cfg, verifier_cfg) -> dict:
  """Per-problem compute of a selection method at budget k (means)."""
  prompt = pool["prompt_lengths"].astype(np.float64)
  gen = pool["lengths"].astype(np.float64)  # [P, N]
  pre = flops_lib.prefill_flops(policy_cfg, pool["prompt_lengths"]).mean()
  # Decode FLOPs of one sample: each token attends to prompt + its prefix.
  ctx = prompt[:, None] + (gen + 1) / 2
  dec = (gen * flops_lib.decode_flops(policy_cfg, ctx)).mean()
  rec = flops_lib.Compute(
    prefill_tokens=prompt.mean(),
    generated_tokens=k * gen.mean(),
    model_calls=0.0,
    prefill_flops=pre,
    decode_flops=k * dec,
  )
  if method not in ("coverage", "majority"):
    vt = prompt[:, None] + gen
    vflops = (vt * flops_lib.decode_flops(verifier_cfg, (vt + 1) / 2)).mean()
    rec = rec + flops_lib.Compute(
      verifier_tokens=k * vt.mean(), verifier_calls=float(k), verifier_flops=k * vflops
    )
  return rec.as_dict()


# ----------------------------- search methods -----------------------------


def run_search(method: str, k: int, policy, verifiers, problems, config, seed: int):
  """Run a search method with budget k on every problem (`algorithms.methods.run`).

  A method that returns importance weights (particle filtering) is judged by
  the weighted vote of its candidates' answers; the others by their chosen
  answer. Returns (accuracy, per-problem mean Compute dict)."""
  from algorithms.scorers import ModelStepScorer

  cfg, params = policy
  rm, rparams = verifiers["prm"]
  prompts = [TOK.encode(p.prompt, add_bos=True) for p in problems]
  key = jax.random.key(seed * 104729 + k)
  out = methods_lib.run(
    search_method(method, config),
    Transformer(cfg),
    params,
    prompts,
    key,
    k,
    scorer=ModelStepScorer(rm),
    scorer_params=rparams,
  )
  P = len(problems)
  if out.weights is not None:
    toks = np.asarray(out.candidates)
    lens = np.asarray(out.candidate_lengths)
    texts = [[TOK.decode(toks[p, n, : lens[p, n]]) for n in range(k)] for p in range(P)]
    answers = [[arith.extract_answer(t) for t in row] for row in texts]
    picked = particle_filter.weighted_vote(answers, np.asarray(out.weights))
    correct = [a is not None and a == p.answer for a, p in zip(picked, problems)]
  else:
    toks, lens = np.asarray(out.tokens), np.asarray(out.lengths)
    correct = [
      arith.check_answer(p, TOK.decode(toks[i, : lens[i]]))
      for i, p in enumerate(problems)
    ]
  return float(np.mean(correct)), out.compute.per_problem(P).as_dict()


# --------------------------------- sweep ----------------------------------


def check_model_dirs(config) -> None:
  """The files `load_models` reads exist (checked before loading anything).

  Raises:
    ValueError: naming the missing file and the config field pointing there.
  """
  workdir.require_files(
    config, "policy_dir", (checkpoint.MODEL_CONFIG_FILE, workdir.CONFIG_FILE, "policy")
  )
  workdir.require_files(
    config, "verifier_dir", (checkpoint.MODEL_CONFIG_FILE, "prm", "orm")
  )


def load_model_configs(config):
  """(policy ModelConfig, verifier ModelConfig), read from their JSON files
  without loading parameters (what the compute accounting needs)."""
  for field in ("policy_dir", "verifier_dir"):
    workdir.require_files(config, field, (checkpoint.MODEL_CONFIG_FILE,))
  return (
    checkpoint.load_model_config(config.policy_dir),
    checkpoint.load_model_config(config.verifier_dir),
  )


def load_models(config):
  """(policy (cfg, params), policy training config, verifier cfg,
  {'prm', 'orm': (RewardModel, params)})."""
  check_model_dirs(config)
  cfg, params, pconfig = workdir.load_policy(config.policy_dir)
  vcfg, verifiers = workdir.load_reward_models(config.verifier_dir)
  return (cfg, params), pconfig, vcfg, verifiers


def summarize(rows, methods, budgets, out_dir, log=workdir.progress):
  """Table, fits, compute-optimal choice and plots from the finished rows.

  rows: {(method, budget, seed): row} -- only the rows to report (run_sweep
  passes the current config's). Works for any non-empty subset of methods:
  coverage alone gets its table and power-law fit, the compute-optimal choice
  and the accuracy plot need a method other than coverage, and a fit that is
  impossible for a method (fewer than 2 distinct FLOPs) is reported as such.
  Writes summary.json (atomically) and PNGs into out_dir; returns the summary.
  """
  table = {}  # method -> (budgets, flops, accuracy) over budgets with rows
  for m in methods:
    ks, accs, fl = [], [], []
    for k in budgets:
      rs = [r for r in rows.values() if r["method"] == m and r["budget"] == k]
      if rs:
        ks.append(k)
        accs.append(float(np.mean([r["accuracy"] for r in rs])))
        fl.append(float(np.mean([r["compute"]["flops"] for r in rs])))
    if accs:
      table[m] = (np.array(ks), np.array(fl), np.array(accs))
  log("\naccuracy (mean over seeds); columns = budget (samples)")
  log(f"{'method':<24}" + "".join(f"{k:>8}" for k in budgets))
  for m, (ks, _, accs) in table.items():
    acc_of = dict(zip(ks.tolist(), accs))
    log(
      f"{m:<24}"
      + "".join(f"{acc_of[k]:>8.3f}" if k in acc_of else f"{'-':>8}" for k in budgets)
    )
  summary = {
    "table": {
      m: {"budgets": ks.tolist(), "flops": f.tolist(), "accuracy": a.tolist()}
      for m, (ks, f, a) in table.items()
    }
  }
  if "coverage" in table:
    ks, _, cov = table["coverage"]
    if len(cov) < 3:
      log(f"\ncoverage fit: needs >= 3 budgets, have {len(cov)}")
    elif not (cov > 0).all():
      log(
        "\ncoverage fit: not possible (zero coverage at budgets "
        f"{ks[cov <= 0].tolist()})"
      )
    else:
      fit = analysis.fit_coverage_power_law(ks, cov)
      summary["coverage_fit"] = dataclasses.asdict(fit)
      log(
        f"\ncoverage fit: log(coverage(k)) = {fit.a:.4f} * k^{fit.b:.4f}, "
        f"R^2 = {fit.r2:.4f}"
      )
      analysis.plot_coverage(ks, cov, os.path.join(out_dir, "coverage.png"), fit=fit)
  methods_acc = {m: (f, a) for m, (_, f, a) in table.items() if m != "coverage"}
  fits, fit_errors = {}, {}
  for m, (f, a) in methods_acc.items():
    if len(f) < 2:
      continue
    try:
      fits[m] = analysis.fit_log_linear(f, a)
    except ValueError as e:  # e.g. every budget at the same FLOPs
      fit_errors[m] = str(e)
  summary["accuracy_vs_log10_flops"] = {
    m: dataclasses.asdict(f) for m, f in fits.items()
  }
  if fit_errors:
    summary["accuracy_vs_log10_flops_errors"] = fit_errors
  if methods_acc:
    log("\naccuracy vs log10 FLOPs (per method): slope, R^2")
    for m, f in fits.items():
      log(f"  {m:<24} slope {f.slope:+.4f}  R^2 {f.r2:.3f}")
    for m, e in fit_errors.items():
      log(f"  {m:<24} no fit: {e}")
    all_flops = np.unique(np.concatenate([v[0] for v in methods_acc.values()]))
    levels = np.geomspace(all_flops.min(), all_flops.max(), 6)
    choice = analysis.compute_optimal_method(levels, methods_acc)
    summary["compute_optimal"] = {
      "budget_flops": levels.tolist(),
      "method": [str(x) for x in choice.methods],
      "accuracy": [float(x) for x in choice.accuracy],
    }
    log("\ncompute-optimal method per FLOPs budget")
    for b, m, a in zip(levels, choice.methods, choice.accuracy):
      log(f"  {b:10.3e} FLOPs: {m} ({a:.3f})")
    analysis.plot_accuracy_vs_flops(
      methods_acc, os.path.join(out_dir, "accuracy_vs_flops.png"), fits=fits
    )
  else:
    log(
      "\nonly coverage (pass@k, an oracle) was run: no accuracy-vs-FLOPs "
      "fit or compute-optimal choice"
    )
  comp = astar_comparison(rows)
  if comp:
    summary["astar_vs"] = comp
    log(
      "\nA* against best-of-N / PF: A*'s cheapest budget reaching the same "
      "accuracy (mean over seeds); ratios = A* / reference"
    )
    for c in comp:
      if c["astar_budget"] is None:
        log(
          f"  {c['reference']:<14} @ {c['budget']:>3} (acc {c['accuracy']:.3f}):"
          f" not reached (A* best {c['astar_best']:.3f})"
        )
      else:
        log(
          f"  {c['reference']:<14} @ {c['budget']:>3} (acc {c['accuracy']:.3f}):"
          f" A* @ {c['astar_budget']:>3} acc {c['astar_accuracy']:.3f}, "
          f"tokens x{c['token_ratio']:.2f}, PRM tokens "
          f"x{c['prm_token_ratio']:.2f}"
        )
  workdir.write_json_atomic(
    os.path.join(out_dir, "summary.json"), summary, indent=1, default=str
  )
  return summary


def _mean_row(rows, method, budget):
  rs = [r for r in rows.values() if r["method"] == method and r["budget"] == budget]
  if not rs:
    return None
  return dict(
    accuracy=float(np.mean([r["accuracy"] for r in rs])),
    tokens=float(np.mean([r["compute"]["generated_tokens"] for r in rs])),
    vtokens=float(np.mean([r["compute"]["verifier_tokens"] for r in rs])),
  )


def astar_comparison(
  rows, references=("bon_prm_min", "bon_orm", "pf", "pf_smc"), budgets=(8, 16, 32)
):
  """Generated tokens and PRM work A* needs to reach the accuracy a reference
  method reaches at a budget (the A*-decoding paper's claim: up to 3x fewer
  tokens, 30% fewer PRM calls). A* budgets are scanned from the smallest.

  PRM work is compared as tokens the PRM processes (verifier_tokens), the one
  unit every method reports alike: best-of-N scores each sample in one pass,
  while PF and A* score step by step through the PRM's KV cache, so their
  'calls' are not comparable."""
  a_budgets = sorted({r["budget"] for r in rows.values() if r["method"] == "astar"})
  out = []
  for ref in references:
    for b in budgets:
      rr = _mean_row(rows, ref, b)
      if rr is None or not a_budgets:
        continue
      hit, best = None, 0.0
      for ab in a_budgets:
        ar = _mean_row(rows, "astar", ab)
        best = max(best, ar["accuracy"])
        if ar["accuracy"] >= rr["accuracy"] - 1e-9:
          hit = (ab, ar)
          break
      c = dict(
        reference=ref,
        budget=b,
        accuracy=rr["accuracy"],
        astar_budget=None,
        astar_best=best,
      )
      if hit is not None:
        ab, ar = hit
        c.update(
          astar_budget=ab,
          astar_accuracy=ar["accuracy"],
          token_ratio=ar["tokens"] / max(rr["tokens"], 1e-9),
          prm_token_ratio=ar["vtokens"] / max(rr["vtokens"], 1e-9),
        )
      out.append(c)
  return out


def run_sweep(config, out_dir, log=workdir.progress):
  """Run (or resume, or extend) the sweep into out_dir; returns the summary
  (plus new_rows, pools_generated).

  Order: `validate_sweep` (nothing touched on error), lock out_dir, check /
  record its settings, write config.json, then compute only the missing rows.
  Models are loaded only when a pool must be built or a search row run.

  Several processes (experiments/distributed.py; every process calls this
  with the same config): process 0 alone locks, reads and writes out_dir
  (the others never touch theirs, so no shared filesystem is needed) and
  tells the others which rows and pools are missing; every process loads
  the models; each pool's generate and verifier calls are split across the
  processes (`build_pool`), and so are the search rows (one (method, budget,
  seed) row per process at a time); process 0 computes the selection rows,
  appends every row and writes the summary and plots. The rows equal one
  process's (up to wall_s). A failure of process 0's checks, or of any
  process's model loading, is raised on every process. The other processes
  return only {"new_rows", "pools_generated", "searched" (the search rows
  they ran)}.

  Raises:
    ValueError: a bad config (naming the field), out_dir made with other
      settings (naming the fields), a missing model file, or a saved pool of
      the wrong shape -- all before any model is loaded.
    workdir.WorkdirBusy: another sweep holds out_dir.
  """
  plan = validate_sweep(config)
  with contextlib.ExitStack() as held:

    def prepare():  # on process 0 only
      held.enter_context(workdir.lock(out_dir))
      _pin(config, out_dir)
      workdir.save_config(out_dir, config)

    distributed.run_together(prepare, writer_only=True)
    return _run_locked(config, plan, out_dir, log)


def _run_locked(config, plan: SweepPlan, out_dir, log):
  writer = distributed.is_writer()
  rows_path = os.path.join(out_dir, "rows.jsonl")
  pool_path = lambda seed: os.path.join(out_dir, f"pool_seed{seed}.npz")
  rows = distributed.run_together(  # only process 0 reads out_dir
    lambda: workdir.read_rows(rows_path), writer_only=True
  )
  state = None
  if writer:
    todo = [key for key in plan.keys() if key not in rows]
    sel_seeds = sorted({s for m, _, s in todo if m in plan.methods})
    saved = {s for s in sel_seeds if os.path.exists(pool_path(s))}
    state = todo, sel_seeds, saved
  todo, sel_seeds, saved = distributed.from_writer(state)
  need_models = any(m in plan.search for m, _, _ in todo) or any(
    s not in saved for s in sel_seeds
  )
  generated = searched = 0  # pools built with the others; search rows run here
  models = None

  def check():
    if need_models:
      check_model_dirs(config)  # before loading anything
    # Saved pools are checked (by process 0) before any model is loaded.
    if todo and writer:
      return {s: load_pool(pool_path(s), config) for s in sorted(saved)}
    return {}

  pools = distributed.run_together(check)
  if todo:

    def load():
      if need_models:
        from experiments import train_policy as tp

        policy, pconfig, vcfg, verifiers = load_models(config)
        problems = tp.heldout_problems(pconfig, config.n_problems)
        return policy[0], vcfg, (policy, verifiers, problems)
      if writer:
        return (*load_model_configs(config), None)
      return None, None, None

    pcfg, vcfg, models = distributed.run_together(load)
    for seed in sel_seeds:
      t0 = time.perf_counter()
      if seed in saved:
        if not writer:
          continue
        pool = pools.pop(seed)
      else:
        policy, verifiers, problems = models
        pool = build_pool(policy, verifiers, problems, config, seed)
        if writer:
          workdir.save_npz_atomic(pool_path(seed), **pool)
        generated += 1
      pool_s = time.perf_counter() - t0
      if not writer:
        continue
      for m in plan.methods:
        ks = [k for k in plan.budgets if (m, k, seed) not in rows]
        if not ks:
          continue
        t1 = time.perf_counter()
        acc = selection_accuracy(m, pool, ks, seed)
        dt = (time.perf_counter() - t1) / len(ks)
        for k, a in zip(ks, acc):
          row = dict(
            method=m,
            budget=k,
            seed=seed,
            accuracy=float(a),
            compute=selection_compute(m, pool, k, pcfg, vcfg),
            wall_s=dt + pool_s * k / config.pool_size,
            n_problems=config.n_problems,
          )
          workdir.append_row(rows_path, row)
          rows[(m, k, seed)] = row
    search = [key for key in todo if key[0] in plan.search]
    n = jax.process_count()
    for r in range(0, len(search), n):  # one row per process at a time
      searched += len(distributed.split_for_process(search[r : r + n]))
      for row in distributed.split_map(
        lambda key: _search_row(*key, models, config), search[r : r + n]
      ):
        if not writer:
          continue
        workdir.append_row(rows_path, row)
        rows[(row["method"], row["budget"], row["seed"])] = row
        log(
          f"  {row['method']:<8} budget {row['budget']:>3} seed {row['seed']}: "
          f"accuracy {row['accuracy']:.3f}, "
          f"{row['compute']['flops']:.3e} FLOPs/problem, {row['wall_s']:.1f}s"
        )
  if not writer:
    return dict(new_rows=len(todo), pools_generated=generated, searched=searched)
  log(f"sweep: {len(todo)} new rows, {generated} pools generated")
  current = {key: rows[key] for key in plan.keys()}
  summary = summarize(
    current,
    list(plan.methods + plan.search),
    sorted(set(plan.budgets) | set(plan.search_budgets)),
    out_dir,
    log=log,
  )
  summary["new_rows"], summary["pools_generated"] = len(todo), generated
  other = len(rows) - len(current)
  if other:
    log(
      f"({other} rows of {rows_path} are not part of this config and are not reported)"
    )
  return summary


def _search_row(method, k, seed, models, config) -> dict:
  """One search method's row at budget k and seed (`run_search`)."""
  policy, verifiers, problems = models
  t0 = time.perf_counter()
  acc, comp = run_search(method, k, policy, verifiers, problems, config, seed)
  return dict(
    method=method,
    budget=k,
    seed=seed,
    accuracy=acc,
    compute=comp,
    wall_s=time.perf_counter() - t0,
    n_problems=config.n_problems,
  )


FLAGS = flags.FLAGS


def main(argv):
  del argv
  distributed.maybe_initialize()  # before any other JAX call
  if FLAGS.mesh:
    raise app.UsageError(
      "--mesh: the scaling sweep does not shard a model over a mesh; it splits "
      "its problems and search rows across processes (each process computes "
      "on its first local device), so start one process per device instead"
    )
  config = workdir.config_from_flags(DEFAULT_CONFIG, check=check_sweep)
  if FLAGS.validate_only:
    print(f"config OK for {os.path.abspath(FLAGS.workdir)}")
    return
  out = workdir.run_cli(run_sweep, config, FLAGS.workdir)
  if distributed.is_writer():
    print(f"results in {os.path.abspath(FLAGS.workdir)}")
  else:
    print(
      f"process {jax.process_index()} of {jax.process_count()} done: built "
      f"{out['pools_generated']} pools with the others, ran {out['searched']} "
      f"search rows; process 0 wrote the results into its --workdir"
    )


if __name__ == "__main__":
  workdir.define_flags("results/scaling/arith", DEFAULT_CONFIG)
  distributed.define_flags()
  flags.DEFINE_bool(
    "validate_only", False, "Check the config (and --workdir's settings) and exit."
  )
  app.run(main)
