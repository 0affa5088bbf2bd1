r"""Do fused Q/K/V and gate/up weights pay on this backend? A measurement.

One decode step's input projections of a layer, at SmolLM2-135M's shapes
(D 576, 9 query / 3 KV heads of 64, F 1536) or a 512-wide one (the 40M config's attention, F 1536), in float32:
  separate: q, k, v = three einsums with wq, wk, wv; gate, up = two products
            (today's `jaxllm.model` layout);
  fused:    one einsum with a [D, H + 2 Kv, K] matrix and one with [D, 2F],
            then slices (the layout issue 17 proposes).
Both are jitted over `--layers` layers (each with its own weights, as in the
model, so nothing stays in cache between layers) and timed with
block_until_ready (median of `--repeats` runs of `--inner` calls). The table
also counts the dot instructions in XLA's optimised HLO: XLA's own passes may
merge sibling products that share an operand, which makes the fused layout
redundant.

  python -m experiments.bench_fused_projections
  python -m experiments.bench_fused_projections --shape=d512 --batches=1,64

Writes <workdir>/<shape>.json (default workdir results/bench_fused_projections).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import workdir

SHAPES = {  # D, H, Kv, K, F
  "smollm2": (576, 9, 3, 64, 1536),
  "d512": (512, 8, 4, 64, 1536),  # the 40M config's attention, a wider MLP
}
FLAGS = flags.FLAGS
flags.DEFINE_enum("shape", "smollm2", sorted(SHAPES), "Layer shape.")
flags.DEFINE_list("batches", ["1", "16", "64"], "Decode batch sizes (T = 1).")
flags.DEFINE_integer("layers", 30, "Layers per call (each its own weights).")
flags.DEFINE_integer("inner", 20, "Calls per timed repeat.")
flags.DEFINE_integer("repeats", 7, "Timed repeats (median reported).")
workdir.define_flags("results/bench_fused_projections")


def separate(x, ws):
  """Today's layout: per layer three attention and two MLP input products."""
  out = 0.0
  for wq, wk, wv, wg, wu in ws:
    q = jnp.einsum("btd,dhk->bthk", x, wq)
    k = jnp.einsum("btd,dhk->bthk", x, wk)
    v = jnp.einsum("btd,dhk->bthk", x, wv)
    g, u = x @ wg, x @ wu
    out = out + q.sum() + k.sum() + v.sum() + (jax.nn.silu(g) * u).sum()
  return out


def fused(x, ws, n_heads: int, n_kv: int):
  """The fused layout: one [D, H + 2 Kv, K] and one [D, 2F] product a layer."""
  out = 0.0
  for wqkv, wgu in ws:
    qkv = jnp.einsum("btd,dhk->bthk", x, wqkv)
    q, k, v = jnp.split(qkv, (n_heads, n_heads + n_kv), axis=2)
    g, u = jnp.split(x @ wgu, 2, axis=-1)
    out = out + q.sum() + k.sum() + v.sum() + (jax.nn.silu(g) * u).sum()
  return out


def dots_in(compiled) -> int:
  """Dot / custom-call-matmul instructions in optimised HLO text."""
  text = compiled.as_text()
  return len(re.findall(r"\bdot\(|custom_call_target=\"__onednn\$matmul", text))


def measure(B: int, key) -> dict:
  D, H, Kv, K, F = SHAPES[FLAGS.shape]
  ks = iter(jax.random.split(key, 6 * FLAGS.layers + 1))
  n = lambda *s: jax.random.normal(next(ks), s, jnp.float32) / np.sqrt(D)
  sep_w = [
    (n(D, H, K), n(D, Kv, K), n(D, Kv, K), n(D, F), n(D, F))
    for _ in range(FLAGS.layers)
  ]
  fused_w = [
    (jnp.concatenate([a, b, c], axis=1), jnp.concatenate([g, u], axis=1))
    for a, b, c, g, u in sep_w
  ]
  x = n(B, 1, D)
  f_sep = jax.jit(separate)
  f_fused = jax.jit(lambda x, w: fused(x, w, H, Kv))
  row = dict(batch=B)
  for name, f, w in (("separate", f_sep, sep_w), ("fused", f_fused, fused_w)):
    row[f"{name}_dots"] = dots_in(f.lower(x, w).compile())
    np.testing.assert_allclose(float(f(x, w)), float(f_sep(x, sep_w)), rtol=1e-3)

    def calls(f=f, w=w):
      for _ in range(FLAGS.inner):
        r = f(x, w)
      return jax.block_until_ready(r)

    med, _ = workdir.median_time(calls, FLAGS.repeats)
    row[f"{name}_us_per_layer"] = med / FLAGS.inner / FLAGS.layers * 1e6
  row["fused_speedup"] = row["separate_us_per_layer"] / row["fused_us_per_layer"]
  return row


def main(argv):
  del argv
  batches = workdir.flag_ints("batches")
  workdir.flags_at_least(1, "layers", "inner", "repeats")
  print(f"devices: {jax.devices()}; shape {FLAGS.shape} {SHAPES[FLAGS.shape]}")
  rows = [measure(B, jax.random.key(B)) for B in batches]
  workdir.print_rows(
    rows,
    [
      ("batch", "batch", "d"),
      ("sep us/layer", "separate_us_per_layer", ".1f"),
      ("fused us/layer", "fused_us_per_layer", ".1f"),
      ("speedup", "fused_speedup", ".3f"),
      ("sep dots", "separate_dots", "d"),
      ("fused dots", "fused_dots", "d"),
    ],
  )
  meta = dict(shape=FLAGS.shape, dims=SHAPES[FLAGS.shape], layers=FLAGS.layers)
  path = workdir.save_results(
    FLAGS.workdir, f"{FLAGS.shape}.json", dict(meta, rows=rows)
  )
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
