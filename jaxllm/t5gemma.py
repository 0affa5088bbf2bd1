"""Hugging Face T5Gemma import and export (`T5GemmaForConditionalGeneration`).

Source: Zhang et al. 2025, "Encoder-Decoder Gemma: Improving the Quality-Efficiency
Trade-Off via Adaptation" (arXiv:2504.06225); conventions read from transformers'
T5Gemma implementation (checked against transformers 5.x by
tests/test_t5gemma_parity.py):

  - each module (encoder, decoder) is a Gemma 2 stack: (1 + w) RMSNorms before
    and after every sub-block, GeGLU (tanh gelu), RoPE, GQA, query scale
    query_pre_attn_scalar**-0.5, attention soft-cap, embeddings times
    sqrt(hidden_size); the decoder adds cross-attention (its own pre / post norm)
    between self-attention and the FFN, with the decoder's head layout and keys /
    values projected from the encoder width; no RoPE there.
  - the encoder ends with its own final norm; the LM head (tied to the decoder
    embedding when `tie_word_embeddings`) applies the decoder's final soft-cap.
  - sliding windows: transformers' bidirectional encoder window admits
    |i - j| <= sliding_window, ours |i - j| < w, so an encoder window maps as
    w = sliding_window + 1; the causal decoder window maps unchanged
    (i - j < sliding_window in both).
  - the decoder starts from `decoder.bos_token_id` (`EncDecConfig.decoder_start_id`).

Functions: `config_from_t5gemma` / `config_to_t5gemma` (config dicts, or a
transformers config object on import), `params_from_t5gemma` / `params_to_t5gemma`
(a {name: numpy array} state dict), `load_t5gemma` / `save_t5gemma` (a directory
with config.json + model.safetensors, what `from_pretrained` reads).

Layout transforms are `jaxllm.hf.TRANSFORMS` ([out, in] nn.Linear weights <->
our [in, heads, head_dim] arrays).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.numpy

from jaxllm.config import ModelConfig
from jaxllm.encdec import (
  CrossParams,
  EncDecConfig,
  EncDecParams,
  abstract_encdec_params,
  check_encdec_params,
)
from jaxllm.hf import _ACTIVATIONS, TRANSFORMS
from jaxllm.params import LayerParams, Params

_SELF = {
  "attn_norm": ("pre_self_attn_layernorm.weight", "vec"),
  "post_attn_norm": ("post_self_attn_layernorm.weight", "vec"),
  "mlp_norm": ("pre_feedforward_layernorm.weight", "vec"),
  "post_mlp_norm": ("post_feedforward_layernorm.weight", "vec"),
  "wq": ("self_attn.q_proj.weight", "in"),
  "wk": ("self_attn.k_proj.weight", "in"),
  "wv": ("self_attn.v_proj.weight", "in"),
  "wo": ("self_attn.o_proj.weight", "out"),
  "w_gate": ("mlp.gate_proj.weight", "lin"),
  "w_up": ("mlp.up_proj.weight", "lin"),
  "w_down": ("mlp.down_proj.weight", "lin"),
}
_CROSS = {
  "norm": ("pre_cross_attn_layernorm.weight", "vec"),
  "post_norm": ("post_cross_attn_layernorm.weight", "vec"),
  "wq": ("cross_attn.q_proj.weight", "in"),
  "wk": ("cross_attn.k_proj.weight", "in"),
  "wv": ("cross_attn.v_proj.weight", "in"),
  "wo": ("cross_attn.o_proj.weight", "out"),
}
LM_HEAD = "lm_head.out_proj.weight"
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_MODULE_DEFAULTS = dict(  # T5GemmaModuleConfig's defaults for the fields we read
  vocab_size=256000,
  hidden_size=2304,
  intermediate_size=9216,
  num_hidden_layers=26,
  num_attention_heads=8,
  num_key_value_heads=4,
  head_dim=256,
  hidden_activation="gelu_pytorch_tanh",
  max_position_embeddings=8192,
  rms_norm_eps=1e-6,
  bos_token_id=2,
  rope_parameters=None,
  attention_bias=False,
  query_pre_attn_scalar=256,
  sliding_window=4096,
  layer_types=None,
  final_logit_softcapping=30.0,
  attn_logit_softcapping=50.0,
)


# ----------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------


def _as_dict(x, what: str) -> dict:
  if hasattr(x, "to_dict"):
    x = x.to_dict()
  if not isinstance(x, Mapping):
    raise ValueError(f"{what} must be a dict or a transformers config, got {type(x)}")
  return dict(x)


def _module_config(m: dict, where: str, *, bidirectional: bool, tie: bool, dtype: str):
  """One T5GemmaModuleConfig dict -> our ModelConfig."""
  get = lambda k: m.get(k, _MODULE_DEFAULTS[k])
  if get("attention_bias"):
    raise ValueError(f"{where}.attention_bias=True is not supported")
  act = get("hidden_activation")
  if act not in _ACTIVATIONS:
    raise ValueError(f"{where}.hidden_activation={act!r} is not supported")
  rope = get("rope_parameters") or {}
  if rope.get("rope_type", "default") != "default":
    raise ValueError(f"{where}.rope_parameters: only rope_type 'default' is supported")
  n_layers = get("num_hidden_layers")
  types = get("layer_types") or [
    "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)
  ]
  sw = get("sliding_window")
  local = [t == "sliding_attention" for t in types]
  if any(local) and not sw:
    raise ValueError(f"{where}: sliding layers need a sliding_window")
  w = (sw + 1 if bidirectional else sw) if any(local) else 0
  return ModelConfig(
    vocab_size=get("vocab_size"),
    d_model=get("hidden_size"),
    n_layers=n_layers,
    n_heads=get("num_attention_heads"),
    n_kv_heads=get("num_key_value_heads"),
    d_ff=get("intermediate_size"),
    head_dim=get("head_dim"),
    activation=_ACTIVATIONS[act],
    norm_eps=get("rms_norm_eps"),
    norm_plus_one=True,
    post_norms=True,
    rope_theta=rope.get("rope_theta", 10000.0),
    tie_embeddings=tie,
    attn_softcap=get("attn_logit_softcapping"),
    final_softcap=get("final_logit_softcapping"),
    query_pre_attn_scalar=get("query_pre_attn_scalar"),
    embed_scale=True,
    layer_windows=tuple(w if lo else 0 for lo in local),
    max_seq_len=get("max_position_embeddings"),
    dtype=dtype,
    param_dtype=dtype,
  )


def config_from_t5gemma(hf_config, dtype: str = "float32") -> EncDecConfig:
  """Our EncDecConfig from a T5GemmaConfig (a transformers object or its dict).

  Args:
    hf_config: `T5GemmaConfig` or its `to_dict()` / config.json contents.
    dtype: compute and parameter dtype of the result.

  Raises:
    ValueError: naming the field: not a t5gemma config, a missing encoder /
      decoder section, attention_bias, an
      unknown activation or RoPE type, sliding layers without a window, a
      missing decoder bos_token_id, or anything ModelConfig / EncDecConfig reject.
  """
  hf = _as_dict(hf_config, "hf_config")
  if hf.get("model_type", "t5gemma") != "t5gemma":
    raise ValueError(f"hf_config.model_type={hf.get('model_type')!r} is not 't5gemma'")
  for part in ("encoder", "decoder"):
    if not hf.get(part):  # transformers would fill in its 2B defaults
      raise ValueError(f"hf_config has no {part!r} section (a T5Gemma config has both)")
  enc = _as_dict(hf["encoder"], "hf_config.encoder")
  dec = _as_dict(hf["decoder"], "hf_config.decoder")
  tie = bool(hf.get("tie_word_embeddings", True))
  start = dec.get("bos_token_id", _MODULE_DEFAULTS["bos_token_id"])
  if start is None:
    raise ValueError("hf_config.decoder.bos_token_id (the decoder start) is None")
  return EncDecConfig(
    encoder=_module_config(enc, "encoder", bidirectional=True, tie=True, dtype=dtype),
    decoder=_module_config(dec, "decoder", bidirectional=False, tie=tie, dtype=dtype),
    cross_n_kv_heads=dec.get("num_key_value_heads", 4),
    decoder_start_id=start,
  )


def _int_if_whole(x):
  """transformers' strict config wants an int query_pre_attn_scalar."""
  return int(x) if float(x).is_integer() else x


