"""Export of compressed params to one .npz file, and the bit-exact loader."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hirelc_jax.compression import accounting, apply, codec, codes, export, formats
from hirelc_jax.compression.kernel_map import build_kernel_map
from hirelc_jax.compression.plan import make_plan, uniform_plan
from hirelc_jax.compression.prune import kept_count

from export_helpers import assert_same

RULES = ((r"block_(?P<block>\d+)/fc/kernel$", "fc"), (r"block_(?P<block>\d+)/proj/kernel$", "proj"))
NAMES = ("fc", "proj")

# Every (bits, format, granularity) codes.check_codes allows, then unquantized slots.
COMBOS = [(b, f, g) for b in range(codes.MIN_BITS, codes.MAX_BITS + 1)
          for f in range(len(codes.FORMATS)) for g in range(len(codes.GRANULARITIES))
          if g != codes.ASYMMETRIC or f == codes.INT]
COMBOS += [(codes.FP32_BITS, codes.INT, g) for g in range(4)]
KEEPS = np.array([0.25, 0.5, 0.75, 1.0])
NUM_PLANS = -(-len(COMBOS) // 4)


def small_params(seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  block = lambda: {"fc": {"kernel": f(6, 8), "bias": f(8)}, "proj": {"kernel": f(8, 6)}}
  return {"block_0": block(), "block_1": block(), "head": {"kernel": f(6, 3), "bias": f(3)},
          "emb": jnp.asarray(rng.normal(size=(4, 2)), jnp.bfloat16),
          "count": np.arange(3, dtype=np.int32)}


def combo_plan(i):
  """Plan i of the sweep: four slots of COMBOS, keep ratios rotated per plan."""
  chunk = [COMBOS[(4 * i + j) % len(COMBOS)] for j in range(4)]
  bits, fmt, gran = (np.array([c[k] for c in chunk]).reshape(2, 2) for k in range(3))
  return make_plan(bits, np.roll(KEEPS, i).reshape(2, 2), fmt, gran)


@pytest.fixture(scope="module")
def setup():
  params = small_params()
  return params, build_kernel_map(params, RULES, NAMES)


def round_trip(tmp_path, compressed, plan, kmap, **kwargs):
  path = tmp_path / "model.npz"
  info = export.export_model(compressed, plan, kmap, path, **kwargs)
  loaded, loaded_plan = export.load_export(path)
  assert_same(compressed, loaded)
  for field in ("bits", "keep", "fmt", "gran"):
    np.testing.assert_array_equal(getattr(loaded_plan, field), getattr(plan, field))
  return info, path


@pytest.mark.parametrize("i", range(NUM_PLANS))
def test_round_trip_is_bit_exact_for_every_format_and_granularity(setup, tmp_path, i):
  params, kmap = setup
  plan = combo_plan(i)
  rng = np.random.default_rng(i)
  # QAT-like learned steps: the LSQ start, moved by up to a factor of 2.
  steps = [s * rng.uniform(0.5, 2.0, s.shape).astype(np.float32)
           for s in apply.init_steps(params, plan, kmap)]
  compressed = apply.apply_plan(params, plan, kmap, steps=steps)
  info, _ = round_trip(tmp_path, compressed, plan, kmap, steps=steps)
  assert info.num_kernels == 4 and info.file_bytes > 0 and info.storage_bits > 0


@pytest.mark.parametrize("fmt", codes.FORMATS)
def test_learned_scales_are_found_without_steps(setup, tmp_path, fmt):
  params, kmap = setup
  plan = make_plan([[8, 3], [5, 2]], [[1.0, 0.5], [0.75, 1.0]], [[fmt] * 2] * 2, [["learned"] * 2] * 2)
  round_trip(tmp_path, apply.apply_plan(params, plan, kmap), plan, kmap)


def test_conv_kernel_round_trip(tmp_path):
  rng = np.random.default_rng(3)
  params = {"block_0": {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 8)), jnp.float32),
                                 "bias": jnp.asarray(rng.normal(size=8), jnp.float32)}}}
  kmap = build_kernel_map(params, [(r"block_(?P<block>\d+)/conv/kernel", "conv")], ("conv",))
  for gran in ("per_channel", "asymmetric", "log"):
    plan = uniform_plan(1, 1, bits=3, keep=0.5, gran=gran)
    round_trip(tmp_path, apply.apply_plan(params, plan, kmap), plan, kmap)


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(codes.MIN_BITS, codes.MAX_BITS), n=st.integers(0, 70), seed=st.integers(0, 2**16))
def test_pack_unpack_is_exact(bits, n, seed):
  values = np.random.default_rng(seed).integers(0, 2 ** bits, n).astype(np.uint8)
  packed = export.pack_codes(values, bits)
  assert packed.dtype == np.uint8 and packed.size == -(-n * bits // 8) == codec.packed_bytes(n, bits)
  np.testing.assert_array_equal(export.unpack_codes(packed, bits, n), values)
  stream = np.unpackbits(packed, bitorder="little")
  assert not stream[n * bits:].any()  # padding bits are zero
  np.testing.assert_array_equal(stream[:n * bits].reshape(n, bits) @ (2 ** np.arange(bits)), values)


def test_pack_rejects_codes_out_of_range():
  with pytest.raises(ValueError, match="0..15"):
    export.pack_codes(np.array([3, 16]), 4)


ML_DTYPES = [(codes.FLOAT, 4, ml_dtypes.float4_e2m1fn), (codes.FLOAT, 6, ml_dtypes.float6_e2m3fn),
             (codes.FLOAT, 8, ml_dtypes.float8_e4m3fn), (codes.FLOAT_EXP, 6, ml_dtypes.float6_e3m2fn),
             (codes.FLOAT_EXP, 8, ml_dtypes.float8_e5m2)]


@pytest.mark.parametrize("fmt, bits, dtype", ML_DTYPES)
def test_minifloat_codes_are_ml_dtypes_bit_patterns(fmt, bits, dtype):
  table = export.code_table(bits, fmt, codes.UNIFORM)
  decoded = np.arange(2 ** bits, dtype=np.uint8).view(dtype).astype(np.float32)
  finite = np.isfinite(decoded)
  np.testing.assert_array_equal(np.isfinite(table), finite)
  np.testing.assert_array_equal(table[finite].view(np.uint32), decoded[finite].view(np.uint32))
  patterns = table[finite].astype(dtype).view(np.uint8)
  np.testing.assert_array_equal(patterns, np.flatnonzero(finite))


@pytest.mark.parametrize("bits", range(codes.MIN_BITS, codes.MAX_BITS + 1))
def test_code_tables_are_the_quantizer_grids(bits):
  for fmt in (codes.FLOAT, codes.FLOAT_EXP):
    table = export.code_table(bits, fmt, codes.UNIFORM)
    finite = table[np.isfinite(table)]
    assert finite.max() == formats.MAX_FINITE[fmt, bits]
    np.testing.assert_array_equal(formats.minifloat_round(jnp.asarray(finite), fmt, bits), finite)
  qmax = 2 ** (bits - 1) - 1
  int_table = export.code_table(bits, codes.INT, codes.UNIFORM)
  np.testing.assert_array_equal(int_table[:-1], np.arange(-qmax, qmax + 1))
  assert int_table[-1] == 0 and np.signbit(int_table[-1])
  log = export.code_table(bits, codes.INT, codes.LOG)
  np.testing.assert_array_equal(log[1:qmax + 1], 2.0 ** np.arange(-(qmax - 1), 1))


def test_file_holds_only_the_counted_sections(setup, tmp_path):
  params, kmap = setup
  plan = make_plan([[4, 32], [3, 8]], [[0.5, 0.25], [0.75, 1.0]], [["int", "int"], ["float", "int"]],
                   [["per_channel", "uniform"], ["learned", "asymmetric"]])
  compressed = apply.apply_plan(params, plan, kmap)
  info, path = round_trip(tmp_path, compressed, plan, kmap)
  with np.load(path) as data:
    assert sorted(data.files) == sorted([export.HEADER_KEY, export.PAYLOAD_KEY])
    assert data[export.PAYLOAD_KEY].size == info.payload_bytes
    assert data[export.HEADER_KEY].size == info.header_bytes
  header = export.read_header(path)
  expected = [[("keep", 1), ("codes", 12), ("scales", 16), ("bias", 16)],  # int4 per channel, 4 of 8 kept
              [("keep", 1), ("weights", 64)],                             # fp32 [8, 2 of 6 kept]
              [("keep", 1), ("codes", 14), ("scales", 24), ("bias", 24)],  # 3-bit e1m1 learned, 6 of 8
              [("codes", 48), ("scales", 4), ("zero", 4)]]                 # int8 asym, all 6 kept: no bitmap
  for e, rec, want in zip(kmap.entries, header["kernels"], expected):
    kept = int(kept_count(plan.keep[e.block, e.kernel], e.num_out))
    assert rec["path"] == list(e.path) and rec["shape"] == list(e.shape) and rec["kept"] == kept
    layout = [(n, int(np.prod(shape)) * dtype.itemsize) for n, dtype, shape in export.kernel_layout(rec)]
    assert layout == want, rec["path"]
  others = (6 * 3 + 3) * 4 + 4 * 2 * 2 + 3 * 4  # head kernel and bias, bf16 emb, int32 count
  assert info.payload_bytes == sum(n for want in expected for _, n in want) + others
  names = [r["format_name"] for r in header["kernels"]]
  assert names == ["int4", "fp32", "e1m1", "int8_asym"]
  assert [r["path"] for r in header["collections"]["params"]] == [["head", "kernel"], ["head", "bias"],
                                                                 ["emb"], ["count"]]
  assert header["version"] and header["file_version"] == export.FILE_VERSION
  assert header["payload_bytes"] == info.payload_bytes


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("keep", [0.5, 1.0])
def test_file_size_is_the_counted_storage_plus_a_fixed_header(tmp_path, compress, keep):
  rng = np.random.default_rng(0)
  params = {"block_0": {"fc": {"kernel": jnp.asarray(rng.normal(size=(256, 257)), jnp.float32),
                               "bias": jnp.zeros(257, jnp.float32)}}}
  kmap = build_kernel_map(params, [(r"block_(?P<block>\d+)/fc/kernel", "fc")], ("fc",))
  plan = uniform_plan(1, 1, bits=3, keep=keep, gran="per_channel")
  compressed = apply.apply_plan(params, plan, kmap)
  info, _ = round_trip(tmp_path, compressed, plan, kmap, compress=compress)
  assert info.storage_bits == float(accounting.storage_bits(compressed, plan, kmap))
  # Byte padding of the keep bitmap (257 bits) and the codes (3 * 256 * kept bits) only.
  assert 0 <= 8 * info.payload_bytes - info.storage_bits <= 14
  assert info.counted_bytes == info.storage_bits / 8
  if not compress:
    assert info.payload_bytes + info.header_bytes < info.file_bytes <= info.counted_bytes + 4096
  assert info.file_bytes <= info.counted_bytes + 4096


def test_a_file_that_is_not_an_export_is_refused(tmp_path):
  path = tmp_path / "other.npz"
  np.savez(path, payload=np.zeros(3, np.uint8))
  with pytest.raises(ValueError, match="are not an export file's"):
    export.load_export(path)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbled_header", "random_bytes", "npy",
                                    "missing", "payload_short"])
def test_a_damaged_export_is_one_line_naming_the_file(setup, tmp_path, damage):
  params, kmap = setup
  plan = combo_plan(0)
  compressed = apply.apply_plan(params, plan, kmap)
  _, path = round_trip(tmp_path, compressed, plan, kmap)
  raw = path.read_bytes()
  if damage == "empty":
    path.write_bytes(b"")
  elif damage == "truncated":
    path.write_bytes(raw[: len(raw) // 2])
  elif damage == "garbled_header":   # the zip's first member bytes overwritten
    path.write_bytes(raw[:60] + bytes(200) + raw[260:])
  elif damage == "random_bytes":
    path.write_bytes(np.random.default_rng(0).bytes(len(raw)))
  elif damage == "npy":
    path = tmp_path / "a.npy"
    np.save(path, np.zeros(3))
  elif damage == "missing":
    path = tmp_path / "nope.npz"
  else:
    with np.load(tmp_path / "model.npz") as data:
      np.savez(path, header=data["header"], payload=data["payload"][:-5])
  with pytest.raises(ValueError) as err:
    export.load_export(path)
  message = str(err.value)
  assert str(path) in message and "\n" not in message, message


@pytest.mark.parametrize("fmt, gran", [("int", "uniform"), ("int", "per_channel"), ("int", "learned"),
                                       ("int", "asymmetric"), ("float", "per_channel"),
                                       ("float_exp", "log")])
def test_unquantized_weights_raise(setup, tmp_path, fmt, gran):
  params, kmap = setup
  plan = uniform_plan(2, 2, bits=4, fmt=fmt, gran=gran)
  with pytest.raises(ValueError, match="block_0/fc/kernel does not lie on its"):
    export.export_model(params, plan, kmap, tmp_path / "m.npz")


def test_bad_inputs_raise(setup, tmp_path):
  params, kmap = setup
  path = tmp_path / "m.npz"
  plan = uniform_plan(2, 2, bits=4, keep=0.5)
  compressed = apply.apply_plan(params, plan, kmap)
  with pytest.raises(ValueError, match="block_1/fc/kernel sits in slot"):
    export.export_model(compressed, uniform_plan(1, 2, bits=4), kmap, path)
  with pytest.raises(ValueError, match="block_0/fc/kernel: the plan prunes 4 of 8"):
    export.export_model(params, plan, kmap, path)
  bad = jax.tree.map(lambda x: x, compressed)
  bad["block_1"]["proj"]["kernel"] = bad["block_1"]["proj"]["kernel"].at[0, 0].set(jnp.nan)
  with pytest.raises(ValueError, match="block_1/proj/kernel .*NaN"):
    export.export_model(bad, plan, kmap, path)
  with pytest.raises(ValueError, match="step has shape"):
    export.export_model(compressed, plan, kmap, path, steps=[jnp.ones(3)] * 4)
