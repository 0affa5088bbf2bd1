"""Supervised training of a small character-level policy on `arith` problems.

  python -m experiments.train_policy --config=configs/arith_policy.py \
      [--config.train.steps=200] [--workdir=results/arith/policy]

Each step draws fresh problems from a generator seeded by (seed, step) (held-out
evaluation problems are never trained on), packs BOS + prompt + solution + EOS
texts into fixed-length rows and trains on the solution tokens only. A
checkpoint (params, optimiser state, step, rng) is written every
`train.checkpoint_every` steps; rerunning the same command after an
interruption resumes from the latest one and ends with identical parameters.

Writes to --workdir: `checkpoints/` (train states), `policy/` (final params),
`model_config.json`, `config.json`, `metrics.json` (greedy accuracy, pass@1,
pass@k / coverage up to `eval.final_samples` samples, wall times).

Before anything is built the config is checked (`validate_policy_config`),
--workdir is locked against a second run and its settings.json must match
every field but `NOT_PINNED` (experiments/workdir.py), so a resume never
continues checkpoints trained with another configuration.

One process only (training is not data-parallel across processes: each process
would train its own copy, and its checkpoints are written by one process): the
multi-host flags of experiments/distributed.py are accepted; a multi-process run
or --mesh is refused with that reason.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import app, flags

from algorithms.estimators import pass_at_k
from experiments import config_utils, distributed
from experiments import workdir as wd
from experiments.tasks import arith
from jaxllm import checkpoint, train
from jaxllm.config import ModelConfig
from jaxllm.decoding import Transformer
from jaxllm.generate import generate
from jaxllm.params import init_params
from jaxllm.sampling import make_sampling

DEFAULT_CONFIG = config_utils.config_path("arith_policy.py")

EVAL_SEED_OFFSET = 1_000_003  # held-out problems: generate(seed + offset)
TOK = arith.TOKENIZER
# Fields the trained parameters do not depend on (logs, checkpoint files, and
# the final report, which every run recomputes); every other field is pinned.
# eval.n_problems / final_problems / final_sample_problems stay pinned: they
# choose the held-out questions excluded from training.
NOT_PINNED = (
  "train.log_every",
  "train.checkpoint_every",
  "train.keep_checkpoints",
  "eval.every",
  "eval.max_new_tokens",
  "eval.final_samples",
)
RESULT_FILES = ("checkpoints", "policy", "model_config.json")


def task_kwargs(config) -> dict:
  t = config.task
  return dict(
    n_steps=config_utils.as_tuple(t.n_steps),
    n_digits=t.n_digits,
    mul_digits=t.mul_digits,
    ops=tuple(t.ops),
  )


def model_config(config) -> ModelConfig:
  return ModelConfig(vocab_size=TOK.vocab_size, **config.model.to_dict())


def make_optimizer(section):
  """The optax optimizer of a training config section (`learning_rate`,
  `warmup_steps`, `steps`, `end_lr_ratio`, `weight_decay`, `clip_norm`):
  the policy's, the reward models' and the generative verifier's."""
  optimizer, _ = train.make_optimizer(
    section.learning_rate,
    warmup_steps=section.warmup_steps,
    total_steps=section.steps,
    end_lr_ratio=section.end_lr_ratio,
    weight_decay=section.weight_decay,
    clip_norm=section.clip_norm,
  )
  return optimizer


def shuffled_batch_fn(
  examples,
  seed: int,
  seq_len: int,
  batch_size: int,
  vocab_size: int,
  fields=("loss_mask",),
):
  """batch_fn(step) for a fixed example list: a permutation drawn from (seed,
  step), packed first-fit into `batch_size` rows of `seq_len` tokens (a pure
  function of step, so a resumed run sees the same batches)."""

  def batch_fn(step):
    order = train.step_rng(seed, step).permutation(len(examples))
    batch, _ = train.pack_stream(
      (examples[i] for i in order),
      seq_len,
      batch_size,
      fields=fields,
      vocab_size=vocab_size,
    )
    return batch

  return batch_fn