def _module_to_hf(c: ModelConfig, where: str, *, bidirectional: bool) -> dict:
  if not (c.norm_plus_one and c.post_norms and c.embed_scale):
    raise ValueError(
      f"EncDecConfig.{where}: T5Gemma needs norm_plus_one, post_norms and "
      "embed_scale all True"
    )
  if c.qkv_bias or c.rope_scaling is not None:
    raise ValueError(f"EncDecConfig.{where}: qkv_bias / rope_scaling not in T5Gemma")
  act = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "silu": "silu"}
  local = sorted({w for w in c.windows if w})
  if len(local) > 1:
    raise ValueError(f"EncDecConfig.{where}: T5Gemma has one window size, got {local}")
  if local and bidirectional and local[0] < 2:
    raise ValueError(f"EncDecConfig.{where}: an encoder window must be >= 2")
  sw = (local[0] - 1 if bidirectional else local[0]) if local else c.max_seq_len
  return dict(
    vocab_size=c.vocab_size,
    hidden_size=c.d_model,
    intermediate_size=c.d_ff,
    num_hidden_layers=c.n_layers,
    num_attention_heads=c.n_heads,
    num_key_value_heads=c.n_kv_heads,
    head_dim=c.head_dim,
    hidden_activation=act[c.activation],
    max_position_embeddings=c.max_seq_len,
    rms_norm_eps=c.norm_eps,
    rope_parameters=dict(rope_type="default", rope_theta=c.rope_theta),
    attention_bias=False,
    query_pre_attn_scalar=_int_if_whole(c.query_pre_attn_scalar or c.head_dim),
    sliding_window=sw,
    layer_types=["sliding_attention" if w else "full_attention" for w in c.windows],
    final_logit_softcapping=c.final_softcap,
    attn_logit_softcapping=c.attn_softcap,
  )


