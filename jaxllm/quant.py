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

Per-output-channel symmetric int8 is the weight-only scheme of LLM.int8()
without its outlier decomposition (Dettmers et al., 2022, Sec. 3.1 "vector-wise
quantization", eq. 1-2) and of the int8 weight-only modes of common serving
stacks. Quantising is a transform of a tree, not a config option: the shapes
the config describes do not change, and loaders, checkpoints and training see
float weights. Quantise after loading (and after sharding: under jit the
codes keep their input's sharding).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Int8Weight:
  """A matrix w ~= q * scale, the scale broadcast over w's input axes.

  q: int8 codes, the shape of w. scale: float32, the shape of w without its
  `input_axes` (w's output channels: the trailing axes of the products in
  `dense`; for the embedding table [V, D], the rows [V]). input_axes: the
  contracted axes of w (static).
  """

  q: Any
  scale: Any
  input_axes: tuple[int, ...] = dataclasses.field(metadata={"static": True})

  @property
  def shape(self):
    return self.q.shape

  def dequantize(self, dtype=jnp.float32) -> jax.Array:
    """The matrix q * scale, in `dtype`."""
    scale = jnp.expand_dims(self.scale, self.input_axes)
    return (self.q.astype(jnp.float32) * scale).astype(dtype)


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


def quantize_matrix(w: jax.Array, input_axes: tuple[int, ...]) -> Int8Weight:
  """Symmetric per-output-channel int8 codes of w.

  scale = max |w| over `input_axes` / 127 (1 where a channel is all zero);
  q = round(w / scale), in [-127, 127]. The error of every entry is at most
  scale / 2.
  """
  w32 = jnp.asarray(w, jnp.float32)
  amax = jnp.max(jnp.abs(w32), axis=input_axes, keepdims=True)
  scale = jnp.where(amax > 0, amax / 127.0, 1.0)
  q = jnp.clip(jnp.round(w32 / scale), -127, 127).astype(jnp.int8)
  return Int8Weight(
    q=q, scale=jnp.squeeze(scale, axis=input_axes), input_axes=input_axes
  )


def _quantize_tree(node):
  if isinstance(node, (list, tuple)):
    return type(node)(_quantize_tree(n) for n in node)
  if not dataclasses.is_dataclass(node) or isinstance(node, Int8Weight):
    return node
  updates = {}
  for f in dataclasses.fields(node):
    value = getattr(node, f.name)
    if f.name in INPUT_AXES and value is not None and not isinstance(value, Int8Weight):
      updates[f.name] = quantize_matrix(value, INPUT_AXES[f.name])
    else:
      updates[f.name] = _quantize_tree(value)
  return dataclasses.replace(node, **updates)


@jax.jit
def quantize_int8(params):
  """Every projection matrix of `params` as an `Int8Weight` (see module doc).

  Args:
    params: a `jaxllm.params.Params` or `jaxllm.encdec.EncDecParams` tree of
      float arrays (any float dtype); already quantised leaves stay as they are.

  Returns:
    The same tree with wq, wk, wv, wo, w_gate, w_up, w_down, lm_head and embed
    (and the cross-attention projections of an encoder-decoder) replaced by
    Int8Weight; about a quarter of float32's bytes.

  Raises:
    TypeError: if params is not a parameter dataclass tree.
  """
  if not dataclasses.is_dataclass(params):
    raise TypeError(
      f"quantize_int8: params must be a Params or EncDecParams tree, got "
      f"{type(params).__name__}"
    )
  return _quantize_tree(params)


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
  dtype first); an Int8Weight's codes are cast to x's dtype and its scale
  multiplies the result. preferred_element_type: as in jnp.einsum.
  """
  if isinstance(w, Int8Weight):
    out = jnp.einsum(
      spec, x, w.q.astype(x.dtype), preferred_element_type=preferred_element_type
    )
    return out * w.scale.astype(out.dtype)
  return jnp.einsum(spec, x, w, preferred_element_type=preferred_element_type)


def take_rows(table, ids: jax.Array, dtype) -> jax.Array:
  """table[ids] in `dtype` (an embedding lookup) for an array or Int8Weight."""
  if isinstance(table, Int8Weight):
    rows = table.q[ids].astype(dtype)
    return rows * table.scale[ids][..., None].astype(dtype)
  return table[ids].astype(dtype)


def param_bytes(params) -> int:
  """Bytes of every array in a parameter tree (int8 codes count 1 byte)."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))
