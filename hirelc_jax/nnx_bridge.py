"""Flax NNX models at the API's boundary: split into the linen-style (apply_fn, variables) the
pipeline runs on, and merged back into a module with the compressed weights.

An `nnx.Module` is split into its graph definition, its `nnx.Param` state and
the rest of its state. The parameters become the 'params' collection as a
plain nested dict with string keys (an `nnx.List` index 0 becomes "0", so
kernel rules read `blocks/0/fc1/kernel`); the rest of the state is held fixed.
Nothing here mutates the user's module.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
from flax import nnx, traverse_util


def is_nnx(model) -> bool:
  return isinstance(model, nnx.Module)


def split(module: nnx.Module) -> tuple[Callable, dict]:
  """(apply_fn(variables, x) -> logits, {'params': nested dict of arrays}) of an NNX module."""
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  pure = nnx.to_pure_dict(params)
  keys = list(traverse_util.flatten_dict(pure))        # the state's own keys (ints for list items)

  def apply_fn(variables: Mapping, x):
    return nnx.merge(graphdef, _state(params, keys, variables["params"]), rest)(x)

  return apply_fn, {"params": _string_keys(pure)}


def merge(module: nnx.Module, params: Mapping) -> nnx.Module:
  """A new module like `module` with `params` (string-keyed, e.g. `load_variables(...)[0]['params']`)."""
  graphdef, state, rest = nnx.split(module, nnx.Param, ...)
  keys = list(traverse_util.flatten_dict(nnx.to_pure_dict(state)))
  return nnx.merge(graphdef, _state(state, keys, params), rest)


def _string_keys(pure: Mapping) -> dict:
  flat = traverse_util.flatten_dict(pure)
  return traverse_util.unflatten_dict({tuple(str(k) for k in path): v for path, v in flat.items()})


def _state(like: nnx.State, keys, params: Mapping) -> nnx.State:
  """`like` (copied) with the leaves of string-keyed `params`, matched to the state's own keys."""
  flat = traverse_util.flatten_dict(dict(params))
  missing = [k for k in keys if tuple(str(p) for p in k) not in flat]
  if missing:
    raise ValueError(f"parameters lack {'/'.join(map(str, missing[0]))} of the NNX module "
                     f"({len(missing)} missing); pass the module the weights came from")
  pure = traverse_util.unflatten_dict({k: flat[tuple(str(p) for p in k)] for k in keys})
  state = jax.tree.map(lambda x: x, like)       # a copy: replace_by_pure_dict writes in place
  nnx.replace_by_pure_dict(state, pure)
  return state
