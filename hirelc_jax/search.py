"""The hierarchical search: HLA budgets, vmapped LLA ensembles, and their decisions.

Pure functions over explicit state. The high-level agent (HLA) is an ensemble
of learners on `BudgetEnv`; the low-level agents (LLA) are, for every block,
an ensemble on `KernelEnv`, all blocks and members trained in one compiled
call per algorithm (PPO members and A2C members differ in static structure).

Units: the HLA acts in the original's table units (target ratio 0.15-0.35 with
the goal at 0.25). Its decoded ratios are rescaled so that level 2 equals the
goal's storage fraction 1/target_compression before they reach the LLA. When a
cycle's goal is raised above the user's (`search.escalate`), the blocks' floors
(min bits, max pruning) are looked up one level higher per doubling (`floor_shift`),
or the raised goal could not be reached: the LLA already sits on its floors.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from hirelc_jax.agents import budget_env, ensemble, kernel_env, ppo
from hirelc_jax.compression import codes
from hirelc_jax.compression.kernel_map import KernelMap
from hirelc_jax.compression.plan import CompressionPlan
from hirelc_jax.config import AgentConfig, Config

TABLE_GOAL = budget_env.RESET_TARGET  # the HLA table's goal ratio (0.25)


def learner_config(agent: AgentConfig, algorithm: str) -> ppo.LearnerConfig:
  """SB3-style settings for one member of an ensemble."""
  if algorithm == "a2c":
    return ppo.sb3_a2c(lr=2 * agent.lr, n_steps=agent.n_steps, n_envs=agent.n_envs,
                       ent_coef=agent.ent_coef, gamma=agent.discount)
  batch = agent.n_steps * agent.n_envs
  return ppo.sb3_ppo(lr=agent.lr, n_steps=agent.n_steps, n_envs=agent.n_envs,
                     minibatch_size=min(32, batch), ent_coef=agent.ent_coef,
                     gamma=agent.discount)


def groups(algorithms) -> dict[str, np.ndarray]:
  """Member indices per algorithm, e.g. {'ppo': [0, 2], 'a2c': [1]}."""
  return {a: np.flatnonzero(np.array(algorithms) == a) for a in ("ppo", "a2c")
          if a in algorithms}


def take(tree, index, axis: int = 0):
  """Selects `index` (an int array) along `axis` of every leaf."""
  return jax.tree.map(lambda x: jnp.take(x, index, axis=axis), tree)


def serial_threefry(fn: Callable) -> Callable:
  """`fn` called with `jax_threefry_partitionable` off. The agents draw random numbers at every
  step; XLA compiles the partitionable threefry (JAX's default) into far more code, and these
  programs are never sharded. Measured, a cold vit_mu smoke run on the 2-core CPU: the agents'
  first cycle (mostly compiling) 165 s with it on, 91 s off
  (`benchmarks/results/compile_time.json`)."""
  @functools.wraps(fn)
  def call(*args, **kwargs):
    with jax.threefry_partitionable(False):
      return fn(*args, **kwargs)
  return call


@struct.dataclass
class Ensemble:
  """Runner states of one ensemble, one entry per algorithm group.

  runners[a] has leading axes [members_a] (HLA) or [blocks, members_a] (LLA).
  weights: float32 [M] (HLA) or [B, M] (LLA) member weights for the vote.
  """
  runners: dict
  weights: jax.Array


class EnsembleTrainer:
  """Trains and queries one ensemble: jitted init/update per algorithm group.

  Env params are batched [M] (HLA) or [B, M] (LLA, `nested=True`); the LLA's
  accuracy signal is shared across the batch through `in_axes_fn`.
  """

  def __init__(self, env, agent: AgentConfig, *, nested: bool,
               in_axes_fn: Callable[[Any], Any] | None = None):
    self.env, self.agent, self.nested = env, agent, nested
    self.groups = groups(agent.algorithms)
    self.member_axis = 1 if nested else 0
    in_axes_fn = in_axes_fn or (lambda params: 0)
    self.in_axes_fn = in_axes_fn
    self.learners = {}
    for algo in self.groups:  # one compiled update per algorithm, repeated in cycle 1
      self.learners[algo] = ppo.make_learner(learner_config(agent, algo), env,
                                             agent.updates_per_cycle)
    self.first_repeats = max(1, round(agent.updates_first / agent.updates_per_cycle))
    self.network = ppo.make_network(learner_config(agent, agent.algorithms[0]), env)

    def batched(fn):
      """vmap fn(key_or_runner, env_params) over members (and blocks)."""
      def wrap(params):
        axes = in_axes_fn(params)
        inner = jax.vmap(fn, in_axes=(0, axes))
        return jax.vmap(inner, in_axes=(0, axes)) if nested else inner
      return wrap

    env_, network = env, self.network

    def policy_action(runner, env_params, salt, deterministic):
      obs, _ = env_.reset(runner.key, env_params)
      return ppo.act(network, runner.train_state.params, obs, jax.random.fold_in(runner.key, salt),
                     deterministic=deterministic)

    def sampled(runner, params, salts):  # [S] salts -> actions [S, ..., M, D]
      draw = lambda salt: batched(lambda r, p: policy_action(r, p, salt, False))(params)(runner, params)
      return jax.vmap(draw)(salts)

    self._init = {a: serial_threefry(jax.jit(lambda k, p, a=a: batched(self.learners[a].init)(p)(k, p)))
                  for a in self.groups}
    self._update = {a: serial_threefry(jax.jit(lambda r, p, a=a: batched(self.learners[a].update)(p)(r, p)))
                    for a in self.groups}
    self._greedy = serial_threefry(jax.jit(
        lambda r, p: batched(lambda r_, p_: policy_action(r_, p_, 0, True))(p)(r, p)))
    self._sampled = serial_threefry(jax.jit(sampled))

  def _members(self, params, idx):
    """The env params of members `idx` (fields shared across the batch stay whole)."""
    def select(axis, subtree):
      return subtree if axis is None else take(subtree, idx, axis=self.member_axis)
    return jax.tree.map(select, self.in_axes_fn(params), params, is_leaf=lambda x: x is None)

  def member(self, params, index: int = 0):
    """The env params of one member (for decoding, which does not depend on weights)."""
    return self._members(params, jnp.asarray(index))

  def init(self, key, params) -> Ensemble:
    """Fresh learners for every member; uniform vote weights."""
    lead = lead_shape(params, self.nested)
    runners = {}
    for i, (algo, idx) in enumerate(self.groups.items()):
      sub = self._members(params, idx)
      shape = lead[:-1] + (len(idx),)
      keys = jax.random.split(jax.random.fold_in(key, i), int(np.prod(shape))).reshape(shape)
      runners[algo] = self._init[algo](keys, sub)
    return Ensemble(runners, jnp.full(lead, 1.0 / lead[-1], jnp.float32))

  def train(self, ens: Ensemble, params, *, first: bool) -> tuple[Ensemble, dict]:
    """Runs one cycle's updates for every group; returns the mean reward per group.

    The vote weights then follow each member's realised reward in its last
    update (Hedge with a 10% fixed share, so no member is silenced for good).
    """
    runners, metrics = {}, {}
    rewards = jnp.zeros(ens.weights.shape, jnp.float32)
    for algo, idx in self.groups.items():
      runner, sub = ens.runners[algo], self._members(params, idx)
      for _ in range(self.first_repeats if first else 1):
        runner, m = self._update[algo](runner, sub)
      runners[algo], metrics[algo] = runner, float(jnp.nanmean(m["reward"]))
      rewards = rewards.at[..., idx].set(m["reward"][..., -1])
    update = functools.partial(ensemble.update_member_weights, temperature=1.0, share=0.1)
    weights = (jax.vmap(update) if self.nested else update)(ens.weights, rewards)
    return ens.replace(runners=runners, weights=weights), metrics

  def greedy_actions(self, ens: Ensemble, params) -> jax.Array:
    """Each member's deterministic action at a reset observation: int32 [..., M, D]."""
    return self._gather(self._greedy, ens, params)

  def sampled_actions(self, ens: Ensemble, params, count: int) -> jax.Array:
    """`count` actions sampled from each member's policy: int32 [count, ..., M, D]."""
    salts = 1 + jnp.arange(count)  # salt 0 is the greedy action's
    return self._gather(lambda r, p: self._sampled(r, p, salts), ens, params, lead=(count,))

  def _gather(self, fn, ens: Ensemble, params, lead=()) -> jax.Array:
    """Runs fn(runner, member params) for every algorithm group into one [..., M, D] array."""
    out = None
    for algo, idx in self.groups.items():
      acts = fn(ens.runners[algo], self._members(params, idx))
      if out is None:
        out = jnp.zeros(lead + lead_shape(params, self.nested) + acts.shape[-1:], jnp.int32)
      out = out.at[..., idx, :].set(acts)
    return out


def lead_shape(params, nested: bool) -> tuple[int, ...]:
  """Leading batch shape of batched env params: (M,) or (B, M)."""
  leaf = params.block_index if hasattr(params, "block_index") else params.w_comp
  return tuple(leaf.shape[:2]) if nested else tuple(leaf.shape[:1])


def stack_params(items):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *items)