def config_to_t5gemma(cfg: EncDecConfig) -> dict:
  """The config.json dict of a T5GemmaForConditionalGeneration equal to `cfg`.

  Special tokens: decoder bos = cfg.decoder_start_id; pad / eos are left to
  transformers' defaults (0 / 1) and matter only to its own generate.

  Raises:
    ValueError: naming the field, for what T5Gemma cannot express: no
      (1 + w) norms / post norms / embedding scale, QKV bias, RoPE scaling, more
      than one window size per module, an encoder window < 2, or
      cross_n_kv_heads != decoder.n_kv_heads.
  """
  if cfg.cross_n_kv_heads != cfg.decoder.n_kv_heads:
    raise ValueError(
      "EncDecConfig.cross_n_kv_heads must equal decoder.n_kv_heads for T5Gemma"
    )
  enc = _module_to_hf(cfg.encoder, "encoder", bidirectional=True)
  dec = _module_to_hf(cfg.decoder, "decoder", bidirectional=False)
  dec["bos_token_id"] = cfg.decoder_start_id
  enc["bos_token_id"] = cfg.decoder_start_id
  return dict(
    model_type="t5gemma",
    architectures=["T5GemmaForConditionalGeneration"],
    encoder=enc,
    decoder=dec,
    vocab_size=cfg.vocab_size,
    tie_word_embeddings=cfg.decoder.tie_embeddings,
    bos_token_id=cfg.decoder_start_id,
    dtype=cfg.decoder.param_dtype,
  )


# ----------------------------------------------------------------------------------
# Tensors
# ----------------------------------------------------------------------------------


def tensor_names(cfg: EncDecConfig) -> dict:
  """{HF name: (our path tuple, transform key)} for every tensor cfg implies
  (lm_head.out_proj.weight only when the decoder is untied)."""
  out = {}
  for half, c in (("encoder", cfg.encoder), ("decoder", cfg.decoder)):
    pre = f"model.{half}"
    out[f"{pre}.embed_tokens.weight"] = ((half, "embed"), "vec")
    out[f"{pre}.norm.weight"] = ((half, "final_norm"), "vec")
    for i in range(c.n_layers):
      for f, (name, t) in _SELF.items():
        out[f"{pre}.layers.{i}.{name}"] = ((half, "layers", i, f), t)
  for i in range(cfg.decoder.n_layers):
    for f, (name, t) in _CROSS.items():
      out[f"model.decoder.layers.{i}.{name}"] = (("cross", i, f), t)
  if not cfg.decoder.tie_embeddings:
    out[LM_HEAD] = (("decoder", "lm_head"), "lin")
  return out


def _get(tree, path):
  for p in path:
    tree = tree[p] if isinstance(p, int) else getattr(tree, p)
  return tree


