"""The decode interface (`jaxllm.decoding`) over the encoder-decoder model.

`EncDecTransformer(cfg)` answers the same calls as `jaxllm.decoding.Transformer`,
so generate, the selection methods, particle filtering, beam search, A* and
speculative decoding run on an encoder-decoder with no change:

  prefill(params, tokens_BxE, lengths_B, cache_size) -> (state, logits_BxV)
      runs the encoder ONCE on the prompt (the input), computes every decoder
      layer's cross-attention keys / values once (kept in the state beside the
      decoder self-attention cache), feeds the decoder start token
      (`EncDecConfig.decoder_start_id`; T5Gemma uses its bos id) at decoder
      position 0, and returns the logits of the first target token.
  extend / score_tree / commit: the decoder's self-attention cache behaves as
      the decoder-only cache (ragged steps, tree scoring without committing,
      committing an accepted path); cross-attention reads the cached K/V.
  reorder(state, index): every per-row array (self cache, cross K/V, encoder
      lengths) is gathered with `jaxllm.cache.take_rows`, flat [N] or blocked
      [P, N].
  lengths(state) -> [B] = encoder tokens + decoder tokens committed (start
      token included). It is the context a new token reads (self keys + cross
      keys), which is what the algorithms' FLOPs accounting needs
      (`jaxllm.flops.decode_flops` on an EncDecConfig).

Cache size: `cache_size` bounds prompt + continuation as for the decoder-only
model (the algorithms check prompt + new tokens <= cache_size); the decoder
self-attention cache gets cache_size slots, which always hold the start token
plus the continuation.

Speculative decoding: `algorithms.speculative` keeps the last emitted token out
of the target cache (it is the root of the next block's tree). For a decoder-only
model that is the last prompt token; here `prefill_to_root` encodes the whole
prompt and makes the decoder start token the first root, so speculative
decoding samples the same conditional as `generate` (tested).

Shape letters: B rows, E encoder tokens, S decoder cache slots, M tree nodes,
L path length, V vocab. Source: T5Gemma (Zhang et al. 2025, arXiv:2504.06225).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxllm import cache as cache_lib
from jaxllm.decoding import tree_ancestor_mask, tree_depths, valid_count
from jaxllm.encdec import EncDecConfig, check_encdec_params, cross_kv, decode, encode


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class EncDecState:
  """Decode state of the encoder-decoder (a pytree; every leaf has B rows).

  self_cache: KVCache of the decoder self-attention (S slots per row).
  cross_k / cross_v: per decoder layer, the cross-attention keys [B, Kv_x, K, E]
    and values [B, Kv_x, E, K] (cache layouts), computed once at prefill and
    stored in the decoder's `ModelConfig.kv_dtype` (as self_cache is).
  enc_lengths: int32 [B] real encoder tokens per row (the rest is masked).
  """

  self_cache: Any
  cross_k: tuple
  cross_v: tuple
  enc_lengths: Any


@dataclasses.dataclass(frozen=True)
class EncDecTransformer:
  """The decode interface over the cached encoder-decoder (state = EncDecState).

  Raises (at construction): ValueError unless cfg is an EncDecConfig.
  Source: T5Gemma (Zhang et al. 2025, arXiv:2504.06225).
  """

  cfg: EncDecConfig

  def __post_init__(self):
    if not isinstance(self.cfg, EncDecConfig):
      raise ValueError(
        f"EncDecTransformer.cfg must be an EncDecConfig, got {type(self.cfg).__name__}"
      )

  @property
  def vocab_size(self) -> int:
    return self.cfg.vocab_size

  def _decode(self, params, state: EncDecState, tokens, cache, **kw):
    return decode(
      params,
      tokens,
      self.cfg,
      state.cross_k,
      state.cross_v,
      state.enc_lengths,
      cache=cache,
      **kw,
    )

  def prefill(self, params, tokens_BxE, lengths_B, cache_size: int):
    """Encode the prompts and run the decoder start token.

    Args:
      tokens_BxE: prompts, right-padded; lengths_B: their lengths (0..E).
      cache_size: static slots per row for the decoder cache (>= E, as for
        the decoder-only model: it bounds prompt + continuation).

    Returns:
      (EncDecState with decoder length 1, logits_BxV of the first target token).

    Raises:
      ValueError: params that do not match cfg (naming the parameter), a
        tokens_BxE that is not 2-D, E > the encoder's max_seq_len or E >
        cache_size.
    """
    state, start_B = self.prefill_to_root(params, tokens_BxE, lengths_B, cache_size)
    logits, cache, _ = self._decode(
      params, state, start_B[:, None], state.self_cache, logits_at="last"
    )
    return dataclasses.replace(state, self_cache=cache), logits

  def prefill_to_root(self, params, tokens_BxE, lengths_B, cache_size: int):
    """Speculative decoding's prefill (`algorithms.speculative`): the prompt
    encoded in full (and the cross-attention K/V computed), the decoder cache
    still empty, and the first tree root = the decoder start token.

    Returns:
      (EncDecState with decoder length 0, root_B int32 [B]).

    Raises:
      ValueError: as `prefill`.
    """
    if getattr(tokens_BxE, "ndim", None) != 2:
      raise ValueError(
        f"tokens_BxE must be 2-D [rows, tokens], got {getattr(tokens_BxE, 'shape', None)}"
      )
    check_encdec_params(self.cfg, params)
    B, E = tokens_BxE.shape
    if E > self.cfg.encoder.max_seq_len:
      raise ValueError(
        f"prompt length {E} exceeds the encoder's max_seq_len "
        f"({self.cfg.encoder.max_seq_len})"
      )
    if E > cache_size:
      raise ValueError(
        f"prompt length {E} is longer than the cache (cache_size={cache_size})"
      )
    lengths_B = jnp.asarray(lengths_B).astype(jnp.int32)
    enc, _ = encode(params, tokens_BxE, self.cfg, lengths_B)
    # stored like the self-attention cache, in the decoder's kv_dtype
    kv_dtype = jnp.dtype(self.cfg.decoder.kv_dtype)
    ks, vs = jax.tree_util.tree_map(
      lambda x: x.astype(kv_dtype), cross_kv(params, enc, self.cfg)
    )
    cache = cache_lib.init_cache(self.cfg.decoder, B, cache_size)
    root_B = jnp.full((B,), self.cfg.decoder_start_id, jnp.int32)
    return EncDecState(cache, ks, vs, lengths_B), root_B

  def extend(self, params, state: EncDecState, tokens_BxS, valid_BxS=None):
    logits, cache, _ = self._decode(
      params,
      state,
      tokens_BxS,
      state.self_cache,
      n_valid_B=valid_count(tokens_BxS, valid_BxS),
    )
    return dataclasses.replace(state, self_cache=cache), logits

  def reorder(self, state: EncDecState, index) -> EncDecState:
    take = lambda x, layout: cache_lib.take_rows(x, index, axis=layout.index("b"))
    return EncDecState(
      self_cache=cache_lib.reorder(state.self_cache, index),
      cross_k=tuple(take(x, cache_lib.K_LAYOUT) for x in state.cross_k),
      cross_v=tuple(take(x, cache_lib.V_LAYOUT) for x in state.cross_v),
      enc_lengths=cache_lib.take_rows(state.enc_lengths, index),
    )

  def lengths(self, state: EncDecState):
    return state.enc_lengths + state.self_cache.lengths

  def score_tree(self, params, state: EncDecState, tokens_BxM, parent_M):
    B, M = tokens_BxM.shape
    depth = tree_depths(parent_M)
    pos = state.self_cache.lengths[:, None] + depth[None, :] - 1
    mask = jnp.broadcast_to(tree_ancestor_mask(parent_M), (B, M, M))
    logits, cache, _ = self._decode(
      params,
      state,
      tokens_BxM,
      state.self_cache,
      positions_BxT=pos,
      attn_mask_BxTxT=mask,
      n_valid_B=jnp.zeros((B,), jnp.int32),
    )
    return dataclasses.replace(state, self_cache=cache), logits

  def commit(self, state: EncDecState, path_BxL, n_accept_B) -> EncDecState:
    cache = cache_lib.commit_path(state.self_cache, path_BxL, n_accept_B)
    return dataclasses.replace(state, self_cache=cache)
