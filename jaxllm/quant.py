"""Weight-only int8 quantisation, and the one product every weight goes through.

`quantize_int8(params)` replaces each projection matrix of a parameter tree
(decoder-only `Params` or `EncDecParams`) by an `Int8Weight`: int8 codes and
one float32 scale per output channel (symmetric, absmax / 127, round to
nearest). Norms and biases stay as they are. The forward passes call
`dense(spec, x, w)` and `take_rows(table, ids)` for every weight; both accept
a plain array or an `Int8Weight`, so a quantised tree runs through every
driver (generate, particle filtering, beam search, A*, speculative decoding,
encoder-decoder) unchanged.

Dequantisation happens inside the product: the codes are cast to the
activation dtype, contracted, and the per-output-channel scale multiplies the
[..., out] result, which equals the product with the dequantised matrix
exactly in real arithmetic because every scale belongs to one output column.
On TPU / GPU XLA fuses the cast into the matmul (the weights are read as int8,
a quarter of float32's bytes); on XLA:CPU the cast is a separate pass, so
int8 saves memory there but not time (measured in `experiments/bench_decode.py
--weights=int8`).

`quantize_int8(params, block_size=32)` instead keeps one scale per block of
32 consecutive input entries (as GGUF's Q8_0 does): far closer to the float
weights, dequantised (cast and scaled) before the product.

Per-output-channel symmetric int8 is the weight-only scheme of LLM.int8()
without its outlier decomposition (Dettmers et al., 2022, Sec. 3.1 "vector-wise
quantization", eq. 1-2) and of the int8 weight-only modes of common serving
stacks. Quantising is a transform of a tree, not a config option: the shapes
the config describes do not change, and loaders, checkpoints and training see
float weights. Quantise after loading. On a mesh, quantise the sharded tree
(jit lets GSPMD place the codes and scales; `jaxllm.sharding`'s rules
describe float trees only, and no sharded int8 run has been tested yet).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Int8Weight:
  """A matrix w ~= q * scale.

  q: int8 codes, the shape of w. input_axes: the contracted axes of w
  (static). block_size (static): 0 for one scale per output channel, then
  scale is float32 of w's shape without its `input_axes` (the trailing axes of
  the products in `dense`; for the embedding table [V, D], the rows [V]);
  else one scale per block of `block_size` consecutive entries along the last
  input axis, and scale has w's shape with that axis divided by block_size.
  """

  q: Any
  scale: Any
  input_axes: tuple[int, ...] = dataclasses.field(metadata={"static": True})
  block_size: int = dataclasses.field(default=0, metadata={"static": True})

  @property
  def shape(self):
    return self.q.shape

  def full_scale(self) -> jax.Array:
    """The scale broadcast (per channel) or repeated (per block) to q's shape."""
    if self.block_size:
      return jnp.repeat(self.scale, self.block_size, axis=self.input_axes[-1])
    return jnp.expand_dims(self.scale, self.input_axes)

  def dequantize(self, dtype=jnp.float32) -> jax.Array:
    """The matrix q * scale, in `dtype`."""
    return (self.q.astype(jnp.float32) * self.full_scale()).astype(dtype)


# Input (contracted) axes of each projection, by field name, in the layouts of
# `jaxllm.params` (wq [D, H, K], wo [H, K, D], w_gate [D, F], lm_head [D, V],
# ...). The embedding table [V, D] is scaled per row: a row is an output
# channel of the tied head ("...d,vd->...v") and what a lookup reads.
INPUT_AXES = {
  "wq": (0,),
  "wk": (0,),
  "wv": (0,),
  "wo": (0, 1),
  "w_gate": (0,),
  "w_up": (0,),
  "w_down": (0,),
  "lm_head": (0,),
  "embed": (1,),
}


