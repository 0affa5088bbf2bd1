"""Hugging Face checkpoints: read and write `config.json` + `*.safetensors`.

Supported families (`model_type` in config.json), one `Family` entry each in
`FAMILY_TABLE`:
  llama    Llama 1/2/3 (incl. Llama-3 `rope_type: llama3` scaling), SmolLM
  mistral  Mistral (Llama tensors; `sliding_window` on every layer)
  qwen2    Qwen2 / Qwen2.5 (q/k/v bias; optional sliding window per layer)
  gemma2   Gemma 2 (GeGLU, (1 + w) RMSNorm, post norms, soft-caps, local/global)

`load_hf(dir)` reads tensors with the `safetensors` library into numpy (never
unpickles anything), maps Hugging Face names onto our `Params` and checks that
the checkpoint holds exactly the tensors the config implies, with the right
shapes. Each tensor is placed on its device(s) (`shardings=`, e.g. a Mesh)
as soon as it is read, so the host never holds the whole model.
`save_hf(dir, cfg, params, model_type)` writes the same format back, so
`transformers.AutoModelForCausalLM.from_pretrained(dir)` builds the same model.

Tensor names: `FAMILY_TABLE[family].tensors` maps each parameter path of ours
("embed", "layers.{i}.wq", ...) to its Hugging Face name, its llama.cpp GGUF
name and a layout transform (`TRANSFORMS`). HF import and export and GGUF
import (`jaxllm.gguf_io`) all read this one table, so a new Llama-like family
is one `Family` entry (plus a parity test).

Layout transforms: HF `nn.Linear` weights are [out, in] and compute x @ W.T;
ours are x @ W with heads split out, e.g. q_proj.weight [H*K, D] <-> wq
[D, H, K] and o_proj.weight [D, H*K] <-> wo [H, K, D]. Norm weights are copied
as stored (Gemma stores the w of (1 + w), and so do we). GGUF stores the same
[out, in] matrices, with the Q/K rows of llama-architecture files permuted for
llama.cpp's interleaved RoPE (`TensorName.gguf_rotary`).

Config defaults: fields missing from config.json take the default the
transformers config class of that family uses, as transformers itself would;
only the fields without a meaningful default are required (`_REQUIRED`).

Shape letters: D width, H query heads, Kv KV heads, N a head count (H or Kv),
K head dim, F MLP width, V vocab.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy for safetensors)
import numpy as np
import safetensors
import safetensors.numpy

from jaxllm.config import DTYPES, ModelConfig, RopeScaling
from jaxllm.params import LayerParams, Params, abstract_params, check_params
from jaxllm import sharding as sharding_lib

_REQUIRED = (
  "model_type",
  "vocab_size",
  "hidden_size",
  "intermediate_size",
  "num_hidden_layers",
  "num_attention_heads",
)

# transformers' ACT2FN names -> our activation names.
_ACTIVATIONS = {
  "silu": "silu",
  "swish": "silu",
  "gelu": "gelu",
  "gelu_pytorch_tanh": "gelu_tanh",
  "gelu_new": "gelu_tanh",
  "gelu_tanh": "gelu_tanh",
}


# --------------------------------------------------------------------------
# The family table: tensor names and layouts, config defaults
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Transform:
  """How one of our arrays relates to its checkpoint tensor.

  hf_shape(ours) -> the HF / GGUF (row-major) shape; load(x, ours) -> our
  array of shape `ours` from the checkpoint tensor x; save(ours) -> the
  checkpoint tensor (a view; callers make it contiguous).
  """

  hf_shape: Callable[[tuple], tuple]
  load: Callable[[np.ndarray, tuple], np.ndarray]
  save: Callable[[np.ndarray], np.ndarray]


TRANSFORMS = {
  # copied as stored (norm weights, the embedding table)
  "vec": Transform(lambda s: tuple(s), lambda x, s: x.reshape(s), lambda x: x),
  # q/k/v projections: [N*K, D] <-> [D, N, K]
  "in": Transform(
    lambda s: (s[1] * s[2], s[0]),
    lambda x, s: x.T.reshape(s),
    lambda x: x.reshape(x.shape[0], -1).T,
  ),
  # o projection: [D, H*K] <-> [H, K, D]
  "out": Transform(
    lambda s: (s[2], s[0] * s[1]),
    lambda x, s: x.T.reshape(s),
    lambda x: x.reshape(-1, x.shape[-1]).T,
  ),
  # q/k/v bias: [N*K] <-> [N, K]
  "bias": Transform(
    lambda s: (s[0] * s[1],), lambda x, s: x.reshape(s), lambda x: x.reshape(-1)
  ),
  # any other nn.Linear: [out, in] <-> [in, out]
  "lin": Transform(lambda s: (s[1], s[0]), lambda x, s: x.T, lambda x: x.T),
}


@dataclasses.dataclass(frozen=True)
class TensorName:
  """Where one parameter lives in checkpoint files.

  hf: the Hugging Face safetensors name ("{i}" = layer index).
  gguf: the llama.cpp GGUF name ("{i}" likewise), or None where GGUF import
    does not cover the family (`jaxllm.gguf_io.GGUF_ARCHS`).
  transform: a key of TRANSFORMS (the same for HF and GGUF: both store
    [out, in] row-major matrices).
  gguf_rotary: the GGUF rows are permuted for interleaved RoPE
    (llama-architecture Q and K; undone by `gguf_io.unpermute_rotary`).
  """

  hf: str
  gguf: Optional[str]
  transform: str
  gguf_rotary: bool = False


@dataclasses.dataclass(frozen=True)
class Family:
  """Everything jaxllm knows about one Hugging Face model family.

  architecture: the transformers class written to config.json.
  tensors: our parameter path ("embed", "final_norm", "lm_head" or
    "layers.{i}.<LayerParams field>") -> TensorName. A path whose parameter
    the config does not have (lm_head when tied) is skipped; one it needs
    must be here.
  defaults: the transformers config class's defaults of the optional fields
    we read.
  windows: per-layer sliding windows rule, a key of _WINDOW_RULES:
    "none" (all global), "all" (`sliding_window` on every layer, Mistral),
    "qwen2" (`use_sliding_window` / `max_window_layers` / `layer_types`),
    "alternate" (local, global, ... unless `layer_types` says otherwise).
  unsupported: config fields transformers honours for this family and our
    model lacks; rejected when truthy.
  gemma: Gemma-2 conventions ((1 + w) norms, embedding scale, soft-caps,
    query_pre_attn_scalar, `hidden_activation`).
  """

  architecture: str
  tensors: Mapping[str, TensorName]
  defaults: Mapping[str, Any]
  windows: str = "none"
  unsupported: tuple = ()
  gemma: bool = False

  @property
  def act_field(self) -> str:
    return "hidden_activation" if self.gemma else "hidden_act"


def _layer(hf: str, gguf: Optional[str], transform: str, rotary=False):
  return TensorName(
    f"model.layers.{{i}}.{hf}",
    None if gguf is None else f"blk.{{i}}.{gguf}",
    transform,
    rotary,
  )


_TOP = {
  "embed": ("model.embed_tokens.weight", "token_embd.weight", "vec"),
  "final_norm": ("model.norm.weight", "output_norm.weight", "vec"),
  "lm_head": ("lm_head.weight", "output.weight", "lin"),
}
_PROJ = {
  "wq": ("self_attn.q_proj.weight", "attn_q.weight", "in", True),
  "wk": ("self_attn.k_proj.weight", "attn_k.weight", "in", True),
  "wv": ("self_attn.v_proj.weight", "attn_v.weight", "in"),
  "wo": ("self_attn.o_proj.weight", "attn_output.weight", "out"),
  "w_gate": ("mlp.gate_proj.weight", "ffn_gate.weight", "lin"),
  "w_up": ("mlp.up_proj.weight", "ffn_up.weight", "lin"),
  "w_down": ("mlp.down_proj.weight", "ffn_down.weight", "lin"),
}
_LLAMA_NORMS = {
  "attn_norm": ("input_layernorm.weight", "attn_norm.weight", "vec"),
  "mlp_norm": ("post_attention_layernorm.weight", "ffn_norm.weight", "vec"),
}
# Gemma 2 reuses the name post_attention_layernorm for the norm *after*
# attention.
_GEMMA2_NORMS = {
  "attn_norm": ("input_layernorm.weight", None, "vec"),
  "post_attn_norm": ("post_attention_layernorm.weight", None, "vec"),
  "mlp_norm": ("pre_feedforward_layernorm.weight", None, "vec"),
  "post_mlp_norm": ("post_feedforward_layernorm.weight", None, "vec"),
}
_BIAS = {
  "bq": ("self_attn.q_proj.bias", None, "bias"),
  "bk": ("self_attn.k_proj.bias", None, "bias"),
  "bv": ("self_attn.v_proj.bias", None, "bias"),
}


def _tensors(*layer_groups, gguf: bool = True) -> dict:
  """{param path: TensorName}: the top-level tensors, then per-layer ones.
  gguf=False drops the GGUF names (families GGUF import does not cover)."""
  out = {p: TensorName(h, g if gguf else None, t) for p, (h, g, t) in _TOP.items()}
  for group in layer_groups:
    for field, (h, g, t, *rot) in group.items():
      out[f"layers.{{i}}.{field}"] = (
        _layer(h, g, t, bool(rot and rot[0])) if gguf else _layer(h, None, t)
      )
  return out


_LLAMA_TENSORS = _tensors(_LLAMA_NORMS, _PROJ)

FAMILY_TABLE: dict[str, Family] = {
  "llama": Family(
    architecture="LlamaForCausalLM",
    tensors=_LLAMA_TENSORS,
    defaults=dict(
      rms_norm_eps=1e-6,
      tie_word_embeddings=False,
      max_position_embeddings=2048,
      hidden_act="silu",
    ),
    unsupported=("attention_bias", "mlp_bias"),
  ),
  # Mistral is Llama's tensors plus one sliding window on every layer
  # (transformers' MistralAttention ignores `layer_types`).
  "mistral": Family(
    architecture="MistralForCausalLM",
    tensors=_LLAMA_TENSORS,
    defaults=dict(
      rms_norm_eps=1e-6,
      tie_word_embeddings=False,
      max_position_embeddings=4096 * 32,
      hidden_act="silu",
      num_key_value_heads=8,
      sliding_window=4096,
    ),
    windows="all",
  ),
  "qwen2": Family(
    architecture="Qwen2ForCausalLM",
    tensors=_tensors(_LLAMA_NORMS, _PROJ, _BIAS, gguf=False),
    defaults=dict(
      rms_norm_eps=1e-6,
      tie_word_embeddings=False,
      max_position_embeddings=32768,
      hidden_act="silu",
      use_sliding_window=False,
      sliding_window=4096,
      max_window_layers=28,
    ),
    windows="qwen2",
  ),
  "gemma2": Family(
    architecture="Gemma2ForCausalLM",
    tensors=_tensors(_GEMMA2_NORMS, _PROJ, gguf=False),
    defaults=dict(
      rms_norm_eps=1e-6,
      tie_word_embeddings=True,
      max_position_embeddings=8192,
      hidden_activation="gelu_pytorch_tanh",
      head_dim=256,
      num_key_value_heads=4,
      query_pre_attn_scalar=256,
      sliding_window=4096,
      attn_logit_softcapping=50.0,
      final_logit_softcapping=30.0,
    ),
    windows="alternate",
    unsupported=("attention_bias", "use_bidirectional_attention"),
    gemma=True,
  ),
}
FAMILIES = tuple(FAMILY_TABLE)
# Buffers some old checkpoints carry that transformers itself ignores.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def family(model_type: str, source: str = "") -> Family:
  """The FAMILY_TABLE entry of `model_type`.

  Raises:
    ValueError: "<source>: unsupported model_type ..." listing FAMILIES.
  """
  if model_type not in FAMILY_TABLE:
    raise ValueError(
      f"{source + ': ' if source else ''}unsupported "
      f"model_type {model_type!r} (supported: {FAMILIES})"
    )
  return FAMILY_TABLE[model_type]


def param_at(params: Params, path: str, i: Optional[int] = None):
  """The array at table path `path` ("embed", "layers.{i}.wq", ...) of layer
  `i` (None for top-level paths)."""
  if path.startswith("layers."):
    return getattr(params.layers[i], path.rsplit(".", 1)[1])
  return getattr(params, path)


def expand_tensors(cfg: ModelConfig, model_type: str) -> list:
  """The tensors `cfg` implies for a family, in table order: a list of
  (path, layer index or None, TensorName, our shape), one per layer for
  per-layer paths; paths of parameters `cfg` does not have (a tied lm_head)
  are left out.

  Raises:
    ValueError: unknown model_type, or `cfg` lacks a parameter the family's
      tensors need (e.g. no q/k/v bias for qwen2).
  """
  fam = family(model_type)
  want = abstract_params(cfg)
  out = []
  for path, t in fam.tensors.items():
    if not path.startswith("layers."):
      spec = param_at(want, path)
      if spec is not None:
        out.append((path, None, t, tuple(spec.shape)))
  for i in range(cfg.n_layers):
    for path, t in fam.tensors.items():
      if path.startswith("layers."):
        spec = param_at(want, path, i)
        if spec is None:
          field = path.rsplit(".", 1)[1]
          raise ValueError(f"config has no {field} but {model_type!r} needs it")
        out.append((path, i, t, tuple(spec.shape)))
  # Per-layer parameters the config has and the family has no name for.
  named = {p.rsplit(".", 1)[1] for p in fam.tensors if p.startswith("layers.")}
  for f in dataclasses.fields(LayerParams):
    if f.name not in named and getattr(want.layers[0], f.name) is not None:
      raise ValueError(f"config has {f.name} but {model_type!r} has no tensor for it")
  return out


# --------------------------------------------------------------------------
# config.json <-> ModelConfig
# --------------------------------------------------------------------------

_KINDS = {
  "pos_int": "an integer > 0",
  "uint": "an integer >= 0",
  "pos_float": "a finite number > 0",
  "float": "a finite number",
  "bool": "true or false",
  "str": "a string",
  "str_list": "a list of strings",
  "dict": "an object",
}


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def kind_ok(v: Any, kind: str) -> bool:
  """Whether a parsed JSON / GGUF metadata value `v` is of `kind`: "int",
  "uint" (>= 0), "pos_int" (> 0), "float" (finite; ints count), "pos_float",
  "bool", "str", "str_list", "int_list" or "dict" (the one check behind
  `hf_field` and `gguf_io.metadata_value`)."""
  if kind in ("int", "uint", "pos_int"):
    return _is_int(v) and (kind == "int" or v >= (0 if kind == "uint" else 1))
  if kind in ("pos_float", "float"):
    return (
      (_is_int(v) or isinstance(v, float))
      and np.isfinite(v)
      and (kind == "float" or v > 0)
    )
  if kind == "bool":
    return isinstance(v, bool)
  if kind == "str":
    return isinstance(v, str)
  if kind == "str_list":
    return isinstance(v, list) and all(isinstance(x, str) for x in v)
  if kind == "int_list":
    return isinstance(v, list) and all(_is_int(x) for x in v)
  if kind == "dict":
    return isinstance(v, dict)
  raise AssertionError(kind)


def _json_text(v: Any) -> str:
  try:
    return json.dumps(v)
  except (TypeError, ValueError):
    return repr(v)


def hf_field(
  value: Any, name: str, kind: str, source: str, nullable: bool = False
) -> Any:
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
  if not kind_ok(value, kind):
    raise ValueError(
      f"{source}: field {name!r} must be {_KINDS[kind]}"
      f"{' or null' if nullable else ''}, got "
      f"{_json_text(value)}"
    )
  return float(value) if kind in ("pos_float", "float") else value


def _rope(hf: dict, max_pos: int, source: str):
  """(rope_theta, RopeScaling or None) from rope_parameters / legacy fields."""
  key = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
  rp = hf.get(key) or {}
  hf_field(rp, key, "dict", source)
  layer_types = set(
    hf_field(hf.get("layer_types"), "layer_types", "str_list", source, nullable=True)
    or ()
  )
  if layer_types & set(rp):
    raise ValueError(
      f"{source}: per-layer-type rope_parameters "
      f"({sorted(layer_types & set(rp))}) are not supported"
    )
  if "rope_theta" in rp:
    theta = hf_field(rp["rope_theta"], f"{key}.rope_theta", "pos_float", source)
  else:
    theta = hf_field(hf.get("rope_theta", 10000.0), "rope_theta", "pos_float", source)
  prf = rp.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
  if prf is not None and (not kind_ok(prf, "float") or prf != 1):
    raise ValueError(
      f"{source}: partial_rotary_factor={_json_text(prf)} is "
      "not supported (only full-width RoPE)"
    )
  type_key = "rope_type" if "rope_type" in rp else "type"
  rope_type = hf_field(rp.get(type_key, "default"), f"{key}.{type_key}", "str", source)
  if rope_type == "default":
    return theta, None
  if rope_type != "llama3":
    raise ValueError(
      f"{source}: unsupported rope type {rope_type!r} (supported: 'default', 'llama3')"
    )
  for f in ("factor", "low_freq_factor", "high_freq_factor"):
    if f not in rp:
      raise ValueError(
        f"{source}: missing required field '{key}.{f}' for rope type 'llama3'"
      )
  num = {
    f: hf_field(rp[f], f"{key}.{f}", "pos_float", source)
    for f in ("factor", "low_freq_factor", "high_freq_factor")
  }
  if "original_max_position_embeddings" in rp:
    orig = hf_field(
      rp["original_max_position_embeddings"],
      f"{key}.original_max_position_embeddings",
      "pos_int",
      source,
    )
  else:
    orig = hf_field(
      hf.get("original_max_position_embeddings", max_pos),
      "original_max_position_embeddings",
      "pos_int",
      source,
    )
  try:
    return theta, RopeScaling(original_max_position=orig, **num)
  except ValueError as e:
    raise ValueError(f"{source}: {key}: {e}") from e


def _windows(hf: dict, fam: Family, get, n_layers: int, source: str):
  """Per-layer sliding windows (0 = global) exactly as transformers sets them.

  `get(field, kind, nullable)`: the typed field or its family default."""
  if fam.windows == "none":
    return None
  if fam.windows == "all":  # Mistral: one window on every layer, or none
    w = get("sliding_window", "pos_int", True)
    return None if w is None else (w,) * n_layers
  if fam.windows == "qwen2":
    # Qwen2Config drops sliding_window unless use_sliding_window is true; then
    # layers i >= max_window_layers are local (or as `layer_types` says).
    if (
      not get("use_sliding_window", "bool")
      or get("sliding_window", "pos_int", True) is None
    ):
      return None
    first_local = get("max_window_layers", "uint")
    default_types = [
      "sliding_attention" if i >= first_local else "full_attention"
      for i in range(n_layers)
    ]
  elif fam.windows == "alternate":  # local, global, ... unless layer_types
    default_types = [
      "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)
    ]
  else:
    raise AssertionError(fam.windows)
  types = (
    hf_field(hf.get("layer_types"), "layer_types", "str_list", source, nullable=True)
    or default_types
  )
  if len(types) != n_layers:
    raise ValueError(
      f"{source}: layer_types has {len(types)} entries for num_hidden_layers={n_layers}"
    )
  bad = set(types) - {"sliding_attention", "full_attention"}
  if bad:
    raise ValueError(f"{source}: unsupported layer_types {sorted(bad)}")
  w = get("sliding_window", "pos_int", True)
  if w is None:
    return None
  return tuple(w if t == "sliding_attention" else 0 for t in types)


def _check_hf_dict(hf, source: str, dtype: str | None) -> None:
  """Raises ValueError for an unknown `dtype` argument, a config that is not a
  JSON object, or one without a required field."""
  if dtype is not None and dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r} is not one of {DTYPES}")
  if not isinstance(hf, dict):
    raise ValueError(f"{source}: expected a JSON object, got {type(hf).__name__}")
  for f in _REQUIRED:
    if f not in hf or hf[f] is None:
      raise ValueError(f"{source}: missing required field {f!r}")


def _check_supported(hf: dict, fam, source: str) -> None:
  """Raises ValueError for a feature transformers supports for this family that
  our model does not (`fam.unsupported`), when the config turns it on."""
  for f in fam.unsupported:
    if hf.get(f):
      raise ValueError(
        f"{source}: {f}={_json_text(hf[f])} is not supported "
        f"for model_type {hf['model_type']!r}"
      )


def _checkpoint_dtype(hf: dict) -> str:
  """The checkpoint's `dtype` / `torch_dtype` when it is one of DTYPES, else
  float32."""
  dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
  return dtype if isinstance(dtype, str) and dtype in DTYPES else "float32"


def config_from_hf(
  hf: dict, source: str = "config.json", *, dtype: Optional[str] = None
) -> ModelConfig:
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
  _check_hf_dict(hf, source, dtype)
  fam = family(hf["model_type"], source)
  defaults = fam.defaults

  def get(f, kind, nullable=False):  # an explicit null stays None, as in HF
    return hf_field(hf[f] if f in hf else defaults.get(f), f, kind, source, nullable)

  _check_supported(hf, fam, source)
  act = get(fam.act_field, "str")
  if act not in _ACTIVATIONS:
    raise ValueError(
      f"{source}: unsupported {fam.act_field} {act!r} "
      f"(supported: {sorted(_ACTIVATIONS)})"
    )
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
  gemma = fam.gemma
  if gemma:
    attn_cap = get("attn_logit_softcapping", "pos_float", True)
    final_cap = get("final_logit_softcapping", "pos_float", True)
    qpas = get("query_pre_attn_scalar", "pos_float")
  else:
    attn_cap = final_cap = qpas = None
  theta, scaling = _rope(hf, max_pos, source)
  windows = _windows(hf, fam, get, n_layers, source)
  return build_config(
    source,
    dtype=_checkpoint_dtype(hf) if dtype is None else dtype,
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
    post_norms="layers.{i}.post_attn_norm" in fam.tensors,
    rope_theta=theta,
    rope_scaling=scaling,
    tie_embeddings=tie,
    qkv_bias="layers.{i}.bq" in fam.tensors,
    attn_softcap=attn_cap,
    final_softcap=final_cap,
    query_pre_attn_scalar=qpas,
    embed_scale=gemma,
    layer_windows=windows,
    max_seq_len=max_pos,
  )


def build_config(source: str, *, dtype: str, **fields) -> ModelConfig:
  """ModelConfig(**fields) with `dtype` as both param and compute dtype; its
  ValueError is raised again as "<source>: ..." (the file being read)."""
  try:
    return ModelConfig(dtype=dtype, param_dtype=dtype, **fields)
  except ValueError as e:
    raise ValueError(f"{source}: {e}") from e


def _int_if_whole(x):
  return int(x) if float(x).is_integer() else float(x)


def _float_or_none(x):
  return None if x is None else float(x)


def _check_exportable(cfg: ModelConfig, fam, model_type: str) -> None:
  """Raises ValueError "cannot export as ..." when `cfg` uses a feature the
  family `fam` does not have (or lacks one it always has)."""

  def need(cond, what):
    if not cond:
      raise ValueError(f"cannot export as {model_type!r}: {what}")

  gemma = fam.gemma
  need(cfg.norm_plus_one == gemma, f"norm_plus_one={cfg.norm_plus_one}")
  need(
    cfg.post_norms == ("layers.{i}.post_attn_norm" in fam.tensors),
    f"post_norms={cfg.post_norms}",
  )
  need(cfg.embed_scale == gemma, f"embed_scale={cfg.embed_scale}")
  need(cfg.qkv_bias == ("layers.{i}.bq" in fam.tensors), f"qkv_bias={cfg.qkv_bias}")
  if not gemma:
    for f in ("attn_softcap", "final_softcap", "query_pre_attn_scalar"):
      need(getattr(cfg, f) is None, f"{f}={getattr(cfg, f)}")
  windows = cfg.windows
  sizes = sorted(set(windows) - {0})
  need(len(sizes) <= 1, f"several sliding-window sizes {sizes}")
  need(fam.windows != "none" or not sizes, f"{model_type} has no sliding window")
  need(
    fam.windows != "all" or len(set(windows)) == 1,
    f"{model_type} has one sliding window on every layer or none, got "
    f"windows {windows}",
  )


def _rope_to_hf(cfg: ModelConfig) -> dict:
  """config.json's `rope_parameters`: default RoPE, or llama3 scaling."""
  if cfg.rope_scaling is None:
    return {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
  rs = cfg.rope_scaling
  return {
    "rope_type": "llama3",
    "rope_theta": float(cfg.rope_theta),
    "factor": float(rs.factor),
    "low_freq_factor": float(rs.low_freq_factor),
    "high_freq_factor": float(rs.high_freq_factor),
    "original_max_position_embeddings": int(rs.original_max_position),
  }


def _windows_to_hf(cfg: ModelConfig, fam) -> dict:
  """The sliding-window fields of config.json in the family's convention
  (`fam.windows`; `_check_exportable` has checked there is one size at most)."""
  sizes = sorted(set(cfg.windows) - {0})
  layer_types = ["sliding_attention" if w else "full_attention" for w in cfg.windows]
  if fam.windows == "all":
    return {"sliding_window": sizes[0] if sizes else None}
  if fam.windows == "qwen2":
    return {
      "use_sliding_window": bool(sizes),
      "sliding_window": sizes[0] if sizes else None,
      "max_window_layers": cfg.n_layers,
      "layer_types": layer_types,
    }
  if fam.windows == "alternate":
    return {
      "layer_types": layer_types,
      # transformers needs a window value even when no layer is local.
      "sliding_window": sizes[0] if sizes else cfg.max_seq_len,
    }
  return {}


def config_to_hf(cfg: ModelConfig, model_type: str) -> dict:
  """The config.json dict transformers needs to rebuild `cfg` as `model_type`.

  Raises:
    ValueError: for a model_type not in FAMILIES, or when `cfg` uses a
      feature that family does not have ("cannot export as ...").
  """
  fam = family(model_type)
  _check_exportable(cfg, fam, model_type)
  act_name = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}[
    cfg.activation
  ]
  hf = {
    "architectures": [fam.architecture],
    "model_type": model_type,
    "vocab_size": cfg.vocab_size,
    "hidden_size": cfg.d_model,
    "intermediate_size": cfg.d_ff,
    "num_hidden_layers": cfg.n_layers,
    "num_attention_heads": cfg.n_heads,
    "num_key_value_heads": cfg.n_kv_heads,
    "head_dim": cfg.head_dim,
    "rms_norm_eps": float(cfg.norm_eps),
    "rope_parameters": _rope_to_hf(cfg),
    "max_position_embeddings": cfg.max_seq_len,
    "tie_word_embeddings": cfg.tie_embeddings,
    "dtype": cfg.param_dtype,
    fam.act_field: act_name,
  }
  if "attention_bias" in fam.unsupported:
    hf["attention_bias"] = False
  if "mlp_bias" in fam.unsupported:
    hf["mlp_bias"] = False
  hf.update(_windows_to_hf(cfg, fam))
  if fam.gemma:
    hf.update(
      # Gemma2Config types this field as int.
      query_pre_attn_scalar=(
        _int_if_whole(cfg.query_pre_attn_scalar)
        if cfg.query_pre_attn_scalar is not None
        else cfg.head_dim
      ),
      attn_logit_softcapping=_float_or_none(cfg.attn_softcap),
      final_logit_softcapping=_float_or_none(cfg.final_softcap),
    )
  return hf


