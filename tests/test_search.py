"""Search helpers: warm-up plan sampling, goal budgets, learner settings."""

import dataclasses

import jax
import numpy as np
import pytest

from hirelc_jax import config as C
from hirelc_jax import search
from hirelc_jax.compression import codes
from hirelc_jax.compression.kernel_map import build_kernel_map

RULES = [(r"block(?P<block>\d+)/(qkv)/kernel", "qkv"), (r"block(?P<block>\d+)/(fc)/kernel", "fc")]


@pytest.fixture(scope="module")
def kmap():
  params = {f"block{i}": {"qkv": {"kernel": np.zeros((8, 24), np.float32)},
                          "fc": {"kernel": np.zeros((8, 16), np.float32)}} for i in range(3)}
  return build_kernel_map(params, RULES, ("qkv", "fc"))


def test_warmup_plans_stay_in_the_goal_and_half_lie_near_uniform(kmap):
  config = C.override(C.Config(), {"goal.min_bits": "3", "goal.max_prune": "0.6"})
  plans = jax.device_get(search.random_plans(jax.random.key(0), 40, kmap, config))
  bits, keep = np.asarray(plans.bits), np.asarray(plans.keep)
  assert bits.shape == (40, 3, 2)
  assert bits.min() >= 3 and bits.max() <= 8 and keep.min() >= 0.4 - 1e-6 and keep.max() <= 1.0
  spread = bits.reshape(40, -1).max(1) - bits.reshape(40, -1).min(1)
  assert (spread[20:] <= 2).all()                       # one level, jitter of one bit
  assert spread[:20].mean() > 2                         # the whole space
  near_gran = np.asarray(plans.gran)[20:]
  assert (near_gran == codes.PER_CHANNEL).mean() > 0.6
  assert (keep[20:] == 1.0).mean() > 0.5 and keep[20:].min() >= 0.7 - 1e-6


def test_restricted_goals_fix_format_granularity_pruning(kmap):
  config = C.override(C.Config(), {"goal.quantization_type": "float", "goal.strategy": "log",
                                   "goal.pruning": "false"})
  plans = search.random_plans(jax.random.key(1), 10, kmap, config)
  assert (np.asarray(plans.fmt) == codes.FLOAT).all()
  assert (np.asarray(plans.gran) == codes.LOG).all()
  assert (np.asarray(plans.keep) == 1.0).all()


def test_goal_budgets_give_every_block_the_goal():
  config = C.override(C.Config(), {"goal.target_compression": "8", "goal.min_bits": "3"})
  b = search.goal_budgets(config, 4)
  np.testing.assert_allclose(b.target_ratio, 0.125)
  np.testing.assert_array_equal(b.min_bits, 3)
  np.testing.assert_allclose(b.max_prune, config.goal.max_prune)
  np.testing.assert_allclose(b.max_acc_drop, config.goal.target_accuracy_drop)


def test_learner_discount_follows_the_config():
  lla = C.Config().lla
  assert search.learner_config(lla, "ppo").gamma == 0.0
  assert search.learner_config(lla, "a2c").gamma == 0.0
  assert search.learner_config(C.Config().hla, "ppo").gamma == 0.0


def test_candidate_plans_start_with_the_vote_then_members_then_draws(kmap):
  from hirelc_jax.agents import error_table, kernel_env
  config = C.override(C.Config(), {"lla.n_steps": "8", "lla.n_envs": "2"})
  rng = np.random.default_rng(0)
  params = {f"block{i}": {"qkv": {"kernel": rng.normal(size=(8, 24)).astype(np.float32)},
                          "fc": {"kernel": rng.normal(size=(8, 16)).astype(np.float32)}} for i in range(3)}
  fisher = [np.ones(e.shape, np.float32) for e in kmap.entries]
  table = error_table.build_error_table(params, fisher, kmap)
  env = kernel_env.KernelEnv(2, lambda sig, *a: sig[1] * error_table.error_table_fn()(sig[0], *a))
  trainer = search.EnsembleTrainer(env, config.lla, nested=True, in_axes_fn=kernel_env.params_in_axes)
  lla = search.lla_params(config, search.goal_budgets(config, 3), kmap, np.ones((3, 2)),
                          (table, np.float32(0.3)), baseline_accuracy=90.0, surrogate_ready=True)
  ens = trainer.init(jax.random.key(0), lla)
  plans = jax.device_get(search.candidate_plans(trainer, ens, lla, samples=3))
  members = len(config.lla.algorithms)
  assert plans.bits.shape == ((1 + 3) * (1 + members), 3, 2)
  actions = trainer.greedy_actions(ens, lla)                                   # [B, M, D]
  voted = search.decode_plans(trainer, search.vote_blocks(trainer, ens, actions)[None], lla)
  np.testing.assert_array_equal(plans.bits[0], voted.bits[0])
  np.testing.assert_array_equal(plans.keep[0], voted.keep[0])
  # candidate 1 + m is member m's greedy plan in every block
  own = search.decode_plans(trainer, np.moveaxis(np.asarray(actions), 1, 0), lla)
  np.testing.assert_array_equal(plans.bits[1:1 + members], own.bits)
  np.testing.assert_array_equal(plans.gran[1:1 + members], own.gran)
  assert plans.bits.min() >= config.goal.min_bits and plans.bits.max() <= config.goal.max_bits
  assert plans.keep.min() >= 1 - config.goal.max_prune - 1e-6
  draws = plans.bits[1 + members:].reshape(-1, 6)
  assert len(np.unique(draws, axis=0)) > 1                    # the draws are not all the same plan


