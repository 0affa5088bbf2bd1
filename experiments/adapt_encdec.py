"""T5Gemma-style adaptation on arith, compared at matched inference compute.

  python -m experiments.adapt_encdec --config=configs/adapt_arith.py \
      [--config.finetune.steps=300] [--workdir=results/adapt_arith]

1. Two decoder-only arith policies: `small` (configs/arith_policy.py's shape; or
   the policy in `pretrain.small_policy_dir`) and `big` (the unbalanced
   encoder's parent), pretrained with experiments/train_policy.py's batches
   (fresh problems per step, packed rows, loss on solution tokens; held-out
   problems excluded).
2. Two encoder-decoders (algorithms/encdec_adaptation.py): `small-small`
   (balanced: encoder and decoder from `small`, cross-attention from
   self-attention) and `big-small` (unbalanced: encoder from `big`, decoder from
   `small`, cross-attention random; its first `finetune.cross_warmup_steps` steps
   train only cross-attention). The encoder reads BOS + prompt, the decoder
   starts from BOS (the token the parent saw first) and predicts solution + EOS.
3. Four fine-tunes for `finetune.steps` steps on the same problems per step: the
   two decoder-only models (next-token loss on the solution) and the two
   encoder-decoders (objective `prefix_lm`: cross-entropy on the solution, mixed
   with KD from the encoder's parent at `finetune.kd_weight`; or `ul2`: each row
   a uniformly drawn R / S / X denoiser, S being the prompt -> solution split,
   with sentinel and mode ids added to the vocabulary, the eval prompts then
   starting with [S]; no KD, `finetune.kd_weight` is ignored: the decoder-only
   teacher cannot score span-corruption targets).
4. Each fine-tuned model on `eval.n_problems` held-out problems: greedy
   accuracy, and self-consistency (`algorithms.methods.run("majority")`) at
   each budget in `eval.budgets`, with the inference FLOPs per problem of the
   run's `Compute` record (jaxllm.flops: encoder, cross K/V and decoder tokens
   for the encoder-decoders).

Writes to --workdir: `config.json`, `results.json` (rows: model, arch, method,
budget, accuracy, flops_per_problem, generated_per_problem, params; the
histories and timings), `accuracy_vs_flops.png`, and prints the table. Not
resumable (a rerun recomputes everything); the workdir is locked against a
second concurrent run.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from algorithms import encdec_adaptation as ada
from algorithms import methods
from experiments import analysis, config_utils
from experiments import train_policy as tp
from experiments import workdir as wd
from experiments.scaling import dense_answer_ids
from experiments.tasks import arith
from jaxllm import train
from jaxllm.config import ModelConfig
from jaxllm.decoding import Transformer
from jaxllm.encdec_decoding import EncDecTransformer
from jaxllm.params import init_params

DEFAULT_CONFIG = config_utils.config_path("adapt_arith.py")
TOK = arith.TOKENIZER
OBJECTIVES = ("prefix_lm", "ul2")
OPT_FIELDS = (
  "learning_rate",
  "warmup_steps",
  "end_lr_ratio",
  "weight_decay",
  "clip_norm",
)
FT_SEED_OFFSET = 5_000_011  # fine-tuning problems: (seed + offset, step, chunk)


# ----------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------


def model_config(section) -> ModelConfig:
  """The ModelConfig of a `small` / `big` section (the char vocabulary)."""
  return ModelConfig(vocab_size=TOK.vocab_size, **section.to_dict())


def kd_weight(config) -> float:
  """The KD weight the encoder-decoder fine-tunes use: `finetune.kd_weight`
  for objective prefix_lm, 0 for ul2 (no KD: the decoder-only teacher cannot
  score span-corruption targets)."""
  ft = config.finetune
  return float(ft.kd_weight) if ft.objective == "prefix_lm" else 0.0


def _digits(n: int) -> int:
  return len(str(n))


def longest_prompt(config) -> int:
  """An upper bound on the tokens of BOS + prompt of any problem config.task
  can produce: "Q:" + the question (the first number, then per step the
  operator and operand, plus 2 parentheses for a `*` after a sum) + newline."""
  kw = tp.task_kwargs(config)
  _, hi = arith._range_of(kw["n_steps"], "n_steps")
  add = 1 + kw["n_digits"] if set(kw["ops"]) & {"+", "-"} else None
  mul = 1 + kw["mul_digits"] if "*" in kw["ops"] else None
  best = {False: kw["n_digits"]}  # question length by "last op was + / -"
  for _ in range(hi):
    nxt = {}
    for is_sum, n in best.items():
      if add is not None:
        nxt[True] = max(nxt.get(True, 0), n + add)
      if mul is not None:
        nxt[False] = max(nxt.get(False, 0), n + mul + 2 * is_sum)
    best = nxt
  return 1 + len(arith.PROMPT_PREFIX) + max(best.values()) + len(arith.DELIM)


def longest_text(config) -> int:
  """An upper bound on the tokens of BOS + prompt + solution + EOS (every
  fine-tuning sequence fits it: decoder-only texts, encoder inputs and
  decoder targets, span-corrupted ones included). The solution bound runs the
  largest value each step can reach (`+`: + 10**n_digits - 1, `*`: times
  10**mul_digits - 1; `-` never grows it)."""
  kw = tp.task_kwargs(config)
  _, hi = arith._range_of(kw["n_steps"], "n_steps")
  top, mul_top = 10 ** kw["n_digits"] - 1, 10 ** kw["mul_digits"] - 1
  add, mul = bool(set(kw["ops"]) & {"+", "-"}), "*" in kw["ops"]
  operand = max(top if add else 0, mul_top if mul else 0)
  v, n = top, 0
  for _ in range(hi):
    grown = max(v + top if "+" in kw["ops"] else v, v * mul_top if mul else v)
    n += _digits(v) + 1 + _digits(operand) + 1 + _digits(grown) + 1
    v = grown
  n += len(arith.ANSWER_PREFIX) + _digits(v)
  return longest_prompt(config) + n + 1


def _check_lengths(config) -> None:
  """Every sequence must fit the models' max_seq_len (before any training).

  Raises:
    ValueError: naming config.pretrain.seq_len, config.eval.max_new_tokens or
      the config.<small|big>.max_seq_len a fine-tuning text does not fit.
  """
  trained = ("big",) if config.pretrain.small_policy_dir else ("small", "big")
  for m in trained:
    if config.pretrain.seq_len > config[m].max_seq_len:
      raise ValueError(
        f"config.pretrain.seq_len={config.pretrain.seq_len} exceeds "
        f"config.{m}.max_seq_len={config[m].max_seq_len}"
      )
  text, prompt = longest_text(config), longest_prompt(config)
  new = config.eval.max_new_tokens
  for m in ("small", "big"):
    msl = config[m].max_seq_len
    if text > msl:
      raise ValueError(
        f"config.{m}.max_seq_len={msl} is shorter than the longest fine-tuning "
        f"text config.task can produce (up to {text} tokens)"
      )
    if prompt + new > msl:
      raise ValueError(
        f"config.eval.max_new_tokens={new} + the longest eval prompt ({prompt} "
        f"tokens) exceeds config.{m}.max_seq_len={msl}: use at most {msl - prompt}"
      )


def validate_adapt_config(config) -> None:
  """Check the config before anything is built.

  Raises:
    ValueError: naming the offending field.
  """
  config_utils.check(config, config_utils.load_config_file(DEFAULT_CONFIG))
  config_utils.positive(
    config,
    *(f"{m}.{f}" for m in ("small", "big") for f in ("d_model", "n_layers", "d_ff")),
    "pretrain.batch_size",
    "pretrain.seq_len",
    "pretrain.learning_rate",
    "finetune.steps",
    "finetune.batch_size",
    "finetune.learning_rate",
    "finetune.cross_warmup_lr",
    "finetune.kd_temperature",
    "finetune.n_sentinels",
    "eval.n_problems",
    "eval.max_new_tokens",
  )
  config_utils.non_negative(
    config,
    "seed",
    "pretrain.small_steps",
    "pretrain.big_steps",
    "finetune.cross_warmup_steps",
    "eval.temperature",
    *(f"{s}.{f}" for s in ("pretrain", "finetune") for f in OPT_FIELDS[1:]),
  )
  for m in ("small", "big"):
    try:
      model_config(config[m])
    except (ValueError, TypeError) as e:
      raise ValueError(f"config.{m}: {e}") from None
  ft = config.finetune
  if ft.cross_warmup_steps >= ft.steps:
    raise ValueError(
      f"config.finetune.cross_warmup_steps={ft.cross_warmup_steps} must be < "
      f"config.finetune.steps={ft.steps} (then every parameter trains)"
    )
  config_utils.one_of(config, "finetune.objective", OBJECTIVES)
  if not 0.0 <= ft.kd_weight <= 1.0:  # ignored (no KD) with objective ul2
    raise ValueError(f"config.finetune.kd_weight must be in [0, 1], got {ft.kd_weight}")
  config_utils.int_list(config, "eval.budgets")
  try:
    tp.heldout_problems(config, 0)
  except ValueError as e:
    raise ValueError(f"config.task: {e}") from None
  if config.pretrain.small_policy_dir:
    wd.require_files(config, "pretrain.small_policy_dir", ("policy", "config.json"))
  elif config.pretrain.small_steps < 1:
    raise ValueError(
      "config.pretrain.small_steps must be >= 1 without small_policy_dir"
    )
  if config.pretrain.big_steps < 1:
    raise ValueError("config.pretrain.big_steps must be >= 1")
  _check_lengths(config)


def check_run(config, workdir: str) -> None:
  """The dry run of `run` (writes nothing). Raises ValueError naming a field."""
  del workdir
  validate_adapt_config(config)


# ----------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------


def _section(base, **override) -> ml_collections.ConfigDict:
  out = ml_collections.ConfigDict(base.to_dict())
  out.update(override)
  return out


def finetune_problems(config, step: int, exclude: set) -> list:
  """The `finetune.batch_size` problems of fine-tuning step `step` (a pure
  function of the step; held-out questions skipped). Every fine-tune sees them."""
  kw, out, chunk = tp.task_kwargs(config), [], 0
  while len(out) < config.finetune.batch_size:
    seed = int(
      np.random.default_rng([config.seed + FT_SEED_OFFSET, step, chunk]).integers(2**62)
    )
    out += [p for p in arith.generate(64, seed, **kw) if p.question not in exclude]
    chunk += 1
  return out[: config.finetune.batch_size]


def pair(p: arith.ArithProblem):
  """(encoder input BOS + prompt, decoder target solution + EOS)."""
  return TOK.encode(p.prompt, add_bos=True), TOK.encode(p.solution, add_eos=True)


def encdec_examples(problems, objective: str, rng, ids):
  """PrefixLM pairs, or (ul2) one uniformly drawn denoiser per problem: S = the
  prompt -> solution split with [S] in front, R / X = span corruption of the
  whole text (targets end with EOS)."""
  if objective == "prefix_lm":
    return [pair(p) for p in problems]
  out = []
  for p in problems:
    x, t = pair(p)
    d = ada.DEFAULT_DENOISERS[int(rng.integers(len(ada.DEFAULT_DENOISERS)))]
    if d.mode == "S":
      out.append(([ids.modes["S"]] + x, t))
    else:
      inp, tgt = ada.ul2_example(rng, x[1:] + t[:-1], d, ids)
      out.append((inp, tgt.tolist() + [TOK.eos_id]))
  return out


def _tree_copy(tree):
  return jax.tree_util.tree_map(np.asarray, tree)


def _phase(state, step_fn, batch_fn, first: int, n: int, log, name: str):
  m = {}
  for s in range(first, first + n):
    state, m = step_fn(state, batch_fn(s))
    if log is not None and (s + 1) % 50 == 0:
      log(f"{name}: step {s + 1} loss {float(m['loss']):.4f}")
  return state, {k: float(v) for k, v in m.items()}


# ----------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------


def pretrain(config, which: str, exclude: set, log):
  """(ModelConfig, params) of the decoder-only `which` ("small" / "big"):
  loaded from `pretrain.small_policy_dir` for small when given, else trained
  for `pretrain.<which>_steps` steps with train_policy's packed batches."""
  pc = config.pretrain
  if which == "small" and pc.small_policy_dir:
    cfg, params, _ = wd.load_policy(pc.small_policy_dir)
    if cfg.vocab_size != TOK.vocab_size:
      raise ValueError(
        f"config.pretrain.small_policy_dir: vocab_size {cfg.vocab_size} is not the "
        f"arith tokenizer's {TOK.vocab_size}"
      )
    log(f"small: loaded {pc.small_policy_dir}")
    return cfg, params
  cfg = model_config(config[which])
  steps = pc[f"{which}_steps"]
  view = ml_collections.ConfigDict(
    {
      "seed": config.seed,
      "task": config.task.to_dict(),
      "train": {"batch_size": pc.batch_size, "seq_len": pc.seq_len},
    }
  )
  opt = tp.make_optimizer(_section(pc, steps=steps))
  key = jax.random.fold_in(
    jax.random.PRNGKey(config.seed), ("small", "big").index(which)
  )
  pkey, tkey = jax.random.split(key)
  state = train.init_train_state(init_params(cfg, pkey), opt, tkey)
  step = train.make_train_step(train.make_lm_loss_fn(cfg), opt)
  state, _ = _phase(state, step, tp.make_batch_fn(view, exclude), 0, steps, log, which)
  log(f"{which}: pretrained {steps} steps, {train.num_params(state.params):,} params")
  return cfg, state.params


