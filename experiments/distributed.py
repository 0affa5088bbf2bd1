"""Multi-device and multi-host plumbing shared by the experiment scripts.

  from experiments import distributed
  distributed.define_flags()  # --coordinator_address, --num_processes,
                              # --process_id, --distributed, --mesh
  def main(_):
    distributed.maybe_initialize()      # before any other JAX call
    mesh = distributed.mesh_from_flags()
    mine = distributed.split_for_process(problems)
    local = [solve(p, mesh) for p in mine]
    rows = distributed.gather_split(local, len(problems))  # every process
    if distributed.is_writer():
      write(rows)

Every process runs the same script (SPMD). `maybe_initialize` starts
`jax.distributed` when the flags ask for it or the environment is a
multi-process SLURM / Open MPI / TPU-pod job; then `jax.devices()` lists the
devices of all processes and a mesh spans them. Problems (prompts, seeds) can
be split across processes (`split_for_process`); `gather_split` brings the
per-problem results back, in the original order, to every process with one
collective (`jax.experimental.multihost_utils.process_allgather` over the
pickled results: it needs no shared filesystem, and works on CPU through the
gloo collectives). Only process 0 writes (`is_writer`).

Built on that gather: `split_map(fn, items)` (the split, the calls and the
gather in one), `from_writer(obj)` (process 0's value everywhere, e.g. what
it read from the workdir only it touches), `raise_together(error)` /
`run_together(fn)` (a failure on one process is raised on all, so none waits
in a collective for a process that gave up), and `single_process(script,
why)` for the scripts that run in one process only (they still take the
flags, and refuse a multi-process run or a --mesh, saying why).
Used by experiments/scaling.py; tests/test_multihost.py runs it in two
processes on localhost.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
MODES = ("auto", "on", "off")


class FlagError(app.UsageError, ValueError):
  """A bad multi-process flag: absl's `app.run` prints it as a usage line (exit
  code 1, no traceback); still a ValueError for callers that catch those."""


def define_flags() -> None:
  """Define the shared distributed flags (idempotent: a second call, e.g.
  from a second module of the same script, is a no-op).

    --coordinator_address  host:port of process 0's coordinator service.
    --num_processes        how many processes take part.
    --process_id           this process's id in [0, num_processes).
    --distributed          auto | on | off (see `maybe_initialize`).
    --mesh                 device mesh, e.g. "data=4,model=2"
                           (jaxllm.sharding.make_mesh; default: all devices
                           on `data`).
  """
  if "distributed" in FLAGS:
    return
  flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0 (jax.distributed). Unset: "
    "detected on SLURM / Open MPI / TPU pods.",
  )
  flags.DEFINE_integer("num_processes", None, "Number of processes (jax.distributed).")
  flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes).")
  flags.DEFINE_enum(
    "distributed",
    "auto",
    list(MODES),
    "auto: start jax.distributed when the flags above are "
    "given or the environment is a multi-process SLURM / "
    "Open MPI / TPU-pod job; on: always (JAX detects what the "
    "flags leave out, e.g. a GCE TPU pod slice's workers); "
    "off: never.",
  )
  flags.DEFINE_string(
    "mesh",
    None,
    "Device mesh, e.g. 'data=4,model=2' (axes data, fsdp, "
    "model; one may be -1). Default: every device on data.",
  )


def _flag(name: str):
  return getattr(FLAGS, name) if name in FLAGS and FLAGS.is_parsed() else None


def cluster_from_env(environ: Optional[dict] = None) -> Optional[str]:
  """Which multi-process launcher started this process, from its environment:
  "slurm" (srun with more than one task), "ompi" (mpirun with more than one
  process), "tpu" (a TPU pod / multislice environment that names its
  workers), or None (a single process, or nothing recognised).

  A GCE TPU VM keeps its worker list in the metadata server, not in the
  environment: pass --distributed=on there (JAX then asks the server).
  """
  env = os.environ if environ is None else environ

  def count(name):
    try:
      return int(env.get(name, "1"))
    except ValueError:
      return 1

  slurm = (
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
  )
  if all(k in env for k in slurm) and count("SLURM_NTASKS") > 1:
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in env and count("OMPI_COMM_WORLD_SIZE") > 1:
    return "ompi"
  hosts = env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_PROCESS_ADDRESSES")
  if (hosts and len([h for h in hosts.split(",") if h.strip()]) > 1) or env.get(
    "MEGASCALE_COORDINATOR_ADDRESS"
  ):
    return "tpu"
  return None


def maybe_initialize(
  *,
  coordinator_address: Optional[str] = None,
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
  mode: Optional[str] = None,
  timeout_s: int = 300,
) -> Optional[str]:
  """Start `jax.distributed` if this run is multi-process; call it before
  any other JAX call (it must precede backend initialisation).

  Arguments default to the flags of `define_flags` (when parsed). With mode
  "auto": initialise when `num_processes` > 1 or a coordinator address is
  given, or when `cluster_from_env()` recognises a multi-process job (JAX then
  detects address, count and id itself); "on": always initialise (passing
  whatever is given); "off": never. A second call after initialisation
  returns "already".

  Also selects the gloo CPU collectives (when this JAX has the option and no
  implementation is set), so cross-process collectives work on CPU.

  Returns:
    Why it initialised ("flags", "slurm", "ompi", "tpu", "on", "already"),
    or None when it did not.

  Raises:
    FlagError (a ValueError and absl UsageError): an unknown mode; a process_id outside [0, num_processes);
      num_processes < 1; num_processes > 1 without a coordinator address, or a
      coordinator address without num_processes and process_id, outside a
      recognised cluster; on process 0, a coordinator port that is already in
      use on this host (checked before JAX tries to bind it, whose error does
      not say so).
    RuntimeError: from jax.distributed.initialize, e.g. when JAX's backend is
      already initialised or the coordinator cannot be reached within
      `timeout_s` seconds.
  """
  coordinator_address = (
    coordinator_address
    if coordinator_address is not None
    else _flag("coordinator_address")
  )
  num_processes = num_processes if num_processes is not None else _flag("num_processes")
  process_id = process_id if process_id is not None else _flag("process_id")
  mode = mode or _flag("distributed") or "auto"
  if mode not in MODES:
    raise FlagError(f"--distributed must be one of {MODES}, got {mode!r}")
  if jax.distributed.is_initialized():
    return "already"
  if num_processes is not None and num_processes < 1:
    raise FlagError(f"--num_processes must be >= 1, got {num_processes}")
  if (
    process_id is not None
    and num_processes is not None
    and not (0 <= process_id < num_processes)
  ):
    raise FlagError(
      f"--process_id={process_id} is outside [0, --num_processes={num_processes})"
    )
  if mode == "off":
    return None
  cluster = cluster_from_env()
  explicit = bool(coordinator_address) or (num_processes or 1) > 1
  if mode == "auto":
    if not explicit and cluster is None:
      if process_id is not None:  # a lone --process_id would be ignored
        raise FlagError(
          f"--process_id={process_id} needs --coordinator_address=HOST:PORT and "
          "--num_processes outside SLURM / Open MPI / TPU pods"
        )
      return None
    if cluster is None:
      _check_explicit_flags(coordinator_address, num_processes, process_id)
  _start(coordinator_address, num_processes, process_id, timeout_s)
  if mode == "on":
    return "on"
  return "flags" if explicit else cluster


def _start(coordinator_address, num_processes, process_id, timeout_s: int) -> None:
  """Check the address, select gloo CPU collectives, start jax.distributed."""
  if "jax_cpu_collectives_implementation" in jax.config.values and jax.config.values[
    "jax_cpu_collectives_implementation"
  ] in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address:
    port = _address_port(coordinator_address)
    if process_id == 0:
      _check_port_free(coordinator_address, port)
    print(
      f"jax.distributed: process {process_id} of {num_processes} waiting for the "
      f"others at {coordinator_address} (timeout {timeout_s} s)",
      flush=True,
    )
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    initialization_timeout=timeout_s,
  )


def _check_explicit_flags(coordinator_address, num_processes, process_id) -> None:
  """Outside a recognised cluster, a multi-process run names all three flags.

  Raises:
    FlagError: naming the missing flags.
  """
  if not coordinator_address:
    raise FlagError(
      f"--num_processes={num_processes} needs "
      "--coordinator_address=HOST:PORT (process 0's "
      "address) outside SLURM / Open MPI / TPU pods"
    )
  missing = [
    f"--{n}"
    for n, v in (("num_processes", num_processes), ("process_id", process_id))
    if v is None
  ]
  if missing:
    raise FlagError(
      f"--coordinator_address={coordinator_address} also needs "
      f"{' and '.join(missing)} outside SLURM / Open MPI / TPU pods"
    )


def _address_port(address: str) -> int:
  """The port of a HOST:PORT coordinator address (checked on every process).

  Raises:
    FlagError: naming --coordinator_address, for another form.
  """
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise FlagError(f"--coordinator_address must be HOST:PORT, got {address!r}")
  return int(port)


def _check_port_free(address: str, port: int) -> None:
  """Process 0 starts the coordinator service on `address`'s port: refuse a port
  another program (e.g. an earlier run still alive) already listens on.

  Raises:
    FlagError: naming --coordinator_address, for a port in use.
  """
  import socket

  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      sock.bind(("", port))
    except OSError as e:
      raise FlagError(
        f"--coordinator_address={address}: port {port} is already in use on this "
        f"host (process 0 starts the coordinator there; is an earlier run still "
        f"alive?): {e.strerror}"
      ) from None


def mesh_from_flags(devices=None):
  """`jaxllm.sharding.make_mesh(--mesh)` over all processes' devices.

  Raises:
    ValueError: a bad --mesh spec (naming the axis and the numbers).
  """
  from jaxllm import sharding

  try:
    return sharding.make_mesh(_flag("mesh"), devices)
  except ValueError as e:
    raise ValueError(f"--mesh: {e}") from None


def is_writer() -> bool:
  """True on process 0 only: the one process that writes files."""
  return jax.process_index() == 0


def split_for_process(
  items: Sequence[Any],
  *,
  process_id: Optional[int] = None,
  num_processes: Optional[int] = None,
) -> list:
  """This process's share of `items`: items[process_id::num_processes]
  (strided, so each process gets easy and hard problems alike; sizes differ
  by at most one). Defaults: jax.process_index() / jax.process_count().
  `gather_split` puts the per-item results back in order.

  Raises:
    ValueError: process_id outside [0, num_processes).
  """
  pid = jax.process_index() if process_id is None else process_id
  n = jax.process_count() if num_processes is None else num_processes
  if not 0 <= pid < n:
    raise ValueError(f"process_id={pid} is outside [0, num_processes={n})")
  return list(items)[pid::n]


def allgather_objects(obj: Any) -> list:
  """[obj of process 0, obj of process 1, ...] on every process.

  Objects are pickled (all processes run the same trusted program), padded
  to one length and exchanged with `process_allgather` (a jitted all-gather:
  it needs the devices of all processes, not a shared filesystem). Every
  process must call it, in the same order. One process: [obj].
  """
  if jax.process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils

  data = np.frombuffer(pickle.dumps(obj), np.uint8)
  sizes = np.asarray(
    multihost_utils.process_allgather(np.array([data.size], np.int64))
  ).reshape(-1)
  buf = np.zeros((int(sizes.max()),), np.uint8)
  buf[: data.size] = data
  every = np.asarray(multihost_utils.process_allgather(buf))
  return [pickle.loads(every[p, : int(sizes[p])].tobytes()) for p in range(len(sizes))]


def split_map(fn: Callable[[Any], Any], items: Sequence[Any]) -> list:
  """[fn(x) for x in items] with the calls split across processes: each
  process calls `fn` on its share (`split_for_process`) and every process
  gets all results in item order (`gather_split`). Every process must call
  it, with the same items. One process: the plain list comprehension."""
  items = list(items)
  return gather_split([fn(x) for x in split_for_process(items)], len(items))


def from_writer(obj: Any) -> Any:
  """Process 0's `obj` on every process (what only process 0 reads, e.g. the
  finished rows in its workdir). Every process must call it, in the same
  order; the other processes' `obj` is ignored. One process: `obj`."""
  if jax.process_count() == 1:
    return obj
  return allgather_objects(obj if is_writer() else None)[0]


