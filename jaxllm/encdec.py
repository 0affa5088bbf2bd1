"""The encoder-decoder transformer (T5Gemma-style): config, parameters, forward.

Source: Zhang et al. 2025, "Encoder-Decoder Gemma: Improving the Quality-Efficiency
Trade-Off via Adaptation" (arXiv:2504.06225), T5Gemma. Architecture:

  encoder  the decoder-only block of `jaxllm.model` (its `_layer`) with
           bidirectional self-attention: query i sees key j when j is a real input
           token (j < enc_lengths[b]) and, on a local layer of window w,
           |i - j| < w. RoPE at positions 0..E-1. Final RMSNorm.
  decoder  per layer: causal self-attention (RoPE, window per layer as in the
           decoder-only model), then cross-attention, then the FFN, each with the
           pre norm and (when `post_norms`, the Gemma 2 placement) a post norm.
           Positions start at 0 (the decoder start token sits at position 0).
  cross    queries from the decoder stream with the decoder's head layout
           (H heads of head_dim K), keys / values projected from the encoder
           output (width D_enc) with `cross_n_kv_heads` heads of K; no RoPE,
           global, the encoder padding masked. The decoder's `attn_scale` and
           `attn_softcap` apply (as in T5Gemma).
  head     the decoder's final norm and LM head (tied to the decoder embedding
           when `decoder.tie_embeddings`), with the decoder's final soft-cap.

Encoder and decoder have separate embedding tables and may differ in width,
depth and heads (the unbalanced case). Both are described by ordinary
`jaxllm.config.ModelConfig`s inside an `EncDecConfig`; their parameters are
ordinary `jaxllm.params.Params` (the encoder's `lm_head` is always None), plus one
`CrossParams` per decoder layer, so a decoder-only checkpoint maps onto either
half unchanged (`encdec_from_decoders`).

Shape letters: B rows, E encoder (input) tokens, T decoder tokens, S decoder
cache slots, D width (D_enc / D_dec where they differ), H query heads, Kv KV
heads, K head dim, V vocab.

The decode interface (prefill runs the encoder once and caches the cross K/V) is
`jaxllm.encdec_decoding.EncDecTransformer`; Hugging Face T5Gemma import / export
is `jaxllm.t5gemma`; FLOPs are counted by `jaxllm.flops` (see `encdec_flops`
there).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxllm.cache import KVCache, layout_keys, layout_values, write_new
from jaxllm.config import ModelConfig, as_int
from jaxllm.model import (
  _layer,
  _logits_at,
  _mlp,
  _qkv,
  _updated_cache,
  apply_rope,
  get_attention,
  rms_norm,
  rope_inv_freq,
  step_inputs,
)
from jaxllm.params import (
  Params,
  ParamSpec,
  check_params,
  init_from_specs,
  is_spec,
  param_specs,
)
from jaxllm.quant import dense, take_rows

T5GEMMA_DECODER_START_ID = 2  # T5Gemma starts the decoder with its bos id (2)


# ----------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EncDecConfig:
  """An encoder-decoder model: two ModelConfigs and how cross-attention joins them.

  Fields:
    encoder: the encoder's ModelConfig. Its windows are read bidirectionally
      (|i - j| < w); it has no LM head, so its `tie_embeddings` is normalised to
      True (its Params then have lm_head=None); final_softcap is unused.
    decoder: the decoder's ModelConfig (self-attention, FFN, embedding, head).
    cross_n_kv_heads: KV heads of cross-attention (default decoder.n_kv_heads);
      cross-attention queries use the decoder's n_heads and head_dim.
    decoder_start_id: the token the decoder starts from (T5Gemma: its bos id, 2);
      prefill feeds it at decoder position 0.

  Raises:
    ValueError: naming the field, when a config is not a ModelConfig, the
      vocabularies differ (`EncDecConfig.decoder.vocab_size`), cross-attention
      heads cannot join (`EncDecConfig.cross_n_kv_heads` must divide
      decoder.n_heads), or decoder_start_id is outside [0, vocab_size).
  Source: T5Gemma (Zhang et al. 2025, arXiv:2504.06225).
  """

  encoder: ModelConfig
  decoder: ModelConfig
  cross_n_kv_heads: int | None = None
  decoder_start_id: int = T5GEMMA_DECODER_START_ID

  def __post_init__(self):
    for f in ("encoder", "decoder"):
      v = getattr(self, f)
      if not isinstance(v, ModelConfig):
        raise ValueError(
          f"EncDecConfig.{f} must be a jaxllm ModelConfig, got {type(v).__name__}"
        )
    if not self.encoder.tie_embeddings:
      object.__setattr__(self, "encoder", self.encoder.replace(tie_embeddings=True))
    enc, dec = self.encoder, self.decoder
    if enc.vocab_size != dec.vocab_size:
      raise ValueError(
        f"EncDecConfig.decoder.vocab_size={dec.vocab_size} differs from "
        f"EncDecConfig.encoder.vocab_size={enc.vocab_size}: encoder and decoder "
        "must share one vocabulary"
      )
    kv = dec.n_kv_heads if self.cross_n_kv_heads is None else self.cross_n_kv_heads
    kv = as_int("EncDecConfig.cross_n_kv_heads", kv)
    if kv < 1 or dec.n_heads % kv:
      raise ValueError(
        f"EncDecConfig.cross_n_kv_heads={kv}: cross-attention cannot join "
        f"decoder.n_heads={dec.n_heads} query heads to {kv} key/value heads "
        "(it must be an int >= 1 that divides decoder.n_heads)"
      )
    object.__setattr__(self, "cross_n_kv_heads", kv)
    start = as_int("EncDecConfig.decoder_start_id", self.decoder_start_id)
    if not 0 <= start < dec.vocab_size:
      raise ValueError(
        f"EncDecConfig.decoder_start_id={start} is outside the vocabulary "
        f"[0, {dec.vocab_size})"
      )
    object.__setattr__(self, "decoder_start_id", start)

  @property
  def vocab_size(self) -> int:
    return self.decoder.vocab_size

  @property
  def max_seq_len(self) -> int:
    """Bound on prompt + continuation used by the algorithms' length checks:
    encoder.max_seq_len + decoder.max_seq_len (the prompt occupies the encoder,
    the continuation the decoder)."""
    return self.encoder.max_seq_len + self.decoder.max_seq_len

  def replace(self, **kw) -> EncDecConfig:
    return dataclasses.replace(self, **kw)


# ----------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------


def _dc(cls):
  return jax.tree_util.register_dataclass(dataclasses.dataclass(cls))


@_dc
class CrossParams:
  """One decoder layer's cross-attention: norm [D_dec], wq [D_dec, H, K],
  wk / wv [D_enc, Kv_x, K], wo [H, K, D_dec], post_norm [D_dec] (post_norms only)."""

  norm: Any
  wq: Any
  wk: Any
  wv: Any
  wo: Any
  post_norm: Any = None


@_dc
class EncDecParams:
  """encoder: Params (lm_head None); decoder: Params; cross: one CrossParams per
  decoder layer."""

  encoder: Any
  decoder: Any
  cross: tuple


def cross_specs(cfg: EncDecConfig) -> CrossParams:
  """ParamSpecs of one decoder layer's cross-attention (see CrossParams)."""
  enc, dec = cfg.encoder, cfg.decoder
  Dd, De, H, K, Kv = (
    dec.d_model,
    enc.d_model,
    dec.n_heads,
    dec.head_dim,
    cfg.cross_n_kv_heads,
  )
  norm = lambda: ParamSpec((Dd,), ("embed",), "zeros" if dec.norm_plus_one else "ones")
  return CrossParams(
    norm=norm(),
    wq=ParamSpec((Dd, H, K), ("embed", "heads", "head_dim"), fan_in=Dd),
    wk=ParamSpec((De, Kv, K), ("embed", "kv_heads", "head_dim"), fan_in=De),
    wv=ParamSpec((De, Kv, K), ("embed", "kv_heads", "head_dim"), fan_in=De),
    wo=ParamSpec((H, K, Dd), ("heads", "head_dim", "embed"), fan_in=H * K),
    post_norm=norm() if dec.post_norms else None,
  )


