r"""Per-step decode time of the attention implementations (jnp vs live).

A random-weight model decodes `--steps` single tokens inside one jitted
`lax.fori_loop` (the cache updated in place, as in `jaxllm.generate`), from
a pre-allocated cache of S slots whose rows hold a live prefix of L tokens.
"jnp" reads all S slots of every layer each step; "live"
(`jaxllm.model.attention_live`) reads the blocks up to the longest row. The
median over `--repeats` timed runs (after a warm-up run) divided by the steps
is the per-step time, the fastest run's beside it (the cache is donated and
rebuilt outside the timed region, so no call copies it). Prints a table and
writes JSON.

  python -m experiments.bench_attention
  python -m experiments.bench_attention --cache_sizes=1024,4096 --live=64,1000 \
    --batches=1,8 --cache_dtype=bfloat16

Writes <workdir>/results.json (default workdir results/bench_attention).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import workdir
from jaxllm import KVCache, forward, init_cache, init_params, llama_like

FLAGS = flags.FLAGS
flags.DEFINE_list("impls", ["jnp", "live"], "Attention implementations.")
flags.DEFINE_list("batches", ["1", "8"], "Batch sizes.")
flags.DEFINE_list("cache_sizes", ["1024", "4096"], "Cache slots per row (S).")
flags.DEFINE_list("live", ["64"], "Live prefix per row (L), < every cache size.")
flags.DEFINE_integer("steps", 16, "Decode steps per timed run.")
flags.DEFINE_integer("repeats", 5, "Timed runs (median reported).")
flags.DEFINE_enum("cache_dtype", "", ["", "float32", "bfloat16"], "KV cache dtype.")
flags.DEFINE_integer("seed", 0, "Seed.")
workdir.define_flags("results/bench_attention")

# A tiny-ish Llama: 4 layers, d_model 256, 8 query / 4 KV heads of 32.
MODEL = dict(
  vocab_size=4096, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, d_ff=704
)


def decode_steps(params, cache, tok_B, cfg, steps: int):
  """`steps` greedy single-token decode steps from `cache`: the final cache
  and tokens [B] (a fori_loop, so the cache is updated in place)."""

  def body(_, carry):
    cache, tok = carry
    logits, cache, _ = forward(params, tok[:, None], cfg, cache=cache, logits_at="last")
    return cache, jnp.argmax(logits, axis=-1).astype(jnp.int32)

  return jax.lax.fori_loop(0, steps, body, (cache, tok_B))


# The cache is donated: without that, every call first copies the whole input
# cache into the loop (O(S) work per call that is no part of a decode step).
_decode_jit = jax.jit(
  decode_steps, static_argnames=("cfg", "steps"), donate_argnames=("cache",)
)


def filled_cache(cfg, B: int, S: int, live: int, seed: int):
  """A cache of S slots with random entries and every row at length `live`."""
  cache = init_cache(cfg, B, S)
  keys = jax.random.split(jax.random.key(seed), 2 * cfg.n_layers)
  rand = lambda k, x: jax.random.normal(k, x.shape, x.dtype)
  return KVCache(
    k=tuple(rand(k, x) for k, x in zip(keys[::2], cache.k)),
    v=tuple(rand(k, x) for k, x in zip(keys[1::2], cache.v)),
    lengths=jnp.full((B,), live, jnp.int32),
  )


def time_step(cfg, params, B: int, S: int, live: int) -> dict:
  """Median per-step seconds of `decode_steps` at batch B, S slots, live L
  (a fresh cache per call, built outside the timed region)."""
  steps, ts = FLAGS.steps, []
  tok = jnp.ones((B,), jnp.int32)
  for i in range(FLAGS.repeats + 1):  # the first call compiles and warms up
    cache = jax.block_until_ready(filled_cache(cfg, B, S, live, FLAGS.seed))
    t0 = time.perf_counter()
    jax.block_until_ready(_decode_jit(params, cache, tok, cfg, steps))
    ts.append(time.perf_counter() - t0)
  ts = ts[1:]
  return dict(
    step_ms=1e3 * float(np.median(ts)) / steps,
    min_step_ms=1e3 * min(ts) / steps,
    times_s=ts,
  )


def main(argv):
  del argv
  batches = workdir.flag_ints("batches")
  sizes = workdir.flag_ints("cache_sizes")
  lives = workdir.flag_ints("live")
  workdir.flags_at_least(1, "steps", "repeats")
  if max(lives) + FLAGS.steps > min(sizes):
    raise app.UsageError(
      f"--live={max(lives)} + --steps={FLAGS.steps} exceeds --cache_sizes={min(sizes)}"
    )
  base = llama_like(**MODEL, max_seq_len=max(sizes), cache_dtype=FLAGS.cache_dtype)
  params = init_params(base, jax.random.key(FLAGS.seed))
  rows = []
  for B in batches:
    for S in sizes:
      for L in lives:
        row = dict(batch=B, cache=S, live_prefix=L)
        for impl in FLAGS.impls:
          cfg = base.replace(attention_impl=impl)
          for k, v in time_step(cfg, params, B, S, L).items():
            row.setdefault(k, {})[impl] = v
        rows.append(row)
        print(
          f"B={B:>3} S={S:>5} L={L:>5} "
          + " ".join(f"{i} {row['step_ms'][i]:8.3f} ms" for i in FLAGS.impls),
          flush=True,
        )
  os.makedirs(FLAGS.workdir, exist_ok=True)
  path = os.path.join(FLAGS.workdir, workdir.RESULTS_FILE)
  result = dict(
    model=MODEL,
    kv_dtype=base.kv_dtype,
    steps=FLAGS.steps,
    rows=rows,
    backend=jax.default_backend(),
    devices=str(jax.devices()),
  )
  workdir.write_json_atomic(path, result, indent=1)
  _print_table(rows, FLAGS.impls)
  print(f"wrote {path}")


def _print_table(rows, impls) -> None:
  print(
    f"{'batch':>5} {'cache':>6} {'live':>5} "
    + " ".join(f"{i + ' ms/step':>14} {'(min)':>7}" for i in impls)
    + (f" {impls[0] + '/' + impls[1]:>10}" if len(impls) == 2 else "")
  )
  for r in rows:
    ms = [r["step_ms"][i] for i in impls]
    ratio = f" {ms[0] / ms[1]:>10.2f}" if len(ms) == 2 else ""
    print(
      f"{r['batch']:>5} {r['cache']:>6} {r['live_prefix']:>5} "
      + " ".join(f"{r['step_ms'][i]:>14.3f} {r['min_step_ms'][i]:>7.3f}" for i in impls)
      + ratio
    )


if __name__ == "__main__":
  app.run(main)