def finetune_decoder_only(config, cfg, params, exclude: set, log, name: str):
  """`finetune.steps` steps of the next-token loss on the solution tokens of
  `finetune_problems` (one problem per row). Returns (params, last metrics)."""
  opt = tp.make_optimizer(config.finetune)
  state = train.init_train_state(_fresh(params), opt, jax.random.PRNGKey(config.seed))
  step = train.make_train_step(train.make_lm_loss_fn(cfg), opt)

  def batch_fn(s):
    ex = [tp.example(p) for p in finetune_problems(config, s, exclude)]
    return train.pad_batch(ex, pad_id=TOK.pad_id, vocab_size=cfg.vocab_size)

  state, m = _phase(state, step, batch_fn, 0, config.finetune.steps, log, name)
  return state.params, m


def _fresh(tree):
  return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), tree)


def encdec_batch_fn(config, ecfg, exclude: set, teacher, ids):
  """batch_fn(step) of an encoder-decoder fine-tune: `encdec_examples` of the
  step's problems, plus the teacher's target logits when `kd_weight(config)`
  > 0 (`teacher` = (ModelConfig, params) of the decoder-only teacher)."""
  ft = config.finetune
  teacher_fn = None
  if kd_weight(config) > 0:
    teacher_fn = ada.make_teacher_fn(teacher[0])

  def batch_fn(s):
    rng = train.step_rng(config.seed + FT_SEED_OFFSET, s)
    probs = finetune_problems(config, s, exclude)
    ex = encdec_examples(probs, ft.objective, rng, ids)
    batch = ada.encdec_batch(
      ex, ecfg.decoder_start_id, ecfg.vocab_size, pad_id=TOK.pad_id
    )
    if teacher_fn is not None:
      toks, idx = ada.teacher_sequences(batch, TOK.pad_id)
      batch["teacher_logits"] = np.asarray(
        teacher_fn(teacher[1], jnp.asarray(toks), jnp.asarray(idx))
      )
    return batch

  return batch_fn