def encdec_param_specs(cfg: EncDecConfig) -> EncDecParams:
  """The parameter tree with a ParamSpec at every leaf (described once: the two
  halves by `jaxllm.params.param_specs`, cross-attention by `cross_specs`)."""
  return EncDecParams(
    encoder=param_specs(cfg.encoder),
    decoder=param_specs(cfg.decoder),
    cross=tuple(cross_specs(cfg) for _ in range(cfg.decoder.n_layers)),
  )


def _check_same_dtype(cfg: EncDecConfig) -> None:
  if cfg.encoder.param_dtype != cfg.decoder.param_dtype:
    raise ValueError(
      f"EncDecConfig.decoder.param_dtype={cfg.decoder.param_dtype!r} differs from "
      f"encoder.param_dtype={cfg.encoder.param_dtype!r}; init_encdec_params draws "
      "one dtype"
    )


def init_encdec_params(cfg: EncDecConfig, key: jax.Array) -> EncDecParams:
  """Random initialisation from `encdec_param_specs` (N(0, 1/fan_in) matrices,
  unit or zero norms), in the shared param_dtype, under jit.

  Raises:
    ValueError: if cfg is not an EncDecConfig or the two param_dtypes differ.
  """
  if not isinstance(cfg, EncDecConfig):
    raise ValueError(f"cfg must be an EncDecConfig, got {type(cfg).__name__}")
  _check_same_dtype(cfg)
  fn = jax.jit(
    lambda k: init_from_specs(encdec_param_specs(cfg), k, cfg.decoder.param_dtype)
  )
  return fn(key)


