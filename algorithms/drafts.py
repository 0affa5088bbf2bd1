"""Draft models for speculative decoding, behind the decode interface.

  LayerSkipDraft  a sub-model of the target (a subset of its layers + its head);
                  no training: the early-exit / SoFT draft.
  SubVocabDraft   a small transformer whose output head covers only K frequent
                  tokens of the target's vocabulary (plus one "other" class). On a
                  large vocabulary the LM head dominates a small model's cost (SmolLM2:
                  49152 x 576 = 28M of 135M params), so restricting it is what makes
                  a draft cheap enough. Its q puts zero mass outside the K tokens;
                  speculative sampling stays exact (the target's residual covers the
                  rest), only acceptance pays for tokens the subset misses.

`init_sub_vocab_draft` builds a SubVocabDraft from the target's own first layers,
final norm and embedding rows (a good start for distillation, see
experiments/train_draft.py); `distill_loss_fn` is the soft-label loss against the
target's top-k next-token probabilities; `save_draft` / `load_draft` store it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.checkpoint import restore_params, save_params
from jaxllm.config import ModelConfig
from jaxllm.decoding import Transformer
from jaxllm.model import forward
from jaxllm.params import Params, check_params
from jaxllm.validation import check_int, check_token_ids, token_id_array


# ----------------------------------------------------------------------------------
# Layer-skipped draft: a sub-model of the target, no training needed
# ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerSkipDraft:
  """Decode interface of the target restricted to a subset of its layers.

  Takes the TARGET's params; every call runs only `layers` (in order) followed by the
  shared final norm and LM head, with its own KV cache holding just those layers.
  `layers=tuple(range(n))` is the early-exit sub-model of the first n layers (the SoFT
  draft); any increasing subset (e.g. first, last and evenly spaced) is allowed.
  """

  target_cfg: Any  # ModelConfig of the full model
  layers: tuple

  def __post_init__(self):
    layers = tuple(int(i) for i in self.layers)
    n = self.target_cfg.n_layers
    if (
      not layers
      or any(b <= a for a, b in zip(layers, layers[1:]))
      or layers[0] < 0
      or layers[-1] >= n
    ):
      raise ValueError(
        f"LayerSkipDraft.layers must be a non-empty increasing tuple of "
        f"layer indices in [0, {n}), got {self.layers!r}"
      )
    object.__setattr__(self, "layers", layers)

  @property
  def cfg(self):
    """Config of the sub-model (what its cache and FLOPs are sized by)."""
    win = self.target_cfg.windows
    return self.target_cfg.replace(
      n_layers=len(self.layers), layer_windows=tuple(win[i] for i in self.layers)
    )

  @property
  def vocab_size(self) -> int:
    return self.target_cfg.vocab_size

  def sub_params(self, params):
    return dataclasses.replace(
      params, layers=tuple(params.layers[i] for i in self.layers)
    )

  def _m(self):
    return Transformer(self.cfg)

  def prefill(self, params, tokens_BxT, lengths_B, cache_size: int):
    check_params(self.target_cfg, params)  # the FULL model's params
    return self._m().prefill(self.sub_params(params), tokens_BxT, lengths_B, cache_size)

  def extend(self, params, state, tokens_BxS, valid_BxS=None):
    return self._m().extend(self.sub_params(params), state, tokens_BxS, valid_BxS)

  def reorder(self, state, index_N):
    return self._m().reorder(state, index_N)

  def lengths(self, state):
    return state.lengths

  def score_tree(self, params, state, tokens_BxM, parent_M):
    return self._m().score_tree(self.sub_params(params), state, tokens_BxM, parent_M)

  def commit(self, state, path_BxL, n_accept_B):
    return self._m().commit(state, path_BxL, n_accept_B)


# ----------------------------------------------------------------------------------
# Sub-vocabulary draft
# ----------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SubVocabParams:
  inner: Params  # transformer over K + 1 ids; id 0 = "any token outside the subset"
  to_sub_V: Any  # [V] int32: full id -> inner id (0 when outside the subset)
  to_full_K: Any  # [K] int32: inner id k + 1 -> full id


@dataclasses.dataclass(frozen=True)
class SubVocabDraft:
  """A transformer over a K-token subset of a V-token vocabulary (decode interface).

  Inputs are mapped to inner ids (tokens outside the subset share inner id 0); the
  inner logits of ids 1..K are scattered back to the full vocabulary and every other
  token gets logit -inf, so the draft never proposes one. `cfg` is the inner model's
  config (vocab_size K + 1): it sizes the cache and the FLOPs.
  """

  cfg: ModelConfig
  full_vocab: int

  def __post_init__(self):
    if self.cfg.vocab_size < 2 or self.cfg.vocab_size - 1 > self.full_vocab:
      raise ValueError(
        f"SubVocabDraft: inner vocab_size {self.cfg.vocab_size} must be "
        f"2..full_vocab + 1 = {self.full_vocab + 1}"
      )

  @property
  def vocab_size(self) -> int:
    return self.full_vocab

  def _m(self):
    return Transformer(self.cfg)

  def full_logits(self, params: SubVocabParams, logits_xK1):
    """Inner logits [..., K + 1] -> full-vocabulary logits [..., V] (-inf outside)."""
    shape = logits_xK1.shape[:-1] + (self.full_vocab,)
    out = jnp.full(shape, -jnp.inf, logits_xK1.dtype)
    return out.at[..., params.to_full_K].set(logits_xK1[..., 1:])

  def prefill(self, params, tokens_BxT, lengths_B, cache_size: int):
    state, logits = self._m().prefill(
      params.inner, params.to_sub_V[tokens_BxT], lengths_B, cache_size
    )
    return state, self.full_logits(params, logits)

  def extend(self, params, state, tokens_BxS, valid_BxS=None):
    state, logits = self._m().extend(
      params.inner, state, params.to_sub_V[tokens_BxS], valid_BxS
    )
    return state, self.full_logits(params, logits)

  def reorder(self, state, index_N):
    return self._m().reorder(state, index_N)

  def lengths(self, state):
    return state.lengths

  def score_tree(self, params, state, tokens_BxM, parent_M):
    state, logits = self._m().score_tree(
      params.inner, state, params.to_sub_V[tokens_BxM], parent_M
    )
    return state, self.full_logits(params, logits)

  def commit(self, state, path_BxL, n_accept_B):
    return self._m().commit(state, path_BxL, n_accept_B)


def sub_vocab_maps(token_ids_K, full_vocab: int):
  """(to_sub_V [V], to_full_K [K]) int32 arrays for K distinct full-vocab ids.

  Raises:
    ValueError: naming `full_vocab` (not an integer >= 1) or `token_ids_K`
      (not a non-empty 1-D list of integers in [0, full_vocab), or repeated).
  """
  full_vocab = check_int("full_vocab", full_vocab, lo=1)
  ids = token_id_array("token_ids_K", token_ids_K)
  if ids.ndim != 1 or len(ids) == 0:
    raise ValueError(f"token_ids_K must be a non-empty 1-D list, got shape {ids.shape}")
  check_token_ids("token_ids_K", ids, full_vocab)
  if len(np.unique(ids)) != len(ids):
    raise ValueError("token_ids_K has repeated ids")
  to_sub = np.zeros(full_vocab, np.int32)
  to_sub[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
  return jnp.asarray(to_sub), jnp.asarray(ids.astype(np.int32))


def frequent_tokens(token_lists, size: int, always=(), weights=None) -> np.ndarray:
  """The `size` ids of largest total weight in `token_lists` (ties by id), `always`
  included. weights: parallel lists of per-token weights (default 1 = counts), e.g.
  the target's probabilities of its top-k ids, to rank by expected frequency."""
  ids = np.concatenate([token_id_array("token_lists", t).ravel() for t in token_lists])
  w = (
    np.ones(len(ids))
    if weights is None
    else np.concatenate([np.asarray(x, np.float64).ravel() for x in weights])
  )
  if len(w) != len(ids):
    raise ValueError(f"weights have {len(w)} entries for {len(ids)} tokens")
  always = token_id_array("always", always).ravel()
  uniq, inv = np.unique(np.concatenate([ids, always]), return_inverse=True)
  total = np.bincount(inv, weights=np.concatenate([w, np.zeros(len(always))]))
  total[np.isin(uniq, always)] = np.inf
  if len(uniq) < size:
    raise ValueError(f"only {len(uniq)} distinct tokens in the data, asked for {size}")
  order = np.lexsort((uniq, -total))  # by weight desc, then id
  return uniq[order[:size]].astype(np.int32)


