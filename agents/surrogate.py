"""Accuracy surrogate: an MLP from an encoded compression plan to accuracy.

The original HiReLC (reference §8) encoded a plan as 5 numbers per kernel,
wrote missing kernels as a raw ``[8.0, 1, 0, 0, 0]`` (the bits slot unscaled),
trained on MSE of the raw 0..100 accuracy with a sigmoid x 100 head, and the
package version logged a fake predicted = actual error. This module:

* encodes every slot with one pure, vmappable function (`encode_plan`);
  absent slots are all zeros, including their `present` flag;
* keeps samples in a fixed-size ring buffer so every function has static
  shapes and `add`, `fit` and `predict` are each compiled once;
* uses a **linear head on standardised targets**: `fit` stores the mean and
  standard deviation (floored at `min_target_std`) of the training targets and
  the network regresses z-scores. Adam is scale-invariant, but a sigmoid head
  saturates near 100 % and a narrow spread of accuracies (a few points around
  90) gives it tiny effective gradients; z-scores avoid both. Predictions are
  de-standardised and clipped to [0, 100];
* holds out an evenly spread `holdout_fraction` of samples from training and
  reports their MAE after each fit, and tracks real predicted-vs-actual errors
  passed to `record_prediction`;
* adds a linear skip to the MLP (`SurrogateMLP`), a prior that generalises
  from few samples.

Typical use::

  sur = make_surrogate(SurrogateConfig(), num_features(B, K))
  state = sur.init(key)
  state = sur.add(state, encode_plan(plan, kmap.present), accuracy)
  state, losses = sur.fit(state, key)
  acc = jnp.where(sur.ready(state), sur.predict(state, feats), proxy)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax import lax

from hirelc_jax.compression import codes
from hirelc_jax.compression.plan import CompressionPlan

FEATURE_NAMES = (("bits", "keep", "unquantized")
                 + tuple(f"fmt_{f}" for f in codes.FORMATS)
                 + tuple(f"gran_{g}" for g in codes.GRANULARITIES)
                 + ("present",))
FEATURES_PER_SLOT = len(FEATURE_NAMES)


def num_features(num_blocks: int, num_kernels: int, with_sensitivity: bool = False) -> int:
  """Length of `encode_plan`'s output for a `[num_blocks, num_kernels]` plan."""
  return num_blocks * num_kernels * (FEATURES_PER_SLOT + int(with_sensitivity))


