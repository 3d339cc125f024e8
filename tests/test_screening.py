"""Candidate screening: which plans get a real evaluation, which one a fine-tune."""

import numpy as np

from hirelc_jax import screening


def test_unique_rows_keeps_first_occurrences_in_order():
  keys = np.array([[1, 2], [3, 4], [1, 2], [5, 6], [3, 4]])
  np.testing.assert_array_equal(screening.unique_rows(keys), [0, 1, 3])


def test_evaluation_takes_the_vote_then_spreads_over_the_feasible_upper_half():
  ratios = np.array([8.0, 14.0, 13.0, 12.0, 11.0, 10.0, 9.0, 20.0, 7.0])
  predicted = np.array([1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 9.0, 0.5])
  # feasible by ratio: 1 (14x), 2, 3, 4, 5, 6, 8 (7x); upper half = positions 0..3, spread 0, 2, 3
  idx = screening.pick_for_evaluation(ratios, predicted, limit=3.0, count=4)
  np.testing.assert_array_equal(idx, [0, 1, 3, 4])
  assert 7 not in idx                                       # predicted beyond the limit


def test_evaluation_fills_with_the_lowest_predicted_drops_and_skips_duplicates():
  ratios = np.array([10.0, 12.0, 12.0, 9.0, 15.0])
  predicted = np.array([5.0, 4.0, 4.0, 6.0, 8.0])
  idx = screening.pick_for_evaluation(ratios, predicted, limit=1.0, count=3,
                                     distinct=np.array([0, 1, 3, 4]))
  np.testing.assert_array_equal(idx, [0, 1, 3])             # none feasible: lowest predicted (2 is a duplicate)
  assert len(screening.pick_for_evaluation(ratios, predicted, 1.0, count=1)) == 1


def test_finetune_takes_the_most_compressed_recoverable_else_the_most_accurate():
  assert screening.pick_for_finetune([8.0, 12.0, 11.0], [1.0, 4.0, 2.5], limit=3.0) == 2
  assert screening.pick_for_finetune([8.0, 12.0, 11.0], [5.0, 4.0, 6.0], limit=3.0) == 1


def test_front_keeps_the_undominated_candidates_by_ratio():
  ratios = np.array([5.0, 10.0, 8.0, 12.0, 10.0, 3.0])
  drops = np.array([1.0, 2.0, 3.0, 2.5, 1.5, 1.0])
  idx = screening.front(ratios, drops)
  # 5 (ratio 3) ties candidate 0's drop at lower compression; 1 and 2 lose to 4 (ratio 10, drop 1.5)
  np.testing.assert_array_equal(idx, [0, 4, 3])
  assert np.all(np.diff(ratios[idx]) > 0) and np.all(np.diff(drops[idx]) >= 0)


def test_bisection_finds_the_last_position_that_meets_the_target():
  for size in (1, 2, 7, 16, 43):
    for boundary in range(-1, size):          # positions <= boundary meet the target
      outcomes, probe, steps = {}, screening.bisect_next(size, {}, size // 3), 0
      while probe is not None:
        assert probe not in outcomes
        outcomes[probe] = probe <= boundary
        probe, steps = screening.bisect_next(size, outcomes, size // 3), steps + 1
      met = [i for i, ok in outcomes.items() if ok]
      assert max(met, default=-1) == boundary
      assert steps <= int(np.ceil(np.log2(size + 1))) + 2


def test_a_plan_already_fine_tuned_is_passed_over_unless_all_were():
  ratios, drops = [20.0, 25.0, 10.0], [1.0, 2.5, 0.1]
  assert screening.pick_for_finetune(ratios, drops, 2.0) == 0
  assert screening.pick_for_finetune(ratios, drops, 2.0, np.array([True, False, False])) == 2
  assert screening.pick_for_finetune(ratios, drops, 0.05, np.array([False, False, True])) == 0  # most accurate fresh
  assert screening.pick_for_finetune(ratios, drops, 2.0, np.array([True, True, True])) == 0
