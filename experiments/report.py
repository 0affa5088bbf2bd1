"""The scaling sweep's report: tables with standard errors, fits with their
uncertainty, the compute-optimal choice per budget with ties, the budget
trend of every method, and the plots (experiments/plots.py), per verifier.

Standard errors are over problems: a row stores its per-problem values
(`per_problem`: 0 / 1 for a search or greedy row, the unbiased estimator's
per-problem expectation for a selection row); several seeds are averaged
per problem first, so the SE covers problems and seeds together, and the
seed-to-seed spread is reported as `seed_sd`. A row without per-problem
values (written by an older version) gets se = nan, shown as such.

`summarize` is what experiments/scaling.py calls at the end of a sweep.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from experiments import analysis, plots, workdir
from experiments import verifiers as vlib

TIE_Z = 1.96  # a choice is a tie when the difference is within this many SEs
TREND_Z = 2.0  # a method improves / worsens with budget beyond this many SEs


@dataclasses.dataclass
class Cell:
  """One (row name, budget) over its seeds: accuracy (mean), se (over
  problems; nan without per-problem values), seed_sd (nan for one seed),
  flops (mean per problem), per_problem ([P] seed-averaged, or None)."""

  accuracy: float
  se: float
  seed_sd: float
  flops: float
  per_problem: object


def cell(rows, name: str, k: int):
  """The `Cell` of row `name` at budget k, or None when no row has it."""
  rs = [r for r in rows.values() if r["method"] == name and r["budget"] == k]
  if not rs:
    return None
  accs = [r["accuracy"] for r in rs]
  per = [r.get("per_problem") for r in rs]
  pp = None
  if all(p is not None for p in per) and len({len(p) for p in per}) == 1:
    pp = np.mean(np.asarray(per, np.float64), 0)
  return Cell(
    accuracy=float(np.mean(accs)),
    se=float(analysis.standard_error(pp)) if pp is not None else float("nan"),
    seed_sd=float(np.std(accs, ddof=1)) if len(accs) > 1 else float("nan"),
    flops=float(np.mean([r["compute"]["flops"] for r in rs])),
    per_problem=pp,
  )


def build_table(rows, names, budgets) -> dict:
  """name -> {budget: Cell} over the budgets that have rows."""
  out = {}
  for m in names:
    cells = {k: c for k in budgets if (c := cell(rows, m, k)) is not None}
    if cells:
      out[m] = cells
  return out


def _num(x):
  """x as a float, None when not finite (JSON has no nan; None == None)."""
  return float(x) if np.isfinite(x) else None


def _fmt(c) -> str:
  if c is None:
    return "-"
  return f"{c.accuracy:.3f}" + (f"±{c.se:.3f}" if np.isfinite(c.se) else "±nan")


def log_table(table, budgets, groups, quality, log) -> None:
  """Print the table per verifier group: 'acc±se' per budget column."""
  log("\naccuracy ± standard error over problems (mean over seeds); columns = budget")
  for v, names in groups.items():
    q = quality.get(v, {})
    if v:
      log(
        f"\n[verifier {v}] within-problem AUROC: PRM "
        f"{q.get('prm_within_auroc', float('nan')):.3f}, ORM "
        f"{q.get('orm_within_auroc', float('nan')):.3f}"
      )
    log(f"{'method':<26}" + "".join(f"{k:>14}" for k in budgets))
    for m in names:
      if m in table:
        log(f"{m:<26}" + "".join(f"{_fmt(table[m].get(k)):>14}" for k in budgets))


def markdown_table(table, budgets, groups, quality) -> str:
  """The main table as markdown: one row per (verifier, method)."""
  head = "| verifier (PRM / ORM AUROC) | method | " + " | ".join(map(str, budgets))
  lines = [head + " |", "|---|---|" + "---|" * len(budgets)]
  for v, names in groups.items():
    q = quality.get(v, {})
    tag = (
      f"{v} ({q.get('prm_within_auroc', np.nan):.2f} / "
      f"{q.get('orm_within_auroc', np.nan):.2f})"
      if v
      else "-"
    )
    for m in names:
      if m in table:
        cells = " | ".join(_fmt(table[m].get(k)) for k in budgets)
        lines.append(f"| {tag} | {vlib.split_name(m)[0]} | {cells} |")
  return "\n".join(lines) + "\n"


def fit_rows(table) -> tuple:
  """(name -> LinearFit of accuracy on log10 FLOPs, weighted by the SEs when
  every point has one; name -> the reason a fit was impossible)."""
  fits, errors = {}, {}
  for m, cells in table.items():
    if m == "coverage" or len(cells) < 2:
      continue
    c = list(cells.values())
    se = [x.se for x in c]
    ok = all(np.isfinite(s) and s > 0 for s in se)
    try:
      fits[m] = analysis.fit_log_linear(
        [x.flops for x in c], [x.accuracy for x in c], se if ok else None
      )
    except ValueError as e:  # e.g. every budget at the same FLOPs
      errors[m] = str(e)
  return fits, errors


def budget_trend(cells: dict) -> dict | None:
  """Accuracy at the largest budget minus at the smallest, with its paired
  SE over problems and z = delta / se; None with < 2 budgets."""
  if len(cells) < 2:
    return None
  k0, k1 = min(cells), max(cells)
  a, b = cells[k0], cells[k1]
  se = float("nan")
  if a.per_problem is not None and b.per_problem is not None:
    se = analysis.difference_se(b.per_problem, a.per_problem)
  delta = b.accuracy - a.accuracy
  z = delta / se if se > 0 else float("nan")
  verdict = "flat (within error)"
  if z > TREND_Z:
    verdict = "improves"
  elif z < -TREND_Z:
    verdict = "worsens"
  return {"budgets": [k0, k1], "delta": delta, "se": se, "z": z, "verdict": verdict}


def panel_choice(table, names, levels) -> dict | None:
  """Compute-optimal method per FLOPs level among `names` (ties marked,
  `analysis.compute_optimal_with_ties`), or None without such rows."""
  res, per = {}, {}
  for m in names:
    if m in table and m != "coverage":
      c = list(table[m].values())
      res[m] = (np.array([x.flops for x in c]), np.array([x.accuracy for x in c]))
      per[m] = [x.per_problem for x in c]
  if not res:
    return None
  if any(p is None for ps in per.values() for p in ps):
    ch = analysis.compute_optimal_method(levels, res)
    tied = [[m] if m else [] for m in ch.methods]
    ses = [float("nan")] * len(levels)
  else:
    ch = analysis.compute_optimal_with_ties(levels, res, per, TIE_Z)
    tied, ses = ch.tied, ch.se.tolist()
  return {
    "budget_flops": np.asarray(levels).tolist(),
    "method": [str(x) for x in ch.methods],
    "accuracy": [float(x) for x in ch.accuracy],
    "se": ses,
    "tied": tied,
  }


def groups_of(names, verifier_names) -> dict:
  """'' (rows every panel shares: coverage, majority, baselines) and each
  verifier -> its row names, in `names` order."""
  out = {"": [m for m in names if vlib.SEP not in m and _shared(m)]}
  for v in verifier_names:
    out[v] = [m for m in names if not _shared(m) and vlib.split_name(m)[1] == v]
  return out


def _shared(name: str) -> bool:
  return name in vlib.VERIFIER_FREE or name in BASELINE_NAMES


BASELINE_NAMES = ("greedy",)


def _coverage(table, summary, out_dir, log) -> None:
  if "coverage" not in table:
    return
  cells = table["coverage"]
  ks = np.array(sorted(cells))
  cov = np.array([cells[k].accuracy for k in ks])
  if len(cov) < 3:
    log(f"\ncoverage fit: needs >= 3 budgets, have {len(cov)}")
  elif not (cov > 0).all():
    log(
      f"\ncoverage fit: not possible (zero coverage at budgets {ks[cov <= 0].tolist()})"
    )
  else:
    fit = analysis.fit_coverage_power_law(ks, cov)
    summary["coverage_fit"] = dataclasses.asdict(fit)
    log(
      f"\ncoverage fit: log(coverage(k)) = ({fit.a:.4f} ± {fit.a_se:.4f}) * "
      f"k^({fit.b:.4f} ± {fit.b_se:.4f}), R^2 = {fit.r2:.4f}"
    )
    analysis.plot_coverage(ks, cov, os.path.join(out_dir, "coverage.png"), fit=fit)


def _log_choice(v, choice, log) -> None:
  log(f"\ncompute-optimal per FLOPs budget [{v or 'all'}] (ties: within {TIE_Z} SE)")
  for b, m, a, tied in zip(
    choice["budget_flops"], choice["method"], choice["accuracy"], choice["tied"]
  ):
    tie = f"  tie: {' ~ '.join(tied)}" if len(tied) > 1 else ""
    log(f"  {b:10.3e} FLOPs: {m or '-'} ({a:.3f}){tie}")


def _panels(table, groups, quality) -> dict:
  """verifier -> the panel input of plots.verifier_panels_spec."""
  cov = table.get("coverage")
  cov_xy = None
  if cov:
    ks = sorted(cov)
    cov_xy = ([cov[k].flops for k in ks], [cov[k].accuracy for k in ks])
  greedy = table.get("greedy", {}).get(1)
  pass1 = cov.get(1) if cov else None
  out = {}
  for v, names in groups.items():
    if not v:
      continue
    series = {}
    for m in [n for n in groups[""] if n not in ("coverage", "greedy")] + names:
      if m in table:
        cs = [table[m][k] for k in sorted(table[m])]
        se = [c.se if np.isfinite(c.se) else 0.0 for c in cs]
        series[vlib.split_name(m)[0]] = (
          [c.flops for c in cs],
          [c.accuracy for c in cs],
          se,
        )
    out[v] = {
      "auroc": quality.get(v, {}).get("prm_within_auroc", np.nan),
      "series": series,
      "coverage": cov_xy,
      "greedy": greedy.accuracy if greedy else None,
      "pass1": pass1.accuracy if pass1 else None,
    }
  return out


def _auroc_points(table, groups, quality, budget) -> dict:
  pts = {}
  for v, names in groups.items():
    q = quality.get(v)
    if not v or not q:
      continue
    for m in names:
      c = table.get(m, {}).get(budget)
      if c is not None:
        base = vlib.split_name(m)[0]
        x = q["orm_within_auroc"] if base.endswith("_orm") else q["prm_within_auroc"]
        pts.setdefault(base, []).append((x, c.accuracy, c.se))
  return pts


def _plots(table, groups, quality, budget, out_dir, summary) -> None:
  panels = _panels(table, groups, quality)
  if any(p["series"] for p in panels.values()):
    spec = plots.verifier_panels_spec(panels)
    plots.render_verifier_panels(spec, os.path.join(out_dir, "accuracy_vs_flops.png"))
    summary["plot_styles"] = spec["styles"]
  pts = _auroc_points(table, groups, quality, budget)
  if pts:
    spec = plots.auroc_summary_spec(pts, budget)
    plots.render_auroc_summary(spec, os.path.join(out_dir, "accuracy_vs_auroc.png"))


def summarize(rows, plan, out_dir, quality=None, report_budget=16, log=None) -> dict:
  """Tables, fits, compute-optimal choices (ties marked), budget trends and
  plots from the finished rows, per verifier.

  rows: {(method, budget, seed): row}, only the rows to report; plan: the
  sweep's `scaling.SweepPlan`; quality: verifier -> `verifiers.
  verifier_quality` means over seeds (missing -> not shown); report_budget:
  the budget of the accuracy-vs-AUROC plot. Works for any non-empty subset
  of rows (a fit or choice that is impossible is reported as such). Writes
  summary.json (atomically), table.md and the PNGs into out_dir.

  Returns the summary dict: "table" (name -> budgets, flops, accuracy, se,
  seed_sd), "coverage_fit", "accuracy_vs_log10_flops" (with SEs),
  "compute_optimal" (the learned verifier's panel, or the only one),
  "verifiers" (verifier -> quality, compute_optimal, trend), "baselines".
  """
  log = log or workdir.progress
  quality = quality or {}
  names = list(plan.methods + plan.search + plan.baselines)
  extra = {1} if plan.baselines else set()
  budgets = sorted(set(plan.budgets) | set(plan.search_budgets) | extra)
  table = build_table(rows, names, budgets)
  groups = groups_of(names, plan.verifiers)
  log_table(table, budgets, groups, quality, log)
  summary = {
    "table": {
      m: {
        "budgets": list(cells),
        "flops": [c.flops for c in cells.values()],
        "accuracy": [c.accuracy for c in cells.values()],
        "se": [_num(c.se) for c in cells.values()],
        "seed_sd": [_num(c.seed_sd) for c in cells.values()],
      }
      for m, cells in table.items()
    }
  }
  _coverage(table, summary, out_dir, log)
  fits, errors = fit_rows(table)
  summary["accuracy_vs_log10_flops"] = {
    m: dataclasses.asdict(f) for m, f in fits.items()
  }
  if errors:
    summary["accuracy_vs_log10_flops_errors"] = errors
  if fits or errors:
    log("\naccuracy vs log10 FLOPs (per row): slope ± SE, R^2")
    for m, f in fits.items():
      log(f"  {m:<28} slope {f.slope:+.4f} ± {f.slope_se:.4f}  R^2 {f.r2:.3f}")
    for m, e in errors.items():
      log(f"  {m:<28} no fit: {e}")
  _verifier_sections(table, groups, quality, summary, log)
  _plots(table, groups, quality, report_budget, out_dir, summary)
  comp = astar_comparison(rows)
  if comp:
    summary["astar_vs"] = comp
    _log_astar(comp, log)
  with open(os.path.join(out_dir, "table.md"), "w") as f:
    f.write(markdown_table(table, budgets, groups, quality))
  workdir.write_json_atomic(
    os.path.join(out_dir, "summary.json"), summary, indent=1, default=str
  )
  return summary


def _verifier_sections(table, groups, quality, summary, log) -> None:
  """summary["verifiers"], ["compute_optimal"], ["baselines"], logged."""
  cands = [m for m in table if m != "coverage"]
  if not cands:
    log(
      "\nonly coverage (pass@k, an oracle) was run: no accuracy-vs-FLOPs "
      "fit or compute-optimal choice"
    )
    return
  fl = np.unique([c.flops for m in cands for c in table[m].values()])
  levels = np.geomspace(fl.min(), fl.max(), 6)
  base = {}
  if "greedy" in table and 1 in table["greedy"]:
    base["greedy"] = dataclasses.asdict(table["greedy"][1])
  if "coverage" in table and 1 in table["coverage"]:
    base["pass1"] = dataclasses.asdict(table["coverage"][1])
  for b in base.values():
    b.pop("per_problem")
  summary["baselines"] = base
  for n, b in base.items():
    log(f"\nbaseline {n}: {b['accuracy']:.3f} ± {b['se']:.3f}")
  out = {}
  for v, names in groups.items():
    if not v:
      continue
    panel = [m for m in groups[""] + names if m in table]
    choice = panel_choice(table, panel, levels)
    trend = {m: budget_trend(table[m]) for m in panel if m in table}
    out[v] = {"quality": quality.get(v), "compute_optimal": choice, "trend": trend}
    if choice:
      _log_choice(v, choice, log)
    log(f"budget trend [{v}]: accuracy at the largest budget minus the smallest")
    for m, t in trend.items():
      if t:
        log(
          f"  {m:<28} {t['budgets'][0]:>3} -> {t['budgets'][1]:<3} "
          f"{t['delta']:+.3f} ± {t['se']:.3f}  {t['verdict']}"
        )
  summary["verifiers"] = out
  main = out.get(vlib.LEARNED) or next(iter(out.values()), None)
  if main and main["compute_optimal"]:
    summary["compute_optimal"] = main["compute_optimal"]


def _log_astar(comp, log) -> None:
  log(
    "\nA* against best-of-N / PF: A*'s cheapest budget reaching the same "
    "accuracy (mean over seeds); ratios = A* / reference"
  )
  for c in comp:
    head = f"  {c['reference']:<14} @ {c['budget']:>3} (acc {c['accuracy']:.3f}):"
    if c["astar_budget"] is None:
      log(f"{head} not reached (A* best {c['astar_best']:.3f})")
    else:
      log(
        f"{head} A* @ {c['astar_budget']:>3} acc {c['astar_accuracy']:.3f}, "
        f"tokens x{c['token_ratio']:.2f}, PRM tokens x{c['prm_token_ratio']:.2f}"
      )


def _mean_row(rows, method, budget):
  rs = [r for r in rows.values() if r["method"] == method and r["budget"] == budget]
  if not rs:
    return None
  return {
    "accuracy": float(np.mean([r["accuracy"] for r in rs])),
    "tokens": float(np.mean([r["compute"]["generated_tokens"] for r in rs])),
    "vtokens": float(np.mean([r["compute"]["verifier_tokens"] for r in rs])),
  }


def astar_comparison(
  rows, references=("bon_prm_min", "bon_orm", "pf", "pf_smc"), budgets=(8, 16, 32)
):
  """Generated tokens and PRM work A* needs to reach the accuracy a reference
  method reaches at a budget (the A*-decoding paper's claim: up to 3x fewer
  tokens, 30% fewer PRM calls), under the learned verifier. A* budgets are
  scanned from the smallest.

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
      c = {
        "reference": ref,
        "budget": b,
        "accuracy": rr["accuracy"],
        "astar_budget": None,
        "astar_best": best,
      }
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
