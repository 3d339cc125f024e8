"""Renders a run's report dict: report.md, report.json and the CLI's closing table.

Every function takes the plain, JSON-ready `report` dict the experiment fills
(see `write_report`) and never mutates it. Optional keys may be missing or
None: they render as "n/a" instead of raising.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Mapping, Optional, Sequence

NA = "n/a"
MIB_BITS = 8 * 2**20
FP32_BITS = 32
KEEP_EPS = 1e-6
STRATEGIES = ("quantized only", "pruned only", "both", "neither")
FORMAT_GROUPS = ("INT", "FLOAT")
GRANULARITIES = ("uniform", "log", "per_channel", "learned", "asymmetric")  # compression.codes order
TIME_KEYS = (("hla_s", "HLA s"), ("lla_s", "LLA s"), ("finetune_s", "Fine-tune s"),
             ("eval_s", "Eval s"), ("surrogate_s", "Surrogate s"))


# ----------------------------------------------------------------------------- helpers


def num(x: Any) -> Optional[float]:
  """`x` as a float, or None when missing, not a number, or not finite."""
  if x is None or isinstance(x, (bool, str)):
    return None
  try:
    v = float(x)
  except (TypeError, ValueError):
    return None
  return v if math.isfinite(v) else None


def fmt(x: Any, spec: str = ".2f", suffix: str = "") -> str:
  """Formats a number with `spec` and `suffix`, or "n/a" when it is missing."""
  v = num(x)
  return NA if v is None else f"{v:{spec}}{suffix}"


def _text(x: Any) -> str:
  return NA if x is None or x == "" else str(x)


def _mib(bits: Any) -> str:
  v = num(bits)
  return NA if v is None else f"{v / MIB_BITS:.3f} MiB"


def _bits(n_bytes: Any) -> Optional[float]:
  v = num(n_bytes)
  return None if v is None else 8 * v


def _bytes(n: Any) -> str:
  v = num(n)
  return NA if v is None else f"{v / 2**20:.3f} MiB ({int(v):,} B)"


def is_quantized(entry: Mapping) -> bool:
  """Whether a plan entry stores its weights below fp32."""
  b = num(entry.get("bits"))
  return b is not None and b < FP32_BITS


def is_pruned(entry: Mapping) -> bool:
  """Whether a plan entry drops output neurons (keep ratio below 1)."""
  k = num(entry.get("keep_ratio"))
  return k is not None and k < 1.0 - KEEP_EPS


def strategy(entry: Mapping) -> str:
  """One of `STRATEGIES` for a plan entry."""
  q, p = is_quantized(entry), is_pruned(entry)
  return STRATEGIES[0 if q and not p else 1 if p and not q else 2 if q else 3]


def format_group(entry: Mapping) -> str:
  """"INT" for the integer grid, "FLOAT" for either minifloat variant."""
  return "INT" if str(entry.get("format", "int")).lower() == "int" else "FLOAT"


def plan_entries(report: Mapping):
  """Yields (block index, entry) over the plan, skipping malformed entries."""
  for b, block in enumerate(report.get("plan") or []):
    for entry in block or []:
      if isinstance(entry, Mapping):
        yield b, entry


def strategy_counts(report: Mapping) -> dict[str, dict[str, int]]:
  """Counts of the final plan's kernels by strategy, number format and granularity.

  Formats and granularities count quantized kernels only (an fp32 kernel has neither).

  Returns:
    {"strategy": {...STRATEGIES}, "format": {"INT", "FLOAT"}, "granularity": {name: n}}.
  """
  out = {"strategy": dict.fromkeys(STRATEGIES, 0), "format": dict.fromkeys(FORMAT_GROUPS, 0),
         "granularity": {}}
  for _, e in plan_entries(report):
    out["strategy"][strategy(e)] += 1
    if is_quantized(e):
      out["format"][format_group(e)] += 1
      g = _text(e.get("granularity"))
      out["granularity"][g] = out["granularity"].get(g, 0) + 1
  order = {g: i for i, g in enumerate(GRANULARITIES)}
  out["granularity"] = dict(sorted(out["granularity"].items(), key=lambda kv: order.get(kv[0], 99)))
  return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
  """The (compression, accuracy) points no other point beats at >= compression.

  Returns:
    The front sorted by increasing compression (so with decreasing accuracy).
  """
  best, front = -math.inf, []
  for c, a in sorted(points, key=lambda p: (-p[0], -p[1])):
    if a > best:
      best = a
      front.append((c, a))
  return front[::-1]


def evaluated_points(report: Mapping) -> list[dict]:
  """The evaluated plans with a finite compression ratio and accuracy."""
  pts = []
  for e in report.get("evaluated") or []:
    c, a = num(e.get("compression_ratio")), num(e.get("accuracy"))
    if c is not None and a is not None and c > 0:
      pts.append({**e, "compression_ratio": c, "accuracy": a})
  return pts


def met_target(report: Mapping) -> Optional[bool]:
  """`met_target`, else drop <= target when both are known, else None."""
  met = report.get("met_target")
  if isinstance(met, bool):
    return met
  drop, target = num(report.get("accuracy_drop")), num(report.get("target_accuracy_drop"))
  return None if drop is None or target is None else drop <= target


def val_drop(report: Mapping) -> Optional[float]:
  """Baseline minus final validation accuracy, or None when either is missing."""
  b, f = num(report.get("baseline_val_accuracy")), num(report.get("final_val_accuracy"))
  return None if b is None or f is None else b - f


def _se(report: Mapping) -> str:
  """' ± SE (drop + M SE must be within)' for the held-out drop, '' when not recorded."""
  se, margin = num(report.get("final_val_se")), num(report.get("margin_se"))
  return "" if se is None else f" ± {se:.2f}" + (f" (drop + {margin:g} SE must be within)" if margin else "")


def _verdict(report: Mapping) -> str:
  met = met_target(report)
  return NA if met is None else ("✓ met" if met else "✗ missed")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
  return lines


# ----------------------------------------------------------------------------- markdown


def _export_parts(export: Mapping) -> str:
  """The file's parts, ' = payload P B + header H B + .npz members M B', or '' if not recorded."""
  sizes = [num(export.get(k)) for k in ("file_bytes", "payload_bytes", "header_bytes")]
  if any(v is None for v in sizes):
    return ""
  file_bytes, payload, header = (int(v) for v in sizes)
  return (f" = payload {payload:,} B + header {header:,} B"
          f" + .npz members {file_bytes - payload - header:,} B")


