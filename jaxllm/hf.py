"""Hugging Face checkpoints: read and write `config.json` + `*.safetensors`.

Supported families (`model_type` in config.json):
  llama   Llama 1/2/3 (incl. Llama-3 `rope_type: llama3` scaling), SmolLM
  qwen2   Qwen2 / Qwen2.5 (q/k/v bias; optional sliding window per layer)
  gemma2  Gemma 2 (GeGLU, (1 + w) RMSNorm, post norms, soft-caps, local/global)

`load_hf(dir)` reads tensors with the `safetensors` library into numpy (never
unpickles anything), maps Hugging Face names onto our `Params` and checks that
the checkpoint holds exactly the tensors the config implies, with the right
shapes. `save_hf(dir, cfg, params, model_type)` writes the same format back, so
`transformers.AutoModelForCausalLM.from_pretrained(dir)` builds the same model.

Name mapping: HF `nn.Linear` weights are [out, in] and compute x @ W.T; ours are
x @ W with heads split out, e.g. q_proj.weight [H*K, D] <-> wq [D, H, K] and
o_proj.weight [D, H*K] <-> wo [H, K, D]. Norm weights are copied as stored
(Gemma stores the w of (1 + w), and so do we).

Config defaults: fields missing from config.json take the default the
transformers config class of that family uses, as transformers itself would;
only the fields without a meaningful default are required (`_REQUIRED`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy for safetensors)
import numpy as np
import safetensors
import safetensors.numpy

from jaxllm.config import DTYPES, ModelConfig, RopeScaling
from jaxllm.params import LayerParams, Params, abstract_params, check_params

FAMILIES = ("llama", "qwen2", "gemma2")
_REQUIRED = ("model_type", "vocab_size", "hidden_size", "intermediate_size",
             "num_hidden_layers", "num_attention_heads")

# Defaults of the transformers config classes (LlamaConfig, Qwen2Config,
# Gemma2Config) for the optional fields we read.
_DEFAULTS = {
    "llama": dict(rms_norm_eps=1e-6, tie_word_embeddings=False,
                  max_position_embeddings=2048, hidden_act="silu"),
    "qwen2": dict(rms_norm_eps=1e-6, tie_word_embeddings=False,
                  max_position_embeddings=32768, hidden_act="silu",
                  use_sliding_window=False, sliding_window=4096,
                  max_window_layers=28),
    "gemma2": dict(rms_norm_eps=1e-6, tie_word_embeddings=True,
                   max_position_embeddings=8192,
                   hidden_activation="gelu_pytorch_tanh", head_dim=256,
                   num_key_value_heads=4, query_pre_attn_scalar=256,
                   sliding_window=4096, attn_logit_softcapping=50.0,
                   final_logit_softcapping=30.0),
}

# transformers' ACT2FN names -> our activation names.
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu",
                "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
                "gelu_tanh": "gelu_tanh"}

# Per-layer tensors: (our LayerParams field, HF name suffix, conversion kind).
# Kinds: "vec" copy; "in" q/k/v [N*K, D] <-> [D, N, K]; "out" o [D, H*K] <->
# [H, K, D]; "bias" [N*K] <-> [N, K]; "lin" any other nn.Linear [out,in] <-> [in,out].
_PROJ = (("wq", "self_attn.q_proj.weight", "in"),
         ("wk", "self_attn.k_proj.weight", "in"),
         ("wv", "self_attn.v_proj.weight", "in"),
         ("wo", "self_attn.o_proj.weight", "out"),
         ("w_gate", "mlp.gate_proj.weight", "lin"),
         ("w_up", "mlp.up_proj.weight", "lin"),
         ("w_down", "mlp.down_proj.weight", "lin"))
_BIAS = (("bq", "self_attn.q_proj.bias", "bias"),
         ("bk", "self_attn.k_proj.bias", "bias"),
         ("bv", "self_attn.v_proj.bias", "bias"))
_LLAMA_NORMS = (("attn_norm", "input_layernorm.weight", "vec"),
                ("mlp_norm", "post_attention_layernorm.weight", "vec"))
# Gemma 2 reuses the name post_attention_layernorm for the norm *after* attention.
_GEMMA2_NORMS = (("attn_norm", "input_layernorm.weight", "vec"),
                 ("post_attn_norm", "post_attention_layernorm.weight", "vec"),
                 ("mlp_norm", "pre_feedforward_layernorm.weight", "vec"),
                 ("post_mlp_norm", "post_feedforward_layernorm.weight", "vec"))
LAYER_TABLE = {"llama": _LLAMA_NORMS + _PROJ,
               "qwen2": _LLAMA_NORMS + _PROJ + _BIAS,
               "gemma2": _GEMMA2_NORMS + _PROJ}
# Top-level tensors: (our Params field, HF name, kind).
TOP_TABLE = (("embed", "model.embed_tokens.weight", "vec"),
             ("final_norm", "model.norm.weight", "vec"),
             ("lm_head", "lm_head.weight", "lin"))
# Buffers some old checkpoints carry that transformers itself ignores.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# --------------------------------------------------------------------------
# config.json <-> ModelConfig
# --------------------------------------------------------------------------

_KINDS = {"pos_int": "an integer > 0", "uint": "an integer >= 0",
          "pos_float": "a finite number > 0", "float": "a finite number",
          "bool": "true or false", "str": "a string",
          "str_list": "a list of strings", "dict": "an object"}


def _kind_ok(v: Any, kind: str) -> bool:
  is_int = isinstance(v, int) and not isinstance(v, bool)
  if kind == "pos_int":
    return is_int and v > 0
  if kind == "uint":
    return is_int and v >= 0
  if kind in ("pos_float", "float"):
    return ((is_int or isinstance(v, float)) and np.isfinite(v) and
            (kind == "float" or v > 0))
  if kind == "bool":
    return isinstance(v, bool)
  if kind == "str":
    return isinstance(v, str)
  if kind == "str_list":
    return isinstance(v, list) and all(isinstance(x, str) for x in v)
  if kind == "dict":
    return isinstance(v, dict)
  raise AssertionError(kind)


def _json_text(v: Any) -> str:
  try:
    return json.dumps(v)
  except (TypeError, ValueError):
    return repr(v)


def hf_field(value: Any, name: str, kind: str, source: str,
             nullable: bool = False) -> Any:
  """`value` of config field `name` checked to be of `kind`.

  `kind`: "pos_int", "uint", "pos_float" / "float" (finite; an int is
  accepted and returned as float), "bool", "str", "str_list" or "dict".
  `nullable`: None passes through (a field whose null means "derive it" or
  "off", as in transformers).

  Raises:
    ValueError: "<source>: field '<name>' must be ..., got <value>".
  """
  if value is None and nullable:
    return None
  if not _kind_ok(value, kind):
    raise ValueError(f"{source}: field {name!r} must be {_KINDS[kind]}"
                     f"{' or null' if nullable else ''}, got "
                     f"{_json_text(value)}")
  return float(value) if kind in ("pos_float", "float") else value


def _rope(hf: dict, max_pos: int, source: str):
  """(rope_theta, RopeScaling or None) from rope_parameters / legacy fields."""
  key = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
  rp = hf.get(key) or {}
  hf_field(rp, key, "dict", source)
  layer_types = set(hf_field(hf.get("layer_types"), "layer_types",
                             "str_list", source, nullable=True) or ())
  if layer_types & set(rp):
    raise ValueError(f"{source}: per-layer-type rope_parameters "
                     f"({sorted(layer_types & set(rp))}) are not supported")
  if "rope_theta" in rp:
    theta = hf_field(rp["rope_theta"], f"{key}.rope_theta", "pos_float",
                     source)
  else:
    theta = hf_field(hf.get("rope_theta", 10000.0), "rope_theta", "pos_float",
                     source)
  prf = rp.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
  if prf is not None and (not _kind_ok(prf, "float") or prf != 1):
    raise ValueError(f"{source}: partial_rotary_factor={_json_text(prf)} is "
                     "not supported (only full-width RoPE)")
  type_key = "rope_type" if "rope_type" in rp else "type"
  rope_type = hf_field(rp.get(type_key, "default"), f"{key}.{type_key}", "str",
                       source)
  if rope_type == "default":
    return theta, None
  if rope_type != "llama3":
    raise ValueError(f"{source}: unsupported rope type {rope_type!r} "
                     "(supported: 'default', 'llama3')")
  for f in ("factor", "low_freq_factor", "high_freq_factor"):
    if f not in rp:
      raise ValueError(f"{source}: missing required field "
                       f"'{key}.{f}' for rope type 'llama3'")
  num = {f: hf_field(rp[f], f"{key}.{f}", "pos_float", source)
         for f in ("factor", "low_freq_factor", "high_freq_factor")}
  if "original_max_position_embeddings" in rp:
    orig = hf_field(rp["original_max_position_embeddings"],
                    f"{key}.original_max_position_embeddings", "pos_int",
                    source)
  else:
    orig = hf_field(hf.get("original_max_position_embeddings", max_pos),
                    "original_max_position_embeddings", "pos_int", source)
  try:
    return theta, RopeScaling(original_max_position=orig, **num)
  except ValueError as e:
    raise ValueError(f"{source}: {key}: {e}") from e


def _windows(hf: dict, family: str, get, n_layers: int, source: str):
  """Per-layer sliding windows (0 = global) exactly as transformers sets them.

  `get(field, kind, nullable)`: the typed field or its family default."""
  if family == "llama":
    return None
  if family == "qwen2":
    # Qwen2Config drops sliding_window unless use_sliding_window is true; then
    # layers i >= max_window_layers are local (or as `layer_types` says).
    if (not get("use_sliding_window", "bool") or
        get("sliding_window", "pos_int", True) is None):
      return None
    first_local = get("max_window_layers", "uint")
    default_types = ["sliding_attention" if i >= first_local
                     else "full_attention" for i in range(n_layers)]
  else:  # gemma2: local, global, local, ... unless layer_types says otherwise
    default_types = ["sliding_attention" if (i + 1) % 2 else "full_attention"
                     for i in range(n_layers)]
  types = hf_field(hf.get("layer_types"), "layer_types", "str_list", source,
                   nullable=True) or default_types
  if len(types) != n_layers:
    raise ValueError(f"{source}: layer_types has {len(types)} entries for "
                     f"num_hidden_layers={n_layers}")
  bad = set(types) - {"sliding_attention", "full_attention"}
  if bad:
    raise ValueError(f"{source}: unsupported layer_types {sorted(bad)}")
  w = get("sliding_window", "pos_int", True)
  if w is None:
    return None
  return tuple(w if t == "sliding_attention" else 0 for t in types)


def config_from_hf(hf: dict, source: str = "config.json", *,
                   dtype: Optional[str] = None) -> ModelConfig:
  """A ModelConfig from a Hugging Face config dict (the parsed config.json).

  `source` names the file in error messages. `dtype` sets both param and
  compute dtype; default: the checkpoint's `dtype` / `torch_dtype`, else
  float32. Fields missing from the dict take the transformers default of
  the family; an explicit null is kept where transformers gives it a
  meaning (no soft-cap, no sliding window, head_dim / num_key_value_heads
  derived) and rejected elsewhere.

  Raises:
    ValueError: "<source>: ..." naming the field, for a missing required
      field, a field of the wrong type or out of range (e.g. "hidden_size":
      "abc", "rms_norm_eps": null), or an unsupported feature; also for an
      unknown `dtype` argument.
  """
  if dtype is not None and dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r} is not one of {DTYPES}")
  if not isinstance(hf, dict):
    raise ValueError(f"{source}: expected a JSON object, got {type(hf).__name__}")
  for f in _REQUIRED:
    if f not in hf or hf[f] is None:
      raise ValueError(f"{source}: missing required field {f!r}")
  family = hf["model_type"]
  if family not in FAMILIES:
    raise ValueError(f"{source}: unsupported model_type {family!r} "
                     f"(supported: {FAMILIES})")
  defaults = _DEFAULTS[family]

  def get(f, kind, nullable=False):  # an explicit null stays None, as in HF
    return hf_field(hf[f] if f in hf else defaults.get(f), f, kind, source,
                    nullable)

  # Features transformers supports for these families that our model does not.
  unsupported = {"llama": ("attention_bias", "mlp_bias"),
                 "qwen2": (), "gemma2": ("attention_bias",
                                         "use_bidirectional_attention")}
  for f in unsupported[family]:
    if hf.get(f):
      raise ValueError(f"{source}: {f}={_json_text(hf[f])} is not supported "
                       f"for model_type {family!r}")

  act_field = "hidden_activation" if family == "gemma2" else "hidden_act"
  act = get(act_field, "str")
  if act not in _ACTIVATIONS:
    raise ValueError(f"{source}: unsupported {act_field} {act!r} "
                     f"(supported: {sorted(_ACTIVATIONS)})")
  vocab = get("vocab_size", "pos_int")
  d_model = get("hidden_size", "pos_int")
  d_ff = get("intermediate_size", "pos_int")
  n_layers = get("num_hidden_layers", "pos_int")
  n_heads = get("num_attention_heads", "pos_int")
  n_kv = get("num_key_value_heads", "pos_int", True) or n_heads
  head_dim = get("head_dim", "pos_int", True) or d_model // n_heads
  eps = get("rms_norm_eps", "pos_float")
  tie = get("tie_word_embeddings", "bool")
  max_pos = get("max_position_embeddings", "pos_int")
  gemma = family == "gemma2"
  if gemma:
    attn_cap = get("attn_logit_softcapping", "pos_float", True)
    final_cap = get("final_logit_softcapping", "pos_float", True)
    qpas = get("query_pre_attn_scalar", "pos_float")
  else:
    attn_cap = final_cap = qpas = None
  theta, scaling = _rope(hf, max_pos, source)
  windows = _windows(hf, family, get, n_layers, source)
  if dtype is None:
    dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    dtype = dtype if isinstance(dtype, str) and dtype in DTYPES else "float32"
  try:
    return ModelConfig(
        vocab_size=vocab,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_ff=d_ff,
        head_dim=head_dim,
        activation=_ACTIVATIONS[act],
        norm_eps=eps,
        norm_plus_one=gemma,
        post_norms=gemma,
        rope_theta=theta,
        rope_scaling=scaling,
        tie_embeddings=tie,
        qkv_bias=family == "qwen2",
        attn_softcap=attn_cap,
        final_softcap=final_cap,
        query_pre_attn_scalar=qpas,
        embed_scale=gemma,
        layer_windows=windows,
        max_seq_len=max_pos,
        dtype=dtype,
        param_dtype=dtype,
    )
  except ValueError as e:
    raise ValueError(f"{source}: {e}") from e


def _int_if_whole(x):
  return int(x) if float(x).is_integer() else float(x)


def _float_or_none(x):
  return None if x is None else float(x)


def config_to_hf(cfg: ModelConfig, model_type: str) -> dict:
  """The config.json dict transformers needs to rebuild `cfg` as `model_type`.

  Raises ValueError when `cfg` uses a feature that family does not have.
  """
  if model_type not in FAMILIES:
    raise ValueError(f"unsupported model_type {model_type!r} (supported: "
                     f"{FAMILIES})")
  gemma = model_type == "gemma2"

  def need(cond, what):
    if not cond:
      raise ValueError(f"cannot export as {model_type!r}: {what}")

  need(cfg.norm_plus_one == gemma, f"norm_plus_one={cfg.norm_plus_one}")
  need(cfg.post_norms == gemma, f"post_norms={cfg.post_norms}")
  need(cfg.embed_scale == gemma, f"embed_scale={cfg.embed_scale}")
  need(cfg.qkv_bias == (model_type == "qwen2"), f"qkv_bias={cfg.qkv_bias}")
  if not gemma:
    for f in ("attn_softcap", "final_softcap", "query_pre_attn_scalar"):
      need(getattr(cfg, f) is None, f"{f}={getattr(cfg, f)}")
  windows = cfg.windows
  sizes = sorted(set(windows) - {0})
  need(len(sizes) <= 1, f"several sliding-window sizes {sizes}")
  need(model_type != "llama" or not sizes, "llama has no sliding window")
  layer_types = ["sliding_attention" if w else "full_attention" for w in windows]
  act_name = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh",
              "gelu": "gelu"}[cfg.activation]
  rope = {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
  if cfg.rope_scaling is not None:
    rs = cfg.rope_scaling
    rope = {"rope_type": "llama3", "rope_theta": float(cfg.rope_theta),
            "factor": float(rs.factor),
            "low_freq_factor": float(rs.low_freq_factor),
            "high_freq_factor": float(rs.high_freq_factor),
            "original_max_position_embeddings": int(rs.original_max_position)}
  arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
          "gemma2": "Gemma2ForCausalLM"}[model_type]
  hf = {
      "architectures": [arch],
      "model_type": model_type,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.d_model,
      "intermediate_size": cfg.d_ff,
      "num_hidden_layers": cfg.n_layers,
      "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.n_kv_heads,
      "head_dim": cfg.head_dim,
      "rms_norm_eps": float(cfg.norm_eps),
      "rope_parameters": rope,
      "max_position_embeddings": cfg.max_seq_len,
      "tie_word_embeddings": cfg.tie_embeddings,
      "dtype": cfg.param_dtype,
  }
  if model_type == "llama":
    hf.update(hidden_act=act_name, attention_bias=False, mlp_bias=False)
  elif model_type == "qwen2":
    hf.update(hidden_act=act_name, use_sliding_window=bool(sizes),
              sliding_window=sizes[0] if sizes else None,
              max_window_layers=cfg.n_layers, layer_types=layer_types)
  else:
    hf.update(hidden_activation=act_name, attention_bias=False,
              # Gemma2Config types this field as int.
              query_pre_attn_scalar=(_int_if_whole(cfg.query_pre_attn_scalar)
                                     if cfg.query_pre_attn_scalar is not None
                                     else cfg.head_dim),
              attn_logit_softcapping=_float_or_none(cfg.attn_softcap),
              final_logit_softcapping=_float_or_none(cfg.final_softcap),
              # transformers needs a window value even when no layer is local.
              sliding_window=sizes[0] if sizes else cfg.max_seq_len,
              layer_types=layer_types)
  return hf


# --------------------------------------------------------------------------
# tensor name mapping
# --------------------------------------------------------------------------

def _hf_shape(kind: str, shape: tuple) -> tuple:
  """The HF tensor shape of one of our parameters of shape `shape`."""
  if kind == "vec":
    return tuple(shape)
  if kind == "in":  # [D, N, K] -> [N*K, D]
    return (shape[1] * shape[2], shape[0])
  if kind == "out":  # [H, K, D] -> [D, H*K]
    return (shape[2], shape[0] * shape[1])
  if kind == "bias":  # [N, K] -> [N*K]
    return (shape[0] * shape[1],)
  if kind == "lin":  # [in, out] -> [out, in]
    return (shape[1], shape[0])
  raise AssertionError(kind)


def _from_hf(kind: str, x: np.ndarray, shape: tuple) -> np.ndarray:
  """HF tensor -> our layout of shape `shape` (numpy, no copy when possible)."""
  if kind in ("vec", "bias"):
    return x.reshape(shape)
  if kind == "lin":
    return x.T
  if kind == "in":
    return x.T.reshape(shape)
  if kind == "out":
    return x.T.reshape(shape)
  raise AssertionError(kind)


def _to_hf(kind: str, x: np.ndarray) -> np.ndarray:
  """Our layout -> HF tensor (contiguous numpy)."""
  if kind == "vec":
    out = x
  elif kind == "bias":
    out = x.reshape(-1)
  elif kind == "lin":
    out = x.T
  elif kind == "in":  # [D, N, K] -> [N*K, D]
    out = x.reshape(x.shape[0], -1).T
  elif kind == "out":  # [H, K, D] -> [D, H*K]
    out = x.reshape(-1, x.shape[-1]).T
  else:
    raise AssertionError(kind)
  return np.ascontiguousarray(out)


def expected_tensors(cfg: ModelConfig, model_type: str) -> dict:
  """{HF name: (path, kind, our shape, HF shape)}; path = (field,) for top-level
  tensors or (layer index, field) for per-layer ones."""
  want = abstract_params(cfg)
  out = {}
  for field, name, kind in TOP_TABLE:
    spec = getattr(want, field)
    if spec is not None:
      out[name] = ((field,), kind, spec.shape, _hf_shape(kind, spec.shape))
  for i, lw in enumerate(want.layers):
    for field, suffix, kind in LAYER_TABLE[model_type]:
      spec = getattr(lw, field)
      if spec is None:
        raise ValueError(f"config has no {field} but {model_type!r} needs it")
      out[f"model.layers.{i}.{suffix}"] = ((i, field), kind, spec.shape,
                                           _hf_shape(kind, spec.shape))
  return out


# --------------------------------------------------------------------------
# reading and writing files
# --------------------------------------------------------------------------

def _read_json(path: str) -> Any:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e


def _safetensors_files(ckpt_dir: str) -> dict:
  """{file path: names expected in it or None (= whatever it holds)}."""
  index = os.path.join(ckpt_dir, "model.safetensors.index.json")
  if os.path.exists(index):
    spec = _read_json(index)
    weight_map = spec.get("weight_map") if isinstance(spec, dict) else None
    if not isinstance(weight_map, dict):
      raise ValueError(f"{index}: missing or malformed 'weight_map'")
    for name, fname in weight_map.items():
      if not isinstance(fname, str) or not fname:
        raise ValueError(f"{index}: field 'weight_map.{name}' must be a file "
                         f"name, got {_json_text(fname)}")
    files: dict = {}
    for name, fname in weight_map.items():
      files.setdefault(os.path.join(ckpt_dir, fname), set()).add(name)
    for p in files:
      if not os.path.exists(p):
        raise FileNotFoundError(f"{p} (listed in {index}) not found")
    return files
  found = sorted(f for f in os.listdir(ckpt_dir) if f.endswith(".safetensors"))
  if not found:
    raise FileNotFoundError(f"no *.safetensors file in {ckpt_dir}")
  return {os.path.join(ckpt_dir, f): None for f in found}


def _open(path: str):
  try:
    return safetensors.safe_open(path, framework="numpy")
  except Exception as e:  # SafetensorError: truncated header, bad JSON, ...
    raise ValueError(f"{path} is not a valid safetensors file (truncated or "
                     f"corrupt?): {e}") from e


def load_hf(ckpt_dir: str, *, dtype: Optional[str] = None,
            shardings: Optional[Params] = None):
  """Load a Hugging Face checkpoint directory -> (ModelConfig, Params).

  Reads config.json and model.safetensors (or the shards listed in
  model.safetensors.index.json, or every *.safetensors file). Every tensor the
  config implies must be present with the right shape, and nothing else may
  remain (`lm_head.weight` next to tied embeddings is accepted if equal).
  `dtype` overrides the checkpoint dtype; `shardings` (a Params tree of
  jax.sharding.Sharding) places each array, default: the default device.
  """
  cfg_path = os.path.join(ckpt_dir, "config.json")
  hf_cfg = _read_json(cfg_path)
  cfg = config_from_hf(hf_cfg, cfg_path, dtype=dtype)
  family = hf_cfg["model_type"]
  want = expected_tensors(cfg, family)

  # Pass 1: names, shapes and which file holds each tensor (header only).
  where: dict = {}
  shapes: dict = {}
  for path, listed in _safetensors_files(ckpt_dir).items():
    with _open(path) as f:
      names = list(f.keys())
      for n in names:
        if n in where:
          raise ValueError(f"tensor {n!r} is in both {where[n]} and {path}")
        where[n] = path
        shapes[n] = tuple(f.get_slice(n).get_shape())
    if listed is not None:
      missing_here = sorted(set(listed) - set(names))
      if missing_here:
        raise ValueError(f"{path} lacks tensor {missing_here[0]!r} that the "
                         "index lists for it")
  for n in list(where):
    if n.endswith(_IGNORED_SUFFIXES):
      del where[n]
  extra_head = (cfg.tie_embeddings and "lm_head.weight" in where and
                "lm_head.weight" not in want)
  for n in want:
    if n not in where:
      raise ValueError(f"{ckpt_dir}: missing tensor {n!r} (expected shape "
                       f"{list(want[n][3])})")
  for n in where:
    if n not in want and not (extra_head and n == "lm_head.weight"):
      raise ValueError(f"{ckpt_dir}: unexpected tensor {n!r} in {where[n]} "
                       f"(shape {list(shapes[n])}) for this config")
  for n, (_, _, _, hf_shape) in want.items():
    if shapes[n] != tuple(hf_shape):
      raise ValueError(f"{where[n]}: tensor {n!r} has shape {list(shapes[n])}, "
                       f"expected {list(hf_shape)} from {cfg_path}")

  # Pass 2: read data, file by file.
  by_file: dict = {}
  for n in where:
    by_file.setdefault(where[n], []).append(n)
  np_dtype = jnp.dtype(cfg.param_dtype)
  top: dict = {}
  layers = [dict() for _ in range(cfg.n_layers)]
  for path, names in by_file.items():
    with _open(path) as f:
      for n in names:
        try:
          x = f.get_tensor(n)
        except Exception as e:
          raise ValueError(f"{path}: cannot read tensor {n!r}: {e}") from e
        if n == "lm_head.weight" and extra_head:
          top["_tied_head"] = x
          continue
        loc, kind, shape, _ = want[n]
        x = _from_hf(kind, x, shape).astype(np_dtype, copy=False)
        if len(loc) == 1:
          top[loc[0]] = x
        else:
          layers[loc[0]][loc[1]] = x
  if "_tied_head" in top:
    head = top.pop("_tied_head")
    if not np.array_equal(np.asarray(head, np.float32),
                          np.asarray(top["embed"], np.float32)):
      raise ValueError(f"{where['lm_head.weight']}: 'lm_head.weight' differs "
                       "from 'model.embed_tokens.weight' but config.json has "
                       "tie_word_embeddings=true")
  params = Params(embed=top["embed"],
                  layers=tuple(LayerParams(**d) for d in layers),
                  final_norm=top["final_norm"],
                  lm_head=top.get("lm_head"))
  if shardings is None:
    params = jax.tree_util.tree_map(jnp.asarray, params)
  else:
    params = jax.device_put(params, shardings)
  return cfg, params


def save_hf(ckpt_dir: str, cfg: ModelConfig, params: Params, *,
            model_type: str) -> None:
  """Write config.json + model.safetensors that transformers loads as-is.

  `model_type` is 'llama', 'qwen2' or 'gemma2'; tensors keep params' dtype.
  """
  hf_cfg = config_to_hf(cfg, model_type)
  want = expected_tensors(cfg, model_type)
  check_params(cfg, params)
  tensors = {}
  for name, (loc, kind, _, _) in want.items():
    x = (getattr(params, loc[0]) if len(loc) == 1 else
         getattr(params.layers[loc[0]], loc[1]))
    tensors[name] = _to_hf(kind, np.asarray(jax.device_get(x)))
  dtypes = {str(t.dtype) for t in tensors.values()}
  if len(dtypes) == 1:
    hf_cfg["dtype"] = dtypes.pop()
  os.makedirs(ckpt_dir, exist_ok=True)
  with open(os.path.join(ckpt_dir, "config.json"), "w") as f:
    json.dump(hf_cfg, f, indent=2, sort_keys=True)
  safetensors.numpy.save_file(tensors, os.path.join(ckpt_dir,
                                                    "model.safetensors"),
                              metadata={"format": "pt"})
