"""Shared helpers for benchmarks: machine description, timing, result files."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import time

import jax

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def machine() -> dict:
  """What the numbers were measured on."""
  cpu = platform.processor() or "unknown cpu"
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  device = jax.devices()[0]
  return {"cpu": cpu, "cores": os.cpu_count(), "backend": jax.default_backend(),
          "device": getattr(device, "device_kind", str(device)), "jax": jax.__version__,
          "python": platform.python_version()}


def code_version() -> str:
  """The checkout's short commit, "-dirty" when a Python file differs from it."""
  root = pathlib.Path(__file__).resolve().parent.parent
  git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True).stdout.strip()
  commit = git("rev-parse", "--short", "HEAD") or "unknown"
  return commit + ("-dirty" if git("status", "--porcelain", "--", "*.py") else "")


def timeit(fn, *, repeats: int = 5, min_time: float = 0.5) -> float:
  """Median seconds per call of `fn` (which must block until its result is ready)."""
  fn()  # warm-up / compile
  times = []
  for _ in range(repeats):
    n, start = 0, time.perf_counter()
    while True:
      fn()
      n += 1
      elapsed = time.perf_counter() - start
      if elapsed >= min_time / repeats:
        break
    times.append(elapsed / n)
  times.sort()
  return times[len(times) // 2]


def write(name: str, results: dict) -> pathlib.Path:
  """Writes results with the machine description to benchmarks/results/<name>.json."""
  RESULTS.mkdir(exist_ok=True)
  path = RESULTS / f"{name}.json"
  payload = {"benchmark": name, "machine": machine(),
             "date": time.strftime("%Y-%m-%d %H:%M:%S"), **results}
  path.write_text(json.dumps(payload, indent=2) + "\n")
  print(f"wrote {path}")
  return path
