"""Tests for compression/quantize.py: fake quantization with traced codes."""

from __future__ import annotations

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from hirelc_jax.compression import codes
from hirelc_jax.compression import formats
from hirelc_jax.compression import quantize

# One jitted function shared by every test: codes are traced int32 scalars.
_FQ = jax.jit(quantize.fake_quant, static_argnames="channel_axis")
_INIT_STEP = jax.jit(quantize.init_step, static_argnames="channel_axis")
SHAPES = [(16, 8), (3, 3, 4, 6)]
VALID = [(f, g) for f in range(len(codes.FORMATS)) for g in range(len(codes.GRANULARITIES))
         if not (g == codes.ASYMMETRIC and f != codes.INT)]
FEW = hypothesis.settings(max_examples=25, deadline=None)


def _i32(*values):
  return tuple(jnp.asarray(v, jnp.int32) for v in values)


def _weights(seed: int, shape, scale: float = 1.0) -> jax.Array:
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.standard_normal(shape) * scale, jnp.float32)


def _fq(w, bits, fmt, gran, step=None) -> np.ndarray:
  return np.asarray(_FQ(w, *_i32(bits, fmt, gran), step))


def _per_channel(x: np.ndarray) -> np.ndarray:
  """[..., C] -> [N, C]."""
  return x.reshape(-1, x.shape[-1])


def _fixed_step(w, bits, fmt):
  return _INIT_STEP(w, *_i32(bits, fmt))


