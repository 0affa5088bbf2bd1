r"""Train a small GENERATIVE verifier for arith: it writes a verification chain.

  python -m experiments.train_genverifier --config=configs/genrm_arith.py \
      [--config.verifier.steps=300] [--workdir=DIR]

--workdir defaults to config.verifier_dir, where experiments/genrm_allocation.py
looks for the verifier (and trains it there itself when it is missing).

Format (character tokenizer of experiments/tasks/arith.py; nothing added to it):

    <bos>Q:(3+4)*2        <- the problem's prompt
    3+4=7                 <- the candidate solution, as the policy wrote it
    7*2=15
    A:15
    ::                    <- separator line (end of the verifier's prompt)
    3+4=7:7:1             <- chain line i: the problem's i-th step recomputed
    7*2=14:15:0              from the running value ("7*2=14"; the answer line:
    =0<eos>                  "A:<answer>"), ":", the candidate's own result on
                             its i-th line copied (the text after its last
                             "=", or after "A:"; nothing if the line is
                             missing), ":1" if the candidate's line is exactly
                             the problem's i-th step, else ":0". The chain
                             stops at the first ":0"; then the verdict line
                             "=1" (Yes) or "=0" (No) and EOS.

Why this layout: the recomputed step is what the policy-initialised model does
well, the copy is an induction pattern (the candidate's line starts with the
same "a op b=" when its operands are right), and the mark then compares two
adjacent numbers. Two earlier layouts failed on this task at this size: writing
only the recomputed step (the mark had to find the candidate's line in the
prompt) learned to recompute but not to compare, and copying the whole
candidate line before the recomputed value made the "recomputed" value a copy
of the candidate's; both had within-problem AUROC ~0.53.
The marks are exactly `arith.step_labels` of the candidate (prefix
correctness) up to the first wrong line; a candidate with fewer lines than the
problem needs has its missing lines marked wrong. Target verdict = the
`n_steps` step lines and the answer line are all correct (lines after a correct
answer line are ignored: they cannot change the extracted answer). So a Yes
implies `arith.check_answer`; a correct answer reached through a wrong step
gets a No (process verification). A sampled chain whose last line is not "=1"
or "=0" (cut off, malformed) counts as No. In training, the mark and verdict
digits carry `verifier.mark_weight` times the loss weight of other tokens.

Training: temperature-1 policy samples on fresh problems (never the policy's
held-out problems), the chain + EOS as LM targets, initialised from the
policy's weights; checkpointed and resumable like train_policy. Writes to
--workdir: verifier/ (params), model_config.json, config.json, metrics.json
(verdict accuracy and AUROC of the V-verdict score on held-out samples).
The config is checked before anything is loaded (`validate_verifier_config`);
the directory is locked against a second run and its settings.json pins every
setting that changes the trained verifier (`verifier_settings`), so a resume
never continues another configuration's checkpoints (experiments/workdir.py).

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

from experiments import config_utils
from experiments import distributed
from experiments import workdir as wd
from experiments import train_policy as tp
from experiments.tasks import arith
from jaxllm import checkpoint, reward, train
from jaxllm.decoding import Transformer
from jaxllm.generate import generate
from jaxllm.sampling import make_sampling

DEFAULT_CONFIG = config_utils.config_path("genrm_arith.py")
GENVERIFIER_SEED_OFFSET = 3_000_017  # verifier training problems
HELDOUT_EXCLUDE = 2048  # held-out problems never used for training
TOK = arith.TOKENIZER
# config.verifier fields that change the trained verifier (the others --
# log_every, checkpoint_every, eval_* -- only change logs and metrics.json,
# which every run recomputes).
PINNED_VERIFIER_FIELDS = (
  "init_from_policy",
  "max_seq_len",
  "train_problems",
  "samples_per_problem",
  "temperature",
  "max_new_tokens",
  "steps",
  "mark_weight",
  "batch_size",
  "seq_len",
  "learning_rate",
  "warmup_steps",
  "end_lr_ratio",
  "weight_decay",
  "clip_norm",
)
PARAMS_NAME = "verifier"  # <workdir>/verifier: the params (orbax)
RESULT_FILES = ("checkpoints", PARAMS_NAME, checkpoint.MODEL_CONFIG_FILE)
SEPARATOR = "::"
YES, NO = "=1", "=0"


# ------------------------------- the format --------------------------------


def verifier_prompt(problem: arith.ArithProblem, candidate: str) -> str:
  """Problem prompt + candidate solution + the separator line."""
  return problem.prompt + candidate + arith.DELIM + SEPARATOR + arith.DELIM


def chain_marks(problem: arith.ArithProblem, candidate: str) -> list[bool]:
  """Marks of the problem's n_steps + 1 lines (steps, answer) in the candidate:
  `arith.step_labels` of those lines, False where the candidate has none."""
  labels = arith.step_labels(problem, candidate)
  need = problem.n_steps + 1
  return [bool(x) for x in labels[:need]] + [False] * max(0, need - len(labels))


def _result_of(line: str) -> str:
  """The result a candidate line states: after its last "=", or after "A:"."""
  if "=" in line:
    return line.rsplit("=", 1)[1]
  return (
    line[len(arith.ANSWER_PREFIX) :] if line.startswith(arith.ANSWER_PREFIX) else line
  )


def verification_target(problem: arith.ArithProblem, candidate: str):
  """(chain text, verdict, marks written): the exact training target."""
  marks = chain_marks(problem, candidate)
  cand = arith.split_steps(candidate)
  expected = problem.steps + (f"{arith.ANSWER_PREFIX}{problem.answer}",)
  lines = []
  for i, (step, ok) in enumerate(zip(expected, marks)):
    copied = _result_of(cand[i]) if i < len(cand) else ""
    lines.append(f"{step}:{copied}:{int(ok)}")
    if not ok:
      break
  verdict = all(marks)
  lines.append(YES if verdict else NO)
  return arith.DELIM.join(lines), verdict, marks[: len(lines) - 1]


def parse_verdict(chain: str) -> bool:
  """True iff the chain's last line is the Yes verdict "=1" (anything else,
  including a cut-off chain, is No)."""
  lines = arith.split_steps(chain)
  return bool(lines) and lines[-1] == YES


def verifier_example(problem, candidate: str, mark_weight: int = 1):
  """(tokens, loss weights): BOS + verifier prompt (weight 0), chain + EOS
  (weight 1; each mark digit and the verdict digit: mark_weight)."""
  chain, _, _ = verification_target(problem, candidate)
  toks, mask = train.lm_example(
    TOK.encode(verifier_prompt(problem, candidate), add_bos=True),
    TOK.encode(chain, add_eos=True),
  )
  start = len(toks) - len(chain) - 1
  for line_end in arith.step_spans(chain):
    mask[start + line_end - 1] = mark_weight  # last char of a line: mark/verdict
  return toks, mask


# ------------------------------- sampling ----------------------------------


def sample_forked(
  cfg,
  params,
  prompts,
  key,
  num_samples: int,
  max_new_tokens: int,
  temperature: float,
  rows_per_call: int = 1024,
):
  """num_samples continuations per prompt, each prompt prefilled once and its
  cache forked (`generate(num_samples=...)`). Rows prompt-major: tokens
  [len(prompts) * num_samples, max_new] (pad after EOS), lengths (EOS incl.).
  Every call has the same prompt count, so one compilation per shape."""
  model = Transformer(cfg)
  per = max(1, rows_per_call // num_samples)
  T = max(len(p) for p in prompts)
  toks, lens = [], []
  for i in range(0, len(prompts), per):
    chunk = prompts[i : i + per]
    n = len(chunk)
    if len(prompts) > per:
      chunk = chunk + [chunk[-1]] * (per - n)
    # pad every prompt to the longest overall, so all calls share one bucket
    arr = np.full((len(chunk), T), TOK.pad_id, np.int32)
    for r, p in enumerate(chunk):
      arr[r, : len(p)] = p
    out = generate(
      model,
      params,
      arr,
      jax.random.fold_in(key, i),
      max_new_tokens,
      make_sampling(temperature),
      prompt_lengths=np.array([len(p) for p in chunk]),
      stop_tokens=[TOK.eos_id],
      pad_id=TOK.pad_id,
      num_samples=num_samples,
    )
    toks.append(np.asarray(out.tokens)[: n * num_samples])
    lens.append(np.asarray(out.lengths)[: n * num_samples])
  return np.concatenate(toks), np.concatenate(lens)


def decode_rows(toks, lens) -> list[str]:
  return [TOK.decode(t[:n]) for t, n in zip(toks, lens)]


def verifier_config(policy_cfg, config):
  return policy_cfg.replace(max_seq_len=config.verifier.max_seq_len)


def training_problems(pconfig, n: int, exclude: set[str]):
  pool = arith.generate(
    2 * n + 64, pconfig.seed + GENVERIFIER_SEED_OFFSET, **tp.task_kwargs(pconfig)
  )
  out = [p for p in pool if p.question not in exclude][:n]
  if len(out) < n:
    raise ValueError(f"only {len(out)} fresh training problems, wanted {n}")
  return out


def verify_candidates(
  vcfg, vparams, problems, candidates, key, config, num_verifications: int
):
  """Sample verifications of candidate solutions. problems[i] / candidates[i]
  pair up. Returns (yes [R, V] bool, chain lengths [R, V], prompt lengths [R])."""
  prompts = [
    TOK.encode(verifier_prompt(p, c), add_bos=True)
    for p, c in zip(problems, candidates)
  ]
  toks, lens = sample_forked(
    vcfg,
    vparams,
    prompts,
    key,
    num_verifications,
    config.max_verify_tokens,
    config.temperature,
    config.rows_per_call,
  )
  yes = np.array([parse_verdict(t) for t in decode_rows(toks, lens)])
  R = len(prompts)
  return (
    yes.reshape(R, num_verifications),
    lens.reshape(R, num_verifications),
    np.array([len(p) for p in prompts]),
  )


def evaluate(vcfg, vparams, pcfg, pparams, pconfig, config, key) -> dict:
  """Verdict accuracy and AUROC on held-out problems' policy samples."""
  v = config.verifier
  probs = tp.heldout_problems(pconfig, v.eval_problems)
  prompts = [TOK.encode(p.prompt, add_bos=True) for p in probs]
  toks, lens = sample_forked(
    pcfg,
    pparams,
    prompts,
    jax.random.fold_in(key, 0),
    v.eval_samples,
    v.max_new_tokens,
    v.temperature,
    config.rows_per_call,
  )
  cands = decode_rows(toks, lens)
  cprobs = [p for p in probs for _ in range(v.eval_samples)]
  yes, _, _ = verify_candidates(
    vcfg,
    vparams,
    cprobs,
    cands,
    jax.random.fold_in(key, 1),
    config,
    v.eval_verifications,
  )
  return verifier_metrics(cprobs, cands, yes, v.eval_samples)


