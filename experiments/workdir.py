"""The one module of helpers the experiment scripts share (configs themselves
are checked by experiments/config_utils.py):

- the command line: `define_flags` (--config from configs/, --workdir),
  `config_from_flags` (the validated config, or a usage error before anything
  is loaded), `run_cli` (a run; a busy workdir is a usage error), and
  `flag_ints` / `flags_at_least` for the benchmarks' plain absl flags;
- output directories: `lock` and `pin_settings` (below);
- files: atomic JSON / text / npz writes, `save_config` (config.json),
  JSONL rows (`read_rows`, `append_row`), `require_files`;
- models: `load_model` / `load_policy` / `load_reward_models` (what the
  training scripts wrote) and `load_pretrained` (SmolLM2);
- SmolLM2's own answers to GSM8K prompts (the data of experiments/train_draft.py
  and experiments/soft.py's SmolLM2 config): `chat_prompts`, `sample_answers`,
  `save_pairs` / `load_pairs`, `ragged`;
- `progress` lines and `median_time` for benchmarks.

A script that writes results takes `--workdir`; its main is thin:

    def main(argv):
      del argv
      config = workdir.config_from_flags(DEFAULT_CONFIG, check=check_x)
      workdir.run_cli(run, config, FLAGS.workdir)

    if __name__ == "__main__":
      workdir.define_flags("results/x", DEFAULT_CONFIG)
      app.run(main)

(flags are defined under `__main__`, so tests can import several experiment
modules that each declare --config and --workdir).

Output directories of resumable experiments: one run at a time, and only
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
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
from absl import app, flags, logging

LOCK_FILE = ".lock"
SETTINGS_FILE = "settings.json"
CONFIG_FILE = "config.json"  # the run's whole config (provenance)
RESULTS_FILE = "results.json"  # a benchmark's or demo's record
SMOLLM2 = "smollm2-135m-instruct"

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
      f"directory would compute and write everything twice."
    ) from None
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
    raise ValueError(
      f"{path} is not valid JSON ({e}); delete it or use another directory"
    ) from None
  if not isinstance(obj, dict):
    raise ValueError(f"{path} does not hold a JSON object")
  return obj


def existing_results(workdir: str, patterns: Sequence[str]) -> list[str]:
  """Names (relative to workdir) matching the glob `patterns`, sorted."""
  found = set()
  for p in patterns:
    found.update(
      os.path.relpath(x, workdir)
      for x in glob.glob(os.path.join(glob.escape(workdir), p))
    )
  return sorted(found)


def pin_settings(
  workdir: str,
  settings: Mapping[str, Any],
  *,
  results: Sequence[str] = (),
  legacy: Optional[Callable[[str], Optional[dict]]] = None,
  check_only: bool = False,
) -> dict:
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
        f"which settings made them; use another directory, or delete them"
      )
  else:
    old = {k: _normalise(v) for k, v in old.items()}
    diff = [
      f"{k}: {old[k]!r} -> {new[k]!r}"
      for k in sorted(new)
      if k in old and old[k] != new[k]
    ]
    missing = [f"{k} (this run: {new[k]!r})" for k in sorted(new) if k not in old]
    if diff or missing:
      msg = (
        f"{workdir} holds results made with other settings (recorded in "
        f"{source}); use another directory, or rerun with the recorded "
        f"settings."
      )
      if diff:
        msg += " Differing fields (recorded -> this run): " + "; ".join(diff)
        msg += "."
      if missing:
        msg += (
          " Fields the record does not have: "
          + "; ".join(missing)
          + f" (if the earlier run used these values, add them to "
          f"{path})."
        )
      raise ValueError(msg)
  if not check_only and (old is None or source != SETTINGS_FILE):
    os.makedirs(workdir, exist_ok=True)
    write_json_atomic(path, new, indent=1, sort_keys=True)
  return new


def legacy_config_json(
  settings_fn: Callable[[Any], dict], filename: str = "config.json"
):
  """A `legacy` reader for `pin_settings`: the settings an earlier run wrote
  as its full config (`<workdir>/<filename>`), through `settings_fn` (which
  must accept a nested dict and skip fields the dict lacks)."""

  def read(workdir: str) -> Optional[dict]:
    obj = read_json(os.path.join(workdir, filename))
    return None if obj is None else settings_fn(obj)

  return read


# ---------------------------------- files ----------------------------------


def write_text_atomic(path: str, text: str) -> None:
  """`text` to `path` through a temporary file (fsynced) and os.replace, so a
  killed run never leaves a truncated file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_json_atomic(path: str, obj, **kw) -> None:
  """json.dump(obj, **kw) to `path`, atomically (`write_text_atomic`)."""
  write_text_atomic(path, json.dumps(obj, **kw))