def _devices(r: Mapping) -> str:
  """'device cpu', or with a mesh 'cpu x4 (mesh data=4, 1 process)'."""
  p = r.get("placement")
  if not isinstance(p, Mapping) or not p.get("devices"):
    return f"device {_text(r.get('device'))}"
  mesh = ", ".join(f"{k}={v}" for k, v in dict(p.get("mesh") or {}).items())
  procs = p.get("processes", 1)
  return (f"{_text(p.get('device_kind'))} x{len(p['devices'])} (mesh {mesh}, "
          f"{procs} process{'es' if procs != 1 else ''})")


def _headline(r: Mapping) -> list[str]:
  export = r.get("export") or {}
  file_bytes, storage_bytes = export.get("file_bytes"), export.get("storage_bytes")
  parts = _export_parts(export)
  rows = [
      ("Test accuracy (baseline → final)",
       f"{fmt(r.get('baseline_accuracy'), '.2f', ' %')} → {fmt(r.get('final_accuracy'), '.2f', ' %')}"),
      ("Validation accuracy, held-out half (baseline → final)",
       f"{fmt(r.get('baseline_val_accuracy'), '.2f', ' %')} → "
       f"{fmt(r.get('final_val_accuracy'), '.2f', ' %')}"),
      ("Accuracy drop (test; validation) vs target",
       f"{fmt(r.get('accuracy_drop'), '.2f', ' pt')}; {fmt(val_drop(r), '.2f', ' pt')}{_se(r)} vs ≤ "
       f"{fmt(r.get('target_accuracy_drop'), '.2f', ' pt')}: **{_verdict(r)}**"),
      ("Best cycle", _text(r.get("best_cycle"))),
      ("Compression ratio (whole model: fp32 bits / stored bits, incl. scales, masks, "
       "uncompressed layers)", fmt(r.get("compression_ratio"), ".2f", "×")),
      ("Original HiReLC's metric (1 / mean of bits/32 × keep; ignores sizes and metadata, "
       "paper comparison only)", fmt(r.get("paper_compression_ratio"), ".2f", "×")),
      ("Storage (computed) vs fp32", f"{_mib(r.get('storage_bits'))} vs {_mib(r.get('fp32_bits'))}"),
      ("Export file on disk vs counted storage (the payload is the counted sections, byte-padded)",
       f"{_bytes(file_bytes)}{parts} vs {_bytes(storage_bytes)}"),
      ("Counted bytes of weights made dead by pruning upstream (`hirelc_jax.slim.load_slim` "
       "drops them)", _bytes(export.get("dead_rows_bytes"))),
      ("Export path", f"`{(r.get('export') or {}).get('path')}`" if (r.get("export") or {}).get("path")
       else NA),
  ]
  return ["## Headline", ""] + _table(("Metric", "Value"), rows)


