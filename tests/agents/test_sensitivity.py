"""Tests for agents/sensitivity.py against closed forms on a deep linear model.

Model: h_i = x_i W0, out_i = h_i W1, loss = mean_i 0.5 ||out_i - y_i||^2, with
residual r_i = out_i - y_i. Per-sample gradients are outer products:
  g1_i = h_i^T r_i,   g0_i = x_i^T (r_i W1^T),
so ||g1_i||_F^2 = ||h_i||^2 ||r_i||^2 and ||g0_i||_F^2 = ||x_i||^2 ||r_i W1^T||^2.
Hessian diagonal blocks (second derivatives of 0.5 ||x W0 W1 - y||^2):
  d^2/dW1_ab^2 = h_a^2           -> tr(H_11) = out_dim * mean_i ||h_i||^2,
  d^2/dW0_ab^2 = x_a^2 ||W1_b||^2 -> tr(H_00) = mean_i ||x_i||^2 * ||W1||_F^2.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hirelc_jax.agents import sensitivity as sens
from hirelc_jax.compression.kernel_map import build_kernel_map

D_IN, D_H, D_OUT, N = 4, 3, 2, 10
RULES = ((r"block_(?P<block>\d+)/fc/kernel$", "fc"),)


def loss_fn(params, x, y):
  out = x @ params["block_0"]["fc"]["kernel"] @ params["block_1"]["fc"]["kernel"]
  return jnp.mean(0.5 * jnp.sum((out - y) ** 2, axis=-1))


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  w0 = rng.normal(size=(D_IN, D_H)).astype(np.float32)
  w1 = rng.normal(size=(D_H, D_OUT)).astype(np.float32)
  x = rng.normal(size=(N, D_IN)).astype(np.float32)
  y = rng.normal(size=(N, D_OUT)).astype(np.float32)
  params = {"block_0": {"fc": {"kernel": jnp.asarray(w0)}},
            "block_1": {"fc": {"kernel": jnp.asarray(w1)}}}
  return params, x, y, w0.astype(np.float64), w1.astype(np.float64)


def _closed_forms(x, y, w0, w1):
  x, y = x.astype(np.float64), y.astype(np.float64)
  h = x @ w0
  r = h @ w1 - y
  g0 = np.einsum("na,nb->nab", x, r @ w1.T)
  g1 = np.einsum("na,nb->nab", h, r)
  grads = [g0.mean(0), g1.mean(0)]
  return {
      "fisher": np.array([np.mean(np.sum(g0 ** 2, (1, 2))), np.mean(np.sum(g1 ** 2, (1, 2)))]),
      "hutchinson": np.array([np.mean(np.sum(x ** 2, 1)) * np.sum(w1 ** 2),
                              D_OUT * np.mean(np.sum(h ** 2, 1))]),
      "grad_norm": np.array([np.linalg.norm(g) for g in grads]),
      "snip": np.array([np.sum(np.abs(w * g)) for w, g in zip((w0, w1), grads)]),
  }


@pytest.fixture(scope="module")
def problem():
  params, x, y, w0, w1 = _problem()
  kmap = build_kernel_map(params, RULES, ("fc",))
  return params, kmap, x, y, _closed_forms(x, y, w0, w1)


def test_per_sample_gradient_closed_form_matches_autodiff(problem):
  params, _, x, y, _ = problem
  g1 = jax.grad(lambda p: loss_fn(p, x[:1], y[:1]))(params)["block_1"]["fc"]["kernel"]
  h = x[:1] @ params["block_0"]["fc"]["kernel"]
  np.testing.assert_allclose(g1, h.T @ (h @ params["block_1"]["fc"]["kernel"] - y[:1]),
                             rtol=1e-5)


@pytest.mark.parametrize("method", ["fisher", "grad_norm", "snip"])
@pytest.mark.parametrize("batch_size", [4, 16])
def test_exact_methods_match_closed_form(problem, method, batch_size):
  params, kmap, x, y, expected = problem
  # batch_size 4 over 10 samples: two scanned chunks plus a remainder of 2.
  out = sens.estimate_sensitivity(loss_fn, params, kmap, x, y, method=method,
                                  num_samples=N, batch_size=batch_size)
  assert out.raw_kernel.shape == (2, 1) and out.block.shape == (2,)
  np.testing.assert_allclose(out.raw_kernel[:, 0], expected[method], rtol=1e-5)
  np.testing.assert_allclose(out.raw_block, out.raw_kernel.sum(1), rtol=1e-6)
  np.testing.assert_allclose(out.kernel[:, 0], expected[method] / expected[method].max(),
                             rtol=1e-5)


def test_fisher_uses_first_num_samples(problem):
  params, kmap, x, y, _ = problem
  _, _, _, w0, w1 = _problem()
  expected = _closed_forms(x[:6], y[:6], w0, w1)["fisher"]
  out = sens.estimate_sensitivity(loss_fn, params, kmap, x, y, num_samples=6, batch_size=4)
  np.testing.assert_allclose(out.raw_kernel[:, 0], expected, rtol=1e-5)


def test_fisher_is_not_the_squared_batch_gradient(problem):
  params, kmap, x, y, expected = problem
  out = sens.estimate_sensitivity(loss_fn, params, kmap, x, y, num_samples=N)
  squared_batch = expected["grad_norm"] ** 2
  assert np.all(np.asarray(out.raw_kernel[:, 0]) > 1.5 * squared_batch)


def test_hutchinson_matches_hessian_trace(problem):
  # Off-diagonal Hessian terms make single probes noisy; 5000 probes give ~1.5 % std.
  params, kmap, x, y, expected = problem
  out = sens.estimate_sensitivity(loss_fn, params, kmap, x, y, method="hutchinson",
                                  num_samples=N, batch_size=4, num_probes=5000,
                                  key=jax.random.key(1))
  np.testing.assert_allclose(out.raw_kernel[:, 0], expected["hutchinson"], rtol=0.05)


def test_hutchinson_exact_for_diagonal_hessian():
  # One kernel feeding the output directly with orthogonal inputs: H = diag, so
  # every Rademacher probe gives v^T H v = tr(H) = out_dim * mean ||x_i||^2.
  x = np.diag(np.array([1.0, 2.0, 3.0, 0.5], np.float32))
  y = np.ones((4, D_OUT), np.float32)
  params = {"block_0": {"fc": {"kernel": jnp.ones((4, D_OUT))}}}
  kmap = build_kernel_map(params, RULES, ("fc",))
  lin = lambda p, xb, yb: jnp.mean(0.5 * jnp.sum((xb @ p["block_0"]["fc"]["kernel"] - yb) ** 2, -1))
  out = sens.estimate_sensitivity(lin, params, kmap, x, y, method="hutchinson", num_probes=3)
  np.testing.assert_allclose(out.raw_kernel[0, 0], D_OUT * np.mean(np.sum(x ** 2, 1)), rtol=1e-5)


def test_composite_is_mean_of_normalised_members(problem):
  params, kmap, x, y, expected = problem
  out = sens.estimate_sensitivity(loss_fn, params, kmap, x, y, method="composite",
                                  num_samples=N, composite_methods=("fisher", "grad_norm"))
  mix = (expected["fisher"] / expected["fisher"].max()
         + expected["grad_norm"] / expected["grad_norm"].max()) / 2
  np.testing.assert_allclose(out.raw_kernel[:, 0], mix, rtol=1e-5)
  np.testing.assert_allclose(out.kernel[:, 0], mix / mix.max(), rtol=1e-5)


def test_normalisation_and_absent_slots():
  params, x, y, _, _ = _problem()
  kmap = build_kernel_map(params, RULES, ("fc", "unused"))
  for how in ("max", "minmax"):
    out = sens.estimate_sensitivity(loss_fn, params, kmap, x, y, normalize=how, num_samples=N)
    k = np.asarray(out.kernel)
    assert k.shape == (2, 2) and np.all(k[:, 1] == 0)
    assert k[:, 0].max() == pytest.approx(1.0) and np.asarray(out.block).max() == pytest.approx(1.0)
    if how == "minmax":
      assert k[:, 0].min() == 0.0
    else:
      assert k[:, 0].min() > 0.0


def test_normalize_scores_edge_cases():
  present = np.array([True, True, False])
  np.testing.assert_allclose(sens.normalize_scores([0.0, 0.0, 5.0], present), [0, 0, 0])
  np.testing.assert_allclose(sens.normalize_scores([2.0, 2.0, 9.0], present, "minmax"), [1, 1, 0])
  np.testing.assert_allclose(sens.normalize_scores([-1.0, 4.0, 9.0], present), [0, 1, 0])


def test_invalid_arguments_raise_before_compute(problem):
  _, kmap, x, y, _ = problem

  def exploding(*_):
    raise AssertionError("loss_fn must not be called")

  params = problem[0]
  with pytest.raises(ValueError, match="fisher, hutchinson, grad_norm, snip, composite"):
    sens.estimate_sensitivity(exploding, params, kmap, x, y, method="hessian")
  with pytest.raises(ValueError, match="normalization"):
    sens.estimate_sensitivity(exploding, params, kmap, x, y, normalize="zscore")
  with pytest.raises(ValueError, match="composite member"):
    sens.estimate_sensitivity(exploding, params, kmap, x, y, method="composite",
                              composite_methods=("fisher", "composite"))
  with pytest.raises(ValueError, match="not in params"):
    sens.estimate_sensitivity(exploding, {"params": params}, kmap, x, y)
