"""A Fisher-weighted compression-error table: the LLA's grounded accuracy signal.

Second-order view (Optimal Brain Damage, HAWQ): moving kernel weights by Δw
raises the loss by about ½ Σ F ⊙ Δw², with F the diagonal empirical Fisher
(mean squared per-sample gradient). Before the search, for every plan slot
(block b, kernel k) two tables are computed once from the baseline weights:

  quant[b, k, bits - 2, fmt, gran] = Σ F ⊙ (Q(w) - w)²       bits 2..8, every code
  pruned[b, k, j] = Σ F ⊙ w² over the j least important output neurons (l2)

and a plan's error is, per slot with n output neurons of which c are kept,

  E = pruned[n - c] + (c / n) · quant[bits, fmt, gran]

(the quantization error of pruned neurons is replaced by their whole energy,
assuming it spreads evenly over neurons). E is additive over slots, so the
predicted drop of a whole-model plan is `Σ points_per_error · E` over slots,
with `points_per_error` fitted to real pre-fine-tune drops: one slope
(`fit_points_per_error`) or one per block (`fit_group_calibration`).

In the LLA environment every block is judged by its own error as if every
block compressed alike: D = num_blocks · Σ_k points_per_error[b, k] · E[b, k]. Each
block thus gets an equal share of the drop budget and, unlike a whole-plan
query against last cycle's plan, blocks trained at the same time cannot all
spend the same budget. The signal is a table lookup, as cheap as the
surrogate, and it cannot be exploited out of distribution (the surrogate,
fitted on a few dozen plans, predicted 100 % for heavily pruned plans that
measured 84 %).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from flax import traverse_util
from scipy import optimize

from hirelc_jax.compression import codes, prune, quantize
from hirelc_jax.compression.kernel_map import KernelMap
from hirelc_jax.compression.plan import CompressionPlan
from hirelc_jax.data.pipeline import num_examples, take

NUM_BIT_WIDTHS = codes.MAX_BITS - codes.MIN_BITS + 1
MAX_DROP = 8.0      # points: a plan losing more has collapsed (the calibration censors it)
GROUP_RIDGE = 0.01  # fit_group_calibration's pull towards the common slope


@struct.dataclass
class ErrorTable:
  """Per-slot error tables; absent slots are all zero.

  Attributes:
    quant: float32 `[B, K, 7, len(FORMATS), len(GRANULARITIES)]`.
    pruned: float32 `[B, K, R + 1]`, cumulative pruned energy, R = max outputs.
    num_out: float32 `[B, K]` output neurons per slot (1 where absent).
    present: float32 `[B, K]` 1 where the model has a kernel.
    points_per_error: float32 calibration, points of accuracy per unit E: a scalar, or `[B, K]`
      one per block (`fit_group_calibration`).
  """
  quant: jax.Array
  pruned: jax.Array
  num_out: jax.Array
  present: jax.Array
  points_per_error: jax.Array


def weight_fisher(loss_fn: Callable, params: Mapping, kmap: KernelMap, x, y,
                  batch_size: int = 16) -> list[jax.Array]:
  """Diagonal empirical Fisher of every mapped kernel, aligned with `kmap.entries`.

  Args:
    loss_fn: `(params, x [N, ...], y [N, ...]) -> mean loss`.
    params: the 'params' collection.
    kmap: its kernel map.
    x, y: calibration examples `[N, ...]` (arrays or pytrees of them); N a
      multiple of `batch_size` is not required (the remainder is dropped only
      if N > batch_size).

  Returns:
    One float32 array per entry, the entry's kernel shape: mean over examples
    of the squared per-example gradient.
  """
  paths = [e.path for e in kmap.entries]
  flat = traverse_util.flatten_dict(dict(params))
  kernels = [flat[p] for p in paths]

  def kernel_loss(ks, xi, yi):
    tree = dict(flat)
    tree.update(zip(paths, ks))
    return loss_fn(traverse_util.unflatten_dict(tree), *jax.tree.map(lambda a: a[None], (xi, yi)))

  @jax.jit
  def chunk(xs, ys):
    grads = jax.vmap(jax.grad(kernel_loss), in_axes=(None, 0, 0))(kernels, xs, ys)
    return [jnp.sum(g.astype(jnp.float32) ** 2, axis=0) for g in grads]

  n = num_examples(y)
  size = min(batch_size, n)
  total = [jnp.zeros(k.shape, jnp.float32) for k in kernels]
  count = 0
  for start in range(0, n - size + 1, size):
    part = chunk(*(jax.tree.map(jnp.asarray, take(t, slice(start, start + size))) for t in (x, y)))
    total = [t + p for t, p in zip(total, part)]
    count += size
  return [t / count for t in total]


@jax.jit
def _kernel_tables(w, fisher):
  """quant `[7, F, G]` and cumulative pruned energy `[out + 1]` of one kernel."""
  w = w.astype(jnp.float32)

  def err(bits, fmt, gran):
    return jnp.sum(fisher * (quantize.fake_quant(w, bits, fmt, gran) - w) ** 2)

  bits = jnp.arange(codes.MIN_BITS, codes.MAX_BITS + 1)
  fmts = jnp.arange(len(codes.FORMATS))
  grans = jnp.arange(len(codes.GRANULARITIES))
  over_gran = jax.vmap(err, in_axes=(None, None, 0))
  quant = jax.vmap(jax.vmap(over_gran, in_axes=(None, 0, None)), in_axes=(0, None, None))(
      bits, fmts, grans)
  axes = tuple(range(w.ndim - 1))
  energy = jnp.sum(fisher * w * w, axis=axes)                                  # [out]
  order = jnp.argsort(prune.neuron_importance(w, "l2"))                        # least first
  pruned = jnp.concatenate([jnp.zeros(1), jnp.cumsum(energy[order])])
  return quant, pruned


def build_error_table(params: Mapping, fisher: Sequence[jax.Array], kmap: KernelMap,
                      points_per_error: float = 1.0) -> ErrorTable:
  """Computes the tables of every mapped kernel (one compile per kernel shape)."""
  flat = traverse_util.flatten_dict(dict(params))
  b, k = kmap.plan_shape
  rows = max(e.num_out for e in kmap.entries)
  quant = np.zeros((b, k, NUM_BIT_WIDTHS, len(codes.FORMATS), len(codes.GRANULARITIES)), np.float32)
  pruned = np.zeros((b, k, rows + 1), np.float32)
  num_out = np.ones((b, k), np.float32)
  for entry, f in zip(kmap.entries, fisher):
    q, p = jax.device_get(_kernel_tables(jnp.asarray(flat[entry.path]), f))
    quant[entry.block, entry.kernel] = q
    pruned[entry.block, entry.kernel, :entry.num_out + 1] = p
    pruned[entry.block, entry.kernel, entry.num_out + 1:] = p[-1]
    num_out[entry.block, entry.kernel] = entry.num_out
  return ErrorTable(jnp.asarray(quant), jnp.asarray(pruned), jnp.asarray(num_out),
                    jnp.asarray(kmap.present, jnp.float32), jnp.float32(points_per_error))


def slot_errors(table: ErrorTable, bits, keep, fmt, gran, block_index=None) -> jax.Array:
  """E of each slot of a plan `[B, K]` (or of one block's row `[K]` at `block_index`)."""
  pick = (lambda a: a) if block_index is None else (lambda a: a[block_index])
  quant, pruned, num_out, present = (pick(a) for a in (table.quant, table.pruned,
                                                        table.num_out, table.present))
  bits = jnp.asarray(bits, jnp.int32)
  quantized = bits <= codes.MAX_BITS
  b_idx = jnp.clip(bits - codes.MIN_BITS, 0, NUM_BIT_WIDTHS - 1)
  fmt = jnp.clip(jnp.asarray(fmt, jnp.int32), 0, len(codes.FORMATS) - 1)
  gran = jnp.clip(jnp.asarray(gran, jnp.int32), 0, len(codes.GRANULARITIES) - 1)
  q = jnp.take_along_axis(quant.reshape(quant.shape[:-3] + (-1,)),
                          ((b_idx * quant.shape[-2] + fmt) * quant.shape[-1] + gran)[..., None],
                          axis=-1)[..., 0]
  kept = jnp.clip(jnp.round(jnp.asarray(keep, jnp.float32) * num_out), 1.0, num_out)
  gone = (num_out - kept).astype(jnp.int32)
  p = jnp.take_along_axis(pruned, gone[..., None], axis=-1)[..., 0]
  return present * (p + jnp.where(quantized, kept / num_out * q, 0.0))


def plan_error(table: ErrorTable, plan: CompressionPlan) -> jax.Array:
  """Whole-model E of a plan `[B, K]` (float32 scalar); vmap over plans."""
  return jnp.sum(slot_errors(table, plan.bits, plan.keep, plan.fmt, plan.gran))


def error_table_fn() -> Callable:
  """An LLA `accuracy_fn`: D = B · Σ_k points_per_error[b, k] · E[b, k] over the block's decoded row."""

  def accuracy_fn(table: ErrorTable, block_index, bits, keep, fmt, gran):
    scale = jnp.broadcast_to(table.points_per_error, table.present.shape)[block_index]
    return table.present.shape[0] * jnp.sum(scale * slot_errors(table, bits, keep, fmt, gran, block_index))

  return accuracy_fn


def fit_points_per_error(errors, drops, max_drop: float = MAX_DROP, censored: bool = True) -> float | None:
  """Slope s through the origin of real drop on E, with collapsed plans as censored points.

  Beyond `max_drop` the drop leaves the second-order regime and saturates, so a
  collapsed plan's drop is not fitted, only known to be at least `max_drop`:
  s minimises sum_ok (d - s E)^2 + sum_collapsed max(0, max_drop - s E)^2, so a
  collapsed plan pulls the slope up only while the fit predicts it below
  `max_drop`: a table that rates collapsing plans well is corrected by them.

  Args:
    errors, drops: float [N] each plan's table error E and measured drop (points).
    censored: False leaves collapsed plans out of the fit.
  Returns:
    the slope (points per unit of E), or None when fewer than 3 plans have
    drop <= max_drop and none collapsed.
  """
  e, d = np.asarray(errors, np.float64), np.asarray(drops, np.float64)
  valid = np.isfinite(e) & np.isfinite(d) & (e > 0)
  ok, collapsed = valid & (d <= max_drop), valid & (d > max_drop) & censored
  if ok.sum() < 3 and not collapsed.any():
    return None
  eo, do = e[ok], np.maximum(d[ok], 0.0)
  ec = np.sort(e[collapsed])          # ascending E: descending breakpoint max_drop / E
  num, den = np.sum(eo * do), np.sum(eo * eo)
  # Active collapsed plans (s E < max_drop) are those with the smallest E: try each count k.
  for k in range(len(ec) + 1):
    a = ec[:k]
    n_, d_ = num + max_drop * np.sum(a), den + np.sum(a * a)
    if d_ == 0.0:
      continue
    s = n_ / d_
    below = k == len(ec) or s * ec[k] >= max_drop     # the inactive ones are predicted >= max_drop
    above = k == 0 or s * ec[k - 1] < max_drop         # the active ones are predicted below it
    if below and above:
      return float(max(s, 1e-6))
  return float(max(max_drop / ec[0], 1e-6))   # only collapsed plans: the least s predicting each >= max_drop


def fit_group_calibration(slot_errors, drops, groups=None, max_drop: float = MAX_DROP,
                          ridge: float = GROUP_RIDGE) -> np.ndarray | None:
  """Points per unit E for every slot, one slope per group of slots (e.g. per block), fitted
  on real drops with collapsed plans censored.

  One slope for the whole table misranks layers: on the CNN the Fisher-weighted
  error of the dense block costs 15x more points per unit than the first
  convolution's (`benchmarks/bench_calibration.py`). The group slopes c
  (non-negative) minimise

    sum_ok (X_i c - d_i)^2 + sum_collapsed min(0, X_i c - max_drop)^2
      + ridge N mean_g (c_g / s - 1)^2,      X_ig = sum of plan i's errors in group g,

  with s the common slope (`fit_points_per_error`): a convex problem solved by
  L-BFGS-B. The ridge pulls groups the data cannot tell apart towards s.

  Args:
    slot_errors: float [N, S] each plan's table error per slot (unscaled E).
    drops: float [N] measured pre-fine-tune drops (points).
    groups: int [S] each slot's group in 0..G-1 (default: every slot its own).
  Returns:
    float64 [S] each slot's group slope, or None when `fit_points_per_error` has too few plans.
  """
  x, d = np.asarray(slot_errors, np.float64), np.asarray(drops, np.float64)
  keep = np.all(np.isfinite(x), axis=1) & np.isfinite(d)
  x, d = x[keep], d[keep]
  common = fit_points_per_error(x.sum(1), d, max_drop)
  if common is None:
    return None
  groups = np.arange(x.shape[1]) if groups is None else np.asarray(groups)
  member = np.eye(int(groups.max()) + 1)[groups]           # [S, G]
  xs = x @ member * common                                 # in units of the common slope: c = common * u
  ok, (n, m) = d <= max_drop, xs.shape
  weight = ridge * n / m

  def loss(u):
    r = xs @ u - np.where(ok, np.maximum(d, 0.0), max_drop)
    r = np.where(ok, r, np.minimum(r, 0.0))
    return np.sum(r * r) + weight * np.sum((u - 1.0) ** 2), 2.0 * xs.T @ r + 2.0 * weight * (u - 1.0)

  u = optimize.minimize(loss, np.ones(m), jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * m).x
  return common * (member @ u)
