"""The PPO/A2C learner finds the optimum of a multi-discrete contextual bandit.

The bandit (`toy_env.MultiDiscreteBandit`, nvec (5, 3, 4), two contexts) pays
one per dimension that matches the context's best action, so the optimum is
known; a uniform policy starts with probability 1/60 on it. Two env settings
(different best-action tables) are trained side by side with `vmap`.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hirelc_jax.agents import ppo
from hirelc_jax.agents.toy_env import EnvParams, MultiDiscreteBandit

pytestmark = pytest.mark.slow

ENV = MultiDiscreteBandit((5, 3, 4), num_contexts=2)
PPO = ppo.sb3_ppo(n_steps=16, n_envs=4, minibatch_size=16)   # 10 epochs x 4 minibatches
A2C = ppo.sb3_a2c(n_envs=4)                                  # n_steps 5, one RMSprop step
OBS = jnp.eye(2)                                             # one observation per context
TABLES = jnp.array([[[3, 1, 2], [4, 2, 3]],
                    [[0, 2, 1], [1, 0, 0]]], jnp.int32)      # [settings, contexts, dims]
SETTINGS = EnvParams(best_action=TABLES, max_steps_in_episode=jnp.ones((2,), jnp.int32))
NUM_UPDATES = 60


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
  """XLA compile time dominates on 2 CPU cores; these tests check learning, not speed."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


def _p_optimum(config, params, batch_dims):
  """Probability and mode of each setting's best action, for params `[S, ...]`.

  Returns:
    `p [S, ..., contexts]`, `mode [S, ..., contexts, dims]` (batch_dims axes
    before `contexts`; the first is the env setting).
  """
  apply = lambda p: ppo.make_network(config, ENV).apply(p, OBS)
  for _ in range(batch_dims):
    apply = jax.vmap(apply)
  dist, _ = jax.jit(apply)(params)
  best = TABLES.reshape(TABLES.shape[:1] + (1,) * (batch_dims - 1) + TABLES.shape[1:])
  return jnp.exp(dist.log_prob(best)), dist.mode()


@pytest.fixture(scope="module")
def ppo_ensemble():
  """3 PPO members (per-member lr) x 2 settings, one compiled call, run for two key sets."""
  hp = ppo.Hyperparams.from_config(PPO)
  hp = jax.tree.map(lambda x: jnp.broadcast_to(x, (3,)), hp).replace(
      lr=jnp.array([3e-4, 1e-3, 5e-4]))
  train = chex.assert_max_traces(ppo.make_train(PPO, ENV, NUM_UPDATES), n=1)
  members = jax.vmap(train, in_axes=(0, None, 0))                   # over members
  ensemble = jax.jit(jax.vmap(members, in_axes=(0, 0, None)))       # over settings
  keys = jax.random.split(jax.random.key(7), 12).reshape(2, 2, 3)
  return [ensemble(k, SETTINGS, hp) for k in keys]                  # second call: no retrace


def test_ppo_ensemble_learns_each_settings_optimum(ppo_ensemble):
  runner, metrics = ppo_ensemble[0]
  p, mode = _p_optimum(PPO, runner.train_state.params, 2)             # [S=2, M=3, contexts]
  assert p.shape == (2, 3, 2)
  assert bool(jnp.all(p >= 0.9)), p
  np.testing.assert_array_equal(mode, jnp.broadcast_to(TABLES[:, None], (2, 3, 2, 3)))
  ret = metrics["episode_return"]
  assert ret.shape == (2, 3, NUM_UPDATES)
  assert float(ret[..., 0].max()) < 1.5 and float(ret[..., -1].min()) > 2.7
  np.testing.assert_array_equal(metrics["num_episodes"], 64)      # one-step episodes, 16 x 4
  assert set(metrics) >= {"loss", "policy_loss", "value_loss", "entropy", "approx_kl",
                          "clip_fraction", "reward"}


def test_train_traces_once_and_seeds_differ(ppo_ensemble):
  (r0, _), (r1, _) = ppo_ensemble
  p, mode = _p_optimum(PPO, r1.train_state.params, 2)
  np.testing.assert_array_equal(mode, jnp.broadcast_to(TABLES[:, None], (2, 3, 2, 3)))
  assert float(p.mean()) >= 0.95 and float(p.min()) >= 0.8, p      # other seeds: slower members
  w0 = r0.train_state.params["params"]["logits"]["kernel"]
  w1 = r1.train_state.params["params"]["logits"]["kernel"]
  assert not np.allclose(w0, w1)
  assert r1.last_obs.shape == (2, 3, 4, 2) and r1.episode_return.shape == (2, 3, 4)


def test_act_is_greedy_when_deterministic(ppo_ensemble):
  runner, _ = ppo_ensemble[0]
  member = jax.tree.map(lambda x: x[1, 2], runner.train_state.params)   # setting 1, member 2
  net = ppo.make_network(PPO, ENV)
  greedy = jax.jit(ppo.act, static_argnums=0)(net, member, OBS, jax.random.key(3), True)
  np.testing.assert_array_equal(greedy, TABLES[1])
  sampled = ppo.act(net, member, jnp.zeros((64, 2)) + OBS[0], jax.random.key(4))
  assert sampled.shape == (64, 3) and sampled.dtype == jnp.int32
  assert float(jnp.mean(jnp.all(sampled == TABLES[1, 0], axis=-1))) > 0.75


def test_a2c_reaches_the_optimum_in_each_setting():
  """The A2C members of a mixed ensemble are their own vmapped call (static structure)."""
  train = jax.jit(jax.vmap(ppo.make_train(A2C, ENV, 100)))
  runner, metrics = train(jax.random.split(jax.random.key(0), 2), SETTINGS)
  p, mode = _p_optimum(A2C, runner.train_state.params, 1)             # [S=2, contexts]
  assert bool(jnp.all(p >= 0.9)), p
  np.testing.assert_array_equal(mode, TABLES)
  assert float(metrics["episode_return"][:, -10:].mean()) > 2.7
