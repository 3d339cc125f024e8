"""Quality: HiReLC against uniform, random and greedy baselines at equal budgets.

Usage:
  python benchmarks/bench_quality.py --model vit_tiny --seeds 0 1 2 [--methods ...]
  python benchmarks/bench_quality.py --results quality_vit_tiny --merge SHARD   # fold a shard in

Every method starts from one baseline (trained with seed 0, cached); the seed
drives the search and the fine-tuning order. Budgets are equal: the searches
(HiReLC and its ablations, random, greedy) get the same number of real
pre-fine-tune evaluations (warm-up samples + 7 uniform plans + the screened
candidates of every cycle: 20 + 7 + 4 x 4 = 43 by default; the unscreened
variants, as the search was before screening and goal escalation, 32 + 7 + 4 x 1;
the fixed-floor variants, as it was before a raised goal loosened the HLA's floors, 43)
and the same number of QAT fine-tunes (one per cycle, the config's schedule);
a uniform plan gets one fine-tune. The chosen plan is the most compressed
fine-tuned one within the accuracy target on validation (else the most
accurate); its test accuracy is reported.

Results accumulate in benchmarks/results/quality_<model>.json (rerunning skips
finished method/seed pairs), with a markdown table and a Pareto plot beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

from hirelc_jax import config as config_io  # noqa: E402
from hirelc_jax import evaluation, experiment, search  # noqa: E402
from hirelc_jax.agents import error_table  # noqa: E402
from hirelc_jax.compression import codes  # noqa: E402
from hirelc_jax.compression.plan import stack_plans, uniform_plan  # noqa: E402

UNSCREENED = {"search.screen": "1", "search.warmup_samples": "32", "search.escalate": "1"}  # as before
FIXED_FLOORS = {"search.escalate_floors": "false"}   # as before the floors followed the goal
SEARCHES = {"hirelc": {}, "hirelc_surrogate": {"search.signal": "surrogate"},
            "hirelc_fixed_floors": FIXED_FLOORS,
            "hirelc_surrogate_fixed_floors": {"search.signal": "surrogate", **FIXED_FLOORS},
            "hirelc_fixed_goal": {"search.escalate": "1"},
            "lla_only": {"search.high_level": "false"}, "hirelc_unscreened": UNSCREENED,
            "hirelc_surrogate_unscreened": {"search.signal": "surrogate", **UNSCREENED},
            "lla_only_unscreened": {"search.high_level": "false", **UNSCREENED}}
METHODS = ("hirelc", "uniform_INT3", "uniform_INT4", "greedy", "random", "lla_only", "hirelc_surrogate",
           "hirelc_fixed_floors", "hirelc_surrogate_fixed_floors", "hirelc_fixed_goal", "hirelc_unscreened",
           "lla_only_unscreened", "hirelc_surrogate_unscreened") \
    + tuple(f"uniform_{label}" for label, _, _ in evaluation.UNIFORM_BASELINES if label not in ("INT3", "INT4"))
# Rows of a search as it was at an earlier commit (the row's "commit"), kept for before/after; not rerunnable.
RECORDED = ("hirelc_floors_full_val",)   # floors followed the goal; selection on the validation set the
                                         # fine-tunes early-stopped on (before hold_out_selection)


def greedy_path(table: error_table.ErrorTable, kmap, min_bits: int) -> list:
  """HAWQ-style path: from per-channel INT8, repeatedly lower the bits of the slot
  whose next step costs the least Fisher-weighted error per bit saved."""
  quant = np.asarray(table.quant)[..., codes.INT, codes.PER_CHANNEL]          # [B, K, 7]
  size, _ = search.kernel_sizes(kmap)
  present = np.asarray(kmap.present)
  bits = np.full(present.shape, 8)
  path = [bits.copy()]
  while True:
    lower = (bits > min_bits) & present
    if not lower.any():
      return path
    idx = bits - codes.MIN_BITS
    cost = (np.take_along_axis(quant, np.clip(idx - 1, 0, None)[..., None], -1)[..., 0]
            - np.take_along_axis(quant, idx[..., None], -1)[..., 0]) / np.maximum(size, 1)
    cost = np.where(lower, cost, np.inf)
    b, k = np.unravel_index(np.argmin(cost), cost.shape)
    bits[b, k] -= 1
    path.append(bits.copy())


def as_plans(bits_list, kmap):
  shape = kmap.plan_shape
  base = uniform_plan(*shape, bits=8, fmt="int", gran="per_channel")
  return stack_plans([base.replace(bits=np.asarray(b, np.int32)) for b in bits_list])


def finetune_candidates(setup, plans, accs, base, seed, count):
  """Fine-tunes `count` candidates (most compressed within the recovered target, then most
  accurate) and returns the chosen one's metrics."""
  config = setup.config
  ratios = [evaluation.plan_metrics(setup, jax.tree.map(lambda a: a[i], plans))["compression_ratio"]
            for i in range(len(accs))]
  limit = config.goal.target_accuracy_drop / experiment.RECOVERY_PRIOR
  ok = sorted((i for i in range(len(accs)) if base["eval"] - accs[i] <= limit), key=lambda i: -ratios[i])
  rest = sorted((i for i in range(len(accs)) if i not in ok), key=lambda i: -accs[i])
  chosen = (ok + rest)[:count]
  records, tuned_all = [], []
  for j, i in enumerate(chosen):
    plan = jax.tree.map(lambda a: a[i], plans)
    tuned, result = evaluation.finetune(setup, plan, jax.random.fold_in(jax.random.key(seed), j),
                                        quiet=True)
    records.append({"val_accuracy": result.best_val_accuracy, "compression_ratio": ratios[i],
                    "plan": plan})
    tuned_all.append(tuned)
  best = experiment.select_best(records, base["val"], config.goal.target_accuracy_drop)
  return records[best], tuned_all[best]


