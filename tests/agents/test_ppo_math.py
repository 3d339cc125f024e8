"""GAE, PPO/A2C losses and learner configuration on hand-sized inputs."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from hirelc_jax.agents import ppo


class GaeTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_three_steps_with_done_in_the_middle(self):
    """Golden values, γ = 0.9, λ = 0.8, r = [1, 2, 3], v = [0.5, 1, 1.5],
    done = [0, 1, 0], last_value = 2 (bootstraps step 2 only):

      t=2: δ = 3 + 0.9·2.0 − 1.5 = 3.3            A = 3.3
      t=1: δ = 2 + 0 − 1.0 = 1.0 (episode ends)    A = 1.0 (no A_2 carried over)
      t=0: δ = 1 + 0.9·1.0 − 0.5 = 1.4             A = 1.4 + 0.9·0.8·1.0 = 2.12
      returns R = A + v = [2.62, 2.0, 4.8].
    """
    fn = self.variant(ppo.gae)
    adv, ret = fn(jnp.array([1.0, 2.0, 3.0]), jnp.array([0.5, 1.0, 1.5]),
                  jnp.array([False, True, False]), jnp.array(2.0), 0.9, 0.8)
    chex.assert_trees_all_close(adv, jnp.array([2.12, 1.0, 3.3]), atol=1e-6)
    chex.assert_trees_all_close(ret, jnp.array([2.62, 2.0, 4.8]), atol=1e-6)

  def test_lambda_one_gives_discounted_returns_and_vmaps(self):
    """λ = 1 without dones: R_t = Σ γ^k r_{t+k} + γ^{T-t} v_T, per env under vmap."""
    r = jnp.array([[1.0, 0.0], [2.0, 1.0], [3.0, 0.0]])   # [T=3, N=2]
    v = jnp.zeros((3, 2))
    d = jnp.zeros((3, 2), bool)
    last = jnp.array([10.0, 0.0])
    adv, ret = jax.vmap(ppo.gae, in_axes=(1, 1, 1, 0, None, None), out_axes=1)(
        r, v, d, last, 0.5, 1.0)
    expected0 = [1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 10, 2 + 0.5 * 3 + 0.25 * 10, 3 + 0.5 * 10]
    expected1 = [0.5, 1.0, 0.0]
    chex.assert_trees_all_close(ret, jnp.array([expected0, expected1]).T, atol=1e-6)
    chex.assert_trees_all_close(adv, ret)


def _ones(n=4):
  return jnp.ones((n,))


class LossTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_ratio_one_gives_minus_mean_advantage(self):
    adv = jnp.array([1.0, -2.0, 3.0, 0.5])
    logp = jnp.array([-1.0, -2.0, -0.5, -3.0])
    loss, p = self.variant(lambda *a: ppo.ppo_loss(*a, clip=0.2, vf_coef=0.5, ent_coef=0.01))(
        logp, logp, adv, jnp.zeros(4), jnp.full(4, 2.0), jnp.full(4, 1.5))
    np.testing.assert_allclose(p["policy_loss"], -adv.mean(), rtol=1e-6)
    np.testing.assert_allclose(p["value_loss"], 4.0, rtol=1e-6)        # mean((2 - 0)^2)
    np.testing.assert_allclose(p["entropy"], 1.5, rtol=1e-6)
    np.testing.assert_allclose(loss, -adv.mean() + 0.5 * 4.0 - 0.01 * 1.5, rtol=1e-6)
    np.testing.assert_allclose(p["clip_fraction"], 0.0)
    np.testing.assert_allclose(p["approx_kl"], 0.0, atol=1e-7)

  def test_clipping_active_above_one_plus_clip_with_positive_advantage(self):
    """ratio = 1.5 > 1.2 with A = 2: the surrogate is clipped to 1.2·A and has zero gradient."""
    adv = jnp.full((4,), 2.0)
    logp_old = jnp.zeros(4)

    def policy_loss(logp):
      return ppo.ppo_loss(logp, logp_old, adv, _ones(), _ones(), _ones(),
                          clip=0.2, vf_coef=0.0, ent_coef=0.0)[1]["policy_loss"]

    logp = jnp.full((4,), math.log(1.5))
    np.testing.assert_allclose(policy_loss(logp), -1.2 * 2.0, rtol=1e-6)
    chex.assert_trees_all_close(jax.grad(policy_loss)(logp), jnp.zeros(4))
    _, p = ppo.ppo_loss(logp, logp_old, adv, _ones(), _ones(), _ones(), clip=0.2,
                        vf_coef=0.0, ent_coef=0.0)
    np.testing.assert_allclose(p["clip_fraction"], 1.0)
    # Negative advantage at the same ratio is not clipped (min picks the unclipped term).
    _, p = ppo.ppo_loss(logp, logp_old, -adv, _ones(), _ones(), _ones(), clip=0.2,
                        vf_coef=0.0, ent_coef=0.0)
    np.testing.assert_allclose(p["policy_loss"], 1.5 * 2.0, rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_a2c_loss(self):
    logp = jnp.array([-1.0, -2.0])
    adv = jnp.array([2.0, -1.0])
    loss, p = self.variant(lambda *a: ppo.a2c_loss(*a, vf_coef=0.5, ent_coef=0.1))(
        logp, adv, jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0]), jnp.array([0.3, 0.5]))
    policy = -(2.0 * -1.0 + -1.0 * -2.0) / 2                  # = 0
    value = (1.0 + 4.0) / 2
    np.testing.assert_allclose(p["policy_loss"], policy, atol=1e-7)
    np.testing.assert_allclose(p["value_loss"], value, rtol=1e-6)
    np.testing.assert_allclose(loss, policy + 0.5 * value - 0.1 * 0.4, rtol=1e-6)

  def test_unclipped_ppo_at_ratio_one_has_the_a2c_gradient(self):
    """PPO with clip=inf at the rollout policy is A2C: the same loss gradient."""
    logp = jnp.array([-1.0, -0.3, -2.0])
    adv = jnp.array([1.0, -0.5, 2.0])
    v, ret, ent = jnp.array([0.1, 0.2, 0.3]), jnp.array([1.0, 0.0, 1.0]), _ones(3)
    g_ppo = jax.grad(lambda lp, v: ppo.ppo_loss(lp, logp, adv, v, ret, ent, clip=jnp.inf,
                                                vf_coef=0.5, ent_coef=0.0)[0], (0, 1))(logp, v)
    g_a2c = jax.grad(lambda lp, v: ppo.a2c_loss(lp, adv, v, ret, ent, vf_coef=0.5,
                                                ent_coef=0.0)[0], (0, 1))(logp, v)
    chex.assert_trees_all_close(g_ppo, g_a2c, atol=1e-7)

  def test_normalize_is_sb3s(self):
    adv = jnp.array([1.0, 2.0, 3.0, 6.0])
    out = ppo.normalize(adv)
    np.testing.assert_allclose(out, (adv - 3.0) / (np.std(adv, ddof=1) + 1e-8), rtol=1e-6)


class ConfigTest(parameterized.TestCase):

  def test_presets_hold_sb3_defaults(self):
    p, a = ppo.sb3_ppo(), ppo.sb3_a2c()
    assert (p.algorithm, p.lr, p.n_epochs, p.gamma, p.gae_lambda, p.clip) == (
        "ppo", 3e-4, 10, 0.99, 0.95, 0.2)
    assert (p.vf_coef, p.ent_coef, p.max_grad_norm, p.normalize_advantage) == (0.5, 0.0, 0.5, True)
    assert (p.optimizer, p.adam_eps) == ("adam", 1e-5)
    assert (a.algorithm, a.lr, a.n_steps, a.gamma, a.gae_lambda) == ("a2c", 7e-4, 5, 0.99, 1.0)
    assert (a.vf_coef, a.ent_coef, a.max_grad_norm, a.normalize_advantage) == (0.5, 0.0, 0.5, False)
    assert (a.optimizer, a.rmsprop_alpha, a.rmsprop_eps) == ("rmsprop", 0.99, 1e-5)
    assert a.n_epochs == 1 and a.num_minibatches == 1 and a.clip == math.inf

  def test_overrides_and_derived_sizes(self):
    c = ppo.sb3_a2c(n_steps=64, n_envs=2, ent_coef=0.01)
    assert c.batch_size == 128 and c.mb_size == 128 and c.ent_coef == 0.01
    c = ppo.sb3_ppo(n_steps=128, n_envs=2, minibatch_size=32)
    assert c.num_minibatches == 8

  @parameterized.parameters(
      dict(algorithm="dqn"), dict(optimizer="sgd"), dict(minibatch_size=3),
      dict(algorithm="a2c", minibatch_size=None, n_epochs=2))
  def test_rejects_invalid(self, **bad):
    with pytest.raises(ValueError):
      ppo.sb3_ppo(n_steps=8, **bad)

  def test_rmsprop_matches_torch_update(self):
    """RMSprop(alpha, eps outside sqrt, v0 = 0): step = lr·g / (sqrt((1-α) g²) + eps)."""
    tx = ppo.make_optimizer(ppo.sb3_a2c(max_grad_norm=1e9), 0.1)
    g = {"w": jnp.array([0.5, -2.0])}
    upd, _ = tx.update(g, tx.init(g))
    expected = -0.1 * g["w"] / (jnp.sqrt(0.01 * g["w"] ** 2) + 1e-5)
    chex.assert_trees_all_close(upd["w"], expected, rtol=1e-5)
