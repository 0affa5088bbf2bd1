"""Speculative (tree) decoding with real draft / target models behind the decode interface.

Shape letters (suffixes of array names): B rows (prompts); T bucketed prompt length;
V vocabulary; M tree nodes (root included) = config.tree.tree_tokens; N new nodes of one
level; D = L the tree depth, Dp1 = D + 1; G the chain length; S extended tokens.

`speculative_generate(target, target_params, draft, draft_params, prompts, key, config)`
drives the exact probability-level algorithms of `algorithms/spec_trees.py` with two
decode-interface models that share a vocabulary (`jaxllm.decoding.Transformer`, the
drafts of `algorithms/drafts.py`, or the toy `BigramLM`). The tree is one object,
`config.tree` (a `spec_trees.TreeShape`); `SpecConfig(method=name, **fields)` builds it
through the registry `spec_trees.make_tree`:

  Autoregressive()            "autoregressive"  plain sampling from the target, one
                                                target call per token (baseline)
  Chain(gamma)                "chain"   single draft chain (Leviathan / Chen)
  IIDTree(num_drafts, depth)  "iid"     i.i.d. chains (SpecInfer-style RRS)
  RSDC(branching)             "rsd_c"   RSD-C: Gumbel-Top-b_l tree
  RSDS(beam_width, depth)     "rsd_s"   RSD-S: stochastic beam search

One block (all rows at once; the per-row math is vmapped, so model calls are batched):

  1. The draft extends its cache with its pending tokens (ragged: the extra token of
     the previous block, preceded by the accepted leaf when the whole path down to a
     leaf was accepted, since the draft never ran on leaves) and gets q at the root.
  2. The draft builds the tree level by level (`config.tree.propose`). Its callback
     runs `draft.score_tree` over ALL non-root nodes drafted so far (the tree mask and
     depth positions come from the interface; nothing is committed) and reads q of the
     newest level. Re-scoring the earlier levels wastes draft FLOPs (sum of level
     prefixes instead of the level) but keeps one call per level, needs nothing beyond
     the interface, and is what a memory-bound accelerator pays for anyway.
  3. ONE target call: `target.score_tree` over the whole BFS tree, root included. The
     root is the last emitted token, which is kept *out* of the target cache between
     blocks (the target cache holds the committed prefix minus its last token), so
     the root's next-token distribution comes from the same call and a block costs
     exactly one target call (instead of score_tree + a separate extend of the extra
     token). `config.tree.verify` (RRS, or `speculative_sample_chain` for the chain)
     picks the accepted path and the extra token.
  4. `target.commit` keeps the root and the accepted nodes; the draft commits the
     accepted nodes it scored (depth < L) from its last score_tree call; the rest
     (leaf, extra token) becomes its pending input for step 1 of the next block.

So after every block both caches hold exactly the emitted text minus the pending
tokens, i.e. `target.extend(state, last)` gives the same logits as a fresh prefill of
prompt + emitted text (tested). Rows that reached `max_new_tokens` are frozen (their
states stop changing) while the others continue; the loop is a `lax.while_loop` over
blocks inside one jit. Requirement on model states: every leaf has the batch axis first
(true for KVCache and BigramState), so per-row functions can vmap over them.

Sampling: temperature / top-k / top-p / min-p go through `jaxllm.sampling.filter_logits`
for BOTH target and draft before the softmax, so the emitted text is distributed as
plain sampling from the target with the same settings. Temperature 0 uses one-hot
argmax distributions for both, which makes every method reproduce greedy decoding.

Accounting: a `jaxllm.flops.Compute` record; FLOPs use `jaxllm.flops.decode_flops` /
`prefill_flops` with the exact number of keys every processed token attends to (prefix
+ ancestors + itself); FLOPs are affine in the context without sliding windows, so
summing contexts is exact there (with windows the mean context is used, an
approximation). Which models are counted is `jaxllm.flops.flops_config`'s rule: a
model with a `cfg` (possibly on a wrapped `.model`) is counted from it, one that
declares `flops_free = True` (BigramLM) costs 0 FLOPs, any other is a ValueError
(never a silent 0).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from algorithms import spec_trees as st
from algorithms.drafts import LayerSkipDraft, SubVocabDraft  # noqa: F401 (re-export)
from jaxllm.flops import Compute, decode_flops, flops_config, prefill_flops
from jaxllm.generate import check_prompts
from jaxllm.sampling import Sampling, filter_logits, make_sampling, sample
from jaxllm.validation import INT32_LIMIT, check_int, check_length, check_token_id

METHODS = tuple(st.TREES)  # registered tree method names (autoregressive included)
TRACE_COUNT = {"speculative": 0}


# ----------------------------------------------------------------------------------
# Config and output
# ----------------------------------------------------------------------------------


_TREE_FIELDS = ("gamma", "num_drafts", "depth", "branching", "beam_width")


@dataclasses.dataclass(frozen=True)
class SpecConfig:
  """Static settings (hashable: one compilation per config and prompt bucket).

  tree: the speculative tree shape (`spec_trees.Chain(4)`, `IIDTree(2, 3)`,
    `RSDC((2, 2))`, `RSDS(2, 3)` or `Autoregressive()`); default Chain(gamma=4).
  method, gamma, num_drafts, depth, branching, beam_width: the name form, an
    alternative to `tree` (existing callers, command lines): `tree` is built as
    `spec_trees.make_tree(method, **the fields given)`, e.g.
    `SpecConfig(method="rsd_s", beam_width=4) == SpecConfig(tree=RSDS(4, 3))`. These
    are constructor arguments only (InitVars, not stored): read `config.tree`.
  max_new_tokens: tokens emitted per row (the last block may emit a few more; they are
    returned in `tokens_all`). sampling_*: applied to target AND draft. cache_size: KV
    slots per row (default: bucketed prompt + max_new + tree size). pad_id: prompt pad.

  Raises:
    ValueError: naming the field: an unknown method, a tree field the method does
      not have, a size that is not an integer >= 1, `tree` not a TreeShape or given
      together with the name form, a bad cache_size / pad_id / max_new_tokens.
  """

  method: dataclasses.InitVar[Optional[str]] = None
  max_new_tokens: int = 32
  gamma: dataclasses.InitVar[Optional[int]] = None
  num_drafts: dataclasses.InitVar[Optional[int]] = None
  depth: dataclasses.InitVar[Optional[int]] = None
  branching: dataclasses.InitVar[Optional[tuple]] = None
  beam_width: dataclasses.InitVar[Optional[int]] = None
  sampling_temperature: float = 1.0
  sampling_top_k: Optional[int] = None
  sampling_top_p: Optional[float] = None
  sampling_min_p: Optional[float] = None
  cache_size: Optional[int] = None
  pad_id: int = 0
  tree: Optional[st.TreeShape] = None

  def __post_init__(self, method, gamma, num_drafts, depth, branching, beam_width):
    given = {
      k: v
      for k, v in zip(_TREE_FIELDS, (gamma, num_drafts, depth, branching, beam_width))
      if v is not None
    }
    if self.tree is None:
      tree = st.make_tree("chain" if method is None else method, "SpecConfig", **given)
      object.__setattr__(self, "tree", tree)
    elif not isinstance(self.tree, st.TreeShape):
      raise ValueError(
        f"SpecConfig.tree must be a spec_trees.TreeShape (e.g. "
        f"spec_trees.Chain(4)), got {self.tree!r:.200}; pass a name as "
        f"method="
      )
    elif method is not None or given:
      raise ValueError(
        f"SpecConfig: give the tree either as tree={self.tree!r} or as "
        f"method= with its fields, not both (got method={method!r}, "
        f"{given})"
      )
    object.__setattr__(
      self,
      "max_new_tokens",
      check_int("SpecConfig.max_new_tokens", self.max_new_tokens, lo=1),
    )
    if self.cache_size is not None:
      object.__setattr__(
        self, "cache_size", check_int("SpecConfig.cache_size", self.cache_size, lo=1)
      )
    object.__setattr__(
      self, "pad_id", check_token_id("SpecConfig.pad_id", self.pad_id, None)
    )

  @property
  def draft_calls_per_block(self) -> int:
    """L: one extend plus one score_tree per non-leaf level (= tree depth)."""
    return self.tree.max_depth

  def sampling(self) -> Sampling:
    return make_sampling(
      self.sampling_temperature,
      self.sampling_top_k,
      self.sampling_top_p,
      self.sampling_min_p,
    )


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SpecOutput:
  tokens_all: Any  # [B, max_new + D + 1] emitted tokens, pad_id after num_emitted
  num_emitted: Any  # [B] tokens emitted (>= max_new_tokens; the last block overshoots)
  target_calls: Any  # [B] target calls (blocks) after the prefill
  draft_calls: Any  # [B] draft calls after the prefill
  accepted: Any  # [B] accepted draft tokens in total
  target_state: Any  # target cache: prompt + emitted[:num_emitted - 1]
  last: Any  # [B] the last emitted token (pending, not yet in target_state)
  counts: Any  # dict of [B] float arrays: token / context sums for the FLOPs

  _overshoot: int = dataclasses.field(default=0, metadata=dict(static=True))

  @property
  def tokens(self):
    """[B, max_new_tokens] the requested tokens."""
    return self.tokens_all[:, : self.tokens_all.shape[1] - self._overshoot]

  @property
  def block_efficiency(self):
    """tau per row: tokens emitted per target call."""
    return self.num_emitted / jnp.maximum(self.target_calls, 1)


def chain_block_efficiency(alpha, gamma: int):
  """Expected tokens emitted per target call by a single draft chain of `gamma`
  tokens whose tokens are accepted i.i.d. with probability `alpha`:
  (1 - alpha^(gamma + 1)) / (1 - alpha)  (gamma + 1 at alpha = 1).

  Leviathan et al. 2023, "Fast Inference from Transformers via Speculative
  Decoding", eq. (1). alpha is the acceptance rate E_x[sum_v min(p, q)] of one
  draft token (Theorem 3.5). Works elementwise on arrays.

  Raises:
    ValueError: alpha outside [0, 1] or gamma < 1.
  """
  a = _rates("alpha", alpha)
  if np.any((a < 0) | (a > 1)):
    raise ValueError(f"alpha: acceptance rates must lie in [0, 1], got {alpha!r}")
  gamma = check_int("gamma", gamma, lo=1)
  with np.errstate(divide="ignore", invalid="ignore"):  # a = 1 is the limit
    geometric = (1.0 - a ** (gamma + 1)) / (1.0 - a)
  return np.where(a == 1.0, gamma + 1.0, geometric)


def _rates(name: str, x) -> np.ndarray:
  """x as a float64 array of real numbers (no strings, bools or NaN), naming
  `name` otherwise."""
  arr = np.asarray(x)
  if arr.dtype.kind not in "iuf" or np.any(np.isnan(arr.astype(np.float64))):
    raise ValueError(f"{name}: must be real numbers, got {x!r:.200}")
  return arr.astype(np.float64)


def chain_speedup(alpha, gamma: int, cost_ratio):
  """Predicted walltime improvement of chain speculative decoding over plain
  decoding: chain_block_efficiency(alpha, gamma) / (gamma * c + 1), where c is
  the draft's cost per token relative to the target's (e.g. FLOPs per token).

  Leviathan et al. 2023, Theorem 3.8. Assumes the target's call on gamma + 1
  tokens costs as much as on one (memory-bound decoding); on a compute-bound
  device the measured speed-up is lower.

  Raises:
    ValueError: alpha outside [0, 1], gamma < 1, or cost_ratio < 0.
  """
  c = _rates("cost_ratio", cost_ratio)
  if np.any(c < 0):
    raise ValueError(f"cost_ratio: must be >= 0, got {cost_ratio!r}")
  tau = chain_block_efficiency(alpha, gamma)
  try:
    return tau / (gamma * c + 1.0)
  except ValueError:
    raise ValueError(
      f"alpha {np.shape(tau)} and cost_ratio {np.shape(c)} must broadcast"
    ) from None


# ----------------------------------------------------------------------------------
# The decode loop
# ----------------------------------------------------------------------------------


def sampling_probs(logits_xV, s: Sampling):
  """The distribution tokens are drawn from: softmax of the filtered logits, or the
  one-hot argmax at temperature 0 (same tie-breaking as `jaxllm.sampling.sample`)."""
  V = logits_xV.shape[-1]
  soft = jax.nn.softmax(filter_logits(logits_xV, s), axis=-1)
  hard = jax.nn.one_hot(jnp.argmax(logits_xV, axis=-1), V, dtype=soft.dtype)
  return jnp.where(s.temperature > 0, soft, hard)


def _row(tree):
  return jax.tree_util.tree_map(lambda x: x[None], tree)


def _unrow(tree):
  return jax.tree_util.tree_map(lambda x: x[0], tree)


def _select(live, new, old):
  return jax.tree_util.tree_map(lambda a, b: jnp.where(live, a, b), new, old)


def _spec_block(
  target,
  tp,
  draft,
  dp,
  config: SpecConfig,
  s: Sampling,
  t_state,
  d_state,
  pend_2,
  npend,
  key,
):
  """One speculative block for ONE row (model states carry a batch axis of 1).

  Returns (t_state, d_state, pend_2, npend, tokens_Dp1, n_emitted, n_accepted,
  counts): the emitted tokens are the accepted drafts followed by the extra token.
  """
  shape = config.tree
  L = len(shape.level_sizes)
  k_tree, k_ver = jax.random.split(key)
  # 1. the draft catches up with the pending tokens and gives q at the root.
  d_len0 = draft.lengths(d_state)[0]
  valid_2 = jnp.arange(2) < npend
  d_state, dlog = draft.extend(dp, d_state, pend_2[None], valid_2[None])
  q_root = sampling_probs(dlog[0, npend - 1], s)
  root = pend_2[npend - 1]
  d_len = draft.lengths(d_state)[0]

  # 2. draft tree: re-score all non-root nodes so far (score index = spec index - 1).
  def draft_fn(carry, tokens_N, parents_N):
    base, toks, pars, _ = carry
    toks = jnp.concatenate([toks, tokens_N])
    pars = jnp.concatenate([pars, parents_N - 1])
    scored, logits = draft.score_tree(dp, base, toks[None], pars)
    N = tokens_N.shape[0]
    return (base, toks, pars, scored), sampling_probs(logits[0, -N:], s)

  carry0 = (d_state, jnp.zeros((0,), jnp.int32), jnp.zeros((0,), jnp.int32), None)
  tree, (_, _, _, d_scored) = shape.propose(k_tree, root, q_root, draft_fn, carry0)

  # 3. one target call over the whole tree, root included.
  t_len = target.lengths(t_state)[0]
  t_scored, tlog = target.score_tree(tp, t_state, tree.token_M[None], tree.parent_M)
  p_MxV = sampling_probs(tlog[0], s)
  res = shape.verify(k_ver, tree, p_MxV)
  tok_Dp1, n_emit, n_acc, path_D = (
    res.tokens_Dp1,
    res.num_emitted,
    res.num_accepted,
    res.path_D,
  )
  extra = res.extra_token

  # 4. commits: target keeps root + accepted path; draft keeps the accepted nodes it
  # scored (depth < L); the leaf (if accepted) and the extra token become pending.
  t_path = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.maximum(path_D, 0)])
  t_state = target.commit(t_scored, t_path[None], (n_acc + 1)[None])
  if L > 1:
    n_d = jnp.minimum(n_acc, L - 1)
    d_path = jnp.maximum(path_D[: L - 1] - 1, 0)
    d_state = draft.commit(d_scored, d_path[None], n_d[None])
  leaf_taken = n_acc == L
  leaf_tok = tok_Dp1[L - 1]
  pend_2 = jnp.where(
    leaf_taken, jnp.stack([leaf_tok, extra]), jnp.stack([extra, jnp.int32(0)])
  ).astype(jnp.int32)
  npend = jnp.where(leaf_taken, 2, 1).astype(jnp.int32)

  counts = _block_counts(shape, valid_2, d_len0, d_len, t_len)
  return t_state, d_state, pend_2, npend, tok_Dp1, n_emit, n_acc, counts


def _block_counts(shape, valid_2, d_len0, d_len, t_len):
  """FLOPs bookkeeping of one block: tokens processed by target and draft and the
  sums of the keys each attended to (t_tok, t_ctx, d_tok, d_ctx).

  valid_2: the draft's pending tokens; d_len0 / d_len: the draft's cache length
  before / after extending with them; t_len: the target's cache length.
  """
  sizes = shape.level_sizes
  depth_sum = float(sum((l + 1) * n for l, n in enumerate(sizes)))
  M = shape.tree_tokens
  npf = valid_2.sum().astype(jnp.float32)
  d_tok = npf
  d_ctx = npf * d_len0 + npf * (npf + 1) / 2
  for l in range(1, len(sizes)):  # score_tree over levels 1..l
    m_l = float(sum(sizes[:l]))
    s_l = float(sum((j + 1) * n for j, n in enumerate(sizes[:l])))
    d_tok = d_tok + m_l
    d_ctx = d_ctx + m_l * d_len + s_l
  return dict(
    t_tok=jnp.float32(M), t_ctx=M * t_len + depth_sum + M, d_tok=d_tok, d_ctx=d_ctx
  )


def _prefill(model, params, tokens_BxT, lengths_B, cache_size):
  """(state, root_B): the model's state holding the prompt except the first
  block's root, and that root. By default the root is the last prompt token and
  the rest is prefilled; a model that conditions differently defines
  `prefill_to_root(params, tokens_BxT, lengths_B, cache_size)` (the
  encoder-decoder: the whole prompt encoded, the root its decoder start token)."""
  own = getattr(model, "prefill_to_root", None)
  if own is not None:
    return own(params, tokens_BxT, lengths_B, cache_size)
  state, _ = model.prefill(params, tokens_BxT, lengths_B - 1, cache_size)
  last = jnp.take_along_axis(tokens_BxT, (lengths_B - 1)[:, None], axis=1)[:, 0]
  return state, last


def _generate_impl(
  target,
  tp,
  draft,
  dp,
  tokens_BxT,
  lengths_B,
  key,
  s,
  *,
  config: SpecConfig,
  cache_size: int,
):
  TRACE_COUNT["speculative"] += 1
  B = tokens_BxT.shape[0]
  N = config.max_new_tokens
  D = config.tree.max_depth
  out = jnp.full((B, N + D + 1), jnp.int32(config.pad_id), jnp.int32)
  t_state, last = _prefill(target, tp, tokens_BxT, lengths_B, cache_size)
  if not config.tree.uses_draft:
    return _autoregressive_loop(target, tp, key, s, t_state, last, out, N, D)
  d_state, _ = _prefill(draft, dp, tokens_BxT, lengths_B, cache_size)
  return _spec_loop(target, tp, draft, dp, key, s, config, t_state, d_state, last, out)


def _zero_counts(B):
  """The FLOPs bookkeeping of B rows before any block (`_block_counts`' keys)."""
  zeros_f = jnp.zeros((B,), jnp.float32)
  return dict(t_tok=zeros_f, t_ctx=zeros_f, d_tok=zeros_f, d_ctx=zeros_f)


def _autoregressive_loop(target, tp, key, s, t_state, last, out, N: int, D: int):
  """Plain sampling from the target, one target call per token, until every row
  has N tokens (the Autoregressive tree). out: [B, N + D + 1] pad-filled."""
  B = out.shape[0]
  zeros_i = jnp.zeros((B,), jnp.int32)

  def cond(c):
    return jnp.any(c[2] < N)

  def body(c):
    i, t_state, pos, last, out, calls, cnt = c
    live = pos < N
    t_len = target.lengths(t_state)
    new_state, logits = target.extend(tp, t_state, last[:, None])
    tok = sample(jax.random.fold_in(key, i), logits[:, 0], s)
    out = jnp.where(live[:, None], out.at[jnp.arange(B), pos].set(tok), out)
    t_state = jax.vmap(_select)(live, new_state, t_state)
    lf = live.astype(jnp.float32)
    cnt = dict(
      t_tok=cnt["t_tok"] + lf,
      t_ctx=cnt["t_ctx"] + lf * (t_len + 1),
      d_tok=cnt["d_tok"],
      d_ctx=cnt["d_ctx"],
    )
    return (
      i + 1,
      t_state,
      pos + live,
      jnp.where(live, tok, last),
      out,
      calls + live,
      cnt,
    )

  init = (jnp.int32(0), t_state, zeros_i, last, out, zeros_i, _zero_counts(B))
  _, t_state, pos, last, out, calls, cnt = lax.while_loop(cond, body, init)
  return SpecOutput(
    out, pos, calls, zeros_i, zeros_i, t_state, last, cnt, _overshoot=D + 1
  )


def _spec_loop(target, tp, draft, dp, key, s, config, t_state, d_state, last, out):
  """Speculative blocks (`_spec_block`, vmapped over rows) until every row has
  config.max_new_tokens tokens; rows that are done are frozen. out: [B, N + D + 1]
  pad-filled; last: the last prompt token (the first block's root)."""
  B = out.shape[0]
  N = config.max_new_tokens
  D = config.tree.max_depth
  pad = jnp.int32(config.pad_id)
  zeros_i = jnp.zeros((B,), jnp.int32)
  pend = jnp.stack([last, jnp.zeros_like(last)], axis=1)
  npend = jnp.ones((B,), jnp.int32)

  def row_block(t_state, d_state, pend_2, npend, pos, out_row, stats, k):
    live = pos < N
    t_new, d_new, pend_new, np_new, tok_Dp1, n_emit, n_acc, cnt = _spec_block(
      target, tp, draft, dp, config, s, _row(t_state), _row(d_state), pend_2, npend, k
    )
    t_state = _select(live, _unrow(t_new), t_state)
    d_state = _select(live, _unrow(d_new), d_state)
    tok_Dp1 = jnp.where(tok_Dp1 >= 0, tok_Dp1, pad)
    out_row = jnp.where(
      live, lax.dynamic_update_slice(out_row, tok_Dp1, (pos,)), out_row
    )
    li, lf = live.astype(jnp.int32), live.astype(jnp.float32)
    calls, dcalls, acc, c = stats
    c = {k_: c[k_] + lf * v for k_, v in cnt.items()}
    stats = (calls + li, dcalls + li * D, acc + li * n_acc, c)
    return (
      t_state,
      d_state,
      jnp.where(live, pend_new, pend_2),
      jnp.where(live, np_new, npend),
      pos + li * n_emit,
      out_row,
      stats,
    )

  def cond(c):
    return jnp.any(c[5] < N)

  def body(c):
    i, t_state, d_state, pend, npend, pos, out, stats = c
    keys = jax.random.split(jax.random.fold_in(key, i), B)
    res = jax.vmap(row_block)(t_state, d_state, pend, npend, pos, out, stats, keys)
    return (i + 1,) + res[:2] + res[2:4] + (res[4], res[5], res[6])

  stats = (zeros_i, zeros_i, zeros_i, _zero_counts(B))
  init = (jnp.int32(0), t_state, d_state, pend, npend, zeros_i, out, stats)
  _, t_state, _, pend, npend, pos, out, stats = lax.while_loop(cond, body, init)
  calls, dcalls, acc, cnt = stats
  last = jnp.take_along_axis(pend, (npend - 1)[:, None], axis=1)[:, 0]
  # The target's pending token is the last emitted one (= the draft's last pending).
  return SpecOutput(out, pos, calls, dcalls, acc, t_state, last, cnt, _overshoot=D + 1)


_generate_jit = jax.jit(
  _generate_impl, static_argnames=("target", "draft", "config", "cache_size")
)


def _check_models(target, draft, config):
  Vt = getattr(target, "vocab_size", None)
  Vd = getattr(draft, "vocab_size", None) if draft is not None else Vt
  if Vt is None or Vt != Vd:
    raise ValueError(
      f"target and draft must share a vocabulary; got vocab_size "
      f"{Vt} (target) and {Vd} (draft)"
    )
  need = config.tree.draft_width
  if need > Vt:
    raise ValueError(
      f"{config.tree} draws {need} children without replacement but "
      f"the vocabulary has only {Vt} tokens"
    )
  return Vt


def _flops_configs(target, draft, config):
  """The ModelConfigs FLOPs are counted from: [target] or [target, draft] (the
  draft only for a tree that uses one); None for a declared-free model.

  Raises:
    ValueError: a model without a ModelConfig that does not declare
      `flops_free = True` (`jaxllm.flops.flops_config`).
  """
  cfgs = [flops_config(target, "target")]
  if config.tree.uses_draft:
    cfgs.append(flops_config(draft, "draft"))
  return cfgs


def _model_flops(cfg, tokens, ctx_sum):
  """FLOPs of processing `tokens` tokens whose attended-key counts sum to ctx_sum
  (0 for cfg None: a declared-free model)."""
  tokens = np.asarray(tokens, np.float64)
  if cfg is None:
    return np.zeros_like(tokens)
  mean_ctx = np.asarray(ctx_sum, np.float64) / np.maximum(tokens, 1)
  return tokens * decode_flops(cfg, mean_ctx)


def compute_record(target, draft, config, out: SpecOutput, lengths_B) -> Compute:
  """What the run spent (summed over rows). model_calls counts target AND draft calls
  after the prefill; the split is in the SpecOutput fields.

  Raises:
    ValueError: the target (or a used draft) has no ModelConfig and does not
      declare `flops_free = True` (`_flops_configs`).
  """
  cfgs = _flops_configs(target, draft, config)
  c = {k: np.asarray(v, np.float64) for k, v in out.counts.items()}
  pre = np.asarray(lengths_B) - 1  # the last prompt token is the first block's root
  pf = sum(float(np.sum(prefill_flops(cfg, pre))) for cfg in cfgs if cfg is not None)
  n_models = len(cfgs)
  dec = float(np.sum(_model_flops(cfgs[0], c["t_tok"], c["t_ctx"])))
  if config.tree.uses_draft:
    dec += float(np.sum(_model_flops(cfgs[1], c["d_tok"], c["d_ctx"])))
  return Compute(
    prefill_tokens=float(pre.sum()) * n_models,
    generated_tokens=float(
      np.minimum(np.asarray(out.num_emitted), config.max_new_tokens).sum()
    ),
    model_calls=float(np.sum(out.target_calls) + np.sum(out.draft_calls)),
    prefill_flops=pf,
    decode_flops=dec,
  )


def _check_lengths(target, draft, config: SpecConfig, tokens_BxT, lengths_B) -> int:
  """The cache size (config.cache_size, default bucketed prompt + max_new_tokens +
  tree + 2), after checking that prompt + max_new_tokens + tree fits the int32
  position range, each model's ModelConfig.max_seq_len and the cache size.

  Raises:
    ValueError: naming the limit that is exceeded.
  """
  need = tokens_BxT.shape[1] + config.max_new_tokens + config.tree.tree_tokens + 2
  what = (
    f"prompt length {int(lengths_B.max())} + max_new_tokens "
    f"{config.max_new_tokens} + tree {config.tree.tree_tokens}"
  )
  n_max = int(lengths_B.max()) + config.max_new_tokens + config.tree.tree_tokens
  check_length(what, n_max, "the int32 position range", INT32_LIMIT)
  for m in (target, draft):
    max_seq = getattr(getattr(m, "cfg", None), "max_seq_len", None)
    if max_seq is not None:
      check_length(what, n_max, "ModelConfig.max_seq_len", max_seq)
  cache_size = need if config.cache_size is None else config.cache_size
  check_length(
    f"bucketed prompt {tokens_BxT.shape[1]} + max_new_tokens "
    f"{config.max_new_tokens} + tree {config.tree.tree_tokens} + 2",
    need,
    "SpecConfig.cache_size",
    cache_size,
  )
  return cache_size


def _static_config(config: SpecConfig) -> SpecConfig:
  """The config the program is compiled for. Sampling values are array leaves of
  `Sampling`: strip them from the static config so that e.g. a temperature sweep
  reuses one compiled program."""
  return dataclasses.replace(
    config,
    sampling_temperature=1.0,
    sampling_top_p=None if config.sampling().use_top_p is False else 0.5,
    sampling_min_p=None if not config.sampling_min_p else 0.5,
  )


def speculative_generate(
  target,
  target_params,
  draft,
  draft_params,
  prompts,
  key,
  config: SpecConfig,
  *,
  prompt_lengths=None,
):
  """Sample `config.max_new_tokens` tokens per prompt with speculative decoding.

  Args:
    target, draft: decode-interface models sharing a vocabulary (draft unused for
      the Autoregressive tree; pass None there if you like).
    prompts: list of token-id lists (each >= 1 token), or a right-padded [B, T]
      array with `prompt_lengths` [B] (`jaxllm.generate.check_prompts`);
      bucketed and padded with config.pad_id.
  Returns (SpecOutput, Compute). `out.tokens` [B, max_new_tokens] is distributed
  exactly as sampling from the target with the config's sampling settings.

  Raises:
    ValueError: naming the argument or field: a missing draft, vocabularies
      that differ, SpecConfig.pad_id or prompt ids outside [0, V), malformed
      prompts, or prompt + max_new_tokens + tree beyond ModelConfig.max_seq_len
      or SpecConfig.cache_size; a target (or used draft) with no ModelConfig
      that does not declare `flops_free = True` (its FLOPs are never a silent
      0; checked before any model call).
  """
  if not isinstance(config, SpecConfig):
    raise ValueError(f"config must be a SpecConfig, got {type(config)}")
  if config.tree.uses_draft and draft is None:
    raise ValueError(f"method {config.tree.name!r} ({config.tree}) needs a draft model")
  if draft is None:
    draft, draft_params = target, target_params
  _check_models(target, draft, config)
  _flops_configs(target, draft, config)
  tokens, lengths = check_prompts(
    target, prompts, prompt_lengths, config.pad_id, pad_id_name="SpecConfig.pad_id"
  )
  cache_size = _check_lengths(target, draft, config, tokens, lengths)
  out = _generate_jit(
    target,
    target_params,
    draft,
    draft_params,
    jnp.asarray(tokens),
    jnp.asarray(lengths),
    key,
    config.sampling(),
    config=_static_config(config),
    cache_size=cache_size,
  )
  return out, compute_record(target, draft, config, out, lengths)
