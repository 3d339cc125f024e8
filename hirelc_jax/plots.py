"""Figures of a run's report dict, one PNG each (matplotlib, Agg; dpi 120).

Every `plot_*` function takes the plain report dict (see `hirelc_jax.report`)
and a target path, writes one PNG and returns its path, or returns None and
writes nothing when the report lacks the data the figure needs. Figures are
built with the object API (`matplotlib.figure.Figure` on an Agg canvas), so
neither pyplot's global state nor its backend is touched and no window opens.
"""

from __future__ import annotations

import pathlib
import warnings
from typing import Mapping, Optional

import matplotlib
import numpy as np
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hirelc_jax import report as rep

DPI = 120
MAX_BAR_CYCLES = 4
KIND_COLORS = {"warmup": "tab:gray", "screened": "tab:cyan", "cycle": "tab:blue", "uniform": "tab:orange"}
FORMAT_LETTERS = {"int": "I", "float": "F", "float_exp": "E"}
GRAN_CODES = {"uniform": "un", "log": "lg", "per_channel": "pc", "learned": "ls", "asymmetric": "as"}
CODE_LEGEND = ("cell code = format-granularity.  I int, F float (mantissa-heavy), E float "
               "(exponent-heavy);  un uniform, lg log, pc per-channel, ls learned step, "
               "as asymmetric;  fp32 = not quantized")


def _save(fig: Figure, path) -> str:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  FigureCanvasAgg(fig)  # render with Agg, whatever pyplot's global backend is
  try:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
  except Exception:
    path.unlink(missing_ok=True)
    raise
  return str(path)


def cell_code(entry: Mapping) -> str:
  """Short format/granularity code of a plan entry, e.g. "I-pc", "F-lg", or "fp32"."""
  if not rep.is_quantized(entry):
    return "fp32"
  f = FORMAT_LETTERS.get(str(entry.get("format")), "?")
  g = GRAN_CODES.get(str(entry.get("granularity")), "?")
  return f"{f}-{g}"


# ----------------------------------------------------------------------------- pareto


def plot_pareto(report: Mapping, path) -> Optional[str]:
  """Accuracy vs compression (log x) of every evaluated plan, with the Pareto front.

  Colour is the kind (warmup / screened / cycle / uniform); hollow markers are accuracies
  before fine-tuning, filled ones after. Uniform baselines carry their label,
  the final plan is a star, and the front (best accuracy at >= compression) is
  a step line. Horizontal lines: baseline accuracy and baseline - target drop.
  """
  pts = rep.evaluated_points(report)
  if not pts:
    return None
  fig = Figure(figsize=(8.5, 5.5))
  ax = fig.add_subplot()
  kinds = list(dict.fromkeys([*KIND_COLORS, *(str(p.get("kind")) for p in pts)]))
  for kind in kinds:
    color = KIND_COLORS.get(kind, "tab:purple")
    marker = "s" if kind == "uniform" else "o"
    for filled in (False, True):
      sel = [p for p in pts if str(p.get("kind")) == kind
             and (p.get("stage") == "pre_finetune") != filled]
      if not sel:
        continue
      ax.scatter([p["compression_ratio"] for p in sel], [p["accuracy"] for p in sel], s=46,
                 marker=marker, edgecolors=color, facecolors=color if filled else "none",
                 linewidths=1.5, zorder=3,
                 label=f"{kind} ({'fine-tuned' if filled else 'before fine-tune'})")
  for i, p in enumerate(sorted((p for p in pts if p.get("kind") == "uniform"),
                               key=lambda p: p["compression_ratio"])):
    if p.get("label"):
      ax.annotate(str(p["label"]), (p["compression_ratio"], p["accuracy"]),
                  xytext=(6, 8 if i % 2 == 0 else -14), textcoords="offset points", fontsize=8,
                  color="tab:orange", fontweight="bold",
                  bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})
  front = rep.pareto_front([(p["compression_ratio"], p["accuracy"]) for p in pts])
  ax.step([c for c, _ in front], [a for _, a in front], where="pre", color="black", lw=1.2,
          alpha=0.7, zorder=2, label="Pareto front (evaluated)")
  # Evaluated plans are scored on the validation split: compare with val numbers when present.
  split = "val" if rep.num(report.get("baseline_val_accuracy")) is not None else "test"
  pre = "baseline_val_accuracy" if split == "val" else "baseline_accuracy"
  base = rep.num(report.get(pre))
  c_final = rep.num(report.get("compression_ratio"))
  a_final = rep.num(report.get("final_val_accuracy" if split == "val" else "final_accuracy"))
  if c_final and a_final is not None:
    ax.scatter([c_final], [a_final], marker="*", s=260, color="crimson", edgecolors="black",
               zorder=4, label=f"final plan ({c_final:.1f}x, {a_final:.2f} % {split})")
  drop = rep.num(report.get("target_accuracy_drop"))
  if base is not None:
    ax.axhline(base, color="green", ls="--", lw=1, label=f"baseline ({split}) {base:.2f} %")
    if drop is not None:
      ax.axhline(base - drop, color="red", ls=":", lw=1.2, label=f"target {base - drop:.2f} %")
  ax.set_xscale("log")
  ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  ax.set_xlabel("compression ratio (whole model, log scale)")
  ax.set_ylabel("accuracy (%)")
  ax.set_title(f"Evaluated plans: {report.get('model', '?')} on {report.get('dataset', '?')}")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
  return _save(fig, path)


