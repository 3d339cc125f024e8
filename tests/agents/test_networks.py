"""ActorCritic: separate towers, SB3 orthogonal init, masked multi-categorical head."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hirelc_jax.agents import ActorCritic, MultiDiscrete
from hirelc_jax.agents.networks import orthogonal

NVEC = (5, 3, 4)
OBS_DIM = 64   # square hidden kernels make the orthogonality check exact


@pytest.fixture(scope="module")
def net_params():
  net = ActorCritic(nvec=NVEC)
  return net, net.init(jax.random.key(0), jnp.zeros((OBS_DIM,)))


def test_shapes_and_valid_samples(net_params):
  net, params = net_params
  obs = jax.random.normal(jax.random.key(1), (7, OBS_DIM))
  dist, value = net.apply(params, obs)
  assert value.shape == (7,)
  a = dist.sample(seed=jax.random.key(2))
  assert a.shape == (7, 3)
  assert dist.log_prob(a).shape == (7,) and dist.entropy().shape == (7,)
  assert dist.mode().shape == (7, 3)
  assert bool(jnp.all(jax.vmap(MultiDiscrete(NVEC).contains)(a)))


def test_padded_choices_have_zero_probability_and_finite_entropy(net_params):
  net, params = net_params
  dist, _ = net.apply(params, jnp.ones((OBS_DIM,)))
  probs = dist.distribution.probs                    # [3, 5]
  np.testing.assert_array_equal(probs[1, 3:], 0.0)   # nvec[1] = 3
  np.testing.assert_array_equal(probs[2, 4:], 0.0)   # nvec[2] = 4
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
  # Near-uniform at init (0.01 logit gain): entropy ≈ Σ log nvec.
  np.testing.assert_allclose(dist.entropy(), np.log(NVEC).sum(), rtol=1e-3)
  assert np.isfinite(float(dist.entropy()))


def test_separate_towers_and_sb3_orthogonal_gains(net_params):
  p = net_params[1]["params"]
  assert set(p) == {"actor", "critic", "logits", "value"}
  for tower in ("actor", "critic"):
    for layer in ("Dense_0", "Dense_1"):
      w = p[tower][layer]["kernel"]                                  # [64, 64]
      np.testing.assert_allclose(w.T @ w, 2.0 * np.eye(64), atol=1e-4)  # gain sqrt(2)
      np.testing.assert_array_equal(p[tower][layer]["bias"], 0.0)
  wl = p["logits"]["kernel"]                                         # [64, 3 * 5]
  np.testing.assert_allclose(wl.T @ wl, 1e-4 * np.eye(15), atol=1e-8)  # gain 0.01
  wv = p["value"]["kernel"]                                          # [64, 1]
  np.testing.assert_allclose(wv.T @ wv, [[1.0]], rtol=1e-5)            # gain 1


@pytest.mark.parametrize("shape", [(64, 64), (64, 15), (8, 64), (64, 1)])
def test_orthogonal_init_matches_flax_qr_init(shape):
  key = jax.random.key(7)
  np.testing.assert_allclose(orthogonal(1.5)(key, shape),
                             nn.initializers.orthogonal(1.5)(key, shape), atol=2e-6)


def test_orthogonal_init_under_vmap_gives_independent_orthogonal_kernels():
  keys = jax.random.split(jax.random.key(0), 36)                      # 12 blocks x 3 members
  w = jax.jit(jax.vmap(lambda k: orthogonal()(k, (64, 64))))(keys)    # [36, 64, 64]
  np.testing.assert_allclose(np.einsum("bij,bik->bjk", w, w), np.broadcast_to(np.eye(64), w.shape),
                             atol=1e-5)
  np.testing.assert_allclose(w[5], orthogonal()(keys[5], (64, 64)), atol=1e-6)
  assert float(jnp.abs(w[0] - w[1]).max()) > 0.1


def test_configurable_widths():
  net = ActorCritic(nvec=NVEC, actor_hidden=(32,), critic_hidden=(16, 8), activation="relu")
  p = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((6,)))["params"]
  assert p["actor"]["Dense_0"]["kernel"].shape == (6, 32) and "Dense_1" not in p["actor"]
  assert p["critic"]["Dense_1"]["kernel"].shape == (16, 8)
  assert p["logits"]["kernel"].shape == (32, 15)
