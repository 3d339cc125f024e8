"""Kernel maps, apply_plan and accounting on a small hand-made tree."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hirelc_jax.compression import accounting, apply, codes, prune, quantize
from hirelc_jax.compression.kernel_map import build_kernel_map
from hirelc_jax.compression.plan import make_plan, stack_plans, uniform_plan

RULES = ((r"block_(?P<block>\d+)/fc/kernel$", "fc"), (r"block_(?P<block>\d+)/proj/kernel$", "proj"))
NAMES = ("fc", "proj")


def small_params(seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  block = lambda: {"fc": {"kernel": f(4, 3), "bias": f(3)}, "proj": {"kernel": f(3, 4)}}
  return {"block_0": block(), "block_1": block(), "head": {"kernel": f(4, 2), "bias": f(2)},
          "norm": {"scale": f(4)}}


def hand_plan():
  return make_plan(bits=[[4, 8], [32, 2]], keep=[[1.0, 0.5], [1.0, 1.0]],
                   fmt=[["int", "int"], ["int", "int"]],
                   gran=[["uniform", "per_channel"], ["uniform", "asymmetric"]])


def test_kernel_map_matches_first_rule_in_block_and_kernel_order():
  kmap = build_kernel_map(small_params(), RULES, NAMES)
  assert kmap.plan_shape == (2, 2)
  assert [e.path for e in kmap.entries] == [
      ("block_0", "fc", "kernel"), ("block_0", "proj", "kernel"),
      ("block_1", "fc", "kernel"), ("block_1", "proj", "kernel")]
  assert kmap.entries[0].bias_path == ("block_0", "fc", "bias")
  assert kmap.entries[1].bias_path is None
  assert kmap.present.all()


@pytest.mark.parametrize("rules, message", [
    (((r"nothing(?P<block>\d+)", "fc"),), "no parameter path matched"),
    (((r"block_(?P<block>\d+)/fc/bias", "fc"),), "must match weight matrices"),
    (((r"block_(?P<block>\d+)/fc/kernel", "mlp"),), "not in kernel_names"),
    (((r"block_\d+/fc/kernel", "fc"),), "named group"),
    (((r"block_(?P<block>\d+)/(fc|proj)/kernel", "fc"),), "both map to block"),
])
def test_kernel_map_errors(rules, message):
  with pytest.raises(ValueError, match=message):
    build_kernel_map(small_params(), rules, NAMES)


def test_accounting_by_hand():
  params, plan = small_params(), hand_plan()
  kmap = build_kernel_map(params, RULES, NAMES)
  # block_0/fc: 4b*3*4 + scale 32 + bias 3*32 = 176; block_0/proj: 8b*2kept*3 + 2 scales*32
  # + bitmap 4 = 116; block_1/fc: fp32 12*32 + bias 96 = 480; block_1/proj: 2b*12 + scale and
  # zero point 64 = 88; head and norm (14 params) at 32 bits = 448.
  np.testing.assert_allclose(accounting.kernel_storage_bits(plan, kmap, params), [176, 116, 480, 88])
  assert accounting.uncompressed_bits(params, kmap) == 448
  assert float(accounting.storage_bits(params, plan, kmap)) == 1308
  assert accounting.fp32_bits(params) == 68 * 32
  np.testing.assert_allclose(accounting.compression_ratio(params, plan, kmap), 2176 / 1308, rtol=1e-6)
  # paper: mean over blocks of mean over kernels of b/32*keep = mean(0.125, 0.53125)
  np.testing.assert_allclose(accounting.paper_compression_ratio(plan, kmap), 1 / 0.328125, rtol=1e-6)


def test_identity_plan_is_identity():
  params = small_params()
  kmap = build_kernel_map(params, RULES, NAMES)
  out = apply.apply_plan(params, uniform_plan(2, 2), kmap)
  chex.assert_trees_all_equal(out, params)
  np.testing.assert_allclose(accounting.compression_ratio(params, uniform_plan(2, 2), kmap), 1.0)


def test_apply_plan_prunes_bias_and_quantizes():
  params, plan = small_params(), hand_plan()
  kmap = build_kernel_map(params, RULES, NAMES)
  out = apply.apply_plan(params, plan, kmap)
  proj = np.asarray(out["block_0"]["proj"]["kernel"])
  pruned = ~np.any(proj != 0, axis=0)
  assert pruned.sum() == 2  # keep 0.5 of 4 neurons
  norms = np.linalg.norm(np.asarray(params["block_0"]["proj"]["kernel"]), axis=0)
  assert set(np.flatnonzero(pruned)) == set(np.argsort(norms)[:2])
  expected = quantize.fake_quant(params["block_0"]["fc"]["kernel"], 4, codes.INT, codes.UNIFORM)
  np.testing.assert_array_equal(out["block_0"]["fc"]["kernel"], expected)
  chex.assert_trees_all_equal(out["head"], params["head"])
  np.testing.assert_array_equal(out["block_1"]["fc"]["kernel"], params["block_1"]["fc"]["kernel"])


def test_pruned_bias_is_zeroed():
  params = small_params()
  kmap = build_kernel_map(params, RULES, NAMES)
  plan = uniform_plan(2, 2, keep=0.34)  # round(0.34*3)=1 of 3 fc neurons kept
  out = apply.apply_plan(params, plan, kmap)
  fc, bias = np.asarray(out["block_0"]["fc"]["kernel"]), np.asarray(out["block_0"]["fc"]["bias"])
  alive = np.any(fc != 0, axis=0)
  assert alive.sum() == 1
  assert np.all(bias[~alive] == 0) and np.all(bias[alive] != 0)


def test_one_compilation_serves_many_plans_and_vmap_matches():
  params = small_params()
  kmap = build_kernel_map(params, RULES, NAMES)
  traces = []

  def f(p, plan):
    traces.append(1)
    return apply.apply_plan(p, plan, kmap)

  jf = jax.jit(f)
  rng = np.random.default_rng(1)
  plans = []
  for _ in range(8):
    fmt = rng.integers(0, 3, (2, 2))
    gran = np.where(fmt == 0, rng.integers(0, 5, (2, 2)), rng.integers(0, 4, (2, 2)))
    plans.append(make_plan(rng.integers(2, 9, (2, 2)), rng.uniform(0.2, 1.0, (2, 2)), fmt, gran))
  singles = [jf(params, p) for p in plans]
  assert len(traces) == 1
  batched = jax.jit(jax.vmap(f, in_axes=(None, 0)))(params, stack_plans(plans))
  for i, single in enumerate(singles):
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], batched), single, atol=1e-6)


def test_gradients_pass_straight_through_and_stop_at_pruned_neurons():
  params = small_params()
  kmap = build_kernel_map(params, RULES, NAMES)
  plan = uniform_plan(2, 2, bits=4, keep=0.5, gran="uniform")
  masks = apply.compute_masks(params, plan, kmap)
  grads = jax.grad(lambda p: sum(jnp.sum(x) for x in jax.tree.leaves(
      apply.apply_plan(p, plan, kmap, masks=masks))))(params)
  g = np.asarray(grads["block_0"]["proj"]["kernel"])
  m = np.asarray(masks[1])
  np.testing.assert_array_equal(g, np.broadcast_to(m, g.shape))


@pytest.mark.parametrize("bad, message", [
    (dict(bits=[[9, 8], [8, 8]]), "bits=9"),
    (dict(keep=[[0.1, 1], [1, 1]]), "keep ratio 0.1"),
])
def test_bad_plans_raise(bad, message):
  args = dict(bits=[[8, 8], [8, 8]], keep=[[1.0, 1.0], [1.0, 1.0]], fmt=[[0, 0], [0, 0]],
              gran=[[0, 0], [0, 0]])
  args.update(bad)
  with pytest.raises(ValueError, match=message):
    make_plan(**args)


def test_nan_weights_and_wrong_plan_shape_raise():
  params = small_params()
  kmap = build_kernel_map(params, RULES, NAMES)
  with pytest.raises(ValueError, match="plan has shape"):
    apply.apply_plan(params, uniform_plan(3, 2), kmap)
  params["block_1"]["proj"]["kernel"] = params["block_1"]["proj"]["kernel"].at[0, 0].set(jnp.nan)
  with pytest.raises(ValueError, match="block_1/proj/kernel holds NaN"):
    apply.apply_plan(params, uniform_plan(2, 2, bits=4), kmap)


def test_compute_masks_pads_kernels_of_every_width_like_one_mask_each():
  # Output widths 3, 8 and 5 share one padded radix select; each must equal its own mask.
  params = {f"layer{i}": {"kernel": jax.random.normal(jax.random.key(i), (4, out))}
            for i, out in enumerate((3, 8, 5))}
  params["layer1"]["kernel"] = params["layer1"]["kernel"].at[:, 2].set(jnp.nan)  # a NaN score
  kmap = build_kernel_map(params, [(r"layer(?P<block>\d+)/kernel$", "dense")], ("dense",))
  for keep in (0.2, 0.5, 0.8, 1.0):
    plan = make_plan(np.full(kmap.plan_shape, 4), np.full(kmap.plan_shape, keep),
                     np.zeros(kmap.plan_shape, int), np.zeros(kmap.plan_shape, int))
    masks = apply.compute_masks(params, plan, kmap)
    for entry, mask in zip(kmap.entries, masks):
      w = params[entry.path[0]]["kernel"]
      np.testing.assert_array_equal(mask, prune.neuron_mask(w, jnp.float32(keep)))
      assert mask.shape == (w.shape[-1],)
