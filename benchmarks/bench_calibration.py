"""The error table's calibration: one slope for the whole table, or one per block, kernel or slot.

Stage 1 evaluates `--plans` random plans (`search.random_plans`, half near
uniform: the warm-up's distribution) for real, pre-fine-tune, on the fit half
of validation, and keeps each plan's table error per slot and its drop
(`results/calibration_<model>_plans.npz`; skipped when the file exists).
Stage 2 fits each calibration on `--fit` plans drawn at random and predicts
the others, over `--splits` splits: the RMS error on moderate plans (drop at
most 8 points), and how often a plan predicted within 4 points collapsed
(drop over 8): the screening's limit is about target / recovery, 3-4 points at
a 1-point target. Results: `results/calibration_<model>.json`.

  python benchmarks/bench_calibration.py --model cnn --fit 27
  python benchmarks/bench_calibration.py --model vit_tiny --fit 39
"""

from __future__ import annotations

import argparse
import sys
import pathlib

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

from hirelc_jax import config as config_io  # noqa: E402
from hirelc_jax import evaluation, experiment, search  # noqa: E402
from hirelc_jax.agents import error_table  # noqa: E402

RIDGES = (0.01, 0.1, 1.0)


def evaluate_plans(model: str, count: int, path: pathlib.Path) -> None:
  cfg = config_io.override(config_io.Config(), {"model.name": model})
  experiment.enable_compilation_cache()
  setup = evaluation.prepare(cfg, quiet=True, log=print)
  fit, _ = evaluation.hold_out_selection(setup)
  table = evaluation.make_error_table(fit)
  n, d = cfg.search.eval_samples, fit.data
  base = evaluation.accuracy(fit, fit.variables, d.x_val[:n], d.y_val[:n])
  plans = search.random_plans(jax.random.PRNGKey(0), count, setup.kmap, cfg)
  index = setup.kmap.slots
  slots = jax.vmap(lambda p: error_table.slot_errors(table, p.bits, p.keep, p.fmt, p.gran)[index])(plans)
  drops = base - np.asarray(evaluation.plan_accuracies(fit, plans))
  np.savez(path, slot_errors=np.asarray(slots, np.float64), drops=drops, blocks=index[0], kernels=index[1])


def cross_validate(slots, drops, groups, ridge, fit_count: int, splits: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  rmse, collapsed = [], []
  for _ in range(splits):
    order = rng.permutation(len(drops))
    train, test = order[:fit_count], order[fit_count:]
    if groups is None:
      slope = error_table.fit_points_per_error(slots[train].sum(1), drops[train])
      predicted = slots[test].sum(1) * slope
    else:
      predicted = slots[test] @ error_table.fit_group_calibration(slots[train], drops[train], groups, ridge=ridge)
    moderate = drops[test] <= error_table.MAX_DROP
    rmse.append(float(np.sqrt(np.mean((predicted[moderate] - drops[test][moderate]) ** 2))))
    within = predicted <= 4.0
    collapsed.append(float(np.mean(drops[test][within] > error_table.MAX_DROP)) if within.any() else 0.0)
  return {"rmse_moderate": float(np.mean(rmse)), "collapsed_among_predicted_within_4pt": float(np.mean(collapsed))}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="cnn")
  parser.add_argument("--plans", type=int, default=256)
  parser.add_argument("--fit", type=int, default=27, help="plans per fit (the search has 27-43)")
  parser.add_argument("--splits", type=int, default=30)
  args = parser.parse_args()
  path = common.RESULTS / f"calibration_{args.model}_plans.npz"
  if not path.exists():
    evaluate_plans(args.model, args.plans, path)
  data = np.load(path)
  slots, drops = data["slot_errors"], data["drops"]
  groupings = {"block": data["blocks"], "kernel": data["kernels"], "slot": np.arange(slots.shape[1])}
  rows = [{"calibration": "common", **cross_validate(slots, drops, None, None, args.fit, args.splits)}]
  for name, groups in groupings.items():
    for ridge in RIDGES:
      rows.append({"calibration": name, "ridge": ridge,
                   **cross_validate(slots, drops, groups, ridge, args.fit, args.splits)})
  for row in rows:
    print(row)
  # The per-block slopes (points per unit E) fitted on every plan, as the search fits them.
  slopes = error_table.fit_group_calibration(slots, drops, data["blocks"])
  block_slopes = [float(slopes[data["blocks"] == b][0]) for b in np.unique(data["blocks"])]
  print("per-block slopes on every plan:", np.round(block_slopes, 1))
  common.write(f"calibration_{args.model}", {
      "command": " ".join(sys.argv), "plans": int(len(drops)), "collapsed": int(np.sum(drops > error_table.MAX_DROP)),
      "fit_plans": args.fit, "splits": args.splits, "rows": rows,
      "common_slope_all_plans": error_table.fit_points_per_error(slots.sum(1), drops),
      "block_slopes_all_plans": block_slopes})


if __name__ == "__main__":
  main()
