"""SIGINT and SIGTERM that no callback can swallow.

Python raises a signal's exception wherever the main thread happens to be. When that is a
garbage-collector callback (JAX's `_xla_gc_callback`), a `__del__` or an asyncio callback,
the exception is printed as "ignored" and dropped, and the run goes on to finish with status
0. So the handler also records the signal, and `check()` (called between training chunks,
at every logged event and after the work) raises it again until it has reached `watched`.
In a cluster (`jax.distributed`) JAX's preemption service takes SIGTERM instead, and `check()`
asks it, so that every process stops at the same call.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import sys
import threading

_pending: list[type[BaseException]] = []
_calls = itertools.count()   # `check`'s calls, the step ids of JAX's preemption sync


class Terminated(SystemExit):
  """SIGTERM, raised like SIGINT's KeyboardInterrupt: not an Exception, so no `except
  Exception` on the way stops it, and a SystemExit, which asyncio re-raises."""
  code = 143


def _raise(signum, frame):
  err = KeyboardInterrupt if signum == signal.SIGINT else Terminated
  _pending.append(err)
  raise err


def check() -> None:
  """Raises again a signal received while a callback swallowed its exception; in a cluster,
  raises `Terminated` on every process at the same call once any of them got SIGTERM; else
  nothing. Every process must call it at the same points (they run the same programs)."""
  if _pending:
    raise _pending[0]
  if _preempted():
    raise Terminated


def _preempted() -> bool:
  """Whether the processes of a cluster agree to stop here: under `jax.distributed`, JAX's
  preemption service takes SIGTERM (Python's handler never runs) and tells every process;
  `reached_preemption_sync_point` then says True on all of them at one numbered call."""
  if not _in_cluster():
    return False
  from jax.experimental import multihost_utils
  try:
    return multihost_utils.reached_preemption_sync_point(next(_calls))
  except RuntimeError:   # the preemption service is off: SIGTERM reaches Python's handler
    return False


def _in_cluster() -> bool:
  """Whether this process joined `jax.distributed` (without importing JAX when it has not)."""
  jax = sys.modules.get("jax")
  return jax is not None and jax.distributed.is_initialized()


@contextlib.contextmanager
def watched():
  """Within: SIGTERM raises `Terminated`, SIGINT `KeyboardInterrupt`, both recorded for
  `check`. A SIGINT the process inherited as ignored (a shell's background job) stays
  ignored; SIGTERM stays with JAX's preemption service in a cluster joined before (`check`).
  Outside the main thread, where Python delivers no signals, nothing changes."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  names = [signal.SIGTERM] * (not _in_cluster()) + \
      [signal.SIGINT] * (signal.getsignal(signal.SIGINT) is signal.default_int_handler)
  previous = {s: signal.signal(s, _raise) for s in names}
  _pending.clear()
  try:
    yield
    check()
  finally:
    _pending.clear()
    for s, handler in previous.items():
      signal.signal(s, handler)
