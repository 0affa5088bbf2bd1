"""The small random-transformer configs several test files share."""

from jaxllm.config import ModelConfig


def one_layer_config(**overrides) -> ModelConfig:
  """1 layer, d_model 16, 2 query / 1 KV heads, V = 11 (searches, training)."""
  fields = {
    "vocab_size": 11,
    "d_model": 16,
    "n_layers": 1,
    "n_heads": 2,
    "n_kv_heads": 1,
    "d_ff": 32,
    "max_seq_len": 64,
  }
  return ModelConfig(**{**fields, **overrides})


def three_layer_config(vocab_size: int, **overrides) -> ModelConfig:
  """3 layers, d_model 32, 4 query / 2 KV heads (speculative targets, drafts)."""
  fields = {
    "d_model": 32,
    "n_layers": 3,
    "n_heads": 4,
    "n_kv_heads": 2,
    "d_ff": 64,
    "max_seq_len": 64,
  }
  return ModelConfig(vocab_size=vocab_size, **{**fields, **overrides})
