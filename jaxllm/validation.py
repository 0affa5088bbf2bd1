"""Argument checks shared by every public entry point.

One message per kind of bad input, so a user sees the same words whether the
ids went into `generate`, particle filtering, A*, the training loss or the
generative verifier. Each check runs on host values, before any model call.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np


def token_id_array(name: str, ids) -> np.ndarray:
  """`ids` (an int, a nested list or an integer array) as an int64 array.

  Raises:
    ValueError: naming `name` if an element is not an integer or does not fit
      in int64 (e.g. 2**70).
  """
  try:
    arr = np.asarray(ids)
    if arr.size == 0:
      return arr.astype(np.int64)
    if arr.dtype == object:  # Python ints beyond int64, or mixed types
      arr = np.asarray(ids, dtype=np.int64)
  except (OverflowError, TypeError, ValueError) as e:
    raise ValueError(
      f"{name} must be integer token ids, got {ids!r:.200} ({type(e).__name__}: {e})"
    ) from None
  if arr.dtype.kind not in "iu":
    raise ValueError(
      f"{name} must be integer token ids, got dtype {arr.dtype}: {ids!r:.200}"
    )
  if arr.dtype == np.uint64 and arr.max() > np.iinfo(np.int64).max:
    raise ValueError(f"{name} token id {arr.max()} does not fit in int64")
  return arr.astype(np.int64)


def check_token_ids(name: str, ids, vocab_size: Optional[int]) -> np.ndarray:
  """Check that every token id in `ids` lies in [0, vocab_size).

  Args:
    name: the argument or field the ids came from (used in the message).
    ids: an int, a (nested) sequence of ints or an integer array.
    vocab_size: the model's vocabulary size V; None skips the range check.

  Returns:
    The ids as an int64 numpy array.

  Raises:
    ValueError: naming `name`, the allowed range and the offending range.
  """
  arr = token_id_array(name, ids)
  if vocab_size is not None and arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
    raise ValueError(
      f"{name} token ids must be in [0, {vocab_size}), got "
      f"range [{arr.min()}, {arr.max()}]"
    )
  return arr


# Token ids must also fit the int32 arrays the model reads; builders that do not
# know the vocabulary check against this bound instead of vocab_size.
INT32_LIMIT = 2**31 - 1


def check_token_id(name: str, value, vocab_size: Optional[int]) -> int:
  """Check one token id (a pad / eos id) and return it as a Python int.

  Args:
    name: the argument or field (used in the message), e.g. "pad_id".
    value: an int (numpy integer scalars are accepted).
    vocab_size: V; the id must lie in [0, V). None skips the range check.

  Raises:
    ValueError: naming `name` if `value` is not a single integer or is out
      of range (same message as `check_token_ids`).
  """
  arr = token_id_array(name, value)
  if arr.ndim != 0:
    raise ValueError(f"{name} must be a single integer token id, got {value!r:.200}")
  return int(check_token_ids(name, arr, vocab_size))


def is_concrete(*xs) -> bool:
  """True if no leaf of `xs` is a jax tracer (values can be checked now)."""
  return not any(
    isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(xs)
  )


def _range_text(lo, hi) -> str:
  if lo is not None and hi is not None:
    return f" in [{lo}, {hi}]"
  if lo is not None:
    return f" >= {lo}"
  return f" <= {hi}" if hi is not None else ""


def check_int(
  name: str, value, lo: Optional[int] = None, hi: Optional[int] = None
) -> int:
  """Check a count / budget / size and return it as a Python int.

  Args:
    name: the argument or field (used in the message), e.g. "max_new_tokens".
    value: an int or numpy integer (bools, floats and strings are rejected:
      a float budget would silently truncate).
    lo, hi: inclusive bounds (None: unbounded on that side).

  Raises:
    ValueError: "`name` must be an integer <range>, got <value>".
  """
  ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
  if ok:
    v = int(value)
    ok = (lo is None or v >= lo) and (hi is None or v <= hi)
  if not ok:
    raise ValueError(
      f"{name} must be an integer{_range_text(lo, hi)}, got {value!r:.200}"
    )
  return v


def check_length(what: str, need: int, limit_name: str, limit: int) -> None:
  """Check that a sequence of `need` positions fits a limit.

  Args:
    what: how `need` was made, e.g. "prompt length 90 + max_new_tokens=64".
    need: positions (tokens) required.
    limit_name: the limit's name, e.g. "ModelConfig.max_seq_len" or
      "cache_size".
    limit: its value.

  Raises:
    ValueError: "`what` = `need` tokens exceeds `limit_name`=`limit`".
  """
  if need > limit:
    raise ValueError(f"{what} = {need} tokens exceeds {limit_name}={limit}")
