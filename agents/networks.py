"""Actor-critic network with a multi-discrete (multi-categorical) policy head.

Mirrors stable-baselines3's default `ActorCriticPolicy` for `MlpPolicy`:
separate policy and value MLPs (`net_arch=dict(pi=[64, 64], vf=[64, 64])`,
tanh), orthogonal initialisation with gain sqrt(2) on hidden layers, 0.01 on
the policy logits and 1.0 on the value output, and zero biases.

SB3's `MultiCategoricalDistribution` emits `sum(nvec)` logits. Here the head
emits `n_dims * max(nvec)` logits shaped `[..., n_dims, max_choices]` and masks
the choices `>= nvec[i]` with a large negative constant, so every dimension is
the same categorical SB3 would build (the masked choices get probability 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# A finite "minus infinity": softmax gives exactly 0 and `0 * logp` stays 0,
# so entropy and log-probs stay finite (a true -inf would give NaN entropy).
MASKED_LOGIT = -1e9

_ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu}


def orthogonal(scale: float = 1.0):
  """Orthogonal kernel initialiser that is safe to `vmap` on every backend.

  Same distribution (and, up to rounding, the same values for the same key) as
  `nn.initializers.orthogonal`: the Q factor of a Gaussian matrix with R's
  diagonal made positive. Q comes from classical Gram-Schmidt applied twice
  per column in a `fori_loop` of matrix-vector products instead of LAPACK's
  QR: a batched QR under `vmap` (learners of every block and member are
  initialised at once) can deadlock XLA:CPU's small thread pool.

  Args:
    scale: gain multiplied into the orthogonal matrix.

  Returns:
    `init(key, shape, dtype)` for 2-D `[fan_in, fan_out]` kernels.
  """
  def init(key, shape, dtype=jnp.float32):
    if len(shape) != 2:
      raise ValueError(f"orthogonal init expects a 2-D kernel shape, got {shape}")
    n_rows, n_cols = shape
    tall = (max(n_rows, n_cols), min(n_rows, n_cols))
    a = jax.random.normal(key, tall, jnp.float32)

    def column(j, q):
      v = a[:, j]
      for _ in range(2):              # "twice is enough" re-orthogonalisation
        v = v - q @ (q.T @ v)         # columns >= j of q are still zero
      return q.at[:, j].set(v / jnp.linalg.norm(v))

    q = jax.lax.fori_loop(0, tall[1], column, jnp.zeros(tall, jnp.float32))
    q = q if n_rows >= n_cols else q.T
    return (scale * q).astype(dtype)
  return init


def choice_mask(nvec: Sequence[int]) -> np.ndarray:
  """Valid-choice mask for a padded multi-discrete head.

  Args:
    nvec: choices per dimension.

  Returns:
    Bool numpy array `[len(nvec), max(nvec)]`, True where `j < nvec[i]`.
  """
  nvec = np.asarray(nvec)
  return np.arange(nvec.max())[None, :] < nvec[:, None]


def mask_logits(logits: jax.Array, nvec: Sequence[int]) -> jax.Array:
  """Sets the padded (invalid) choices of `[..., n_dims, max_choices]` logits to `MASKED_LOGIT`."""
  return jnp.where(choice_mask(nvec), logits, MASKED_LOGIT)


def multi_categorical(logits: jax.Array) -> distrax.Distribution:
  """Independent categoricals over the last-but-one axis.

  Args:
    logits: `[..., n_dims, max_choices]`, already masked.

  Returns:
    A distribution with event shape `[n_dims]`: `log_prob(a)` and `entropy()`
    sum over dimensions and have shape `[...]`; `sample`/`mode` give int32
    `[..., n_dims]`.
  """
  return distrax.Independent(distrax.Categorical(logits=logits), reinterpreted_batch_ndims=1)


class MLP(nn.Module):
  """Dense layers with orthogonal(gain) kernels and zero biases."""
  features: Sequence[int]
  activation: str = "tanh"
  gain: float = float(np.sqrt(2.0))

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = _ACTIVATIONS[self.activation]
    for width in self.features:
      x = act(nn.Dense(width, kernel_init=orthogonal(self.gain),
                       bias_init=nn.initializers.zeros)(x))
    return x


class ActorCritic(nn.Module):
  """Separate actor and critic MLPs with a masked multi-categorical head.

  Attributes:
    nvec: choices per action dimension (static tuple).
    actor_hidden: hidden widths of the policy MLP.
    critic_hidden: hidden widths of the value MLP.
    activation: "tanh" (SB3's default) or "relu".
  """
  nvec: Sequence[int]
  actor_hidden: Sequence[int] = (64, 64)
  critic_hidden: Sequence[int] = (64, 64)
  activation: str = "tanh"

  @nn.compact
  def __call__(self, obs: jax.Array) -> tuple[distrax.Distribution, jax.Array]:
    """Policy and value for a (batch of) flat observation(s).

    Args:
      obs: `[..., obs_dim]` float observations.

    Returns:
      `(dist, value)`: `dist` has event shape `[n_dims]` and batch shape `[...]`
      (see `multi_categorical`); `value` is `[...]`.
    """
    n_dims, max_choices = len(self.nvec), max(self.nvec)
    obs = obs.astype(jnp.float32)
    pi = MLP(tuple(self.actor_hidden), self.activation, name="actor")(obs)
    logits = nn.Dense(n_dims * max_choices, kernel_init=orthogonal(0.01),
                      bias_init=nn.initializers.zeros, name="logits")(pi)
    logits = mask_logits(logits.reshape(*logits.shape[:-1], n_dims, max_choices), self.nvec)
    vf = MLP(tuple(self.critic_hidden), self.activation, name="critic")(obs)
    value = nn.Dense(1, kernel_init=orthogonal(1.0),
                     bias_init=nn.initializers.zeros, name="value")(vf)
    return multi_categorical(logits), value[..., 0]