# --------------------------------------------------------------------------
# tensor name mapping (from FAMILY_TABLE)
# --------------------------------------------------------------------------


def expected_tensors(cfg: ModelConfig, model_type: str) -> dict:
  """{HF name: (path, kind, our shape, HF shape)} of the tensors `cfg`
  implies for `model_type`; path = (field,) for top-level tensors or
  (layer index, field) for per-layer ones; kind is a TRANSFORMS key.

  Raises:
    ValueError: see `expand_tensors`.
  """
  out = {}
  for path, i, t, shape in expand_tensors(cfg, model_type):
    loc = (path,) if i is None else (i, path.rsplit(".", 1)[1])
    out[t.hf.format(i=i)] = (
      loc,
      t.transform,
      shape,
      TRANSFORMS[t.transform].hf_shape(shape),
    )
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
        raise ValueError(
          f"{index}: field 'weight_map.{name}' must be a file "
          f"name, got {_json_text(fname)}"
        )
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
    raise ValueError(
      f"{path} is not a valid safetensors file (truncated or corrupt?): {e}"
    ) from e


def _tensor_headers(ckpt_dir: str) -> tuple[dict, dict]:
  """Pass 1 of `load_hf`, headers only: ({tensor name: file}, {name: shape}) of
  the checkpoint's tensors, less the ignored ones (_IGNORED_SUFFIXES).

  Raises:
    ValueError: a tensor in two files, or a shard without a tensor the index
      lists for it.
  """
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
        raise ValueError(
          f"{path} lacks tensor {missing_here[0]!r} that the index lists for it"
        )
  for n in list(where):
    if n.endswith(_IGNORED_SUFFIXES):
      del where[n]
  return where, shapes


