r"""SmolLM2-135M-Instruct as a generative verifier of its own GSM8K solutions.

1. Sample `--samples` solutions per problem from SmolLM2 (chat template,
   `--temperature`, at most `--max_new_tokens`), on the 100 original GSM8K
   problems or on `--variants` GSM-Symbolic variants per template. Cached in
   `--workdir` (one file per sampling setting, saved after every generate
   call), so a rerun or a resumed run does not sample again.
2. Label each solution with the project's answer checker: "strict" (a marked
   answer: \boxed{}, ####, "the answer is") or "flexible" (else the last
   number in the text, lm-eval's flexible-extract). Both are stored; the
   metrics use `--extraction`.
3. Score every solution with `jaxllm.reward.generative_verifier_scores`
   (the default template, verdict tokens found in context: " Yes" / " No"
   for SmolLM2) and, from the same forward pass (`extra_ids`), with the old
   out-of-context tokens "Yes" / "No", for comparison. Cached too.
4. Report pooled AUROC, within-problem AUROC (mean over problems that have
   both correct and incorrect solutions, with their count and standard
   error), mean verdict-token mass p(yes) + p(no), for both token choices.
   With --score_references, also each problem's GSM8K reference solution
   against its own incorrect samples (every problem with an incorrect sample
   counts; but the references differ in style, so this is an easier test).

  python -m experiments.eval_genverifier_gsm8k \
      [--workdir=results/genverifier_gsm8k] [--n_problems=100] [--samples=8]

The measurement reported with the change that added this script used
--n_problems=50 (8 samples each, about 23 CPU-minutes on 2 cores).

Writes <workdir>/results.json. Measurements, not targets.

One process only (its problems are not split across processes yet;
experiments/scaling.py shows how, with distributed.split_map): the multi-host
flags of experiments/distributed.py are accepted; a multi-process run or --mesh
is refused with that reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from absl import app, flags

import jax
import numpy as np

from experiments import distributed
from experiments import workdir
from experiments.tasks import answers, gsm8k
from jaxllm import Transformer, generate, make_sampling, reward

FLAGS = flags.FLAGS


def define_flags():
  """The command line (defined under __main__ only, the experiments'
  convention, so tests can import this module next to others)."""
  flags.DEFINE_string(
    "workdir", "results/genverifier_gsm8k", "Output folder (caches and results.json)."
  )
  flags.DEFINE_integer("n_problems", 100, "Problems to use (the first n).")
  flags.DEFINE_integer(
    "variants",
    0,
    "0: the original GSM8K problems; k > 0: "
    "k GSM-Symbolic variants per template (seed --seed).",
  )
  flags.DEFINE_integer("samples", 8, "Sampled solutions per problem.")
  flags.DEFINE_float("temperature", 0.8, "Sampling temperature.")
  flags.DEFINE_integer("max_new_tokens", 256, "Token budget per solution.")
  flags.DEFINE_integer(
    "gen_batch",
    80,
    "Rows (problems x samples) per generate call; a multiple of --samples.",
  )
  flags.DEFINE_integer("verifier_batch", 32, "Solutions per verifier prefill.")
  flags.DEFINE_enum(
    "extraction",
    "flexible",
    ["strict", "flexible"],
    "Answer extraction used for the labels in the metrics.",
  )
  flags.DEFINE_integer("seed", 0, "Sampling (and variant) seed.")
  flags.DEFINE_bool(
    "score_references",
    True,
    "Also score each problem's "
    "GSM8K reference solution (in the prompt's \\boxed{} "
    "format) against its own incorrect samples (one prefill "
    "per problem).",
  )


VERIFIER_BUCKETS = list(range(64, 4097, 32))  # little padding, few shapes


def is_correct(problem: gsm8k.GSMProblem, text: str, extraction: str) -> bool:
  """The answer checker: strict = a marked answer only; flexible = else the
  last number in the text."""
  got = answers.extract_answer(text, fallback_last_number=extraction == "flexible")
  return answers.answers_equal(got, problem.answer)


def _digest(obj) -> str:
  return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def _finite(obj):
  """NaN (an AUROC with one class empty) as null, so the file is strict JSON."""
  if isinstance(obj, float) and obj != obj:
    return None
  if isinstance(obj, dict):
    return {k: _finite(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite(v) for v in obj]
  return obj


def _save_json(path: str, obj) -> None:
  workdir.write_json_atomic(path, _finite(obj), allow_nan=False)


def load_problems() -> list[gsm8k.GSMProblem]:
  if FLAGS.variants > 0:
    probs = gsm8k.generate_variants(FLAGS.variants, FLAGS.seed)
  else:
    probs = gsm8k.load_original()
  return probs[: FLAGS.n_problems]


def _problem_id(p: gsm8k.GSMProblem) -> list:
  return [p.template_id, p.variant]


def sample_solutions(model, params, tok, problems, path: str, setting: dict):
  """Cached samples: {"texts": [[str] * samples] per problem, "truncated",
  "problem_ids", "gen_tokens", "seconds"}.

  The cache holds the problems in order; a run with more problems (or a run
  that was stopped) extends it, one with fewer reads its first rows. The
  sampling key of a generate call depends only on --seed and the index of its
  first problem.
  """
  cache = workdir.read_json(path)
  ids = [_problem_id(p) for p in problems]
  if (
    cache is None
    or cache.get("setting") != setting
    or cache["problem_ids"][: len(ids)] != ids[: len(cache["problem_ids"])]
  ):
    cache = dict(
      setting=setting, problem_ids=[], texts=[], truncated=[], gen_tokens=0, seconds=0.0
    )
  S = FLAGS.samples
  per_call = max(1, FLAGS.gen_batch // S)
  prompts = [
    tok.apply_chat_template(
      [{"role": "user", "content": gsm8k.format_prompt(p.question)}]
    )
    for p in problems
  ]
  sampling = make_sampling(FLAGS.temperature)
  for i in range(len(cache["texts"]), len(problems), per_call):
    t0 = time.perf_counter()
    chunk = prompts[i : i + per_call]
    n = len(chunk)
    chunk = chunk + [chunk[-1]] * (per_call - n)  # one shape for every call
    out = generate(
      model,
      params,
      chunk,
      jax.random.fold_in(jax.random.key(FLAGS.seed), i),
      FLAGS.max_new_tokens,
      sampling,
      stop_tokens=[tok.eos_id],
      buckets=[256, 512, 1024],
      num_samples=S,
    )
    toks, lens = np.asarray(out.tokens), np.asarray(out.lengths)
    for j in range(n):
      rows = range(j * S, (j + 1) * S)
      cache["problem_ids"].append(ids[i + j])
      cache["texts"].append(
        [
          tok.decode([int(t) for t in toks[r, : lens[r]] if int(t) != tok.eos_id])
          for r in rows
        ]
      )
      cache["truncated"].append(
        [
          bool(
            lens[r] >= FLAGS.max_new_tokens and int(toks[r, lens[r] - 1]) != tok.eos_id
          )
          for r in rows
        ]
      )
      cache["gen_tokens"] += int(lens[j * S : (j + 1) * S].sum())
    cache["seconds"] += time.perf_counter() - t0
    _save_json(path, cache)
    workdir.progress(
      f"sampled {len(cache['texts'])}/{len(problems)} "
      f"problems, {cache['gen_tokens'] / cache['seconds']:.0f} "
      f"tok/s"
    )
  P = len(problems)
  return dict(cache, texts=cache["texts"][:P], truncated=cache["truncated"][:P])


def score_solutions(model, params, tok, qs, sols, path: str, setting: dict):
  """Cached verifier outputs with the in-context verdict tokens and, from the
  same forward pass, the out-of-context "Yes" / "No" tokens."""
  cache = workdir.read_json(path)
  if cache is not None and cache.get("setting") == setting:
    return cache
  old_yes, old_no = reward.word_token_ids(tok, ["Yes", "No"])
  t0 = time.perf_counter()
  v = reward.generative_verifier_scores(
    model,
    params,
    tok,
    qs,
    sols,
    extra_ids=[old_yes, old_no],
    batch_size=FLAGS.verifier_batch,
    buckets=VERIFIER_BUCKETS,
  )
  seconds = time.perf_counter() - t0
  full = [
    len(
      tok.encode(
        reward.DEFAULT_VERIFIER_TEMPLATE.format(question=q, solution=s),
        add_special_tokens=False,
      )
    )
    for q, s in zip(qs, sols)
  ]
  # The old scorer read the whole encoded prompt; so did this pass unless the
  # tokenizer merged the prompt's end into the verdict (not for SmolLM2).
  same_context = bool(np.array_equal(v.prompt_tokens, full))
  ly, ln = v.extra_logprobs[:, 0], v.extra_logprobs[:, 1]
  cache = dict(
    setting=setting,
    seconds=seconds,
    same_context=same_context,
    prompt_tokens=v.prompt_tokens.tolist(),
    new=dict(
      scores=v.scores.tolist(),
      mass=v.verdict_mass.tolist(),
      yes_ids=sorted(set(v.yes_ids.ravel().tolist())),
      no_ids=sorted(set(v.no_ids.ravel().tolist())),
    ),
    old=dict(
      scores=(1.0 / (1.0 + np.exp(ln - ly))).tolist(),
      mass=(np.exp(ly) + np.exp(ln)).tolist(),
      yes_ids=[old_yes],
      no_ids=[old_no],
    ),
  )
  _save_json(path, cache)
  return cache


def verifier_metrics(scores_PxS, mass_PxS, labels_PxS) -> dict:
  """Pooled and within-problem AUROC ([P, S] arrays, one row per problem)."""
  s, m, y = (np.asarray(a, np.float64) for a in (scores_PxS, mass_PxS, labels_PxS))
  y = y.astype(bool)
  mixed = [p for p in range(len(y)) if 0 < y[p].sum() < y.shape[1]]
  within = np.array([reward.auroc(s[p], y[p]) for p in mixed])
  return dict(
    pooled_auroc=reward.auroc(s.ravel(), y.ravel()),
    within_problem_auroc=float(within.mean()) if mixed else float("nan"),
    within_problem_auroc_se=(
      float(within.std(ddof=1) / np.sqrt(len(mixed)))
      if len(mixed) > 1
      else float("nan")
    ),
    n_mixed_problems=len(mixed),
    mean_verdict_mass=float(m.mean()),
    median_verdict_mass=float(np.median(m)),
    mean_score_correct=float(s[y].mean()) if y.any() else float("nan"),
    mean_score_incorrect=float(s[~y].mean()) if (~y).any() else float("nan"),
  )


def reference_metrics(ref_P, ref_mass_P, scores_PxS, labels_PxS) -> dict:
  """The GSM8K reference solution (correct) against the problem's own
  incorrect samples: within-problem AUROC (mean over problems with an
  incorrect sample) and pooled AUROC. The references differ in style from the
  samples, so this measures style as well as correctness."""
  y = np.asarray(labels_PxS, bool)
  s = np.asarray(scores_PxS, np.float64)
  per = [
    reward.auroc(
      np.r_[ref_P[p], s[p][~y[p]]], np.r_[True, np.zeros((~y[p]).sum(), bool)]
    )
    for p in range(len(y))
    if (~y[p]).any()
  ]
  pooled = reward.auroc(
    np.r_[ref_P, s[~y]], np.r_[np.ones(len(ref_P), bool), np.zeros((~y).sum(), bool)]
  )
  return dict(
    within_problem_auroc=float(np.mean(per)),
    within_problem_auroc_se=float(np.std(per, ddof=1) / np.sqrt(len(per))),
    n_problems=len(per),
    pooled_auroc=pooled,
    mean_reference_score=float(np.mean(ref_P)),
    mean_reference_verdict_mass=float(np.mean(ref_mass_P)),
  )


def main(argv):
  del argv
  distributed.single_process(
    "experiments.eval_genverifier_gsm8k",
    (
      "its problems are not split across processes yet; experiments/scaling.py "
      "shows how, with distributed.split_map"
    ),
  )
  workdir.flags_at_least(
    1, "n_problems", "samples", "max_new_tokens", "verifier_batch", "gen_batch"
  )
  if FLAGS.gen_batch % FLAGS.samples:
    raise app.UsageError(
      f"--gen_batch {FLAGS.gen_batch} must be a multiple of --samples {FLAGS.samples}"
    )
  workdir.run_cli(run)


def run():
  """Sample (cached), label, score (cached) and write results.json; one run
  per workdir at a time (workdir.lock)."""
  with workdir.lock(FLAGS.workdir):
    _run()


def _run():
  t_start, cpu_start = time.perf_counter(), time.process_time()
  cfg, params, tok = workdir.load_pretrained(workdir.SMOLLM2, log=workdir.progress)
  model = Transformer(cfg)
  problems = load_problems()
  P, S = len(problems), FLAGS.samples
  gen_setting = dict(
    model=workdir.SMOLLM2,
    variants=FLAGS.variants,
    samples=FLAGS.samples,
    temperature=FLAGS.temperature,
    max_new_tokens=FLAGS.max_new_tokens,
    seed=FLAGS.seed,
    gen_batch=FLAGS.gen_batch,
    prompt=gsm8k.INSTRUCTION,
  )
  samples = sample_solutions(
    model,
    params,
    tok,
    problems,
    os.path.join(FLAGS.workdir, f"samples_{_digest(gen_setting)}.json"),
    gen_setting,
  )
  texts = samples["texts"]
  labels = {
    e: np.array([[is_correct(p, t, e) for t in row] for p, row in zip(problems, texts)])
    for e in ("strict", "flexible")
  }
  ver_setting = dict(
    samples=_digest(gen_setting),
    problem_ids=[_problem_id(p) for p in problems],
    template=reward.DEFAULT_VERIFIER_TEMPLATE,
  )
  sc = score_solutions(
    model,
    params,
    tok,
    [p.question for p in problems for _ in range(S)],
    [t for row in texts for t in row],
    os.path.join(FLAGS.workdir, f"scores_{_digest(ver_setting)}.json"),
    ver_setting,
  )
  y = labels[FLAGS.extraction]
  ref = None
  if FLAGS.score_references:
    ref_setting = dict(ver_setting, samples="reference solutions")
    ref = score_solutions(
      model,
      params,
      tok,
      [p.question for p in problems],
      [gsm8k.solution_for_prompt(p.solution) for p in problems],
      os.path.join(FLAGS.workdir, f"refscores_{_digest(ref_setting)}.json"),
      ref_setting,
    )
  res = dict(
    model="SmolLM2-135M-Instruct (Q4_1 GGUF, float32)",
    problems=(
      "GSM8K originals"
      if FLAGS.variants == 0
      else f"GSM-Symbolic variants ({FLAGS.variants} per template, seed {FLAGS.seed})"
    ),
    n_problems=P,
    samples_per_problem=S,
    temperature=FLAGS.temperature,
    max_new_tokens=FLAGS.max_new_tokens,
    extraction=FLAGS.extraction,
    accuracy={e: float(l.mean()) for e, l in labels.items()},
    problems_with_a_correct_sample={e: int(l.any(1).sum()) for e, l in labels.items()},
    truncated_fraction=float(np.mean(samples["truncated"])),
    sampling=dict(
      problems_in_cache=len(samples["problem_ids"]),
      generated_tokens=samples["gen_tokens"],
      seconds=samples["seconds"],
    ),
    verifier_template=reward.DEFAULT_VERIFIER_TEMPLATE,
    verifier_prompt_tokens_mean=float(np.mean(sc["prompt_tokens"])),
    old_and_new_read_the_same_context=sc["same_context"],
    verifier_seconds=sc["seconds"],
    this_run=dict(
      seconds=time.perf_counter() - t_start, cpu_seconds=time.process_time() - cpu_start
    ),
  )
  for name, desc in (("in_context", "new"), ("no_space", "old")):
    d = sc[desc]
    res[name] = dict(
      yes_ids=d["yes_ids"],
      no_ids=d["no_ids"],
      yes_tokens=[tok.id_to_token(i) for i in d["yes_ids"]],
      no_tokens=[tok.id_to_token(i) for i in d["no_ids"]],
      **verifier_metrics(
        np.reshape(d["scores"], (P, S)), np.reshape(d["mass"], (P, S)), y
      ),
      **{
        f"{e}_labels": {
          k: v
          for k, v in verifier_metrics(
            np.reshape(d["scores"], (P, S)), np.reshape(d["mass"], (P, S)), labels[e]
          ).items()
          if "auroc" in k or k == "n_mixed_problems"
        }
        for e in labels
        if e != FLAGS.extraction
      },
    )
    if ref is not None:
      res[name]["reference_vs_own_incorrect"] = reference_metrics(
        np.asarray(ref[desc]["scores"]),
        np.asarray(ref[desc]["mass"]),
        np.reshape(d["scores"], (P, S)),
        y,
      )
  print(json.dumps(res, indent=1))
  out = os.path.join(FLAGS.workdir, workdir.RESULTS_FILE)
  _save_json(out, res)
  print(f"wrote {out}")


if __name__ == "__main__":
  distributed.define_flags()
  define_flags()
  app.run(main)
