"""Jitted training and evaluation under a `Task` (default: image classification), for
baselines and QAT.

The trainable state may differ from the model's parameters: QAT trains
``(params, steps)`` and maps them through a plan. A `ParamsFn`
``(trainable, aux) -> params`` does that mapping inside the jitted step; `aux`
is traced data (the plan and its masks), so one compilation serves every plan.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from hirelc_jax import interrupts
from hirelc_jax.data.pipeline import num_examples, pad_to_batches, take
from hirelc_jax.training.placement import Placement, pad_axis
from hirelc_jax.training.progress import progress
from hirelc_jax.training.task import CLASSIFICATION, Task, classification

ParamsFn = Callable[[Any, Any], Mapping]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
  """One training schedule (baseline or fine-tune).

  Attributes:
    epochs: passes over the training split (may be fractional: 0.5 is half).
    batch_size: examples per step.
    lr: peak learning rate of AdamW.
    warmup_frac: fraction of the steps spent warming up linearly.
    weight_decay: AdamW decay, applied to matrices only (not biases/norms).
    grad_clip: global-norm gradient clipping.
    label_smoothing: label smoothing of the built-in classification loss (a
      user's task brings its own loss).
    patience: epochs without validation improvement before stopping (0: never).
    chunk: training steps between progress updates and NaN checks.
    eval_batch_size: examples per evaluation batch.
  """
  epochs: float = 10.0
  batch_size: int = 128
  lr: float = 1e-3
  warmup_frac: float = 0.05
  weight_decay: float = 0.05
  grad_clip: float = 1.0
  label_smoothing: float = 0.0
  patience: int = 0
  chunk: int = 50
  eval_batch_size: int = 500

  def __post_init__(self):
    for name in ("epochs", "lr"):
      if not getattr(self, name) > 0:
        raise ValueError(f"{name}={getattr(self, name)} must be positive")
    for name in ("batch_size", "chunk", "eval_batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be at least 1")


@struct.dataclass
class TrainState:
  """Everything a training step changes."""
  trainable: Any
  model_state: Mapping  # non-parameter collections, e.g. {'batch_stats': ...}; {} if none
  opt_state: Any
  step: jax.Array


def make_optimizer(config: TrainConfig, num_steps: int) -> optax.GradientTransformation:
  """AdamW with linear warm-up and cosine decay; no decay on vectors (biases, norms)."""
  warmup = max(1, int(config.warmup_frac * num_steps))
  schedule = optax.warmup_cosine_decay_schedule(0.0, config.lr, warmup, max(num_steps, warmup + 1))
  decay_mask = lambda tree: jax.tree.map(lambda x: jnp.ndim(x) > 1, tree)
  return optax.chain(optax.clip_by_global_norm(config.grad_clip),
                     optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask))


def forward(module, params, model_state, x, *, train: bool):
  """Logits and the updated non-parameter state (empty for stateless models)."""
  variables = {"params": params, **model_state}
  if train and model_state:
    logits, new_state = module.apply(variables, x, train=True, mutable=list(model_state))
    return logits, dict(new_state)
  return module.apply(variables, x, train=train), model_state


def make_train_step(module, tx: optax.GradientTransformation, params_fn: ParamsFn, *,
                    augment: Optional[Callable] = None, task: Task = CLASSIFICATION,
                    stacked: bool = False):
  """Returns jitted ``step(state, aux, x [B, ...], y [B, ...], key) -> (state, loss)``, the
  loss `task.loss` (x and y may be pytrees).

  `stacked`: the state and `aux` carry a leading axis of K independent runs
  (K plans fine-tuned at once), each stepped on the same batch, vmapped; the
  loss is then `[K]`. Steps are dispatched one jitted call at a time rather
  than scanned: on XLA:CPU a convolution inside a `lax.scan` body ran about 6x
  slower than the same step called from Python (benchmarks/README.md), and
  async dispatch keeps the device busy between calls anyway.
  """

  def loss_fn(trainable, model_state, aux, x, y):
    logits, new_state = forward(module, params_fn(trainable, aux), model_state, x, train=True)
    return task.loss(logits, y), new_state

  def update(state, aux, x, y):
    (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.trainable, state.model_state, aux, x, y)
    updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    return TrainState(trainable, new_model_state, opt_state, state.step + 1), loss

  if stacked:
    update = jax.vmap(update, in_axes=(0, 0, None, None))

  @functools.partial(jax.jit, donate_argnums=(0,))
  def step(state, aux, x, y, key):
    if augment is not None:
      x = augment(key, x)
    return update(state, aux, x, y)

  return step


def make_evaluate(module, params_fn: ParamsFn, task: Task = CLASSIFICATION,
                  placement: Optional[Placement] = None, stacked: bool = False):
  """Returns ``evaluate(trainable, model_state, aux, xs [K, B, ...], ys, valid [K, B]) -> total``,
  the sum of `task.score` over the valid examples (xs, ys: padded batches, maybe pytrees).

  The compressed parameters are computed once per call, then each batch is a
  jitted forward pass (see `make_train_step` for why batches are not scanned).
  `stacked`: trainable, model_state and aux lead with an axis of runs, and
  the total is one per run. With a `placement`, each batch is split over its
  devices (B padded, and masked, to a multiple of the device count) and the
  parameters replicated.
  """
  over_runs = jax.vmap if stacked else (lambda f, **_: f)
  materialise = jax.jit(over_runs(params_fn))

  @jax.jit
  def batch_total(params, model_state, x, y, v):
    def total(params, model_state):
      logits, _ = forward(module, params, model_state, x, train=False)
      return jnp.sum(jnp.where(v, task.score(logits, y), 0.0))
    return over_runs(total)(params, model_state)

  def evaluate(trainable, model_state, aux, xs, ys, valid):
    if placement is not None:
      width = placement.round_up(np.shape(valid)[1])
      xs, ys, valid = (placement.shard(pad_axis(t, 1, width), axis=1) for t in (xs, ys, valid))
      trainable, model_state, aux = placement.replicate((trainable, model_state, aux))
    params = materialise(trainable, aux)
    return sum(batch_total(params, model_state, take(xs, k), take(ys, k), valid[k])
               for k in range(np.shape(valid)[0]))

  return evaluate


def accuracy(evaluate, trainable, model_state, aux, x, y, batch_size: int) -> float | np.ndarray:
  """The task's metric over a whole split (the mean per-example score; top-1 accuracy in
  percent by default), the remainder counted exactly: a float, or `[K]` for a stacked
  `evaluate`."""
  xs, ys, valid = pad_to_batches(x, y, batch_size)
  total = np.asarray(evaluate(trainable, model_state, aux, xs, ys, valid), np.float64) / num_examples(y)
  return float(total) if total.ndim == 0 else total


@dataclasses.dataclass
class FitResult:
  """What `fit` returns: the best state by validation metric, and its history.

  For a stacked fit, trainable and model_state lead with the runs' axis, and
  best_val_accuracy and steps are `[K]` (each run's steps until it stopped).
  """
  trainable: Any
  model_state: Mapping
  best_val_accuracy: Any
  history: list
  seconds: float
  steps: Any


def fit(module, trainable, model_state, aux, params_fn: ParamsFn, data, config: TrainConfig, key, *,
        augment: Optional[Callable] = None, task: Optional[Task] = None, desc: str = "train",
        quiet: bool = False, placement: Optional[Placement] = None, stacked: bool = False) -> FitResult:
  """Trains with AdamW, evaluating on the validation split after each epoch.

  Keeps the best state by validation metric and stops after `patience` epochs
  without improvement. `data` needs x_train, y_train, x_val, y_val (numpy
  arrays or pytrees of them). `task` defaults to classification with the
  config's label smoothing. With a `placement`, every batch is split over its
  devices and the state replicated (data parallel; the batch size must divide
  by the device count). `stacked`: trainable, model_state and aux lead with an
  axis of K independent runs, trained at once on the same batches; each keeps
  its own best and stops by its own patience (a stopped run's best is frozen
  while the others go on), so each ends as it would alone. Raises
  FloatingPointError if the loss becomes NaN.
  """
  task = task or classification(config.label_smoothing)
  n_train = num_examples(data.x_train)
  steps_per_epoch = n_train // config.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"batch_size={config.batch_size} is larger than the {n_train} training examples")
  total_steps = max(1, int(round(config.epochs * steps_per_epoch)))
  chunk_len = min(config.chunk, total_steps)
  total_chunks = -(-total_steps // chunk_len)
  tx = make_optimizer(config, total_chunks * chunk_len)
  # Copies: the step donates its state, and the caller keeps its own arrays.
  trainable, model_state = jax.tree.map(jnp.copy, (trainable, dict(model_state)))
  runs = len(jax.tree.leaves(trainable)[0]) if stacked else None
  opt_state = jax.vmap(tx.init)(trainable) if stacked else tx.init(trainable)
  state = TrainState(trainable, model_state, opt_state, jnp.zeros((runs,) if stacked else (), jnp.int32))
  batch = lambda tree: tree
  if placement is not None:
    placement.check_batch(config.batch_size, "batch_size")
    state, aux = placement.replicate((state, aux))
    batch = placement.shard
  train_step = make_train_step(module, tx, params_fn, augment=augment, task=task, stacked=stacked)
  evaluate = make_evaluate(module, params_fn, task, placement, stacked)
  val = lambda s: np.asarray(accuracy(evaluate, s.trainable, s.model_state, aux, data.x_val, data.y_val,
                                      config.eval_batch_size))
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel()[-1].item())
  best_acc = val(state)
  best = jax.tree.map(jnp.copy, (state.trainable, state.model_state))
  bad_epochs = np.zeros_like(best_acc, np.int64)
  stopped_at = np.zeros_like(best_acc, np.int64)   # 0: still training
  history, start = [], time.perf_counter()
  order = np.empty(0, np.int64)
  chunks_per_epoch = max(1, steps_per_epoch // chunk_len)
  bar = progress(total=total_chunks, desc=desc, disable=quiet)
  for c in range(total_chunks):
    interrupts.check()
    need = chunk_len * config.batch_size
    while len(order) < need:
      order = np.concatenate([order, rng.permutation(n_train)])
    idx, order = order[:need], order[need:]
    losses = []
    for s, rows in enumerate(idx.reshape(chunk_len, config.batch_size)):
      state, step_loss = train_step(state, aux, batch(take(data.x_train, rows)), batch(take(data.y_train, rows)),
                                    jax.random.fold_in(key, c * chunk_len + s))
      losses.append(step_loss)
    loss = np.mean(np.asarray(jnp.stack(losses)), axis=0)
    if not np.all(np.isfinite(loss)):
      bar.close()
      raise FloatingPointError(f"{desc}: loss became {loss} at step {(c + 1) * chunk_len}; "
                               "lower the learning rate or check the data")
    bar.update(1)
    bar.set_postfix(loss=f"{np.mean(loss):.3f}", best_val=f"{np.max(best_acc):.2f}")
    if (c + 1) % chunks_per_epoch == 0 or c + 1 == total_chunks:
      acc = val(state)
      history.append({"step": (c + 1) * chunk_len, "loss": loss.tolist(), "val_accuracy": acc.tolist(),
                      "seconds": time.perf_counter() - start})
      better = (acc > best_acc) & (stopped_at == 0)
      if np.any(better):
        pick = lambda b, n: jnp.where(jnp.asarray(better).reshape(better.shape + (1,) * (n.ndim - better.ndim)), n, b)
        best = jax.tree.map(pick, best, (state.trainable, state.model_state))
        best_acc = np.where(better, acc, best_acc)
      bad_epochs = np.where(better, 0, bad_epochs + 1)
      if config.patience:
        stopped_at = np.where((stopped_at == 0) & (bad_epochs >= config.patience), (c + 1) * chunk_len, stopped_at)
        if np.all(stopped_at):
          break
  bar.close()
  steps = np.where(stopped_at == 0, (c + 1) * chunk_len, stopped_at)
  if not stacked:
    best_acc, steps = float(best_acc), int(steps)
  return FitResult(best[0], best[1], best_acc, history, time.perf_counter() - start, steps)
