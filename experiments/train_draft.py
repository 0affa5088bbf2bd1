r"""Distil a small sub-vocabulary draft for SmolLM2-135M-Instruct (speculative decoding).

  python -m experiments.train_draft [--workdir=results/smollm2/draft] [--steps=300]

The draft (`algorithms.drafts.SubVocabDraft`) is the target's first `--n_layers`
layers + final norm, with a tied head over the `--vocab_subset` most frequent tokens
of the data (+ one "other" class), initialised from SmolLM2's own weights and trained
to match SmolLM2's next-token distribution. Stages (each cached in --workdir, so a
rerun skips what is done and a killed run resumes from its last finished stage):

  1. data: SmolLM2's temperature-1 answers to GSM8K variants of templates
     [0, --train_templates) in the chat template (`make gsm8k-data`); shards of
     --gen_batch prompts, written atomically.
  2. teacher: SmolLM2's top-`--topk` next-token probabilities at every answer
     position (the soft labels).
  3. train: AdamW on the soft-label cross-entropy (`drafts.distill_loss_fn`) over
     random windows of `--seq_len` tokens; only answer positions are trained.
  4. eval: on SmolLM2's answers to the ORIGINAL problems of the held-out templates
     [--train_templates, 100) (what bench_speculative times), the exact acceptance
     rate of one draft token at temperature 1, E[sum_x min(p(x), q(x))], and greedy
     agreement, before and after training.

Writes <workdir>/draft (algorithms.drafts.save_draft) and <workdir>/metrics.json.

The flags are checked (`validate_flags`) before the target is loaded, and
against the target's shape right after, before any stage runs. --workdir is
locked against a second run, and the flags the cached stages depend on
(`STAGE_FLAGS`) are pinned in its settings.json (experiments/workdir.py): a
rerun with other data flags is refused instead of training on the old data.
Its knobs are plain absl flags (no configs/ file): a one-off distillation.

One process only (training is not data-parallel across processes: each process
would train its own copy, and its checkpoints are written by one process): the
multi-host flags of experiments/distributed.py are accepted; a multi-process run
or --mesh is refused with that reason.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from algorithms import drafts
from experiments import distributed
from experiments import workdir as wd
from experiments.tasks import gsm8k
from jaxllm import train as train_lib
from jaxllm.decoding import Transformer
from jaxllm.model import forward
from jaxllm.params import count_params

FLAGS = flags.FLAGS
wd.define_flags("results/smollm2/draft")
flags.DEFINE_integer("n_layers", 2, "Target layers the draft starts from.")
flags.DEFINE_integer("vocab_subset", 8192, "Tokens the draft's head covers.")
flags.DEFINE_integer("train_templates", 80, "Templates [0, n) train; the rest eval.")
flags.DEFINE_integer("variants_per_template", 4, "Training prompts per template.")
flags.DEFINE_integer("max_new_tokens", 256, "Answer length cap when generating data.")
flags.DEFINE_integer("gen_batch", 64, "Prompts per generation call.")
flags.DEFINE_integer("topk", 32, "Teacher probabilities kept per position.")
flags.DEFINE_integer("steps", 300, "Training steps.")
flags.DEFINE_integer("batch_size", 8, "Windows per step.")
flags.DEFINE_integer("seq_len", 256, "Window length.")
flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.")
flags.DEFINE_integer("eval_problems", 20, "Held-out originals for the eval.")
flags.DEFINE_integer("seed", 0, "Seed.")

BUCKETS = wd.ANSWER_BUCKETS
# Flags the cached stages (data shards, teacher.npz, heldout.npz) depend on;
# the others (n_layers, vocab_subset, steps, ...) only change the training,
# which every run redoes from scratch.
STAGE_FLAGS = (
  "seed",
  "train_templates",
  "variants_per_template",
  "max_new_tokens",
  "gen_batch",
  "topk",
  "eval_problems",
)
STAGE_FILES = ("data", "teacher.npz", "heldout.npz")


def validate_flags(cfg=None) -> None:
  """Check the flags before anything expensive: ranges, and with the target's
  ModelConfig `cfg`, that the draft fits inside it.

  Raises:
    app.UsageError: naming the flag.
  """
  wd.flags_at_least(
    1,
    "n_layers",
    "vocab_subset",
    "variants_per_template",
    "max_new_tokens",
    "gen_batch",
    "topk",
    "steps",
    "batch_size",
    "seq_len",
    "eval_problems",
  )
  if not FLAGS.learning_rate > 0:
    raise app.UsageError(f"--learning_rate must be > 0, got {FLAGS.learning_rate}")
  wd.flags_at_least(0, "seed")
  if not 1 <= FLAGS.train_templates < gsm8k.N_TEMPLATES:
    raise app.UsageError(
      f"--train_templates must be in [1, {gsm8k.N_TEMPLATES})"
      f" (the rest are held out), got {FLAGS.train_templates}"
    )
  held = gsm8k.N_TEMPLATES - FLAGS.train_templates
  if FLAGS.eval_problems > held:
    raise app.UsageError(
      f"--eval_problems={FLAGS.eval_problems} exceeds the "
      f"{held} held-out templates (--train_templates="
      f"{FLAGS.train_templates})"
    )
  if cfg is not None:
    if FLAGS.n_layers > cfg.n_layers:
      raise app.UsageError(
        f"--n_layers={FLAGS.n_layers} exceeds the target's {cfg.n_layers} layers"
      )
    if FLAGS.vocab_subset >= cfg.vocab_size:
      raise app.UsageError(
        f"--vocab_subset={FLAGS.vocab_subset} must be "
        f"smaller than the target's vocabulary "
        f"({cfg.vocab_size})"
      )
    if FLAGS.topk > cfg.vocab_size:
      raise app.UsageError(
        f"--topk={FLAGS.topk} exceeds the vocabulary ({cfg.vocab_size})"
      )


chat_prompts = wd.chat_prompts  # shared with experiments/soft.py (SmolLM2)
ragged, save_pairs, load_pairs = wd.ragged, wd.save_pairs, wd.load_pairs


def heldout_problems(n: int):
  """The original GSM8K problems of the held-out templates (bench_speculative's)."""
  orig = gsm8k.load_original()
  return [p for i, p in enumerate(orig) if i >= FLAGS.train_templates][:n]


def sample_answers(model, params, tok, prompts, seed):
  """SmolLM2 temperature-1 answers: list of (prompt ids, answer ids incl. EOS)
  (`workdir.sample_answers` with --max_new_tokens and --gen_batch)."""
  return wd.sample_answers(
    model, params, tok, prompts, seed, FLAGS.max_new_tokens, FLAGS.gen_batch, BUCKETS
  )


def stage_data(model, params, tok):
  """Stage 1: shards of (prompt, answer) pairs for the training templates."""
  os.makedirs(os.path.join(FLAGS.workdir, "data"), exist_ok=True)
  problems = gsm8k.generate_variants(
    FLAGS.variants_per_template,
    seed=FLAGS.seed,
    template_ids=range(FLAGS.train_templates),
  )
  prompts = chat_prompts(tok, problems)
  pairs = []
  for s, i in enumerate(range(0, len(prompts), FLAGS.gen_batch)):
    path = os.path.join(FLAGS.workdir, "data", f"shard{s:03d}.npz")
    if not os.path.exists(path):
      t0 = time.perf_counter()
      got = sample_answers(
        model, params, tok, prompts[i : i + FLAGS.gen_batch], FLAGS.seed * 1000 + s
      )
      save_pairs(path, got)
      n_tok = sum(len(a) for _, a in got)
      wd.progress(
        f"data shard {s}: {len(got)} answers, {n_tok} tokens, "
        f"{time.perf_counter() - t0:.0f} s"
      )
    pairs += load_pairs(path)
  return pairs


def teacher_topk(model, params, seqs, prompt_lens, k):
  """Per sequence: (ids [n, k], p [n, k]) of the target's next-token distribution at
  positions prompt_len - 1 .. len - 2 (the ones that predict answer tokens)."""
  cfg = model.cfg

  @jax.jit
  def topk(params, tokens_BxT):
    logits, _, _ = forward(params, tokens_BxT, cfg)
    p, ids = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), k)
    return ids, p

  out = []
  for s, pl in zip(seqs, prompt_lens):
    T = next(b for b in BUCKETS + (cfg.max_seq_len,) if b >= len(s))
    ids, p = topk(params, jnp.asarray(np.pad(s, (0, T - len(s)))[None]))
    sl = slice(int(pl) - 1, len(s) - 1)
    out.append((np.asarray(ids[0, sl], np.int32), np.asarray(p[0, sl], np.float16)))
  return out


