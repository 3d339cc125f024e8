"""The output folder of a run: one run at a time, claimed before anything is written in it.

`claim(out_dir, config, resume)` takes an exclusive OS lock on `out_dir/.lock`
(`fcntl.flock`: released by the kernel when the process ends, so a crashed
run never leaves a stale lock; the file keeps the holder's process id for
the message), then checks what the folder holds (with several processes,
process 0 does this and tells the others; see `hirelc_jax.distributed`):

- a fresh start into a folder with a completed cycle or a report is refused;
- a fresh start into a folder whose run completed no cycle clears that run's
  files (nothing of value: the baseline is cached elsewhere) and says so;
- `resume` needs the run's config.json and the same settings, compared as
  settings: where the folder lives (`output_dir`) is not one of them, and
  `data.data_dir` is compared as a resolved path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import shutil

from hirelc_jax import config as config_io
from hirelc_jax import distributed
from hirelc_jax.config import Config

LOCK = ".lock"
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints", "report.json", "report.md", "model_export.npz",
             "sweep.json", "sweep.md", "sweep_front.png")
TARGET_DIRS = "target_*"   # a sweep's per-target runs (hirelc_jax.sweep)


@contextlib.contextmanager
def claim(out_dir: pathlib.Path, config: Config, resume: bool):
  """Holds `out_dir` for one run; yields a note (str or None) to log once the run's log exists.

  Raises:
    ValueError: the folder is not writable, is held by another run, holds a completed run
      (without `resume`), or holds no run or another run's settings (with `resume`).
  """
  out_dir = pathlib.Path(out_dir)
  if not distributed.writes():   # process 0 claims the folder for the whole cluster
    if not distributed.agree(False):
      raise ValueError(f"process 0 refused output directory {out_dir}; see its error")
    yield None
    return
  try:
    fd = _lock(out_dir)
    try:
      note = check_contents(out_dir, config, resume)
    except ValueError:
      os.close(fd)
      raise
  except ValueError:
    distributed.agree(False)
    raise
  distributed.agree(True)
  try:
    yield note
  finally:
    os.close(fd)   # closing the last descriptor releases the lock


def _lock(out_dir: pathlib.Path) -> int:
  """The descriptor of `out_dir/.lock`, locked, with this process's id written in it."""
  try:
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as err:
    raise ValueError(f"output directory {out_dir} is not writable ({err.strerror}); "
                     "choose another with --output-dir") from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    os.close(fd)
    raise ValueError(f"output directory {out_dir} is in use by another run (process {holder}); "
                     "wait for it to end or choose another --output-dir") from None
  os.ftruncate(fd, 0)
  os.pwrite(fd, str(os.getpid()).encode(), 0)
  return fd


def completed(out_dir: pathlib.Path) -> int:
  """Completed cycles saved in `out_dir` or a sweep's target folders in it (a finished
  report counts as one)."""
  from hirelc_jax import run_state
  return max(max(run_state.latest_cycle(d / "checkpoints"), int((d / "report.json").exists()))
             for d in [out_dir, *sorted(out_dir.glob(TARGET_DIRS))])


def check_contents(out_dir: pathlib.Path, config: Config, resume: bool) -> str | None:
  done = completed(out_dir)
  if resume:
    if not (out_dir / "config.json").exists():
      raise ValueError(f"--resume: no run to continue in {out_dir}; start it without --resume")
    differ = differences(config_io.load(out_dir / "config.json"), config)
    if differ:
      raise ValueError(f"--resume: the run in {out_dir} has other settings ({'; '.join(differ[:3])}); "
                       "repeat its original options with --resume")
    return None
  if done:
    raise ValueError(f"output directory {out_dir} already holds a run ({done} completed cycle"
                     f"{'s' if done > 1 else ''}); pass --resume (resume=True) to continue it, or write elsewhere")
  stale = [out_dir / name for name in RUN_FILES if (out_dir / name).exists()] + sorted(out_dir.glob(TARGET_DIRS))
  for path in stale:
    shutil.rmtree(path) if path.is_dir() else path.unlink()
  if stale:
    return f"{out_dir} held a run that completed no cycle; its files were cleared and the run starts afresh"
  return None


def differences(saved: Config, config: Config) -> list[str]:
  """'key: saved -> now' for every setting that differs, where the folder lives and the
  devices it runs on left out (a run may move to another machine)."""
  a, b = (flat(config_io.to_dict(c)) for c in (saved, config))
  for d in (a, b):
    d.pop("output_dir", None)
    d.pop("devices", None)
    if d.get("data.data_dir"):
      d["data.data_dir"] = os.path.realpath(d["data.data_dir"])
  return [f"{k}: {a.get(k)!r} then, {b.get(k)!r} now" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def flat(tree: dict, where: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flat(value, f"{where}{key}."))
    else:
      out[where + key] = value
  return out
