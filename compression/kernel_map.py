"""Kernel maps: which parameter leaves are compressible, and their plan slot.

A kernel rule is a regex over a parameter path ('/'-joined keys inside the
'params' collection, e.g. ``block_3/attn/qkv/kernel``) and a kernel name. The
block index comes from the regex's named group ``block``. Rules are tried in
order and the first match wins; unmatched leaves stay uncompressed and are
counted at their stored precision.

Entries with the same shape form a *group*: `apply_plan` stacks a group and
runs one vmapped function over it, so the cost of tracing does not grow with
depth.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

import numpy as np
from flax import traverse_util

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class KernelEntry:
  """One compressible kernel: its path, plan slot and shape (output channel last)."""
  path: Path
  block: int
  kernel: int
  shape: tuple[int, ...]
  bias_path: Path | None

  @property
  def num_out(self) -> int:
    return self.shape[-1]

  @property
  def fan_in(self) -> int:
    """Weights per output neuron (product of all axes but the last)."""
    return int(np.prod(self.shape[:-1]))


@dataclasses.dataclass(frozen=True)
class KernelMap:
  """Static description of a model's compressible kernels.

  Attributes:
    kernel_names: names of the kernel slots, e.g. ("qkv", "attn_proj", ...).
    num_blocks: number of blocks (plan rows).
    entries: the matched kernels, sorted by (block, kernel).
  """
  kernel_names: tuple[str, ...]
  num_blocks: int
  entries: tuple[KernelEntry, ...]

  @property
  def plan_shape(self) -> tuple[int, int]:
    return (self.num_blocks, len(self.kernel_names))

  @property
  def present(self) -> np.ndarray:
    """bool [num_blocks, num_kernels]: which plan slots hold a kernel."""
    mask = np.zeros(self.plan_shape, bool)
    mask[self.slots] = True
    return mask

  @property
  def slots(self) -> tuple[np.ndarray, np.ndarray]:
    """(block, kernel) int arrays `[E]` of the entries: indexes a `[B, K]` array at the entries."""
    return (np.array([e.block for e in self.entries], np.int64), np.array([e.kernel for e in self.entries], np.int64))


def _shape(leaf) -> tuple[int, ...]:
  """Shape of an array or a jax.ShapeDtypeStruct."""
  return tuple(getattr(leaf, "shape", np.shape(leaf)))


def _as_rule(rule) -> tuple[re.Pattern, str]:
  if len(rule) != 2:
    raise ValueError(f"kernel rule {rule!r} must be a (regex, kernel_name) pair")
  pattern, name = rule
  compiled = re.compile(pattern)
  if "block" not in compiled.groupindex:
    raise ValueError(f"kernel rule {pattern!r} needs a named group (?P<block>\\d+) for the block index")
  return compiled, name


def build_kernel_map(params: Mapping, rules: Sequence[tuple[str, str]],
                     kernel_names: Sequence[str]) -> KernelMap:
  """Matches parameter paths against rules (first match wins).

  Args:
    params: the 'params' collection, a nested dict of arrays.
    rules: (regex, kernel_name) pairs; regexes are searched in the '/'-joined
      path and must name a group ``block``.
    kernel_names: the kernel slot names, in plan column order.

  Returns:
    The KernelMap. Raises ValueError if no leaf matches, a rule names an
    unknown kernel, a match is not a matrix, or two leaves claim one slot.
  """
  kernel_names = tuple(kernel_names)
  compiled = [_as_rule(r) for r in rules]
  for _, name in compiled:
    if name not in kernel_names:
      raise ValueError(f"kernel rule names {name!r}, which is not in kernel_names {kernel_names}")
  flat = traverse_util.flatten_dict(dict(params))
  entries, slots = [], {}
  for path, leaf in flat.items():
    joined = "/".join(str(p) for p in path)
    for pattern, name in compiled:
      match = pattern.search(joined)
      if not match:
        continue
      if len(_shape(leaf)) < 2:
        raise ValueError(f"kernel rule {pattern.pattern!r} matched {joined!r} of shape {_shape(leaf)}; "
                         "rules must match weight matrices or conv kernels")
      block, kernel = int(match.group("block")), kernel_names.index(name)
      if (block, kernel) in slots:
        raise ValueError(f"{joined!r} and {slots[(block, kernel)]!r} both map to block {block} kernel {name!r}")
      slots[(block, kernel)] = joined
      bias_path = path[:-1] + ("bias",)
      bias = flat.get(bias_path)
      has_bias = bias is not None and _shape(bias) == (_shape(leaf)[-1],)
      entries.append(KernelEntry(tuple(path), block, kernel, _shape(leaf),
                                 bias_path if has_bias else None))
      break
  if not entries:
    sample = ", ".join("/".join(p) for p in list(flat)[:4])
    raise ValueError(f"no parameter path matched the kernel rules; paths look like: {sample}")
  entries.sort(key=lambda e: (e.block, e.kernel))
  return KernelMap(kernel_names, max(e.block for e in entries) + 1, tuple(entries))