class FakeQuantVariantsTest(chex.TestCase):
  """Core numeric properties, with and without jit."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      ("int_uniform_4", 4, codes.INT, codes.UNIFORM),
      ("float_per_channel_6", 6, codes.FLOAT, codes.PER_CHANNEL),
      ("float_exp_log_3", 3, codes.FLOAT_EXP, codes.LOG),
      ("int_asymmetric_5", 5, codes.INT, codes.ASYMMETRIC),
      ("float_learned_8", 8, codes.FLOAT, codes.LEARNED),
  )
  def test_core(self, bits, fmt, gran):
    w = _weights(0, (16, 8))
    step = _fixed_step(w, bits, fmt)
    fq = self.variant(quantize.fake_quant)
    q = fq(w, *_i32(bits, fmt, gran), step)
    chex.assert_shape(q, w.shape)
    chex.assert_type(q, jnp.float32)
    chex.assert_tree_all_finite(q)
    q2 = fq(q, *_i32(bits, fmt, gran), step)
    np.testing.assert_array_equal(np.asarray(q2).view(np.uint32), np.asarray(q).view(np.uint32))
    per_group = _per_channel(np.asarray(q)) if gran in (codes.PER_CHANNEL, codes.LEARNED) else np.asarray(q).reshape(-1, 1)
    for col in per_group.T:
      self.assertLessEqual(np.unique(col).size, 2 ** bits)
    ident = fq(w, *_i32(codes.FP32_BITS, fmt, gran), step)
    np.testing.assert_array_equal(np.asarray(ident), np.asarray(w))


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(seed=st.integers(0, 2 ** 16),
                  shape=st.sampled_from(SHAPES + [(5,), (1, 7), (2, 1, 3)]),   # few shapes, few compiles
                  scale=st.sampled_from([1e-3, 1.0, 50.0]), loc=st.sampled_from([0.0, 0.0, 3.0]),
                  bits=st.integers(2, 8), codes_=st.sampled_from(VALID))
def test_idempotent_bitwise(seed, shape, scale, loc, bits, codes_):
  """q(q(w)) == q(w) bit for bit for every format and granularity (loc 3: one-signed)."""
  fmt, gran = codes_
  w = _weights(seed, tuple(shape), scale) + jnp.float32(loc * scale)
  step = _fixed_step(w, bits, fmt) if gran == codes.LEARNED else None
  q = _fq(w, bits, fmt, gran, step)
  q2 = _fq(jnp.asarray(q), bits, fmt, gran, step)
  np.testing.assert_array_equal(q2.view(np.uint32), q.view(np.uint32))


@FEW
@hypothesis.given(seed=st.integers(0, 2 ** 16), shape=st.sampled_from(SHAPES),
                  bits=st.integers(2, 8),
                  gran=st.sampled_from([codes.UNIFORM, codes.PER_CHANNEL, codes.ASYMMETRIC]))
def test_int_error_within_half_step(seed, shape, bits, gran):
  w = np.asarray(_weights(seed, shape))
  q = _fq(jnp.asarray(w), bits, codes.INT, gran)
  qmax = 2.0 ** (bits - 1) - 1
  if gran == codes.UNIFORM:
    s = np.abs(w).max() / qmax
  elif gran == codes.PER_CHANNEL:
    s = np.abs(_per_channel(w)).max(0) / qmax
  else:  # the step has 21 significant bits: grid ends move by <= n * 2**-21 steps
    n = 2.0 ** bits - 1
    s = (w.max() - w.min()) / n * (1 + 2.0 ** -21) * (1 + 2 * n * 2.0 ** -21)
  assert (np.abs(w - q) <= s / 2 * (1 + 1e-5) + 1e-7).all()


@FEW
@hypothesis.given(seed=st.integers(0, 2 ** 16), shape=st.sampled_from(SHAPES),
                  bits=st.integers(2, 8), codes_=st.sampled_from(VALID))
def test_level_counts(seed, shape, bits, codes_):
  fmt, gran = codes_
  w = _weights(seed, shape)
  q = _fq(w, bits, fmt, gran)
  groups = _per_channel(q) if gran in (codes.PER_CHANNEL, codes.LEARNED) else q.reshape(-1, 1)
  symmetric_int = fmt == codes.INT and gran in (codes.UNIFORM, codes.PER_CHANNEL, codes.LEARNED)
  limit = 2 ** bits - 1 if symmetric_int or gran == codes.LOG else 2 ** bits
  for col in groups.T:
    assert np.unique(col + np.float32(0)).size <= limit


@FEW
@hypothesis.given(seed=st.integers(0, 2 ** 16), codes_=st.sampled_from(VALID),
                  dtype=st.sampled_from([jnp.float32, jnp.bfloat16]))
def test_fp32_is_identity(seed, codes_, dtype):
  w = _weights(seed, (16, 8)).astype(dtype)
  q = _FQ(w, *_i32(codes.FP32_BITS, *codes_))
  assert q.dtype == dtype
  np.testing.assert_array_equal(np.asarray(q).view(np.uint16 if dtype == jnp.bfloat16 else np.uint32),
                                np.asarray(w).view(np.uint16 if dtype == jnp.bfloat16 else np.uint32))


def test_bfloat16_keeps_dtype():
  w = _weights(0, (16, 8)).astype(jnp.bfloat16)
  q = _FQ(w, *_i32(4, codes.INT, codes.PER_CHANNEL))
  assert q.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(q)))


ML_CASES = [(ml_dtypes.float4_e2m1fn, codes.FLOAT, 4), (ml_dtypes.float6_e2m3fn, codes.FLOAT, 6),
            (ml_dtypes.float6_e3m2fn, codes.FLOAT_EXP, 6), (ml_dtypes.float8_e4m3fn, codes.FLOAT, 8),
            (ml_dtypes.float8_e5m2, codes.FLOAT_EXP, 8)]


@FEW
@hypothesis.given(seed=st.integers(0, 2 ** 16), shape=st.sampled_from(SHAPES),
                  case=st.sampled_from(ML_CASES))
def test_float_uniform_matches_ml_dtypes(seed, shape, case):
  dtype, fmt, bits = case
  w = np.asarray(_weights(seed, shape))
  q = _fq(jnp.asarray(w), bits, fmt, codes.UNIFORM) + np.float32(0)
  s = np.float32(np.abs(w).max()) / formats.MAX_FINITE[fmt, bits]
  want = (w / s).astype(dtype).astype(np.float32) * s + np.float32(0)
  np.testing.assert_array_equal(q.view(np.uint32), want.view(np.uint32))
  ratio = q / s  # representable up to the rounding of the division itself
  np.testing.assert_allclose(ratio, ratio.astype(dtype).astype(np.float32), rtol=2 ** -22, atol=0)


@FEW
@hypothesis.given(seed=st.integers(0, 2 ** 16), fmt_bits=st.sampled_from(
    [(f, b) for f in (codes.FLOAT, codes.FLOAT_EXP) for b in range(2, 9)]))
def test_float_uniform_levels_on_grid(seed, fmt_bits):
  fmt, bits = fmt_bits
  w = np.asarray(_weights(seed, (16, 8)))
  q = _fq(jnp.asarray(w), bits, fmt, codes.UNIFORM)
  s = np.float32(np.abs(w).max()) / formats.MAX_FINITE[fmt, bits]
  ratio = jnp.asarray(q / s)
  regrid = np.asarray(formats.minifloat_round(ratio, jnp.int32(fmt), jnp.int32(bits)))
  np.testing.assert_allclose(q / s, regrid, rtol=2 ** -22, atol=0)


def _log_reference(w: np.ndarray, bits: int, zero: bool) -> np.ndarray:
  """numpy log grid: exponent rounded in the log domain; `zero`: ``|w| < s * 2**-L`` gives 0."""
  levels, s = 2 ** (bits - 1) - 1, np.abs(w).max()
  r = np.abs(w) / s
  k = np.clip(np.round(-np.log2(np.where(r > 0, r, 1.0))), 0, levels - 1)
  q = np.where(r > 0, np.sign(w) * s * 2.0 ** -k, 0.0)
  return np.where(zero & (r < 2.0 ** -levels), 0.0, q)


def _log_nearest(w: np.ndarray, bits: int) -> np.ndarray:
  """Nearest value (linear distance) among the same codes: 0 and ``+-s * 2**-k``."""
  s = np.abs(w).max()
  table = np.append(0.0, 2.0 ** -np.arange(2 ** (bits - 1) - 1)) * s
  return np.sign(w) * table[np.abs(np.abs(w)[..., None] - table).argmin(-1)]


@FEW
@hypothesis.given(seed=st.integers(0, 2 ** 16), shape=st.sampled_from(SHAPES),
                  bits=st.integers(2, 8), fmt=st.integers(0, 2))
def test_log_grid(seed, shape, bits, fmt):
  w = np.asarray(_weights(seed, shape))
  w = np.where(np.random.default_rng(seed).random(shape) < 0.3, 0.0, w).astype(np.float32)
  q = _fq(jnp.asarray(w), bits, fmt, codes.LOG)
  s, levels = np.abs(w).max(), 2 ** (bits - 1) - 1
  small = np.abs(w) / s < 2.0 ** -levels  # below half the smallest level (pruned zeros too)
  np.testing.assert_array_equal(q[small], 0.0)
  nz = q[q != 0]
  assert nz.size == (~small).sum()
  np.testing.assert_array_equal(np.sign(nz), np.sign(w[q != 0]))
  mant, expo = np.frexp(np.abs(nz) / s)
  np.testing.assert_array_equal(mant, 0.5)  # |q| = s * 2**-k exactly
  assert ((1 - expo >= 0) & (1 - expo <= levels - 1)).all()
  np.testing.assert_allclose(q, _log_reference(w, bits, True), rtol=1e-6, atol=0)
  old = _log_reference(w, bits, False)  # the grid without a zero level for small weights
  assert (np.abs(q - w) <= np.abs(old - w) * (1 + 1e-6)).all()


# Relative L2 error of the log grid on jax.random.normal(key(0), (64, 32)) before
# small weights could round to zero (every nonzero weight was at least s * 2**-(L-1)).
OLD_LOG_ERROR = {2: 3.1423, 3: 0.5158, 4: 0.2028}


def test_log_error_against_nearest_rounding():
  w = jax.random.normal(jax.random.key(0), (64, 32), jnp.float32)
  for bits in (2, 3, 4):
    err = float(quantize.quant_error(w, *_i32(bits, codes.INT, codes.LOG)))
    wn = np.asarray(w)
    nearest = np.linalg.norm(_log_nearest(wn, bits) - wn) / np.linalg.norm(wn)
    # Only the geometric boundaries between powers differ from nearest rounding.
    assert nearest * (1 - 1e-6) <= err <= 1.05 * nearest, (bits, err, nearest)
    assert err <= {2: 0.3, 3: 0.6, 4: 1.0}[bits] * OLD_LOG_ERROR[bits], (bits, err)
  np.testing.assert_allclose(float(quantize.quant_error(w, *_i32(2, codes.INT, codes.LOG))),
                             np.linalg.norm(_log_nearest(wn, 2) - wn) / np.linalg.norm(wn), rtol=1e-5)


def test_log_golden():
  # 3 bits: L = 3, s = 2 (from -2.0), levels 2, 1, 0.5; boundaries 2**-0.5 * 2 = 1.414 and
  # 0.707; zero below s * 2**-3 = 0.25. 0.26 rounds up to 0.5 (log2(0.13) = -2.94, clipped).
  w = np.array([-2.0, 1.2, -0.72, 0.7, 0.4, -0.26, 0.24, -0.1, 0.0, -0.0], np.float32)
  q = _fq(jnp.asarray(w), 3, codes.INT, codes.LOG)
  np.testing.assert_array_equal(q, [-2.0, 1.0, -1.0, 0.5, 0.5, -0.5, 0.0, 0.0, 0.0, 0.0])
  # 2 bits: levels 0 and +-s = 3; zero below 1.5 (nearest rounding).
  q2 = _fq(jnp.asarray([-3.0, 1.6, 1.4, -0.5], jnp.float32), 2, codes.INT, codes.LOG)
  np.testing.assert_array_equal(q2, [-3.0, 3.0, 0.0, 0.0])


def test_log_pruning_does_not_stretch_range():
  w = np.array(_weights(3, (16, 8)))
  w[0, 0] = 5.0  # absmax lives in a kept row
  pruned = w.copy()
  pruned[8:] = 0.0
  for bits in (2, 3, 4, 8):
    q = _fq(jnp.asarray(w), bits, codes.INT, codes.LOG)
    qp = _fq(jnp.asarray(pruned), bits, codes.INT, codes.LOG)
    np.testing.assert_array_equal(qp[:8], q[:8])
    np.testing.assert_array_equal(qp[8:], 0.0)


def _grads(w, step, u, bits, fmt):
  def loss_sq(s):
    return jnp.sum(quantize.fake_quant(w, *_i32(bits, fmt, codes.LEARNED), s) ** 2)

  def loss_lin(x):
    return jnp.sum(quantize.fake_quant(x, *_i32(bits, fmt, codes.LEARNED), step) * u)
  return jax.grad(loss_sq)(step), jax.grad(loss_lin)(w)


_LEARNED_GRADS = jax.jit(_grads)


@FEW
@hypothesis.given(seed=st.integers(0, 2 ** 16), bits=st.integers(2, 8), fmt=st.integers(0, 2))
def test_learned_gradients(seed, bits, fmt):
  w = _weights(seed, (16, 8))
  step = _fixed_step(w, bits, fmt) * 0.9  # some weights clip
  u = _weights(seed + 1, (16, 8))
  g_step, g_w = _LEARNED_GRADS(w, step, u, *_i32(bits, fmt))
  g_step = np.asarray(g_step)
  assert np.isfinite(g_step).all() and (g_step != 0).any()
  lim = float(quantize.grid_limit(*_i32(bits, fmt)))
  v = np.asarray(w) / np.asarray(step)
  inside = np.abs(v) < lim
  hypothesis.assume(not np.any(np.isclose(np.abs(v), lim)))  # no ties at the clip boundary
  # d(clip(w / step) * step) / dw is 1 up to the rounding of step * (1 / step).
  np.testing.assert_allclose(np.asarray(g_w), np.where(inside, np.asarray(u), 0.0), rtol=1e-6, atol=0)


_MASKED_GRADS = jax.jit(jax.grad(
    lambda w, s, m, u, b, f, g: jnp.sum(quantize.fake_quant(w, b, f, g, s, m) * u), argnums=(0, 1)))


@FEW
@hypothesis.given(seed=st.integers(0, 2 ** 16), bits=st.integers(2, 8), fmt=st.integers(0, 2))
def test_learned_gradients_closed_form_with_a_mask(seed, bits, fmt):
  # q = m * round(clip(m * w / s, -lim, lim)) * s per output channel. The LSQ gradient wrt s
  # sums u * (round(v) - v) inside the grid and u * clip(v) outside it; wrt w it is u inside
  # and 0 outside or at a pruned neuron.
  w = _weights(seed, (16, 8))
  step = _fixed_step(w, bits, fmt) * 0.9
  u = _weights(seed + 1, (16, 8))
  mask = jnp.asarray(np.arange(8) % 3 != 1, jnp.float32)
  g_w, g_s = _MASKED_GRADS(w, step, mask, u, *_i32(bits, fmt, codes.LEARNED))
  lim = float(quantize.grid_limit(*_i32(bits, fmt)))
  m, s, un = np.asarray(mask), np.asarray(step), np.asarray(u)
  v = np.asarray(w) * m / s
  inside = np.abs(v) < lim
  hypothesis.assume(not np.any(np.isclose(np.abs(v), lim)))  # no ties at the clip boundary
  rounded = np.asarray(_fq(jnp.asarray(w) * mask, bits, fmt, codes.LEARNED, step)) / s
  expected_s = np.sum(un * m * np.where(inside, rounded - v, np.clip(v, -lim, lim)), axis=0)
  # JAX sums u * round(v) and -u * w / s apart: terms up to lim * |u|, each within an ulp or two.
  atol = 1e-6 * lim * np.max(np.sum(np.abs(un * m), axis=0))
  np.testing.assert_allclose(np.asarray(g_s), expected_s, rtol=1e-5, atol=atol)
  np.testing.assert_allclose(np.asarray(g_w), np.where(inside, un, 0.0) * m, rtol=1e-6, atol=0)


def test_straight_through_gradient_is_the_mask():
  w = _weights(0, (16, 8))
  mask = jnp.asarray(np.arange(8) % 2, jnp.float32)
  for gran in (codes.UNIFORM, codes.LOG, codes.PER_CHANNEL, codes.ASYMMETRIC):
    g_w, g_s = _MASKED_GRADS(w, jnp.ones(8), mask, jnp.ones_like(w), *_i32(3, codes.INT, gran))
    np.testing.assert_array_equal(np.asarray(g_w), np.broadcast_to(np.asarray(mask), w.shape))
    np.testing.assert_array_equal(np.asarray(g_s), 0.0)
  g_w, _ = _MASKED_GRADS(w, jnp.ones(8), mask, jnp.ones_like(w), *_i32(codes.FP32_BITS, 0, codes.LEARNED))
  np.testing.assert_array_equal(np.asarray(g_w), np.broadcast_to(np.asarray(mask), w.shape))


_STE_GRAD = jax.jit(jax.grad(lambda w, b, f, g: jnp.sum(quantize.fake_quant(w, b, f, g))))


def test_straight_through_gradient():
  w = _weights(0, (16, 8))
  for fmt, gran in VALID:
    if gran == codes.LEARNED:
      continue
    for bits in (2, 4):
      g = _STE_GRAD(w, *_i32(bits, fmt, gran))
      np.testing.assert_array_equal(np.asarray(g), np.ones(w.shape, np.float32))


def test_one_compilation_for_all_codes():
  traces = []

  def f(w, bits, fmt, gran):
    traces.append(1)
    return quantize.fake_quant(w, bits, fmt, gran)

  jf = chex.assert_max_traces(f, n=1)
  jf = jax.jit(jf)
  w = _weights(0, (16, 8))
  combos = [(b, f, g) for b in (2, 4, 8, 32) for f, g in VALID[::2]]
  assert len(combos) >= 10
  outs = [np.asarray(jf(w, *_i32(*c))) for c in combos]
  assert len(traces) == 1
  assert len({o.tobytes() for o in outs}) > 5


def test_all_zero_gives_zeros():
  w = jnp.zeros((16, 8), jnp.float32)
  for fmt, gran in VALID:
    for bits in (2, 8):
      q = _fq(w, bits, fmt, gran)
      np.testing.assert_array_equal(q, 0.0)
      g = _STE_GRAD(w, *_i32(bits, fmt, gran))
      assert np.isfinite(np.asarray(g)).all()
  zero_col = np.array(_weights(0, (16, 8)))
  zero_col[:, 3] = 0.0
  for gran in (codes.PER_CHANNEL, codes.LEARNED):
    q = _fq(jnp.asarray(zero_col), 4, codes.FLOAT, gran)
    np.testing.assert_array_equal(q[:, 3], 0.0)
    assert np.isfinite(q).all()


def test_asymmetric_float_is_uniform():
  w = _weights(0, (16, 8))
  np.testing.assert_array_equal(_fq(w, 5, codes.FLOAT, codes.ASYMMETRIC),
                                _fq(w, 5, codes.FLOAT, codes.UNIFORM))


@FEW
@hypothesis.given(seed=st.integers(0, 2 ** 16), bits=st.integers(2, 8),
                  loc=st.sampled_from([0.0, 0.5, 4.0, -20.0]))
def test_asymmetric_grid(seed, bits, loc):
  """Values are fl((c - z) * s), c in 0..n, the extremes at codes 0 and n; z and s come back."""
  w = np.asarray(_weights(seed, (16, 8))) + np.float32(loc)
  q = _fq(jnp.asarray(w), bits, codes.INT, codes.ASYMMETRIC)
  n = 2 ** bits - 1
  z = np.round(n * -np.float64(w.min()) / (np.float64(w.max()) - w.min()))
  assert z == np.round(n * -np.float64(q.min()) / (np.float64(q.max()) - q.min()))
  k = abs(z) + abs(n - z)
  p = 23 - int(np.ceil(k / n) + 2).bit_length()
  s_est = (np.float64(q.max()) - q.min()) / n  # within (k/n + 2) * 2**-24 of s
  mant, expo = np.frexp(s_est)
  s = np.float32(np.ldexp(np.round(mant * 2.0 ** p), expo - p))  # s has p significant bits
  assert abs(s_est / s - 1) < 2.0 ** -(p + 1)
  c = np.round(q / s) + z
  assert c.min() == 0 and c.max() == n
  np.testing.assert_array_equal(((c - z).astype(np.float32) * s).view(np.uint32), q.view(np.uint32))
  assert np.abs(q - w).max() <= s * (0.5 + k * 2.0 ** -p) * (1 + 1e-6)


def test_channel_axis():
  w = _weights(0, (16, 8))
  q = _fq(w, 4, codes.INT, codes.PER_CHANNEL)
  qt = _FQ(w.T, *_i32(4, codes.INT, codes.PER_CHANNEL), channel_axis=0)
  np.testing.assert_array_equal(np.asarray(qt), q.T)


def test_vmap_over_codes():
  w = _weights(0, (16, 8))
  combos = np.asarray([(3, 0, 0), (4, 1, 2), (5, 2, 1), (32, 0, 3), (6, 0, 4)], np.int32)
  batched = jax.jit(jax.vmap(quantize.fake_quant, in_axes=(None, 0, 0, 0)))(
      w, *(jnp.asarray(combos[:, i]) for i in range(3)))
  for row, out in zip(combos, np.asarray(batched)):
    np.testing.assert_array_equal(out, _fq(w, *row))


def test_init_step():
  w = _weights(0, (3, 3, 4, 6))
  step = np.asarray(_fixed_step(w, 4, codes.INT))
  a = np.abs(_per_channel(np.asarray(w)))
  np.testing.assert_allclose(step, 2 * a.mean(0) / np.sqrt(7.0), rtol=1e-6)
  step_f = np.asarray(_fixed_step(w, 8, codes.FLOAT))
  np.testing.assert_allclose(step_f, a.max(0) / 448.0, rtol=1e-6)


def test_golden_mae():
  w = jax.random.normal(jax.random.key(0), (64, 32), jnp.float32)
  mae4 = float(jnp.mean(jnp.abs(_FQ(w, *_i32(4, codes.INT, codes.UNIFORM)) - w)))
  mae8 = float(jnp.mean(jnp.abs(_FQ(w, *_i32(8, codes.INT, codes.UNIFORM)) - w)))
  np.testing.assert_allclose(mae4, GOLDEN_MAE4, rtol=1e-5)
  np.testing.assert_allclose(mae8, GOLDEN_MAE8, rtol=1e-5)


GOLDEN_MAE4 = 0.14213286340236664
GOLDEN_MAE8 = 0.00777144730091095


def test_quant_error_falls_with_bits():
  w = _weights(0, (16, 8))
  fmt, gran = _i32(codes.INT, codes.PER_CHANNEL)
  quant_error = jax.jit(quantize.quant_error)
  errors = np.asarray([quant_error(w, jnp.int32(b), fmt, gran) for b in range(2, 9)])
  assert (np.diff(errors) < 0).all() and errors[-1] > 0
  assert float(quant_error(jnp.zeros((16, 8)), *_i32(4, 0, 0))) == 0.0


def test_log_rounds_the_exponent_exactly_at_the_geometric_mean():
  # r = m * 2**-1: up to 2**0 when m > sqrt(2), else 2**-1; the float32 just below and just above
  # sqrt(2) sit on either side (a float log2 rounds both to 0.5 and can tie the wrong way).
  below = np.float32(np.sqrt(2.0))
  above = np.nextafter(below, np.float32(2))
  assert below < np.sqrt(2.0) < above
  w = jnp.asarray([1.0, below / 2, above / 2, -above / 4], jnp.float32)
  np.testing.assert_array_equal(_fq(w, 8, codes.INT, codes.LOG), [1.0, 0.5, 1.0, -0.5])


def test_float32_exponent_is_floor_log2():
  a = np.asarray([1.0, 1.9999999, 2.0, 0.75, 2.0 ** -126, 2.0 ** -127, 0.0, np.inf, 3e38], np.float32)
  np.testing.assert_array_equal(formats.float32_exponent(jnp.asarray(a)),
                                [0, 0, 1, -1, -126, -127, -127, 128, 127])


def test_division_by_a_per_channel_scale_is_the_ieee_quotient():
  """XLA turns ``a / broadcast(b)`` into a multiply by ``1 / b`` (tens of thousands of one-ulp
  misses on this kernel); `_div` keeps the correctly rounded quotient, and NaN, Inf and 0/0 as
  IEEE gives them."""
  rng = np.random.default_rng(0)
  a = rng.standard_normal((768, 192)).astype(np.float32)
  b = (np.abs(rng.standard_normal((1, 192))) + 0.1).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(jax.jit(quantize._div)(a, b)), a / b)
  special = np.array([[np.inf, -np.inf, np.nan, 0.0, 1.0]], np.float32)
  by = np.array([[2.0, 2.0, 2.0, 0.0, 0.0]], np.float32)
  with np.errstate(divide="ignore", invalid="ignore"):
    np.testing.assert_array_equal(np.asarray(jax.jit(quantize._div)(special, by)), special / by)


if __name__ == "__main__":
  absltest.main()
