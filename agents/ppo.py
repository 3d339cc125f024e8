"""PPO and A2C as two settings of one jittable, vmappable learner.

The learner follows purejaxrl's shape (one `train(key, env_params)` function:
`lax.scan` over updates of rollout -> GAE -> epochs -> minibatches) with the
update rules of stable-baselines3, which the original HiReLC used:

* PPO: clipped surrogate, unclipped value MSE, entropy bonus, per-minibatch
  advantage normalisation (unbiased std, +1e-8), Adam(eps=1e-5), global-norm
  gradient clipping.
* A2C: `-mean(adv * logp)`, same value and entropy terms, one gradient step on
  the whole rollout, RMSprop(alpha=0.99, eps=1e-5, eps outside the sqrt as in
  torch), no advantage normalisation, GAE lambda 1.

The algorithm, optimizer, rollout length and minibatch layout are static
(`LearnerConfig`); the scalar coefficients can be traced (`Hyperparams`), so an
ensemble with per-member learning rates or entropy bonuses is one vmap. PPO and
A2C members differ in static structure and are therefore two vmapped calls.
Time-limit truncations are bootstrapped as SB3 does: `r += gamma * V(s_final)`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from hirelc_jax.agents.networks import ActorCritic

ALGORITHMS = ("ppo", "a2c")
OPTIMIZERS = ("adam", "rmsprop")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LearnerConfig:
  """Static learner settings; the defaults are SB3's PPO defaults.

  `minibatch_size` is SB3's `batch_size`; None means the whole rollout
  (`n_steps * n_envs`, which it must divide). `clip` is ignored by A2C. The
  network is `actor_hidden`/`critic_hidden` MLPs with `activation`.
  """
  algorithm: str = "ppo"
  lr: float = 3e-4
  n_steps: int = 2048
  n_envs: int = 1
  n_epochs: int = 10
  minibatch_size: int | None = 64
  gamma: float = 0.99
  gae_lambda: float = 0.95
  clip: float = 0.2
  vf_coef: float = 0.5
  ent_coef: float = 0.0
  max_grad_norm: float = 0.5
  normalize_advantage: bool = True
  optimizer: str = "adam"
  adam_eps: float = 1e-5
  rmsprop_alpha: float = 0.99
  rmsprop_eps: float = 1e-5
  actor_hidden: tuple[int, ...] = (64, 64)
  critic_hidden: tuple[int, ...] = (64, 64)
  activation: str = "tanh"

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS:
      raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
    if self.batch_size % self.mb_size:
      raise ValueError(f"minibatch_size {self.mb_size} must divide n_steps * n_envs = "
                       f"{self.batch_size}")
    if self.algorithm == "a2c" and (self.n_epochs != 1 or self.num_minibatches != 1):
      raise ValueError("a2c is on-policy: it needs n_epochs=1 and one minibatch")

  @property
  def batch_size(self) -> int:
    return self.n_steps * self.n_envs

  @property
  def mb_size(self) -> int:
    return self.batch_size if self.minibatch_size is None else self.minibatch_size

  @property
  def num_minibatches(self) -> int:
    return self.batch_size // self.mb_size


def sb3_ppo(**overrides) -> LearnerConfig:
  """SB3 PPO defaults (lr 3e-4, 10 epochs, gamma 0.99, lambda 0.95, clip 0.2,
  vf 0.5, ent 0.0, grad-norm 0.5, normalised advantages, Adam eps 1e-5).

  The original HiReLC overrides ent_coef=0.01 and its own lr/n_steps/batch.
  """
  return dataclasses.replace(LearnerConfig(), **overrides)


def sb3_a2c(**overrides) -> LearnerConfig:
  """SB3 A2C defaults (lr 7e-4, n_steps 5, gamma 0.99, lambda 1.0, vf 0.5,
  ent 0.0, grad-norm 0.5, RMSprop alpha 0.99 eps 1e-5, no normalisation)."""
  base = LearnerConfig(algorithm="a2c", lr=7e-4, n_steps=5, n_epochs=1, minibatch_size=None,
                       gae_lambda=1.0, clip=math.inf, normalize_advantage=False,
                       optimizer="rmsprop")
  return dataclasses.replace(base, **overrides)


@struct.dataclass
class Hyperparams:
  """Traceable scalar coefficients (vmap them for per-member diversity)."""
  lr: jax.Array
  clip: jax.Array
  vf_coef: jax.Array
  ent_coef: jax.Array
  gamma: jax.Array
  gae_lambda: jax.Array

  @classmethod
  def from_config(cls, config: LearnerConfig) -> Hyperparams:
    f = lambda x: jnp.asarray(x, jnp.float32)
    return cls(lr=f(config.lr), clip=f(config.clip), vf_coef=f(config.vf_coef),
               ent_coef=f(config.ent_coef), gamma=f(config.gamma),
               gae_lambda=f(config.gae_lambda))


@struct.dataclass
class TrainState:
  """Network parameters and optimizer state (the optimizer itself is static)."""
  params: Any
  opt_state: Any


@struct.dataclass
class RunnerState:
  """Everything `train` carries between updates.

  Attributes:
    train_state: parameters and optimizer state.
    env_state: batched env state, leading axis `[n_envs]`.
    last_obs: `[n_envs, obs_dim]` observation to act on next.
    key: PRNG key.
    episode_return: `[n_envs]` return of the unfinished episodes so far.
  """
  train_state: TrainState
  env_state: Any
  last_obs: jax.Array
  key: jax.Array
  episode_return: jax.Array


class Transition(NamedTuple):
  """One rollout step for all envs; stacked by scan to `[T, n_envs, ...]`."""
  obs: jax.Array          # [N, obs_dim]
  action: jax.Array       # [N, D] int32
  reward: jax.Array       # [N] (truncation-bootstrapped)
  done: jax.Array         # [N] bool: episode ended at this step
  value: jax.Array        # [N]
  log_prob: jax.Array     # [N]
  final_return: jax.Array  # [N] episode return where done, else 0


# ----------------------------------------------------------------- learner math


def gae(r_t, v_t, done_t, last_value, gamma, lam):
  """Generalised advantage estimation on one unbatched trajectory.

  With `v_{T} = last_value` and `m_t = 1 - done_t` (done_t: the episode ended
  at step t, so s_{t+1} belongs to a new episode):
    δ_t = r_t + γ m_t v_{t+1} - v_t,   A_t = δ_t + γ λ m_t A_{t+1},
    R_t = A_t + v_t   (the value target, as in SB3).

  Args:
    r_t: `[T]` rewards.
    v_t: `[T]` values of the observations acted on.
    done_t: `[T]` bool or {0, 1} episode-end flags.
    last_value: scalar value of the observation after the last step.
    gamma: discount (scalar, may be traced).
    lam: GAE lambda (scalar, may be traced).

  Returns:
    `(adv_t, ret_t)`, each `[T]` float32.
  """
  chex.assert_rank([r_t, v_t, done_t, last_value], [1, 1, 1, 0])
  chex.assert_equal_shape([r_t, v_t, done_t])
  m_t = 1.0 - done_t.astype(jnp.float32)
  v_tp1 = jnp.concatenate([v_t[1:], last_value[None]])
  delta_t = r_t + gamma * m_t * v_tp1 - v_t

  def step(adv_tp1, x):
    delta, m = x
    adv = delta + gamma * lam * m * adv_tp1
    return adv, adv

  _, adv_t = jax.lax.scan(step, jnp.zeros((), jnp.float32), (delta_t, m_t), reverse=True)
  return adv_t, adv_t + v_t


def normalize(adv_t: jax.Array) -> jax.Array:
  """SB3 advantage standardisation: `(A - mean) / (std_unbiased + 1e-8)`."""
  if adv_t.size < 2:
    return adv_t
  return (adv_t - adv_t.mean()) / (adv_t.std(ddof=1) + 1e-8)


def ppo_loss(logp_t, logp_old_t, adv_t, v_t, ret_t, entropy_t, *, clip, vf_coef, ent_coef):
  """PPO-clip loss (SB3 form, value loss unclipped).

    ρ_t = exp(logp_t - logp_old_t),
    L = -mean(min(ρ_t A_t, clip(ρ_t, 1-ε, 1+ε) A_t)) + c_v mean((R_t - v_t)²)
        - c_e mean(H_t).

  Args:
    logp_t, logp_old_t, adv_t, v_t, ret_t, entropy_t: `[B]` arrays (advantages
      already normalised if wanted).
    clip, vf_coef, ent_coef: scalars (may be traced; `clip=inf` disables it).

  Returns:
    `(loss, pieces)` with pieces `policy_loss, value_loss, entropy, approx_kl,
    clip_fraction`.
  """
  chex.assert_rank([logp_t, logp_old_t, adv_t, v_t, ret_t, entropy_t], 1)
  chex.assert_equal_shape([logp_t, logp_old_t, adv_t, v_t, ret_t, entropy_t])
  log_ratio = logp_t - logp_old_t
  ratio = jnp.exp(log_ratio)
  surrogate = jnp.minimum(ratio * adv_t, jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * adv_t)
  policy_loss = -jnp.mean(surrogate)
  value_loss, entropy = jnp.mean((ret_t - v_t) ** 2), jnp.mean(entropy_t)
  loss = policy_loss + vf_coef * value_loss - ent_coef * entropy
  pieces = dict(policy_loss=policy_loss, value_loss=value_loss, entropy=entropy,
                approx_kl=jnp.mean((ratio - 1.0) - log_ratio),
                clip_fraction=jnp.mean((jnp.abs(ratio - 1.0) > clip).astype(jnp.float32)))
  return loss, pieces


def a2c_loss(logp_t, adv_t, v_t, ret_t, entropy_t, *, vf_coef, ent_coef):
  """A2C loss (SB3 form): `-mean(A_t logp_t) + c_v mean((R_t - v_t)²) - c_e mean(H_t)`.

  Args:
    logp_t, adv_t, v_t, ret_t, entropy_t: `[B]` arrays.
    vf_coef, ent_coef: scalars (may be traced).

  Returns:
    `(loss, pieces)` with pieces `policy_loss, value_loss, entropy`.
  """
  chex.assert_rank([logp_t, adv_t, v_t, ret_t, entropy_t], 1)
  chex.assert_equal_shape([logp_t, adv_t, v_t, ret_t, entropy_t])
  policy_loss = -jnp.mean(jax.lax.stop_gradient(adv_t) * logp_t)
  value_loss, entropy = jnp.mean((ret_t - v_t) ** 2), jnp.mean(entropy_t)
  loss = policy_loss + vf_coef * value_loss - ent_coef * entropy
  return loss, dict(policy_loss=policy_loss, value_loss=value_loss, entropy=entropy)


# ---------------------------------------------------------------------- learner


def make_optimizer(config: LearnerConfig, lr) -> optax.GradientTransformation:
  """Global-norm clipping followed by Adam or torch-style RMSprop; `lr` may be traced."""
  if config.optimizer == "adam":
    opt = optax.adam(lr, eps=config.adam_eps)
  else:
    opt = optax.rmsprop(lr, decay=config.rmsprop_alpha, eps=config.rmsprop_eps,
                        eps_in_sqrt=False)
  return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), opt)


def make_network(config: LearnerConfig, env, env_params=None) -> ActorCritic:
  """The actor-critic for `env`'s `MultiDiscrete` action space."""
  params = env.default_params if env_params is None else env_params
  return ActorCritic(nvec=tuple(env.action_space(params).nvec),
                     actor_hidden=tuple(config.actor_hidden),
                     critic_hidden=tuple(config.critic_hidden), activation=config.activation)


