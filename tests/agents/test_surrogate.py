"""Tests for agents/surrogate.py: plan encoding, ring buffer, fitting, fallback."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hirelc_jax.agents import surrogate as sur
from hirelc_jax.compression import codes
from hirelc_jax.compression.plan import CompressionPlan, make_plan, uniform_plan

F = sur.FEATURES_PER_SLOT
B, K = 2, 4


def _slot(feats, b, k, f=F, num_kernels=K):
  start = (b * num_kernels + k) * f
  return np.asarray(feats[start:start + f])


def _random_plans(n, seed=0, fixed_format=False):
  rng = np.random.default_rng(seed)
  bits = rng.integers(2, 9, (n, B, K))
  keep = rng.uniform(0.2, 1.0, (n, B, K)).astype(np.float32)
  if fixed_format:
    fmt, gran = np.zeros((n, B, K), int), np.full((n, B, K), codes.PER_CHANNEL)
  else:
    fmt, gran = rng.integers(0, 3, (n, B, K)), rng.integers(0, 4, (n, B, K))
  plans = CompressionPlan(jnp.asarray(bits, jnp.int32), jnp.asarray(keep),
                          jnp.asarray(fmt, jnp.int32), jnp.asarray(gran, jnp.int32))
  return plans, bits, keep


def test_feature_layout_and_shapes():
  assert F == 3 + len(codes.FORMATS) + len(codes.GRANULARITIES) + 1
  plan = uniform_plan(B, K, bits=4)
  present = np.ones((B, K), bool)
  assert sur.encode_plan(plan, present).shape == (sur.num_features(B, K),) == (B * K * F,)
  with_sens = sur.encode_plan(plan, present, sensitivity=np.ones((B, K)))
  assert with_sens.shape == (sur.num_features(B, K, with_sensitivity=True),)


def test_slot_values_one_hots_and_unquantized_flag():
  plan = make_plan(bits=[[4, 32]], keep=[[0.5, 1.0]], fmt=[["float", "float_exp"]],
                   gran=[["log", "learned"]])
  feats = sur.encode_plan(plan, np.ones((1, 2), bool), sensitivity=np.array([0.7]))
  quant = _slot(feats, 0, 0, F + 1, 2)
  expected = np.zeros(F + 1, np.float32)
  expected[:3] = [0.5, 0.5, 0.0]
  expected[3 + codes.FLOAT] = 1.0
  expected[3 + len(codes.FORMATS) + codes.LOG] = 1.0
  expected[F - 1], expected[F] = 1.0, 0.7
  np.testing.assert_allclose(quant, expected)
  # FP32: bits capped at 1.0 like 8 bits but flagged; format/granularity unread -> zeros.
  fp32 = _slot(feats, 0, 1, F + 1, 2)
  np.testing.assert_allclose(fp32[:3], [1.0, 1.0, 1.0])
  assert fp32[3:F - 1].sum() == 0 and fp32[F - 1] == 1.0 and fp32[F] == pytest.approx(0.7)
  eight = sur.encode_plan(uniform_plan(1, 1, bits=8), np.ones((1, 1), bool))
  assert eight[0] == 1.0 and eight[2] == 0.0


def test_absent_slots_are_all_zeros():
  present = np.array([[True, True, False, True], [True, False, False, True]])
  plan = uniform_plan(B, K, bits=8, keep=0.5)
  feats = sur.encode_plan(plan, present, sensitivity=np.full((B, K), 0.3))
  for b in range(B):
    for k in range(K):
      slot = _slot(feats, b, k, F + 1)
      if present[b, k]:
        assert slot[F - 1] == 1.0 and slot[0] == 1.0
      else:
        np.testing.assert_array_equal(slot, 0.0)


def test_encode_vmaps_over_a_batch_of_plans():
  plans, _, _ = _random_plans(5)
  present = np.ones((B, K), bool)
  batch = jax.jit(jax.vmap(sur.encode_plan, in_axes=(0, None)))(plans, present)
  assert batch.shape == (5, B * K * F)
  for i in range(5):
    one = jax.tree.map(lambda a: a[i], plans)
    np.testing.assert_array_equal(batch[i], sur.encode_plan(one, present))


SMALL = sur.SurrogateConfig(capacity=4, batch_size=2, epochs=3, hidden=(8,), holdout_fraction=0.0,
                            fallback=-1.0)


@pytest.fixture(scope="module")
def small():
  return sur.make_surrogate(SMALL, 3)


def test_ring_buffer_wraps_and_count_keeps_counting(small):
  state = small.init(jax.random.key(0))
  for i in range(6):
    state = small.add(state, jnp.full((3,), float(i)), float(i))
  assert int(state.count) == 6
  np.testing.assert_array_equal(state.buffer_y, [4.0, 5.0, 2.0, 3.0])
  np.testing.assert_array_equal(state.buffer_x[:, 0], [4.0, 5.0, 2.0, 3.0])
  batched = small.add(small.init(jax.random.key(0)), jnp.arange(18.0).reshape(6, 3) // 3,
                      jnp.arange(6.0))
  np.testing.assert_array_equal(batched.buffer_y, state.buffer_y)
  assert int(batched.count) == 6


def test_holdout_is_evenly_spread():
  s = sur.make_surrogate(sur.SurrogateConfig(capacity=16, holdout_fraction=0.25), 2)
  state = s.add(s.init(jax.random.key(0)), jnp.zeros((10, 2)), jnp.arange(10.0))
  assert np.flatnonzero(np.asarray(state.buffer_holdout)).tolist() == [3, 7]


def test_fallback_below_min_samples(small):
  state = small.init(jax.random.key(0))
  x = jnp.ones((5, 3))
  state = small.add(state, x[:2], jnp.array([80.0, 82.0]))
  state, losses = small.fit(state, jax.random.key(1))
  assert not bool(small.ready(state)) and int(state.num_fits) == 0
  np.testing.assert_array_equal(losses, 0.0)
  np.testing.assert_array_equal(small.predict(state, x), -1.0)
  np.testing.assert_array_equal(small.predict(state, x, 77.0), 77.0)
  state = small.add(state, x[0], 81.0)
  assert not bool(small.ready(state))  # enough samples, but never fitted
  state, losses = small.fit(state, jax.random.key(2))
  assert bool(small.ready(state)) and int(state.num_fits) == 1
  assert losses.shape == (3,) and np.all(np.asarray(losses) > 0)
  pred = small.predict(state, x)
  assert np.all((np.asarray(pred) >= 0) & (np.asarray(pred) <= 100)) and np.all(pred != -1.0)


def test_record_prediction_tracks_errors(small):
  state = small.init(jax.random.key(0))
  assert np.isnan(small.prediction_error(state)["mae"])
  state = small.record_prediction(state, 90.0, 88.0)
  state = small.record_prediction(state, jnp.array([70.0, 75.0]), jnp.array([71.0, 75.0]))
  err = small.prediction_error(state)
  assert int(err["n"]) == 3
  assert float(err["mae"]) == pytest.approx(1.0)
  assert float(err["rmse"]) == pytest.approx(np.sqrt(5.0 / 3.0))


def _target(bits, keep):
  return 90.0 - 5.0 * np.mean((8 - bits) / 6, axis=(1, 2)) - 10.0 * np.mean(1 - keep, axis=(1, 2))


@pytest.fixture(scope="module")
def fitted():
  """Buffers 160 of 200 random 2x4 plans (16 held out) and fits for 405 steps.

  45 epochs x 9 minibatches of 16 over the 144 training samples; over seeds
  the held-out MAE ends at 0.003..0.01 points, so the 0.1 bound has margin.

  Format and granularity are fixed because the target ignores them: with 160
  samples, 64 random one-hot columns that do not matter are more than the
  MLP can rule out (it then reaches ~0.35 MAE, about half the mean predictor's).
  """
  plans, bits, keep = _random_plans(200, fixed_format=True)
  x = jax.vmap(sur.encode_plan, in_axes=(0, None))(plans, np.ones((B, K), bool))
  y = _target(bits, keep).astype(np.float32)
  config = sur.SurrogateConfig(lr=3e-3, epochs=45, holdout_fraction=0.1)
  s = sur.make_surrogate(config, sur.num_features(B, K))
  state = s.add(s.init(jax.random.key(0)), x[:160], y[:160])
  state, losses = s.fit(state, jax.random.key(1))
  return s, state, losses, x, y


def test_surrogate_fits_known_function(fitted):
  s, state, losses, x, y = fitted
  assert losses[-1] < 0.05 * losses[0]
  pred = s.predict(state, x[160:])
  mae = float(np.mean(np.abs(np.asarray(pred) - y[160:])))
  baseline = float(np.mean(np.abs(y[160:] - y[:160].mean())))  # about 0.64 points
  assert mae < 0.1 and mae < 0.2 * baseline, (mae, baseline)
  # 16 of the 160 buffered samples were held out of training and scored.
  assert int(np.sum(state.buffer_holdout)) == 16 and float(state.holdout_mae) < 0.1
  tracked = s.prediction_error(s.record_prediction(state, pred, y[160:]))
  assert float(tracked["mae"]) == pytest.approx(mae, rel=1e-5)


def test_predict_is_vmapped_and_traced_once(fitted):
  s, state, _, x, _ = fitted
  traces = []

  def counted(st, feats):
    traces.append(None)
    return s.predict(st, feats)

  f = jax.jit(counted)
  batch = f(state, x[:7])
  other = state.replace(y_mean=state.y_mean + 1.0)
  shifted = f(other, x[7:14])
  assert len(traces) == 1 and batch.shape == (7,)
  np.testing.assert_allclose(shifted, f(state, x[7:14]) + 1.0, rtol=1e-6)
  rows = jax.vmap(s.predict, in_axes=(None, 0))(state, x[:7])
  np.testing.assert_allclose(batch, rows, rtol=1e-6)
  grid = s.predict(state, x[:6].reshape(2, 3, -1))
  np.testing.assert_allclose(grid.reshape(-1), batch[:6], rtol=1e-6)
