"""Bit operations per forward pass, with kernel uses counted by tracing a real model."""

import pytest

from hirelc_jax.compression import accounting
from hirelc_jax.compression.plan import uniform_plan
from hirelc_jax.models import abstract_params, build_model, kernel_map


def test_vit_uses_and_bops_by_hand():
  spec = build_model("vit_mu", num_classes=10, image_shape=(8, 8, 1))  # 2 px patches: 16 + CLS
  variables = abstract_params(spec)
  kmap = kernel_map(variables["params"], spec)
  uses = accounting.count_kernel_uses(spec.module, variables, (8, 8, 1), kmap)
  assert set(uses) == {e.path for e in kmap.entries}
  assert set(uses.values()) == {17}
  plan = uniform_plan(*kmap.plan_shape, bits=4, keep=0.5)
  # vit_mu: width 32, mlp 64; per block qkv 32x96, proj 32x32, fc1 32x64, fc2 64x32.
  macs = 2 * 17 * (32 * 48 + 32 * 16 + 32 * 32 + 64 * 16)  # kept outputs = half of each
  assert float(accounting.bops(plan, kmap, uses)) == pytest.approx(macs * 4 * 32)
  full = uniform_plan(*kmap.plan_shape)
  assert float(accounting.bops(full, kmap, uses)) == pytest.approx(2 * 17 * 32 * (96 + 32 + 64) * 32 * 32
                                                                   + 2 * 17 * 64 * 32 * 32 * 32)


def test_conv_uses_are_output_pixels():
  spec = build_model("cnn", num_classes=10, image_shape=(28, 28, 1))
  variables = abstract_params(spec)
  kmap = kernel_map(variables["params"], spec)
  uses = accounting.count_kernel_uses(spec.module, variables, (28, 28, 1), kmap)
  by_name = {"/".join(p[:-1]): n for p, n in uses.items()}
  assert by_name == {"block_0/conv": 28 * 28, "block_1/conv": 14 * 14, "block_2/conv": 7 * 7,
                     "block_3/dense": 1}


def test_missing_use_count_raises():
  spec = build_model("vit_mu", num_classes=10, image_shape=(8, 8, 1))
  kmap = kernel_map(abstract_params(spec)["params"], spec)
  with pytest.raises(ValueError, match="no use count"):
    accounting.bops(uniform_plan(*kmap.plan_shape), kmap, {})
