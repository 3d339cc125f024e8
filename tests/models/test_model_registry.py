"""Registry, output shapes, parameter counts and kernel maps."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from model_helpers import numpy_variables
from hirelc_jax import models
from hirelc_jax.models import cnn, vit


def vit_param_count(width, depth, mlp, *, image=28, patch=4, channels=1, classes=10):
  """Parameters of our ViT, from the architecture."""
  n = (image // patch) ** 2
  embed = patch * patch * channels * width + width + width + (n + 1) * width  # patch, cls, pos
  block = (2 * width                         # norm1
           + width * 3 * width + 3 * width   # qkv
           + width * width + width           # proj
           + 2 * width                       # norm2
           + width * mlp + mlp               # fc1
           + mlp * width + width)            # fc2
  return embed + depth * block + 2 * width + width * classes + classes


def test_registry_names_and_errors():
  assert models.MODEL_NAMES == ("vit_mu", "vit_mini", "vit_tiny", "vit_small", "vit_base",
                                "cnn", "resnet18")
  with pytest.raises(ValueError, match="unknown model 'x'; choose one of vit_mu, .*resnet18"):
    models.build_model("x", num_classes=10, image_shape=(28, 28, 1))
  with pytest.raises(ValueError, match="patch size 5 must divide"):
    models.build_model("vit_mu", num_classes=10, image_shape=(28, 28, 1), patch_size=5)
  spec = models.build_model("vit_mu", num_classes=3, image_shape=(28, 28, 1))
  assert spec.num_blocks == 2 and spec.kernel_names == ("qkv", "attn_proj", "mlp_fc1", "mlp_fc2")
  with pytest.raises(AttributeError):
    spec.name = "other"  # Frozen.


def test_vit_mu_forward_and_layout(vit_mu, vit_mu_apply):
  spec, variables = vit_mu
  x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
  logits = vit_mu_apply(variables, x)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  assert not np.allclose(logits[0], logits[1])
  p = variables["params"]
  assert spec.module.patch_size == 4
  assert p["pos_embed"].shape == (1, 50, 32)  # 7x7 = 49 patches + CLS.
  assert p["patch_embed"]["kernel"].shape == (4, 4, 1, 32)
  assert p["block_1"]["attn"]["qkv"]["kernel"].shape == (32, 96)
  assert p["block_1"]["mlp"]["fc1"]["kernel"].shape == (32, 64)
  assert set(p) == {"patch_embed", "cls_token", "pos_embed", "block_0", "block_1", "norm", "head"}
  again = models.init_params(spec, jax.random.key(0))  # Cached compile; same key, same values.
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables, again)


def test_vit_bfloat16_compute_keeps_float32_params_and_logits():
  spec = models.build_model("vit_mu", num_classes=5, image_shape=(16, 16, 3), dtype=jnp.bfloat16)
  abstract = models.abstract_params(spec)
  assert {l.dtype for l in jax.tree_util.tree_leaves(abstract)} == {np.dtype(np.float32)}
  out = jax.eval_shape(spec.module.apply, abstract, jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32))
  assert out.shape == (2, 5) and out.dtype == jnp.float32


@pytest.mark.parametrize("name,width,depth,mlp,expected", [
    ("vit_mu", 32, 2, 64, 19_658),
    ("vit_tiny", 192, 12, 768, 5_353_738),
])
def test_vit_param_counts_pinned(name, width, depth, mlp, expected):
  assert vit_param_count(width, depth, mlp) == expected
  spec = models.build_model(name, num_classes=10, image_shape=(28, 28, 1))
  assert models.count_params(models.abstract_params(spec)) == expected


def slots(params, spec):
  """{'block_0/attn/qkv/kernel': (block, kernel index), ...} of the model's KernelMap."""
  kmap = models.kernel_map(params, spec)
  return {"/".join(e.path): (e.block, e.kernel) for e in kmap.entries}


