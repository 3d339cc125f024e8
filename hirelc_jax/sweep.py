"""A sweep over accuracy targets: python -m hirelc_jax.sweep --model vit_tiny --targets 0.25 0.5 1 2

One baseline, one sensitivity, one error table, one warm-up and one set of
compiled programs serve every target; the targets' searches then run cycle by
cycle side by side, and each cycle's picks (one per target) are fine-tuned at
once as one vmapped program (`qat.finetune_many`). Target t's search is the
search `python -m hirelc_jax.run --target-accuracy-drop t` runs (the same keys),
up to the float reduction order of the batched fine-tune.

Writes `<out>/target_<t>/` (each a run folder: report, plots, export,
checkpoints), and the Pareto front over targets: `sweep.json`, `sweep.md` and
`sweep_front.png` (test drop against honest compression, each target's plan).
Every option of `hirelc_jax.run` applies; `--resume` continues every target
from its last saved cycle.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time

import numpy as np

from hirelc_jax import run as run_cli


def check_targets(targets) -> tuple[float, ...]:
  """The targets sorted, or ValueError naming the bad one."""
  for t in targets:
    if not (math.isfinite(t) and t > 0):
      raise ValueError(f"--targets {t:g}: every target must be a positive number of points, e.g. 0.5")
  if len(set(targets)) != len(targets):
    raise ValueError(f"--targets {' '.join(f'{t:g}' for t in targets)} repeats a target; give each once")
  return tuple(sorted(targets))


def target_dir(out_dir: pathlib.Path, target: float) -> pathlib.Path:
  return out_dir / f"target_{target:g}"


def sweep(config, targets, out_dir: pathlib.Path, *, resume: bool = False, quiet: bool = False,
          echo=print, schedule: str = "default") -> dict | None:
  """Runs one search per target (see the module doc) and writes the front; returns sweep.json's
  dict (None on every process but 0, which alone writes)."""
  import jax
  from hirelc_jax import cycle as cycle_
  from hirelc_jax import distributed, evaluation, experiment, run_dir, run_state
  from hirelc_jax.compression.plan import stack_plans

  targets = check_targets(targets)
  config.validate()
  out_dir = pathlib.Path(out_dir)
  inputs = evaluation.load_inputs(config)
  with run_dir.claim(out_dir, config, resume) as note:
    saved = out_dir / "targets.json"
    if resume and saved.exists() and tuple(json.loads(saved.read_text())) != targets:
      raise ValueError(f"--resume: the sweep in {out_dir} has targets {json.loads(saved.read_text())}, "
                       f"not {list(targets)}; repeat its original --targets")
    if distributed.writes():
      saved.write_text(json.dumps(list(targets)))
    shared = experiment.begin(config, out_dir, inputs, None, resume, quiet, echo, note)
    searches = [shared.search.for_target(t) for t in targets]
    logs = [_target_log(shared.log, t) for t in targets]
    states, done = [], []
    for t, search_ in zip(targets, searches):
      if distributed.writes():
        (target_dir(out_dir, t) / "checkpoints").mkdir(parents=True, exist_ok=True)
      state, n = experiment.resume_cycles(search_, shared.state, target_dir(out_dir, t) / "checkpoints",
                                          shared, resume)
      states.append(state)
      done.append(n)
    start, finetunes = time.perf_counter(), 0
    for cycle in range(min(done), config.search.cycles):
      key = experiment.cycle_key(shared.key, cycle)
      active = [i for i, n in enumerate(done) if n <= cycle]
      picks = [cycle_.choose(searches[i], states[i], cycle, shared.base, key) for i in active]
      t0 = time.perf_counter()
      tuned = evaluation.finetune_many(shared.search.setup, stack_plans([p.plan for p in picks]),
                                       jax.random.fold_in(key, 3),
                                       f"cycle {cycle + 1}: {len(picks)} fine-tunes at once", quiet)
      seconds = (time.perf_counter() - t0) / len(picks)
      finetunes += len(picks)
      for i, pick, (variables, result) in zip(active, picks, tuned):
        states[i] = cycle_.complete(searches[i], states[i], pick, variables, result, shared.base, key, logs[i],
                                    seconds)
        run_state.save_state(target_dir(out_dir, targets[i]) / "checkpoints" / f"cycle_{cycle + 1}",
                             states[i], variables, cycle + 1)
    shared.phases["cycles"] = time.perf_counter() - start
    reports = [experiment.conclude(shared, s, st, target_dir(out_dir, t), schedule)
               for t, s, st in zip(targets, searches, states)]
    if not distributed.writes():
      return None
    return write_front(out_dir, targets, reports, finetunes, shared.phases["cycles"])


def _target_log(log, target: float):
  """The run's event log with every event tagged with its target."""
  def tagged(event, **fields):
    if "message" in fields:
      fields["message"] = f"[target {target:g}] {fields['message']}"
    log(event, target=target, **fields)
  return tagged


