"""Strict ml_collections configs for the absl experiment scripts.

A script declares its config with `config_flags.DEFINE_config_file` and checks
whatever config file / overrides it was given against its default config (the
schema) with `validate(config, schema)`: every field must exist in the schema
and have the schema's type, otherwise a ValueError names the field. The
validated config is locked, so a typo such as `config.stpes = 3` later raises
instead of silently adding a field.

Type rules: an int is accepted where the schema has a float (promoted); a bool
is never accepted as an int or float; lists and tuples are interchangeable
(tuples are kept); a schema value of None accepts anything (an optional
field); nested ConfigDicts are checked recursively. An unknown field's error
suggests the closest known names ("did you mean ...").

Every experiment checks its config this one way, before any expensive work:
`validate` in its main (through `experiments.workdir.config_from_flags`, which
also turns the error into a usage error; the config is locked), `check` inside
library entry points such as `scaling.run_sweep` that tests call directly
(same checks, the caller's config left unlocked). Value ranges that the types do
not capture are checked with the small helpers below (`positive`,
`int_list`, `one_of`, ...), whose errors name the field the same way.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import os
from typing import Any, Sequence

import ml_collections


CONFIGS_DIR = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"
)


def config_path(name: str) -> str:
  """The path of configs/<name> (an experiment's default config and schema)."""
  return os.path.join(CONFIGS_DIR, name)


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file given by path (what the script uses as its
  schema; independent of the --config flag)."""
  if not os.path.exists(path):
    raise ValueError(f"config file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location(
    "_cfg_" + os.path.basename(path).replace(".", "_"), path
  )
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def _type_name(x) -> str:
  return type(x).__name__


def _check(value, schema, name: str):
  if isinstance(schema, ml_collections.ConfigDict):
    if not isinstance(value, (ml_collections.ConfigDict, dict)):
      raise ValueError(
        f"config field {name!r} must be a ConfigDict (section), got {_type_name(value)}"
      )
    for k in value.keys():
      if k not in schema:
        known = sorted(schema.keys())
        close = difflib.get_close_matches(k, known, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise ValueError(
          f"unknown config field {name + '.' + k!r} "
          f"({hint}known fields of {name!r}: "
          f"{', '.join(known)})"
        )
    for k in schema.keys():
      if k not in value:
        raise ValueError(f"config field {name + '.' + k!r} is missing")
      _check(value[k], schema[k], f"{name}.{k}")
    return
  if schema is None:
    return
  if isinstance(schema, bool):
    ok = isinstance(value, bool)
  elif isinstance(schema, int):
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif isinstance(schema, float):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  elif isinstance(schema, (list, tuple)):
    ok = isinstance(value, (list, tuple))
    if ok and schema and value:
      for i, v in enumerate(value):
        _check(v, schema[0], f"{name}[{i}]")
  else:
    ok = isinstance(value, type(schema))
  if not ok:
    raise ValueError(
      f"config field {name!r} must be of type "
      f"{_type_name(schema)} (like the default {schema!r}), got "
      f"{_type_name(value)} {value!r}"
    )


def check(
  config: ml_collections.ConfigDict,
  schema: ml_collections.ConfigDict,
  name: str = "config",
) -> None:
  """Check `config` against `schema` (same fields, same types) without
  changing it.

  Raises:
    ValueError: names the first unknown (with a did-you-mean), missing or
      mistyped field.
  """
  if config is None:
    raise ValueError("no config given (pass --config=configs/<file>.py)")
  _check(config, schema, name)


def validate(
  config: ml_collections.ConfigDict,
  schema: ml_collections.ConfigDict,
  name: str = "config",
) -> ml_collections.ConfigDict:
  """Check `config` against `schema` (same fields, same types), lock and return
  it. Raises ValueError naming the first unknown, missing or mistyped field."""
  check(config, schema, name)
  config.lock()
  return config


# ------------------------- value ranges, by field name ----------------------


def get(config, field: str, default=KeyError):
  """`config.a.b` for field 'a.b' (ConfigDict or nested dict). A missing field
  returns `default`, or raises KeyError naming it when no default is given."""
  cur = config
  for part in field.split("."):
    try:
      cur = cur[part]
    except (KeyError, AttributeError, TypeError):
      if default is KeyError:
        raise KeyError(f"config.{field} is missing") from None
      return default
  return cur


def fields(config, names: Sequence[str]) -> dict:
  """{name: value} for the dotted `names` present in `config` (a ConfigDict or
  the nested dict of a saved config.json; absent names are skipped, so an
  older record yields what it has)."""
  missing = object()
  out = {}
  for n in names:
    v = get(config, n, missing)
    if v is not missing:
      out[n] = v.to_dict() if hasattr(v, "to_dict") else v
  return out


def flatten(config, exclude: Sequence[str] = (), prefix: str = "") -> dict:
  """{dotted field name: value} of every leaf field of `config` (a ConfigDict
  or nested dict), leaving out the dotted names in `exclude`."""
  out = {}
  for k, v in config.items():
    full = prefix + k
    if full in exclude:
      continue
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update(flatten(v, exclude, full + "."))
    else:
      out[full] = v
  return out


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(config, names, ok, relation: str, name: str) -> None:
  for n in names:
    v = get(config, n)
    if not _is_number(v) or not ok(v):
      raise ValueError(f"{name}.{n} must be {relation}, got {v!r}")


def positive(config, *names: str, name: str = "config") -> None:
  """Every field in `names` is a number > 0 (an int >= 1 where it is an int).

  Raises:
    ValueError: naming the first field that is not.
  """
  _numbers(config, names, lambda v: v > 0, "> 0", name)


def non_negative(config, *names: str, name: str = "config") -> None:
  """Every field in `names` is a finite number >= 0.

  Raises:
    ValueError: naming the first field that is not.
  """
  _numbers(config, names, lambda v: v >= 0, ">= 0", name)


def one_of(config, field: str, allowed: Sequence, name: str = "config"):
  """The field's value, which must be one of `allowed`.

  Raises:
    ValueError: naming the field, its value and the allowed values.
  """
  v = get(config, field)
  if v not in tuple(allowed):
    raise ValueError(f"{name}.{field} must be one of {tuple(allowed)}, got {v!r}")
  return v


def _no_duplicates(v, full: str) -> None:
  dup = sorted({x for x in v if list(v).count(x) > 1})
  if dup:
    raise ValueError(f"{full} lists {dup} more than once")


def int_list(
  config,
  field: str,
  *,
  low: int | None = 1,
  high: int | None = None,
  high_name: str = "",
  allow_empty: bool = False,
  name: str = "config",
) -> list[int]:
  """The field as a list of distinct ints in [low, high].

  `high_name` names what bounds it (e.g. 'config.pool_size') in the error.

  Raises:
    ValueError: naming the field when it is empty (unless `allow_empty`),
      holds a non-int, a value out of range, or a duplicate.
  """
  v = get(config, field)
  full = f"{name}.{field}"
  if not isinstance(v, (list, tuple)):
    raise ValueError(f"{full} must be a list of ints, got {v!r}")
  if not v and not allow_empty:
    raise ValueError(f"{full} is empty: give at least one value")
  for i, x in enumerate(v):
    if not _is_int(x):
      raise ValueError(f"{full}[{i}] must be an int, got {x!r}")
    if low is not None and x < low:
      raise ValueError(f"{full}[{i}]={x} must be >= {low}")
    if high is not None and x > high:
      raise ValueError(f"{full}[{i}]={x} exceeds {high_name or 'the maximum'}={high}")
  _no_duplicates(v, full)
  return [int(x) for x in v]


def str_list(
  config,
  field: str,
  allowed: Sequence[str],
  *,
  allow_empty: bool = True,
  name: str = "config",
) -> list[str]:
  """The field as a list of distinct names from `allowed`.

  Raises:
    ValueError: naming the field on an unknown name (with a did-you-mean), a
      duplicate, or emptiness when not `allow_empty`.
  """
  v = get(config, field)
  full = f"{name}.{field}"
  if isinstance(v, str) or not isinstance(v, (list, tuple)):
    raise ValueError(f"{full} must be a list of names, got {v!r}")
  if not v and not allow_empty:
    raise ValueError(f"{full} is empty: give at least one of {tuple(allowed)}")
  for x in v:
    if x not in allowed:
      close = difflib.get_close_matches(str(x), list(allowed), n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ValueError(f"{full}: unknown name {x!r}{hint}; known: {tuple(allowed)}")
  _no_duplicates(v, full)
  return list(v)


def to_json(config: ml_collections.ConfigDict) -> str:
  """The config as JSON (written next to results for provenance)."""
  return json.dumps(
    config.to_dict(),
    indent=2,
    sort_keys=True,
    default=lambda o: list(o) if isinstance(o, tuple) else str(o),
  )


def as_tuple(x: Any):
  """Config sequences (which may come back as lists) as tuples."""
  return tuple(x) if isinstance(x, (list, tuple)) else x
