"""Orbax checkpoints of model parameters and of training state.

Parameters are stored as a plain nested dict mirroring `Params`
(`{"embed", "final_norm", "lm_head"?, "layers": {"0": {"wq", ...}}}`, with
`None` fields left out), so a checkpoint does not depend on the Python classes
and every array has a readable name (`layers.3.wq`) in error messages.

`restore_params` checks the stored names and shapes against `abstract_params(cfg)`
before reading any data, then restores straight onto the requested shardings
(each host reads only its shards on a multi-host mesh). Pass a Mesh to get
the sharding rules' layout (`jaxllm.sharding.param_shardings`): a checkpoint
written from one mesh shape restores onto any other (or onto one device).

`CheckpointManager` wraps `orbax.checkpoint.CheckpointManager` for training
loops: save every K steps, keep the last n, restore params + optimiser state +
step + RNG key. Written against orbax-checkpoint 0.12 (`ocp.args` API).

`save_model_config` / `load_model_config` write and read the ModelConfig that
goes with a params checkpoint (`model_config.json`, the fields of
`dataclasses.asdict(cfg)`); `model_config_from_dict` checks such a dict from
any JSON file (e.g. the `cfg` of a draft's draft.json), naming the file and
the field for a missing, unknown or invalid field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxllm.config import ModelConfig, RopeScaling
from jaxllm.params import LayerParams, Params, abstract_params
from jaxllm.sharding import param_shardings

Sharding = jax.sharding.Sharding

# --------------------------------------------------------------------------
# Params <-> nested dict
# --------------------------------------------------------------------------

_TOP = ("embed", "final_norm", "lm_head")


def params_to_tree(params: Params) -> dict:
  """Params -> nested dict of arrays (None fields omitted)."""
  tree = {f: getattr(params, f) for f in _TOP if getattr(params, f) is not None}
  tree["layers"] = {
    str(i): {k: v for k, v in vars(lp).items() if v is not None}
    for i, lp in enumerate(params.layers)
  }
  return tree


def tree_to_params(tree: dict) -> Params:
  """Nested dict (as written by params_to_tree) -> Params."""
  layers = tree["layers"]
  return Params(
    embed=tree["embed"],
    layers=tuple(LayerParams(**layers[str(i)]) for i in range(len(layers))),
    final_norm=tree["final_norm"],
    lm_head=tree.get("lm_head"),
  )


def _flat(tree: dict, prefix: str = "") -> dict:
  """{'layers.0.wq': leaf, ...} from a nested dict."""
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flat(v, name + "."))
    else:
      out[name] = v
  return out


def _short(e: Exception, n: int = 300) -> str:
  """First n characters of an exception (TensorStore errors run to pages)."""
  msg = f"{type(e).__name__}: {e}"
  return msg if len(msg) <= n else msg[:n] + " ..."


# --------------------------------------------------------------------------
# model_config.json
# --------------------------------------------------------------------------

MODEL_CONFIG_FILE = "model_config.json"


def _fields(cls) -> tuple[dict, set]:
  """({field name: Field}, names of the fields without a default)."""
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  required = {
    n
    for n, f in fields.items()
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
  }
  return fields, required


def _json_text(v: Any) -> str:
  try:
    return json.dumps(v)
  except (TypeError, ValueError):
    return repr(v)


def _check_keys(d: dict, cls, where: str) -> None:
  fields, required = _fields(cls)
  missing = sorted(required - set(d))
  if missing:
    raise ValueError(
      f"{where}missing required field {missing[0]!r} (all missing: {missing})"
    )
  unknown = sorted(set(d) - set(fields))
  if unknown:
    raise ValueError(
      f"{where}unknown field {unknown[0]!r} (all unknown: "
      f"{unknown}; known: {sorted(fields)})"
    )
  for k, v in d.items():
    # JSON allows NaN / Infinity; no ModelConfig number may be either.
    if isinstance(v, float) and not math.isfinite(v):
      raise ValueError(f"{where}field {k!r} must be finite, got {v}")


def model_config_from_dict(d: Any, source: str) -> ModelConfig:
  """A ModelConfig from a dict written as `dataclasses.asdict(cfg)` (JSON).

  `source` names the file (and, for a nested dict, where in it) in error
  messages. `rope_scaling` may be a dict of RopeScaling fields or null;
  `layer_windows` a list or null. Field values are checked by ModelConfig
  itself (types and ranges); this adds the structure a JSON file can get
  wrong.

  Raises:
    ValueError: "<source>: ..." naming the field, when `d` is not an object,
      a required field is missing, a field is unknown (a typo or a file from
      another version), a number is NaN / infinite, or ModelConfig /
      RopeScaling rejects a value.
  """
  if not isinstance(d, dict):
    raise ValueError(
      f"{source}: expected a JSON object of ModelConfig "
      f"fields, got {_json_text(d)[:80]}"
    )
  where = f"{source}: "
  _check_keys(d, ModelConfig, where)
  kw = dict(d)
  rs = kw.get("rope_scaling")
  if rs is not None:
    if not isinstance(rs, dict):
      raise ValueError(
        f"{where}field 'rope_scaling' must be an object of "
        f"RopeScaling fields or null, got {_json_text(rs)}"
      )
    _check_keys(rs, RopeScaling, f"{where}rope_scaling: ")
  lw = kw.get("layer_windows")
  if lw is not None and not isinstance(lw, list):
    raise ValueError(
      f"{where}field 'layer_windows' must be a list of ints or "
      f"null, got {_json_text(lw)}"
    )
  try:
    if rs is not None:
      kw["rope_scaling"] = RopeScaling(**rs)
    if lw is not None:
      kw["layer_windows"] = tuple(lw)
    return ModelConfig(**kw)
  except (ValueError, TypeError) as e:
    raise ValueError(f"{where}{e}") from e


def load_model_config(path: str) -> ModelConfig:
  """Read a ModelConfig from `path`: a JSON file, or a directory holding
  `model_config.json` (as written by `save_model_config`).

  Raises:
    FileNotFoundError: naming the file, when it does not exist.
    ValueError: naming the file (and the field), when it is not valid JSON
      or not a valid ModelConfig (see `model_config_from_dict`).
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, MODEL_CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"model config {path} not found")
  try:
    with open(path, encoding="utf-8") as f:
      d = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e
  return model_config_from_dict(d, path)


