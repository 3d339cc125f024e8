"""Fake quantization of weight kernels with traced bits, format and granularity.

`fake_quant` returns the dequantized kernel (same shape and dtype) with a
straight-through gradient. Bits, format code and granularity code are traced
int32 scalars: one compiled function serves every combination (the
granularity and INT versus minifloat pick a `lax.switch` branch, so a kernel
computes only its own rounding; bit-dependent constants come from lookup
tables).

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
import numpy as np
from jax import lax

from hirelc_jax.compression import codes
from hirelc_jax.compression import formats

_SQRT2_FLOOR = float(np.float32(np.sqrt(2.0)))  # the float32 just below sqrt(2)
# `_quantized_value`'s branch by [granularity, minifloat format]: INT and minifloat rounding
# of uniform, per-channel and learned grids are separate branches (only the chosen rounding is
# computed), then log (format ignored) and asymmetric (INT only).
_BRANCH = np.array([[0, 1], [6, 6], [2, 3], [4, 5], [7, 7]], np.int32)


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


def _round_to_grid(v: jax.Array, bits, fmt, integer: bool | None = None) -> jax.Array:
  """Rounds `v` (scale units, inside +-limit) to the INT or minifloat grid.

  `integer` True or False (static) computes only that rounding; None computes both and
  selects by the traced `fmt`.
  """
  if integer:
    return jnp.round(v)
  minifloat = formats.minifloat_round(v, fmt, bits)
  if integer is None:
    return jnp.where(_clamp_fmt(fmt) == codes.INT, jnp.round(v), minifloat)
  return minifloat


def _channel_layout(w: jax.Array, channel_axis: int) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
  """Returns (axis, reduce axes, broadcast shape of a per-channel vector)."""
  axis = channel_axis % w.ndim
  reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
  bshape = tuple(w.shape[i] if i == axis else 1 for i in range(w.ndim))
  return axis, reduce_axes, bshape


def _symmetric(w: jax.Array, scale: jax.Array, bits, fmt, integer: bool | None = None) -> jax.Array:
  """``round_ste(clip(w / scale)) * scale`` on the symmetric grid; zero scale gives 0.

  Args:
    w: float32 kernel.
    scale: float32 scale broadcastable to `w` (scalar or per channel).
    bits: int32 scalar bit width.
    fmt: int32 scalar format code.
    integer: the static rounding of `_round_to_grid` (None: by `fmt`).

  Returns:
    float32 array of `w`'s shape, differentiable wrt `w` (clipped STE) and
    `scale` (LSQ gradient).
  """
  ok = scale > 0
  safe = jnp.where(ok, scale, 1.0)
  lim = grid_limit(bits, fmt)
  v = jnp.clip(_div(w, safe), -lim, lim)
  q = _ste(v, _round_to_grid(v, bits, fmt, integer)) * safe
  return jnp.where(ok, q, 0.0)


def _log(w: jax.Array, bits, s: jax.Array) -> jax.Array:
  """Sign plus levels ``s * 2**-k``, ``k`` in 0..L-1, and zero; ``s = max|w|`` (given).

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
    s: float32 scalar ``max|w|``.

  Returns:
    float32 array of `w`'s shape on the export's log codes; nonzero values
    keep the sign of `w`.
  """
  levels = int_qmax(bits).astype(jnp.int32)  # L = 2**(b-1) - 1 nonzero magnitudes.
  a = jnp.abs(w)
  safe_s = jnp.where(s > 0, s, 1.0)
  ratio = _div(a, safe_s)
  zero = ratio * formats.pow2(levels) < 1.0  # power-of-two scaling is exact
  # round(log2 r) for r = m * 2**e, m in [1, 2): e, plus one when m > sqrt(2) (the geometric
  # mean of 2**e and 2**(e+1); no float32 equals it). Exact, where a float log2 is not.
  e = formats.float32_exponent(ratio)
  up = ratio * formats.pow2(-e) > _SQRT2_FLOOR
  k = jnp.clip(e + up.astype(jnp.int32), -(levels - 1), 0)
  mag = jnp.where(zero, 0.0, safe_s * formats.pow2(k))
  return jnp.copysign(mag, w)


def _round_significand(x: jax.Array, keep) -> jax.Array:
  """Positive float32 `x` rounded to `keep` (1..21) significant bits, ties up; exact bit arithmetic."""
  drop = 24 - jnp.asarray(keep, jnp.int32)
  i = lax.bitcast_convert_type(x, jnp.int32)
  i = (i + (1 << (drop - 1))) & ~((1 << drop) - 1)  # a carry moves into the exponent
  return lax.bitcast_convert_type(i, jnp.float32)


def _asymmetric(w: jax.Array, bits, lo: jax.Array, hi: jax.Array) -> jax.Array:
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
    lo, hi: float32 scalars ``min w`` and ``max w``.

  Returns:
    float32 array of `w`'s shape; `w` itself when ``hi == lo``.
  """
  n = formats.pow2(_clamp_bits(bits)) - 1.0
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


