"""The verifier-quality axis of the scaling sweep (experiments/scaling.py).

Every verifier-dependent method of the sweep runs once per verifier of
`config.verifiers`:

  learned      the trained PRM / ORM (experiments/train_verifier.py)
  oracle       the exact step checker: `jaxllm.reward.ReferenceOracle`
               against the problem's reference solution (PRM: the exact
               prefix label of every step, arith.step_labels' semantics;
               ORM: the exact final-answer label, arith.check_answer)
  flip<eps>    the oracle with each label flipped with probability eps
               (e.g. 'flip0.2')
  gauss<sigma> the oracle's logit +-config.oracle_margin plus Gaussian noise
               of std sigma (e.g. 'gauss2'), scores sigmoid of that

The noise is a deterministic function of (config.oracle_seed, the prefix):
`reward.oracle_noise` draws it from fold_in(key(seed), FNV hash of the
prefix tokens), in-graph, so a search re-scoring a prefix (PF, beam, A*)
gets the same score as the pool's best-of-N for that prefix, and the noise
levels share their random numbers (a flip at eps = 0.1 is also a flip at
0.2). The oracles are charged the learned verifier's FLOPs (`cfg` of the
oracle), so every panel of the sweep shares one compute axis and only the
verifier's quality changes.

Row names: a verifier-dependent method m under verifier v is the row
`m@v` (`row_name`); under 'learned' it is plain `m` (the rows of sweeps made
before this axis existed). coverage and majority do not use a verifier.

Verifier quality: the within-problem AUROC (mean over problems with both
correct and wrong samples of the AUROC among the problem's own samples,
`experiments.train_genverifier.within_problem_auroc`, the quantity
best-of-N depends on) of the PRM (min over steps) and of the ORM against
final-answer correctness on the pool.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

from algorithms import selection
from experiments.tasks import arith
from jaxllm import reward
from jaxllm.decoding import fork_rows

TOK = arith.TOKENIZER
LEARNED, ORACLE = "learned", "oracle"
# The GSM8K sweep's verifiers (experiments/sweep_tasks.py): the generator's
# own confidence, and SmolLM2 as a generative verifier of whole samples.
CONFIDENCE, GENRM = "confidence", "genrm"
SEP = "@"  # row name = method + SEP + verifier
_NOISY = re.compile(r"(flip|gauss)(\d+(?:\.\d+)?)")
# Selection methods that use no verifier (the same row in every panel).
VERIFIER_FREE = ("coverage", "majority")
# The pool arrays of the oracle (exact labels and prefix hashes).
ORACLE_ARRAYS = ("oracle_steps", "oracle_step_hash", "oracle_end_hash")


@dataclasses.dataclass(frozen=True)
class Verifier:
  """A parsed `config.verifiers` entry: name, kind ('learned' | 'oracle'),
  flip probability eps and logit noise sigma (0 for the exact oracle)."""

  name: str
  kind: str
  flip_prob: float = 0.0
  logit_noise: float = 0.0


def parse_verifier(name: str, field: str = "config.verifiers") -> Verifier:
  """The verifier a name stands for (module doc).

  Raises:
    ValueError: naming `field` for an unknown name, eps outside [0, 1], a
      noise level of 0 (that is 'oracle') or a non-canonical spelling
      ('flip0.10', 'flip00.1': write 'flip0.1').
  """
  if name == LEARNED:
    return Verifier(name, LEARNED)
  if name == ORACLE:
    return Verifier(name, ORACLE)
  if name in (CONFIDENCE, GENRM):
    return Verifier(name, name)
  m = _NOISY.fullmatch(str(name))
  if not m:
    raise ValueError(
      f"{field}: unknown verifier {name!r}; use 'learned', 'oracle', "
      f"'flip<eps>' (e.g. 'flip0.2') or 'gauss<sigma>' (e.g. 'gauss2') on "
      f"arith, 'confidence' or 'genrm' on gsm8k"
    )
  x = float(m.group(2))
  canonical = m.group(1) + np.format_float_positional(x, trim="-")
  if x == 0:
    raise ValueError(f"{field}: {name!r} is the exact oracle; call it 'oracle'")
  if name != canonical:  # one spelling per verifier, so no level runs twice
    raise ValueError(f"{field}: write {name!r} as {canonical!r}")
  if m.group(1) == "flip":
    if not 0.0 <= x <= 1.0:
      raise ValueError(f"{field}: {name!r}: a flip probability must be in [0, 1]")
    return Verifier(name, ORACLE, flip_prob=x)
  return Verifier(name, ORACLE, logit_noise=x)


def row_name(method: str, verifier: str) -> str:
  """The row name of `method` under `verifier` (plain for 'learned' and for
  the verifier-free methods)."""
  if verifier == LEARNED or method in VERIFIER_FREE:
    return method
  return f"{method}{SEP}{verifier}"


def split_name(name: str) -> tuple[str, str]:
  """(method, verifier) of a row name; verifier 'learned' for a plain name."""
  method, _, verifier = name.partition(SEP)
  return method, verifier or LEARNED


# ------------------------------ the oracle ---------------------------------


def reference_lines(problems) -> list:
  """Per problem the token ids of each reference line (the steps and the
  `A:` line, no delimiters)."""
  return [
    [TOK.encode(line) for line in p.solution.split(arith.DELIM)] for p in problems
  ]


def oracle_model(verifier_cfg=None) -> reward.ReferenceOracle:
  """The arith oracle: lines end at the newline, the text at EOS, PAD / BOS
  ignored; charged the FLOPs of `verifier_cfg` (None: free)."""
  return reward.ReferenceOracle(
    delimiter_ids=(TOK.newline_id,),
    stop_ids=(TOK.eos_id,),
    ignore_ids=(TOK.pad_id, TOK.bos_id),
    cfg=verifier_cfg,
  )


def oracle_params(problems, verifier: Verifier, config) -> reward.OracleParams:
  """`reward.OracleParams` for `problems` under `verifier` (seed and margin
  from config.oracle_seed / config.oracle_margin)."""
  return reward.oracle_params(
    reference_lines(problems),
    seed=config.oracle_seed,
    flip_prob=verifier.flip_prob,
    logit_noise=verifier.logit_noise,
    margin=config.oracle_margin,
  )


@functools.partial(jax.jit, static_argnames=("n_samples",))
def _exact_rows(params, prompts_PxT, plens_P, toks_BxL, valid_BxL, n_samples: int):
  """Exact labels and prefix hashes [B, L] of B = P * N samples (the
  oracle prefilled once per prompt and forked, as in a search)."""
  model = oracle_model()
  state, _ = model.prefill(params, prompts_PxT, plens_P)
  state = model.reorder(state, fork_rows(prompts_PxT.shape[0], n_samples))
  _, labels = model.extend(params, state, toks_BxL, valid_BxL)
  return labels, reward.prefix_hash(state.hash, toks_BxL, valid_BxL)


def pool_oracle_arrays(
  problems, prompts, toks_PxNxL, lens_PxN, max_steps: int, rows_per_call: int
):
  """The exact oracle on a sample pool, at the PRM's step positions (each
  newline / EOS of the generated part, the first `max_steps`).

  Args: problems (P ArithProblem), prompts (P token lists, BOS included),
  toks_PxNxL / lens_PxN the samples, rows_per_call rows per jitted call.

  Returns dict: oracle_steps float32 [P, N, S] (exact labels 0 / 1, 0 where
  there is no step), oracle_step_hash uint32 [P, N, S] (prefix hash at each
  step end), oracle_end_hash uint32 [P, N] (hash of prompt + whole sample,
  the ORM's noise). Deterministic; every process of a multi-process sweep
  computes the same arrays.
  """
  P, N, L = toks_PxNxL.shape
  T = max(len(p) for p in prompts)
  params = reward.oracle_params(reference_lines(problems))
  pt = np.full((P, T), TOK.pad_id, np.int32)
  for p, ids in enumerate(prompts):
    pt[p, : len(ids)] = ids
  plens = np.array([len(x) for x in prompts], np.int32)
  valid = np.arange(L)[None, None] < lens_PxN[..., None]
  step = max(1, rows_per_call // N)
  labels = np.zeros((P, N, L), np.float32)
  hashes = np.zeros((P, N, L), np.uint32)
  for i in range(0, P, step):
    idx = np.minimum(np.arange(i, i + step), P - 1)  # one shape, one compile
    sub = jax.tree_util.tree_map(lambda x, i=idx: x[i] if x.ndim else x, params)
    lab, hs = _exact_rows(
      sub,
      pt[idx],
      plens[idx],
      toks_PxNxL[idx].reshape(-1, L),
      valid[idx].reshape(-1, L),
      N,
    )
    n = min(step, P - i)
    labels[i : i + n] = np.asarray(lab).reshape(step, N, L)[:n]
    hashes[i : i + n] = np.asarray(hs).reshape(step, N, L)[:n]
  steps = np.zeros((P, N, max_steps), np.float32)
  step_hash = np.zeros((P, N, max_steps), np.uint32)
  end_hash = hashes[
    np.arange(P)[:, None], np.arange(N)[None], np.maximum(lens_PxN - 1, 0)
  ]
  for p in range(P):
    for n in range(N):
      gen = toks_PxNxL[p, n, : lens_PxN[p, n]]
      ends = np.flatnonzero((gen == TOK.newline_id) | (gen == TOK.eos_id))[:max_steps]
      steps[p, n, : len(ends)] = labels[p, n, ends]
      step_hash[p, n, : len(ends)] = hashes[p, n, ends]
  return {
    "oracle_steps": steps,
    "oracle_step_hash": step_hash,
    "oracle_end_hash": end_hash,
  }


def _noise_params(verifier: Verifier, config) -> reward.OracleParams:
  z = jnp.zeros((1, 1, 1), jnp.int32)
  return reward.OracleParams(
    ref_tokens=z,
    ref_lengths=z[0],
    n_lines=z[0, 0],
    seed=jnp.asarray(config.oracle_seed, jnp.int32),
    flip_prob=jnp.float32(verifier.flip_prob),
    logit_noise=jnp.float32(verifier.logit_noise),
    margin=jnp.float32(config.oracle_margin),
  )


def pool_for(pool: dict, verifier: str, config) -> dict:
  """The pool with its 'orm' / 'prm_steps' arrays replaced by `verifier`'s
  scores (the pool itself for 'learned' and 'confidence'): the oracle's
  exact labels (ORM: `correct`) through `reward.oracle_noise` at the stored
  prefix hashes; for 'genrm' its verdicts as the ORM and no step scores.

  Raises:
    ValueError: an oracle verifier on a pool without the oracle arrays (one
      saved before this axis existed), naming the missing arrays.
  """
  v = parse_verifier(verifier)
  if v.kind in (LEARNED, CONFIDENCE):  # the pool's own orm / prm arrays
    return pool
  if v.kind == GENRM:  # whole-sample verdicts; no step scores
    if GENRM not in pool:
      raise ValueError(
        f"verifier {verifier!r} needs the pool array 'genrm' (a pool saved "
        "without 'genrm' in config.verifiers): run the sweep in a new --workdir"
      )
    return dict(pool, orm=pool[GENRM], prm_mask=np.zeros_like(pool["prm_mask"]))
  missing = [k for k in ORACLE_ARRAYS if k not in pool]
  if missing:
    raise ValueError(
      f"verifier {verifier!r} needs the pool arrays {missing} (pools saved "
      f"before the verifier axis lack them): run the sweep in a new --workdir"
    )
  params = _noise_params(v, config)
  noisy = jax.jit(reward.oracle_noise)
  prm = noisy(params, jnp.asarray(pool["oracle_steps"] > 0.5), pool["oracle_step_hash"])
  orm = noisy(params, jnp.asarray(pool["correct"]), pool["oracle_end_hash"])
  return dict(pool, prm_steps=np.asarray(prm), orm=np.asarray(orm))


def verifier_quality(pool: dict, verifier: str, config) -> dict:
  """Within-problem AUROC (module doc) of `verifier`'s PRM (min over
  steps) and ORM against final-answer correctness on the pool, their
  pooled AUROC, and for an oracle the measured step-label error rate (the
  fraction of scored steps whose score is on the wrong side of 0.5)."""
  from experiments.train_genverifier import within_problem_auroc

  vp = pool_for(pool, verifier, config)
  c = pool["correct"]
  prm = np.asarray(
    selection.aggregate_step_scores(vp["prm_steps"], vp["prm_mask"], "min"),
    np.float64,
  )
  has_steps = bool(vp["prm_mask"].any())
  out = {
    "prm_within_auroc": within_problem_auroc(prm, c) if has_steps else float("nan"),
    "orm_within_auroc": within_problem_auroc(vp["orm"], c),
    "prm_auroc": reward.auroc(prm, c) if has_steps else float("nan"),
    "orm_auroc": reward.auroc(vp["orm"], c),
  }
  if "oracle_steps" in pool:
    m = pool["prm_mask"]
    wrong = (vp["prm_steps"][m] > 0.5) != (pool["oracle_steps"][m] > 0.5)
    out["step_label_error"] = float(wrong.mean())
    out["scored_steps"] = int(m.sum())
  return out