# ----------------------------------------------------------------------------- plan heatmap


def _plan_grid(report: Mapping):
  names = list(report.get("kernel_names") or [])
  for _, e in rep.plan_entries(report):
    if e.get("name") is not None and e["name"] not in names:
      names.append(e["name"])
  nb = len(report.get("plan") or [])
  bits = np.full((nb, len(names)), np.nan)
  keep = np.full((nb, len(names)), np.nan)
  code = np.full((nb, len(names)), "", dtype=object)
  for b, e in rep.plan_entries(report):
    if e.get("name") in names:
      k = names.index(e["name"])
      bits[b, k] = rep.num(e.get("bits")) if rep.num(e.get("bits")) is not None else np.nan
      keep[b, k] = rep.num(e.get("keep_ratio")) if rep.num(e.get("keep_ratio")) is not None else np.nan
      code[b, k] = cell_code(e)
  return names, bits, keep, code


def _text_color(cmap, norm_value: float) -> str:
  r, g, b, _ = cmap(norm_value)
  return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def plot_plan_heatmap(report: Mapping, path) -> Optional[str]:
  """Blocks x kernels heatmaps of bits (with format/granularity codes) and keep ratio."""
  names, bits, keep, code = _plan_grid(report)
  if bits.size == 0 or np.all(np.isnan(bits) & np.isnan(keep)):
    return None
  nb, nk = bits.shape
  fig = Figure(figsize=(max(9.0, 2 * (1.15 * nk + 1.6)), max(3.2, 0.5 * nb + 1.8)),
               layout="constrained")
  ax_bits, ax_keep = fig.subplots(1, 2)
  bits_cmap = matplotlib.colormaps["viridis"].with_extremes(over="lightgray", bad="white")
  keep_cmap = matplotlib.colormaps["YlGn"].with_extremes(bad="white")
  im_b = ax_bits.imshow(np.ma.masked_invalid(bits), cmap=bits_cmap, vmin=2, vmax=8, aspect="auto")
  im_k = ax_keep.imshow(np.ma.masked_invalid(keep), cmap=keep_cmap, vmin=0.2, vmax=1.0, aspect="auto")
  for b in range(nb):
    for k in range(nk):
      if not np.isnan(bits[b, k]):
        fp32 = bits[b, k] > 8
        color = "black" if fp32 else _text_color(bits_cmap, (bits[b, k] - 2) / 6)
        label = "fp32" if fp32 else f"{int(bits[b, k])}b {code[b, k]}"
        ax_bits.text(k, b, label, ha="center", va="center", fontsize=8, color=color)
      if not np.isnan(keep[b, k]):
        ax_keep.text(k, b, f"{keep[b, k]:.2f}", ha="center", va="center", fontsize=8,
                     color=_text_color(keep_cmap, (keep[b, k] - 0.2) / 0.8))
  for ax, title in ((ax_bits, "weight bits (format-granularity)"), (ax_keep, "keep ratio")):
    ax.set_xticks(range(nk), names, rotation=30, ha="right", fontsize=9)
    ax.set_yticks(range(nb), [f"block {b}" for b in range(nb)], fontsize=9)
    ax.set_title(title)
  fig.colorbar(im_b, ax=ax_bits, extend="max", label="bits (gray: fp32)")
  fig.colorbar(im_k, ax=ax_keep, label="fraction of output neurons kept")
  fig.suptitle("Final compression plan")
  fig.text(0.5, -0.02, CODE_LEGEND, ha="center", va="top", fontsize=7.5, wrap=True)
  return _save(fig, path)


# ----------------------------------------------------------------------------- budgets


