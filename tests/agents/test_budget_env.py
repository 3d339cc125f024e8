"""BudgetEnv (HLA): decode tables, reward terms, observation layout, jit and vmap."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hirelc_jax.agents import budget_env as be


def reference_decode(level, s, goal_min_bits=3, goal_max_prune=0.6):
  """The original's §3.3 decode written with Python branches, as the reference states it."""
  if s > 0.7:
    level = max(0, level - 1)
  elif s < 0.3:
    level = min(4, level + 1)
  ratio = {0: 0.35, 1: 0.30, 2: 0.25, 3: 0.20, 4: 0.15}[level]
  max_prune = min({0: 0.20, 1: 0.30, 2: 0.40, 3: 0.60, 4: 0.80}[level], goal_max_prune)
  if level <= 1:
    min_bits = max(6, goal_min_bits)
  elif level == 2:
    min_bits = max(5, goal_min_bits)
  else:
    min_bits = max(4, goal_min_bits)
  acc = 0.5 if s > 0.7 else (1.0 if s > 0.5 else 2.0)
  return ratio, min_bits, max_prune, acc


def _action(levels):
  return jnp.asarray(levels, jnp.int32)


def test_decode_tables_match_reference_for_all_levels_and_sensitivities():
  sens = [0.2, 0.5, 0.8]
  levels = [lvl for lvl in range(5) for _ in sens]
  s = np.array(sens * 5, np.float32)
  params = be.budget_params(len(levels), sensitivity=s)
  b = jax.jit(be.decode_budgets)(_action(levels), s, params)
  for i, (lvl, si) in enumerate(zip(levels, s)):
    ratio, bits, prune, acc = reference_decode(lvl, float(si))
    assert float(b.target_ratio[i]) == pytest.approx(ratio)
    assert int(b.min_bits[i]) == bits
    assert float(b.max_prune[i]) == pytest.approx(prune)
    assert float(b.max_acc_drop[i]) == acc
    assert float(b.priority[i]) == pytest.approx(si)
  # Spot checks straight from the reference's text.
  assert float(b.max_prune[4 * 3 + 1]) == pytest.approx(0.6)  # level 4 under the 0.6 cap
  assert int(b.min_bits[0]) == 6 and float(b.target_ratio[0]) == pytest.approx(0.30)  # s=.2: 0 -> 1


def test_acc_allowance_bands_at_the_boundaries():
  s = np.array([0.5, 0.50001, 0.7, 0.70001], np.float32)
  b = be.decode_budgets(_action([2] * 4), s, be.budget_params(4, sensitivity=s))
  np.testing.assert_allclose(b.max_acc_drop, [2.0, 1.0, 1.0, 0.5])


def test_wide_min_bits_table_and_goal_reach_two_bits():
  s = np.full((5,), 0.5, np.float32)
  params = be.budget_params(5, sensitivity=s, goal_min_bits=2, min_bits_table=be.MIN_BITS_WIDE)
  b = be.decode_budgets(_action(list(range(5))), s, params)
  np.testing.assert_array_equal(b.min_bits, [6, 5, 4, 3, 2])
  params = be.budget_params(5, sensitivity=s, goal_min_bits=5, min_bits_table=be.MIN_BITS_WIDE)
  b = be.decode_budgets(_action(list(range(5))), s, params)
  np.testing.assert_array_equal(b.min_bits, [6, 5, 5, 5, 5])
  with pytest.raises(ValueError, match="goal_min_bits"):
    be.budget_params(5, goal_min_bits=1)


def test_floor_shift_loosens_floors_but_keeps_each_target():
  """Shift k looks the floors up k levels higher (clipped at 4); targets, allowances stay."""
  s = np.full((5,), 0.5, np.float32)
  plain = be.budget_params(5, sensitivity=s, goal_min_bits=2, goal_max_prune=0.8,
                           min_bits_table=be.MIN_BITS_WIDE)
  shifted = be.budget_params(5, sensitivity=s, goal_min_bits=2, goal_max_prune=0.8,
                             min_bits_table=be.MIN_BITS_WIDE, floor_shift=1)
  a, b = (jax.jit(be.decode_budgets)(_action(list(range(5))), s, p) for p in (plain, shifted))
  np.testing.assert_array_equal(b.min_bits, [5, 4, 3, 2, 2])
  np.testing.assert_allclose(b.max_prune, [0.3, 0.4, 0.6, 0.8, 0.8])
  np.testing.assert_array_equal(b.target_ratio, a.target_ratio)
  np.testing.assert_array_equal(b.max_acc_drop, a.max_acc_drop)
  with pytest.raises(ValueError, match="floor_shift=5"):
    be.budget_params(5, floor_shift=5)