def encode_plan(plan: CompressionPlan, present, sensitivity=None) -> jax.Array:
  """Encodes one plan as a flat feature vector; `jax.vmap` it over a batch of plans.

  Per slot, in `FEATURE_NAMES` order (then the sensitivity, if given):

  * ``bits``: min(bits, 8) / 8, so 2..8 bits map to 0.25..1.0 and the FP32
    sentinel (32) maps to 1.0, the "most precise" end, not to 4.0;
  * ``keep``: the kept fraction, in [0.2, 1];
  * ``unquantized``: 1.0 for the FP32 sentinel, which keeps "unquantized"
    distinct from 8 bits;
  * one-hot format (`codes.FORMATS`) and one-hot granularity
    (`codes.GRANULARITIES`); both all-zero for an unquantized slot, whose
    format and granularity are never read, so equivalent plans encode equally;
  * ``present``: 1.0 if the model has a kernel in this slot;
  * optionally the slot's sensitivity score.

  Every feature of an absent slot is 0 (the original wrote a raw 8.0 there).

  Args:
    plan: a plan with fields of shape `[B, K]`.
    present: bool `[B, K]`, e.g. `KernelMap.present`.
    sensitivity: optional float `[B, K]` (per kernel) or `[B]` (per block,
      broadcast over kernels).

  Returns:
    float32 `[B * K * F]`, slot-major (block, then kernel, then feature), with
    F = `FEATURES_PER_SLOT` (+1 with sensitivity).
  """
  present = jnp.asarray(present, jnp.float32)
  bits = plan.bits.astype(jnp.int32)
  fp32 = (bits == codes.FP32_BITS).astype(jnp.float32)
  quantized = (1.0 - fp32)[..., None]
  cols = [
      jnp.minimum(bits, codes.MAX_BITS).astype(jnp.float32)[..., None] / codes.MAX_BITS,
      plan.keep.astype(jnp.float32)[..., None],
      fp32[..., None],
      jax.nn.one_hot(plan.fmt, len(codes.FORMATS)) * quantized,
      jax.nn.one_hot(plan.gran, len(codes.GRANULARITIES)) * quantized,
      jnp.ones_like(present)[..., None],
  ]
  if sensitivity is not None:
    sens = jnp.asarray(sensitivity, jnp.float32)
    if sens.ndim == 1:
      sens = sens[:, None]
    cols.append(jnp.broadcast_to(sens, present.shape)[..., None])
  feats = jnp.concatenate(cols, axis=-1) * present[..., None]
  return feats.reshape(-1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SurrogateConfig:
  """Static surrogate settings.

  Attributes:
    hidden: MLP hidden widths (ReLU); the output layer is linear.
    lr: Adam learning rate.
    weight_decay: L2 coefficient added to the gradient before Adam (torch's
      coupled `Adam(weight_decay=...)`, as the original used).
    epochs: default epochs per `fit` call.
    batch_size: minibatch size.
    capacity: ring-buffer size; the oldest samples are overwritten.
    min_samples: training samples needed before `fit` trains and `ready` holds.
    holdout_fraction: evenly spread fraction of samples kept out of training
      (sample i is held out iff floor((i+1)f) > floor(if)); 0 disables.
    min_target_std: floor, in accuracy points, of the target std used for
      standardisation (guards against near-constant targets).
    fallback: default `predict` output while not `ready`.
  """
  hidden: tuple[int, ...] = (64, 32)
  lr: float = 1e-3
  weight_decay: float = 1e-4
  epochs: int = 50
  batch_size: int = 16
  capacity: int = 256
  min_samples: int = 3
  holdout_fraction: float = 0.1
  min_target_std: float = 1.0
  fallback: float = 0.0

  def __post_init__(self):
    if self.capacity < 1 or self.batch_size < 1 or self.epochs < 0:
      raise ValueError("capacity and batch_size must be >= 1 and epochs >= 0")
    if not 0.0 <= self.holdout_fraction < 1.0:
      raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
    if self.min_samples < 1:
      raise ValueError(f"min_samples must be >= 1, got {self.min_samples}")


@struct.dataclass
class SurrogateState:
  """Everything the surrogate learns and remembers (C = capacity, F = features).

  Attributes:
    params: MLP parameters.
    opt_state: optimizer state.
    buffer_x: float32 `[C, F]` encoded plans.
    buffer_y: float32 `[C]` accuracies in percent.
    buffer_holdout: bool `[C]`, samples kept out of training.
    count: int32 total samples ever added; the next ring slot is count % C.
    y_mean, y_std: target standardisation of the last fit.
    num_fits: int32 number of fits that trained.
    holdout_mae: MAE (points) on held-out buffer samples after the last fit;
      NaN if there were none.
    err_abs, err_sq, err_n: running sums of |p - a|, (p - a)^2 and their count
      over `record_prediction` calls.
  """
  params: Any
  opt_state: Any
  buffer_x: jax.Array
  buffer_y: jax.Array
  buffer_holdout: jax.Array
  count: jax.Array
  y_mean: jax.Array
  y_std: jax.Array
  num_fits: jax.Array
  holdout_mae: jax.Array
  err_abs: jax.Array
  err_sq: jax.Array
  err_n: jax.Array


class SurrogateMLP(nn.Module):
  """Linear model plus a ReLU MLP correction, predicting a standardised accuracy.

  The MLP's output layer starts at zero, so an untrained-for-long surrogate is
  a linear model in the features: accuracy drops are roughly additive over
  layers, and with tens of samples the linear part generalises where a plain
  MLP memorises. The MLP learns the interactions on top.
  """
  hidden: tuple[int, ...]

  @nn.compact
  def __call__(self, x):
    h = x
    for width in self.hidden:
      h = nn.relu(nn.Dense(width)(h))
    out = nn.Dense(1, name="out", kernel_init=nn.initializers.zeros)(h)
    return (nn.Dense(1, name="linear")(x) + out)[..., 0]


class Surrogate(NamedTuple):
  """Pure surrogate functions (optax style); `add`, `fit`, `predict` are jitted.

  Attributes:
    config: the `SurrogateConfig`.
    num_features: F.
    init: key -> SurrogateState.
    add: (state, x [F] or [N, F], y [] or [N]) -> state; ring insert in order.
    fit: (state, key, epochs=config.epochs) -> (state, losses [epochs]); the
      per-epoch training MSE in accuracy points^2, zeros if it did not train.
    predict: (state, x [..., F], fallback=None) -> accuracy [...] in percent;
      `fallback` (default `config.fallback`) wherever not `ready`.
    ready: state -> bool scalar: at least `min_samples` training (not held
      out) samples and at least one fit; False means use a proxy instead.
    record_prediction: (state, predicted, actual) -> state.
    prediction_error: state -> dict(mae, rmse, n); NaN errors when n == 0.
  """
  config: SurrogateConfig
  num_features: int
  init: Callable
  add: Callable
  fit: Callable
  predict: Callable
  ready: Callable
  record_prediction: Callable
  prediction_error: Callable


def _is_holdout(index, fraction: float):
  """Whether the index-th sample (0-based) is held out: floor((i+1)f) > floor(if)."""
  i = index.astype(jnp.float32)
  return jnp.floor((i + 1.0) * fraction) > jnp.floor(i * fraction)


def make_surrogate(config: SurrogateConfig, num_features: int) -> Surrogate:
  """Builds the surrogate's pure functions for F = `num_features` inputs."""
  cfg = config
  model = SurrogateMLP(tuple(cfg.hidden))
  tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.adam(cfg.lr))
  cap, bs = cfg.capacity, cfg.batch_size
  num_batches = -(-cap // bs)
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  i32 = lambda v: jnp.asarray(v, jnp.int32)

  def init(key) -> SurrogateState:
    params = model.init(key, jnp.zeros((1, num_features), jnp.float32))
    return SurrogateState(
        params=params, opt_state=tx.init(params),
        buffer_x=jnp.zeros((cap, num_features), jnp.float32),
        buffer_y=jnp.zeros((cap,), jnp.float32),
        buffer_holdout=jnp.zeros((cap,), bool),
        count=i32(0), y_mean=f32(0.0), y_std=f32(1.0), num_fits=i32(0),
        holdout_mae=f32(jnp.nan), err_abs=f32(0.0), err_sq=f32(0.0), err_n=i32(0))

  def train_mask(state):
    filled = jnp.arange(cap) < jnp.minimum(state.count, cap)
    return filled & ~state.buffer_holdout, filled & state.buffer_holdout

  def ready(state):
    train, _ = train_mask(state)
    return (jnp.sum(train) >= cfg.min_samples) & (state.num_fits > 0)

  def add(state, x, y):
    x = jnp.asarray(x, jnp.float32).reshape(-1, num_features)
    y = jnp.asarray(y, jnp.float32).reshape(-1)

    def insert(s, xy):
      xi, yi = xy
      slot = s.count % cap
      return s.replace(buffer_x=s.buffer_x.at[slot].set(xi), buffer_y=s.buffer_y.at[slot].set(yi),
                       buffer_holdout=s.buffer_holdout.at[slot].set(
                           _is_holdout(s.count, cfg.holdout_fraction)),
                       count=s.count + 1), None

    state, _ = lax.scan(insert, state, (x, y))
    return state

  def apply(params, x):
    return model.apply(params, x)

  def fit(state, key, epochs: int = cfg.epochs):
    train, held = train_mask(state)
    n_train = jnp.sum(train)

    def do_fit(state):
      w = train.astype(jnp.float32)
      n = jnp.sum(w)
      mean = jnp.sum(w * state.buffer_y) / n
      std = jnp.sqrt(jnp.sum(w * (state.buffer_y - mean) ** 2) / n)
      std = jnp.maximum(std, cfg.min_target_std)
      z = (state.buffer_y - mean) / std

      def loss_fn(params, idx, valid):
        err = apply(params, state.buffer_x[idx]) - z[idx]
        return jnp.sum(valid * err ** 2) / jnp.maximum(jnp.sum(valid), 1.0)

      def step(carry, batch):
        params, opt_state = carry
        idx, valid = batch

        def update(c):
          loss, grads = jax.value_and_grad(loss_fn)(c[0], idx, valid)
          updates, opt = tx.update(grads, c[1], c[0])
          return (optax.apply_updates(c[0], updates), opt), loss * jnp.sum(valid)

        return lax.cond(jnp.any(valid > 0), update, lambda c: (c, f32(0.0)), (params, opt_state))

      def epoch(carry, k):
        # Training samples first in random order, then the rest (masked out).
        u = jnp.where(train, jax.random.uniform(k, (cap,)), 2.0)
        idx = jnp.argsort(u)
        pad = num_batches * bs - cap
        idx = jnp.concatenate([idx, jnp.zeros((pad,), idx.dtype)])
        valid = (train[idx] & (jnp.arange(num_batches * bs) < cap)).astype(jnp.float32)
        carry, sse = lax.scan(step, carry, (idx.reshape(num_batches, bs),
                                            valid.reshape(num_batches, bs)))
        return carry, jnp.sum(sse) / n * std ** 2

      (params, opt_state), losses = lax.scan(
          epoch, (state.params, state.opt_state), jax.random.split(key, epochs))
      pred = jnp.clip(apply(params, state.buffer_x) * std + mean, 0.0, 100.0)
      hw = held.astype(jnp.float32)
      mae = jnp.where(jnp.sum(hw) > 0,
                      jnp.sum(hw * jnp.abs(pred - state.buffer_y)) / jnp.maximum(jnp.sum(hw), 1.0),
                      jnp.nan)
      state = state.replace(params=params, opt_state=opt_state, y_mean=mean, y_std=std,
                            num_fits=state.num_fits + 1, holdout_mae=mae)
      return state, losses

    return lax.cond(n_train >= cfg.min_samples, do_fit,
                    lambda s: (s, jnp.zeros((epochs,), jnp.float32)), state)

  def predict(state, x, fallback=None):
    fallback = cfg.fallback if fallback is None else fallback
    x = jnp.asarray(x, jnp.float32)
    acc = jnp.clip(apply(state.params, x) * state.y_std + state.y_mean, 0.0, 100.0)
    return jnp.where(ready(state), acc, jnp.asarray(fallback, jnp.float32))

  def record_prediction(state, predicted, actual):
    err = jnp.asarray(predicted, jnp.float32) - jnp.asarray(actual, jnp.float32)
    return state.replace(err_abs=state.err_abs + jnp.sum(jnp.abs(err)),
                         err_sq=state.err_sq + jnp.sum(err ** 2),
                         err_n=state.err_n + i32(err.size))

  def prediction_error(state):
    n = state.err_n.astype(jnp.float32)
    safe = jnp.maximum(n, 1.0)
    return {"mae": jnp.where(n > 0, state.err_abs / safe, jnp.nan),
            "rmse": jnp.where(n > 0, jnp.sqrt(state.err_sq / safe), jnp.nan),
            "n": state.err_n}

  return Surrogate(config=cfg, num_features=num_features, init=init, add=jax.jit(add),
                   fit=jax.jit(fit, static_argnames="epochs"), predict=jax.jit(predict),
                   ready=ready, record_prediction=record_prediction,
                   prediction_error=prediction_error)
