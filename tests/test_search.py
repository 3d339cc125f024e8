"""Search helpers: warm-up plan sampling, goal budgets, learner settings."""

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
  assert search.learner_config(C.Config().hla, "ppo").gamma == 0.99
