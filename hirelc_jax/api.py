"""The Python API for a user's own model: `compress(apply_fn, variables, data, ...)`."""

from __future__ import annotations

import dataclasses
import pathlib
import warnings
from typing import Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from hirelc_jax import evaluation, experiment
from hirelc_jax.config import Config
from hirelc_jax.data.datasets import Dataset, split_indices
from hirelc_jax.data.pipeline import num_examples, take
from hirelc_jax.training import task as task_lib


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


def _prepared(tree, split: str):
  """`tree`'s leaves as numpy (floating ones float32), checked finite, with its example count."""
  tree = jax.tree.map(lambda a: np.asarray(a, np.float32) if np.issubdtype(np.asarray(a).dtype, np.floating)
                      else np.asarray(a), tree)
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if np.issubdtype(leaf.dtype, np.floating) and not np.all(np.isfinite(leaf)):
      raise ValueError(f"{split}{jax.tree_util.keystr(path)} holds {int(np.sum(~np.isfinite(leaf)))} "
                       "NaN or Inf values; clean the data")
  try:
    return tree, num_examples(tree)
  except ValueError as e:
    raise ValueError(f"{split}: {e}") from None


def dataset_from_arrays(x_train, y_train, x_test, y_test, *, num_classes: Optional[int] = None,
                        val_fraction: float = 0.1, seed: int = 0, name: str = "custom") -> Dataset:
  """A Dataset from already prepared arrays; the validation split is carved from train.

  Args:
    x_train, x_test: what the model takes, with a leading example axis: an array
      (e.g. normalised NHWC images) or a pytree of arrays (token ids and a
      mask, several tabular fields). Floating leaves become float32; integer
      leaves keep their dtype.
    y_train, y_test: integer class labels `[N]` for the built-in loss and
      accuracy, or any pytree of arrays a user's `loss_fn` and `metric_fn`
      read (see `compress`).
    num_classes: the number of classes of integer labels (default: the
      largest label + 1); None for other targets.
    val_fraction, seed: the seeded validation split carved from train.
    name: the dataset's name in reports.

  Raises:
    ValueError: one line naming the bad split and value: splits whose inputs
      and targets differ in length, test inputs shaped unlike training
      inputs, NaN or Inf values, labels outside [0, num_classes).
  """
  splits = {}
  for split, tree in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test), ("y_test", y_test)):
    splits[split] = _prepared(tree, split)
  (x_train, n_train), (y_train, ny_train) = splits["x_train"], splits["y_train"]
  (x_test, n_test), (y_test, ny_test) = splits["x_test"], splits["y_test"]
  if n_train != ny_train or n_test != ny_test:
    raise ValueError(f"inputs and targets differ in length: train {n_train} vs {ny_train}, "
                     f"test {n_test} vs {ny_test}")
  for a, b, what in ((x_train, x_test, "inputs"), (y_train, y_test, "targets")):
    shape = lambda t: jax.tree.map(lambda leaf: leaf.shape[1:], t)
    if jax.tree.structure(a) != jax.tree.structure(b) or shape(a) != shape(b):
      raise ValueError(f"test {what} have shape {shape(b)}, training {what} {shape(a)} per example; "
                       "give both splits the same shapes")
  labels = isinstance(y_train, np.ndarray) and y_train.ndim == 1 and np.issubdtype(y_train.dtype, np.integer)
  classes = None
  if labels:
    y_train, y_test = y_train.astype(np.int32), y_test.astype(np.int32)
    classes = int(num_classes or max(y_train.max(initial=0), y_test.max(initial=0)) + 1)
    for split, y in (("y_train", y_train), ("y_test", y_test)):
      if y.size and (y.min() < 0 or y.max() >= classes):
        raise ValueError(f"{split} must hold integer class labels in [0, {classes}) (num_classes={classes}); "
                         f"found {y.min()}..{y.max()} in shape {y.shape}")
  elif num_classes is not None:
    raise ValueError(f"num_classes={num_classes} needs integer class labels y [N]; these targets are "
                     f"{jax.tree.map(lambda leaf: (leaf.dtype.name, leaf.shape), y_train)}")
  tr, va = split_indices(n_train, val_fraction, seed)
  single = isinstance(x_train, np.ndarray)   # an image-like array: its shape and channel stats
  channels = (x_train.shape[-1] if x_train.ndim > 1 else 1) if single else 0
  return Dataset(take(x_train, tr), take(y_train, tr), take(x_train, va), take(y_train, va), x_test, y_test,
                 classes, tuple(x_train.shape[1:]) if single else None, name,
                 np.zeros(channels, np.float32) if single else None,
                 np.ones(channels, np.float32) if single else None)