def abstract_encdec_params(cfg: EncDecConfig) -> EncDecParams:
  """ShapeDtypeStructs of the parameters (each half in its own param_dtype)."""

  def half(c: ModelConfig, specs):
    dt = jnp.dtype(c.param_dtype)
    return jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, dt), specs, is_leaf=is_spec
    )

  specs = encdec_param_specs(cfg)
  return EncDecParams(
    encoder=half(cfg.encoder, specs.encoder),
    decoder=half(cfg.decoder, specs.decoder),
    cross=half(cfg.decoder, specs.cross),
  )


def check_encdec_params(cfg: EncDecConfig, params: EncDecParams) -> None:
  """Raise ValueError naming the first parameter whose shape does not match cfg
  (prefixed "encoder", "decoder" or "cross[i]")."""
  if not isinstance(params, EncDecParams):
    raise ValueError(f"params must be EncDecParams, got {type(params).__name__}")
  for name, c, p in (
    ("encoder", cfg.encoder, params.encoder),
    ("decoder", cfg.decoder, params.decoder),
  ):
    try:
      check_params(c, p)
    except ValueError as e:
      raise ValueError(f"{name}: {e}") from None
  want = cross_specs(cfg)
  if len(params.cross) != cfg.decoder.n_layers:
    raise ValueError(
      f"cross: {len(params.cross)} layers for decoder.n_layers={cfg.decoder.n_layers}"
    )
  for i, cp in enumerate(params.cross):
    for f in dataclasses.fields(CrossParams):
      w, g = getattr(want, f.name), getattr(cp, f.name)
      if (w is None) != (g is None) or (w is not None and tuple(g.shape) != w.shape):
        got = None if g is None else tuple(g.shape)
        raise ValueError(
          f"cross[{i}].{f.name} has shape {got}, config expects "
          f"{None if w is None else w.shape}"
        )


# ----------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------


def _valid_keys(lengths_B, E: int):
  """bool [B, E]: key j of row b is a real input token (j < lengths[b])."""
  return jnp.arange(E)[None, :] < lengths_B[:, None]


def encoder_masks(cfg: ModelConfig, lengths_B, E: int) -> dict:
  """{window: mask_BxExE} of the bidirectional encoder: key j is a real token
  (j < lengths[b]) and, for window w > 0, |i - j| < w."""
  keys_BxE = _valid_keys(lengths_B, E)
  i = jnp.arange(E)
  dist = jnp.abs(i[:, None] - i[None, :])
  base = jnp.broadcast_to(keys_BxE[:, None, :], (keys_BxE.shape[0], E, E))
  return {w: (base & (dist < w)[None]) if w else base for w in sorted(set(cfg.windows))}


def _check_tokens(name: str, tokens) -> None:
  if getattr(tokens, "ndim", None) != 2:
    raise ValueError(
      f"{name} must be a 2-D [rows, tokens] array, got shape "
      f"{getattr(tokens, 'shape', None)}"
    )


