"""Tests for compression/prune.py: exact-count masks with a traced keep ratio."""

from fractions import Fraction

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

from hirelc_jax.compression import prune

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)

_neuron_masks = jax.jit(jax.vmap(prune.neuron_mask, in_axes=(None, 0)))
_weight_masks = jax.jit(jax.vmap(prune.weight_mask, in_axes=(None, 0)))
_kept_counts = jax.jit(prune.kept_count, static_argnums=1)


def _exact_count(milli_keep: int, n: int) -> int:
  """round(keep * n) on the exact decimal keep, half to even, clipped to [1, n]."""
  return min(max(round(Fraction(milli_keep, 1000) * n), 1), n)


def _keeps(milli):
  return jnp.asarray(np.asarray(milli, np.float64) / 1000.0, jnp.float32)


class KernelTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(
      (0.25, 2, 1), (0.5, 5, 2), (0.7, 5, 4), (0.3, 5, 2), (0.2, 10, 2), (0.35, 10, 4),
      (0.45, 10, 4), (0.65, 10, 6), (1.0, 7, 7), (0.0, 3, 1), (1.5, 3, 3), (0.2, 1, 1))
  def test_kept_count_golden(self, keep, n, expected):
    count = self.variant(lambda k: prune.kept_count(k, n))(jnp.float32(keep))
    self.assertEqual(int(count), expected)
    self.assertEqual(int(count), min(max(round(keep * n), 1), n))

  @chex.variants(with_jit=True, without_jit=True)
  def test_all_equal_scores_keep_lowest_indices(self):
    mask = self.variant(prune.topk_mask)(jnp.ones((7,)), jnp.float32(3 / 7))
    np.testing.assert_array_equal(mask, [1, 1, 1, 0, 0, 0, 0])
    mask2d = self.variant(prune.topk_mask)(jnp.zeros((2, 3)), jnp.float32(0.5))
    np.testing.assert_array_equal(mask2d, [[1, 1, 1], [0, 0, 0]])

  @chex.variants(with_jit=True, without_jit=True)
  def test_nan_never_wins_and_signed_zeros_tie(self):
    scores = jnp.array([jnp.nan, -jnp.inf, -0.0, 0.0, 2.0, jnp.nan])
    topk = self.variant(prune.topk_mask)
    np.testing.assert_array_equal(topk(scores, jnp.float32(0.5)), [0, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(topk(scores, jnp.float32(4 / 6)), [0, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(topk(scores, jnp.float32(5 / 6)), [1, 1, 1, 1, 1, 0])

  @chex.variants(with_jit=True, without_jit=True)
  def test_integer_scores(self):
    mask = self.variant(prune.topk_mask)(jnp.array([3, -7, 5, 3], jnp.int32), jnp.float32(0.5))
    np.testing.assert_array_equal(mask, [1, 0, 1, 0])

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      # Columns: l2 = [5, 1, 4], l1 = [7, 1, 4]; keep 2 of 3.
      ("l2", "l2", None, [1, 0, 1]),
      # Same order as l2 here; test_l1_differs_from_l2 separates them.
      ("l1", "l1", None, [1, 0, 1]),
      # taylor: sum (w*g)^2 = [9*0 + 16*0, 1*1, 16*1] = [0, 1, 16].
      ("taylor", "taylor", [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]], [0, 1, 1]),
  )
  def test_neuron_golden(self, method, grad, expected):
    w = jnp.array([[3.0, 1.0, 4.0], [-4.0, 0.0, 0.0]])
    g = None if grad is None else jnp.array(grad)
    mask = self.variant(lambda w, k, g: prune.neuron_mask(w, k, method, g))(w, jnp.float32(2 / 3), g)
    np.testing.assert_array_equal(mask, expected)
    self.assertEqual(mask.dtype, w.dtype)

  @chex.variants(with_jit=True, without_jit=True)
  def test_l1_differs_from_l2(self):
    # Column 0: l1 = 2, l2 = sqrt(2); column 1: l1 = 1.8, l2 = 1.8.
    w = jnp.array([[1.0, 1.8], [1.0, 0.0]])
    l1 = self.variant(lambda w, k: prune.neuron_mask(w, k, "l1"))(w, jnp.float32(0.5))
    l2 = self.variant(lambda w, k: prune.neuron_mask(w, k, "l2"))(w, jnp.float32(0.5))
    np.testing.assert_array_equal(l1, [1, 0])
    np.testing.assert_array_equal(l2, [0, 1])
    np.testing.assert_allclose(prune.neuron_importance(w, "l2"), [np.sqrt(2), 1.8], rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_weight_golden(self):
    w = jnp.array([[0.5, -2.0], [1.0, -0.1]])
    g = jnp.array([[4.0, 0.1], [1.0, 1.0]])
    w0 = jnp.array([[0.1, -2.5], [1.5, 0.0]])
    mask = self.variant(lambda w, k, g, w0, m: prune.weight_mask(w, k, m, g, w0),
                        static_argnums=4)
    half = jnp.float32(0.5)
    # |w| = [.5, 2, 1, .1]
    np.testing.assert_array_equal(mask(w, half, g, w0, "magnitude"), [[0, 1], [1, 0]])
    # |w*g| = [2, .2, 1, .1]
    np.testing.assert_array_equal(mask(w, half, g, w0, "gradient"), [[1, 0], [1, 0]])
    # w*(w-w0) = [.2, -1, -.5, .01]: moving away from zero wins.
    np.testing.assert_array_equal(mask(w, half, g, w0, "movement"), [[1, 0], [0, 1]])

  @chex.variants(with_jit=True, without_jit=True)
  def test_keep_one_keeps_everything_and_full_mask_is_identity(self):
    w = jax.random.normal(jax.random.PRNGKey(0), (5, 6))
    b = jnp.arange(6.0)
    mask = self.variant(prune.neuron_mask)(w, jnp.float32(1.0))
    np.testing.assert_array_equal(mask, np.ones(6))
    np.testing.assert_array_equal(self.variant(prune.weight_mask)(w, jnp.float32(1.0)), np.ones((5, 6)))
    pw, pb = self.variant(prune.apply_neuron_mask)(w, b, mask)
    np.testing.assert_array_equal(pw, w)
    np.testing.assert_array_equal(pb, b)

  @chex.variants(with_jit=True, without_jit=True)
  def test_bias_masked_with_its_neuron(self):
    w = jnp.array([[1.0, 5.0, 2.0, 0.1]])
    b = jnp.array([10.0, 20.0, 30.0, 40.0])
    def fn(w, b, k):
      return prune.apply_neuron_mask(w, b, prune.neuron_mask(w, k))
    pw, pb = self.variant(fn)(w, b, jnp.float32(0.5))
    np.testing.assert_array_equal(pw, [[0.0, 5.0, 2.0, 0.0]])
    np.testing.assert_array_equal(pb, [0.0, 20.0, 30.0, 0.0])
    pw_none, pb_none = prune.apply_neuron_mask(w, None, jnp.array([1.0, 0.0, 1.0, 0.0]))
    self.assertIsNone(pb_none)
    np.testing.assert_array_equal(pw_none, [[1.0, 0.0, 2.0, 0.0]])

  @chex.variants(with_jit=True, without_jit=True)
  def test_conv_kernel_masks_per_output_filter(self):
    scale = jnp.array([3.0, 0.5, 2.0, 0.1, 4.0, 0.2, 1.0, 0.3])
    w = jnp.ones((3, 3, 4, 8)) * scale
    mask = self.variant(prune.neuron_mask)(w, jnp.float32(0.5))
    np.testing.assert_array_equal(mask, [1, 0, 1, 0, 1, 0, 1, 0])
    pw, _ = prune.apply_neuron_mask(w, None, mask)
    chex.assert_shape(pw, (3, 3, 4, 8))
    np.testing.assert_array_equal(pw[..., 1], 0.0)
    np.testing.assert_array_equal(pw[..., 0], w[..., 0])

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((0.3,), (0.5,), (0.65,), (0.8,))
  def test_allocate_pruning(self, target):
    sens = jnp.array([0.9, 0.1, 0.5, 0.3])
    sizes = jnp.array([100.0, 400.0, 250.0, 50.0])
    p = self.variant(lambda s, z, t: prune.allocate_pruning(s, z, t, min_prune=0.1, max_prune=0.8))(
        sens, sizes, jnp.float32(target))
    np.testing.assert_allclose(jnp.sum(p * sizes) / jnp.sum(sizes), target, atol=1e-4)
    self.assertTrue(bool(jnp.all((p >= 0.1 - 1e-6) & (p <= 0.8 + 1e-6))))
    self.assertEqual(int(jnp.argmax(p)), 1)  # least sensitive layer pruned most
    self.assertTrue(bool(jnp.all(jnp.diff(p[jnp.argsort(sens)]) <= 1e-6)))  # monotone


def test_allocate_pruning_equal_sensitivity_is_uniform_and_vmaps():
  p = prune.allocate_pruning(jnp.full((3,), 0.4), jnp.array([1.0, 2.0, 3.0]), 0.5)
  np.testing.assert_allclose(p, 0.5, atol=1e-5)
  targets = jnp.array([0.2, 0.4, 0.6])
  batch = jax.jit(jax.vmap(lambda t: prune.allocate_pruning(
      jnp.array([0.2, 0.9]), jnp.array([10.0, 30.0]), t)))(targets)
  np.testing.assert_allclose((batch * jnp.array([10.0, 30.0])).sum(-1) / 40.0, targets, atol=1e-4)


@pytest.mark.parametrize("target, kwargs", [
    (0.9, {}), (0.05, {"min_prune": 0.1}), (-0.1, {}), (0.5, {"min_prune": 0.6, "max_prune": 0.4})])
def test_allocate_pruning_unattainable_raises(target, kwargs):
  with pytest.raises(ValueError):
    prune.allocate_pruning(jnp.array([0.1, 0.2]), jnp.array([5, 5]), target, **kwargs)


def test_neuron_mask_jit_traces_once_for_ten_keeps():
  traces = []
  def fn(w, keep):
    traces.append(1)
    return prune.neuron_mask(w, keep)
  jitted = jax.jit(fn)
  w = jax.random.normal(jax.random.PRNGKey(1), (4, 10))
  for keep in np.linspace(0.2, 1.0, 10):
    mask = jitted(w, jnp.float32(keep))
    assert int(mask.sum()) == prune.kept_count(jnp.float32(keep), 10)
  assert len(traces) == 1


def test_vmap_over_stacked_kernels_matches_per_kernel_calls():
  ws = jax.random.normal(jax.random.PRNGKey(2), (4, 3, 9))
  keeps = jnp.array([0.2, 0.5, 0.77, 1.0])
  batched = jax.jit(jax.vmap(prune.neuron_mask, in_axes=(0, 0)))(ws, keeps)
  grads = jnp.flip(ws, axis=0)
  batched_w = jax.jit(jax.vmap(lambda w, k, g: prune.weight_mask(w, k, "gradient", g)))(
      ws, keeps, grads)
  single = jax.jit(prune.neuron_mask)
  single_w = jax.jit(lambda w, k, g: prune.weight_mask(w, k, "gradient", g))
  for i in range(4):
    np.testing.assert_array_equal(batched[i], single(ws[i], keeps[i]))
    np.testing.assert_array_equal(batched_w[i], single_w(ws[i], keeps[i], grads[i]))


def test_errors():
  w = jnp.ones((2, 3))
  with pytest.raises(ValueError, match="l2, l1, taylor"):
    prune.neuron_mask(w, 0.5, method="l3")
  with pytest.raises(ValueError, match="magnitude, gradient, movement"):
    prune.weight_mask(w, 0.5, method="l2")
  with pytest.raises(ValueError, match="taylor.*grad"):
    jax.jit(lambda w, k: prune.neuron_mask(w, k, "taylor"))(w, 0.5)
  with pytest.raises(ValueError, match="movement.*w0"):
    prune.weight_mask(w, 0.5, method="movement", grad=w)
  with pytest.raises(ValueError, match="gradient.*grad"):
    prune.weight_mask(w, 0.5, method="gradient", w0=w)
  with pytest.raises(ValueError):
    prune.kept_count(0.5, 0)


@SETTINGS
@given(milli=st.lists(st.integers(200, 1000), min_size=8, max_size=8),
       n=st.sampled_from([1, 2, 3, 5, 8, 10, 16, 33, 100, 257]))
def test_kept_count_matches_exact_decimal_rounding(milli, n):
  counts = _kept_counts(_keeps(milli), n)
  assert counts.tolist() == [_exact_count(m, n) for m in milli]


@SETTINGS
@given(data=st.data(), shape=st.sampled_from([(3, 5), (2, 2, 2, 6), (4, 1), (7, 12)]))
def test_masks_exact_counts_and_monotone(data, shape):
  # Few distinct integer values: plenty of ties.
  vals = data.draw(st.lists(st.integers(-3, 3), min_size=int(np.prod(shape)),
                            max_size=int(np.prod(shape))))
  w = jnp.asarray(vals, jnp.float32).reshape(shape)
  milli = sorted(data.draw(st.lists(st.integers(200, 1000), min_size=5, max_size=5)))
  keeps = _keeps(milli)
  structured = np.asarray(_neuron_masks(w, keeps))
  unstructured = np.asarray(_weight_masks(w, keeps))
  out = shape[-1]
  assert structured.sum(-1).tolist() == [_exact_count(m, out) for m in milli]
  assert unstructured.reshape(len(milli), -1).sum(-1).tolist() == [
      _exact_count(m, w.size) for m in milli]
  # A larger keep contains the mask of a smaller keep.
  assert np.all(np.diff(structured, axis=0) >= 0)
  assert np.all(np.diff(unstructured, axis=0) >= 0)
  # Every kept neuron scores at least as high as every pruned one.
  scores = np.asarray(prune.neuron_importance(w))
  for mask in structured:
    if 0 < mask.sum() < out:
      assert scores[mask == 1].min() >= scores[mask == 0].max()


def _lexsort_reference(scores: np.ndarray, count: int) -> np.ndarray:
  """The `count` highest scores by (NaN last, descending score, ascending index), via a sort."""
  flat = scores.ravel()
  nan = np.isnan(flat) if flat.dtype.kind == "f" else np.zeros(flat.shape, bool)
  neg = -np.where(nan, 0, flat).astype(np.float64)
  order = np.lexsort((np.arange(flat.size), neg, nan))
  mask = np.zeros(flat.size, bool)
  mask[order[:count]] = True
  return mask.reshape(scores.shape)


@SETTINGS
@given(data=st.data(), n=st.sampled_from([1, 2, 7, 64, 300]),
       kind=st.sampled_from(["float", "int", "uint8", "bool"]))
def test_radix_select_matches_a_sort(data, n, kind):
  # Few distinct values (ties), NaN, both zeros and infinities; every count from 1 to n. (No
  # float32 subnormals: XLA:CPU flushes them to zero, so they tie with zero there.)
  if kind == "float":
    pool = [np.nan, -np.inf, np.inf, -0.0, 0.0, -1.5, 1.5, 2.0 ** -126, -2.0 ** -126, 2.0 ** 100]
    scores = np.asarray(data.draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n)), np.float32)
  elif kind == "int":
    scores = np.asarray(data.draw(st.lists(st.sampled_from([-2 ** 31, -5, 0, 5, 2 ** 31 - 1]),
                                           min_size=n, max_size=n)), np.int32)
  elif kind == "uint8":
    scores = np.asarray(data.draw(st.lists(st.sampled_from([0, 7, 255]), min_size=n, max_size=n)), np.uint8)
  else:
    scores = np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
  counts = jnp.arange(1, n + 1, dtype=jnp.int32)
  key = prune.order_key(jnp.asarray(scores))
  got = np.asarray(jax.jit(jax.vmap(prune.select_top, in_axes=(None, 0)))(key, counts))
  for c in range(1, n + 1):
    np.testing.assert_array_equal(got[c - 1], _lexsort_reference(scores, c), err_msg=f"count {c}")
