r"""`make gsm8k-study`: SmolLM2-135M-Instruct on GSM8K, the whole study.

1. The scaling sweep (experiments/scaling.py) with configs/scaling_gsm8k.py
   (--full: configs/scaling_gsm8k_full.py) into --workdir: a pool of samples
   per problem graded by both answer rules, coverage, self-consistency,
   best-of-N / weighted majority / best-of-majority under the generator's
   confidence and under SmolLM2 as a generative verifier (solve versus
   verify on the same pool), particle filtering, beam search and A* guided
   by the confidence, greedy; the sweep's own report (table.md, fits,
   compute-optimal choices, plots). Resumable: rerun after an interruption.
2. Speculative decoding of SmolLM2 with the best draft there is, the
   distilled sub-vocabulary draft of `make draft`
   (experiments/bench_speculative.py --pairs=smollm_distilled on the GSM8K
   originals held out from the draft's training): tokens per target call
   (block efficiency) and wall-clock speed-up at batch 1. Skipped, saying
   so, when no draft has been trained (--speculative=false skips it).
3. The results page: <workdir>/study.md (method x budget: accuracy ± SE under
   the headline rule, the strict rule, unparsable fractions, generated
   tokens, FLOPs and wall seconds per problem; the coverage fit; the
   speculative table) and the plots, copied to --figures_dir as
   gsm8k_study.md and gsm8k_*.png for the README.

  python -m experiments.gsm8k_study [--full] [--workdir=results/scaling/gsm8k]

The last line names the results page. One process only (it launches each
stage as a one-process script).
"""

from __future__ import annotations

import collections
import json
import os
import shutil

import numpy as np
from absl import app, flags

from experiments import analysis, distributed, workdir

FLAGS = flags.FLAGS
workdir.define_flags("results/scaling/gsm8k")
flags.DEFINE_bool("full", False, "The full study (configs/scaling_gsm8k_full.py).")
flags.DEFINE_bool("speculative", True, "Run the speculative-decoding part.")
flags.DEFINE_string("draft_dir", "results/smollm2/draft/draft", "Distilled draft.")
flags.DEFINE_integer("spec_prompts", 4, "GSM8K prompts for speculative decoding.")
flags.DEFINE_integer("spec_tokens", 64, "Tokens per prompt (speculative).")
flags.DEFINE_string("figures_dir", "experiments/figures", "Where the plots are copied.")
CONFIG, FULL_CONFIG = "configs/scaling_gsm8k.py", "configs/scaling_gsm8k_full.py"
PLOTS = ("accuracy_vs_flops.png", "coverage.png")


def _fmt(x, se=None, digits=3) -> str:
  if x is None or not np.isfinite(x):
    return "-"
  return f"{x:.{digits}f}" + (
    f" ± {se:.{digits}f}" if se is not None and np.isfinite(se) else ""
  )