def _plan_section(r: Mapping) -> list[str]:
  sens = r.get("sensitivity") or []
  rows = []
  for b, e in plan_entries(r):
    bits = num(e.get("bits"))
    fmt_name = e.get("format_name") or (e.get("format") if is_quantized(e) else "fp32")
    rows.append((b, _text(e.get("name")), NA if bits is None else int(bits), _text(fmt_name),
                 _text(e.get("granularity")) if is_quantized(e) else "-",
                 fmt(e.get("keep_ratio"), ".3f"), strategy(e),
                 fmt(sens[b] if b < len(sens) else None, ".2f")))
  if not rows:
    return ["## Compression plan", "", NA]
  header = ("Block", "Kernel", "Bits", "Format", "Granularity", "Keep", "Strategy",
            "Block sensitivity")
  return ["## Compression plan", "", "One row per (block, kernel).", ""] + _table(header, rows)


def _cycles_section(r: Mapping) -> list[str]:
  cycles = r.get("cycles") or []
  if not cycles:
    return ["## Cycles", "", NA]
  header = ("Cycle", "Goal", "Floor shift", "Screened", "Val acc %", "Pre-FT acc %", "Surrogate pred. %",
            "Val drop pt", "Compression", "HiReLC metric") + tuple(t for _, t in TIME_KEYS)
  rows = []
  for c in cycles:
    times = c.get("times") or {}
    best = c.get("cycle") is not None and c.get("cycle") == r.get("best_cycle")
    drop = c.get("accuracy_drop", c.get("accuracy_drop_val"))
    screened = c.get("screened") or {}
    rows.append((_text(c.get("cycle")) + (" (best)" if best else ""),
                 fmt(c.get("goal_compression"), ".1f", "×"), _text(c.get("floor_shift")),
                 _text(len(screened.get("compression_ratio", [])) or None), fmt(c.get("val_accuracy")),
                 fmt(c.get("pre_finetune_accuracy")), fmt(c.get("predicted_accuracy")), fmt(drop),
                 fmt(c.get("compression_ratio"), ".2f", "×"),
                 fmt(c.get("paper_compression_ratio"), ".2f", "×"))
                + tuple(fmt(times.get(k), ".1f") for k, _ in TIME_KEYS))
  lines = ["## Cycles", ""] + _table(header, rows)
  keys = []
  for c in cycles:
    keys += [k for k in (c.get("plan_summary") or {}) if k not in keys]
  if keys:
    rows = [(_text(c.get("cycle")),) + tuple(
        fmt((c.get("plan_summary") or {}).get(k), ".2f" if k.startswith("mean") else ".0f")
        for k in keys) for c in cycles]
    lines += ["", "Plan summary per cycle:", ""] + _table(("Cycle",) + tuple(keys), rows)
  return lines


