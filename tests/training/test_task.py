"""Any input, any loss: pytree batches, a user's loss and per-example metric, and the checks
that refuse a bad one before any work."""

import warnings

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hirelc_jax
from hirelc_jax import api, evaluation
from hirelc_jax.data.pipeline import pad_to_batches
from hirelc_jax.training import loop, task as task_lib


def _pytree_data(n=30, seed=0):
  """Inputs {'a': float [N, 3], 'ids': int [N, 2]}, targets {'t': float [N]}."""
  rng = np.random.default_rng(seed)
  x = {"a": rng.normal(size=(n, 3)), "ids": rng.integers(0, 5, (n, 2))}
  return x, {"t": rng.normal(size=n)}


def _user_task():
  loss = lambda logits, y: jnp.mean((logits[:, 0] - y["t"]) ** 2)
  score = lambda logits, y: -jnp.abs(logits[:, 0] - y["t"])   # higher is better
  return task_lib.Task(loss, score, "neg_abs_error")


def test_built_in_task_is_cross_entropy_and_accuracy_in_percent():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0], [1.0, 0.5, 0.0]])
  y = jnp.array([0, 1, 0])
  task = task_lib.CLASSIFICATION
  np.testing.assert_allclose(task.loss(logits, y), optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
                             rtol=1e-6)
  np.testing.assert_array_equal(task.score(logits, y), [100.0, 0.0, 100.0])
  smooth = task_lib.classification(0.1).loss(logits, y)
  labels = optax.smooth_labels(np.eye(3)[np.asarray(y)], 0.1)
  np.testing.assert_allclose(smooth, optax.softmax_cross_entropy(logits, labels).mean(), rtol=1e-6)


def test_pad_to_batches_pads_every_leaf_of_a_pytree_alike():
  x, y = _pytree_data(7)
  xb, yb, mask = pad_to_batches(x, y, 3)
  assert xb["a"].shape == (3, 3, 3) and xb["ids"].shape == (3, 3, 2) and yb["t"].shape == (3, 3)
  assert mask.sum() == 7 and not mask[2, 1:].any()
  np.testing.assert_array_equal(xb["ids"].reshape(-1, 2)[:7], x["ids"])
  assert xb["ids"].dtype == x["ids"].dtype
  with pytest.raises(ValueError, match=r"leading sizes \[6, 7\]"):
    pad_to_batches({"a": x["a"], "b": x["a"][:6]}, y, 3)


def test_evaluate_under_a_user_task_is_the_mean_score_over_the_split():
  """Padded pytree batches (7 examples, batches of 3): the metric is the mean per-example score
  of exactly the 7 real examples."""
  x, y = _pytree_data(7)
  w = np.array([[0.5], [-1.0], [2.0]], np.float32)
  model = api.FunctionModel(lambda v, x: x["a"].astype(jnp.float32) @ v["params"]["w"]
                            + x["ids"][:, :1].astype(jnp.float32), "linear")
  evaluate = loop.make_evaluate(model, lambda t, _: t, _user_task())
  got = loop.accuracy(evaluate, {"w": w}, {}, None, x, y, 3)
  expected = -np.mean(np.abs(x["a"] @ w[:, 0] + x["ids"][:, 0] - y["t"]))
  assert got == pytest.approx(expected, rel=1e-5)


def test_paired_drop_of_real_valued_scores_and_the_user_metric_unit():
  base, new = np.array([1.0, 0.5, 0.2, 0.9]), np.array([0.8, 0.5, 0.4, 0.3])
  d = base - new
  drop, se = evaluation.paired_drop(base, new, unit=0.7)
  assert drop == pytest.approx(d.mean()) and se == pytest.approx(np.sqrt(np.sum(d ** 2) + 0.49) / 4)
  assert task_lib.pair_unit(_user_task(), base, new) == pytest.approx(0.8)       # spread of the baseline
  assert task_lib.pair_unit(task_lib.CLASSIFICATION, base, new) == 100.0