def save_results(out_dir: str, name: str, obj) -> str:
  """A benchmark's JSON, written atomically to out_dir/name (out_dir created);
  returns the path."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, name)
  write_json_atomic(path, obj)
  return path


def print_rows(rows: Sequence[dict], columns: Sequence[tuple]) -> None:
  """A benchmark's table: one line per row dict, one column per
  (header, key, format spec) in `columns`, right-aligned."""
  widths = [max(len(h), 8) for h, _, _ in columns]
  print(" ".join(f"{h:>{w}}" for (h, _, _), w in zip(columns, widths)))
  for r in rows:
    cells = [format(r[k], f) for _, k, f in columns]
    print(" ".join(f"{c:>{w}}" for c, w in zip(cells, widths)))


def save_npz_atomic(path: str, **arrays) -> None:
  """np.savez to `path` through a temporary file and os.replace (a pool or a
  data shard is either whole or absent)."""
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def save_config(workdir: str, config) -> str:
  """The run's whole config as `<workdir>/config.json` (atomically; read back
  by `load_policy` and by `pin_settings`' legacy readers). Returns the path."""
  from experiments import config_utils

  path = os.path.join(workdir, CONFIG_FILE)
  write_text_atomic(path, config_utils.to_json(config))
  return path


ROW_KEY = ("method", "budget", "seed")


def read_rows(path: str, key: Sequence[str] = ROW_KEY) -> dict:
  """Finished rows of a JSONL file, by the tuple of their `key` fields. A torn
  line left by a kill is dropped and the file rewritten (atomically) without
  it, so appends that follow start on a fresh line."""
  rows, good, torn = {}, [], False
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          r = json.loads(line)
          rows[tuple(r[k] for k in key)] = r
          if not line.endswith("\n"):
            torn, line = True, line + "\n"
          good.append(line)
        except (json.JSONDecodeError, KeyError):
          torn = True
    if torn:
      with open(path + ".tmp", "w") as f:
        f.writelines(good)
      os.replace(path + ".tmp", path)
  return rows


def append_row(path: str, row: dict) -> None:
  """One JSON line appended to `path`, flushed and fsynced (a killed run loses
  at most the line it was writing, which `read_rows` drops)."""
  with open(path, "a") as f:
    f.write(json.dumps(row) + "\n")
    f.flush()
    os.fsync(f.fileno())


class MissingInput(app.UsageError, ValueError):
  """An input file a config field points to is missing: absl's `app.run`
  prints it as a usage line (no traceback); still a ValueError."""


def require_files(config, field: str, names: Sequence[str], hint: str = "") -> None:
  """Every name in `names` exists in the directory `config.<field>`.

  Raises:
    MissingInput (a ValueError): naming the field, its value and the first
      missing file (`hint` is appended to the message, e.g. what to run first).
  """
  d = config[field]
  for name in names:
    path = os.path.join(d, name)
    if not os.path.exists(path):
      raise MissingInput(
        f"config.{field}={d!r} has no {name} ({path} does not exist{hint})"
      )


# --------------------------------- models ----------------------------------


def load_model(model_dir: str, params_name: str):
  """(ModelConfig, params) a training script saved: `<model_dir>/
  model_config.json` (jaxllm.checkpoint.load_model_config) and the orbax
  params `<model_dir>/<params_name>`."""
  from jaxllm import checkpoint

  cfg = checkpoint.load_model_config(model_dir)
  return cfg, checkpoint.restore_params(os.path.join(model_dir, params_name), cfg)


def load_policy(policy_dir: str):
  """(ModelConfig, params, training config as a ConfigDict) of a policy
  written by experiments/train_policy.py.

  Raises:
    FileNotFoundError / ValueError: naming the missing or unreadable file.
  """
  import ml_collections

  from jaxllm import checkpoint

  cfg = checkpoint.load_model_config(policy_dir)
  path = os.path.join(policy_dir, CONFIG_FILE)
  obj = read_json(path)
  if obj is None:
    raise FileNotFoundError(f"{path} not found (the policy's training config)")
  params = checkpoint.restore_params(os.path.join(policy_dir, "policy"), cfg)
  return cfg, params, ml_collections.ConfigDict(obj)


def load_reward_models(verifier_dir: str, names: Sequence[str] = ("prm", "orm")):
  """(ModelConfig, {name: (RewardModel, params)}) of the reward models
  experiments/train_verifier.py wrote into `verifier_dir`."""
  from jaxllm import checkpoint, reward

  cfg = checkpoint.load_model_config(verifier_dir)
  return cfg, {
    n: (
      reward.RewardModel(cfg),
      reward.restore_reward_params(os.path.join(verifier_dir, n), cfg),
    )
    for n in names
  }


