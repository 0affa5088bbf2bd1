"""jaxllm: a functional JAX transformer core for decoding research."""

from jaxllm.cache import KVCache, init_cache, reorder
from jaxllm.config import ModelConfig, RopeScaling, llama_like, smollm2_135m
from jaxllm.decoding import BigramLM, Transformer, prefill_and_fork
from jaxllm.flops import Compute
from jaxllm.generate import GenerateOutput, bucket_length, generate, pad_prompts
from jaxllm.model import ATTENTION_IMPLS, forward, lm_head
from jaxllm.params import Params, LayerParams, abstract_params, init_params
from jaxllm.sampling import Sampling, make_sampling, sample

__all__ = [
  "KVCache",
  "init_cache",
  "reorder",
  "ModelConfig",
  "RopeScaling",
  "llama_like",
  "smollm2_135m",
  "BigramLM",
  "Transformer",
  "prefill_and_fork",
  "Compute",
  "GenerateOutput",
  "bucket_length",
  "generate",
  "pad_prompts",
  "ATTENTION_IMPLS",
  "forward",
  "lm_head",
  "Params",
  "LayerParams",
  "abstract_params",
  "init_params",
  "Sampling",
  "make_sampling",
  "sample",
]
