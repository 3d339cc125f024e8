"""Copies the headline of a finished run's report.json into benchmarks/results/run_<name>.json.

Usage: python benchmarks/record_run.py RUN_DIR NAME "COMMAND" ["NOTE"]
"""

from __future__ import annotations

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

KEYS = ("model", "dataset", "seed", "schedule", "baseline_accuracy", "final_accuracy", "accuracy_drop",
        "baseline_val_accuracy", "final_val_accuracy", "met_target", "compression_ratio",
        "paper_compression_ratio", "storage_bits", "best_cycle", "wall_time_s", "phase_times_s", "plan")


def main(run_dir: str, name: str, command: str, note: str = "") -> None:
  report = json.loads((pathlib.Path(run_dir) / "report.json").read_text())
  common.write(f"run_{name}", {"command": command, "note": note, **{k: report[k] for k in KEYS},
                               "cycles": [{k: c[k] for k in ("cycle", "val_accuracy", "pre_finetune_accuracy",
                                                             "compression_ratio", "times")}
                                          for c in report["cycles"]]})


if __name__ == "__main__":
  main(*sys.argv[1:5])
