r"""SmolLM2 chat demo (`make chat-demo`).

Loads the real SmolLM2-135M-Instruct (GGUF shipped on PyPI), chat-templates a
question, samples an answer with the jitted KV-cached decoder and reports
tokens/s. Writes a JSON record under --out_dir and names it on the last line.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

import jax
import numpy as np

from jaxllm import Transformer, generate, make_sampling
from jaxllm.pretrained import load_pretrained

FLAGS = flags.FLAGS
flags.DEFINE_string("question", "Natalia sold clips to 48 of her friends in "
                    "April, and then she sold half as many clips in May. How "
                    "many clips did Natalia sell altogether in April and May?",
                    "The user message.")
flags.DEFINE_integer("max_new_tokens", 128, "Token budget.")
flags.DEFINE_float("temperature", 0.7, "Sampling temperature.")
flags.DEFINE_float("top_p", 0.9, "Nucleus sampling mass.")
flags.DEFINE_integer("num_samples", 4, "Samples (one prefill, forked cache).")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_string("out_dir", "results/chat_demo", "Where the JSON record goes.")


def main(argv):
  del argv
  t0 = time.perf_counter()
  cfg, params, tok = load_pretrained("smollm2-135m-instruct")
  print(f"loaded SmolLM2-135M-Instruct: {cfg.param_counts()['total'] / 1e6:.1f}M "
        f"params in {time.perf_counter() - t0:.1f}s on {jax.default_backend()}")
  prompt = tok.render_chat(
      [{"role": "user", "content": FLAGS.question}], add_generation_prompt=True)
  ids = tok.encode(prompt)
  model = Transformer(cfg)
  sampling = make_sampling(FLAGS.temperature, top_p=FLAGS.top_p)
  run = lambda key: jax.block_until_ready(generate(
      model, params, [ids], key, FLAGS.max_new_tokens, sampling,
      stop_tokens=[tok.eos_id], num_samples=FLAGS.num_samples))
  t0 = time.perf_counter()
  run(jax.random.key(FLAGS.seed + 1000))  # compile + warm up
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = run(jax.random.key(FLAGS.seed))
  dt = time.perf_counter() - t0
  lengths = np.asarray(out.lengths)
  answers = [tok.decode([int(t) for t in out.tokens[i, :lengths[i]]
                         if int(t) != tok.eos_id])
             for i in range(FLAGS.num_samples)]
  print(f"\nQ: {FLAGS.question}\n")
  for i, a in enumerate(answers):
    print(f"--- sample {i} ({lengths[i]} tokens) ---\n{a.strip()}\n")
  tps = float(lengths.sum() / dt)
  print(f"{int(lengths.sum())} tokens in {dt:.2f}s: {tps:.1f} tokens/s "
        f"(batch {FLAGS.num_samples}; first call incl. compile {compile_s:.1f}s)")
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  path = os.path.join(FLAGS.out_dir, "demo.json")
  with open(path, "w") as f:
    json.dump(dict(question=FLAGS.question, prompt=prompt, answers=answers,
                   lengths=lengths.tolist(), seconds=dt, tokens_per_s=tps,
                   compile_s=compile_s), f, indent=1)
  print(f"results written to {path}")


if __name__ == "__main__":
  app.run(main)
