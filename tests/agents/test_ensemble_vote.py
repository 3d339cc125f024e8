"""Ensemble votes and member re-weighting."""

import jax
import jax.numpy as jnp
import numpy as np

from hirelc_jax.agents import rounded_mean_vote, update_member_weights, vote

THIRD = jnp.full((3,), 1 / 3)


def test_plurality_vote_per_dimension():
  actions = jnp.array([[0, 2, 1], [3, 2, 1], [3, 0, 2]])
  np.testing.assert_array_equal(vote(actions, THIRD, (5, 3, 4)), [3, 2, 1])


def test_plurality_ties_go_to_the_lowest_index():
  actions = jnp.array([[4, 2], [1, 0], [2, 1]])  # three-way ties
  np.testing.assert_array_equal(vote(actions, THIRD, (5, 3)), [1, 0])
  np.testing.assert_array_equal(vote(actions[:2], jnp.array([0.5, 0.5]), (5, 3)), [1, 0])
  # 0.1 + 0.2 vs 0.3 differ in float32 rounding but are a tie.
  actions = jnp.array([[2], [2], [1]])
  np.testing.assert_array_equal(vote(actions, jnp.array([0.1, 0.2, 0.3]), (3,)), [1])


def test_weights_decide_the_plurality():
  actions = jnp.array([[0], [1], [1]])
  np.testing.assert_array_equal(vote(actions, jnp.array([0.6, 0.2, 0.2]), (2,)), [0])
  np.testing.assert_array_equal(vote(actions, jnp.array([0.4, 0.3, 0.3]), (2,)), [1])


def test_rounded_mean_vote_reproduces_the_original():
  """The original's example: granularity votes {uniform=0, learned=3, learned=3}
  give round((0 + 3 + 3) / 3) = 2 (per-channel), whereas plurality gives 3."""
  actions = jnp.array([[0], [3], [3]])
  np.testing.assert_array_equal(rounded_mean_vote(actions, THIRD), [2])
  np.testing.assert_array_equal(vote(actions, THIRD, (5,)), [3])


def test_rounded_mean_vote_rounds_half_to_even():
  actions = jnp.array([[0, 1, 2, 3], [1, 2, 3, 4]])       # means 0.5, 1.5, 2.5, 3.5
  half = jnp.array([0.5, 0.5])
  np.testing.assert_array_equal(rounded_mean_vote(actions, half), np.round([0.5, 1.5, 2.5, 3.5]))
  np.testing.assert_array_equal(rounded_mean_vote(actions, half), [0, 2, 2, 4])
  # Unnormalised weights give the same mean.
  np.testing.assert_array_equal(rounded_mean_vote(actions, 2 * half), [0, 2, 2, 4])


def test_votes_jit_and_vmap_over_blocks():
  actions = jax.random.randint(jax.random.key(0), (12, 3, 2), 0, 3)   # [blocks, M, D]
  out = jax.jit(jax.vmap(lambda a: vote(a, THIRD, (3, 3))))(actions)
  assert out.shape == (12, 2)


def test_update_member_weights():
  w = update_member_weights(THIRD, jnp.array([1.0, 0.0, 0.0]), 1.0)
  np.testing.assert_allclose(w, jax.nn.softmax(jnp.array([1.0, 0.0, 0.0])), rtol=1e-6)
  w2 = update_member_weights(w, jnp.array([0.0, 1.0, 0.0]), 1.0)       # evidence accumulates
  np.testing.assert_allclose(w2, jax.nn.softmax(jnp.array([1.0, 1.0, 0.0])), rtol=1e-6)
  np.testing.assert_allclose(update_member_weights(THIRD, jnp.array([5.0, 0, 0]), 1e6), THIRD,
                             rtol=1e-5)                                # high T: no change
  w = update_member_weights(THIRD, jnp.array([100.0, 0, 0]), 1.0, share=0.3)
  np.testing.assert_allclose(w, [0.7 + 0.1, 0.1, 0.1], rtol=1e-5)      # fixed-share floor
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