def stage_teacher(model, params, pairs):
  path = os.path.join(FLAGS.workdir, "teacher.npz")
  if not os.path.exists(path):
    t0 = time.perf_counter()
    tk = teacher_topk(
      model, params, [s for s, _ in pairs], [p for _, p in pairs], FLAGS.topk
    )
    wd.save_npz_atomic(
      path, ids=ragged([a for a, _ in tk]), p=ragged([b for _, b in tk])
    )
    wd.progress(
      f"teacher top-{FLAGS.topk}: {len(tk)} sequences, {time.perf_counter() - t0:.0f} s"
    )
  z = np.load(path, allow_pickle=True)  # our own file
  return list(zip(z["ids"], z["p"]))


def make_batch_fn(pairs, teacher):
  """batch_fn(step): random windows, deterministic in the step (resumable)."""
  L, k = FLAGS.seq_len, FLAGS.topk

  def batch_fn(step):
    rng = train_lib.step_rng(FLAGS.seed, step)
    tokens = np.zeros((FLAGS.batch_size, L), np.int32)
    ids = np.zeros((FLAGS.batch_size, L, k), np.int32)
    p = np.zeros((FLAGS.batch_size, L, k), np.float32)
    w = np.zeros((FLAGS.batch_size, L), np.float32)
    for b in range(FLAGS.batch_size):
      i = int(rng.integers(len(pairs)))
      s, pl = pairs[i]
      pl = int(pl)
      n_ans = len(s) - pl
      # window start: somewhere from 64 tokens before the answer to its middle
      lo = max(0, pl - 64)
      hi = max(lo, min(pl + n_ans // 2, len(s) - 2))
      o = int(rng.integers(lo, hi + 1))
      seg = s[o : o + L]
      tokens[b, : len(seg)] = seg
      # position t (window) = o + t (sequence) predicts s[o+t+1]; trained iff that
      # is an answer token, i.e. o + t >= pl - 1; teacher row = o + t - (pl - 1).
      t = np.arange(len(seg))
      r = o + t - (pl - 1)
      ok = (r >= 0) & (o + t + 1 < len(s))
      ids[b, t[ok]] = teacher[i][0][r[ok]]
      p[b, t[ok]] = teacher[i][1][r[ok]]
      w[b, t[ok]] = 1.0
    return dict(tokens=tokens, topk_ids=ids, topk_p=p, weight=w)

  return batch_fn


def acceptance(target_cfg, tparams, draft, dparams, pairs):
  """Exact one-token acceptance at temperature 1, E_pos[sum_x min(p, q)], and greedy
  agreement, over the answer positions of `pairs`."""

  @jax.jit
  def both(tparams, dparams, tokens_BxT):
    lp, _, _ = forward(tparams, tokens_BxT, target_cfg)
    lq, _, _ = forward(dparams.inner, dparams.to_sub_V[tokens_BxT], draft.cfg)
    lq = draft.full_logits(dparams, lq)
    p, q = jax.nn.softmax(lp, -1), jax.nn.softmax(lq, -1)
    return jnp.minimum(p, q).sum(-1), jnp.argmax(lp, -1) == jnp.argmax(lq, -1)

  acc, agree = [], []
  for s, pl in pairs:
    T = next(b for b in BUCKETS + (target_cfg.max_seq_len,) if b >= len(s))
    a, g = both(tparams, dparams, jnp.asarray(np.pad(s, (0, T - len(s)))[None]))
    sl = slice(int(pl) - 1, len(s) - 1)
    acc.append(np.asarray(a[0, sl]))
    agree.append(np.asarray(g[0, sl]))
  return float(np.concatenate(acc).mean()), float(np.concatenate(agree).mean())


def main(argv):
  del argv
  distributed.single_process(
    "experiments.train_draft",
    (
      "training is not data-parallel across processes: each process would train its"
      " own copy, and its checkpoints are written by one process"
    ),
  )
  validate_flags()
  settings = {f"--{n}": getattr(FLAGS, n) for n in STAGE_FLAGS}
  try:  # a workdir made with other data flags: refused before loading
    wd.pin_settings(FLAGS.workdir, settings, results=STAGE_FILES, check_only=True)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  wd.run_cli(run, settings)


def run(settings: dict):
  """Every stage, resuming what --workdir already holds, under its lock and
  with its `settings` pinned."""
  with wd.lock(FLAGS.workdir):
    wd.pin_settings(FLAGS.workdir, settings, results=STAGE_FILES)
    _run_locked()


def _run_locked():
  t_start = time.perf_counter()
  cfg, params, tok = wd.load_pretrained(log=wd.progress)
  validate_flags(cfg)  # before any stage
  model = Transformer(cfg)
  pairs = stage_data(model, params, tok)
  n_ans = sum(len(s) - int(pl) for s, pl in pairs)
  wd.progress(f"data: {len(pairs)} answers, {n_ans} answer tokens")
  teacher = stage_teacher(model, params, pairs)

  # Rank tokens by how often they appear (inputs) plus the target's expected count
  # of them as next token (sum of its top-k probabilities), so the subset covers
  # what the target would say, not only what it said in this sample.
  subset = drafts.frequent_tokens(
    [s for s, _ in pairs] + [i for i, _ in teacher],
    FLAGS.vocab_subset,
    always=[tok.eos_id],
    weights=[np.ones(len(s)) for s, _ in pairs] + [p for _, p in teacher],
  )
  ans_tok = np.concatenate([s[int(pl) :] for s, pl in pairs])
  cover = float(np.isin(ans_tok, subset).mean())
  draft, dparams = drafts.init_sub_vocab_draft(cfg, params, subset, FLAGS.n_layers)
  wd.progress(
    f"draft: {FLAGS.n_layers} layers, head over {FLAGS.vocab_subset} "
    f"tokens (covering {cover:.2%} of answer tokens), "
    f"{count_params(dparams.inner):,} params vs target "
    f"{count_params(params):,}"
  )

  held = heldout_problems(FLAGS.eval_problems)
  held_path = os.path.join(FLAGS.workdir, "heldout.npz")
  if not os.path.exists(held_path):
    got = sample_answers(model, params, tok, chat_prompts(tok, held), 10**6)
    save_pairs(held_path, got)
  held_pairs = load_pairs(held_path)
  acc0, agree0 = acceptance(cfg, params, draft, dparams, held_pairs)
  wd.progress(f"before training: acceptance {acc0:.3f}, greedy agreement {agree0:.3f}")

  opt, _ = train_lib.make_optimizer(
    FLAGS.learning_rate, warmup_steps=20, total_steps=FLAGS.steps, weight_decay=0.01
  )
  state = train_lib.init_train_state(dparams.inner, opt, jax.random.key(FLAGS.seed))
  step = train_lib.make_train_step(drafts.distill_loss_fn(draft, dparams.to_sub_V), opt)
  t0 = time.perf_counter()
  state, hist = train_lib.train_loop(
    state,
    step,
    make_batch_fn(pairs, teacher),
    FLAGS.steps,
    log_every=max(1, FLAGS.steps // 10),
    tokens_fn=lambda b: int(b["weight"].sum()),
  )
  train_s = time.perf_counter() - t0
  dparams = drafts.SubVocabParams(state.params, dparams.to_sub_V, dparams.to_full_K)
  acc1, agree1 = acceptance(cfg, params, draft, dparams, held_pairs)
  wd.progress(
    f"after training: acceptance {acc1:.3f}, greedy agreement "
    f"{agree1:.3f} ({train_s:.0f} s training)"
  )
  metrics = dict(
    n_layers=FLAGS.n_layers,
    vocab_subset=FLAGS.vocab_subset,
    answer_token_coverage=cover,
    train_answers=len(pairs),
    train_answer_tokens=int(n_ans),
    steps=FLAGS.steps,
    draft_params=count_params(dparams.inner),
    target_params=count_params(params),
    acceptance_before=acc0,
    greedy_agreement_before=agree0,
    acceptance_after=acc1,
    greedy_agreement_after=agree1,
    heldout_answers=len(held_pairs),
    train_seconds=train_s,
    history=hist,
    total_seconds=time.perf_counter() - t_start,
  )
  drafts.save_draft(
    os.path.join(FLAGS.workdir, "draft"),
    draft,
    dparams,
    meta=dict(
      target=wd.SMOLLM2,
      train_templates=FLAGS.train_templates,
      **{k: v for k, v in metrics.items() if k != "history"},
    ),
  )
  wd.write_json_atomic(os.path.join(FLAGS.workdir, "metrics.json"), metrics, indent=1)
  print(
    f"wrote {FLAGS.workdir}/draft and metrics.json ({metrics['total_seconds']:.0f} s)"
  )


if __name__ == "__main__":
  distributed.define_flags()
  app.run(main)