def params_from_t5gemma(cfg: EncDecConfig, tensors: Mapping[str, Any]) -> EncDecParams:
  """EncDecParams (numpy arrays in cfg's param_dtype) from a T5Gemma state dict.

  Args:
    tensors: {HF name: array (numpy, or torch via .numpy())}. A tied
      `lm_head.out_proj.weight` equal to the decoder embedding and rotary buffers
      are ignored.

  Raises:
    ValueError: listing missing or unexpected names, or naming a tensor whose
      shape does not match cfg.
  """
  names = tensor_names(cfg)
  given = {k for k in tensors if not k.endswith(_IGNORED_SUFFIXES)}
  if cfg.decoder.tie_embeddings:
    given.discard(LM_HEAD)
  missing, extra = sorted(set(names) - given), sorted(given - set(names))
  if missing or extra:
    raise ValueError(
      f"T5Gemma tensors do not match the config: missing {missing[:5]}, "
      f"unexpected {extra[:5]}"
    )
  want = abstract_encdec_params(cfg)
  vals = {}
  for name, (path, t) in names.items():
    x = tensors[name]
    x = np.asarray(x.numpy() if hasattr(x, "numpy") else x)
    shape = tuple(_get(want, path).shape)
    tr = TRANSFORMS[t]
    if tuple(x.shape) != tr.hf_shape(shape):
      raise ValueError(
        f"tensor {name} has shape {tuple(x.shape)}, config expects {tr.hf_shape(shape)}"
      )
    vals[path] = np.ascontiguousarray(tr.load(x, shape)).astype(_get(want, path).dtype)
  return _assemble(cfg, vals)


def _assemble(cfg: EncDecConfig, vals: dict) -> EncDecParams:
  def half(name: str, c: ModelConfig) -> Params:
    layers = tuple(
      LayerParams(**{f: vals[(name, "layers", i, f)] for f in _SELF})
      for i in range(c.n_layers)
    )
    return Params(
      embed=vals[(name, "embed")],
      layers=layers,
      final_norm=vals[(name, "final_norm")],
      lm_head=vals.get((name, "lm_head")),
    )

  cross = tuple(
    CrossParams(**{f: vals[("cross", i, f)] for f in _CROSS})
    for i in range(cfg.decoder.n_layers)
  )
  return EncDecParams(
    encoder=half("encoder", cfg.encoder),
    decoder=half("decoder", cfg.decoder),
    cross=cross,
  )


def params_to_t5gemma(cfg: EncDecConfig, params: EncDecParams) -> dict:
  """{HF name: contiguous numpy array} for `T5GemmaForConditionalGeneration`
  (tied head omitted, as `save_pretrained` does).

  Raises:
    ValueError: (from config_to_t5gemma's checks) for what T5Gemma cannot
      express; params whose shapes are not cfg's (`check_encdec_params`,
      naming the parameter), before anything is converted or written.
  """
  config_to_t5gemma(cfg)
  check_encdec_params(cfg, params)
  out = {}
  for name, (path, t) in tensor_names(cfg).items():
    x = np.asarray(_get(params, path))
    out[name] = np.ascontiguousarray(TRANSFORMS[t].save(x))
  return out


def save_t5gemma(ckpt_dir: str, cfg: EncDecConfig, params: EncDecParams) -> None:
  """Write config.json + model.safetensors that
  `transformers.T5GemmaForConditionalGeneration.from_pretrained(ckpt_dir)` reads.

  Raises:
    ValueError: for what T5Gemma cannot express (`config_to_t5gemma`).
  """
  hf = config_to_t5gemma(cfg)
  tensors = params_to_t5gemma(cfg, params)
  os.makedirs(ckpt_dir, exist_ok=True)
  with open(os.path.join(ckpt_dir, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
  safetensors.numpy.save_file(
    tensors, os.path.join(ckpt_dir, "model.safetensors"), metadata={"format": "pt"}
  )


def load_t5gemma(ckpt_dir: str, dtype: str = "float32"):
  """(EncDecConfig, EncDecParams) from a directory with config.json and
  *.safetensors (`save_pretrained` output).

  Raises:
    ValueError: naming the file for a missing config / weights, or as
      config_from_t5gemma / params_from_t5gemma.
  """
  cfg_path = os.path.join(ckpt_dir, "config.json")
  if not os.path.isfile(cfg_path):
    raise ValueError(f"{cfg_path}: no config.json")
  with open(cfg_path) as f:
    cfg = config_from_t5gemma(json.load(f), dtype=dtype)
  files = sorted(f for f in os.listdir(ckpt_dir) if f.endswith(".safetensors"))
  if not files:
    raise ValueError(f"{ckpt_dir}: no *.safetensors files")
  tensors = {}
  for fn in files:
    tensors.update(safetensors.numpy.load_file(os.path.join(ckpt_dir, fn)))
  return cfg, params_from_t5gemma(cfg, tensors)
