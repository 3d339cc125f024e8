"""SIGINT and SIGTERM that no callback can swallow.

Python raises a signal's exception wherever the main thread happens to be. When that is a
garbage-collector callback (JAX's `_xla_gc_callback`), a `__del__` or an asyncio callback,
the exception is printed as "ignored" and dropped, and the run goes on to finish with status
0. So the handler also records the signal, and `check()` (called between training chunks,
at every logged event and after the work) raises it again until it has reached `watched`.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_pending: list[type[BaseException]] = []


class Terminated(SystemExit):
  """SIGTERM, raised like SIGINT's KeyboardInterrupt: not an Exception, so no `except
  Exception` on the way stops it, and a SystemExit, which asyncio re-raises."""
  code = 143


def _raise(signum, frame):
  err = KeyboardInterrupt if signum == signal.SIGINT else Terminated
  _pending.append(err)
  raise err


def check() -> None:
  """Raises again a signal received while a callback swallowed its exception; else nothing."""
  if _pending:
    raise _pending[0]


@contextlib.contextmanager
def watched():
  """Within: SIGTERM raises `Terminated`, SIGINT `KeyboardInterrupt`, both recorded for
  `check`. A SIGINT the process inherited as ignored (a shell's background job) stays
  ignored. Outside the main thread, where Python delivers no signals, nothing changes."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  names = [signal.SIGTERM] + [signal.SIGINT] * (signal.getsignal(signal.SIGINT) is signal.default_int_handler)
  previous = {s: signal.signal(s, _raise) for s in names}
  _pending.clear()
  try:
    yield
    check()
  finally:
    _pending.clear()
    for s, handler in previous.items():
      signal.signal(s, handler)