def within_problem_auroc(score_PxN, labels_PxN) -> float:
  """Mean over problems (with both classes) of the AUROC among that problem's
  own solutions: what best-of-N selection depends on. The pooled AUROC also
  rewards telling easy problems from hard ones."""
  vals = [
    reward.auroc(s, l)
    for s, l in zip(np.asarray(score_PxN), np.asarray(labels_PxN, bool))
    if 0 < l.sum() < l.size
  ]
  return float(np.mean(vals)) if vals else float("nan")


def verifier_metrics(problems, candidates, yes_RxV, per_problem: int = 1) -> dict:
  """Per-verdict accuracy against the target verdict, and AUROC of the mean
  verdict (the GenRM score) against the target verdict and the final answer."""
  target = np.array(
    [verification_target(p, c)[1] for p, c in zip(problems, candidates)]
  )
  correct = np.array([arith.check_answer(p, c) for p, c in zip(problems, candidates)])
  yes = np.asarray(yes_RxV, bool)
  score = yes.mean(1)
  return {
    "verdict_accuracy": float((yes == target[:, None]).mean()),
    "verdict_accuracy_on_correct": float(yes[target].mean())
    if target.any()
    else float("nan"),
    "verdict_accuracy_on_wrong": float((~yes[~target]).mean())
    if (~target).any()
    else float("nan"),
    "score_auroc_vs_verdict": reward.auroc(score, target),
    "score_auroc_vs_answer": reward.auroc(score, correct),
    "single_verdict_auroc_vs_answer": reward.auroc(yes[:, 0], correct),
    "within_problem_auroc_vs_answer": within_problem_auroc(
      score.reshape(-1, per_problem), correct.reshape(-1, per_problem)
    ),
    "candidates": int(len(candidates)),
    "verifications_per_candidate": int(yes.shape[1]),
    "candidate_correct_rate": float(correct.mean()),
    "target_yes_rate": float(target.mean()),
  }


