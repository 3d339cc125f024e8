"""Bytes of the export file against the counted storage, on vit_mu, vit_tiny and the CNN.

For each model (random-init params from the registry: sizes do not depend on
training) and plan, applies the plan, exports, reloads (checked bit for bit)
and records: the counted storage (`accounting.storage_bits` / 8), the payload
bytes (the counted sections, byte-padded), the zlib JSON header, the file on
disk (stored, the default) and the file with `compress=True`. Plans: a mixed
one (2-4 bits, every format and granularity, keep 0.5-1 with a third of the
kernels unpruned) per model, and for vit_tiny also the plan of the recorded
default run (benchmarks/results/run_vit_tiny_default/report.json), and
ResNet-18 (with batch_stats) under the mixed plan.
Usage: python benchmarks/bench_export.py
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402
from hirelc_jax import models  # noqa: E402
from hirelc_jax.compression import accounting, apply, codes, export  # noqa: E402
from hirelc_jax.compression.plan import CompressionPlan, make_plan  # noqa: E402
from hirelc_jax.training import baseline  # noqa: E402

MODELS = (("vit_mu", (8, 8, 1)), ("vit_tiny", (28, 28, 1)), ("cnn", (28, 28, 1)),
          ("resnet18", (32, 32, 3)))
RECORDED = common.RESULTS / "run_vit_tiny_default" / "report.json"


def mixed_plan(kmap, seed: int = 0) -> CompressionPlan:
  """2-4 bits, random format and granularity, keep 1 for a third of the slots, else 0.5-1."""
  rng = np.random.default_rng(seed)
  shape = kmap.plan_shape
  fmt = rng.integers(0, len(codes.FORMATS), shape)
  gran = np.where(fmt == codes.INT, rng.integers(0, 5, shape), rng.integers(0, 4, shape))
  keep = np.where(rng.uniform(size=shape) < 1 / 3, 1.0, rng.uniform(0.5, 1.0, shape))
  return make_plan(rng.integers(2, 5, shape), keep, fmt, gran)


def recorded_plan(kmap) -> CompressionPlan | None:
  """The best cycle's plan of the recorded vit_tiny default run, if it fits the kernel map."""
  if not RECORDED.is_file():
    return None
  report = json.loads(RECORDED.read_text())
  arrays = report["cycles"][report["best_cycle"] - 1]["plan_arrays"]
  plan = make_plan(*(np.asarray(arrays[k]) for k in export.PLAN_FIELDS))
  return plan if plan.shape == kmap.plan_shape else None


def same(a, b) -> bool:
  """Bitwise equal leaves, pruned zeros compared with == (their sign is not stored)."""
  fa, fb = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (a, b))
  return len(fa) == len(fb) and all(
      pa == pb and np.asarray(x).dtype == y.dtype and np.array_equal(np.asarray(x), y)
      for (pa, x), (pb, y) in zip(fa, fb))


def measure(variables, plan, kmap, tmp: pathlib.Path) -> dict:
  params, state = accounting.split_variables(variables)
  compressed = apply.apply_plan(params, plan, kmap)
  row = {}
  for compress in (False, True):
    t = time.perf_counter()
    info = export.export_model(compressed, plan, kmap, tmp / "m.npz", model_state=state,
                               compress=compress)
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    loaded, _ = export.load_variables(tmp / "m.npz")
    load_seconds = time.perf_counter() - t
    if not same({"params": compressed, **state}, loaded):
      raise AssertionError("the reloaded model differs from the compressed one")
    if compress:
      row["file_bytes_deflated"] = info.file_bytes
      continue
    row.update(counted_bytes=info.counted_bytes, payload_bytes=info.payload_bytes,
               padding_bytes=info.payload_bytes - info.counted_bytes, header_bytes=info.header_bytes,
               file_bytes=info.file_bytes, file_minus_counted=info.file_bytes - info.counted_bytes,
               container_bytes=info.file_bytes - info.payload_bytes - info.header_bytes,
               fp32_bytes=accounting.fp32_bits(params, state) / 8,
               compression_ratio=float(accounting.compression_ratio(params, plan, kmap, state)),
               state_bytes=accounting.state_bits(state) / 8, num_kernels=info.num_kernels,
               num_pruned_kernels=sum(int(k < 1) for k in np.asarray(plan.keep)[kmap.present]),
               export_s=seconds, load_s=load_seconds)
  return row


def main() -> None:
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name, shape in MODELS:
      patch = baseline.default_patch_size(name, shape)  # as the CLI run builds it
      spec = models.build_model(name, num_classes=10, image_shape=shape, patch_size=patch)
      variables = models.init_params(spec, jax.random.key(0))
      kmap = models.kernel_map(variables["params"], spec)
      plans = [("mixed 2-4 bits, keep 0.5-1", mixed_plan(kmap))]
      if name == "vit_tiny" and recorded_plan(kmap) is not None:
        plans.append(("recorded run_vit_tiny_default best cycle", recorded_plan(kmap)))
      for label, plan in plans:
        row = {"model": name, "image_shape": list(shape), "patch_size": patch, "plan": label,
               **measure(variables, plan, kmap, pathlib.Path(tmp))}
        rows.append(row)
        print(f"{name:9s} {label[:30]:30s} counted {row['counted_bytes']:>11,.1f}  payload "
              f"{row['payload_bytes']:>9,}  header {row['header_bytes']:>5,}  file {row['file_bytes']:>9,}"
              f"  (+{row['file_minus_counted']:,.1f})  deflated {row['file_bytes_deflated']:,}")
  common.write("export", {"commit": common.code_version(), "rows": rows})


if __name__ == "__main__":
  main()
