r"""Particle-filter benchmark: our one-jit PF against plain batched sampling and
against a re-prefill-every-step PF (what text-resubmitting libraries do).

Same random transformer (sized like the arith policy by default: 4 layers,
d=256), same prompt, N sequences of the same total length K * S tokens:
  sample   jaxllm.generate(num_samples=N): the prompt prefilled once and
           forked into N rows (as the PF does), K * S tokens each, no
           stop token.
  pf       algorithms.particle_filter: N particles, K steps of exactly S
           tokens (no delimiter and no stop token: allow_no_stop=True, so no
           particle ends early and the token counts match), ConfidenceScorer
           (no PRM cost), reference
           weighting, multinomial resampling every step: KV rows are forked.
  reprefill the same PF loop where every step re-runs each particle's whole
           text from scratch (fresh cache, prefill, sample one step; one jit
           for that, resampling in numpy between steps): no cache reuse.
Warm-up first, then `--repeats` timed runs with block_until_ready (medians).
Prints a table and writes <workdir>/results.json (default workdir
results/bench_search).

  python -m experiments.bench_search
  python -m experiments.bench_search --particles=16,64,256 --steps=8 --step_tokens=16
  python -m experiments.bench_search --model=smollm2     # the real search case

--model=smollm2: the case a GSM8K sweep pays for. SmolLM2-135M-Instruct
(float32), one GSM8K chat prompt (--problem), N = --particles particles
(default 8 here), --steps steps of up to --step_tokens tokens ending at a
newline token or EOS (10 x 40 by default here), ConfidenceScorer, against
  sample_ours  jaxllm.generate of N samples of T tokens (no stop), and
  sample_hf    transformers' plain sampling of N rows x T tokens (the
               reference a researcher would otherwise use),
T = the PF's generated tokens per particle (rounded up), so both sample as
many tokens as the PF did. Reports wall and process CPU seconds (medians),
the PF's useful (generated) against executed decode row-positions (every
particle at every model call, finished ones included: the padding the
vectorised PF pays), and the ratios.

Every flag, the model config and every particle filter config are checked
(`validate_flags`) before anything is built or timed; the JSON is rewritten
(atomically) after every particle count, so a failure later keeps the rows
measured (`complete` says whether every row is there).

One process only (a benchmark times one process's devices; several processes
would not make one measurement): the multi-host flags of
experiments/distributed.py are accepted; a multi-process run or --mesh is
refused with that reason.
"""

from __future__ import annotations

import dataclasses
import os
import time

from absl import app, flags

import jax
import jax.numpy as jnp
import numpy as np

from algorithms.particle_filter import PFConfig, run_particle_filter
from algorithms.scorers import ConfidenceScorer
from algorithms.stepping import sample_step
from experiments import distributed
from experiments import workdir
from jaxllm import ModelConfig, Transformer, generate, init_params, make_sampling
from jaxllm.generate import bucket_length

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "random", ["random", "smollm2"], "Benchmark model.")
flags.DEFINE_list("particles", None, "Particle counts N (default 16,64; smollm2: 8).")
flags.DEFINE_integer("steps", None, "Steps K (default 8; smollm2: 10).")
flags.DEFINE_integer(
  "step_tokens", None, "Tokens per step S (default 16; smollm2: 40)."
)
flags.DEFINE_integer("problem", 0, "smollm2: the GSM8K original problem used.")
flags.DEFINE_bool("hf", True, "smollm2: also time transformers' plain sampling.")
flags.DEFINE_integer("prompt_len", 32, "Prompt tokens.")
flags.DEFINE_integer("vocab", 64, "Vocabulary size.")
flags.DEFINE_integer("d_model", 256, "Width.")
flags.DEFINE_integer("layers", 4, "Layers.")
flags.DEFINE_integer("repeats", 3, "Timed repeats (median).")
flags.DEFINE_bool("reprefill", True, "Also time the re-prefill baseline.")
flags.DEFINE_integer("seed", 0, "Seed.")
workdir.define_flags("results/bench_search")
N_HEADS = 4


