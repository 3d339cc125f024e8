"""The Python API for a user's own model: `compress(apply_fn, variables, data, ...)`."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from hirelc_jax import experiment
from hirelc_jax.config import Config
from hirelc_jax.data.datasets import Dataset, split_indices
from hirelc_jax.training import loop, qat


class FunctionModel:
  """Adapts `apply_fn(variables, x) -> logits` to the linen `apply` the trainers call.

  A linen module's own `apply` (which takes `train=` and `mutable=`) is used as is.
  """

  def __init__(self, apply_fn: Callable, name: str):
    self.apply_fn, self.name = apply_fn, name

  def apply(self, variables, x, *, train: bool = False, mutable=False):
    try:
      return self.apply_fn(variables, x, train=train, mutable=mutable) if mutable else \
          self.apply_fn(variables, x, train=train)
    except TypeError:  # a plain apply_fn(variables, x) without those keywords
      out = self.apply_fn(variables, x)
      return (out, {}) if mutable else out

  def __repr__(self):
    return f"FunctionModel({self.name})"


@dataclasses.dataclass(frozen=True)
class UserSpec:
  """What the pipeline needs of a model: a name and an `apply` holder."""
  name: str
  module: FunctionModel
  kernel_names: tuple[str, ...]
  kernel_rules: tuple


def dataset_from_arrays(x_train, y_train, x_test, y_test, *, num_classes: Optional[int] = None,
                        val_fraction: float = 0.1, seed: int = 0, name: str = "custom") -> Dataset:
  """A Dataset from already normalised arrays; the validation split is carved from train."""
  x_train, x_test = np.asarray(x_train, np.float32), np.asarray(x_test, np.float32)
  y_train, y_test = np.asarray(y_train, np.int32), np.asarray(y_test, np.int32)
  if len(x_train) != len(y_train) or len(x_test) != len(y_test):
    raise ValueError(f"images and labels differ in length: train {len(x_train)} vs {len(y_train)}, "
                     f"test {len(x_test)} vs {len(y_test)}")
  if x_train.shape[1:] != x_test.shape[1:]:
    raise ValueError(f"test images have shape {x_test.shape[1:]}, training images {x_train.shape[1:]}; "
                     "give both splits the same image shape")
  for split, x in (("x_train", x_train), ("x_test", x_test)):
    if not np.all(np.isfinite(x)):
      raise ValueError(f"{split} holds {int(np.sum(~np.isfinite(x)))} NaN or Inf values; clean the images")
  classes = int(num_classes or max(y_train.max(), y_test.max()) + 1)
  for split, y in (("y_train", y_train), ("y_test", y_test)):
    if y.ndim != 1 or y.min() < 0 or y.max() >= classes:
      raise ValueError(f"{split} must hold integer class labels in [0, {classes}) (num_classes={classes}); "
                       f"found {y.min()}..{y.max()} in shape {y.shape}")
  tr, va = split_indices(len(x_train), val_fraction, seed)
  channels = x_train.shape[-1]
  return Dataset(x_train[tr], y_train[tr], x_train[va], y_train[va], x_test, y_test, classes,
                 tuple(x_train.shape[1:]), name, np.zeros(channels, np.float32),
                 np.ones(channels, np.float32))


def nnx_module(module, export_path: str | pathlib.Path):
  """A new NNX module like `module` with the weights of a run's `model_export.npz`."""
  from hirelc_jax import nnx_bridge
  from hirelc_jax.compression.export import load_variables
  return nnx_bridge.merge(module, load_variables(export_path)[0]["params"])


def compress(apply_fn: Callable, variables: Mapping | None, data: Dataset, *,
             kernel_rules: Sequence[tuple[str, str]], kernel_names: Sequence[str],
             config: Optional[Config] = None, output_dir: str | pathlib.Path = "runs/custom",
             name: str = "custom", resume: bool = False, quiet: bool = True) -> dict:
  """Runs the HiReLC search on a user's trained model; returns the report dict.

  Args:
    apply_fn: `apply_fn(variables, x) -> logits` (a linen `module.apply` works,
      including models with `batch_stats`), or a trained Flax NNX module (then
      `variables` is None; its `nnx.Param` state is the 'params' collection, with
      list indices as string keys, see `hirelc_jax.nnx_bridge`; rebuild the
      compressed module with `nnx_module(module, export_path)`).
    variables: the trained variables, with a 'params' collection (None for an NNX module).
    data: a `Dataset` (see `dataset_from_arrays`).
    kernel_rules: (regex, kernel_name) pairs over '/'-joined parameter paths,
      each with a named group (?P<block>\\d+).
    kernel_names: the kernel slot names, in plan column order.
    config: search settings (defaults: `Config()`); model/data fields are unused.
    output_dir: where outputs go; an existing run is continued only with `resume`.
    name: the model's name in reports.
    resume: continue the run in `output_dir`.
    quiet: no progress bars.
  """
  from hirelc_jax.compression.kernel_map import build_kernel_map
  config = (config or Config()).validate()
  from hirelc_jax import nnx_bridge
  if nnx_bridge.is_nnx(apply_fn):
    if variables is not None:
      raise ValueError("an NNX module carries its own weights; pass variables=None")
    apply_fn, variables = nnx_bridge.split(apply_fn)
  from hirelc_jax.evaluation import check_finite
  check_finite(variables, "variables")
  spec = UserSpec(name, FunctionModel(apply_fn, name), tuple(kernel_names), tuple(kernel_rules))
  variables = dict(variables)
  kmap = build_kernel_map(variables["params"], kernel_rules, kernel_names)
  setup = experiment.Setup(config, data, spec, variables, kmap, None,
                           qat.make_evaluate_plans(spec.module, kmap),
                           loop.make_evaluate(spec.module, lambda t, _: t))
  return experiment.run(config, pathlib.Path(output_dir), resume=resume, quiet=quiet, setup=setup)