# ------------------------------- training ----------------------------------


def verifier_settings(config) -> dict:
  """Every setting that changes the trained verifier, as pinned in its
  directory: seed, policy_dir, rows_per_call (sampling chunks), the held-out
  problems excluded from training (max(HELDOUT_EXCLUDE, n_problems)) and the
  `PINNED_VERIFIER_FIELDS` of config.verifier. Accepts a ConfigDict or the
  nested dict of a saved config.json (absent fields are skipped)."""
  out = config_utils.fields(
    config,
    ("seed", "policy_dir", "rows_per_call")
    + tuple(f"verifier.{k}" for k in PINNED_VERIFIER_FIELDS),
  )
  n = config_utils.get(config, "n_problems", None)
  if n is not None:
    out["excluded_heldout_problems"] = max(HELDOUT_EXCLUDE, int(n))
  return out


def validate_verifier_config(config) -> None:
  """Value checks of what training the verifier reads (types are checked by
  the schema), before any model is loaded.

  Raises:
    ValueError: naming the offending field.
  """
  config_utils.positive(
    config,
    "n_problems",
    "rows_per_call",
    "max_verify_tokens",
    "verifier.max_seq_len",
    "verifier.train_problems",
    "verifier.samples_per_problem",
    "verifier.max_new_tokens",
    "verifier.steps",
    "verifier.mark_weight",
    "verifier.batch_size",
    "verifier.seq_len",
    "verifier.learning_rate",
    "verifier.checkpoint_every",
    "verifier.eval_problems",
    "verifier.eval_samples",
    "verifier.eval_verifications",
  )
  config_utils.non_negative(
    config,
    "seed",
    "temperature",
    "verifier.temperature",
    "verifier.warmup_steps",
    "verifier.end_lr_ratio",
    "verifier.weight_decay",
    "verifier.clip_norm",
    "verifier.log_every",
  )


