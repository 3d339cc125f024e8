"""Training, QAT fine-tuning, batched plan evaluation and checkpoints on digits with vit_mu."""

import types

import chex
import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from hirelc_jax.compression import codes
from hirelc_jax.compression.apply import apply_plan
from hirelc_jax.compression.kernel_map import build_kernel_map
from hirelc_jax.compression.plan import make_plan, stack_plans, uniform_plan
from hirelc_jax.models import build_model, init_params
from hirelc_jax.training import baseline, checkpoint, loop, qat

FAST = loop.TrainConfig(epochs=12, batch_size=64, lr=3e-3, chunk=10, eval_batch_size=128)


@pytest.fixture(scope="module")
def digits():
  x, y = load_digits(return_X_y=True)
  x = (x.reshape(-1, 8, 8, 1) / 16.0 - 0.3).astype(np.float32)
  y = y.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(x))
  x, y = x[perm], y[perm]
  return types.SimpleNamespace(name="digits", image_shape=(8, 8, 1), num_classes=10,
                               x_train=x[:1200], y_train=y[:1200], x_val=x[1200:1500],
                               y_val=y[1200:1500], x_test=x[1500:], y_test=y[1500:])


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
  spec = build_model("vit_mu", num_classes=10, image_shape=(8, 8, 1))
  variables = init_params(spec, jax.random.key(0))
  cache = tmp_path_factory.mktemp("cache")
  trained, info = baseline.train_baseline(spec, variables, digits, FAST, seed=0, cache_dir=cache,
                                          quiet=True)
  return spec, variables, trained, info, cache


def test_baseline_learns_and_is_cached(digits, trained):
  spec, variables, params, info, cache = trained
  assert not info["cached"] and info["val_accuracy"] > 80.0
  again, info2 = baseline.train_baseline(spec, variables, digits, FAST, seed=0, cache_dir=cache,
                                         quiet=True)
  assert info2["cached"] and info2["val_accuracy"] == info["val_accuracy"]
  chex.assert_trees_all_equal(again, params)


def test_finetune_weights_lie_on_grid_and_pruned_stay_zero(digits, trained):
  spec, _, variables, _, _ = trained
  kmap = build_kernel_map(variables["params"], spec.kernel_rules, spec.kernel_names)
  plan = make_plan(bits=[[4, 3, 4, 5], [2, 4, 6, 8]], keep=[[1.0, 0.5, 0.75, 1.0]] * 2,
                   fmt=[["int", "float", "int", "float_exp"], ["int", "int", "float", "int"]],
                   gran=[["uniform", "per_channel", "log", "per_channel"],
                         ["asymmetric", "uniform", "per_channel", "per_channel"]])
  config = loop.TrainConfig(epochs=1, batch_size=64, lr=1e-3, chunk=5, eval_batch_size=128)
  tuned, result = qat.finetune(spec.module, variables, plan, kmap, digits, config,
                               jax.random.key(1), quiet=True)
  before = qat.plan_accuracies(qat.make_evaluate_plans(spec.module, kmap), variables,
                               stack_plans([plan]), digits.x_val, digits.y_val, 128)[0]
  assert result.best_val_accuracy >= before
  again = apply_plan(tuned["params"], plan, kmap)
  chex.assert_trees_all_close(again, tuned["params"], atol=0, rtol=1e-6)
  proj = np.asarray(tuned["params"]["block_0"]["attn"]["proj"]["kernel"])
  assert (~np.any(proj != 0, axis=0)).sum() == round(0.5 * proj.shape[1])
  bias = np.asarray(tuned["params"]["block_0"]["attn"]["proj"]["bias"])
  assert np.all(bias[~np.any(proj != 0, axis=0)] == 0)


