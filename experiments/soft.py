"""SoFT on arith: standard vs sorted fine-tuning, evaluated at every exit depth.

  python -m experiments.soft --config=configs/soft_arith.py \
      [--config.finetune.steps=100] [--workdir=results/soft_arith]

1. The shared start: a policy trained with the standard loss from a random init for
   `train.steps` steps (the batches of experiments/train_policy.py: fresh problems
   per step, packed rows, loss on solution tokens; held-out problems excluded).
2. Two fine-tunes from that start, for `finetune.steps` steps on the same batches
   with the same optimiser: the standard loss, and the SoFT loss over `soft.exits`
   (algorithms/soft.py `sorted_loss_fn`).
3. Each fine-tune evaluated at every depth in `soft.exits` (and the full depth): the
   depth-n sub-model (first n layers + the shared final norm and head, its own
   cache) decodes greedily; reported: accuracy on `eval.n_problems` held-out
   problems, the held-out next-token loss at that depth (nats / solution token) and
   decode FLOPs per generated token (jaxllm/flops.py, the sub-model's config, the
   exact contexts). The standard fine-tune truncated at depth n is the baseline the
   SoFT sub-model has to beat. Unified layer skipping (`soft.SkipDecoder`, prompt
   through all layers) at each speed-up in `eval.skip_speedups` is evaluated on both
   fine-tunes (its FLOPs: the kept layers plus the skipped layers' K/V fill), and
   CALM early exit (max-prob confidence at the `soft.exits` depths) at each
   threshold in `eval.early_exit_thresholds` (mean exit depth; FLOPs approximate,
   see `early_exit_eval`).
4. Self-speculation: each fine-tune's depth-n sub-model (n in `eval.spec_depths`)
   drafts a chain of `eval.spec_gamma` tokens for its own full model
   (`self_spec_eval`): tokens per target call and the accepted fraction, in
   `results.json["self_speculation"]`.

Writes to --workdir: `config.json`, `results.json` (one row per fine-tune x decoder:
`branch`, `decoder`, `depth` (mean exit depth for early exit), `kept` (layer skip),
`accuracy`, `loss`, `flops_per_token`), `accuracy_vs_flops.png`, the fine-tuned
params `standard/` and `soft/` with `model_config.json` (`workdir.load_model(
workdir, "soft")`, e.g. for a self-speculative draft), and prints the table. Not resumable (a rerun recomputes everything); the workdir is
locked against a second concurrent run.

SmolLM2 (`config.model_source = "smollm2"`, configs/soft_smollm2.py): `run` takes
the `smollm2_run` branch instead: SmolLM2-135M-Instruct (`workdir.load_pretrained`)
fine-tuned with the SoFT loss on its own temperature-1 answers to GSM8K-Symbolic
variants (train_draft's data path: `workdir.chat_prompts` / `sample_answers`,
cached as `<workdir>/data/*.npz` keyed by the data fields), windows of
`finetune.seq_len` tokens with the loss on answer tokens; evaluated before and
after on its answers to the original problems of the held-out templates: per exit,
the next-token loss and the greedy next-token agreement with the full model of the
same params (`exit_agreement`). Writes `soft/` + `model_config.json` (the
bench_speculative `smollm_soft` pair), `config.json`, `results.json` (`rows`: stage
x depth; `best_exit` / `self_draft`: the exit and chain length with the highest
predicted self-speculative speed-up after fine-tuning (`best_self_draft`); the
stage timings).
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from algorithms import soft, speculative
from algorithms.speculative import SpecConfig, speculative_generate
from experiments import analysis, config_utils
from experiments import train_policy as tp
from experiments import workdir as wd
from experiments.tasks import arith
from jaxllm import checkpoint, flops, train
from jaxllm.decoding import Transformer
from jaxllm.generate import generate, pad_prompts
from jaxllm.model import lm_head
from jaxllm.params import init_params
from jaxllm.sampling import make_sampling

DEFAULT_CONFIG = config_utils.config_path("soft_arith.py")
SMOLLM2_CONFIG = config_utils.config_path("soft_smollm2.py")
TOK = arith.TOKENIZER
OPT_FIELDS = (
  "learning_rate",
  "warmup_steps",
  "end_lr_ratio",
  "weight_decay",
  "clip_norm",
)


def is_smollm2(config) -> bool:
  """Whether `config` selects the SmolLM2 branch (`model_source = "smollm2"`)."""
  return config is not None and config.get("model_source", "arith") == "smollm2"


def schema_path(config) -> str:
  """The configs/ file `config` is checked against (its branch's default)."""
  return SMOLLM2_CONFIG if is_smollm2(config) else DEFAULT_CONFIG


def validate_soft_config(config) -> None:
  """Check the config before anything is built.

  Raises:
    ValueError: naming the offending field.
  """
  if is_smollm2(config):
    return validate_smollm2_config(config)
  config_utils.check(config, config_utils.load_config_file(DEFAULT_CONFIG))
  config_utils.positive(
    config,
    "model.d_model",
    "model.n_layers",
    "model.n_heads",
    "model.n_kv_heads",
    "model.d_ff",
    "model.max_seq_len",
    "train.batch_size",
    "train.seq_len",
    "train.learning_rate",
    "finetune.steps",
    "finetune.learning_rate",
    "eval.n_problems",
    "eval.loss_problems",
    "eval.max_new_tokens",
  )
  config_utils.non_negative(
    config,
    "seed",
    "train.steps",
    "train.log_every",
    *(f"{s}.{f}" for s in ("train", "finetune") for f in OPT_FIELDS[1:]),
  )
  try:
    cfg = tp.model_config(config)
  except (ValueError, TypeError) as e:
    raise ValueError(f"config.model: {e}") from None
  try:
    exits = soft.check_exits(cfg.n_layers, config.soft.exits, "config.soft.exits")
  except ValueError as e:
    raise ValueError(str(e)) from None
  k = config.soft.exits_per_step
  if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= len(exits):
    raise ValueError(
      f"config.soft.exits_per_step must be an int in [0, {len(exits)}] (0: all), "
      f"got {k!r}"
    )
  w = tuple(config.soft.exit_weights)
  if w:
    try:
      soft.sorted_loss_fn(cfg, exits, exit_weights=w)
    except ValueError as e:
      raise ValueError(f"config.soft.{e}") from None
  for d in config.eval.spec_depths:
    try:
      soft.sub_model(cfg, d)
    except ValueError as e:
      raise ValueError(f"config.eval.spec_depths: {e}") from None
  config_utils.positive(config, "eval.spec_gamma")
  for th in config.eval.early_exit_thresholds:
    try:
      soft.EarlyExitDecoder(cfg, exits, th)
    except ValueError as e:
      raise ValueError(f"config.eval.early_exit_thresholds: {e}") from None
  for s in config.eval.skip_speedups:
    try:
      soft.skip_layers(cfg.n_layers, s)
    except ValueError as e:
      raise ValueError(f"config.eval.skip_speedups: {e}") from None
  try:
    tp.heldout_problems(config, 0)
  except ValueError as e:
    raise ValueError(f"config.task: {e}") from None


def check_run(config, workdir: str) -> None:
  """The dry run of `run` (writes nothing). Raises ValueError naming a field."""
  del workdir
  validate_soft_config(config)


def _train(state, step_fn, batch_fn, steps: int, first: int, log, name: str):
  """`steps` updates on batch_fn(first + s); returns (state, last metrics)."""
  m = {}
  for s in range(steps):
    state, m = step_fn(state, batch_fn(first + s))
    if log is not None and (s + 1) % 50 == 0:
      log(f"{name}: step {s + 1}/{steps} loss {float(m['loss']):.4f}")
  return state, {k: float(v) for k, v in m.items()}


def decode_eval(model, params, flops_cfg, problems, max_new: int, extra_flops=0.0):
  """Greedy accuracy of `model` on `problems` and its decode FLOPs per generated
  token (`flops_cfg`'s per-token FLOPs at the exact contexts, + `extra_flops`
  per token)."""
  prompts = tp.prompts_of(problems)
  out = generate(
    model,
    params,
    prompts,
    jax.random.PRNGKey(0),
    max_new,
    make_sampling(0.0),
    stop_tokens=[TOK.eos_id],
    pad_id=TOK.pad_id,
  )
  toks, lens = np.asarray(out.tokens), np.asarray(out.lengths)
  correct = [arith.check_answer(p, TOK.decode(t)) for p, t in zip(problems, toks)]
  plen = np.array([len(p) for p in prompts])
  total = flops.generate_flops(flops_cfg, plen, lens) - flops.prefill_flops(
    flops_cfg, plen
  )
  n = max(int(lens.sum()), 1)
  return float(np.mean(correct)), float(total.sum() / n + extra_flops)


def early_exit_eval(cfg, params, problems, max_new: int, exits, threshold: float):
  """Greedy decoding with CALM early exit (`soft.EarlyExitDecoder`, max-prob
  confidence): (accuracy, mean exit depth over generated tokens, approximate decode
  FLOPs per generated token).

  FLOPs: the depth-d sub-model's per-token FLOPs at the exact contexts, linearly
  interpolated at the mean depth (layers are affine in depth; exact when every
  token exits at the same depth), plus one extra LM head (2 V D) per checked exit
  below the mean depth and the K/V projections of the layers above it (state
  propagation). An approximation: the decoder's state keeps per-row depth sums,
  not per-token depths.
  """
  dec = soft.EarlyExitDecoder(cfg, tuple(exits), threshold)
  prompts = tp.prompts_of(problems)
  tokens, lens = pad_prompts(prompts, TOK.pad_id)
  prefill = jax.jit(dec.prefill, static_argnums=3)
  extend = jax.jit(dec.extend)
  st, logits = prefill(
    params, jnp.asarray(tokens), jnp.asarray(lens), tokens.shape[1] + max_new
  )
  B = len(prompts)
  done = np.zeros(B, bool)
  out = np.full((B, max_new), TOK.pad_id, np.int32)
  n_gen = np.zeros(B, np.int64)
  for t in range(max_new):
    tok = np.where(done, TOK.pad_id, np.asarray(jnp.argmax(logits, -1)))
    out[:, t] = tok
    n_gen += ~done
    done |= tok == TOK.eos_id
    if done.all():
      break
    st, lg = extend(params, st, jnp.asarray(tok[:, None]), jnp.asarray(~done[:, None]))
    logits = lg[:, 0]
  correct = [arith.check_answer(p, TOK.decode(r)) for p, r in zip(problems, out)]
  depth = float(np.sum(st.exit_layers_B)) / max(float(np.sum(st.exit_tokens_B)), 1.0)
  L = cfg.n_layers
  plen = np.array([len(p) for p in prompts])
  per_depth = []
  for d in (int(np.floor(depth)), int(np.ceil(depth))):
    c = soft.sub_model(cfg, max(d, 1)).cfg
    tot = flops.generate_flops(c, plen, n_gen) - flops.prefill_flops(c, plen)
    per_depth.append(float(tot.sum()) / max(int(n_gen.sum()), 1))
  frac = depth - np.floor(depth)
  fl = per_depth[0] + frac * (per_depth[1] - per_depth[0])
  fl += 2.0 * cfg.vocab_size * cfg.d_model * sum(e < depth for e in exits if e < L)
  fl += 2.0 * (L - depth) * 2 * cfg.d_model * cfg.n_kv_heads * cfg.head_dim
  return float(np.mean(correct)), depth, fl


def self_spec_eval(cfg, params, problems, max_new: int, depth: int, gamma: int):
  """Self-speculative decoding: the depth-`depth` sub-model of `params` drafts a
  chain of `gamma` tokens for the full model (`algorithms.speculative`, temperature
  1, exact). Returns (tokens per target call, accepted fraction of drafted tokens).
  Rows run to `max_new` tokens (no EOS stop inside speculative_generate)."""
  sc = SpecConfig(method="chain", gamma=gamma, max_new_tokens=max_new)
  out, _ = speculative_generate(
    Transformer(cfg),
    params,
    soft.sub_model(cfg, depth),
    params,
    tp.prompts_of(problems),
    jax.random.PRNGKey(0),
    sc,
  )
  calls = float(np.asarray(out.target_calls).sum())
  emitted = float(np.asarray(out.num_emitted).sum())
  return emitted / calls, float(np.asarray(out.accepted).sum()) / (gamma * calls)


def depth_losses(params, cfg, problems, depths) -> dict:
  """Held-out next-token loss (nats / solution token) at each depth, from one
  forward pass (`soft.sorted_loss_terms`' per-exit sums)."""
  batch = train.pad_batch([tp.example(p) for p in problems], vocab_size=cfg.vocab_size)
  nll = _depth_nll(params, batch["tokens"], batch["loss_mask"], cfg, tuple(depths))
  return {d: float(v) for d, v in zip(depths, nll)}


@functools.partial(jax.jit, static_argnums=(3, 4))
def _depth_nll(params, tokens, loss_mask, cfg, depths):
  _, n, aux = soft.sorted_loss_terms(params, cfg, tokens, loss_mask, depths)
  return jnp.stack([aux[f"nll_exit{d}"] for d in depths]) / n


def run(config, workdir: str, log=wd.progress, load=None) -> dict:
  """Train the start and both fine-tunes, evaluate every depth; returns the report.
  With a SmolLM2 config, the `smollm2_run` branch (`load`: its model loader).

  Raises:
    ValueError: a bad config (naming the field), before anything is built.
    experiments.workdir.WorkdirBusy: another run holds the workdir.
  """
  validate_soft_config(config)
  with wd.lock(workdir):
    if is_smollm2(config):
      return smollm2_run(config, workdir, log, load or wd.load_pretrained)
    return _run_locked(config, workdir, log)


def _run_locked(config, workdir: str, log) -> dict:
  t0 = time.perf_counter()
  cfg = tp.model_config(config)
  L = cfg.n_layers
  exits = tuple(config.soft.exits)
  depths = exits if exits[-1] == L else exits + (L,)
  probs = tp.heldout_problems(
    config, max(config.eval.n_problems, config.eval.loss_problems)
  )
  exclude = {p.question for p in probs}
  batch_fn = tp.make_batch_fn(config, exclude)
  key = jax.random.PRNGKey(config.seed)
  pkey, tkey = jax.random.split(key)

  # 1. The shared start.
  opt = tp.make_optimizer(config.train) if config.train.steps else None
  params = init_params(cfg, pkey)
  history = {}
  if config.train.steps:
    step = train.make_train_step(train.make_lm_loss_fn(cfg), opt)
    state = train.init_train_state(params, opt, tkey)
    state, history["start"] = _train(
      state, step, batch_fn, config.train.steps, 0, log, "start"
    )
    params = state.params
  start = jax.tree_util.tree_map(np.asarray, params)  # host copy (steps donate)

  # 2. Two fine-tunes from the start, same batches and optimiser.
  ft = config.finetune
  ft_opt = tp.make_optimizer(ft)
  k = config.soft.exits_per_step or None
  w = tuple(config.soft.exit_weights) or None
  losses = {
    "standard": train.make_lm_loss_fn(cfg),
    "soft": soft.sorted_loss_fn(cfg, exits, exit_weights=w, exits_per_step=k),
  }
  tuned = {}
  for name, loss_fn in losses.items():
    step = train.make_train_step(loss_fn, ft_opt)
    state = train.init_train_state(  # a fresh key: the start's was donated
      jax.tree_util.tree_map(jnp.asarray, start), ft_opt, jax.random.fold_in(key, 1)
    )
    state, history[name] = _train(
      state, step, batch_fn, ft.steps, config.train.steps, log, name
    )
    tuned[name] = state.params
    checkpoint.save_params(os.path.join(workdir, name), state.params, overwrite=True)
  checkpoint.save_model_config(os.path.join(workdir, checkpoint.MODEL_CONFIG_FILE), cfg)

  # 3. Every depth of both fine-tunes; layer skipping.
  e = config.eval
  acc_probs, loss_probs = probs[: e.n_problems], probs[: e.loss_problems]
  rows, spec = [], []
  for name, p in tuned.items():
    loss_at = depth_losses(p, cfg, loss_probs, depths)
    for d in depths:
      sub = soft.sub_model(cfg, d)
      acc, fl = decode_eval(sub, p, sub.cfg, acc_probs, e.max_new_tokens)
      rows.append(
        {
          "branch": name,
          "decoder": "sub_model",
          "depth": d,
          "accuracy": acc,
          "loss": loss_at[d],
          "flops_per_token": fl,
        }
      )
      log(f"{name} depth {d}: accuracy {acc:.3f} loss {loss_at[d]:.4f} FLOPs {fl:.3g}")
    for s in e.skip_speedups:
      dec = soft.SkipDecoder.for_speedup(cfg, s)
      n_skipped = L - len(dec.layers)
      fill = 2.0 * n_skipped * 2 * cfg.d_model * cfg.n_kv_heads * cfg.head_dim
      acc, fl = decode_eval(dec, p, dec.kept_cfg, acc_probs, e.max_new_tokens, fill)
      rows.append(
        {
          "branch": name,
          "decoder": f"skip_s{s}",
          "depth": len(dec.layers),
          "kept": list(dec.layers),
          "accuracy": acc,
          "loss": None,
          "flops_per_token": fl,
        }
      )
      log(f"{name} layer skip s={s} {dec.layers}: accuracy {acc:.3f} FLOPs {fl:.3g}")
    for th in e.early_exit_thresholds:
      acc, depth, fl = early_exit_eval(cfg, p, acc_probs, e.max_new_tokens, exits, th)
      rows.append(
        {
          "branch": name,
          "decoder": f"exit_{th:g}",
          "depth": depth,
          "accuracy": acc,
          "loss": None,
          "flops_per_token": fl,
        }
      )
      log(
        f"{name} early exit >{th:g}: accuracy {acc:.3f} depth {depth:.2f} FLOPs {fl:.3g}"
      )
    for d in e.spec_depths:
      tpc, acc_rate = self_spec_eval(
        cfg, p, acc_probs, e.max_new_tokens, d, e.spec_gamma
      )
      spec.append(
        {
          "branch": name,
          "draft_depth": d,
          "gamma": e.spec_gamma,
          "tokens_per_target_call": tpc,
          "accept_rate": acc_rate,
        }
      )
      log(f"{name} self-spec draft depth {d}: {tpc:.2f} tokens/target call")

  report = {
    "rows": rows,
    "self_speculation": spec,
    "history": history,
    "total_s": time.perf_counter() - t0,
    "n_layers": L,
  }
  wd.save_config(workdir, config)
  wd.write_json_atomic(os.path.join(workdir, "results.json"), report, indent=2)
  plot(rows, os.path.join(workdir, "accuracy_vs_flops.png"))
  log(format_table(rows))
  return report


def plot(rows, path: str) -> str:
  """Accuracy against decode FLOPs per token, one line per fine-tune x decoder
  family (sub-models by depth, layer skipping by speed-up, early exit by
  threshold), with the Pareto frontier (experiments/analysis.py)."""
  groups = {}
  for r in rows:
    family = r["decoder"].split("_")[0]
    fam = {"sub": "depth-n sub-model", "skip": "layer skip", "exit": "early exit"}
    c, a = groups.setdefault(f"{r['branch']} {fam.get(family, family)}", ([], []))
    c.append(r["flops_per_token"])
    a.append(r["accuracy"])
  return analysis.plot_accuracy_vs_flops(
    groups, path, title="arith: standard vs SoFT fine-tune"
  )


def format_table(rows) -> str:
  """The results as a plain-text table (one line per fine-tune x decoder)."""
  head = "branch    decoder    depth accuracy    loss  FLOPs/token"
  lines = [head]
  for r in rows:
    loss = "-" if r["loss"] is None else f"{r['loss']:.4f}"
    lines.append(
      f"{r['branch']:9s} {r['decoder']:10s} {r['depth']:5.2f} "
      f"{r['accuracy']:8.3f} {loss:>7s} {r['flops_per_token']:12.4g}"
    )
  return "\n".join(lines)


# ----------------------------------------------------------------------------------
# SmolLM2: a SoFT fine-tune on its own answers (configs/soft_smollm2.py)
# ----------------------------------------------------------------------------------


def validate_smollm2_config(config, cfg=None) -> None:
  """Check a SmolLM2 config: fields and ranges before anything is loaded; with the
  loaded model's ModelConfig `cfg`, the exits against its depth.

  Raises:
    ValueError: naming the offending field.
  """
  from experiments.tasks import gsm8k

  config_utils.check(config, config_utils.load_config_file(SMOLLM2_CONFIG))
  config_utils.positive(
    config,
    "data.train_templates",
    "data.variants_per_template",
    "data.max_new_tokens",
    "data.gen_batch",
    "finetune.steps",
    "finetune.batch_size",
    "finetune.seq_len",
    "finetune.learning_rate",
    "finetune.log_every",
    "eval.n_answers",
  )
  config_utils.non_negative(config, "seed", *(f"finetune.{f}" for f in OPT_FIELDS[1:]))
  T = config.data.train_templates
  if not T < gsm8k.N_TEMPLATES:
    raise ValueError(
      f"config.data.train_templates must be < {gsm8k.N_TEMPLATES} (the rest are "
      f"held out), got {T}"
    )
  if config.eval.n_answers > gsm8k.N_TEMPLATES - T:
    raise ValueError(
      f"config.eval.n_answers={config.eval.n_answers} exceeds the "
      f"{gsm8k.N_TEMPLATES - T} held-out templates"
    )
  exits = tuple(config.soft.exits)
  if not exits:
    raise ValueError("config.soft.exits is empty")
  k = config.soft.exits_per_step
  if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= len(exits):
    raise ValueError(
      f"config.soft.exits_per_step must be an int in [0, {len(exits)}] (0: all), "
      f"got {k!r}"
    )
  if cfg is not None:
    try:
      exits = soft.check_exits(cfg.n_layers, exits, "config.soft.exits")
      soft.sorted_loss_fn(
        cfg, exits, exit_weights=tuple(config.soft.exit_weights) or None
      )
    except ValueError as e:
      raise ValueError(f"{e} (the model has {cfg.n_layers} layers)") from None


def _data_file(config, what: str) -> str:
  """The cache file of a data stage, named by every field that changes it."""
  d = config.data
  tag = f"s{config.seed}_t{d.train_templates}_n{d.max_new_tokens}_b{d.gen_batch}"
  n = d.variants_per_template if what == "train" else config.eval.n_answers
  return os.path.join("data", f"{what}_{tag}_v{n}.npz")


def self_answers(config, workdir, model, params, tok, log) -> tuple:
  """(train pairs, held-out pairs) of SmolLM2's own answers: [(sequence, prompt
  length)], generated once and cached in `<workdir>/data`."""
  from experiments.tasks import gsm8k

  d = config.data
  T = d.train_templates
  stages = {
    "train": (
      lambda: gsm8k.generate_variants(
        d.variants_per_template, seed=config.seed, template_ids=range(T)
      ),
      config.seed * 1000,
    ),
    "heldout": (lambda: gsm8k.load_original()[T:][: config.eval.n_answers], 10**6),
  }
  out = []
  for what, (problems, seed) in stages.items():
    path = os.path.join(workdir, _data_file(config, what))
    if not os.path.exists(path):
      t0 = time.perf_counter()
      os.makedirs(os.path.dirname(path), exist_ok=True)
      prompts = wd.chat_prompts(tok, problems())
      got = wd.sample_answers(
        model, params, tok, prompts, seed, d.max_new_tokens, d.gen_batch
      )
      wd.save_pairs(path, got)
      log(
        f"data {what}: {len(got)} answers, {sum(len(a) for _, a in got)} tokens, "
        f"{time.perf_counter() - t0:.0f} s"
      )
    out.append(wd.load_pairs(path))
  return tuple(out)


def window_batch_fn(pairs, batch_size: int, seq_len: int, seed: int):
  """batch_fn(step) -> {tokens, loss_mask} [batch_size, seq_len]: per row a random
  pair and a window of it starting from 64 tokens before its answer to the answer's
  middle (train_draft's windows); the loss on answer tokens only. Deterministic in
  the step."""

  def batch_fn(step):
    rng = train.step_rng(seed, step)
    tokens = np.zeros((batch_size, seq_len), np.int32)
    mask = np.zeros((batch_size, seq_len), np.int32)
    for b in range(batch_size):
      s, pl = pairs[int(rng.integers(len(pairs)))]
      pl = int(pl)
      lo = max(0, pl - 64)
      hi = max(lo, min(pl + (len(s) - pl) // 2, len(s) - 2))
      o = int(rng.integers(lo, hi + 1))
      seg = s[o : o + seq_len]
      tokens[b, : len(seg)] = seg
      mask[b, : len(seg)] = o + np.arange(len(seg)) >= pl  # answer tokens
    return {"tokens": tokens, "loss_mask": mask}

  return batch_fn


@functools.partial(jax.jit, static_argnums=(2, 3))
def _exit_stats(params, tokens_1xT, cfg, depths):
  """Per depth: next-token NLL [T], argmax [T] and the one-token acceptance rate
  sum_v min(p_full, p_depth) [T] at temperature 1 (the last depth is the full
  model's when it is cfg.n_layers)."""
  hidden = soft.exit_hidden(params, cfg, tokens_1xT, depths)
  targets = jnp.roll(tokens_1xT[0], -1)
  lps = [
    jax.nn.log_softmax(lm_head(params, h, cfg)[0].astype(jnp.float32), -1)
    for h in hidden
  ]
  p_full = jnp.exp(lps[-1])
  nll = [-jnp.take_along_axis(lp, targets[:, None], -1)[:, 0] for lp in lps]
  top = [jnp.argmax(lp, -1) for lp in lps]
  accept = [jnp.minimum(jnp.exp(lp), p_full).sum(-1) for lp in lps]
  return jnp.stack(nll), jnp.stack(top), jnp.stack(accept)


def exit_agreement(params, cfg, pairs, depths) -> dict:
  """Per depth d in `depths` (the last one = cfg.n_layers): {loss (nats / answer
  token), agreement (fraction of answer positions where depth d's greedy next
  token equals the full model's), accuracy (its greedy next token is the text's),
  acceptance (the exact one-token acceptance rate of depth d as a draft for the
  full model at temperature 1, mean of sum_v min(p, q); Leviathan et al. 2023,
  Theorem 3.5)}, over the answer positions of `pairs` [(sequence, prompt
  length)], one sequence per forward (padded to a bucket)."""
  assert depths[-1] == cfg.n_layers
  names = ("loss", "agreement", "accuracy", "acceptance")
  got = {k: [[] for _ in depths] for k in names}
  for s, pl in pairs:
    s = np.asarray(s)
    T = next(
      (b for b in wd.ANSWER_BUCKETS if b >= len(s)), max(len(s), cfg.max_seq_len)
    )
    toks = np.pad(s, (0, T - len(s)))[None]
    n_, t_, a_ = map(np.asarray, _exit_stats(params, jnp.asarray(toks), cfg, depths))
    sl = slice(int(pl) - 1, len(s) - 1)
    for i in range(len(depths)):
      got["loss"][i].append(n_[i, sl])
      got["agreement"][i].append(t_[i, sl] == t_[-1, sl])
      got["accuracy"][i].append(t_[i, sl] == s[int(pl) :])
      got["acceptance"][i].append(a_[i, sl])
  return {
    d: {k: float(np.concatenate(got[k][i]).mean()) for k in names}
    for i, d in enumerate(depths)
  }


def best_self_draft(cfg, metrics: dict, context: int, max_gamma: int = 8) -> dict:
  """The exit depth and chain length with the highest predicted speed-up as a
  self-speculative draft for the full model.

  Per shallow depth d of `metrics` ({depth: {"acceptance": alpha, ...}}, as
  `exit_agreement` returns): cost ratio c = FLOPs per token of the depth-d
  sub-model / the full model's at `context` keys (jaxllm.flops: the shared LM
  head makes c well above d / L for a small model), and
  `speculative.chain_speedup(alpha, gamma, c)` for gamma in [1, max_gamma].

  Returns:
    {"depth", "gamma", "predicted_speedup", "acceptance", "cost_ratio",
    "per_depth": {depth: best predicted speed-up}}; depth = cfg.n_layers with
    speed-up 1 when no shallow exit is predicted to help.
  """
  full = float(flops.decode_flops(cfg, context))
  best = {"depth": cfg.n_layers, "gamma": 0, "predicted_speedup": 1.0}
  per_depth = {}
  for d, m in metrics.items():
    if d >= cfg.n_layers:
      continue
    c = float(flops.decode_flops(soft.sub_model(cfg, d).cfg, context)) / full
    for g in range(1, max_gamma + 1):
      sp = float(speculative.chain_speedup(m["acceptance"], g, c))
      per_depth[d] = max(per_depth.get(d, 0.0), sp)
      if sp > best["predicted_speedup"]:
        best = {"depth": d, "gamma": g, "predicted_speedup": sp}
        best.update(acceptance=m["acceptance"], cost_ratio=c)
  return {**best, "per_depth": per_depth}


def smollm2_run(config, workdir: str, log=wd.progress, load=wd.load_pretrained):
  """The SmolLM2 branch of `run` (under the workdir's lock): load, data, per-exit
  eval of the pretrained model, the SoFT fine-tune, save, per-exit eval again.
  `load(log=...)` -> (ModelConfig, params, tokenizer) (a stand-in in tests)."""
  t_start = time.perf_counter()
  cfg, params, tok = load(log=log)
  validate_smollm2_config(config, cfg)
  L = cfg.n_layers
  exits = tuple(config.soft.exits)
  depths = exits if exits[-1] == L else exits + (L,)
  timing = {}
  t0 = time.perf_counter()
  pairs, held = self_answers(config, workdir, Transformer(cfg), params, tok, log)
  timing["data_s"] = time.perf_counter() - t0
  n_ans = sum(len(s) - int(pl) for s, pl in pairs)
  log(f"data: {len(pairs)} train answers ({n_ans} answer tokens), {len(held)} held out")

  t0 = time.perf_counter()
  before = exit_agreement(params, cfg, held, depths)
  timing["eval_before_s"] = time.perf_counter() - t0

  ft = config.finetune
  opt = tp.make_optimizer(ft)
  k = config.soft.exits_per_step or None
  w = tuple(config.soft.exit_weights) or None
  step = train.make_train_step(
    soft.sorted_loss_fn(cfg, exits, exit_weights=w, exits_per_step=k), opt
  )
  state = train.init_train_state(params, opt, jax.random.PRNGKey(config.seed))
  t0 = time.perf_counter()
  state, history = train.train_loop(
    state,
    step,
    window_batch_fn(pairs, ft.batch_size, ft.seq_len, config.seed),
    ft.steps,
    log_every=ft.log_every,
    log_fn=log,
    tokens_fn=lambda b: int(b["loss_mask"].sum()),
  )
  timing["train_s"] = time.perf_counter() - t0
  checkpoint.save_params(os.path.join(workdir, "soft"), state.params, overwrite=True)
  checkpoint.save_model_config(os.path.join(workdir, checkpoint.MODEL_CONFIG_FILE), cfg)

  t0 = time.perf_counter()
  after = exit_agreement(state.params, cfg, held, depths)
  timing["eval_after_s"] = time.perf_counter() - t0
  rows = [
    {"stage": stage, "depth": d, **m[d]}
    for stage, m in (("pretrained", before), ("soft", after))
    for d in depths
  ]
  ctx = int(np.mean([len(seq) for seq, _ in held]))  # mean held-out context
  pick = best_self_draft(cfg, after, context=ctx)
  best = pick["depth"]
  timing["total_s"] = time.perf_counter() - t_start
  report = {
    "model_source": "smollm2",
    "rows": rows,
    "best_exit": best,
    "self_draft": pick,
    "n_layers": L,
    "train_answers": len(pairs),
    "train_answer_tokens": int(n_ans),
    "heldout_answers": len(held),
    "heldout_answer_tokens": int(sum(len(s) - int(pl) for s, pl in held)),
    "history": history,
    **timing,
  }
  wd.save_config(workdir, config)
  wd.write_json_atomic(os.path.join(workdir, "results.json"), report, indent=2)
  log(format_exit_table(rows))
  log(
    f"best self-draft: exit {best}, gamma {pick['gamma']}, predicted speed-up "
    f"{pick['predicted_speedup']:.2f}x; data {timing['data_s']:.0f} s, fine-tune "
    f"{timing['train_s']:.0f} s, total {timing['total_s']:.0f} s"
  )
  return report


def format_exit_table(rows) -> str:
  """The SmolLM2 rows as a plain-text table (one line per stage x depth)."""
  lines = ["stage       depth    loss  agreement  accuracy"]
  for r in rows:
    lines.append(
      f"{r['stage']:11s} {r['depth']:5d} {r['loss']:7.4f} {r['agreement']:10.3f} "
      f"{r['accuracy']:9.3f}"
    )
  return "\n".join(lines)


def main(argv):
  del argv
  config = wd.config_from_flags(schema_path(flags.FLAGS.config), check=check_run)
  wd.run_cli(run, config, flags.FLAGS.workdir)


if __name__ == "__main__":
  wd.define_flags("results/soft_arith", DEFAULT_CONFIG)
  app.run(main)
