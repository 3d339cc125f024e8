"""Helpers shared by the model tests."""

from __future__ import annotations

import jax
import numpy as np


def numpy_variables(abstract: dict, seed: int = 0) -> dict:
  """Concrete variables for an abstract tree without compiling an init function.

  Params are N(0, 0.05^2); BatchNorm ``mean`` leaves are 0 and ``var`` leaves 1.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = getattr(path[-1], "key", "")
    if name == "mean":
      return np.zeros(leaf.shape, leaf.dtype)
    if name == "var":
      return np.ones(leaf.shape, leaf.dtype)
    return (0.05 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)
