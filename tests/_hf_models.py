"""Tiny random Hugging Face models built locally (no download), for parity tests.

Each case is (family, config kwargs) for transformers' LlamaConfig /
MistralConfig / Qwen2Config / Gemma2Config. `build_hf_model` re-draws every parameter with a
larger scale than HF's init (std 0.02 gives near-uniform logits, where greedy
decoding would hinge on 1e-7 ties) and random norm weights, so each tensor's
mapping matters.
"""

from __future__ import annotations

import numpy as np
import torch
import transformers

torch.set_num_threads(1)

_COMMON = dict(
  vocab_size=128,
  hidden_size=64,
  intermediate_size=96,
  bos_token_id=None,
  eos_token_id=None,
  pad_token_id=None,
)

CASES = {
  # GQA (4 q heads / 2 kv), head_dim != d_model / n_heads, untied head.
  "llama_gqa_untied": (
    "llama",
    dict(
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      head_dim=24,
      tie_word_embeddings=False,
    ),
  ),
  # MQA, tied head (SmolLM style), Llama-3 RoPE scaling with all three
  # frequency bands present (wavelengths 6.3 < 16 < 32 < 64 < 165 ...).
  "llama3_rope_mqa_tied": (
    "llama",
    dict(
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=1,
      tie_word_embeddings=True,
      rope_parameters=dict(
        rope_type="llama3",
        rope_theta=500000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=64,
      ),
    ),
  ),
  # QKV bias; sliding_window set but use_sliding_window=False: must be global.
  "qwen2_bias_nowindow": (
    "qwen2",
    dict(
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      tie_word_embeddings=False,
      use_sliding_window=False,
      sliding_window=5,
      max_window_layers=0,
      rope_parameters=dict(rope_type="default", rope_theta=1000.0),
    ),
  ),
  # MQA + sliding window on layers >= max_window_layers, tied head.
  "qwen2_window_mqa_tied": (
    "qwen2",
    dict(
      num_hidden_layers=3,
      num_attention_heads=4,
      num_key_value_heads=1,
      tie_word_embeddings=True,
      use_sliding_window=True,
      sliding_window=5,
      max_window_layers=1,
    ),
  ),
  # Default local/global alternation, small soft-caps so tanh bites,
  # query_pre_attn_scalar != head_dim, head_dim != d_model / n_heads.
  "gemma2_softcap_window": (
    "gemma2",
    dict(
      num_hidden_layers=3,
      num_attention_heads=4,
      num_key_value_heads=2,
      head_dim=24,
      query_pre_attn_scalar=20,
      sliding_window=5,
      attn_logit_softcapping=5.0,
      final_logit_softcapping=3.0,
    ),
  ),
  # MQA, untied, no soft-caps, explicit non-default layer_types pattern.
  "gemma2_mqa_untied_layertypes": (
    "gemma2",
    dict(
      num_hidden_layers=4,
      num_attention_heads=4,
      num_key_value_heads=1,
      head_dim=16,
      query_pre_attn_scalar=16,
      sliding_window=7,
      tie_word_embeddings=False,
      attn_logit_softcapping=None,
      final_logit_softcapping=None,
      layer_types=[
        "full_attention",
        "sliding_attention",
        "sliding_attention",
        "full_attention",
      ],
    ),
  ),
  # Mistral: Llama tensors, GQA, untied, one sliding window (5, shorter than
  # the test sequences) on every layer.
  "mistral_window_gqa": (
    "mistral",
    dict(
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      tie_word_embeddings=False,
      sliding_window=5,
      rope_parameters=dict(rope_type="default", rope_theta=10000.0),
    ),
  ),
}

_CONFIG_CLASSES = {
  "llama": transformers.LlamaConfig,
  "mistral": transformers.MistralConfig,
  "qwen2": transformers.Qwen2Config,
  "gemma2": transformers.Gemma2Config,
}


def hf_config(case: str):
  family, kw = CASES[case]
  return _CONFIG_CLASSES[family](**{**_COMMON, **kw})


@torch.no_grad()
def randomize_(model, seed: int) -> None:
  """Redraw every parameter: N(0, 1/fan_in) matrices, 0.5-std head, random
  biases and norms (around 1, or around 0 for Gemma's (1 + w)).

  Embeddings: N(0, 1) when untied. A tied head scores token v by e_v . h and
  h still contains the input embedding e_t, so big embeddings make the model
  echo its last token forever (a useless greedy test); tied models get small
  embeddings (smaller still for Gemma, which multiplies them by sqrt(d)) and a
  larger Gemma final norm to keep the logits spread out.
  """
  gen = torch.Generator().manual_seed(seed)
  gemma = model.config.model_type == "gemma2"
  tied = model.config.tie_word_embeddings
  for name, p in model.named_parameters():
    r = torch.randn(p.shape, generator=gen, dtype=torch.float32)
    if name == "model.norm.weight" and gemma and tied:
      val = 0.2 * r + 3.0
    elif name.endswith("norm.weight"):
      val = 0.2 * r + (0.0 if gemma else 1.0)
    elif name.endswith(".bias"):
      val = 0.2 * r
    elif "embed_tokens" in name:
      val = r * ((0.02 if gemma else 0.1) if tied else 1.0)
    elif name == "lm_head.weight":
      val = 0.5 * r
    else:
      val = r / np.sqrt(p.shape[1])
    p.copy_(val.to(p.dtype))