def _check_tensor_names(ckpt_dir, cfg_path, want, where, shapes, extra_head) -> None:
  """Raises ValueError for a tensor `want` (`expected_tensors`) lacks in the
  checkpoint, one it does not expect (an lm_head beside tied embeddings, when
  `extra_head`, is allowed), or one of the wrong shape."""
  for n in want:
    if n not in where:
      raise ValueError(
        f"{ckpt_dir}: missing tensor {n!r} (expected shape {list(want[n][3])})"
      )
  for n in where:
    if n not in want and not (extra_head and n == "lm_head.weight"):
      raise ValueError(
        f"{ckpt_dir}: unexpected tensor {n!r} in {where[n]} "
        f"(shape {list(shapes[n])}) for this config"
      )
  for n, (_, _, _, hf_shape) in want.items():
    if shapes[n] != tuple(hf_shape):
      raise ValueError(
        f"{where[n]}: tensor {n!r} has shape {list(shapes[n])}, "
        f"expected {list(hf_shape)} from {cfg_path}"
      )


def _get_tensor(f, path: str, name: str) -> np.ndarray:
  try:
    return f.get_tensor(name)
  except Exception as e:
    raise ValueError(f"{path}: cannot read tensor {name!r}: {e}") from e


def _check_tied_head(embed: np.ndarray, where: dict) -> None:
  """Raises ValueError when the checkpoint's 'lm_head.weight' (next to tied
  embeddings) differs from `embed`, the embedding table as stored. Compared
  as stored, before any dtype override, a block of rows at a time (so only
  the head tensor itself is added to the host memory in use)."""
  path = where["lm_head.weight"]
  with _open(path) as f:
    head = _get_tensor(f, path, "lm_head.weight")
  rows = 4096
  same = head.shape == embed.shape and all(
    np.array_equal(
      np.asarray(head[r : r + rows], np.float32),
      np.asarray(embed[r : r + rows], np.float32),
    )
    for r in range(0, embed.shape[0], rows)
  )
  if not same:
    raise ValueError(
      f"{path}: 'lm_head.weight' differs "
      "from 'model.embed_tokens.weight' but config.json has "
      "tie_word_embeddings=true"
    )