def quantize_matrix(
  w: jax.Array, input_axes: tuple[int, ...], block_size: int = 0
) -> Int8Weight:
  """Symmetric int8 codes of w, one scale per output channel (block_size 0)
  or per block of `block_size` entries along the last input axis.

  scale = max |w| over the channel (or block) / 127 (1 where it is all zero);
  q = round(w / scale), in [-127, 127]. The error of every entry is at most
  its scale / 2.

  Raises:
    ValueError: if block_size does not divide the last input axis.
  """
  w32 = jnp.asarray(w, jnp.float32)
  if not block_size:
    amax = jnp.max(jnp.abs(w32), axis=input_axes, keepdims=True)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)
    q = jnp.clip(jnp.round(w32 / scale), -127, 127).astype(jnp.int8)
    return Int8Weight(q, jnp.squeeze(scale, axis=input_axes), input_axes)
  a, n = input_axes[-1], w.shape[input_axes[-1]]
  if n % block_size:
    raise ValueError(
      f"quantize_int8: block_size={block_size} does not divide axis {a} "
      f"(size {n}) of a {tuple(w.shape)} matrix"
    )
  blocks = w32.reshape(w.shape[:a] + (n // block_size, block_size) + w.shape[a + 1 :])
  amax = jnp.max(jnp.abs(blocks), axis=a + 1, keepdims=True)
  scale = jnp.where(amax > 0, amax / 127.0, 1.0)
  q = jnp.clip(jnp.round(blocks / scale), -127, 127).astype(jnp.int8)
  return Int8Weight(
    q.reshape(w.shape), jnp.squeeze(scale, axis=a + 1), input_axes, block_size
  )


def _quantize_tree(node, block_size: int):
  if isinstance(node, (list, tuple)):
    return type(node)(_quantize_tree(n, block_size) for n in node)
  if not dataclasses.is_dataclass(node) or isinstance(node, Int8Weight):
    return node
  updates = {}
  for f in dataclasses.fields(node):
    value = getattr(node, f.name)
    if f.name in INPUT_AXES and value is not None and not isinstance(value, Int8Weight):
      updates[f.name] = quantize_matrix(value, INPUT_AXES[f.name], block_size)
    else:
      updates[f.name] = _quantize_tree(value, block_size)
  return dataclasses.replace(node, **updates)


@functools.partial(jax.jit, static_argnames="block_size")
def quantize_int8(params, block_size: int = 0):
  """Every projection matrix of `params` as an `Int8Weight` (see module doc).

  Args:
    params: a `jaxllm.params.Params` or `jaxllm.encdec.EncDecParams` tree of
      float arrays (any float dtype); already quantised leaves stay as they are.
    block_size: 0 (default): one scale per output channel; else one scale per
      block of this many consecutive entries along each matrix's last input
      axis (GGUF's Q8_0 uses blocks of 32). Blocks follow the weights' local
      range far better (on SmolLM2: see experiments/bench_precision.py), but
      the codes are then dequantised before the product rather than scaled
      after it.

  Returns:
    The same tree with wq, wk, wv, wo, w_gate, w_up, w_down, lm_head and embed
    (and the cross-attention projections of an encoder-decoder) replaced by
    Int8Weight; about a quarter of float32's bytes.

  Raises:
    TypeError: if params is not a parameter dataclass tree.
    ValueError: a negative block_size, or one that does not divide a
      matrix's last input axis (naming the shape).
  """
  if not isinstance(block_size, int) or block_size < 0:
    raise ValueError(
      f"quantize_int8: block_size must be an int >= 0, got {block_size!r}"
    )
  if not dataclasses.is_dataclass(params):
    raise TypeError(
      f"quantize_int8: params must be a Params or EncDecParams tree, got "
      f"{type(params).__name__}"
    )
  return _quantize_tree(params, block_size)


def dequantize_int8(params):
  """`params` with every Int8Weight replaced by its float32 matrix q * scale
  (the float tree that a quantised tree computes with)."""
  return jax.tree_util.tree_map(
    lambda w: w.dequantize() if isinstance(w, Int8Weight) else w,
    params,
    is_leaf=lambda w: isinstance(w, Int8Weight),
  )


def dense(spec: str, x: jax.Array, w, preferred_element_type=None) -> jax.Array:
  """jnp.einsum(spec, x, w) for a float matrix or an Int8Weight.

  `spec` must put w's output axes last in the result, in w's order (all the
  model's products do: "btd,dhk->bthk", "bthk,hkd->btd", "...d,dv->...v",
  "...d,vd->...v"). A float w is used as it is (an lm head casts it to x's
  dtype first); a per-channel Int8Weight's codes are cast to x's dtype and
  its scale multiplies the result; a per-block one is dequantised first.
  preferred_element_type: as in jnp.einsum.
  """
  if isinstance(w, Int8Weight) and w.block_size:
    w = w.q.astype(x.dtype) * w.full_scale().astype(x.dtype)
  elif isinstance(w, Int8Weight):
    out = jnp.einsum(
      spec, x, w.q.astype(x.dtype), preferred_element_type=preferred_element_type
    )
    return out * w.scale.astype(out.dtype)
  return jnp.einsum(spec, x, w, preferred_element_type=preferred_element_type)


def take_rows(table, ids: jax.Array, dtype) -> jax.Array:
  """table[ids] in `dtype` (an embedding lookup) for an array or Int8Weight."""
  if isinstance(table, Int8Weight):  # rows are output channels (axis 0)
    scale = table.scale[ids]
    if table.block_size:
      scale = jnp.repeat(scale, table.block_size, axis=-1)
    else:
      scale = scale[..., None]
    return table.q[ids].astype(dtype) * scale.astype(dtype)
  return table[ids].astype(dtype)


def param_bytes(params) -> int:
  """Bytes of every array in a parameter tree (int8 codes count 1 byte)."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))
