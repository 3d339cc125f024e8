"""Accuracy signals for the kernel environment's `accuracy_fn`: surrogate and proxies.

Each factory returns `accuracy_fn(signal, block_index, bits, keep, fmt, gran)
-> D` (predicted accuracy drop in points, float32 scalar), computed inside jit
from arrays carried in `signal`, so it vmaps over blocks and ensemble members.
Share the signal across the vmap (`kernel_env.params_in_axes`): each block
selects its own rows by `block_index`.

* `surrogate_signal_fn`: the trained surrogate, queried with the whole-model
  plan in which this block's row is the decoded action.
* `quant_error_proxy_fn`: the block's sensitivity-weighted relative noise
  power. For kernel k with weights w_k (n_k of them), output-neuron mask m_k
  (`prune.neuron_mask`) and fake quantizer Q (`quantize.fake_quant`),

    e_k = ||Q(m_k ⊙ w_k) - w_k||² / ||w_k||²
    e   = Σ_k s_k n_k e_k / Σ_k n_k
    D   = points_per_error · e

  e is a parameter-weighted mean of noise-to-signal power ratios, so it does
  not grow with the number of kernels. Calibration: `points_per_error`
  (default `DEFAULT_POINTS_PER_ERROR` = 100, so 4-bit per-channel INT on
  Gaussian weights, e ≈ 0.027 s, costs ≈ 2.7 s points before fine-tuning) is
  data in the signal; refit it with `fit_points_per_error` on measured
  (e, drop) pairs, e.g. the surrogate warm-up. A few fake-quants per step.
* `logit_mse_proxy_fn`: the original's proxy (§4.4): D = min(20 · MSE(logits of
  the model with this block compressed, baseline logits), 50) on cached
  calibration inputs. **Expensive**: a full forward pass per env step, and
  under vmap every block's branch is evaluated.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from flax import traverse_util
from jax import lax

from hirelc_jax.agents.surrogate import encode_plan
from hirelc_jax.compression import prune
from hirelc_jax.compression import quantize
from hirelc_jax.compression.kernel_map import KernelMap
from hirelc_jax.compression.plan import CompressionPlan

DEFAULT_POINTS_PER_ERROR = 100.0
LOGIT_MSE_GAIN, LOGIT_MSE_CAP = 20.0, 50.0

# (signal, block_index, bits [K], keep [K], fmt [K], gran [K]) -> accuracy drop (points).
AccuracyFn = Callable[..., jax.Array]


@struct.dataclass
class SurrogateSignal:
  """Signal for `surrogate_signal_fn`.

  Attributes:
    state: the `SurrogateState`.
    plan: the current whole-model `CompressionPlan` `[B, K]`.
    baseline: float32 baseline accuracy in points.
    sensitivity: None, or the sensitivity `[B]` / `[B, K]` the surrogate was
      trained with (`encode_plan`'s optional feature).
  """
  state: Any
  plan: CompressionPlan
  baseline: jax.Array
  sensitivity: Any = None


def surrogate_signal_fn(surrogate_predict: Callable, present) -> AccuracyFn:
  """An `accuracy_fn` that queries the surrogate with the whole-model plan.

  The signal is a `SurrogateSignal`. This block's decoded row replaces row
  `block_index` of `signal.plan` (the other blocks keep their current plan),
  the plan is encoded with `encode_plan(plan, present, signal.sensitivity)`,
  and D = `signal.baseline` - `surrogate_predict(signal.state, features)`.

  Args:
    surrogate_predict: `make_surrogate(...).predict`, `(state, x [F]) -> acc`.
    present: bool `[B, K]`, `KernelMap.present`.
  """
  present = np.asarray(present, bool)

  def accuracy_fn(signal, block_index, bits, keep, fmt, gran):
    plan = signal.plan
    put = lambda field, row: field.at[block_index].set(row.astype(field.dtype))
    plan = CompressionPlan(bits=put(plan.bits, bits), keep=put(plan.keep, keep),
                           fmt=put(plan.fmt, fmt), gran=put(plan.gran, gran))
    feats = encode_plan(plan, present, signal.sensitivity)
    return signal.baseline - surrogate_predict(signal.state, feats)

  return accuracy_fn


@struct.dataclass
class QuantErrorSignal:
  """Signal for `quant_error_proxy_fn`.

  Attributes:
    weights: tuple of K float arrays, kernel k stacked over blocks
      `[B, *shape_k]` (output channel last), e.g. from `stack_block_weights`.
    sensitivity: float32 `[B, K]` per-kernel sensitivity weights s_k.
    points_per_error: float32 calibration constant (points per unit of e).
  """
  weights: tuple
  sensitivity: jax.Array
  points_per_error: jax.Array


def stack_block_weights(params: Mapping, kmap: KernelMap) -> tuple[jax.Array, ...]:
  """Stacks each kernel slot's weights over blocks: a tuple of K `[B, *shape_k]` arrays.

  Raises:
    ValueError: if a block lacks a kernel or a kernel's shape differs between
      blocks (e.g. a CNN; use a per-block signal there).
  """
  flat = traverse_util.flatten_dict(dict(params))
  stacked = []
  for k, name in enumerate(kmap.kernel_names):
    entries = sorted((e for e in kmap.entries if e.kernel == k), key=lambda e: e.block)
    if [e.block for e in entries] != list(range(kmap.num_blocks)):
      raise ValueError(f"kernel {name!r} is not present in every block; cannot stack")
    if len({e.shape for e in entries}) != 1:
      raise ValueError(f"kernel {name!r} has different shapes across blocks; cannot stack")
    stacked.append(jnp.stack([jnp.asarray(flat[e.path]) for e in entries]))
  return tuple(stacked)


def quant_error_signal(weights, sensitivity=None,
                       points_per_error: float = DEFAULT_POINTS_PER_ERROR) -> QuantErrorSignal:
  """Builds a `QuantErrorSignal`; sensitivity defaults to ones `[B, K]`."""
  weights = tuple(jnp.asarray(w, jnp.float32) for w in weights)
  shape = (weights[0].shape[0], len(weights))
  sens = jnp.ones(shape) if sensitivity is None else jnp.asarray(sensitivity)
  sens = sens.astype(jnp.float32)
  if sens.ndim == 1:
    sens = jnp.broadcast_to(sens[:, None], shape)
  if sens.shape != shape:
    raise ValueError(f"sensitivity has shape {sens.shape}, expected {shape} or ({shape[0]},)")
  return QuantErrorSignal(weights, sens, jnp.asarray(points_per_error, jnp.float32))


def _compress(w: jax.Array, bits, keep, fmt, gran, prune_method: str) -> jax.Array:
  mask = prune.neuron_mask(w, keep, prune_method)
  return quantize.fake_quant(w * mask, bits, fmt, gran)


def block_quant_error(signal: QuantErrorSignal, block_index, bits, keep, fmt, gran, *,
                      prune_method: str = "l2") -> jax.Array:
  """The uncalibrated error e of the module docstring (float32 scalar).

  Args:
    signal: a `QuantErrorSignal`.
    block_index: int32 scalar block b.
    bits, keep, fmt, gran: the block's decoded row, each `[K]`.
    prune_method: static neuron-importance method.
  """
  total, size = jnp.zeros((), jnp.float32), 0.0
  for k, stacked in enumerate(signal.weights):
    w = lax.dynamic_index_in_dim(stacked, block_index, keepdims=False).astype(jnp.float32)
    q = _compress(w, bits[k], keep[k], fmt[k], gran[k], prune_method)
    power = jnp.sum(w * w)
    rel = jnp.where(power > 0, jnp.sum((q - w) ** 2) / jnp.where(power > 0, power, 1.0), 0.0)
    s_k = signal.sensitivity[block_index, k]
    total = total + s_k * w.size * rel
    size += w.size
  return total / size


def quant_error_proxy_fn(*, prune_method: str = "l2") -> AccuracyFn:
  """An `accuracy_fn`: D = signal.points_per_error · `block_quant_error(...)`."""

  def accuracy_fn(signal: QuantErrorSignal, block_index, bits, keep, fmt, gran):
    e = block_quant_error(signal, block_index, bits, keep, fmt, gran, prune_method=prune_method)
    return signal.points_per_error * e

  return accuracy_fn


def fit_points_per_error(errors, drops) -> float:
  """Least-squares slope through the origin of drop on error: Σ e d / Σ e² (host side)."""
  e, d = np.asarray(errors, np.float64), np.asarray(drops, np.float64)
  denom = float(np.sum(e * e))
  if denom <= 0:
    raise ValueError("fit_points_per_error needs at least one non-zero error")
  return float(np.sum(e * d) / denom)


@struct.dataclass
class LogitSignal:
  """Signal for `logit_mse_proxy_fn`.

  Attributes:
    params: the model's 'params' collection the block is compressed into
      (the baseline, or the current whole-model compressed weights).
    inputs: cached calibration inputs `[N, ...]`.
    base_logits: logits of the reference model on `inputs` `[N, C]`.
  """
  params: Any
  inputs: jax.Array
  base_logits: jax.Array


def logit_mse_proxy_fn(apply_fn: Callable, kmap: KernelMap, *,
                       prune_method: str = "l2") -> AccuracyFn:
  """The original's logit-MSE proxy as an `accuracy_fn` (expensive; module docstring).

  The block's kernels in `signal.params` are pruned (kernel and bias) and
  fake-quantized with the decoded row, the model runs on `signal.inputs`, and
  D = min(20 · mean((logits - base_logits)²), 50). The block is chosen with a
  `lax.switch` over blocks (under vmap all branches run).

  Args:
    apply_fn: `(variables, inputs) -> logits`, e.g. `model.apply`, called
      with `{'params': params}`.
    kmap: the model's `KernelMap`.
    prune_method: static neuron-importance method.
  """
  by_block = [[e for e in kmap.entries if e.block == b] for b in range(kmap.num_blocks)]

  def branch(entries):
    def compress_block(flat, bits, keep, fmt, gran):
      flat = dict(flat)
      for e in entries:
        w = flat[e.path]
        mask = prune.neuron_mask(w, keep[e.kernel], prune_method)
        w, bias = prune.apply_neuron_mask(w, flat[e.bias_path] if e.bias_path else None, mask)
        flat[e.path] = quantize.fake_quant(w, bits[e.kernel], fmt[e.kernel], gran[e.kernel])
        if e.bias_path:
          flat[e.bias_path] = bias
      return flat
    return compress_block

  branches = [branch(entries) for entries in by_block]

  def accuracy_fn(signal: LogitSignal, block_index, bits, keep, fmt, gran):
    flat = traverse_util.flatten_dict(dict(signal.params))
    index = jnp.clip(block_index, 0, kmap.num_blocks - 1)
    flat = lax.switch(index, branches, flat, bits, keep, fmt, gran)
    logits = apply_fn({"params": traverse_util.unflatten_dict(flat)}, signal.inputs)
    mse = jnp.mean((logits.astype(jnp.float32) - signal.base_logits) ** 2)
    return jnp.minimum(LOGIT_MSE_GAIN * mse, LOGIT_MSE_CAP)

  return accuracy_fn
