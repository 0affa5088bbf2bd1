r"""Decode benchmark: our `generate` against transformers' `generate`.

Same config, same random weights, same prompts, temperature-1 sampling of
exactly `--new_tokens` tokens, at several batch sizes; plus the machine's
measured ceilings (a large float32 matmul's FLOP/s, a large copy's bytes/s),
so every number is also reported as a utilisation. Prints a table and writes
JSON.

  python -m experiments.bench_decode                      # ~40M Llama config
  python -m experiments.bench_decode --model=smollm2      # real SmolLM2-135M
  python -m experiments.bench_decode --model=smollm2 --llama_cpp   # + llama.cpp
  python -m experiments.bench_decode --batches=1,16 --repeats=3 --hf=false
  python -m experiments.bench_decode --model=llama1b --dtype=bfloat16   # GPU
  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
    python -m experiments.bench_decode --mesh=data=2,model=4 --hf=false

`--dtype` sets the parameter and compute dtype of both models (and the dtype
of the ceiling's matmul). `--cache_dtype` (ModelConfig.cache_dtype, e.g.
bfloat16 under a float32 model) and `--attention_impl` (an entry of
`jaxllm.model.ATTENTION_IMPLS`, e.g. "live") and `--weights` (bfloat16, or
int8 through `jaxllm.quant.quantize_int8`) apply to ours only. `--mesh` (see `jaxllm.sharding.make_mesh`) puts the
parameters into their shardings and splits the batch over `data`; the same
`generate` runs, GSPMD places the rest. transformers runs on the GPU when
torch sees one, else on the CPU.

`--llama_cpp` (after `make llama-cpp`) adds llama.cpp, the CPU engine a user
would pick instead, on the GGUF's own Q4_1 weights at batch 1 (same prompt,
temperature-1 sampling of as many tokens).

Memory: every row reports the bytes of the parameters plus the KV cache that
batch decodes in (prompt bucket + new tokens slots; computed from the arrays'
shapes and dtypes, global over a mesh) and the process's peak resident set
size so far (getrusage ru_maxrss, host memory).

Writes <workdir>/results.json (default workdir results/bench_decode). The
flags are checked (`validate_flags`, and prompt + new tokens against the
model's context right after it is built) before anything is timed; the JSON is
rewritten (atomically) after every batch size, so a failure later keeps the
rows measured.
"""

from __future__ import annotations

import math
import os
import resource
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import distributed, workdir
from jaxllm import (
  Transformer,
  generate,
  init_params,
  llama_like,
  make_sampling,
  sharding,
)
from jaxllm import flops as flops_lib
from jaxllm.cache import init_cache
from jaxllm.config import DTYPES
from jaxllm.generate import TRACE_COUNT, bucket_length
from jaxllm.model import ATTENTION_IMPLS
from jaxllm.quant import quantize_int8

