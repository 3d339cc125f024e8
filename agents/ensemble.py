"""Combining the actions of an agent ensemble, and re-weighting its members.

The original HiReLC combines its three agents' deterministic actions by
rounding the weighted mean of the integer action indices (`rounded_mean_vote`),
with fixed weights 1/3 that are never updated. Averaging indices treats
categorical fields (quantisation type, granularity) as ordinal, e.g. votes
{uniform=0, learned=3, learned=3} give round(2.0) = 2 = per-channel, which no
agent chose. `vote` is the categorical alternative: a weighted plurality per
dimension. `update_member_weights` supplies the missing weight update.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp

# Relative slack under which two weighted tallies count as tied.
_TIE_RTOL = 1e-6


def vote(actions: jax.Array, weights: jax.Array, nvec: Sequence[int]) -> jax.Array:
  """Weighted plurality vote per action dimension.

  Each member adds its weight to the tally of the choice it picked; the choice
  with the largest tally wins, ties (within a relative 1e-6, so that float
  sums such as 1/3 + 1/3 compare equal however they round) going to the lowest
  choice index.

  Args:
    actions: int `[M, D]`, member m's choice for dimension d, in `[0, nvec[d])`.
    weights: float `[M]`, non-negative member weights (need not sum to 1).
    nvec: choices per dimension (static, length D).

  Returns:
    int32 `[D]` winning choice per dimension.
  """
  chex.assert_rank([actions, weights], [2, 1])
  chex.assert_axis_dimension(actions, 1, len(nvec))
  chex.assert_axis_dimension(weights, 0, actions.shape[0])
  onehot = jax.nn.one_hot(actions, max(nvec), dtype=jnp.float32)        # [M, D, C]
  tally = jnp.einsum("m,mdc->dc", weights.astype(jnp.float32), onehot)   # [D, C]
  top = jnp.max(tally, axis=-1, keepdims=True)
  winners = tally >= top - _TIE_RTOL * jnp.maximum(jnp.abs(top), 1e-12)
  return jnp.argmax(winners, axis=-1).astype(jnp.int32)  # first True = lowest index


def rounded_mean_vote(actions: jax.Array, weights: jax.Array) -> jax.Array:
  """The original HiReLC vote: round the weighted mean of the action indices.

  `round(Σ_m w_m a_m / Σ_m w_m)` per dimension with numpy's half-to-even
  rounding (`jnp.round`). The original computes `round(Σ w_m a_m)` with
  weights 1/3 that sum to one; dividing by `Σ w` is the same there and keeps
  the result a valid index for unnormalised weights.

  Args:
    actions: int `[M, D]`.
    weights: float `[M]`, non-negative, not all zero.

  Returns:
    int32 `[D]`.
  """
  chex.assert_rank([actions, weights], [2, 1])
  chex.assert_axis_dimension(weights, 0, actions.shape[0])
  w = weights.astype(jnp.float32)
  mean = jnp.einsum("m,md->d", w, actions.astype(jnp.float32)) / jnp.sum(w)
  return jnp.round(mean).astype(jnp.int32)


def update_member_weights(weights: jax.Array, rewards: jax.Array, temperature,
                          *, share: float = 0.0) -> jax.Array:
  """Multiplicative-weights (Hedge) update of member weights from realised rewards.

    w'_m ∝ w_m · exp(r_m / T)          (i.e. softmax(log w + r / T)),
    w''_m = (1 - share) · w'_m + share / M   (optional fixed-share floor).

  Starting from uniform weights, one step is exactly the softmax of the
  rewards; repeated steps accumulate evidence (a softmax of the summed
  rewards). Large T changes little, small T approaches picking the best member;
  `share > 0` keeps every member's weight at least share / M so that a member
  can recover. Members with zero weight stay at zero unless `share > 0`.

  Args:
    weights: `[M]` non-negative weights (normalised on output).
    rewards: `[M]` realised reward of each member's proposal.
    temperature: positive scalar T (may be traced).
    share: fixed-share mixing with uniform, in [0, 1].

  Returns:
    float32 `[M]` weights summing to 1.
  """
  chex.assert_rank([weights, rewards], [1, 1])
  chex.assert_equal_shape([weights, rewards])
  log_w = jnp.log(weights.astype(jnp.float32))
  new = jax.nn.softmax(log_w + rewards.astype(jnp.float32) / temperature)
  return (1.0 - share) * new + share / weights.shape[0]
