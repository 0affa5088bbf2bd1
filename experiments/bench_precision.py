r"""Accuracy cost of reduced precision on SmolLM2-135M-Instruct (GSM8K).

For each format, against the float32 model on the same prompts:
  * logits: max and mean |logit - float32 logit| and top-1 agreement, teacher
    forced (through the KV cache, so a bfloat16 cache is read as stored) on
    the first `--logit_problems` prompts followed by float32's greedy answer;
  * greedy GSM8K: each format's greedy answer to the `--problems` original
    GSM8K test problems (chat template, up to `--max_new_tokens`, stopped at
    EOS), graded under both answer rules; reported as accuracy, the fraction
    of problems whose extracted answer equals float32's, and the fraction
    whose tokens are identical.

Formats: float32; bf16_weights (every parameter cast to bfloat16, compute in
float32); int8 (`jaxllm.quant.quantize_int8`: weight-only, per output channel);
int8_block32 (the same with one scale per 32 input entries, as GGUF's Q8_0);
bf16_cache (`ModelConfig.cache_dtype="bfloat16"`); int8_bf16_cache (both).

  python -m experiments.bench_precision                     # 100 problems
  python -m experiments.bench_precision --problems=8 --max_new_tokens=64

Needs the SmolLM2 GGUF (`make smollm`) and the GSM8K data (`make gsm8k-data`).
Writes <workdir>/results.json (default results/bench_precision), rewritten
after every format, so a failure later keeps the formats measured.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import workdir
from jaxllm import Transformer, forward, generate, make_sampling
from jaxllm.cache import init_cache
from jaxllm.quant import param_bytes, quantize_int8

FORMATS = (
  "float32",
  "bf16_weights",
  "int8",
  "int8_block32",
  "bf16_cache",
  "int8_bf16_cache",
)

FLAGS = flags.FLAGS
flags.DEFINE_list("formats", list(FORMATS), f"Formats to compare, of {FORMATS}.")
flags.DEFINE_integer("problems", 100, "Original GSM8K problems (greedy answers).")
flags.DEFINE_integer("max_new_tokens", 256, "Greedy answer budget (tokens).")
flags.DEFINE_integer("batch", 50, "Prompts per generate call.")
flags.DEFINE_integer("logit_problems", 16, "Prompts for the logit comparison.")
workdir.define_flags("results/bench_precision")


def validate_flags() -> list[str]:
  """The formats, float32 first, after checking every flag (before loading).

  Raises:
    app.UsageError: naming the flag.
  """
  bad = [f for f in FLAGS.formats if f not in FORMATS]
  if bad or not FLAGS.formats:
    raise app.UsageError(f"--formats: {bad or 'empty'} not in {FORMATS}")
  workdir.flags_at_least(1, "problems", "max_new_tokens", "batch", "logit_problems")
  from experiments.tasks import gsm8k

  if not gsm8k.data_available():
    raise app.UsageError(f"GSM8K data missing: run `{gsm8k.PREPARE_HINT}`")
  return ["float32"] + [f for f in dict.fromkeys(FLAGS.formats) if f != "float32"]


def in_format(cfg, params, fmt: str):
  """(cfg, params) of the float32 model in format `fmt` (module doc)."""
  if "int8" in fmt:
    params = quantize_int8(params, block_size=32 if "block32" in fmt else 0)
  if fmt == "bf16_weights":
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
  if fmt.endswith("bf16_cache"):
    cfg = cfg.replace(cache_dtype="bfloat16")
  return cfg, params


def greedy_answers(cfg, params, prompts, eos_id: int) -> list[list[int]]:
  """Greedy answer ids (EOS dropped) per prompt, FLAGS.batch prompts a call
  (the last call padded by repeating its last prompt: one compiled shape)."""
  out, size = [], min(FLAGS.batch, len(prompts))
  for i in range(0, len(prompts), size):
    chunk = prompts[i : i + size]
    n = len(chunk)
    chunk = chunk + [chunk[-1]] * (size - n)
    g = generate(
      Transformer(cfg),
      params,
      chunk,
      jax.random.key(0),
      FLAGS.max_new_tokens,
      make_sampling(0.0),
      stop_tokens=[eos_id],
    )
    toks, lens = np.asarray(g.tokens), np.asarray(g.lengths)
    for j in range(n):
      ids = toks[j, : lens[j]].tolist()
      out.append(ids[:-1] if ids and ids[-1] == eos_id else ids)
  return out


def teacher_forced_logits(cfg, params, seqs) -> list[np.ndarray]:
  """float32 logits [len, V] of each sequence, prefilled through a KV cache of
  the format's dtype (right-padded to one length; 4 sequences a call)."""
  T = max(len(s) for s in seqs)
  run = jax.jit(
    lambda p, t, n: forward(
      p, t, cfg, cache=init_cache(cfg, t.shape[0], T), n_valid_B=n
    )[0]
  )
  out = []
  for i in range(0, len(seqs), 4):
    chunk = seqs[i : i + 4]
    toks = np.zeros((len(chunk), T), np.int32)
    for j, s in enumerate(chunk):
      toks[j, : len(s)] = s
    lens = np.asarray([len(s) for s in chunk], np.int32)
    logits = np.asarray(run(params, jnp.asarray(toks), jnp.asarray(lens)))
    out += [logits[j, : len(s)] for j, s in enumerate(chunk)]
  return out