FLAGS = flags.FLAGS
flags.DEFINE_enum(
  "model",
  "llama40m",
  ["llama40m", "llama1b", "smollm2"],
  "Model: a ~40M or a ~1.2B (Llama-3.2-1B shape) random-weight Llama config, "
  "or the real SmolLM2-135M.",
)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Params/compute.")
flags.DEFINE_enum(
  "cache_dtype",
  "",
  ["", *DTYPES],
  "KV cache dtype of our model (ModelConfig.cache_dtype; empty: --dtype).",
)
flags.DEFINE_enum(
  "attention_impl",
  "jnp",
  sorted(ATTENTION_IMPLS),
  "Our attention implementation (ModelConfig.attention_impl).",
)
flags.DEFINE_enum(
  "weights",
  "",
  ["", "bfloat16", "int8", "int8_block32"],
  "Our weights' format: empty (--dtype), bfloat16 (cast; compute stays --dtype), "
  "int8 (jaxllm.quant.quantize_int8: per-output-channel weight-only int8) or "
  "int8_block32 (one scale per 32 input entries).",
)
flags.DEFINE_integer(
  "ceiling_n", 0, "Matmul size for the FLOP/s ceiling (0: 2048 CPU, 8192 else)."
)
flags.DEFINE_list("batches", ["1", "16", "64"], "Batch sizes.")
flags.DEFINE_integer("prompt_len", 32, "Prompt length (tokens).")
flags.DEFINE_integer("new_tokens", 128, "Tokens generated per row.")
flags.DEFINE_integer("repeats", 3, "Timed repeats (median reported).")
flags.DEFINE_bool("hf", True, "Also time transformers (torch, CPU).")
flags.DEFINE_integer("torch_threads", 0, "torch threads (0 = all cores).")
flags.DEFINE_bool(
  "llama_cpp",
  False,
  "Also time llama.cpp on the SmolLM2 GGUF's own weights (Q4_1), batch 1 only "
  "(--model=smollm2; needs `pip install llama-cpp-python`, not a project "
  "dependency: it compiles llama.cpp, ~10 min on 2 cores).",
)
flags.DEFINE_integer("seed", 0, "Seed.")
workdir.define_flags("results/bench_decode")
distributed.define_flags()  # --mesh (and the process flags: one process only)


def validate_flags() -> list[int]:
  """The batch sizes, after checking every flag.

  Raises:
    app.UsageError: naming the flag.
  """
  batches = workdir.flag_ints("batches")
  # the recompilation check samples a second prompt 3 tokens shorter
  workdir.flags_at_least(4, "prompt_len")
  workdir.flags_at_least(1, "new_tokens", "repeats")
  workdir.flags_at_least(0, "torch_threads")
  if FLAGS.model in CONFIGS:  # the random-weight configs' context is known now
    _check_context(RANDOM_CONTEXT)
  if FLAGS.llama_cpp:
    if FLAGS.model != "smollm2":
      raise app.UsageError("--llama_cpp needs --model=smollm2 (the GGUF it reads)")
    try:
      import llama_cpp  # noqa: F401
    except ImportError:
      raise app.UsageError(
        "--llama_cpp: llama-cpp-python is not installed (pip install llama-cpp-python)"
      ) from None
  return batches


def _check_context(max_seq_len: int) -> None:
  if FLAGS.prompt_len + FLAGS.new_tokens > max_seq_len:
    raise app.UsageError(
      f"--prompt_len={FLAGS.prompt_len} + --new_tokens="
      f"{FLAGS.new_tokens} exceeds the model's context ({max_seq_len})"
    )


def _write_json(result) -> str:
  os.makedirs(FLAGS.workdir, exist_ok=True)
  path = os.path.join(FLAGS.workdir, workdir.RESULTS_FILE)
  workdir.write_json_atomic(path, result, indent=1)
  return path


def measure_ceilings(repeats: int = 5, dtype: str = "float32", n: int = 0) -> dict:
  """Large matmul FLOP/s in `dtype` (best of XLA and numpy; n x n x n, n = 2048
  on the CPU and 8192 on an accelerator when 0) and copy bytes/s (a float32
  buffer read and written)."""
  if not n:
    n = 2048 if jax.default_backend() == "cpu" else 8192
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  mm = jax.jit(lambda x, y: x @ y)
  mm(a, b).block_until_ready()
  t_xla, _ = workdir.median_time(lambda: mm(a, b).block_until_ready(), repeats)
  t_np = float("inf")  # numpy only competes in float32 (it has no bfloat16)
  if dtype == "float32":
    an, bn = np.asarray(a), np.asarray(b)
    an @ bn
    t_np, _ = workdir.median_time(lambda: an @ bn, repeats)
  flops = 2 * n**3
  # Copy: read + write of a float32 buffer (bytes moved = 2 * size), 256 MiB
  # on the CPU, 2 GiB on an accelerator (a smaller one on an H200 measured
  # 1.8 TB/s, under half its copy rate: launch overhead, not bandwidth).
  cpu = jax.default_backend() == "cpu"
  x = jnp.ones(((64 if cpu else 512) * 1024 * 1024,), jnp.float32)
  cp = jax.jit(lambda v: v + 1.0)
  cp(x).block_until_ready()
  t_cp, _ = workdir.median_time(lambda: cp(x).block_until_ready(), repeats)
  xn = np.asarray(x)
  yn = np.empty_like(xn)
  t_npcp, _ = workdir.median_time(lambda: np.copyto(yn, xn), repeats)
  nbytes = 2 * x.size * 4
  return dict(
    matmul_n=n,
    matmul_dtype=dtype,
    matmul_flops_xla=flops / t_xla,
    matmul_flops_numpy=flops / t_np,
    matmul_flops=max(flops / t_xla, flops / t_np),
    copy_bytes_xla=nbytes / t_cp,
    copy_bytes_numpy=nbytes / t_npcp,
    copy_bytes=max(nbytes / t_cp, nbytes / t_npcp),
  )