def heldout_problems(config, n: int) -> list[arith.ArithProblem]:
  return arith.generate(n, config.seed + EVAL_SEED_OFFSET, **task_kwargs(config))


def example(p: arith.ArithProblem):
  """(tokens, loss_mask): BOS + prompt (no loss), solution + EOS (loss)."""
  prompt = TOK.encode(p.prompt, add_bos=True)
  return train.lm_example(prompt, TOK.encode(p.solution, add_eos=True))


def make_batch_fn(config, exclude: set[str]):
  """batch_fn(step): packed rows of fresh problems, a pure function of step."""
  kw = task_kwargs(config)
  rows, length = config.train.batch_size, config.train.seq_len

  def examples(step):
    chunk = 0
    while True:  # problems from (seed, step, chunk); skip held-out questions
      seed = int(np.random.default_rng([config.seed, step, chunk]).integers(2**62))
      for p in arith.generate(64, seed, **kw):
        if p.question not in exclude:
          yield example(p)
      chunk += 1

  def batch_fn(step):
    batch, _ = train.pack_stream(
      examples(step), length, rows, vocab_size=TOK.vocab_size
    )
    return batch

  return batch_fn


def prompts_of(problems):
  return [TOK.encode(p.prompt, add_bos=True) for p in problems]


def sample_tokens(
  cfg,
  params,
  problems,
  key,
  n_samples: int,
  temperature: float,
  max_new_tokens: int,
  rows_per_call: int = 1024,
):
  """n_samples continuations per problem (rows problem-major): generated
  tokens [P*N, max_new] (pad after EOS), lengths [P*N] (EOS included) and the
  policy's log-probs [P*N, max_new]. Calls use a fixed row count, so there is
  one compilation per shape.

  Each copy of a prompt is prefilled (not `generate(num_samples=)`): prefilling
  P rows instead of P * N changes the float32 rounding (log-probs differ by
  ~1e-6, and tokens are then not guaranteed identical), so forking would change
  the samples and verifier data of an existing seed."""
  model = Transformer(cfg)
  prompts = [pr for pr in prompts_of(problems) for _ in range(n_samples)]
  toks, lens, lps = [], [], []
  for i in range(0, len(prompts), rows_per_call):
    chunk = prompts[i : i + rows_per_call]
    if len(chunk) < rows_per_call and len(prompts) > rows_per_call:
      chunk = chunk + [chunk[-1]] * (rows_per_call - len(chunk))  # same shape
    out = generate(
      model,
      params,
      chunk,
      jax.random.fold_in(key, i),
      max_new_tokens,
      make_sampling(temperature),
      stop_tokens=[TOK.eos_id],
      pad_id=TOK.pad_id,
    )
    toks.append(np.asarray(out.tokens))
    lens.append(np.asarray(out.lengths))
    lps.append(np.asarray(out.logprobs))
  n = len(prompts)
  return (np.concatenate(toks)[:n], np.concatenate(lens)[:n], np.concatenate(lps)[:n])


def sample_solutions(
  cfg, params, problems, key, n_samples: int, temperature: float, max_new_tokens: int
):
  """n_samples solutions per problem: (texts [P][N], correct bool [P, N])."""
  toks, _, _ = sample_tokens(
    cfg, params, problems, key, n_samples, temperature, max_new_tokens
  )
  texts = [TOK.decode(t) for t in toks]
  texts = [texts[j * n_samples : (j + 1) * n_samples] for j in range(len(problems))]
  correct = np.array(
    [[arith.check_answer(p, t) for t in ts] for p, ts in zip(problems, texts)], bool
  )
  return texts, correct


def greedy_accuracy(cfg, params, problems, max_new_tokens: int) -> float:
  _, correct = sample_solutions(
    cfg, params, problems, jax.random.PRNGKey(0), 1, 0.0, max_new_tokens
  )
  return float(correct.mean())


