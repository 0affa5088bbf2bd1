"""Meshes and logical-axis sharding rules (the jax-llm-examples habit).

Every array dimension the code shards has a *logical* axis name: parameters
declare theirs in `jaxllm.params.param_specs` (`ParamSpec.axes`), the KV
cache and the population (batch) axis theirs here. ONE table, `RULES`, maps
logical axes to *mesh* axes; every sharding is derived from it, so changing
the parallelism layout is one edit.

Mesh axes (always in this order; absent ones have size 1):

  data   data parallelism: the population (prompts, samples, particles,
         beams, A* rows) is split over it; parameters are replicated.
  fsdp   optional fully-sharded data parallelism: also splits the population,
         and additionally shards the parameters' d_model dimension.
  model  tensor parallelism: attention heads, KV-cache heads, MLP hidden
         units and the vocabulary are split over it.

  mesh = make_mesh("data=4,model=2")           # 8 devices
  params = init_params(cfg, key, shardings=param_shardings(cfg, mesh))
  # or: params = shard_params(params, cfg, mesh)
  tokens = shard_batch(tokens_BxT, mesh)

Under `jax.jit` with sharded inputs, XLA's SPMD partitioner (GSPMD) places the
rest; `constrain` pins an intermediate to its logical sharding where
propagation needs help. Measured on 8 CPU devices (tests/test_sharding.py):
a decode step from a cache sharded by these rules keeps it sharded and moves
only the step's new K/V entries; the prefill (`jaxllm.cache.write_new`, a
per-row scatter) and the row gathers of forks, particle resampling, beam
selection and A*'s fork and pool rebuild (`jaxllm.cache.take_rows` with a
blocked [P, N] index) move nothing between devices when P divides the data
axes. A flat row index makes GSPMD all-gather whole cache buffers.

Arithmetic: with `model` > 1 the contractions over heads (attention output
projection) and over d_ff (MLP down projection) become partial sums plus an
all-reduce; with the batch split over `data`, each device runs smaller
matmuls, whose rounding XLA:CPU does not keep identical. Logits therefore
differ from one device at float rounding level (a few 1e-6 on the test
models); tokens match except at near-ties. Parameters initialised or
restored into shardings are bit-identical to the unsharded ones.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxllm.cache import KVCache
from jaxllm.config import ModelConfig
from jaxllm.params import Params, abstract_params, is_spec, param_specs

MESH_AXES = ("data", "fsdp", "model")

MeshAxes = Union[None, str, tuple[str, ...]]

# The one table: logical axis -> mesh axis (or axes, or None = replicated).
# Parameter axes are those of jaxllm.params.param_specs; activation, cache and
# population axes are those of `CACHE_AXES` / `BATCH` below.
RULES: tuple[tuple[str, MeshAxes], ...] = (
  # population / activations
  ("batch", ("data", "fsdp")),  # prompts, samples, particles, beams, rows
  ("sequence", None),  # token positions, KV-cache slots
  ("act_embed", None),  # d_model of activations (replicated)
  # parameters (and the cache's head axes)
  ("vocab", "model"),  # embed rows, lm_head columns, logits
  ("embed", "fsdp"),  # d_model of parameters (FSDP)
  ("heads", "model"),  # query heads
  ("kv_heads", "model"),  # key/value heads (weights and KV cache)
  ("head_dim", None),
  ("mlp", "model"),  # d_ff
)

BATCH = "batch"

# Logical axes of the KV cache buffers (jaxllm.cache.init_cache's layout).
CACHE_AXES = dict(
  k=("batch", "kv_heads", "head_dim", "sequence"),  # [B, Kv, K, S]
  v=("batch", "kv_heads", "sequence", "head_dim"),  # [B, Kv, S, K]
  lengths=("batch",),  # [B]
)


# --------------------------------------------------------------------------
# Meshes
# --------------------------------------------------------------------------


def parse_mesh_spec(spec: Optional[str], n_devices: int) -> dict[str, int]:
  """Axis sizes from a spec like "data=4,model=2" for `n_devices` devices.

  Axes not named get size 1; one axis may be -1 ("the rest"). An empty spec
  (or None) means "data=<n_devices>".

  Returns:
    {"data": d, "fsdp": f, "model": m} with d * f * m == n_devices.

  Raises:
    ValueError: naming the axis and the numbers, for a malformed entry, an
      unknown or repeated axis name, a size < 1 (other than one -1), a -1 that
      does not divide evenly, or sizes whose product is not `n_devices`.
  """
  n_devices = int(n_devices)
  sizes: dict[str, int] = {}
  text = (spec or "").strip()
  if not text:
    return {"data": n_devices, "fsdp": 1, "model": 1}
  for part in text.split(","):
    part = part.strip()
    if not part:
      continue
    name, eq, val = part.partition("=")
    name = name.strip()
    if not eq:
      raise ValueError(
        f"mesh spec {spec!r}: entry {part!r} is not "
        f"'axis=size' (axes: {', '.join(MESH_AXES)})"
      )
    if name not in MESH_AXES:
      raise ValueError(
        f"mesh spec {spec!r}: unknown mesh axis {name!r} "
        f"(known: {', '.join(MESH_AXES)})"
      )
    if name in sizes:
      raise ValueError(f"mesh spec {spec!r}: mesh axis {name!r} given twice")
    try:
      size = int(val.strip())
    except ValueError:
      raise ValueError(
        f"mesh spec {spec!r}: mesh axis {name!r} size {val.strip()!r} is not an integer"
      ) from None
    if size < 1 and size != -1:
      raise ValueError(
        f"mesh spec {spec!r}: mesh axis {name!r} size must be "
        f">= 1 (or -1 for the rest), got {size}"
      )
    sizes[name] = size
  rest = [n for n, s in sizes.items() if s == -1]
  if len(rest) > 1:
    raise ValueError(f"mesh spec {spec!r}: only one axis may be -1, got {rest}")
  known = math.prod(s for s in sizes.values() if s != -1)
  if rest:
    if n_devices % known:
      raise ValueError(
        f"mesh spec {spec!r}: the other axes multiply to "
        f"{known}, which does not divide the {n_devices} "
        f"devices, so mesh axis {rest[0]!r} = -1 has no size"
      )
    sizes[rest[0]] = n_devices // known
  full = {a: sizes.get(a, 1) for a in MESH_AXES}
  prod = math.prod(full.values())
  if prod != n_devices:
    shown = " x ".join(f"{a}={s}" for a, s in full.items())
    raise ValueError(
      f"mesh spec {spec!r}: {shown} = {prod} devices, but "
      f"there are {n_devices} devices (the axis sizes must "
      f"multiply to the device count)"
    )
  return full


def make_mesh(
  spec: Optional[str] = None, devices: Optional[Sequence[Any]] = None
) -> Mesh:
  """A Mesh with axes ("data", "fsdp", "model") from a spec ("data=4,model=2").

  Args:
    spec: see `parse_mesh_spec`; None or "" puts every device on `data`.
    devices: the devices to use (default `jax.devices()`, i.e. all devices of
      all processes); their count must equal the product of the axis sizes.

  Returns:
    A Mesh of Auto axes (GSPMD propagation: shardings of intermediates are
    inferred, `constrain` pins them), device order chosen by `jax.make_mesh`
    (topology-aware on TPU).

  Raises:
    ValueError: a bad spec (`parse_mesh_spec`) or an empty device list.
  """
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("make_mesh: no devices")
  sizes = parse_mesh_spec(spec, len(devices))
  shape = tuple(sizes[a] for a in MESH_AXES)
  # Auto axes: newer JAX defaults make_mesh to Explicit axes (sharding in
  # types), under which the algorithms' gathers would need explicit
  # out_shardings. JAX before AxisType existed has only Auto semantics.
  axis_type = getattr(jax.sharding, "AxisType", None)
  kw = {} if axis_type is None else dict(axis_types=(axis_type.Auto,) * 3)
  return jax.make_mesh(shape, MESH_AXES, devices=devices, **kw)


def mesh_size(mesh: Mesh, axes: MeshAxes) -> int:
  """Number of devices along mesh axis / axes `axes` (1 for None)."""
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes)


# --------------------------------------------------------------------------
# Logical axes -> PartitionSpec / NamedSharding
# --------------------------------------------------------------------------


def _rules_dict(rules) -> dict:
  out = {}
  for name, axes in rules:
    if name in out:
      raise ValueError(f"sharding rules: logical axis {name!r} listed twice")
    out[name] = axes
  return out


def logical_to_spec(
  axes: Sequence[Optional[str]], mesh: Mesh, rules=RULES
) -> PartitionSpec:
  """PartitionSpec of an array whose dimensions have logical names `axes`.

  A `None` logical axis is replicated; mesh axes the rules name but `mesh`
  lacks (e.g. a user-made Mesh with only "data") are dropped.

  Raises:
    ValueError: an unknown logical axis, or one mesh axis used by two
      dimensions of the same array (naming both).
  """
  table = _rules_dict(rules)
  used: dict[str, str] = {}
  out = []
  for name in axes:
    if name is None:
      out.append(None)
      continue
    if name not in table:
      raise ValueError(
        f"unknown logical axis {name!r} (the sharding rules know: {', '.join(table)})"
      )
    target = table[name]
    target = (
      ()
      if target is None
      else ((target,) if isinstance(target, str) else tuple(target))
    )
    for a in target:
      if a not in MESH_AXES:
        raise ValueError(
          f"sharding rules map logical axis {name!r} to "
          f"unknown mesh axis {a!r} (known: "
          f"{', '.join(MESH_AXES)})"
        )
    target = tuple(a for a in target if a in mesh.axis_names)
    for a in target:
      if a in used:
        raise ValueError(
          f"mesh axis {a!r} would shard both logical axes "
          f"{used[a]!r} and {name!r} of one array"
        )
      used[a] = name
    out.append(None if not target else (target[0] if len(target) == 1 else target))
  return PartitionSpec(*out)


def _check_divides(shape, axes, spec: PartitionSpec, mesh: Mesh, what: str) -> None:
  for dim, name, target in zip(shape, axes, spec):
    n = mesh_size(mesh, target)
    if n > 1 and dim % n:
      raise ValueError(
        f"{what}: mesh axis {target!r} of size {n} does not divide logical "
        f"axis {name!r} of size {dim}; pick a mesh whose {target!r} size "
        f"divides {dim}"
      )


def logical_sharding(
  axes: Sequence[Optional[str]],
  mesh: Mesh,
  *,
  shape: Optional[Sequence[int]] = None,
  what: str = "array",
  rules=RULES,
) -> NamedSharding:
  """NamedSharding of an array with logical axes `axes` on `mesh`.

  Args:
    shape: if given, checked: every sharded dimension must divide evenly.
    what: names the array in error messages.

  Raises:
    ValueError: see `logical_to_spec`; a length mismatch between `axes` and
      `shape`; a mesh axis size that does not divide the dimension (naming
      the array, the logical axis, the mesh axis and both sizes).
  """
  spec = logical_to_spec(axes, mesh, rules)
  if shape is not None:
    if len(shape) != len(axes):
      raise ValueError(
        f"{what}: {len(axes)} logical axes {tuple(axes)} for shape {tuple(shape)}"
      )
    _check_divides(shape, axes, spec, mesh, what)
  return NamedSharding(mesh, spec)


# --------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------

_CFG_FIELD = dict(
  vocab="vocab_size",
  embed="d_model",
  heads="n_heads",
  kv_heads="n_kv_heads",
  head_dim="head_dim",
  mlp="d_ff",
)


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules=RULES) -> Params:
  """A Params tree of NamedShardings, from `param_specs(cfg)`'s logical axes.

  Raises:
    ValueError: a parameter declares an unknown logical axis, or a mesh axis
      does not divide a dimension; the message names the parameter, the
      logical axis, the ModelConfig field behind it, the mesh axis and both
      sizes (e.g. model=4 with n_kv_heads=2).
  """
  specs = param_specs(cfg)
  flat, treedef = jax.tree_util.tree_flatten_with_path(specs, is_leaf=is_spec)
  out = []
  for path, s in flat:
    name = "params" + jax.tree_util.keystr(path)
    spec = logical_to_spec(s.axes, mesh, rules)
    for dim, ax, target in zip(s.shape, s.axes, spec):
      n = mesh_size(mesh, target)
      if n > 1 and dim % n:
        field = _CFG_FIELD.get(ax)
        field = f" (ModelConfig.{field})" if field else ""
        raise ValueError(
          f"{name}: mesh axis {target!r} of size {n} does not divide "
          f"logical axis {ax!r} = {dim}{field}; use a mesh whose {target!r} "
          f"size divides {dim}"
        )
    out.append(NamedSharding(mesh, spec))
  return jax.tree_util.tree_unflatten(treedef, out)


def shard_params(params: Params, cfg: ModelConfig, mesh: Mesh, rules=RULES) -> Params:
  """`params` placed on `param_shardings(cfg, mesh)` (jax.device_put).

  For a model too large for one device's memory, initialise or restore
  straight into the shardings instead (`init_params(..., shardings=)`,
  `checkpoint.restore_params(..., sharding=mesh)`, `hf.load_hf(shardings=)`).

  Raises:
    ValueError: see `param_shardings`.
  """
  return jax.device_put(params, param_shardings(cfg, mesh, rules))


# --------------------------------------------------------------------------
# Population (batch) and KV cache
# --------------------------------------------------------------------------


def batch_sharding(
  mesh: Mesh, ndim: int = 1, *, batch: Optional[int] = None, rules=RULES
) -> NamedSharding:
  """Sharding of a population array: dimension 0 over the batch mesh axes,
  the other `ndim - 1` dimensions replicated.

  Raises:
    ValueError: `batch` given and not divisible by the data-parallel size
      (naming both numbers).
  """
  if batch is not None:
    logical_sharding((BATCH,), mesh, shape=(batch,), what="population", rules=rules)
  return logical_sharding((BATCH,) + (None,) * (ndim - 1), mesh, rules=rules)


def data_parallel_size(mesh: Mesh, rules=RULES) -> int:
  """How many ways the population (batch) axis is split on `mesh`."""
  return mesh_size(mesh, logical_to_spec((BATCH,), mesh, rules)[0])


def shard_batch(x, mesh: Mesh, rules=RULES):
  """Place a population array (or a pytree of them) with dimension 0 over the
  data-parallel mesh axes (`batch_sharding`); other dimensions replicated.

  Raises:
    ValueError: a scalar leaf, or a leaf whose dimension 0 is not divisible by
      the data-parallel size, naming both numbers.
  """

  def one(a):
    a = a if isinstance(a, jax.Array) else np.asarray(a)
    if a.ndim == 0:
      raise ValueError("shard_batch: a scalar has no population (batch) axis")
    return jax.device_put(
      a, batch_sharding(mesh, a.ndim, batch=a.shape[0], rules=rules)
    )

  return jax.tree_util.tree_map(one, x)


def cache_shardings(
  cfg: ModelConfig, mesh: Mesh, batch: Optional[int] = None, rules=RULES
) -> KVCache:
  """A KVCache of NamedShardings: rows over the data axes, KV heads over
  `model`, slots and head_dim replicated (`CACHE_AXES`).

  Raises:
    ValueError: the model axis does not divide n_kv_heads, or `batch` (if
      given) is not divisible by the data-parallel size, naming the numbers.
  """
  B = data_parallel_size(mesh, rules) if batch is None else batch
  kshape = (B, cfg.n_kv_heads, cfg.head_dim, 1)
  vshape = (B, cfg.n_kv_heads, 1, cfg.head_dim)
  mk = lambda field, shape: logical_sharding(
    CACHE_AXES[field], mesh, shape=shape, what=f"KV cache {field}", rules=rules
  )
  k, v = mk("k", kshape), mk("v", vshape)
  return KVCache(
    k=(k,) * cfg.n_layers, v=(v,) * cfg.n_layers, lengths=mk("lengths", (B,))
  )


def constrain(x, axes: Sequence[Optional[str]], mesh: Mesh, rules=RULES):
  """`jax.lax.with_sharding_constraint` of `x` to the sharding of logical axes
  `axes` (one per dimension of `x`) on `mesh`; for use inside jit.

  Raises:
    ValueError: see `logical_to_spec`.
  """
  return jax.lax.with_sharding_constraint(
    x, NamedSharding(mesh, logical_to_spec(axes, mesh, rules))
  )


# The forms a `shardings=` argument of a loader or of init_params takes.
Shardings = Union[None, jax.sharding.Sharding, Mesh, Params]


def resolve_shardings(cfg: ModelConfig, shardings: Shardings, who: str):
  """The `shardings=` argument of `jaxllm.hf.load_hf` / `jaxllm.gguf_io.load_gguf` /
  `jaxllm.params.init_params` as a
  Params tree with one Sharding per parameter of `cfg`, or None.

  Accepts the forms `jaxllm.checkpoint.restore_params` takes: None (the
  default device), a Mesh (`jaxllm.sharding.param_shardings(cfg, mesh)`, the
  logical-axis rules), one Sharding for every array, or a Params tree of
  Shardings. Checked against cfg's parameter shapes here, so a loader calls
  it before reading any tensor data.

  Raises:
    ValueError: "<who>: shardings ..." for anything else, a Params tree whose
      structure is not cfg's (another layer count, a tied / untied lm_head,
      ...), or a sharding that does not fit its parameter's shape (naming the
      parameter); for a Mesh, see `param_shardings`.
  """
  if shardings is None:
    return None
  if isinstance(shardings, jax.sharding.Mesh):
    try:
      return param_shardings(cfg, shardings)
    except ValueError as e:
      raise ValueError(f"{who}: shardings: {e}") from e
  want = abstract_params(cfg)
  if isinstance(shardings, jax.sharding.Sharding):
    tree = jax.tree_util.tree_map(lambda _: shardings, want)
  else:
    leaves = jax.tree_util.tree_leaves(shardings)
    if (
      not isinstance(shardings, Params)
      or jax.tree_util.tree_structure(shardings) != jax.tree_util.tree_structure(want)
      or not all(isinstance(s, jax.sharding.Sharding) for s in leaves)
    ):
      got = (
        f"a Params tree with {len(shardings.layers)} layers, lm_head "
        f"{'absent' if shardings.lm_head is None else 'present'} and "
        f"{len(leaves)} leaves of types "
        f"{sorted({type(s).__name__ for s in leaves})}"
        if isinstance(shardings, Params)
        else type(shardings).__name__
      )
      raise ValueError(
        f"{who}: shardings must be None, a jax.sharding.Mesh, one "
        "jax.sharding.Sharding or a Params tree with one Sharding per "
        f"parameter of the checkpoint's config ({cfg.n_layers} layers, "
        f"lm_head {'absent (tied)' if cfg.tie_embeddings else 'present'}, "
        f"{len(jax.tree_util.tree_leaves(want))} arrays; see "
        f"jaxllm.sharding.param_shardings(cfg, mesh)); got {got}"
      )
    tree = shardings
  flat = jax.tree_util.tree_flatten_with_path(want)[0]
  for (path, spec), s in zip(flat, jax.tree_util.tree_leaves(tree)):
    try:
      s.shard_shape(tuple(spec.shape))
    except Exception as e:
      raise ValueError(
        f"{who}: shardings{jax.tree_util.keystr(path)} {s} does not fit the "
        f"parameter's shape {tuple(spec.shape)}: {e}"
      ) from e
  return tree
