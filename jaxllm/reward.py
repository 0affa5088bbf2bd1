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
  correct? Answer Yes or No"; score = p(yes) / (p(yes) + p(no)) at the next
  token, where the yes / no tokens are the ones the model would write there
  (found in context by tokenizing prompt + " Yes", so " Yes" after "Answer:"
  with a byte-level BPE); it also reports p(yes) + p(no), the next-token mass
  the verdict covers. Works with any decode-interface model and any tokenizer
  with `encode(text)`.
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
from jaxllm.validation import check_token_ids

# ---------------------------------------------------------------------------
# Trained reward model (PRM / ORM): transformer + scalar head.


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class RewardParams:
  lm: Params  # the transformer (its LM head, if untied, is unused)
  head_w: Any  # [D]
  head_b: Any  # [] float32


def init_reward_params(
  cfg: ModelConfig, key, lm_params: Optional[Params] = None
) -> RewardParams:
  """Random head (small, so initial scores are ~0.5) on a fresh or given
  transformer (e.g. the policy's weights)."""
  k1, k2 = jax.random.split(key)
  lm = init_params(cfg, k1) if lm_params is None else lm_params
  w = 0.01 * jax.random.normal(k2, (cfg.d_model,), jnp.float32)
  return RewardParams(lm=lm, head_w=w, head_b=jnp.zeros((), jnp.float32))


def head_logits(
  params: RewardParams,
  cfg: ModelConfig,
  tokens_BxT,
  *,
  cache=None,
  n_valid_B=None,
  positions_BxT=None,
  attn_mask_BxTxT=None,
):
  """Scalar-head logits at every position: (logits_BxT float32, new_cache)."""
  _, new_cache, hidden = forward(
    params.lm,
    tokens_BxT,
    cfg,
    cache=cache,
    n_valid_B=n_valid_B,
    positions_BxT=positions_BxT,
    attn_mask_BxTxT=attn_mask_BxTxT,
    logits_at="none",
    return_hidden=True,
  )
  h = rms_norm(hidden[-1], params.lm.final_norm, cfg).astype(jnp.float32)
  return h @ params.head_w.astype(jnp.float32) + params.head_b, new_cache


@dataclasses.dataclass(frozen=True)
class RewardModel:
  """PRM / ORM scorer with its own KV cache (state = KVCache)."""

  cfg: ModelConfig

  def prefill(self, params: RewardParams, tokens_BxT, lengths_B, cache_size: int):
    B, T = tokens_BxT.shape
    if T > cache_size:
      raise ValueError(
        f"prompt length {T} is longer than the cache (cache_size={cache_size})"
      )
    lengths_B = jnp.asarray(lengths_B, jnp.int32)
    state = cache_lib.init_cache(self.cfg, B, cache_size)
    logits, state = head_logits(
      params, self.cfg, tokens_BxT, cache=state, n_valid_B=lengths_B
    )
    last = jnp.take_along_axis(
      logits, jnp.clip(lengths_B - 1, 0, T - 1)[:, None], axis=1
    )[:, 0]
    return state, jax.nn.sigmoid(last)

  def extend(self, params: RewardParams, state, tokens_BxS, valid_BxS=None):
    B, S = tokens_BxS.shape
    n = (
      jnp.full((B,), S, jnp.int32)
      if valid_BxS is None
      else valid_BxS.astype(jnp.int32).sum(-1)
    )
    logits, state = head_logits(params, self.cfg, tokens_BxS, cache=state, n_valid_B=n)
    return state, jax.nn.sigmoid(logits)

  def reorder(self, state, index):
    return cache_lib.reorder(state, index)

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
      params,
      cfg,
      batch["tokens"],
      positions_BxT=batch.get("positions"),
      attn_mask_BxTxT=None if seg is None else segment_attention_mask(seg),
    )
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
    ck.save(
      os.path.join(path, "head"), {"w": params.head_w, "b": params.head_b}, force=True
    )
    ck.wait_until_finished()


