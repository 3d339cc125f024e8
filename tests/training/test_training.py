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


def test_plans_fine_tuned_at_once_match_one_by_one(digits, trained):
  """K plans in one vmapped fine-tune end where each ends alone: the same best epoch, the
  same validation accuracy (within one example), the same weights up to float reduction order
  (a vmapped matmul sums in another order, and every Adam step carries the difference on:
  after one step the weights agree to 1e-6)."""
  spec, _, variables, _, _ = trained
  kmap = build_kernel_map(variables["params"], spec.kernel_rules, spec.kernel_names)
  plans = [uniform_plan(2, 4, bits=2, keep=0.5), uniform_plan(2, 4, bits=3, keep=0.75, fmt="float", gran="learned")]
  config = loop.TrainConfig(epochs=2, batch_size=64, lr=3e-3, chunk=6, eval_batch_size=128, patience=1)
  at_once = qat.finetune_many(spec.module, variables, stack_plans(plans), kmap, digits, config,
                              jax.random.key(3), quiet=True)
  assert len(at_once) == 2
  for plan, (tuned, result) in zip(plans, at_once):
    alone, alone_result = qat.finetune(spec.module, variables, plan, kmap, digits, config,
                                       jax.random.key(3), quiet=True)
    assert result.steps == alone_result.steps
    assert [h["step"] for h in result.history] == [h["step"] for h in alone_result.history]
    assert result.best_val_accuracy == pytest.approx(alone_result.best_val_accuracy, abs=100 / 300 + 1e-9)
    a, b = (np.concatenate([np.ravel(l) for l in jax.tree.leaves(t)]) for t in (tuned, alone))
    assert np.linalg.norm(a - b) < 2e-2 * np.linalg.norm(b)   # measured: 6e-3 after 54 steps
  one_step = loop.TrainConfig(epochs=1 / 18, batch_size=64, lr=3e-3, chunk=1, eval_batch_size=128)
  (first, _), = qat.finetune_many(spec.module, variables, stack_plans(plans[:1]), kmap, digits, one_step,
                                  jax.random.key(3), quiet=True)
  alone, _ = qat.finetune(spec.module, variables, plans[0], kmap, digits, one_step, jax.random.key(3), quiet=True)
  chex.assert_trees_all_close(first, alone, atol=1e-6)   # one step: the same batch, the same update


def test_stacked_runs_stop_by_their_own_patience(digits):
  """A run that cannot learn (its parameters scaled by 0) stops after `patience` epochs with
  its first best frozen, while the other trains on, each as it would alone."""
  spec = build_model("vit_mu", num_classes=10, image_shape=(8, 8, 1))
  params = init_params(spec, jax.random.key(0))["params"]
  scaled = lambda t, a: jax.tree.map(lambda p: p * a, t)
  config = loop.TrainConfig(epochs=2, batch_size=64, lr=3e-3, chunk=6, eval_batch_size=128, patience=1)
  stack = jax.tree.map(lambda p: np.stack([p, p]), params)
  both = loop.fit(spec.module, stack, {}, np.array([1.0, 0.0], np.float32), scaled, digits, config,
                  jax.random.key(0), quiet=True, stacked=True)
  assert both.steps.tolist() == [36, 18]
  for k, aux in enumerate((1.0, 0.0)):
    alone = loop.fit(spec.module, params, {}, np.float32(aux), scaled, digits, config, jax.random.key(0),
                     quiet=True)
    assert alone.steps == both.steps[k]
    assert alone.best_val_accuracy == pytest.approx(both.best_val_accuracy[k], abs=100 / 300 + 1e-9)
  chex.assert_trees_all_equal(jax.tree.map(lambda p: p[1], both.trainable), params)


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
