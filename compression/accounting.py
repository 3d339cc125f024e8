"""Honest size and cost accounting of a model under a CompressionPlan.

Storage of a compressed kernel with `out` neurons of `fan_in` weights each, of
which `kept` survive:

  bits * kept * fan_in                    the codes
  + 32 per scale (per tensor: 1; per channel / learned: kept) and 32 per zero point
  + out                                   the keep bitmap, when anything is pruned
  + kept * (bias dtype bits)              the bias of the surviving neurons

(an unquantized slot, bits 32, stores its kept columns at the kernel's dtype).
Every other parameter counts at its stored dtype, and so does every leaf of the
model's other collections (`model_state`, e.g. BatchNorm's ``batch_stats``):
the model cannot run without them. The compression ratio is (32 bits x all
parameters and state) / storage bits, for the WHOLE model. `export.export_model`
writes exactly these sections (each kernel's bitmap and codes padded to whole
bytes). All functions take the plan as data, so they run under jit and vmap.
"""

from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hirelc_jax.compression import codes
from hirelc_jax.compression.kernel_map import KernelMap
from hirelc_jax.compression.plan import CompressionPlan
from hirelc_jax.compression.prune import kept_count

SCALE_BITS = 32


def _dtype_bits(leaf) -> int:
  return int(np.dtype(leaf.dtype).itemsize * 8)


def split_variables(variables: Mapping) -> tuple[Mapping, dict]:
  """A flax variables dict -> ('params' collection, the other collections, e.g. {'batch_stats': ...})."""
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def _leaves(tree: Mapping | None) -> list:
  return list(traverse_util.flatten_dict(dict(tree)).values()) if tree else []


def state_bits(model_state: Mapping | None) -> float:
  """Bits of the non-parameter collections (``{'batch_stats': ...}`` or None) at their dtypes."""
  return float(sum(_dtype_bits(x) * np.size(x) for x in _leaves(model_state)))


def _gather(plan: CompressionPlan, kmap: KernelMap):
  blocks = np.array([e.block for e in kmap.entries])
  kernels = np.array([e.kernel for e in kmap.entries])
  return [f[..., blocks, kernels] for f in (plan.bits, plan.keep, plan.fmt, plan.gran)]


def kernel_storage_bits(plan: CompressionPlan, kmap: KernelMap, params: Mapping):
  """Storage bits of each compressed kernel with its bias, float32 [..., num_entries]."""
  bits, keep, _, gran = _gather(plan, kmap)
  flat = traverse_util.flatten_dict(dict(params))
  num_out = np.array([e.num_out for e in kmap.entries])
  fan_in = np.array([e.fan_in for e in kmap.entries], np.float32)
  bias_bits = np.array([0 if e.bias_path is None else _dtype_bits(flat[e.bias_path])
                        for e in kmap.entries], np.float32)
  raw_bits = np.array([_dtype_bits(flat[e.path]) for e in kmap.entries], np.float32)
  kept = jnp.stack([kept_count(keep[..., i], int(n)) for i, n in enumerate(num_out)], -1)
  kept = kept.astype(jnp.float32)
  quantized = bits != codes.FP32_BITS
  per_channel = (gran == codes.PER_CHANNEL) | (gran == codes.LEARNED)
  num_scales = jnp.where(per_channel, kept, 1.0) + jnp.where(gran == codes.ASYMMETRIC, 1.0, 0.0)
  scale_bits = jnp.where(quantized, num_scales * SCALE_BITS, 0.0)
  bitmap = jnp.where(kept < num_out, num_out.astype(np.float32), 0.0)
  code_bits = jnp.where(quantized, bits.astype(jnp.float32), raw_bits)
  return code_bits * kept * fan_in + scale_bits + bitmap + kept * bias_bits


def fp32_bits(params: Mapping, model_state: Mapping | None = None) -> float:
  """Bits of the whole model (parameters and `model_state`) at 32 bits per value."""
  return float(sum(32 * np.size(x) for x in _leaves(params) + _leaves(model_state)))