def test_reward_terms_on_a_hand_computed_case():
  s = np.array([0.8, 0.1, 0.5], np.float32)
  c = jnp.array([0.35, 0.15, 0.25])
  params = be.budget_params(3, sensitivity=s, last_acc_drop=3.0, goal_acc_drop=1.0,
                            last_compression=0.3)
  t = be.reward_terms(c, params)
  mean = 0.75 / 3
  assert float(t["balance"]) == pytest.approx(-np.var([0.35, 0.15, 0.25]), abs=1e-7)
  assert float(t["sens"]) == pytest.approx(10 * 0.05 + 5 * 0.05)
  assert float(t["comp"]) == pytest.approx(-abs(mean - 0.25), abs=1e-7)
  assert float(t["dyn"]) == pytest.approx(-50 * 2.0)  # over the goal and compressing more
  r = be.budget_reward(c, params)
  expected = (10 * t["balance"] + t["sens"] + 50 * t["comp"] + t["dyn"]) / be.DEFAULT_REWARD_SCALE
  assert float(r) == pytest.approx(float(expected))
  # The +20 branch: within the accuracy goal, last compression above target, compressing more.
  p2 = params.replace(last_acc_drop=jnp.float32(0.5), last_compression=jnp.float32(1.0))
  assert float(be.reward_terms(c, p2)["dyn"]) == 20.0
  # No dynamic term when not compressing more than last cycle.
  p3 = params.replace(last_compression=jnp.float32(0.1))
  assert float(be.reward_terms(c, p3)["dyn"]) == 0.0


def test_members_with_different_weights_get_different_rewards():
  env = be.BudgetEnv(4)
  s = np.array([0.2, 0.4, 0.6, 0.9], np.float32)
  p_a = be.budget_params(4, sensitivity=s)
  p_b = be.budget_params(4, sensitivity=s, w_balance=40.0, w_sens=3.0, w_comp=20.0, w_dyn=0.5)
  action = _action([0, 4, 1, 3])
  _, state = env.reset(jax.random.key(0), p_a)
  r_a = env.step(jax.random.key(1), state, action, p_a)[2]
  r_b = env.step(jax.random.key(1), state, action, p_b)[2]
  assert np.isfinite(float(r_a)) and np.isfinite(float(r_b))
  assert abs(float(r_a) - float(r_b)) > 1e-3


def test_observation_layout_is_the_same_at_reset_and_step_and_bounded():
  env = be.BudgetEnv(3)
  s = np.array([0.1, 0.5, 0.9], np.float32)
  params = be.budget_params(3, sensitivity=s, last_acc_drop=250.0, last_compression=0.2,
                            cycle_progress=0.5)
  obs0, state = env.reset(jax.random.key(0), params)
  assert obs0.shape == (env.obs_size,) == (11,)
  np.testing.assert_allclose(obs0[:5], [10.0, 0.2, 0.5, 0.25, 0.1])  # drop/10 clipped at 10
  np.testing.assert_allclose(obs0[5::2], s)
  np.testing.assert_allclose(obs0[6::2], [0.25] * 3)
  obs1, *_ = env.step(jax.random.key(1), state, _action([4, 2, 0]), params)
  np.testing.assert_allclose(obs1[:5], obs0[:5])
  np.testing.assert_allclose(obs1[6::2], [0.15, 0.25, 0.35])
  space = env.observation_space(params)
  assert bool(space.contains(obs0)) and bool(space.contains(obs1))
  assert env.action_space(params).nvec == (5,) * 3


