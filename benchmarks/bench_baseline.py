"""Baseline training on Fashion-MNIST with the default schedule: accuracy and wall time.

Usage: python benchmarks/bench_baseline.py MODEL   (vit_tiny, cnn, ...)
Trains from scratch (the cache is bypassed), reports validation and full
test-set accuracy and the training wall time, and writes
benchmarks/results/baseline_<model>.json.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402
from hirelc_jax.data import load_dataset  # noqa: E402
from hirelc_jax.models import build_model, init_params  # noqa: E402
from hirelc_jax.training import baseline, loop  # noqa: E402


def main(model: str) -> None:
  data = load_dataset("fashion_mnist")
  schedule = baseline.default_schedule(model)
  spec = build_model(model, num_classes=data.num_classes, image_shape=data.image_shape,
                     patch_size=baseline.default_patch_size(model, data.image_shape))
  variables = init_params(spec, jax.random.key(0))
  augment_fn = None  # the pipeline's default (config.data.augment = False)
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as cache:
    trained, info = baseline.train_baseline(spec, variables, data, schedule, seed=0,
                                            augment=augment_fn, cache_dir=pathlib.Path(cache))
  wall = time.perf_counter() - start
  evaluate = loop.make_evaluate(spec.module, lambda t, _: t)
  state = {k: v for k, v in trained.items() if k != "params"}
  test = loop.accuracy(evaluate, trained["params"], state, None, data.x_test, data.y_test, 500)
  results = {"model": model, "dataset": "fashion_mnist", "schedule": vars(schedule),
             "patch_size": getattr(spec.module, "patch_size", None),
             "val_accuracy": info["val_accuracy"], "test_accuracy": test,
             "train_seconds": info["seconds"], "wall_seconds_incl_compile": wall,
             "steps": info["steps"], "history": info["history"]}
  print(f"{model}: test {test:.2f}%  val {info['val_accuracy']:.2f}%  "
        f"train {info['seconds']:.0f}s  wall {wall:.0f}s")
  common.write(f"baseline_{model}", results)


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "vit_tiny")