# Random-weight Llama configs: the 40M CPU model and the Llama-3.2-1B shape.
RANDOM_CONTEXT = 1024  # their max_seq_len
CONFIGS = dict(
  llama40m=dict(
    vocab_size=32000, d_model=512, n_layers=8, n_heads=8, n_kv_heads=4, d_ff=1408
  ),
  llama1b=dict(
    vocab_size=128256,
    d_model=2048,
    n_layers=16,
    n_heads=32,
    n_kv_heads=8,
    d_ff=8192,
    rope_theta=500000.0,
    tie_embeddings=True,
  ),
)


def build_model(name: str, seed: int, dtype: str = "float32", mesh=None, **fields):
  """(cfg, params, hf name or None) for the benchmark model; parameters go
  straight into their shardings when a mesh is given. `fields` (e.g.
  cache_dtype, attention_impl) replace ModelConfig fields that do not change
  the parameters."""
  if name in CONFIGS:
    cfg = llama_like(
      **CONFIGS[name], max_seq_len=1024, dtype=dtype, param_dtype=dtype, **fields
    )
    shardings = None if mesh is None else sharding.param_shardings(cfg, mesh)
    params = init_params(cfg, jax.random.key(seed), shardings=shardings)
    return cfg, params, None
  cfg, params, _ = workdir.load_pretrained(dtype=dtype, shardings=mesh)
  return cfg.replace(**fields), params, "smollm2"


WEIGHT_BYTES = {
  "bfloat16": 2,
  "int8": 1,
  "int8_block32": 1,
}  # bytes per weight read per step


def weights_in_format(params, weights: str):
  """`params` as --weights asks: unchanged (""), every leaf cast to bfloat16,
  or every projection int8-quantised (`jaxllm.quant.quantize_int8`, per
  output channel or in blocks of 32)."""
  if weights.startswith("int8"):
    return quantize_int8(params, block_size=32 if weights == "int8_block32" else 0)
  if weights == "bfloat16":
    return jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
  return params


def tree_bytes(tree) -> int:
  """Bytes of every array (or ShapeDtypeStruct) leaf of `tree`, from its shape
  and dtype (global size for a sharded array)."""
  leaves = jax.tree_util.tree_leaves(tree)
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in leaves)


def memory_row(cfg, params, batch: int, prompt_len: int, new_tokens: int) -> dict:
  """Device bytes of the parameters and of the KV cache `generate` allocates
  for `batch` rows (bucketed prompt + new tokens slots, shapes only: nothing
  is allocated), and the process's peak RSS so far (KiB, Linux ru_maxrss)."""
  slots = bucket_length(prompt_len) + new_tokens
  cache = jax.eval_shape(lambda: init_cache(cfg, batch, slots))
  p_bytes, kv_bytes = tree_bytes(params), tree_bytes(cache)
  return dict(
    params_bytes=p_bytes,
    kv_cache_bytes=kv_bytes,
    kv_cache_slots=slots,
    device_bytes=p_bytes + kv_bytes,
    peak_rss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
  )