def act(network: ActorCritic, params, obs, key, deterministic=False):
  """Samples (or, if `deterministic`, takes the per-dimension argmax) actions.

  Args:
    network: the module from `make_network`.
    params: network parameters (`runner_state.train_state.params`).
    obs: `[..., obs_dim]`.
    key: PRNG key (unused when deterministic, but always accepted).
    deterministic: Python or traced bool.

  Returns:
    int32 actions `[..., n_dims]`.
  """
  dist, _ = network.apply(params, obs)
  return jnp.where(deterministic, dist.mode(), dist.sample(seed=key)).astype(jnp.int32)


def collect_rollout(network, env, config, hp, params, runner: RunnerState, env_params):
  """Steps `n_envs` envs for `n_steps` (gymnax 6-tuple API, auto-reset).

  Returns:
    `(runner, traj, last_value)`: traj is a `Transition` of `[T, N, ...]`
    arrays; last_value is `[N]`.
  """
  v_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

  def step(carry, _):
    env_state, obs, key, ep_ret = carry
    key, key_act, key_step = jax.random.split(key, 3)
    dist, value = network.apply(params, obs)
    action = dist.sample(seed=key_act).astype(jnp.int32)
    keys = jax.random.split(key_step, config.n_envs)
    obs_tp1, env_state, r, term, trunc, info = v_step(keys, env_state, action, env_params)
    r = r.astype(jnp.float32)
    _, v_final = network.apply(params, info["final_observation"])
    r_boot = r + hp.gamma * v_final * (trunc & ~term)
    done = term | trunc
    ep_ret = ep_ret + r
    tr = Transition(obs, action, r_boot, done, value, dist.log_prob(action),
                    jnp.where(done, ep_ret, 0.0))
    return (env_state, obs_tp1, key, jnp.where(done, 0.0, ep_ret)), tr

  carry = (runner.env_state, runner.last_obs, runner.key, runner.episode_return)
  (env_state, obs, key, ep_ret), traj = jax.lax.scan(step, carry, None, config.n_steps)
  _, last_value = network.apply(params, obs)
  runner = runner.replace(env_state=env_state, last_obs=obs, key=key, episode_return=ep_ret)
  return runner, traj, last_value


