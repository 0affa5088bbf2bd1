"""The decoder-only transformer: plain functions over the Params pytree.

One `forward` serves training (no cache), prefill and decode (cache), ragged
multi-token extension (per-row number of valid tokens) and tree verification
(an arbitrary mask among the new tokens plus explicit positions).

Shape letters (suffixes such as `x_BxTxD`): B batch rows, T new tokens, S
cache slots (key positions), D model width, H query heads, Kv KV heads,
G = H / Kv query heads per KV head, K head dim, V vocab.

Attention implementations: `ATTENTION_IMPLS` maps the names that
`ModelConfig.attention_impl` may take to functions with the signature of
`attention_jnp` (the plain-jnp reference that runs everywhere);
`attention_live` ("live") computes the same in blocks of cache slots and
reads only the blocks some query may attend to. A fused
GPU/TPU kernel is added beside it as one more function and one more entry;
`forward` looks the config's name up once (`get_attention`). Keys and values
reach attention in the cache layout that jaxllm.cache owns (`K_LAYOUT`,
`V_LAYOUT`), with or without a cache.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxllm import cache as cache_lib
from jaxllm.cache import KVCache, layout_keys, layout_values, write_new
from jaxllm.config import ModelConfig
from jaxllm.params import LayerParams, Params
from jaxllm.quant import Int8Weight, dense, take_rows

NEG_INF = -1e30  # finite, so fully masked rows give a uniform softmax, not NaN


def rms_norm(x, w, cfg: ModelConfig):
  """RMSNorm over the last axis of x [..., D] with weight w [D] (scale w, or
  1 + w when cfg.norm_plus_one), computed in float32, returned in x.dtype."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.norm_eps)
  scale = (1.0 + w.astype(jnp.float32)) if cfg.norm_plus_one else w.astype(jnp.float32)
  return (y * scale).astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> jax.Array:
  """Inverse frequencies [K/2], with Llama-3 scaling if configured."""
  K = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, K, 2, dtype=jnp.float32) / K))
  rs = cfg.rope_scaling
  if rs is None:
    return inv
  low_wavelen = rs.original_max_position / rs.low_freq_factor
  high_wavelen = rs.original_max_position / rs.high_freq_factor
  wavelen = 2 * jnp.pi / inv
  smooth = (rs.original_max_position / wavelen - rs.low_freq_factor) / (
    rs.high_freq_factor - rs.low_freq_factor
  )
  mid = (1 - smooth) * inv / rs.factor + smooth * inv
  return jnp.where(
    wavelen > low_wavelen, inv / rs.factor, jnp.where(wavelen < high_wavelen, inv, mid)
  )


def apply_rope(x_BxTxNxK, positions_BxT, inv_freq):
  """Rotate-half RoPE (the Hugging Face convention) on x [B, T, N, K] (N any
  head count) at positions [B, T]; inv_freq [K/2] from `rope_inv_freq`."""
  ang = positions_BxT.astype(jnp.float32)[..., None] * inv_freq  # [B,T,K/2]
  cos = jnp.cos(ang)[:, :, None, :]
  sin = jnp.sin(ang)[:, :, None, :]
  x = x_BxTxNxK.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxNxK.dtype)


def _softcap(x, cap):
  return x if cap is None else cap * jnp.tanh(x / cap)


