"""The whole pipeline on the smoke schedule (vit_mu on digits): outputs, determinism, resume, errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hirelc_jax import run as cli
from hirelc_jax.compression import export

SMOKE = ["--model", "vit_mu", "--dataset", "digits", "--schedule", "smoke", "--quiet"]


@pytest.fixture(scope="module")
def cache(smoke_cache):
  path = smoke_cache
  old = os.environ.get("HIRELC_JAX_CACHE")
  os.environ["HIRELC_JAX_CACHE"] = str(path)
  yield path
  if old is None:
    os.environ.pop("HIRELC_JAX_CACHE")
  else:
    os.environ["HIRELC_JAX_CACHE"] = old


@pytest.fixture(scope="module")
def first_run(cache, tmp_path_factory):
  out = tmp_path_factory.mktemp("run1")
  assert cli.main(SMOKE + ["--output-dir", str(out)]) == 0
  run_dir = out / "vit_mu-digits-s0"
  return run_dir, json.loads((run_dir / "report.json").read_text())


def test_outputs_follow_the_contract(first_run):
  run_dir, report = first_run
  for name in ("config.json", "metrics.jsonl", "report.md", "model_export.npz", "pareto.png",
               "plan_heatmap.png", "cycles.png"):
    assert (run_dir / name).is_file(), name
  for key in ("model", "dataset", "seed", "baseline_accuracy", "final_accuracy", "accuracy_drop",
              "compression_ratio", "paper_compression_ratio", "storage_bits", "plan", "cycles",
              "wall_time_s", "phase_times_s"):
    assert key in report, key
  assert report["model"] == "vit_mu" and report["dataset"] == "digits"
  assert len(report["plan"]) == 2 and all(len(block) == 4 for block in report["plan"])
  kernel = report["plan"][0][0]
  assert set(kernel) >= {"name", "bits", "format", "granularity", "keep_ratio"}
  assert len(report["cycles"]) == 2
  assert report["accuracy_drop"] == pytest.approx(report["baseline_accuracy"] - report["final_accuracy"])
  assert report["compression_ratio"] > 1.0
  records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  events = [r["event"] for r in records]
  assert events.count("cycle") == 2 and events[-1] == "result"
  # A small dataset: 72 held-out images cannot resolve a 1-point target, and the run says so;
  # the choice counts a drop as within only with its margin of standard errors.
  assert any(r["event"] == "warning" and "72 examples" in r["message"] for r in records)
  chosen = report["cycles"][report["best_cycle"] - 1]
  assert chosen["val_se"] >= 100 / 72 and report["final_val_se"] == chosen["val_se"]
  assert report["met_target"] == (chosen["accuracy_drop_val"] + report["margin_se"] * chosen["val_se"]
                                  <= report["target_accuracy_drop"])


def test_export_reloads_to_the_fine_tuned_accuracy(first_run):
  run_dir, report = first_run
  from hirelc_jax import config as C
  from hirelc_jax import experiment
  setup = experiment.prepare(C.load(run_dir / "config.json"), quiet=True, log=lambda m: None)
  params, _ = export.load_export(run_dir / "model_export.npz")
  acc = experiment.accuracy(setup, {"params": params}, setup.data.x_test, setup.data.y_test)
  assert acc == pytest.approx(report["final_accuracy"], abs=1e-9)


def test_export_file_is_the_counted_storage_and_slim_gives_the_same_logits(first_run):
  run_dir, report = first_run
  from hirelc_jax import config as C
  from hirelc_jax import experiment
  from hirelc_jax import slim
  info = report["export"]
  assert info["storage_bytes"] == pytest.approx(report["storage_bits"] / 8)
  kernels = sum(len(block) for block in report["plan"])  # each pads its bitmap and codes to bytes
  assert info["storage_bytes"] <= info["payload_bytes"] < info["storage_bytes"] + 2 * kernels
  assert info["file_bytes"] <= info["storage_bytes"] + 4096
  setup = experiment.prepare(C.load(run_dir / "config.json"), quiet=True, log=lambda m: None)
  params, plan = export.load_export(run_dir / "model_export.npz")
  assert info["dead_rows_bytes"] == pytest.approx(
      slim.dead_storage(params, plan, setup.kmap, setup.spec)["dead_bytes"])
  module, slim_params = slim.load_slim(run_dir / "model_export.npz", setup.spec)[:2]
  x = setup.data.x_test[:16]
  want = setup.spec.module.apply({"params": params}, x)
  got = module.apply({"params": slim_params}, x)
  assert float(abs(got - want).max()) < 1e-4


def test_ablations_without_high_level_agent_and_with_the_surrogate_signal(cache, tmp_path):
  """The benchmark's ablations run end to end: no HLA (goal budgets), surrogate as the LLA signal."""
  argv = SMOKE + ["--output-dir", str(tmp_path), "--set", "search.high_level=false",
                  "--set", "search.signal=surrogate", "--cycles", "1"]
  assert cli.main(argv) == 0
  report = json.loads((tmp_path / "vit_mu-digits-s0" / "report.json").read_text())
  cycle = report["cycles"][0]
  assert cycle["budget_min_bits"] == [2, 2] and cycle["budget_max_prune"] == pytest.approx([0.8, 0.8])
  assert report["compression_ratio"] > 1.0


