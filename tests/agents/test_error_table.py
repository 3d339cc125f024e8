"""Fisher-weighted error table: closed forms on small kernels and the LLA signal."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hirelc_jax.agents import error_table
from hirelc_jax.compression import codes, quantize
from hirelc_jax.compression.kernel_map import build_kernel_map
from hirelc_jax.compression.plan import uniform_plan

RULES = [(r"block(?P<block>\d+)/a/kernel", "a"), (r"block(?P<block>\d+)/b/kernel", "b")]


def _params():
  rng = np.random.default_rng(0)
  return {f"block{i}": {"a": {"kernel": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)},
                        "b": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}}
          for i in range(2)}


@pytest.fixture(scope="module")
def setup():
  params = _params()
  kmap = build_kernel_map(params, RULES, ("a", "b"))
  rng = np.random.default_rng(1)
  fisher = [jnp.asarray(rng.uniform(0.5, 2.0, size=e.shape), jnp.float32) for e in kmap.entries]
  return params, kmap, fisher, error_table.build_error_table(params, fisher, kmap, 10.0)


def test_quant_entries_are_fisher_weighted_squared_errors(setup):
  params, kmap, fisher, table = setup
  e = kmap.entries[0]
  w = params[f"block{e.block}"]["a" if e.kernel == 0 else "b"]["kernel"]
  for bits, fmt, gran in ((3, codes.INT, codes.PER_CHANNEL), (4, codes.FLOAT, codes.UNIFORM),
                          (2, codes.INT, codes.LOG)):
    want = float(jnp.sum(fisher[0] * (quantize.fake_quant(w, bits, fmt, gran) - w) ** 2))
    got = float(table.quant[e.block, e.kernel, bits - 2, fmt, gran])
    assert got == pytest.approx(want, rel=1e-5)


def test_pruned_energy_removes_the_weakest_neurons_first(setup):
  params, kmap, fisher, table = setup
  e = kmap.entries[0]
  w = np.asarray(params[f"block{e.block}"]["a" if e.kernel == 0 else "b"]["kernel"])
  energy = np.sum(np.asarray(fisher[0]) * w * w, axis=0)
  order = np.argsort(np.linalg.norm(w, axis=0))
  np.testing.assert_allclose(table.pruned[e.block, e.kernel, :e.num_out + 1],
                             np.concatenate([[0.0], np.cumsum(energy[order])]), rtol=1e-5)


def test_plan_error_is_additive_and_zero_for_unquantized_plans(setup):
  _, kmap, _, table = setup
  fp32 = uniform_plan(*kmap.plan_shape)
  assert float(error_table.plan_error(table, fp32)) == 0.0
  int4 = uniform_plan(*kmap.plan_shape, bits=4, fmt="int", gran="per_channel")
  slots = error_table.slot_errors(table, int4.bits, int4.keep, int4.fmt, int4.gran)
  np.testing.assert_allclose(slots, table.quant[:, :, 2, codes.INT, codes.PER_CHANNEL], rtol=1e-6)
  assert float(error_table.plan_error(table, int4)) == pytest.approx(float(slots.sum()), rel=1e-6)
  # Keeping half of the neurons: the pruned energy plus half the quantization error.
  half = int4.replace(keep=jnp.full(kmap.plan_shape, 0.5))
  s = error_table.slot_errors(table, half.bits, half.keep, half.fmt, half.gran)
  n = table.num_out
  gone = (n - jnp.round(0.5 * n)).astype(jnp.int32)
  want = jnp.take_along_axis(table.pruned, gone[..., None], -1)[..., 0] + jnp.round(0.5 * n) / n * slots
  np.testing.assert_allclose(s, want, rtol=1e-6)


def test_lla_signal_is_the_blocks_error_times_blocks_and_calibration(setup):
  _, kmap, _, table = setup
  fn = error_table.error_table_fn()
  bits, keep = jnp.array([3, 5]), jnp.array([1.0, 0.75])
  fmt, gran = jnp.array([codes.INT, codes.FLOAT]), jnp.array([codes.PER_CHANNEL, codes.LEARNED])
  d = jax.jit(fn)(table, 1, bits, keep, fmt, gran)
  block = error_table.slot_errors(table, bits, keep, fmt, gran, 1)
  assert float(d) == pytest.approx(10.0 * 2 * float(block.sum()), rel=1e-6)


def test_lla_signal_weighs_each_slot_by_its_own_calibration(setup):
  _, kmap, _, table = setup
  scale = jnp.asarray(np.arange(1.0, 1.0 + np.prod(kmap.plan_shape)).reshape(kmap.plan_shape), jnp.float32)
  bits, keep = jnp.array([3, 5]), jnp.array([1.0, 0.75])
  fmt, gran = jnp.array([codes.INT, codes.FLOAT]), jnp.array([codes.PER_CHANNEL, codes.LEARNED])
  d = error_table.error_table_fn()(table.replace(points_per_error=scale), 1, bits, keep, fmt, gran)
  block = error_table.slot_errors(table, bits, keep, fmt, gran, 1)
  assert float(d) == pytest.approx(2 * float(jnp.sum(scale[1] * block)), rel=1e-6)


def test_fit_group_calibration_recovers_per_slot_slopes_and_censors_collapses():
  rng = np.random.default_rng(0)
  x = rng.uniform(0.0, 0.02, (60, 3))
  truth = np.array([20.0, 100.0, 400.0])
  drops = x @ truth + rng.normal(0, 0.05, 60)
  got = error_table.fit_group_calibration(x, drops, ridge=1e-6)
  np.testing.assert_allclose(got, truth, rtol=0.05)
  # A collapsed plan whose slot the moderate plans never load: the fit must predict it >= 8 points.
  x2 = np.concatenate([x * [1, 1, 0], [[0.0, 0.0, 0.01]]])
  d2 = np.concatenate([x2[:-1] @ truth, [60.0]])
  got = error_table.fit_group_calibration(x2, d2, ridge=1e-6)
  assert got[2] * 0.01 == pytest.approx(8.0, rel=1e-3)
  np.testing.assert_allclose(got[:2], truth[:2], rtol=1e-3)


def test_fit_group_calibration_shares_one_slope_within_a_group():
  rng = np.random.default_rng(2)
  x = rng.uniform(0.0, 0.02, (40, 4))
  drops = x @ [30.0, 30.0, 200.0, 200.0]
  got = error_table.fit_group_calibration(x, drops, groups=[0, 0, 1, 1], ridge=1e-6)
  np.testing.assert_allclose(got, [30.0, 30.0, 200.0, 200.0], rtol=1e-3)


def test_fit_group_calibration_with_a_strong_ridge_is_the_common_slope():
  rng = np.random.default_rng(1)
  x = rng.uniform(0.0, 0.02, (30, 4))
  drops = x @ [20.0, 100.0, 40.0, 400.0]
  common = error_table.fit_points_per_error(x.sum(1), drops)
  np.testing.assert_allclose(error_table.fit_group_calibration(x, drops, ridge=1e6), common, rtol=1e-3)
  assert error_table.fit_group_calibration(x[:2], drops[:2] * 0.1) is None   # two moderate plans: no fit


def test_fit_points_per_error_collapsed_plan_predicted_above_the_cap_leaves_the_fit_alone():
  errors = [0.01, 0.02, 0.03, 0.5]
  drops = [1.0, 2.0, 3.0, 70.0]                # collapsed, and 100 * 0.5 = 50 >= 8 already
  assert error_table.fit_points_per_error(errors, drops) == pytest.approx(100.0)
  assert error_table.fit_points_per_error(errors, drops, censored=False) == pytest.approx(100.0)
  assert error_table.fit_points_per_error([0.01, 0.5], [1.0, 70.0]) == pytest.approx(100.0)
  assert error_table.fit_points_per_error([0.01, 0.5], [1.0, 70.0], censored=False) is None
  assert error_table.fit_points_per_error([0.01, 0.02], [1.0, 2.0]) is None


def test_fit_points_per_error_collapsed_plan_the_table_rates_well_raises_the_slope():
  # The least-squares slope on the moderate plans is 100, which predicts the collapsed plan
  # (E = 0.04) at 4 < 8 points, so it joins the fit at 8: s = (0.14 + 8 * 0.04) / (0.0014 + 0.0016).
  errors, drops = [0.01, 0.02, 0.03, 0.04], [1.0, 2.0, 3.0, 60.0]
  s = error_table.fit_points_per_error(errors, drops)
  assert s == pytest.approx((0.14 + 0.32) / 0.003)
  assert s * 0.04 < 8.0                        # still below the cap: it stays active (consistent)
  assert error_table.fit_points_per_error(errors, drops, censored=False) == pytest.approx(100.0)
  # Only collapsed plans: the least slope that predicts every one at 8 points or more.
  assert error_table.fit_points_per_error([0.02, 0.08], [40.0, 60.0]) == pytest.approx(400.0)


def test_fit_points_per_error_minimises_the_censored_loss():
  rng = np.random.default_rng(0)
  errors = rng.uniform(0.001, 0.05, 30)
  drops = np.where(rng.uniform(size=30) < 0.3, 50.0, 150.0 * errors + rng.normal(0, 0.3, 30))
  s = error_table.fit_points_per_error(errors, drops)
  ok, gone = drops <= 8.0, drops > 8.0
  loss = lambda t: (np.sum((np.maximum(drops[ok], 0) - t * errors[ok]) ** 2)
                    + np.sum(np.maximum(0.0, 8.0 - t * errors[gone]) ** 2))
  grid = np.linspace(0.5 * s, 2.0 * s, 2001)
  assert loss(s) <= min(loss(t) for t in grid) + 1e-9


def test_weight_fisher_matches_per_example_squared_gradients():
  params = _params()
  kmap = build_kernel_map(params, RULES, ("a", "b"))
  x = jnp.asarray(np.random.default_rng(2).normal(size=(8, 6)), jnp.float32)
  y = jnp.arange(8) % 3

  def loss(p, xb, yb):
    h = jnp.tanh(xb @ p["block0"]["a"]["kernel"]) @ p["block0"]["b"]["kernel"]
    h = jnp.tanh(h @ jnp.ones((3, 6)) @ p["block1"]["a"]["kernel"]) @ p["block1"]["b"]["kernel"]
    return optax.softmax_cross_entropy_with_integer_labels(h, yb).mean()

  got = error_table.weight_fisher(loss, params, kmap, x, y, batch_size=4)
  grads = [jax.grad(loss)(params, x[i:i + 1], y[i:i + 1]) for i in range(8)]
  for entry, f in zip(kmap.entries, got):
    name = "a" if entry.kernel == 0 else "b"
    want = np.mean([g[f"block{entry.block}"][name]["kernel"] ** 2 for g in grads], axis=0)
    np.testing.assert_allclose(f, want, rtol=1e-4, atol=1e-9)