def goal_fraction(config: Config) -> float:
  """The storage fraction the goal asks for (1 / target compression)."""
  return 1.0 / config.goal.target_compression


def floor_shift(config: Config, cycle_config: Config) -> int:
  """Levels the HLA's floors move up this cycle: one per doubling of the cycle's goal
  over the user's, rounded (0 with `search.escalate_floors=False` or `search.floors="goal"`),
  at most 4."""
  if not config.search.escalate_floors or config.search.floors == "goal":
    return 0
  raised = cycle_config.goal.target_compression / config.goal.target_compression
  return int(np.clip(np.floor(np.log2(raised) + 0.5), 0, budget_env.NUM_LEVELS - 1))


def hla_params(config: Config, sensitivity, *, shift=0, last_acc_drop=0.0, last_ratio=None,
               progress=0.0) -> budget_env.EnvParams:
  """HLA env params for every member [M]; members differ in their compression weight.

  shift is the `floor_shift`; last_ratio the last cycle's honest storage fraction,
  rescaled to table units.
  """
  goal = config.goal
  table = budget_env.MIN_BITS_WIDE if goal.min_bits < 4 else budget_env.MIN_BITS
  last = 1.0 if last_ratio is None else TABLE_GOAL * last_ratio / goal_fraction(config)
  members = [budget_env.budget_params(
      len(sensitivity), sensitivity=np.asarray(sensitivity), goal_target_ratio=TABLE_GOAL,
      goal_acc_drop=goal.target_accuracy_drop, goal_min_bits=goal.min_bits,
      goal_max_prune=goal.max_prune, min_bits_table=table, floor_shift=shift, last_acc_drop=last_acc_drop,
      last_compression=min(last, 1.0), cycle_progress=progress, w_comp=50.0 * beta)
      for beta in config.hla.betas]
  return stack_params(members)


