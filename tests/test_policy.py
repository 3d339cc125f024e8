"""The rules between cycles: recovery estimate, next goal, choice of cycle, resolution."""

import numpy as np
import pytest

from hirelc_jax import config as C
from hirelc_jax import policy


def test_recovery_is_the_prior_before_any_cycle_and_pools_cycles_as_a_ratio_of_sums():
  assert policy.recovery_estimate([], []) == pytest.approx(policy.RECOVERY_PRIOR)
  assert policy.recovery_estimate([4.0, 6.0], [1.0, 2.0]) == pytest.approx(3.3 / 11)
  assert policy.recovery_estimate([2.2, 2.25], [0.53, -0.1]) == pytest.approx(0.73 / 5.45)


def test_a_full_recovery_is_held_at_the_floor_so_the_limit_stays_bounded():
  # The recorded default run's collapse: post drops of 0 after pre drops of 5 and 8.
  assert policy.recovery_estimate([5.0, 8.0], [-0.2, 0.0]) == policy.RECOVERY_FLOOR
  assert 1.0 / policy.RECOVERY_FLOOR == pytest.approx(10.0)   # a 1-point target screens within 10 points
  assert policy.recovery_estimate([0.1], [5.0]) == 1.0


def test_cycle_goal_brackets_the_answer_between_a_met_and_a_missed_ratio():
  config = C.override(C.Config(), {"goal.target_compression": "10", "goal.target_accuracy_drop": "1"})
  goal = lambda r, d: policy.cycle_goal(config, r, d).goal.target_compression
  assert goal([], []) == 10.0
  assert goal([8.0], [1.5]) == 10.0                      # nothing met: the user's goal
  assert goal([12.0], [0.5]) == pytest.approx(12.0 * 1.25)
  assert goal([12.0, 16.0], [0.5, 1.5]) == pytest.approx(np.sqrt(12.0 * 16.0))
  assert goal([12.0, 11.0, 20.0], [0.5, 1.5, 2.0]) == pytest.approx(np.sqrt(12.0 * 20.0))  # 11x missed below
  fixed = C.override(config, {"search.escalate": "1"})
  assert policy.cycle_goal(fixed, [12.0], [0.5]).goal.target_compression == 10.0
  start = lambda r, d, s: policy.cycle_goal(config, r, d, start=s).goal.target_compression
  assert start([], [], 24.0) == 24.0                         # the table's prior before any cycle
  assert start([], [], 6.0) == 10.0                          # never below the user's goal
  assert start([22.0], [1.5], 24.0) == pytest.approx(np.sqrt(10.0 * 22.0))   # missed: halfway down
  assert start([22.0, 15.0], [1.5, 0.5], 24.0) == pytest.approx(np.sqrt(15.0 * 22.0))  # met: as before
  assert config.goal.target_compression == 10.0          # no mutation


def test_select_best_takes_the_most_compressed_within_target_else_the_most_accurate():
  ratios, drops = [10.0, 14.0, 20.0, 14.0], [0.4, 0.9, 1.2, 0.8]
  assert policy.select_best(ratios, drops, 1.0) == 3     # 14x twice: the lower drop
  assert policy.select_best(ratios, drops, 0.1) == 0     # none within: the most accurate
  assert policy.select_best([5.0, 9.0], [0.7, 0.7], 0.1) == 1   # ties: the more compressed


def test_a_margin_moves_a_drop_near_the_target_out_of_it_in_both_rules():
  ratios, drops, se = [10.0, 14.0, 20.0], [0.2, 0.6, 0.9], [0.1, 0.2, 0.3]
  assert policy.select_best(ratios, drops, 1.0) == 2
  assert policy.select_best(ratios, drops, 1.0, np.asarray(se)) == 1     # 0.9 + 0.3 > 1.0
  assert policy.select_best(ratios, drops, 1.0, 0.5) == 0                 # a scalar margin
  config = C.override(C.Config(), {"goal.target_compression": "5", "goal.target_accuracy_drop": "1"})
  goal = lambda m: policy.cycle_goal(config, ratios, drops, m).goal.target_compression
  assert goal(0.0) == pytest.approx(20.0 * 1.25)                          # all met: escalate above 20x
  assert goal(np.asarray(se)) == pytest.approx(np.sqrt(14.0 * 20.0))      # 20x missed: bracket it
  with pytest.raises(ValueError, match="search.margin_se=-1"):
    C.override(C.Config(), {"search.margin_se": "-1"}).validate()


def test_resolution_note_names_the_example_count_when_one_example_outweighs_the_target():
  assert policy.resolution_note(1.0, 3000) is None
  note = policy.resolution_note(1.0, 72)
  assert "72 examples" in note and "1.39 points" in note and "data.val_fraction" in note
