"""KernelEnv (LLA): decode, reward pieces, jit/vmap, and the accuracy signals."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hirelc_jax.agents import kernel_env as ke
from hirelc_jax.agents import proxies
from hirelc_jax.agents.surrogate import SurrogateConfig, encode_plan, make_surrogate, num_features
from hirelc_jax.compression import codes
from hirelc_jax.compression.kernel_map import build_kernel_map
from hirelc_jax.compression.plan import CompressionPlan

K = 4


def stub_accuracy(signal, block_index, bits, keep, fmt, gran):
  """Cheap stand-in: 0.4 points per bit below 8, 5 points per unit pruned, plus signal."""
  del fmt, gran
  return (0.4 * jnp.sum(8 - jnp.minimum(bits, 8)) + 5.0 * jnp.sum(1.0 - keep)
          + 0.1 * block_index + signal)


def _action(rows):
  return jnp.asarray(np.asarray(rows).reshape(-1), jnp.int32)


def _params(**kw):
  kw.setdefault("signal", jnp.zeros((), jnp.float32))
  return ke.kernel_params(K, **kw)


@pytest.mark.parametrize("bmin, expected", [
    (4, [4, 4, 4, 4, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 8]),
    (5, [5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 7, 7, 7, 7, 8]),
    (6, [6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 8]),
])
def test_bits_lists_match_reference(bmin, expected):
  params = _params(min_bits=bmin)
  decode = jax.jit(lambda a, p: ke.decode_kernel_action(a, p)[0])
  got = [int(decode(_action([[i, 0, 0, 0]] * K), params)[0]) for i in range(15)]
  assert got == expected


def test_keep_format_and_granularity_decode():
  params = _params(max_prune=0.56)
  rows = [[0, 0, 0, 0], [3, 7, 1, 1], [9, 14, 0, 2], [14, 10, 1, 3]]
  bits, keep, fmt, gran = ke.decode_kernel_action(_action(rows), params)
  np.testing.assert_allclose(keep, [1.0, 1 - 0.5 * 0.56, 1 - 0.56, 1 - 10 / 14 * 0.56], rtol=1e-6)
  np.testing.assert_array_equal(fmt, [codes.INT, codes.FLOAT, codes.INT, codes.FLOAT])
  np.testing.assert_array_equal(gran, [codes.UNIFORM, codes.LOG, codes.PER_CHANNEL, codes.LEARNED])
  assert bits.dtype == jnp.int32 and keep.dtype == jnp.float32
  env = ke.KernelEnv(K, stub_accuracy, quantization_type="float", fixed_granularity="per_channel",
                     allow_pruning=False)
  bits2, keep2, fmt2, gran2 = env.decode_action(_action(rows), params)
  np.testing.assert_array_equal(bits2, bits)
  np.testing.assert_array_equal(keep2, [1.0] * K)
  np.testing.assert_array_equal(fmt2, [codes.FLOAT] * K)
  np.testing.assert_array_equal(gran2, [codes.PER_CHANNEL] * K)
  env = ke.KernelEnv(K, stub_accuracy, quantization_type="int", allow_quantization=False)
  bits3, keep3, fmt3, _ = env.decode_action(_action(rows), params)
  np.testing.assert_array_equal(bits3, [codes.FP32_BITS] * K)
  np.testing.assert_allclose(keep3, keep)
  np.testing.assert_array_equal(fmt3, [codes.INT] * K)
  with pytest.raises(ValueError, match="quantization_type"):
    ke.KernelEnv(K, stub_accuracy, quantization_type="fp8")
  with pytest.raises(ValueError, match="asymmetric"):
    ke.KernelEnv(K, stub_accuracy, fixed_granularity="asymmetric")


def test_accuracy_reward_table():
  d = jnp.array([-2.0, 0.5, 1.0, 1.5, 2.5, 3.5, 10.0])
  np.testing.assert_allclose(ke.accuracy_reward(d), [100, 100, 95, 92.5, 80, 65, 0], rtol=1e-6)


def test_drop_unit_rescales_the_accuracy_table_only():
  zeros = jnp.zeros(5)
  raw = lambda d, unit: float(ke.raw_reward(jnp.float32(d), jnp.float32(0.2), zeros, jnp.int32(0),
                                            ke.kernel_params(2, drop_unit=unit)))
  assert raw(0.8, 1.0) == pytest.approx(raw(0.4, 0.5))          # the same point of the table
  assert raw(0.8, 1.0) - raw(0.8, 0.5) == pytest.approx(30.0 * (100.0 - 92.0))   # A(1.6) = 95 - 5 * 0.6
  assert raw(0.3, 0.5) == pytest.approx(raw(0.0, 1.0))          # below the unit: the plateau


def test_compliance_penalty_ratio_and_stability_pieces():
  assert float(ke.compliance_reward(0.25, 0.25)) == pytest.approx(20.0)
  assert float(ke.compliance_reward(0.35, 0.25)) == pytest.approx(20 * np.exp(-1.0), rel=1e-6)
  assert float(ke.sensitivity_penalty(0.5, 0.25)) == pytest.approx(4.5)
  r = ke.storage_fraction(jnp.array([8, 32]), jnp.array([0.5, 1.0]), jnp.array([3.0, 1.0]))
  assert float(r) == pytest.approx((3 * 0.5 * 0.25 + 1.0) / 4)
  hist = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])
  assert float(ke.stability_term(hist, 4)) == 0.0
  assert float(ke.stability_term(hist, 5)) == pytest.approx(-2 * np.std([1, 2, 3, 4, 5]))


def test_step_reward_matches_hand_computation_and_stability_kicks_in():
  env = ke.KernelEnv(K, stub_accuracy)
  params = _params(sensitivity=0.6, target_ratio=0.2, min_bits=4, max_prune=0.5, beta=5.0,
                   gamma=2.0, kernel_size=[4.0, 1.0, 2.0, 1.0])
  scale = 30 * 100 + 5 * 60 + 20
  assert float(params.reward_scale) == scale
  _, state = env.reset(jax.random.key(0), params)
  step = jax.jit(env.step)
  raws = []
  for t in range(7):
    rows = [[(t * 3 + k) % 15, (t + k) % 15, 0, 2] for k in range(K)]
    bits, keep, _, _ = ke.decode_kernel_action(_action(rows), params)
    d = float(stub_accuracy(0.0, 0, bits, keep, 0, 0))
    n = np.array([4.0, 1.0, 2.0, 1.0])
    r = float(np.sum(n * np.asarray(keep) * np.asarray(bits) / 32) / n.sum())
    expected = (30 * float(ke.accuracy_reward(d)) + 5 * 60 * (1 - r)
                + 20 * np.exp(-10 * abs(r - 0.2)) - 12 * 0.6 * (1 - r))
    if t >= 5:
      expected += 2.0 * -2.0 * np.std(raws[-5:])
    obs, state, reward, *_, info = step(jax.random.key(t), state, _action(rows), params)
    assert float(info["raw_reward"]) == pytest.approx(expected, rel=1e-5, abs=1e-3)
    assert float(reward) == pytest.approx(expected / scale, rel=1e-5, abs=1e-6)
    assert float(info["ratio"]) == pytest.approx(r, rel=1e-6)
    assert float(info["accuracy"]) == pytest.approx(85.0 - d, rel=1e-6)
    np.testing.assert_allclose(np.asarray(obs)[[2, 4, 9]], [r, d / 10, expected / scale],
                               rtol=1e-5, atol=1e-6)
    raws.append(float(info["raw_reward"]))
  assert np.std(raws[-5:]) > 0


def test_nonfinite_reward_becomes_scaled_penalty():
  env = ke.KernelEnv(K, lambda sig, *_: sig)
  params = _params(signal=jnp.float32(jnp.nan))
  _, state = env.reset(jax.random.key(0), params)
  obs, _, reward, *_ = env.step(jax.random.key(1), state, _action([[0] * 4] * K), params)
  assert float(reward) == pytest.approx(-10.0 / float(params.reward_scale))
  assert np.all(np.isfinite(obs)) and bool(env.observation_space(params).contains(obs))


def test_observation_layout_at_reset():
  env = ke.KernelEnv(K, stub_accuracy)
  params = _params(block_index=3, num_blocks=12, sensitivity=0.7, target_ratio=0.2,
                   max_acc_drop=0.5, priority=0.9, surrogate_ready=1.0,
                   kernel_sensitivity=[0.1, 0.2, 0.3, 0.4],
                   kernel_size=[100.0, 100.0, 400.0, 400.0])
  obs, _ = env.reset(jax.random.key(0), params)
  assert obs.shape == (env.obs_size,) == (18,)
  np.testing.assert_allclose(obs[:10], [0.25, 0.7, 1.0, 0.8, 0.0, 0.2, 0.05, 0.9, 1.0, 0.0],
                             rtol=1e-6)
  np.testing.assert_allclose(obs[10::2], [0.1, 0.2, 0.3, 0.4])
  np.testing.assert_allclose(obs[11::2], np.log1p([100, 100, 400, 400]) / np.log1p(1000), rtol=1e-6)
  assert bool(env.observation_space(params).contains(obs))
  assert env.action_space(params).nvec == (15, 15, 2, 4) * K


def test_step_and_reset_compile_once_across_actions_and_params():
  traces = {"step": 0, "reset": 0}

  class Counted(ke.KernelEnv):
    def step_env(self, key, state, action, params):
      traces["step"] += 1
      return super().step_env(key, state, action, params)

    def reset_env(self, key, params):
      traces["reset"] += 1
      return super().reset_env(key, params)

  env = Counted(K, stub_accuracy)
  rng = np.random.default_rng(0)
  after_first = None
  for i in range(8):
    params = _params(block_index=i, num_blocks=8, sensitivity=float(rng.uniform()),
                     min_bits=2 + i % 5, max_prune=0.1 * (i % 7), beta=[1.5, 5.0, 8.0][i % 3],
                     kernel_size=rng.uniform(1, 100, K), max_steps_in_episode=10 + i)
    _, state = env.reset(jax.random.key(i), params)
    env.step(jax.random.key(i), state, jnp.asarray(rng.integers(0, [15, 15, 2, 4] * K),
                                                   jnp.int32), params)
    if after_first is None:
      after_first = dict(traces)
  assert traces == after_first and traces["step"] == 1


def test_vmap_over_twelve_blocks_and_three_members_in_one_call():
  env = ke.KernelEnv(K, stub_accuracy)
  rng = np.random.default_rng(2)
  rows = [[_params(block_index=b, num_blocks=12, sensitivity=float(rng.uniform()),
                   min_bits=4 + b % 3, max_prune=0.2 + 0.05 * b, beta=beta)
           for b in range(12)] for beta in (1.5, 5.0, 8.0)]
  params = jax.tree.map(lambda *x: jnp.stack(x), *[jax.tree.map(lambda *y: jnp.stack(y), *r)
                                                   for r in rows])
  params = params.replace(signal=jnp.float32(0.5))  # one shared signal
  axes = ke.params_in_axes(params)
  keys = jax.random.split(jax.random.key(0), 36).reshape(3, 12)
  actions = jnp.asarray(rng.integers(0, [15, 15, 2, 4] * K, size=(3, 12, 4 * K)), jnp.int32)

  @jax.jit
  def run(keys, actions, params):
    reset = jax.vmap(jax.vmap(env.reset, in_axes=(0, axes)), in_axes=(0, axes))
    step = jax.vmap(jax.vmap(env.step, in_axes=(0, 0, 0, axes)), in_axes=(0, 0, 0, axes))
    _, state = reset(keys, params)
    return step(keys, state, actions, params)

  obs, state, reward, term, trunc, info = run(keys, actions, params)
  assert obs.shape == (3, 12, 18) and reward.shape == (3, 12) and state.rewards.shape == (3, 12, 5)
  assert np.all(np.isfinite(reward)) and len(np.unique(np.asarray(reward))) > 30
  b, m = 7, 2
  one = rows[m][b].replace(signal=jnp.float32(0.5))
  single = env.step(keys[m, b], env.reset(keys[m, b], one)[1], actions[m, b], one)
  assert float(single[2]) == pytest.approx(float(reward[m, b]), rel=1e-6)


def test_episode_terminates_at_configured_length_and_auto_resets():
  env = ke.KernelEnv(K, stub_accuracy)
  params = _params(max_steps_in_episode=20)
  _, state = env.reset(jax.random.key(0), params)
  step = jax.jit(env.step)
  terms = []
  for t in range(21):
    obs, state, _, term, trunc, _ = step(jax.random.key(t), state, _action([[2, 3, 0, 0]] * K),
                                         params)
    terms.append(bool(term))
    assert not bool(trunc)
    if t == 19:
      assert int(state.time) == 0 and int(state.count) == 0 and float(obs[2]) == 1.0
  assert terms == [False] * 19 + [True, False]


def test_surrogate_signal_fn_uses_the_whole_current_plan():
  blocks, kernels = 2, 4
  present = np.ones((blocks, kernels), bool)
  sur = make_surrogate(SurrogateConfig(hidden=(8,), epochs=4, batch_size=4, capacity=16,
                                       holdout_fraction=0.0), num_features(blocks, kernels))
  state = jax.jit(sur.init)(jax.random.key(0))
  rng = np.random.default_rng(0)
  bits = rng.integers(2, 9, size=(8, blocks, kernels))

  def plan_of(bits, keep, fmt=0, gran=codes.PER_CHANNEL):
    bits = np.asarray(bits)
    return CompressionPlan(bits=jnp.asarray(bits, jnp.int32),
                           keep=jnp.asarray(np.broadcast_to(keep, bits.shape), jnp.float32),
                           fmt=jnp.asarray(np.broadcast_to(fmt, bits.shape), jnp.int32),
                           gran=jnp.asarray(np.broadcast_to(gran, bits.shape), jnp.int32))

  encode = jax.jit(jax.vmap(encode_plan, in_axes=(0, None)))
  feats = encode(plan_of(bits, rng.uniform(0.5, 1, bits.shape)), present)
  state = sur.add(state, feats, 50.0 + jnp.asarray(bits.sum((1, 2)), jnp.float32) / 2)
  state, _ = sur.fit(state, jax.random.key(1))
  assert bool(sur.ready(state))
  current = plan_of(np.full((blocks, kernels), 8), 0.9)
  signal = ke.SurrogateSignal(state=state, plan=current, baseline=jnp.float32(88.0))
  fn = ke.surrogate_signal_fn(sur.predict, present)
  env = ke.KernelEnv(kernels, fn)
  params = ke.kernel_params(kernels, block_index=1, num_blocks=2, min_bits=2, surrogate_ready=1.0,
                            signal=signal)
  action = _action([[0, 7, 0, 2]] * kernels)
  _, st = env.reset(jax.random.key(0), params)
  _, _, _, _, _, info = jax.jit(env.step)(jax.random.key(1), st, action, params)
  # Block 1 decodes to 2 bits, keep 1 - 0.5 * 0.6, INT, per-channel; block 0 keeps its plan.
  row_bits = np.array([[8] * kernels, [2] * kernels])
  row_keep = np.array([[0.9] * kernels, [0.7] * kernels])
  stacked = jax.tree.map(lambda x: x[None], plan_of(row_bits, row_keep))
  predicted = float(sur.predict(state, encode(stacked, present))[0])
  assert 0.0 < predicted < 100.0  # not clipped, so the comparison below is informative
  assert float(info["drop"]) == pytest.approx(88.0 - predicted, abs=1e-4)
  # The other block's CURRENT plan matters (not a constant default).
  row = (jnp.full((kernels,), 2, jnp.int32), jnp.full((kernels,), 0.7, jnp.float32),
         jnp.zeros((kernels,), jnp.int32), jnp.full((kernels,), codes.PER_CHANNEL, jnp.int32))
  jfn = jax.jit(fn)
  d_same = jfn(signal, jnp.int32(1), *row)
  d_other = jfn(signal.replace(plan=plan_of(np.full((blocks, kernels), 2), 0.9)), jnp.int32(1), *row)
  assert float(d_same) == pytest.approx(88.0 - predicted, abs=1e-4)
  assert abs(float(d_other) - float(d_same)) > 1e-3


def test_quant_error_proxy_grows_as_bits_fall_and_with_pruning():
  rng = np.random.default_rng(0)
  weights = (rng.normal(size=(3, 16, 8)), rng.normal(size=(3, 8, 24)))
  signal = proxies.quant_error_signal(weights, sensitivity=[1.0, 0.5, 0.2], points_per_error=100.0)
  fn = jax.jit(proxies.quant_error_proxy_fn())
  gran = jnp.full((2,), codes.PER_CHANNEL, jnp.int32)
  fmt = jnp.zeros((2,), jnp.int32)
  ones = jnp.ones((2,), jnp.float32)
  drops = [float(fn(signal, jnp.int32(0), jnp.full((2,), b, jnp.int32), ones, fmt, gran))
           for b in range(8, 1, -1)]
  assert all(b > a for a, b in zip(drops, drops[1:])), drops
  d32 = fn(signal, jnp.int32(0), jnp.full((2,), 32, jnp.int32), ones, fmt, gran)
  assert float(d32) == 0.0
  pruned = fn(signal, jnp.int32(0), jnp.full((2,), 8, jnp.int32), ones * 0.5, fmt, gran)
  assert float(pruned) > drops[0]
  # Sensitivity weighting: the same row costs less in a less sensitive block.
  bits4 = jnp.full((2,), 4, jnp.int32)
  per_block = [float(fn(signal, jnp.int32(b), bits4, ones, fmt, gran)) for b in range(3)]
  assert per_block[0] > per_block[1] > per_block[2] > 0
  # In the env, vmapped over blocks with one shared signal.
  env = ke.KernelEnv(2, proxies.quant_error_proxy_fn())
  params = jax.tree.map(lambda *x: jnp.stack(x), *[ke.kernel_params(2, block_index=b, num_blocks=3)
                                                   for b in range(3)]).replace(signal=signal)
  axes = ke.params_in_axes(params)
  keys = jax.random.split(jax.random.key(0), 3)
  _, st = jax.vmap(env.reset, in_axes=(0, axes))(keys, params)
  out = jax.jit(jax.vmap(env.step, in_axes=(0, 0, None, axes)))(
      keys, st, _action([[0, 0, 0, 2]] * 2), params)
  assert out[5]["drop"].shape == (3,) and np.all(np.diff(np.asarray(out[5]["drop"])) < 0)
  assert proxies.fit_points_per_error([0.1, 0.2], [1.0, 2.0]) == pytest.approx(10.0)


class _TwoBlockMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(16, name="block_0")(x))
    x = nn.relu(nn.Dense(16, name="block_1")(x))
    return nn.Dense(5, name="head")(x)


def test_logit_mse_proxy_on_a_tiny_model():
  model = _TwoBlockMLP()
  x = jax.random.normal(jax.random.key(0), (32, 16))
  params = model.init(jax.random.key(1), x)["params"]
  kmap = build_kernel_map(params, [(r"block_(?P<block>\d+)/kernel", "fc")], ["fc"])
  signal = proxies.LogitSignal(params, x, model.apply({"params": params}, x))
  fn = jax.jit(proxies.logit_mse_proxy_fn(model.apply, kmap))
  one = lambda v, dt=jnp.int32: jnp.asarray([v], dt)
  d32 = fn(signal, jnp.int32(0), one(32), one(1.0, jnp.float32), one(0), one(0))
  d8 = fn(signal, jnp.int32(1), one(8), one(1.0, jnp.float32), one(0), one(2))
  d2 = fn(signal, jnp.int32(1), one(2), one(0.5, jnp.float32), one(0), one(2))
  assert float(d32) == pytest.approx(0.0, abs=1e-6)
  assert 0.0 < float(d8) < float(d2) <= proxies.LOGIT_MSE_CAP