def load_hf_model(name, cfg, params, torch_threads, dtype: str = "float32"):
  """The same weights in transformers, on the GPU when torch sees one."""
  import torch
  import transformers

  if torch_threads:
    torch.set_num_threads(torch_threads)
  tdtype = getattr(torch, dtype)
  if name == "smollm2":
    return workdir.load_hf_pretrained(workdir.SMOLLM2, dtype)
  from jaxllm.hf import save_hf

  d = tempfile.mkdtemp(prefix="bench_hf_")
  save_hf(d, cfg, params, model_type="llama")
  model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=tdtype)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  return model.to(device).eval()


def generate_fn(cfg, params, new_tokens, mesh=None):
  """`run(prompts, key)`: our `generate` (temperature 1) on a list of
  equal-length prompts, split over the mesh's data axes when there is one."""
  model = Transformer(cfg)
  sampling = make_sampling(1.0)

  def run(prompts, key):
    tokens = np.asarray(prompts, np.int32)
    lengths = np.full((tokens.shape[0],), tokens.shape[1], np.int32)
    if mesh is not None:
      tokens = sharding.shard_batch(tokens, mesh)
      lengths = sharding.shard_batch(lengths, mesh)
    out = generate(
      model, params, tokens, key, new_tokens, sampling, prompt_lengths=lengths
    )
    return jax.block_until_ready(out)

  return run


def bench_ours(cfg, params, prompts, new_tokens, repeats, key, mesh=None):
  """First-call and median (of `repeats`) seconds of `generate_fn`."""
  generate_once = generate_fn(cfg, params, new_tokens, mesh)
  run = lambda k: generate_once(prompts, k)
  t0 = time.perf_counter()
  out = run(key)
  first = time.perf_counter() - t0
  assert int(np.min(out.lengths)) == new_tokens, "rows stopped early"
  med, ts = workdir.median_time(lambda: run(jax.random.fold_in(key, 1)), repeats)
  return dict(
    first_call_s=first, median_s=med, times_s=ts, compile_s=max(first - med, 0.0)
  )


def bench_hf(hf_model, prompts, new_tokens, repeats):
  import torch

  ids = torch.tensor(np.asarray(prompts), dtype=torch.long, device=hf_model.device)
  workdir.hf_sample(hf_model, ids, 4)  # warm-up
  med, ts = workdir.median_time(
    lambda: workdir.hf_sample(hf_model, ids, new_tokens), repeats
  )
  return dict(median_s=med, times_s=ts)


def load_llama_cpp(context: int):
  """llama.cpp (llama-cpp-python) on the SmolLM2 GGUF, as many threads as
  torch uses (--torch_threads, else every core). n_batch=1: prompts are
  evaluated a token at a time, because the multi-token kernels of a native
  build died with SIGILL on this machine's CPU (single-token decode is
  unaffected, and prompt evaluation is not timed)."""
  import llama_cpp

  from jaxllm.pretrained import pretrained_path

  return llama_cpp.Llama(
    model_path=pretrained_path(workdir.SMOLLM2),
    n_ctx=context,
    n_batch=1,
    n_threads=FLAGS.torch_threads or os.cpu_count(),
    verbose=False,
  )


def bench_llama_cpp(llm, prompt, new_tokens: int, repeats: int) -> dict:
  """Median seconds for llama.cpp to sample `new_tokens` tokens at
  temperature 1 (no top-k / top-p / min-p) after `prompt` (token ids), batch
  1. Only the sampled tokens are timed; the prompt is evaluated first,
  untimed (ours times its prefill too, so this favours llama.cpp slightly)."""
  times = []
  for r in range(repeats + 1):  # the first is a warm-up
    llm.reset()
    llm.eval(prompt)
    t0 = time.perf_counter()
    for _ in range(new_tokens):
      tok = llm.sample(temp=1.0, top_k=0, top_p=1.0, min_p=0.0)
      llm.eval([tok])
    if r:
      times.append(time.perf_counter() - t0)
  return dict(median_s=float(np.median(times)), times_s=times)


