r"""SmolLM2 chat demo (`make chat-demo`).

Loads the real SmolLM2-135M-Instruct (GGUF shipped on PyPI), chat-templates a
question, samples an answer with the jitted KV-cached decoder and reports
tokens/s. Writes <workdir>/results.json and names it on the last line.

  python -m experiments.chat_demo [--question=...] [--num_samples=4] \
      [--workdir=results/chat_demo]

A demo's knobs are plain absl flags, checked before the model is loaded.

One process only (a demo of one model answering a few prompts): the multi-host
flags of experiments/distributed.py are accepted; a multi-process run or --mesh
is refused with that reason.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

import jax
import numpy as np

from experiments import distributed
from experiments import workdir
from jaxllm import Transformer, generate, make_sampling

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "question",
  "Natalia sold clips to 48 of her friends in "
  "April, and then she sold half as many clips in May. How "
  "many clips did Natalia sell altogether in April and May?",
  "The user message.",
)
flags.DEFINE_integer("max_new_tokens", 128, "Token budget.")
flags.DEFINE_float("temperature", 0.7, "Sampling temperature.")
flags.DEFINE_float("top_p", 0.9, "Nucleus sampling mass.")
flags.DEFINE_integer("num_samples", 4, "Samples (one prefill, forked cache).")
flags.DEFINE_integer("seed", 0, "Seed.")
workdir.define_flags("results/chat_demo", workdir_help="Where the JSON record goes.")


def validate_flags() -> None:
  """Check the flags before the model is loaded.

  Raises:
    app.UsageError: naming the flag.
  """
  workdir.flags_at_least(1, "max_new_tokens", "num_samples")
  workdir.flags_at_least(0, "temperature")
  if not 0 < FLAGS.top_p <= 1:
    raise app.UsageError(f"--top_p must be in (0, 1], got {FLAGS.top_p}")


def run(out_dir: str) -> dict:
  """Load, template, sample (warm-up, then a timed call), print the answers;
  writes and returns the record."""
  cfg, params, tok = workdir.load_pretrained(log=workdir.progress)
  prompt = tok.render_chat(
    [{"role": "user", "content": FLAGS.question}], add_generation_prompt=True
  )
  ids = tok.encode(prompt)
  model = Transformer(cfg)
  sampling = make_sampling(FLAGS.temperature, top_p=FLAGS.top_p)
  sample = lambda key: jax.block_until_ready(
    generate(
      model,
      params,
      [ids],
      key,
      FLAGS.max_new_tokens,
      sampling,
      stop_tokens=[tok.eos_id],
      num_samples=FLAGS.num_samples,
    )
  )
  t0 = time.perf_counter()
  sample(jax.random.key(FLAGS.seed + 1000))  # compile + warm up
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = sample(jax.random.key(FLAGS.seed))
  dt = time.perf_counter() - t0
  lengths = np.asarray(out.lengths)
  answers = [
    tok.decode([int(t) for t in out.tokens[i, : lengths[i]] if int(t) != tok.eos_id])
    for i in range(FLAGS.num_samples)
  ]
  print(f"\nQ: {FLAGS.question}\n")
  for i, a in enumerate(answers):
    print(f"--- sample {i} ({lengths[i]} tokens) ---\n{a.strip()}\n")
  tps = float(lengths.sum() / dt)
  print(
    f"{int(lengths.sum())} tokens in {dt:.2f}s: {tps:.1f} tokens/s "
    f"(batch {FLAGS.num_samples}; first call incl. compile {compile_s:.1f}s)"
  )
  record = dict(
    question=FLAGS.question,
    prompt=prompt,
    answers=answers,
    lengths=lengths.tolist(),
    seconds=dt,
    tokens_per_s=tps,
    compile_s=compile_s,
  )
  os.makedirs(out_dir, exist_ok=True)
  workdir.write_json_atomic(
    os.path.join(out_dir, workdir.RESULTS_FILE), record, indent=1
  )
  return record


def main(argv):
  del argv
  distributed.single_process(
    "experiments.chat_demo",
    ("a demo of one model answering a few prompts"),
  )
  validate_flags()
  run(FLAGS.workdir)
  print(f"results written to {os.path.join(FLAGS.workdir, workdir.RESULTS_FILE)}")


if __name__ == "__main__":
  distributed.define_flags()
  app.run(main)
