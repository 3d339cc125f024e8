"""Where the arrays of a run live: a one-axis mesh over the devices, for data- and plan-parallel work.

Training and evaluation split each batch over the mesh's "data" axis with
parameters and optimizer state replicated (XLA reduces the gradients); batches
of candidate plans are split along the plan axis instead, with the data
replicated. Lengths that do not divide by the device count are padded here,
and the padding is masked or sliced off by the callers, so counts stay exact.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"


@dataclasses.dataclass(frozen=True)
class Placement:
  """A one-axis `Mesh` (axis "data") and the shardings a run puts its arrays in."""
  mesh: Mesh

  @property
  def size(self) -> int:
    return int(self.mesh.size)

  def shard(self, tree, axis: int = 0):
    """Every leaf split along `axis` over the devices (its length must divide by `size`)."""
    return self._put(tree, PartitionSpec(*([None] * axis), AXIS))

  def replicate(self, tree):
    """Every leaf copied whole onto every device of the mesh."""
    return self._put(tree, PartitionSpec())

  def _put(self, tree, spec: PartitionSpec):
    """`tree` placed by `spec`. With several processes, each puts only the slices its own
    devices hold, from its own copy of the host data (every process has the same: see
    `hirelc_jax.distributed`); `jax.device_put` would first gather every process's copy of
    the whole input to check that they agree, at every batch."""
    sharding = NamedSharding(self.mesh, spec)
    if jax.process_count() == 1:
      return jax.device_put(tree, sharding)

    def put(x):
      if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)   # already spread over the processes: a reshard
      host = np.asarray(x)
      return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return jax.tree.map(put, tree)

  def round_up(self, n: int) -> int:
    """The smallest multiple of the device count that is at least `n`."""
    return -(-n // self.size) * self.size

  def check_batch(self, batch_size: int, name: str) -> None:
    """Raises ValueError unless `batch_size` splits evenly over the devices."""
    if batch_size % self.size:
      raise ValueError(f"{name}={batch_size} does not split over {self.size} devices; "
                       f"use a multiple of {self.size} or set devices to a divisor of it")

  def describe(self) -> dict:
    """What the report says: the devices, their kind, and the mesh's shape."""
    devices = list(self.mesh.devices.flat)
    return {"mesh": {AXIS: self.size}, "platform": devices[0].platform,
            "device_kind": devices[0].device_kind, "devices": [str(d) for d in devices],
            "processes": jax.process_count()}


def make_placement(devices: Optional[int] = None) -> Placement:
  """A mesh over the first `devices` devices (None: all of them, every process's).

  Raises:
    ValueError: when `devices` is not between 1 and the number there are.
  """
  available = jax.devices()
  if devices is not None and jax.process_count() > 1 and devices != len(available):
    raise ValueError(f"devices={devices}, but {jax.process_count()} processes share {len(available)} devices; "
                     "several processes use them all: leave devices unset")
  if devices is not None and not 1 <= devices <= len(available):
    raise ValueError(f"devices={devices}, but {len(available)} "
                     f"{'is' if len(available) == 1 else 'are'} available; use 1 to {len(available)}")
  return Placement(Mesh(np.array(available[:devices or len(available)]), (AXIS,)))


def pad_axis(tree, axis: int, length: int):
  """Every leaf of `tree` (numpy or jax) padded with zeros along `axis` to `length`."""
  def pad(a):
    widths = [(0, 0)] * np.ndim(a)
    widths[axis] = (0, length - np.shape(a)[axis])
    return np.pad(np.asarray(a), widths) if widths[axis][1] else a
  return jax.tree.map(pad, tree)


def pad_plans(plans, length: int):
  """A stacked plan pytree `[P, ...]` extended to `length` plans by repeating the last one
  (a valid plan, unlike zeros), so the plan axis divides by the device count."""
  def pad(a):
    extra = length - np.shape(a)[0]
    return np.concatenate([np.asarray(a), np.repeat(np.asarray(a)[-1:], extra, 0)]) if extra else a
  return jax.tree.map(pad, plans)
