"""Fake quantization of weight kernels with traced bits, format and granularity.

`fake_quant` returns the dequantized kernel (same shape and dtype) with a
straight-through gradient. Bits, format code and granularity code are traced
int32 scalars: one compiled function serves every combination (the
granularity picks a `lax.switch` branch; INT versus minifloat is a
`jnp.where`; bit-dependent constants come from lookup tables).

Kernels follow Flax: dense ``[in, out]``, conv ``[h, w, in, out]``; the output
channel is the last axis (`channel_axis`), and per-channel statistics reduce
over every other axis.

Grids by granularity (codes in `codes.py`):
  * uniform: symmetric, one scale per tensor, ``s = absmax / limit`` where the
    limit is ``qmax = 2**(b-1) - 1`` (INT) or the format's max finite value.
  * per_channel: the same with one absmax scale per output channel.
  * learned: one trainable step per output channel (LSQ, Esser et al. 2020);
    the step gets the LSQ gradient and the weights the clipped STE.
  * log: sign plus zero and ``L = 2**(b-1) - 1`` power-of-two magnitudes
    ``s * 2**-k``, ``k = 0..L-1``, with ``s`` the tensor absmax; the exponent
    is rounded in the log domain, and a weight more than one octave below the
    smallest level (``|w| < s * 2**-L``, half the smallest level) becomes
    zero. Zeros never enter a log, so pruned weights do not stretch the range.
    The format code is ignored: a log grid already is a pure-exponent float.
  * asymmetric (INT only): min/max scale ``(max - min) / (2**b - 1)``, rounded
    to ~21 significant bits so that it is idempotent (`_asymmetric`), and an
    integer zero point. With a minifloat format it is treated as uniform
    (host-side validation rejects that combination; jitted code must not crash).

Every mode is idempotent: quantizing a quantized kernel again (same codes,
same learned step) returns it bit for bit.

The public functions are jitted (with `channel_axis` static) so that eager calls
reuse one compilation per shape; inside an outer `jit`, `vmap` or `grad` they
inline as usual.

Edge cases: bits == 32 (`codes.FP32_BITS`) returns the input unchanged; other
out-of-range codes are clamped (bits to 2..8, format to 0..2, granularity to
0..4). A zero scale (all-zero tensor or channel, or a learned step <= 0)
gives exact zeros; a constant tensor under asymmetric is returned unchanged.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
from jax import lax

from hirelc_jax.compression import codes
from hirelc_jax.compression import formats

_CANDIDATE_BITS = tuple(range(codes.MIN_BITS, codes.MAX_BITS + 1))


def _ste(x: jax.Array, y: jax.Array) -> jax.Array:
  """Value of `y` with the gradient of `x` (identity); exact: ``(x - x) + y == y``."""
  return x - lax.stop_gradient(x) + lax.stop_gradient(y)


def _div(a: jax.Array, b: jax.Array) -> jax.Array:
  """Correctly rounded ``a / b`` with broadcasting.

  XLA rewrites ``a / broadcast(b)`` as ``a * broadcast(1 / b)``, which is off by
  an ulp now and then; dividing by a full-shape operand behind an optimization
  barrier keeps the IEEE quotient, so quantization is reproducible and
  idempotent.
  """
  a, b = jnp.broadcast_arrays(a, b)
  return a / lax.optimization_barrier(b)


def _clamp_bits(bits) -> jax.Array:
  return jnp.clip(jnp.asarray(bits, jnp.int32), codes.MIN_BITS, codes.MAX_BITS)


def _clamp_fmt(fmt) -> jax.Array:
  return jnp.clip(jnp.asarray(fmt, jnp.int32), 0, len(codes.FORMATS) - 1)


def int_qmax(bits) -> jax.Array:
  """Largest symmetric INT level ``2**(b-1) - 1`` as float32 (bits clamped to 2..8)."""
  return (formats.pow2(_clamp_bits(bits) - 1) - 1.0).astype(jnp.float32)


def grid_limit(bits, fmt) -> jax.Array:
  """Largest grid value in scale units: ``qmax`` for INT, max finite for minifloats.

  Args:
    bits: int32 scalar bit width (traced).
    fmt: int32 scalar format code (traced).

  Returns:
    float32 scalar.
  """
  fmt = _clamp_fmt(fmt)
  return jnp.where(fmt == codes.INT, int_qmax(bits),
                   formats.format_params(fmt, bits).max_finite)


def _round_to_grid(v: jax.Array, bits, fmt) -> jax.Array:
  """Rounds `v` (scale units, inside +-limit) to the INT or minifloat grid."""
  fmt = _clamp_fmt(fmt)
  return jnp.where(fmt == codes.INT, jnp.round(v), formats.minifloat_round(v, fmt, bits))


def _channel_layout(w: jax.Array, channel_axis: int) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
  """Returns (axis, reduce axes, broadcast shape of a per-channel vector)."""
  axis = channel_axis % w.ndim
  reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
  bshape = tuple(w.shape[i] if i == axis else 1 for i in range(w.ndim))
  return axis, reduce_axes, bshape


def _symmetric(w: jax.Array, scale: jax.Array, bits, fmt) -> jax.Array:
  """``round_ste(clip(w / scale)) * scale`` on the symmetric grid; zero scale gives 0.

  Args:
    w: float32 kernel.
    scale: float32 scale broadcastable to `w` (scalar or per channel).
    bits: int32 scalar bit width.
    fmt: int32 scalar format code.

  Returns:
    float32 array of `w`'s shape, differentiable wrt `w` (clipped STE) and
    `scale` (LSQ gradient).
  """
  ok = scale > 0
  safe = jnp.where(ok, scale, 1.0)
  lim = grid_limit(bits, fmt)
  v = jnp.clip(_div(w, safe), -lim, lim)
  q = _ste(v, _round_to_grid(v, bits, fmt)) * safe
  return jnp.where(ok, q, 0.0)


def _log(w: jax.Array, bits) -> jax.Array:
  """Sign plus levels ``s * 2**-k``, ``k`` in 0..L-1, and zero; ``s = max|w|``.

  With ``r = fl(|w| / s)``: ``r < 2**-L`` gives 0 (a tie keeps the level;
  tested exactly as ``r * 2**L < 1``); otherwise ``k = clip(round(-log2 r), 0, L - 1)``. Between two
  powers the boundary is their geometric mean; zero has no logarithm, so the
  zero threshold is the one a full level below the smallest power: ``2**-L``,
  exactly half of ``2**-(L-1)``, the point where 0 and the smallest level are
  equally far away. It is thus the error-minimizing choice between them (a
  virtual level ``2**-L``'s geometric mean, ``2**-(L-1/2)``, would zero weights
  nearer the smallest level: relative L2 error 0.97 against 0.92 at 2 bits,
  0.34 against 0.29 at 3, on a 64x32 Gaussian kernel). At 2 bits (levels 0,
  ``s``) this is nearest rounding.

  Args:
    w: float32 kernel.
    bits: int32 scalar bit width.

  Returns:
    float32 array of `w`'s shape on the export's log codes; nonzero values
    keep the sign of `w`.
  """
  levels = int_qmax(bits).astype(jnp.int32)  # L = 2**(b-1) - 1 nonzero magnitudes.
  a = jnp.abs(w)
  s = jnp.max(a)
  safe_s = jnp.where(s > 0, s, 1.0)
  ratio = _div(a, safe_s)
  zero = ratio * formats.pow2(levels) < 1.0  # power-of-two scaling is exact
  k = jnp.clip(jnp.round(jnp.log2(jnp.where(zero, 1.0, ratio))), -(levels - 1), 0)
  mag = jnp.where(zero, 0.0, safe_s * formats.pow2(k.astype(jnp.int32)))
  return jnp.copysign(mag, w)


def _round_significand(x: jax.Array, keep) -> jax.Array:
  """Positive float32 `x` rounded to `keep` (1..21) significant bits, ties up; exact bit arithmetic."""
  drop = 24 - jnp.asarray(keep, jnp.int32)
  i = lax.bitcast_convert_type(x, jnp.int32)
  i = (i + (1 << (drop - 1))) & ~((1 << drop) - 1)  # a carry moves into the exponent
  return lax.bitcast_convert_type(i, jnp.float32)


def _asymmetric(w: jax.Array, bits) -> jax.Array:
  """Per-tensor grid ``(c - z) * s``, codes ``c`` in 0..n, ``n = 2**b - 1``; idempotent.

  With ``lo, hi = min w, max w``, ``z = round(n * -lo / (hi - lo))`` is fixed
  first, then ``s = (hi - lo) / n`` is rounded to ``P = 23 - bitlength(R)``
  significant bits, ``R = ceil(K / n) + 2``, ``K = |z| + |n - z|`` (K = n and
  P = 21 for any tensor with both signs). Codes are ``clip(round(w / s) + z,
  0, n)`` with ``lo`` pinned to code 0 and ``hi`` to code n, so the output's
  own min and max are ``fl(-z * s)`` and ``fl((n - z) * s)``. From them the
  same formulas give back ``z`` exactly and ``(hi - lo) / n`` within ``(K/n
  + 2) * 2**-24`` of ``s``, less than half the spacing of P-bit values, which
  rounds back to ``s``: quantizing twice changes no bit whenever ``K * (K/n +
  4) < 2**23`` (always with both signs; a one-signed tensor needs a spread
  above ~1/180 of ``|lo| + |hi|`` at 8 bits, ~1/1600 at 2 bits). Rounding
  ``s`` moves the grid ends by at most ``K * 2**-P`` steps (``n * 2**-21``
  with both signs), so ``|q - w| <= s * (1/2 + K * 2**-P)``.

  Args:
    w: float32 kernel.
    bits: int32 scalar bit width.

  Returns:
    float32 array of `w`'s shape; `w` itself when ``hi == lo``.
  """
  n = formats.pow2(_clamp_bits(bits)) - 1.0
  lo, hi = jnp.min(w), jnp.max(w)
  span = hi - lo
  ok = span > 0
  safe_span = jnp.where(ok, span, 1.0)
  z = jnp.round(_div(-lo, safe_span) * n)
  r = jnp.clip(jnp.ceil(_div(jnp.abs(z) + jnp.abs(n - z), n)) + 2.0, 3.0, 2.0 ** 30)
  _, r_bits = jnp.frexp(r)  # bitlength of the integer r
  s = _round_significand(_div(safe_span, n), jnp.clip(23 - r_bits, 1, 21))
  ok = ok & (s > 0)
  safe = jnp.where(ok, s, 1.0)
  c = jnp.clip(jnp.round(_div(w, safe)) + z, 0.0, n)
  c = jnp.where(w == lo, 0.0, jnp.where(w == hi, n, c))
  return jnp.where(ok, (c - z) * safe, w)


@functools.partial(jax.jit, static_argnames=("channel_axis",))
def init_step(w: jax.Array, bits, fmt, *, channel_axis: int = -1) -> jax.Array:
  """Initial learned step per output channel.

  INT uses the LSQ rule ``2 * mean|w| / sqrt(qmax)``; a minifloat format uses
  ``absmax / max_finite`` so that the grid covers the channel.

  Args:
    w: float kernel, e.g. ``[in, out]`` or ``[h, w, in, out]``.
    bits: int32 scalar bit width (traced; clamped to 2..8).
    fmt: int32 scalar format code (traced).
    channel_axis: the output-channel axis.

  Returns:
    float32 array of shape ``[w.shape[channel_axis]]``.
  """
  chex.assert_type(w, float)
  w32 = jnp.asarray(w, jnp.float32)
  _, reduce_axes, _ = _channel_layout(w32, channel_axis)
  a = jnp.abs(w32)
  int_step = _div(2.0 * jnp.mean(a, axis=reduce_axes), jnp.sqrt(int_qmax(bits)))
  float_step = _div(jnp.max(a, axis=reduce_axes), grid_limit(bits, fmt))
  return jnp.where(_clamp_fmt(fmt) == codes.INT, int_step, float_step)


def _clamped_codes(fmt, gran) -> tuple[jax.Array, jax.Array]:
  """(format, granularity) as fake_quant reads them: out-of-range codes clamped, and
  asymmetric with a minifloat format read as uniform."""
  fmt_c = _clamp_fmt(fmt)
  gran_c = jnp.clip(gran, 0, len(codes.GRANULARITIES) - 1)
  gran_c = jnp.where((gran_c == codes.ASYMMETRIC) & (fmt_c != codes.INT), codes.UNIFORM, gran_c)
  return fmt_c, gran_c


def _quantized_value(w: jax.Array, step: jax.Array, mask: jax.Array, bits, fmt, gran,
                     channel_axis: int) -> jax.Array:
  """``mask * Q(mask * w)`` (no gradient rules): one `lax.switch` over the granularities and
  the identity (bits 32), the masking fused into each branch.

  Shapes: w [..., out] float, step and mask [out] float32; bits, fmt, gran int32 scalars.
  """
  fmt, gran = _clamped_codes(fmt, gran)
  _, reduce_axes, bshape = _channel_layout(w, channel_axis)
  m = jnp.reshape(mask, bshape)
  lim = grid_limit(bits, fmt)

  quantizers = [None] * len(codes.GRANULARITIES)
  quantizers[codes.UNIFORM] = lambda x: _symmetric(x, _div(jnp.max(jnp.abs(x)), lim), bits, fmt)
  quantizers[codes.LOG] = lambda x: _log(x, bits)
  quantizers[codes.PER_CHANNEL] = lambda x: _symmetric(
      x, _div(jnp.max(jnp.abs(x), axis=reduce_axes, keepdims=True), lim), bits, fmt)
  quantizers[codes.LEARNED] = lambda x: _symmetric(x, jnp.reshape(step, bshape), bits, fmt)
  quantizers[codes.ASYMMETRIC] = lambda x: _asymmetric(x, bits)
  quantizers.append(lambda x: x)  # bits 32: unquantized

  def branch(quantizer):
    return lambda: (quantizer(w.astype(jnp.float32) * m) * m).astype(w.dtype)

  index = jnp.where(bits == codes.FP32_BITS, len(codes.GRANULARITIES), gran)
  return lax.switch(index, [branch(q) for q in quantizers])


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _fake_quant_ste(w, step, mask, bits, fmt, gran, channel_axis):
  return _quantized_value(w, step, mask, bits, fmt, gran, channel_axis)


def _fake_quant_fwd(w, step, mask, bits, fmt, gran, channel_axis):
  return (_quantized_value(w, step, mask, bits, fmt, gran, channel_axis),
          (w, step, mask, bits, fmt, gran))


def _fake_quant_bwd(channel_axis, residuals, g):
  """``mask * g`` for every mode but learned; learned differentiates `_symmetric` (clipped
  STE wrt w, LSQ wrt the step). Only the inputs are kept, so the forward pass stores nothing."""
  w, step, mask, bits, fmt, gran = residuals
  fmt, gran = _clamped_codes(fmt, gran)
  _, _, bshape = _channel_layout(w, channel_axis)
  m = jnp.reshape(mask, bshape)

  def learned():
    def value(w_, step_):
      q = _symmetric(w_.astype(jnp.float32) * m, jnp.reshape(step_, bshape), bits, fmt)
      return (q * m).astype(w.dtype)
    return jax.vjp(value, w, step)[1](g)

  def straight():
    return g * m.astype(g.dtype), jnp.zeros_like(step)

  g_w, g_step = lax.cond((gran == codes.LEARNED) & (bits != codes.FP32_BITS), learned, straight)
  return g_w, g_step, None, None, None, None


_fake_quant_ste.defvjp(_fake_quant_fwd, _fake_quant_bwd)


@functools.partial(jax.jit, static_argnames=("channel_axis",))
def fake_quant(w: jax.Array, bits, fmt, gran, step: jax.Array | None = None,
               mask: jax.Array | None = None, *, channel_axis: int = -1) -> jax.Array:
  """Quantizes and dequantizes a kernel; one compiled function for all codes.

  The gradient is a custom VJP that keeps only the inputs: a `lax.switch`
  differentiated by JAX would store every branch's residuals (zero-filled,
  kernel-sized) in the forward pass and run every branch's transpose
  (measured in `benchmarks/results/scale.json`).

  Args:
    w: float kernel of rank >= 1, e.g. ``[in, out]`` or ``[h, w, in, out]``.
    bits: int32 scalar bit width 2..8, or 32 for the identity (traced).
    fmt: int32 scalar format code, `codes.FORMATS` (traced).
    gran: int32 scalar granularity code, `codes.GRANULARITIES` (traced).
    step: float learned step ``[w.shape[channel_axis]]``, read only by the
      learned granularity; None uses `init_step` (without gradient).
    mask: output-neuron mask ``[w.shape[channel_axis]]`` (1 keep, 0 prune),
      applied to `w` before quantizing and to the result (pruned neurons stay
      exactly zero under every grid); None keeps every neuron.
    channel_axis: the output-channel axis (static).

  Returns:
    Array of `w`'s shape and dtype. Non-learned modes have the straight-through
    gradient (the mask) wrt `w`; learned has the clipped STE wrt `w` and the
    LSQ gradient wrt `step`. The mask gets no gradient.
  """
  chex.assert_type(w, float)
  chex.assert_rank(w, {1, 2, 3, 4, 5})
  bits, fmt, gran = (jnp.asarray(c, jnp.int32) for c in (bits, fmt, gran))
  chex.assert_rank([bits, fmt, gran], 0)
  axis = channel_axis % w.ndim
  mask = jnp.ones((w.shape[axis],), jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
  chex.assert_shape(mask, (w.shape[axis],))
  if step is None:
    _, _, bshape = _channel_layout(w, axis)
    masked = w.astype(jnp.float32) * jnp.reshape(mask, bshape)
    step = lax.stop_gradient(init_step(masked, bits, fmt, channel_axis=axis))
  else:
    chex.assert_shape(step, (w.shape[axis],))
  return _fake_quant_ste(w, jnp.asarray(step, jnp.float32), lax.stop_gradient(mask), bits, fmt, gran, axis)


@functools.partial(jax.jit, static_argnames=("channel_axis",))
def quant_error(w: jax.Array, bits, fmt, gran, *, channel_axis: int = -1) -> jax.Array:
  """Relative L2 error ``||fake_quant(w) - w|| / ||w||`` (0 for an all-zero `w`).

  Args:
    w: float kernel of rank >= 1.
    bits, fmt, gran: int32 scalar codes (traced); learned uses `init_step`.
    channel_axis: the output-channel axis (static).

  Returns:
    float32 scalar.
  """
  chex.assert_type(w, float)
  w32 = jnp.asarray(w, jnp.float32)
  q = fake_quant(w32, bits, fmt, gran, channel_axis=channel_axis)
  den = jnp.linalg.norm(w32.ravel())
  num = jnp.linalg.norm((q - w32).ravel())
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames=("channel_axis",))
def select_bits(w: jax.Array, tol, fmt, gran, *, channel_axis: int = -1) -> jax.Array:
  """Smallest bit width in 2..8 whose relative error is <= `tol`, else 32.

  All seven candidates are evaluated at once with `jax.vmap`. When even 8 bits
  misses the tolerance the kernel is kept unquantized (`codes.FP32_BITS`).

  Args:
    w: float kernel of rank >= 1.
    tol: float scalar tolerance on `quant_error` (traced).
    fmt, gran: int32 scalar codes (traced).
    channel_axis: the output-channel axis (static).

  Returns:
    int32 scalar bit width.
  """
  chex.assert_type(w, float)
  candidates = jnp.asarray(_CANDIDATE_BITS, jnp.int32)
  errors = jax.vmap(lambda b: quant_error(w, b, fmt, gran, channel_axis=channel_axis))(candidates)
  ok = errors <= tol
  return jnp.where(jnp.any(ok), candidates[jnp.argmax(ok)], jnp.int32(codes.FP32_BITS))
