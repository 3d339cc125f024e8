"""Exact codes of on-grid kernels: code tables, bit packing, the encoders and the one decoder.

Design for exact reconstruction (compressed params in, verified codes out):
  The loader dequantizes with ONE fixed float32 formula, `decode`:
  ``table[code] * scale`` for the symmetric grids, where ``table`` lists each
  code's grid value in scale units (`code_table`), and
  ``(code - zero_point) * scale`` for asymmetric. The quantizer produced every
  element as one float32 rounding of the same product (grid value times the
  scale it used), so a scale reproducing the kernel exists. The exporter finds
  one from the compressed weights alone: for each scale group (tensor or
  channel) with largest magnitude ``m`` it tries ``m / g`` for the grid value
  ``g`` of that element (the grid limit for uniform, per_channel and log; each
  positive grid value in turn for learned, after the given steps) and its
  neighbours within 3 ulps, rounds ``w / s`` to the nearest grid value, and
  keeps the first scale whose `decode` equals the kernel BIT FOR BIT. The
  true scale is among the candidates, so on-grid kernels always pass; a
  kernel no candidate reproduces is not on its grid (the encoders report it
  unsolved). Asymmetric derives the zero point and scale from the tensor's
  min and max. Because the written codes are checked with the loader's own
  `decode`, the loaded kept columns equal the compressed ones bit for bit
  (signed zeros included: the INT grid uses its spare top code for -0.0,
  minifloat and log codes carry a sign bit).

Code layouts (all codes are non-negative, < 2**bits):
  * INT symmetric: ``q + qmax`` in ``0..2**b - 2``; code ``2**b - 1`` is -0.0.
  * minifloat: the format's bit pattern ``sign | exponent | mantissa``, equal
    to ``x.astype(ml_dtypes type).view(uint8)`` for the formats ml_dtypes has.
  * log: ``sign << (b-1) | m`` with ``m = 0`` for zero and ``m = L - k`` for
    the magnitude ``2**-k``, ``L = 2**(b-1) - 1``.
  * asymmetric: ``q`` in ``0..2**b - 1`` with ``w = (q - zero_point) * scale``.
"""

from __future__ import annotations

import numpy as np

from hirelc_jax.compression import codes, formats

_ULPS = np.array([0, -1, 1, -2, 2, -3, 3], np.int32)
_PROBE_ROWS = 16


