"""Argument checks shared by every public entry point.

One message per kind of bad input, so a user sees the same words whether the
ids went into `generate`, particle filtering, A*, the training loss or the
generative verifier. Each check runs on host values, before any model call.
"""

from __future__ import annotations

from typing import Optional

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
    raise ValueError(f"{name} must be integer token ids, got {ids!r:.200} "
                     f"({type(e).__name__}: {e})") from None
  if arr.dtype.kind not in "iu":
    raise ValueError(f"{name} must be integer token ids, got dtype "
                     f"{arr.dtype}: {ids!r:.200}")
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
  if vocab_size is not None and arr.size and (arr.min() < 0 or
                                              arr.max() >= vocab_size):
    raise ValueError(f"{name} token ids must be in [0, {vocab_size}), got "
                     f"range [{arr.min()}, {arr.max()}]")
  return arr