def restore_reward_params(path: str, cfg: ModelConfig) -> RewardParams:
  import orbax.checkpoint as ocp

  from jaxllm import checkpoint

  path = os.path.abspath(path)
  lm = checkpoint.restore_params(os.path.join(path, "lm"), cfg)
  # Targets on this process's first device (as restore_params does): without
  # a sharding orbax places the head on the device it was saved from, which
  # another process of a multi-process run cannot address.
  here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = {
    "w": jax.ShapeDtypeStruct((cfg.d_model,), jnp.float32, sharding=here),
    "b": jax.ShapeDtypeStruct((), jnp.float32, sharding=here),
  }
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
      raise ValueError(
        f"GeneratorConfidence.mode must be 'logprob' or 'entropy', got {self.mode!r}"
      )
    object.__setattr__(self, "delimiter_ids", tuple(int(i) for i in self.delimiter_ids))

  def prefill(self, params, tokens_BxT, lengths_B, cache_size: int):
    inner, logits = self.model.prefill(params, tokens_BxT, lengths_B, cache_size)
    B = tokens_BxT.shape[0]
    state = ConfidenceState(
      inner=inner,
      logits_BxV=logits.astype(jnp.float32),
      sum_B=jnp.zeros((B,), jnp.float32),
      count_B=jnp.zeros((B,), jnp.float32),
    )
    return state, jnp.ones((B,), jnp.float32)

  def extend(self, params, state: ConfidenceState, tokens_BxS, valid_BxS=None):
    B, S = tokens_BxS.shape
    valid = jnp.ones((B, S), bool) if valid_BxS is None else valid_BxS.astype(bool)
    inner, new_logits = self.model.extend(params, state.inner, tokens_BxS, valid)
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

    (s, c), scores = jax.lax.scan(
      body, (state.sum_B, state.count_B), (x.T, valid.T, delim.T)
    )
    n = valid.astype(jnp.int32).sum(-1)
    last = jnp.take_along_axis(
      new_logits, jnp.maximum(n - 1, 0)[:, None, None], axis=1
    )[:, 0]
    logits = jnp.where((n > 0)[:, None], last, state.logits_BxV)
    return ConfidenceState(inner, logits, s, c), scores.T

  def reorder(self, state: ConfidenceState, index):
    take = lambda x: cache_lib.take_rows(x, index)
    return ConfidenceState(
      inner=self.model.reorder(state.inner, index),
      logits_BxV=take(state.logits_BxV),
      sum_B=take(state.sum_B),
      count_B=take(state.count_B),
    )

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
      raise ValueError(
        f"ExactChecker needs one problem per row: got "
        f"{len(params)} problems for {B} rows"
      )
    state = CheckerState(
      tokens=[[] for _ in range(B)],
      problem=np.arange(B),
      score=np.ones((B,), np.float32),
      lengths=np.asarray(lengths_B, np.int32).copy(),
    )
    return state, jnp.asarray(state.score)

  def extend(self, params, state: CheckerState, tokens_BxS, valid_BxS=None):
    tokens = np.asarray(tokens_BxS)
    B, S = tokens.shape
    valid = np.ones((B, S), bool) if valid_BxS is None else np.asarray(valid_BxS, bool)
    rows = [list(t) for t in state.tokens]
    score = state.score.copy()
    out = np.zeros((B, S), np.float32)
    for b in range(B):
      for s in range(S):
        if valid[b, s]:
          rows[b].append(int(tokens[b, s]))
          if int(tokens[b, s]) in self.delimiter_ids:
            labels = self.label_fn(
              params[state.problem[b]], self.tokenizer.decode(rows[b])
            )
            score[b] = float(labels[-1]) if len(labels) else 1.0
        out[b, s] = score[b]
    new = CheckerState(
      tokens=rows,
      problem=state.problem,
      score=score,
      lengths=state.lengths + valid.sum(1).astype(np.int32),
    )
    return new, jnp.asarray(out)

  def reorder(self, state: CheckerState, index):
    idx = np.asarray(cache_lib.flat_index(jnp.asarray(index), len(state.tokens)))
    return CheckerState(
      tokens=[list(state.tokens[i]) for i in idx],
      problem=state.problem[idx],
      score=state.score[idx],
      lengths=state.lengths[idx],
    )

  def lengths(self, state: CheckerState):
    return jnp.asarray(state.lengths)


# ---------------------------------------------------------------------------
# Reference-line oracle (exact or noisy), in-graph.

