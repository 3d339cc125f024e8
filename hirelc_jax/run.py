"""Command line: python -m hirelc_jax.run --model vit_tiny (or the console script hirelc-jax)."""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import traceback

from hirelc_jax import interrupts
from hirelc_jax.data import DATASET_NAMES
from hirelc_jax.models import MODEL_NAMES

SCHEDULES = ("smoke", "default", "paper")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="hirelc-jax", description="Compress a network by hierarchical RL: per-kernel bits, "
      "format, granularity and pruning, with QAT fine-tuning.")
  p.add_argument("--model", choices=MODEL_NAMES, help="model to compress (default vit_tiny)")
  p.add_argument("--dataset", choices=DATASET_NAMES, help="dataset (default fashion_mnist)")
  p.add_argument("--data-dir", help="folder holding the dataset files")
  p.add_argument("--config", help="a preset name from configs/ or a JSON file")
  p.add_argument("--schedule", choices=SCHEDULES, default="default",
                 help="sizes of the search: smoke (seconds), default, paper (the original's)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config value, e.g. --set goal.min_bits=3 (repeatable)")
  p.add_argument("--proposer", choices=("agents", "ilp", "both"),
                 help="where each cycle's candidate plans come from: the RL agents, the exact integer "
                      "program on the error table, or both (search.proposer)")
  p.add_argument("--cycles", type=int, help="search cycles")
  p.add_argument("--seed", type=int, help="random seed")
  p.add_argument("--output-dir", help="where runs are written (default runs/)")
  p.add_argument("--devices", type=int, help="devices to spread the work over (default: all there are)")
  p.add_argument("--resume", action="store_true", help="continue the run in the output directory")
  p.add_argument("--coordinator", metavar="HOST:PORT",
                 help="several processes: process 0's address (or $HIRELC_COORDINATOR; SLURM, Open MPI "
                      "and TPU pods are found without it)")
  p.add_argument("--num-processes", type=int, help="several processes: how many ($HIRELC_NUM_PROCESSES)")
  p.add_argument("--process-id", type=int, help="several processes: this one's index ($HIRELC_PROCESS_ID)")
  p.add_argument("--quantization-type", choices=("mixed", "int", "float"))
  p.add_argument("--strategy", choices=("uniform", "log", "per_channel", "learned"),
                 help="fix one granularity for every kernel")
  p.add_argument("--no-pruning", action="store_true", help="quantize only")
  p.add_argument("--no-quantization", action="store_true", help="prune only")
  p.add_argument("--target-accuracy-drop", type=float, help="allowed accuracy drop in points")
  p.add_argument("--target-compression", type=float, help="whole-model compression to aim for")
  p.add_argument("--quiet", action="store_true", help="no progress bars or cycle lines")
  p.add_argument("--debug", action="store_true", help="show tracebacks")
  return p


def resolve_config(args):
  """The Config the arguments describe (raises ValueError on bad input)."""
  from hirelc_jax import config as C
  cfg = C.Config()
  if args.schedule != "default":
    cfg = C.preset(args.schedule, cfg)
  if args.config:
    cfg = C.load(args.config, cfg) if args.config.endswith(".json") or os.path.sep in args.config \
        else C.preset(args.config, cfg)
  sets = {}
  for item in args.set:
    if "=" not in item:
      raise ValueError(f"--set {item!r} is malformed; use KEY=VALUE, e.g. goal.min_bits=3")
    k, v = item.split("=", 1)
    sets[k.strip()] = v
  flags = {"model.name": args.model, "data.name": args.dataset, "data.data_dir": args.data_dir,
           "search.cycles": args.cycles, "search.proposer": args.proposer, "seed": args.seed, "output_dir": args.output_dir,
           "devices": args.devices,
           "goal.quantization_type": args.quantization_type, "goal.strategy": args.strategy,
           "goal.target_accuracy_drop": args.target_accuracy_drop,
           "goal.target_compression": args.target_compression}
  tree = {}
  for dotted, value in flags.items():
    if value is not None:
      node = tree
      *parents, leaf = dotted.split(".")
      for part in parents:
        node = node.setdefault(part, {})
      node[leaf] = value
  if args.no_pruning:
    tree.setdefault("goal", {})["pruning"] = False
  if args.no_quantization:
    tree.setdefault("goal", {})["quantization"] = False
  cfg = C.from_dict(tree, cfg)
  cfg = C.override(cfg, sets)
  return cfg.validate()


def output_path(cfg) -> pathlib.Path:
  """runs/<model>-<dataset>-s<seed> under `output_dir` (`run_dir.claim` decides what may go in it)."""
  return pathlib.Path(cfg.output_dir) / f"{cfg.model.name}-{cfg.data.name}-s{cfg.seed}"


def guarded(work, debug: bool) -> int:
  """Runs `work()` with SIGINT and SIGTERM watched (`hirelc_jax.interrupts`); returns the exit
  status: 0, 130 or 143 when interrupted (every completed cycle is saved), 2 with a one-line
  error on bad input. One process of several that fails or is interrupted leaves at once
  (`distributed.leave`), so that the others stop too instead of waiting for it."""
  from hirelc_jax import distributed
  try:
    code = _status(work, debug)
  except BaseException:
    if not distributed.several():
      raise
    traceback.print_exc()
    code = 1
  distributed.leave(code)
  return code


def _status(work, debug: bool) -> int:
  try:
    with interrupts.watched():
      work()
    return 0
  except (KeyboardInterrupt, interrupts.Terminated) as err:
    what = "interrupted" if isinstance(err, KeyboardInterrupt) else "terminated (SIGTERM)"
    print(f"\n{what}: every completed cycle is saved; rerun the same command with --resume", file=sys.stderr)
    return 130 if isinstance(err, KeyboardInterrupt) else 143
  except (ValueError, FloatingPointError, FileNotFoundError) as err:
    if debug:
      raise
    print(f"error: {err}", file=sys.stderr)
    return 2


def join_cluster(args) -> None:
  """Joins the processes the flags or the environment name (`hirelc_jax.distributed`);
  every process but 0 then runs quietly, since process 0 reports for all."""
  from hirelc_jax import distributed
  if distributed.initialize(args.coordinator, args.num_processes, args.process_id) > 1:
    args.quiet = args.quiet or not distributed.writes()


def note_cpu(quiet: bool) -> None:
  import jax
  if jax.default_backend() == "cpu" and not quiet:
    print("note: running on CPU (no GPU/TPU found by JAX); this works but is slower")


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)

  def work():
    join_cluster(args)
    cfg = resolve_config(args)
    out = output_path(cfg)
    from hirelc_jax import experiment
    note_cpu(args.quiet)
    experiment.run(cfg, out, resume=args.resume, quiet=args.quiet, schedule=args.schedule)
    print(f"outputs in {out}")

  return guarded(work, args.debug)


if __name__ == "__main__":
  sys.exit(main())
