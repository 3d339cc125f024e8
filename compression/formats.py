"""Minifloat formats for weight quantization, as lookup tables of traced codes.

Every table is indexed by ``[format_code, bits]`` (shape ``[3, 9]``), so one
compiled function serves every format and bit width: the codes are gathered
with `jnp.take` and never branch in Python.

Format code 1 (``float``, mantissa-heavy) and 2 (``float_exp``,
exponent-heavy) by bit width; ``eXmY`` is X exponent bits and Y mantissa bits
after a sign bit, with bias ``2**(X-1) - 1``::

  bits   float   float_exp
    2    e1m0    e1m0
    3    e1m1    e2m0
    4    e2m1    e3m0
    5    e2m2    e3m1
    6    e2m3    e3m2
    7    e3m3    e4m2
    8    e4m3    e5m2

Choices:
  * The ``float`` column follows the OCP microscaling formats where they exist
    (FP4 e2m1, FP6 e2m3, FP8 e4m3) and fills the gaps monotonically: e2m2 at 5
    bits keeps FP4/FP6's two exponent bits and adds one mantissa bit, and e3m3
    at 7 bits is the one step between e2m3 and e4m3 that keeps three mantissa
    bits while adding the exponent bit e4m3 needs.
  * The ``float_exp`` column trades mantissa for range: FP6 e3m2 and FP8 e5m2
    are the OCP / IEEE-like formats; e3m0 at 4 bits is a pure power-of-two grid.
  * 2- and 3-bit minifloats degenerate to tiny grids: e1m0 is ``{0, +-2}`` (a
    ternary grid), e1m1 is ``{0, +-1, +-2, +-3}`` (the INT3 grid) and e2m0 is
    ``{0, +-1, +-2, +-4}``; they exist so that every bit width has a float row.

Special values: every format is "finite-only" (all exponent codes are finite
binades, no inf/NaN; max = ``2**(2**E - 1 - bias) * (2 - 2**-M)``), except
e4m3, which follows ``ml_dtypes.float8_e4m3fn`` (only the top mantissa code of
the top binade is NaN, max 448), and e5m2, which follows IEEE /
``ml_dtypes.float8_e5m2`` (the top binade is inf/NaN, max 57344). All formats
have subnormals: the smallest normal exponent is ``1 - bias``.

Row 0 (the ``int`` format) and columns 0 and 1 (bits below 2) are not formats;
they repeat the nearest valid entry so that a lookup with any code gives a
finite, harmless grid. Lookups clamp codes into range.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from hirelc_jax.compression import codes

# (exponent bits, mantissa bits) by bit width for each minifloat format code.
_LAYOUTS = {
    codes.FLOAT: {2: (1, 0), 3: (1, 1), 4: (2, 1), 5: (2, 2), 6: (2, 3), 7: (3, 3), 8: (4, 3)},
    codes.FLOAT_EXP: {2: (1, 0), 3: (2, 0), 4: (3, 0), 5: (3, 1), 6: (3, 2), 7: (4, 2), 8: (5, 2)},
}
# Formats whose top binade is not all finite: "fn" (only the top code is NaN)
# and "ieee" (the whole top binade is inf/NaN).
_SPECIAL = {(codes.FLOAT, 8): "fn", (codes.FLOAT_EXP, 8): "ieee"}

_NUM_FORMATS = len(codes.FORMATS)
_NUM_BITS = codes.MAX_BITS + 1


class FormatTables(NamedTuple):
  """Per-format constants, each of shape ``[3, 9]`` indexed by ``[format_code, bits]``.

  Attributes:
    exp_bits: int32 number of exponent bits E.
    man_bits: int32 number of mantissa bits M.
    max_finite: float32 largest finite value.
    min_normal_exp: int32 exponent of the smallest normal binade, ``1 - bias``.
  """
  exp_bits: np.ndarray | jax.Array
  man_bits: np.ndarray | jax.Array
  max_finite: np.ndarray | jax.Array
  min_normal_exp: np.ndarray | jax.Array


def _max_finite(e: int, m: int, special: str | None) -> float:
  """Largest finite value of an eXmY format with bias 2**(e-1)-1."""
  bias = 2 ** (e - 1) - 1
  top = 2 ** e - 1 - bias
  if special == "fn":
    return 2.0 ** top * (2.0 - 2.0 ** (1 - m))
  if special == "ieee":
    return 2.0 ** (top - 1) * (2.0 - 2.0 ** -m)
  return 2.0 ** top * (2.0 - 2.0 ** -m)


def _build_host_tables() -> tuple[FormatTables, np.ndarray]:
  """Builds the numpy tables and the name table (row 0 and bits < 2 are fillers)."""
  exp_bits = np.zeros((_NUM_FORMATS, _NUM_BITS), np.int32)
  man_bits = np.zeros((_NUM_FORMATS, _NUM_BITS), np.int32)
  max_finite = np.zeros((_NUM_FORMATS, _NUM_BITS), np.float32)
  names = np.full((_NUM_FORMATS, _NUM_BITS), "", dtype=object)
  for fmt in (codes.FLOAT, codes.FLOAT_EXP):
    for bits in range(_NUM_BITS):
      e, m = _LAYOUTS[fmt][max(bits, codes.MIN_BITS)]
      exp_bits[fmt, bits], man_bits[fmt, bits] = e, m
      max_finite[fmt, bits] = _max_finite(e, m, _SPECIAL.get((fmt, max(bits, codes.MIN_BITS))))
      if bits >= codes.MIN_BITS:
        names[fmt, bits] = f"e{e}m{m}"
  # The int row is not a minifloat: copy the `float` row so lookups stay finite.
  exp_bits[codes.INT], man_bits[codes.INT] = exp_bits[codes.FLOAT], man_bits[codes.FLOAT]
  max_finite[codes.INT] = max_finite[codes.FLOAT]
  for bits in range(codes.MIN_BITS, _NUM_BITS):
    names[codes.INT, bits] = f"int{bits}"
  min_normal_exp = (1 - (2 ** (exp_bits - 1) - 1)).astype(np.int32)
  for table in (exp_bits, man_bits, max_finite, min_normal_exp, names):
    table.flags.writeable = False
  return FormatTables(exp_bits, man_bits, max_finite, min_normal_exp), names


HOST_TABLES, FORMAT_NAMES = _build_host_tables()
EXP_BITS = HOST_TABLES.exp_bits
MAN_BITS = HOST_TABLES.man_bits
MAX_FINITE = HOST_TABLES.max_finite
MIN_NORMAL_EXP = HOST_TABLES.min_normal_exp


@functools.cache
def device_tables() -> FormatTables:
  """The same tables as `HOST_TABLES`, as jnp arrays (built on first use, not at import)."""
  return FormatTables(*(jnp.asarray(t) for t in HOST_TABLES))


def format_name(fmt: int, bits: int) -> str:
  """Host-side name of a format, e.g. ``format_name(1, 8) == "e4m3"``; "" for bad codes."""
  if not (0 <= fmt < _NUM_FORMATS and codes.MIN_BITS <= bits <= codes.MAX_BITS):
    return ""
  return FORMAT_NAMES[fmt, bits]


def _flat_index(fmt, bits) -> jax.Array:
  """Index into a raveled ``[3, 9]`` table; codes are clamped into range."""
  f = jnp.clip(jnp.asarray(fmt, jnp.int32), 0, _NUM_FORMATS - 1)
  b = jnp.clip(jnp.asarray(bits, jnp.int32), codes.MIN_BITS, codes.MAX_BITS)
  return f * _NUM_BITS + b


def format_params(fmt, bits) -> FormatTables:
  """Looks up (E, M, max finite, min normal exponent) for traced codes.

  Args:
    fmt: int32 format code, any shape (clamped into 0..2).
    bits: int32 bit width, broadcastable with `fmt` (clamped into 2..8).

  Returns:
    A `FormatTables` of arrays of the broadcast shape of `fmt` and `bits`.
  """
  idx = _flat_index(fmt, bits)
  return FormatTables(*(jnp.take(np.ravel(t), idx) for t in HOST_TABLES))


def pow2(k) -> jax.Array:
  """Exact float32 ``2**k`` for int32 ``k``, built from the bit pattern.

  Args:
    k: integer array of any shape; clamped into the normal range [-126, 127].

  Returns:
    float32 array of the shape of `k`.
  """
  k = jnp.clip(jnp.asarray(k, jnp.int32), -126, 127)
  return jax.lax.bitcast_convert_type((k + 127) << 23, jnp.float32)


def float32_exponent(a: jax.Array) -> jax.Array:
  """The unbiased exponent field of float32 ``a >= 0``: ``floor(log2 a)`` for normal `a`,
  -127 for zero and subnormals, 128 for inf and NaN. int32, `a`'s shape."""
  field = jax.lax.shift_right_logical(jax.lax.bitcast_convert_type(a, jnp.int32), 23)
  return (field & 0xFF) - 127


