"""The qwix export: rules and prequantized params under which a qwix PTQ model computes our logits."""

import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util

from hirelc_jax import models
from hirelc_jax.compression import apply, export, qwix_export
from hirelc_jax.compression.plan import make_plan

qwix = pytest.importorskip("qwix")

# vit_mu: 2 blocks x (qkv, attn_proj, mlp_fc1, mlp_fc2). Six qwix qtypes (INT4, INT3, INT8, FP8
# e4m3 and e5m2, FP4 e2m1) over per-channel, uniform and learned scales, pruned and unpruned;
# two kernels qwix cannot express (a log grid, the e2m2 minifloat).
PLAN = dict(bits=[[4, 8, 3, 2], [8, 8, 4, 5]],
            keep=[[0.5, 1.0, 0.75, 1.0], [1.0, 0.6, 1.0, 1.0]],
            fmt=[["int", "float", "int", "int"], ["float_exp", "int", "float", "float"]],
            gran=[["per_channel", "per_channel", "learned", "log"], ["uniform", "uniform", "learned", "per_channel"]])
QTYPES = {"block_0/attn/qkv": "int4", "block_0/attn/proj": "float8_e4m3fn", "block_0/mlp/fc1": "int3",
          "block_1/attn/qkv": "float8_e5m2", "block_1/attn/proj": "int8",
          "block_1/mlp/fc1": "float4_e2m1fn"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  spec = models.build_model("vit_mu", num_classes=10, image_shape=(8, 8, 1))
  params = models.init_params(spec, jax.random.key(0))["params"]
  kmap = models.kernel_map(params, spec)
  compressed = apply.apply_plan(params, make_plan(**PLAN), kmap)
  path = tmp_path_factory.mktemp("qwix") / "m.npz"
  export.export_model(compressed, make_plan(**PLAN), kmap, path)
  return spec, path, qwix_export.to_qwix(path)


def test_every_expressible_kernel_gets_its_qtype_and_the_rest_one_line_each(exported):
  _, _, qx = exported
  assert {k.module: k.qtype for k in qx.kernels} == QTYPES
  assert len(qx.left_out) == 2
  assert qx.left_out[0].startswith("block_0/mlp/fc2/kernel (") and "log grid" in qx.left_out[0]
  assert qx.left_out[1].startswith("block_1/mlp/fc2/kernel (") and "e2m2 has no XLA type" in qx.left_out[1]
  assert [r.module_path for r in qx.rules()] == [re.escape(m) for m in QTYPES]


def test_qvalues_lie_on_the_qtype_and_times_scale_give_the_file_bit_for_bit(exported):
  _, path, qx = exported
  loaded = traverse_util.flatten_dict(export.load_variables(path)[0]["params"])
  for k in qx.kernels:
    dtype = np.dtype(getattr(ml_dtypes, k.qtype)) if k.qtype.startswith("float") else None
    if dtype is not None:   # every qvalue is a value of the format
      np.testing.assert_array_equal(k.qvalue.astype(dtype).astype(np.float32), k.qvalue)
    else:                   # symmetric INT: integers in [-(2^(b-1) - 1), 2^(b-1) - 1]
      qmax = 2 ** (int(k.qtype[3:]) - 1) - 1
      assert np.all(k.qvalue == np.round(k.qvalue)) and np.abs(k.qvalue).max() <= qmax
    assert k.scale.shape == (1,) * (k.qvalue.ndim - 1) + (k.qvalue.shape[-1],)
    np.testing.assert_array_equal(k.qvalue * k.scale, loaded[(*k.module.split("/"), "kernel")])


def test_qwix_ptq_model_reproduces_our_logits(exported, tmp_path):
  spec, path, qx = exported
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8, 8, 1)), jnp.float32)
  ours = spec.module.apply(export.load_variables(path)[0], x)
  ptq = qwix.quantize_model(spec.module, qwix.PtqProvider(qx.rules()))
  abstract = jax.eval_shape(ptq.init, jax.random.key(0), x)["params"]
  params = qwix_export.linen_params(qx, abstract)
  quantized = [p for p in jax.tree.leaves(params, is_leaf=lambda v: hasattr(v, "array")) if hasattr(p, "array")]
  assert len(quantized) == len(qx.kernels)   # qwix applied every rule to its kernel
  theirs = ptq.apply({"params": params}, x)
  np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)
  qwix_export.write_qwix(qx, tmp_path / "q")
  with np.load(tmp_path / "q" / "params.npz") as f:
    assert {f"{k.module}/kernel/qvalue" for k in qx.kernels} <= set(f.files)


def test_a_model_the_file_does_not_hold_is_named_in_one_line(exported):
  _, _, qx = exported
  spec = models.build_model("vit_mu", num_classes=10, image_shape=(8, 8, 1))
  ptq = qwix.quantize_model(spec.module, qwix.PtqProvider(qx.rules()))
  abstract = jax.eval_shape(ptq.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  abstract = {**abstract, "extra": {"kernel": jax.ShapeDtypeStruct((2, 2), jnp.float32)}}
  with pytest.raises(ValueError, match=r"^params/extra/kernel is not in the export file"):
    qwix_export.linen_params(qx, abstract)