def _strategy_section(r: Mapping) -> list[str]:
  counts = strategy_counts(r)
  total = sum(counts["strategy"].values())
  if not total:
    return ["## Strategy distribution (final plan)", "", NA]
  quant = sum(counts["format"].values())
  rows = [("Strategy", k, n, f"{100 * n / total:.0f} %") for k, n in counts["strategy"].items()]
  for group in ("format", "granularity"):
    label = "Number format" if group == "format" else "Granularity"
    rows += [(label, k, n, f"{100 * n / quant:.0f} %" if quant else NA)
             for k, n in counts[group].items()]
  return (["## Strategy distribution (final plan)", "",
           f"{total} kernels; formats and granularities count the {quant} quantized ones.", ""]
          + _table(("Group", "Kind", "Kernels", "Share"), rows))


def _evaluated_section(r: Mapping) -> list[str]:
  pts = evaluated_points(r)
  if not pts:
    return ["## Evaluated plans", "", NA]
  front = set(pareto_front([(p["compression_ratio"], p["accuracy"]) for p in pts]))
  rows = [(_text(p.get("kind")), p.get("label") or "-", _text(p.get("stage")),
           fmt(p["compression_ratio"], ".2f", "×"), fmt(p["accuracy"]),
           "yes" if (p["compression_ratio"], p["accuracy"]) in front else "")
          for p in sorted(pts, key=lambda p: p["compression_ratio"])]
  return ["## Evaluated plans", ""] + _table(
      ("Kind", "Label", "Stage", "Compression", "Accuracy %", "Pareto"), rows)


def _time_section(r: Mapping) -> list[str]:
  phases = r.get("phase_times_s") or {}
  wall = num(r.get("wall_time_s"))
  rows = [(k, fmt(v, ".1f"), fmt(100 * num(v) / wall if wall and num(v) is not None else None,
                                 ".1f", " %")) for k, v in phases.items()]
  rows.append(("**total (wall)**", fmt(wall, ".1f"), "100.0 %" if wall else NA))
  return ["## Time per phase", ""] + _table(("Phase", "Seconds", "Share"), rows)


def surrogate_pairs(report: Mapping) -> list[tuple[float, float]]:
  """(actual, predicted) accuracy pairs: the surrogate's list, else the cycles'."""
  preds = (report.get("surrogate") or {}).get("predictions")
  if preds is None:
    preds = [{"actual": c.get("pre_finetune_accuracy"), "predicted": c.get("predicted_accuracy")}
             for c in report.get("cycles") or []]
  pairs = [(num(p.get("actual")), num(p.get("predicted"))) for p in preds or []]
  return [(a, p) for a, p in pairs if a is not None and p is not None]


def _surrogate_section(r: Mapping) -> list[str]:
  s = r.get("surrogate") or {}
  pairs = surrogate_pairs(r)
  cycle_mae = sum(abs(a - p) for a, p in pairs) / len(pairs) if pairs else None
  rows = [("Training samples", _text(s.get("samples"))),
          ("Hold-out MAE", fmt(s.get("holdout_mae"), ".2f", " pt")),
          (f"MAE on the cycles' plans ({len(pairs)} predictions vs pre-fine-tune accuracy)",
           fmt(cycle_mae, ".2f", " pt"))]
  return ["## Surrogate", ""] + _table(("Quantity", "Value"), rows)


