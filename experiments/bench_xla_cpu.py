r"""XLA:CPU options for decoding: SmolLM2-135M decode-step time per option set.

Each option set runs in a fresh child process (XLA reads XLA_FLAGS once, at
start-up) that loads SmolLM2-135M-Instruct (float32), prefills a random
prompt of `--context` tokens per row and times `--steps` cached decode steps
inside one jitted loop (the cache updated in place, as in `jaxllm.generate`),
at each batch size: medians of `--repeats` after a warm-up, ms per step and
tokens/s. A set XLA rejects, or that changes the logits by more than
`--max_logit_change` relative to the default set's, is reported as such.
Prints a table and writes <workdir>/results.json.

  python -m experiments.bench_xla_cpu                       # every set, ~10 min
  python -m experiments.bench_xla_cpu --sets=default,xnnpack --batches=1,64

The sets (`SETS`) are the XLA:CPU options of the installed jaxlib that bear on
these shapes (small-M float32 matmuls, a 49152-wide head): Eigen's thread
pool off, the XNNPACK and oneDNN dot libraries, fast math, and the backend
and LLVM optimisation levels, which trade code quality for compile time (the
decode program's compile time, first call minus a timed call, is reported
per set). The study's
numbers and what was adopted are in BUILD.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

from experiments import workdir

SETS = {
  "default": "",
  "no_eigen_threads": "--xla_cpu_multi_thread_eigen=false",
  "xnnpack": "--xla_cpu_use_xnnpack=true",
  "onednn": "--xla_cpu_use_onednn=true",
  "fast_math": "--xla_cpu_enable_fast_math=true",
  "no_fusion_emitters": "--xla_cpu_use_fusion_emitters=false",
  # Options that trade generated-code quality for compile time:
  "opt_level_1": "--xla_backend_optimization_level=1",
  "opt_level_0": "--xla_backend_optimization_level=0",
  "cheap_llvm": "--xla_llvm_disable_expensive_passes=true",
}
FLAGS = flags.FLAGS
flags.DEFINE_list("sets", list(SETS), f"Option sets: {', '.join(SETS)}.")
flags.DEFINE_list("batches", ["1", "16", "64"], "Batch sizes.")
flags.DEFINE_integer("context", 256, "Prompt tokens per row before the timed steps.")
flags.DEFINE_integer("steps", 16, "Decode steps per timed call.")
flags.DEFINE_integer("repeats", 5, "Timed calls (median).")
flags.DEFINE_float("max_logit_change", 1e-3, "Largest relative logit change allowed.")
flags.DEFINE_string("child", "", "Internal: run one option set and print JSON.")
workdir.define_flags("results/bench_xla_cpu")


def child(batches, context: int, steps: int, repeats: int) -> dict:
  """ms per decode step and the first row's last logits, per batch size."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxllm import Transformer

  cfg, params, _ = workdir.load_pretrained()
  model = Transformer(cfg)

  @jax.jit
  def decode(params, state, tok_B):
    def body(_, carry):
      state, tok = carry
      state, logits = model.extend(params, state, tok[:, None])
      return state, jnp.argmax(logits[:, -1], -1).astype(jnp.int32)

    state, tok = jax.lax.fori_loop(0, steps, body, (state, tok_B))
    _, logits = model.extend(params, state, tok[:, None])
    return logits[:, -1]

  out = {}
  for B in batches:
    rng = np.random.default_rng(0)
    toks = jnp.asarray(rng.integers(3, cfg.vocab_size, (B, context)), jnp.int32)
    state, _ = model.prefill(params, toks, jnp.full((B,), context), context + steps + 2)
    first = jnp.asarray(toks[:, -1])
    t0 = time.perf_counter()
    logits = decode(params, state, first).block_until_ready()  # compile + 1 call
    first_call = time.perf_counter() - t0
    med, _ = workdir.median_time(
      lambda: decode(params, state, first).block_until_ready(), repeats
    )
    out[str(B)] = dict(
      compile_s=first_call - med,
      ms_per_step=1e3 * med / (steps + 1),
      tokens_per_s=B * (steps + 1) / med,
      logits=np.asarray(logits[0], np.float64).tolist(),
    )
  return out


def run_set(name: str) -> dict:
  """One option set in a child process: its results, or {'error': ...}."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + SETS[name]).strip()
  args = [sys.executable, "-m", "experiments.bench_xla_cpu", f"--child={name}"]
  args += [f"--batches={','.join(FLAGS.batches)}", f"--context={FLAGS.context}"]
  args += [f"--steps={FLAGS.steps}", f"--repeats={FLAGS.repeats}"]
  p = subprocess.run(args, env=env, capture_output=True, text=True)
  lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
  if p.returncode or not lines:
    return dict(error=(p.stderr.strip().splitlines() or ["no output"])[-1][:300])
  return json.loads(lines[-1])


def main(argv):
  del argv
  if FLAGS.child:
    res = child(
      [int(b) for b in FLAGS.batches], FLAGS.context, FLAGS.steps, FLAGS.repeats
    )
    print(json.dumps(res))
    return
  unknown = [s for s in FLAGS.sets if s not in SETS]
  if unknown:
    raise app.UsageError(f"--sets: unknown {unknown}; known: {list(SETS)}")
  workdir.flag_ints("batches")
  workdir.flags_at_least(1, "context", "steps", "repeats")
  results = {}
  for name in dict.fromkeys(["default"] + FLAGS.sets):
    workdir.progress(f"{name}: XLA_FLAGS += {SETS[name]!r}")
    results[name] = run_set(name)
    workdir.progress(f"  {summarize(name, results)}")
  os.makedirs(FLAGS.workdir, exist_ok=True)
  path = os.path.join(FLAGS.workdir, workdir.RESULTS_FILE)
  workdir.write_json_atomic(path, dict(sets=SETS, results=results), indent=1)
  print(f"wrote {path}")


def summarize(name: str, results: dict) -> str:
  """One line per set: ms/step per batch, speed vs default, logit change
  (the set is marked when it changes the logits beyond the flag)."""
  import numpy as np

  r, base = results[name], results.get("default", {})
  if "error" in r:
    return f"{name}: rejected ({r['error']})"
  cells = []
  for B, v in r.items():
    b = base.get(B, {})
    ratio = b["ms_per_step"] / v["ms_per_step"] if "ms_per_step" in b else float("nan")
    x, y = np.asarray(v["logits"]), np.asarray(b.get("logits", v["logits"]))
    change = float(np.max(np.abs(x - y)) / np.max(np.abs(y)))
    v["speedup_vs_default"], v["logit_change"] = ratio, change
    flag = " (logits changed)" if change > FLAGS.max_logit_change else ""
    cells.append(
      f"B={B}: {v['ms_per_step']:.1f} ms/step ({ratio:.2f}x), "
      f"compile {v['compile_s']:.1f} s{flag}"
    )
  return f"{name}: " + "; ".join(cells)


if __name__ == "__main__":
  app.run(main)
