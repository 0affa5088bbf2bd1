r"""Unrolled layers against a `lax.scan` over stacked layers: compile and step time.

`jaxllm.model.forward` unrolls its layers (one `LayerParams` and one cache
buffer per layer). A scan over stacked parameters compiles one layer body
whatever the depth, at the price of stacked parameters and a stacked cache
throughout import / export / sharding / layer skipping. This measures what
the scan would buy before anyone pays that price: one cached decode step
(T = 1 new token) of a SmolLM2-shaped random model (or the 40M config),
  unrolled: `jaxllm.model.forward` as it is;
  scan:     the same `jaxllm.model._layer` body under `lax.scan` over the
            layers' stacked parameters, the [L, ...] stacked cache in the
            scan's carry (read at layer i, written back in place; both
            stacked once, outside the timed step);
both jitted with the cache donated, the same inputs, logits checked equal.
Reported: compile seconds (lower + compile, a fresh jit each), and the step's
median ms over `--repeats` calls of `--steps` steps, at each batch size.

  python -m experiments.bench_layer_scan
  python -m experiments.bench_layer_scan --shape=llama40m --batches=1,64

Writes <workdir>/<shape>.json (default workdir results/bench_layer_scan).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import workdir
from jaxllm import init_params, llama_like, smollm2_135m
from jaxllm.cache import KVCache, init_cache
from jaxllm.model import _layer, forward, get_attention, lm_head, rope_inv_freq
from jaxllm.quant import take_rows

SHAPES = {  # the benchmark configs' shapes (max_seq_len set per run)
  "smollm2": lambda n: smollm2_135m(max_seq_len=n),
  "llama40m": lambda n: llama_like(max_seq_len=n),  # its defaults: the 40M config
}
FLAGS = flags.FLAGS
flags.DEFINE_enum("shape", "smollm2", sorted(SHAPES), "Model shape (random weights).")
flags.DEFINE_list("batches", ["1", "16", "64"], "Decode batch sizes.")
flags.DEFINE_integer("context", 256, "Cached tokens per row before the step.")
flags.DEFINE_integer("steps", 8, "Decode steps per timed call.")
flags.DEFINE_integer("repeats", 5, "Timed calls (median).")
workdir.define_flags("results/bench_layer_scan")


def scan_step(stacked, embed_params, tokens_Bx1, cache_k, cache_v, lengths_B, cfg):
  """One decode step with the layers under lax.scan: stacked LayerParams
  ([L, ...] leaves), cache_k / cache_v [L, ...]. Returns (logits [B, V],
  cache_k, cache_v)."""
  positions = lengths_B[:, None]
  S = cache_v.shape[3]
  mask = jnp.arange(S)[None, None, :] <= positions[:, :, None]  # [B, 1, S]
  x = take_rows(embed_params.embed, tokens_Bx1, jnp.dtype(cfg.dtype))
  attend, inv_freq = get_attention(cfg.attention_impl), rope_inv_freq(cfg)

  def body(carry, layer):  # the stacked cache is carried: updated in place
    x, cache_k, cache_v = carry
    lp, i = layer
    x, k, v = _layer(
      x, lp, cfg, attend, positions, inv_freq, mask, (cache_k[i], cache_v[i], lengths_B)
    )
    return (x, cache_k.at[i].set(k), cache_v.at[i].set(v)), None

  L = cache_k.shape[0]
  (x, cache_k, cache_v), _ = jax.lax.scan(
    body, (x, cache_k, cache_v), (stacked, jnp.arange(L))
  )
  return lm_head(embed_params, x[:, 0], cfg), cache_k, cache_v


def _time(fn, repeats):
  med, _ = workdir.median_time(fn, repeats)
  return med


def measure(cfg, params, B: int) -> dict:
  rng = np.random.default_rng(B)
  S = FLAGS.context + FLAGS.steps + 8
  tokens = jnp.asarray(rng.integers(1, cfg.vocab_size, (B, 1)), jnp.int32)
  lengths = jnp.full((B,), FLAGS.context, jnp.int32)
  cache = init_cache(cfg, B, S)
  cache = KVCache(k=cache.k, v=cache.v, lengths=lengths)
  stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *params.layers)
  head = dataclasses.replace(params, layers=())  # embed, final norm, head

  def unrolled_steps(params, tokens, cache):
    for _ in range(FLAGS.steps):
      logits, cache, _ = forward(params, tokens, cfg, cache=cache, logits_at="last")
    return logits, cache

  def scanned_steps(stacked, head, tokens, k, v, lengths):
    for _ in range(FLAGS.steps):
      logits, k, v = scan_step(stacked, head, tokens, k, v, lengths, cfg)
      lengths = lengths + 1
    return logits, k, v

  ck, cv = jnp.stack(cache.k), jnp.stack(cache.v)
  row = dict(batch=B)
  t0 = time.perf_counter()
  f_un = jax.jit(unrolled_steps).lower(params, tokens, cache).compile()
  row["unrolled_compile_s"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  f_sc = jax.jit(scanned_steps).lower(stacked, head, tokens, ck, cv, lengths).compile()
  row["scan_compile_s"] = time.perf_counter() - t0
  lu = f_un(params, tokens, cache)[0]
  ls = f_sc(stacked, head, tokens, ck, cv, lengths)[0]
  row["max_logit_diff"] = float(jnp.max(jnp.abs(lu - ls)))
  run_un = lambda: jax.block_until_ready(f_un(params, tokens, cache))
  run_sc = lambda: jax.block_until_ready(f_sc(stacked, head, tokens, ck, cv, lengths))
  run_un(), run_sc()
  row["unrolled_ms_per_step"] = _time(run_un, FLAGS.repeats) / FLAGS.steps * 1e3
  row["scan_ms_per_step"] = _time(run_sc, FLAGS.repeats) / FLAGS.steps * 1e3
  return row


def main(argv):
  del argv
  batches = workdir.flag_ints("batches")
  workdir.flags_at_least(1, "context", "steps", "repeats")
  cfg = SHAPES[FLAGS.shape](FLAGS.context + FLAGS.steps + 8)
  params = init_params(cfg, jax.random.key(0))
  print(f"devices: {jax.devices()}; {FLAGS.shape}: {cfg.n_layers} layers")
  rows = [measure(cfg, params, B) for B in batches]
  workdir.print_rows(
    rows,
    [
      ("batch", "batch", "d"),
      ("compile s unrolled", "unrolled_compile_s", ".2f"),
      ("compile s scan", "scan_compile_s", ".2f"),
      ("ms/step unrolled", "unrolled_ms_per_step", ".2f"),
      ("ms/step scan", "scan_ms_per_step", ".2f"),
      ("max|dlogit|", "max_logit_diff", ".2e"),
    ],
  )
  result = dict(shape=FLAGS.shape, steps=FLAGS.steps, rows=rows)
  path = workdir.save_results(FLAGS.workdir, f"{FLAGS.shape}.json", result)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
