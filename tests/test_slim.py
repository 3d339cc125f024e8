"""Slim models: pruned neurons and their dead inputs removed, same logits as the masked model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from hypothesis import given, settings, strategies as st

from hirelc_jax import models, slim
from hirelc_jax.compression import accounting, apply, codes, export
from hirelc_jax.compression.kernel_map import build_kernel_map
from hirelc_jax.compression.plan import make_plan, uniform_plan
from hirelc_jax.models import vit

SHAPE = (28, 28, 1)
FEW = settings(max_examples=6, deadline=None)
MODES = ("uniform", "log", "per_channel", "learned", "asymmetric")


@pytest.fixture(scope="module", params=["vit_mu", "cnn"])
def model(request):
  """(spec, params, kmap) of a random-init vit_mu or CNN."""
  spec = models.build_model(request.param, num_classes=10, image_shape=SHAPE)
  params = models.init_params(spec, jax.random.key(0))["params"]
  return spec, params, models.kernel_map(params, spec)


@pytest.fixture(scope="module")
def images():
  return jnp.asarray(np.random.default_rng(1).normal(size=(4,) + SHAPE), jnp.float32)


def random_plan(seed, shape, heavy=False):
  """A valid plan with random bits, keep (all 0.2 when heavy) and granularity."""
  rng = np.random.default_rng(seed)
  keep = np.full(shape, 0.2) if heavy else rng.uniform(0.2, 1.0, shape)
  return make_plan(rng.choice([2, 3, 4, 8, 32], shape), keep, np.zeros(shape, int),
                   rng.integers(0, len(MODES), shape))


def logits(module, params, x):
  return np.asarray(jax.jit(module.apply)({"params": params}, x))


def assert_close(slim_out, masked_out):
  scale = max(1.0, float(np.abs(masked_out).max()))
  np.testing.assert_allclose(slim_out, masked_out, rtol=0, atol=2e-5 * scale)


def slim_storage_identity(spec, masked, plan, kmap, module, slim_params, residual):
  """(accounted bits of the slim model, masked bits - dead bits - bitmaps + padding)."""
  skmap = build_kernel_map(slim_params, spec.kernel_rules, spec.kernel_names)
  plan1 = dataclasses.replace(plan, keep=jnp.ones_like(plan.keep))
  masks = slim.neuron_masks(masked, plan, kmap)
  dead = slim.dead_storage(masked, plan, kmap, spec, masks)
  bitmaps = sum(e.num_out for e, m in zip(kmap.entries, masks) if not m.all())
  expect = dead["storage_bits"] - dead["dead_bits"] - bitmaps
  if residual == "masked":  # proj / fc2 keep their pruned columns: counted at full width again
    for e, m in zip(kmap.entries, masks):
      if kmap.kernel_names[e.kernel] in ("attn_proj", "mlp_fc2"):
        se = next(s for s in skmap.entries if s.path == e.path)
        b = int(plan.bits[e.block, e.kernel])
        g = int(plan.gran[e.block, e.kernel])
        per_col = b * se.fan_in + 32 + (32 if b != 32 and g in (codes.PER_CHANNEL, codes.LEARNED) else 0)
        expect += per_col * int((~m).sum())
  pad = slim.padding_cols(masks, kmap, spec)["per_block"]
  kept = {(e.block, e.kernel): int(m.sum()) for e, m in zip(kmap.entries, masks)}
  for b, (qk, v) in enumerate(pad):  # padded v rows of proj: counted above for pruned columns
    bits_q, bits_p = int(plan.bits[b, 0]), int(plan.bits[b, 1])
    scale = 32 if bits_q != 32 and int(plan.gran[b, 0]) in (codes.PER_CHANNEL, codes.LEARNED) else 0
    expect += (qk + v) * (bits_q * kmap.entries[0].fan_in + scale + 32) + v * bits_p * kept[b, 1]
  return float(accounting.storage_bits(slim_params, plan1, skmap)), expect


@FEW
@given(seed=st.integers(0, 2 ** 16), heavy=st.booleans(), residual=st.sampled_from(slim.RESIDUAL_MODES))
def test_slim_logits_match_masked_and_storage_identity(model, images, seed, heavy, residual):
  spec, params, kmap = model
  plan = random_plan(seed, kmap.plan_shape, heavy)
  masked = apply.apply_plan(params, plan, kmap)
  module, slim_params = slim.slim_model(masked, plan, kmap, spec, residual=residual)
  assert_close(logits(module, slim_params, images), logits(spec.module, masked, images))
  assert models.count_params(slim_params) < models.count_params(params)
  got, expect = slim_storage_identity(spec, masked, plan, kmap, module, slim_params, residual)
  assert got == pytest.approx(expect, abs=0.5)


def uniform_slim(model: str, bits: int, keep: float):
  """(spec, kmap, plan, masked params, slim module, slim params) under one uniform plan."""
  spec = models.build_model(model, num_classes=10, image_shape=SHAPE)
  params = models.init_params(spec, jax.random.key(0))["params"]
  kmap = models.kernel_map(params, spec)
  plan = uniform_plan(*kmap.plan_shape, bits=bits, keep=keep, gran="per_channel")
  masked = apply.apply_plan(params, plan, kmap)
  return (spec, kmap, plan, masked) + tuple(slim.slim_model(masked, plan, kmap, spec))


def test_vit_kernels_shrink_by_the_kept_counts(images):
  spec, kmap, plan, masked, module, sp = uniform_slim("vit_mu", 4, 0.5)
  masks = dict(zip([e.path for e in kmap.entries], slim.neuron_masks(masked, plan, kmap)))
  for b, w in enumerate(module.block_widths):
    blk = sp[f"block_{b}"]
    hidden = masks[(f"block_{b}", "mlp", "fc1", "kernel")]
    assert blk["mlp"]["fc1"]["kernel"].shape == (32, hidden.sum()) == (32, 32)
    assert blk["mlp"]["fc2"]["kernel"].shape == (32, 16)              # 32 kept rows, 16 kept outputs
    assert blk["attn"]["proj"]["kernel"].shape == (2 * w.v_dim, 16)
    assert blk["attn"]["qkv"]["kernel"].shape == (32, 2 * (2 * w.qk_dim + w.v_dim))
    assert len(w.proj_index) == len(w.fc2_index) == 16
    q, k, v = masks[(f"block_{b}", "attn", "qkv", "kernel")].reshape(3, 2, 16)
    assert w.qk_dim == (q & k).sum(1).max() and w.v_dim == v.sum(1).max()
  assert_close(logits(module, sp, images), logits(spec.module, masked, images))


def test_qkv_heads_pad_to_the_widest_and_a_dead_head_keeps_one_zero_dim(images):
  """Head 0: q and k kept in dims 0-15 but overlapping in 0-2 only; head 1: every q dim pruned."""
  spec = models.build_model("vit_mu", num_classes=10, image_shape=SHAPE)
  params = models.init_params(spec, jax.random.key(0))["params"]
  kmap = models.kernel_map(params, spec)
  qkv = np.zeros((3, 2, 16), bool)
  qkv[0, 0, :3], qkv[0, 0, 3:8] = True, False        # q of head 0: dims 0-2
  qkv[1, 0, :10] = True                               # k of head 0: dims 0-9 -> live 0-2
  qkv[1, 1, :] = True                                 # k of head 1 whole, q of head 1 none
  qkv[2, 0, :5], qkv[2, 1, 7:16] = True, True         # v: 5 and 9 dims
  masks = [qkv.reshape(-1) if kmap.kernel_names[e.kernel] == "qkv" else np.ones(e.num_out, bool)
           for e in kmap.entries]
  masked = apply.apply_plan(params, uniform_plan(*kmap.plan_shape), kmap,
                            masks=[jnp.asarray(m, jnp.float32) for m in masks])
  module, sp = slim.slim_model(masked, masks, kmap, spec)
  w = module.block_widths[0]
  assert (w.qk_dim, w.v_dim, w.proj_index, w.fc2_index) == (3, 9, None, None)
  assert sp["block_0"]["attn"]["qkv"]["kernel"].shape == (32, 2 * (3 + 3 + 9))
  assert slim.padding_cols(masks, kmap, spec)["per_block"][0] == [2 * 3, 4]
  dead = slim.dead_storage(masked, uniform_plan(*kmap.plan_shape), kmap, spec, masks)
  rec = {r["path"]: r for r in dead["kernels"]}
  assert rec["block_0/attn/qkv/kernel"]["dead_cols"] == 7 + 16         # k 3-9 of head 0, k of head 1
  assert rec["block_0/attn/qkv/kernel"]["dead_bits"] == 23 * (32 * 32 + 32)
  assert rec["block_0/attn/proj/kernel"]["dead_rows"] == 32 - 14
  assert rec["block_0/attn/proj/kernel"]["dead_bits"] == 18 * 32 * 32
  assert_close(logits(module, sp, images), logits(spec.module, masked, images))


def test_cnn_kernels_drop_input_channels_and_flattened_rows(images):
  spec, kmap, plan, masked, module, sp = uniform_slim("cnn", 8, 0.25)
  assert module.channels == (8, 16, 32) and module.hidden == 64
  assert sp["block_0"]["conv"]["kernel"].shape == (3, 3, 1, 8)
  assert sp["block_1"]["conv"]["kernel"].shape == (3, 3, 8, 16)
  assert sp["block_2"]["conv"]["kernel"].shape == (3, 3, 16, 32)
  assert sp["block_3"]["dense"]["kernel"].shape == (4 * 4 * 32, 64)     # 28 -> 14 -> 7 -> 4 px
  assert sp["head"]["kernel"].shape == (64, 10)
  dead = {r["path"]: r for r in slim.dead_storage(masked, plan, kmap, spec)["kernels"]}
  assert dead["block_1/conv/kernel"]["dead_bits"] == 8 * (9 * 24) * 16
  assert dead["block_3/dense/kernel"]["dead_bits"] == 8 * (16 * 96) * 64
  assert dead["head/kernel"]["dead_bits"] == 32 * 192 * 10
  assert_close(logits(module, sp, images), logits(spec.module, masked, images))


def test_load_slim_reads_an_export(tmp_path, model, images):
  spec, params, kmap = model
  plan = random_plan(7, kmap.plan_shape)
  masked = apply.apply_plan(params, plan, kmap)
  export.export_model(masked, plan, kmap, tmp_path / "m.npz")
  module, sp, report = slim.load_slim(tmp_path / "m.npz", spec)
  assert_close(logits(module, sp, images), logits(spec.module, masked, images))
  assert report["slim_params"] == models.count_params(sp) < report["params"]
  assert 0 < report["dead_bytes"] == report["dead_bits"] / 8 < report["storage_bits"] / 8
  assert report["storage_bits"] == pytest.approx(float(accounting.storage_bits(masked, plan, kmap)))
  assert len(report["kernels_slim"]) == len(kmap.entries)


def test_full_block_widths_give_the_standard_logits(images):
  spec = models.build_model("vit_mu", num_classes=10, image_shape=SHAPE)
  params = models.init_params(spec, jax.random.key(0))["params"]
  full = spec.module.clone(block_widths=(vit.BlockWidths(16, 16, 64),) * 2)
  assert_close(logits(full, params, images), logits(spec.module, params, images))
  with pytest.raises(ValueError, match="block_widths has 1 entries for depth 2"):
    full.clone(block_widths=full.block_widths[:1]).apply({"params": params}, images)


def test_errors_name_the_bad_value(model):
  spec, params, kmap = model
  plan = uniform_plan(*kmap.plan_shape, keep=0.5)
  masked = apply.apply_plan(params, plan, kmap)
  with pytest.raises(ValueError, match="unknown residual mode 'scatter'"):
    slim.slim_model(masked, plan, kmap, spec, residual="scatter")
  with pytest.raises(ValueError, match="the plan prunes .* only 0 are zero"):
    slim.slim_model(params, plan, kmap, spec)
  masks = [np.zeros(e.num_out, bool) for e in kmap.entries]
  with pytest.raises(ValueError, match=f"kernel {'/'.join(kmap.entries[0].path)}: pruned neurons"):
    slim.slim_model(masked, masks, kmap, spec)
  with pytest.raises(ValueError, match="got 1 masks"):
    slim.slim_model(masked, masks[:1], kmap, spec)
  if spec.name == "vit_mu":
    module, _ = slim.slim_model(masked, plan, kmap, spec)
    with pytest.raises(ValueError, match="vit_mu is already slim"):
      slim.slim_model(masked, plan, kmap, dataclasses.replace(spec, module=module))


def test_resnet_is_refused():
  spec = models.build_model("resnet18", num_classes=10, image_shape=(32, 32, 3), norm="none")
  abstract = models.abstract_params(spec)["params"]
  kmap = models.kernel_map(abstract, spec)
  flat = traverse_util.flatten_dict(abstract)
  params = traverse_util.unflatten_dict({k: np.zeros(v.shape, v.dtype) for k, v in flat.items()})
  with pytest.raises(ValueError, match="not 'resnet18'"):
    slim.slim_model(params, uniform_plan(*kmap.plan_shape), kmap, spec)
