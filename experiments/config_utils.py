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
field); nested ConfigDicts are checked recursively.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import ml_collections


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file given by path (what the script uses as its
  schema; independent of the --config flag)."""
  if not os.path.exists(path):
    raise ValueError(f"config file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location(
      "_cfg_" + os.path.basename(path).replace(".", "_"), path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def _type_name(x) -> str:
  return type(x).__name__


def _check(value, schema, name: str):
  if isinstance(schema, ml_collections.ConfigDict):
    if not isinstance(value, (ml_collections.ConfigDict, dict)):
      raise ValueError(f"config field {name!r} must be a ConfigDict (section), "
                       f"got {_type_name(value)}")
    for k in value.keys():
      if k not in schema:
        known = ", ".join(sorted(schema.keys()))
        raise ValueError(f"unknown config field {name + '.' + k!r} "
                         f"(known fields of {name!r}: {known})")
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
    raise ValueError(f"config field {name!r} must be of type "
                     f"{_type_name(schema)} (like the default {schema!r}), got "
                     f"{_type_name(value)} {value!r}")


def validate(config: ml_collections.ConfigDict,
             schema: ml_collections.ConfigDict,
             name: str = "config") -> ml_collections.ConfigDict:
  """Check `config` against `schema` (same fields, same types), lock and return
  it. Raises ValueError naming the first unknown, missing or mistyped field."""
  if config is None:
    raise ValueError("no config given (pass --config=configs/<file>.py)")
  _check(config, schema, name)
  config.lock()
  return config


def to_json(config: ml_collections.ConfigDict) -> str:
  """The config as JSON (written next to results for provenance)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True,
                    default=lambda o: list(o) if isinstance(o, tuple) else str(o))


def as_tuple(x: Any):
  """Config sequences (which may come back as lists) as tuples."""
  return tuple(x) if isinstance(x, (list, tuple)) else x
