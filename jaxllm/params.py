"""Parameter pytrees, described once.

`param_specs(cfg)` returns the parameter tree with a `ParamSpec` (shape, logical
axes, initialiser) at every leaf. Initialisation, abstract shapes and (logical)
shardings are all derived from that one description.

Layout (per layer weights are kept as separate arrays, one `LayerParams` per
layer, so the forward pass indexes nothing and each layer's KV cache is a
separate buffer that can be updated in place):

  embed        [V, D]                      ("vocab", "embed")
  layers[i]:
    attn_norm  [D]
    wq [D, H, K]   wk [D, Kv, K]   wv [D, Kv, K]   wo [H, K, D]
    bq [H, K]      bk [Kv, K]      bv [Kv, K]          (QKV bias only)
    post_attn_norm [D]                                  (Gemma 2 only)
    mlp_norm   [D]
    w_gate [D, F]  w_up [D, F]  w_down [F, D]
    post_mlp_norm [D]                                   (Gemma 2 only)
  final_norm   [D]
  lm_head      [D, V]  (None when tied to embed)

Logical axes: vocab, embed, heads, kv_heads, head_dim, mlp. The one table
mapping them to mesh axes is `jaxllm.sharding.RULES`
(`sharding.param_shardings(cfg, mesh)`; `init_params(cfg, key,
shardings=...)` initialises straight into those shardings).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig
from jaxllm.quant import Int8Weight


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  shape: tuple[int, ...]
  axes: tuple[Optional[str], ...]  # logical axis names, one per dim
  init: str = "normal"  # normal | zeros | ones
  fan_in: int = 1  # normal init std = 1 / sqrt(fan_in)


def _dc(cls):
  cls = dataclasses.dataclass(cls)
  return jax.tree_util.register_dataclass(cls)


@_dc
class LayerParams:
  attn_norm: Any
  wq: Any
  wk: Any
  wv: Any
  wo: Any
  mlp_norm: Any
  w_gate: Any
  w_up: Any
  w_down: Any
  bq: Any = None
  bk: Any = None
  bv: Any = None
  post_attn_norm: Any = None
  post_mlp_norm: Any = None


@_dc
class Params:
  embed: Any
  layers: tuple
  final_norm: Any
  lm_head: Any = None


def is_spec(x) -> bool:
  return isinstance(x, ParamSpec)


def param_specs(cfg: ModelConfig) -> Params:
  """The parameter tree with a ParamSpec at every leaf."""
  D, H, Kv, K, F, V = (
    cfg.d_model,
    cfg.n_heads,
    cfg.n_kv_heads,
    cfg.head_dim,
    cfg.d_ff,
    cfg.vocab_size,
  )
  norm_init = "zeros" if cfg.norm_plus_one else "ones"
  norm = lambda: ParamSpec((D,), ("embed",), norm_init)

  def layer():
    bias = cfg.qkv_bias
    return LayerParams(
      attn_norm=norm(),
      wq=ParamSpec((D, H, K), ("embed", "heads", "head_dim"), fan_in=D),
      wk=ParamSpec((D, Kv, K), ("embed", "kv_heads", "head_dim"), fan_in=D),
      wv=ParamSpec((D, Kv, K), ("embed", "kv_heads", "head_dim"), fan_in=D),
      wo=ParamSpec((H, K, D), ("heads", "head_dim", "embed"), fan_in=H * K),
      bq=ParamSpec((H, K), ("heads", "head_dim"), "zeros") if bias else None,
      bk=ParamSpec((Kv, K), ("kv_heads", "head_dim"), "zeros") if bias else None,
      bv=ParamSpec((Kv, K), ("kv_heads", "head_dim"), "zeros") if bias else None,
      post_attn_norm=norm() if cfg.post_norms else None,
      mlp_norm=norm(),
      w_gate=ParamSpec((D, F), ("embed", "mlp"), fan_in=D),
      w_up=ParamSpec((D, F), ("embed", "mlp"), fan_in=D),
      w_down=ParamSpec((F, D), ("mlp", "embed"), fan_in=F),
      post_mlp_norm=norm() if cfg.post_norms else None,
    )

  return Params(
    embed=ParamSpec((V, D), ("vocab", "embed"), fan_in=D),
    layers=tuple(layer() for _ in range(cfg.n_layers)),
    final_norm=norm(),
    lm_head=None
    if cfg.tie_embeddings
    else ParamSpec((D, V), ("embed", "vocab"), fan_in=D),
  )


def _map_specs(fn: Callable[[ParamSpec], Any], specs: Params):
  return jax.tree_util.tree_map(fn, specs, is_leaf=is_spec)


def _init_leaves(cfg: ModelConfig, key: jax.Array) -> Params:
  return init_from_specs(param_specs(cfg), key, cfg.param_dtype)


def init_from_specs(specs, key: jax.Array, dtype):
  """Arrays for a tree of ParamSpecs (any pytree with ParamSpec leaves): leaf i
  draws from `jax.random.split(key, n_leaves)[i]`; "normal" leaves are
  N(0, 1/fan_in), "zeros" / "ones" constant; all in `dtype`. Call it under jit
  (as `init_params` does) for bits that do not depend on the sharding."""
  leaves, treedef = jax.tree_util.tree_flatten(specs, is_leaf=is_spec)
  keys = jax.random.split(key, len(leaves))
  dtype = jnp.dtype(dtype)

  def one(spec: ParamSpec, k):
    if spec.init == "zeros":
      return jnp.zeros(spec.shape, dtype)
    if spec.init == "ones":
      return jnp.ones(spec.shape, dtype)
    std = spec.fan_in**-0.5
    return (std * jax.random.normal(k, spec.shape, jnp.float32)).astype(dtype)

  return jax.tree_util.tree_unflatten(
    treedef, [one(s, k) for s, k in zip(leaves, keys)]
  )


# Always under jit, sharded or not, so that both give the same bits (XLA folds
# the std into normal()'s own scale factor, which eager dispatch does not).
_init_jit = jax.jit(_init_leaves, static_argnums=0)


def init_params(cfg: ModelConfig, key: jax.Array, *, shardings=None) -> Params:
  """Random initialisation: N(0, 1/fan_in) matrices, unit (or zero) norms.

  Args:
    cfg: the model config (shapes from `param_specs(cfg)`).
    key: a PRNG key; leaf i draws from `jax.random.split(key, n_leaves)[i]`.
    shardings: optional placement, in the forms the loaders take
      (`jaxllm.sharding.resolve_shardings`): a Mesh (the logical-axis rules,
      `jaxllm.sharding.param_shardings(cfg, mesh)`), one Sharding for every
      parameter, or a Params tree of Shardings. The initialiser then runs
      under `jax.jit` with these `out_shardings`, so every device computes
      only its own shards and no full copy of the parameters ever exists on
      one device or host. The values equal the unsharded ones bit for bit
      (both run under jit, and threefry random bits do not depend on the
      sharding).

  Returns:
    Params with `cfg.param_dtype` leaves.

  Raises:
    ValueError: "init_params: shardings ..." for another type, a tree that
      does not match the parameters, or a sharding that does not fit its
      parameter's shape.
  """
  if shardings is None:
    return _init_jit(cfg, key)
  from jaxllm.sharding import resolve_shardings  # sharding imports this module

  tree = resolve_shardings(cfg, shardings, "init_params")
  return jax.jit(_init_leaves, static_argnums=0, out_shardings=tree)(cfg, key)


def abstract_params(cfg: ModelConfig) -> Params:
  """ShapeDtypeStructs of the parameters (no memory allocated)."""
  dtype = jnp.dtype(cfg.param_dtype)
  return _map_specs(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), param_specs(cfg))


def logical_axes(cfg: ModelConfig) -> Params:
  """The logical axis names of every parameter (for sharding rules)."""
  return _map_specs(lambda s: s.axes, param_specs(cfg))


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def check_params(cfg: ModelConfig, params: Params) -> None:
  """Raise ValueError naming the first parameter whose shape does not match cfg
  (an int8-quantised matrix, `jaxllm.quant.Int8Weight`, counts as one
  parameter of its codes' shape)."""
  want = abstract_params(cfg)
  w_flat, w_def = jax.tree_util.tree_flatten_with_path(want)
  try:
    g_flat = jax.tree_util.tree_flatten_with_path(
      params, is_leaf=lambda x: isinstance(x, Int8Weight)
    )[0]
  except Exception as e:  # pragma: no cover - defensive
    raise ValueError(f"params are not a Params tree: {e}") from e
  w_paths = {jax.tree_util.keystr(p): v for p, v in w_flat}
  g_paths = {jax.tree_util.keystr(p): v for p, v in g_flat}
  for p in w_paths:
    if p not in g_paths:
      raise ValueError(f"missing parameter {p} (expected shape {w_paths[p].shape})")
  for p in g_paths:
    if p not in w_paths:
      raise ValueError(f"unexpected parameter {p} for this config")
    if tuple(g_paths[p].shape) != tuple(w_paths[p].shape):
      raise ValueError(
        f"parameter {p} has shape {tuple(g_paths[p].shape)}, "
        f"config expects {tuple(w_paths[p].shape)}"
      )