def init_sub_vocab_draft(
  target_cfg: ModelConfig, target_params: Params, token_ids_K, n_layers: int
):
  """A SubVocabDraft from the target's first `n_layers` layers, final norm and the
  embedding (and untied head) rows of the subset; inner id 0 gets the mean row.

  Returns (draft, params)."""
  if not 1 <= n_layers <= target_cfg.n_layers:
    raise ValueError(f"n_layers must be in [1, {target_cfg.n_layers}], got {n_layers}")
  to_sub, to_full = sub_vocab_maps(token_ids_K, target_cfg.vocab_size)
  K = int(to_full.shape[0])
  win = target_cfg.windows
  cfg = target_cfg.replace(
    vocab_size=K + 1, n_layers=n_layers, layer_windows=tuple(win[:n_layers])
  )
  emb = target_params.embed
  embed = jnp.concatenate([jnp.mean(emb, axis=0, keepdims=True), emb[to_full]], axis=0)
  head = None
  if target_params.lm_head is not None:  # untied: keep the head's own columns
    w = target_params.lm_head
    head = jnp.concatenate([jnp.mean(w, axis=1, keepdims=True), w[:, to_full]], axis=1)
  inner = Params(
    embed=embed,
    layers=tuple(target_params.layers[:n_layers]),
    final_norm=target_params.final_norm,
    lm_head=head,
  )
  inner = jax.tree_util.tree_map(jnp.copy, inner)  # own buffers (training donates them)
  return SubVocabDraft(cfg, target_cfg.vocab_size), SubVocabParams(
    inner, to_sub, to_full
  )