def pin_verifier_dir(config, workdir: str, check_only: bool = False) -> None:
  """Record / check the verifier's settings in its directory (a finished
  verifier made with other settings is refused, naming the fields).

  Raises:
    ValueError: the directory holds a verifier or checkpoints made with other
      settings.
  """
  wd.pin_settings(
    workdir,
    verifier_settings(config),
    results=RESULT_FILES,
    legacy=wd.legacy_config_json(verifier_settings),
    check_only=check_only,
  )


def train_verifier(config, workdir: str, log=wd.progress) -> dict:
  """Train (or resume) the verifier into `workdir`; returns its metrics.

  Raises:
    ValueError: a bad config value or a directory made with other settings
      (before anything is loaded).
    experiments.workdir.WorkdirBusy: another run holds the directory.
  """
  validate_verifier_config(config)
  with wd.lock(workdir):
    pin_verifier_dir(config, workdir)
    return _train_verifier_locked(config, workdir, log)


def _train_verifier_locked(config, workdir: str, log) -> dict:
  t_start = time.perf_counter()
  v = config.verifier
  pcfg, pparams, pconfig = wd.load_policy(config.policy_dir)
  vcfg = verifier_config(pcfg, config)
  exclude = {
    p.question
    for p in tp.heldout_problems(pconfig, max(HELDOUT_EXCLUDE, config.n_problems))
  }
  problems = training_problems(pconfig, v.train_problems, exclude)
  key = jax.random.PRNGKey(config.seed + 11)

  t0 = time.perf_counter()
  prompts = [TOK.encode(p.prompt, add_bos=True) for p in problems]
  toks, lens = sample_forked(
    pcfg,
    pparams,
    prompts,
    jax.random.fold_in(key, 0),
    v.samples_per_problem,
    v.max_new_tokens,
    v.temperature,
    config.rows_per_call,
  )
  cands = decode_rows(toks, lens)
  cprobs = [p for p in problems for _ in range(v.samples_per_problem)]
  examples = [verifier_example(p, c, v.mark_weight) for p, c in zip(cprobs, cands)]
  targets = np.array([verification_target(p, c)[1] for p, c in zip(cprobs, cands)])
  sample_s = time.perf_counter() - t0
  longest = max(len(e[0]) for e in examples)
  if longest > v.seq_len or longest > v.max_seq_len:
    raise ValueError(
      f"a verifier training text has {longest} tokens > "
      f"config.verifier.seq_len={v.seq_len} or max_seq_len="
      f"{v.max_seq_len}"
    )
  log(
    f"genverifier data: {len(examples)} candidates in {sample_s:.0f}s, "
    f"{targets.mean():.3f} with a Yes target, longest {longest} tokens"
  )

  optimizer = tp.make_optimizer(v)
  step_fn = train.make_train_step(train.make_lm_loss_fn(vcfg), optimizer)
  if v.init_from_policy:  # a copy: the train step donates its state
    init = jax.tree_util.tree_map(jnp.copy, pparams)
  else:
    from jaxllm.params import init_params

    init = init_params(vcfg, jax.random.PRNGKey(config.seed + 12))
  state = train.init_train_state(init, optimizer, jax.random.PRNGKey(config.seed + 13))
  ckpt = checkpoint.CheckpointManager(
    os.path.join(workdir, "checkpoints"), save_every=v.checkpoint_every, keep=2
  )
  latest = ckpt.latest_step()
  if latest is not None:
    state = train.restore_train_state(ckpt, vcfg, state, latest)
    log(f"genverifier: resumed from step {latest}")

  t0 = time.perf_counter()
  state, history = train.train_loop(
    state,
    step_fn,
    tp.shuffled_batch_fn(
      examples, config.seed, v.seq_len, v.batch_size, vcfg.vocab_size
    ),
    v.steps,
    checkpoint_manager=ckpt,
    log_every=v.log_every,
    log_fn=lambda s: log(f"[genverifier] {s}"),
    tokens_fn=lambda b: int((b["loss_mask"] > 0).sum()),
  )
  train_s = time.perf_counter() - t0
  checkpoint.save_params(
    os.path.join(workdir, PARAMS_NAME), state.params, overwrite=True
  )
  t0 = time.perf_counter()
  metrics = evaluate(
    vcfg, state.params, pcfg, pparams, pconfig, config, jax.random.fold_in(key, 1)
  )
  metrics.update(
    train_candidates=len(examples),
    train_yes_rate=float(targets.mean()),
    sample_s=sample_s,
    train_s=train_s,
    eval_s=time.perf_counter() - t0,
    total_s=time.perf_counter() - t_start,
    history=history,
  )
  wd.save_config(workdir, config)
  wd.write_json_atomic(os.path.join(workdir, "metrics.json"), metrics, indent=2)
  # written last (atomically): its presence marks a finished verifier
  checkpoint.save_model_config(
    os.path.join(workdir, checkpoint.MODEL_CONFIG_FILE), vcfg
  )
  log(
    f"genverifier: verdict accuracy {metrics['verdict_accuracy']:.3f} "
    f"(on correct {metrics['verdict_accuracy_on_correct']:.3f}, on wrong "
    f"{metrics['verdict_accuracy_on_wrong']:.3f}) | AUROC of the "
    f"{metrics['verifications_per_candidate']}-verdict score vs answer "
    f"{metrics['score_auroc_vs_answer']:.3f} (within problems "
    f"{metrics['within_problem_auroc_vs_answer']:.3f}), single verdict "
    f"{metrics['single_verdict_auroc_vs_answer']:.3f} | train {train_s:.0f}s "
    f"total {metrics['total_s']:.0f}s"
  )
  return metrics


def check_training(config, workdir=None) -> None:
  """The dry run of `train_verifier` into `workdir` (None: config.verifier_dir):
  `validate_verifier_config`, and the directory's pinned settings. Writes
  nothing.

  Raises:
    ValueError: naming the offending field(s).
  """
  validate_verifier_config(config)
  pin_verifier_dir(config, workdir or config.verifier_dir, check_only=True)


def main(argv):
  del argv
  distributed.single_process(
    "experiments.train_genverifier",
    (
      "training is not data-parallel across processes: each process would train its"
      " own copy, and its checkpoints are written by one process"
    ),
  )
  # every config / directory problem, before anything is loaded
  config = wd.config_from_flags(DEFAULT_CONFIG, check=check_training)
  wd.run_cli(train_verifier, config, flags.FLAGS.workdir or config.verifier_dir)


if __name__ == "__main__":
  distributed.define_flags()
  wd.define_flags(
    None,
    DEFAULT_CONFIG,
    workdir_help=(
      "Output directory (default: config.verifier_dir, where "
      "experiments/genrm_allocation.py looks for the verifier)."
    ),
  )
  app.run(main)