def _read_tensors(cfg: ModelConfig, want, where, extra_head, place):
  """Pass 2 of `load_hf`: read the data file by file and tensor by tensor,
  convert each to our layout and cfg.param_dtype and hand it to
  `place(loc, array)` (loc as in `expected_tensors`) before reading the next,
  so only one tensor is held on the host at a time -> ({top-level field:
  placed array}, [{layer field: placed array}] per layer).

  Raises:
    ValueError: a tensor that cannot be read, or an lm_head beside tied
      embeddings (`extra_head`) that differs from them.
  """
  by_file: dict = {}
  for n in where:
    by_file.setdefault(where[n], []).append(n)
  np_dtype = jnp.dtype(cfg.param_dtype)
  top: dict = {}
  layers = [dict() for _ in range(cfg.n_layers)]
  for path, names in by_file.items():
    with _open(path) as f:
      for n in names:
        if n == "lm_head.weight" and extra_head:
          continue  # compared with the embedding when that is read
        x = _get_tensor(f, path, n)
        loc, kind, shape, _ = want[n]
        if extra_head and loc == ("embed",):
          _check_tied_head(x, where)
        x = place(loc, TRANSFORMS[kind].load(x, shape).astype(np_dtype, copy=False))
        if len(loc) == 1:
          top[loc[0]] = x
        else:
          layers[loc[0]][loc[1]] = x
  return top, layers


