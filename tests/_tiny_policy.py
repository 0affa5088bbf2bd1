"""A random tiny arith policy saved the way experiments/train_policy.py saves one
(the sweeps' machinery does not care that it is untrained)."""

import json
import os

import jax

from experiments.tasks import arith
from jaxllm import checkpoint
from jaxllm.config import ModelConfig
from jaxllm.params import init_params


def save_tiny_policy(root: str):
  """Writes <root>/policy; returns (policy_dir, cfg)."""
  cfg = ModelConfig(
    vocab_size=arith.TOKENIZER.vocab_size,
    d_model=32,
    n_layers=1,
    n_heads=2,
    n_kv_heads=2,
    d_ff=64,
    max_seq_len=128,
  )
  pol = os.path.join(root, "policy")
  os.makedirs(pol)
  checkpoint.save_params(
    os.path.join(pol, "policy"), init_params(cfg, jax.random.key(0))
  )
  checkpoint.save_model_config(os.path.join(pol, checkpoint.MODEL_CONFIG_FILE), cfg)
  with open(os.path.join(pol, "config.json"), "w") as f:
    json.dump(
      dict(seed=0, task=dict(n_steps=[2, 3], n_digits=1, mul_digits=1, ops="+-*")), f
    )
  return pol, cfg
