"""The search's state between cycles, as frozen types.

A cycle maps one `SearchState` to the next (propose -> screen -> fine-tune ->
update); nothing in it is mutated. `Cycle` holds what the rules in
`policy.py` read (ratio, drops, the plan) as typed fields; `details` holds
what only the report shows (screened candidates, budgets, rewards, times).
Both round-trip through JSON for the checkpoint's meta.json and report.json.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from hirelc_jax.compression.plan import CompressionPlan

PLAN_FIELDS = ("bits", "keep", "fmt", "gran")


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """One plan evaluated for real: pre-fine-tune on the fit half's first eval_samples, or fine-tuned
  on the held-out half. `slot_errors` is the error table's E of each slot (`kmap.entries`;
  None without a table or for fine-tuned plans)."""
  kind: str                 # warmup | uniform | screened | cycle
  label: str
  compression_ratio: float
  accuracy: float
  stage: str                # pre_finetune | finetuned
  slot_errors: tuple[float, ...] | None = None


def slot_tuple(errors) -> tuple[float, ...] | None:
  """A plan's per-slot errors `[S]` as `Evaluation.slot_errors` (None when any is NaN: no table)."""
  errors = np.asarray(errors, np.float64)
  return None if np.isnan(errors).any() else tuple(float(e) for e in errors)


@dataclasses.dataclass(frozen=True)
class Cycle:
  """One completed cycle.

  Attributes:
    cycle: 1-based index.
    goal_compression: the honest ratio this cycle aimed at.
    plan: the fine-tuned plan, numpy `[B, K]` fields.
    compression_ratio, paper_compression_ratio, storage_bits: its size.
    pre_finetune_accuracy: points, on the fit half's first eval_samples.
    fit_drop: points lost after the fine-tune on the fit half (its early-stopping score); steers.
    fit_se: its standard error (`evaluation.paired_drop`).
    val_accuracy: points after the fine-tune on the held-out half; only chooses the cycle.
    val_drop: the baseline's held-out accuracy less `val_accuracy`.
    val_se: its standard error.
    recovery: `policy.recovery_estimate` after this cycle.
    details: report-only numbers (JSON-ready).
  """
  cycle: int
  goal_compression: float
  plan: CompressionPlan
  compression_ratio: float
  paper_compression_ratio: float
  storage_bits: float
  pre_finetune_accuracy: float
  fit_drop: float
  fit_se: float
  val_accuracy: float
  val_drop: float
  val_se: float
  recovery: float
  details: Mapping[str, Any]

  def to_record(self) -> dict:
    """The report's and the checkpoint's JSON form (one flat dict, plan as `plan_arrays`)."""
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
              if f.name not in ("plan", "details", "val_drop")}
    return {**fields, "accuracy_drop_val": self.val_drop, **self.details,
            "plan_arrays": {f: np.asarray(getattr(self.plan, f)).tolist() for f in PLAN_FIELDS}}

  @classmethod
  def from_record(cls, record: Mapping) -> "Cycle":
    typed = {f.name for f in dataclasses.fields(cls)} - {"plan", "details", "val_drop"}
    plan = CompressionPlan(**{f: np.asarray(v, np.float32 if f == "keep" else np.int32)
                              for f, v in record["plan_arrays"].items()})   # the dtypes a cycle wrote
    details = {k: v for k, v in record.items() if k not in typed | {"plan_arrays", "accuracy_drop_val"}}
    return cls(plan=plan, val_drop=record["accuracy_drop_val"], details=details,
               **{k: record[k] for k in typed})


@dataclasses.dataclass(frozen=True)
class SearchState:
  """Everything the cycles carry; saved after every completed cycle.

  hla / lla: the ensembles' runner states (None until first trained, or without agents);
  surrogate: the surrogate's state; plan: the last fine-tuned plan;
  cycles: the completed cycles; evaluated: every plan evaluated for real;
  recovery: the current post- over pre-fine-tune drop estimate.
  """
  hla: Any
  lla: Any
  surrogate: Any
  plan: CompressionPlan
  cycles: tuple[Cycle, ...]
  evaluated: tuple[Evaluation, ...]
  recovery: float

  def ratios(self) -> list[float]:
    return [c.compression_ratio for c in self.cycles]

  def meta(self) -> dict:
    """The JSON part of a checkpoint."""
    return {"cycles": [c.to_record() for c in self.cycles],
            "evaluated": [dataclasses.asdict(e) for e in self.evaluated], "recovery": self.recovery}

  @classmethod
  def from_meta(cls, meta: Mapping, hla, lla, surrogate, plan) -> "SearchState":
    return cls(hla, lla, surrogate, plan, tuple(Cycle.from_record(r) for r in meta["cycles"]),
               tuple(evaluation_from_record(e) for e in meta["evaluated"]), meta["recovery"])


def evaluation_from_record(record: Mapping) -> Evaluation:
  """An `Evaluation` from its JSON form; a record of an older run, with the whole-model
  `error` only, loads without slot errors (the calibration then leaves it out)."""
  fields = {k: v for k, v in record.items() if k != "error"}
  slots = fields.pop("slot_errors", None)
  return Evaluation(**fields, slot_errors=None if slots is None else slot_tuple(slots))