def save_model_config(path: str, cfg: ModelConfig) -> str:
  """Write `cfg` as JSON to `path` (a file, or a directory: then
  `<path>/model_config.json`), atomically (a temporary file renamed into
  place, so a reader never sees half a file). Returns the file's path.

  Raises:
    ValueError: `cfg` is not a ModelConfig.
  """
  if not isinstance(cfg, ModelConfig):
    raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, MODEL_CONFIG_FILE)
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(dataclasses.asdict(cfg), f, indent=2)
  os.replace(tmp, path)
  return path


# --------------------------------------------------------------------------
# params only
# --------------------------------------------------------------------------


def save_params(path: str, params: Params, *, overwrite: bool = False) -> None:
  """Write `params` to the orbax checkpoint directory `path` (synchronously)."""
  path = os.path.abspath(path)
  if os.path.exists(path) and not overwrite:
    raise ValueError(f"checkpoint {path} already exists (pass overwrite=True)")
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, params_to_tree(params), force=overwrite)
    ckptr.wait_until_finished()


def _stored_shapes(path: str) -> dict:
  """{'layers.0.wq': shape} from the checkpoint's metadata (reads no data)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no checkpoint at {path}")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      meta = ckptr.metadata(path)
    item = getattr(meta, "item_metadata", meta)
    tree = getattr(item, "tree", item)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{path} is not an orbax checkpoint: {e}") from e
  except Exception as e:  # corrupt metadata: JSON / msgpack / tensorstore errors
    raise ValueError(
      f"cannot read checkpoint metadata at {path} (corrupt or "
      f"not a params checkpoint?): {_short(e)}"
    ) from e
  if not isinstance(tree, dict):  # orbax returns None when it cannot parse it
    raise ValueError(
      f"cannot read checkpoint metadata at {path}: the array "
      "metadata is missing or unreadable (corrupt checkpoint?)"
    )
  return {k: tuple(m.shape) for k, m in _flat(tree).items()}


def _expected(cfg: ModelConfig) -> dict:
  """{'layers.0.wq': ShapeDtypeStruct} in model order (first mismatch first)."""
  return _flat(params_to_tree(abstract_params(cfg)))


def _check_against(path: str, stored: dict, want: dict, cfg_name: str) -> None:
  for k, spec in want.items():
    if k not in stored:
      raise ValueError(
        f"checkpoint {path} is missing tensor {k!r} (expected "
        f"shape {tuple(spec.shape)} from {cfg_name})"
      )
  for k, shape in stored.items():
    if k not in want:
      raise ValueError(
        f"checkpoint {path} has unexpected tensor {k!r} (shape {shape}) for {cfg_name}"
      )
  for k, spec in want.items():
    if stored[k] != tuple(spec.shape):
      raise ValueError(
        f"checkpoint {path}: tensor {k!r} has shape "
        f"{stored[k]}, {cfg_name} expects {tuple(spec.shape)}"
      )


def _with_shardings(abstract: Any, sharding) -> Any:
  """Attach shardings to a tree of ShapeDtypeStructs.

  `sharding`: None (first local device), one Sharding for every array, or a
  tree with the same structure as `abstract` holding a Sharding per array.
  """
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  if isinstance(sharding, Sharding):
    return jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract
    )
  return jax.tree_util.tree_map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
    abstract,
    sharding,
  )


def _abstract_tree(cfg: ModelConfig, sharding) -> dict:
  if isinstance(sharding, jax.sharding.Mesh):
    sharding = param_shardings(cfg, sharding)
  if sharding is not None and not isinstance(sharding, Sharding):
    if isinstance(sharding, Params):
      sharding = params_to_tree(sharding)
  return _with_shardings(params_to_tree(abstract_params(cfg)), sharding)


def restore_params(
  path: str,
  cfg: ModelConfig,
  sharding: Union[None, Sharding, Params, jax.sharding.Mesh] = None,
) -> Params:
  """Read a params checkpoint written by `save_params` (or the `params` item of
  a CheckpointManager step) onto `sharding`, cast to `cfg.param_dtype`.

  Args:
    path: the checkpoint directory.
    cfg: the model config; stored names and shapes are checked against
      `abstract_params(cfg)` before any data is read.
    sharding: None (first local device), a Mesh (each array on
      `jaxllm.sharding.param_shardings(cfg, mesh)`: the logical-axis rules),
      one Sharding for all arrays, or a Params tree of Shardings. Each device
      reads only its own shards; the mesh need not be the one the checkpoint
      was written from.

  Returns:
    Params on the requested shardings.

  Raises:
    FileNotFoundError: `path` holds no checkpoint.
    ValueError: naming the tensor, when the stored names or shapes disagree
      with `cfg`, or when the data cannot be read; for a Mesh, a mesh axis
      that does not divide a parameter dimension (`param_shardings`).
  """
  path = os.path.abspath(path)
  stored = _stored_shapes(path)
  target = _abstract_tree(cfg, sharding)
  _check_against(path, stored, _expected(cfg), "the config")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      tree = ckptr.restore(path, target)
  except Exception as e:  # tensorstore / ocdbt read errors on corrupt data
    raise ValueError(
      f"cannot read checkpoint data at {path} (corrupt?): {_short(e)}"
    ) from e
  return tree_to_params(tree)


# --------------------------------------------------------------------------
# training state
# --------------------------------------------------------------------------


class CheckpointManager:
  """Periodic training checkpoints: params, optimiser state, step, RNG key.

  Each step directory `<dir>/<step>/` holds items `params` (same layout as
  `save_params`, so `restore_params(<dir>/<step>/params, cfg)` works),
  `opt_state`, `rng` and `meta` (JSON: step, RNG implementation).

    mgr = CheckpointManager(dir, save_every=1000, keep=3)
    for step in ...:
      mgr.save(step, params, opt_state, key)       # no-op unless step % 1000 == 0
    params, opt_state, step, key = mgr.restore(cfg, opt_state_like)
  """

  def __init__(
    self,
    directory: str,
    *,
    save_every: int = 1,
    keep: int = 3,
    async_save: bool = False,
  ):
    if save_every < 1 or keep < 1:
      raise ValueError(f"save_every and keep must be >= 1, got {save_every}, {keep}")
    self.directory = os.path.abspath(directory)
    self._mgr = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        save_interval_steps=save_every,
        max_to_keep=keep,
        enable_async_checkpointing=async_save,
      ),
    )

  def save(
    self,
    step: int,
    params: Params,
    opt_state: Any,
    rng_key: jax.Array,
    *,
    force: bool = False,
  ) -> bool:
    """Save if `step` is a multiple of save_every (or `force`); True if saved."""
    typed = jnp.issubdtype(rng_key.dtype, jax.dtypes.prng_key)
    key_data = jax.random.key_data(rng_key) if typed else rng_key
    meta = {
      "step": int(step),
      "rng_impl": str(jax.random.key_impl(rng_key)) if typed else None,
    }
    return self._mgr.save(
      int(step),
      force=force,
      args=ocp.args.Composite(
        params=ocp.args.StandardSave(params_to_tree(params)),
        opt_state=ocp.args.StandardSave(opt_state),
        rng=ocp.args.StandardSave({"key": key_data}),
        meta=ocp.args.JsonSave(meta),
      ),
    )

  def latest_step(self) -> Optional[int]:
    return self._mgr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mgr.all_steps())

  def restore(
    self,
    cfg: ModelConfig,
    opt_state_like: Any,
    *,
    step: Optional[int] = None,
    sharding: Union[None, Sharding, Params, jax.sharding.Mesh] = None,
    opt_sharding: Any = None,
  ):
    """-> (params, opt_state, step, rng_key) of `step` (default: the latest).

    `sharding`: as in `restore_params` (None, a Mesh, one Sharding or a
    Params tree of Shardings).
    `opt_state_like`: the optimiser state or its abstract shape, e.g.
    `jax.eval_shape(optimizer.init, abstract_params(cfg))`; concrete arrays
    keep their shardings unless `opt_sharding` is given.
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no checkpoint in {self.directory}")
    if step not in self._mgr.all_steps():
      raise FileNotFoundError(
        f"no checkpoint for step {step} in {self.directory} (have {self.all_steps()})"
      )
    step_dir = os.path.join(self.directory, str(step))
    params_target = _abstract_tree(cfg, sharding)
    _check_against(
      os.path.join(step_dir, "params"),
      _stored_shapes(os.path.join(step_dir, "params")),
      _expected(cfg),
      "the config",
    )
    abstract_opt = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=getattr(x, "sharding", None)
      ),
      opt_state_like,
    )
    if opt_sharding is not None or any(
      s.sharding is None for s in jax.tree_util.tree_leaves(abstract_opt)
    ):
      abstract_opt = _with_shardings(
        jax.tree_util.tree_map(
          lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), abstract_opt
        ),
        opt_sharding,
      )
    try:
      out = self._mgr.restore(
        step,
        args=ocp.args.Composite(
          params=ocp.args.StandardRestore(params_target),
          opt_state=ocp.args.StandardRestore(abstract_opt),
          rng=ocp.args.StandardRestore(),
          meta=ocp.args.JsonRestore(),
        ),
      )
    except Exception as e:
      raise ValueError(
        f"cannot restore training state from {step_dir}: {_short(e)}"
      ) from e
    key = out["rng"]["key"]
    impl = out["meta"].get("rng_impl")
    if impl is not None:
      key = jax.random.wrap_key_data(key, impl=impl)
    return (
      tree_to_params(out["params"]),
      out["opt_state"],
      int(out["meta"]["step"]),
      key,
    )

  def wait_until_finished(self) -> None:
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