def main(argv):
  del argv
  batches = validate_flags()
  path = run(batches)
  print(f"wrote {path}")


def run(batches) -> str:
  """Every batch size, the table and the recompilation check; returns the
  JSON's path."""
  distributed.maybe_initialize()  # before any other JAX call
  print(f"devices: {jax.devices()}")
  if jax.process_count() > 1:
    raise app.UsageError(
      "bench_decode times one process; give it one (--mesh "
      "spans that process's devices)"
    )
  mesh = None
  if FLAGS.mesh:
    try:
      mesh = distributed.mesh_from_flags()
    except ValueError as e:
      raise app.UsageError(str(e)) from e
    n_data = sharding.data_parallel_size(mesh)
    bad = [b for b in batches if b % n_data]
    if bad:
      raise app.UsageError(
        f"--batches {bad} not divisible by the mesh's data-parallel size {n_data}"
      )
  try:  # a mesh axis that does not divide the model's heads, named
    cfg, params, _ = build_model(
      FLAGS.model,
      FLAGS.seed,
      FLAGS.dtype,
      mesh,
      cache_dtype=FLAGS.cache_dtype,
      attention_impl=FLAGS.attention_impl,
    )
  except ValueError as e:
    raise app.UsageError(f"--mesh={FLAGS.mesh!r} / --model={FLAGS.model}: {e}") from e
  _check_context(cfg.max_seq_len)
  ceil = measure_ceilings(dtype=FLAGS.dtype, n=FLAGS.ceiling_n)
  print(
    f"ceilings: matmul {ceil['matmul_flops'] / 1e9:.1f} GFLOP/s "
    f"(xla {ceil['matmul_flops_xla'] / 1e9:.1f}, numpy "
    f"{ceil['matmul_flops_numpy'] / 1e9:.1f}); copy "
    f"{ceil['copy_bytes'] / 1e9:.1f} GB/s"
  )
  n_params = cfg.param_counts()["total"]
  hf_model = (
    load_hf_model(FLAGS.model, cfg, params, FLAGS.torch_threads, FLAGS.dtype)
    if FLAGS.hf
    else None
  )
  params = weights_in_format(params, FLAGS.weights)
  rng = np.random.default_rng(FLAGS.seed)
  P, N = FLAGS.prompt_len, FLAGS.new_tokens
  llm = load_llama_cpp(P + N + 8) if FLAGS.llama_cpp else None
  # Average context of a decode token, for attention FLOPs / KV bytes.
  ctx = P + (N + 1) / 2
  flops_tok = float(flops_lib.decode_flops(cfg, ctx))
  el_bytes = WEIGHT_BYTES.get(FLAGS.weights) or jnp.dtype(FLAGS.dtype).itemsize
  kv_el_bytes = jnp.dtype(cfg.kv_dtype).itemsize
  wbytes = flops_lib.weight_bytes_per_step(cfg, el_bytes)
  meta = dict(
    model=FLAGS.model,
    dtype=FLAGS.dtype,
    weights=FLAGS.weights or FLAGS.dtype,
    cache_dtype=cfg.kv_dtype,
    attention_impl=cfg.attention_impl,
    mesh=FLAGS.mesh,
    params=n_params,
    prompt_len=P,
    new_tokens=N,
  )
  rows = []
  for B in batches:
    prompts = rng.integers(1, cfg.vocab_size, size=(B, P)).tolist()
    ours = bench_ours(
      cfg, params, prompts, N, FLAGS.repeats, jax.random.key(FLAGS.seed), mesh
    )
    tok_s = B * N / ours["median_s"]
    # Bytes per decode step: the weights once + every row's KV reads.
    step_bytes = wbytes + B * float(flops_lib.kv_bytes_per_token(cfg, ctx, kv_el_bytes))
    row = dict(
      batch=B,
      ours_tok_s=tok_s,
      ours=ours,
      ours_mfu=tok_s * flops_tok / ceil["matmul_flops"],
      ours_bw_util=(tok_s / B) * step_bytes / ceil["copy_bytes"],
      memory=memory_row(cfg, params, B, P, N),
    )
    if hf_model is not None:
      hf = bench_hf(hf_model, prompts, N, FLAGS.repeats)
      row.update(
        hf=hf,
        hf_tok_s=B * N / hf["median_s"],
        hf_mfu=(B * N / hf["median_s"]) * flops_tok / ceil["matmul_flops"],
      )
      row["speedup"] = tok_s / row["hf_tok_s"]
    if llm is not None and B == 1:
      row["llama_cpp"] = bench_llama_cpp(llm, prompts[0], N, FLAGS.repeats)
      row["llama_cpp_tok_s"] = N / row["llama_cpp"]["median_s"]
      row["vs_llama_cpp"] = tok_s / row["llama_cpp_tok_s"]
    rows.append(row)
    _write_json(dict(meta, ceilings=ceil, rows=rows, complete=False))
    print(
      f"batch {B}: ours {tok_s:.1f} tok/s"
      + (
        f", hf {row['hf_tok_s']:.1f} tok/s, x{row['speedup']:.2f}"
        if hf_model is not None
        else ""
      ),
      flush=True,
    )

  # Recompilation check: a second prompt length in the same bucket.
  before = TRACE_COUNT["generate"]
  p2 = rng.integers(1, cfg.vocab_size, size=(batches[0], P - 3)).tolist()
  generate_fn(cfg, params, N, mesh)(p2, jax.random.key(2))
  recompiled = TRACE_COUNT["generate"] != before

  print()
  print(
    f"model {FLAGS.model} ({FLAGS.dtype}, weights {FLAGS.weights or FLAGS.dtype}, KV cache {cfg.kv_dtype}, attention "
    f"{cfg.attention_impl}, mesh {FLAGS.mesh}): "
    f"{n_params / 1e6:.1f}M params, prompt {P}, "
    f"{N} new tokens, {flops_tok / 1e6:.1f} MFLOP/token, "
    f"{wbytes / 1e6:.1f} MB weights/step"
  )
  _print_table(rows)
  print(f"second prompt length ({P - 3}) in the same bucket recompiled: {recompiled}")
  result = dict(
    meta,
    flops_per_token=flops_tok,
    weight_bytes_per_step=wbytes,
    ceilings=ceil,
    rows=rows,
    same_bucket_recompiled=recompiled,
    backend=jax.default_backend(),
    devices=str(jax.devices()),
    complete=True,
  )
  return _write_json(result)