def results_table(rows_path: str, headline: str, other: str) -> str:
  """The markdown table of every (method, budget) in rows.jsonl, seeds
  averaged (the headline SE from the seed-averaged per-problem values; with
  several seeds the other rule's SE is not shown)."""
  groups = collections.defaultdict(list)
  with open(rows_path) as f:
    for line in f:
      r = json.loads(line)
      groups[(r["method"], r["budget"])].append(r)
  lines = [
    f"| method | budget | accuracy ({headline}) | accuracy ({other}) | unparsable "
    f"({headline} / {other}) | generated tokens | FLOPs | wall s |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for (m, k), rs in groups.items():
    per = [r["per_problem"] for r in rs if "per_problem" in r]
    se = analysis.standard_error(np.mean(per, 0)) if per else float("nan")
    rule = lambda name, key: float(np.mean([r["rules"][name][key] for r in rs]))
    other_se = rs[0]["rules"][other]["accuracy_se"] if len(rs) == 1 else None
    c = rs[0]["compute"]
    lines.append(
      f"| {m} | {k} | {_fmt(np.mean([r['accuracy'] for r in rs]), se)} "
      f"| {_fmt(rule(other, 'accuracy'), other_se)} "
      f"| {_fmt(rule(headline, 'unparsable'), digits=2)} / "
      f"{_fmt(rule(other, 'unparsable'), digits=2)} "
      f"| {c['generated_tokens']:.0f} | {c['flops']:.2e} "
      f"| {np.mean([r['wall_s'] for r in rs]):.0f} |"
    )
  return "\n".join(lines) + "\n"


def pivot_table(rows_path: str, headline: str, other: str) -> str:
  """Method x budget: headline-rule accuracy ± SE with the other rule's
  accuracy in brackets (seed 0 rows; the long table has every seed)."""
  cells, budgets = {}, set()
  with open(rows_path) as f:
    for line in f:
      r = json.loads(line)
      if r["seed"] == 0:
        o = r["rules"][other]["accuracy"]
        cells.setdefault(r["method"], {})[r["budget"]] = (
          f"{_fmt(r['accuracy'], r['accuracy_se'])} ({o:.3f})"
        )
        budgets.add(r["budget"])
  ks = sorted(budgets)
  lines = [
    f"| method ({headline} ± SE ({other})) | " + " | ".join(map(str, ks)) + " |",
    "|---|" + "---:|" * len(ks),
  ]
  for m, row in cells.items():
    lines.append(f"| {m} | " + " | ".join(row.get(k, "-") for k in ks) + " |")
  return "\n".join(lines) + "\n"


def _recorded_time(rows_path: str) -> str:
  """The wall time the rows record: the pool (the largest selection row's
  share, which at budget = pool size is the whole pool) plus every search
  and baseline row (those run for real)."""
  from experiments import scaling, sweep_search
  from experiments import verifiers as vlib

  run = set(sweep_search.SEARCH_METHODS) | set(scaling.BASELINES)
  sel, searched = [], []
  with open(rows_path) as f:
    for line in f:
      r = json.loads(line)
      ran = vlib.split_name(r["method"])[0] in run
      (searched if ran else sel).append(r["wall_s"])
  pool, rest = max(sel, default=0.0), sum(searched)
  return (
    f"wall time recorded in the rows: pool {pool:.0f} s (a pool loaded from "
    f"disk records its load time only) + search and greedy "
    f"rows {rest:.0f} s = {(pool + rest) / 60:.1f} min"
  )


def speculative_table(path: str) -> str:
  """Markdown rows of bench_speculative's JSON: block efficiency tau (tokens
  per target call), MBSU and wall-clock speed-up over autoregressive
  sampling through the same driver, per method and draft budget."""
  res = workdir.read_json(path) or {}
  lines = [
    "| pair | method | group | tau (tokens / target call) | MBSU | wall speed-up |",
    "|---|---|---|---:|---:|---:|",
  ]
  for pair in res.get("pairs", []):
    ar = pair.get("autoregressive", {})
    lines.append(
      f"| {pair.get('pair')} | autoregressive | - | 1 | 1 | 1x "
      f"({1 / ar['s_per_token']:.1f} tok/s) |"
      if ar.get("s_per_token")
      else f"| {pair.get('pair')} | autoregressive | - | 1 | 1 | 1x |"
    )
    for r in pair.get("rows", []):
      lines.append(
        f"| {pair.get('pair')} | {r.get('method')} | {r.get('group')} "
        f"| {_fmt(r.get('tau'), digits=2)} | {_fmt(r.get('mbsu'), digits=2)} "
        f"| {_fmt(r.get('wall_speedup'), digits=2)}x |"
      )
  return "\n".join(lines) + "\n"


def speculative(out_dir: str) -> str | None:
  """Run bench_speculative on SmolLM2 + its distilled draft; its JSON path
  (None, saying why, without a draft)."""
  if not os.path.exists(os.path.join(FLAGS.draft_dir, "draft.json")):
    workdir.progress(
      f"speculative decoding skipped: no distilled draft at {FLAGS.draft_dir} "
      "(`make draft` trains it, ~40 min on 2 CPUs)"
    )
    return None
  path = os.path.join(out_dir, "speculative.json")
  workdir.run_module(
    [
      "experiments.bench_speculative",
      "--pairs=smollm_distilled",
      f"--draft_dir={FLAGS.draft_dir}",
      "--distilled_methods=chain,rsd_s",
      "--distilled_budgets=4",
      f"--distilled_prompts={FLAGS.spec_prompts}",
      f"--max_new_tokens={FLAGS.spec_tokens}",
      f"--out={path}",
    ]
  )
  return path


def write_page(out_dir: str, sweep_s: float, spec_path) -> str:
  """<out_dir>/study.md and the plots copied to --figures_dir."""
  settings = workdir.read_json(os.path.join(out_dir, "settings.json")) or {}
  headline = settings.get("answer_rule", "flexible")
  other = "strict" if headline == "flexible" else "flexible"
  summary = workdir.read_json(os.path.join(out_dir, "summary.json")) or {}
  parts = [
    f"# SmolLM2-135M-Instruct x GSM8K ({settings.get('n_problems')} problems)\n",
    f"{_recorded_time(os.path.join(out_dir, 'rows.jsonl'))}; this invocation "
    f"of the sweep: {sweep_s:.0f} s (less when it resumed finished rows)\n",
    pivot_table(os.path.join(out_dir, "rows.jsonl"), headline, other),
    "\n## Every row\n",
    results_table(os.path.join(out_dir, "rows.jsonl"), headline, other),
  ]
  fit = summary.get("coverage_fit")
  if fit:
    parts.append(
      f"\ncoverage fit: log coverage(k) = ({fit['a']:.3f} ± {fit['a_se']:.3f}) "
      f"k^({fit['b']:.3f} ± {fit['b_se']:.3f}), R^2 = {fit['r2']:.3f}\n"
    )
  quality = workdir.read_json(os.path.join(out_dir, "verifier_quality.json")) or {}
  for v, per_seed in quality.items():
    q = next(iter(per_seed.values()))
    parts.append(
      f"\n{v}: within-problem AUROC of the outcome score "
      f"{_fmt(q.get('orm_within_auroc'))}, of the step score (min) "
      f"{_fmt(q.get('prm_within_auroc'))}\n"
    )
  if spec_path:
    parts.append("\n## Speculative decoding\n\n" + speculative_table(spec_path))
  page = os.path.join(out_dir, "study.md")
  workdir.write_text_atomic(page, "\n".join(parts))
  os.makedirs(FLAGS.figures_dir, exist_ok=True)
  shutil.copyfile(page, os.path.join(FLAGS.figures_dir, "gsm8k_study.md"))
  for name in PLOTS:
    src = os.path.join(out_dir, name)
    if os.path.exists(src):
      shutil.copyfile(src, os.path.join(FLAGS.figures_dir, "gsm8k_" + name))
  return page


def main(argv):
  del argv
  distributed.single_process(
    "experiments.gsm8k_study", "it launches each stage as a one-process script"
  )
  workdir.flags_at_least(1, "spec_prompts", "spec_tokens")
  out = FLAGS.workdir
  args = [
    "experiments.scaling",
    f"--config={FULL_CONFIG if FLAGS.full else CONFIG}",
    f"--workdir={out}",
  ]
  workdir.run_module(args + ["--validate_only"])
  sweep_s = workdir.run_module(args)
  spec = speculative(out) if FLAGS.speculative else None
  print(f"results page: {os.path.abspath(write_page(out, sweep_s, spec))}")


if __name__ == "__main__":
  distributed.define_flags()
  app.run(main)