def test_floor_shift_is_one_level_per_doubling_of_the_goal():
  config = C.override(C.Config(), {"goal.target_compression": "10", "search.floors": "hla"})
  raised = lambda r: C.override(config, {"goal.target_compression": str(r)})
  shifts = [search.floor_shift(config, raised(r)) for r in (10, 14, 14.5, 20, 28, 29, 1000)]
  assert shifts == [0, 0, 1, 1, 1, 2, 4]                  # log2 rounded: 0.49, 0.54, 1.49, 1.54
  fixed = C.override(config, {"search.escalate_floors": "false"})
  assert search.floor_shift(fixed, raised(40)) == 0
  params = search.hla_params(raised(20), np.full(3, 0.5), shift=search.floor_shift(config, raised(20)))
  np.testing.assert_array_equal(params.floor_shift, [1, 1, 1])         # one per HLA member
  assert search.floor_shift(C.Config(), raised(40)) == 0                # floors="goal": no levels


def test_goal_floors_replace_the_hla_levels_floors_and_keep_its_targets():
  from hirelc_jax.agents import budget_env
  params = budget_env.budget_params(3, sensitivity=np.array([0.9, 0.5, 0.1]), goal_min_bits=2,
                                    min_bits_table=budget_env.MIN_BITS_WIDE)
  decoded = budget_env.decode_budgets(np.array([0, 2, 4]), params.sensitivity, params)
  assert list(decoded.min_bits) == [6, 4, 2]               # levels 0, 2, 4 (s shifts 0 -> 0, 4 -> 4)
  config = C.override(C.Config(), {"goal.min_bits": "3", "goal.max_prune": "0.5"})
  goal = search.with_floors(decoded, config)
  np.testing.assert_array_equal(goal.min_bits, [3, 3, 3])
  np.testing.assert_allclose(goal.max_prune, [0.5, 0.5, 0.5])
  np.testing.assert_array_equal(goal.target_ratio, decoded.target_ratio)
  hla = search.with_floors(decoded, C.override(config, {"search.floors": "hla"}))
  np.testing.assert_array_equal(hla.min_bits, decoded.min_bits)


def test_selection_half_is_held_out_from_everything_the_search_sees():
  from hirelc_jax.data.datasets import Dataset
  from hirelc_jax.evaluation import Setup, hold_out_selection
  x = np.arange(7 * 2, dtype=np.float32).reshape(7, 2, 1, 1)
  data = Dataset(name="t", x_train=x, y_train=np.arange(7), x_val=x, y_val=np.arange(7),
                 x_test=x, y_test=np.arange(7), num_classes=7, image_shape=(2, 1, 1),
                 mean=np.zeros(1), std=np.ones(1))
  setup = Setup(config=None, data=data, spec=None, variables={}, kmap=None, augment=None,
                evaluate_plans=None, evaluate=None)
  fit, (xs, ys) = hold_out_selection(setup)
  np.testing.assert_array_equal(fit.data.y_val, [0, 1, 2])
  np.testing.assert_array_equal(ys, [3, 4, 5, 6])
  np.testing.assert_array_equal(xs[:, 0, 0, 0], [6, 8, 10, 12])
  np.testing.assert_array_equal(fit.data.y_train, data.y_train)           # train and test untouched
  assert setup.data.y_val.shape == (7,)                                    # no mutation
  tiny = dataclasses.replace(setup, data=dataclasses.replace(data, x_val=x[:1], y_val=np.arange(1)))
  with pytest.raises(ValueError, match="validation split has 1 examples"):
    hold_out_selection(tiny)