def _print_table(rows) -> None:
  """The results table: speed, utilisation, compile time and memory (params +
  KV cache bytes, the KV cache alone, the peak RSS so far) per batch size."""
  print(
    f"{'batch':>5} {'ours tok/s':>11} {'hf tok/s':>9} {'ratio':>6} "
    f"{'ours MFU':>9} {'hf MFU':>7} {'ours BW':>8} {'compile s':>9} "
    f"{'mem MB':>8} {'KV MB':>8} {'RSS MB':>8} {'llama.cpp tok/s':>15}"
  )
  for r in rows:
    m = r["memory"]
    print(
      f"{r['batch']:>5} {r['ours_tok_s']:>11.1f} "
      f"{r.get('hf_tok_s', float('nan')):>9.1f} "
      f"{r.get('speedup', float('nan')):>6.2f} {r['ours_mfu']:>9.1%} "
      f"{r.get('hf_mfu', float('nan')):>7.1%} {r['ours_bw_util']:>8.1%} "
      f"{r['ours']['compile_s']:>9.2f} {m['device_bytes'] / 1e6:>8.1f} "
      f"{m['kv_cache_bytes'] / 1e6:>8.1f} {m['peak_rss_kib'] / 1024:>8.1f} "
      f"{r.get('llama_cpp_tok_s', float('nan')):>15.1f}"
    )


if __name__ == "__main__":
  app.run(main)
