"""FLOPs and bytes accounting from the config (per token, per phase), and the
one record of what a method spent (`Compute`).

Convention (Kaplan et al. / Chinchilla style, counting a multiply-add as 2):
  matmul FLOPs per token = 2 * (non-embedding params + LM-head params)
  attention FLOPs per token = 4 * n_layers * (n_heads * head_dim) * context
where context is the number of keys the token attends to (capped by the
sliding window on local layers). The LM head is counted even when tied (the
product is computed either way); the embedding lookup is free.

Encoder-decoder models (an `EncDecConfig`, `jaxllm.encdec`; T5Gemma, Zhang et
al. 2025, arXiv:2504.06225), with n encoder (prompt) tokens, decoder heads
H x head_dim K, L_dec decoder layers and Kv_x cross-attention KV heads:
  encoder, per prompt token i  2 * encoder layer params
                               + 4 * H_enc * K_enc * sum over encoder layers of
                                 the keys it attends to (all n, or those with
                                 |i - j| < w on a local layer); no LM head
  cross K/V, per prompt token  2 * L_dec * 2 * D_enc * Kv_x * K (computed once)
  decoder, per decoder token   2 * (decoder layer params + L_dec * 2 * D_dec * H
                               * K (cross q and o) + LM head)
                               + 4 * H * K * (sum over decoder layers of its self
                                 keys, window-capped, + L_dec * n cross keys)
  prefill(n) = encoder + cross K/V + the decoder start token (1 self key).
The algorithms count a decode token by ONE context, the decode interface's
`lengths` + 1 = n + decoder keys (`jaxllm.encdec_decoding`): `decode_flops` on an
EncDecConfig charges every decoder layer that whole context (self + cross), exact
when the decoder has no sliding window and an upper bound otherwise;
`encdec_token_flops(cfg, n, self_context)` is the exact split.

Which models are counted: one with a `cfg` (a ModelConfig or an EncDecConfig,
possibly on a wrapped `.model`) is counted from it; one that declares `flops_free = True`
(the BigramLM toy) costs 0 FLOPs on purpose; any other model is an error
(`flops_config`), never a silent 0. Every function here that takes a config
raises if it is not a ModelConfig.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from jaxllm.config import ModelConfig
from jaxllm.encdec import EncDecConfig


def _check_cfg(cfg) -> ModelConfig:
  if not isinstance(cfg, ModelConfig):
    raise ValueError(
      f"FLOPs are counted from a jaxllm ModelConfig, got "
      f"{type(cfg).__name__}; a model without one must declare "
      f"`flops_free = True` (see jaxllm.flops.flops_config)"
    )
  return cfg


def _model_chain(obj, depth: int = 4):
  """obj, obj.model, obj.model.model, ... (wrappers of a model)."""
  for _ in range(depth):
    if obj is None:
      return
    yield obj
    obj = getattr(obj, "model", None)


def model_config(obj) -> Optional[ModelConfig]:
  """The ModelConfig or EncDecConfig (`cfg`) of a model or of the model it wraps
  (`.model`), else None."""
  for m in _model_chain(obj):
    cfg = getattr(m, "cfg", None)
    if isinstance(cfg, (ModelConfig, EncDecConfig)):
      return cfg
  return None


def is_flops_free(obj) -> bool:
  """True for a model (or a wrapper of one) that declares `flops_free = True`
  (e.g. jaxllm.decoding.BigramLM): it costs no FLOPs by construction."""
  return any(getattr(m, "flops_free", False) is True for m in _model_chain(obj))


def flops_config(obj, what: str = "model") -> Optional[ModelConfig]:
  """The ModelConfig to count `obj`'s FLOPs from; None for a declared-free one.

  Raises:
    ValueError: naming `what`, when `obj` has no ModelConfig (`cfg`, possibly
      through `.model`) and does not declare `flops_free = True`.
  """
  cfg = model_config(obj)
  if cfg is not None or is_flops_free(obj):
    return cfg
  raise ValueError(
    f"{what} {type(obj).__name__} has no `cfg` (jaxllm ModelConfig) to count "
    f"FLOPs from: give it one, declare a toy model free with "
    f"`flops_free = True`, or do not count FLOPs"
  )


def matmul_params(cfg: ModelConfig) -> int:
  """Parameters touched by matmuls per token: layers + LM head."""
  c = _check_cfg(cfg).param_counts()
  return c["layers"] + cfg.vocab_size * cfg.d_model


def _attended(cfg: ModelConfig, context):
  """Sum over layers of attended keys for a token with `context` keys."""
  context = np.asarray(context, np.float64)
  _check_cfg(cfg)
  return sum(np.minimum(context, w) if w else context for w in cfg.windows)


def decode_flops(cfg: ModelConfig, context) -> np.ndarray:
  """FLOPs to process one token that attends to `context` keys (itself
  incl.); elementwise over an array of contexts.

  On an EncDecConfig, `context` is encoder tokens + decoder keys (the
  interface's lengths + 1) and every decoder layer is charged all of it (see the
  module docstring).

  Raises:
    ValueError: if cfg is not a ModelConfig or EncDecConfig (as every function
      here).
  """
  if isinstance(cfg, EncDecConfig):
    return _encdec_decode_flops(cfg, context)
  _check_cfg(cfg)
  attn = 4 * cfg.n_heads * cfg.head_dim * _attended(cfg, context)
  return 2.0 * matmul_params(cfg) + attn


def prefill_flops(cfg: ModelConfig, prompt_len) -> np.ndarray:
  """FLOPs to prefill a prompt of `prompt_len` tokens (causal, exact sum);
  elementwise over an array of lengths. On an EncDecConfig: the encoder, the
  cross-attention K/V and the decoder start token (`encdec_prefill_flops`)."""
  if isinstance(cfg, EncDecConfig):
    return encdec_prefill_flops(cfg, prompt_len)
  _check_cfg(cfg)
  prompt_len = np.asarray(prompt_len, np.int64)
  out = np.zeros(prompt_len.shape, np.float64)
  for idx in np.ndindex(prompt_len.shape):
    n = int(prompt_len[idx])
    out[idx] = decode_flops(cfg, np.arange(1, n + 1)).sum() if n else 0.0
  return out


def generate_flops(cfg: ModelConfig, prompt_len, new_tokens) -> np.ndarray:
  """Prefill + decode FLOPs for `new_tokens` tokens after a prompt. On an
  EncDecConfig the decoder holds the start token too, so decode token i reads
  prompt_len + 1 + i keys."""
  encdec = isinstance(cfg, EncDecConfig)
  if not encdec:
    _check_cfg(cfg)
  prompt_len = np.asarray(prompt_len, np.int64)
  new_tokens = np.asarray(new_tokens, np.int64)
  total = prefill_flops(cfg, prompt_len)
  if encdec:  # the decoder start token sits before the new tokens
    prompt_len = prompt_len + 1
  out = np.zeros(np.broadcast(prompt_len, new_tokens).shape, np.float64)
  for idx in np.ndindex(out.shape):
    p = int(np.broadcast_to(prompt_len, out.shape)[idx])
    n = int(np.broadcast_to(new_tokens, out.shape)[idx])
    out[idx] = decode_flops(cfg, np.arange(p + 1, p + n + 1)).sum() if n else 0.0
  return out + total


# ---- encoder-decoder (T5Gemma-style) ----


def _cross_qo_params(cfg: EncDecConfig) -> int:
  d = cfg.decoder
  return 2 * d.d_model * d.n_heads * d.head_dim * d.n_layers


def encoder_flops(cfg: EncDecConfig, prompt_len) -> np.ndarray:
  """Encoder FLOPs for prompts of `prompt_len` tokens (bidirectional, window
  |i - j| < w on local layers, exact sum), plus the once-computed cross-attention
  K/V; elementwise over an array of lengths. Source: T5Gemma (arXiv:2504.06225).
  """
  e, d = cfg.encoder, cfg.decoder
  prompt_len = np.asarray(prompt_len, np.int64)
  out = np.zeros(prompt_len.shape, np.float64)
  per_tok = 2.0 * e.param_counts()["layers"]
  per_tok += 2.0 * 2 * e.d_model * cfg.cross_n_kv_heads * d.head_dim * d.n_layers
  for idx in np.ndindex(prompt_len.shape):
    n = int(prompt_len[idx])
    i = np.arange(n)
    keys = 0.0
    for w in e.windows:
      if w:
        keys += float(np.sum(np.minimum(i, w - 1) + np.minimum(n - 1 - i, w - 1) + 1))
      else:
        keys += float(n * n)
    out[idx] = n * per_tok + 4.0 * e.n_heads * e.head_dim * keys
  return out


def encdec_token_flops(cfg: EncDecConfig, enc_len, self_context) -> np.ndarray:
  """Exact FLOPs of one decoder token reading `self_context` decoder keys (itself
  included; window-capped per layer) and `enc_len` encoder keys in every
  cross-attention; elementwise (broadcast) over arrays."""
  d = cfg.decoder
  enc_len = np.asarray(enc_len, np.float64)
  self_keys = _attended(d, self_context)
  matmul = 2.0 * (matmul_params(d) + _cross_qo_params(cfg))
  return matmul + 4.0 * d.n_heads * d.head_dim * (self_keys + d.n_layers * enc_len)


def _encdec_decode_flops(cfg: EncDecConfig, context) -> np.ndarray:
  d = cfg.decoder
  context = np.asarray(context, np.float64)
  matmul = 2.0 * (matmul_params(d) + _cross_qo_params(cfg))
  return matmul + 4.0 * d.n_heads * d.head_dim * d.n_layers * context


def encdec_prefill_flops(cfg: EncDecConfig, prompt_len) -> np.ndarray:
  """Prefill of an encoder-decoder: `encoder_flops` + the decoder start token
  (1 self key, prompt_len cross keys); elementwise over an array of lengths."""
  prompt_len = np.asarray(prompt_len, np.int64)
  return encoder_flops(cfg, prompt_len) + encdec_token_flops(cfg, prompt_len, 1)


def weight_bytes_per_step(cfg: ModelConfig, bytes_per_param: int = 4) -> int:
  """Weights read by one decode step (the embedding table only if tied, since
  the LM head reads it; an untied table is only gathered a row at a time)."""
  return (matmul_params(cfg) + cfg.param_counts()["final_norm"]) * bytes_per_param


def kv_bytes_per_token(cfg: ModelConfig, context, bytes_per_el: int = 4):
  """KV-cache bytes one decode token reads (keys and values, all layers)."""
  return 2 * cfg.n_kv_heads * cfg.head_dim * _attended(cfg, context) * bytes_per_el


@dataclasses.dataclass
class Compute:
  """What a method spent; add records with `+` (or `sum(records)`).

  Convention: a Compute returned by an entry point (generation, particle
  filtering, beam search, A*, speculative decoding, ...) is the TOTAL over
  everything that call processed: every problem and every row of its batch.
  `per_problem(n)` turns such a total into the mean per problem (a new
  Compute; do not divide it again). A function that builds a per-problem
  record directly says so in its docstring.

  Units: *_tokens are token counts, *_calls are counts of batched forward
  calls (one call over a batch of rows counts once; a producer that counts
  differently, e.g. A*'s verifier_calls = steps scored, documents it), and
  *_flops are FLOPs by this module's formulas (a multiply-add counts 2).
  Counts are floats so that per-problem means stay exact.

  Fields:
    prefill_tokens: tokens the policy processed without sampling them
      (prompts, once per prompt even when forked; forced tokens).
    generated_tokens: tokens the policy sampled (kept or not).
    model_calls: policy forward calls (the prefill included).
    verifier_tokens: tokens a verifier / reward model processed.
    verifier_calls: verifier forward calls.
    prefill_flops / decode_flops: policy FLOPs for those tokens.
    verifier_flops: verifier FLOPs.
    executed_tokens: decode row-positions the policy RAN (every row of the
      batch at every model call after the prefill: rows that already
      stopped and padded positions included), beside the useful
      generated_tokens; 0 where a producer does not count it. Its ratio to
      generated_tokens is the padding a vectorised search pays.
  """

  prefill_tokens: float = 0.0
  generated_tokens: float = 0.0
  model_calls: float = 0.0
  verifier_tokens: float = 0.0
  verifier_calls: float = 0.0
  prefill_flops: float = 0.0
  decode_flops: float = 0.0
  verifier_flops: float = 0.0
  executed_tokens: float = 0.0

  @property
  def flops(self) -> float:
    """All FLOPs: prefill + decode + verifier."""
    return self.prefill_flops + self.decode_flops + self.verifier_flops

  def __add__(self, other: "Compute") -> "Compute":
    if not isinstance(other, Compute):
      return NotImplemented
    return Compute(
      **{
        f.name: getattr(self, f.name) + getattr(other, f.name)
        for f in dataclasses.fields(self)
      }
    )

  def __radd__(self, other) -> "Compute":
    if isinstance(other, (int, float)) and other == 0:  # sum() starts at 0
      return self
    return NotImplemented

  def per_problem(self, n_problems: int) -> "Compute":
    """The mean per problem of a total over `n_problems` problems: every
    field divided by n_problems.

    Raises:
      ValueError: unless n_problems is an int >= 1.
    """
    if (
      isinstance(n_problems, bool)
      or not isinstance(n_problems, (int, np.integer))
      or n_problems < 1
    ):
      raise ValueError(f"n_problems must be an integer >= 1, got {n_problems!r}")
    return Compute(
      **{
        f.name: getattr(self, f.name) / int(n_problems)
        for f in dataclasses.fields(self)
      }
    )

  def as_dict(self) -> dict:
    """The fields plus "flops" (their total), as a plain dict."""
    d = dataclasses.asdict(self)
    d["flops"] = self.flops
    return d
