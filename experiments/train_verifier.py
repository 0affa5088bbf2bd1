"""Train a PRM and an ORM on samples of the trained arith policy.

  python -m experiments.train_verifier --config=configs/arith_verifier.py \
      [--workdir=results/arith/verifier]

1. Sample `data.samples_per_problem` solutions (temperature 1, `generate`) for
   fresh training problems and for the policy's held-out problems (test).
2. Label every completed step with the exact checker (`arith.step_labels`,
   prefix-correctness) at its delimiter token ("\\n", or EOS for the answer
   line; a step cut off by the token budget gets no label), and every sample
   with final-answer correctness at its last token.
3. Train two reward models (transformer + scalar head, `jaxllm.reward`),
   initialised from the policy's weights: a PRM (BCE at step delimiters) and an
   ORM (BCE at the last token, or at every solution token with
   `train.orm_labels="all"`).
4. Report on the held-out samples: step-level PRM AUROC and ECE (10 bins), ORM
   AUROC and ECE, the PRM's last-step score as an outcome predictor, the
   generator-confidence baseline (exp mean token log-prob of the step), and
   best-of-N accuracy with each score next to pass@1 and majority vote.

Writes to --workdir: prm/ and orm/ (orbax: lm + head), model_config.json,
config.json, metrics.json. Nothing is resumed (every run trains both models
from scratch and rewrites every file), so the workdir is locked against a
concurrent run but its settings are not pinned. The config is checked
(`validate_config`) before anything is loaded.

One process only (training is not data-parallel across processes: each process
would train its own copy, and its checkpoints are written by one process): the
multi-host flags of experiments/distributed.py are accepted; a multi-process run
or --mesh is refused with that reason.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import config_utils
from experiments import distributed
from experiments import train_policy as tp
from experiments import workdir as wd
from algorithms import selection
from experiments.tasks import arith
from jaxllm import checkpoint, reward, train

DEFAULT_CONFIG = config_utils.config_path("arith_verifier.py")
VERIFIER_SEED_OFFSET = 2_000_003  # verifier training problems
TOK = arith.TOKENIZER
ORM_LABELS = ("last", "all")  # train.orm_labels


@dataclasses.dataclass
class Sample:
  problem: int  # index into the problem list
  tokens: list  # BOS + prompt + generated tokens (EOS included if emitted)
  prompt_len: int
  step_pos: list  # token position of each labelled step's delimiter
  step_labels: list  # exact prefix-correctness of those steps
  step_conf: list  # generator confidence of each step: exp(mean log p)
  correct: bool  # final answer correct


def build_samples(problems, toks_RxM, lens_R, lps_RxM, n_samples: int):
  """Label policy samples (rows problem-major) with the exact checker."""
  out = []
  for r in range(toks_RxM.shape[0]):
    j = r // n_samples
    p = problems[j]
    prompt = TOK.encode(p.prompt, add_bos=True)
    n = int(lens_R[r])
    gen = [int(t) for t in toks_RxM[r, :n]]
    ended = n > 0 and gen[-1] == TOK.eos_id
    text = TOK.decode(gen)
    labels = arith.step_labels(p, text)
    ends = arith.step_spans(text)
    pos, lab, conf = [], [], []
    start = 0
    for off, ok in zip(ends, labels):
      if off == len(text) and not ended:
        break  # the last step was cut off by the token budget
      pos.append(len(prompt) + off)
      lab.append(bool(ok))
      conf.append(float(np.exp(np.mean(lps_RxM[r, start : off + 1]))))
      start = off + 1
    out.append(
      Sample(
        problem=j,
        tokens=prompt + gen,
        prompt_len=len(prompt),
        step_pos=pos,
        step_labels=lab,
        step_conf=conf,
        correct=arith.check_answer(p, text),
      )
    )
  return out


def prm_example(s: Sample):
  mask = [0] * len(s.tokens)
  lab = [0] * len(s.tokens)
  for p, l in zip(s.step_pos, s.step_labels):
    mask[p], lab[p] = 1, int(l)
  return s.tokens, mask, lab


def orm_example(s: Sample, where: str):
  T = len(s.tokens)
  if where == "last":
    mask = [0] * (T - 1) + [1]
  elif where == "all":
    mask = [0] * s.prompt_len + [1] * (T - s.prompt_len)
  else:
    raise ValueError(
      f"config.train.orm_labels must be one of {ORM_LABELS}, got {where!r}"
    )
  return s.tokens, mask, [int(s.correct)] * T


def train_reward_model(name, cfg, init, examples, config, log):
  tc = config.train
  optimizer = tp.make_optimizer(tc)
  step_fn = train.make_train_step(reward.reward_loss_fn(cfg), optimizer)
  state = train.init_train_state(init, optimizer, jax.random.PRNGKey(config.seed + 1))
  batch_fn = tp.shuffled_batch_fn(
    examples,
    config.seed,
    tc.seq_len,
    tc.batch_size,
    cfg.vocab_size,
    fields=("label_mask", "labels"),
  )
  state, history = train.train_loop(
    state,
    step_fn,
    batch_fn,
    tc.steps,
    log_every=tc.log_every,
    log_fn=lambda s: log(f"[{name}] {s}"),
    tokens_fn=lambda b: int((b["segment_ids"] > 0).sum()),
  )
  return state.params, history


def score_samples(model: reward.RewardModel, params, samples, batch: int = 256):
  """Reward-model scores after every token of each sample (full forward)."""
  score_fn = jax.jit(model.score_all)
  out = []
  T = train.bucket_length(max(len(s.tokens) for s in samples))
  for i in range(0, len(samples), batch):
    chunk = samples[i : i + batch]
    toks = np.full((batch, T), TOK.pad_id, np.int32)
    for k, s in enumerate(chunk):
      toks[k, : len(s.tokens)] = s.tokens
    sc = np.asarray(score_fn(params, jnp.asarray(toks)))
    out += [sc[k, : len(s.tokens)] for k, s in enumerate(chunk)]
  return out


def _problem_major(samples, values, n_problems):
  """values [R] of problem-major samples as [P, N] (checks the layout)."""
  n = len(samples) // n_problems
  if n * n_problems != len(samples) or any(
    s.problem != r // n for r, s in enumerate(samples)
  ):
    raise ValueError("samples must be problem-major with N per problem")
  return np.asarray(values).reshape(n_problems, n)


def best_of_n(samples, scores, n_problems):
  """Accuracy of `selection.best_of_n` on the samples (every sample counts as
  answered; NaN ranks last, ties go to the lowest index)."""
  scores_PxN = _problem_major(samples, np.asarray(scores, np.float32), n_problems)
  correct_PxN = _problem_major(samples, [s.correct for s in samples], n_problems)
  _, idx_P = selection.best_of_n(scores_PxN, np.zeros(scores_PxN.shape, np.int32))
  return float(correct_PxN[np.arange(n_problems), np.asarray(idx_P)].mean())


def prm_outcome_scores(samples, token_scores, how: str) -> np.ndarray:
  """[R] PRM scores of each sample's steps aggregated by
  `selection.aggregate_step_scores` (no scored step -> -inf)."""
  S = max([len(s.step_pos) for s in samples] + [1])
  steps_RxS = np.zeros((len(samples), S), np.float32)
  mask_RxS = np.zeros((len(samples), S), bool)
  for r, (s, sc) in enumerate(zip(samples, token_scores)):
    steps_RxS[r, : len(s.step_pos)] = [sc[p] for p in s.step_pos]
    mask_RxS[r, : len(s.step_pos)] = True
  return np.asarray(
    selection.aggregate_step_scores(steps_RxS[None], mask_RxS[None], how)
  )[0]


def majority(samples, problems):
  votes = {}
  for s in samples:
    a = arith.extract_answer(TOK.decode(s.tokens[s.prompt_len :]))
    if a is not None:
      votes.setdefault(s.problem, Counter())[a] += 1
  return float(
    np.mean(
      [
        j in votes and votes[j].most_common(1)[0][0] == p.answer
        for j, p in enumerate(problems)
      ]
    )
  )


def validate_config(config) -> None:
  """Check the config before anything is loaded: the schema of
  configs/arith_verifier.py, value ranges, train.orm_labels, and that
  policy_dir holds a trained policy.

  Raises:
    ValueError: naming the offending field.
  """
  config_utils.check(config, config_utils.load_config_file(DEFAULT_CONFIG))
  config_utils.positive(
    config,
    "data.train_problems",
    "data.test_problems",
    "data.samples_per_problem",
    "data.max_new_tokens",
    "train.steps",
    "train.batch_size",
    "train.seq_len",
    "train.learning_rate",
  )
  config_utils.non_negative(
    config,
    "seed",
    "data.temperature",
    "train.warmup_steps",
    "train.end_lr_ratio",
    "train.weight_decay",
    "train.clip_norm",
    "train.log_every",
  )
  config_utils.one_of(config, "train.orm_labels", ORM_LABELS)
  wd.require_files(
    config,
    "policy_dir",
    (checkpoint.MODEL_CONFIG_FILE, wd.CONFIG_FILE, "policy"),
    hint="; train the policy first",
  )


def run(config, workdir: str, log=wd.progress) -> dict:
  """Sample, label, train the PRM and ORM into `workdir`, report; returns the
  metrics.

  Raises:
    ValueError: a bad config (before anything is loaded).
    experiments.workdir.WorkdirBusy: another run holds the workdir.
  """
  validate_config(config)
  with wd.lock(workdir):
    return _run_locked(config, workdir, log)


def _run_locked(config, workdir: str, log) -> dict:
  t_start = time.perf_counter()
  d = config.data

  cfg, policy_params, pconfig = wd.load_policy(config.policy_dir)
  kw = tp.task_kwargs(pconfig)
  test_problems = tp.heldout_problems(pconfig, d.test_problems)
  held = {
    p.question
    for p in tp.heldout_problems(
      pconfig,
      max(
        d.test_problems,
        pconfig.eval.final_problems,
        pconfig.eval.final_sample_problems,
        pconfig.eval.n_problems,
      ),
    )
  }
  pool = arith.generate(
    2 * d.train_problems + 64, pconfig.seed + VERIFIER_SEED_OFFSET, **kw
  )
  train_problems = [p for p in pool if p.question not in held][: d.train_problems]

  t0 = time.perf_counter()
  key = jax.random.PRNGKey(config.seed)
  n = d.samples_per_problem
  tr = tp.sample_tokens(
    cfg,
    policy_params,
    train_problems,
    jax.random.fold_in(key, 0),
    n,
    d.temperature,
    d.max_new_tokens,
  )
  te = tp.sample_tokens(
    cfg,
    policy_params,
    test_problems,
    jax.random.fold_in(key, 1),
    n,
    d.temperature,
    d.max_new_tokens,
  )
  train_samples = build_samples(train_problems, *tr, n)
  test_samples = build_samples(test_problems, *te, n)
  sample_s = time.perf_counter() - t0
  step_lab = [l for s in train_samples for l in s.step_labels]
  log(
    f"sampled {len(train_samples)} train / {len(test_samples)} test solutions "
    f"in {sample_s:.0f}s; train: {np.mean([s.correct for s in train_samples]):.3f}"
    f" correct, {len(step_lab)} labelled steps ({np.mean(step_lab):.3f} correct)"
  )

  init_key = jax.random.PRNGKey(config.seed + 2)
  lm_init = policy_params if config.model.init_from_policy else None
  model = reward.RewardModel(cfg)
  results, timings, params_out = {}, {}, {}
  for name, make in (
    ("prm", prm_example),
    ("orm", lambda s: orm_example(s, config.train.orm_labels)),
  ):
    t0 = time.perf_counter()
    # A fresh copy: the train step donates its state, so the policy's own
    # arrays must not be handed over.
    lm = None if lm_init is None else jax.tree_util.tree_map(jnp.copy, lm_init)
    init = reward.init_reward_params(cfg, init_key, lm)
    params, history = train_reward_model(
      name, cfg, init, [make(s) for s in train_samples], config, log
    )
    timings[f"{name}_train_s"] = time.perf_counter() - t0
    params_out[name] = params
    results[f"{name}_history"] = history
    reward.save_reward_params(os.path.join(workdir, name), params)

  prm_tok = score_samples(model, params_out["prm"], test_samples)
  orm_tok = score_samples(model, params_out["orm"], test_samples)
  step_scores = np.array(
    [sc[p] for s, sc in zip(test_samples, prm_tok) for p in s.step_pos]
  )
  step_labels = np.array([l for s in test_samples for l in s.step_labels])
  step_conf = np.array([c for s in test_samples for c in s.step_conf])
  orm_scores = np.array([sc[-1] for sc in orm_tok])
  outcome = np.array([s.correct for s in test_samples])
  prm_last = prm_outcome_scores(test_samples, prm_tok, "last")
  prm_min = prm_outcome_scores(test_samples, prm_tok, "min")
  P = len(test_problems)
  results.update(
    {
      "prm_step_auroc": reward.auroc(step_scores, step_labels),
      "prm_step_ece": reward.expected_calibration_error(step_scores, step_labels),
      "orm_auroc": reward.auroc(orm_scores, outcome),
      "orm_ece": reward.expected_calibration_error(orm_scores, outcome),
      "prm_last_step_outcome_auroc": reward.auroc(prm_last, outcome),
      "generator_confidence_step_auroc": reward.auroc(step_conf, step_labels),
      "test_steps": int(step_labels.size),
      "test_step_correct_rate": float(step_labels.mean()),
      "test_samples": len(test_samples),
      "test_pass_at_1": float(outcome.mean()),
      f"test_majority_at_{n}": majority(test_samples, test_problems),
      f"test_best_of_{n}_orm": best_of_n(test_samples, orm_scores, P),
      f"test_best_of_{n}_prm_min": best_of_n(test_samples, prm_min, P),
      f"test_best_of_{n}_prm_last": best_of_n(test_samples, prm_last, P),
      f"test_coverage_at_{n}": float(
        np.mean(
          [any(s.correct for s in test_samples if s.problem == j) for j in range(P)]
        )
      ),
      "sample_s": sample_s,
      **timings,
      "total_s": time.perf_counter() - t_start,
    }
  )
  checkpoint.save_model_config(os.path.join(workdir, checkpoint.MODEL_CONFIG_FILE), cfg)
  wd.save_config(workdir, config)
  wd.write_json_atomic(os.path.join(workdir, "metrics.json"), results, indent=2)
  log(
    f"PRM step AUROC {results['prm_step_auroc']:.3f} ECE "
    f"{results['prm_step_ece']:.3f} | ORM AUROC {results['orm_auroc']:.3f} ECE "
    f"{results['orm_ece']:.3f} | gen-confidence step AUROC "
    f"{results['generator_confidence_step_auroc']:.3f}"
  )
  log(
    f"test: pass@1 {results['test_pass_at_1']:.3f} maj@{n} "
    f"{results[f'test_majority_at_{n}']:.3f} BoN@{n} ORM "
    f"{results[f'test_best_of_{n}_orm']:.3f} PRM-min "
    f"{results[f'test_best_of_{n}_prm_min']:.3f} coverage@{n} "
    f"{results[f'test_coverage_at_{n}']:.3f} | total {results['total_s']:.0f}s"
  )
  return results


def main(argv):
  del argv
  distributed.single_process(
    "experiments.train_verifier",
    (
      "training is not data-parallel across processes: each process would train its"
      " own copy, and its checkpoints are written by one process"
    ),
  )
  # every config problem, before anything is loaded
  config = wd.config_from_flags(DEFAULT_CONFIG, check=lambda c, _: validate_config(c))
  wd.run_cli(run, config, flags.FLAGS.workdir)


if __name__ == "__main__":
  distributed.define_flags()
  wd.define_flags("results/arith/verifier", DEFAULT_CONFIG)
  app.run(main)
