r"""Compute-optimal scaling sweep: methods x budgets x seeds -> accuracy vs FLOPs.

  python -m experiments.scaling --config=configs/scaling_arith.py \
      [--config.budgets=1,2,4,8] [--workdir=results/scaling/arith]
  python -m experiments.scaling --config=configs/scaling_gsm8k.py \
      --workdir=results/scaling/gsm8k          # SmolLM2 on GSM8K (make gsm8k-study)

The task (`config.task`, experiments/sweep_tasks.py) supplies the policy, the
problems and prompts, the grading rules and the verifiers: 'arith' (the
trained policy, PRM / ORM and oracles; what the steps below describe) or
'gsm8k' (SmolLM2-135M-Instruct on GSM8K, both answer-extraction rules in
every row with the unparsable fraction, its own confidence as the step and
outcome score, SmolLM2 as a generative verifier 'genrm').

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
   A* sample-equivalent tokens), guided by the PRM through its own KV cache
   (experiments/sweep_search.py: the search rows and the greedy baseline).
   The verifier axis (`config.verifiers`, experiments/verifiers.py): every
   verifier-dependent method runs under each verifier -- the learned PRM /
   ORM, the exact oracle, noisy oracles -- as the row `method@verifier`
   (plain `method` for 'learned'); the pool stores the oracle's exact labels
   and prefix hashes, from which every noise level's scores follow, and the
   searches score with the same oracle in-graph. `config.baselines`:
   greedy decoding (`sweep_search.run_greedy`); pass@1 is coverage at
   budget 1. The search methods sample at `config.temperature`, like the
   pool.
3. Each (row name, budget, seed) row is appended to `rows.jsonl` as soon as
   it is computed (one line, flushed and fsynced), with its per-problem
   values and their standard error; a killed sweep rerun with the same
   --workdir skips finished rows and loses nothing.
4. At the end (experiments/report.py): per verifier, the table (± SE over
   problems, seeds averaged per problem) next to the verifier's measured
   within-problem AUROC (verifier_quality.json), fits with their SEs
   (coverage as an exponentiated power law in k; accuracy against log10
   FLOPs per row), the compute-optimal method per FLOPs budget with ties
   within 1.96 SE, each method's budget trend, table.md and the plots
   (experiments/plots.py), all from the rows this config asks for (other
   rows in rows.jsonl are kept, not reported).

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

Compute per problem and budget k (FLOPs from jaxllm.flops;
`sweep_tasks.selection_compute`): the prompt's prefill once, k samples'
decode FLOPs (mean generated length in the pool), and for verifier methods k
verifier passes over prompt + sample.
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

from algorithms import estimators, selection
from experiments import analysis, config_utils, distributed, report, workdir
from experiments import verifiers as vlib
from experiments import sweep_search, sweep_tasks
from jaxllm import Transformer, generate, make_sampling

DEFAULT_CONFIG = config_utils.config_path("scaling_arith.py")
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
# Baselines (config.baselines): greedy decoding, one sample at temperature 0,
# one row at budget 1 (seed 0); pass@1 at the sweep's temperature is
# coverage at budget 1.
BASELINES = ("greedy",)
assert BASELINES == report.BASELINE_NAMES
# Config fields that only choose which rows exist; every other field is pinned
# in out_dir/settings.json (see the module doc).
EXTENDABLE = (
  "budgets",
  "seeds",
  "methods",
  "search_methods",
  "search_budgets",
  "search_seeds",
  "verifiers",
  "baselines",
  "report_budget",
)
RESULT_FILES = ("rows.jsonl", "pool_seed*.npz")
QUALITY_FILE = "verifier_quality.json"  # verifier -> seed -> verifiers.verifier_quality


# ------------------------------ validation ---------------------------------


@dataclasses.dataclass(frozen=True)
class SweepPlan:
  """What a validated config asks for (tuples of ints / row names).

  methods / search: row names, a method under each verifier
  (`verifiers.row_name`: plain under 'learned', 'm@v' otherwise);
  baselines: `BASELINES` rows (budget 1, seed 0); verifiers: the
  verifier names."""

  methods: tuple
  budgets: tuple
  seeds: tuple
  search: tuple
  search_budgets: tuple
  search_seeds: tuple
  baselines: tuple = ()
  verifiers: tuple = (vlib.LEARNED,)

  def keys(self) -> list:
    """Every (row name, budget, seed) row of this config, selection first,
    then search, then the baselines."""
    return (
      [(m, k, s) for s in self.seeds for m in self.methods for k in self.budgets]
      + [
        (m, k, s)
        for s in self.search_seeds
        for m in self.search
        for k in self.search_budgets
      ]
      + [(b, 1, 0) for b in self.baselines]
    )


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
  task = sweep_tasks.for_config(config)  # checks config.task
  config_utils.check(
    config, config_utils.load_config_file(sweep_tasks.schema_path(config))
  )
  config_utils.positive(
    config,
    *(
      f
      for f in (
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
        "oracle_margin",
        "report_budget",
      )
      if f in config
    ),
  )
  config_utils.non_negative(
    config,
    *(
      f
      for f in ("temperature", "oracle_seed", "gsm_variants", "gsm_variant_seed")
      if f in config
    ),
  )
  if sweep_tasks.task_name(config) == sweep_tasks.GSM8K:
    _check_gsm8k_fields(config)
  verifier_names, baselines = _verifier_axis(config, task)
  methods = config_utils.str_list(config, "methods", SELECTION_METHODS)
  search = config_utils.str_list(config, "search_methods", sweep_search.SEARCH_METHODS)
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
        sweep_search.search_config(m, k, config)
      except ValueError as e:
        used = ", ".join(
          f"config.{f}={config[f]!r}" for f in sweep_search.SEARCH_FIELDS[m].values()
        )
        raise ValueError(
          f"config.search_budgets: budget {k} does not work for "
          f"search method {m!r} (with {used}): {e}"
        ) from None
  rows = lambda ms, vs: tuple(
    dict.fromkeys(
      vlib.row_name(m, v) for v in vs for m in ms if sweep_tasks.method_uses(m, v)
    )
  )
  step_verifiers = [
    v for v in verifier_names if vlib.parse_verifier(v).kind in task.step_verifier_kinds
  ]
  if search and not step_verifiers:
    raise ValueError(
      f"config.search_methods {search} need a step verifier among "
      f"config.verifiers {verifier_names}; this task's: {task.step_verifier_kinds}"
    )
  return SweepPlan(
    rows(methods, verifier_names),
    tuple(budgets),
    tuple(seeds),
    rows(search, step_verifiers),
    tuple(search_budgets),
    tuple(search_seeds),
    tuple(baselines),
    tuple(verifier_names),
  )


def _check_gsm8k_fields(config) -> None:
  """The GSM8K sweep's own fields (configs/scaling_gsm8k.py).

  Raises:
    ValueError: naming config.answer_rule, config.confidence_kind,
      config.search_problems_per_call or config.model.
  """
  from algorithms.scorers import ConfidenceScorer
  from experiments.tasks import answers
  from jaxllm import pretrained

  if config.answer_rule not in answers.RULES:
    raise ValueError(
      f"config.answer_rule: {config.answer_rule!r}; expected one of {answers.RULES}"
    )
  try:
    ConfidenceScorer(config.confidence_kind)
  except ValueError as e:
    raise ValueError(f"config.confidence_kind: {e}") from None
  n = config.search_problems_per_call
  if n < 0 or (n and config.n_problems % n):
    raise ValueError(
      f"config.search_problems_per_call = {n} must be 0 (all at once) or "
      f"divide config.n_problems = {config.n_problems} (one compiled shape)"
    )
  if config.model not in pretrained.PRETRAINED:
    raise ValueError(
      f"config.model: unknown pretrained model {config.model!r}; known: "
      f"{sorted(pretrained.PRETRAINED)}"
    )


def _verifier_axis(config, task) -> tuple:
  """(verifier names, baseline names) of a config, checked.

  Raises:
    ValueError: naming config.verifiers (empty, a duplicate, an unknown
      name or one the task does not have) or config.baselines.
  """
  names = config.verifiers
  if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
    raise ValueError(  # noqa: TRY004 (config errors are ValueErrors here)
      f"config.verifiers must be a non-empty list of verifier names, got {names!r}"
    )
  sweep_tasks.check_verifiers(task, names)
  if len(set(names)) != len(names):
    raise ValueError(f"config.verifiers lists a verifier more than once: {names}")
  baselines = config_utils.str_list(config, "baselines", BASELINES)
  return list(names), baselines


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
  """Sample, grade and score `pool_size` solutions per problem.

  The task (experiments/sweep_tasks.py) gives the prompts, grades each sample
  (`answers` / `correct` under its headline rule; with several rules also
  `answers_<rule>` / `correct_<rule>` / `unparsable_<rule>` for each) and
  scores it (`orm` [P, N], `prm_steps` / `prm_mask` [P, N, max_steps], plus
  the arrays its verifiers need).

  Several processes (experiments/distributed.py): the generate calls (one
  per block of problems, each with its own key) and the verifier calls (one
  per block of `rows_per_call` rows) are split across processes and their
  results gathered, so every process returns the whole pool, in problem
  order, equal to one process's pool: each block is computed from the same
  inputs, shapes and key wherever it runs. Every process must call it.
  """
  task = sweep_tasks.for_config(config)
  cfg, params = policy
  P, N = len(problems), config.pool_size
  prompts = task.prompts(problems)
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
      stop_tokens=list(task.stop_ids),
      pad_id=task.pad_id,
      num_samples=N,
    )
    got = tuple(np.asarray(x)[: n * N] for x in (out.tokens, out.lengths, out.logprobs))
    workdir.progress(
      f"  pool seed {seed}: problems {i + 1}-{i + n} of {P} sampled "
      f"({int(got[1].sum())} tokens)"
    )
    return got

  blocks = distributed.split_map(sample, range(0, P, step))
  toks = np.concatenate([b[0] for b in blocks]).reshape(P, N, -1)
  lens = np.concatenate([b[1] for b in blocks]).reshape(P, N)
  logprobs = np.concatenate([b[2] for b in blocks]).reshape(P, N, -1)
  graded = [
    [task.grade(problems[p], task.decode(toks[p, n, : lens[p, n]])) for n in range(N)]
    for p in range(P)
  ]
  pool = grade_arrays(task, graded)
  pool.update(
    lengths=lens,
    prompt_lengths=np.array([len(x) for x in prompts]),
    **task.pool_scores(verifiers, problems, prompts, toks, lens, logprobs),
  )
  return pool


def grade_arrays(task, graded_PxN) -> dict:
  """`answers` (dense ids, -1 = unparsable) and `correct` [P, N] under the
  task's headline rule; with several rules each rule's as `answers_<rule>`,
  `correct_<rule>` and `unparsable_<rule>`."""
  out = {}
  for j, rule in enumerate(task.rules):
    keys = [[g[rule][0] for g in row] for row in graded_PxN]
    arrays = dict(
      answers=dense_answer_ids(keys),
      correct=np.array([[g[rule][1] for g in row] for row in graded_PxN], bool),
    )
    if j == 0:
      out.update(arrays)
    if len(task.rules) > 1:
      out[f"answers_{rule}"], out[f"correct_{rule}"] = (
        arrays["answers"],
        arrays["correct"],
      )
      out[f"unparsable_{rule}"] = arrays["answers"] < 0
  return out


def load_pool(path: str, config) -> dict:
  """A saved pool, checked against the config's shapes.

  Raises:
    ValueError: naming the file when its arrays do not have the shapes
      (n_problems, pool_size[, max_steps]) the config asks for, or lack the
      arrays a verifier of config.verifiers needs (the oracle's, 'genrm''s:
      a pool saved without them; use a new --workdir).
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
  task = sweep_tasks.for_config(config)
  dims = dict(P=P, N=N, S=S)
  for name, letters in task.pool_arrays(config.verifiers).items():
    want[name] = tuple(dims[d] for d in letters)
  if len(task.rules) > 1:
    for rule in task.rules:
      for a in ("answers", "correct", "unparsable"):
        want[f"{a}_{rule}"] = (P, N)
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
  """Mean accuracy over problems for every k in ks, shape [len(ks)]: the mean
  of `selection_per_problem`.

  Raises:
    ValueError: an unknown method, or a k outside [1, pool size].
  """
  return selection_per_problem(method, pool, ks, seed).mean(0)


