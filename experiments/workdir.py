"""Output directories of resumable experiments: one run at a time, and only
with the settings that made what is already there.

Every experiment that writes to a directory and reuses what it finds there on
a rerun (the scaling sweep's pools and rows, the GenRM study's pool, training
checkpoints, the draft's data stages) does, before any expensive work:

    with workdir.lock(out_dir):
      workdir.pin_settings(out_dir, settings, results=(...))
      ...

`lock` takes an exclusive `fcntl.flock` on `<dir>/.lock`, so a second run on
the same directory is refused (`WorkdirBusy`, naming the holder's pid) instead
of computing everything again and writing every row twice. The kernel drops a
flock when its process exits, however it exits, so a lock file left behind by
a killed run (its pid dead) is not a lock: the next run takes it. The file
itself stays (deleting a flock'ed file races with a waiting opener); it holds
the pid of the last holder. flock is per host on some network file systems:
two hosts sharing a directory over NFS may both get it.

`pin_settings` records, on first use, every setting that changes what is
written (`settings.json`), and refuses a later run whose settings differ,
naming every differing field, so results made with one configuration are
never reused and reported as another's. Settings that only choose which rows
to compute or report (a longer budget list, more seeds, another plot) are
left out by each experiment, which documents why they cannot change a row.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import os
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

LOCK_FILE = ".lock"
SETTINGS_FILE = "settings.json"

_HELD: dict[str, int] = {}  # realpath -> nesting depth of this process's locks


class WorkdirBusy(RuntimeError):
  """Another live process holds the directory's lock."""


def _read_holder(fd: int) -> str:
  try:
    text = os.pread(fd, 200, 0).decode(errors="replace").strip()
  except OSError:
    text = ""
  return text or "unknown (it has not written its pid yet)"


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[str]:
  """Exclusive lock on `workdir` (created if missing) for the `with` block.

  Reentrant within one process (an experiment that locks its directory may
  call helpers that lock it again). Yields the lock file's path.

  Raises:
    WorkdirBusy: another live process holds the lock; the message names the
      directory, the lock file and the holder's pid.
  """
  os.makedirs(workdir, exist_ok=True)
  key = os.path.realpath(workdir)
  path = os.path.join(workdir, LOCK_FILE)
  if key in _HELD:
    _HELD[key] += 1
    try:
      yield path
    finally:
      _HELD[key] -= 1
    return
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    holder = _read_holder(fd)
    os.close(fd)
    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      raise
    raise WorkdirBusy(
        f"{workdir} is in use by another run (pid {holder}; lock file {path}). "
        f"Wait for it to finish or use another directory; two runs on one "
        f"directory would compute and write everything twice.") from None
  os.ftruncate(fd, 0)
  os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
  _HELD[key] = 1
  try:
    yield path
  finally:
    del _HELD[key]
    os.ftruncate(fd, 0)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _normalise(value: Any) -> Any:
  """JSON round trip: tuples -> lists, ConfigDicts -> dicts, so a recorded
  value compares equal to the same value from a config."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  return json.loads(json.dumps(value, default=str))


def read_json(path: str) -> Optional[dict]:
  """The JSON object in `path`, or None if the file does not exist.

  Raises:
    ValueError: the file exists but is not a JSON object (names the file).
  """
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      obj = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); delete it or use "
                     f"another directory") from None
  if not isinstance(obj, dict):
    raise ValueError(f"{path} does not hold a JSON object")
  return obj


def existing_results(workdir: str, patterns: Sequence[str]) -> list[str]:
  """Names (relative to workdir) matching the glob `patterns`, sorted."""
  found = set()
  for p in patterns:
    found.update(os.path.relpath(x, workdir)
                 for x in glob.glob(os.path.join(glob.escape(workdir), p)))
  return sorted(found)


def pin_settings(workdir: str, settings: Mapping[str, Any], *,
                 results: Sequence[str] = (),
                 legacy: Optional[Callable[[str], Optional[dict]]] = None,
                 check_only: bool = False) -> dict:
  """Record `settings` in `<workdir>/settings.json`, or check them against the
  record already there.

  Args:
    workdir: the experiment's output directory.
    settings: flat mapping from a config field name (dotted inside sections:
      'verifier.steps') to its value: every setting that changes what is
      written to workdir.
    results: glob patterns (relative to workdir) of what those settings
      produce. If any exists while no record does, nobody knows what made it,
      so the run is refused. If none exists, a record is replaced by
      `settings` (a run that failed before producing anything protects
      nothing); with no patterns the record is always enforced.
    legacy: `legacy(workdir)` -> a (possibly partial) flat record rebuilt from
      the files an older version of the experiment wrote instead, or None.
      Consulted only when settings.json is missing; if it matches, it is
      written as settings.json.
    check_only: compare, never write (a dry run).

  Returns:
    The normalised settings.

  Raises:
    ValueError: the record differs from `settings`; the message names every
      differing field with its recorded and requested value, and every field
      the record lacks. Also when results exist without any record.
  """
  new = {k: _normalise(v) for k, v in settings.items()}
  path = os.path.join(workdir, SETTINGS_FILE)
  old = read_json(path)
  source = SETTINGS_FILE
  if old is None and legacy is not None:
    old = legacy(workdir)
    source = "the files an earlier version wrote"
  found = existing_results(workdir, results)
  if old is not None and results and not found:
    old = None  # nothing was made with the recorded settings
  if old is None:
    if found:
      raise ValueError(
          f"{workdir} holds results ({', '.join(found[:6])}"
          f"{', ...' if len(found) > 6 else ''}) but no {SETTINGS_FILE} saying "
          f"which settings made them; use another directory, or delete them")
  else:
    old = {k: _normalise(v) for k, v in old.items()}
    diff = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(new)
            if k in old and old[k] != new[k]]
    missing = [f"{k} (this run: {new[k]!r})" for k in sorted(new) if k not in old]
    if diff or missing:
      msg = (f"{workdir} holds results made with other settings (recorded in "
             f"{source}); use another directory, or rerun with the recorded "
             f"settings.")
      if diff:
        msg += " Differing fields (recorded -> this run): " + "; ".join(diff)
        msg += "."
      if missing:
        msg += (" Fields the record does not have: " + "; ".join(missing) +
                f" (if the earlier run used these values, add them to "
                f"{path}).")
      raise ValueError(msg)
  if not check_only and (old is None or source != SETTINGS_FILE):
    os.makedirs(workdir, exist_ok=True)
    write_json_atomic(path, new, indent=1, sort_keys=True)
  return new


def legacy_config_json(settings_fn: Callable[[Any], dict],
                       filename: str = "config.json"):
  """A `legacy` reader for `pin_settings`: the settings an earlier run wrote
  as its full config (`<workdir>/<filename>`), through `settings_fn` (which
  must accept a nested dict and skip fields the dict lacks)."""
  def read(workdir: str) -> Optional[dict]:
    obj = read_json(os.path.join(workdir, filename))
    return None if obj is None else settings_fn(obj)
  return read


def write_json_atomic(path: str, obj, **kw) -> None:
  """json.dump(obj, **kw) to `path` through a temporary file (fsynced) and
  os.replace, so a killed run never leaves a truncated file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, **kw)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
