"""Integer codes for number formats and granularities, and their validation.

Codes are plain ints so that a plan is an array of data: one compiled function
serves every bit width, format and granularity.

Formats (`FORMATS`):
  0 ``int``       integer grid.
  1 ``float``     minifloat, mantissa-heavy variant (see `formats.py`).
  2 ``float_exp`` minifloat, exponent-heavy variant (e3m2 at 6 bits, e5m2 at 8).

Granularities (`GRANULARITIES`):
  0 ``uniform``      one symmetric absmax scale per tensor.
  1 ``log``          sign plus power-of-two levels (the format code is ignored:
                     a log grid already is a pure-exponent float).
  2 ``per_channel``  one absmax scale per output channel.
  3 ``learned``      one trainable step size per output channel (LSQ).
  4 ``asymmetric``   per-tensor min/max scale and zero point (INT only).

Bits are 2..8; `FP32_BITS` (32) is the sentinel for "leave unquantized".
"""

from __future__ import annotations

import numpy as np

FORMATS = ("int", "float", "float_exp")
GRANULARITIES = ("uniform", "log", "per_channel", "learned", "asymmetric")

INT, FLOAT, FLOAT_EXP = 0, 1, 2
UNIFORM, LOG, PER_CHANNEL, LEARNED, ASYMMETRIC = 0, 1, 2, 3, 4

MIN_BITS, MAX_BITS = 2, 8
FP32_BITS = 32
MIN_KEEP, MAX_KEEP = 0.2, 1.0


def format_code(name: str) -> int:
  """Returns the code of a format name; raises ValueError on an unknown name."""
  if name not in FORMATS:
    raise ValueError(f"unknown number format {name!r}; choose one of {', '.join(FORMATS)}")
  return FORMATS.index(name)


def granularity_code(name: str) -> int:
  """Returns the code of a granularity name; raises ValueError on an unknown name."""
  key = name.replace("-", "_")
  if key not in GRANULARITIES:
    raise ValueError(
        f"unknown granularity {name!r}; choose one of {', '.join(GRANULARITIES)}")
  return GRANULARITIES.index(key)


def check_bits(bits) -> None:
  """Raises ValueError unless every entry is in 2..8 or the FP32 sentinel 32."""
  b = np.asarray(bits)
  ok = ((b >= MIN_BITS) & (b <= MAX_BITS)) | (b == FP32_BITS)
  if not ok.all():
    bad = b[~ok].ravel()[0].item()
    raise ValueError(
        f"bits={bad!r} is out of range; use {MIN_BITS}..{MAX_BITS} (or {FP32_BITS} for unquantized)")


def check_keep(keep) -> None:
  """Raises ValueError unless every keep ratio is finite and in [0.2, 1]."""
  k = np.asarray(keep, dtype=np.float64)
  ok = np.isfinite(k) & (k >= MIN_KEEP - 1e-6) & (k <= MAX_KEEP + 1e-6)
  if not ok.all():
    bad = k[~ok].ravel()[0].item()
    raise ValueError(f"keep ratio {bad:.4g} is out of range; use a value in [{MIN_KEEP}, {MAX_KEEP}]")


def check_codes(fmt, gran) -> None:
  """Raises ValueError on an unknown format or granularity code, or asymmetric FLOAT."""
  f, g = np.asarray(fmt), np.asarray(gran)
  if not ((f >= 0) & (f < len(FORMATS))).all():
    raise ValueError(f"unknown format code {f[(f < 0) | (f >= len(FORMATS))].ravel()[0].item()}; "
                     f"codes are 0..{len(FORMATS) - 1} for {FORMATS}")
  if not ((g >= 0) & (g < len(GRANULARITIES))).all():
    raise ValueError(f"unknown granularity code {g[(g < 0) | (g >= len(GRANULARITIES))].ravel()[0].item()}; "
                     f"codes are 0..{len(GRANULARITIES) - 1} for {GRANULARITIES}")
  if ((g == ASYMMETRIC) & (f != INT)).any():
    raise ValueError("granularity 'asymmetric' needs format 'int'; a minifloat grid is symmetric")
