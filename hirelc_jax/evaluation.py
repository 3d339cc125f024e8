"""What every phase works with: the Setup (data, model, baseline) and plan evaluation.

`prepare` loads the data and trains or loads the baseline; the rest measure
plans on it: accuracy of the plain or compressed model, pre-fine-tune
accuracy of a batch of plans, storage metrics, a QAT fine-tune with the
config's schedule, and the Fisher-weighted error table of the baseline.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hirelc_jax.agents import error_table
from hirelc_jax.compression import accounting
from hirelc_jax.compression.plan import CompressionPlan, stack_plans, uniform_plan
from hirelc_jax.config import Config
from hirelc_jax.data import load_dataset
from hirelc_jax.data.pipeline import AUGMENT_DEFAULTS, augment, num_examples, take
from hirelc_jax.distributed import fetch
from hirelc_jax.models import build_model, init_params, kernel_map
from hirelc_jax.training import baseline, checkpoint, loop, qat
from hirelc_jax.training.placement import Placement, make_placement
from hirelc_jax.training.progress import progress
from hirelc_jax.training.task import CLASSIFICATION, Task, pair_unit


@dataclasses.dataclass
class Setup:
  """What every phase needs: data, model, baseline weights, evaluators, the task and the
  devices (`placement`; None: JAX's default device, unsharded)."""
  config: Config
  data: Any
  spec: Any
  variables: dict
  kmap: Any
  augment: Any
  evaluate_plans: Any
  evaluate: Any
  task: Task = CLASSIFICATION
  placement: Placement | None = None


def make_setup(config: Config, data, spec, variables: dict, kmap, augment, task: Task,
               placement: Placement) -> Setup:
  """A Setup whose evaluators split their work over `placement`'s devices."""
  return Setup(config, data, spec, variables, kmap, augment,
               qat.make_evaluate_plans(spec.module, kmap, task, placement),
               loop.make_evaluate(spec.module, lambda t, _: t, task, placement), task, placement)


def make_run_placement(config: Config) -> Placement:
  """The mesh over `config.devices` devices, checked against the training batch size."""
  placement = make_placement(config.devices)
  placement.check_batch(config.training.batch_size, "training.batch_size")
  return placement


def _loss_fn(module, model_state, task: Task = CLASSIFICATION):
  """`(params, x, y) -> the batch's mean task loss` of the model in inference mode."""
  def loss(params, x, y):
    return task.loss(module.apply({"params": params, **model_state}, x), y)
  return loss


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What a run reads before it writes anything: the data, the model, its initial (or the
  user's checkpointed) variables, the augmentation and the devices."""
  data: Any
  spec: Any
  variables: dict
  augment: Any
  placement: Placement


def load_inputs(config: Config) -> Inputs:
  """Loads the data and builds the model (with a user's checkpoint, checked finite): every
  input a run can fail on, so a bad one fails before the output folder is touched."""
  placement = make_run_placement(config)
  data = load_dataset(config.data.name, data_dir=config.data.data_dir,
                      val_fraction=config.data.val_fraction, seed=config.seed,
                      limit=config.data.limit)
  check_validation(data)
  patch = config.model.patch_size or baseline.default_patch_size(config.model.name, data.image_shape)
  spec = build_model(config.model.name, num_classes=data.num_classes,
                     image_shape=data.image_shape, patch_size=patch)
  variables = init_params(spec, jax.random.key(config.seed))
  aug_cfg = AUGMENT_DEFAULTS.get(data.name)
  aug = functools.partial(augment, crop_pad=aug_cfg.crop_pad, flip=aug_cfg.flip) \
      if config.data.augment and aug_cfg else None
  if config.model.checkpoint:
    variables = load_user_checkpoint(config.model.checkpoint, spec, variables)
    check_finite(variables, config.model.checkpoint)
  return Inputs(data, spec, variables, aug, placement)


def prepare(config: Config, inputs: Inputs | None = None, *, quiet: bool = False, log=print) -> Setup:
  """The Setup: `inputs` (loaded here if None) with the baseline trained or loaded from cache."""
  inputs = inputs or load_inputs(config)
  data, spec, variables, aug = inputs.data, inputs.spec, inputs.variables, inputs.augment
  if not config.model.checkpoint:
    schedule = baseline.default_schedule(config.model.name)
    t = config.training
    schedule = dataclasses.replace(
        schedule, batch_size=t.batch_size,
        epochs=t.baseline_epochs if t.baseline_epochs is not None else schedule.epochs,
        lr=t.baseline_lr if t.baseline_lr is not None else schedule.lr)
    variables, info = baseline.train_baseline(spec, variables, data, schedule, config.seed,
                                              augment=aug, quiet=quiet, placement=inputs.placement)
    log(f"baseline {'loaded from cache' if info['cached'] else 'trained'}: "
        f"val {info['val_accuracy']:.2f}% ({info['path']})")
  kmap = kernel_map(variables["params"], spec)
  return make_setup(config, data, spec, variables, kmap, aug, CLASSIFICATION, inputs.placement)


def check_finite(variables, where: str) -> None:
  """Raises ValueError naming the first leaf of `variables` that holds NaN or Inf."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    arr = np.asarray(leaf)
    if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
      name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
      bad = int(np.sum(~np.isfinite(arr)))
      raise ValueError(f"{where}: parameter {name} holds {bad} NaN or Inf value{'s' if bad > 1 else ''} "
                       f"of {arr.size}; pass a trained model with finite weights")


def load_user_checkpoint(path: str, spec, like: dict) -> dict:
  """A user's orbax checkpoint, or a timm-style ViT file (.safetensors / .npz)."""
  if path.endswith((".safetensors", ".npz")):
    from hirelc_jax.models.checkpoint_io import load_timm_vit
    return {**like, **load_timm_vit(path, spec)}
  return checkpoint.load_tree(path, like)


def check_validation(data) -> None:
  """Raises ValueError unless the validation split has the 2 examples `hold_out_selection` halves."""
  n = num_examples(data.y_val)
  if n < 2:
    raise ValueError(f"the validation split has {n} examples; the search needs at least 2 "
                     f"(raise data.val_fraction or use more data)")


def hold_out_selection(setup: Setup) -> tuple[Setup, tuple[np.ndarray, np.ndarray]]:
  """Splits the validation set in two halves: the returned setup's data keeps the first
  (screening, warm-up, the fine-tunes' early stopping); the second, `(x [V2, ...], y [V2, ...])`,
  only scores fine-tuned plans for the choice of cycle, so the reported validation drop is
  not the best of the early-stopping scores the fine-tune already maximised.

  Raises:
    ValueError: when the validation split has fewer than 2 examples.
  """
  d = setup.data
  check_validation(d)
  half = num_examples(d.y_val) // 2
  first, second = slice(None, half), slice(half, None)
  fit = dataclasses.replace(d, x_val=take(d.x_val, first), y_val=take(d.y_val, first))
  return dataclasses.replace(setup, data=fit), (take(d.x_val, second), take(d.y_val, second))


def accuracy(setup: Setup, variables, x, y) -> float:
  state = {k: v for k, v in variables.items() if k != "params"}
  return loop.accuracy(setup.evaluate, variables["params"], state, None, x, y,
                       loop.TrainConfig().eval_batch_size)


@functools.lru_cache(maxsize=8)
def _batch_scores(module, task: Task):
  @jax.jit
  def batch_scores(params, model_state, x, y):
    logits, _ = loop.forward(module, params, model_state, x, train=False)
    return task.score(logits, y).astype(jnp.float32)
  return batch_scores


def scores(setup: Setup, variables, x, y) -> np.ndarray:
  """The task's per-example score, float32 `[N]` (100 where classified right, else 0, by
  default), in fixed batches, the last padded."""
  state = {k: v for k, v in variables.items() if k != "params"}
  batch_scores = _batch_scores(setup.spec.module, setup.task)
  place, size = setup.placement, loop.TrainConfig().eval_batch_size
  xs, ys, valid = loop.pad_to_batches(x, y, place.round_up(size) if place else size)
  params = place.replicate((variables["params"], state)) if place else (variables["params"], state)
  shard = place.shard if place else (lambda t: t)
  out = [fetch(batch_scores(*params, shard(take(xs, k)), shard(take(ys, k))))[np.asarray(v)]
         for k, v in enumerate(valid)]
  return np.concatenate(out) if out else np.zeros(0, np.float32)


def paired_drop(base_scores: np.ndarray, new_scores: np.ndarray, unit: float = 100.0) -> tuple[float, float]:
  """The metric's drop of a model against the baseline on the same examples, and its
  standard error from the paired differences.

  With d_i = base_i - new_i, the drop is mean(d) and its standard error
  sqrt(sum d_i^2 + unit^2) / n: the paired variance, its mean^2 term left out
  and one pseudo-pair of size `unit` added, so it never reads 0 on a small set.
  For accuracy (scores 0 or 100, unit 100) with b examples only the baseline
  gets right and c only the new model, that is 100 (b - c) / n and
  100 sqrt(b + c + 1) / n, McNemar's paired counts. Examples on which the two
  models score alike carry no information about the difference.

  Args:
    base_scores, new_scores: float `[N]`, N >= 1.
    unit: the pseudo-pair (`task.pair_unit`).
  """
  d = np.asarray(base_scores, np.float64) - np.asarray(new_scores, np.float64)
  n = len(d)
  return float(d.sum() / n), float(np.sqrt(np.sum(d * d) + unit * unit)) / n


def halves_scores(setup: Setup, variables, selection) -> dict:
  """{'fit': [V1], 'val': [V2]}: per-example scores on the fit half (`setup.data`'s validation
  split after `hold_out_selection`) and the held-out half."""
  d = setup.data
  return {"fit": scores(setup, variables, d.x_val, d.y_val), "val": scores(setup, variables, *selection)}


def halves_drops(setup: Setup, base_scores: dict, variables, selection) -> dict:
  """{'fit': (drop, se), 'val': (drop, se)} of `variables` against the baseline's `halves_scores`."""
  new = halves_scores(setup, variables, selection)
  return {half: paired_drop(base_scores[half], new[half], pair_unit(setup.task, base_scores[half], new[half]))
          for half in ("fit", "val")}


def plan_accuracies(setup: Setup, plans: CompressionPlan, batch: int = 8, *,
                    desc: str | None = None, quiet: bool = True) -> np.ndarray:
  """Pre-fine-tune metric of each plan on the evaluation subset, `batch` plans per call."""
  n = setup.config.search.eval_samples
  x, y = take(setup.data.x_val, slice(None, n)), take(setup.data.y_val, slice(None, n))
  count = plans.bits.shape[0]
  out = []
  bar = progress(total=count, desc=desc or "evaluate plans", disable=quiet or desc is None)
  for start in range(0, count, batch):
    chunk = jax.tree.map(lambda a: a[start:start + batch], plans)
    pad = batch - chunk.bits.shape[0]
    if pad:  # keep one shape so nothing recompiles
      chunk = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, 0)]), chunk)
    accs = qat.plan_accuracies(setup.evaluate_plans, setup.variables, chunk, x, y, 250)
    out.extend(accs[:batch - pad])
    bar.update(batch - pad)
  bar.close()
  return np.asarray(out)