def test_dataset_from_pytrees_keeps_integer_leaves_and_splits_every_leaf_alike():
  x, y = _pytree_data(30)
  data = hirelc_jax.dataset_from_arrays(x, y, *_pytree_data(10, 1), val_fraction=0.2)
  assert data.num_classes is None and data.image_shape is None
  assert data.x_train["a"].dtype == np.float32 and data.x_train["ids"].dtype == x["ids"].dtype
  assert data.x_val["a"].shape == (6, 3) and data.y_train["t"].shape == (24,)
  row = np.flatnonzero(np.all(x["a"].astype(np.float32) == data.x_val["a"][0], axis=1))[0]
  np.testing.assert_array_equal(data.x_val["ids"][0], x["ids"][row])       # leaves stay paired
  assert data.y_val["t"][0] == np.float32(y["t"][row])


@pytest.mark.parametrize("change, message", [
    (lambda x, y: ({**x, "ids": x["ids"][:5]}, y), r"x_test: expected arrays sharing a leading example axis"),
    (lambda x, y: ({**x, "a": x["a"][:, :2]}, y), r"test inputs have shape .*'a': \(2,\).*training inputs"),
    (lambda x, y: (x, {"t": np.full(10, np.nan)}), r"y_test\['t'\] holds 10 NaN or Inf values"),
    (lambda x, y: (x, {"t": y["t"][:9]}), r"inputs and targets differ in length: train 30 vs 30, test 10 vs 9"),
])
def test_dataset_from_pytrees_refuses_inconsistent_splits_in_one_line(change, message):
  x, y = _pytree_data(30)
  with pytest.raises(ValueError, match=message):
    hirelc_jax.dataset_from_arrays(x, y, *change(*_pytree_data(10, 1)))
  with pytest.raises(ValueError, match="num_classes=3 needs integer class labels"):
    hirelc_jax.dataset_from_arrays(x, y, *_pytree_data(10, 1), num_classes=3)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "the targets y are not integer class labels.*pass loss_fn and metric_fn"),
    ({"metric_fn": _user_task().score}, "pass loss_fn$"),
    ({"loss_fn": lambda lg, y: (lg[:, 0] - y["t"]) ** 2, "metric_fn": _user_task().score},
     r"loss_fn returned shape \(2,\); return the batch's mean loss, a scalar"),
    ({"loss_fn": _user_task().loss, "metric_fn": lambda lg, y: jnp.mean(lg)},
     r"metric_fn returned shape \(\) for 2 examples; return one score per example, shape \[2\]"),
])
def test_compress_refuses_a_bad_task_before_writing_anything(tmp_path, kwargs, message):
  data = hirelc_jax.dataset_from_arrays(*_pytree_data(30), *_pytree_data(10, 1))
  variables = {"params": {"block_0": {"fc": {"kernel": np.ones((3, 1), np.float32)}}}}
  apply_fn = lambda v, x: x["a"] @ v["params"]["block_0"]["fc"]["kernel"]
  with pytest.raises(ValueError, match=message):
    hirelc_jax.compress(apply_fn, variables, data, kernel_rules=[(r"block_(?P<block>\d+)/fc/kernel", "fc")],
                        kernel_names=["fc"], output_dir=tmp_path / "o", **kwargs)
  assert not (tmp_path / "o").exists()


def test_a_user_metric_on_a_unit_scale_is_warned_about():
  data = hirelc_jax.dataset_from_arrays(*_pytree_data(100), *_pytree_data(10, 1))
  variables = {"params": {"w": np.ones((3, 1), np.float32)}}
  apply_fn = lambda v, x: x["a"] @ v["params"]["w"]
  unit_scale = task_lib.Task(_user_task().loss, lambda lg, y: (lg[:, 0] > 0).astype(jnp.float32), "hit")
  with pytest.warns(UserWarning, match=r"metric_fn scores lie in \[0, 1\].*return 100 x the score"):
    api.check_task(apply_fn, variables, data, unit_scale)
  points = task_lib.Task(unit_scale.loss, lambda lg, y: 100.0 * unit_scale.score(lg, y), "hit")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    api.check_task(apply_fn, variables, data, points)                # in points: no warning
