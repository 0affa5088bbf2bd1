"""Import llama-architecture GGUF checkpoints (llama.cpp's file format).

`load_gguf(path)` returns `(ModelConfig, Params)`: the architecture metadata is
read into a ModelConfig and every tensor is dequantised to float (with the
`gguf` package's reference dequantiser; Q4_0/Q4_1/Q8_0/F16/F32/BF16 and the
k-quants all go through it) and mapped onto our Params layout. `open_gguf`
parses the header itself (`GGUFFile`: metadata dict + tensor table + memmap),
which is much faster than gguf.GGUFReader on a large vocabulary and lets the
model and the tokenizer (`Tokenizer.from_gguf`) share one parse. Tensors
are dequantised one at a time and each is placed on its device(s) at once
(`shardings=`, e.g. a Mesh), so the host never holds the whole model.

Three facts about GGUF that this file handles:

* Shapes are stored in ggml order (fastest-varying dim first), so a Linear
  weight that Hugging Face stores as [out, in] is listed as [in, out]. We
  read row-major numpy arrays, i.e. [out, in]; we transpose to our
  x @ W orientation.
* llama.cpp's RoPE rotates interleaved pairs (2i, 2i+1), HF rotates halves
  (i, i + K/2). convert_hf_to_gguf therefore permutes the rows of the Q and K
  projections inside each head: HF row a*K/2 + j (a in {0,1}) becomes row
  2j + a. `unpermute_rotary` inverts this so our rotate-half RoPE is correct.
* Llama-3 RoPE scaling is not stored as metadata but as a `rope_freqs.weight`
  tensor of per-frequency divisors; we fit the llama3 parameters back from it
  and check the fit reproduces the tensor.

Tensor names, layout transforms and which tensors carry the rotary
permutation are not written here: they come from the family's entry in
`jaxllm.hf.FAMILY_TABLE` (`TensorName.gguf`, `.transform`, `.gguf_rotary`),
the one table HF import and export read too; `GGUF_ARCHS` maps a file's
architecture to its entry.

Shape letters: O output rows, I input columns of a [out, in] matrix, K head
dim, K2 = K / 2 RoPE frequencies.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from typing import Any, Optional

import jax.numpy as jnp
import numpy as np

from jaxllm import hf as hf_lib
from jaxllm.config import DTYPES, ModelConfig, RopeScaling
from jaxllm.params import LayerParams, Params, check_params

GGUF_MAGIC = b"GGUF"
# GGUF `general.architecture` -> the jaxllm.hf.FAMILY_TABLE entry whose
# `gguf` names and transforms map its tensors (llama.cpp writes Mistral
# checkpoints as "llama" too).
GGUF_ARCHS = {"llama": "llama"}
SUPPORTED_ARCHS = tuple(GGUF_ARCHS)


# ----------------------------------------------------------------------------
# Reading the file
# ----------------------------------------------------------------------------
# The header is parsed here with `struct` (gguf.GGUFReader builds a numpy view
# per string and takes ~5-10 s on a 49k-token vocabulary); tensor data is a
# memmap, dequantised by the gguf package.
_SCALARS = {
  0: "<B",
  1: "<b",
  2: "<H",
  3: "<h",
  4: "<I",
  5: "<i",
  6: "<f",
  7: "<?",
  10: "<Q",
  11: "<q",
  12: "<d",
}
_STRING, _ARRAY = 8, 9


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  name: str
  ggml_type: int  # gguf.GGMLQuantizationType value
  shape: tuple[int, ...]  # row-major (numpy) order, i.e. reversed ggml dims
  offset: int  # absolute byte offset in the file
  n_bytes: int


class _Cursor:
  """Little-endian reads from a bytes-like buffer."""

  def __init__(self, buf):
    self.buf, self.pos = buf, 0

  def scalar(self, fmt):
    (v,) = struct.unpack_from(fmt, self.buf, self.pos)
    self.pos += struct.calcsize(fmt)
    return v

  def string(self):
    n = self.scalar("<Q")
    if self.pos + n > len(self.buf):
      raise struct.error("string runs past the end of the file")
    s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", "replace")
    self.pos += n
    return s

  def value(self, vtype):
    if vtype in _SCALARS:
      v = self.scalar(_SCALARS[vtype])
      return bool(v) if vtype == 7 else v
    if vtype == _STRING:
      return self.string()
    if vtype == _ARRAY:
      itype, n = self.scalar("<I"), self.scalar("<Q")
      if itype in _SCALARS and itype != 7:
        dt = np.dtype(_SCALARS[itype])
        if self.pos + n * dt.itemsize > len(self.buf):
          raise struct.error("array runs past the end of the file")
        arr = np.frombuffer(self.buf, dt, n, self.pos)
        self.pos += n * dt.itemsize
        return arr.tolist()
      return [self.value(itype) for _ in range(n)]
    raise ValueError(f"unknown GGUF value type {vtype}")


class GGUFFile:
  """A parsed GGUF file: `metadata` (key -> Python value), `tensors`
  (name -> TensorInfo, in file order) and `array(name)` to dequantise one."""

  def __init__(self, path: str):
    import gguf  # imported lazily: only GGUF users need it

    self.path = path = os.fspath(path)
    if not os.path.isfile(path):
      raise ValueError(f"GGUF file {path!r} does not exist")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      magic = f.read(4)
    if magic != GGUF_MAGIC:
      raise ValueError(
        f"{path!r} is not a GGUF file: magic number {magic!r}, expected {GGUF_MAGIC!r}"
      )
    self._data = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(self._data)
    cur.pos = 4
    try:
      self.version = cur.scalar("<I")
      if self.version not in (2, 3):
        raise ValueError(
          f"{path!r}: GGUF version {self.version} is not "
          "supported (expected 2 or 3; big-endian files are "
          "not supported)"
        )
      n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
      self.metadata: dict[str, Any] = {}
      for _ in range(n_kv):
        key = cur.string()
        self.metadata[key] = cur.value(cur.scalar("<I"))
      raw = []
      for _ in range(n_tensors):
        name = cur.string()
        dims = [cur.scalar("<Q") for _ in range(cur.scalar("<I"))]
        raw.append((name, dims, cur.scalar("<I"), cur.scalar("<Q")))
    except struct.error as e:
      raise ValueError(
        f"GGUF file {path!r} is truncated or corrupt in its header: {e}"
      ) from e
    align = metadata_value(
      self.metadata, "general.alignment", path, "pos_int", default=32
    )
    start = -(-cur.pos // align) * align
    self.tensors: dict[str, TensorInfo] = {}
    for name, dims, gtype, off in raw:
      try:
        qtype = gguf.GGMLQuantizationType(gtype)
      except ValueError:
        raise ValueError(
          f"{path!r}: tensor {name!r} has unknown ggml type {gtype}"
        ) from None
      block, type_size = gguf.GGML_QUANT_SIZES[qtype]
      n_el = int(np.prod(dims))
      if dims and dims[0] % block:
        raise ValueError(
          f"{path!r}: tensor {name!r} row length {dims[0]} is "
          f"not a multiple of the {qtype.name} block {block}"
        )
      n_bytes = n_el // block * type_size
      if start + off + n_bytes > size:
        raise ValueError(
          f"GGUF file {path!r} is truncated: tensor {name!r} "
          f"needs bytes up to {start + off + n_bytes}, the "
          f"file has {size}"
        )
      if name in self.tensors:
        raise ValueError(f"{path!r}: duplicate tensor {name!r}")
      self.tensors[name] = TensorInfo(
        name, int(qtype), tuple(int(d) for d in reversed(dims)), start + off, n_bytes
      )

  def array(self, name: str) -> np.ndarray:
    """Tensor `name` dequantised to a float32 numpy array (row-major shape)."""
    import gguf

    t = self.tensors[name]
    qtype = gguf.GGMLQuantizationType(t.ggml_type)
    raw = self._data[t.offset : t.offset + t.n_bytes]
    typed = {
      gguf.GGMLQuantizationType.F32: np.float32,
      gguf.GGMLQuantizationType.F16: np.float16,
      gguf.GGMLQuantizationType.F64: np.float64,
    }
    if qtype in typed:
      arr = raw.view(typed[qtype]).reshape(t.shape).astype(np.float32)
    else:
      byte_shape = gguf.quants.quant_shape_to_byte_shape(t.shape, qtype)
      arr = gguf.quants.dequantize(raw.reshape(byte_shape), qtype)
    arr = np.array(arr, dtype=np.float32)  # own the memory (not the memmap)
    if arr.shape != t.shape:
      raise ValueError(f"tensor {name!r}: dequantised shape {arr.shape} != {t.shape}")
    return arr


def open_gguf(path: str) -> GGUFFile:
  """Parse a GGUF file's header. Raises ValueError naming the file for a
  wrong magic number, a truncated header or truncated tensor data."""
  return GGUFFile(path)


# ----------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------
_KINDS = {
  "int": "an integer",
  "uint": "an integer >= 0",
  "pos_int": "an integer > 0",
  "float": "a finite number",
  "pos_float": "a finite number > 0",
  "bool": "a bool",
  "str": "a string",
  "str_list": "an array of strings",
  "int_list": "an array of integers",
}


def metadata_value(
  meta: dict,
  key: str,
  path: str,
  kind: str,
  *,
  default: Any = None,
  required: bool = False,
) -> Any:
  """`meta[key]` checked to be of `kind`, or `default` when absent.

  `kind`: "int", "uint" (>= 0), "pos_int" (> 0), "float" (finite; an int is
  accepted and returned as float), "pos_float", "bool", "str", "str_list" or
  "int_list". GGUF stores a per-layer value as an array; only single values
  are supported for scalar kinds.

  Raises:
    ValueError: naming the file and the key, when the key is missing and
      `required`, or when its value is of the wrong type or out of range.
  """
  if key not in meta:
    if required:
      raise ValueError(f"{path!r}: missing GGUF metadata key {key!r}")
    return default
  v = meta[key]
  if isinstance(v, list) and not kind.endswith("_list"):
    raise ValueError(
      f"{path!r}: metadata {key!r} is a per-layer list {v[:4]}"
      "...; only a single value is supported"
    )
  if not hf_lib.kind_ok(v, kind):
    shown = f"a {len(v)}-element array" if isinstance(v, list) else repr(v)
    raise ValueError(
      f"{path!r}: GGUF metadata {key!r} must be {_KINDS[kind]}, "
      f"got {type(v).__name__} {shown}"
    )
  return float(v) if kind in ("float", "pos_float") else v


def _get(
  meta: dict, key: str, path: str, default=None, required=True, kind: str = "pos_int"
):
  return metadata_value(meta, key, path, kind, default=default, required=required)


def llama3_scaling_from_factors(
  factors_K2: np.ndarray,
  head_dim: int,
  rope_theta: float,
  original_max_position: int = 8192,
) -> Optional[RopeScaling]:
  """Fit Llama-3 RoPE scaling parameters to llama.cpp's rope_freqs divisors.

  Llama-3 divides inverse frequency i by f_i: the full factor F for long
  wavelengths, 1 for short ones, and 1 / ((1 - s)/F + s) in between, with
  s = (P / wavelen - lo) / (hi - lo) linear in 1/wavelen. Only the ratios
  P/lo, P/hi matter, so P (original context) is taken from metadata (default
  8192) and lo, hi are solved by a least-squares line through the middle
  band. Raises ValueError when the factors are not of that form.
  """
  f = np.asarray(factors_K2, np.float64)
  if f.shape != (head_dim // 2,):
    raise ValueError(f"rope_freqs has shape {f.shape}, expected ({head_dim // 2},)")
  F = float(f.max())
  if np.allclose(f, 1.0, rtol=0, atol=1e-6):
    return None
  inv = 1.0 / rope_theta ** (np.arange(0, head_dim, 2) / head_dim)
  x = inv / (2 * np.pi)  # 1 / wavelength
  mid = (f > 1 + 1e-4) & (f < F - 1e-4 * F)
  if mid.sum() < 2:
    raise ValueError(
      "rope_freqs: fewer than two frequencies in the "
      "interpolated band; cannot recover llama3 rope scaling"
    )
  s = (1.0 / f[mid] - 1.0 / F) / (1.0 - 1.0 / F)
  a, b = np.polyfit(x[mid], s, 1)
  P = float(original_max_position)
  lo = -b * P / a
  hi = lo + P / a
  try:
    rs = RopeScaling(
      factor=round(F, 6),
      low_freq_factor=round(float(lo), 4),
      high_freq_factor=round(float(hi), 4),
      original_max_position=int(original_max_position),
    )
  except ValueError as e:  # e.g. a fitted high_freq_factor <= low_freq_factor
    raise ValueError(
      f"rope_freqs {f} are not llama3-style scaling factors ({e})"
    ) from e
  # Check: recompute the divisors from the fitted parameters.
  wavelen = 1.0 / x
  smooth = (P / wavelen - rs.low_freq_factor) / (
    rs.high_freq_factor - rs.low_freq_factor
  )
  mid_f = 1.0 / ((1 - smooth) / rs.factor + smooth)
  refit = np.where(
    wavelen > P / rs.low_freq_factor,
    rs.factor,
    np.where(wavelen < P / rs.high_freq_factor, 1.0, mid_f),
  )
  if not np.allclose(refit, f, rtol=1e-4, atol=1e-6):
    raise ValueError(f"rope_freqs {f} are not llama3-style scaling factors")
  return rs


def config_from_metadata(
  meta: dict,
  path: str = "<gguf>",
  rope_freqs: Optional[np.ndarray] = None,
  tied: bool = True,
  vocab_size: Optional[int] = None,
  dtype: str = "float32",
) -> ModelConfig:
  """A ModelConfig from llama-architecture GGUF metadata."""
  arch = meta.get("general.architecture")
  if arch not in SUPPORTED_ARCHS:
    raise ValueError(
      f"{path!r}: unsupported GGUF architecture {arch!r}; supported: {SUPPORTED_ARCHS}"
    )
  g = lambda k, **kw: _get(meta, f"{arch}.{k}", path, **kw)
  d_model = g("embedding_length")
  n_heads = g("attention.head_count")
  n_kv = g("attention.head_count_kv", default=n_heads, required=False)
  head_dim = g("attention.key_length", default=d_model // n_heads, required=False)
  rot = g("rope.dimension_count", default=head_dim, required=False)
  if rot != head_dim:
    raise ValueError(
      f"{path!r}: partial rotary (rope.dimension_count={rot} "
      f"< head_dim={head_dim}) is not supported"
    )
  theta = g("rope.freq_base", default=10000.0, required=False, kind="pos_float")
  if vocab_size is None:
    vocab_size = g("vocab_size", default=None, required=False)
    if vocab_size is None:
      vocab_size = len(_get(meta, "tokenizer.ggml.tokens", path, kind="str_list"))
  scaling_type = g("rope.scaling.type", default="none", required=False, kind="str")
  if scaling_type not in ("none", "llama3"):
    raise ValueError(
      f"{path!r}: rope scaling type {scaling_type!r} is not "
      "supported (ModelConfig supports llama3 only)"
    )
  omp = g("rope.scaling.original_context_length", default=8192, required=False)
  n_layers = g("block_count")
  d_ff = g("feed_forward_length")
  eps = g("attention.layer_norm_rms_epsilon", kind="pos_float")
  max_seq_len = g("context_length", default=2048, required=False)
  rope_scaling = None
  if rope_freqs is not None:
    rope_scaling = llama3_scaling_from_factors(rope_freqs, head_dim, theta, omp)
  return hf_lib.build_config(
    repr(path),
    dtype=dtype,
    vocab_size=int(vocab_size),
    d_model=d_model,
    n_layers=n_layers,
    n_heads=n_heads,
    n_kv_heads=n_kv,
    d_ff=d_ff,
    head_dim=head_dim,
    activation="silu",
    norm_eps=eps,
    rope_theta=theta,
    rope_scaling=rope_scaling,
    tie_embeddings=tied,
    max_seq_len=max_seq_len,
  )


# ----------------------------------------------------------------------------
# Tensors
# ----------------------------------------------------------------------------
def unpermute_rotary(w_OxI: np.ndarray, n_heads: int) -> np.ndarray:
  """Undo convert_hf_to_gguf's Q/K row permutation (interleaved -> halves).

  Within each head the GGUF row 2j + a holds HF row a*K/2 + j.
  """
  O, I = w_OxI.shape
  K = O // n_heads
  if K * n_heads != O or K % 2:
    raise ValueError(
      f"cannot unpermute {w_OxI.shape} into {n_heads} heads of even size"
    )
  return w_OxI.reshape(n_heads, K // 2, 2, I).swapaxes(1, 2).reshape(O, I)


def _params_from(
  cfg: ModelConfig,
  names,
  shape_of,
  get,
  path: str,
  family: str,
  place,
) -> Params:
  """Params from GGUF tensors, one tensor at a time.

  `names`: the tensor names available; `shape_of(name)`: a tensor's
  row-major shape (from the header, no data read); `get(name)`: the tensor as
  a float numpy array; `place(x, loc)`: our array (layout and dtype done by
  the caller's `place`) for Params location `loc` ((field,) or (layer,
  field)). Names and shapes are all checked before the first `get`.
  """
  entries = []
  for p, i, t, shape in hf_lib.expand_tensors(cfg, family):
    name = t.gguf.format(i=i)
    if name not in names:
      raise ValueError(f"{path!r}: missing tensor {name!r}")
    entries.append((p, i, t, shape, name))
  used = {e[-1] for e in entries}
  extra = sorted(set(names) - used - {"rope_freqs.weight"})
  if extra:
    raise ValueError(
      f"{path!r}: unexpected tensors {extra[:8]} for a {family} checkpoint"
    )
  for p, i, t, shape, name in entries:
    want = tuple(hf_lib.TRANSFORMS[t.transform].hf_shape(shape))
    if tuple(shape_of(name)) != want:
      raise ValueError(
        f"{path!r}: tensor {name!r} of shape {list(shape_of(name))} does "
        f"not fit {p.format(i=i)} {list(shape)} (expected "
        f"{list(want)})"
      )
  top: dict = {}
  layers = [dict() for _ in range(cfg.n_layers)]
  for p, i, t, shape, name in entries:
    x = get(name)
    if t.gguf_rotary:  # heads: the N of our [D, N, K]
      x = unpermute_rotary(x, shape[1])
    x = hf_lib.TRANSFORMS[t.transform].load(x, shape)
    if i is None:
      top[p] = place(x, (p,))
    else:
      field = p.rsplit(".", 1)[1]
      layers[i][field] = place(x, (i, field))
  params = Params(
    embed=top["embed"],
    layers=tuple(LayerParams(**d) for d in layers),
    final_norm=top["final_norm"],
    lm_head=top.get("lm_head"),
  )
  try:
    check_params(cfg, params)
  except ValueError as e:
    raise ValueError(f"{path!r}: {e}") from e
  return params


def params_from_tensors(
  cfg: ModelConfig,
  tensors: dict[str, np.ndarray],
  path: str = "<gguf>",
  family: str = "llama",
) -> Params:
  """Map GGUF tensors ([out, in] row-major float arrays) onto Params (jnp
  arrays in cfg.param_dtype on the default device).

  Names, layouts and the Q/K row permutation come from the family's entry
  in `jaxllm.hf.FAMILY_TABLE` (the table HF import / export read too).

  Raises:
    ValueError: naming `path`, for a missing or unexpected tensor, or a
      tensor of the wrong shape.
  """
  dt = jnp.dtype(cfg.param_dtype)
  return _params_from(
    cfg,
    tensors,
    lambda n: np.shape(tensors[n]),
    tensors.__getitem__,
    path,
    family,
    lambda x, loc: jnp.asarray(x, dtype=dt),
  )


def load_gguf(
  path, dtype: str = "float32", shardings: hf_lib.Shardings = None
) -> tuple[ModelConfig, Params]:
  """Read a llama-architecture GGUF (a path or an open GGUFFile) into
  (ModelConfig, Params).

  Weights are dequantised to float32 and then cast to `dtype` (also used as
  the config's compute and parameter dtype). The config (metadata, the
  vocabulary size from token_embd's shape, tied embeddings from the absence
  of output.weight) is built and checked, and every tensor's name and shape
  checked against it, before any weight is dequantised (only a
  `rope_freqs.weight` tensor, part of the config, is read earlier).

  `shardings` places each array, as in `jaxllm.hf.load_hf`: None (default)
  the default device; a Mesh (`jaxllm.sharding.param_shardings(cfg, mesh)`),
  one Sharding, or a Params tree of Shardings, checked against the config
  before any weight is read. The values are the same bits whatever the
  sharding.

  Memory: tensors are dequantised, converted and placed one at a time, so
  the host holds about one tensor beyond the placed arrays (as float32, plus
  its copy in our layout and `dtype`), never the whole model; the file itself
  is a memmap. Every process dequantises whole tensors and copies only its
  addressable shards to its devices (`jaxllm.hf.place_array`): reading only
  a process's slices would need the layout transforms and the rotary
  permutation inverted per slice (and whole quantisation blocks), which is
  not done.

  Raises:
    ValueError: naming the file and the metadata key or tensor, for missing
      or wrongly typed metadata, a config ModelConfig rejects, or missing,
      unexpected or wrongly shaped tensors; also for an unknown `dtype`, and
      "load_gguf: shardings ..." for a `shardings` that does not fit the
      config (`jaxllm.hf.resolve_shardings`).
  """
  if dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r} is not one of {DTYPES}")
  f = path if isinstance(path, GGUFFile) else open_gguf(path)
  arch = f.metadata.get("general.architecture")
  # (an unsupported arch is reported by config_from_metadata below)
  names = hf_lib.FAMILY_TABLE[GGUF_ARCHS.get(arch, "llama")].tensors
  embed, head = names["embed"].gguf, names["lm_head"].gguf
  if embed not in f.tensors:
    raise ValueError(f"{f.path!r}: missing tensor {embed!r}")
  vocab = f.tensors[embed].shape[0]
  meta_vocab = metadata_value(f.metadata, f"{arch}.vocab_size", f.path, "pos_int")
  if meta_vocab is not None and meta_vocab != vocab:
    raise ValueError(
      f"{f.path!r}: {arch}.vocab_size={meta_vocab} but token_embd has {vocab} rows"
    )
  rope_freqs = (
    f.array("rope_freqs.weight") if "rope_freqs.weight" in f.tensors else None
  )
  cfg = config_from_metadata(
    f.metadata,
    f.path,
    rope_freqs=rope_freqs,
    tied=head not in f.tensors,
    vocab_size=vocab,
    dtype=dtype,
  )
  tree = hf_lib.resolve_shardings(cfg, shardings, "load_gguf")
  dt = jnp.dtype(cfg.param_dtype)

  def place(x, loc):
    sharding = hf_lib.sharding_at(tree, loc)
    if sharding is None:  # as params_from_tensors
      return jnp.asarray(x, dtype=dt)
    return hf_lib.place_array(np.asarray(x).astype(dt, copy=False), sharding)

  params = _params_from(
    cfg,
    f.tensors,
    lambda n: f.tensors[n].shape,
    f.array,
    f.path,
    GGUF_ARCHS[arch],
    place,
  )
  return cfg, params