def decide_budgets(trainer: EnsembleTrainer, ens: Ensemble, params, config: Config):
  """The ensemble's voted budgets, target ratios rescaled to the goal's units, floors by
  `with_floors`."""
  actions = trainer.greedy_actions(ens, params)                       # [M, N]
  nvec = tuple(trainer.env.action_space(None).nvec)
  voted = ensemble.vote(actions, ens.weights, nvec)
  member0 = trainer.member(params)
  budgets = budget_env.decode_budgets(voted, member0.sensitivity, member0)
  scale = goal_fraction(config) / TABLE_GOAL
  return with_floors(budgets.replace(target_ratio=budgets.target_ratio * scale), config), actions


def with_floors(budgets: budget_env.Budgets, config: Config) -> budget_env.Budgets:
  """The HLA's budgets with `search.floors`' floors: the goal's min bits and max pruning for
  every block ("goal"), or the HLA's per-level ones as decoded ("hla")."""
  if config.search.floors == "hla":
    return budgets
  goal = config.goal
  return budgets.replace(min_bits=jnp.full_like(budgets.min_bits, goal.min_bits),
                         max_prune=jnp.full_like(budgets.max_prune, goal.max_prune))


def goal_budgets(config: Config, num_blocks: int) -> budget_env.Budgets:
  """The budget without a high-level agent: the goal itself for every block."""
  goal, full = config.goal, lambda v, dt: jnp.full((num_blocks,), v, dt)
  return budget_env.Budgets(
      target_ratio=full(goal_fraction(config), jnp.float32), min_bits=full(goal.min_bits, jnp.int32),
      max_prune=full(goal.max_prune, jnp.float32),
      max_acc_drop=full(goal.target_accuracy_drop, jnp.float32),
      priority=full(0.5, jnp.float32))


