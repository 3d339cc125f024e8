"""The end of a run: the report contract, report.md, plots and the packed export."""

from __future__ import annotations

import pathlib
import time

import jax
import numpy as np

from hirelc_jax import policy
from hirelc_jax.compression import accounting, codes, export
from hirelc_jax.compression.formats import format_name


def plan_table(plan, kmap) -> list:
  """The plan as report.json's list of blocks, each a list of present kernels."""
  present = np.asarray(kmap.present)
  bits, keep = np.asarray(plan.bits), np.asarray(plan.keep)
  fmt, gran = np.asarray(plan.fmt), np.asarray(plan.gran)
  blocks = []
  for b in range(kmap.num_blocks):
    row = []
    for k, name in enumerate(kmap.kernel_names):
      if not present[b, k]:
        continue
      f, g, n = int(fmt[b, k]), int(gran[b, k]), int(bits[b, k])
      quantized = n != codes.FP32_BITS
      label = "fp32" if not quantized else (  # log codes are signed powers of two: format unused
          f"log{n}" if g == codes.LOG else f"int{n}" if f == codes.INT else format_name(f, n))
      row.append({"name": name, "bits": n, "format": codes.FORMATS[f], "format_name": label,
                  "granularity": codes.GRANULARITIES[g], "keep_ratio": round(float(keep[b, k]), 4)})
    blocks.append(row)
  return blocks


def finalize(setup, state, best: int, tuned: dict, base: dict, test_acc: float, sens, phases: dict,
             start: float, out_dir: pathlib.Path, *, schedule: str, log) -> dict:
  """Exports the best plan's variables, writes report.json/report.md and the plots.

  report.json's "export" holds the file's bytes on disk, its payload and header
  bytes, and ``storage_bytes``, the counted storage (`accounting.storage_bits` / 8).
  """
  from hirelc_jax import plots, report as report_io
  config, chosen = setup.config, state.cycles[best]
  t = time.perf_counter()
  plan = chosen.plan
  params, model_state = accounting.split_variables(tuned)  # e.g. batch_stats: exported and counted
  info = export.export_model(params, plan, setup.kmap, out_dir / "model_export.npz",
                             model_state=model_state)
  phases["export"] = time.perf_counter() - t
  err = state.surrogate
  predictions = [{"cycle": c.cycle, "predicted": c.details["predicted_accuracy"],
                  "actual": c.pre_finetune_accuracy} for c in state.cycles
                 if c.details["predicted_accuracy"] is not None]
  drop = base["test"] - test_acc
  result = {
      "model": setup.spec.name, "dataset": setup.data.name, "seed": config.seed,
      "device": jax.default_backend(), "schedule": schedule,
      "placement": setup.placement.describe() if setup.placement else None, "metric": setup.task.metric,
      "baseline_accuracy": base["test"], "final_accuracy": test_acc,
      "baseline_val_accuracy": base["val"], "final_val_accuracy": chosen.val_accuracy,
      "final_val_se": chosen.val_se, "margin_se": config.search.margin_se,
      "accuracy_drop": drop, "target_accuracy_drop": config.goal.target_accuracy_drop,
      "met_target": bool(policy.within(chosen.val_drop, config.search.margin_se * chosen.val_se,
                                       config.goal.target_accuracy_drop)),
      "best_cycle": best + 1, "finetunes": len(state.cycles),
      "compression_ratio": chosen.compression_ratio,
      "paper_compression_ratio": chosen.paper_compression_ratio,
      "storage_bits": chosen.storage_bits,
      "fp32_bits": accounting.fp32_bits(*accounting.split_variables(setup.variables)),
      "export": {"path": str(info.path), "file_bytes": int(info.file_bytes),
                 "payload_bytes": int(info.payload_bytes), "header_bytes": int(info.header_bytes),
                 "storage_bytes": float(info.counted_bytes),
                 "dead_rows_bytes": _dead_rows_bytes(params, plan, setup)},
      "kernel_names": list(setup.kmap.kernel_names),
      "plan": plan_table(plan, setup.kmap),
      "sensitivity": np.asarray(sens.block).tolist(),
      **state.meta(),
      "surrogate": {"samples": int(err.count), "holdout_mae": float(err.holdout_mae),
                    "predictions": predictions},
      "wall_time_s": time.perf_counter() - start, "phase_times_s": phases,
  }
  figures = plots.make_all(result, out_dir)
  report_io.write_report(result, out_dir, figures=figures)
  log("result", best_cycle=best + 1, final_accuracy=test_acc, accuracy_drop=drop,
      compression_ratio=chosen.compression_ratio, message=report_io.final_table(result))
  return result


def _dead_rows_bytes(params, plan, setup) -> float | None:
  """Counted bytes of weights made dead by pruning upstream, which a slim model drops.

  None for a model `hirelc_jax.slim` has no slim form of (ResNet-18, users' models).
  """
  from hirelc_jax import slim
  from hirelc_jax.models import cnn, vit
  if not isinstance(setup.spec.module, (vit.ViT, cnn.SmallCNN)):
    return None
  return float(slim.dead_storage(params, plan, setup.kmap, setup.spec)["dead_bytes"])

