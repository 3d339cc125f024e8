"""Progress bars with ETA (tqdm), silenced by quiet mode or a non-interactive run."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(*, total: int, desc: str, disable: bool = False):
  """A tqdm bar on stderr; disabled when `disable` is set."""
  return tqdm(total=total, desc=desc, disable=disable, file=sys.stderr, dynamic_ncols=True,
              leave=False, mininterval=1.0)