def encode(
  params: EncDecParams,
  tokens_BxE: jax.Array,
  cfg: EncDecConfig,
  lengths_B: jax.Array | None = None,
  return_hidden: bool = False,
):
  """Run the bidirectional encoder.

  Args:
    params: EncDecParams (only `params.encoder` is read).
    tokens_BxE: input ids, right-padded past lengths_B.
    cfg: the EncDecConfig.
    lengths_B: real tokens per row (default E); padding is masked as keys.
    return_hidden: also return the residual stream after every layer.

  Returns:
    (enc_BxExD_enc after the encoder's final norm, hidden tuple or None). Rows
    past lengths_B hold values that nothing reads.

  Raises:
    ValueError: if tokens_BxE is not 2-D.
  Source: T5Gemma (Zhang et al. 2025, arXiv:2504.06225).
  """
  _check_tokens("tokens_BxE", tokens_BxE)
  ecfg, p = cfg.encoder, params.encoder
  B, E = tokens_BxE.shape
  if lengths_B is None:
    lengths_B = jnp.full((B,), E, jnp.int32)
  masks = encoder_masks(ecfg, lengths_B.astype(jnp.int32), E)
  positions = jnp.broadcast_to(jnp.arange(E, dtype=jnp.int32)[None], (B, E))
  inv_freq = rope_inv_freq(ecfg)
  attend = get_attention(ecfg.attention_impl)
  dtype = jnp.dtype(ecfg.dtype)
  x = take_rows(p.embed, tokens_BxE, dtype)
  if ecfg.embed_scale:
    x = x * jnp.asarray(ecfg.d_model**0.5, dtype)
  hidden = []
  for i, lp in enumerate(p.layers):
    x, _, _ = _layer(
      x, lp, ecfg, attend, positions, inv_freq, masks[ecfg.windows[i]], None
    )
    if return_hidden:
      hidden.append(x)
  x = rms_norm(x, p.final_norm, ecfg)
  return x, (tuple(hidden) if return_hidden else None)


def cross_kv(params: EncDecParams, enc_BxExD: jax.Array, cfg: EncDecConfig):
  """Every decoder layer's cross-attention keys and values, computed once.

  Returns:
    (keys, values): tuples of decoder.n_layers arrays in the cache layouts
    (`jaxllm.cache.K_LAYOUT` [B, Kv_x, K, E], `V_LAYOUT` [B, Kv_x, E, K]), in
    decoder.dtype.
  """
  dtype = jnp.dtype(cfg.decoder.dtype)
  ks, vs = [], []
  for cp in params.cross:
    k = dense("bed,dhk->behk", enc_BxExD, cp.wk).astype(dtype)
    v = dense("bed,dhk->behk", enc_BxExD, cp.wv).astype(dtype)
    ks.append(layout_keys(k))
    vs.append(layout_values(v))
  return tuple(ks), tuple(vs)


def _cross_block(x, cp: CrossParams, cfg: ModelConfig, attend, keys, vals, mask):
  """x [B, T, D_dec] + post_norm(cross_attention(norm(x))); mask [B, T, E]."""
  h = rms_norm(x, cp.norm, cfg)
  q = dense("btd,dhk->bthk", h, cp.wq)
  o = attend(q, keys, vals, mask, cfg)
  o = dense("bthk,hkd->btd", o, cp.wo)
  if cp.post_norm is not None:
    o = rms_norm(o, cp.post_norm, cfg)
  return x + o


def _decoder_layer(x, lp, cp, cfg: ModelConfig, attend, rope, self_mask, kv, cross):
  """One decoder layer: causal self-attention, cross-attention, FFN.

  rope: (positions_BxT, inv_freq); kv: None or (cache keys, cache values,
  lengths_B) as in `jaxllm.model._layer`; cross: (keys, values, mask_BxTxE).
  Returns (x, self keys, self values).
  """
  positions_BxT, inv_freq = rope
  h = rms_norm(x, lp.attn_norm, cfg)
  q, k, v = _qkv(h, lp)
  q = apply_rope(q, positions_BxT, inv_freq)
  k = apply_rope(k, positions_BxT, inv_freq)
  if kv is None:
    keys, vals = layout_keys(k), layout_values(v)
  else:
    cache_k, cache_v, lengths = kv
    keys = write_new(cache_k, k, lengths, keys=True)
    vals = write_new(cache_v, v, lengths)
  o = dense("bthk,hkd->btd", attend(q, keys, vals, self_mask, cfg), lp.wo)
  if lp.post_attn_norm is not None:
    o = rms_norm(o, lp.post_attn_norm, cfg)
  x = _cross_block(x + o, cp, cfg, attend, *cross)
  h = rms_norm(x, lp.mlp_norm, cfg)
  m = _mlp(h, lp, cfg)
  if lp.post_mlp_norm is not None:
    m = rms_norm(m, lp.post_mlp_norm, cfg)
  return x + m, keys, vals