def front_rows(targets, reports) -> list[dict]:
  """One row per target: its chosen plan's test drop and honest compression, and whether
  it is on the Pareto front (no other target's plan is as accurate and more compressed)."""
  rows = [{"target": t, "test_drop": r["accuracy_drop"], "compression_ratio": r["compression_ratio"],
           "paper_compression_ratio": r["paper_compression_ratio"], "met_target": r["met_target"],
           "val_drop": r["baseline_val_accuracy"] - r["final_val_accuracy"], "best_cycle": r["best_cycle"],
           "folder": f"target_{t:g}"} for t, r in zip(targets, reports)]
  for row in rows:
    row["on_front"] = not any(o is not row and o["test_drop"] <= row["test_drop"]
                              and o["compression_ratio"] > row["compression_ratio"] for o in rows)
  return rows


def write_front(out_dir: pathlib.Path, targets, reports, finetunes: int, cycles_s: float) -> dict:
  """sweep.json, sweep.md and sweep_front.png from the targets' reports; returns the dict."""
  first = reports[0]
  result = {"model": first["model"], "dataset": first["dataset"], "seed": first["seed"],
            "metric": first["metric"], "placement": first["placement"], "baseline_accuracy": first["baseline_accuracy"],
            "targets": list(targets), "finetunes": finetunes, "cycles_s": cycles_s,
            "rows": front_rows(targets, reports)}
  (out_dir / "sweep.json").write_text(json.dumps(result, indent=2))
  lines = [f"# Sweep: {result['model']} on {result['dataset']}, seed {result['seed']}", "",
           f"Baseline test {result['metric']} {result['baseline_accuracy']:.2f}. {finetunes} fine-tunes, "
           f"{len(targets)} at a time; the cycles took {cycles_s:.0f} s.", "",
           "| target (pts) | test drop (pts) | held-out val drop | honest compression | paper metric | "
           "met target (held-out) | on the front |", "|---|---|---|---|---|---|---|"]
  lines += [f"| {r['target']:g} | {r['test_drop']:.2f} | {r['val_drop']:.2f} | {r['compression_ratio']:.2f}x | "
            f"{r['paper_compression_ratio']:.2f}x | {'yes' if r['met_target'] else 'no'} | "
            f"{'yes' if r['on_front'] else 'no'} |" for r in result["rows"]]
  figure = plot_front(result, out_dir / "sweep_front.png")
  if figure:
    lines += ["", "![front](sweep_front.png)"]
  (out_dir / "sweep.md").write_text("\n".join(lines) + "\n")
  return result


def plot_front(result: dict, path) -> str:
  """Test drop against honest compression, one point per target, the front joined."""
  from matplotlib.figure import Figure
  from hirelc_jax import plots
  rows = result["rows"]
  fig = Figure(figsize=(5.5, 4))
  ax = fig.add_subplot()
  front = sorted((r for r in rows if r["on_front"]), key=lambda r: r["compression_ratio"])
  ax.plot([r["compression_ratio"] for r in front], [r["test_drop"] for r in front], "-", color="tab:blue",
          label="Pareto front")
  for r in rows:
    ax.scatter(r["compression_ratio"], r["test_drop"], color="tab:blue" if r["on_front"] else "tab:gray", zorder=3)
    ax.annotate(f"target {r['target']:g}", (r["compression_ratio"], r["test_drop"]), textcoords="offset points",
                xytext=(4, 4), fontsize=8)
  targets = np.array([r["target"] for r in rows])
  ax.scatter([r["compression_ratio"] for r in rows], targets, marker="_", s=200, color="tab:red",
             label="each target")
  ax.set_xlabel("honest compression (x)")
  ax.set_ylabel(f"test drop ({result['metric']} points)")
  ax.set_title(f"{result['model']} / {result['dataset']}: one search per target")
  ax.legend(fontsize=8)
  return plots._save(fig, path)


def main(argv=None) -> int:
  parser = run_cli.build_parser()
  parser.prog = "python -m hirelc_jax.sweep"
  parser.description = "One search per accuracy target on one baseline; writes the Pareto front."
  parser.add_argument("--targets", type=float, nargs="+", required=True, metavar="PTS",
                      help="accuracy drops to search for, in points, e.g. 0.25 0.5 1 2")
  args = parser.parse_args(argv)

  def work():
    if args.target_accuracy_drop is not None:
      raise ValueError("--target-accuracy-drop is one target; a sweep takes --targets only")
    targets = check_targets(args.targets)
    run_cli.join_cluster(args)
    cfg = run_cli.resolve_config(args)
    out = pathlib.Path(f"{run_cli.output_path(cfg)}-sweep")
    run_cli.note_cpu(args.quiet)
    sweep(cfg, targets, out, resume=args.resume, quiet=args.quiet, schedule=args.schedule)
    print(f"front in {out / 'sweep.md'}")

  return run_cli.guarded(work, args.debug)


if __name__ == "__main__":
  sys.exit(main())
