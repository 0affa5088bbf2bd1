r"""Compute-optimal scaling sweep: methods x budgets x seeds -> accuracy vs FLOPs.

  python -m experiments.scaling --config=configs/scaling_arith.py \
      [--config.budgets=1,2,4,8] [--out_dir=results/scaling/arith]

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
   search, DVTS, A*) are run for real at each of `search_budgets`, guided by
   the PRM through its own KV cache.
3. Each (method, budget, seed) row is appended to `rows.jsonl` as soon as it
   is computed (one line, flushed and fsynced); a killed sweep rerun with the
   same --out_dir skips finished rows and loses nothing.
4. At the end: the table (mean over seeds), scaling-law fits (coverage as an
   exponentiated power law in k; accuracy against log10 FLOPs per method), the
   compute-optimal method per FLOPs budget, and PNG plots.

Compute per problem and budget k (FLOPs from jaxllm.flops): the prompt's
prefill once, k samples' decode FLOPs (mean generated length in the pool),
and for verifier methods k verifier passes over prompt + sample.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from algorithms import estimators
from experiments import analysis
from experiments.tasks import arith
from jaxllm import Transformer, generate, make_sampling
from jaxllm import flops as flops_lib
from jaxllm.config import ModelConfig

TOK = arith.TOKENIZER
SELECTION_METHODS = ("coverage", "majority", "weighted_majority_orm",
                     "bon_orm", "bon_prm_min", "bon_prm_last", "bon_prm_prod",
                     "bon_prm_mean", "bom_orm")
# Search methods run for real at every budget (N particles / paths; A*: a
# generated-token budget of N * config.astar_tokens_per_sample), guided by the
# PRM through its own KV cache (algorithms.scorers.ModelStepScorer).
SEARCH_METHODS = ("pf", "pf_smc", "epf", "beam", "dvts", "astar")


# ----------------------------- the sample pool -----------------------------


def _atomic_savez(path, **arrays):
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _dense_answer_ids(answers_PxN):
  """Per problem, map answer values to 0.. ids; None -> -1."""
  P, N = len(answers_PxN), len(answers_PxN[0])
  ids = np.full((P, N), -1, np.int32)
  for p in range(P):
    table = {}
    for n, a in enumerate(answers_PxN[p]):
      if a is not None:
        ids[p, n] = table.setdefault(a, len(table))
  return ids


def build_pool(policy, verifiers, problems, config, seed: int) -> dict:
  """Sample, label and score `pool_size` solutions per problem."""
  cfg, params = policy
  P, N = len(problems), config.pool_size
  prompts = [TOK.encode(p.prompt, add_bos=True) for p in problems]
  toks, lens = [], []
  step = max(1, config.rows_per_call // N)  # problems per generate call
  model = Transformer(cfg)
  for i in range(0, P, step):
    chunk = prompts[i:i + step]
    chunk = chunk + [chunk[-1]] * (step - len(chunk))  # one shape, one compile
    out = generate(model, params, chunk, jax.random.key(seed * 7919 + i),
                   config.max_new_tokens, make_sampling(config.temperature),
                   stop_tokens=[TOK.eos_id], pad_id=TOK.pad_id, num_samples=N)
    toks.append(np.asarray(out.tokens)[:len(prompts[i:i + step]) * N])
    lens.append(np.asarray(out.lengths)[:len(prompts[i:i + step]) * N])
  toks = np.concatenate(toks).reshape(P, N, -1)
  lens = np.concatenate(lens).reshape(P, N)
  texts = [[TOK.decode(toks[p, n, :lens[p, n]]) for n in range(N)]
           for p in range(P)]
  answers = [[arith.extract_answer(t) for t in row] for row in texts]
  correct = np.array([[arith.check_answer(problems[p], t) for t in texts[p]]
                      for p in range(P)], bool)
  # Verifier scores: full sequences BOS + prompt + sample (one forward each).
  seqs = [[prompts[p] + list(toks[p, n, :lens[p, n]]) for n in range(N)]
          for p in range(P)]
  T = max(len(s) for row in seqs for s in row)
  T = 1 << (T - 1).bit_length()
  flat = np.full((P * N, T), TOK.pad_id, np.int32)
  for r, s in enumerate(s for row in seqs for s in row):
    flat[r, :len(s)] = s
  scores = {}
  for name, (rm, rparams) in verifiers.items():
    fn = jax.jit(rm.score_all)
    out = [np.asarray(fn(rparams, jnp.asarray(flat[i:i + config.rows_per_call])))
           for i in range(0, P * N, config.rows_per_call)]
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
      gen = toks[p, n, :lens[p, n]]
      ends = np.flatnonzero((gen == TOK.newline_id) | (gen == TOK.eos_id))[:S]
      pos = len(prompts[p]) + ends
      prm_steps[p, n, :len(ends)] = scores["prm"][p, n, pos]
      prm_mask[p, n, :len(ends)] = True
  return dict(answers=_dense_answer_ids(answers), correct=correct,
              lengths=lens, prompt_lengths=np.array([len(x) for x in prompts]),
              orm=orm, prm_steps=prm_steps, prm_mask=prm_mask)


def aggregate_prm(steps, mask, how):
  if how == "min":
    return np.where(mask, steps, np.inf).min(-1, initial=np.inf).clip(max=1)
  if how == "last":
    idx = np.maximum(mask.sum(-1) - 1, 0)
    return np.take_along_axis(steps, idx[..., None], -1)[..., 0] * mask.any(-1)
  if how == "prod":
    return np.where(mask, steps, 1.0).prod(-1) * mask.any(-1)
  if how == "mean":
    return np.where(mask, steps, 0).sum(-1) / np.maximum(mask.sum(-1), 1)
  raise ValueError(f"unknown PRM aggregation {how!r}")


# ------------------------------ estimators --------------------------------


def selection_accuracy(method: str, pool: dict, ks, seed: int) -> np.ndarray:
  """Mean accuracy over problems for every k (unbiased subset estimators)."""
  a, c = pool["answers"], pool["correct"]
  n = a.shape[1]
  if method == "coverage":
    return estimators.pass_at_k(np.full(len(c), n), c.sum(1), ks).mean(0)
  if method == "majority":
    est = estimators.majority_at_k(a, c, ks, seed=seed)
    return est.value_PxK.mean(0)
  if method == "weighted_majority_orm":
    est = estimators.weighted_majority_at_k(a, pool["orm"], c, ks, seed=seed)
    return est.value_PxK.mean(0)
  if method == "bom_orm":
    est = estimators.best_of_majority_at_k(a, pool["orm"], c, ks, alpha=0.1,
                                           seed=seed)
    return est.value_PxK.mean(0)
  if method == "bon_orm":
    return estimators.best_of_n_at_k(pool["orm"], c, ks).mean(0)
  if method.startswith("bon_prm_"):
    s = aggregate_prm(pool["prm_steps"], pool["prm_mask"], method[8:])
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
  rec = flops_lib.Compute(prefill_tokens=prompt.mean(),
                          generated_tokens=k * gen.mean(), model_calls=0.0,
                          prefill_flops=pre, decode_flops=k * dec)
  if method not in ("coverage", "majority"):
    vt = prompt[:, None] + gen
    vflops = (vt * flops_lib.decode_flops(verifier_cfg, (vt + 1) / 2)).mean()
    rec = rec + flops_lib.Compute(verifier_tokens=k * vt.mean(),
                                  verifier_calls=float(k),
                                  verifier_flops=k * vflops)
  return rec.as_dict()


# ----------------------------- search methods -----------------------------


def run_search(method: str, k: int, policy, verifiers, problems, config,
               seed: int):
  """Run a search method with budget k on every problem.

  Returns (accuracy, per-problem mean Compute dict)."""
  from algorithms import astar, beam_search, particle_filter
  from algorithms.scorers import ModelStepScorer
  cfg, params = policy
  rm, rparams = verifiers["prm"]
  scorer = ModelStepScorer(rm)
  model = Transformer(cfg)
  prompts = [TOK.encode(p.prompt, add_bos=True) for p in problems]
  key = jax.random.key(seed * 104729 + k)
  steps = dict(delimiter_ids=(TOK.newline_id,), stop_ids=(TOK.eos_id,),
               pad_id=TOK.pad_id)
  S, K = config.max_step_tokens, config.max_steps
  if method in ("pf", "pf_smc", "epf"):
    # pf: the reference behaviour; pf_smc: incremental log-weights with
    # ESS-triggered resampling; epf: reference + entropic annealing (ESS mode).
    pc = particle_filter.PFConfig(
        n_particles=k, max_steps=K, max_step_tokens=S,
        weighting="smc" if method == "pf_smc" else "reference",
        ess_threshold=0.5 if method == "pf_smc" else None,
        entropic="ess" if method == "epf" else None, **steps)
    res, rec = particle_filter.run_particle_filter(
        model, params, scorer, rparams, prompts, key, pc)
    toks, lens = np.asarray(res.tokens), np.asarray(res.lengths)
    texts = [[TOK.decode(toks[p, n, :lens[p, n]]) for n in range(k)]
             for p in range(len(problems))]
    answers = [[arith.extract_answer(t) for t in row] for row in texts]
    picked = particle_filter.weighted_vote(answers, np.asarray(res.weights))
    correct = [a is not None and a == p.answer for a, p in zip(picked, problems)]
  elif method in ("beam", "dvts"):
    bc = beam_search.BeamConfig(method=method, n_paths=k,
                                beam_width=min(config.beam_width, k),
                                max_steps=K, max_step_tokens=S, **steps)
    res, rec = beam_search.run_beam_search(model, params, scorer, rparams,
                                           prompts, key, bc)
    toks, lens = np.asarray(res.tokens), np.asarray(res.lengths)
    best = np.asarray(res.best)
    correct = [arith.check_answer(p, TOK.decode(toks[i, best[i], :lens[i, best[i]]]))
               for i, p in enumerate(problems)]
  elif method == "astar":
    ac = astar.AStarConfig(
        capacity=config.astar_capacity, num_children=config.astar_children,
        max_step_tokens=S, max_solution_tokens=config.max_new_tokens,
        delimiter_ids=steps["delimiter_ids"], stop_ids=steps["stop_ids"],
        expected_total_steps=float(config.astar_expected_steps),
        token_budget=float(k * config.astar_tokens_per_sample))
    T = max(len(p) for p in prompts)
    arr = np.full((len(prompts), T), TOK.pad_id, np.int32)
    for i, p in enumerate(prompts):
      arr[i, :len(p)] = p
    res, rec = astar.run_astar(model, params, scorer, rparams,
                               (arr, np.array([len(p) for p in prompts])), key,
                               ac)
    toks, lens = np.asarray(res.tokens), np.asarray(res.length)
    correct = [arith.check_answer(p, TOK.decode(toks[i, :lens[i]]))
               for i, p in enumerate(problems)]
  else:
    raise ValueError(f"unknown search method {method!r}; known: "
                     f"{SEARCH_METHODS}")
  P = len(problems)
  per_problem = {f: v / P for f, v in dataclasses.asdict(rec).items()}
  return float(np.mean(correct)), flops_lib.Compute(**per_problem).as_dict()


# --------------------------------- sweep ----------------------------------


def load_models(config):
  from experiments import train_policy as tp
  from jaxllm import reward
  cfg, params, pconfig = tp.load_policy(config.policy_dir)
  with open(os.path.join(config.verifier_dir, "model_config.json")) as f:
    vcfg = ModelConfig(**json.load(f))
  verifiers = {}
  for name in ("prm", "orm"):
    rp = reward.restore_reward_params(os.path.join(config.verifier_dir, name),
                                      vcfg)
    verifiers[name] = (reward.RewardModel(vcfg), rp)
  return (cfg, params), pconfig, vcfg, verifiers


def read_rows(path):
  """Finished rows by (method, budget, seed). A torn line left by a kill is
  dropped and the file rewritten (atomically) without it, so appends that
  follow start on a fresh line."""
  rows, good, torn = {}, [], False
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          r = json.loads(line)
          rows[(r["method"], r["budget"], r["seed"])] = r
          if not line.endswith("\n"):
            torn, line = True, line + "\n"
          good.append(line)
        except (json.JSONDecodeError, KeyError):
          torn = True
    if torn:
      with open(path + ".tmp", "w") as f:
        f.writelines(good)
      os.replace(path + ".tmp", path)
  return rows


def append_row(path, row):
  with open(path, "a") as f:
    f.write(json.dumps(row) + "\n")
    f.flush()
    os.fsync(f.fileno())


def summarize(rows, methods, budgets, out_dir):
  """Table, fits, compute-optimal choice and plots from the finished rows."""
  table = {}
  for m in methods:
    accs, fl = [], []
    for k in budgets:
      rs = [r for r in rows.values() if r["method"] == m and r["budget"] == k]
      if rs:
        accs.append(float(np.mean([r["accuracy"] for r in rs])))
        fl.append(float(np.mean([r["compute"]["flops"] for r in rs])))
    if accs:
      table[m] = (np.array(fl), np.array(accs))
  print("\naccuracy (mean over seeds); columns = budget (samples)")
  print(f"{'method':<24}" + "".join(f"{k:>8}" for k in budgets))
  for m in table:
    cells = []
    for k in budgets:
      rs = [r["accuracy"] for r in rows.values()
            if r["method"] == m and r["budget"] == k]
      cells.append(f"{np.mean(rs):>8.3f}" if rs else f"{'-':>8}")
    print(f"{m:<24}" + "".join(cells))
  summary = {"table": {m: {"flops": f.tolist(), "accuracy": a.tolist()}
                       for m, (f, a) in table.items()}}
  if "coverage" in table and len(table["coverage"][1]) >= 3:
    cov = table["coverage"][1]
    ks = sorted({r["budget"] for r in rows.values() if r["method"] == "coverage"})
    if (cov > 0).all():
      fit = analysis.fit_coverage_power_law(ks, cov)
      summary["coverage_fit"] = dataclasses.asdict(fit)
      print(f"\ncoverage fit: log(coverage(k)) = {fit.a:.4f} * k^{fit.b:.4f}, "
            f"R^2 = {fit.r2:.4f}")
      analysis.plot_coverage(ks, cov,
                             os.path.join(out_dir, "coverage.png"), fit=fit)
  methods_acc = {m: v for m, v in table.items() if m != "coverage"}
  fits = analysis.fit_accuracy_vs_flops(
      {m: v for m, v in methods_acc.items() if len(v[0]) >= 2})
  summary["accuracy_vs_log10_flops"] = {m: dataclasses.asdict(f)
                                        for m, f in fits.items()}
  print("\naccuracy vs log10 FLOPs (per method): slope, R^2")
  for m, f in fits.items():
    print(f"  {m:<24} slope {f.slope:+.4f}  R^2 {f.r2:.3f}")
  all_flops = np.unique(np.concatenate([v[0] for v in methods_acc.values()]))
  levels = np.geomspace(all_flops.min(), all_flops.max(), 6)
  choice = analysis.compute_optimal_method(levels, methods_acc)
  summary["compute_optimal"] = {
      "budget_flops": levels.tolist(),
      "method": [str(x) for x in choice.methods],
      "accuracy": [float(x) for x in choice.accuracy]}
  print("\ncompute-optimal method per FLOPs budget")
  for b, m, a in zip(levels, choice.methods, choice.accuracy):
    print(f"  {b:10.3e} FLOPs: {m} ({a:.3f})")
  comp = astar_comparison(rows)
  if comp:
    summary["astar_vs"] = comp
    print("\nA* against best-of-N / PF: A*'s cheapest budget reaching the same "
          "accuracy (mean over seeds); ratios = A* / reference")
    for c in comp:
      if c["astar_budget"] is None:
        print(f"  {c['reference']:<14} @ {c['budget']:>3} (acc {c['accuracy']:.3f}):"
              f" not reached (A* best {c['astar_best']:.3f})")
      else:
        print(f"  {c['reference']:<14} @ {c['budget']:>3} (acc {c['accuracy']:.3f}):"
              f" A* @ {c['astar_budget']:>3} acc {c['astar_accuracy']:.3f}, "
              f"tokens x{c['token_ratio']:.2f}, PRM tokens "
              f"x{c['prm_token_ratio']:.2f}")
  analysis.plot_accuracy_vs_flops(methods_acc,
                                  os.path.join(out_dir, "accuracy_vs_flops.png"),
                                  fits=fits)
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1, default=str)
  return summary


def _mean_row(rows, method, budget):
  rs = [r for r in rows.values() if r["method"] == method and
        r["budget"] == budget]
  if not rs:
    return None
  return dict(accuracy=float(np.mean([r["accuracy"] for r in rs])),
              tokens=float(np.mean([r["compute"]["generated_tokens"]
                                    for r in rs])),
              vtokens=float(np.mean([r["compute"]["verifier_tokens"]
                                     for r in rs])))


def astar_comparison(rows, references=("bon_prm_min", "bon_orm", "pf",
                                       "pf_smc"), budgets=(8, 16, 32)):
  """Generated tokens and PRM work A* needs to reach the accuracy a reference
  method reaches at a budget (the A*-decoding paper's claim: up to 3x fewer
  tokens, 30% fewer PRM calls). A* budgets are scanned from the smallest.

  PRM work is compared as tokens the PRM processes (verifier_tokens), the one
  unit every method reports alike: best-of-N scores each sample in one pass,
  while PF and A* score step by step through the PRM's KV cache, so their
  'calls' are not comparable."""
  a_budgets = sorted({r["budget"] for r in rows.values()
                      if r["method"] == "astar"})
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
      c = dict(reference=ref, budget=b, accuracy=rr["accuracy"],
               astar_budget=None, astar_best=best)
      if hit is not None:
        ab, ar = hit
        c.update(astar_budget=ab, astar_accuracy=ar["accuracy"],
                 token_ratio=ar["tokens"] / max(rr["tokens"], 1e-9),
                 prm_token_ratio=ar["vtokens"] / max(rr["vtokens"], 1e-9))
      out.append(c)
  return out


def run_sweep(config, out_dir):
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=1))
  rows_path = os.path.join(out_dir, "rows.jsonl")
  rows = read_rows(rows_path)
  budgets = [int(b) for b in config.budgets]
  if max(budgets) > config.pool_size:
    raise ValueError(f"config.budgets max {max(budgets)} exceeds "
                     f"config.pool_size={config.pool_size}")
  methods = list(config.methods)
  search = list(config.search_methods)
  search_budgets = [int(b) for b in config.search_budgets]
  for m in methods:
    if m not in SELECTION_METHODS:
      raise ValueError(f"config.methods: unknown method {m!r}; known: "
                       f"{SELECTION_METHODS}")
  for m in search:
    if m not in SEARCH_METHODS:
      raise ValueError(f"config.search_methods: unknown method {m!r}; known: "
                       f"{SEARCH_METHODS}")
  todo = [(m, k, s) for s in config.seeds for m in methods for k in budgets
          if (m, k, s) not in rows]
  todo += [(m, k, s) for s in config.search_seeds for m in search
           for k in search_budgets if (m, k, s) not in rows]
  generated = 0
  if todo:
    policy, pconfig, vcfg, verifiers = load_models(config)
    from experiments import train_policy as tp
    problems = tp.heldout_problems(pconfig, config.n_problems)
    for seed in sorted({s for m, _, s in todo if m in methods}):
      pool_path = os.path.join(out_dir, f"pool_seed{seed}.npz")
      t0 = time.perf_counter()
      if os.path.exists(pool_path):
        pool = dict(np.load(pool_path))
      else:
        pool = build_pool(policy, verifiers, problems, config, seed)
        _atomic_savez(pool_path, **pool)
        generated += 1
      pool_s = time.perf_counter() - t0
      for m in methods:
        ks = [k for k in budgets if (m, k, seed) not in rows]
        if not ks:
          continue
        t1 = time.perf_counter()
        acc = selection_accuracy(m, pool, ks, seed)
        dt = (time.perf_counter() - t1) / len(ks)
        for k, a in zip(ks, acc):
          row = dict(method=m, budget=k, seed=seed, accuracy=float(a),
                     compute=selection_compute(m, pool, k, policy[0], vcfg),
                     wall_s=dt + pool_s * k / config.pool_size,
                     n_problems=config.n_problems)
          append_row(rows_path, row)
          rows[(m, k, seed)] = row
    for m, k, seed in todo:
      if m not in search:
        continue
      t0 = time.perf_counter()
      acc, comp = run_search(m, k, policy, verifiers, problems, config, seed)
      row = dict(method=m, budget=k, seed=seed, accuracy=acc, compute=comp,
                 wall_s=time.perf_counter() - t0,
                 n_problems=config.n_problems)
      append_row(rows_path, row)
      rows[(m, k, seed)] = row
      print(f"  {m:<8} budget {k:>3} seed {seed}: accuracy {acc:.3f}, "
            f"{comp['flops']:.3e} FLOPs/problem, {row['wall_s']:.1f}s",
            flush=True)
  print(f"sweep: {len(todo)} new rows, {generated} pools generated")
  summary = summarize(rows, methods + search, sorted(set(budgets) |
                                                     set(search_budgets)),
                      out_dir)
  summary["new_rows"], summary["pools_generated"] = len(todo), generated
  return summary


FLAGS = flags.FLAGS


def main(argv):
  del argv
  from absl import logging
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it reads
  run_sweep(FLAGS.config, FLAGS.out_dir)
  print(f"results in {os.path.abspath(FLAGS.out_dir)}")


if __name__ == "__main__":
  config_flags.DEFINE_config_file(
      "config", os.path.join(os.path.dirname(os.path.dirname(
          os.path.abspath(__file__))), "configs", "scaling_arith.py"),
      "Sweep config.")
  flags.DEFINE_string("out_dir", "results/scaling/arith", "Output directory.")
  app.run(main)
