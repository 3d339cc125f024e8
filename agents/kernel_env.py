"""The low-level (kernel) environment: one block's per-kernel compression.

A gymnax environment for a Low-Level Agent (reference §4). The env object holds
only static structure (kernel count, the accuracy function, format and
granularity restrictions); the block, its budget, the reward weights and the
accuracy signal are `EnvParams`, so one `jax.vmap` over `EnvParams` runs every
block of every ensemble member.

Action `MultiDiscrete([15, 15, 2, 4] * K)`: per kernel (bits index, prune
index, format, granularity), decoded by `decode_kernel_action` (§4.3):

  bits = clip(bmin + floor(i_b (bmax - bmin) / 14), bmin, bmax)
  keep = clip(1 - i_p / 14 * pmax, 1 - pmax, 1)
  fmt  = (INT, FLOAT)[i_f],  gran = (uniform, log, per_channel, learned)[i_g]

with bmin = budget min bits, bmax = `max_bits` (8), pmax = budget max pruning.

Accuracy signal: `accuracy_fn(signal, block_index, bits, keep, fmt, gran)`
returns the predicted accuracy drop D in points; `params.signal` is any pytree
it needs. `surrogate_signal_fn` (defined in `proxies.py`, re-exported here)
queries the surrogate with the whole-model plan (the other blocks at their
current plan: the original encoded them as a fixed out-of-distribution
default, W8); `proxies.py` also has cheaper proxies.

Reward (§4.4), normalised by `reward_scale` (default α·100 + β·60 + 20, the
largest positive raw reward):

  R = α A(D) + β 60 (1 - r) + 20 exp(-10 |r - T|) + γ S - 12 s (1 - r)

A(D) is the piecewise accuracy table read in units of `drop_unit` points (the original's
1 point; the search passes the user's target, so the table's plateau ends at the target); S = -2 std(last 5 rewards of the episode)
once 5 are recorded; r is the *parameter-weighted* storage fraction
Σ n_k keep_k bits_k / 32 / Σ n_k (32 bits -> 1), a fix of the original's
unweighted mean over kernels. A non-finite R becomes -10 (before scaling).

Observation, float32 `[10 + 2K]`, one layout at reset and step, clipped to
`observation_space`:

  [0] block_index / num_blocks  [1] s            [2] r (1 at reset)
  [3] |r - T|                   [4] D / 10 (0 at reset; [-10, 10])
  [5] T                         [6] max_acc_drop / 10
  [7] priority                  [8] surrogate-ready flag
  [9] last normalised reward, clipped to [-10, 10] (0 at reset)
  [10 + 2k] kernel k sensitivity  [11 + 2k] log1p(n_k) / log1p(Σ n)

Episodes last `max_steps_in_episode` (20) steps, end as terminated, and
auto-reset.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import spaces as gspaces

from hirelc_jax.agents.proxies import AccuracyFn
from hirelc_jax.agents.proxies import SurrogateSignal  # noqa: F401  (re-exported)
from hirelc_jax.agents.proxies import surrogate_signal_fn  # noqa: F401  (re-exported)
from hirelc_jax.agents.spaces import FixedLengthEnv, MultiDiscrete
from hirelc_jax.compression import codes

NUM_BITS_IDX = 15
NUM_PRUNE_IDX = 15
FORMAT_TABLE = (codes.INT, codes.FLOAT)
GRAN_TABLE = (codes.UNIFORM, codes.LOG, codes.PER_CHANNEL, codes.LEARNED)
QUANTIZATION_TYPES = ("mixed", "int", "float")
# A(D) = max(0, BASE[j] - SLOPE[j] * (D - START[j])) with j = #{1, 2, 3 <= D}.
ACC_START = (0.0, 1.0, 2.0, 3.0)
ACC_BASE = (100.0, 95.0, 85.0, 70.0)
ACC_SLOPE = (0.0, 5.0, 10.0, 10.0)
COMPRESSION_GAIN = 60.0
COMPLIANCE_GAIN, COMPLIANCE_SHARPNESS = 20.0, 10.0
SENSITIVITY_GAIN = 12.0
STABILITY_GAIN, STABILITY_WINDOW = 2.0, 5
NONFINITE_REWARD = -10.0
OBS_HEAD = 10
BAD_DROP = 100.0


@struct.dataclass
class EnvState:
  """Attributes:
    time: int32 steps taken in the episode.
    rewards: float32 `[5]` ring of the last raw rewards of the episode.
    count: int32 rewards recorded this episode (ring slot = count % 5).
    ratio: float32 last storage fraction r (1 at reset).
    drop: float32 last predicted accuracy drop D (0 at reset).
    last_reward: float32 last normalised reward (0 at reset).
  """
  time: jax.Array
  rewards: jax.Array
  count: jax.Array
  ratio: jax.Array
  drop: jax.Array
  last_reward: jax.Array


@struct.dataclass
class EnvParams:
  """One block of one ensemble member; build with `kernel_params` (fixed dtypes).

  Attributes:
    block_index: int32 block b; num_blocks: int32 B (observation scale).
    sensitivity: float32 block sensitivity s; kernel_sensitivity: float32 `[K]`.
    target_ratio, min_bits (int32), max_bits (int32), max_prune, max_acc_drop,
      priority: the block's budget (from the HLA's `Budgets`).
    kernel_size: float32 `[K]` weights per kernel n_k (0 for an absent slot).
    num_out: int32 `[K]` output neurons per kernel.
    alpha, beta, gamma: reward weights (30, β ∈ {1.5, 5, 8}, 1 in the original).
    drop_unit: float32 points per unit of the accuracy table A (1 in the original).
    reward_scale: float32 reward divisor.
    max_steps_in_episode: int32 (20).
    baseline_accuracy: float32 accuracy (points) of the uncompressed model;
      `info["accuracy"]` = baseline - D.
    surrogate_ready: float32 1.0 if the accuracy signal is the trained surrogate.
    signal: pytree for `accuracy_fn` (see `params_in_axes` to share it in vmap).
  """
  block_index: jax.Array
  num_blocks: jax.Array
  sensitivity: jax.Array
  kernel_sensitivity: jax.Array
  target_ratio: jax.Array
  min_bits: jax.Array
  max_bits: jax.Array
  max_prune: jax.Array
  max_acc_drop: jax.Array
  priority: jax.Array
  kernel_size: jax.Array
  num_out: jax.Array
  alpha: jax.Array
  beta: jax.Array
  gamma: jax.Array
  drop_unit: jax.Array
  reward_scale: jax.Array
  max_steps_in_episode: jax.Array
  baseline_accuracy: jax.Array
  surrogate_ready: jax.Array
  signal: Any = None


_INT_FIELDS = ("block_index", "num_blocks", "min_bits", "max_bits", "num_out",
               "max_steps_in_episode")


def kernel_params(num_kernels: int, *, block_index=0, num_blocks=1, sensitivity=0.5,
                  kernel_sensitivity=None, target_ratio=0.25, min_bits=4, max_bits=8,
                  max_prune=0.6, max_acc_drop=1.0, priority=None, kernel_size=None,
                  num_out=None, alpha=30.0, beta=1.5, gamma=1.0, drop_unit=1.0, reward_scale=None,
                  max_steps_in_episode=20, baseline_accuracy=85.0, surrogate_ready=0.0,
                  signal=None) -> EnvParams:
  """Builds `EnvParams` with fixed dtypes; defaults are the original's ViT run.

  `kernel_sensitivity` defaults to `sensitivity` per kernel, `priority` to
  `sensitivity`, `kernel_size` and `num_out` to ones, `reward_scale` to
  α·100 + β·60 + 20. Signal leaves are kept as given.
  """
  k = int(num_kernels)
  sens = jnp.asarray(sensitivity, jnp.float32)
  values = dict(
      block_index=block_index, num_blocks=num_blocks, sensitivity=sens,
      kernel_sensitivity=(jnp.broadcast_to(sens[..., None], sens.shape + (k,))
                          if kernel_sensitivity is None else kernel_sensitivity),
      target_ratio=target_ratio, min_bits=min_bits, max_bits=max_bits, max_prune=max_prune,
      max_acc_drop=max_acc_drop, priority=sens if priority is None else priority,
      kernel_size=np.ones(k) if kernel_size is None else kernel_size,
      num_out=np.ones(k) if num_out is None else num_out,
      alpha=alpha, beta=beta, gamma=gamma, drop_unit=drop_unit,
      reward_scale=(100.0 * jnp.asarray(alpha) + COMPRESSION_GAIN * jnp.asarray(beta)
                    + COMPLIANCE_GAIN) if reward_scale is None else reward_scale,
      max_steps_in_episode=max_steps_in_episode, baseline_accuracy=baseline_accuracy,
      surrogate_ready=surrogate_ready)
  out = {name: jnp.asarray(v, jnp.int32 if name in _INT_FIELDS else jnp.float32)
         for name, v in values.items()}
  for name in ("kernel_sensitivity", "kernel_size", "num_out"):
    if out[name].shape[-1:] != (k,):
      raise ValueError(f"{name} has shape {out[name].shape}; its last axis must be {k}")
  return EnvParams(**out, signal=signal)


def params_in_axes(params: EnvParams, axis: int = 0, signal_axis: int | None = None) -> EnvParams:
  """`in_axes` for `jax.vmap` over `params`: every field on `axis`, the signal on `signal_axis`.

  With `signal_axis=None` (the default) one copy of the signal (surrogate
  state, stacked block weights) serves every block and member; each block
  picks its rows by `block_index`.
  """
  axes = jax.tree.map(lambda _: axis, params.replace(signal=None))
  signal = None if signal_axis is None else jax.tree.map(lambda _: signal_axis, params.signal)
  return axes.replace(signal=signal)


def decode_kernel_action(action: jax.Array, params: EnvParams, *, quantization_type: str = "mixed",
                         fixed_granularity: int | None = None, allow_pruning: bool = True,
                         allow_quantization: bool = True):
  """Decodes an LLA action within the block's budget (reference §4.3); pure and jittable.

  Args:
    action: int `[4K]`, per kernel (bits_idx, prune_idx, format, granularity);
      indices are clipped to their ranges.
    params: `EnvParams` (min_bits, max_bits, max_prune are read).
    quantization_type: "mixed" (format from the action), "int" or "float".
    fixed_granularity: a granularity code that overrides the action, or None.
    allow_pruning: False forces keep 1.
    allow_quantization: False forces 32 bits (`codes.FP32_BITS`).

  Returns:
    `(bits, keep, fmt, gran)`: int32, float32, int32, int32, each `[K]`.
  """
  a = jnp.asarray(action, jnp.int32).reshape(-1, 4)
  bmin = jnp.clip(params.min_bits, codes.MIN_BITS, codes.MAX_BITS)
  bmax = jnp.clip(params.max_bits, bmin, codes.MAX_BITS)
  i_b = jnp.clip(a[:, 0], 0, NUM_BITS_IDX - 1)
  bits = jnp.clip(bmin + (i_b * (bmax - bmin)) // (NUM_BITS_IDX - 1), bmin, bmax)
  pmax = jnp.clip(params.max_prune, 0.0, 1.0 - codes.MIN_KEEP)
  i_p = jnp.clip(a[:, 1], 0, NUM_PRUNE_IDX - 1).astype(jnp.float32)
  keep = jnp.clip(1.0 - i_p / (NUM_PRUNE_IDX - 1) * pmax, 1.0 - pmax, 1.0)
  fmt = jnp.take(jnp.asarray(FORMAT_TABLE, jnp.int32), a[:, 2] % len(FORMAT_TABLE))
  gran = jnp.take(jnp.asarray(GRAN_TABLE, jnp.int32), a[:, 3] % len(GRAN_TABLE))
  if quantization_type != "mixed":
    fmt = jnp.full_like(fmt, codes.format_code(quantization_type))
  if fixed_granularity is not None:
    gran = jnp.full_like(gran, fixed_granularity)
  if not allow_pruning:
    keep = jnp.ones_like(keep)
  if not allow_quantization:
    bits = jnp.full_like(bits, codes.FP32_BITS)
  return bits.astype(jnp.int32), keep.astype(jnp.float32), fmt, gran


def storage_fraction(bits, keep, kernel_size) -> jax.Array:
  """Parameter-weighted storage fraction Σ n keep bits/32 / Σ n (float32 scalar)."""
  n = jnp.asarray(kernel_size, jnp.float32)
  per_kernel = jnp.asarray(keep, jnp.float32) * jnp.asarray(bits, jnp.float32) / codes.FP32_BITS
  return jnp.sum(n * per_kernel) / jnp.maximum(jnp.sum(n), 1e-12)


def accuracy_reward(drop) -> jax.Array:
  """A(D): 100 below 1 point, then 95 - 5(D-1), 85 - 10(D-2), max(0, 70 - 10(D-3))."""
  d = jnp.asarray(drop, jnp.float32)
  j = (d >= 1.0).astype(jnp.int32) + (d >= 2.0) + (d >= 3.0)
  tab = lambda t: jnp.take(jnp.asarray(t, jnp.float32), j)
  return jnp.maximum(tab(ACC_BASE) - tab(ACC_SLOPE) * (d - tab(ACC_START)), 0.0)


def compliance_reward(ratio, target) -> jax.Array:
  """Budget compliance 20 exp(-10 |r - T|)."""
  return COMPLIANCE_GAIN * jnp.exp(-COMPLIANCE_SHARPNESS * jnp.abs(ratio - target))


def sensitivity_penalty(sensitivity, ratio) -> jax.Array:
  """12 s (1 - r), subtracted from the reward."""
  return SENSITIVITY_GAIN * sensitivity * (1.0 - ratio)


def stability_term(rewards, count) -> jax.Array:
  """-2 · population std of the last 5 raw rewards once 5 are recorded, else 0."""
  return jnp.where(count >= STABILITY_WINDOW, -STABILITY_GAIN * jnp.std(rewards), 0.0)


def raw_reward(drop, ratio, rewards, count, params: EnvParams) -> jax.Array:
  """Unnormalised §4.4 reward; non-finite values become `NONFINITE_REWARD`."""
  r = (params.alpha * accuracy_reward(drop / params.drop_unit)
       + params.beta * COMPRESSION_GAIN * (1.0 - ratio)
       + compliance_reward(ratio, params.target_ratio)
       + params.gamma * stability_term(rewards, count)
       - sensitivity_penalty(params.sensitivity, ratio))
  return jnp.where(jnp.isfinite(r), r, NONFINITE_REWARD)


class KernelEnv(FixedLengthEnv):
  """The LLA environment for one block of `num_kernels` kernels (static structure only)."""

  def __init__(self, num_kernels: int, accuracy_fn: AccuracyFn, *,
               quantization_type: str = "mixed", fixed_granularity=None,
               allow_pruning: bool = True, allow_quantization: bool = True):
    super().__init__()
    if int(num_kernels) < 1:
      raise ValueError(f"num_kernels must be >= 1, got {num_kernels}")
    if quantization_type not in QUANTIZATION_TYPES:
      raise ValueError(
          f"quantization_type {quantization_type!r} is not one of {QUANTIZATION_TYPES}")
    if isinstance(fixed_granularity, str):
      fixed_granularity = codes.granularity_code(fixed_granularity)
    if fixed_granularity is not None:
      fixed_granularity = int(fixed_granularity)
      if not 0 <= fixed_granularity < len(codes.GRANULARITIES):
        raise ValueError(f"unknown granularity code {fixed_granularity}")
      if fixed_granularity == codes.ASYMMETRIC and quantization_type != "int":
        raise ValueError("fixed_granularity 'asymmetric' needs quantization_type='int'")
    self.num_kernels = int(num_kernels)
    self.accuracy_fn = accuracy_fn
    self.quantization_type = quantization_type
    self.fixed_granularity = fixed_granularity
    self.allow_pruning = bool(allow_pruning)
    self.allow_quantization = bool(allow_quantization)
    k = self.num_kernels
    self._obs_low = np.concatenate([[0, 0, 0, 0, -10, 0, 0, 0, 0, -10], np.zeros(2 * k)]
                                   ).astype(np.float32)
    self._obs_high = np.concatenate([[1, 1, 1, 1, 10, 1, 1, 1, 1, 10], np.ones(2 * k)]
                                    ).astype(np.float32)

  @property
  def default_params(self) -> EnvParams:
    return kernel_params(self.num_kernels, signal=jnp.zeros((), jnp.float32))

  @property
  def obs_size(self) -> int:
    return OBS_HEAD + 2 * self.num_kernels

  def decode_action(self, action: jax.Array, params: EnvParams):
    """`decode_kernel_action` with this env's restrictions: (bits, keep, fmt, gran), `[K]` each."""
    return decode_kernel_action(action, params, quantization_type=self.quantization_type,
                                fixed_granularity=self.fixed_granularity,
                                allow_pruning=self.allow_pruning,
                                allow_quantization=self.allow_quantization)

  def get_obs(self, state: EnvState, params: EnvParams, key=None) -> jax.Array:
    """The fixed-layout observation (module docstring), float32 `[10 + 2K]`."""
    del key
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    head = jnp.stack([
        f32(params.block_index) / jnp.maximum(f32(params.num_blocks), 1.0),
        params.sensitivity, state.ratio, jnp.abs(state.ratio - params.target_ratio),
        state.drop / 10.0, params.target_ratio, params.max_acc_drop / 10.0,
        params.priority, params.surrogate_ready, state.last_reward]).astype(jnp.float32)
    n = f32(params.kernel_size)
    size = jnp.log1p(n) / jnp.maximum(jnp.log1p(jnp.sum(n)), 1e-12)
    kernels = jnp.stack([f32(params.kernel_sensitivity), size], axis=-1).reshape(-1)
    return jnp.clip(jnp.concatenate([head, kernels]), self._obs_low, self._obs_high)

  def reset_env(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
    del key
    zero = jnp.zeros((), jnp.float32)
    state = EnvState(time=jnp.zeros((), jnp.int32),
                     rewards=jnp.zeros((STABILITY_WINDOW,), jnp.float32),
                     count=jnp.zeros((), jnp.int32), ratio=jnp.ones((), jnp.float32),
                     drop=zero, last_reward=zero)
    return self.get_obs(state, params), state

  def step_env(self, key: jax.Array, state: EnvState, action: jax.Array,
               params: EnvParams) -> tuple[jax.Array, EnvState, jax.Array, jax.Array, dict]:
    del key
    bits, keep, fmt, gran = self.decode_action(action, params)
    drop = jnp.asarray(self.accuracy_fn(params.signal, params.block_index, bits, keep, fmt, gran),
                       jnp.float32).reshape(())
    ratio = storage_fraction(bits, keep, params.kernel_size)
    raw = raw_reward(drop, ratio, state.rewards, state.count, params)
    reward = raw / params.reward_scale
    state = EnvState(
        time=state.time + 1,
        rewards=state.rewards.at[state.count % STABILITY_WINDOW].set(raw),
        count=state.count + 1, ratio=ratio,
        drop=jnp.where(jnp.isfinite(drop), drop, BAD_DROP),
        last_reward=jnp.clip(reward, -10.0, 10.0))
    info: dict[str, Any] = {"drop": drop, "ratio": ratio, "raw_reward": raw,
                            "accuracy": params.baseline_accuracy - drop}
    return self.get_obs(state, params), state, reward, self.is_terminated(state, params), info

  @property
  def num_actions(self) -> int:
    return 4 * self.num_kernels

  def action_space(self, params: EnvParams | None = None) -> MultiDiscrete:
    del params
    return MultiDiscrete((NUM_BITS_IDX, NUM_PRUNE_IDX, len(FORMAT_TABLE), len(GRAN_TABLE))
                         * self.num_kernels)

  def observation_space(self, params: EnvParams | None = None) -> gspaces.Box:
    del params
    return gspaces.Box(jnp.asarray(self._obs_low), jnp.asarray(self._obs_high),
                       (self.obs_size,), jnp.float32)
