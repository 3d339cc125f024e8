"""The search state's JSON round trip (checkpoint meta.json and report.json)."""

import json

import numpy as np

from hirelc_jax.compression.plan import uniform_plan
from hirelc_jax.state import PLAN_FIELDS, Cycle, Evaluation, SearchState, evaluation_from_record


def test_cycles_and_evaluations_round_trip_through_json_with_their_dtypes():
  plan = uniform_plan(2, 3, bits=3, fmt="int", gran="per_channel")
  plan = plan.replace(keep=np.full((2, 3), 0.4857143, np.float32))
  cycle = Cycle(1, 10.0, plan, 12.0, 14.0, 1e5, 88.0, 0.5, 0.2, 89.0, 0.5, 0.25, 0.3, {"times": {"eval_s": 1.0}})
  state = SearchState(None, None, None, plan, (cycle,), (Evaluation("warmup", "", 5.0, 80.0, "pre_finetune", (0.1, 0.25)),),
                      0.3)
  back = SearchState.from_meta(json.loads(json.dumps(state.meta())), None, None, None, plan)
  got = back.cycles[0]
  for f in PLAN_FIELDS:
    assert np.asarray(getattr(got.plan, f)).dtype == np.asarray(getattr(plan, f)).dtype
    np.testing.assert_array_equal(getattr(got.plan, f), getattr(plan, f))
  assert got.val_drop == 0.5 and got.details == {"times": {"eval_s": 1.0}} and got.fit_drop == 0.5
  assert back.evaluated == state.evaluated and back.recovery == 0.3
  assert cycle.to_record()["accuracy_drop_val"] == 0.5   # the report's key for the held-out drop


def test_an_older_runs_evaluation_loads_without_slot_errors():
  record = {"kind": "warmup", "label": "", "compression_ratio": 5.0, "accuracy": 80.0, "stage": "pre_finetune",
            "error": 0.1}
  assert evaluation_from_record(record) == Evaluation("warmup", "", 5.0, 80.0, "pre_finetune", None)