def uncompressed_bits(params: Mapping, kmap: KernelMap, model_state: Mapping | None = None) -> float:
  """Bits of every parameter the plan does not touch, and of `model_state`, at their dtypes."""
  claimed = {e.path for e in kmap.entries} | {e.bias_path for e in kmap.entries if e.bias_path}
  return float(sum(_dtype_bits(x) * np.size(x)
                   for path, x in traverse_util.flatten_dict(dict(params)).items()
                   if path not in claimed)) + state_bits(model_state)


def storage_bits(params: Mapping, plan: CompressionPlan, kmap: KernelMap,
                 model_state: Mapping | None = None):
  """Storage bits of the whole model under `plan` (float32, batched over plans).

  `model_state`: the variables' other collections (``{'batch_stats': ...}``), counted at their dtypes.
  """
  return (kernel_storage_bits(plan, kmap, params).sum(-1)
          + uncompressed_bits(params, kmap, model_state))


def compression_ratio(params: Mapping, plan: CompressionPlan, kmap: KernelMap,
                      model_state: Mapping | None = None):
  """Honest whole-model compression: fp32 bits / storage bits (both with `model_state`)."""
  return fp32_bits(params, model_state) / storage_bits(params, plan, kmap, model_state)


def paper_compression_ratio(plan: CompressionPlan, kmap: KernelMap):
  """The original HiReLC metric, 1 / mean over blocks of mean over kernels of bits/32 * keep.

  It ignores parameter counts, every uncompressed parameter and all metadata
  (scales, masks), so it flatters: 8 bits alone counts as 4x. Reported beside
  the honest ratio for comparison with the paper only.
  """
  present = jnp.asarray(kmap.present, jnp.float32)
  r_k = plan.bits.astype(jnp.float32) / 32.0 * plan.keep * present
  r_block = r_k.sum(-1) / jnp.maximum(present.sum(-1), 1.0)
  has_kernels = present.sum(-1) > 0
  r = jnp.where(has_kernels, r_block, 0.0).sum(-1) / has_kernels.sum()
  return 1.0 / r


def bops(plan: CompressionPlan, kmap: KernelMap, uses: Mapping[tuple, int], *,
         act_bits: int = 32):
  """Bit operations of the compressed kernels per example: MACs x weight bits x act bits.

  Args:
    plan: the plan (batched or not).
    kmap: the kernel map.
    uses: kernel path -> output positions per example (tokens for a ViT Dense,
      output pixels for a conv), e.g. from `count_kernel_uses`.
    act_bits: activation bits (activations are not quantized: 32).

  Pruned neurons remove their MACs; the inputs they would feed downstream are
  conservatively still counted.
  """
  bits, keep, _, _ = _gather(plan, kmap)
  total = 0.0
  for i, e in enumerate(kmap.entries):
    if e.path not in uses:
      raise ValueError(f"no use count for kernel {'/'.join(e.path)}; pass uses for every kernel")
    kept = kept_count(keep[..., i], e.num_out).astype(jnp.float32)
    total = total + float(uses[e.path]) * e.fan_in * kept * bits[..., i].astype(jnp.float32) * act_bits
  return total


def count_kernel_uses(module, variables: Mapping, example_shape: tuple[int, ...],
                      kmap: KernelMap, **apply_kwargs) -> dict[tuple, int]:
  """Output positions per example of each mapped kernel, by tracing one forward pass.

  Args:
    module: a flax.linen Module whose Dense/Conv submodules own the kernels.
    variables: its variables (with a 'params' collection).
    example_shape: the shape of ONE example, e.g. (28, 28, 1).
    kmap: the kernel map of variables['params'].
    **apply_kwargs: forwarded to `module.apply` (e.g. train=False).

  Returns:
    kernel path -> number of output positions per example.
  """
  import jax
  import flax.linen as nn

  wanted = {e.path[:-1]: e.path for e in kmap.entries}
  uses: dict[tuple, int] = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = tuple(context.module.scope.path) if context.module.scope else ()
    if context.method_name == "__call__" and path in wanted and hasattr(out, "shape"):
      uses[wanted[path]] = int(np.prod(out.shape[1:-1]))
    return out

  x = jax.ShapeDtypeStruct((1,) + tuple(example_shape), jnp.float32)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: module.apply(v, x, **apply_kwargs), variables, x)
  return uses