def finetune_encdec(config, ecfg, params, batch_fn, warmup: int, log, name: str):
  """`finetune.steps` steps of `make_prefix_lm_loss_fn` (KD at
  `kd_weight(config)`): the first `warmup` train only cross-attention
  (`cross_only`, lr finetune.cross_warmup_lr), the rest every parameter.
  Returns (params, last metrics)."""
  ft = config.finetune
  loss_fn = ada.make_prefix_lm_loss_fn(ecfg, kd_weight(config), ft.kd_temperature)
  warm_key, full_key = jax.random.split(jax.random.PRNGKey(config.seed))
  m = {}
  if warmup:
    opt = ada.cross_only(
      tp.make_optimizer(
        _section(
          ft,
          steps=warmup,
          learning_rate=ft.cross_warmup_lr,
          warmup_steps=min(ft.warmup_steps, warmup),
        )
      )
    )
    state = train.init_train_state(params, opt, warm_key)
    state, m = _phase(
      state, train.make_train_step(loss_fn, opt), batch_fn, 0, warmup, log, name
    )
    params = state.params
    log(f"{name}: cross-attention warm-up {warmup} steps, loss {m['loss']:.4f}")
  opt = tp.make_optimizer(_section(ft, steps=ft.steps - warmup))
  state = train.init_train_state(params, opt, full_key)
  state, m = _phase(
    state,
    train.make_train_step(loss_fn, opt),
    batch_fn,
    warmup,
    ft.steps - warmup,
    log,
    name,
  )
  return state.params, m


