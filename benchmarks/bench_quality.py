"""Quality: the search against the strongest simple plans in the same space, at several targets.

Usage:
  python benchmarks/bench_quality.py --model vit_tiny --targets 0.5 1 2 --seeds 0 1 2 [--methods ...]
  python benchmarks/bench_quality.py --model vit_tiny --merge SHARD   # fold a shard's rows in

Methods (see quality_methods.py for budgets and the shared choice rule):
the hierarchical search and its ablations, the exact integer program on the
error table, the greedy path on it, random plans, and the uniform grid (INT2,
INT3, INT4, FP4 per-channel x keep 1.0 .. 0.4, each fine-tuned once; one set
of rows for every target). Every method starts from one cached baseline
(trained with seed 0); the seed drives the search and the fine-tuning order.

Rows accumulate in benchmarks/results/quality_<model>.json (a rerun skips
finished method/seed/target rows), with a markdown table and a front plot beside it.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402
import quality_methods as qm  # noqa: E402

from hirelc_jax import config as config_io  # noqa: E402
from hirelc_jax import evaluation, experiment  # noqa: E402


def rows_at(rows, target, base):
  """Every method's rows at one target; the uniform grid's as its per-seed choice there."""
  out = [r for r in rows if r.get("target") == target]
  for seed in sorted({r["seed"] for r in rows if r["method"].startswith("grid_")}):
    points = [r for r in rows if r["method"].startswith("grid_") and r["seed"] == seed]
    if len(points) == len(qm.GRID):
      pick = points[qm.choose([{**p, "val_drop": base["val"] - p["val_accuracy"]} for p in points],
                              target, qm.MARGIN_SE)]
      out.append({**pick, "method": "uniform_grid", "finetunes": len(points), "grid_point": pick["method"]})
  return out


def summarize(rows, base) -> list[dict]:
  out = []
  for target in sorted({r["target"] for r in rows if r.get("target") is not None}):
    here = rows_at(rows, target, base)
    for method in qm.METHODS + qm.RECORDED:
      mine = [r for r in here if r["method"] == method]
      if not mine:
        continue
      col = lambda k: np.array([r[k] for r in mine], np.float64)
      drop = base["test"] - col("test_accuracy")
      out.append({"target": target, "method": method, "seeds": len(mine),
                  "drop_mean": drop.mean(), "drop_std": drop.std(), "drop_max": drop.max(),
                  "val_drop_mean": (base["val"] - col("val_accuracy")).mean(),
                  "ratio_mean": col("compression_ratio").mean(), "ratio_std": col("compression_ratio").std(),
                  "paper_ratio_mean": col("paper_compression_ratio").mean(),
                  "wall_s_mean": col("wall_s").mean(), "real_evals": col("real_evals").mean(),
                  "finetunes": col("finetunes").mean(), "shared_cpu": any(r.get("shared_cpu") for r in mine)})
  return out


def markdown(summary, rows, base, machine) -> str:
  lines = [f"Baseline test accuracy {base['test']:.2f}% (held-out validation half {base['val']:.2f}%). "
           f"Machine: {machine['cpu']} ({machine['cores']} cores, {machine['backend']}).", "",
           "| target (pts) | method | seeds | test drop (pts) | worst seed | held-out val drop | honest compression "
           "| paper metric | real evals | fine-tunes | wall (s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  for s in summary:
    lines.append(f"| {s['target']:g} | {s['method']} | {s['seeds']} | {s['drop_mean']:.2f} ± {s['drop_std']:.2f} | "
                 f"{s['drop_max']:.2f} | {s['val_drop_mean']:.2f} | {s['ratio_mean']:.2f}x ± {s['ratio_std']:.2f} | "
                 f"{s['paper_ratio_mean']:.2f}x | {s['real_evals']:.0f} | {s['finetunes']:.0f} | "
                 f"{s['wall_s_mean']:.0f}{'*' if s['shared_cpu'] else ''} |")
  grid = [r for r in rows if r["method"].startswith("grid_")]
  if grid:
    lines += ["", "Uniform grid (every kernel alike, per-channel, one fine-tune each):", "",
              "| plan | seeds | test drop (pts) | held-out val drop (pts) | honest compression |", "|---|---|---|---|---|"]
    for name in qm.GRID:
      mine = [r for r in grid if r["method"] == name]
      if mine:
        d = base["test"] - np.array([r["test_accuracy"] for r in mine])
        v = base["val"] - np.array([r["val_accuracy"] for r in mine])
        lines.append(f"| {name[5:]} | {len(mine)} | {d.mean():.2f} ± {d.std():.2f} | {v.mean():.2f} | "
                     f"{mine[0]['compression_ratio']:.2f}x |")
  if any(s["shared_cpu"] for s in summary):
    lines += ["", "\\* some of these runs shared the 2 cores with other work, so their wall time is "
              "inflated; accuracies and ratios do not depend on it."]
  return "\n".join(lines) + "\n"


def plot(rows, base, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  targets = sorted({r["target"] for r in rows if r.get("target") is not None})
  fig, ax = plt.subplots(figsize=(12, 5.5))
  grid = [r for r in rows if r["method"].startswith("grid_")]
  if grid:
    ax.scatter([r["compression_ratio"] for r in grid], [base["test"] - r["test_accuracy"] for r in grid],
               marker="s", s=18, color="lightgrey", label="uniform grid, every point")
  top = 2.5 * max(targets, default=1.0)   # the region the targets ask about; points above it sit on its edge
  markers = "o^sDvP*Xh<>p"
  for i, method in enumerate(qm.METHODS + qm.RECORDED):
    pts = [(np.mean([r["compression_ratio"] for r in mine]), base["test"] - np.mean([r["test_accuracy"] for r in mine]))
           for t in targets for mine in [[r for r in rows_at(rows, t, base) if r["method"] == method]] if mine]
    if pts:
      x, y = zip(*sorted(pts))
      above = [f"{v:.2f} pt at {u:.1f}x" for u, v in zip(x, y) if v > top]
      main = method in ("hirelc", "search_agents")   # the agents under the current defaults stand out
      ax.plot(x, [min(v, top) for v in y], marker="*" if main else markers[i % len(markers)], ms=14 if main else 7,
              color="black" if main else plt.cm.tab20(i % 20),
              label=method + (f" (above the chart: {', '.join(above)})" if above else ""))
  for t in targets:
    ax.axhline(t, color="grey", ls="--", lw=0.6)
  ax.set_ylim(-0.5, top * 1.02)
  ax.set_xlabel("honest whole-model compression (x)")
  ax.set_ylabel("test accuracy drop (points)")
  ax.set_title("mean over seeds, one point per target; dashed: the targets", fontsize=9)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def render(path: pathlib.Path) -> None:
  """The markdown table and the front plot beside a results file."""
  result = json.loads(path.read_text())
  rows, base = result["rows"], result["baseline"]
  stem = path.with_suffix("")
  stem.with_suffix(".md").write_text(markdown(summarize(rows, base), rows, base, result["machine"]))
  plot(rows, base, stem.parent / f"{stem.name}_fronts.png")


def merge(path: pathlib.Path, shards: list) -> None:
  """Adds the rows of shard files (same baseline) that `path` lacks, then renders."""
  result = json.loads(path.read_text())
  for shard in shards:
    other = json.loads(shard.read_text())
    if other["baseline"]["test"] != result["baseline"]["test"]:
      raise SystemExit(f"{shard} was measured on another baseline; not merged")
    have = {row_key(r) for r in result["rows"]}
    result["rows"] += [r for r in other["rows"] if row_key(r) not in have]
  result["summary"] = summarize(result["rows"], result["baseline"])
  result["date"] = time.strftime("%Y-%m-%d %H:%M:%S")   # when rows were last added
  path.write_text(json.dumps(result, indent=2) + "\n")
  render(path)


def row_key(r):
  return r["method"], r["seed"], r.get("target")


def jobs(methods, seeds, targets):
  """(method, seed, target) in run order: the grid once per seed, every other method per target."""
  for seed in seeds:
    for method in methods:
      if method == "uniform_grid":
        yield from ((name, seed, None) for name in qm.GRID)
      elif method in qm.GRID:
        yield method, seed, None
      else:
        yield from ((method, seed, t) for t in targets)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="vit_tiny")
  parser.add_argument("--dataset", default="fashion_mnist")
  parser.add_argument("--targets", type=float, nargs="+", default=[1.0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--methods", nargs="+", default=list(qm.METHODS), choices=qm.METHODS + qm.GRID,
                      help="methods, or single points of the uniform grid (e.g. grid_INT2_k0.60)")
  parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
  parser.add_argument("--merge", nargs="+", default=None, metavar="NAME",
                      help="only merge these results files' rows into this one and render it")
  parser.add_argument("--shared-cpu", action="store_true",
                      help="mark this invocation's wall times as measured beside other work")
  parser.add_argument("--results", default=None,
                      help="results name (default quality_<model>); shards run apart can be merged later")
  args = parser.parse_args()
  name = args.results or f"quality_{args.model}"
  path = common.RESULTS / f"{name}.json"
  if args.merge:
    shards = [common.RESULTS / f"{m}.json" for m in args.merge]
    missing = [str(p) for p in [path, *shards] if not p.exists()]
    if missing:
      raise SystemExit(f"no results file {missing[0]}; name files in benchmarks/results without .json")
    merge(path, shards)
    return
  cfg = config_io.override(config_io.Config(), {"model.name": args.model, "data.name": args.dataset,
                                                **dict(a.split("=", 1) for a in args.set)})
  experiment.enable_compilation_cache()
  bench = qm.make_bench(evaluation.prepare(cfg, quiet=True, log=print))
  previous = json.loads(path.read_text()) if path.exists() else {"rows": [], "baseline": bench.base}
  if previous["baseline"] != bench.base:
    raise SystemExit(f"{path} was measured on a baseline with accuracies {previous['baseline']}, this one has "
                     f"{bench.base}; pass --results NAME to start a separate file")
  rows = previous["rows"]
  done = {row_key(r) for r in rows}
  for method, seed, target in jobs(args.methods, args.seeds, args.targets):
    if (method, seed, target) in done:
      continue
    if method in qm.SEARCHES:
      result = qm.run_search(bench, method, seed, target)
    elif method in qm.CANDIDATES:
      result = qm.run_candidates(bench, method, seed, target)
    else:
      result = qm.run_grid_point(bench, method, seed)
    row = {"method": method, "seed": seed, "target": target, **result,
           "commit": common.code_version(), **({"shared_cpu": True} if args.shared_cpu else {})}
    rows.append(row)
    print(json.dumps(row), flush=True)
    common.write(name, {"command": " ".join(sys.argv), "config_overrides": args.set,
                        "baseline": bench.base, "rows": rows, "summary": summarize(rows, bench.base)})
  render(path)


if __name__ == "__main__":
  main()
