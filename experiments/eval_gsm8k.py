r"""SmolLM2-135M-Instruct on the 100 original GSM8K problems.

Greedy accuracy and coverage@k (unbiased pass@k from n samples per problem)
under both extraction rules (answers.RULES: strict = a marked answer, flexible
= else the last number), with every unparsable answer counted per rule,
with the real model, its chat template and the jitted KV-cached decoder (each
prompt prefilled once and forked into the samples). Measurements, not targets.

  python -m experiments.eval_gsm8k [--samples=16] [--max_new_tokens=256]
      [--workdir=results/eval_gsm8k]   (writes <workdir>/results.json)

One process only (its problems are not split across processes yet;
experiments/scaling.py shows how, with distributed.split_map): the multi-host
flags of experiments/distributed.py are accepted; a multi-process run or --mesh
is refused with that reason.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

import jax
import numpy as np

from algorithms.estimators import pass_at_k
from experiments import distributed
from experiments import workdir as wd
from experiments.tasks import answers, gsm8k
from jaxllm import Transformer, generate, make_sampling
from jaxllm.pretrained import load_pretrained

FLAGS = flags.FLAGS
flags.DEFINE_integer("n_problems", 100, "Original problems to use.")
flags.DEFINE_integer("samples", 16, "Samples per problem (coverage@k).")
flags.DEFINE_float("temperature", 0.7, "Sampling temperature.")
flags.DEFINE_integer("max_new_tokens", 256, "Token budget per solution.")
flags.DEFINE_integer("problems_per_call", 8, "Problems per generate call.")
flags.DEFINE_string("workdir", "results/eval_gsm8k", "Output directory (results.json).")


def _texts(tok, out, n_rows):
  lens = np.asarray(out.lengths)
  return [
    tok.decode([int(t) for t in out.tokens[i, : lens[i]] if int(t) != tok.eos_id])
    for i in range(n_rows)
  ], lens


def _outcomes(problems, texts, per_problem):
  """{rule: [n_problems, per_problem] outcome strings} of `texts` (problem-major)."""
  return {
    rule: np.array(
      [
        answers.grade(t, problems[i // per_problem].answer, rule).outcome
        for i, t in enumerate(texts)
      ]
    ).reshape(len(problems), per_problem)
    for rule in answers.RULES
  }


def _generate(model, params, tok, chunk, key, temperature, num_samples):
  return generate(
    model,
    params,
    chunk,
    key,
    FLAGS.max_new_tokens,
    make_sampling(temperature),
    stop_tokens=[tok.eos_id],
    buckets=[256, 512, 1024],
    num_samples=num_samples,
  )


def _summary(greedy, sampled):
  """Per rule: greedy accuracy, coverage@k, and the unparsable counts."""
  ks = [k for k in (1, 2, 4, 8, 16, 32) if k <= FLAGS.samples]
  out = {}
  for rule in answers.RULES:
    g, s = np.concatenate(greedy[rule]), np.concatenate(sampled[rule])
    cov = pass_at_k(np.full(len(s), FLAGS.samples), (s == "correct").sum(1), ks)
    out[rule] = dict(
      greedy_accuracy=float(np.mean(g == "correct")),
      greedy_unparsable=int((g == "unparsable").sum()),
      coverage={str(k): float(v) for k, v in zip(ks, cov.mean(0))},
      sample_unparsable=int((s == "unparsable").sum()),
      samples_total=int(s.size),
    )
  return out


def main(argv):
  del argv
  distributed.single_process(
    "experiments.eval_gsm8k",
    (
      "its problems are not split across processes yet; experiments/scaling.py "
      "shows how, with distributed.split_map"
    ),
  )
  wd.flags_at_least(1, "n_problems", "samples", "max_new_tokens", "problems_per_call")
  wd.flags_at_least(0.0, "temperature")
  cfg, params, tok = load_pretrained("smollm2-135m-instruct")
  problems = gsm8k.load_original()[: FLAGS.n_problems]
  prompts = wd.chat_prompts(tok, problems)
  model = Transformer(cfg)
  step = FLAGS.problems_per_call
  greedy = {r: [] for r in answers.RULES}
  sampled = {r: [] for r in answers.RULES}
  gen_tokens, t0 = 0, time.perf_counter()
  for i in range(0, len(problems), step):
    chunk, part = prompts[i : i + step], problems[i : i + step]
    n = len(chunk)
    chunk = chunk + [chunk[-1]] * (step - n)  # one shape per bucket
    g = _generate(model, params, tok, chunk, jax.random.key(0), 0.0, 1)
    texts, lens = _texts(tok, g, n)
    gen_tokens += int(lens.sum())
    for rule, o in _outcomes(part, texts, 1).items():
      greedy[rule].append(o[:, 0])
    key = jax.random.key(1 + i)
    s = _generate(model, params, tok, chunk, key, FLAGS.temperature, FLAGS.samples)
    texts, lens = _texts(tok, s, n * FLAGS.samples)
    gen_tokens += int(lens.sum())
    for rule, o in _outcomes(part, texts, FLAGS.samples).items():
      sampled[rule].append(o)
    el = time.perf_counter() - t0
    acc = np.mean(np.concatenate(greedy["strict"]) == "correct")
    print(
      f"{i + n}/{len(problems)} problems: greedy (strict) {acc:.3f}, "
      f"{gen_tokens / el:.1f} tok/s",
      flush=True,
    )
  res = dict(
    model="SmolLM2-135M-Instruct (Q4_1 GGUF, float32)",
    n_problems=len(problems),
    samples=FLAGS.samples,
    temperature=FLAGS.temperature,
    rules=_summary(greedy, sampled),
    generated_tokens=gen_tokens,
    seconds=time.perf_counter() - t0,
  )
  print(json.dumps(res, indent=1))
  os.makedirs(FLAGS.workdir, exist_ok=True)
  out = os.path.join(FLAGS.workdir, wd.RESULTS_FILE)
  wd.write_json_atomic(out, res, indent=1)
  print(f"wrote {out}")


if __name__ == "__main__":
  distributed.define_flags()
  app.run(main)