def test_paired_drop_counts_only_the_examples_the_two_models_disagree_on():
  """Accuracy scores (100 right, 0 wrong) give McNemar's paired counts."""
  from hirelc_jax.evaluation import paired_drop
  base = 100.0 * np.array([1, 1, 1, 1, 0, 0, 1, 0, 1, 1])
  new = 100.0 * np.array([1, 0, 0, 1, 1, 0, 1, 0, 0, 1])        # b = 3 lost, c = 1 gained
  drop, se = paired_drop(base, new)
  assert drop == pytest.approx(100 * 2 / 10) and se == pytest.approx(100 * np.sqrt(5) / 10)
  assert paired_drop(base, base) == pytest.approx((0.0, 10.0))    # agreement: one pseudo-pair
  # Against the exact paired variance at a 1-point drop on 3000 examples (120 lost, 90 gained):
  # the bound is above it and within 1%.
  rng = np.random.default_rng(0)
  base = rng.random(3000) < 0.9
  right, wrong = np.flatnonzero(base), np.flatnonzero(~base)
  new = base.copy()
  new[rng.choice(right, 120, replace=False)] = False
  new[rng.choice(wrong, 90, replace=False)] = True
  d = base.astype(float) - new
  drop, se = paired_drop(100.0 * base, 100.0 * new)
  assert drop == pytest.approx(100 * d.mean())
  assert 100 * d.std() / np.sqrt(3000) <= se <= 1.01 * 100 * d.std() / np.sqrt(3000)


def test_plan_table_names_each_kernel_as_export_does(kmap):
  """report.json's format_name: int codes intN, minifloats by ml_dtypes name, log codes logN
  whatever the (unused) format field says, unquantized kernels fp32."""
  from hirelc_jax.compression.plan import uniform_plan
  from hirelc_jax.finalize import plan_table
  plan = uniform_plan(*kmap.plan_shape, bits=4, fmt="int", gran="per_channel")
  plan = plan.replace(bits=np.array([[4, 8], [5, 32], [6, 4]], np.int32),
                      fmt=np.array([[0, 1], [1, 0], [1, 1]], np.int32),
                      gran=np.array([[2, 2], [codes.LOG, 2], [2, 0]], np.int32))
  names = [[k["format_name"] for k in row] for row in plan_table(plan, kmap)]
  assert names == [["int4", "e4m3"], ["log5", "fp32"], ["e2m3", "e2m1"]]


def test_calibration_fits_one_slope_per_block_from_the_evaluated_plans(kmap):
  from types import SimpleNamespace

  from hirelc_jax.experiment import DEFAULT_POINTS_PER_ERROR, Search
  from hirelc_jax.state import Evaluation, SearchState
  rng = np.random.default_rng(0)
  index = kmap.slots
  slopes = np.array([10.0, 80.0, 300.0])[index[0]]               # per block, shared by its kernels
  errors = rng.uniform(0.0, 0.008, (40, len(kmap.entries)))   # drops of 0-7 points: informative
  evaluated = tuple(Evaluation("warmup", "", 5.0, 90.0 - float(e @ slopes), "pre_finetune", tuple(e))
                    for e in errors)
  evaluated += (Evaluation("cycle", "C1", 9.0, 50.0, "finetuned"),)   # fine-tuned: not a calibration point
  state = SearchState(None, None, None, None, (), evaluated, 0.3)

  def calibration(block_calibration, state=state):
    config = dataclasses.replace(C.Config(), search=dataclasses.replace(
        C.Config().search, block_calibration=block_calibration))
    fake = SimpleNamespace(config=config, setup=SimpleNamespace(kmap=kmap))
    return Search.calibration(fake, state, 90.0)

  got = calibration(True)
  assert got.shape == kmap.plan_shape
  common = calibration(False)
  assert np.ptp(common[index]) == 0 and 10.0 < common[index][0] < 300.0
  # Blocks whose errors move the drop by points are fitted closely; block 0 (at most 0.16 points)
  # is pulled towards the common slope by the ridge, but stays well below it.
  np.testing.assert_allclose(got[index][2:], slopes[2:], rtol=0.05)
  assert got[index][0] < 0.5 * common[index][0]
  empty = dataclasses.replace(state, evaluated=())
  np.testing.assert_array_equal(calibration(True, empty), np.full(kmap.plan_shape, DEFAULT_POINTS_PER_ERROR))