def _split_heads(q_BxTxHxK, n_kv_heads: int):
  """Queries [B, T, H, K] -> [B, Kv, G, T, K] (G = H / Kv per KV head)."""
  B, T, H, K = q_BxTxHxK.shape
  q = q_BxTxHxK.reshape(B, T, n_kv_heads, H // n_kv_heads, K)
  return q.transpose(0, 2, 3, 1, 4)


def _merge_heads(o_BxKvxGxTxK):
  """[B, Kv, G, T, K] -> [B, T, H, K] (the inverse of `_split_heads`)."""
  B, Kv, G, T, K = o_BxKvxGxTxK.shape
  return o_BxKvxGxTxK.transpose(0, 3, 1, 2, 4).reshape(B, T, Kv * G, K)


def _scores(q_BxKvxGxTxK, keys, cfg: ModelConfig):
  """float32 scores [B, Kv, G, T, S] of split-head queries against keys in
  K_LAYOUT (S slots), scaled (`attn_scale`) and soft-capped (`attn_softcap`).

  einsum letters: b batch, k KV head, g group, t query, d head dim, s slot
  (the cache layout strings use the same b, k, d, s).
  """
  s = jnp.einsum(
    f"bkgtd,{cache_lib.K_LAYOUT}->bkgts",
    q_BxKvxGxTxK,
    keys,
    preferred_element_type=jnp.float32,
  )
  return _softcap(s * cfg.attn_scale, cfg.attn_softcap)


def _weighted_values(p_BxKvxGxTxS, values):
  """float32 sum over slots of p [B, Kv, G, T, S] times values (V_LAYOUT):
  [B, Kv, G, T, K]. p is cast to the values' dtype (a bfloat16 cache
  multiplies in bfloat16) and the products accumulate in float32."""
  return jnp.einsum(
    f"bkgts,{cache_lib.V_LAYOUT}->bkgtd",
    p_BxKvxGxTxS.astype(values.dtype),
    values,
    preferred_element_type=jnp.float32,
  )


def attention_jnp(q_BxTxHxK, keys, values, mask_BxTxS, cfg: ModelConfig):
  """Grouped-query attention with an explicit boolean mask (plain jnp).

  Args:
    q_BxTxHxK: queries (RoPE applied).
    keys: one layer's keys in the cache key layout (`jaxllm.cache.K_LAYOUT`,
      today [B, Kv, K, S]); S is the number of key slots.
    values: the values in the cache value layout (`V_LAYOUT`, [B, Kv, S, K]).
    mask_BxTxS: True where query t may attend to key slot s. A row with no
      True entry gets a uniform softmax over all S slots (finite NEG_INF),
      never NaN.
    cfg: scale (`attn_scale`) and soft-cap (`attn_softcap`).

  Returns:
    o_BxTxHxK in the dtype of the queries (the activations), whatever the
    cache's dtype: scores, softmax and the probabilities x values sum are
    float32. With today's layout both products are batched matmuls over
    (B, Kv) with no transpose of the cache.
  """
  Kv = keys.shape[cache_lib.K_LAYOUT.index("k")]
  s = _scores(_split_heads(q_BxTxHxK, Kv), keys, cfg)
  s = jnp.where(mask_BxTxS[:, None, None], s, NEG_INF)
  o = _weighted_values(jax.nn.softmax(s, axis=-1), values)
  return _merge_heads(o).astype(q_BxTxHxK.dtype)


LIVE_BLOCK = 128  # key slots per block of attention_live


def live_range(mask_BxTxS):
  """(lo, hi) int32 scalars: the slots [lo, hi) any query may attend to.

  lo is the first and hi - 1 the last slot with a True entry in any row of
  the batch. When some query row has no True entry at all, (0, S): that row
  attends uniformly to every slot (attention_jnp's NEG_INF rule), so every
  slot has to be read. An all-False mask also gives (0, S).
  """
  S = mask_BxTxS.shape[-1]
  seen_S = jnp.any(mask_BxTxS, axis=(0, 1))
  slot = jnp.arange(S, dtype=jnp.int32)
  lo = jnp.min(jnp.where(seen_S, slot, S))
  hi = jnp.max(jnp.where(seen_S, slot + 1, 0))
  some_row_empty = jnp.any(~jnp.any(mask_BxTxS, axis=-1))
  return jnp.where(some_row_empty, 0, lo), jnp.where(some_row_empty, S, hi)


def attention_live(
  q_BxTxHxK, keys, values, mask_BxTxS, cfg: ModelConfig, block: int = LIVE_BLOCK
):
  """attention_jnp over the live slots only: blocks of `block` key slots with
  an online (streaming) softmax, looping over just the blocks that hold the
  slots [lo, hi) of `live_range(mask_BxTxS)`.

  Same arguments, outputs (up to float32 rounding) and masking rules as
  `attention_jnp`, including a uniform softmax over all S slots for a query
  row with no allowed slot. A pre-allocated cache of S slots whose rows hold
  short prefixes is then read up to the longest prefix (rounded up to a
  block), not to S. The trip count is data-dependent (`lax.fori_loop` with
  traced bounds, i.e. a while loop): fine under jit and vmap, but not
  reverse-mode differentiable, so train with "jnp".

  Args:
    block: slots per block, a static int >= 1 (min(block, S) is used). The
      last block is shifted back to end at slot S and its slots read by the
      block before are excluded, so S need not be a multiple of it.

  Raises:
    ValueError: naming `block`, for a block < 1.
  """
  if isinstance(block, bool) or not isinstance(block, int) or block < 1:
    raise ValueError(f"attention_live: block must be an int >= 1, got {block!r}")
  kl, vl = cache_lib.K_LAYOUT, cache_lib.V_LAYOUT
  S = keys.shape[kl.index("s")]
  bs = min(block, S)
  q = _split_heads(q_BxTxHxK, keys.shape[kl.index("k")])
  lo, hi = live_range(mask_BxTxS)
  first, stop = lo // bs, (hi + bs - 1) // bs

  def body(i, carry):
    m, l, acc = carry  # running max, softmax denominator, weighted sum
    start = i * bs
    at = jnp.minimum(start, S - bs)  # the last block ends at slot S
    take = lambda x, axis: jax.lax.dynamic_slice_in_dim(x, at, bs, axis=axis)
    s = _scores(q, take(keys, kl.index("s")), cfg)
    s = jnp.where(take(mask_BxTxS, 2)[:, None, None], s, NEG_INF)
    # slots a shifted last block shares with the block before count once
    s = jnp.where(at + jnp.arange(bs) >= start, s, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    p = jnp.exp(s - m_new[..., None])
    decay = jnp.exp(m - m_new)
    l = l * decay + jnp.sum(p, axis=-1)
    acc = acc * decay[..., None] + _weighted_values(p, take(values, vl.index("s")))
    return m_new, l, acc

  # The running max starts at NEG_INF (finite): a row whose slots are all
  # masked then weighs each one exp(0) = 1, i.e. the uniform softmax.
  m0 = jnp.full(q.shape[:-1], NEG_INF, jnp.float32)
  init = (m0, jnp.zeros_like(m0), jnp.zeros(q.shape, jnp.float32))
  _, l, acc = jax.lax.fori_loop(first, stop, body, init)
  return _merge_heads(acc / l[..., None]).astype(q_BxTxHxK.dtype)


# name -> attention function (signature of attention_jnp). The ONE switch point
# for the attention implementation; `ModelConfig.attention_impl` names an entry.
ATTENTION_IMPLS = {"jnp": attention_jnp, "live": attention_live}

attention = attention_jnp  # the historical name of the reference path


def get_attention(name: str):
  """The attention function registered as `name` in ATTENTION_IMPLS.

  Raises:
    ValueError: naming `ModelConfig.attention_impl` and the known names, for
      an unregistered name.
  """
  try:
    return ATTENTION_IMPLS[name]
  except (KeyError, TypeError):
    raise ValueError(
      f"ModelConfig.attention_impl: unknown attention "
      f"implementation {name!r}; registered: "
      f"{sorted(ATTENTION_IMPLS)}"
    ) from None


def _mlp(x, lp: LayerParams, cfg: ModelConfig):
  gate = dense("...d,df->...f", x, lp.w_gate)
  act = (
    jax.nn.silu(gate)
    if cfg.activation == "silu"
    else jax.nn.gelu(gate, approximate=(cfg.activation == "gelu_tanh"))
  )
  return dense("...f,fd->...d", act * dense("...d,df->...f", x, lp.w_up), lp.w_down)


def _qkv(x, lp: LayerParams):
  q = dense("btd,dhk->bthk", x, lp.wq)
  k = dense("btd,dhk->bthk", x, lp.wk)
  v = dense("btd,dhk->bthk", x, lp.wv)
  if lp.bq is not None:
    q, k, v = q + lp.bq, k + lp.bk, v + lp.bv
  return q, k, v


def build_masks(
  cfg: ModelConfig,
  positions_BxT,
  lengths_B,
  S: Optional[int],
  new_mask_BxTxT,
  n_valid_B,
):
  """Boolean attention masks, one per distinct window size.

  Without a cache (S is None) keys are the T new tokens. With a cache, key slot
  j of row b holds a committed token when j < lengths[b] (slot == position) and
  new token j - lengths[b] when lengths[b] <= j < lengths[b] + T.
  Returns ({window: mask_BxTxS}, key_positions_BxS).
  """
  B, T = positions_BxT.shape
  if new_mask_BxTxT is None:
    t = jnp.arange(T)
    new_mask_BxTxT = jnp.broadcast_to(t[None, :, None] >= t[None, None, :], (B, T, T))
  if S is None:
    base = new_mask_BxTxT
    kpos = positions_BxT
  else:
    j = jnp.arange(S)[None, :]  # [1,S]
    rel = j - lengths_B[:, None]  # [B,S] index into the new tokens
    in_new = (rel >= 0) & (rel < T)
    rel_c = jnp.clip(rel, 0, T - 1)
    new_part = jnp.take_along_axis(
      new_mask_BxTxT, jnp.broadcast_to(rel_c[:, None, :], (B, T, S)), axis=2
    )
    base = (j < lengths_B[:, None])[:, None, :] | (in_new[:, None, :] & new_part)
    kpos = jnp.where(in_new, jnp.take_along_axis(positions_BxT, rel_c, axis=1), j)
  masks = {}
  for w in sorted(set(cfg.windows)):
    if w == 0:
      masks[w] = base
    else:
      masks[w] = base & (positions_BxT[:, :, None] - kpos[:, None, :] < w)
  return masks, kpos


def step_inputs(
  cfg: ModelConfig, tokens_BxT, cache, positions_BxT, mask_BxTxT, n_valid_B
):
  """The defaults and masks of one self-attention step (shared by `forward` and
  the encoder-decoder's decoder): (n_valid_B (default T), cache lengths_B (0
  without a cache), positions_BxT (default lengths + arange(T)), {window:
  mask_BxTxS} from `build_masks`)."""
  B, T = tokens_BxT.shape
  if n_valid_B is None:
    n_valid_B = jnp.full((B,), T, jnp.int32)
  lengths = cache.lengths if cache is not None else jnp.zeros((B,), jnp.int32)
  if positions_BxT is None:
    positions_BxT = lengths[:, None] + jnp.arange(T, dtype=jnp.int32)[None]
  S = None if cache is None else cache.size
  masks, _ = build_masks(cfg, positions_BxT, lengths, S, mask_BxTxT, n_valid_B)
  return n_valid_B, lengths, positions_BxT, masks


def forward(
  params: Params,
  tokens_BxT: jax.Array,
  cfg: ModelConfig,
  *,
  cache: Optional[KVCache] = None,
  positions_BxT: Optional[jax.Array] = None,
  attn_mask_BxTxT: Optional[jax.Array] = None,
  n_valid_B: Optional[jax.Array] = None,
  logits_at: str = "all",
  return_hidden: bool = False,
  layers: Optional[tuple[int, ...]] = None,
):
  """Run the transformer on T new tokens per row.

  Args:
    tokens_BxT: token ids; rows may be right-padded (see n_valid_B).
    cache: if given, new keys/values are written at slots [lengths, lengths+T)
      and queries attend to the committed prefix plus the new tokens.
    positions_BxT: RoPE positions; default lengths + arange(T) (or arange(T)
      without a cache). Tree verification passes root position + depth.
    attn_mask_BxTxT: which new tokens each new token sees (default causal; a
      tree passes its ancestor-or-self mask; bidirectional passes all True).
    n_valid_B: how many of the T tokens per row are real; the cache length of
      row b advances by n_valid_B[b] (default T). Pass zeros to score without
      committing.
    logits_at: "all" -> [B,T,V]; "last" -> [B,V] at token n_valid-1 of each
      row; "none" -> no LM head (hidden states only).
    return_hidden: also return the residual stream after every layer.
    layers: indices of layers to run (layer skipping / early exit); default all.
  Returns: (logits, new_cache or None, hidden states tuple or None); hidden
    states are [B, T, D] per run layer.
  Raises:
    ValueError: for an unknown `logits_at`, or a `cfg.attention_impl` not in
      ATTENTION_IMPLS.
  """
  n_valid_B, lengths, positions_BxT, masks = step_inputs(
    cfg, tokens_BxT, cache, positions_BxT, attn_mask_BxTxT, n_valid_B
  )
  inv_freq = rope_inv_freq(cfg)
  dtype = jnp.dtype(cfg.dtype)
  attend = get_attention(cfg.attention_impl)

  x = take_rows(params.embed, tokens_BxT, dtype)
  if cfg.embed_scale:
    x = x * jnp.asarray(cfg.d_model**0.5, dtype)
  hidden = []
  new_k, new_v = [], []
  layer_ids = range(cfg.n_layers) if layers is None else layers
  for i in layer_ids:
    kv = None if cache is None else (cache.k[i], cache.v[i], lengths)
    mask = masks[cfg.windows[i]]
    x, keys, vals = _layer(
      x, params.layers[i], cfg, attend, positions_BxT, inv_freq, mask, kv
    )
    if cache is not None:
      new_k.append(keys)
      new_v.append(vals)
    if return_hidden:
      hidden.append(x)

  new_cache = None
  if cache is not None:
    new_cache = _updated_cache(cache, layer_ids, new_k, new_v, lengths + n_valid_B)
  logits = _logits_at(params, x, cfg, logits_at, n_valid_B)
  return logits, new_cache, (tuple(hidden) if return_hidden else None)


def _layer(
  x, lp: LayerParams, cfg: ModelConfig, attend, positions_BxT, inv_freq, mask, kv
):
  """One transformer layer on the residual stream x [B, T, D] -> (x, keys, vals).

  kv: None (attend to the T new tokens only, in the cache layout) or this
  layer's (cache keys, cache values, lengths_B): the new keys / values are
  written at slots [lengths, lengths + T) and the returned buffers hold them.
  mask: [B, T, S] for this layer's window (`build_masks`); attend: the
  attention implementation (`get_attention`).
  """
  h = rms_norm(x, lp.attn_norm, cfg)
  q, k, v = _qkv(h, lp)
  q = apply_rope(q, positions_BxT, inv_freq)
  k = apply_rope(k, positions_BxT, inv_freq)
  if kv is None:  # attend to the T new tokens, in the cache layout
    keys, vals = layout_keys(k), layout_values(v)
  else:
    cache_k, cache_v, lengths = kv
    keys = write_new(cache_k, k, lengths, keys=True)
    vals = write_new(cache_v, v, lengths)
  o = attend(q, keys, vals, mask, cfg)
  o = dense("bthk,hkd->btd", o, lp.wo)
  if lp.post_attn_norm is not None:
    o = rms_norm(o, lp.post_attn_norm, cfg)
  x = x + o
  h = rms_norm(x, lp.mlp_norm, cfg)
  m = _mlp(h, lp, cfg)
  if lp.post_mlp_norm is not None:
    m = rms_norm(m, lp.post_mlp_norm, cfg)
  return x + m, keys, vals


def _updated_cache(cache: KVCache, layer_ids, new_k, new_v, lengths_B) -> KVCache:
  """`cache` with the buffers of the run layers replaced (new_k / new_v in
  layer_ids order) and the given lengths. Skipped layers keep their old buffers
  (layer skipping fills them itself)."""
  ks, vs = list(cache.k), list(cache.v)
  for j, i in enumerate(layer_ids):
    ks[i], vs[i] = new_k[j], new_v[j]
  return KVCache(k=tuple(ks), v=tuple(vs), lengths=lengths_B)


def _logits_at(params: Params, x_BxTxD, cfg: ModelConfig, logits_at: str, n_valid_B):
  """forward's logits: "all" -> [B, T, V]; "last" -> [B, V] at token
  n_valid - 1 of each row; "none" -> None. Raises ValueError for another
  `logits_at`."""
  if logits_at == "none":
    return None
  if logits_at == "last":
    T = x_BxTxD.shape[1]
    idx = jnp.clip(n_valid_B - 1, 0, T - 1)
    x_BxTxD = jnp.take_along_axis(x_BxTxD, idx[:, None, None], axis=1)[:, 0]
  elif logits_at != "all":
    raise ValueError(f"logits_at must be 'all', 'last' or 'none', got {logits_at!r}")
  return lm_head(params, x_BxTxD, cfg)


def lm_head(params: Params, x, cfg: ModelConfig):
  """Final norm + output projection (+ final soft-cap): x [..., D] ->
  float32 logits [..., V]."""
  h = rms_norm(x, params.final_norm, cfg)
  if params.lm_head is None:  # tied: contract with the embedding table directly
    spec, w = "...d,vd->...v", params.embed
  else:
    spec, w = "...d,dv->...v", params.lm_head
  if not isinstance(w, Int8Weight):
    w = w.astype(h.dtype)
  logits = dense(spec, h, w, preferred_element_type=jnp.float32)
  return _softcap(logits, cfg.final_softcap)