def kernel_sizes(kmap: KernelMap) -> tuple[np.ndarray, np.ndarray]:
  """Weights and output neurons per plan slot, [B, K] (0 where a slot is empty)."""
  size = np.zeros(kmap.plan_shape, np.float32)
  out = np.ones(kmap.plan_shape, np.int32)
  for e in kmap.entries:
    size[e.block, e.kernel] = np.prod(e.shape)
    out[e.block, e.kernel] = e.num_out
  return size, out


def lla_params(config: Config, budgets, kmap: KernelMap, kernel_sensitivity, signal, *,
               baseline_accuracy: float, surrogate_ready: bool) -> kernel_env.EnvParams:
  """LLA env params batched [B, M]: every block's budget for every member's weights."""
  b, k = kmap.plan_shape
  m = len(config.lla.algorithms)
  grid = lambda x: np.broadcast_to(np.asarray(x)[:, None], (b, m) + np.shape(x)[1:])
  size, num_out = kernel_sizes(kmap)
  block_sens = np.asarray(kernel_sensitivity).max(-1)
  return kernel_env.kernel_params(
      k, block_index=grid(np.arange(b)), num_blocks=np.full((b, m), b),
      sensitivity=grid(block_sens), kernel_sensitivity=grid(np.asarray(kernel_sensitivity)),
      target_ratio=grid(budgets.target_ratio), min_bits=grid(budgets.min_bits),
      max_bits=np.full((b, m), config.goal.max_bits), max_prune=grid(budgets.max_prune),
      max_acc_drop=grid(budgets.max_acc_drop), kernel_size=grid(size), num_out=grid(num_out),
      alpha=np.full((b, m), config.lla.alpha), beta=np.broadcast_to(config.lla.betas, (b, m)),
      gamma=np.full((b, m), config.lla.gamma),
      drop_unit=np.full((b, m), config.goal.target_accuracy_drop if config.search.accuracy_unit == "target" else 1.0),
      baseline_accuracy=np.full((b, m), baseline_accuracy),
      surrogate_ready=np.full((b, m), float(surrogate_ready)),
      max_steps_in_episode=np.full((b, m), 20), signal=signal)


def vote_blocks(trainer: EnsembleTrainer, ens: Ensemble, actions) -> jax.Array:
  """[B, M, D] member actions -> [B, D] weighted vote per block."""
  nvec = tuple(trainer.env.action_space(None).nvec)
  return jax.vmap(ensemble.vote, in_axes=(0, 0, None))(actions, ens.weights, nvec)


