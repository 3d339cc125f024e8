"""The high-level (budget) environment: per-block compression budgets.

A gymnax environment for the High-Level Agent (reference §3). One action sets,
for each of the N blocks, a compression level 0..4; `decode_budgets` turns it into per-block
`Budgets` with the original's tables (§3.3):

* sensitivity shift: s > 0.7 -> level - 1, s < 0.3 -> level + 1, clipped to 0..4;
* target ratio `TARGET_RATIO[level]`, max pruning `min(MAX_PRUNE[f], goal)`,
  min bits `max(params.min_bits_table[f], goal)` at the floor level
  f = clip(level + params.floor_shift, 0, 4) (shift 0 is the original; the search
  raises it when it raises the goal; the table defaults to the original's
  `MIN_BITS`; `MIN_BITS_WIDE` reaches our 2-bit floor), accuracy
  allowance 0.5 / 1.0 / 2.0 points for s > 0.7 / 0.5 < s <= 0.7 / s <= 0.5,
  priority = s.

Reward (§3.5), each term with its weight from `EnvParams` (the defaults
reproduce the original's constants 10 / 1 / 50 / 1; the original ignored its
per-agent weights, so its three HLA members optimised one reward):

  R = -w_balance * Var(c)
      + w_sens * sum_i ([s_i > .7 & c_i > .3] 10 (c_i - .3) + [s_i < .3 & c_i < .2] 5 (.2 - c_i))
      - w_comp * |mean(c) - T|
      + w_dyn * R_dyn,
  R_dyn = -50 (D_prev - D*) [mean(c) < C_prev]  if D_prev > D*,
          +20 [mean(c) < C_prev]                 elif C_prev > T,  else 0,

divided by `reward_scale` so PPO sees O(1) rewards.

Observation, float32 `[5 + 2N]`, one fixed layout for reset and step (the
original reused slots 3 and 4 with other meanings after a step), every entry
clipped to `observation_space` bounds:

  [0] last_acc_drop / 10 in [-10, 10]   [1] last_compression in [0, 1]
  [2] cycle_progress in [0, 1]          [3] goal target ratio in [0, 1]
  [4] goal acc drop / 10 in [0, 1]
  [5 + 2i] s_i in [0, 1]                [6 + 2i] current target ratio of block i
                                        (0.25 at reset) in [0, 1]

Episodes last `max_steps_in_episode` (10) steps and end as *terminated* (as the
original, which never set truncated); `step` auto-resets.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import spaces as gspaces

from hirelc_jax.agents.spaces import FixedLengthEnv, MultiDiscrete

NUM_LEVELS = 5
TARGET_RATIO = (0.35, 0.30, 0.25, 0.20, 0.15)
MAX_PRUNE = (0.20, 0.30, 0.40, 0.60, 0.80)
MIN_BITS = (6, 6, 5, 4, 4)
MIN_BITS_WIDE = (6, 5, 4, 3, 2)
# Accuracy allowance by sensitivity band: s <= 0.5, 0.5 < s <= 0.7, s > 0.7.
ACC_ALLOWANCE = (2.0, 1.0, 0.5)
HIGH_SENS, MID_SENS, LOW_SENS = 0.7, 0.5, 0.3
RESET_TARGET = 0.25
OBS_HEAD = 5
DEFAULT_REWARD_SCALE = 20.0


@struct.dataclass
class Budgets:
  """Per-block budgets, every field `[N]` (or `[..., N]` under vmap).

  Attributes:
    target_ratio: float32 target storage fraction (lower is more compressed).
    min_bits: int32 lowest bit width the LLA may pick.
    max_prune: float32 largest pruned fraction of output neurons.
    max_acc_drop: float32 accuracy allowance in points.
    priority: float32 priority (the block sensitivity).
  """
  target_ratio: jax.Array
  min_bits: jax.Array
  max_prune: jax.Array
  max_acc_drop: jax.Array
  priority: jax.Array


@struct.dataclass
class EnvState:
  """Attributes: time (int32 steps taken), target_ratio (float32 `[N]` last decoded targets)."""
  time: jax.Array
  target_ratio: jax.Array


@struct.dataclass
class EnvParams:
  """Everything that may differ between HLA members or cycles; all leaves are arrays.

  Build with `budget_params` so dtypes are fixed and one compilation serves all.

  Attributes:
    sensitivity: float32 `[N]` block sensitivities in [0, 1].
    goal_target_ratio: float32 goal storage fraction T (0.25).
    goal_acc_drop: float32 goal accuracy drop D* in points (1.0).
    goal_min_bits: int32 global minimum bits, 2..8 (3).
    goal_max_prune: float32 global maximum pruned fraction (0.6).
    min_bits_table: int32 `[5]` min bits per level (`MIN_BITS`).
    floor_shift: int32 levels added to a block's level when its floors (min bits,
      max pruning) are looked up (0); the target ratio keeps the block's level.
    last_acc_drop: float32 D_prev, accuracy drop of the last cycle (0).
    last_compression: float32 C_prev, storage fraction of the last cycle (1).
    cycle_progress: float32 cycle / num_cycles in [0, 1].
    w_balance, w_sens, w_comp, w_dyn: float32 reward weights (10, 1, 50, 1).
    reward_scale: float32 divisor of the reward (`DEFAULT_REWARD_SCALE`).
    max_steps_in_episode: int32 episode length (10).
  """
  sensitivity: jax.Array
  goal_target_ratio: jax.Array
  goal_acc_drop: jax.Array
  goal_min_bits: jax.Array
  goal_max_prune: jax.Array
  min_bits_table: jax.Array
  floor_shift: jax.Array
  last_acc_drop: jax.Array
  last_compression: jax.Array
  cycle_progress: jax.Array
  w_balance: jax.Array
  w_sens: jax.Array
  w_comp: jax.Array
  w_dyn: jax.Array
  reward_scale: jax.Array
  max_steps_in_episode: jax.Array


_INT_FIELDS = ("goal_min_bits", "min_bits_table", "floor_shift", "max_steps_in_episode")


def budget_params(num_blocks: int, *, sensitivity=None, goal_target_ratio=0.25,
                  goal_acc_drop=1.0, goal_min_bits=3, goal_max_prune=0.6,
                  min_bits_table=MIN_BITS, floor_shift=0, last_acc_drop=0.0, last_compression=1.0,
                  cycle_progress=0.0, w_balance=10.0, w_sens=1.0, w_comp=50.0, w_dyn=1.0,
                  reward_scale=DEFAULT_REWARD_SCALE, max_steps_in_episode=10) -> EnvParams:
  """Builds `EnvParams` with fixed dtypes (sensitivity defaults to 0.5 everywhere).

  Raises:
    ValueError: on a sensitivity of the wrong length, a table that is not 5
      long, goal_min_bits outside 2..8, floor_shift outside 0..4 or a
      non-positive reward_scale.
  """
  sens = np.full((num_blocks,), 0.5) if sensitivity is None else np.asarray(sensitivity)
  if sens.shape != (num_blocks,):
    raise ValueError(f"sensitivity has shape {sens.shape}, expected ({num_blocks},)")
  if np.shape(min_bits_table) != (NUM_LEVELS,):
    raise ValueError(f"min_bits_table must have {NUM_LEVELS} entries, got {min_bits_table!r}")
  if not 2 <= int(goal_min_bits) <= 8:
    raise ValueError(f"goal_min_bits={goal_min_bits} is out of range; use 2..8")
  if not 0 <= int(floor_shift) < NUM_LEVELS:
    raise ValueError(f"floor_shift={floor_shift} is out of range; use 0..{NUM_LEVELS - 1}")
  if float(reward_scale) <= 0:
    raise ValueError(f"reward_scale must be positive, got {reward_scale}")
  values = dict(sensitivity=sens, goal_target_ratio=goal_target_ratio,
                goal_acc_drop=goal_acc_drop, goal_min_bits=goal_min_bits,
                goal_max_prune=goal_max_prune, min_bits_table=min_bits_table,
                floor_shift=floor_shift,
                last_acc_drop=last_acc_drop, last_compression=last_compression,
                cycle_progress=cycle_progress, w_balance=w_balance, w_sens=w_sens,
                w_comp=w_comp, w_dyn=w_dyn, reward_scale=reward_scale,
                max_steps_in_episode=max_steps_in_episode)
  return EnvParams(**{k: jnp.asarray(v, jnp.int32 if k in _INT_FIELDS else jnp.float32)
                      for k, v in values.items()})


def shifted_level(level, sensitivity) -> jax.Array:
  """Applies the sensitivity shift: s > 0.7 -> level - 1, s < 0.3 -> level + 1, clipped.

  Args:
    level: int `[N]` raw levels 0..4.
    sensitivity: float `[N]`.

  Returns:
    int32 `[N]` levels in 0..4.
  """
  shift = (sensitivity < LOW_SENS).astype(jnp.int32) - (sensitivity > HIGH_SENS).astype(jnp.int32)
  return jnp.clip(jnp.asarray(level, jnp.int32) + shift, 0, NUM_LEVELS - 1)


def decode_budgets(action: jax.Array, sensitivity: jax.Array, params: EnvParams) -> Budgets:
  """Decodes an HLA action into per-block budgets (reference §3.3); pure and jittable.

  Args:
    action: int `[N]`, a level per block; out-of-range entries are clipped.
    sensitivity: float32 `[N]` block sensitivities.
    params: `EnvParams` (goal limits and the min-bits table).

  Returns:
    `Budgets` of `[N]` arrays.
  """
  action = jnp.asarray(action, jnp.int32).reshape(-1)
  s = jnp.asarray(sensitivity, jnp.float32)
  level = shifted_level(jnp.clip(action, 0, NUM_LEVELS - 1), s)
  floor = jnp.clip(level + params.floor_shift, 0, NUM_LEVELS - 1)
  band = (s > MID_SENS).astype(jnp.int32) + (s > HIGH_SENS).astype(jnp.int32)
  return Budgets(
      target_ratio=jnp.take(jnp.asarray(TARGET_RATIO, jnp.float32), level),
      min_bits=jnp.maximum(jnp.take(params.min_bits_table, floor), params.goal_min_bits),
      max_prune=jnp.minimum(jnp.take(jnp.asarray(MAX_PRUNE, jnp.float32), floor),
                            params.goal_max_prune),
      max_acc_drop=jnp.take(jnp.asarray(ACC_ALLOWANCE, jnp.float32), band),
      priority=s)


def reward_terms(target_ratio: jax.Array, params: EnvParams) -> dict[str, jax.Array]:
  """The four §3.5 terms at unit weight (multiply by `w_*` for the reward).

  Args:
    target_ratio: float32 `[N]` decoded targets c_i.
    params: `EnvParams`.

  Returns:
    dict of float32 scalars: balance (-Var c), sens (the sensitivity bonus),
    comp (-|mean c - T|) and dyn (the feedback term, ±50 / +20 included).
  """
  c, s = target_ratio, params.sensitivity
  mean = jnp.mean(c)
  sens = jnp.sum(jnp.where((s > HIGH_SENS) & (c > 0.3), 10.0 * (c - 0.3), 0.0)
                 + jnp.where((s < LOW_SENS) & (c < 0.2), 5.0 * (0.2 - c), 0.0))
  compressed_more = mean < params.last_compression
  over = params.last_acc_drop > params.goal_acc_drop
  dyn = jnp.where(over, jnp.where(compressed_more,
                                  -50.0 * (params.last_acc_drop - params.goal_acc_drop), 0.0),
                  jnp.where((params.last_compression > params.goal_target_ratio) & compressed_more,
                            20.0, 0.0))
  return dict(balance=-jnp.var(c), sens=sens, comp=-jnp.abs(mean - params.goal_target_ratio),
              dyn=dyn)


def budget_reward(target_ratio: jax.Array, params: EnvParams) -> jax.Array:
  """Weighted, normalised HLA reward: `sum_j w_j * term_j / reward_scale` (float32 scalar)."""
  t = reward_terms(target_ratio, params)
  raw = (params.w_balance * t["balance"] + params.w_sens * t["sens"]
         + params.w_comp * t["comp"] + params.w_dyn * t["dyn"])
  return raw / params.reward_scale


class BudgetEnv(FixedLengthEnv):
  """The HLA environment for `num_blocks` blocks (static structure only)."""

  def __init__(self, num_blocks: int):
    super().__init__()
    if int(num_blocks) < 1:
      raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    self.num_blocks = int(num_blocks)
    n = self.num_blocks
    low = np.concatenate([[-10.0, 0.0, 0.0, 0.0, 0.0], np.zeros(2 * n)]).astype(np.float32)
    high = np.concatenate([[10.0, 1.0, 1.0, 1.0, 1.0], np.ones(2 * n)]).astype(np.float32)
    self._obs_low, self._obs_high = low, high

  @property
  def default_params(self) -> EnvParams:
    return budget_params(self.num_blocks)

  @property
  def obs_size(self) -> int:
    return OBS_HEAD + 2 * self.num_blocks

  def get_obs(self, state: EnvState, params: EnvParams, key=None) -> jax.Array:
    """The fixed-layout observation (module docstring), float32 `[5 + 2N]`."""
    del key
    head = jnp.stack([params.last_acc_drop / 10.0, params.last_compression,
                      params.cycle_progress, params.goal_target_ratio,
                      params.goal_acc_drop / 10.0])
    blocks = jnp.stack([params.sensitivity, state.target_ratio], axis=-1).reshape(-1)
    obs = jnp.concatenate([head, blocks]).astype(jnp.float32)
    return jnp.clip(obs, self._obs_low, self._obs_high)

  def reset_env(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
    del key
    state = EnvState(time=jnp.zeros((), jnp.int32),
                     target_ratio=jnp.full((self.num_blocks,), RESET_TARGET, jnp.float32))
    return self.get_obs(state, params), state

  def step_env(self, key: jax.Array, state: EnvState, action: jax.Array,
               params: EnvParams) -> tuple[jax.Array, EnvState, jax.Array, jax.Array, dict]:
    del key
    budgets = decode_budgets(action, params.sensitivity, params)
    reward = budget_reward(budgets.target_ratio, params)
    state = EnvState(time=state.time + 1, target_ratio=budgets.target_ratio)
    info: dict[str, Any] = {"mean_target": jnp.mean(budgets.target_ratio)}
    return self.get_obs(state, params), state, reward, self.is_terminated(state, params), info

  @property
  def num_actions(self) -> int:
    return self.num_blocks

  def action_space(self, params: EnvParams | None = None) -> MultiDiscrete:
    del params
    return MultiDiscrete((NUM_LEVELS,) * self.num_blocks)

  def observation_space(self, params: EnvParams | None = None) -> gspaces.Box:
    del params
    return gspaces.Box(jnp.asarray(self._obs_low), jnp.asarray(self._obs_high),
                       (self.obs_size,), jnp.float32)