def raise_together(error: Optional[BaseException]) -> None:
  """Turn one process's failure into every process's, so that no process is
  left waiting in a collective for one that gave up. Every process passes
  its error (or None), in the same order.

  Raises:
    `error` itself, on a process that has one; on the others (when any
    process failed) a RuntimeError naming the first failing process and its
    message. One process: `error`, if given.
  """
  if jax.process_count() > 1:
    msgs = allgather_objects(
      None if error is None else f"{type(error).__name__}: {error}"
    )
    failed = [(p, m) for p, m in enumerate(msgs) if m is not None]
    if failed and error is None:
      p, m = failed[0]
      raise RuntimeError(f"process {p} failed, so this one stops too: {m}")
  if error is not None:
    raise error


def run_together(fn: Callable[[], Any], *, writer_only: bool = False) -> Any:
  """fn() on every process (on process 0 only with `writer_only`; the others
  get None), with a failure on any process raised on all of them
  (`raise_together`). Every process must call it, in the same order."""
  result, error = None, None
  if is_writer() or not writer_only:
    try:
      result = fn()
    except Exception as e:  # noqa: BLE001 -- raised below, on every process
      error = e
  raise_together(error)
  return result


def single_process(script: str, why: str) -> None:
  """For a script that runs in one process only: `maybe_initialize` (so the
  shared flags and cluster detection behave as everywhere), then refuse a
  multi-process run or a --mesh, saying why.

  Raises:
    app.UsageError: more than one process, or --mesh given.
  """
  from absl import app

  maybe_initialize()
  if jax.process_count() > 1:
    raise app.UsageError(
      f"{script} runs in one process ({why}); this run has "
      f"{jax.process_count()} processes"
    )
  if _flag("mesh"):
    raise app.UsageError(f"--mesh: {script} does not shard over a mesh ({why})")


def gather_split(local_results: Sequence[Any], n_items: int) -> list:
  """The inverse of `split_for_process`: every process passes the results of
  its share (in its share's order); every process gets all `n_items`
  results in the original item order.

  Raises:
    ValueError: a process passed a number of results that does not match its
      share of `n_items` (naming the process and both numbers).
  """
  parts = allgather_objects(list(local_results))
  n = len(parts)
  for p, part in enumerate(parts):
    want = len(range(p, n_items, n))
    if len(part) != want:
      raise ValueError(
        f"process {p} returned {len(part)} results for its {want} of {n_items} items"
      )
  return [parts[i % n][i // n] for i in range(n_items)]