def final_report(cfg, params, config) -> dict:
  e = config.eval
  t0 = time.perf_counter()
  probs = heldout_problems(config, max(e.final_problems, e.final_sample_problems))
  greedy = greedy_accuracy(cfg, params, probs[: e.final_problems], e.max_new_tokens)
  t1 = time.perf_counter()
  _, correct = sample_solutions(
    cfg,
    params,
    probs[: e.final_sample_problems],
    jax.random.PRNGKey(config.seed + 7),
    e.final_samples,
    1.0,
    e.max_new_tokens,
  )
  n = e.final_samples
  ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= n]
  c = correct.sum(1)
  curve = pass_at_k(np.full_like(c, n), c, ks).mean(0)
  return {
    "greedy_accuracy": greedy,
    "greedy_problems": e.final_problems,
    "pass_at_1": float(correct.mean()),
    "coverage": {str(k): float(v) for k, v in zip(ks, curve)},
    f"coverage_at_{n}": float((c > 0).mean()),
    "sample_problems": e.final_sample_problems,
    "samples": n,
    "greedy_eval_s": t1 - t0,
    "sample_eval_s": time.perf_counter() - t1,
  }


def validate_policy_config(config) -> None:
  """Check the training config before anything is built: the schema of
  configs/arith_policy.py, value ranges, the task knobs, the model shape and
  that every training text fits train.seq_len.

  Raises:
    ValueError: naming the offending field.
  """
  config_utils.check(config, config_utils.load_config_file(DEFAULT_CONFIG))
  config_utils.positive(
    config,
    "model.d_model",
    "model.n_layers",
    "model.n_heads",
    "model.n_kv_heads",
    "model.d_ff",
    "model.max_seq_len",
    "train.steps",
    "train.batch_size",
    "train.seq_len",
    "train.learning_rate",
    "train.accum_steps",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "eval.n_problems",
    "eval.max_new_tokens",
    "eval.final_problems",
    "eval.final_samples",
    "eval.final_sample_problems",
  )
  config_utils.non_negative(
    config,
    "seed",
    "train.warmup_steps",
    "train.end_lr_ratio",
    "train.weight_decay",
    "train.clip_norm",
    "train.log_every",
    "eval.every",
  )
  config_utils.one_of(config, "train.compute_dtype", ("float32", "bfloat16"))
  if config.train.batch_size % config.train.accum_steps:
    raise ValueError(
      f"config.train.batch_size={config.train.batch_size} is "
      f"not divisible by config.train.accum_steps="
      f"{config.train.accum_steps}"
    )
  try:
    heldout_problems(config, 0)  # the task knobs
  except ValueError as e:
    raise ValueError(f"config.task: {e}") from None
  try:
    model_config(config)
  except (ValueError, TypeError) as e:
    raise ValueError(f"config.model: {e}") from None
  longest = max(
    len(example(p)[0])
    for p in arith.generate(2000, config.seed + 17, **task_kwargs(config))
  )
  if longest > config.train.seq_len:
    raise ValueError(
      f"config.train.seq_len={config.train.seq_len} is shorter "
      f"than a training text ({longest} tokens)"
    )


def policy_settings(config) -> dict:
  """The settings pinned in the workdir (every field but NOT_PINNED)."""
  return config_utils.flatten(config, exclude=NOT_PINNED)


def pin_workdir(config, workdir: str, check_only: bool = False) -> None:
  """Record / check the training settings in `workdir`.

  Raises:
    ValueError: it holds checkpoints or a policy trained with other settings.
  """
  wd.pin_settings(
    workdir,
    policy_settings(config),
    results=RESULT_FILES,
    legacy=wd.legacy_config_json(policy_settings),
    check_only=check_only,
  )


def check_run(config, workdir: str) -> None:
  """The dry run of `run`: `validate_policy_config`, and the workdir's pinned
  settings. Writes nothing.

  Raises:
    ValueError: naming the offending field(s).
  """
  validate_policy_config(config)
  pin_workdir(config, workdir, check_only=True)