def validate_flags():
  """(model config, [(N, PFConfig)]) after checking every flag: the particle
  counts, the sizes (the prompt draws ids 3..vocab-1; the width splits into
  N_HEADS heads), and the model and particle filter configs they make (each
  validates itself).

  Raises:
    app.UsageError: naming the flag.
  """
  defaults = dict(particles=["16", "64"], steps=8, step_tokens=16)
  if FLAGS.model == "smollm2":
    defaults = dict(particles=["8"], steps=10, step_tokens=40)
  for name, value in defaults.items():
    if FLAGS[name].value is None:
      FLAGS[name].value = value
  particles = workdir.flag_ints("particles")
  workdir.flags_at_least(1, "steps", "step_tokens", "prompt_len", "layers", "repeats")
  workdir.flags_at_least(4, "vocab")
  workdir.flags_at_least(0, "seed")
  if FLAGS.d_model % N_HEADS:
    raise app.UsageError(
      f"--d_model={FLAGS.d_model} must be a multiple of {N_HEADS} (the heads)"
    )
  K, S = FLAGS.steps, FLAGS.step_tokens
  try:
    cfg = ModelConfig(
      vocab_size=FLAGS.vocab,
      d_model=FLAGS.d_model,
      n_layers=FLAGS.layers,
      n_heads=N_HEADS,
      n_kv_heads=N_HEADS,
      d_ff=4 * FLAGS.d_model,
      max_seq_len=FLAGS.prompt_len + (K + 1) * S,
    )
  except (ValueError, TypeError) as e:
    raise app.UsageError(
      f"the model config from --vocab/--d_model/--layers/"
      f"--prompt_len/--steps/--step_tokens: {e}"
    ) from None
  runs = []
  for N in particles:
    try:
      runs.append(
        (
          N,
          PFConfig(
            n_particles=N,
            max_steps=K,
            max_step_tokens=S,
            delimiter_ids=(),
            stop_ids=(),
            allow_no_stop=True,
          ),
        )
      )
    except ValueError as e:
      raise app.UsageError(f"--particles={N}: {e}") from None
  return cfg, runs


def make_reprefill_step(model, S):
  """One jitted PF step without cache reuse: prefill every particle's full
  text into a fresh cache, sample one step, score it (confidence)."""
  scorer = ConfidenceScorer()

  @jax.jit
  def step(params, texts_NxT, lengths_N, key):
    state, logits = model.prefill(params, texts_NxT, lengths_N, texts_NxT.shape[1] + S)
    _, _, st = sample_step(
      model,
      params,
      state,
      logits,
      key,
      make_sampling(1.0),
      max_step_tokens=S,
      delimiter_ids=(),
      stop_ids=(),
    )
    _, score = scorer.score(None, None, st, jnp.ones_like(lengths_N, bool))
    return st.tokens, st.length, score

  return step


def run_reprefill(step_fn, params, prompt, N, K, S, key, rng):
  T = len(prompt) + K * S
  texts = np.zeros((N, T), np.int32)
  texts[:, : len(prompt)] = prompt
  lengths = np.full((N,), len(prompt), np.int32)
  for k in range(K):
    key, sub = jax.random.split(key)
    toks, lens, score = jax.device_get(
      step_fn(params, jnp.asarray(texts), jnp.asarray(lengths), sub)
    )
    for i in range(N):
      texts[i, lengths[i] : lengths[i] + lens[i]] = toks[i, : lens[i]]
    lengths = lengths + lens
    r = np.clip(score.astype(np.float64), 1e-6, 1 - 1e-6)
    logw = np.log(r) - np.log1p(-r)
    w = np.exp(logw - logw.max())
    anc = rng.choice(N, size=N, p=w / w.sum())
    texts, lengths = texts[anc], lengths[anc]
  return texts, lengths


def _write_json(cfg, rows, complete: bool) -> str:
  os.makedirs(FLAGS.workdir, exist_ok=True)
  path = os.path.join(FLAGS.workdir, workdir.RESULTS_FILE)
  workdir.write_json_atomic(
    path,
    dict(
      backend=jax.default_backend(),
      d_model=cfg.d_model,
      layers=cfg.n_layers,
      vocab=cfg.vocab_size,
      rows=rows,
      complete=complete,
    ),
    indent=1,
  )
  return path


def main(argv):
  del argv
  distributed.single_process(
    "experiments.bench_search",
    (
      "a benchmark times one process's devices; several processes would not make "
      "one measurement"
    ),
  )
  cfg, runs = validate_flags()
  path = run_smollm2(runs) if FLAGS.model == "smollm2" else run(cfg, runs)
  print(f"wrote {path}")