def adapted_models(config, parents: dict, key):
  """{"small-small": (EncDecConfig, params), "big-small": ...} and the UL2 ids
  (None for prefix_lm). For ul2 both parents first get the sentinel and mode
  ids appended to their vocabularies (`extend_vocab`)."""
  ids = None
  if config.finetune.objective == "ul2":
    n = config.finetune.n_sentinels
    grown = {}
    for i, (name, (cfg, p)) in enumerate(parents.items()):
      grown[name] = ada.extend_vocab(
        cfg, p, n + len(ada.MODES), jax.random.fold_in(key, i)
      )
    parents = grown
    V = parents["small"][0].vocab_size
    ids = ada.reserved_ids(V, n, text_vocab=TOK.vocab_size)
  (s_cfg, s_p), (b_cfg, b_p) = parents["small"], parents["big"]
  out = {
    "small-small": ada.balanced_init(s_cfg, s_p, TOK.bos_id),
    "big-small": ada.unbalanced_init(
      b_cfg, b_p, s_cfg, s_p, jax.random.fold_in(key, 7), TOK.bos_id
    ),
  }
  return out, ids


# ----------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------


def _text(tokens) -> str:
  """Text of generated ids; ids outside the char vocabulary (UL2 sentinels /
  modes) are dropped."""
  return TOK.decode([int(t) for t in tokens if 0 <= int(t) < TOK.vocab_size])