def nnx_module(module, export_path: str | pathlib.Path):
  """A new NNX module like `module` with the weights of a run's `model_export.npz`."""
  from hirelc_jax import nnx_bridge
  from hirelc_jax.compression.export import load_variables
  return nnx_bridge.merge(module, load_variables(export_path)[0]["params"])


def make_task(data: Dataset, loss_fn: Optional[Callable], metric_fn: Optional[Callable],
              metric_name: Optional[str]) -> task_lib.Task:
  """The run's Task: the user's loss and metric where given, the built-in cross-entropy and
  accuracy for the rest (those need integer class labels)."""
  if (loss_fn is None or metric_fn is None) and data.num_classes is None:
    missing = " and ".join(n for n, f in (("loss_fn", loss_fn), ("metric_fn", metric_fn)) if f is None)
    raise ValueError(f"the targets y are not integer class labels, so the built-in cross-entropy and "
                     f"accuracy do not apply; pass {missing}")
  built_in = task_lib.CLASSIFICATION
  if loss_fn is None and metric_fn is None:
    return built_in
  return task_lib.Task(loss_fn or built_in.loss, metric_fn or built_in.score,
                       metric_name or ("accuracy" if metric_fn is None else "metric"),
                       built_in.unit if metric_fn is None else None)


def check_task(apply_fn: Callable, variables: Mapping, data: Dataset, task: task_lib.Task) -> None:
  """Runs the model, loss and metric on two validation examples (one-line errors), and warns
  when a user's metric spans under one unit on up to 256 of them: drops, targets and the
  search's rewards are read in points, as for accuracy in percent."""
  model = FunctionModel(apply_fn, "check")
  x, y = take(data.x_val, slice(None, 256)), take(data.y_val, slice(None, 256))
  logits = model.apply(variables, take(x, slice(None, 2)))
  task_lib.check_user_task(task, logits, take(y, slice(None, 2)))
  if task.unit is None:
    scores = np.asarray(task.score(model.apply(variables, x), y), np.float64)
    if np.ptp(scores) <= 1.0 and np.max(np.abs(scores)) <= 1.0:
      warnings.warn(f"metric_fn scores lie in [{scores.min():g}, {scores.max():g}] on {len(scores)} validation "
                    "examples; the target and the search's rewards are read in points, as for accuracy in "
                    "percent: return 100 x the score to search as for accuracy", stacklevel=3)


def compress(apply_fn: Callable, variables: Mapping | None, data: Dataset, *,
             kernel_rules: Sequence[tuple[str, str]], kernel_names: Sequence[str],
             loss_fn: Optional[Callable] = None, metric_fn: Optional[Callable] = None,
             metric_name: Optional[str] = None, config: Optional[Config] = None,
             output_dir: str | pathlib.Path = "runs/custom",
             name: str = "custom", resume: bool = False, quiet: bool = True) -> dict | None:
  """Runs the HiReLC search on a user's trained model; returns the report dict (None on every
  process but 0 of a `jax.distributed` cluster).

  Args:
    apply_fn: `apply_fn(variables, x) -> logits` (a linen `module.apply` works,
      including models with `batch_stats`), or a trained Flax NNX module (then
      `variables` is None; its `nnx.Param` state is the 'params' collection, with
      list indices as string keys, see `hirelc_jax.nnx_bridge`; rebuild the
      compressed module with `nnx_module(module, export_path)`).
    variables: the trained variables, with a 'params' collection (None for an NNX module).
    data: a `Dataset` (see `dataset_from_arrays`): inputs and targets may be
      pytrees of arrays with a leading example axis.
    kernel_rules: (regex, kernel_name) pairs over '/'-joined parameter paths,
      each with a named group (?P<block>\\d+).
    kernel_names: the kernel slot names, in plan column order.
    loss_fn: `loss_fn(logits, y) -> scalar`, the batch's mean loss (default:
      softmax cross-entropy on integer labels).
    metric_fn: `metric_fn(logits, y) -> [B]`, one score per example, higher is
      better; a split's metric is their mean, and `goal.target_accuracy_drop`
      is read in its units (default: 100 where the arg-max is the label, so
      top-1 accuracy in percent). Scores in points (0-100) suit the search's
      rewards and calibration, which were set for accuracy in percent.
    metric_name: the metric's name in messages and reports.
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
  evaluation.check_finite(variables, "variables")
  spec = UserSpec(name, FunctionModel(apply_fn, name), tuple(kernel_names), tuple(kernel_rules))
  variables = dict(variables)
  kmap = build_kernel_map(variables["params"], kernel_rules, kernel_names)
  evaluation.check_validation(data)
  task = make_task(data, loss_fn, metric_fn, metric_name)
  check_task(apply_fn, variables, data, task)
  setup = evaluation.make_setup(config, data, spec, variables, kmap, None, task,
                                evaluation.make_run_placement(config))
  return experiment.run(config, pathlib.Path(output_dir), resume=resume, quiet=quiet, setup=setup)
