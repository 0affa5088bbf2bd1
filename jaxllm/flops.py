"""FLOPs and bytes accounting from the config (per token, per phase), and the
one record of what a method spent (`Compute`).

Convention (Kaplan et al. / Chinchilla style, counting a multiply-add as 2):
  matmul FLOPs per token = 2 * (non-embedding params + LM-head params)
  attention FLOPs per token = 4 * n_layers * (n_heads * head_dim) * context
where context is the number of keys the token attends to (capped by the
sliding window on local layers). The LM head is counted even when tied (the
product is computed either way); the embedding lookup is free.

Which models are counted: one with a `cfg` (a ModelConfig, possibly on a
wrapped `.model`) is counted from it; one that declares `flops_free = True`
(the BigramLM toy) costs 0 FLOPs on purpose; any other model is an error
(`flops_config`), never a silent 0. Every function here that takes a config
raises if it is not a ModelConfig.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from jaxllm.config import ModelConfig


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
  """The ModelConfig (`cfg`) of a model or of the model it wraps (`.model`),
  else None."""
  for m in _model_chain(obj):
    cfg = getattr(m, "cfg", None)
    if isinstance(cfg, ModelConfig):
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

  Raises:
    ValueError: if cfg is not a ModelConfig (as every function here).
  """
  _check_cfg(cfg)
  attn = 4 * cfg.n_heads * cfg.head_dim * _attended(cfg, context)
  return 2.0 * matmul_params(cfg) + attn


def prefill_flops(cfg: ModelConfig, prompt_len) -> np.ndarray:
  """FLOPs to prefill a prompt of `prompt_len` tokens (causal, exact sum);
  elementwise over an array of lengths."""
  _check_cfg(cfg)
  prompt_len = np.asarray(prompt_len, np.int64)
  out = np.zeros(prompt_len.shape, np.float64)
  for idx in np.ndindex(prompt_len.shape):
    n = int(prompt_len[idx])
    out[idx] = decode_flops(cfg, np.arange(1, n + 1)).sum() if n else 0.0
  return out


def generate_flops(cfg: ModelConfig, prompt_len, new_tokens) -> np.ndarray:
  """Prefill + decode FLOPs for `new_tokens` tokens after a prompt."""
  _check_cfg(cfg)
  prompt_len = np.asarray(prompt_len, np.int64)
  new_tokens = np.asarray(new_tokens, np.int64)
  total = prefill_flops(cfg, prompt_len)
  out = np.zeros(np.broadcast(prompt_len, new_tokens).shape, np.float64)
  for idx in np.ndindex(out.shape):
    p = int(np.broadcast_to(prompt_len, out.shape)[idx])
    n = int(np.broadcast_to(new_tokens, out.shape)[idx])
    out[idx] = decode_flops(cfg, np.arange(p + 1, p + n + 1)).sum() if n else 0.0
  return out + total


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
  """

  prefill_tokens: float = 0.0
  generated_tokens: float = 0.0
  model_calls: float = 0.0
  verifier_tokens: float = 0.0
  verifier_calls: float = 0.0
  prefill_flops: float = 0.0
  decode_flops: float = 0.0
  verifier_flops: float = 0.0

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
