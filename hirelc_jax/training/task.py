"""What a model is trained on and judged by: a loss and a per-example score.

The built-in task is image classification: softmax cross-entropy and top-1
accuracy in percent. A user's model brings its own (`hirelc_jax.compress`'s
`loss_fn` and `metric_fn`): targets `y` may be any pytree of arrays with a
leading example axis, and the metric of a split is the mean of its
per-example scores, in the units the accuracy target is read in.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

# (logits, y) -> scalar: the mean loss over the batch, differentiable in the logits.
LossFn = Callable[[jax.Array, object], jax.Array]
# (logits, y) -> [B]: one score per example, higher is better.
ScoreFn = Callable[[jax.Array, object], jax.Array]


@dataclasses.dataclass(frozen=True)
class Task:
  """A loss to train with and a per-example score to judge by.

  Attributes:
    loss: `(logits, y) -> scalar`, the batch's mean loss.
    score: `(logits, y) -> [B]` float, per example; a split's metric is their mean.
    metric: the metric's name in messages and reports.
    unit: the most one example can move the metric's mean times the split
      size (100 for accuracy in percent): the paired standard error's
      pseudo-pair, and the resolution warning's step. None for a user's
      metric: then the spread of the baseline's scores on the same examples.
  """
  loss: LossFn
  score: ScoreFn
  metric: str = "accuracy"
  unit: Optional[float] = None

  def show(self, value: float) -> str:
    """A metric value for messages: `88.94%` for the built-in accuracy, else `0.8123 (name)`."""
    return f"{value:.2f}%" if self.unit == 100.0 else f"{value:.4g} ({self.metric})"


def classification(label_smoothing: float = 0.0) -> Task:
  """Cross-entropy on integer labels `y [B]` (smoothed) and top-1 accuracy in percent."""
  def loss(logits, y):
    labels = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, labels).mean()

  def score(logits, y):
    return 100.0 * (jnp.argmax(logits, -1) == y).astype(jnp.float32)

  return Task(loss, score, "accuracy", 100.0)


CLASSIFICATION = classification()


def pair_unit(task: Task, base_scores: np.ndarray, new_scores: np.ndarray) -> float:
  """The task's unit, or for a user's metric the largest spread of per-example scores seen
  (over the baseline's scores and the paired differences); 0 only when all are equal."""
  if task.unit is not None:
    return float(task.unit)
  base, new = np.asarray(base_scores, np.float64), np.asarray(new_scores, np.float64)
  if base.size == 0:
    return 0.0
  return float(max(np.ptp(base), np.max(np.abs(base - new))))


def check_user_task(task: Task, logits, y) -> None:
  """Raises a one-line ValueError unless the task's loss is a finite scalar and its score one
  finite float per example, on a small batch (`logits [B, ...]`, `y` with B examples)."""
  n = int(np.shape(logits)[0])
  loss = np.asarray(task.loss(logits, y))
  if loss.shape != ():
    raise ValueError(f"loss_fn returned shape {loss.shape}; return the batch's mean loss, a scalar")
  if not np.isfinite(loss):
    raise ValueError(f"loss_fn returned {float(loss)} on the baseline's first {n} validation examples; "
                     "check the loss and the targets")
  score = np.asarray(task.score(logits, y))
  if score.shape != (n,):
    raise ValueError(f"metric_fn returned shape {score.shape} for {n} examples; return one score "
                     f"per example, shape [{n}] (the metric is their mean)")
  if not (score.dtype == bool or np.issubdtype(score.dtype, np.number)) or not np.all(np.isfinite(score)):
    raise ValueError(f"metric_fn returned {score.tolist()}; return finite numbers, higher is better")