def test_learned_steps_train_and_requantize_exactly(digits, trained):
  spec, _, variables, _, _ = trained
  kmap = build_kernel_map(variables["params"], spec.kernel_rules, spec.kernel_names)
  plan = uniform_plan(2, 4, bits=3, keep=0.75, gran="learned")
  config = loop.TrainConfig(epochs=1, batch_size=64, lr=1e-3, chunk=5, eval_batch_size=128)
  tuned, result = qat.finetune(spec.module, variables, plan, kmap, digits, config,
                               jax.random.key(2), quiet=True)
  _, steps = result.trainable
  init = qat.init_steps(variables["params"], plan, kmap)
  assert any(not np.allclose(a, b) for a, b in zip(steps, init))
  masks = qat.compute_masks(variables["params"], plan, kmap)
  again = apply_plan(tuned["params"], plan, kmap, masks=masks, steps=steps)
  chex.assert_trees_all_close(again, tuned["params"], atol=1e-7)


def test_batched_plan_accuracies_match_one_by_one(digits, trained):
  spec, _, variables, _, _ = trained
  kmap = build_kernel_map(variables["params"], spec.kernel_rules, spec.kernel_names)
  plans = [uniform_plan(2, 4, bits=b, keep=k, gran="per_channel") for b, k in
           ((8, 1.0), (4, 0.75), (2, 0.5))]
  evaluate_plans = qat.make_evaluate_plans(spec.module, kmap)
  batched = qat.plan_accuracies(evaluate_plans, variables, stack_plans(plans), digits.x_test,
                                digits.y_test, 100)
  evaluate = loop.make_evaluate(spec.module, lambda t, _: t)
  for plan, acc in zip(plans, batched):
    params = qat.compress(variables, plan, kmap)["params"]
    single = loop.accuracy(evaluate, params, {}, None, digits.x_test, digits.y_test, 100)
    assert acc == pytest.approx(single)
  assert batched[0] > batched[2]


def test_remainder_is_counted_exactly(digits, trained):
  spec, _, variables, _, _ = trained
  evaluate = loop.make_evaluate(spec.module, lambda t, _: t)
  x, y = digits.x_test[:97], digits.y_test[:97]
  logits = spec.module.apply(variables, x)
  expected = 100.0 * np.mean(np.argmax(logits, -1) == y)
  assert loop.accuracy(evaluate, variables["params"], {}, None, x, y, 40) == pytest.approx(expected)


def test_nan_loss_is_an_error(digits):
  spec = build_model("vit_mu", num_classes=10, image_shape=(8, 8, 1))
  variables = init_params(spec, jax.random.key(0))
  bad = types.SimpleNamespace(**{**vars(digits), "x_train": np.full_like(digits.x_train, np.nan)})
  with pytest.raises(FloatingPointError, match="loss became nan"):
    loop.fit(spec.module, variables["params"], {}, None, lambda t, _: t, bad,
             loop.TrainConfig(epochs=1, batch_size=64, chunk=2), jax.random.key(0), quiet=True)


def test_checkpoint_round_trip_and_corrupt_file(tmp_path, trained):
  _, _, variables, _, _ = trained
  checkpoint.save_tree(tmp_path / "ck", variables, meta={"a": 1})
  chex.assert_trees_all_equal(checkpoint.load_tree(tmp_path / "ck", variables), variables)
  assert checkpoint.load_meta(tmp_path / "ck") == {"a": 1}
  with pytest.raises(ValueError, match="does not exist"):
    checkpoint.load_tree(tmp_path / "missing", variables)
  broken = tmp_path / "broken"
  (broken / "tree").mkdir(parents=True)
  (broken / "tree" / "garbage").write_text("not a checkpoint")
  with pytest.raises(ValueError, match="unreadable"):
    checkpoint.load_tree(broken, variables)
  # Every file of a real checkpoint emptied, and an empty meta.json: one line naming the folder.
  for f in (tmp_path / "ck" / "tree").rglob("*"):
    if f.is_file():
      f.write_bytes(b"")
  with pytest.raises(ValueError, match=f"checkpoint {tmp_path / 'ck'} is unreadable") as err:
    checkpoint.load_tree(tmp_path / "ck", variables)
  assert "\n" not in str(err.value)
  (tmp_path / "ck" / "meta.json").write_text("")
  with pytest.raises(ValueError, match="meta.json is not JSON"):
    checkpoint.load_meta(tmp_path / "ck")


def test_bad_schedule_is_rejected():
  with pytest.raises(ValueError, match="batch_size=0"):
    loop.TrainConfig(batch_size=0)
  assert codes.FP32_BITS == 32
