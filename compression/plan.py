"""CompressionPlan: per-kernel compression decisions as dense arrays.

A plan is data, not code: bits, keep ratio, format and granularity codes for
every (block, kernel) slot, each an array of shape [num_blocks, num_kernels].
Slots that do not exist in a model (a CNN block with fewer kernels) hold the
identity (32 bits, keep 1) and are never read. A batch of plans adds a leading
axis to every field and goes through `jax.vmap`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from hirelc_jax.compression import codes


@struct.dataclass
class CompressionPlan:
  """Per-kernel decisions, each field `[num_blocks, num_kernels]` (or `[P, B, K]`).

  Attributes:
    bits: int32 weight bit width, 2..8, or 32 for "unquantized".
    keep: float32 fraction of output neurons kept, in [0.2, 1].
    fmt: int32 format code (`codes.FORMATS`).
    gran: int32 granularity code (`codes.GRANULARITIES`).
  """
  bits: jax.Array
  keep: jax.Array
  fmt: jax.Array
  gran: jax.Array

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.bits.shape)

  def validate(self) -> "CompressionPlan":
    """Raises ValueError naming the first bad value; returns self. Needs concrete arrays."""
    for name, leaf in (("bits", self.bits), ("keep", self.keep), ("fmt", self.fmt), ("gran", self.gran)):
      if isinstance(leaf, jax.core.Tracer):
        return self
      if np.shape(leaf) != self.shape:
        raise ValueError(f"plan field {name} has shape {np.shape(leaf)}, expected {self.shape}")
    codes.check_bits(self.bits)
    codes.check_keep(self.keep)
    codes.check_codes(self.fmt, self.gran)
    return self


def uniform_plan(num_blocks: int, num_kernels: int, *, bits: int = codes.FP32_BITS,
                 keep: float = 1.0, fmt: str = "int", gran: str = "per_channel") -> CompressionPlan:
  """The same decision for every slot; the default is the identity (no compression)."""
  shape = (num_blocks, num_kernels)
  plan = CompressionPlan(
      bits=jnp.full(shape, bits, jnp.int32),
      keep=jnp.full(shape, keep, jnp.float32),
      fmt=jnp.full(shape, codes.format_code(fmt), jnp.int32),
      gran=jnp.full(shape, codes.granularity_code(gran), jnp.int32),
  )
  return plan.validate()


def make_plan(bits, keep, fmt, gran) -> CompressionPlan:
  """Builds and validates a plan from array-likes; format/granularity may be names."""
  def to_codes(x, lookup):
    arr = np.asarray(x)
    if arr.dtype.kind in "US":
      return np.vectorize(lookup, otypes=[np.int32])(arr)
    return arr.astype(np.int32)
  plan = CompressionPlan(
      bits=jnp.asarray(np.asarray(bits), jnp.int32),
      keep=jnp.asarray(np.asarray(keep), jnp.float32),
      fmt=jnp.asarray(to_codes(fmt, codes.format_code)),
      gran=jnp.asarray(to_codes(gran, codes.granularity_code)),
  )
  return plan.validate()


def stack_plans(plans) -> CompressionPlan:
  """Stacks plans of equal shape into a batch with a leading axis `[P, B, K]`."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *plans)
