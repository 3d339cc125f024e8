"""Quantization-aware fine-tuning under a plan, and evaluating many plans at once."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hirelc_jax.compression.apply import apply_plan, compute_masks, init_steps
from hirelc_jax.compression.kernel_map import KernelMap
from hirelc_jax.compression.plan import CompressionPlan
from hirelc_jax.data.pipeline import num_examples, pad_to_batches, take
from hirelc_jax.training import loop
from hirelc_jax.distributed import fetch
from hirelc_jax.training.placement import Placement, pad_plans
from hirelc_jax.training.task import CLASSIFICATION, Task


def qat_params_fn(kmap: KernelMap):
  """``(trainable=(params, steps), aux=(plan, masks)) -> compressed params`` with STE gradients."""
  def params_fn(trainable, aux):
    params, steps = trainable
    plan, masks = aux
    return apply_plan(params, plan, kmap, masks=masks, steps=steps)
  return params_fn


def finetune(module, variables: Mapping, plan: CompressionPlan, kmap: KernelMap, data,
             config: loop.TrainConfig, key, *, augment=None, task: Task | None = None,
             desc: str = "fine-tune", quiet: bool = False, placement: Placement | None = None):
  """Fine-tunes `variables` under `plan` with fake quantization in the forward pass.

  Masks are computed once from the starting weights and stay fixed; learned
  step sizes start from the LSQ rule and train with the weights. `placement`:
  see `loop.fit`.

  Returns:
    (variables, FitResult): the best weights by validation metric, already
    compressed (pruned neurons exactly zero, every kernel on its grid), and the
    fit record.
  """
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  plan = plan.validate()
  masks = compute_masks(params, plan, kmap)
  steps = init_steps(params, plan, kmap, masks)
  params_fn = qat_params_fn(kmap)
  result = loop.fit(module, (params, steps), model_state, (plan, masks), params_fn, data, config,
                    key, augment=augment, task=task, desc=desc, quiet=quiet, placement=placement)
  compressed = jax.jit(params_fn)(result.trainable, (plan, masks))
  return {"params": compressed, **result.model_state}, result


def stacked_start(variables: Mapping, plans: CompressionPlan, kmap: KernelMap):
  """Where K QAT runs under `plans` `[K, B, L]` start: ((params, steps), model_state, (plans,
  masks)), every leaf with a leading K axis (the weights copied K times)."""
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  count = len(jax.tree.leaves(plans)[0])
  masks = jax.vmap(compute_masks, in_axes=(None, 0, None))(params, plans, kmap)
  steps = jax.vmap(init_steps, in_axes=(None, 0, None, 0))(params, plans, kmap, masks)
  stack = lambda tree: jax.tree.map(lambda a: jnp.broadcast_to(a, (count,) + jnp.shape(a)), tree)
  return (stack(params), steps), stack(model_state), (plans, masks)


def finetune_many(module, variables: Mapping, plans: CompressionPlan, kmap: KernelMap, data,
                  config: loop.TrainConfig, key, *, augment=None, task: Task | None = None,
                  desc: str = "fine-tune", quiet: bool = False, placement: Placement | None = None):
  """Fine-tunes K plans `[K, B, L]` at once: one vmapped program over the plans, each
  from the same `variables`, on the same batches as `finetune` with the same `key`.

  Each plan keeps its own best weights and early stopping, so plan k ends as
  `finetune(..., plan_k, ..., key)` would alone (up to float reduction order).
  Returns a list of K `(variables, FitResult)` like `finetune`'s.
  """
  count = len(jax.tree.leaves(plans)[0])
  for k in range(count):
    jax.tree.map(lambda a: a[k], plans).validate()
  trainable, model_state, (plans, masks) = stacked_start(variables, plans, kmap)
  params_fn = qat_params_fn(kmap)
  result = loop.fit(module, trainable, model_state, (plans, masks), params_fn, data,
                    config, key, augment=augment, task=task, desc=desc, quiet=quiet, placement=placement,
                    stacked=True)
  compressed = jax.jit(jax.vmap(params_fn))(result.trainable, (plans, masks))
  out = []
  for k in range(count):
    at = lambda tree: jax.tree.map(lambda a: a[k], tree)
    history = [{**h, "loss": h["loss"][k], "val_accuracy": h["val_accuracy"][k]} for h in result.history
               if h["step"] <= result.steps[k]]
    out.append(({"params": at(compressed), **at(result.model_state)},
                loop.FitResult(at(result.trainable), at(result.model_state), float(result.best_val_accuracy[k]),
                               history, result.seconds, int(result.steps[k]))))
  return out


def compress(variables: Mapping, plan: CompressionPlan, kmap: KernelMap) -> dict:
  """The variables with `plan` applied (no fine-tuning)."""
  return {**variables, "params": apply_plan(variables["params"], plan, kmap)}


def make_evaluate_plans(module, kmap: KernelMap, task: Task = CLASSIFICATION,
                        placement: Placement | None = None):
  """Returns ``f(params, model_state, plans [P,...], xs, ys, valid) -> total [P]``, each plan's
  sum of `task.score` over the valid examples.

  Each plan is applied once (one jitted call, vmapped over plans); every data
  batch is then one jitted forward pass vmapped over the P compressed models.
  With a `placement`, the plans are split over its devices (P padded to a
  multiple of the device count by repeating the last plan, the extra totals
  dropped) and the data and weights replicated: each device evaluates its plans.
  """
  compress_all = jax.jit(jax.vmap(lambda params, plan: apply_plan(params, plan, kmap),
                                  in_axes=(None, 0)))

  @jax.jit
  def batch_total(compressed, model_state, x, y, v):
    logits = jax.vmap(lambda p: loop.forward(module, p, model_state, x, train=False)[0])(compressed)
    return jnp.sum(jnp.where(v, jax.vmap(task.score, in_axes=(0, None))(logits, y), 0.0), axis=-1)

  def evaluate_plans(params, model_state, plans, xs, ys, valid):
    n = len(jax.tree.leaves(plans)[0])
    if placement is not None:
      plans = placement.shard(pad_plans(plans, placement.round_up(n)))
      params, model_state, xs, ys, valid = placement.replicate((params, model_state, xs, ys, valid))
    compressed = compress_all(params, plans)
    totals = sum(batch_total(compressed, model_state, take(xs, k), take(ys, k), valid[k])
                 for k in range(np.shape(valid)[0]))
    return fetch(totals)[:n]   # the plans' totals from every process's devices

  return evaluate_plans


def plan_accuracies(evaluate_plans, variables: Mapping, plans: CompressionPlan, x: np.ndarray,
                    y: np.ndarray, batch_size: int) -> np.ndarray:
  """Each plan's metric (top-1 accuracy in percent by default) over a whole split, `[P]`."""
  model_state = {k: v for k, v in variables.items() if k != "params"}
  xs, ys, valid = pad_to_batches(x, y, batch_size)
  total = evaluate_plans(variables["params"], model_state, plans, xs, ys, valid)
  return np.asarray(total, np.float64) / num_examples(y)