def build_hf_model(case: str, seed: int = 0):
  model = transformers.AutoModelForCausalLM.from_config(
    hf_config(case), attn_implementation="eager", dtype=torch.float32
  )
  randomize_(model, seed)
  model.eval()
  return model


def load_hf_model(path: str):
  model = transformers.AutoModelForCausalLM.from_pretrained(
    path, attn_implementation="eager", dtype=torch.float32
  )
  model.eval()
  return model


@torch.no_grad()
def hf_logits(model, tokens_BxT: np.ndarray) -> np.ndarray:
  out = model(input_ids=torch.as_tensor(np.asarray(tokens_BxT), dtype=torch.long))
  return out.logits.float().numpy()


@torch.no_grad()
def hf_greedy(model, prompt_BxP: np.ndarray, n_new: int) -> np.ndarray:
  """model.generate(do_sample=False); no EOS, so exactly n_new tokens."""
  ids = torch.as_tensor(np.asarray(prompt_BxP), dtype=torch.long)
  out = model.generate(
    input_ids=ids,
    attention_mask=torch.ones_like(ids),
    max_new_tokens=n_new,
    do_sample=False,
    eos_token_id=None,
    pad_token_id=0,
  )
  return out[:, ids.shape[1] :].numpy()


# ---------------------------------------------------------------------------------
# T5Gemma (encoder-decoder) cases, for tests/test_t5gemma_parity.py
# ---------------------------------------------------------------------------------

_T5G_MODULE = dict(
  vocab_size=128,
  hidden_size=64,
  intermediate_size=96,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  head_dim=16,
  query_pre_attn_scalar=24,
  attn_logit_softcapping=50.0,
  final_logit_softcapping=30.0,
  sliding_window=4,
  bos_token_id=2,
  pad_token_id=0,
  eos_token_id=1,
)

T5GEMMA_CASES = {
  # GQA, both soft-caps, local/global layers with windows (4) shorter than the
  # sequences (encoder and decoder), tied head.
  "balanced_gqa_window": (dict(), dict(), True),
  # Unbalanced: wider, deeper encoder with MQA and 3 local layers of window 3;
  # narrower decoder, no soft-caps, untied head, all-global decoder layers.
  "unbalanced": (
    dict(
      hidden_size=96,
      intermediate_size=128,
      num_hidden_layers=3,
      num_attention_heads=2,
      num_key_value_heads=1,
      head_dim=32,
      sliding_window=3,
      layer_types=["sliding_attention"] * 3,
    ),
    dict(
      hidden_size=48,
      num_hidden_layers=1,
      num_attention_heads=4,
      num_key_value_heads=4,
      head_dim=12,
      query_pre_attn_scalar=12,
      attn_logit_softcapping=None,
      final_logit_softcapping=None,
      layer_types=["full_attention"],
    ),
    False,
  ),
}


def t5gemma_config(case: str):
  enc_kw, dec_kw, tied = T5GEMMA_CASES[case]
  enc = transformers.T5GemmaModuleConfig(**{**_T5G_MODULE, **enc_kw})
  dec = transformers.T5GemmaModuleConfig(**{**_T5G_MODULE, **dec_kw})
  return transformers.T5GemmaConfig(
    encoder=enc, decoder=dec, vocab_size=128, tie_word_embeddings=tied
  )


@torch.no_grad()
def randomize_t5gemma_(model, seed: int) -> None:
  """Redraw every parameter: N(0, 1/fan_in) matrices, (1 + w) norms with w ~
  0.2 N(0, 1) (decoder final norm around 3, to spread the logits), small
  embeddings (they are scaled by sqrt(d)), a 0.5-std untied head."""
  gen = torch.Generator().manual_seed(seed)
  for name, p in model.named_parameters():
    r = torch.randn(p.shape, generator=gen, dtype=torch.float32)
    if name == "model.decoder.norm.weight":
      val = 0.2 * r + 3.0
    elif name.endswith("norm.weight"):
      val = 0.2 * r
    elif "embed_tokens" in name:
      val = 0.05 * r
    elif name == "lm_head.out_proj.weight":
      val = 0.5 * r
    else:
      val = r / np.sqrt(p.shape[1])
    p.copy_(val.to(p.dtype))


def build_t5gemma(case: str, seed: int = 0):
  model = transformers.T5GemmaForConditionalGeneration(t5gemma_config(case))
  model = model.to(torch.float32)
  model.config._attn_implementation = "eager"
  for sub in (model.config.encoder, model.config.decoder):
    sub._attn_implementation = "eager"
  randomize_t5gemma_(model, seed)
  model.eval()
  return model


@torch.no_grad()
def t5gemma_logits(model, enc_BxE, enc_lengths_B, dec_BxT) -> np.ndarray:
  """Teacher-forced logits [B, T, V]; encoder padding masked from lengths, the
  decoder mask all ones (so a decoder token equal to pad_id stays visible)."""
  enc = torch.as_tensor(np.asarray(enc_BxE), dtype=torch.long)
  dec = torch.as_tensor(np.asarray(dec_BxT), dtype=torch.long)
  mask = (
    torch.arange(enc.shape[1])[None]
    < torch.as_tensor(np.asarray(enc_lengths_B))[:, None]
  )
  out = model(
    input_ids=enc,
    attention_mask=mask.long(),
    decoder_input_ids=dec,
    decoder_attention_mask=torch.ones_like(dec),
    use_cache=False,
  )
  return out.logits.float().numpy()