@jax.jit
def minifloat_round(x: jax.Array, fmt, bits) -> jax.Array:
  """Rounds to the nearest value of a minifloat format (round half to even).

  Saturates at +-max finite; no inf or NaN is ever produced from a finite
  input (a NaN input stays NaN, +-inf saturates). The sign of zero follows the
  input, as in ml_dtypes. For the formats ml_dtypes has (e2m1, e2m3, e3m2,
  e4m3fn, e5m2), the result equals ``x.astype(fmt).astype(float32)`` inside
  +-max.

  Args:
    x: float array of any shape, already divided by its scale.
    fmt: int32 scalar format code (1 ``float`` or 2 ``float_exp``; traced).
    bits: int32 scalar bit width 2..8 (traced).

  Returns:
    Array of the shape and dtype of `x` holding representable values.
  """
  chex.assert_type(x, float)
  params = format_params(fmt, bits)
  x32 = jnp.asarray(x, jnp.float32)
  a = jnp.minimum(jnp.abs(x32), params.max_finite)
  # floor(log2 a) from the exponent field; float32 subnormals and zero read -127, below every
  # format's smallest normal exponent, and minifloat subnormals share 1 - bias.
  e = jnp.maximum(float32_exponent(a), params.min_normal_exp)
  # Scaling by powers of two is exact, so this is round(a / step) * step without a division.
  q = jnp.round(a * pow2(params.man_bits - e)) * pow2(e - params.man_bits)  # half to even
  return jnp.copysign(q, x32).astype(x.dtype)
