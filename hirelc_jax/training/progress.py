"""Progress bars with ETA (tqdm): redrawn in a terminal, whole lines in a log.

When stderr is not a terminal (a batch job's log file, a pipe), a redrawn bar
would leave one carriage-return frame per update in the file; there the bar
writes a whole line at most every `LOG_INTERVAL_S` seconds, and its last state
when it ends.
"""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

LOG_INTERVAL_S = 10.0


class LogLines(tqdm):
  """A tqdm bar that prints whole lines, at most one per `interval_s` and one at the end."""

  def __init__(self, *args, interval_s: float = LOG_INTERVAL_S, **kwargs):
    self._interval_s, self._printed_at, self._printed_n = interval_s, -float("inf"), None
    super().__init__(*args, **kwargs)

  def display(self, msg=None, pos=None):
    """Prints the bar's state as one line when due; ``msg == ''`` (tqdm's clear) ends the bar."""
    closing = msg == ""
    now = time.monotonic()
    done = self.total is not None and self.n >= self.total
    due = (now - self._printed_at >= self._interval_s or done) and self._printed_n != self.n
    if (closing and self._printed_n != self.n) or (not closing and msg is None and due):
      self.fp.write(self.__str__() + "\n")
      self.fp.flush()
      self._printed_at, self._printed_n = now, self.n
    return not closing  # tqdm follows a successful clear with a carriage return

  def clear(self, nolock=False):
    """Nothing to erase in a log."""

  def moveto(self, n):
    """Lines are never revisited in a log."""


def progress(*, total: int, desc: str, disable: bool = False, file=None):
  """A progress bar on `file` (default stderr); disabled when `disable` is set.

  A terminal gets tqdm's redrawn bar; anything else `LogLines`.
  """
  file = sys.stderr if file is None else file
  interactive = getattr(file, "isatty", lambda: False)()
  cls = tqdm if interactive else LogLines
  return cls(total=total, desc=desc, disable=disable, file=file, dynamic_ncols=interactive,
             leave=False, mininterval=1.0)
