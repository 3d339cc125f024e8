"""Per-kernel and per-block sensitivity scores from gradients of a loss.

The original HiReLC (reference §7) squared the *mini-batch* gradient and called
it Fisher, scored only whole blocks (including biases and norms), and its
package "composite" averaged unnormalised scores of different scales. Here:

* every method differentiates only the kernels of a `KernelMap` (a kernel's
  bias, norms and non-block parameters are not scored);
* a kernel's raw score is a **sum over its elements** (for "grad_norm", the L2
  norm of its gradient); a block's raw score is the sum over its kernels;
* scores are normalised by dividing by the max over present slots, so the most
  sensitive kernel (and block) is exactly 1 and zero stays zero; `normalize=
  "minmax"` maps [min, max] over present slots to [0, 1] instead (a degenerate
  range, all scores equal, falls back to max-normalisation). Absent slots are 0.
  Normalised scores are clipped to [0, 1]: a negative Hutchinson trace
  (negative curvature) counts as insensitive; `raw_*` keep the sign.

Methods (`METHODS`):

* ``fisher``: diagonal empirical Fisher, mean over samples of the per-sample
  squared gradient, from `vmap(grad)` over single examples in chunks.
* ``hutchinson``: trace of the kernel's diagonal Hessian block,
  E[v^T H v] over Rademacher probes v, with H v from `jax.jvp` of `jax.grad`.
* ``grad_norm``: L2 norm of the kernel's gradient of the mean loss.
* ``snip``: sum |w * g| with g the gradient of the mean loss.
* ``composite``: mean of the max-normalised scores of `composite_methods`.

All use the first `num_samples` examples (all of them if fewer), split into
chunks of `batch_size` (the remainder as one smaller chunk), and are jitted;
the compiled function is cached per (loss_fn, kernel map, method, shapes).
`loss_fn(params, x, y)` must return the **mean** loss over its batch, so that
per-sample and chunked gradients combine exactly.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct, traverse_util
from jax import lax

from hirelc_jax.compression.kernel_map import KernelMap

METHODS = ("fisher", "hutchinson", "grad_norm", "snip", "composite")
NORMALIZATIONS = ("max", "minmax")


@struct.dataclass
class Sensitivity:
  """Sensitivity scores.

  Attributes:
    kernel: float32 `[B, K]` normalised per-kernel scores in [0, 1].
    block: float32 `[B]` normalised per-block scores in [0, 1].
    raw_kernel: float32 `[B, K]` unnormalised per-kernel scores (for
      "composite", the mean of the members' max-normalised scores).
    raw_block: float32 `[B]` unnormalised per-block scores (sum of raw_kernel).
  """
  kernel: jax.Array
  block: jax.Array
  raw_kernel: jax.Array
  raw_block: jax.Array


def normalize_scores(raw, present, how: str = "max"):
  """Normalises scores over the present entries; absent entries become 0.

  Args:
    raw: float `[...]` non-negative raw scores.
    present: bool, same shape: which entries exist.
    how: "max" (divide by the max; an all-zero input stays zero) or "minmax"
      ((s - min) / (max - min); if max == min, falls back to "max").

  Returns:
    float32 scores of `raw`'s shape in [0, 1].
  """
  if how not in NORMALIZATIONS:
    raise ValueError(f"unknown normalization {how!r}; choose one of {', '.join(NORMALIZATIONS)}")
  raw = jnp.asarray(raw, jnp.float32)
  present = jnp.asarray(present, bool)
  hi = jnp.max(jnp.where(present, raw, -jnp.inf))
  by_max = jnp.where(hi > 0, raw / jnp.where(hi > 0, hi, 1.0), 0.0)
  if how == "minmax":
    lo = jnp.min(jnp.where(present, raw, jnp.inf))
    span = hi - lo
    out = jnp.where(span > 0, (raw - lo) / jnp.where(span > 0, span, 1.0), by_max)
  else:
    out = by_max
  return jnp.where(present, jnp.clip(out, 0.0, 1.0), 0.0)


def _chunked_sum(fn, data, batch_size: int):
  """Sums `fn(chunk)` over consecutive chunks of the leading axis of `data`.

  Full chunks run under `lax.scan`; a remainder (n % batch_size examples) runs
  once more with its own static shape, so no padding or masking is needed.
  `fn(chunk)` receives the chunk size as `chunk_size` keyword (a Python int).
  """
  n = jax.tree.leaves(data)[0].shape[0]
  full, rem = divmod(n, batch_size)
  total = None
  if full:
    chunks = jax.tree.map(
        lambda a: a[:full * batch_size].reshape((full, batch_size) + a.shape[1:]), data)
    first = jax.tree.map(lambda a: a[0], chunks)
    init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                        jax.eval_shape(functools.partial(fn, chunk_size=batch_size), first))
    body = lambda acc, c: (jax.tree.map(jnp.add, acc, fn(c, chunk_size=batch_size)), None)
    total, _ = lax.scan(body, init, chunks)
  if rem:
    tail = fn(jax.tree.map(lambda a: a[full * batch_size:], data), chunk_size=rem)
    total = tail if total is None else jax.tree.map(jnp.add, total, tail)
  return total


def _fisher(kloss, kernels, data, batch_size):
  """Per-kernel sum of the mean per-sample squared gradient. Returns `[E]`."""
  def single(k, xi, yi):
    return kloss(k, *jax.tree.map(lambda a: a[None], (xi, yi)))

  def chunk_fn(chunk, chunk_size):
    del chunk_size
    grads = jax.vmap(jax.grad(single), in_axes=(None, 0, 0))(kernels, *chunk)
    return jnp.stack([jnp.sum(g ** 2) for g in grads])

  n = jax.tree.leaves(data)[0].shape[0]
  return _chunked_sum(chunk_fn, data, batch_size) / n


def _mean_grad(kloss, kernels, data, batch_size):
  """Gradient of the mean loss over all examples, accumulated over chunks."""
  n = jax.tree.leaves(data)[0].shape[0]

  def chunk_fn(chunk, chunk_size):
    g = jax.grad(kloss)(kernels, *chunk)
    return [gi * (chunk_size / n) for gi in g]

  return _chunked_sum(chunk_fn, data, batch_size)


def _hutchinson(kloss, kernels, data, batch_size, key, num_probes):
  """Per-kernel Hutchinson estimate of tr(H_kk), mean over probes. Returns `[E]`."""
  n = jax.tree.leaves(data)[0].shape[0]

  def probe(k):
    keys = jax.random.split(k, len(kernels))
    v = [jax.random.rademacher(ki, w.shape, w.dtype) for ki, w in zip(keys, kernels)]

    def chunk_fn(chunk, chunk_size):
      grad_fn = lambda ks: jax.grad(kloss)(ks, *chunk)
      hv = jax.jvp(grad_fn, (kernels,), (v,))[1]
      return [h * (chunk_size / n) for h in hv]

    hv = _chunked_sum(chunk_fn, data, batch_size)
    return jnp.stack([jnp.sum(vi * hi) for vi, hi in zip(v, hv)])

  return jnp.mean(lax.map(probe, jax.random.split(key, num_probes)), axis=0)


@functools.partial(jax.jit, static_argnames=("loss_fn", "paths", "method", "batch_size",
                                             "num_probes"))
def _raw_entry_scores(params, x, y, key, *, loss_fn, paths, method, batch_size, num_probes):
  """Raw per-entry scores `[E]` for one base method, in kernel-map entry order."""
  flat = traverse_util.flatten_dict(params)
  kernels = [flat[p] for p in paths]

  def kloss(ks, xb, yb):
    tree = dict(flat)
    tree.update(zip(paths, ks))
    return loss_fn(traverse_util.unflatten_dict(tree), xb, yb)

  data = (x, y)
  if method == "fisher":
    return _fisher(kloss, kernels, data, batch_size)
  if method == "hutchinson":
    return _hutchinson(kloss, kernels, data, batch_size, key, num_probes)
  g = _mean_grad(kloss, kernels, data, batch_size)
  if method == "grad_norm":
    return jnp.stack([jnp.sqrt(jnp.sum(gi ** 2)) for gi in g])
  return jnp.stack([jnp.sum(jnp.abs(w * gi)) for w, gi in zip(kernels, g)])


def _to_grid(entry_scores, kmap: KernelMap):
  """Scatters entry scores `[E]` into `[B, K]` (absent slots 0)."""
  return jnp.zeros(kmap.plan_shape, jnp.float32).at[kmap.slots].set(entry_scores)


def estimate_sensitivity(loss_fn: Callable, params, kmap: KernelMap, x, y, *,
                         method: str = "fisher", num_samples: int = 64, batch_size: int = 16,
                         num_probes: int = 8, key=None, normalize: str = "max",
                         composite_methods: tuple[str, ...] = ("fisher", "grad_norm")
                         ) -> Sensitivity:
  """Estimates per-kernel and per-block sensitivity of `loss_fn` to each kernel.

  Args:
    loss_fn: `(params, x, y) -> scalar`, the mean loss over the batch (a
      hashable function: it is a static argument of the jitted computation).
    params: the parameter tree the kernel map was built from.
    kmap: the `KernelMap`.
    x, y: inputs and targets (arrays or pytrees) with a leading example axis.
    method: one of `METHODS`.
    num_samples: examples used, the first ones (all if fewer).
    batch_size: examples per chunk; per-sample gradients are vmapped per chunk,
      so "fisher" holds batch_size x (kernel parameters) floats at once.
    num_probes: Rademacher probes for "hutchinson".
    key: PRNG key for "hutchinson"; `jax.random.key(0)` if None.
    normalize: "max" or "minmax" (see `normalize_scores`).
    composite_methods: the base methods "composite" averages.

  Returns:
    A `Sensitivity` with kernel `[B, K]`, block `[B]`, raw_kernel `[B, K]`
    and raw_block `[B]`. Raw fisher/snip/grad_norm scores are >= 0; raw
    hutchinson scores may be negative.

  Raises:
    ValueError: on an unknown method or normalisation, or bad sizes; before any
      computation.
  """
  if method not in METHODS:
    raise ValueError(f"unknown sensitivity method {method!r}; choose one of {', '.join(METHODS)}")
  if normalize not in NORMALIZATIONS:
    raise ValueError(f"unknown normalization {normalize!r}; choose one of "
                     f"{', '.join(NORMALIZATIONS)}")
  base = tuple(composite_methods) if method == "composite" else (method,)
  for m in base:
    if m not in METHODS or m == "composite":
      raise ValueError(f"composite member {m!r} is not a base method; choose from "
                       f"{', '.join(METHODS[:-1])}")
  if not base:
    raise ValueError("composite needs at least one method in composite_methods")
  if num_samples < 1 or batch_size < 1 or num_probes < 1:
    raise ValueError("num_samples, batch_size and num_probes must all be >= 1")
  sizes = {np.shape(leaf)[0] for leaf in jax.tree.leaves((x, y))}
  if len(sizes) != 1:
    raise ValueError(f"x and y must share their leading (example) axis, got sizes {sorted(sizes)}")
  n = min(num_samples, sizes.pop())
  x, y = jax.tree.map(lambda a: jnp.asarray(a)[:n], (x, y))
  key = jax.random.key(0) if key is None else key
  paths = tuple(e.path for e in kmap.entries)
  flat = traverse_util.flatten_dict(params)
  missing = [p for p in paths if p not in flat]
  if missing:
    raise ValueError(f"kernel map path {'/'.join(missing[0])!r} is not in params; pass the tree "
                     "the kernel map was built from (e.g. variables['params'])")
  params = traverse_util.unflatten_dict(flat)
  present = kmap.present
  block_present = present.any(axis=1)

  def run(m):
    raw = _raw_entry_scores(params, x, y, key, loss_fn=loss_fn, paths=paths, method=m,
                            batch_size=min(batch_size, n), num_probes=num_probes)
    return _to_grid(raw, kmap)

  if method == "composite":
    grids = [run(m) for m in base]
    raw_kernel = sum(normalize_scores(g, present) for g in grids) / len(grids)
    raw_block = sum(normalize_scores(g.sum(axis=1), block_present) for g in grids) / len(grids)
  else:
    raw_kernel = run(method)
    raw_block = raw_kernel.sum(axis=1)
  return Sensitivity(kernel=normalize_scores(raw_kernel, present, normalize),
                     block=normalize_scores(raw_block, block_present, normalize),
                     raw_kernel=raw_kernel, raw_block=raw_block)