def load_pretrained(
  name: str = SMOLLM2,
  dtype: str = "float32",
  log: Optional[Callable[[str], None]] = None,
  shardings=None,
):
  """(ModelConfig, params, tokenizer) of a pretrained model shipped as a pip
  package (jaxllm.pretrained); with `log`, one progress line saying what was
  loaded, how large and how long it took. `shardings` (None, a Mesh, one
  Sharding or a Params tree of them) places each array as it is read
  (`jaxllm.pretrained.load_pretrained`)."""
  import jax

  from jaxllm import pretrained

  t0 = time.perf_counter()
  cfg, params, tok = pretrained.load_pretrained(name, dtype=dtype, shardings=shardings)
  if log is not None:
    log(
      f"loaded {name}: {cfg.param_counts()['total'] / 1e6:.1f}M params in "
      f"{time.perf_counter() - t0:.1f}s on {jax.default_backend()}"
    )
  return cfg, params, tok


def load_hf_pretrained(name: str = SMOLLM2, dtype: str = "float32"):
  """The same pretrained GGUF in transformers (a test / benchmark reference;
  the library never imports torch), in eval mode, on the GPU when torch sees
  one."""
  import torch
  import transformers

  from jaxllm.pretrained import pretrained_path

  path = pretrained_path(name)
  model = transformers.AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path), gguf_file=os.path.basename(path), dtype=getattr(torch, dtype)
  )
  return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def hf_sample(hf_model, ids_BxT, new_tokens: int):
  """transformers' plain temperature-1 sampling (no top-k / top-p) of exactly
  `new_tokens` tokens per row (a torch LongTensor [B, T] of equal-length
  prompts); returns the [B, T + new_tokens] ids, synchronised on a GPU."""
  import torch

  with torch.inference_mode():
    out = hf_model.generate(
      ids_BxT,
      attention_mask=torch.ones_like(ids_BxT),
      do_sample=True,
      temperature=1.0,
      top_k=0,
      top_p=1.0,
      max_new_tokens=new_tokens,
      min_new_tokens=new_tokens,
      pad_token_id=0,
    )
  if out.shape[1] != ids_BxT.shape[1] + new_tokens:
    raise RuntimeError(f"transformers stopped early: {out.shape[1]} ids")
  if ids_BxT.is_cuda:
    torch.cuda.synchronize()
  return out


# ------------------- SmolLM2's own answers (self-distillation) -------------------

ANSWER_BUCKETS = (256, 512)  # prompt-length buckets of `sample_answers`


def chat_prompts(tok, problems) -> list:
  """Token ids of each GSM8K problem's prompt (`gsm8k.format_prompt`) as one user
  turn in the tokenizer's chat template."""
  from experiments.tasks import gsm8k

  return [
    tok.apply_chat_template(
      [{"role": "user", "content": gsm8k.format_prompt(p.question)}]
    )
    for p in problems
  ]


def ragged(arrays) -> np.ndarray:
  """A 1-D object array holding `arrays` (np.array(..., dtype=object) would
  make one 2-D array of objects when they all have the same length)."""
  out = np.empty(len(arrays), dtype=object)
  for i, a in enumerate(arrays):
    out[i] = a
  return out


def save_pairs(path, pairs) -> None:
  """(prompt ids, answer ids) pairs as one npz (atomically): `seqs` (prompt +
  answer per pair, a `ragged` array) and `prompt_len`."""
  save_npz_atomic(
    path,
    seqs=ragged([np.array(list(p) + list(a), np.int32) for p, a in pairs]),
    prompt_len=np.array([len(p) for p, _ in pairs]),
  )


def load_pairs(path) -> list:
  """[(sequence, prompt length)] of a `save_pairs` file."""
  z = np.load(path, allow_pickle=True)  # our own file
  return list(zip(z["seqs"], z["prompt_len"]))