def answer_ids(tokens_PxNxL, lengths_PxN) -> np.ndarray:
  """Per problem, dense ids of the extracted integer answers (-1: none); the
  `answer_fn` of `methods.run`."""
  P, N = lengths_PxN.shape
  ans = [
    [
      arith.extract_answer(_text(tokens_PxNxL[p, n, : lengths_PxN[p, n]]))
      for n in range(N)
    ]
    for p in range(P)
  ]
  return dense_answer_ids(ans)


def evaluate(model, params, problems, config, prefix=()) -> list:
  """Greedy and self-consistency (majority at each eval budget) on `problems`:
  rows {method, budget, accuracy, flops_per_problem, generated_per_problem}.
  `prefix`: ids put before every prompt (the [S] mode token for ul2)."""
  e = config.eval
  prompts = [list(prefix) + TOK.encode(p.prompt, add_bos=True) for p in problems]
  runs = [("greedy", 1, 0.0)] + [("majority", k, e.temperature) for k in e.budgets]
  rows = []
  for i, (name, k, temp) in enumerate(runs):
    out = methods.run(
      "majority",
      model,
      params,
      prompts,
      jax.random.PRNGKey(config.seed + 100 + i),
      k,
      max_new_tokens=e.max_new_tokens,
      stop_ids=(TOK.eos_id,),
      pad_id=TOK.pad_id,
      sampling_temperature=temp,
      answer_fn=answer_ids,
    )
    toks, lens = np.asarray(out.tokens), np.asarray(out.lengths)
    correct = [
      arith.check_answer(p, _text(t[:n])) for p, t, n in zip(problems, toks, lens)
    ]
    per = out.compute.per_problem(len(problems))
    rows.append(
      {
        "method": name,
        "budget": k,
        "accuracy": float(np.mean(correct)),
        "flops_per_problem": per.flops,
        "generated_per_problem": per.generated_tokens,
      }
    )
  return rows


# ----------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------


def run(config, workdir: str, log=wd.progress) -> dict:
  """Pretrain, adapt, fine-tune and evaluate; returns the report.

  Raises:
    ValueError: a bad config (naming the field), before anything is built.
    experiments.workdir.WorkdirBusy: another run holds the workdir.
  """
  validate_adapt_config(config)
  with wd.lock(workdir):
    return _run_locked(config, workdir, log)