def _learned_step(x: jax.Array, step: jax.Array | None, bits, fmt, channel_axis: int) -> jax.Array:
  """The learned step broadcast to `x`; None means the LSQ initialisation from `x` (no gradient).

  Computed inside the learned branch only: every other mode skips the pass over the kernel.
  """
  _, _, bshape = _channel_layout(x, channel_axis)
  if step is None:
    step = lax.stop_gradient(init_step(x, bits, fmt, channel_axis=channel_axis))
  return jnp.reshape(step, bshape)


def _quantized_value(w: jax.Array, step: jax.Array | None, mask: jax.Array, bits, fmt, gran,
                     channel_axis: int) -> jax.Array:
  """``mask * Q(mask * w)`` (no gradient rules): one `lax.switch` over the granularities (the
  symmetric ones split by INT and minifloat rounding, `_BRANCH`) and the identity (bits 32),
  the masking fused into each branch.

  Shapes: w [..., out] float, step (or None) and mask [out] float32; bits, fmt, gran int32
  scalars.
  """
  fmt, gran = _clamped_codes(fmt, gran)
  _, reduce_axes, bshape = _channel_layout(w, channel_axis)
  m = jnp.reshape(mask, bshape)

  # Statistics of the masked kernel as m times those of `w` (exact for m >= 0): reducing `w`
  # itself lets XLA:CPU read it once, where reducing the product wrote the product out first.
  def col_absmax():
    return jnp.max(jnp.abs(w.astype(jnp.float32)), axis=reduce_axes, keepdims=True) * m

  def tensor_range():
    w32 = w.astype(jnp.float32)
    return (jnp.min(jnp.min(w32, axis=reduce_axes, keepdims=True) * m),
            jnp.max(jnp.max(w32, axis=reduce_axes, keepdims=True) * m))

  # The grid limit is computed inside the branches that read it, where XLA fuses it into their
  # loops; computed out here, it would be one more kernel launch per weight matrix.
  scales = {codes.UNIFORM: lambda x: _div(jnp.max(col_absmax()), grid_limit(bits, fmt)),
            codes.PER_CHANNEL: lambda x: _div(col_absmax(), grid_limit(bits, fmt)),
            codes.LEARNED: lambda x: _learned_step(x, step, bits, fmt, channel_axis)}
  quantizers = [lambda x, scale=scale, integer=integer: _symmetric(x, scale(x), bits, fmt, integer)
                for scale in scales.values() for integer in (True, False)]
  quantizers += [lambda x: _log(x, bits, jnp.max(col_absmax())),
                 lambda x: _asymmetric(x, bits, *tensor_range()),
                 lambda x: x]  # bits 32: unquantized

  def branch(quantizer):
    return lambda: (quantizer(w.astype(jnp.float32) * m) * m).astype(w.dtype)

  index = jnp.asarray(_BRANCH)[gran, (fmt != codes.INT).astype(jnp.int32)]
  index = jnp.where(bits == codes.FP32_BITS, len(quantizers) - 1, index)
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
      x = w_.astype(jnp.float32) * m
      q = _symmetric(x, _learned_step(x, step_, bits, fmt, channel_axis), bits, fmt)
      return (q * m).astype(w.dtype)
    return jax.vjp(value, w, step)[1](g)

  def straight():
    return g * m.astype(g.dtype), jax.tree.map(jnp.zeros_like, step)

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
  if step is not None:
    chex.assert_shape(step, (w.shape[axis],))
    step = jnp.asarray(step, jnp.float32)
  return _fake_quant_ste(w, step, lax.stop_gradient(mask), bits, fmt, gran, axis)


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