def run(cfg, runs) -> str:
  """Time every (N, PFConfig) of `runs`, writing the JSON after each row;
  print the table; returns the JSON's path."""
  K, S = FLAGS.steps, FLAGS.step_tokens
  params = init_params(cfg, jax.random.key(FLAGS.seed))
  model = Transformer(cfg)
  rng = np.random.default_rng(FLAGS.seed)
  prompt = [int(x) for x in rng.integers(3, FLAGS.vocab, FLAGS.prompt_len)]
  rows = []
  for N, pf_cfg in runs:
    key = jax.random.key(N)

    def pf():
      r, comp = run_particle_filter(
        model, params, ConfidenceScorer(), None, [prompt], key, pf_cfg
      )
      jax.block_until_ready(r.tokens)
      return r, comp

    def plain():  # prompt prefilled once and forked, as in the particle filter
      out = generate(
        model,
        params,
        [prompt],
        key,
        K * S,
        cache_size=pf_cfg.min_cache_size(bucket_length(FLAGS.prompt_len)),
        num_samples=N,
      )
      jax.block_until_ready(out.tokens)
      return out

    r, comp = pf()  # warm-up (compile)
    out = plain()
    t_pf, _ = workdir.median_time(pf, FLAGS.repeats)
    t_plain, _ = workdir.median_time(plain, FLAGS.repeats)
    row = dict(
      N=N,
      steps=K,
      step_tokens=S,
      pf_s=t_pf,
      sample_s=t_plain,
      pf_over_sample=t_pf / t_plain,
      pf_tokens=float(comp.generated_tokens),
      sample_tokens=float(np.asarray(out.lengths).sum()),
      pf_steps_run=int(r.steps_run),
      pf_flops=comp.flops,
    )
    if FLAGS.reprefill:
      step_fn = make_reprefill_step(model, S)
      reprefill = lambda: run_reprefill(step_fn, params, prompt, N, K, S, key, rng)
      reprefill()  # warm-up
      t_re, _ = workdir.median_time(reprefill, FLAGS.repeats)
      row.update(reprefill_s=t_re, speedup_vs_reprefill=t_re / t_pf)
    rows.append(row)
    _write_json(cfg, rows, complete=False)
    workdir.progress(str(row))

  hdr = f"{'N':>5} {'pf s':>8} {'sample s':>9} {'pf/sample':>10} {'reprefill s':>12} {'speed-up':>9}"
  print(
    f"\nmodel: {cfg.n_layers} layers d={cfg.d_model} V={cfg.vocab_size}; "
    f"K={K} steps x S={S} tokens; backend {jax.default_backend()}"
  )
  print(hdr)
  for r in rows:
    print(
      f"{r['N']:>5} {r['pf_s']:>8.3f} {r['sample_s']:>9.3f} "
      f"{r['pf_over_sample']:>10.2f} {r.get('reprefill_s', float('nan')):>12.3f} "
      f"{r.get('speedup_vs_reprefill', float('nan')):>9.1f}"
    )
  return _write_json(cfg, rows, complete=True)


def _timed(fn, repeats: int) -> tuple:
  """(median wall s, median process CPU s) of fn() over `repeats` runs."""
  wall, cpu = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return float(np.median(wall)), float(np.median(cpu))


def _smollm2_pf(runs):
  """The SmolLM2 search case's model, prompt and one PF closure per N."""
  from experiments import sweep_tasks
  from experiments.tasks import gsm8k

  cfg, params, tok = workdir.load_pretrained(log=workdir.progress)
  prompt = workdir.chat_prompts(tok, [gsm8k.load_original()[FLAGS.problem]])[0]
  newline = sweep_tasks.newline_ids(workdir.SMOLLM2)
  model = Transformer(cfg)
  out = []
  for N, c in runs:
    c = dataclasses.replace(
      c, delimiter_ids=newline, stop_ids=(tok.eos_id,), allow_no_stop=False
    )

    def pf(c=c, N=N):
      r, comp = run_particle_filter(
        model, params, ConfidenceScorer(), None, [prompt], jax.random.key(N), c
      )
      jax.block_until_ready(r.tokens)
      return r, comp

    out.append((N, pf))
  return cfg, params, prompt, out


def run_smollm2(runs) -> str:
  """The SmolLM2 PF case (module doc) per particle count; the JSON path."""
  cfg, params, prompt, pfs = _smollm2_pf(runs)
  hf = None
  if FLAGS.hf:
    hf = workdir.load_hf_pretrained()
  rows = []
  for N, pf in pfs:
    _, comp = pf()  # warm-up (compile)
    T = int(np.ceil(comp.generated_tokens / N))
    pf_s, pf_cpu = _timed(pf, FLAGS.repeats)

    def ours(T=T, N=N):
      out = generate(
        Transformer(cfg), params, [prompt], jax.random.key(1), T, num_samples=N
      )
      jax.block_until_ready(out.tokens)

    ours()  # warm-up
    row = dict(N=N, tokens_per_particle=T, pf_s=pf_s, pf_cpu_s=pf_cpu)
    row.update(
      generated_tokens=comp.generated_tokens, executed_tokens=comp.executed_tokens
    )
    row["sample_ours_s"], row["sample_ours_cpu_s"] = _timed(ours, FLAGS.repeats)
    if hf is not None:
      row["sample_hf_s"], row["sample_hf_cpu_s"] = _timed(
        lambda: _hf_sample(hf, prompt, N, T), FLAGS.repeats
      )
      row["pf_cpu_over_hf_cpu"] = pf_cpu / row["sample_hf_cpu_s"]
    rows.append(row)
    _write_json(cfg, rows, complete=False)
    workdir.progress(str(row))
  return _write_json(cfg, rows, complete=True)


def _hf_sample(hf, prompt, N, T):
  """transformers' plain sampling: N rows of the prompt, T tokens each."""
  import torch

  workdir.hf_sample(hf, torch.tensor([prompt] * N, dtype=torch.long), T)


if __name__ == "__main__":
  distributed.define_flags()
  app.run(main)
