"""FLOPs and bytes accounting from the config (per token, per phase).

Convention (Kaplan et al. / Chinchilla style, counting a multiply-add as 2):
  matmul FLOPs per token = 2 * (non-embedding params + LM-head params)
  attention FLOPs per token = 4 * n_layers * (n_heads * head_dim) * context
where context is the number of keys the token attends to (capped by the
sliding window on local layers). The LM head is counted even when tied (the
product is computed either way); the embedding lookup is free.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxllm.config import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
  """Parameters touched by matmuls per token: layers + LM head."""
  c = cfg.param_counts()
  return c["layers"] + cfg.vocab_size * cfg.d_model


def _attended(cfg: ModelConfig, context):
  """Sum over layers of attended keys for a token with `context` keys."""
  context = np.asarray(context, np.float64)
  return sum(np.minimum(context, w) if w else context for w in cfg.windows)


def decode_flops(cfg: ModelConfig, context) -> np.ndarray:
  """FLOPs to process one token that attends to `context` keys (itself incl.)."""
  attn = 4 * cfg.n_heads * cfg.head_dim * _attended(cfg, context)
  return 2.0 * matmul_params(cfg) + attn


def prefill_flops(cfg: ModelConfig, prompt_len) -> np.ndarray:
  """FLOPs to prefill a prompt of `prompt_len` tokens (causal, exact sum)."""
  prompt_len = np.asarray(prompt_len, np.int64)
  out = np.zeros(prompt_len.shape, np.float64)
  for idx in np.ndindex(prompt_len.shape):
    n = int(prompt_len[idx])
    out[idx] = decode_flops(cfg, np.arange(1, n + 1)).sum() if n else 0.0
  return out


def generate_flops(cfg: ModelConfig, prompt_len, new_tokens) -> np.ndarray:
  """Prefill + decode FLOPs for `new_tokens` tokens after a prompt."""
  prompt_len = np.asarray(prompt_len, np.int64)
  new_tokens = np.asarray(new_tokens, np.int64)
  total = prefill_flops(cfg, prompt_len)
  out = np.zeros(np.broadcast(prompt_len, new_tokens).shape, np.float64)
  for idx in np.ndindex(out.shape):
    p = int(np.broadcast_to(prompt_len, out.shape)[idx])
    n = int(np.broadcast_to(new_tokens, out.shape)[idx])
    out[idx] = decode_flops(cfg, np.arange(p + 1, p + n + 1)).sum() if n else 0.
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
  """What a method spent. Add records with `+`."""

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
    return self.prefill_flops + self.decode_flops + self.verifier_flops

  def __add__(self, other: "Compute") -> "Compute":
    return Compute(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                      for f in dataclasses.fields(self)})

  def as_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["flops"] = self.flops
    return d
