"""Several processes (hosts) running one search together, with `jax.distributed`.

Every process runs the same programs in the same order on the same inputs
(data, seeds and configs are deterministic), over one mesh of every
process's devices (`training.placement`); process 0 alone writes the run
folder and the baseline cache, and the others read what it wrote (the output
folder and the cache must be one shared file system, as on a SLURM cluster
or a TPU pod with a mounted bucket).

`initialize` is called before JAX starts its backend. The cluster comes from
the arguments, else `HIRELC_COORDINATOR` / `HIRELC_NUM_PROCESSES` /
`HIRELC_PROCESS_ID`, else JAX's own detection (SLURM, Open MPI, TPU pods)
when the environment names several tasks; with none of these the run stays
one process. On CPU the processes talk through gloo collectives.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import jax
import numpy as np

ENV = {"coordinator": "HIRELC_COORDINATOR", "num_processes": "HIRELC_NUM_PROCESSES",
       "process_id": "HIRELC_PROCESS_ID"}


def cluster_from(coordinator: Optional[str], num_processes: Optional[int],
                 process_id: Optional[int]) -> Optional[dict]:
  """The explicit cluster (arguments first, then the HIRELC_* variables) as
  `jax.distributed.initialize` keywords; None when neither names one.

  Raises:
    ValueError: a partial or inconsistent cluster (a count without a coordinator, an id
      outside 0..count-1, a variable that is not an integer).
  """
  given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
  for name, var in ENV.items():
    if given[name] is None and os.environ.get(var):
      raw = os.environ[var]
      try:
        given[name] = raw if name == "coordinator" else int(raw)
      except ValueError:
        raise ValueError(f"{var}={raw!r} is not an integer; set it to the process "
                         f"{'count' if name == 'num_processes' else 'index'}") from None
  if all(v is None for v in given.values()):
    return None
  missing = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is None]
  if missing:
    raise ValueError(f"a cluster needs --coordinator, --num-processes and --process-id (or "
                     f"{', '.join(ENV.values())}); {', '.join(missing)} missing")
  n, i = given["num_processes"], given["process_id"]
  if n < 1 or not 0 <= i < n:
    raise ValueError(f"--process-id {i} with --num-processes {n}: the id must be 0 to {n - 1}")
  return {"coordinator_address": given["coordinator"], "num_processes": n, "process_id": i}


def _detected() -> bool:
  """Whether the environment is one of JAX's auto-detected clusters with several tasks."""
  for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if int(os.environ.get(var, "1") or 1) > 1:
      return True
  return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> int:
  """Joins the cluster the arguments or the environment describe (see the module doc);
  returns the process count (1: nothing to join). Call before any other JAX work."""
  cluster = cluster_from(coordinator, num_processes, process_id)
  if cluster is None and not _detected():
    return 1
  if jax.distributed.is_initialized():
    return jax.process_count()
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**(cluster or {}))
  return jax.process_count()


def several() -> bool:
  """Whether this process joined a cluster of several (without starting JAX's backend otherwise)."""
  return jax.distributed.is_initialized() and jax.process_count() > 1


def leave(code: int) -> None:
  """Ends this process at once with exit status `code` when it failed (`code` not 0) and is
  one of several; otherwise returns.

  At a normal exit, JAX's exit handler waits at a shutdown barrier for every process (up to
  5 minutes), while the others wait for this one in their next collective: one preempted or
  failing process held the whole cluster that long (300 s on localhost). `os._exit` closes its
  connections instead, so the others' collectives fail at once and they leave the same way
  (within seconds). A run that succeeded exits normally, through the barrier.
  """
  if code and several():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def writes() -> bool:
  """Whether this process writes files (process 0; every process when there is one)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def agree(ok: bool) -> bool:
  """Process 0's `ok`, on every process (for decisions that only process 0 can make)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def fetch(x) -> np.ndarray:
  """`x` as a numpy array on this host, gathered from every process when it is split
  over devices of several."""
  if getattr(x, "is_fully_addressable", True) or getattr(x, "is_fully_replicated", False):
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