def distill_loss_fn(draft: SubVocabDraft, to_sub_V):
  """`loss_fn(inner_params, batch, key)` for jaxllm.train.make_train_step (only the
  inner transformer is trained; `to_sub_V` is the fixed id map).

  The loss is the cross-entropy of the draft's proposal distribution q (softmax over
  the subset, as the decode interface serves it) against the target's top-k
  next-token probabilities restricted to the subset and renormalised, i.e.
  KL(p' || q) up to a constant. batch: tokens [B, T] (full ids), topk_ids / topk_p
  [B, T, k] (the target's distribution of the token after position t), weight [B, T]
  (1 where position t is trained). Aux `accept_lb`: sum over the top-k of
  min(p, q), a lower bound on the one-token acceptance rate at temperature 1.
  """

  def loss_fn(inner, batch, key):
    del key
    logits, _, _ = forward(inner, to_sub_V[batch["tokens"]], draft.cfg)
    logits = logits.astype(jnp.float32).at[..., 0].set(-jnp.inf)  # never proposed
    logq = jax.nn.log_softmax(logits, axis=-1)
    sub = to_sub_V[batch["topk_ids"]]
    inside = sub > 0
    p = jnp.where(inside, batch["topk_p"], 0.0)
    p_norm = p / jnp.maximum(p.sum(-1, keepdims=True), 1e-9)
    logq_k = jnp.where(inside, jnp.take_along_axis(logq, sub, axis=-1), 0.0)
    w = batch["weight"].astype(jnp.float32)
    ce = -(p_norm * logq_k).sum(-1)
    overlap = jnp.minimum(p, jnp.exp(logq_k) * inside).sum(-1)
    return (ce * w).sum(), w.sum(), {"accept_lb": (overlap * w).sum()}

  return loss_fn


def save_draft(
  path: str, draft: SubVocabDraft, params: SubVocabParams, meta: dict | None = None
) -> None:
  """<path>/inner (orbax params), <path>/draft.json (config, subset ids, meta)."""
  os.makedirs(path, exist_ok=True)
  save_params(os.path.join(path, "inner"), params.inner, overwrite=True)
  d = dict(
    cfg=dataclasses.asdict(draft.cfg),
    full_vocab=draft.full_vocab,
    token_ids=np.asarray(params.to_full_K).tolist(),
    meta=meta or {},
  )
  tmp = os.path.join(path, "draft.json.tmp")
  with open(tmp, "w") as f:
    json.dump(d, f)
  os.replace(tmp, os.path.join(path, "draft.json"))


def load_draft(path: str):
  """(draft, params, meta) saved by `save_draft`."""
  fn = os.path.join(path, "draft.json")
  if not os.path.exists(fn):
    raise ValueError(f"no draft at {path} (missing draft.json)")
  with open(fn) as f:
    d = json.load(f)
  cfg = ModelConfig(**d["cfg"])
  to_sub, to_full = sub_vocab_maps(d["token_ids"], d["full_vocab"])
  inner = restore_params(os.path.join(path, "inner"), cfg)
  return (
    SubVocabDraft(cfg, d["full_vocab"]),
    SubVocabParams(inner, to_sub, to_full),
    d.get("meta", {}),
  )
