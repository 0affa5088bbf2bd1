"""Reward models behind one small interface.

An algorithm (best-of-N, beam search, particle filtering, A*) only needs a
score after each new token of a partial solution, computed incrementally like
the decode interface (jaxllm.decoding):

  prefill(params, tokens_BxT, lengths_B, cache_size) -> (state, score_B)
      score after the last prompt token of each row.
  extend(params, state, tokens_BxS, valid_BxS=None) -> (state, scores_BxS)
      scores[b, s] = score after new token s (valid must be a prefix mask;
      scores at invalid positions are meaningless). A search algorithm reads
      the score at the step's last token (its delimiter).
  reorder(state, index_N) -> state   (fork / resample / reorder rows)

Scores are probabilities in [0, 1] (higher = more likely correct). Scorers:

* `RewardModel`: a PRM or ORM = our transformer + a scalar head on the final
  normed hidden state (`RewardParams`: lm params, head w [D], b []), with its
  own KV cache, so a new step is scored without re-reading the prefix.
  PRM score of a step = sigmoid(head logit at the step's delimiter token);
  ORM score = sigmoid(head logit at the last token). PRM and ORM differ only in
  the labels they are trained on (`reward_loss_fn`, binary cross-entropy at
  labelled positions).
* `GeneratorConfidence`: no trained model; the policy's own confidence in the
  current step: exp(mean log p(token)) over the step's tokens so far
  (mode="logprob", the geometric-mean token probability) or
  exp(-mean entropy of the next-token distributions) (mode="entropy"). The
  running means restart after every delimiter token.
* `ExactChecker`: oracle scores from an exact step checker (host-side Python,
  not jittable; `params` is the list of problems, one per row).
* `generative_verifier_scores`: a chat / LM verifier asked "Is this solution
  correct? Answer Yes or No"; score = p(Yes) / (p(Yes) + p(No)) at the next
  token. Works with any decode-interface model and any tokenizer with
  `encode(text)`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm import cache as cache_lib
from jaxllm.config import ModelConfig
from jaxllm.model import forward, rms_norm
from jaxllm.params import Params, init_params
from jaxllm.train import segment_attention_mask

# ---------------------------------------------------------------------------
# Trained reward model (PRM / ORM): transformer + scalar head.


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class RewardParams:
  lm: Params  # the transformer (its LM head, if untied, is unused)
  head_w: Any  # [D]
  head_b: Any  # [] float32


def init_reward_params(cfg: ModelConfig, key, lm_params: Optional[Params] = None
                       ) -> RewardParams:
  """Random head (small, so initial scores are ~0.5) on a fresh or given
  transformer (e.g. the policy's weights)."""
  k1, k2 = jax.random.split(key)
  lm = init_params(cfg, k1) if lm_params is None else lm_params
  w = 0.01 * jax.random.normal(k2, (cfg.d_model,), jnp.float32)
  return RewardParams(lm=lm, head_w=w, head_b=jnp.zeros((), jnp.float32))


def head_logits(params: RewardParams, cfg: ModelConfig, tokens_BxT, *,
                cache=None, n_valid_B=None, positions_BxT=None,
                attn_mask_BxTxT=None):
  """Scalar-head logits at every position: (logits_BxT float32, new_cache)."""
  _, new_cache, hidden = forward(params.lm, tokens_BxT, cfg, cache=cache,
                                 n_valid_B=n_valid_B, positions_BxT=positions_BxT,
                                 attn_mask_BxTxT=attn_mask_BxTxT,
                                 logits_at="none", return_hidden=True)
  h = rms_norm(hidden[-1], params.lm.final_norm, cfg).astype(jnp.float32)
  return h @ params.head_w.astype(jnp.float32) + params.head_b, new_cache


@dataclasses.dataclass(frozen=True)
class RewardModel:
  """PRM / ORM scorer with its own KV cache (state = KVCache)."""

  cfg: ModelConfig

  def prefill(self, params: RewardParams, tokens_BxT, lengths_B,
              cache_size: int):
    B, T = tokens_BxT.shape
    if T > cache_size:
      raise ValueError(f"prompt length {T} is longer than the cache "
                       f"(cache_size={cache_size})")
    lengths_B = jnp.asarray(lengths_B, jnp.int32)
    state = cache_lib.init_cache(self.cfg, B, cache_size)
    logits, state = head_logits(params, self.cfg, tokens_BxT, cache=state,
                                n_valid_B=lengths_B)
    last = jnp.take_along_axis(logits, jnp.clip(lengths_B - 1, 0, T - 1)[:, None],
                               axis=1)[:, 0]
    return state, jax.nn.sigmoid(last)

  def extend(self, params: RewardParams, state, tokens_BxS, valid_BxS=None):
    B, S = tokens_BxS.shape
    n = (jnp.full((B,), S, jnp.int32) if valid_BxS is None else
         valid_BxS.astype(jnp.int32).sum(-1))
    logits, state = head_logits(params, self.cfg, tokens_BxS, cache=state,
                                n_valid_B=n)
    return state, jax.nn.sigmoid(logits)

  def reorder(self, state, index_N):
    return cache_lib.reorder(state, index_N)

  def lengths(self, state):
    return state.lengths

  def score_all(self, params: RewardParams, tokens_BxT):
    """Scores after every token of full sequences (no cache; for training /
    evaluation)."""
    return jax.nn.sigmoid(head_logits(params, self.cfg, tokens_BxT)[0])


def bce_terms(logits, labels, mask):
  """Summed binary cross-entropy (labels in [0, 1]) over mask, and the count.

  -[y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))]
    = y softplus(-x) + (1 - y) softplus(x)   (stable for any x).
  """
  logits = logits.astype(jnp.float32)
  y = labels.astype(jnp.float32)
  m = mask.astype(jnp.float32)
  per = y * jax.nn.softplus(-logits) + (1.0 - y) * jax.nn.softplus(logits)
  return (per * m).sum(), m.sum()


def bce_loss(logits, labels, mask):
  """Mean binary cross-entropy over the positions where mask is set."""
  s, n = bce_terms(logits, labels, mask)
  return s / jnp.maximum(n, 1.0)


def reward_loss_fn(cfg: ModelConfig):
  """`loss_fn(params, batch, key)` for jaxllm.train.make_train_step.

  batch: tokens [B, T] int, label_mask [B, T] (1 where a label applies: step
  delimiters for a PRM, the last token for an ORM), labels [B, T] in {0, 1};
  optionally segment_ids / positions of packed rows (jaxllm.train.pack_batch).
  aux "correct" counts labelled positions classified right at threshold 0.5.
  """

  def loss_fn(params, batch, key):
    del key
    seg = batch.get("segment_ids")
    logits, _ = head_logits(
        params, cfg, batch["tokens"], positions_BxT=batch.get("positions"),
        attn_mask_BxTxT=None if seg is None else segment_attention_mask(seg))
    s, n = bce_terms(logits, batch["labels"], batch["label_mask"])
    hit = ((logits > 0) == (batch["labels"] > 0.5)).astype(jnp.float32)
    return s, n, {"correct": (hit * batch["label_mask"]).sum()}

  return loss_fn


def save_reward_params(path: str, params: RewardParams) -> None:
  """Orbax checkpoint: <path>/lm (jaxllm.checkpoint layout) + <path>/head."""
  import orbax.checkpoint as ocp

  from jaxllm import checkpoint

  path = os.path.abspath(path)
  checkpoint.save_params(os.path.join(path, "lm"), params.lm, overwrite=True)
  with ocp.StandardCheckpointer() as ck:
    ck.save(os.path.join(path, "head"), {"w": params.head_w, "b": params.head_b},
            force=True)
    ck.wait_until_finished()


def restore_reward_params(path: str, cfg: ModelConfig) -> RewardParams:
  import orbax.checkpoint as ocp

  from jaxllm import checkpoint

  path = os.path.abspath(path)
  lm = checkpoint.restore_params(os.path.join(path, "lm"), cfg)
  target = {"w": jax.ShapeDtypeStruct((cfg.d_model,), jnp.float32),
            "b": jax.ShapeDtypeStruct((), jnp.float32)}
  with ocp.StandardCheckpointer() as ck:
    head = ck.restore(os.path.join(path, "head"), target)
  return RewardParams(lm=lm, head_w=head["w"], head_b=head["b"])


# ---------------------------------------------------------------------------
# The generator's own confidence.


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ConfidenceState:
  inner: Any  # the policy's decode state
  logits_BxV: Any  # next-token logits after the last committed token
  sum_B: Any  # running sum of the per-token statistic in the current step
  count_B: Any  # tokens in the current step so far


@dataclasses.dataclass(frozen=True)
class GeneratorConfidence:
  """Step confidence from the policy itself (params = the policy's params).

  Per token t of a step with predictive distribution p_t (the one t was drawn
  from): x_t = log p_t(t) (mode "logprob") or sum_v p_t(v) log p_t(v) = minus
  the entropy (mode "entropy"). Score after token t = exp(mean of x over the
  step's tokens so far, t included). A token in `delimiter_ids` ends a step:
  its score covers the step including the delimiter, and the next token starts
  a new mean. The prefill score is 1 (an empty step).
  """

  model: Any  # decode-interface model (Transformer, BigramLM, ...)
  delimiter_ids: tuple = ()
  mode: str = "logprob"

  def __post_init__(self):
    if self.mode not in ("logprob", "entropy"):
      raise ValueError(f"GeneratorConfidence.mode must be 'logprob' or "
                       f"'entropy', got {self.mode!r}")
    object.__setattr__(self, "delimiter_ids", tuple(int(i) for i in
                                                    self.delimiter_ids))

  def prefill(self, params, tokens_BxT, lengths_B, cache_size: int):
    inner, logits = self.model.prefill(params, tokens_BxT, lengths_B, cache_size)
    B = tokens_BxT.shape[0]
    state = ConfidenceState(inner=inner, logits_BxV=logits.astype(jnp.float32),
                            sum_B=jnp.zeros((B,), jnp.float32),
                            count_B=jnp.zeros((B,), jnp.float32))
    return state, jnp.ones((B,), jnp.float32)

  def extend(self, params, state: ConfidenceState, tokens_BxS, valid_BxS=None):
    B, S = tokens_BxS.shape
    valid = (jnp.ones((B, S), bool) if valid_BxS is None else
             valid_BxS.astype(bool))
    inner, new_logits = self.model.extend(params, state.inner, tokens_BxS,
                                          valid)
    new_logits = new_logits.astype(jnp.float32)
    prev = jnp.concatenate([state.logits_BxV[:, None], new_logits[:, :-1]], 1)
    logp = jax.nn.log_softmax(prev, axis=-1)  # [B, S, V]
    if self.mode == "logprob":
      x = jnp.take_along_axis(logp, tokens_BxS[..., None], axis=-1)[..., 0]
    else:
      x = (jnp.exp(logp) * logp).sum(-1)
    delim = jnp.zeros((B, S), bool)
    for d in self.delimiter_ids:
      delim = delim | (tokens_BxS == d)

    def body(carry, inp):
      s, c = carry
      x_s, v_s, d_s = inp
      s = s + jnp.where(v_s, x_s, 0.0)
      c = c + v_s.astype(jnp.float32)
      score = jnp.exp(s / jnp.maximum(c, 1.0))
      reset = v_s & d_s
      return (jnp.where(reset, 0.0, s), jnp.where(reset, 0.0, c)), score

    (s, c), scores = jax.lax.scan(body, (state.sum_B, state.count_B),
                                  (x.T, valid.T, delim.T))
    n = valid.astype(jnp.int32).sum(-1)
    last = jnp.take_along_axis(new_logits, jnp.maximum(n - 1, 0)[:, None, None],
                               axis=1)[:, 0]
    logits = jnp.where((n > 0)[:, None], last, state.logits_BxV)
    return ConfidenceState(inner, logits, s, c), scores.T

  def reorder(self, state: ConfidenceState, index_N):
    take = lambda x: jnp.take(x, index_N, axis=0)
    return ConfidenceState(inner=self.model.reorder(state.inner, index_N),
                           logits_BxV=take(state.logits_BxV),
                           sum_B=take(state.sum_B), count_B=take(state.count_B))

  def lengths(self, state: ConfidenceState):
    return self.model.lengths(state.inner)


# ---------------------------------------------------------------------------
# Exact checker (oracle experiments).


@dataclasses.dataclass
class CheckerState:
  tokens: list  # per row: token ids after the prompt
  problem: np.ndarray  # [B] index into the problems list
  score: np.ndarray  # [B] label of the last completed step (1.0 if none)
  lengths: np.ndarray  # [B] committed tokens (prompt + solution)


@dataclasses.dataclass(frozen=True)
class ExactChecker:
  """Oracle scores: 1.0 / 0.0 = the exact label of the latest completed step.

  `label_fn(problem, solution_text) -> list[bool]` labels every step of a
  (partial) solution, e.g. experiments.tasks.arith.step_labels (prefix-based
  labels, so the latest label says whether the whole prefix is right).
  `params` of prefill is the list of problems, one per row. Host-side Python:
  call it outside jit.
  """

  tokenizer: Any  # decode(ids) -> solution text
  label_fn: Callable[[Any, str], Sequence[bool]]
  delimiter_ids: tuple = ()

  def prefill(self, params, tokens_BxT, lengths_B, cache_size: int = 0):
    B = np.shape(tokens_BxT)[0]
    if len(params) != B:
      raise ValueError(f"ExactChecker needs one problem per row: got "
                       f"{len(params)} problems for {B} rows")
    state = CheckerState(tokens=[[] for _ in range(B)], problem=np.arange(B),
                         score=np.ones((B,), np.float32),
                         lengths=np.asarray(lengths_B, np.int32).copy())
    return state, jnp.asarray(state.score)

  def extend(self, params, state: CheckerState, tokens_BxS, valid_BxS=None):
    tokens = np.asarray(tokens_BxS)
    B, S = tokens.shape
    valid = np.ones((B, S), bool) if valid_BxS is None else np.asarray(
        valid_BxS, bool)
    rows = [list(t) for t in state.tokens]
    score = state.score.copy()
    out = np.zeros((B, S), np.float32)
    for b in range(B):
      for s in range(S):
        if valid[b, s]:
          rows[b].append(int(tokens[b, s]))
          if int(tokens[b, s]) in self.delimiter_ids:
            labels = self.label_fn(params[state.problem[b]],
                                   self.tokenizer.decode(rows[b]))
            score[b] = float(labels[-1]) if len(labels) else 1.0
        out[b, s] = score[b]
    new = CheckerState(tokens=rows, problem=state.problem, score=score,
                       lengths=state.lengths + valid.sum(1).astype(np.int32))
    return new, jnp.asarray(out)

  def reorder(self, state: CheckerState, index_N):
    idx = np.asarray(index_N)
    return CheckerState(tokens=[list(state.tokens[i]) for i in idx],
                        problem=state.problem[idx], score=state.score[idx],
                        lengths=state.lengths[idx])

  def lengths(self, state: CheckerState):
    return jnp.asarray(state.lengths)


# ---------------------------------------------------------------------------
# Generative verifier.

DEFAULT_VERIFIER_TEMPLATE = ("Question: {question}\nProposed solution:\n{solution}\n"
                             "Is this solution correct? Answer Yes or No.\n"
                             "Answer:")


def _encode(tokenizer, text: str) -> list[int]:
  """tokenizer.encode without special tokens where the tokenizer has the flag."""
  try:
    params = inspect.signature(tokenizer.encode).parameters
  except (TypeError, ValueError):
    params = {}
  if "add_special_tokens" in params:
    return list(tokenizer.encode(text, add_special_tokens=False))
  return list(tokenizer.encode(text))


def word_token_ids(tokenizer, words: Sequence[str]) -> list[int]:
  """The single token id of each word (ValueError if a word is several
  tokens: pass ids explicitly then)."""
  ids = []
  for w in words:
    t = _encode(tokenizer, w)
    if len(t) != 1:
      raise ValueError(f"{w!r} encodes to {len(t)} tokens {t}; pass yes_ids / "
                       f"no_ids explicitly")
    ids.append(t[0])
  return ids


@functools.partial(jax.jit, static_argnames=("model",))
def _yes_no_logodds(model, params, tokens_BxT, lengths_B, yes_ids, no_ids):
  _, logits = model.prefill(params, tokens_BxT, lengths_B, tokens_BxT.shape[1])
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  ly = jax.scipy.special.logsumexp(logp[:, yes_ids], axis=-1)
  ln = jax.scipy.special.logsumexp(logp[:, no_ids], axis=-1)
  return ly - ln


@dataclasses.dataclass
class VerifierScores:
  scores: np.ndarray  # [N] p(Yes) / (p(Yes) + p(No))
  prompt_tokens: np.ndarray  # [N] tokens the verifier read per solution


def generative_verifier_scores(model, params, tokenizer, questions: Sequence[str],
                               solutions: Sequence[str], *,
                               template: Union[str, Callable[[str, str], str]] =
                               DEFAULT_VERIFIER_TEMPLATE,
                               yes_ids: Optional[Sequence[int]] = None,
                               no_ids: Optional[Sequence[int]] = None,
                               prefix_ids: Sequence[int] = (),
                               batch_size: int = 64,
                               pad_id: int = 0) -> VerifierScores:
  """Ask a verifier model whether each solution is correct.

  The prompt is `template.format(question=..., solution=...)` (or
  `template(question, solution)`, e.g. a chat template with the generation
  prompt appended), encoded without special tokens after `prefix_ids` (e.g.
  BOS). Score = p(Yes) / (p(Yes) + p(No)) of the next token, where p(Yes) sums
  the probabilities of `yes_ids` (default: the single token of "Yes") and
  likewise for No. One prefill per solution; no tokens are generated.
  """
  from jaxllm.generate import pad_prompts

  if len(questions) != len(solutions):
    raise ValueError(f"got {len(questions)} questions for {len(solutions)} "
                     f"solutions")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  yes = list(yes_ids) if yes_ids is not None else word_token_ids(tokenizer, ["Yes"])
  no = list(no_ids) if no_ids is not None else word_token_ids(tokenizer, ["No"])
  if not yes or not no or set(yes) & set(no):
    raise ValueError(f"yes_ids {yes} and no_ids {no} must be non-empty and "
                     f"disjoint")
  fmt = template if callable(template) else (
      lambda q, s: template.format(question=q, solution=s))
  prompts = [list(prefix_ids) + _encode(tokenizer, fmt(q, s))
             for q, s in zip(questions, solutions)]
  out = []
  for i in range(0, len(prompts), batch_size):
    chunk = prompts[i:i + batch_size]
    n = len(chunk)
    chunk = chunk + [chunk[-1]] * (batch_size - n) if len(prompts) > batch_size else chunk
    toks, lens = pad_prompts(chunk, pad_id)
    lo = _yes_no_logodds(model, params, jnp.asarray(toks), jnp.asarray(lens),
                         jnp.asarray(yes, jnp.int32), jnp.asarray(no, jnp.int32))
    out.append(np.asarray(jax.nn.sigmoid(lo))[:n])
  return VerifierScores(scores=np.concatenate(out),
                        prompt_tokens=np.array([len(p) for p in prompts]))


# ---------------------------------------------------------------------------
# Evaluation of scores against binary labels (numpy).


def auroc(scores, labels) -> float:
  """Area under the ROC curve = P(score of a random positive > score of a
  random negative), ties counting 1/2 (Mann-Whitney U with average ranks).
  NaN if either class is empty."""
  from scipy.stats import rankdata

  s = np.asarray(scores, np.float64).ravel()
  y = np.asarray(labels, bool).ravel()
  if s.shape != y.shape:
    raise ValueError(f"scores {s.shape} and labels {y.shape} differ in size")
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  r = rankdata(s)
  return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def expected_calibration_error(probs, labels, n_bins: int = 10) -> float:
  """ECE with equal-width bins on [0, 1]: sum_b (n_b / n) |mean(y_b) - mean(p_b)|
  (a probability of exactly 1 falls in the last bin)."""
  p = np.asarray(probs, np.float64).ravel()
  y = np.asarray(labels, np.float64).ravel()
  if p.shape != y.shape or p.size == 0:
    raise ValueError(f"need equally sized non-empty probs and labels, got "
                     f"{p.shape} and {y.shape}")
  if p.min() < 0 or p.max() > 1:
    raise ValueError("probs must lie in [0, 1]")
  b = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
  ece = 0.0
  for k in range(n_bins):
    m = b == k
    if m.any():
      ece += m.mean() * abs(y[m].mean() - p[m].mean())
  return float(ece)
