"""Structured and unstructured pruning masks with a traced keep ratio.

Flax kernels are laid out ``[in, out]`` (dense) or ``[h, w, in, out]`` (conv):
an *output neuron* (or filter) is an index of the LAST axis.

Every mask here keeps an exact number of entries, ``kept_count(keep, n)``,
chosen by a radix select rather than `lax.top_k`, so `keep` may be a
traced scalar: one compiled function serves every keep ratio, and `jax.vmap`
runs a batch of keep ratios (or stacked kernels) at once. Ties are broken
deterministically (the lower flat index wins) and NaN scores never win, so the
mask at a larger keep always contains the mask at a smaller one.

`allocate_pruning` turns per-layer sensitivities into per-layer prune ratios
that meet a parameter-weighted global sparsity target.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

NEURON_METHODS = ("l2", "l1", "taylor")
WEIGHT_METHODS = ("magnitude", "gradient", "movement")

# Products keep*n this close to a half (relative to n) are taken as exact
# halves: a float32 keep such as 0.35 stands for the decimal 0.35.
_HALF_SNAP_REL = 2.0 ** -21
_HALF_SNAP_MAX = 2.0 ** -8

# allocate_pruning: p_i = clip(lam * (1 + floor - s_i), min, max), s_i in [0, 1].
_ROBUSTNESS_FLOOR = 0.1
_BISECTION_STEPS = 50


def _float_dtype(x) -> jnp.dtype:
  """The dtype to compute scores in: at least float32."""
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    return jnp.dtype(jnp.float32)
  return jnp.promote_types(dtype, jnp.float32)


def _is_concrete(x) -> bool:
  return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


def kept_count(keep, n: int) -> jax.Array:
  """Number of entries kept out of `n` at keep ratio `keep`.

  ``round(keep * n)`` with round-half-to-even (as Python's `round`), clipped to
  ``[1, n]``. A float32 product within ``n * 2**-21`` (at most ``2**-8``) of a
  half counts as that exact half, so a decimal keep such as 0.35 rounds like
  the decimal product does (``0.35 * 10 = 3.5 -> 4``) despite float32 error.
  (This follows the exact decimal product, which float64 ``round(keep * n)``
  misses in rare cases such as ``round(0.7 * 45) == 31``.) A NaN keep keeps all.

  Args:
    keep: keep ratio, a traced or concrete scalar (or any shape, elementwise).
    n: static number of entries, ``n >= 1``.

  Returns:
    int32 array of `keep`'s shape with values in ``[1, n]``.
  """
  if not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"kept_count needs a static integer n >= 1, got {n!r}")
  keep = jnp.asarray(keep)
  x = keep.astype(_float_dtype(keep)) * n
  tol = min(n * _HALF_SNAP_REL, _HALF_SNAP_MAX)
  half = jnp.floor(x) + 0.5
  x = jnp.where(jnp.abs(x - half) <= tol, half, x)
  count = jnp.round(x)  # round-half-to-even
  count = jnp.where(jnp.isnan(count), n, count)
  return jnp.clip(count, 1, n).astype(jnp.int32)


def order_key(scores: jax.Array) -> jax.Array:
  """Unsigned keys whose order is the scores' order, NaN lowest (key 0) and signed zeros equal.

  Floats of up to 32 bits become float32 (exactly) and then the total-order bit pattern:
  sign bit flipped for positives, every bit for negatives. Integers of up to 32 bits become
  int32 or uint32, with the sign bit flipped for signed ones. 64-bit types (x64) keep 64 bits.
  """
  dtype = scores.dtype
  if jnp.issubdtype(dtype, jnp.floating):
    wide = jnp.promote_types(dtype, jnp.float32)
    utype = jnp.uint64 if wide.itemsize == 8 else jnp.uint32
    x = scores.astype(wide)
    bits = lax.bitcast_convert_type(jnp.where(x == 0, jnp.zeros((), wide), x), utype)
    sign = jnp.asarray(1, utype) << (8 * wide.itemsize - 1)
    key = jnp.where((bits & sign) != 0, ~bits, bits | sign)
    return jnp.where(jnp.isnan(x), jnp.zeros((), utype), key)
  if dtype == jnp.bool_ or (jnp.issubdtype(dtype, jnp.unsignedinteger) and dtype.itemsize <= 4):
    return scores.astype(jnp.uint32)
  if jnp.issubdtype(dtype, jnp.unsignedinteger):
    return scores
  wide = jnp.int64 if dtype.itemsize == 8 else jnp.int32
  utype = jnp.uint64 if dtype.itemsize == 8 else jnp.uint32
  sign = jnp.asarray(1, utype) << (8 * jnp.dtype(wide).itemsize - 1)
  return lax.bitcast_convert_type(scores.astype(wide), utype) ^ sign


def select_top(key: jax.Array, count) -> jax.Array:
  """Boolean mask of the `count` largest of unsigned `key` [n], the lower index first on ties.

  A radix select instead of a sort: the threshold ``T`` (the largest value with at least
  `count` keys >= it) is built one bit at a time from the top, each bit one count over the
  keys (32 for 32-bit keys); every key above ``T`` is kept, and the keys equal to ``T`` fill
  the rest in index order. Sorting vit_tiny's 48 neuron-score vectors took 3.3-5 ms on the
  2-core CPU (`benchmarks/results/apply_plan.json` has the whole mask now).

  Args:
    key: unsigned int [n], e.g. from `order_key`.
    count: int32 scalar in ``[0, n]`` (traced).

  Returns:
    bool [n] with exactly `count` True.
  """
  one = jnp.asarray(1, key.dtype)
  width = 8 * key.dtype.itemsize

  def set_bit(i, threshold):
    candidate = threshold | (one << (width - 1 - i).astype(key.dtype))
    return jnp.where(jnp.sum(key >= candidate) >= count, candidate, threshold)

  threshold = lax.fori_loop(0, width, set_bit, jnp.zeros((), key.dtype))
  above = key > threshold
  tie = key == threshold
  return above | (tie & (jnp.cumsum(tie) <= count - jnp.sum(above)))


def topk_mask(scores: jax.Array, keep) -> jax.Array:
  """Boolean mask of the `kept_count(keep, scores.size)` highest scores (`select_top`).

  `keep` may be traced. Among equal scores the lower flat index wins; NaN scores are kept
  only when there are fewer non-NaN entries than the count.

  Args:
    scores: score array of any shape `S` with at least one entry.
    keep: scalar keep ratio (traced or concrete).

  Returns:
    bool array of shape `S` with exactly `kept_count(keep, scores.size)` True.
  """
  chex.assert_rank(keep, 0)
  scores = jnp.asarray(scores)
  n = scores.size
  if n < 1:
    raise ValueError("topk_mask needs at least one score")
  return select_top(order_key(scores.reshape(-1)), kept_count(keep, n)).reshape(scores.shape)


def _check_method(method: str, valid: tuple[str, ...], kind: str) -> None:
  if method not in valid:
    raise ValueError(f"unknown {kind} method {method!r}; choose one of {', '.join(valid)}")


def neuron_importance(w: jax.Array, method: str = "l2", grad: jax.Array | None = None) -> jax.Array:
  """Importance of every output neuron (index of the last axis) of a kernel.

  Methods (static strings):
    ``l2``      L2 norm of the neuron's weights (all axes but the last).
    ``l1``      L1 norm of the neuron's weights.
    ``taylor``  Fisher/Taylor score ``sum (w * g)**2``; needs `grad`.

  Args:
    w: kernel ``[..., out]`` (``[in, out]`` dense, ``[h, w, in, out]`` conv).
    method: one of `NEURON_METHODS`.
    grad: loss gradient with `w`'s shape; required by ``taylor``.

  Returns:
    float array ``[out]`` (at least float32).

  Raises:
    ValueError: unknown method, or ``taylor`` without `grad`.
  """
  _check_method(method, NEURON_METHODS, "neuron importance")
  if method == "taylor" and grad is None:
    raise ValueError("neuron importance method 'taylor' needs grad (the loss gradient of w)")
  chex.assert_rank(w, {1, 2, 3, 4, 5})
  if grad is not None:
    chex.assert_equal_shape([w, grad])
  dtype = _float_dtype(w)
  w = w.astype(dtype)
  axes = tuple(range(w.ndim - 1))
  if method == "l2":
    return jnp.sqrt(jnp.sum(jnp.square(w), axis=axes))
  if method == "l1":
    return jnp.sum(jnp.abs(w), axis=axes)
  return jnp.sum(jnp.square(w * grad.astype(dtype)), axis=axes)


def mask_dtype(w) -> jnp.dtype:
  dtype = jnp.result_type(w)
  return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.dtype(jnp.float32)


def neuron_mask(w: jax.Array, keep, method: str = "l2", grad: jax.Array | None = None) -> jax.Array:
  """Structured mask over output neurons keeping the `kept_count(keep, out)` most important.

  Args:
    w: kernel ``[..., out]``.
    keep: scalar keep ratio (traced or concrete).
    method: static importance method, one of `NEURON_METHODS`.
    grad: gradient with `w`'s shape, for ``taylor``.

  Returns:
    float mask ``[out]`` in `w`'s float dtype: 1 for kept neurons, 0 for pruned.
  """
  scores = neuron_importance(w, method, grad)
  chex.assert_rank(keep, 0)
  return topk_mask(scores, keep).astype(mask_dtype(w))


def apply_neuron_mask(w: jax.Array, bias: jax.Array | None,
                      mask: jax.Array) -> tuple[jax.Array, jax.Array | None]:
  """Zeros pruned output neurons: their kernel slice and their bias entry.

  Args:
    w: kernel ``[..., out]``.
    bias: bias ``[out]`` or None.
    mask: mask ``[out]`` (1 keep, 0 prune), e.g. from `neuron_mask`.

  Returns:
    ``(w * mask, bias * mask)`` with `mask` broadcast on the last axis; the
    bias is None when `bias` is None.
  """
  chex.assert_rank(mask, 1)
  chex.assert_axis_dimension(w, -1, mask.shape[0])
  pruned_w = w * mask.astype(w.dtype)
  if bias is None:
    return pruned_w, None
  chex.assert_shape(bias, mask.shape)
  return pruned_w, bias * mask.astype(bias.dtype)


def weight_scores(w: jax.Array, method: str = "magnitude", grad: jax.Array | None = None,
                  w0: jax.Array | None = None) -> jax.Array:
  """Per-weight importance for unstructured pruning (higher is kept first).

  Methods (static strings):
    ``magnitude``  ``|w|``.
    ``gradient``   ``|w * g|`` (first-order Taylor); needs `grad`.
    ``movement``   ``w * (w - w0)``: the first-order movement score of Sanh et
                   al. (2020) under SGD; weights moving away from zero score
                   high. Needs the initial weights `w0`.

  Args:
    w: weights of any shape `S`.
    method: one of `WEIGHT_METHODS`.
    grad: gradient of shape `S` (``gradient``).
    w0: initial weights of shape `S` (``movement``).

  Returns:
    float array of shape `S` (at least float32).

  Raises:
    ValueError: unknown method, or the method's grad / w0 is missing.
  """
  _check_method(method, WEIGHT_METHODS, "weight pruning")
  if method == "gradient" and grad is None:
    raise ValueError("weight pruning method 'gradient' needs grad (the loss gradient of w)")
  if method == "movement" and w0 is None:
    raise ValueError("weight pruning method 'movement' needs w0 (the initial weights)")
  for other in (grad, w0):
    if other is not None:
      chex.assert_equal_shape([w, other])
  dtype = _float_dtype(w)
  w = jnp.asarray(w).astype(dtype)
  if method == "magnitude":
    return jnp.abs(w)
  if method == "gradient":
    return jnp.abs(w * grad.astype(dtype))
  return w * (w - w0.astype(dtype))


def weight_mask(w: jax.Array, keep, method: str = "magnitude", grad: jax.Array | None = None,
                w0: jax.Array | None = None) -> jax.Array:
  """Unstructured mask keeping exactly `kept_count(keep, w.size)` weights.

  Args:
    w: weights of any shape `S`.
    keep: scalar keep ratio (traced or concrete).
    method: static score method, one of `WEIGHT_METHODS` (see `weight_scores`).
    grad: gradient of shape `S`, for ``gradient``.
    w0: initial weights of shape `S`, for ``movement``.

  Returns:
    float mask of shape `S` in `w`'s float dtype (1 keep, 0 prune).
  """
  scores = weight_scores(w, method, grad, w0)
  chex.assert_rank(keep, 0)
  return topk_mask(scores, keep).astype(mask_dtype(w))


def _prune_ratios(lam, robustness, min_prune, max_prune):
  return jnp.clip(lam * robustness, min_prune, max_prune)


def allocate_pruning(sensitivity, sizes, target_sparsity, *, min_prune: float = 0.0,
                     max_prune: float = 0.8) -> jax.Array:
  """Per-layer prune ratios meeting a parameter-weighted sparsity target.

  Sensitivities are min-max normalised to ``s_i in [0, 1]`` (all equal -> 0)
  and the ratios follow the monotone family
  ``p_i(lam) = clip(lam * (1 + 0.1 - s_i), min_prune, max_prune)``: the least
  sensitive layer is pruned most (about 11x the rate of the most sensitive
  one until clipping). ``lam`` is found by bisection in a `lax.fori_loop` so
  that ``sum(sizes * p) / sum(sizes) == target_sparsity`` (to ~1e-6); every
  target in ``[min_prune, max_prune]`` is attainable. Jittable and vmappable.

  Args:
    sensitivity: float ``[L]``, higher means more harmed by pruning.
    sizes: ``[L]`` parameter counts (positive) of the layers.
    target_sparsity: scalar global fraction of parameters to prune.
    min_prune: lower bound on every ratio, ``0 <= min_prune <= max_prune``.
    max_prune: upper bound on every ratio, ``max_prune <= 1``.

  Returns:
    float32 ``[L]`` prune ratios in ``[min_prune, max_prune]``.

  Raises:
    ValueError: with concrete inputs, a target outside ``[min_prune,
      max_prune]``, bad bounds, or non-positive sizes.
  """
  if _is_concrete((min_prune, max_prune)):
    lo, hi = float(min_prune), float(max_prune)
    if not 0.0 <= lo <= hi <= 1.0:
      raise ValueError(f"need 0 <= min_prune <= max_prune <= 1, got min_prune={lo}, max_prune={hi}")
    if _is_concrete(target_sparsity):
      t = np.asarray(target_sparsity, np.float64)
      bad = ~(np.isfinite(t) & (t >= lo - 1e-6) & (t <= hi + 1e-6))
      if bad.any():
        raise ValueError(
            f"target sparsity {t[bad].ravel()[0]:.4g} is not attainable with per-layer "
            f"prune ratios in [{lo}, {hi}]")
  if _is_concrete(sizes) and not (np.asarray(sizes) > 0).all():
    raise ValueError("allocate_pruning needs positive layer sizes")
  sensitivity = jnp.asarray(sensitivity, jnp.float32)
  sizes = jnp.asarray(sizes, jnp.float32)
  chex.assert_rank(sensitivity, 1)
  chex.assert_equal_shape([sensitivity, sizes])
  target = jnp.asarray(target_sparsity, jnp.float32)
  chex.assert_rank(target, 0)

  s_min, s_max = jnp.min(sensitivity), jnp.max(sensitivity)
  span = s_max - s_min
  norm = jnp.where(span > 0, (sensitivity - s_min) / jnp.where(span > 0, span, 1.0), 0.0)
  robustness = 1.0 + _ROBUSTNESS_FLOOR - norm  # in [floor, 1 + floor]
  weights = sizes / jnp.sum(sizes)
  min_p = jnp.asarray(min_prune, jnp.float32)
  max_p = jnp.asarray(max_prune, jnp.float32)

  def sparsity(lam):
    return jnp.sum(weights * _prune_ratios(lam, robustness, min_p, max_p))

  def step(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    below = sparsity(mid) < target
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  # At lam = max/floor every ratio reaches max_prune; at 0 every ratio is min_prune.
  lam_hi = max_p / _ROBUSTNESS_FLOOR
  lo, hi = lax.fori_loop(0, _BISECTION_STEPS, step, (jnp.zeros_like(lam_hi), lam_hi))
  # Choose the bracket end whose sparsity is closer to the target.
  lam = jnp.where(jnp.abs(sparsity(lo) - target) <= jnp.abs(sparsity(hi) - target), lo, hi)
  return _prune_ratios(lam, robustness, min_p, max_p)