def _block_series(cycles, key, nb):
  out = []
  for c in cycles:
    vals = [rep.num(v) for v in (c.get(key) or [])][:nb]
    out.append([np.nan if v is None else v for v in vals] + [np.nan] * (nb - len(vals)))
  return np.array(out, dtype=float).reshape(len(cycles), nb)


def plot_budgets(report: Mapping, path) -> Optional[str]:
  """Per-block budgets of every cycle (target ratio, min bits, max prune) vs sensitivity."""
  cycles = [c for c in report.get("cycles") or [] if c.get("budget_target_ratio")]
  if not cycles:
    return None
  sens = [rep.num(s) for s in report.get("sensitivity") or []]
  nb = max([len(sens)] + [len(c.get("budget_target_ratio") or []) for c in cycles])
  panels = [(k, lab) for k, lab in (("budget_target_ratio", "target size ratio (of fp32)"),
                                    ("budget_min_bits", "min bits"),
                                    ("budget_max_prune", "max prune fraction"))
            if any(c.get(k) for c in cycles)]
  fig = Figure(figsize=(min(14.0, max(7.5, 0.6 * nb + 3)), 2.4 * len(panels) + 1.2),
               layout="constrained")
  axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True))
  x = np.arange(nb)
  bars = len(cycles) <= MAX_BAR_CYCLES  # beyond a few cycles, grouped bars get unreadable: lines
  width = 0.8 / len(cycles)
  colors = matplotlib.colormaps["Blues"](np.linspace(0.4, 0.95, len(cycles)))
  for ax, (key, label) in zip(axes, panels):
    vals = _block_series(cycles, key, nb)
    for i, c in enumerate(cycles):
      name = f"cycle {c.get('cycle', i + 1)}"
      if bars:
        ax.bar(x - 0.4 + width * (i + 0.5), vals[i], width, color=colors[i], label=name)
      else:
        ax.plot(x, vals[i], "o-", ms=3, lw=1.2, color=colors[i], label=name)
    ax.set_ylabel(label)
    ax.grid(True, axis="y", alpha=0.3)
  if any(s is not None for s in sens):
    twin = axes[0].twinx()
    twin.plot(x[:len(sens)], [np.nan if s is None else s for s in sens], "D--", color="crimson",
              lw=2, label="sensitivity")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("block sensitivity", color="crimson")
    h1, l1 = axes[0].get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
  else:
    h1, l1 = axes[0].get_legend_handles_labels()
    h2, l2 = [], []
  fig.legend(h1 + h2, l1 + l2, fontsize=8, loc="outside right upper")
  axes[-1].set_xticks(x, [str(b) for b in x])
  axes[-1].set_xlabel("block")
  fig.suptitle("High-level agent budgets per block and cycle")
  return _save(fig, path)


# ----------------------------------------------------------------------------- cycles


def plot_cycles(report: Mapping, path) -> Optional[str]:
  """Cycle progression: val / pre-fine-tune / predicted accuracy and compression (twin axis)."""
  cycles = report.get("cycles") or []
  if not cycles:
    return None
  xs = [c.get("cycle", i + 1) for i, c in enumerate(cycles)]
  fig = Figure(figsize=(8.5, 5))
  ax = fig.add_subplot()
  series = (("val_accuracy", "val accuracy (fine-tuned)", "o-", "tab:blue"),
            ("pre_finetune_accuracy", "accuracy before fine-tune", "s--", "tab:cyan"),
            ("predicted_accuracy", "surrogate prediction", "x:", "tab:purple"))
  for key, label, style, color in series:
    ys = [rep.num(c.get(key)) for c in cycles]
    if any(y is not None for y in ys):
      ax.plot(xs, [np.nan if y is None else y for y in ys], style, color=color, label=label)
  base = rep.num(report.get("baseline_val_accuracy"))
  which = "val"
  if base is None:
    base, which = rep.num(report.get("baseline_accuracy")), "test"
  drop = rep.num(report.get("target_accuracy_drop"))
  if base is not None:
    ax.axhline(base, color="green", ls="--", lw=1, label=f"baseline ({which}) {base:.2f} %")
    if drop is not None:
      ax.axhline(base - drop, color="red", ls=":", lw=1.2, label=f"target {base - drop:.2f} %")
  ax.set_xlabel("cycle")
  ax.set_ylabel("accuracy (%)")
  ax.set_xticks(xs)
  ax.grid(True, alpha=0.3)
  twin = ax.twinx()
  for key, label, style in (("compression_ratio", "compression (whole model)", "D-"),
                            ("paper_compression_ratio", "orig. HiReLC metric", "D:")):
    ys = [rep.num(c.get(key)) for c in cycles]
    if any(y is not None for y in ys):
      twin.plot(xs, [np.nan if y is None else y for y in ys], style, color="tab:orange",
                alpha=1.0 if key == "compression_ratio" else 0.6, label=label)
  twin.set_ylabel("compression ratio (x)", color="tab:orange")
  h1, l1 = ax.get_legend_handles_labels()
  h2, l2 = twin.get_legend_handles_labels()
  ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left", bbox_to_anchor=(1.12, 1.0))
  ax.set_title("Progress over cycles")
  return _save(fig, path)