def run_method(method, setup, table, base, seed, cfg):
  """One method, one seed: a result row."""
  t0 = time.perf_counter()
  real_evals = lambda s: s.warmup_samples + len(evaluation.UNIFORM_BASELINES) + s.cycles * s.screen
  c, evals = cfg.search, real_evals(cfg.search)
  if method in SEARCHES:
    config = config_io.override(cfg, {"seed": str(seed), **SEARCHES[method]})
    evals = real_evals(config.search)
    with tempfile.TemporaryDirectory() as out:
      report = experiment.run(config, pathlib.Path(out) / "run", quiet=True, echo=None,
                              setup=dataclasses.replace(setup, config=config))
    return {"test_accuracy": report["final_accuracy"], "val_accuracy": report["final_val_accuracy"],
            "compression_ratio": report["compression_ratio"],
            "paper_compression_ratio": report["paper_compression_ratio"],
            "wall_s": time.perf_counter() - t0, "real_evals": evals, "finetunes": c.cycles}
  if method.startswith("uniform_"):
    label = method[len("uniform_"):]
    _, bits, fmt = next(u for u in evaluation.UNIFORM_BASELINES if u[0] == label)
    plan = uniform_plan(*setup.kmap.plan_shape, bits=bits, fmt=fmt, gran="per_channel")
    tuned, result = evaluation.finetune(setup, plan, jax.random.key(seed), quiet=True)
    best, evals, fts = {"val_accuracy": result.best_val_accuracy, "plan": plan}, 0, 1
  else:
    key = jax.random.fold_in(jax.random.key(seed), 7)
    if method == "random":
      plans = search.random_plans(key, evals, setup.kmap, cfg)
    else:
      path = greedy_path(table, setup.kmap, cfg.goal.min_bits)
      pick = np.linspace(0, len(path) - 1, evals).round().astype(int)
      plans = as_plans([path[i] for i in pick], setup.kmap)
    accs = evaluation.plan_accuracies(setup, plans)
    best, tuned = finetune_candidates(setup, plans, accs, base, seed, c.cycles)
    fts = c.cycles
  test = evaluation.accuracy(setup, tuned, setup.data.x_test, setup.data.y_test)
  m = evaluation.plan_metrics(setup, best["plan"])
  return {"test_accuracy": test, "val_accuracy": best["val_accuracy"],
          "compression_ratio": m["compression_ratio"],
          "paper_compression_ratio": m["paper_compression_ratio"],
          "wall_s": time.perf_counter() - t0, "real_evals": evals, "finetunes": fts}


def summarize(rows, base_test) -> list[dict]:
  out = []
  for method in METHODS + RECORDED:
    mine = [r for r in rows if r["method"] == method]
    if not mine:
      continue
    col = lambda k: np.array([r[k] for r in mine], np.float64)
    drop = base_test - col("test_accuracy")
    out.append({"method": method, "seeds": len(mine), "drop_mean": drop.mean(), "drop_std": drop.std(),
                "ratio_mean": col("compression_ratio").mean(), "ratio_std": col("compression_ratio").std(),
                "paper_ratio_mean": col("paper_compression_ratio").mean(),
                "wall_s_mean": col("wall_s").mean(), "shared_cpu": any(r.get("shared_cpu") for r in mine)})
  return out