def selection_per_problem(method: str, pool: dict, ks, seed: int) -> np.ndarray:
  """Per-problem expected accuracy [P, len(ks)] (unbiased subset estimators)
  of a selection method (plain name) on the pool's verifier scores.

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
    return estimators.pass_at_k(np.full(len(c), n), c.sum(1), ks)
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
    return np.stack([subset[method](int(k)).value_PxK[:, 0] for k in ks], 1)
  if method == "bon_orm":
    return estimators.best_of_n_at_k(pool["orm"], c, ks)
  if method in SELECTION_METHODS and method.startswith(PRM_PREFIX):
    s = prm_scores(pool, method[len(PRM_PREFIX) :])
    return estimators.best_of_n_at_k(s, c, ks)
  raise ValueError(f"unknown method {method!r}; known: {SELECTION_METHODS}")


# --------------------------------- sweep ----------------------------------


def check_model_dirs(config) -> None:
  """The files `load_models` reads exist (checked before loading anything):
  arith's policy / verifier directories, gsm8k's GGUF and GSM8K data.

  Raises:
    ValueError: naming the missing file and the config field pointing there.
  """
  sweep_tasks.for_config(config).check_files()


def load_model_configs(config):
  """(policy ModelConfig, verifier ModelConfig) for the compute accounting
  (arith: read from their JSON files without loading parameters)."""
  return sweep_tasks.for_config(config).model_configs()


def load_models(config):
  """(policy (cfg, params), policy training config (None on gsm8k),
  verifier cfg, {name: (model, params)} of the task's verifiers)."""
  return sweep_tasks.for_config(config).load()


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
  run_rows = set(plan.search) | set(plan.baselines)  # rows that need the models
  need_models = any(m in run_rows for m, _, _ in todo) or any(
    s not in saved for s in sel_seeds
  )
  generated = searched = 0  # pools built with the others; search rows run here

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
        policy, pconfig, vcfg, verifiers = load_models(config)
        problems = sweep_tasks.for_config(config).problems(pconfig)
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
      if writer:
        pool_s = time.perf_counter() - t0
        _selection_rows(config, plan, pool, seed, pool_s, (pcfg, vcfg), rows, rows_path)
    searched = _search_rows(config, plan, todo, models, rows, rows_path, log)
  if not writer:
    return dict(new_rows=len(todo), pools_generated=generated, searched=searched)
  log(f"sweep: {len(todo)} new rows, {generated} pools generated")
  current = {key: rows[key] for key in plan.keys()}
  quality = verifier_qualities(config, plan, out_dir)
  summary = report.summarize(
    current, plan, out_dir, quality, report_budget=config.report_budget, log=log
  )
  summary["new_rows"], summary["pools_generated"] = len(todo), generated
  other = len(rows) - len(current)
  if other:
    log(
      f"({other} rows of {rows_path} are not part of this config and are not reported)"
    )
  return summary


def _selection_rows(config, plan, pool, seed, pool_s, cfgs, rows, rows_path) -> None:
  """Append the missing selection rows of one seed's pool (process 0): each
  with its per-problem values and their standard error over problems, and
  for a task with several grading rules each rule's accuracy and the
  fraction of the pool's samples it cannot parse (`rules`)."""
  task = sweep_tasks.for_config(config)
  pcfg, vcfg = cfgs
  vpools = {}
  for m in plan.methods:
    ks = [k for k in plan.budgets if (m, k, seed) not in rows]
    if not ks:
      continue
    base, v = vlib.split_name(m)
    if v not in vpools:
      vpools[v] = vlib.pool_for(pool, v, config)
    t1 = time.perf_counter()
    per = selection_per_problem(base, vpools[v], ks, seed)
    per_rule = {
      rule: selection_per_problem(
        base,
        dict(
          vpools[v], answers=pool[f"answers_{rule}"], correct=pool[f"correct_{rule}"]
        ),
        ks,
        seed,
      )
      for rule in task.rules[1:]
    }
    dt = (time.perf_counter() - t1) / len(ks)
    charged, vtokens = task.verifier_tokens(pool, v, vcfg)
    for j, k in enumerate(ks):
      row = dict(
        method=m,
        budget=k,
        seed=seed,
        verifier=v,
        accuracy=float(per[:, j].mean()),
        accuracy_se=float(analysis.standard_error(per[:, j])),
        per_problem=np.round(per[:, j], 6).tolist(),
        compute=sweep_tasks.selection_compute(base, pool, k, pcfg, charged, vtokens),
        wall_s=dt + pool_s * k / config.pool_size,
        n_problems=config.n_problems,
      )
      if per_rule:
        row["rules"] = {
          rule: dict(
            accuracy=float(x[:, j].mean()),
            accuracy_se=float(analysis.standard_error(x[:, j])),
            unparsable=float(pool[f"unparsable_{rule}"].mean()),
          )
          for rule, x in [(task.rules[0], per)] + list(per_rule.items())
        }
      workdir.append_row(rows_path, row)
      rows[(m, k, seed)] = row


def _search_rows(config, plan, todo, models, rows, rows_path, log) -> int:
  """Run the missing search and baseline rows (`sweep_search.search_row`),
  split across processes (one row per process at a time); process 0 appends
  them. Returns the number this process ran."""
  run_rows = set(plan.search) | set(plan.baselines)
  search = [key for key in todo if key[0] in run_rows]
  n = jax.process_count()
  searched = 0
  for r in range(0, len(search), n):  # one row per process at a time
    searched += len(distributed.split_for_process(search[r : r + n]))
    for row in distributed.split_map(
      lambda key: sweep_search.search_row(*key, models, config), search[r : r + n]
    ):
      if not distributed.is_writer():
        continue
      workdir.append_row(rows_path, row)
      rows[(row["method"], row["budget"], row["seed"])] = row
      log(
        f"  {row['method']:<16} budget {row['budget']:>3} seed {row['seed']}: "
        f"accuracy {row['accuracy']:.3f} ± {row['accuracy_se']:.3f}, "
        f"{row['compute']['flops']:.3e} FLOPs/problem, {row['wall_s']:.1f}s"
      )
  return searched


def verifier_qualities(config, plan, out_dir) -> dict:
  """verifier -> mean over the selection seeds' pools of
  `verifiers.verifier_quality`, cached per (verifier, seed) in
  out_dir/verifier_quality.json (a pool is read only for a missing entry);
  {} without pools."""
  path = os.path.join(out_dir, QUALITY_FILE)
  cache = workdir.read_json(path) or {}
  changed = False
  for v in plan.verifiers:
    for seed in plan.seeds if plan.methods else ():
      pool_file = os.path.join(out_dir, f"pool_seed{seed}.npz")
      if str(seed) in cache.get(v, {}) or not os.path.exists(pool_file):
        continue
      pool = load_pool(pool_file, config)
      cache.setdefault(v, {})[str(seed)] = vlib.verifier_quality(pool, v, config)
      changed = True
  if changed:
    workdir.write_json_atomic(path, cache, indent=1)
  out = {}
  for v in plan.verifiers:
    per_seed = [cache[v][str(s)] for s in plan.seeds if str(s) in cache.get(v, {})]
    if per_seed:
      out[v] = {k: float(np.mean([q[k] for q in per_seed])) for k in per_seed[0]}
  return out


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
  config = workdir.config_from_flags(sweep_tasks.schema_path, check=check_sweep)
  if FLAGS.validate_only:
    print(f"config OK for {os.path.abspath(FLAGS.workdir)}")
    try:
      check_model_dirs(config)
    except ValueError as e:  # needed unless every row is already in the workdir
      print(f"note: {e}; the sweep needs it for any row not yet computed")
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