def test_the_integer_program_proposes_without_agents(cache, tmp_path):
  """--proposer ilp: the cycle's candidates are the program's; no budgets, no agent rewards."""
  assert cli.main(SMOKE + ["--output-dir", str(tmp_path), "--proposer", "ilp", "--cycles", "1"]) == 0
  report = json.loads((tmp_path / "vit_mu-digits-s0" / "report.json").read_text())
  cycle = report["cycles"][0]
  assert "budget_min_bits" not in cycle and cycle["agent_reward"] == {"hla": None, "lla": None}
  assert cycle["times"]["ilp_s"] > 0 and report["compression_ratio"] > 1.0


def test_a_corrupt_checkpoint_is_moved_aside_and_the_run_resumes_from_the_cycle_before(first_run, tmp_path,
                                                                                       capsys):
  """cycle_2's meta.json emptied: --resume names it, keeps it as corrupt_cycle_2, reruns cycle 2
  from cycle 1 and ends like the uninterrupted run; the resumed session's events are marked."""
  import shutil
  run_dir, report = first_run
  copy = tmp_path / run_dir.name
  shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(".lock"))
  for name in ("report.json", "report.md", "model_export.npz"):
    (copy / name).unlink()
  (copy / "checkpoints" / "cycle_2" / "meta.json").write_text("")
  before = len((copy / "metrics.jsonl").read_text().splitlines())
  assert cli.main(SMOKE + ["--output-dir", str(tmp_path), "--resume"]) == 0
  resumed = json.loads((copy / "report.json").read_text())
  assert resumed["plan"] == report["plan"] and resumed["final_accuracy"] == report["final_accuracy"]
  assert (copy / "checkpoints" / "corrupt_cycle_2" / "meta.json").exists()
  events = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()[before:]]
  warning = next(e for e in events if e["event"] == "warning" and "corrupt" in e["message"])
  assert "cycle_2" in warning["message"] and "resuming from cycle 1" in warning["message"]
  assert all(e.get("resumed") for e in events)
  assert [e["cycle"] for e in events if e["event"] == "resume"] == [1]


@pytest.mark.parametrize("argv, message", [
    (["--set", "goal.min_bits"], "--set 'goal.min_bits' is malformed"),
    (["--set", "goal.nope=1"], "unknown config key goal.'nope'"),
    (["--target-accuracy-drop", "-1"], "target_accuracy_drop=-1.0"),
    (["--target-compression", "0.5"], "target_compression=0.5"),
    (["--config", "no_such_preset"], "unknown preset 'no_such_preset'"),
    (["--data-dir", "/nonexistent", "--dataset", "fashion_mnist"], "/nonexistent"),
])
def test_bad_input_is_one_line_and_nonzero(argv, message, tmp_path, capsys, cache):
  code = cli.main(["--model", "vit_mu", "--quiet", "--output-dir", str(tmp_path)] + argv)
  err = capsys.readouterr().err.strip()
  assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_existing_run_is_not_overwritten(first_run, capsys):
  run_dir, _ = first_run
  before = (run_dir / "report.json").read_bytes()
  code = cli.main(SMOKE + ["--output-dir", str(run_dir.parent)])
  assert code == 2 and "already holds a run" in capsys.readouterr().err
  assert (run_dir / "report.json").read_bytes() == before