_FNV_OFFSET = 2166136261  # FNV-1a 32-bit offset basis
_FNV_PRIME = 16777619  # FNV-1a 32-bit prime


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class OracleParams:
  """What `ReferenceOracle` scores against, and its noise (all traced: a new
  noise level or seed does not recompile).

  Fields: ref_tokens int32 [P, K, L] (line k of problem p's reference
  solution, delimiter excluded, padded with -1), ref_lengths int32 [P, K],
  n_lines int32 [P] (lines of problem p, the answer line included), seed
  int32 [] (the noise seed), flip_prob float32 [] (eps: probability that a
  label is flipped), logit_noise float32 [] (sigma: std of Gaussian noise on
  the logit; 0 = binary scores), margin float32 [] (the noiseless logit
  magnitude m when sigma > 0).
  """

  ref_tokens: Any
  ref_lengths: Any
  n_lines: Any
  seed: Any
  flip_prob: Any
  logit_noise: Any
  margin: Any


def oracle_params(
  lines: Sequence[Sequence[Sequence[int]]],
  *,
  seed: int = 0,
  flip_prob: float = 0.0,
  logit_noise: float = 0.0,
  margin: float = 2.0,
) -> OracleParams:
  """`OracleParams` from P problems' reference lines (token ids per line,
  delimiters excluded; e.g. the arith steps and the `A:` line).

  Raises:
    ValueError: no problem, a problem without lines, an empty line, a
      negative token id, flip_prob outside [0, 1], logit_noise < 0 or
      margin <= 0.
  """
  if not lines:
    raise ValueError("oracle_params: no problems (lines is empty)")
  for p, ls in enumerate(lines):
    if not ls or any(len(line) == 0 for line in ls):
      raise ValueError(f"oracle_params: problem {p} has no lines or an empty line")
    if any(min(line) < 0 for line in ls):
      raise ValueError(f"oracle_params: problem {p} has a negative token id")
  if not 0.0 <= flip_prob <= 1.0:
    raise ValueError(f"oracle_params: flip_prob must be in [0, 1], got {flip_prob}")
  if not logit_noise >= 0.0:
    raise ValueError(f"oracle_params: logit_noise must be >= 0, got {logit_noise}")
  if not margin > 0.0:
    raise ValueError(f"oracle_params: margin must be > 0, got {margin}")
  P, K = len(lines), max(len(ls) for ls in lines)
  L = max(len(line) for ls in lines for line in ls)
  toks = np.full((P, K, L), -1, np.int32)
  lens = np.zeros((P, K), np.int32)
  for p, ls in enumerate(lines):
    for k, line in enumerate(ls):
      toks[p, k, : len(line)] = line
      lens[p, k] = len(line)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return OracleParams(
    ref_tokens=jnp.asarray(toks),
    ref_lengths=jnp.asarray(lens),
    n_lines=jnp.asarray([len(ls) for ls in lines], jnp.int32),
    seed=jnp.asarray(seed, jnp.int32),
    flip_prob=f32(flip_prob),
    logit_noise=f32(logit_noise),
    margin=f32(margin),
  )


def prefix_hash(hash_B, tokens_BxS, valid_BxS):
  """FNV-1a over token ids, continued from hash_B (uint32 [B]; start from
  `jnp.uint32(2166136261)`) with the valid tokens of each row: uint32 [B, S],
  the hash after each token (an invalid position repeats the previous one).
  Identifies a prefix (up to 32-bit collisions) inside jit."""

  def body(h, inp):
    t, v = inp
    new = (h ^ t.astype(jnp.uint32)) * jnp.uint32(_FNV_PRIME)
    h = jnp.where(v, new, h)
    return h, h

  _, hs = jax.lax.scan(body, hash_B.astype(jnp.uint32), (tokens_BxS.T, valid_BxS.T))
  return hs.T