# --------------------------------------------------------------------------
# placing arrays on shardings (shared with jaxllm.gguf_io)
# --------------------------------------------------------------------------

Shardings = sharding_lib.Shardings
resolve_shardings = sharding_lib.resolve_shardings


def sharding_at(shardings: Optional[Params], loc: tuple):
  """The entry of a Params-shaped tree at `loc` ((field,) or (layer, field));
  None when `shardings` is None."""
  if shardings is None:
    return None
  if len(loc) == 1:
    return getattr(shardings, loc[0])
  return getattr(shardings.layers[loc[0]], loc[1])


def place_array(x: np.ndarray, sharding=None) -> jax.Array:
  """Host array `x` as a jax.Array: on `sharding`, or (None) `jnp.asarray`
  on the default device. Built with `jax.make_array_from_callback`, so each
  process copies only its addressable shards of `x` to its devices (on a
  multi-process mesh every process must pass the same `x`)."""
  if sharding is None:
    return jnp.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def load_hf(ckpt_dir: str, *, dtype: Optional[str] = None, shardings: Shardings = None):
  """Load a Hugging Face checkpoint directory -> (ModelConfig, Params).

  Reads config.json and model.safetensors (or the shards listed in
  model.safetensors.index.json, or every *.safetensors file). Every tensor the
  config implies must be present with the right shape, and nothing else may
  remain (`lm_head.weight` next to tied embeddings is accepted if equal to
  the embedding as stored). `dtype` overrides the checkpoint dtype.

  `shardings` places each array: None (default) the default device
  (`jnp.asarray`); otherwise what `checkpoint.restore_params` takes: a Mesh
  (`jaxllm.sharding.param_shardings(cfg, mesh)`, convenient because cfg is
  only known once config.json is read), one Sharding for every array, or a
  Params tree of Shardings. It is checked against the config before any
  tensor data is read. The values are the same bits whatever the sharding.

  Memory: tensors are read, converted and placed one at a time, so the host
  holds at most about one tensor beyond the placed arrays: as stored, plus
  its copy in our layout and `dtype` (the transposes copy), i.e. a small
  multiple of the largest tensor (usually the embedding; plus the stored
  lm_head while one beside tied embeddings is compared with them), never
  the whole model. (Placing on the default device of a CPU backend is of
  course host memory too.) Every process reads whole tensors from the files and
  copies only its addressable shards to its devices (`place_array`); reading
  only each process's slices from disk would need the layout transforms
  (transposes, head splits) inverted per slice, which is not done.

  Raises:
    FileNotFoundError: no config.json / safetensors file (or a shard the
      index lists).
    ValueError: naming the file and field or tensor, for a bad config
      (`config_from_hf`), a corrupt file, or missing, unexpected or wrongly
      shaped tensors; "load_hf: shardings ..." for a `shardings` that does
      not fit the config (`resolve_shardings`).
  """
  cfg_path = os.path.join(ckpt_dir, "config.json")
  hf_cfg = _read_json(cfg_path)
  cfg = config_from_hf(hf_cfg, cfg_path, dtype=dtype)
  want = expected_tensors(cfg, hf_cfg["model_type"])
  tree = resolve_shardings(cfg, shardings, "load_hf")

  where, shapes = _tensor_headers(ckpt_dir)
  extra_head = (
    cfg.tie_embeddings and "lm_head.weight" in where and "lm_head.weight" not in want
  )
  _check_tensor_names(ckpt_dir, cfg_path, want, where, shapes, extra_head)
  top, layers = _read_tensors(
    cfg, want, where, extra_head, lambda loc, x: place_array(x, sharding_at(tree, loc))
  )
  params = Params(
    embed=top["embed"],
    layers=tuple(LayerParams(**d) for d in layers),
    final_norm=top["final_norm"],
    lm_head=top.get("lm_head"),
  )
  return cfg, params