def grade_all(problems, texts) -> dict:
  """{rule: (answer keys, correct flags)} of greedy answer texts."""
  from experiments.tasks import answers

  out = {}
  for rule in answers.RULES:
    keys, correct = [], []
    for p, text in zip(problems, texts):
      g = answers.grade(text, p.answer, rule)
      keys.append(
        g.extraction.answer and str(answers.parse_number(g.extraction.answer))
      )
      correct.append(g.outcome == "correct")
    out[rule] = (keys, correct)
  return out


def measure(fmt, cfg, params, tok, problems, prompts, reference) -> dict:
  """One format's row (and, for float32, the reference it sets)."""
  fcfg, fparams = in_format(cfg, params, fmt)
  t0 = time.perf_counter()
  ids = greedy_answers(fcfg, fparams, prompts, tok.eos_id)
  wall = time.perf_counter() - t0
  texts = [tok.decode(a) for a in ids]
  graded = grade_all(problems, texts)
  if fmt == "float32":
    n = FLAGS.logit_problems
    reference.update(ids=ids, graded=graded)
    reference["seqs"] = [p + a for p, a in zip(prompts[:n], ids[:n])]
    reference["logits"] = teacher_forced_logits(fcfg, fparams, reference["seqs"])
  logits = teacher_forced_logits(fcfg, fparams, reference["seqs"])
  diffs = [np.abs(a - b) for a, b in zip(logits, reference["logits"])]
  top1 = [
    np.mean(a.argmax(-1) == b.argmax(-1)) for a, b in zip(logits, reference["logits"])
  ]
  row = dict(
    format=fmt,
    weight_bytes=param_bytes(fparams),
    kv_dtype=fcfg.kv_dtype,
    logit_max_abs_err=float(max(d.max() for d in diffs)),
    logit_mean_abs_err=float(np.mean([d.mean() for d in diffs])),
    top1_agreement=float(np.mean(top1)),
    identical_tokens=float(np.mean([a == b for a, b in zip(ids, reference["ids"])])),
    greedy_wall_s=wall,
  )
  for rule, (keys, correct) in graded.items():
    ref_keys = reference["graded"][rule][0]
    row[f"accuracy_{rule}"] = float(np.mean(correct))
    row[f"answer_agreement_{rule}"] = float(
      np.mean([a == b for a, b in zip(keys, ref_keys)])
    )
  return row


def run(formats) -> str:
  from experiments.tasks import gsm8k

  cfg, params, tok = workdir.load_pretrained(log=print)
  problems = gsm8k.load_original()[: FLAGS.problems]
  prompts = workdir.chat_prompts(tok, problems)
  path = os.path.join(FLAGS.workdir, "results.json")
  os.makedirs(FLAGS.workdir, exist_ok=True)
  meta = dict(
    model=workdir.SMOLLM2,
    problems=len(problems),
    max_new_tokens=FLAGS.max_new_tokens,
    logit_problems=min(FLAGS.logit_problems, len(problems)),
  )
  rows, reference = [], {}
  for fmt in formats:
    rows.append(measure(fmt, cfg, params, tok, problems, prompts, reference))
    r = rows[-1]
    print(
      f"{fmt}: max|dlogit| {r['logit_max_abs_err']:.4f}, top-1 "
      f"{r['top1_agreement']:.4f}, answers = float32's "
      f"{r['answer_agreement_flexible']:.2f}, accuracy "
      f"{r['accuracy_flexible']:.3f}",
      flush=True,
    )
    workdir.write_json_atomic(path, dict(meta, rows=rows, complete=False))
  workdir.write_json_atomic(path, dict(meta, rows=rows, complete=True))
  _print_table(rows, meta)
  return path


def _print_table(rows, meta) -> None:
  print(
    f"\nSmolLM2-135M-Instruct, {meta['problems']} GSM8K originals, greedy "
    f"<= {meta['max_new_tokens']} tokens; logits over {meta['logit_problems']} "
    "prompts + float32's answers"
  )
  print(
    f"{'format':16s} {'weights MB':>10s} {'KV':>9s} {'max|dl|':>8s} "
    f"{'mean|dl|':>9s} {'top-1':>6s} {'same tok':>8s} {'same ans':>8s} "
    f"{'acc flex':>8s} {'acc strict':>10s} {'wall s':>7s}"
  )
  for r in rows:
    print(
      f"{r['format']:16s} {r['weight_bytes'] / 1e6:10.1f} {r['kv_dtype']:>9s} "
      f"{r['logit_max_abs_err']:8.4f} {r['logit_mean_abs_err']:9.5f} "
      f"{r['top1_agreement']:6.4f} {r['identical_tokens']:8.2f} "
      f"{r['answer_agreement_flexible']:8.2f} {r['accuracy_flexible']:8.3f} "
      f"{r['accuracy_strict']:10.3f} {r['greedy_wall_s']:7.1f}"
    )


def main(argv):
  del argv
  formats = validate_flags()
  print(f"wrote {run(formats)}")


if __name__ == "__main__":
  app.run(main)