def oracle_noise(params: OracleParams, label, hash_):
  """Noisy oracle score of exact labels (bool, any shape) at prefixes with
  the given hashes (uint32, same shape): the label is flipped iff
  u < flip_prob, with u ~ U[0, 1) drawn from fold_in(key(seed), hash), so
  the same (seed, prefix) always gets the same score. With logit_noise
  sigma > 0 the score is sigmoid(+-margin + sigma z), z ~ N(0, 1) from the
  same key (+ for a label that is 1 after flipping); with sigma = 0 it is
  the flipped label as 0.0 / 1.0. Returns float32 of label's shape."""
  base = jax.random.key(params.seed)
  keys = jax.vmap(lambda h: jax.random.fold_in(base, h))(hash_.ravel())
  u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0)))(keys)
  z = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1)))(keys)
  noisy = label.ravel() ^ (u < params.flip_prob)
  sign = jnp.where(noisy, 1.0, -1.0)
  soft = jax.nn.sigmoid(sign * params.margin + params.logit_noise * z)
  out = jnp.where(params.logit_noise > 0, soft, noisy.astype(jnp.float32))
  return out.reshape(label.shape).astype(jnp.float32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class OracleState:
  """Per row (all [B]): problem int32 (row of OracleParams), line int32
  (index of the line being written), pos int32 (its tokens so far), line_ok
  bool (they match the reference line), prefix_ok bool (every completed line
  was correct), label bool (exact label of the text so far), ended bool (a
  stop token was seen), hash uint32 (`prefix_hash` of prompt + solution),
  lengths int32 (committed tokens)."""

  problem: Any
  line: Any
  pos: Any
  line_ok: Any
  prefix_ok: Any
  label: Any
  ended: Any
  hash: Any
  lengths: Any


@dataclasses.dataclass(frozen=True)
class ReferenceOracle:
  """Exact (and optionally noisy) step scores against a reference solution,
  with the reward-model interface (prefill / extend / reorder), jittable, so
  particle filtering, beam search, A* and best-of-N use it through
  `algorithms.scorers.ModelStepScorer` like a trained PRM.

  Exact label of a (partial) solution = the label of its last line, for a
  task with one valid path and prefix-based labels (Math-Shepherd "hard"
  labels; experiments/tasks/arith.step_labels): line i is correct iff every
  earlier line is correct, i < n_lines, and its tokens equal reference line
  i exactly. A line ends at a token of `delimiter_ids`; a line still being
  written is labelled as if it ended there; a token of `stop_ids` ends the
  text (on a fresh line it adds no line; an empty solution is wrong);
  `ignore_ids` (pad, BOS) change nothing but the prefix hash. Rows of
  prefill are problems in OracleParams order (fork them with `reorder`).
  The scores are `oracle_noise(params, label, hash of the prefix)`: exact
  0 / 1 with flip_prob = logit_noise = 0.

  Compared with arith.step_labels (which parses integers), a number written
  with a leading zero ("07") or as "-0" is wrong here and may be right there.

  `cfg`: the verifier this oracle stands in for; it is charged that model's
  FLOPs (`jaxllm.flops`), so a sweep compares verifiers at equal cost; None
  = free (`flops_free`).
  """

  delimiter_ids: tuple = ()
  stop_ids: tuple = ()
  ignore_ids: tuple = ()
  cfg: ModelConfig | None = None

  @property
  def flops_free(self) -> bool:
    return self.cfg is None

  def prefill(self, params: OracleParams, tokens_BxT, lengths_B, cache_size: int = 0):
    """Hash each prompt; state with nothing written; score = noisy(True)."""
    B, T = tokens_BxT.shape
    lengths_B = jnp.asarray(lengths_B, jnp.int32)
    if params.n_lines.shape[0] != B:
      raise ValueError(
        f"ReferenceOracle needs one problem per prefill row: got "
        f"{params.n_lines.shape[0]} problems for {B} rows"
      )
    valid = jnp.arange(T)[None, :] < lengths_B[:, None]
    h0 = jnp.full((B,), _FNV_OFFSET, jnp.uint32)
    h = prefix_hash(h0, jnp.asarray(tokens_BxT), valid)[:, -1] if T else h0
    zeros = jnp.zeros((B,), jnp.int32)
    yes = jnp.ones((B,), bool)
    state = OracleState(
      problem=jnp.arange(B, dtype=jnp.int32),
      line=zeros,
      pos=zeros,
      line_ok=yes,
      prefix_ok=yes,
      label=yes,
      ended=~yes,
      hash=h,
      lengths=lengths_B,
    )
    return state, oracle_noise(params, state.label, state.hash)

  def _token(self, params: OracleParams, st: OracleState, t, v):
    """One token (int32 [B], valid bool [B]) -> new state."""
    member = lambda ids: functools.reduce(
      jnp.logical_or, [t == i for i in ids], jnp.zeros(t.shape, bool)
    )
    live = v & ~st.ended
    is_stop, is_delim = member(self.stop_ids), member(self.delimiter_ids)
    is_tok = ~is_stop & ~is_delim & ~member(self.ignore_ids)
    K, L = params.ref_tokens.shape[1:]
    n = params.n_lines[st.problem]
    k = jnp.clip(st.line, 0, K - 1)
    in_ref = st.line < n
    ref_len = jnp.where(in_ref, params.ref_lengths[st.problem, k], 0)
    want = params.ref_tokens[st.problem, k, jnp.clip(st.pos, 0, L - 1)]
    tok_ok = st.line_ok & (st.pos < ref_len) & (want == t)
    full = st.prefix_ok & st.line_ok & in_ref & (st.pos == ref_len)
    # a stop on a fresh line ends the text without a new line
    closes = live & (is_delim | (is_stop & (st.pos > 0)))
    empty_stop = live & is_stop & (st.pos == 0)
    step = live & is_tok
    label = jnp.where(closes, full, st.label)
    label = jnp.where(empty_stop & (st.line == 0), False, label)
    tok_label = st.prefix_ok & tok_ok & in_ref & (st.pos + 1 == ref_len)
    label = jnp.where(step, tok_label, label)
    return OracleState(
      problem=st.problem,
      line=st.line + closes.astype(jnp.int32),
      pos=jnp.where(closes, 0, st.pos + step.astype(jnp.int32)),
      line_ok=jnp.where(closes, True, jnp.where(step, tok_ok, st.line_ok)),
      prefix_ok=jnp.where(closes, full, st.prefix_ok),
      label=label,
      ended=st.ended | (live & is_stop),
      hash=st.hash,
      lengths=st.lengths + v.astype(jnp.int32),
    )

  def extend(
    self, params: OracleParams, state: OracleState, tokens_BxS, valid_BxS=None
  ):
    """Scores [B, S] after each new token (valid must be a prefix mask)."""
    B, S = tokens_BxS.shape
    tokens_BxS = jnp.asarray(tokens_BxS, jnp.int32)
    valid = (
      jnp.ones((B, S), bool) if valid_BxS is None else jnp.asarray(valid_BxS, bool)
    )
    hashes = prefix_hash(state.hash, tokens_BxS, valid)

    def body(st, inp):
      t, v = inp
      st = self._token(params, st, t, v)
      return st, st.label

    state, labels = jax.lax.scan(body, state, (tokens_BxS.T, valid.T))
    state = dataclasses.replace(state, hash=hashes[:, -1] if S else state.hash)
    return state, oracle_noise(params, labels.T, hashes)

  def reorder(self, state: OracleState, index):
    return jax.tree_util.tree_map(lambda x: cache_lib.take_rows(x, index), state)

  def lengths(self, state: OracleState):
    return state.lengths


# ---------------------------------------------------------------------------
# Generative verifier.

DEFAULT_VERIFIER_TEMPLATE = (
  "Question: {question}\nProposed solution:\n{solution}\n"
  "Is this solution correct? Answer Yes or No.\n"
  "Answer:"
)


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
  """The single token id of each word encoded ON ITS OWN (ValueError if a word
  is several tokens).

  Out of context: a byte-level BPE writes "Yes" after "Answer:" as the token
  " Yes", not "Yes". To find the tokens a model emits after a prompt use
  `verdict_token_ids`.
  """
  ids = []
  for w in words:
    t = _encode(tokenizer, w)
    if len(t) != 1:
      raise ValueError(
        f"{w!r} encodes to {len(t)} tokens {t}; pass yes_ids / no_ids explicitly"
      )
    ids.append(t[0])
  return ids


def default_verdict_words(prompt: str) -> tuple[str, str]:
  """The verdict as a writer continues `prompt`: (" Yes", " No") after a
  non-space character (the default template ends in "Answer:"), ("Yes", "No")
  after whitespace or an empty prompt (a chat template's generation prompt
  ends in a newline)."""
  sep = "" if not prompt or prompt[-1].isspace() else " "
  return sep + "Yes", sep + "No"


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
  n = 0
  for x, y in zip(a, b):
    if x != y:
      break
    n += 1
  return n


def verdict_token_ids(
  tokenizer, prompt: str, words: Sequence[str]
) -> tuple[list[int], list[int]]:
  """The token a model emits first for each of `words` right after `prompt`.

  Encodes `prompt` and `prompt + word` for every word (without special
  tokens) and reads each word's first token after the longest token prefix
  they all share, so the answer is right for any tokenizer (byte-level BPE
  " Yes" = "ĠYes", SentencePiece "▁Yes", ...), including one that merges the
  prompt's last characters into the word (a prompt ending in "Answer: " with
  word "Yes" gives the context "...Answer:" and the token " Yes").

  Args:
    tokenizer: anything with `encode(text)` (`add_special_tokens=False` is
      passed when accepted).
    prompt: the verifier prompt text the verdict follows.
    words: the verdict words as they continue the prompt, e.g. (" Yes", " No").

  Returns:
    (context, ids): context = the shared token prefix, i.e. the prompt's tokens
    the model reads before the verdict ([L] ints; all of encode(prompt) unless
    the tokenizer merges across the boundary); ids = [len(words)] ints, the
    first token of each word after the context (a word of several tokens is
    represented by its first token).

  Raises:
    ValueError: naming the words, if a word adds no token after the prompt,
      if the words tokenize the prompt's end differently (at the shared
      context one word's next token is still prompt text), or if two words
      share their first token.
  """
  base = _encode(tokenizer, prompt)
  fulls = [_encode(tokenizer, prompt + w) for w in words]
  shared = [_common_prefix(base, f) for f in fulls]
  k = min(shared) if shared else len(base)
  tail = repr(prompt[-24:])
  for w, f, s in zip(words, fulls, shared):
    if len(f) <= k:
      raise ValueError(
        f"verdict word {w!r} adds no token after the prompt "
        f"(ending {tail}); pass yes_ids / no_ids explicitly"
      )
    if s > k:
      raise ValueError(
        f"verdict words {list(words)} tokenize the end of the "
        f"prompt (ending {tail}) differently, so they do not "
        f"start at the same token; pass yes_ids / no_ids "
        f"explicitly"
      )
  ids = [f[k] for f in fulls]
  if len(set(ids)) != len(ids):
    raise ValueError(
      f"verdict words {list(words)} start with the same token "
      f"ids {ids} after the prompt (ending {tail}); choose words "
      f"whose first tokens differ or pass yes_ids / no_ids"
    )
  return base[:k], ids


@functools.partial(jax.jit, static_argnames=("model",))
def _yes_no_logprobs(model, params, tokens_BxT, lengths_B, yes_BxK, no_BxJ, extra_E):
  """(log p(yes) [B], log p(no) [B], log p(extra) [B, E]) of the next token
  after each prompt; yes / no are logsumexps over that row's ids."""
  _, logits = model.prefill(params, tokens_BxT, lengths_B, tokens_BxT.shape[1])
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  ly = jax.scipy.special.logsumexp(jnp.take_along_axis(logp, yes_BxK, axis=1), axis=-1)
  ln = jax.scipy.special.logsumexp(jnp.take_along_axis(logp, no_BxJ, axis=1), axis=-1)
  return ly, ln, logp[:, extra_E]


@dataclasses.dataclass
class VerifierScores:
  """What `generative_verifier_scores` read and said, per solution (N rows)."""

  scores: np.ndarray  # [N] float, p(yes) / (p(yes) + p(no)) of the next token
  prompt_tokens: np.ndarray  # [N] int, tokens the verifier read per solution
  # [N] float, p(yes) + p(no) of the next token: how much of the model's
  # next-token mass the verdict tokens cover. Small values mean the model
  # would say something else there (wrong verdict tokens or template).
  verdict_mass: np.ndarray
  yes_ids: np.ndarray  # [N, Ky] int, the token ids summed as "yes" per row
  no_ids: np.ndarray  # [N, Kn] int, the token ids summed as "no" per row
  # [N, E] float, log p of each of `extra_ids` as the next token (diagnostics,
  # e.g. another choice of verdict tokens read from the same forward pass)
  extra_logprobs: np.ndarray


def _model_vocab_size(model, params) -> int:
  """The model's V: `model.vocab_size`, else the width of its prefill logits
  (abstract evaluation, no compute)."""
  V = getattr(model, "vocab_size", None)
  if V is None:
    tok = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    lens = jax.ShapeDtypeStruct((1,), jnp.int32)
    _, logits = jax.eval_shape(
      lambda p, t, n: model.prefill(p, t, n, 1), params, tok, lens
    )
    V = logits.shape[-1]
  return int(V)


def _id_set(name: str, ids, vocab_size: int) -> np.ndarray:
  arr = np.unique(check_token_ids(name, ids, vocab_size).ravel())
  if arr.size == 0:
    raise ValueError(f"{name} must not be empty")
  return arr


def generative_verifier_scores(
  model,
  params,
  tokenizer,
  questions: Sequence[str],
  solutions: Sequence[str],
  *,
  template: Union[str, Callable[[str, str], str]] = DEFAULT_VERIFIER_TEMPLATE,
  verdict_words: Optional[Sequence[str]] = None,
  yes_ids: Optional[Sequence[int]] = None,
  no_ids: Optional[Sequence[int]] = None,
  prefix_ids: Sequence[int] = (),
  extra_ids: Sequence[int] = (),
  batch_size: int = 64,
  pad_id: int = 0,
  buckets: Optional[Sequence[int]] = None,
) -> VerifierScores:
  """Ask a verifier model whether each solution is correct.

  The prompt text is `template.format(question=..., solution=...)` (or
  `template(question, solution)`, e.g. a chat template with the generation
  prompt appended). Score = p(yes) / (p(yes) + p(no)) of the next token; one
  prefill per solution, no tokens generated.

  By default the yes / no tokens are found IN CONTEXT for each prompt
  (`verdict_token_ids`): the first token of `prompt + verdict_words[0]` resp.
  `[1]` after the tokens they share with the prompt. `verdict_words` defaults
  to `default_verdict_words(prompt)`: (" Yes", " No") after the default
  template's "Answer:", ("Yes", "No") after a prompt ending in whitespace.
  The verifier reads `prefix_ids` (e.g. BOS) + that shared context.

  With explicit `yes_ids` and `no_ids` (both; each a set of ids whose
  probabilities are summed) the verifier reads `prefix_ids` + the whole
  encoded prompt and nothing is derived.

  Args:
    model: a decode-interface model (`prefill`), e.g. `Transformer(cfg)`.
    params: its parameters.
    tokenizer: `encode(text)` (without special tokens where it has the flag).
    questions, solutions: N strings each.
    extra_ids: E more ids whose next-token log-probabilities are returned
      (`extra_logprobs`, at the same position as the verdict).
    batch_size: prompts per prefill (shorter prompts are batched together;
      the last batch is padded to this size when N > batch_size).
    pad_id: id written into padding positions.
    buckets: padded prompt lengths (`jaxllm.generate.pad_prompts`; default
      powers of two). Each distinct padded length compiles once.

  Returns:
    VerifierScores with scores [N], prompt_tokens [N], verdict_mass [N]
    (p(yes) + p(no)), yes_ids [N, Ky], no_ids [N, Kn], extra_logprobs
    [N, E].

  Raises:
    ValueError: different numbers of questions and solutions; batch_size < 1;
      only one of yes_ids / no_ids given; empty or overlapping yes / no ids;
      verdict words that cannot be told apart (see `verdict_token_ids`); and,
      before any model call, any prompt, prefix, pad, yes / no or extra id
      outside [0, V) of the model (`check_token_ids`).
  """
  _check_verifier_args(questions, solutions, batch_size, yes_ids, no_ids, verdict_words)
  V = _model_vocab_size(model, params)
  prefix = [int(i) for i in check_token_ids("prefix_ids", list(prefix_ids), V).ravel()]
  check_token_ids("pad_id", pad_id, V)
  extra = check_token_ids("extra_ids", list(extra_ids), V).ravel()
  texts = _verifier_texts(template, questions, solutions)
  verdict = (yes_ids, no_ids, verdict_words)  # how the verdict tokens are found
  prompts, yes_NxK, no_NxK = _verifier_prompts(tokenizer, texts, prefix, *verdict, V)
  ly, ln, lx = _verdict_logprobs(
    model, params, prompts, yes_NxK, no_NxK, extra, batch_size, pad_id, buckets
  )
  ly64, ln64 = ly.astype(np.float64), ln.astype(np.float64)
  return VerifierScores(
    scores=1.0 / (1.0 + np.exp(ln64 - ly64)),
    prompt_tokens=np.array([len(p) for p in prompts], np.int64),
    verdict_mass=np.exp(ly64) + np.exp(ln64),
    yes_ids=np.asarray(yes_NxK, np.int64),
    no_ids=np.asarray(no_NxK, np.int64),
    extra_logprobs=lx.astype(np.float64),
  )


def _check_verifier_args(
  questions, solutions, batch_size, yes_ids, no_ids, verdict_words
) -> None:
  """`generative_verifier_scores`' argument checks that need no model; raises
  ValueError."""
  if len(questions) != len(solutions):
    raise ValueError(f"got {len(questions)} questions for {len(solutions)} solutions")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if (yes_ids is None) != (no_ids is None):
    raise ValueError(
      "pass both yes_ids and no_ids, or neither (then both are "
      "derived in context from verdict_words)"
    )
  if verdict_words is not None and len(verdict_words) != 2:
    raise ValueError(
      f"verdict_words must be (yes_word, no_word), got {verdict_words!r}"
    )


def _verifier_texts(template, questions, solutions) -> list[str]:
  """The verifier prompt texts: template.format(question=, solution=) or
  template(question, solution)."""
  fmt = (
    template
    if callable(template)
    else (lambda q, s: template.format(question=q, solution=s))
  )
  return [fmt(q, s) for q, s in zip(questions, solutions)]


def _verifier_prompts(tokenizer, texts, prefix, yes_ids, no_ids, verdict_words, V):
  """(prompts: N token lists, yes_NxK, no_NxK): prefix + the encoded text with
  the given yes / no ids, or prefix + the context the verdict words share with
  the text and their first tokens (`verdict_token_ids`).

  Raises:
    ValueError: empty or overlapping yes / no ids, verdict words that cannot be
      told apart, an empty prompt, or an id outside [0, V).
  """
  N = len(texts)
  if yes_ids is not None:
    yes, no = _id_set("yes_ids", yes_ids, V), _id_set("no_ids", no_ids, V)
    if set(yes.tolist()) & set(no.tolist()):
      raise ValueError(
        f"yes_ids {yes.tolist()} and no_ids {no.tolist()} must be disjoint"
      )
    prompts = [prefix + _encode(tokenizer, t) for t in texts]
    yes_NxK = np.tile(yes, (N, 1))
    no_NxK = np.tile(no, (N, 1))
  else:
    prompts, pairs = [], []
    for t in texts:
      words = (
        default_verdict_words(t) if verdict_words is None else tuple(verdict_words)
      )
      ctx, ids = verdict_token_ids(tokenizer, t, words)
      prompts.append(prefix + ctx)
      pairs.append(ids)
    pairs = np.asarray(pairs, np.int64).reshape(N, 2)
    yes_NxK = check_token_ids(
      "yes_ids (derived from the verdict words)", pairs[:, :1], V
    )
    no_NxK = check_token_ids("no_ids (derived from the verdict words)", pairs[:, 1:], V)
  if N and any(len(p) == 0 for p in prompts):
    raise ValueError("a verifier prompt has no tokens (empty template and prefix_ids?)")
  if N:
    check_token_ids(
      "verifier prompt ids",
      np.concatenate([np.asarray(p, np.int64) for p in prompts]),
      V,
    )
  return prompts, yes_NxK, no_NxK


def _verdict_logprobs(
  model, params, prompts, yes_NxK, no_NxK, extra_E, batch_size, pad_id, buckets
):
  """(log p(yes) [N], log p(no) [N], log p(extra) [N, E]) float32 of the next
  token after each prompt (`_yes_no_logprobs`), in batches of similar lengths
  (the last batch padded to batch_size when N > batch_size: one shape)."""
  from jaxllm.generate import pad_prompts

  N = len(prompts)
  lengths = np.array([len(p) for p in prompts], np.int64)
  ly, ln = np.zeros((N,), np.float32), np.zeros((N,), np.float32)
  lx = np.zeros((N, extra_E.size), np.float32)
  order = np.argsort(lengths, kind="stable")  # similar lengths share a batch
  for i in range(0, N, batch_size):
    idx = order[i : i + batch_size]
    n = len(idx)
    if N > batch_size and n < batch_size:  # one shape for every batch
      idx = np.concatenate([idx, np.repeat(idx[-1:], batch_size - n)])
    toks, lens = pad_prompts([prompts[j] for j in idx], pad_id, buckets)
    a, b, c = _yes_no_logprobs(
      model,
      params,
      jnp.asarray(toks),
      jnp.asarray(lens),
      jnp.asarray(yes_NxK[idx], jnp.int32),
      jnp.asarray(no_NxK[idx], jnp.int32),
      jnp.asarray(extra_E, jnp.int32),
    )
    ly[idx[:n]] = np.asarray(a)[:n]
    ln[idx[:n]] = np.asarray(b)[:n]
    lx[idx[:n]] = np.asarray(c)[:n]
  return ly, ln, lx


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
    raise ValueError(
      f"need equally sized non-empty probs and labels, got {p.shape} and {y.shape}"
    )
  if p.min() < 0 or p.max() > 1:
    raise ValueError("probs must lie in [0, 1]")
  b = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
  ece = 0.0
  for k in range(n_bins):
    m = b == k
    if m.any():
      ece += m.mean() * abs(y[m].mean() - p[m].mean())
  return float(ece)