def markdown(summary, base_test, machine) -> str:
  lines = [f"Baseline test accuracy {base_test:.2f}%. Machine: {machine['cpu']} ({machine['cores']} cores, "
           f"{machine['backend']}).", "",
           "| method | seeds | test drop (pts) | honest compression | paper metric | wall (s) |",
           "|---|---|---|---|---|---|"]
  for s in summary:
    lines.append(f"| {s['method']} | {s['seeds']} | {s['drop_mean']:.2f} ± {s['drop_std']:.2f} | "
                 f"{s['ratio_mean']:.2f}x ± {s['ratio_std']:.2f} | {s['paper_ratio_mean']:.2f}x | "
                 f"{s['wall_s_mean']:.0f}{'*' if s['shared_cpu'] else ''} |")
  lines += ["", "Search rows measured before the search held out half of validation for choosing its cycle "
            "carry no commit; they chose on the validation set their fine-tunes early-stopped on."]
  if any(s["shared_cpu"] for s in summary):
    lines += ["", "\\* some of these runs shared the 2 cores with another benchmark, so their wall time is "
              "inflated; accuracies and ratios do not depend on it."]
  return "\n".join(lines) + "\n"


def plot(rows, base_test, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(9, 4.5))
  present = [m for m in METHODS + RECORDED if any(r["method"] == m for r in rows)]
  for i, method in enumerate(present):
    mine = [r for r in rows if r["method"] == method]
    marker = "*" if method.startswith("hirelc") else "s" if method.startswith("uniform") else "o"
    ax.scatter([r["compression_ratio"] for r in mine], [base_test - r["test_accuracy"] for r in mine],
               label=method, marker=marker, color=plt.cm.tab20(i % 20),
               s=160 if method == "hirelc" else 45, edgecolor="black" if method == "hirelc" else "none")
  ax.axhline(1.0, color="grey", ls="--", lw=0.8)
  ax.set_xlabel("honest whole-model compression (x)")
  ax.set_ylabel("test accuracy drop (points)")
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="vit_tiny")
  parser.add_argument("--dataset", default="fashion_mnist")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
  parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
  parser.add_argument("--merge", nargs="+", default=None, metavar="NAME",
                      help="only merge these results files' rows into this one and render it")
  parser.add_argument("--shared-cpu", action="store_true",
                      help="mark this invocation's wall times as measured beside other work")
  parser.add_argument("--results", default=None,
                      help="results name (default quality_<model>); shards run apart can be merged later")
  args = parser.parse_args()
  cfg = config_io.override(config_io.Config(), {"model.name": args.model, "data.name": args.dataset,
                                                **dict(a.split("=", 1) for a in args.set)})
  name = args.results or f"quality_{args.model}"
  path = common.RESULTS / f"{name}.json"
  if args.merge:
    shards = [common.RESULTS / f"{m}.json" for m in args.merge]
    missing = [str(p) for p in [path, *shards] if not p.exists()]
    if missing:
      raise SystemExit(f"no results file {missing[0]}; name files in benchmarks/results without .json")
    merge(path, shards)
    return
  experiment.enable_compilation_cache()
  setup = evaluation.prepare(cfg, quiet=True, log=print)
  data = setup.data
  n = cfg.search.eval_samples
  base = {"val": evaluation.accuracy(setup, setup.variables, data.x_val, data.y_val),
          "eval": evaluation.accuracy(setup, setup.variables, data.x_val[:n], data.y_val[:n]),
          "test": evaluation.accuracy(setup, setup.variables, data.x_test, data.y_test)}
  table = evaluation.make_error_table(setup)
  rows = json.loads(path.read_text())["rows"] if path.exists() else []
  for seed in args.seeds:
    for method in args.methods:
      if any(r["method"] == method and r["seed"] == seed for r in rows):
        continue
      row = {"method": method, "seed": seed, **run_method(method, setup, table, base, seed, cfg),
             "commit": common.code_version(), **({"shared_cpu": True} if args.shared_cpu else {})}
      rows.append(row)
      print(json.dumps(row), flush=True)
      summary = summarize(rows, base["test"])
      common.write(name, {"command": " ".join(sys.argv), "config_overrides": args.set,
                          "baseline": base, "rows": rows, "summary": summary})
  render(path)


def render(path: pathlib.Path) -> None:
  """The markdown table and Pareto plot beside a results file."""
  result = json.loads(path.read_text())
  rows, base_test = result["rows"], result["baseline"]["test"]
  stem = path.with_suffix("")
  stem.with_suffix(".md").write_text(markdown(summarize(rows, base_test), base_test, result["machine"]))
  plot(rows, base_test, stem.parent / f"{stem.name}_pareto.png")


def merge(path: pathlib.Path, shards: list) -> None:
  """Adds the rows of shard files (same baseline) that `path` lacks, then renders."""
  result = json.loads(path.read_text())
  for shard in shards:
    other = json.loads(shard.read_text())
    if other["baseline"]["test"] != result["baseline"]["test"]:
      raise SystemExit(f"{shard} was measured on another baseline; not merged")
    have = {(r["method"], r["seed"]) for r in result["rows"]}
    result["rows"] += [r for r in other["rows"] if (r["method"], r["seed"]) not in have]
  result["summary"] = summarize(result["rows"], result["baseline"]["test"])
  path.write_text(json.dumps(result, indent=2) + "\n")
  render(path)


if __name__ == "__main__":
  main()