def decode_plans(trainer: EnsembleTrainer, actions, params) -> CompressionPlan:
  """Block actions [N, B, D] decoded into plans [N, B, K]."""
  per_block = trainer.member(params)
  decode = jax.vmap(trainer.env.decode_action, in_axes=(0, trainer.in_axes_fn(per_block)))
  bits, keep, fmt, gran = jax.vmap(lambda a: decode(a, per_block))(actions)
  return CompressionPlan(bits=bits.astype(jnp.int32), keep=keep.astype(jnp.float32),
                         fmt=fmt.astype(jnp.int32), gran=gran.astype(jnp.int32))


def candidate_plans(trainer: EnsembleTrainer, ens: Ensemble, params, samples: int) -> CompressionPlan:
  """The LLA ensemble's plans for screening: [(1 + samples) * (1 + M), B, K].

  Index 0 is the vote of the members' greedy plans (the ensemble's decision), then every
  member's greedy plan, then for each of `samples` draws from the stochastic
  policies the vote of the draws and every member's draw.
  """
  greedy = trainer.greedy_actions(ens, params)[None]                  # [1, B, M, D]
  drawn = trainer.sampled_actions(ens, params, samples)               # [S, B, M, D]
  actions = jnp.concatenate([greedy, drawn])                          # [1 + S, B, M, D]
  voted = jax.vmap(lambda a: vote_blocks(trainer, ens, a))(actions)   # [1 + S, B, D]
  members = jnp.moveaxis(actions, 2, 1)                               # [1 + S, M, B, D]
  rows = jnp.concatenate([voted[:, None], members], axis=1)           # [1 + S, 1 + M, B, D]
  return decode_plans(trainer, rows.reshape((-1,) + rows.shape[2:]), params)


def random_plans(key, count: int, kmap: KernelMap, config: Config) -> CompressionPlan:
  """Plans inside the goal's limits for the warm-up: [count, B, K].

  The first half is uniform over the whole action space (most of it collapses
  the model); the second half lies near uniform plans, where good plans are:
  a common bit width per plan with per-kernel jitter of one bit, mostly
  per-channel granularity, and light pruning on some kernels. Both halves
  teach the surrogate and calibrate the error table.
  """
  goal = config.goal
  shape = (count,) + kmap.plan_shape
  kb, kk, kf, kg, kn = jax.random.split(key, 5)
  bits = jax.random.randint(kb, shape, goal.min_bits, goal.max_bits + 1)
  keep = jax.random.uniform(kk, shape, minval=1.0 - goal.max_prune, maxval=1.0)
  fmt = jax.random.randint(kf, shape, 0, 2)
  gran = jax.random.randint(kg, shape, 0, 4)
  near = jnp.arange(count)[:, None, None] >= count // 2
  k1, k2, k3, k4, k5 = jax.random.split(kn, 5)
  level = jax.random.randint(k1, (count, 1, 1), goal.min_bits, goal.max_bits + 1)
  near_bits = jnp.clip(level + jax.random.randint(k2, shape, -1, 2), goal.min_bits, goal.max_bits)
  near_gran = jnp.where(jax.random.uniform(k3, shape) < 0.75, codes.PER_CHANNEL, gran)
  light = 1.0 - jax.random.uniform(k4, shape, maxval=goal.max_prune / 2)
  near_keep = jnp.where(jax.random.uniform(k5, shape) < 0.7, 1.0, light)
  bits, gran = jnp.where(near, near_bits, bits), jnp.where(near, near_gran, gran)
  keep = jnp.where(near, near_keep, keep)
  if goal.quantization_type != "mixed":
    fmt = jnp.full(shape, codes.INT if goal.quantization_type == "int" else codes.FLOAT)
  if goal.strategy is not None:
    gran = jnp.full(shape, codes.granularity_code(goal.strategy))
  if not goal.pruning:
    keep = jnp.ones(shape)
  if not goal.quantization:
    bits = jnp.full(shape, codes.FP32_BITS)
  return CompressionPlan(bits=bits.astype(jnp.int32), keep=keep.astype(jnp.float32),
                         fmt=fmt.astype(jnp.int32), gran=gran.astype(jnp.int32))