def packed_bytes(n: int, bits: int) -> int:
  """Bytes of `pack_codes` for `n` codes of `bits` bits: ``ceil(n * bits / 8)``."""
  return -(-int(n) * int(bits) // 8)


def pack_codes(values: np.ndarray, bits: int) -> np.ndarray:
  """Packs codes into a little-endian bit stream of bytes.

  Args:
    values: integer codes ``[n]`` in ``0..2**bits - 1``.
    bits: bits per code, 1..8.

  Returns:
    uint8 ``[ceil(n * bits / 8)]``; code ``i`` is bits ``i*bits .. i*bits + bits - 1``
    of the stream, bit ``j`` of the stream being bit ``j % 8`` of byte ``j // 8``.
  """
  v = np.asarray(values).reshape(-1)
  if v.size and (v.min() < 0 or v.max() >= 2 ** bits):
    raise ValueError(f"codes must lie in 0..{2 ** bits - 1} for {bits} bits")
  v = v.astype(np.uint8)
  stream = ((v[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).astype(np.uint8)
  return np.packbits(stream.reshape(-1), bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
  """Inverse of `pack_codes`: the byte stream ``[>= ceil(n*bits/8)]`` -> uint8 codes ``[n]``."""
  raw = np.asarray(packed).view(np.uint8).reshape(-1)
  stream = np.unpackbits(raw, bitorder="little")[:n * bits].reshape(n, bits)
  return (stream << np.arange(bits, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)


def _minifloat_table(fmt: int, bits: int) -> np.ndarray:
  """Value of every bit pattern of a minifloat format; NaN where not finite."""
  e, m = int(formats.EXP_BITS[fmt, bits]), int(formats.MAN_BITS[fmt, bits])
  c = np.arange(2 ** bits, dtype=np.int64)
  exp, man, neg = (c >> m) & (2 ** e - 1), c & (2 ** m - 1), (c >> (bits - 1)) & 1
  bias = 2 ** (e - 1) - 1
  mag = np.where(exp == 0, man * 2.0 ** (1 - bias - m),
                 (1.0 + man / 2.0 ** m) * 2.0 ** (exp - bias))
  mag = np.where(mag > float(formats.MAX_FINITE[fmt, bits]), np.nan, mag)
  return np.where(neg == 1, -mag, mag).astype(np.float32)


def code_table(bits: int, fmt: int, gran: int) -> np.ndarray:
  """Grid value, in scale units, of every code of a symmetric mode.

  Args:
    bits: 2..8.
    fmt: format code (ignored by log).
    gran: granularity code other than asymmetric.

  Returns:
    float32 ``[2**bits]``; NaN marks codes that are not grid values.
  """
  n = 2 ** bits
  half = n // 2
  if gran == codes.LOG:
    mag = np.where(np.arange(half) == 0, 0.0, 2.0 ** (np.arange(half) - (half - 1)))
    return np.concatenate([mag, -mag]).astype(np.float32)
  if fmt == codes.INT:
    return np.append(np.arange(n - 1) - (half - 1.0), -0.0).astype(np.float32)
  return _minifloat_table(fmt, bits)


def _nearest_codes(x: np.ndarray, table: np.ndarray) -> np.ndarray:
  """Code of the grid value nearest to each `x` (the sign of a zero kept)."""
  neg_zero = (table == 0) & np.signbit(table)
  valid = np.flatnonzero(np.isfinite(table) & ~neg_zero)
  order = valid[np.argsort(table[valid], kind="stable")]
  vals = table[order]
  hi = np.clip(np.searchsorted(vals, x), 1, vals.size - 1)
  pick = np.where(x - vals[hi - 1] <= vals[hi] - x, hi - 1, hi)
  out = order[pick]
  return np.where((vals[pick] == 0) & np.signbit(x), np.flatnonzero(neg_zero)[0], out).astype(np.uint8)


def decode(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, table: np.ndarray | None):
  """The dequantizer of exporter checks and loader alike: codes ``[rows, G]`` -> float32 ``[rows, G]``.

  ``table[q] * scale`` (symmetric; `scale` ``[G]`` or ``[1]``) or, with
  ``table=None``, ``(q - zero) * scale`` (asymmetric; `scale`, `zero` ``[1]``).
  """
  if table is None:
    return (q.astype(np.float32) - zero) * scale
  return table[q] * scale


def _same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Per column: every element bitwise equal. ``[rows, G] -> [G]``."""
  return np.all(a.view(np.uint32) == b.view(np.uint32), axis=0)


def _ulp_candidates(base) -> np.ndarray:
  """float32 neighbours of positive `base` (``[...]``) within 3 ulps, ``[7, ...]``."""
  ints = np.asarray(base, np.float32).view(np.int32)
  return (ints[None] + _ULPS.reshape((-1,) + (1,) * np.ndim(ints))).view(np.float32)


def encode_symmetric(w: np.ndarray, table: np.ndarray, learned: bool, first=None):
  """Codes and scales whose `decode` equals `w` bit for bit, column by column.

  Args:
    w: float32 ``[rows, G]``, one scale group per column.
    table: `code_table` of the mode.
    learned: search every positive grid value for the largest element.
    first: optional float32 ``[G]`` scales to try first (learned steps).

  Returns:
    (uint8 codes ``[rows, G]``, float32 scales ``[G]``, bool solved ``[G]``).
  """
  m = np.max(np.abs(w), axis=0, initial=0.0)
  pos = np.sort(table[np.isfinite(table) & (table > 0)])[::-1]
  grid_values = pos if learned else pos[:1]
  cands = [np.zeros_like(m)] + ([] if first is None else [np.asarray(first, np.float32)])
  cands += [c for g in grid_values for c in _ulp_candidates(m / np.float32(g))]
  q = np.zeros(w.shape, np.uint8)
  scale = np.zeros(m.shape, np.float32)
  solved = np.zeros(m.shape, bool)
  with np.errstate(all="ignore"):
    for cand in cands:
      if solved.all():
        break
      todo = np.flatnonzero(~solved & np.isfinite(cand) & ((cand > 0) == (m > 0)))
      for rows in (slice(0, _PROBE_ROWS), slice(None)):  # cheap probe, then every row
        s, wt = cand[todo], w[rows, todo]
        qt = _nearest_codes(np.where(s > 0, wt / np.where(s > 0, s, 1), wt), table)
        ok = _same_bits(decode(qt, s, None, table), wt)
        todo, qt = todo[ok], qt[:, ok]
      q[:, todo], scale[todo], solved[todo] = qt, cand[todo], True
  return q, scale, solved


def encode_asymmetric(w: np.ndarray, lo: float, hi: float, bits: int):
  """(codes ``[rows, 1]``, scale ``[1]``, zero point ``[1]``) reproducing `w` ``[rows, 1]`` exactly, or None.

  `lo`, `hi` are the min and max of the whole compressed tensor (pruned zeros
  included), the values of codes 0 and (almost always) 2**b - 1.
  """
  n = 2 ** bits - 1
  cands = [(np.float32(w.flat[0]) if w.size else np.float32(0), 0.0)]  # a constant tensor: (1 - 0) * c
  for d in (n, n - 1):
    s_est = (hi - lo) / d
    if not s_est > 0:
      continue
    z = float(np.round(-lo / s_est))
    cands += [(s, z) for top, k in ((hi, d - z), (lo, -z)) if k != 0
              for s in _ulp_candidates(np.float32(top / k))]
  with np.errstate(all="ignore"):
    for s, z in cands:
      s, z = np.float32(s), np.float32(z)
      q = np.where(s != 0, np.clip(np.round(w / s) + z, 0, n), 1.0)
      q = np.nan_to_num(q).astype(np.uint8)
      if _same_bits(decode(q, s, z, None), w).all():
        return q, np.array([s], np.float32), np.array([z], np.float32)
  return None
