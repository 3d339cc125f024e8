"""Applying a CompressionPlan to a parameter tree: prune, then fake-quantize.

Every kernel's plan entries are read as data, so a single trace serves every plan, and
``jax.vmap(apply_plan, in_axes=(None, 0, None))`` applies a batch of plans.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hirelc_jax.compression import prune, quantize
from hirelc_jax.compression.kernel_map import KernelMap
from hirelc_jax.compression.plan import CompressionPlan

PRUNE_METHODS = ("l2", "l1", "taylor")


def _is_concrete(tree) -> bool:
  return not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def check_inputs(params: Mapping, plan: CompressionPlan, kmap: KernelMap) -> None:
  """Host-side checks before any compilation; raises ValueError naming the problem."""
  if tuple(plan.shape[-2:]) != kmap.plan_shape:
    raise ValueError(f"plan has shape {plan.shape}, but the kernel map needs {kmap.plan_shape} "
                     f"(blocks, kernels {kmap.kernel_names})")
  if not _is_concrete((params, plan)):
    return
  plan.validate()
  flat = traverse_util.flatten_dict(dict(params))
  for entry in kmap.entries:
    if entry.path not in flat:
      raise ValueError(f"parameter {'/'.join(entry.path)} of the kernel map is missing from params")
    if not np.isfinite(np.asarray(flat[entry.path])).all():
      raise ValueError(f"parameter {'/'.join(entry.path)} holds NaN or Inf; fix the checkpoint "
                       "or the training run before compressing")


def map_entries(kmap: KernelMap, plan: CompressionPlan, fn: Callable,
                per_entry: Sequence[Sequence]) -> list:
  """Runs `fn(*inputs, bits, keep, fmt, gran)` for every kernel entry, its plan entries as data.

  One call per kernel, not one vmap per shape group: with a kernel's granularity and format
  unbatched, `fake_quant`'s `lax.switch` runs the chosen branch only, where a vmap computes
  every branch and selects; and no kernels are stacked and sliced apart again. Measured on
  vit_tiny (2-core CPU, batch 128, `benchmarks/results/map_entries.json`): a QAT step 1.60-1.73x
  a plain step with the vmap, 1.40x with the loop; 4 plans at once (batched fields, every
  branch run) 3.90 s -> 3.10 s a step. It compiles in 50 s instead of 74 s for one plan, but
  135 s instead of 95 s for 4 at once.

  Args:
    kmap: the kernel map.
    plan: fields [num_blocks, num_kernels].
    fn: a function of one kernel's inputs and its plan entries (scalars).
    per_entry: sequences aligned with `kmap.entries`; each gives one input per
      entry (an array, or None).

  Returns:
    A list aligned with `kmap.entries` holding each entry's output.
  """
  fields = (plan.bits, plan.keep, plan.fmt, plan.gran)
  return [fn(*(seq[i] for seq in per_entry), *(f[e.block, e.kernel] for f in fields))
          for i, e in enumerate(kmap.entries)]


def _leaves(flat, kmap: KernelMap, attr: str = "path") -> list:
  return [None if getattr(e, attr) is None else flat[getattr(e, attr)] for e in kmap.entries]


def compute_masks(params: Mapping, plan: CompressionPlan, kmap: KernelMap, *,
                  method: str = "l2", grads: Mapping | None = None) -> tuple[jax.Array, ...]:
  """Output-neuron keep masks, one float array [out] per kernel entry.

  Every kernel's importances are padded to the longest with NaN (key 0, which comes after
  every real entry, so it is never kept), keyed and ranked by one `prune.select_top` vmapped
  over kernels; the kept counts come from one `prune.kept_count` per distinct width. Per
  kernel, only the importance reduction remains (XLA:CPU launches every small op on its own).
  """
  if method not in PRUNE_METHODS:
    raise ValueError(f"unknown pruning method {method!r}; choose one of {', '.join(PRUNE_METHODS)}")
  if method == "taylor" and grads is None:
    raise ValueError("pruning method 'taylor' needs gradients (grads=...)")
  flat = traverse_util.flatten_dict(dict(params))
  weights = _leaves(flat, kmap)
  grad_leaves = _leaves(traverse_util.flatten_dict(dict(grads)), kmap) if grads is not None \
      else [None] * len(weights)
  scores = [prune.neuron_importance(w, method, g) for w, g in zip(weights, grad_leaves)]
  sizes = [x.shape[0] for x in scores]
  width, distinct = max(sizes), sorted(set(sizes))
  dtype = jnp.result_type(*scores)
  keys = prune.order_key(jnp.stack([jnp.pad(x.astype(dtype), (0, width - x.shape[0]),
                                            constant_values=jnp.nan) for x in scores]))
  by_size = jnp.stack([prune.kept_count(plan.keep, n) for n in distinct])  # [sizes, blocks, kernels]
  counts = by_size[np.array([distinct.index(n) for n in sizes]),
                   np.array([e.block for e in kmap.entries]), np.array([e.kernel for e in kmap.entries])]
  kept = jax.vmap(prune.select_top)(keys, counts)
  return tuple(kept[i, :n].astype(prune.mask_dtype(w)) for i, (n, w) in enumerate(zip(sizes, weights)))


def init_steps(params: Mapping, plan: CompressionPlan, kmap: KernelMap,
               masks: Sequence[jax.Array] | None = None) -> tuple[jax.Array, ...]:
  """Initial learned step sizes (LSQ rule), one array [out] per kernel entry.

  Computed on the pruned kernels, so zeroed neurons do not shrink the steps.
  """
  flat = traverse_util.flatten_dict(dict(params))
  weights = _leaves(flat, kmap)
  if masks is None:
    masks = compute_masks(params, plan, kmap)

  def one(w, m, bits, keep, fmt, gran):
    del keep, gran
    return quantize.init_step(w * m, jnp.minimum(bits, 8), fmt)

  return tuple(map_entries(kmap, plan, one, [weights, list(masks)]))


def compress_kernel(w, bias, mask, step, bits, keep, fmt, gran):
  """Prunes one kernel (and its bias) by `mask`, then fake-quantizes it.

  Shapes: w [..., out], bias [out] or None, mask [out], step [out] or None.
  """
  del keep
  q = quantize.fake_quant(w, bits, fmt, gran, step, mask)
  return q, None if bias is None else bias * mask.astype(bias.dtype)


def apply_plan(params: Mapping, plan: CompressionPlan, kmap: KernelMap, *,
               masks: Sequence[jax.Array] | None = None,
               steps: Sequence[jax.Array] | None = None,
               method: str = "l2", grads: Mapping | None = None) -> dict:
  """Returns a new parameter tree with every mapped kernel compressed by `plan`.

  Args:
    params: the 'params' collection (nested dict).
    plan: a CompressionPlan with fields [num_blocks, num_kernels].
    kmap: the kernel map of `params`.
    masks: fixed neuron masks (from `compute_masks`); computed from `params`
      when None. Fine-tuning passes the masks of the baseline, so they stay fixed.
    steps: learned step sizes (from `init_steps`), used where gran is learned;
      the LSQ initialisation when None.
    method: structured pruning importance when masks are computed here.
    grads: gradients for the 'taylor' importance.

  Gradients flow straight through the quantizer (STE) to the kernels, and to
  `steps` with the LSQ gradient.
  """
  check_inputs(params, plan, kmap)
  if masks is None:
    masks = compute_masks(params, plan, kmap, method=method, grads=grads)
  flat = dict(traverse_util.flatten_dict(dict(params)))
  step_list = list(steps) if steps is not None else [None] * len(kmap.entries)
  results = map_entries(kmap, plan, compress_kernel,
                        [_leaves(flat, kmap), _leaves(flat, kmap, "bias_path"), list(masks), step_list])
  for entry, (w, bias) in zip(kmap.entries, results):
    flat[entry.path] = w
    if entry.bias_path is not None:
      flat[entry.bias_path] = bias
  return traverse_util.unflatten_dict(flat)