@pytest.mark.parametrize("name", models.VIT_NAMES)
def test_vit_kernel_rules_match_exactly_the_block_kernels(name):
  spec = models.build_model(name, num_classes=10, image_shape=(32, 32, 3))
  params = models.abstract_params(spec)["params"]
  kmap = slots(params, spec)
  depth = vit.VARIANTS[name].depth
  assert len(kmap) == depth * 4 == spec.num_blocks * len(spec.kernel_names)
  assert sorted(kmap.values()) == [(b, k) for b in range(depth) for k in range(4)]
  for path in traverse_util.flatten_dict(params, sep="/"):
    unmatched = re.search(r"head|embed|cls|norm|bias", path)
    assert (path in kmap) != bool(unmatched), path
  assert kmap["block_0/attn/qkv/kernel"] == (0, 0) and kmap[f"block_{depth - 1}/mlp/fc2/kernel"] == (depth - 1, 3)


def test_cnn_forward_and_kernels():
  spec = models.build_model("cnn", num_classes=10, image_shape=(28, 28, 1))
  variables = numpy_variables(models.abstract_params(spec))
  logits = jax.jit(spec.module.apply)(variables, jnp.ones((2, 28, 28, 1)))
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  kmap = slots(variables["params"], spec)
  assert kmap == {"block_0/conv/kernel": (0, 0), "block_1/conv/kernel": (1, 0),
                  "block_2/conv/kernel": (2, 0), "block_3/dense/kernel": (3, 1)}
  assert variables["params"]["block_2"]["conv"]["kernel"].shape == (3, 3, 64, 128)
  assert variables["params"]["block_3"]["dense"]["kernel"].shape == (4 * 4 * 128, 256)
  digits = models.build_model("cnn", num_classes=10, image_shape=(8, 8, 1))
  ab = models.abstract_params(digits)
  out = jax.eval_shape(digits.module.apply, ab, jax.ShapeDtypeStruct((5, 8, 8, 1), jnp.float32))
  assert out.shape == (5, 10)


def test_resnet18_shapes_count_and_kernels():
  spec = models.build_model("resnet18", num_classes=10, image_shape=(32, 32, 3))
  ab = models.abstract_params(spec)
  assert set(ab) == {"params", "batch_stats"}
  assert models.count_params(ab["params"]) == 11_173_962  # The usual CIFAR ResNet-18 size.
  x = jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32)
  assert jax.eval_shape(spec.module.apply, ab, x).shape == (4, 10)
  out, upd = jax.eval_shape(lambda v, x: spec.module.apply(v, x, train=True, mutable=["batch_stats"]),
                            ab, x)
  assert out.shape == (4, 10) and set(upd) == {"batch_stats"}
  kmap = slots(ab["params"], spec)
  assert len(kmap) == 8 * 2 + 3
  assert {p for p in kmap if "shortcut" in p} == {f"block_{b}/shortcut/kernel" for b in (2, 4, 6)}
  assert not any(re.search("stem|head|norm", p) for p in kmap)
  assert ab["params"]["block_7"]["conv2"]["kernel"].shape == (3, 3, 512, 512)


def test_basic_block_runs_and_updates_batch_stats():
  block = cnn.BasicBlock(features=16, strides=2)
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
  variables = numpy_variables(jax.eval_shape(block.init, jax.random.key(1), x))
  assert set(variables["params"]) == {"conv1", "norm1", "conv2", "norm2", "shortcut", "shortcut_norm"}
  out, upd = jax.jit(lambda v, x: block.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
  assert out.shape == (2, 2, 2, 16)
  before = variables["batch_stats"]["norm1"]["mean"]
  assert not np.allclose(before, upd["batch_stats"]["norm1"]["mean"])
  gn = cnn.ResNet18(num_classes=3, width=16, norm="group")
  assert set(jax.eval_shape(gn.init, jax.random.key(0), jnp.ones((1, 8, 8, 3)))) == {"params"}