def test_step_and_reset_compile_once_across_actions_and_params():
  traces = {"step": 0, "reset": 0}

  class Counted(be.BudgetEnv):
    def step_env(self, key, state, action, params):
      traces["step"] += 1
      return super().step_env(key, state, action, params)

    def reset_env(self, key, params):
      traces["reset"] += 1
      return super().reset_env(key, params)

  env = Counted(6)
  rng = np.random.default_rng(0)
  after_first = None
  for i in range(8):
    params = be.budget_params(6, sensitivity=rng.uniform(0, 1, 6), last_acc_drop=float(i),
                              w_comp=float(10 + i), goal_min_bits=2 + i % 3,
                              max_steps_in_episode=5 + i)
    obs, state = env.reset(jax.random.key(i), params)
    action = jnp.asarray(rng.integers(0, 5, 6), jnp.int32)
    env.step(jax.random.key(i), state, action, params)
    if after_first is None:
      after_first = dict(traces)
  assert traces == after_first and traces["step"] == 1


def test_vmap_over_three_members_of_twelve_blocks():
  env = be.BudgetEnv(12)
  rng = np.random.default_rng(1)
  s = rng.uniform(0, 1, 12)
  members = [be.budget_params(12, sensitivity=s, w_balance=w, w_comp=50.0 * w)
             for w in (1.0, 10.0, 30.0)]
  params = jax.tree.map(lambda *x: jnp.stack(x), *members)
  keys = jax.random.split(jax.random.key(0), 3)
  actions = jnp.asarray(rng.integers(0, 5, size=(3, 12)), jnp.int32)

  @jax.jit
  def run(keys, actions, params):
    obs, state = jax.vmap(env.reset)(keys, params)
    return jax.vmap(env.step)(keys, state, actions, params)

  obs, state, reward, term, trunc, _ = run(keys, actions, params)
  assert obs.shape == (3, 29) and reward.shape == (3,) and state.target_ratio.shape == (3, 12)
  assert len(set(np.round(np.asarray(reward), 6))) == 3


def test_episode_terminates_at_configured_length_and_auto_resets():
  env = be.BudgetEnv(2)
  params = be.budget_params(2, max_steps_in_episode=4)
  obs, state = env.reset(jax.random.key(0), params)
  step = jax.jit(env.step)
  action = _action([4, 4])
  flags = []
  for t in range(9):
    obs, state, _, term, trunc, info = step(jax.random.key(t), state, action, params)
    flags.append(bool(term))
    assert not bool(trunc)
  assert flags == [False, False, False, True] * 2 + [False]
  assert int(state.time) == 1
  # After an auto-reset the observation shows the reset targets again.
  obs, state = env.reset(jax.random.key(0), params)
  for t in range(4):
    obs, state, *_ = step(jax.random.key(t), state, action, params)
  np.testing.assert_allclose(obs[6::2], [0.25, 0.25])
  assert int(state.time) == 0


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), goal_bits=st.integers(2, 8),
       goal_prune=st.floats(0.0, 0.8))
def test_decoded_budgets_respect_goal_limits(seed, goal_bits, goal_prune):
  rng = np.random.default_rng(seed)
  s = rng.uniform(0, 1, 6).astype(np.float32)
  params = be.budget_params(6, sensitivity=s, goal_min_bits=goal_bits, goal_max_prune=goal_prune)
  b = _jit_decode(jnp.asarray(rng.integers(0, 5, 6), jnp.int32), s, params)
  assert np.all(np.asarray(b.min_bits) >= goal_bits)
  assert np.all(np.asarray(b.max_prune) <= goal_prune + 1e-6)
  ratios = np.asarray(b.target_ratio, np.float64)[:, None]
  assert np.all(np.isclose(ratios, np.asarray(be.TARGET_RATIO)[None]).any(-1))
  for i in range(6):
    assert not (s[i] > 0.7 and math.isclose(float(b.target_ratio[i]), 0.15))  # shifted down
    assert not (s[i] < 0.3 and math.isclose(float(b.target_ratio[i]), 0.35))  # shifted up


_jit_decode = jax.jit(be.decode_budgets)