def render_markdown(report: Mapping, figures: Sequence[str] = ()) -> str:
  """Renders report.md.

  Args:
    report: the run's report dict; optional keys may be missing.
    figures: PNG paths to embed at the end (by file name, so they sit beside report.md).

  Returns:
    The markdown text, ending with a newline.
  """
  r = report
  lines = ["# HiReLC-JAX compression report", "",
           f"`{_text(r.get('model'))}` on `{_text(r.get('dataset'))}` · seed {_text(r.get('seed'))} · "
           f"{_devices(r)} · schedule {_text(r.get('schedule'))}", ""]
  for section in (_headline, _plan_section, _cycles_section, _strategy_section, _evaluated_section,
                  _time_section, _surrogate_section):
    lines += section(r) + [""]
  if figures:
    lines += ["## Figures", ""]
    lines += [f"![{pathlib.Path(f).stem}]({pathlib.Path(f).name})" for f in figures] + [""]
  return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI table


def final_table(report: Mapping) -> str:
  """A compact fixed-width summary (at most 12 lines, 72 columns) for the end of a run."""
  r = report
  export = r.get("export") or {}
  met = met_target(r)
  verdict = NA if met is None else ("MET" if met else "MISSED")
  cycles = r.get("cycles") or []
  metric = r.get("metric", "accuracy")
  unit = " %" if metric == "accuracy" else ""
  rows = [
      (f"Test {metric}", f"{fmt(r.get('baseline_accuracy'))}{unit} -> {fmt(r.get('final_accuracy'))}{unit}"),
      (f"Val {metric}",
       f"{fmt(r.get('baseline_val_accuracy'))}{unit} -> {fmt(r.get('final_val_accuracy'))}{unit}"),
      ("Drop / target", f"{fmt(r.get('accuracy_drop'))} pt / <= "
                        f"{fmt(r.get('target_accuracy_drop'))} pt  {verdict}"),
      ("Compression", f"{fmt(r.get('compression_ratio'), '.2f', 'x')} whole model  "
                      f"(orig. HiReLC metric {fmt(r.get('paper_compression_ratio'), '.2f', 'x')})"),
      ("Storage", f"{_mib(r.get('storage_bits'))} vs {_mib(r.get('fp32_bits'))} fp32"),
      ("Export file", f"{_mib(_bits(export.get('file_bytes')))} on disk, "
                      f"{_mib(_bits(export.get('storage_bytes')))} counted"),
      ("Cycles / wall", f"{len(cycles)} cycles, {_text(r.get('finetunes'))} fine-tunes "
                        f"(best: {_text(r.get('best_cycle'))}), "
                        f"{fmt(r.get('wall_time_s'), '.0f', ' s')} wall"),
  ]
  title = (f"HiReLC-JAX  {_text(r.get('model'))} / {_text(r.get('dataset'))}  "
           f"seed {_text(r.get('seed'))}  {_text(r.get('device'))}")
  rule = "-" * 72
  lines = [title[:72], rule] + [f"{k:<15}{v}"[:72] for k, v in rows] + [rule]
  return "\n".join(lines)


# ----------------------------------------------------------------------------- files


def _json_default(o: Any) -> Any:
  if hasattr(o, "tolist"):  # numpy / jax arrays and scalars
    return o.tolist()
  if isinstance(o, pathlib.PurePath):
    return str(o)
  raise TypeError(f"report value of type {type(o).__name__} is not JSON serializable")


def to_json(report: Mapping) -> str:
  """report.json's text: indent 2; Python floats round-trip exactly (repr)."""
  return json.dumps(report, indent=2, default=_json_default, ensure_ascii=False) + "\n"


def write_report(report: Mapping, out_dir, figures: Sequence[str] = ()) -> tuple[str, str]:
  """Writes report.json and report.md into `out_dir` (created if needed).

  Args:
    report: the run's report dict.
    out_dir: the output folder.
    figures: PNG paths to embed in report.md (e.g. from `plots.make_all`).

  Returns:
    (path of report.json, path of report.md).
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  json_path, md_path = out / "report.json", out / "report.md"
  json_path.write_text(to_json(report), encoding="utf-8")
  md_path.write_text(render_markdown(report, figures), encoding="utf-8")
  return str(json_path), str(md_path)