# ----------------------------------------------------------------------------- surrogate


def plot_surrogate(report: Mapping, path) -> Optional[str]:
  """Surrogate predicted vs actual accuracy, with the y = x line and the MAE in the title."""
  pairs = rep.surrogate_pairs(report)
  if not pairs:
    return None
  actual, pred = np.array(pairs).T
  mae = float(np.mean(np.abs(actual - pred)))
  holdout = rep.num((report.get("surrogate") or {}).get("holdout_mae"))
  fig = Figure(figsize=(5.8, 5.6))
  ax = fig.add_subplot()
  lo, hi = float(min(actual.min(), pred.min())), float(max(actual.max(), pred.max()))
  pad = max(0.5, 0.08 * (hi - lo))
  ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="y = x")
  ax.scatter(actual, pred, s=50, color="tab:purple", edgecolors="black", zorder=3,
             label="cycle plans")
  preds = (report.get("surrogate") or {}).get("predictions") or []
  for p in preds:
    a, q = rep.num(p.get("actual")), rep.num(p.get("predicted"))
    if a is not None and q is not None and p.get("cycle") is not None:
      ax.annotate(f"c{p['cycle']}", (a, q), xytext=(5, -10), textcoords="offset points", fontsize=8)
  ax.set_xlim(lo - pad, hi + pad)
  ax.set_ylim(lo - pad, hi + pad)
  ax.set_aspect("equal")
  ax.set_xlabel("actual accuracy before fine-tune (%)")
  ax.set_ylabel("surrogate prediction (%)")
  title = f"Surrogate: MAE {mae:.2f} pt on {len(pairs)} plans"
  if holdout is not None:
    title += f"\nhold-out MAE {holdout:.2f} pt"
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8, loc="upper left")
  return _save(fig, path)


# ----------------------------------------------------------------------------- strategies


def plot_strategies(report: Mapping, path) -> Optional[str]:
  """Bars of the final plan's kernels by strategy, number format and granularity."""
  counts = rep.strategy_counts(report)
  if not sum(counts["strategy"].values()):
    return None
  fig = Figure(figsize=(11, 3.8), layout="constrained")
  axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [4, 2, max(len(counts["granularity"]), 1)]})
  groups = (("strategy", "strategy (all kernels)", "tab:blue"),
            ("format", "number format (quantized)", "tab:orange"),
            ("granularity", "granularity (quantized)", "tab:green"))
  for ax, (key, title, color) in zip(axes, groups):
    items = list(counts[key].items()) or [(rep.NA, 0)]
    labels = [k.replace("_", "-").replace(" only", "\nonly") for k, _ in items]
    bars = ax.bar(range(len(items)), [n for _, n in items], color=color, width=0.65)
    ax.bar_label(bars, fontsize=9)
    ax.set_xticks(range(len(items)), labels, fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, max([n for _, n in items] + [1]) * 1.18)
    ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.grid(True, axis="y", alpha=0.3)
  axes[0].set_ylabel("kernels")
  fig.suptitle("Final plan: strategy distribution")
  return _save(fig, path)


# ----------------------------------------------------------------------------- all


PLOTS = (("pareto.png", plot_pareto), ("plan_heatmap.png", plot_plan_heatmap),
         ("budgets.png", plot_budgets), ("cycles.png", plot_cycles),
         ("surrogate.png", plot_surrogate), ("strategies.png", plot_strategies))


def make_all(report: Mapping, out_dir) -> list[str]:
  """Writes every figure the report has data for into `out_dir`.

  A figure whose data is absent is skipped; one that fails on malformed data
  is skipped with a warning, so a finished run never loses its report to a plot.

  Returns:
    The paths written, in `PLOTS` order.
  """
  out = pathlib.Path(out_dir)
  paths = []
  for name, fn in PLOTS:
    try:
      p = fn(report, out / name)
    except Exception as e:  # noqa: BLE001 - a figure must not crash the run
      warnings.warn(f"skipped {name}: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
      p = None
    if p is not None:
      paths.append(p)
  return paths
