"""Model configuration: one frozen, hashable dataclass for the Llama / Mistral /
Qwen2 / SmolLM / Gemma 2 families. It is passed to jitted functions as a static
argument, so every field is a plain Python value (tuples, not lists).

Every inconsistency raises ValueError naming the field at construction time, so
nothing fails later with an opaque XLA shape error.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Optional

import numpy as np

ACTIVATIONS = ("silu", "gelu_tanh", "gelu")
DTYPES = ("float32", "bfloat16", "float16")


def as_int(name: str, value) -> int:
  """`value` as a Python int, or ValueError naming `name`.

  Accepts Python and numpy integers (0-d integer arrays too); rejects bools, floats
  (even 4.0), strings and None, so a wrong type fails here with the field's name
  rather than deep inside a jitted function.
  """
  if isinstance(value, (bool, np.bool_)) or not (
    isinstance(value, numbers.Integral)
    or (
      isinstance(value, np.ndarray)
      and value.ndim == 0
      and np.issubdtype(value.dtype, np.integer)
    )
  ):
    raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
  return int(value)


def as_real(name: str, value) -> float:
  """`value` as a finite Python float, or ValueError naming `name`.

  Accepts Python / numpy ints and floats and 0-d real arrays (jax ones too); rejects
  bools, strings, complex numbers, None, NaN and +-inf.
  """
  if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
    ok = False
  elif isinstance(value, numbers.Real):
    ok = True
  else:  # a 0-d numpy / jax array
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    ok = (
      shape == ()
      and dtype is not None
      and (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating))
    )
  if not ok:
    raise ValueError(
      f"{name} must be a real number, got {value!r} ({type(value).__name__})"
    )
  out = float(value)
  if not math.isfinite(out):
    raise ValueError(f"{name} must be finite, got {out}")
  return out


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3-style frequency-dependent RoPE scaling (rope_type 'llama3').

  Wavelengths longer than original_max_position / low_freq_factor are divided by
  `factor`, shorter than original_max_position / high_freq_factor kept, and those
  between interpolated (see `jaxllm.model.rope_inv_freq`).

  Validated at construction: `factor` and `low_freq_factor` finite and > 0,
  `high_freq_factor` finite and > low_freq_factor (the interpolation divides by
  their difference), `original_max_position` an int >= 1. Numbers are stored as
  Python floats / ints. Raises ValueError naming the field.
  """

  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position: int = 8192

  def __post_init__(self):
    def need(cond, field, msg):
      if not cond:
        raise ValueError(f"RopeScaling.{field}: {msg}")

    for f in ("factor", "low_freq_factor", "high_freq_factor"):
      object.__setattr__(self, f, as_real(f"RopeScaling.{f}", getattr(self, f)))
    object.__setattr__(
      self,
      "original_max_position",
      as_int("RopeScaling.original_max_position", self.original_max_position),
    )
    need(self.factor > 0, "factor", f"must be > 0, got {self.factor}")
    need(
      self.low_freq_factor > 0,
      "low_freq_factor",
      f"must be > 0, got {self.low_freq_factor}",
    )
    need(
      self.high_freq_factor > self.low_freq_factor,
      "high_freq_factor",
      f"must be > low_freq_factor={self.low_freq_factor}, got {self.high_freq_factor}",
    )
    need(
      self.original_max_position >= 1,
      "original_max_position",
      f"must be >= 1, got {self.original_max_position}",
    )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Decoder-only transformer hyper-parameters.

  `layer_windows` gives, per layer, the sliding-window size (0 = global
  attention). Use `sliding_window` + `sliding_window_pattern` as a shortcut:
  pattern p makes every layer i with (i + 1) % p != 0 local (Gemma 2: p = 2,
  i.e. local, global, local, ...).

  Every field is checked at construction (ValueError naming the field): ints are
  ints (not bools, floats or strings) and positive where a size; floats finite and
  > 0 where they divide or scale (norm_eps, rope_theta, softcaps,
  query_pre_attn_scalar); flags are bools; `rope_scaling` a RopeScaling (a dict is
  converted). Numeric values are stored as Python ints / floats.

  `attention_impl` names the attention implementation, an entry of
  `jaxllm.model.ATTENTION_IMPLS` ("jnp", the plain-jnp path that runs on every
  backend, is the default; "live" reads only the cache blocks up to the
  batch's last live slot; a fused GPU/TPU kernel is registered beside them).

  `cache_dtype` is the dtype the KV cache stores keys and values in ("" = the
  compute `dtype`; "bfloat16" halves a float32 model's cache). Attention
  accumulates in float32 and returns the activation dtype either way; the
  effective name is `kv_dtype`.

  `prefill_chunk` bounds the prompt tokens one prefill pass runs (0 = the
  whole prompt at once): a longer prompt is prefilled `prefill_chunk` tokens
  at a time through the cache (`jaxllm.decoding.prefill_in_chunks`), so the
  attention scores held at once are [B, H, chunk, S] instead of
  [B, H, T, S]; the result is the same prefill.
  """

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  d_ff: int
  head_dim: Optional[int] = None  # default d_model // n_heads
  activation: str = "silu"  # silu -> SwiGLU; gelu_tanh -> GeGLU (Gemma)
  norm_eps: float = 1e-5
  norm_plus_one: bool = False  # RMSNorm scale is (1 + w) (Gemma)
  post_norms: bool = False  # extra RMSNorm after attention and FFN (Gemma 2)
  rope_theta: float = 10000.0
  rope_scaling: Optional[RopeScaling] = None
  tie_embeddings: bool = True
  qkv_bias: bool = False  # Qwen2
  attn_softcap: Optional[float] = None  # Gemma 2: 50.0
  final_softcap: Optional[float] = None  # Gemma 2: 30.0
  query_pre_attn_scalar: Optional[float] = None  # scale = qpas**-0.5
  embed_scale: bool = False  # multiply embeddings by sqrt(d_model) (Gemma)
  sliding_window: Optional[int] = None
  sliding_window_pattern: int = 1  # 1: all layers local when sliding_window set
  layer_windows: Optional[tuple[int, ...]] = None
  max_seq_len: int = 2048
  dtype: str = "float32"  # activation / compute dtype
  param_dtype: str = "float32"
  attention_impl: str = "jnp"  # a key of jaxllm.model.ATTENTION_IMPLS
  cache_dtype: str = ""  # KV cache storage dtype; "" = dtype (see kv_dtype)
  prefill_chunk: int = 512  # prompt tokens per prefill pass; 0 = whole prompt

  def __post_init__(self):
    _check_sizes(self)
    _check_names(self)
    _check_flags_and_scales(self)
    _check_windows(self)
    _check_rope_scaling(self)

  @property
  def q_per_kv(self) -> int:
    return self.n_heads // self.n_kv_heads

  @property
  def kv_dtype(self) -> str:
    """The KV cache's dtype name: `cache_dtype`, or `dtype` when that is ""."""
    return self.cache_dtype or self.dtype

  @property
  def attn_scale(self) -> float:
    base = self.query_pre_attn_scalar or self.head_dim
    return float(base) ** -0.5

  @property
  def windows(self) -> tuple[int, ...]:
    """Per-layer sliding window (0 = global attention)."""
    if self.layer_windows is not None:
      return self.layer_windows
    w, p = self.sliding_window, self.sliding_window_pattern
    if not w:
      return (0,) * self.n_layers
    return tuple(w if p == 1 or (i + 1) % p != 0 else 0 for i in range(self.n_layers))

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  # ---- parameter counts (used by the FLOPs accounting) ----
  def param_counts(self) -> dict[str, int]:
    d, h, kv, hd, f = (
      self.d_model,
      self.n_heads,
      self.n_kv_heads,
      self.head_dim,
      self.d_ff,
    )
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d
    if self.qkv_bias:
      attn += h * hd + 2 * kv * hd
    mlp = 3 * d * f
    norms = (4 if self.post_norms else 2) * d
    per_layer = attn + mlp + norms
    embed = self.vocab_size * d
    head = 0 if self.tie_embeddings else self.vocab_size * d
    return dict(
      per_layer=per_layer,
      layers=per_layer * self.n_layers,
      embed=embed,
      lm_head=head,
      final_norm=d,
      total=per_layer * self.n_layers + embed + head + d,
    )


# ModelConfig.__post_init__'s checks, in the order they run (the first failing one
# raises). Each normalises the fields it checks in place (the dataclass is frozen).


def _need(cond, field: str, msg: str) -> None:
  """ValueError "ModelConfig.<field>: <msg>" unless `cond`."""
  if not cond:
    raise ValueError(f"ModelConfig.{field}: {msg}")


def _store(cfg: ModelConfig, field: str, value):
  object.__setattr__(cfg, field, value)
  return value


def _to_int(cfg: ModelConfig, field: str) -> int:
  return _store(cfg, field, as_int(f"ModelConfig.{field}", getattr(cfg, field)))


def _to_real(cfg: ModelConfig, field: str) -> float:
  return _store(cfg, field, as_real(f"ModelConfig.{field}", getattr(cfg, field)))


def _check_sizes(cfg: ModelConfig) -> None:
  """Sizes are positive ints; head_dim (default d_model // n_heads) is even and
  n_kv_heads divides n_heads."""
  for f in (
    "vocab_size",
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "d_ff",
    "max_seq_len",
  ):
    v = _to_int(cfg, f)
    _need(v > 0, f, f"must be a positive int, got {v!r}")
  v = _to_int(cfg, "prefill_chunk")
  _need(v >= 0, "prefill_chunk", f"must be an int >= 0 (0: no chunking), got {v!r}")
  if cfg.head_dim is None:
    _need(
      cfg.d_model % cfg.n_heads == 0,
      "n_heads",
      f"d_model={cfg.d_model} is not divisible by n_heads={cfg.n_heads} "
      "(set head_dim explicitly if that is intended)",
    )
    _store(cfg, "head_dim", cfg.d_model // cfg.n_heads)
  head_dim = _to_int(cfg, "head_dim")
  _need(
    head_dim > 0 and head_dim % 2 == 0,
    "head_dim",
    f"must be a positive even int (RoPE rotates pairs), got {head_dim!r}",
  )
  _need(
    cfg.n_heads % cfg.n_kv_heads == 0,
    "n_kv_heads",
    f"n_heads={cfg.n_heads} is not divisible by n_kv_heads={cfg.n_kv_heads}",
  )


def _check_names(cfg: ModelConfig) -> None:
  """activation, dtype, param_dtype, cache_dtype ("" or a dtype) and
  attention_impl name known entries."""
  _need(
    isinstance(cfg.activation, str) and cfg.activation in ACTIVATIONS,
    "activation",
    f"unknown activation {cfg.activation!r}; expected one of {ACTIVATIONS}",
  )
  for f in ("dtype", "param_dtype"):
    v = getattr(cfg, f)
    _need(isinstance(v, str) and v in DTYPES, f, f"{v!r} not in {DTYPES}")
  v = cfg.cache_dtype
  _need(
    isinstance(v, str) and (v == "" or v in DTYPES),
    "cache_dtype",
    f"{v!r} is neither '' (same as dtype) nor one of {DTYPES}",
  )
  # The registry lives beside the implementations (imported here, not at
  # module level: jaxllm.model imports this module).
  from jaxllm.model import ATTENTION_IMPLS

  _need(
    isinstance(cfg.attention_impl, str) and cfg.attention_impl in ATTENTION_IMPLS,
    "attention_impl",
    f"unknown attention implementation {cfg.attention_impl!r}; "
    f"registered: {sorted(ATTENTION_IMPLS)}",
  )


def _check_flags_and_scales(cfg: ModelConfig) -> None:
  """Flags are bools; norm_eps, rope_theta and the optional softcaps /
  query_pre_attn_scalar are finite and > 0."""
  for f in (
    "norm_plus_one",
    "post_norms",
    "tie_embeddings",
    "qkv_bias",
    "embed_scale",
  ):
    v = getattr(cfg, f)
    _need(isinstance(v, (bool, np.bool_)), f, f"must be a bool, got {v!r}")
    _store(cfg, f, bool(v))
  _need(_to_real(cfg, "norm_eps") > 0, "norm_eps", f"must be > 0, got {cfg.norm_eps}")
  _need(
    _to_real(cfg, "rope_theta") > 0, "rope_theta", f"must be > 0, got {cfg.rope_theta}"
  )
  for f in ("attn_softcap", "final_softcap", "query_pre_attn_scalar"):
    if getattr(cfg, f) is not None:
      v = _to_real(cfg, f)
      _need(v > 0, f, f"must be None or > 0, got {v}")


def _check_windows(cfg: ModelConfig) -> None:
  """sliding_window None or > 0, sliding_window_pattern >= 1, layer_windows None
  or n_layers ints >= 0 (stored as a tuple)."""
  if cfg.sliding_window is not None:
    v = _to_int(cfg, "sliding_window")
    _need(v > 0, "sliding_window", f"must be None or > 0, got {v}")
  v = _to_int(cfg, "sliding_window_pattern")
  _need(v >= 1, "sliding_window_pattern", f"must be >= 1, got {v}")
  if cfg.layer_windows is None:
    return
  _need(
    isinstance(cfg.layer_windows, (tuple, list)),
    "layer_windows",
    f"must be a tuple of ints, got {cfg.layer_windows!r}",
  )
  windows = tuple(
    as_int(f"ModelConfig.layer_windows[{i}]", w)
    for i, w in enumerate(cfg.layer_windows)
  )
  _store(cfg, "layer_windows", windows)
  _need(
    len(windows) == cfg.n_layers,
    "layer_windows",
    f"has {len(windows)} entries for n_layers={cfg.n_layers}",
  )
  _need(
    all(w >= 0 for w in windows),
    "layer_windows",
    "entries must be ints >= 0 (0 = global)",
  )


def _check_rope_scaling(cfg: ModelConfig) -> None:
  """rope_scaling is None or a RopeScaling (a dict of its fields is converted)."""
  if isinstance(cfg.rope_scaling, dict):
    names = {f.name for f in dataclasses.fields(RopeScaling)}
    _need(
      set(cfg.rope_scaling) <= names,
      "rope_scaling",
      f"unknown keys {sorted(set(cfg.rope_scaling) - names)}; "
      f"expected some of {sorted(names)}",
    )
    _store(cfg, "rope_scaling", RopeScaling(**cfg.rope_scaling))
  _need(
    cfg.rope_scaling is None or isinstance(cfg.rope_scaling, RopeScaling),
    "rope_scaling",
    f"must be None, a RopeScaling or a dict, got {cfg.rope_scaling!r}",
  )


def llama_like(
  vocab_size=32000, d_model=512, n_layers=8, n_heads=8, n_kv_heads=4, d_ff=1408, **kw
) -> ModelConfig:
  """A Llama-family config (SwiGLU, RMSNorm, RoPE, GQA)."""
  return ModelConfig(
    vocab_size=vocab_size,
    d_model=d_model,
    n_layers=n_layers,
    n_heads=n_heads,
    n_kv_heads=n_kv_heads,
    d_ff=d_ff,
    **kw,
  )


def smollm2_135m(**kw) -> ModelConfig:
  """SmolLM2-135M architecture (Llama family)."""
  base = dict(
    vocab_size=49152,
    d_model=576,
    n_layers=30,
    n_heads=9,
    n_kv_heads=3,
    d_ff=1536,
    norm_eps=1e-5,
    rope_theta=100000.0,
    tie_embeddings=True,
    max_seq_len=8192,
  )
  base.update(kw)
  return ModelConfig(**base)
