"""The integer program over the error table: exact against brute force, consistent with accounting."""

import jax.numpy as jnp
import numpy as np
import pytest

from hirelc_jax import knapsack
from hirelc_jax.agents import error_table
from hirelc_jax.compression import accounting, codes
from hirelc_jax.compression.kernel_map import build_kernel_map
from hirelc_jax.config import GoalConfig

RULES = [(r"block(?P<block>\d+)/a/kernel", "a"), (r"block(?P<block>\d+)/b/kernel", "b")]


def _problem(goal):
  rng = np.random.default_rng(0)
  params = {f"block{i}": {"a": {"kernel": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
                                "bias": jnp.zeros(8)},
                          "b": {"kernel": jnp.asarray(rng.normal(size=(8, 6)) * (1 + i), jnp.float32)}}
            for i in range(2)}
  params["head"] = {"kernel": jnp.ones((6, 3))}
  kmap = build_kernel_map(params, RULES, ("a", "b"))
  fisher = [jnp.asarray(rng.uniform(0.5, 2.0, size=e.shape), jnp.float32) for e in kmap.entries]
  table = error_table.build_error_table(params, fisher, kmap)
  return params, kmap, table, knapsack.build_options(table, kmap, params, None, goal)


@pytest.fixture(scope="module")
def small():
  return _problem(GoalConfig(quantization_type="int", strategy="per_channel"))


def test_pareto_keeps_exactly_the_undominated_options():
  rng = np.random.default_rng(3)
  s, e = rng.integers(0, 20, 200).astype(float), rng.integers(0, 20, 200).astype(float)
  got = set(knapsack.pareto(s, e).tolist())
  firsts = {}
  for i in range(len(s)):
    firsts.setdefault((s[i], e[i]), i)
  want = {i for (si, ei), i in firsts.items() if not np.any((s <= si) & (e <= ei) & ((s < si) | (e < ei)))}
  assert got == want


def test_options_price_plans_as_accounting_and_the_table_do():
  params, kmap, table, options = _problem(GoalConfig())
  rng = np.random.default_rng(1)
  for _ in range(5):
    choice = [int(rng.integers(len(s))) for s in options.storage]
    plan = options.plan(choice)
    assert options.ratio(choice) == pytest.approx(float(accounting.compression_ratio(params, plan, kmap)),
                                                  rel=1e-6)
    predicted = sum(e[c] for e, c in zip(options.error, choice))
    assert predicted == pytest.approx(float(error_table.plan_error(table, plan)), rel=1e-5)


def test_options_stay_inside_the_goal_and_error_falls_with_storage():
  goal = GoalConfig(min_bits=3, max_bits=6, max_prune=0.5, quantization_type="float")
  _, _, _, options = _problem(goal)
  for s in range(len(options.slots)):
    assert np.all(np.diff(options.storage[s]) > 0) and np.all(np.diff(options.error[s]) < 0)
    assert set(options.bits[s]) <= set(range(3, 7)) and np.all(options.keep[s] >= 0.5 - 1e-6)
    log = options.gran[s] == codes.LOG   # a log grid ignores the format code
    assert np.all(options.fmt[s][~log] == codes.FLOAT)


def test_solve_is_the_brute_force_optimum(small):
  _, _, _, options = small
  sizes = [len(s) for s in options.storage]
  grids = np.meshgrid(*[np.arange(n) for n in sizes], indexing="ij")
  storage = sum(options.storage[s][g] for s, g in enumerate(grids)) + options.fixed_bits
  error = sum(options.error[s][g] for s, g in enumerate(grids))
  for ratio in (4.0, 6.0, 9.0, 10.5, options.max_ratio()):
    fits = options.total_bits / storage >= ratio * (1 - 1e-9)
    choice = knapsack.solve(options, ratio)
    got = sum(e[c] for e, c in zip(options.error, choice))
    assert options.ratio(choice) >= ratio * (1 - 1e-6)
    assert got == pytest.approx(error[fits].min(), rel=1e-6, abs=1e-9)
  assert knapsack.solve(options, options.max_ratio() * 1.01) is None


def test_greedy_path_descends_and_never_beats_the_exact_program(small):
  _, _, _, options = small
  path = knapsack.greedy_path(options)
  storage = [sum(s[c] for s, c in zip(options.storage, ch)) for ch in path]
  error = [sum(e[c] for e, c in zip(options.error, ch)) for ch in path]
  assert np.all(np.diff(storage) < 0) and np.all(np.diff(error) >= 0)
  assert path[-1] == [0] * len(options.slots)
  for ch in path[:: max(1, len(path) // 6)]:
    exact = knapsack.solve(options, options.ratio(ch) * (1 - 1e-9))
    assert sum(e[c] for e, c in zip(options.error, exact)) <= sum(
        e[c] for e, c in zip(options.error, ch)) * (1 + 1e-9)


def test_lower_hull_drops_points_above_the_chords():
  storage = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
  error = np.array([10.0, 6.0, 5.0, 1.0, 0.5])   # (2, 5) lies above the chord from (1, 6) to (3, 1)
  assert knapsack.lower_hull(storage, error) == [0, 1, 3, 4]


def test_action_grid_spans_the_lla_space():
  grid = knapsack.action_grid(GoalConfig())
  assert len(grid["bits"]) == 7 * 15 * 2 * 4
  np.testing.assert_allclose(np.unique(grid["keep"]), np.linspace(0.2, 1.0, 15), rtol=1e-6)
  assert sorted(set(grid["bits"])) == list(range(2, 9))


def test_program_candidates_start_at_the_goal_and_spread_to_the_maximum(small):
  from hirelc_jax import proposals
  params, kmap, _, options = small
  plans = proposals.from_program(options, 6.0)
  ratios = np.asarray(accounting.compression_ratio(params, plans, kmap))
  assert plans.bits.shape[0] == proposals.ILP_CANDIDATES
  assert ratios[0] >= 6.0 * (1 - 1e-6) and ratios[1] >= 3.0 * (1 - 1e-6)
  assert ratios[-1] == pytest.approx(options.max_ratio(), rel=1e-6)
  assert np.all(np.diff(ratios[1:]) >= -1e-6)


def test_ratio_within_is_the_most_compressed_greedy_choice_under_an_error(small):
  _, _, _, options = small
  path = knapsack.greedy_path(options)
  errors = [sum(e[i] for e, i in zip(options.error, c)) for c in path]
  ratios = [options.ratio(c) for c in path]
  mid = errors[len(path) // 2]
  assert knapsack.ratio_within(options, path, mid) == max(r for r, e in zip(ratios, errors) if e <= mid)
  assert knapsack.ratio_within(options, path, np.inf) == max(ratios)
  assert knapsack.ratio_within(options, path, -1.0) == 1.0


def test_calibrated_options_price_plans_as_the_per_slot_calibrated_table(small):
  params, kmap, table, options = small
  scale = np.array([[3.0, 50.0], [0.5, 7.0]])
  cal = knapsack.calibrated(options, scale)
  choice = knapsack.solve(cal, 6.0)
  slots = error_table.slot_errors(table, *(getattr(cal.plan(choice), f) for f in ("bits", "keep", "fmt", "gran")))
  assert sum(e[c] for e, c in zip(cal.error, choice)) == pytest.approx(float(np.sum(scale * slots)), rel=1e-5)
  # The heavily weighted slot (0, 1) keeps more storage than it does uncalibrated.
  plain = knapsack.solve(options, 6.0)
  s01 = options.slots.index((0, 1))
  assert cal.storage[s01][choice[s01]] > options.storage[s01][plain[s01]]
