"""report.md / report.json / final table rendering and the six report figures."""

import copy
import json
import warnings

import numpy as np
import pytest

from hirelc_jax import plots, report as rep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KERNELS = ["qkv", "attn_proj", "mlp_fc1", "mlp_fc2"]


def _entry(name, bits, fmt, gran, keep):
  names = {("int", 4): "int4", ("int", 8): "int8", ("float", 6): "e2m3", ("float_exp", 8): "e5m2"}
  return {"name": name, "bits": bits, "format": fmt,
          "format_name": "fp32" if bits == 32 else names.get((fmt, bits), f"{fmt}{bits}"),
          "granularity": gran, "keep_ratio": keep}


def fake_report():
  """A realistic 2-block x 4-kernel report with 2 cycles and 10 evaluated plans."""
  plan = [[_entry("qkv", 4, "int", "per_channel", 0.75), _entry("attn_proj", 8, "int", "uniform", 1.0),
           _entry("mlp_fc1", 6, "float", "log", 0.5), _entry("mlp_fc2", 32, "int", "per_channel", 0.6)],
          [_entry("qkv", 8, "float_exp", "learned", 1.0), _entry("attn_proj", 32, "int", "uniform", 1.0),
           _entry("mlp_fc1", 4, "int", "asymmetric", 0.9), _entry("mlp_fc2", 4, "int", "learned", 0.8)]]
  cycles = []
  for c, (val, pre, pred, cr, pcr) in enumerate([(87.4, 79.3, 81.0, 8.7, 10.2),
                                                 (87.9, 80.1, 80.6, 10.3, 11.9)], start=1):
    cycles.append({
        "cycle": c, "goal_compression": 10.0 * c, "floor_shift": c - 1,
        "screened": {"compression_ratio": [cr, cr + 1, cr + 2], "pre_finetune_accuracy": [pre, 70.0, 60.0]},
        "val_accuracy": val, "pre_finetune_accuracy": pre, "predicted_accuracy": pred,
        "compression_ratio": cr, "paper_compression_ratio": pcr, "accuracy_drop": 88.4 - val,
        "budget_target_ratio": [0.12 * c, 0.08], "budget_min_bits": [4, 3], "budget_max_prune": [0.3, 0.5],
        "strategies": ["auto", "quant"],
        "plan_summary": {"mean_bits": 4.2 + c, "mean_keep": 0.8, "int": 5, "float": 3, "uniform": 2,
                         "log": 1, "per_channel": 3, "learned": 2},
        "times": {"hla_s": 1.2, "lla_s": 10.0, "finetune_s": 60.0, "eval_s": 2.0, "surrogate_s": 0.5}})
  evaluated = [{"kind": "warmup", "label": "", "compression_ratio": cr, "accuracy": acc,
                "stage": "pre_finetune"}
               for cr, acc in [(3.1, 86.0), (5.2, 84.5), (7.7, 78.2), (12.4, 61.0)]]
  evaluated += [{"kind": "uniform", "label": lab, "compression_ratio": cr, "accuracy": acc,
                 "stage": "pre_finetune"}
                for lab, cr, acc in [("INT8", 3.9, 88.0), ("INT4", 7.4, 80.2), ("INT2", 13.5, 10.0)]]
  evaluated += [{"kind": "cycle", "label": "C1", "compression_ratio": 8.7, "accuracy": 79.3,
                 "stage": "pre_finetune"},
                {"kind": "cycle", "label": "C1", "compression_ratio": 8.7, "accuracy": 87.4,
                 "stage": "finetuned"},
                {"kind": "cycle", "label": "C2", "compression_ratio": 10.3, "accuracy": 87.9,
                 "stage": "finetuned"}]
  return {
      "model": "vit_tiny", "dataset": "fashion_mnist", "seed": 0, "device": "cpu",
      "schedule": "default", "baseline_accuracy": 88.1, "final_accuracy": 87.5,
      "baseline_val_accuracy": 88.4, "final_val_accuracy": 87.9, "accuracy_drop": 0.6,
      "target_accuracy_drop": 1.0, "met_target": True, "best_cycle": 2,
      "compression_ratio": 10.3, "paper_compression_ratio": 11.9,
      "storage_bits": 1.6e7, "fp32_bits": 1.7e8,
      "export": {"path": "/tmp/run/model_export.npz", "file_bytes": 2_123_456, "storage_bytes": 2.0e6},
      "kernel_names": list(KERNELS), "plan": plan, "sensitivity": [0.3, 1.0], "cycles": cycles,
      "evaluated": evaluated,
      "surrogate": {"samples": 40, "holdout_mae": 1.2,
                    "predictions": [{"cycle": 1, "predicted": 81.0, "actual": 79.3},
                                    {"cycle": 2, "predicted": 80.6, "actual": 80.1}]},
      "wall_time_s": 612.0,
      "phase_times_s": {"baseline": 300.0, "sensitivity": 2.0, "warmup": 20.0, "cycles": 280.0,
                        "final_eval": 5.0, "export": 1.0}}


def _section(md, heading):
  body = md.split(f"## {heading}", 1)[1]
  return body.split("\n## ", 1)[0]