def sample_answers(
  model,
  params,
  tok,
  prompts,
  seed: int,
  max_new_tokens: int,
  gen_batch: int,
  buckets=ANSWER_BUCKETS,
) -> list:
  """The model's temperature-1 answers to `prompts` (token id lists), `gen_batch`
  prompts per `jaxllm.generate` call (the last call padded by repeating its last
  prompt, so there is one shape per bucket), each up to `max_new_tokens` and
  stopped at the tokenizer's EOS. Returns [(prompt ids, answer ids incl. EOS)]."""
  import jax

  from jaxllm.generate import generate
  from jaxllm.sampling import make_sampling

  out = []
  size = min(gen_batch, len(prompts))  # a short list is not padded to gen_batch
  for i in range(0, len(prompts), size):
    chunk = prompts[i : i + size]
    n = len(chunk)
    chunk = chunk + [chunk[-1]] * (size - n)
    g = generate(
      model,
      params,
      chunk,
      jax.random.key(seed + i),
      max_new_tokens,
      make_sampling(1.0),
      stop_tokens=[tok.eos_id],
      buckets=buckets,
    )
    toks, lens = np.asarray(g.tokens), np.asarray(g.lengths)
    out += [(chunk[j], toks[j, : lens[j]].tolist()) for j in range(n)]
  return out


# ------------------------- progress and benchmarks -------------------------


def run_module(args) -> float:
  """`python -m <args>` in a child process (one stage of a chained study),
  its command line logged first; returns its wall seconds.

  Raises:
    SystemExit: naming the module when it exits with a non-zero status (its
      own message is above).
  """
  import subprocess
  import sys

  progress("$ " + " ".join(args))
  t0 = time.perf_counter()
  rc = subprocess.run([sys.executable, "-m", *args]).returncode
  if rc:
    raise SystemExit(
      f"stopped: {args[0]} exited with status {rc} (its message is above)"
    )
  dt = time.perf_counter() - t0
  progress(f"  ({dt:.0f}s)")
  return dt


def progress(line: str) -> None:
  """One progress line on stdout, flushed (the default `log` of the scripts'
  library functions; tests pass their own)."""
  print(line, flush=True)


def median_time(fn: Callable[[], Any], repeats: int):
  """(median seconds, every time) of `repeats` calls of `fn`, which must block
  until its result is ready (jax.block_until_ready); warm up before."""
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return float(np.median(ts)), ts


# ------------------------------ command line --------------------------------


def define_flags(
  default_workdir: Optional[str],
  default_config: Optional[str] = None,
  workdir_help: str = "Output directory.",
) -> None:
  """--workdir and, with `default_config` (a configs/*.py path), --config
  (`config_flags.DEFINE_config_file`: `--config=FILE --config.a.b=VALUE`)."""
  if default_config is not None:
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
      "config",
      default_config,
      "Config file (configs/*.py); override fields with --config.FIELD=V.",
    )
  flags.DEFINE_string("workdir", default_workdir, workdir_help)


def config_from_flags(
  schema_path: str | Callable[[Any], str],
  check: Optional[Callable[[Any, str], None]] = None,
):
  """The --config flag's config, checked against the schema file's
  `get_config()` and locked (`config_utils.validate`), then `check(config,
  --workdir)` (the script's dry run: value ranges, the workdir's pinned
  settings). Nothing is loaded or written. `schema_path` may be a function
  of the config (a script whose configs name their own schema).

  Raises:
    app.UsageError: the first problem found (every ValueError), which absl
      prints before exiting with status 1.
  """
  from experiments import config_utils

  try:
    if callable(schema_path):
      schema_path = schema_path(flags.FLAGS.config)
    config = config_utils.validate(
      flags.FLAGS.config, config_utils.load_config_file(schema_path)
    )
    if check is not None:
      check(config, flags.FLAGS.workdir)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  return config


def run_cli(fn: Callable[..., Any], *args, **kwargs):
  """fn(*args, **kwargs) for a script's main, with orbax's per-file INFO logs
  silenced and a workdir held by another run (`WorkdirBusy`, naming its pid)
  reported as a usage error."""
  logging.set_verbosity(logging.WARNING)
  try:
    return fn(*args, **kwargs)
  except WorkdirBusy as e:
    raise app.UsageError(str(e)) from None


def flag_ints(name: str, low: int = 1) -> list[int]:
  """A list flag (flags.DEFINE_list) as ints >= `low`.

  Raises:
    app.UsageError: naming the flag, when it is empty or holds a non-int or a
      value below `low`.
  """
  raw = getattr(flags.FLAGS, name)
  out = []
  for x in raw:
    try:
      out.append(int(x))
    except ValueError:
      raise app.UsageError(f"--{name}: {x!r} is not an int") from None
  if not out or min(out) < low:
    raise app.UsageError(
      f"--{name} must be a non-empty list of ints >= {low}, got {raw}"
    )
  return out


def flags_at_least(low, *names: str) -> None:
  """Every flag in `names` is >= `low`.

  Raises:
    app.UsageError: "--NAME must be >= LOW, got V" for the first that is not.
  """
  for n in names:
    v = getattr(flags.FLAGS, n)
    if v < low:
      raise app.UsageError(f"--{n} must be >= {low}, got {v}")
