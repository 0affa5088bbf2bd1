"""SoFT (sorted fine-tuning), early exit and unified layer skipping: one set of
weights, many depths.

Depth convention: an *exit* (or depth) n in [1, L] means "after the first n layers";
every exit goes through the model's shared final norm and LM head
(`jaxllm.model.lm_head`). L = cfg.n_layers.

Training
  `sorted_loss_terms` / `sorted_loss_fn`: the SoFT loss (Kavehzadeh et al. 2023,
  "Sorted LLaMA": the sum of the sub-models' LM losses; here normalised to a
  weighted mean) from ONE forward pass: the residual stream after each exit's layer
  goes through the shared head. All exits every step, or `exits_per_step` of them
  sampled uniformly per step (unbiased for the all-exit loss); optional per-exit
  weights. `sorted_loss_fn` has the `loss_fn(params, batch, key)` signature of
  `jaxllm.train.make_train_step`.

Decoding (all behind the decode interface of jaxllm/decoding.py, so generate, PF,
beam, A* and speculative decoding run on them unchanged; they all take the FULL
model's params):
  `sub_model(cfg, n)`       the depth-n sub-model: first n layers + shared norm/head,
                            its own cache of n layers (`algorithms.drafts
                            .LayerSkipDraft` over layers 0..n-1). The SoFT draft for
                            self-speculative decoding.
  `SkipDecoder(cfg, layers)` unified layer skipping (`skip_layers(L, s)` picks the
                            layers): the prompt goes through all layers, new tokens
                            through the kept ones, and each skipped layer's cache slot
                            of a new token is filled from the layer below (its K/V
                            computed from the residual stream that reaches it, i.e.
                            the output of the nearest kept layer below).
  `EarlyExitDecoder(cfg, exits, threshold, confidence)` CALM-style per-token early
                            exit (Schuster et al. 2022, "Confident Adaptive Language
                            Modeling"): a token leaves at the first exit whose
                            confidence (max softmax probability, or CALM's softmax
                            response = top-1 minus top-2 probability) exceeds the
                            threshold; its hidden state is copied upward (state
                            propagation) so the deeper layers' K/V entries exist for
                            later tokens. Batched with static shapes: every row runs
                            every layer, each row's exit state is frozen from its exit
                            on; the state counts the layers each row really needed
                            (`exit_layers_B`, `exit_tokens_B`) for compute accounting.
  `early_exit_forward`       the pure function behind it (returns per-token depths).

The early-exit layer loop calls `jaxllm.model._layer` (forward's per-layer body) itself,
because `forward` cannot freeze rows between layers; `tests/test_soft.py` checks it
against `forward` and against a per-token reference.

Shape letters: B rows, T new tokens, S cache slots, D width, V vocab, E exits,
M tree nodes.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from algorithms.drafts import LayerSkipDraft
from jaxllm import cache as cache_lib
from jaxllm import train as train_lib
from jaxllm.cache import KVCache
from jaxllm.config import ModelConfig
from jaxllm.decoding import Transformer, tree_ancestor_mask, tree_depths, valid_count
from jaxllm.model import _layer as model_layer  # one decoder layer, forward's body
from jaxllm.model import (
  apply_rope,
  build_masks,
  forward,
  get_attention,
  lm_head,
  rms_norm,
  rope_inv_freq,
)
from jaxllm.quant import dense, take_rows
from jaxllm.validation import check_int

CONFIDENCES = ("max_prob", "margin")


# ----------------------------------------------------------------------------------
# Argument checks (before any compute)
# ----------------------------------------------------------------------------------


def check_exits(n_layers: int, exits: Sequence[int], name: str = "exits") -> tuple:
  """`exits` as a tuple of Python ints: non-empty, strictly increasing, in [1, L].

  Raises:
    ValueError: naming `name` otherwise.
  """
  try:
    ex = tuple(exits)
  except TypeError:
    raise ValueError(
      f"{name} must be a sequence of depths, got {exits!r:.200}"
    ) from None
  if not ex:
    raise ValueError(f"{name} must be non-empty")
  ex = tuple(check_int(f"{name}[{j}]", e, lo=1, hi=n_layers) for j, e in enumerate(ex))
  if any(b <= a for a, b in itertools.pairwise(ex)):
    raise ValueError(f"{name} must be strictly increasing, got {ex}")
  return ex


def _check_weights(exit_weights, n: int) -> np.ndarray:
  if exit_weights is None:
    return np.ones(n, np.float64)
  w = np.asarray(exit_weights, np.float64)
  if w.shape != (n,) or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
    raise ValueError(
      f"exit_weights must be {n} finite non-negative numbers with a positive sum "
      f"(one per exit), got {exit_weights!r:.200}"
    )
  return w


def _check_threshold(threshold) -> float:
  ok = isinstance(threshold, (int, float, np.integer, np.floating)) and not isinstance(
    threshold, (bool, np.bool_)
  )
  if not ok or not 0.0 <= float(threshold) <= 1.0:
    raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r:.200}")
  return float(threshold)


def _check_confidence(confidence: str) -> str:
  if confidence not in CONFIDENCES:
    raise ValueError(f"confidence must be one of {CONFIDENCES}, got {confidence!r}")
  return confidence


# ----------------------------------------------------------------------------------
# Layer selection (unified layer skipping)
# ----------------------------------------------------------------------------------


def skip_layers(n_layers: int, s) -> tuple:
  """Layers kept by unified layer skipping at target speed-up `s`.

  Keeps n = floor(L / s) layers (at least 2 when L >= 2: the first and the last are
  always kept), the rest evenly spaced with interval L / (n - 1): layer
  floor(i * L / (n - 1)) for i = 0..n-2, then layer L - 1. Source: the unified layer
  skipping strategy (Liu et al. 2024, "Accelerating Inference in Large Language
  Models with a Unified Layer Skipping Strategy"), as summarised in ALGORITHMS.md;
  its case 30 layers at s = 5 keeps (0, 6, 12, 18, 24, 29). s = 1 keeps every layer.
  Input-independent, so it batches.

  Args:
    n_layers: L >= 1. s: the target speed-up, a real number >= 1.

  Returns:
    A strictly increasing tuple of layer indices in [0, L).

  Raises:
    ValueError: naming `n_layers` (not an int >= 1) or `s` (not a number >= 1).
  """
  L = check_int("n_layers", n_layers, lo=1)
  if (
    not isinstance(s, (int, float, np.integer, np.floating))
    or isinstance(s, (bool, np.bool_))
    or not math.isfinite(float(s))
    or float(s) < 1
  ):
    raise ValueError(f"s must be a number >= 1 (the target speed-up), got {s!r:.200}")
  n = max(min(L, 2), math.floor(L / float(s) + 1e-9))
  if n == 1:
    return (0,)
  kept = [(i * L) // (n - 1) for i in range(n - 1)] + [L - 1]
  return tuple(kept)


# ----------------------------------------------------------------------------------
# Sorted (SoFT) loss
# ----------------------------------------------------------------------------------


def exit_hidden(params, cfg: ModelConfig, tokens_BxT, exits, **forward_kw):
  """The residual stream after each exit's layer, from ONE forward pass.

  Runs layers 0 .. max(exits) - 1 only (deeper layers feed no exit).

  Args:
    tokens_BxT: token ids. exits: depths in [1, L] (see `check_exits`).
    forward_kw: positions_BxT / attn_mask_BxTxT / cache ... for `forward`.

  Returns:
    A tuple of E arrays [B, T, D]; exit e's logits are `lm_head(params, h[e], cfg)`.

  Raises:
    ValueError: naming `exits` (see `check_exits`).
  """
  exits = check_exits(cfg.n_layers, exits)
  _, _, hidden = forward(
    params,
    tokens_BxT,
    cfg,
    logits_at="none",
    return_hidden=True,
    layers=tuple(range(exits[-1])),
    **forward_kw,
  )
  return tuple(hidden[e - 1] for e in exits)


def sample_exits(key, n_exits: int, k: int) -> jax.Array:
  """k distinct exit indices in [0, n_exits), uniformly without replacement (int32
  [k], sorted). The rule `sorted_loss_terms` uses when exits_per_step is set."""
  return jnp.sort(jax.random.choice(key, n_exits, (k,), replace=False)).astype(
    jnp.int32
  )


def sorted_loss_terms(
  params,
  cfg: ModelConfig,
  tokens_BxT,
  loss_mask_BxT,
  exits: Sequence[int],
  *,
  exit_weights: Sequence[float] | None = None,
  exits_per_step: int | None = None,
  key=None,
  segment_ids_BxT=None,
  positions_BxT=None,
  compute_dtype: str | None = None,
):
  """The SoFT loss over several exits from one forward pass.

  With n_targets masked targets (the masking of `jaxllm.train.lm_loss_terms`:
  position t predicts token t + 1, which counts iff loss_mask[t + 1] and, when
  packed, it is in t's segment) and CE_e the mean next-token NLL (nats / target) of
  exit e (its hidden state through the shared final norm and head):

    all exits:            loss = sum_e w_e CE_e / sum_e w_e
    exits_per_step = k:   loss = (E / k) sum_{e in sample} w_e CE_e / sum_e w_e,
                          the sample k exits uniformly without replacement
                          (`sample_exits(key, E, k)`); unbiased for the above.

  (Kavehzadeh et al. 2023, "Sorted LLaMA": the SoFT objective is the sum of
  the sub-models' losses; normalising by sum w keeps the scale of one LM loss.)

  Returns:
    (loss_sum, n_targets, aux) with loss = loss_sum / n_targets, the form
    `jaxllm.train.make_train_step` accumulates (token-weighted over microbatches).
    aux (sums, the train step divides them by n_targets): with all exits
    `nll_exit{n}` and `correct_exit{n}` per exit depth n; always `correct` at the
    deepest exit evaluated (the deepest sampled one when sampling).

  Raises:
    ValueError: naming `exits` (empty, not increasing, outside [1, L]),
      `exit_weights` (wrong length, negative, zero sum), `exits_per_step` (not in
      [1, E]) or `key` (None while sampling), or for tokens / loss_mask of
      different shapes. Checked before any compute.
  """
  exits = check_exits(cfg.n_layers, exits)
  E = len(exits)
  w_np = _check_weights(exit_weights, E)
  if exits_per_step is not None:
    exits_per_step = check_int("exits_per_step", exits_per_step, lo=1, hi=E)
    if key is None:
      raise ValueError("key is required when exits_per_step is set (exits are sampled)")
  inp = train_lib.lm_inputs(
    params,
    cfg,
    tokens_BxT,
    loss_mask_BxT,
    segment_ids_BxT,
    positions_BxT,
    compute_dtype,
  )
  params, ccfg, targets, w = inp.params, inp.cfg, inp.targets_BxT, inp.weights_BxT
  hidden = exit_hidden(
    params,
    ccfg,
    inp.inputs_BxT,
    exits,
    positions_BxT=inp.positions_BxT,
    attn_mask_BxTxT=inp.mask_BxTxT,
  )
  loss_sum, aux = _weighted_exit_nll(
    params, ccfg, hidden, targets, w, w_np, exits, exits_per_step, key
  )
  return loss_sum, w.sum(), aux


def _weighted_exit_nll(params, ccfg, hidden, targets, w, w_np, exits, k, key):
  """`sorted_loss_terms`' sum over exits (all, or k sampled and scaled by E/k)
  of w_e * NLL_e / sum_e w_e, with its aux sums."""
  E = len(exits)
  total_w = float(w_np.sum())
  weights = jnp.asarray(w_np, jnp.float32)
  aux = {}
  if k is None:
    loss_sum = jnp.float32(0.0)
    for e, h in enumerate(hidden):
      nll, corr = train_lib.nll_terms(lm_head(params, h, ccfg), targets, w)
      loss_sum = loss_sum + weights[e] * nll
      aux[f"nll_exit{exits[e]}"] = nll
      aux[f"correct_exit{exits[e]}"] = corr
    aux["correct"] = corr
    return loss_sum / total_w, aux
  idx = sample_exits(key, E, k)
  h_ExBxTxD = jnp.stack(hidden)
  loss_sum = jnp.float32(0.0)
  for j in range(k):
    nll, corr = train_lib.nll_terms(
      lm_head(params, h_ExBxTxD[idx[j]], ccfg), targets, w
    )
    loss_sum = loss_sum + weights[idx[j]] * nll
  aux["correct"] = corr  # idx is sorted: the deepest sampled exit
  return loss_sum * (E / k) / total_w, aux


def sorted_loss_fn(
  cfg: ModelConfig,
  exits: Sequence[int],
  *,
  exit_weights: Sequence[float] | None = None,
  exits_per_step: int | None = None,
  compute_dtype: str | None = None,
):
  """`loss_fn(params, batch, key)` for `jaxllm.train.make_train_step` (batches from
  `pad_batch` / `pack_batch`): `sorted_loss_terms` with the step's key (used only to
  sample exits). Arguments are checked here, before any step is traced.

  Raises:
    ValueError: as `sorted_loss_terms`, for bad exits / weights / exits_per_step.
  """
  exits = check_exits(cfg.n_layers, exits)
  _check_weights(exit_weights, len(exits))
  if exits_per_step is not None:
    check_int("exits_per_step", exits_per_step, lo=1, hi=len(exits))

  def loss_fn(params, batch, key):
    return sorted_loss_terms(
      params,
      cfg,
      batch["tokens"],
      batch["loss_mask"],
      exits,
      exit_weights=exit_weights,
      exits_per_step=exits_per_step,
      key=key,
      segment_ids_BxT=batch.get("segment_ids"),
      positions_BxT=batch.get("positions"),
      compute_dtype=compute_dtype,
    )

  return loss_fn


# ----------------------------------------------------------------------------------
# Depth-n sub-model
# ----------------------------------------------------------------------------------


def sub_model(cfg: ModelConfig, n: int) -> LayerSkipDraft:
  """The depth-n SoFT sub-model behind the decode interface.

  First n layers + the shared final norm and LM head, with its own KV cache of n
  layers; it takes the FULL model's params (it slices them). `.cfg` is the
  standalone ModelConfig (n_layers = n: cache size and FLOPs), `.sub_params(params)`
  the standalone params, so `Transformer(m.cfg)` with them is the same model.

  Raises:
    ValueError: naming `n` unless it is an int in [1, cfg.n_layers].
  """
  n = check_int("n", n, lo=1, hi=_check_cfg(cfg).n_layers)
  return LayerSkipDraft(cfg, tuple(range(n)))


# ----------------------------------------------------------------------------------
# K/V of a layer from the stream entering it (state propagation, skipped layers)
# ----------------------------------------------------------------------------------


def _kv_entries(lp, x_BxTxD, positions_BxT, inv_freq, cfg: ModelConfig):
  """Layer lp's keys and values [B, T, Kv, K] for the residual stream x entering
  it (RoPE on the keys), as `forward` computes them."""
  h = rms_norm(x_BxTxD, lp.attn_norm, cfg)
  k = dense("btd,dhk->bthk", h, lp.wk)
  v = dense("btd,dhk->bthk", h, lp.wv)
  if lp.bk is not None:
    k, v = k + lp.bk, v + lp.bv
  return apply_rope(k, positions_BxT, inv_freq), v


def _tree_args(state_lengths_B, tokens_BxM, parent_M):
  B, M = tokens_BxM.shape
  depth = tree_depths(parent_M)
  pos = state_lengths_B[:, None] + depth[None, :] - 1
  mask = jnp.broadcast_to(tree_ancestor_mask(parent_M), (B, M, M))
  return pos, mask


# ----------------------------------------------------------------------------------
# Unified layer skipping
# ----------------------------------------------------------------------------------


def skip_forward(
  params,
  cfg: ModelConfig,
  cache: KVCache,
  tokens_BxT,
  layers: Sequence[int],
  *,
  positions_BxT=None,
  attn_mask_BxTxT=None,
  n_valid_B=None,
):
  """New tokens through the kept `layers` only; skipped layers' cache filled.

  A skipped layer i leaves the residual stream unchanged, so the stream entering it
  is the output of the nearest kept layer below (layer 0 is always kept by
  `skip_layers`; if not, the embedding). Its K/V entries for the new tokens are
  computed from that stream and written at slots [lengths, lengths + T), as if the
  layer had run (state propagation from the layer below), so the full model or a
  deeper pass can attend to every position later.

  Args:
    cache: the full model's KVCache (all L layers). tokens_BxT: new tokens.
    layers: strictly increasing kept layer indices in [0, L).
    positions_BxT / attn_mask_BxTxT / n_valid_B: as `jaxllm.model.forward`.

  Returns:
    (logits_BxTxV float32, new cache) — lengths advance by n_valid_B.

  Raises:
    ValueError: naming `layers` (empty, not increasing, out of [0, L)).
  """
  layers = _check_layers(cfg, layers)
  _B, T = tokens_BxT.shape
  lengths = cache.lengths
  if positions_BxT is None:
    positions_BxT = lengths[:, None] + jnp.arange(T, dtype=jnp.int32)[None]
  logits, new_cache, hidden = forward(
    params,
    tokens_BxT,
    cfg,
    cache=cache,
    positions_BxT=positions_BxT,
    attn_mask_BxTxT=attn_mask_BxTxT,
    n_valid_B=n_valid_B,
    return_hidden=True,
    layers=layers,
  )
  skipped = [i for i in range(cfg.n_layers) if i not in layers]
  if not skipped:
    return logits, new_cache
  inv_freq = rope_inv_freq(cfg)
  x0 = None
  ks, vs = list(new_cache.k), list(new_cache.v)
  for i in skipped:
    below = [j for j, l in enumerate(layers) if l < i]
    if below:
      x = hidden[below[-1]]
    else:
      if x0 is None:
        x0 = take_rows(params.embed, tokens_BxT, jnp.dtype(cfg.dtype))
        if cfg.embed_scale:
          x0 = x0 * jnp.asarray(cfg.d_model**0.5, x0.dtype)
      x = x0
    k, v = _kv_entries(params.layers[i], x, positions_BxT, inv_freq, cfg)
    ks[i] = cache_lib.write_new(cache.k[i], k, lengths, keys=True)
    vs[i] = cache_lib.write_new(cache.v[i], v, lengths)
  return logits, KVCache(k=tuple(ks), v=tuple(vs), lengths=new_cache.lengths)


def _check_cfg(cfg) -> ModelConfig:
  if not isinstance(cfg, ModelConfig):
    raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
  return cfg


def _check_layers(cfg, layers) -> tuple:
  """`layers` as Python ints (check_int: no floats, strings or bools), non-empty,
  strictly increasing, in [0, L). Raises ValueError naming `layers`."""
  L = _check_cfg(cfg).n_layers
  if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
    raise ValueError(f"layers must be a tuple of layer indices, got {layers!r:.200}")
  layers = tuple(
    check_int(f"layers[{j}]", i, lo=0, hi=L - 1) for j, i in enumerate(layers)
  )
  if not layers or any(b <= a for a, b in itertools.pairwise(layers)):
    raise ValueError(f"layers must be non-empty and strictly increasing, got {layers}")
  return layers


@dataclasses.dataclass(frozen=True)
class SkipDecoder:
  """Decode interface for unified layer skipping (state = the full KVCache).

  prefill: all layers (the prompt is processed by the full model). extend /
  score_tree: `skip_forward` over the kept `layers` (skipped layers' slots filled
  from the layer below). reorder / commit: the cache operations over all layers.
  Build with `SkipDecoder.for_speedup(cfg, s)` (layers = `skip_layers(L, s)`).
  `cfg` is the full config (cache); decode FLOPs per token are those of
  `kept_cfg` (plus K/V projections of the skipped layers).

  Raises ValueError naming `layers` if they are not increasing indices in [0, L).
  """

  cfg: ModelConfig
  layers: tuple

  def __post_init__(self):
    object.__setattr__(self, "layers", _check_layers(self.cfg, self.layers))

  @classmethod
  def for_speedup(cls, cfg: ModelConfig, s) -> SkipDecoder:
    return cls(cfg, skip_layers(_check_cfg(cfg).n_layers, s))

  @property
  def kept_cfg(self) -> ModelConfig:
    win = self.cfg.windows
    return self.cfg.replace(
      n_layers=len(self.layers), layer_windows=tuple(win[i] for i in self.layers)
    )

  @property
  def vocab_size(self) -> int:
    return self.cfg.vocab_size

  def prefill(self, params, tokens_BxT, lengths_B, cache_size: int):
    return Transformer(self.cfg).prefill(params, tokens_BxT, lengths_B, cache_size)

  def extend(self, params, state, tokens_BxS, valid_BxS=None):
    logits, state = skip_forward(
      params,
      self.cfg,
      state,
      tokens_BxS,
      self.layers,
      n_valid_B=valid_count(tokens_BxS, valid_BxS),
    )
    return state, logits

  def reorder(self, state, index_N):
    return cache_lib.reorder(state, index_N)

  def lengths(self, state):
    return state.lengths

  def score_tree(self, params, state, tokens_BxM, parent_M):
    pos, mask = _tree_args(state.lengths, tokens_BxM, parent_M)
    logits, state = skip_forward(
      params,
      self.cfg,
      state,
      tokens_BxM,
      self.layers,
      positions_BxT=pos,
      attn_mask_BxTxT=mask,
      n_valid_B=jnp.zeros((tokens_BxM.shape[0],), jnp.int32),
    )
    return state, logits

  def commit(self, state, path_BxL, n_accept_B):
    return cache_lib.commit_path(state, path_BxL, n_accept_B)


# ----------------------------------------------------------------------------------
# Confidence-based early exit (CALM) with state propagation
# ----------------------------------------------------------------------------------


def confidence_of(logits_xV, confidence: str = "max_prob"):
  """Per-token confidence in [0, 1] from logits [..., V]: "max_prob" = the largest
  softmax probability; "margin" = top-1 minus top-2 probability (CALM's softmax
  response, Schuster et al. 2022, "Confident Adaptive Language Modeling"). Float32
  [...]. (Section and equation numbers of the sources are not cited: unchecked here.)

  Raises:
    ValueError: naming `confidence` for an unknown measure.
  """
  confidence = _check_confidence(confidence)
  p = jax.nn.softmax(logits_xV.astype(jnp.float32), axis=-1)
  if confidence == "max_prob":
    return p.max(-1)
  top2 = jax.lax.top_k(p, 2)[0]
  return top2[..., 0] - top2[..., 1]


def early_exit_forward(
  params,
  cfg: ModelConfig,
  cache: KVCache,
  tokens_BxT,
  exits: Sequence[int],
  threshold,
  confidence: str = "max_prob",
  *,
  positions_BxT=None,
  attn_mask_BxTxT=None,
  n_valid_B=None,
):
  """Per-token confidence-based early exit with state propagation (CALM).

  Token t exits at the first depth n in `exits` (n < L) where
  `confidence_of(lm_head(h_n))` > threshold, else at depth L (Schuster et al. 2022,
  the local exit decision against a threshold; state propagation: an exited
  token's hidden state h_n is copied to every layer above, and those layers' K/V
  entries for it are computed from h_n, so later tokens can attend to it). The
  comparison is strict, so threshold 1 never exits early and the result is the full
  model's. Static shapes: every row runs every layer; an exited token's stream is
  frozen (its layer outputs are discarded, its K/V entries still written), and its
  logits are the head applied to its frozen state = its exit logits.

  Args:
    cache: the full model's KVCache (all L layers), written like `forward`.
    tokens_BxT: new tokens. exits: depths in [1, L] where exit is checked (an exit
      at L is the end anyway). threshold: in [0, 1], a float or a scalar array (an
      array does not recompile). confidence: "max_prob" or "margin".
    positions_BxT / attn_mask_BxTxT / n_valid_B: as `jaxllm.model.forward` (tree
      verification passes positions and an ancestor mask; n_valid 0 commits none).

  Returns:
    (logits_BxTxV float32, new cache, depth_BxT int32): depth = layers the token
    needed (its exit depth), for compute accounting.

  Raises:
    ValueError: naming `exits`, `threshold` (a Python number outside [0, 1]) or
      `confidence`, before any compute.
  """
  exits = check_exits(cfg.n_layers, exits)
  if not isinstance(threshold, jax.Array):
    threshold = _check_threshold(threshold)
  confidence = _check_confidence(confidence)
  B, T = tokens_BxT.shape
  L = cfg.n_layers
  if n_valid_B is None:
    n_valid_B = jnp.full((B,), T, jnp.int32)
  lengths = cache.lengths
  if positions_BxT is None:
    positions_BxT = lengths[:, None] + jnp.arange(T, dtype=jnp.int32)[None]
  masks, _ = build_masks(
    cfg, positions_BxT, lengths, cache.size, attn_mask_BxTxT, n_valid_B
  )
  inv_freq = rope_inv_freq(cfg)
  attend = get_attention(cfg.attention_impl)
  dtype = jnp.dtype(cfg.dtype)
  x = take_rows(params.embed, tokens_BxT, dtype)
  if cfg.embed_scale:
    x = x * jnp.asarray(cfg.d_model**0.5, dtype)
  exited = jnp.zeros((B, T), bool)
  depth = jnp.full((B, T), L, jnp.int32)
  ks, vs = list(cache.k), list(cache.v)
  for i in range(L):
    kv = (cache.k[i], cache.v[i], lengths)
    mask = masks[cfg.windows[i]]
    x_new, ks[i], vs[i] = model_layer(
      x, params.layers[i], cfg, attend, positions_BxT, inv_freq, mask, kv
    )
    x = jnp.where(exited[..., None], x, x_new)  # exited tokens keep h_exit
    d = i + 1
    if d in exits and d < L:
      conf = confidence_of(lm_head(params, x, cfg), confidence)
      newly = ~exited & (conf > threshold)
      depth = jnp.where(newly, d, depth)
      exited = exited | newly
  logits = lm_head(params, x, cfg)
  new_cache = KVCache(k=tuple(ks), v=tuple(vs), lengths=lengths + n_valid_B)
  return logits, new_cache, depth


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class EarlyExitState:
  cache: KVCache  # the full model's cache (all layers)
  exit_layers_B: Any  # int32 [B]: sum of exit depths of the decoded tokens
  exit_tokens_B: Any  # int32 [B]: tokens decoded with early exit (depth counted)


@dataclasses.dataclass(frozen=True)
class EarlyExitDecoder:
  """Decode interface with CALM-style early exit (`early_exit_forward`).

  prefill: all layers (the prompt is not exited). extend: early exit per token;
  `state.exit_layers_B / state.exit_tokens_B` is each row's mean depth over its
  valid decoded tokens (the compute saved is 1 - mean depth / L of the layer
  FLOPs, less the extra head applications at the checked exits). score_tree counts
  every scored node. `threshold` is a static field (each value compiles once; call
  `early_exit_forward` with an array threshold to sweep without recompiling).

  Raises ValueError naming `exits`, `threshold` or `confidence` when built.
  """

  cfg: ModelConfig
  exits: tuple
  threshold: float
  confidence: str = "max_prob"

  def __post_init__(self):
    L = _check_cfg(self.cfg).n_layers
    object.__setattr__(self, "exits", check_exits(L, self.exits))
    object.__setattr__(self, "threshold", _check_threshold(self.threshold))
    _check_confidence(self.confidence)

  @property
  def vocab_size(self) -> int:
    return self.cfg.vocab_size

  def _run(self, params, state, tokens, count_B, **kw):
    logits, cache, depth = early_exit_forward(
      params,
      self.cfg,
      state.cache,
      tokens,
      self.exits,
      self.threshold,
      self.confidence,
      **kw,
    )
    S = tokens.shape[1]
    counted = jnp.arange(S)[None, :] < count_B[:, None]
    new = EarlyExitState(
      cache,
      state.exit_layers_B + jnp.where(counted, depth, 0).sum(-1).astype(jnp.int32),
      state.exit_tokens_B + count_B.astype(jnp.int32),
    )
    return new, logits

  def prefill(self, params, tokens_BxT, lengths_B, cache_size: int):
    cache, logits = Transformer(self.cfg).prefill(
      params, tokens_BxT, lengths_B, cache_size
    )
    z = jnp.zeros((tokens_BxT.shape[0],), jnp.int32)
    return EarlyExitState(cache, z, z), logits

  def extend(self, params, state, tokens_BxS, valid_BxS=None):
    n = valid_count(tokens_BxS, valid_BxS)
    return self._run(params, state, tokens_BxS, n, n_valid_B=n)

  def reorder(self, state, index_N):
    # the per-row counters gathered as the cache rows (flat [N] or blocked [P, N])
    take = lambda x: cache_lib.take_rows(x, index_N)
    return EarlyExitState(
      cache_lib.reorder(state.cache, index_N),
      take(state.exit_layers_B),
      take(state.exit_tokens_B),
    )

  def lengths(self, state):
    return state.cache.lengths

  def score_tree(self, params, state, tokens_BxM, parent_M):
    B, M = tokens_BxM.shape
    pos, mask = _tree_args(state.cache.lengths, tokens_BxM, parent_M)
    return self._run(
      params,
      state,
      tokens_BxM,
      jnp.full((B,), M, jnp.int32),
      positions_BxT=pos,
      attn_mask_BxTxT=mask,
      n_valid_B=jnp.zeros((B,), jnp.int32),
    )

  def commit(self, state, path_BxL, n_accept_B):
    cache = cache_lib.commit_path(state.cache, path_BxL, n_accept_B)
    return dataclasses.replace(state, cache=cache)
