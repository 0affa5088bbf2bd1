r"""SmolLM2-135M-Instruct on the 100 original GSM8K problems.

Greedy accuracy and coverage@k (unbiased pass@k from n samples per problem),
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
from experiments.tasks import gsm8k
from jaxllm import Transformer, generate, make_sampling
from jaxllm.pretrained import load_pretrained

FLAGS = flags.FLAGS
flags.DEFINE_integer("n_problems", 100, "Original problems to use.")
flags.DEFINE_integer("samples", 16, "Samples per problem (coverage@k).")
flags.DEFINE_float("temperature", 0.7, "Sampling temperature.")
flags.DEFINE_integer("max_new_tokens", 256, "Token budget per solution.")
flags.DEFINE_integer("problems_per_call", 8, "Problems per generate call.")
flags.DEFINE_string("workdir", "results/eval_gsm8k", "Output directory (results.json).")
flags.DEFINE_bool(
  "flexible",
  False,
  "Also accept the last number in the text "
  "when no marked answer (boxed / #### / 'the answer is') is "
  "found (lm-eval's 'flexible-extract').",
)


def check(problem, text) -> bool:
  from experiments.tasks import answers

  if FLAGS.flexible:
    got = answers.extract_answer(text, fallback_last_number=True)
    return answers.answers_equal(got, problem.answer)
  return gsm8k.check_answer(problem, text)


def _texts(tok, out, n_rows):
  lens = np.asarray(out.lengths)
  return [
    tok.decode([int(t) for t in out.tokens[i, : lens[i]] if int(t) != tok.eos_id])
    for i in range(n_rows)
  ], lens


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
  prompts = [
    tok.apply_chat_template(
      [{"role": "user", "content": gsm8k.format_prompt(p.question)}]
    )
    for p in problems
  ]
  model = Transformer(cfg)
  step = FLAGS.problems_per_call
  buckets = [256, 512, 1024]
  greedy, correct, gen_tokens = [], [], 0
  t0 = time.perf_counter()
  for i in range(0, len(problems), step):
    chunk = prompts[i : i + step]
    n = len(chunk)
    chunk = chunk + [chunk[-1]] * (step - n)  # one shape per bucket
    g = generate(
      model,
      params,
      chunk,
      jax.random.key(0),
      FLAGS.max_new_tokens,
      make_sampling(0.0),
      stop_tokens=[tok.eos_id],
      buckets=buckets,
    )
    texts, lens = _texts(tok, g, n)
    greedy += [check(p, t) for p, t in zip(problems[i : i + n], texts)]
    gen_tokens += int(lens.sum())
    s = generate(
      model,
      params,
      chunk,
      jax.random.key(1 + i),
      FLAGS.max_new_tokens,
      make_sampling(FLAGS.temperature),
      stop_tokens=[tok.eos_id],
      buckets=buckets,
      num_samples=FLAGS.samples,
    )
    texts, lens = _texts(tok, s, n * FLAGS.samples)
    gen_tokens += int(lens.sum())
    for j in range(n):
      correct.append(
        [
          check(problems[i + j], t)
          for t in texts[j * FLAGS.samples : (j + 1) * FLAGS.samples]
        ]
      )
    el = time.perf_counter() - t0
    print(
      f"{i + n}/{len(problems)} problems: greedy {np.mean(greedy):.3f}, "
      f"pass@1 {np.mean(correct):.3f}, {gen_tokens / el:.1f} tok/s",
      flush=True,
    )
  c = np.array(correct)
  ks = [k for k in (1, 2, 4, 8, 16, 32) if k <= FLAGS.samples]
  cov = pass_at_k(np.full(len(c), FLAGS.samples), c.sum(1), ks).mean(0)
  res = dict(
    model="SmolLM2-135M-Instruct (Q4_1 GGUF, float32)",
    n_problems=len(problems),
    greedy_accuracy=float(np.mean(greedy)),
    samples=FLAGS.samples,
    temperature=FLAGS.temperature,
    extraction="flexible" if FLAGS.flexible else "strict",
    coverage={str(k): float(v) for k, v in zip(ks, cov)},
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
