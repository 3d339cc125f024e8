"""One run per output folder, checks before anything is written, strict metrics, a user's bad inputs."""

import gc
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from hirelc_jax import config as C
from hirelc_jax import interrupts
from hirelc_jax import run as cli
from hirelc_jax import run_dir

SMOKE = ["--model", "vit_mu", "--dataset", "digits", "--schedule", "smoke", "--quiet"]


def hold(folder: pathlib.Path) -> subprocess.Popen:
  """A second process that claims `folder` and waits to be killed."""
  code = textwrap.dedent(f"""
      import pathlib, time
      from hirelc_jax import config as C, run_dir
      with run_dir.claim(pathlib.Path({str(folder)!r}), C.Config(), False):
        print("held", flush=True)
        time.sleep(120)
  """)
  proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_second_run_into_a_held_folder_is_refused_and_a_dead_holder_frees_it(tmp_path, capsys):
  folder = tmp_path / "vit_mu-digits-s0"
  holder = hold(folder)
  try:
    code = cli.main(SMOKE + ["--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"in use by another run (process {holder.pid})" in err, err
    assert len(err.splitlines()) == 1 and sorted(os.listdir(folder)) == [".lock"]
  finally:
    holder.kill()    # no clean exit: the kernel drops the lock with the process
    holder.wait()
  with run_dir.claim(folder, C.Config(), False) as note:
    assert note is None


@pytest.mark.parametrize("argv, message", [
    (["--set", "training.batch_size=0"], "training.batch_size=0 must be >= 1"),
    (["--set", "goal.min_bits=3.5"], "goal.min_bits=3.5 must be an integer"),
    (["--set", "goal.target_compression=Infinity"], "goal.target_compression=inf must be a finite number"),
    (["--set", "goal=3"], "config key goal is a section"),
    (["--dataset", "fashion_mnist", "--data-dir", "/nonexistent/fm"], "/nonexistent/fm"),
])
def test_bad_input_fails_before_the_output_folder_exists(tmp_path, capsys, argv, message):
  code = cli.main(["--model", "vit_mu", "--quiet", "--output-dir", str(tmp_path / "out")] + argv)
  err = capsys.readouterr().err.strip()
  assert code == 2 and message in err and len(err.splitlines()) == 1, err
  assert not (tmp_path / "out").exists()


def test_a_folder_without_a_completed_cycle_does_not_block_a_fresh_start(tmp_path):
  folder = tmp_path / "run"
  (folder / "checkpoints" / "cycle_1.tmp").mkdir(parents=True)     # killed while saving cycle 1
  (folder / "checkpoints" / "cycle_1.tmp" / "meta.json").write_text("{}")
  (folder / "config.json").write_text("{}")
  (folder / "metrics.jsonl").write_text('{"event": "start"}\n')
  (folder / "notes.txt").write_text("mine")                         # not the run's: kept
  with run_dir.claim(folder, C.Config(), False) as note:
    assert "completed no cycle" in note
  assert sorted(os.listdir(folder)) == [".lock", "notes.txt"]
  (folder / "checkpoints" / "cycle_1").mkdir(parents=True)
  (folder / "checkpoints" / "cycle_1" / "meta.json").write_text("{}")
  with pytest.raises(ValueError, match=r"already holds a run \(1 completed cycle\)"):
    with run_dir.claim(folder, C.Config(), False):
      pass
  assert (folder / "checkpoints" / "cycle_1" / "meta.json").exists()


def test_resume_compares_settings_not_where_the_folder_lives(tmp_path, monkeypatch):
  folder = tmp_path / "moved" / "run"
  folder.mkdir(parents=True)
  monkeypatch.chdir(tmp_path)
  (tmp_path / "data").mkdir()
  C.save(C.override(C.Config(), {"output_dir": "runs/", "data.data_dir": "data"}), folder / "config.json")
  same = C.override(C.Config(), {"output_dir": str(tmp_path / "moved"), "data.data_dir": str(tmp_path / "data/")})
  with run_dir.claim(pathlib.Path(str(folder) + "/"), same, True) as note:
    assert note is None
  other = C.override(same, {"search.cycles": "6"})
  with pytest.raises(ValueError, match=r"other settings \(search.cycles: 4 then, 6 now\)"):
    with run_dir.claim(folder, other, True):
      pass
  with pytest.raises(ValueError, match="no run to continue"):
    with run_dir.claim(tmp_path / "empty", same, True):
      pass


def test_metrics_are_strict_json_and_a_resumed_session_is_marked(tmp_path):
  from hirelc_jax.experiment import EventLog
  EventLog(tmp_path / "m.jsonl")("cycle", drop=float("nan"), ratios=[1.0, float("inf")], x=np.float32(2.5))
  EventLog(tmp_path / "m.jsonl", resumed=True)("baseline", acc=np.array([88.5]))
  refuse = lambda name: (_ for _ in ()).throw(ValueError(name))
  first, second = [json.loads(line, parse_constant=refuse) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
  assert first["drop"] is None and first["ratios"] == [1.0, None] and first["x"] == 2.5 and "resumed" not in first
  assert second["resumed"] is True and second["acc"] == [88.5]


@pytest.mark.parametrize("signum, code, said", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                 (signal.SIGINT, 130, "interrupted")])
def test_a_signal_exits_with_the_resume_message(signum, code, said, tmp_path, smoke_cache):
  env = {**os.environ, "HIRELC_JAX_CACHE": str(smoke_cache)}
  # A shell's background job (CI started with `&`) inherits SIGINT ignored; restore the default
  # so the child's Python installs its KeyboardInterrupt handler.
  proc = subprocess.Popen([sys.executable, "-m", "hirelc_jax.run"] + SMOKE + ["--output-dir", str(tmp_path)],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  started = tmp_path / "vit_mu-digits-s0" / "metrics.jsonl"
  deadline = time.time() + 300
  while not started.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.1)
  proc.send_signal(signum)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == code and said in err and "--resume" in err, err


def test_api_refuses_non_finite_parameters_and_inconsistent_arrays(tmp_path):
  import hirelc_jax
  x = np.zeros((20, 8, 8, 1), np.float32)
  y = np.arange(20) % 2
  data = hirelc_jax.dataset_from_arrays(x, y, x, y)
  bad = {"params": {"block_0": {"fc": {"kernel": np.array([[1.0, np.nan], [0.0, 1.0]])}}}}
  with pytest.raises(ValueError, match="parameter params/block_0/fc/kernel holds 1 NaN or Inf value of 4"):
    hirelc_jax.compress(lambda v, x: x, bad, data, kernel_rules=[(r"block_(?P<block>\d+)/fc/kernel", "fc")],
                        kernel_names=["fc"], output_dir=tmp_path / "o")
  assert not (tmp_path / "o").exists()
  with pytest.raises(ValueError, match=r"test inputs have shape \(4, 4, 1\), training inputs \(8, 8, 1\) per example"):
    hirelc_jax.dataset_from_arrays(x, y, x[:, :4, :4], y)
  with pytest.raises(ValueError, match=r"y_test must hold integer class labels in \[0, 2\)"):
    hirelc_jax.dataset_from_arrays(x, y, x, y + 2, num_classes=2)
  with pytest.raises(ValueError, match="y_train must hold integer class labels"):
    hirelc_jax.dataset_from_arrays(x, y - 1, x, y)


def test_sigterm_inside_an_asyncio_callback_still_stops_the_run():
  """orbax restores through asyncio, whose callbacks log and drop a BaseException that is not a
  SystemExit or KeyboardInterrupt; a SIGTERM landing there once let a run finish with status 0."""
  import asyncio

  async def wait_for_the_signal():
    asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)   # lands in a callback
    await asyncio.sleep(0.2)
  with pytest.raises(interrupts.Terminated), interrupts.watched():
    asyncio.run(wait_for_the_signal())


@pytest.mark.parametrize("signum, err", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, interrupts.Terminated)])
def test_a_signal_a_gc_callback_swallowed_is_raised_again(signum, err):
  """Python prints an exception raised in a garbage-collector callback as ignored and drops it (a
  SIGINT in JAX's gc callback once let a run finish with status 0); `watched` raises it again."""
  fired, went_on = [], []
  # A suite started as a shell's background job inherits SIGINT ignored, which `watched` keeps.
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)

  def callback(phase, info):
    if not fired:
      fired.append(phase)
      os.kill(os.getpid(), signum)
      sum(range(10_000))   # the handler runs here, inside the callback
  gc.callbacks.append(callback)
  try:
    with pytest.raises(err), interrupts.watched():
      try:
        gc.collect()
      finally:
        gc.callbacks.remove(callback)
      went_on.append(True)
  finally:
    signal.signal(signal.SIGINT, previous)
  assert fired and went_on