def _finetune_all(config, parents, exclude, log, timing):
  """The four fine-tunes: {model: (arch, decode model, params, prompt prefix)}."""
  tuned = {}
  for name in ("small", "big"):
    t0 = time.perf_counter()
    cfg, p = parents[name]
    p, _ = finetune_decoder_only(config, cfg, p, exclude, log, name)
    tuned[name] = ("decoder-only", Transformer(cfg), p, ())
    timing[f"finetune_{name}_s"] = time.perf_counter() - t0
  models, ids = adapted_models(config, parents, jax.random.PRNGKey(config.seed + 3))
  prefix = () if ids is None else (ids.modes["S"],)
  teachers = {"small-small": parents["small"], "big-small": parents["big"]}
  for name, (ecfg, p) in models.items():
    t0 = time.perf_counter()
    warm = config.finetune.cross_warmup_steps if name == "big-small" else 0
    batch_fn = encdec_batch_fn(config, ecfg, exclude, teachers[name], ids)
    p, _ = finetune_encdec(config, ecfg, p, batch_fn, warm, log, name)
    tuned[name] = ("encoder-decoder", EncDecTransformer(ecfg), p, prefix)
    timing[f"finetune_{name}_s"] = time.perf_counter() - t0
  return tuned


def _run_locked(config, workdir: str, log) -> dict:
  t_start = time.perf_counter()
  timing = {}
  probs = tp.heldout_problems(config, config.eval.n_problems)
  exclude = {p.question for p in probs}
  parents = {}
  for name in ("small", "big"):
    t0 = time.perf_counter()
    parents[name] = pretrain(config, name, exclude, log)
    timing[f"pretrain_{name}_s"] = time.perf_counter() - t0
  parents = {k: (c, _tree_copy(p)) for k, (c, p) in parents.items()}  # host copies
  tuned = _finetune_all(config, parents, exclude, log, timing)
  rows = []
  t0 = time.perf_counter()
  for name, (arch, model, p, prefix) in tuned.items():
    n_params = train.num_params(p)
    for r in evaluate(model, p, probs, config, prefix):
      rows.append({"model": name, "arch": arch, "params": n_params, **r})
      log(
        f"{name} {r['method']}@{r['budget']}: accuracy {r['accuracy']:.3f} "
        f"FLOPs/problem {r['flops_per_problem']:.3g}"
      )
  timing["eval_s"] = time.perf_counter() - t0
  timing["total_s"] = time.perf_counter() - t_start
  report = {"rows": rows, **timing}
  wd.save_config(workdir, config)
  wd.write_json_atomic(os.path.join(workdir, "results.json"), report, indent=2)
  plot(rows, os.path.join(workdir, "accuracy_vs_flops.png"))
  log(format_table(rows))
  log(f"total {timing['total_s']:.0f} s")
  return report


def plot(rows, path: str) -> str:
  """Accuracy against inference FLOPs per problem, one line per model (greedy,
  then self-consistency at each budget), with the Pareto frontier
  (experiments/analysis.py)."""
  groups = {}
  for r in rows:
    c, a = groups.setdefault(f"{r['model']} ({r['arch']})", ([], []))
    c.append(r["flops_per_problem"])
    a.append(r["accuracy"])
  return analysis.plot_accuracy_vs_flops(
    groups, path, title="arith: decoder-only vs adapted encoder-decoder"
  )


def format_table(rows) -> str:
  """The results as a plain-text table (one line per model x method x budget)."""
  lines = [
    "model        arch             params  method    budget accuracy  FLOPs/problem"
  ]
  for r in rows:
    lines.append(
      f"{r['model']:12s} {r['arch']:15s} {r['params']:8,d}  {r['method']:9s} "
      f"{r['budget']:6d} {r['accuracy']:8.3f} {r['flops_per_problem']:14.4g}"
    )
  return "\n".join(lines)


def main(argv):
  del argv
  config = wd.config_from_flags(DEFAULT_CONFIG, check=check_run)
  wd.run_cli(run, config, flags.FLAGS.workdir)


if __name__ == "__main__":
  wd.define_flags("results/adapt_arith", DEFAULT_CONFIG)
  app.run(main)
