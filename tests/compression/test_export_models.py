"""The export on registry models: its bytes are the counted storage, and ResNet's batch_stats travel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from hirelc_jax import models
from hirelc_jax.compression import accounting, apply, codes, export
from hirelc_jax.compression.kernel_map import build_kernel_map
from hirelc_jax.compression.plan import make_plan
from hirelc_jax.models import cnn

from export_helpers import assert_same

# vit_mu: 2 blocks x (qkv, attn_proj, mlp_fc1, mlp_fc2). Pruned and unpruned kernels, 2..8 bits,
# every format and granularity, and two unquantized (fp32) kernels, one of them pruned.
VIT_MU_PLAN = dict(
    bits=[[4, 32, 3, 2], [8, 5, 32, 6]],
    keep=[[1.0, 0.5, 0.75, 1.0], [0.6, 1.0, 1.0, 0.35]],
    fmt=[["int", "int", "float", "int"], ["float_exp", "int", "int", "float"]],
    gran=[["per_channel", "uniform", "learned", "asymmetric"], ["uniform", "log", "per_channel", "learned"]])


@pytest.fixture(scope="module")
def vit_mu():
  spec = models.build_model("vit_mu", num_classes=10, image_shape=(8, 8, 1))
  variables = models.init_params(spec, jax.random.key(0))
  # Random-init biases are zero; give them values so the kept-bias entries are checked.
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: x + jnp.asarray(0.01 * rng.normal(size=x.shape), x.dtype),
                        variables["params"])
  kmap = models.kernel_map(params, spec)
  plan = make_plan(**VIT_MU_PLAN)
  return spec, params, kmap, plan, apply.apply_plan(params, plan, kmap)


def test_vit_mu_file_is_the_counted_storage_plus_a_fixed_header(vit_mu, tmp_path):
  _, params, kmap, plan, compressed = vit_mu
  info = export.export_model(compressed, plan, kmap, tmp_path / "m.npz")
  counted = float(accounting.storage_bits(params, plan, kmap))
  assert info.storage_bits == counted and info.num_kernels == 8
  pruned = sum(k < 1 for k in np.asarray(plan.keep).ravel())
  assert 0 < pruned < 8
  # Only the keep bitmaps and the packed codes are padded, each to a whole byte: < 8 bits apiece.
  padding = 8 * info.payload_bytes - counted
  assert 0 <= padding <= 7 * (pruned + 6)
  assert info.file_bytes <= info.counted_bytes + 4096
  assert info.file_bytes - info.payload_bytes - info.header_bytes < 1024  # the two .npz members' headers


def test_vit_mu_round_trip_is_bitwise_and_runs_the_same(vit_mu, tmp_path):
  spec, _, kmap, plan, compressed = vit_mu
  export.export_model(compressed, plan, kmap, tmp_path / "m.npz")
  variables, loaded_plan = export.load_variables(tmp_path / "m.npz")
  assert set(variables) == {"params"}
  assert_same(compressed, variables["params"])
  for field in export.PLAN_FIELDS:
    a, b = getattr(plan, field), getattr(loaded_plan, field)
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8, 8, 1)), jnp.float32)
  np.testing.assert_array_equal(spec.module.apply({"params": compressed}, x),
                                spec.module.apply(variables, x))


@pytest.fixture(scope="module")
def resnet():
  """A narrow ResNet-18 (width 8) with trained-looking BatchNorm statistics, under a pruning plan."""
  module = cnn.ResNet18(num_classes=10, width=8)
  variables = dict(module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False))
  rng = np.random.default_rng(2)
  stats = traverse_util.flatten_dict(variables["batch_stats"])
  variables["batch_stats"] = traverse_util.unflatten_dict(
      {p: jnp.asarray(rng.normal(size=x.shape) if p[-1] == "mean" else rng.uniform(0.5, 2, x.shape),
                      jnp.float32) for p, x in stats.items()})
  kmap = build_kernel_map(variables["params"], cnn.RESNET_KERNEL_RULES, cnn.RESNET_KERNEL_NAMES)
  shape = kmap.plan_shape
  bits = np.where(np.arange(shape[0])[:, None] % 2 == 0, 4, 3) * np.ones(shape, int)
  keep = np.tile([0.75, 1.0, 0.5], (shape[0], 1))
  plan = make_plan(bits, keep, np.zeros(shape, int), np.full(shape, codes.PER_CHANNEL))
  compressed = {**variables, "params": apply.apply_plan(variables["params"], plan, kmap)}
  return module, variables, kmap, plan, compressed


def test_resnet_batch_stats_are_exported_counted_and_reloaded(resnet, tmp_path):
  module, variables, kmap, plan, compressed = resnet
  params, state = accounting.split_variables(compressed)
  assert set(state) == {"batch_stats"}
  info = export.export_model(params, plan, kmap, tmp_path / "r.npz", model_state=state)
  stats_bits = accounting.state_bits(state)
  assert stats_bits == 32 * sum(np.size(x) for x in jax.tree.leaves(state)) > 0
  without = float(accounting.storage_bits(params, plan, kmap))
  assert info.storage_bits == without + stats_bits
  assert 0 <= 8 * info.payload_bytes - info.storage_bits <= 14 * info.num_kernels
  assert accounting.fp32_bits(params, state) == accounting.fp32_bits(params) + stats_bits
  ratio = float(accounting.compression_ratio(params, plan, kmap, state))
  assert ratio == pytest.approx(accounting.fp32_bits(params, state) / info.storage_bits)
  loaded, _ = export.load_variables(tmp_path / "r.npz")
  assert set(loaded) == {"params", "batch_stats"}
  assert_same(compressed, loaded)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 16, 16, 3)), jnp.float32)
  want = module.apply(compressed, x, train=False)
  np.testing.assert_array_equal(module.apply(loaded, x, train=False), want)
  zeroed = {**loaded, "batch_stats": jax.tree.map(np.zeros_like, loaded["batch_stats"])}
  assert not np.allclose(module.apply(zeroed, x, train=False), want)  # the statistics matter


def test_accounting_with_model_state_stays_jittable_over_plans(resnet):
  _, _, kmap, plan, compressed = resnet
  params, state = accounting.split_variables(compressed)
  plans = jax.tree.map(lambda a: jnp.stack([a, a]), plan)
  ratios = jax.jit(jax.vmap(lambda p: accounting.compression_ratio(params, p, kmap, state)))(plans)
  np.testing.assert_allclose(ratios, float(accounting.compression_ratio(params, plan, kmap, state)),
                             rtol=1e-6)