def run(config, workdir: str) -> dict:
  """Train (or resume) the policy into `workdir`; returns the final report.

  Raises:
    ValueError: a bad config or a workdir trained with other settings
      (naming the fields), before anything is built.
    experiments.workdir.WorkdirBusy: another run holds the workdir.
  """
  validate_policy_config(config)
  with wd.lock(workdir):
    pin_workdir(config, workdir)
    return _run_locked(config, workdir)


def _run_locked(config, workdir: str) -> dict:
  t_start = time.perf_counter()
  cfg = model_config(config)
  tc = config.train

  eval_probs = heldout_problems(
    config,
    max(
      config.eval.n_problems,
      config.eval.final_problems,
      config.eval.final_sample_problems,
    ),
  )
  exclude = {p.question for p in eval_probs}

  optimizer = make_optimizer(tc)
  compute = None if tc.compute_dtype == "float32" else tc.compute_dtype
  step_fn = train.make_train_step(
    train.make_lm_loss_fn(cfg, compute), optimizer, accum_steps=tc.accum_steps
  )
  key = jax.random.PRNGKey(config.seed)
  pkey, tkey = jax.random.split(key)
  state = train.init_train_state(init_params(cfg, pkey), optimizer, tkey)
  wd.progress(f"policy: {train.num_params(state.params):,} params, {cfg}")

  ckpt = checkpoint.CheckpointManager(
    os.path.join(workdir, "checkpoints"),
    save_every=tc.checkpoint_every,
    keep=tc.keep_checkpoints,
  )
  latest = ckpt.latest_step()
  if latest is not None:
    state = train.restore_train_state(ckpt, cfg, state, latest)
    wd.progress(f"resumed from checkpoint at step {latest}")

  n_eval = config.eval.n_problems
  eval_fn = lambda st: {
    "greedy_acc": greedy_accuracy(
      cfg, st.params, eval_probs[:n_eval], config.eval.max_new_tokens
    )
  }
  tokens_fn = lambda b: int(b["loss_mask"].sum())  # solution tokens trained on
  t_train = time.perf_counter()
  state, history = train.train_loop(
    state,
    step_fn,
    make_batch_fn(config, exclude),
    tc.steps,
    checkpoint_manager=ckpt,
    log_every=tc.log_every,
    log_fn=wd.progress,
    eval_every=config.eval.every,
    eval_fn=eval_fn if config.eval.every else None,
    tokens_fn=tokens_fn,
  )
  train_s = time.perf_counter() - t_train

  checkpoint.save_params(os.path.join(workdir, "policy"), state.params, overwrite=True)
  checkpoint.save_model_config(os.path.join(workdir, checkpoint.MODEL_CONFIG_FILE), cfg)
  wd.save_config(workdir, config)  # read back by workdir.load_policy

  report = final_report(cfg, state.params, config)
  report.update(
    train_s=train_s,
    total_s=time.perf_counter() - t_start,
    steps=tc.steps,
    params=train.num_params(state.params),
    history=history,
  )
  wd.write_json_atomic(os.path.join(workdir, "metrics.json"), report, indent=2)
  cov = report[f"coverage_at_{report['samples']}"]
  wd.progress(
    f"policy: greedy accuracy {report['greedy_accuracy']:.3f} "
    f"pass@1 {report['pass_at_1']:.3f} coverage@{report['samples']} "
    f"{cov:.3f} | train {train_s:.0f}s total "
    f"{report['total_s']:.0f}s"
  )
  return report


# Where it was defined before experiments/workdir.py held model loading
# (experiments/bench_speculative.py imports it from here).
load_policy = wd.load_policy


def main(argv):
  del argv
  distributed.single_process(
    "experiments.train_policy",
    (
      "training is not data-parallel across processes: each process would train its"
      " own copy, and its checkpoints are written by one process"
    ),
  )
  # every config / directory problem, before anything is built
  config = wd.config_from_flags(DEFAULT_CONFIG, check=check_run)
  wd.run_cli(run, config, flags.FLAGS.workdir)


if __name__ == "__main__":
  distributed.define_flags()
  wd.define_flags("results/arith/policy", DEFAULT_CONFIG)
  app.run(main)