def test_markdown_headline_numbers_and_met():
  md = rep.render_markdown(fake_report())
  for needle in ("88.10 %", "87.50 %", "88.40 %", "87.90 %", "0.60 pt", "1.00 pt", "10.30×",
                 "11.90×", "Original HiReLC's metric", "vit_tiny", "fashion_mnist", "2,123,456 B",
                 "1.907 MiB vs 20.266 MiB", "2.025 MiB"):
    assert needle in md, needle
  assert "✓ met" in md and "missed" not in md
  missed = dict(fake_report(), met_target=False, accuracy_drop=1.4)
  md = rep.render_markdown(missed)
  assert "✗ missed" in md and "✓ met" not in md and "1.40 pt" in md


def test_markdown_tables():
  md = rep.render_markdown(fake_report())
  rows = [l for l in _section(md, "Compression plan").splitlines() if l.startswith("| ")]
  assert len(rows) == 1 + 2 * 4  # header + one per (block, kernel)
  assert sum("| mlp_fc1 |" in r for r in rows) == 2 and "| e2m3 |" in md and "| fp32 |" in md
  cycles = [l for l in _section(md, "Cycles").splitlines() if l.startswith("| ")]
  assert any(r.startswith("| 2 (best) | 20.0× | 1 | 3 | 87.90 | 80.10 | 80.60 |") for r in cycles)
  strategy = _section(md, "Strategy distribution")
  assert "| Strategy | quantized only | 2 | 25 % |" in strategy
  assert "| Strategy | pruned only | 1 |" in strategy and "| Strategy | both | 4 |" in strategy
  assert "| Number format | FLOAT | 2 |" in strategy and "| Granularity | learned | 2 |" in strategy
  times = _section(md, "Time per phase")
  assert "| baseline | 300.0 | 49.0 % |" in times and "612.0" in times
  assert "1.20 pt" in _section(md, "Surrogate") and "1.10 pt" in _section(md, "Surrogate")


def test_missing_optional_keys_render_na():
  minimal = {"model": "cnn", "cycles": None, "plan": [], "export": None}
  md = rep.render_markdown(minimal)
  assert "n/a" in md and "cnn" in md
  assert len(rep.final_table(minimal).splitlines()) <= 12
  partial = fake_report()
  for key in ("paper_compression_ratio", "surrogate", "export", "phase_times_s", "sensitivity"):
    del partial[key]
  partial["cycles"][0]["times"] = None
  partial["cycles"][1]["predicted_accuracy"] = None
  rep.render_markdown(partial)


def test_write_report_round_trips_exactly(tmp_path):
  report = fake_report()
  report["tricky"] = [0.1 + 0.2, 1 / 3, 1e-300, 2.0**-1074, 123456789.123456789, np.float64(0.7)]
  json_path, md_path = rep.write_report(report, tmp_path / "out")
  loaded = json.loads(open(json_path, encoding="utf-8").read())
  assert loaded == report
  assert all(a == b and type(a) is float for a, b in zip(loaded["tricky"], report["tricky"]))
  assert open(md_path, encoding="utf-8").read() == rep.render_markdown(report)
  assert json.dumps(loaded, indent=2) + "\n" == open(json_path, encoding="utf-8").read()


def test_final_table_compact():
  text = rep.final_table(fake_report())
  lines = text.splitlines()
  assert len(lines) <= 12 and max(map(len, lines)) <= 72
  assert "MET" in text and "10.30x" in text and "HiReLC" in text
  assert "MISSED" in rep.final_table(dict(fake_report(), met_target=False))


def test_pareto_front_and_counts():
  front = rep.pareto_front([(2.0, 90.0), (4.0, 85.0), (3.0, 80.0), (8.0, 70.0), (8.0, 60.0)])
  assert front == [(2.0, 90.0), (4.0, 85.0), (8.0, 70.0)]
  counts = rep.strategy_counts(fake_report())
  assert counts["strategy"] == {"quantized only": 2, "pruned only": 1, "both": 4, "neither": 1}
  assert counts["format"] == {"INT": 4, "FLOAT": 2}
  assert plots.cell_code(fake_report()["plan"][0][2]) == "F-lg"
  assert plots.cell_code(fake_report()["plan"][0][3]) == "fp32"


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
  out = tmp_path_factory.mktemp("figs")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    return plots.make_all(fake_report(), out)


def test_make_all_writes_six_pngs(figures):
  assert len(figures) == 6 and len({str(p) for p in figures}) == 6
  for path in figures:
    data = open(path, "rb").read()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_make_all_skips_absent_data(tmp_path):
  report = copy.deepcopy(fake_report())
  report["cycles"], report["evaluated"] = [], []
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    paths = plots.make_all(report, tmp_path)
  names = sorted(p.rsplit("/", 1)[-1] for p in paths)
  assert names == ["plan_heatmap.png", "strategies.png", "surrogate.png"]
  assert sorted(f.name for f in tmp_path.iterdir()) == names
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert plots.make_all({"model": "cnn"}, tmp_path / "empty") == []
