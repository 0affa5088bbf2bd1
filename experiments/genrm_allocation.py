r"""Solve versus verify: self-consistency against a generative verifier (GenRM)
at equal compute, and the compute-optimal split between solutions and
verifications.

  python -m experiments.genrm_allocation --config=configs/genrm_arith.py \
      [--config.n_problems=64] [--workdir=results/arith/genrm]

1. Verifier: trained by experiments/train_genverifier.py into
   `config.verifier_dir` if that has no finished verifier yet.
2. Pool, on the policy's held-out problems (saved atomically, reused on rerun):
   `sc_pool_size` temperature-1 solutions per problem (each prompt prefilled
   once and forked, `generate(num_samples=...)`) -> `solutions.npz`; for the
   first `pool_size` of them, `verifications` sampled verification chains each
   (each verifier prompt prefilled once and forked) -> one
   `verify_chunkNNN.npz` per `chunk_problems` problems, so a killed run loses
   at most one chunk. `settings.json` pins every setting that changes the pool
   or a row (experiments/workdir.py; `study_settings`), and --workdir is
   locked against a second run.
3. Estimates (exact or unbiased, from the one pool): GenRM accuracy at every
   (S, V) of the grid = best of S by the fraction of Yes among V verdicts,
   ties broken uniformly at random (algorithms/genrm.py, exact); the same with
   ties broken by majority vote among the tied (Monte Carlo); self-consistency
   maj@S (algorithms/estimators.py, ties random). Rows are appended to
   `rows.jsonl` (the resumable pattern of experiments/scaling.py).
4. Budgets: C(S, V) = S * (1 + lambda * V), lambda = mean verification chain
   tokens / mean solution tokens (generated tokens, EOS included, measured in
   the pool); FLOPs from jaxllm.flops: generator prefill (once per problem) +
   S solution decodes; verifier prefill of its prompt (problem + candidate,
   once per verified solution) + S * V chain decodes. C counts generated tokens
   only, as in the paper; FLOPs count the verifier re-reading the candidate.
5. Report: the (S, V) accuracy table; per budget C the best (S, V) and SC at
   equal C (SC spends all of C on solutions: S = floor(C), measured up to
   `sc_pool_size`); the crossing (smallest budget from which the best GenRM
   configuration beats SC at every larger budget in range); the GenRM budget
   needed to match SC; fits S_opt ~ C^a, V_opt ~ C^b over the compute-optimal
   grid points (least squares in log-log, R^2); JSON + PNG in --workdir, whose
   path is the last printed line.

The whole config is checked (`validate_study`) before the verifier is trained
or any model is loaded. Only `SUMMARY_ONLY` fields may change between runs on
one --workdir: the grids and budgets choose which rows are computed and
reported, and each row depends only on its (method, S, seed) and the pinned
settings (Monte Carlo draws are seeded per S), so extending a grid changes no
row.

One process only (its pools are not split across processes yet;
experiments/scaling.py shows how, with distributed.split_map): the multi-host
flags of experiments/distributed.py are accepted; a multi-process run or --mesh
is refused with that reason.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
import numpy as np
from absl import app, flags

from algorithms import estimators, genrm
from experiments import analysis, config_utils, distributed, scaling, workdir
from experiments import train_genverifier as tg
from experiments import train_policy as tp
from experiments.tasks import arith
from jaxllm import checkpoint, reward
from jaxllm import flops as flops_lib

DEFAULT_CONFIG = config_utils.config_path("genrm_arith.py")
TOK = arith.TOKENIZER
# Fields that only choose which rows are computed / reported (see module doc).
SUMMARY_ONLY = ("s_grid", "v_grid", "plot_v", "budgets", "tie_break")
RESULT_FILES = ("solutions.npz", "verify_chunk*.npz", "rows.jsonl")
LEGACY_META = "pool_meta.json"  # what earlier versions pinned


# ------------------------------ validation ---------------------------------


def validate_study(config) -> None:
  """Check the study config completely before anything is trained or loaded:
  the schema of configs/genrm_arith.py (unknown fields, types), value ranges,
  the (S, V) grids against the pool (1 <= S <= pool_size, 1 <= V <=
  verifications), plot_v within v_grid, non-empty grids and budgets, the
  tie-break, and the verifier's training settings. Reads only the schema.

  Raises:
    ValueError: naming the offending field.
  """
  config_utils.check(config, config_utils.load_config_file(DEFAULT_CONFIG))
  config_utils.positive(
    config,
    "n_problems",
    "pool_size",
    "sc_pool_size",
    "verifications",
    "max_new_tokens",
    "max_verify_tokens",
    "rows_per_call",
    "chunk_problems",
  )
  config_utils.non_negative(config, "seed", "temperature", "mc_subsets")
  if config.sc_pool_size < config.pool_size:
    raise ValueError(
      f"config.sc_pool_size={config.sc_pool_size} must be >= "
      f"config.pool_size={config.pool_size}"
    )
  if config.sc_subsets < 2:
    raise ValueError(f"config.sc_subsets must be >= 2, got {config.sc_subsets}")
  config_utils.int_list(
    config, "s_grid", high=config.pool_size, high_name="config.pool_size"
  )
  v_grid = config_utils.int_list(
    config, "v_grid", high=config.verifications, high_name="config.verifications"
  )
  for i, v in enumerate(config_utils.int_list(config, "plot_v", allow_empty=True)):
    if v not in v_grid:
      raise ValueError(
        f"config.plot_v[{i}]={v} is not in config.v_grid="
        f"{tuple(v_grid)} (no curve to draw)"
      )
  config_utils.int_list(config, "budgets")
  config_utils.one_of(config, "tie_break", genrm.TIE_BREAKS)
  if config.tie_break == "majority" and config.mc_subsets < 2:
    raise ValueError("config.tie_break='majority' needs config.mc_subsets >= 2")
  tg.validate_verifier_config(config)


def study_settings(config) -> dict:
  """The settings pinned in out_dir: every top-level field but
  `SUMMARY_ONLY` and the verifier section, plus the verifier's own pinned
  settings (`train_genverifier.verifier_settings`: the pool's verdicts come
  from that verifier). Accepts a ConfigDict or the nested dict of a saved
  config.json (absent fields are skipped)."""
  out = {k: v for k, v in config.items() if k not in SUMMARY_ONLY and k != "verifier"}
  out.update(
    {k: v for k, v in tg.verifier_settings(config).items() if k.startswith("verifier.")}
  )
  return out


def _legacy_settings(out_dir):
  """Earlier versions: pool_meta.json (what made the pool) over the config.json
  of the last finished run."""
  rec = workdir.read_json(os.path.join(out_dir, workdir.CONFIG_FILE))
  rec = None if rec is None else study_settings(rec)
  meta = workdir.read_json(os.path.join(out_dir, LEGACY_META))
  if meta is not None:
    rec = {**(rec or {}), **meta}
  return rec


def pin_study_dir(config, out_dir, check_only: bool = False) -> None:
  """Record / check the study's settings in out_dir.

  Raises:
    ValueError: out_dir holds a pool or rows made with other settings
      (naming every differing field).
  """
  workdir.pin_settings(
    out_dir,
    study_settings(config),
    results=RESULT_FILES,
    legacy=_legacy_settings,
    check_only=check_only,
  )


# ------------------------------- the pool ----------------------------------


def build_solutions(policy, problems, config) -> dict:
  """sc_pool_size solutions per problem, labelled by the exact checker."""
  cfg, params = policy
  P, N = len(problems), config.sc_pool_size
  prompts = [TOK.encode(p.prompt, add_bos=True) for p in problems]
  toks, lens = tg.sample_forked(
    cfg,
    params,
    prompts,
    jax.random.PRNGKey(config.seed * 7919 + 1),
    N,
    config.max_new_tokens,
    config.temperature,
    config.rows_per_call,
  )
  texts = tg.decode_rows(toks, lens)
  answers = [
    [arith.extract_answer(texts[p * N + n]) for n in range(N)] for p in range(P)
  ]
  correct = np.array(
    [
      [arith.check_answer(problems[p], texts[p * N + n]) for n in range(N)]
      for p in range(P)
    ],
    bool,
  )
  target = np.array(
    [
      [tg.verification_target(problems[p], texts[p * N + n])[1] for n in range(N)]
      for p in range(P)
    ],
    bool,
  )
  return dict(
    tokens=toks.reshape(P, N, -1).astype(np.uint8),
    lengths=lens.reshape(P, N).astype(np.int32),
    prompt_lengths=np.array([len(x) for x in prompts], np.int32),
    answers=scaling.dense_answer_ids(answers),
    correct=correct,
    target_verdict=target,
  )


def build_verification_chunk(verifier, problems, sol, lo, hi, config) -> dict:
  """`verifications` chains for each of the first pool_size solutions of
  problems lo..hi-1."""
  vcfg, vparams = verifier
  N, M = config.pool_size, config.verifications
  probs, cands = [], []
  for p in range(lo, hi):
    for n in range(N):
      probs.append(problems[p])
      cands.append(TOK.decode(sol["tokens"][p, n, : sol["lengths"][p, n]]))
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed * 7919 + 2), lo)
  yes, lens, vpl = tg.verify_candidates(vcfg, vparams, probs, cands, key, config, M)
  B = hi - lo
  return dict(
    yes=yes.reshape(B, N, M),
    chain_lengths=lens.reshape(B, N, M).astype(np.int32),
    verifier_prompt_lengths=vpl.reshape(B, N).astype(np.int32),
  )


def load_or_build_pool(config, out_dir, log=workdir.progress):
  """The pool (dict of arrays), building whatever is missing. Returns (pool,
  info) with what was generated and how long each stage took.

  Locks out_dir (reentrant: `run` already holds it) and checks its settings.

  Raises:
    ValueError: out_dir was made with other settings, or a saved part of the
      pool has the wrong shape.
  """
  with workdir.lock(out_dir):
    pin_study_dir(config, out_dir)
    return _load_or_build_pool_locked(config, out_dir, log)


def _load_or_build_pool_locked(config, out_dir, log):
  info = {"solutions_generated": False, "chunks_generated": 0}
  P, C = config.n_problems, config.chunk_problems
  chunks = [(lo, min(lo + C, P)) for lo in range(0, P, C)]
  sol_path = os.path.join(out_dir, "solutions.npz")
  chunk_path = lambda i: os.path.join(out_dir, f"verify_chunk{i:03d}.npz")
  need_sol = not os.path.exists(sol_path)
  need_chunks = [i for i in range(len(chunks)) if not os.path.exists(chunk_path(i))]
  policy = verifier = problems = None
  if need_sol or need_chunks:
    pcfg, pparams, pconfig = workdir.load_policy(config.policy_dir)
    policy = (pcfg, pparams)
    problems = tp.heldout_problems(pconfig, P)
  t0 = time.perf_counter()
  if need_sol:
    sol = build_solutions(policy, problems, config)
    workdir.save_npz_atomic(sol_path, **sol)
    info["solutions_generated"] = True
    log(
      f"pool: {P} x {config.sc_pool_size} solutions in {time.perf_counter() - t0:.0f}s"
    )
  else:
    sol = dict(np.load(sol_path))
  info["solutions_s"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  if need_chunks:
    verifier = workdir.load_model(config.verifier_dir, tg.PARAMS_NAME)
    for i in need_chunks:
      t1 = time.perf_counter()
      ch = build_verification_chunk(verifier, problems, sol, *chunks[i], config)
      workdir.save_npz_atomic(chunk_path(i), **ch)
      info["chunks_generated"] += 1
      log(
        f"pool: verified problems {chunks[i][0]}-{chunks[i][1] - 1} "
        f"({(chunks[i][1] - chunks[i][0]) * config.pool_size} solutions x "
        f"{config.verifications}) in {time.perf_counter() - t1:.0f}s"
      )
  info["verifications_s"] = time.perf_counter() - t0
  parts = [dict(np.load(chunk_path(i))) for i in range(len(chunks))]
  pool = dict(sol)
  for k in parts[0]:
    pool[k] = np.concatenate([p[k] for p in parts])
  want = (P, config.pool_size, config.verifications)
  if pool["yes"].shape != want or pool["correct"].shape != (P, config.sc_pool_size):
    raise ValueError(
      f"pool in {out_dir} has shapes {pool['yes'].shape} / "
      f"{pool['correct'].shape}, config wants {want}"
    )
  return pool, info


# ---------------------------- compute accounting ---------------------------


def _decode_flops(cfg, prompt_len, new_tokens) -> np.ndarray:
  """Decode FLOPs of new_tokens tokens after prompt_len (elementwise), via
  jaxllm.flops on the unique (prompt, new) pairs."""
  pl, nt = np.broadcast_arrays(np.asarray(prompt_len), np.asarray(new_tokens))
  pairs, inv = np.unique(
    np.stack([pl.ravel(), nt.ravel()], 1), axis=0, return_inverse=True
  )
  f = flops_lib.generate_flops(cfg, pairs[:, 0], pairs[:, 1]) - flops_lib.prefill_flops(
    cfg, pairs[:, 0]
  )
  return f[np.ravel(inv)].reshape(pl.shape)


@dataclasses.dataclass(frozen=True)
class CostModel:
  """Mean per-problem costs measured in the pool."""

  lam: float  # verification tokens / solution tokens
  solution_tokens: float
  verification_tokens: float
  prompt_tokens: float
  verifier_prompt_tokens: float
  gen_prefill_flops: float  # once per problem
  gen_decode_flops: float  # per solution
  ver_prefill_flops: float  # per verified solution (prompt + candidate)
  ver_decode_flops: float  # per verification chain

  def budget(self, s, v):
    return genrm.budget(s, v, self.lam)

  def compute(self, s: int, v: int) -> dict:
    """jaxllm.flops.Compute of one problem at (S, V) (V = 0: no verifier)."""
    rec = flops_lib.Compute(
      prefill_tokens=self.prompt_tokens,
      generated_tokens=s * self.solution_tokens,
      prefill_flops=self.gen_prefill_flops,
      decode_flops=s * self.gen_decode_flops,
    )
    if v > 0:
      rec = rec + flops_lib.Compute(
        verifier_tokens=s
        * (self.verifier_prompt_tokens + v * self.verification_tokens),
        verifier_calls=float(s * v),
        verifier_flops=s * (self.ver_prefill_flops + v * self.ver_decode_flops),
      )
    return rec.as_dict()


def cost_model(pool, pcfg, vcfg) -> CostModel:
  sol_len = pool["lengths"].astype(np.float64)
  chain = pool["chain_lengths"].astype(np.float64)
  pl, vpl = pool["prompt_lengths"], pool["verifier_prompt_lengths"]
  return CostModel(
    lam=genrm.token_ratio(chain, sol_len),
    solution_tokens=float(sol_len.mean()),
    verification_tokens=float(chain.mean()),
    prompt_tokens=float(pl.mean()),
    verifier_prompt_tokens=float(vpl.mean()),
    gen_prefill_flops=float(flops_lib.prefill_flops(pcfg, pl).mean()),
    gen_decode_flops=float(_decode_flops(pcfg, pl[:, None], pool["lengths"]).mean()),
    ver_prefill_flops=float(
      flops_lib.prefill_flops(vcfg, np.unique(vpl))[
        np.searchsorted(np.unique(vpl), vpl)
      ].mean()
    ),
    ver_decode_flops=float(
      _decode_flops(vcfg, vpl[..., None], pool["chain_lengths"]).mean()
    ),
  )


# ------------------------------- estimates ---------------------------------


def estimate_rows(pool, config, rows, rows_path, cost: CostModel, log=workdir.progress):
  """Accuracy rows not yet in `rows` (keyed (method, S, seed)): 'sc' at every
  needed S, 'genrm_v{V}' (exact, random ties) and 'genrm_maj_v{V}' (Monte
  Carlo, majority among tied) at every (S, V) of the grid."""
  seed = config.seed
  s_grid = [int(s) for s in config.s_grid]
  v_grid = [int(v) for v in config.v_grid]
  N, M, Nsc = config.pool_size, config.verifications, config.sc_pool_size
  if (
    not s_grid
    or not v_grid
    or max(s_grid) > N
    or max(v_grid) > M
    or min(s_grid) < 1
    or min(v_grid) < 1
  ):
    raise ValueError(
      f"config.s_grid must lie in [1, pool_size={N}] and "
      f"config.v_grid in [1, verifications={M}]"
    )
  yes = pool["yes"].sum(-1).astype(np.int64)
  correct = pool["correct"]
  new = 0

  def add(method, s, acc, stderr, v):
    nonlocal new
    row = dict(
      method=method,
      budget=int(s),
      seed=seed,
      v=int(v),
      accuracy=float(acc),
      stderr=float(stderr),
      c=float(cost.budget(s, v)),
      compute=cost.compute(int(s), int(v)),
      n_problems=int(correct.shape[0]),
    )
    workdir.append_row(rows_path, row)
    rows[(method, int(s), seed)] = row
    new += 1

  # Monte Carlo draws are seeded per (seed, [V,] k), so every row is the same
  # whichever rows were computed with it (resumes, longer grids).
  sc_ks = list(range(1, Nsc + 1))  # every k: SC at any budget C is maj@floor(C)
  P = correct.shape[0]
  for k in sc_ks:
    if ("sc", k, seed) in rows:
      continue
    est = estimators.majority_at_k(
      pool["answers"], correct, [k], seed=[seed, k], num_subsets=config.sc_subsets
    )
    add(
      "sc",
      k,
      est.value_PxK[:, 0].mean(),
      np.sqrt((est.stderr_PxK[:, 0] ** 2).sum()) / P,
      0,
    )
  for v in v_grid:
    todo = [s for s in s_grid if (f"genrm_v{v}", s, seed) not in rows]
    if todo:
      acc = genrm.genrm_accuracy(yes, M, correct[:, :N], todo, v).mean(0)
      for s, a in zip(todo, acc):
        add(f"genrm_v{v}", s, a, 0.0, v)
    todo = [s for s in s_grid if (f"genrm_maj_v{v}", s, seed) not in rows]
    for s in todo if config.mc_subsets >= 2 else []:
      est = genrm.genrm_accuracy_mc(
        yes,
        M,
        correct[:, :N],
        [s],
        v,
        answers_PxN=pool["answers"][:, :N],
        tie_break="majority",
        num_subsets=config.mc_subsets,
        seed=[seed, v, s],
      )
      add(
        f"genrm_maj_v{v}",
        s,
        est.value_PxS[:, 0].mean(),
        np.sqrt((est.stderr_PxS[:, 0] ** 2).sum()) / P,
        v,
      )
  return new


# -------------------------------- summary ----------------------------------


def _grid(rows, prefix, seed, v_grid, s_grid):
  out = {}
  for v in v_grid:
    for s in s_grid:
      r = rows.get((f"{prefix}{v}", s, seed))
      if r is not None:
        out[(s, v)] = r
  return out


def _fit(s, v, acc, comp):
  try:
    f = analysis.fit_compute_optimal_allocation(s, v, acc, comp)
  except ValueError as e:  # e.g. a flat frontier in a tiny test pool
    return {"error": str(e)}
  d = dataclasses.asdict(f)
  return {k: (x.tolist() if isinstance(x, np.ndarray) else x) for k, x in d.items()}


def summarize(
  rows, pool, cost: CostModel, config, out_dir, verifier_metrics, log=workdir.progress
) -> dict:
  seed = config.seed
  s_grid = [int(s) for s in config.s_grid]
  v_grid = [int(v) for v in config.v_grid]
  Nsc = config.sc_pool_size
  main_prefix = "genrm_v" if config.tie_break == "random" else "genrm_maj_v"
  grid = _grid(rows, main_prefix, seed, v_grid, s_grid)
  sc = {k: r for (m, k, sd), r in rows.items() if m == "sc" and sd == seed}

  # (S, V) table
  log(
    f"\nGenRM accuracy over (S solutions, V verifications), ties "
    f"{config.tie_break}; V=0 is self-consistency (maj@S)"
  )
  log(f"{'S':>4} | {'V=0':>6}" + "".join(f"{'V=' + str(v):>7}" for v in v_grid))
  for s in s_grid:
    log(
      f"{s:>4} | {sc[s]['accuracy']:6.3f}"
      + "".join(f"{grid[(s, v)]['accuracy']:7.3f}" for v in v_grid)
    )

  keys = sorted(grid)
  s_arr = np.array([k[0] for k in keys], float)
  v_arr = np.array([k[1] for k in keys], float)
  acc = np.array([grid[k]["accuracy"] for k in keys])
  c_arr = np.array([grid[k]["c"] for k in keys])
  f_arr = np.array([grid[k]["compute"]["flops"] for k in keys])
  sc_k = np.array(sorted(sc))

  def sc_at(c):  # SC spends the whole budget on solutions: S = floor(C)
    k = int(math.floor(c + 1e-9))
    return sc[k]["accuracy"] if 1 <= k <= Nsc else float("nan")

  def best_at(c):
    ok = np.flatnonzero(c_arr <= c + 1e-9)
    if len(ok) == 0:
      return None
    i = ok[np.lexsort((c_arr[ok], -acc[ok]))[0]]
    return i

  # per-budget table
  log(
    f"\nper budget C = S(1 + lambda V), lambda = {cost.lam:.3f}: best GenRM "
    f"(S, V) with C(S, V) <= C against SC at equal C (S = C)"
  )
  log(
    f"{'C':>6} {'best S':>6} {'V':>3} {'C used':>7} {'GenRM':>6} "
    f"{'FLOPs':>10} {'SC':>6} {'SC FLOPs':>10}  winner"
  )
  per_budget = []
  for c in config.budgets:
    i = best_at(c)
    sca = sc_at(c)
    scf = cost.compute(int(math.floor(c)), 0)["flops"] if not math.isnan(sca) else None
    rec = dict(budget=float(c), sc_accuracy=sca, sc_flops=scf)
    if i is not None:
      rec.update(
        s=int(s_arr[i]),
        v=int(v_arr[i]),
        c_used=float(c_arr[i]),
        accuracy=float(acc[i]),
        flops=float(f_arr[i]),
      )
    win = (
      "-"
      if i is None or math.isnan(sca)
      else "GenRM"
      if acc[i] > sca
      else "SC"
      if acc[i] < sca
      else "tie"
    )
    rec["winner"] = win
    per_budget.append(rec)
    g = (
      f"{int(s_arr[i]):>6} {int(v_arr[i]):>3} {c_arr[i]:7.1f} {acc[i]:6.3f} "
      f"{f_arr[i]:10.3e}"
      if i is not None
      else f"{'-':>6} {'-':>3} {'-':>7} {'-':>6} {'-':>10}"
    )
    s_txt = f"{sca:6.3f} {scf:10.3e}" if not math.isnan(sca) else f"{'-':>6} {'-':>10}"
    log(f"{c:>6g} {g} {s_txt}  {win}")

  # crossing on a dense set of budgets: every grid point's C within SC's range
  levels = np.unique(np.concatenate([c_arr, sc_k.astype(float)]))
  levels = levels[(levels >= 1) & (levels <= Nsc)]
  best_lv = np.array(
    [acc[best_at(c)] if best_at(c) is not None else np.nan for c in levels]
  )
  sc_lv = np.array([sc_at(c) for c in levels])
  cross = genrm.crossover_budget(levels, best_lv, sc_lv)
  ever = bool(np.any(best_lv > sc_lv))
  log(
    "\ncrossing: "
    + (
      f"GenRM beats SC at every budget from C = {cross:g} "
      f"(up to C = {levels.max():g}, SC's range)"
      if cross is not None
      else "never in range (C <= %g)" % levels.max()
      + (
        "; GenRM wins at some budgets: "
        + ", ".join(f"{c:.1f}" for c in levels[best_lv > sc_lv])
        if ever
        else ""
      )
    )
  )

  # GenRM budget needed to match SC at k samples
  match = []
  log("GenRM compute needed to match SC at k solutions:")
  for k in sc_k:
    if k not in {int(b) for b in config.budgets}:
      continue
    hit = np.flatnonzero(acc >= sc[k]["accuracy"] - 1e-12)
    if len(hit):
      i = hit[np.argmin(c_arr[hit])]
      m = dict(
        k=int(k),
        sc_accuracy=sc[k]["accuracy"],
        c=float(c_arr[i]),
        ratio=float(c_arr[i] / k),
        s=int(s_arr[i]),
        v=int(v_arr[i]),
        flops_ratio=float(f_arr[i] / cost.compute(int(k), 0)["flops"]),
      )
      log(
        f"  SC@{k:<4} {sc[k]['accuracy']:.3f}: GenRM at C = {c_arr[i]:.1f} "
        f"(S={int(s_arr[i])}, V={int(v_arr[i])}), x{m['ratio']:.2f} compute, "
        f"x{m['flops_ratio']:.2f} FLOPs"
      )
    else:
      m = dict(k=int(k), sc_accuracy=sc[k]["accuracy"], c=None, ratio=None)
      log(
        f"  SC@{k:<4} {sc[k]['accuracy']:.3f}: not reached by any grid point "
        f"(GenRM best {acc.max():.3f})"
      )
    match.append(m)

  fit_c = _fit(s_arr, v_arr, acc, c_arr)
  fit_f = _fit(s_arr, v_arr, acc, f_arr)
  for name, f in (("C", fit_c), ("FLOPs", fit_f)):
    if "error" in f:
      log(f"fit vs {name}: not possible ({f['error']})")
    else:
      log(
        f"fit vs {name}: S_opt ~ {name}^{f['s_exponent']:.3f} (R^2 "
        f"{f['s_r2']:.3f}), V_opt ~ {name}^{f['v_exponent']:.3f} (R^2 "
        f"{f['v_r2']:.3f}) over {len(f['budgets'])} compute-optimal points"
      )
  if "error" not in fit_c:
    log(
      "compute-optimal points (C, S, V, accuracy): "
      + ", ".join(
        f"({b:.1f}, {int(s)}, {int(v)}, {a:.3f})"
        for b, s, v, a in zip(
          fit_c["budgets"], fit_c["s_opt"], fit_c["v_opt"], fit_c["accuracy"]
        )
      )
    )

  other = "genrm_maj_v" if main_prefix == "genrm_v" else "genrm_v"
  grid_other = _grid(rows, other, seed, v_grid, s_grid)
  if grid_other:
    log(
      f"\nties by {'majority among tied' if other == 'genrm_maj_v' else 'random'}"
      f" ({'Monte Carlo' if other == 'genrm_maj_v' else 'exact'}):"
    )
    log(f"{'S':>4} |" + "".join(f"{'V=' + str(v):>7}" for v in v_grid))
    for s in s_grid:
      log(
        f"{s:>4} |"
        + "".join(
          f"{grid_other[(s, v)]['accuracy']:7.3f}"
          if (s, v) in grid_other
          else f"{'-':>7}"
          for v in v_grid
        )
      )

  plot_path = plot(
    grid, sc, cost, config, os.path.join(out_dir, "genrm_allocation.png")
  )
  summary = dict(
    lambda_=cost.lam,
    cost_model=dataclasses.asdict(cost),
    verifier_on_pool=verifier_metrics,
    table={f"S{s}_V{v}": grid[(s, v)]["accuracy"] for s, v in keys},
    table_other_tie_break={
      f"S{s}_V{v}": r["accuracy"] for (s, v), r in grid_other.items()
    },
    self_consistency={int(k): sc[k]["accuracy"] for k in sc_k},
    per_budget=per_budget,
    crossing_budget=cross,
    crossing="never in range" if cross is None else cross,
    genrm_wins_at=[float(c) for c in levels[best_lv > sc_lv]],
    match_sc=match,
    fit_vs_c=fit_c,
    fit_vs_flops=fit_f,
    tie_break=config.tie_break,
    plot=plot_path,
  )
  return summary


def plot(grid, sc, cost, config, path) -> str:
  """Accuracy against budget C (left) and FLOPs (right): self-consistency,
  GenRM at each `config.plot_v`, and the GenRM frontier; PNG at `path`."""
  fig, axes = analysis.new_figure((11, 4.2), ncols=2)
  sc_k = np.array(sorted(sc))
  keys = sorted(grid)
  for ax, unit in zip(axes, ("c", "flops")):
    x_of = (lambda r: r["c"]) if unit == "c" else (lambda r: r["compute"]["flops"])
    ax.plot(
      [x_of(sc[k]) for k in sc_k],
      [sc[k]["accuracy"] for k in sc_k],
      "k-o",
      ms=3,
      lw=2,
      label="self-consistency (V=0)",
    )
    for v in config.plot_v:
      pts = [grid[k] for k in keys if k[1] == v]
      if pts:
        ax.plot(
          [x_of(r) for r in pts],
          [r["accuracy"] for r in pts],
          "-o",
          ms=3,
          label=f"GenRM V={v}",
        )
    xs = np.array([x_of(grid[k]) for k in keys])
    ys = np.array([grid[k]["accuracy"] for k in keys])
    idx = analysis.pareto_frontier(xs, ys)
    ax.step(
      xs[idx],
      ys[idx],
      where="post",
      color="r",
      lw=1.2,
      alpha=0.7,
      ls="--",
      label="GenRM compute-optimal frontier",
    )
    analysis.style_axes(
      ax,
      "budget C = S(1 + λV)  [solution units]" if unit == "c" else "FLOPs per problem",
      "accuracy",
      legend_fontsize=None,
    )
  axes[0].set_title(f"solve vs verify (λ = {cost.lam:.2f})")
  axes[1].legend(fontsize=7)
  return analysis.save_figure(fig, path)


# ---------------------------------- run ------------------------------------


def check_study(config, out_dir) -> None:
  """`validate_study`, plus the checks that out_dir and a finished verifier in
  config.verifier_dir were made with this config's settings. Writes nothing.

  Raises:
    ValueError: naming the offending field(s).
  """
  validate_study(config)
  _check_dirs(config, out_dir)
  pin_study_dir(config, out_dir, check_only=True)
  tg.pin_verifier_dir(config, config.verifier_dir, check_only=True)


def _check_dirs(config, out_dir) -> None:
  if os.path.realpath(config.verifier_dir) == os.path.realpath(out_dir):
    raise ValueError(
      f"config.verifier_dir={config.verifier_dir!r} is the "
      f"study's output directory; give the verifier its own"
    )


def run(config, out_dir, log=workdir.progress) -> dict:
  """Run (or resume) the study into out_dir; returns the summary.

  Raises:
    ValueError: a bad config, or out_dir / verifier_dir made with other
      settings (naming the fields) -- before anything is trained or loaded.
    workdir.WorkdirBusy: another run holds out_dir or verifier_dir.
  """
  validate_study(config)
  _check_dirs(config, out_dir)
  with workdir.lock(out_dir):
    pin_study_dir(config, out_dir)
    # a finished verifier must have been trained with this config's settings
    tg.pin_verifier_dir(config, config.verifier_dir, check_only=True)
    workdir.save_config(out_dir, config)
    return _run_locked(config, out_dir, log)


def _run_locked(config, out_dir, log) -> dict:
  t_start = time.perf_counter()
  timings = {}
  trained = False
  if not os.path.exists(
    os.path.join(config.verifier_dir, checkpoint.MODEL_CONFIG_FILE)
  ):
    t0 = time.perf_counter()
    log(f"no verifier in {config.verifier_dir}: training it")
    tg.train_verifier(config, config.verifier_dir, log=log)
    timings["verifier_train_s"] = time.perf_counter() - t0
    trained = True
  t0 = time.perf_counter()
  pool, info = load_or_build_pool(config, out_dir, log=log)
  timings.update(
    pool_s=time.perf_counter() - t0,
    solutions_s=info["solutions_s"],
    verifications_s=info["verifications_s"],
  )
  # the compute accounting needs the model shapes only, not their weights
  cost = cost_model(
    pool,
    checkpoint.load_model_config(config.policy_dir),
    checkpoint.load_model_config(config.verifier_dir),
  )

  # the verifier on the pool (held-out problems): verdicts vs exact targets
  N = config.pool_size
  yes = pool["yes"]
  target = pool["target_verdict"][:, :N]
  correct = pool["correct"][:, :N]
  score = yes.mean(-1)
  vmet = dict(
    verdict_accuracy=float((yes == target[..., None]).mean()),
    verdict_accuracy_on_correct=float(yes[target].mean())
    if target.any()
    else float("nan"),
    verdict_accuracy_on_wrong=float((~yes[~target]).mean())
    if (~target).any()
    else float("nan"),
    score_auroc_vs_answer=reward.auroc(score, correct),
    score_auroc_vs_verdict=reward.auroc(score, target),
    single_verdict_auroc_vs_answer=reward.auroc(yes[..., 0], correct),
    within_problem_auroc_vs_answer=tg.within_problem_auroc(score, correct),
    pass_at_1=float(pool["correct"].mean()),
    coverage_at_pool=float(correct.any(1).mean()),
  )
  log(
    f"\npool: {config.n_problems} held-out problems, {config.sc_pool_size} "
    f"solutions each ({N} verified x {config.verifications}); pass@1 "
    f"{vmet['pass_at_1']:.3f}, coverage@{N} {vmet['coverage_at_pool']:.3f}"
  )
  log(
    f"tokens: solution {cost.solution_tokens:.1f}, verification chain "
    f"{cost.verification_tokens:.1f} -> lambda {cost.lam:.3f}; FLOPs: "
    f"solution {cost.gen_decode_flops:.3e}, verification "
    f"{cost.ver_decode_flops:.3e} (+ {cost.ver_prefill_flops:.3e} verifier "
    f"prefill per solution)"
  )
  log(
    f"verifier on the pool: verdict accuracy {vmet['verdict_accuracy']:.3f} "
    f"(Yes on correct-target {vmet['verdict_accuracy_on_correct']:.3f}, No on "
    f"wrong-target {vmet['verdict_accuracy_on_wrong']:.3f}); AUROC vs answer "
    f"correctness: {config.verifications}-verdict score "
    f"{vmet['score_auroc_vs_answer']:.3f} (within problems "
    f"{vmet['within_problem_auroc_vs_answer']:.3f}), one verdict "
    f"{vmet['single_verdict_auroc_vs_answer']:.3f}"
  )

  t0 = time.perf_counter()
  rows_path = os.path.join(out_dir, "rows.jsonl")
  rows = workdir.read_rows(rows_path)
  new = estimate_rows(pool, config, rows, rows_path, cost, log=log)
  timings["estimates_s"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  summary = summarize(rows, pool, cost, config, out_dir, vmet, log=log)
  timings["summary_s"] = time.perf_counter() - t0
  timings["total_s"] = time.perf_counter() - t_start
  summary.update(
    timings=timings,
    new_rows=new,
    verifier_trained=trained,
    solutions_generated=info["solutions_generated"],
    chunks_generated=info["chunks_generated"],
  )
  workdir.write_json_atomic(
    os.path.join(out_dir, "summary.json"), summary, indent=1, default=str
  )
  log("\ntimings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
  return summary


def main(argv):
  del argv
  distributed.single_process(
    "experiments.genrm_allocation",
    (
      "its pools are not split across processes yet; experiments/scaling.py shows "
      "how, with distributed.split_map"
    ),
  )
  # every config / directory problem, before anything is trained
  config = workdir.config_from_flags(DEFAULT_CONFIG, check=check_study)
  workdir.run_cli(run, config, flags.FLAGS.workdir)
  print(f"results in {os.path.abspath(flags.FLAGS.workdir)}")


if __name__ == "__main__":
  distributed.define_flags()
  workdir.define_flags("results/arith/genrm", DEFAULT_CONFIG)
  app.run(main)