def save_hf(
  ckpt_dir: str, cfg: ModelConfig, params: Params, *, model_type: str
) -> None:
  """Write config.json + model.safetensors that transformers loads as-is.

  `model_type` is one of FAMILIES ('llama', 'mistral', 'qwen2', 'gemma2');
  tensors keep params' dtype.

  Raises:
    ValueError: an unknown model_type, a config the family cannot express
      (`config_to_hf`), or params that do not match cfg (`check_params`).
  """
  hf_cfg = config_to_hf(cfg, model_type)
  want = expected_tensors(cfg, model_type)
  check_params(cfg, params)
  tensors = {}
  for name, (loc, kind, _, _) in want.items():
    x = (
      getattr(params, loc[0])
      if len(loc) == 1
      else getattr(params.layers[loc[0]], loc[1])
    )
    tensors[name] = np.ascontiguousarray(
      TRANSFORMS[kind].save(np.asarray(jax.device_get(x)))
    )
  dtypes = {str(t.dtype) for t in tensors.values()}
  if len(dtypes) == 1:
    hf_cfg["dtype"] = dtypes.pop()
  os.makedirs(ckpt_dir, exist_ok=True)
  with open(os.path.join(ckpt_dir, "config.json"), "w") as f:
    json.dump(hf_cfg, f, indent=2, sort_keys=True)
  safetensors.numpy.save_file(
    tensors, os.path.join(ckpt_dir, "model.safetensors"), metadata={"format": "pt"}
  )