def decode(
  params: EncDecParams,
  tokens_BxT: jax.Array,
  cfg: EncDecConfig,
  cross_k: tuple,
  cross_v: tuple,
  enc_lengths_B: jax.Array,
  *,
  cache: KVCache | None = None,
  positions_BxT: jax.Array | None = None,
  attn_mask_BxTxT: jax.Array | None = None,
  n_valid_B: jax.Array | None = None,
  logits_at: str = "all",
  return_hidden: bool = False,
):
  """Run the decoder on T new tokens per row, attending to the encoder output.

  The self-attention arguments (cache, positions_BxT, attn_mask_BxTxT,
  n_valid_B, logits_at, return_hidden) mean exactly what they mean for
  `jaxllm.model.forward` (decoder positions start at 0).

  Args:
    cross_k / cross_v: `cross_kv`'s per-layer keys / values ([B, Kv_x, K, E] /
      [B, Kv_x, E, K]); enc_lengths_B: real encoder tokens per row (padding is
      masked in cross-attention).

  Returns:
    (logits float32 [B, T, V] / [B, V] / None, new self-attention cache or None,
    hidden states tuple or None).

  Raises:
    ValueError: for a non-2-D tokens_BxT or an unknown logits_at.
  Source: T5Gemma (Zhang et al. 2025, arXiv:2504.06225).
  """
  _check_tokens("tokens_BxT", tokens_BxT)
  dcfg, p = cfg.decoder, params.decoder
  B, T = tokens_BxT.shape
  n_valid_B, lengths, positions_BxT, masks = step_inputs(
    dcfg, tokens_BxT, cache, positions_BxT, attn_mask_BxTxT, n_valid_B
  )
  E = cross_v[0].shape[-2]
  x_mask = jnp.broadcast_to(_valid_keys(enc_lengths_B, E)[:, None, :], (B, T, E))
  rope = (positions_BxT, rope_inv_freq(dcfg))
  attend = get_attention(dcfg.attention_impl)
  dtype = jnp.dtype(dcfg.dtype)
  x = take_rows(p.embed, tokens_BxT, dtype)
  if dcfg.embed_scale:
    x = x * jnp.asarray(dcfg.d_model**0.5, dtype)
  hidden, new_k, new_v = [], [], []
  for i in range(dcfg.n_layers):
    kv = None if cache is None else (cache.k[i], cache.v[i], lengths)
    cross = (cross_k[i], cross_v[i], x_mask)
    mask = masks[dcfg.windows[i]]
    x, keys, vals = _decoder_layer(
      x, p.layers[i], params.cross[i], dcfg, attend, rope, mask, kv, cross
    )
    new_k.append(keys)
    new_v.append(vals)
    if return_hidden:
      hidden.append(x)
  new_cache = None
  if cache is not None:
    ids = range(dcfg.n_layers)
    new_cache = _updated_cache(cache, ids, new_k, new_v, lengths + n_valid_B)
  logits = _logits_at(p, x, dcfg, logits_at, n_valid_B)
  return logits, new_cache, (tuple(hidden) if return_hidden else None)


def forward(
  params: EncDecParams,
  enc_tokens_BxE: jax.Array,
  dec_tokens_BxT: jax.Array,
  cfg: EncDecConfig,
  *,
  enc_lengths_B: jax.Array | None = None,
  logits_at: str = "all",
  return_hidden: bool = False,
):
  """Teacher-forced encoder-decoder pass (training / scoring, no cache).

  Args:
    enc_tokens_BxE: the inputs, right-padded past enc_lengths_B (default E).
    dec_tokens_BxT: the decoder inputs (decoder_start_id followed by the target
      shifted right, as in T5Gemma); causal, so right padding needs no mask.
    logits_at / return_hidden: as in `decode`.

  Returns:
    (logits float32 [B, T, V] (or [B, V] / None), decoder hidden states tuple
    or None).

  Raises:
    ValueError: for token arrays that are not 2-D or whose row counts differ.
  Source: T5Gemma (Zhang et al. 2025, arXiv:2504.06225).
  """
  _check_tokens("enc_tokens_BxE", enc_tokens_BxE)
  _check_tokens("dec_tokens_BxT", dec_tokens_BxT)
  if enc_tokens_BxE.shape[0] != dec_tokens_BxT.shape[0]:
    raise ValueError(
      f"enc_tokens_BxE has {enc_tokens_BxE.shape[0]} rows, dec_tokens_BxT "
      f"{dec_tokens_BxT.shape[0]}"
    )
  B, E = enc_tokens_BxE.shape
  if enc_lengths_B is None:
    enc_lengths_B = jnp.full((B,), E, jnp.int32)
  enc_lengths_B = jnp.asarray(enc_lengths_B, jnp.int32)
  enc, _ = encode(params, enc_tokens_BxE, cfg, enc_lengths_B)
  ks, vs = cross_kv(params, enc, cfg)
  logits, _, hidden = decode(
    params,
    dec_tokens_BxT,
    cfg,
    ks,
    vs,
    enc_lengths_B,
    logits_at=logits_at,
    return_hidden=return_hidden,
  )
  return logits, hidden