def finetune_schedule(setup: Setup) -> loop.TrainConfig:
  """The config's QAT fine-tune schedule."""
  t = setup.config.training
  return loop.TrainConfig(epochs=t.finetune_epochs, batch_size=t.batch_size, lr=t.finetune_lr,
                          patience=t.finetune_patience, warmup_frac=0.0)


def finetune(setup: Setup, plan: CompressionPlan, key, desc: str = "fine-tune", quiet: bool = False):
  """QAT fine-tune of the baseline under `plan` with the config's schedule: (variables, FitResult)."""
  return qat.finetune(setup.spec.module, setup.variables, plan, setup.kmap, setup.data, finetune_schedule(setup),
                      key, augment=setup.augment, task=setup.task, desc=desc, quiet=quiet,
                      placement=setup.placement)


def finetune_many(setup: Setup, plans: CompressionPlan, key, desc: str = "fine-tune", quiet: bool = False):
  """`finetune` of K plans `[K, B, L]` as one vmapped program: K (variables, FitResult)."""
  return qat.finetune_many(setup.spec.module, setup.variables, plans, setup.kmap, setup.data,
                           finetune_schedule(setup), key, augment=setup.augment, task=setup.task, desc=desc,
                           quiet=quiet, placement=setup.placement)


def make_error_table(setup: Setup) -> error_table.ErrorTable:
  """The Fisher-weighted error table of the baseline, on the sensitivity examples."""
  data, n = setup.data, setup.config.search.sensitivity_samples
  state_vars = {k: v for k, v in setup.variables.items() if k != "params"}
  fisher = error_table.weight_fisher(_loss_fn(setup.spec.module, state_vars, setup.task),
                                     setup.variables["params"], setup.kmap,
                                     take(data.x_train, slice(None, n)), take(data.y_train, slice(None, n)))
  return error_table.build_error_table(setup.variables["params"], fisher, setup.kmap)


def plan_metrics(setup: Setup, plan: CompressionPlan) -> dict:
  params, state = accounting.split_variables(setup.variables)  # batch_stats are stored and counted too
  return {"compression_ratio": float(accounting.compression_ratio(params, plan, setup.kmap, state)),
          "paper_compression_ratio": float(accounting.paper_compression_ratio(plan, setup.kmap)),
          "storage_bits": float(accounting.storage_bits(params, plan, setup.kmap, state))}


UNIFORM_BASELINES = (("INT8", 8, "int"), ("INT6", 6, "int"), ("INT4", 4, "int"), ("INT3", 3, "int"),
                     ("FP8", 8, "float"), ("FP6", 6, "float"), ("FP4", 4, "float"))


def uniform_plans(kmap) -> tuple[list[str], CompressionPlan]:
  gran = "per_channel"
  plans = [uniform_plan(*kmap.plan_shape, bits=b, fmt=f, gran=gran) for _, b, f in UNIFORM_BASELINES]
  return [label for label, _, _ in UNIFORM_BASELINES], stack_plans(plans)
