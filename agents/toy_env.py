"""A multi-discrete contextual bandit: a one-step gymnax env with a known optimum.

Each episode draws a context `c` uniformly from `num_contexts` and shows it
one-hot. The action is a `MultiDiscrete(nvec)` vector and the reward is the
number of dimensions that match `params.best_action[c]` (0..len(nvec)), so the
optimum is unique and its return is `len(nvec)`. `best_action` lives in
`EnvParams`, so vmapping over params gives differently-solved tasks. Used to
test that the learners find a known optimum.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment
from gymnax.environments import spaces as gspaces

from hirelc_jax.agents.spaces import MultiDiscrete


@struct.dataclass
class EnvState:
  """Attributes: time (steps taken, 0 or 1), context (int32 scalar)."""
  time: jax.Array
  context: jax.Array


@struct.dataclass
class EnvParams:
  """Attributes: best_action (int32 `[num_contexts, n_dims]`), max_steps_in_episode."""
  best_action: jax.Array
  max_steps_in_episode: int = 1


class MultiDiscreteBandit(environment.Environment):
  """One-step bandit with `nvec` choices per dimension and one-hot contexts."""

  def __init__(self, nvec=(5, 3, 4), num_contexts: int = 1):
    super().__init__()
    self.nvec = tuple(int(k) for k in nvec)
    self.num_contexts = int(num_contexts)

  @property
  def default_params(self) -> EnvParams:
    base = np.array([3, 1, 2, 0, 4, 1, 3, 2])[: len(self.nvec)] % np.array(self.nvec)
    table = (base[None, :] + np.arange(self.num_contexts)[:, None]) % np.array(self.nvec)
    return EnvParams(best_action=jnp.asarray(table, jnp.int32))

  def get_obs(self, state: EnvState, params=None, key=None) -> jax.Array:
    del params, key
    return jax.nn.one_hot(state.context, self.num_contexts, dtype=jnp.float32)

  def reset_env(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
    del params
    context = jax.random.randint(key, (), 0, self.num_contexts, dtype=jnp.int32)
    state = EnvState(time=jnp.zeros((), jnp.int32), context=context)
    return self.get_obs(state), state

  def step_env(self, key, state: EnvState, action, params: EnvParams):
    del key
    best = params.best_action[state.context]
    reward = jnp.sum(jnp.asarray(action) == best).astype(jnp.float32)
    state = state.replace(time=state.time + 1)
    info: dict[str, Any] = {}
    return self.get_obs(state), state, reward, jnp.asarray(True), info

  def is_terminated(self, state: EnvState, params: EnvParams) -> jax.Array:
    del params
    return state.time >= 1

  @property
  def num_actions(self) -> int:
    return len(self.nvec)

  def action_space(self, params: EnvParams | None = None) -> MultiDiscrete:
    del params
    return MultiDiscrete(self.nvec)

  def observation_space(self, params: EnvParams | None = None) -> gspaces.Box:
    del params
    return gspaces.Box(0.0, 1.0, (self.num_contexts,), jnp.float32)
