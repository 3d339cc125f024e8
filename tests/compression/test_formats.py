"""Tests for compression/formats.py: tables and minifloat rounding vs ml_dtypes."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from hirelc_jax.compression import codes
from hirelc_jax.compression import formats

# One compiled function for every format and bit width (codes are traced).
_ROUND = jax.jit(formats.minifloat_round)
_SWEEP = 4096  # every sweep is padded to this length: one compilation per test file.

# ml_dtypes types we match bit for bit: (dtype, format code, bits).
ML_CASES = [
    pytest.param(ml_dtypes.float4_e2m1fn, codes.FLOAT, 4, id="e2m1"),
    pytest.param(ml_dtypes.float6_e2m3fn, codes.FLOAT, 6, id="e2m3"),
    pytest.param(ml_dtypes.float6_e3m2fn, codes.FLOAT_EXP, 6, id="e3m2"),
    pytest.param(ml_dtypes.float8_e4m3fn, codes.FLOAT, 8, id="e4m3fn"),
    pytest.param(ml_dtypes.float8_e5m2, codes.FLOAT_EXP, 8, id="e5m2"),
]
ALL_FORMATS = [(f, b) for f in (codes.FLOAT, codes.FLOAT_EXP)
               for b in range(codes.MIN_BITS, codes.MAX_BITS + 1)]


def _round(x: np.ndarray, fmt: int, bits: int) -> np.ndarray:
  """Rounds a float32 vector with the jitted function, padding to `_SWEEP`."""
  x = np.asarray(x, np.float32).ravel()
  assert x.size <= _SWEEP
  padded = np.zeros(_SWEEP, np.float32)
  padded[:x.size] = x
  out = _ROUND(jnp.asarray(padded), jnp.int32(fmt), jnp.int32(bits))
  return np.asarray(out)[:x.size]


def _all_values(dtype) -> np.ndarray:
  """Every finite value of an ml_dtypes type, from all bit patterns, as float32."""
  nbits = ml_dtypes.finfo(dtype).bits
  values = np.arange(2 ** nbits).astype(np.uint8).view(dtype).astype(np.float32)
  return values[np.isfinite(values)]


def _enumerate_nonneg(fmt: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
  """Non-negative values of one of our formats from (exponent, mantissa) codes.

  Returns:
    (values float64 sorted ascending, mantissa-code parity of each value).
  """
  e, m = int(formats.EXP_BITS[fmt, bits]), int(formats.MAN_BITS[fmt, bits])
  bias = 2 ** (e - 1) - 1
  vals, parity = [], []
  for ec in range(2 ** e):
    for mc in range(2 ** m):
      if ec == 0:
        v = 2.0 ** (1 - bias) * mc / 2 ** m
      else:
        v = 2.0 ** (ec - bias) * (1 + mc / 2 ** m)
      if v <= float(formats.MAX_FINITE[fmt, bits]):  # drops NaN / inf codes
        vals.append(v)
        parity.append((ec * 2 ** m + mc) % 2)
  order = np.argsort(vals)
  return np.asarray(vals)[order], np.asarray(parity)[order]


def _sweep(dtype) -> np.ndarray:
  """Values inside +-max: representable values, exact ties, near-ties, powers of two, random."""
  fi = ml_dtypes.finfo(dtype)
  mx = float(fi.max)
  pos = np.unique(np.abs(_all_values(dtype)))
  ties = (pos[:-1] + pos[1:]) / 2  # exact in float32: few significant bits
  near = np.concatenate([np.nextafter(ties, np.float32(0)), np.nextafter(ties, np.float32(np.inf))])
  pow2 = 2.0 ** np.arange(fi.minexp - fi.nmant - 2, np.log2(mx) + 1)
  rng = np.random.default_rng(0)
  tiny = rng.uniform(0, float(fi.smallest_normal), 200)  # subnormal range
  rand = rng.uniform(0, mx, 600)
  mags = np.concatenate([pos, ties, near, pow2[pow2 <= mx], tiny, rand]).astype(np.float32)
  return np.concatenate([mags, -mags, np.float32([0.0, -0.0])])


def test_tables():
  expected = {
      (1, 2): "e1m0", (1, 3): "e1m1", (1, 4): "e2m1", (1, 5): "e2m2", (1, 6): "e2m3",
      (1, 7): "e3m3", (1, 8): "e4m3", (2, 2): "e1m0", (2, 3): "e2m0", (2, 4): "e3m0",
      (2, 5): "e3m1", (2, 6): "e3m2", (2, 7): "e4m2", (2, 8): "e5m2",
  }
  for (f, b), name in expected.items():
    assert formats.format_name(f, b) == name
    e, m = int(formats.EXP_BITS[f, b]), int(formats.MAN_BITS[f, b])
    assert name == f"e{e}m{m}" and 1 + e + m == b
    assert formats.MIN_NORMAL_EXP[f, b] == 1 - (2 ** (e - 1) - 1)
  assert formats.format_name(0, 4) == "int4" and formats.format_name(1, 32) == ""
  assert formats.MAX_FINITE[1, 5] == 7.0 and formats.MAX_FINITE[1, 7] == 30.0
  assert formats.MAX_FINITE[1, 2] == 2.0 and formats.MAX_FINITE[2, 3] == 4.0
  dev = formats.device_tables()
  for host, device in zip(formats.HOST_TABLES, dev):
    np.testing.assert_array_equal(host, np.asarray(device))
  looked_up = formats.format_params(jnp.int32(2), jnp.int32(8))
  assert int(looked_up.exp_bits) == 5 and float(looked_up.max_finite) == 57344.0


@pytest.mark.parametrize("dtype,fmt,bits", ML_CASES)
def test_table_matches_ml_dtypes(dtype, fmt, bits):
  fi = ml_dtypes.finfo(dtype)
  assert formats.MAX_FINITE[fmt, bits] == float(fi.max)
  assert formats.MIN_NORMAL_EXP[fmt, bits] == fi.minexp
  assert formats.MAN_BITS[fmt, bits] == fi.nmant
  assert formats.EXP_BITS[fmt, bits] == fi.nexp


@pytest.mark.parametrize("dtype,fmt,bits", ML_CASES)
def test_round_matches_ml_dtypes(dtype, fmt, bits):
  x = _sweep(dtype)
  got = _round(x, fmt, bits)
  want = x.astype(dtype).astype(np.float32)
  np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("dtype,fmt,bits", ML_CASES)
def test_ml_dtypes_values_are_fixed_points(dtype, fmt, bits):
  values = _all_values(dtype)
  np.testing.assert_array_equal(_round(values, fmt, bits).view(np.uint32), values.view(np.uint32))


def test_saturates_without_inf_or_nan():
  for fmt, bits in ALL_FORMATS:
    mx = np.float32(formats.MAX_FINITE[fmt, bits])
    x = np.float32([1.01, 1.5, 10.0, 1e30]) * mx
    x = np.concatenate([x, -x, np.float32([np.inf, -np.inf])])
    want = np.where(x > 0, mx, -mx).astype(np.float32)
    np.testing.assert_array_equal(_round(x, fmt, bits), want, err_msg=f"fmt={fmt} bits={bits}")


def test_level_counts():
  rng = np.random.default_rng(1)
  for fmt, bits in ALL_FORMATS:
    nonneg, _ = _enumerate_nonneg(fmt, bits)
    e, m = int(formats.EXP_BITS[fmt, bits]), int(formats.MAN_BITS[fmt, bits])
    special = {(1, 8): 1, (2, 8): 2 ** m}.get((fmt, bits), 0)  # NaN / inf codes
    assert nonneg.size == 2 ** (e + m) - special
    levels = np.concatenate([-nonneg[1:], nonneg]).astype(np.float32)
    mx = float(nonneg[-1])
    x = np.concatenate([levels, rng.uniform(-1.2 * mx, 1.2 * mx, 2000).astype(np.float32)])
    out = _round(x, fmt, bits)
    np.testing.assert_array_equal(out[:levels.size], levels)  # fixed points
    distinct = np.unique(out + np.float32(0.0))
    assert distinct.size == 2 * nonneg.size - 1, (fmt, bits)
    assert np.isin(distinct, levels).all()


def test_degenerate_small_grids():
  x = np.linspace(-5, 5, 201, dtype=np.float32)
  assert set(np.unique(_round(x, 1, 2) + 0.0)) == {-2.0, 0.0, 2.0}
  assert set(np.unique(_round(x, 1, 3) + 0.0)) == {-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0}
  assert set(np.unique(_round(x, 2, 3) + 0.0)) == {-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0}


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    fmt_bits=st.sampled_from(ALL_FORMATS),
    unit=st.lists(st.floats(-1.25, 1.25, width=32), min_size=1, max_size=64),
)
def test_round_to_nearest_even_property(fmt_bits, unit):
  """Nearest enumerated level, ties to the even code, saturation beyond max."""
  fmt, bits = fmt_bits
  nonneg, parity = _enumerate_nonneg(fmt, bits)
  x = np.float32(unit) * np.float32(nonneg[-1])
  got = _round(x, fmt, bits).astype(np.float64)
  a = np.minimum(np.abs(x.astype(np.float64)), nonneg[-1])
  dist = np.abs(a[:, None] - nonneg[None, :])
  best = dist.min(axis=1, keepdims=True)
  candidates = dist == best
  # On a tie, prefer the even code.
  pick = np.where(candidates.sum(1) > 1, np.argmax(candidates & (parity[None] == 0), axis=1),
                  np.argmax(candidates, axis=1))
  want = np.copysign(nonneg[pick], x)
  np.testing.assert_array_equal(got, want)