def test_unwritable_output_dir(tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("")
  code = cli.main(SMOKE + ["--output-dir", str(blocker / "sub")])
  assert code == 2 and "not writable" in capsys.readouterr().err


def _free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_of_two_devices_terminated_and_resumed_end_as_the_one_device_run(first_run, cache, tmp_path):
  """Two processes on localhost (jax.distributed, gloo collectives), two forced host devices
  each: one mesh of 4 for data-parallel training and evaluation and plan-parallel screening.
  Process 1 alone is terminated (SIGTERM, a preempted host) after the first cycle: JAX's
  preemption service tells process 0, both stop at the same check with status 143, and both
  are started again with --resume. The run ends with the one-device run's plan and
  accuracies: exactly equal on this CPU; one example is allowed, since float reductions
  summed in another order could flip one arg-max. Process 0 alone writes: one
  `result` line in the log. (This also covers one process on 4 devices, and resume after a stop.)"""
  _, report = first_run
  env = {**os.environ, "HIRELC_JAX_CACHE": str(cache), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}

  def start(*extra):
    port = _free_port()
    return [subprocess.Popen([sys.executable, "-m", "hirelc_jax.run", *SMOKE, "--output-dir", str(tmp_path),
                              "--coordinator", f"localhost:{port}", "--num-processes", "2",
                              "--process-id", str(i), *extra], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for i in (0, 1)]

  run = tmp_path / "vit_mu-digits-s0"
  procs = start()
  deadline = time.time() + 900
  while not (run / "checkpoints" / "cycle_1" / "meta.json").exists() and time.time() < deadline \
      and all(p.poll() is None for p in procs):
    time.sleep(0.2)
  assert (run / "checkpoints" / "cycle_1" / "meta.json").exists(), procs[0].communicate(timeout=60)[1][-2000:]
  procs[1].send_signal(signal.SIGTERM)
  stopped = time.time()
  errs = [p.communicate(timeout=120)[1] for p in reversed(procs)]
  assert time.time() - stopped < 120 and [p.returncode for p in procs] == [143, 143], errs
  assert all("--resume" in e for e in errs), errs
  assert not (run / "report.json").exists()
  procs = start("--resume")
  errs = [p.communicate(timeout=900)[1] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
  two = json.loads((run / "report.json").read_text())
  assert report["placement"]["mesh"] == {"data": 1}
  assert two["placement"]["processes"] == 2 and two["placement"]["mesh"] == {"data": 4}
  assert two["plan"] == report["plan"] and two["best_cycle"] == report["best_cycle"]
  for key in ("baseline_accuracy", "final_accuracy", "final_val_accuracy", "compression_ratio"):
    assert two[key] == pytest.approx(report[key], abs=100 / 360), key
  events = [json.loads(line)["event"] for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert events.count("result") == 1 and events.count("resume") == 1


def test_a_sweep_runs_each_target_as_its_own_search(first_run, cache, tmp_path, capsys):
  """Two targets on one baseline, their fine-tunes at once: the 1-point target's search is the
  smoke run's (same keys, same candidates; its fine-tunes agree up to the batched program's
  reduction order: the plans are equal and accuracies within one example; exactly equal on this
  CPU), the front is written, and the folder is guarded like a run's."""
  from hirelc_jax import sweep
  _, report = first_run
  argv = SMOKE + ["--output-dir", str(tmp_path), "--targets", "3", "1"]
  assert sweep.main(argv) == 0
  out = tmp_path / "vit_mu-digits-s0-sweep"
  front = json.loads((out / "sweep.json").read_text())
  assert front["targets"] == [1.0, 3.0] and front["finetunes"] == 4
  assert (out / "sweep_front.png").stat().st_size > 0 and "| 3 |" in (out / "sweep.md").read_text()
  one = json.loads((out / "target_1" / "report.json").read_text())
  for key in ("compression_ratio", "pre_finetune_accuracy", "plan_arrays"):   # before the first fine-tune
    assert one["cycles"][0][key] == report["cycles"][0][key], key
  assert one["plan"] == report["plan"] and one["best_cycle"] == report["best_cycle"]
  for key in ("final_accuracy", "final_val_accuracy", "compression_ratio"):
    assert one[key] == pytest.approx(report[key], abs=100 / 360), key
  rows = {r["target"]: r for r in front["rows"]}
  assert rows[1.0]["test_drop"] == pytest.approx(one["accuracy_drop"])
  assert any(r["on_front"] for r in front["rows"])
  capsys.readouterr()
  assert sweep.main(argv) == 2 and "already holds a run" in capsys.readouterr().err
  assert sweep.main(argv[:-2] + ["0.5", "--resume"]) == 2
  assert "repeat its original --targets" in capsys.readouterr().err
  assert sweep.main(SMOKE + ["--output-dir", str(tmp_path), "--targets", "-1"]) == 2
  assert "--targets -1" in capsys.readouterr().err
