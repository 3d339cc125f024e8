"""The device mesh: bad device counts and batch sizes, and exact sharded evaluation of a padded
last batch on 3 forced host devices (in a subprocess, so the suite's JAX keeps one device)."""

import os
import subprocess
import sys
import textwrap

import pytest

from hirelc_jax.training.placement import make_placement, pad_axis, pad_plans


def test_bad_device_counts_and_batch_sizes_fail_in_one_line():
  with pytest.raises(ValueError, match=r"devices=9, but 1 is available; use 1 to 1"):
    make_placement(9)
  with pytest.raises(ValueError, match=r"devices=0"):
    make_placement(0)
  placement = make_placement()
  assert placement.size == 1 and placement.describe()["mesh"] == {"data": 1}
  placement.check_batch(7, "batch_size")   # everything divides by one device


def test_padding_keeps_the_data_and_repeats_the_last_plan():
  import numpy as np
  a = np.arange(6).reshape(2, 3)
  padded = pad_axis({"x": a}, 1, 5)["x"]
  assert padded.shape == (2, 5) and (padded[:, :3] == a).all() and (padded[:, 3:] == 0).all()
  plans = pad_plans((np.array([1, 2, 3]),), 4)[0]
  assert plans.tolist() == [1, 2, 3, 3]


SCRIPT = textwrap.dedent("""
  import jax, numpy as np, flax.linen as nn
  from hirelc_jax.training import loop
  from hirelc_jax.training.placement import make_placement
  assert jax.device_count() == 3
  class Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(5)(x)
  module = Linear()
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(1001, 4)).astype(np.float32), rng.integers(0, 5, 1001)
  params = module.init(jax.random.key(0), x[:1])["params"]
  one = loop.accuracy(loop.make_evaluate(module, lambda t, _: t), params, {}, None, x, y, 500)
  three = loop.accuracy(loop.make_evaluate(module, lambda t, _: t, placement=make_placement()),
                        params, {}, None, x, y, 500)
  counted = 100 * np.mean(np.argmax(x @ np.asarray(params["Dense_0"]["kernel"]) + np.asarray(params["Dense_0"]["bias"]), -1) == y)
  print(one, three, counted)
  assert one == three and abs(three - counted) < 1e-9
  try:
    make_placement().check_batch(128, "batch_size")
  except ValueError as err:
    assert "batch_size=128 does not split over 3 devices" in str(err), err
  else:
    raise AssertionError("128 over 3 devices was accepted")
""")


def test_sharded_evaluation_of_a_padded_last_batch_is_exact():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=3"}
  out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]


def test_a_cluster_is_named_whole_or_not_at_all(monkeypatch):
  from hirelc_jax import distributed
  for var in distributed.ENV.values():
    monkeypatch.delenv(var, raising=False)
  assert distributed.cluster_from(None, None, None) is None
  assert distributed.cluster_from("h:1", 2, 1) == {"coordinator_address": "h:1", "num_processes": 2,
                                                    "process_id": 1}
  with pytest.raises(ValueError, match=r"--coordinator missing"):
    distributed.cluster_from(None, 2, 0)
  with pytest.raises(ValueError, match=r"--process-id 2 with --num-processes 2: the id must be 0 to 1"):
    distributed.cluster_from("h:1", 2, 2)
  monkeypatch.setenv("HIRELC_NUM_PROCESSES", "two")
  with pytest.raises(ValueError, match=r"HIRELC_NUM_PROCESSES='two' is not an integer"):
    distributed.cluster_from("h:1", None, 0)
  monkeypatch.setenv("HIRELC_NUM_PROCESSES", "3")
  monkeypatch.setenv("HIRELC_PROCESS_ID", "2")
  assert distributed.cluster_from("h:1", None, None)["num_processes"] == 3   # flags first, then variables