def loss_fn(params, network, config, hp, batch):
  """Loss on a flat minibatch dict (`obs, action, log_prob, adv, ret`)."""
  dist, v_t = network.apply(params, batch["obs"])
  logp_t = dist.log_prob(batch["action"])
  adv_t = normalize(batch["adv"]) if config.normalize_advantage else batch["adv"]
  if config.algorithm == "ppo":
    return ppo_loss(logp_t, batch["log_prob"], adv_t, v_t, batch["ret"], dist.entropy(),
                    clip=hp.clip, vf_coef=hp.vf_coef, ent_coef=hp.ent_coef)
  return a2c_loss(logp_t, adv_t, v_t, batch["ret"], dist.entropy(),
                  vf_coef=hp.vf_coef, ent_coef=hp.ent_coef)


def update_epochs(network, tx, config, hp, train_state: TrainState, batch, key):
  """`n_epochs` passes of permuted minibatch steps over a flat `[B, ...]` batch.

  Returns:
    `(train_state, pieces)`: pieces are loss pieces `[n_epochs, n_minibatches]`.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def minibatch_step(ts, mb):
    (loss, pieces), grads = grad_fn(ts.params, network, config, hp, mb)
    updates, opt_state = tx.update(grads, ts.opt_state, ts.params)
    return TrainState(optax.apply_updates(ts.params, updates), opt_state), {**pieces, "loss": loss}

  def epoch(ts, key_epoch):
    perm = jax.random.permutation(key_epoch, config.batch_size)
    shape = (config.num_minibatches, config.mb_size)
    mbs = jax.tree.map(lambda x: x[perm].reshape(shape + x.shape[1:]), batch)
    return jax.lax.scan(minibatch_step, ts, mbs)

  return jax.lax.scan(epoch, train_state, jax.random.split(key, config.n_epochs))


class Learner(NamedTuple):
  """Pure learner functions: `init(key, env_params)` -> RunnerState;
  `update(runner, env_params)` -> (RunnerState, metrics) runs `num_updates`
  more updates (agents that persist across search cycles call it again);
  `train = update . init`."""
  init: Any
  update: Any
  train: Any


def make_train(config: LearnerConfig, env, num_updates: int):
  """Builds `train(key, env_params, hparams=None) -> (RunnerState, metrics)`."""
  return make_learner(config, env, num_updates).train


def make_learner(config: LearnerConfig, env, num_updates: int) -> Learner:
  """Builds the `Learner` (init, update, train); see `make_train` for `train`.

  `train` is pure and jittable as a whole; `jax.jit(jax.vmap(train))(keys,
  env_params_batch)` trains an ensemble over seeds and env settings in one
  compiled call (PPO and A2C members need one call each: static structure).

  Args:
    config: static learner settings.
    env: a gymnax `Environment` with a `MultiDiscrete` action space and flat
      float observations.
    num_updates: rollout/update iterations (each `n_steps * n_envs` samples).

  Returns:
    The `train` function. Its metrics are `[num_updates]` arrays:
    `episode_return` (mean return of episodes finished in the rollout, NaN if
    none), `num_episodes`, `reward` (mean raw per-step reward, bootstrap
    included), and the mean loss pieces over epochs and minibatches.
  """
  network = make_network(config, env)
  v_gae = jax.vmap(gae, in_axes=(1, 1, 1, 0, None, None), out_axes=1)

  def update_step(tx, hp, env_params, runner: RunnerState, _):
    ts = runner.train_state
    runner, traj, last_value = collect_rollout(network, env, config, hp, ts.params, runner,
                                               env_params)
    adv, ret = v_gae(traj.reward, traj.value, traj.done, last_value, hp.gamma, hp.gae_lambda)
    flat = lambda x: x.reshape((config.batch_size,) + x.shape[2:])
    batch = dict(obs=flat(traj.obs), action=flat(traj.action), log_prob=flat(traj.log_prob),
                 adv=flat(adv), ret=flat(ret))
    key, key_update = jax.random.split(runner.key)
    ts, pieces = update_epochs(network, tx, config, hp, ts, batch, key_update)
    n_done = traj.done.sum()
    metrics = {k: v.mean() for k, v in pieces.items()}
    metrics.update(
        episode_return=jnp.where(n_done > 0, traj.final_return.sum() / jnp.maximum(n_done, 1),
                                 jnp.nan),
        num_episodes=n_done, reward=traj.reward.mean())
    return runner.replace(train_state=ts, key=key), metrics

  def init(key, env_params, hparams: Hyperparams | None = None) -> RunnerState:
    hp = Hyperparams.from_config(config) if hparams is None else hparams
    tx = make_optimizer(config, hp.lr)
    key, key_reset, key_init = jax.random.split(key, 3)
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(key_reset, config.n_envs), env_params)
    params = network.init(key_init, obs[0])
    return RunnerState(TrainState(params, tx.init(params)), env_state, obs, key,
                       jnp.zeros((config.n_envs,), jnp.float32))

  def update(runner: RunnerState, env_params, hparams: Hyperparams | None = None):
    hp = Hyperparams.from_config(config) if hparams is None else hparams
    tx = make_optimizer(config, hp.lr)
    return jax.lax.scan(functools.partial(update_step, tx, hp, env_params), runner, None,
                        num_updates)

  def train(key, env_params, hparams: Hyperparams | None = None):
    return update(init(key, env_params, hparams), env_params, hparams)

  return Learner(init, update, train)
