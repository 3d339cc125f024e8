"""A gymnax-style multi-discrete action space (gymnax ships none).

A `MultiDiscrete` action is an int vector `[n]` whose entry `i` lies in
`[0, nvec[i])`. `nvec` is a tuple of Python ints, so the space is static
structure (hashable, safe to close over in jitted code), as gymnax spaces are.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from gymnax.environments import environment, spaces


class MultiDiscrete(spaces.Space):
  """Independent categorical choices, one per dimension.

  Attributes:
    nvec: number of choices per dimension, a tuple of positive ints.
    shape: `(len(nvec),)`.
    dtype: int32 (the default) or another integer dtype.
    num_choices: total number of choices `sum(nvec)` (the number of logits of
      an unpadded multi-categorical head, SB3's `sum(nvec)`).
    max_choices: `max(nvec)`, the padded width of a `[n, max_choices]` head.
  """

  def __init__(self, nvec, *, dtype: Any = jnp.int32):
    nvec = tuple(int(k) for k in np.asarray(nvec).reshape(-1))
    if not nvec or min(nvec) < 1:
      raise ValueError(f"nvec must be a non-empty sequence of positive ints, got {nvec}")
    self.nvec = nvec
    self.shape = (len(nvec),)
    self.dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(self.dtype, jnp.integer):
      raise ValueError(f"MultiDiscrete dtype must be an integer dtype, got {self.dtype}")

  @property
  def num_choices(self) -> int:
    return sum(self.nvec)

  @property
  def max_choices(self) -> int:
    return max(self.nvec)

  def __repr__(self) -> str:
    return f"MultiDiscrete({self.nvec}, dtype={self.dtype.name})"

  def __eq__(self, other) -> bool:
    return (isinstance(other, MultiDiscrete) and self.nvec == other.nvec
            and self.dtype == other.dtype)

  def __hash__(self) -> int:
    return hash((MultiDiscrete, self.nvec, self.dtype.name))

  def sample(self, key: jax.Array) -> jax.Array:
    """Samples uniformly and independently per dimension.

    Args:
      key: PRNG key.

    Returns:
      `[n]` integer array with `0 <= a[i] < nvec[i]`.
    """
    return jax.random.randint(key, self.shape, 0, jnp.asarray(self.nvec, self.dtype),
                              dtype=self.dtype)

  def contains(self, x: jax.Array) -> jax.Array:
    """Whether `x` is a valid action (shape `[n]`, every entry in range).

    Args:
      x: candidate action; a wrong trailing shape is a (static) False.

    Returns:
      Scalar bool array.
    """
    x = jnp.asarray(x)
    if x.shape != self.shape:
      return jnp.asarray(False)
    integral = jnp.all(x == jnp.floor(x)) if jnp.issubdtype(x.dtype, jnp.floating) else True
    in_range = jnp.all((x >= 0) & (x < jnp.asarray(self.nvec)))
    return jnp.logical_and(integral, in_range)


class FixedLengthEnv(environment.Environment):
  """A gymnax Environment whose episodes end after `params.max_steps_in_episode` steps.

  The end is a termination, never a truncation (as in the original HiReLC), so
  learners do not bootstrap past it. Subclasses keep the step count in
  `state.time`.
  """

  def is_terminated(self, state, params) -> jax.Array:
    return state.time >= params.max_steps_in_episode

  def is_truncated(self, state, params) -> jax.Array:
    del params
    return jnp.zeros_like(state.time, dtype=bool)
