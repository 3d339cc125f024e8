"""MultiDiscrete: sampling stays in bounds, contains() accepts exactly the valid actions."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from hirelc_jax.agents import MultiDiscrete


def test_attributes():
  space = MultiDiscrete((5, 3, 4))
  assert space.nvec == (5, 3, 4) and space.shape == (3,) and space.dtype == jnp.int32
  assert space.num_choices == 12 and space.max_choices == 5
  assert space == MultiDiscrete([5, 3, 4]) and hash(space) == hash(MultiDiscrete((5, 3, 4)))


def test_samples_cover_every_choice_and_stay_in_bounds():
  space = MultiDiscrete((5, 3, 4))
  samples = jax.jit(jax.vmap(space.sample))(jax.random.split(jax.random.key(0), 2000))
  assert samples.shape == (2000, 3) and samples.dtype == jnp.int32
  for d, n in enumerate(space.nvec):
    assert set(np.unique(samples[:, d])) == set(range(n))
  assert bool(jnp.all(jax.vmap(space.contains)(samples)))


def test_contains_rejects_out_of_range_and_wrong_shape():
  space = MultiDiscrete((5, 3, 4))
  assert bool(space.contains(jnp.array([4, 2, 3])))
  assert not bool(space.contains(jnp.array([5, 0, 0])))
  assert not bool(space.contains(jnp.array([0, 3, 0])))
  assert not bool(space.contains(jnp.array([0, 0, -1])))
  assert not bool(space.contains(jnp.array([0.5, 0.0, 0.0])))
  assert not bool(space.contains(jnp.array([0, 0])))
  assert bool(jax.jit(space.contains)(jnp.array([1, 1, 1])))


@settings(max_examples=15, deadline=None)
@given(nvec=st.lists(st.integers(1, 9), min_size=1, max_size=5), seed=st.integers(0, 2**31 - 1))
def test_sample_is_contained(nvec, seed):
  space = MultiDiscrete(nvec)
  a = space.sample(jax.random.key(seed))
  assert a.shape == (len(nvec),)
  assert bool(space.contains(a))
  assert np.all(np.asarray(a) < np.asarray(nvec))