# ----------------------------------------------------------------------------------
# Building an encoder-decoder from decoder-only checkpoints (for adaptation)
# ----------------------------------------------------------------------------------

CROSS_INITS = ("self_attention", "random", "zero_output")


def _cross_from_self(cfg: EncDecConfig, lp) -> CrossParams:
  return CrossParams(
    norm=lp.attn_norm,
    wq=lp.wq,
    wk=lp.wk,
    wv=lp.wv,
    wo=lp.wo,
    post_norm=lp.post_attn_norm if cfg.decoder.post_norms else None,
  )


def encdec_from_decoders(
  cfg: EncDecConfig,
  enc_params: Params,
  dec_params: Params,
  cross_init: str = "self_attention",
  key: jax.Array | None = None,
) -> EncDecParams:
  """EncDecParams from two decoder-only checkpoints (T5Gemma adaptation).

  The encoder is `enc_params` (its lm_head dropped; attention becomes
  bidirectional by construction of `encode`); the decoder is `dec_params`
  unchanged; cross-attention is initialised by `cross_init`:
    "self_attention"  copy each decoder layer's self-attention (q/k/v/o, pre
                      and post norm): the balanced recipe. Needs
                      encoder.d_model == decoder.d_model and cross_n_kv_heads
                      == decoder.n_kv_heads.
    "random"          fresh draws from `cross_specs` (the unbalanced recipe;
                      needs `key`).
    "zero_output"     like "random" but wo = 0: cross-attention adds nothing,
                      so the decoder computes exactly the parent decoder-only
                      forward pass on its tokens (tested).

  Args:
    cfg: the EncDecConfig; cfg.encoder / cfg.decoder must describe enc_params /
      dec_params (their shapes are checked).
    enc_params / dec_params: jaxllm.params.Params.
    cross_init: one of CROSS_INITS. key: PRNG key for "random" / "zero_output".

  Returns:
    EncDecParams (arrays shared with the inputs, not copied).

  Raises:
    ValueError: naming the argument: shapes that do not match cfg, an unknown
      cross_init, a missing key, or a "self_attention" copy whose shapes
      cannot match (encoder and decoder widths or KV heads differ).
  Source: T5Gemma (Zhang et al. 2025, arXiv:2504.06225), section 3.
  """
  if cross_init not in CROSS_INITS:
    raise ValueError(f"cross_init must be one of {CROSS_INITS}, got {cross_init!r}")
  enc_cfg = cfg.encoder
  enc_params = dataclasses.replace(enc_params, lm_head=None)
  for name, c, p in (
    ("enc_params", enc_cfg, enc_params),
    ("dec_params", cfg.decoder, dec_params),
  ):
    try:
      check_params(c, p)
    except ValueError as e:
      raise ValueError(f"{name}: {e}") from None
  if cross_init == "self_attention":
    if enc_cfg.d_model != cfg.decoder.d_model or (
      cfg.cross_n_kv_heads != cfg.decoder.n_kv_heads
    ):
      raise ValueError(
        "cross_init='self_attention' copies the decoder's self-attention, which "
        f"needs encoder.d_model ({enc_cfg.d_model}) == decoder.d_model "
        f"({cfg.decoder.d_model}) and cross_n_kv_heads ({cfg.cross_n_kv_heads}) "
        f"== decoder.n_kv_heads ({cfg.decoder.n_kv_heads}); use 'random'"
      )
    cross = tuple(_cross_from_self(cfg, lp) for lp in dec_params.layers)
  else:
    if key is None:
      raise ValueError(f"key is required for cross_init={cross_init!r}")
    specs = tuple(cross_specs(cfg) for _ in range(cfg.decoder.n_layers))
    cross = jax.jit(lambda k: init_from_specs(specs, k, cfg.decoder.param_dtype))(key)
    if cross_init == "zero_output":
      cross = tuple(dataclasses.replace(c, wo=jnp.zeros_like(c.wo)) for c in cross)
  return EncDecParams(encoder=enc_params, decoder=dec_params, cross=tuple(cross))
