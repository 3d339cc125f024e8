"""Baseline training with an orbax cache keyed by model, data, seed and schedule."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Callable, Optional

import jax

from hirelc_jax.training import checkpoint, loop


# Default baseline schedules on this project's reference machine (2-core CPU):
# sized to finish in minutes, not hours (benchmarks/README.md has the numbers).
DEFAULT_SCHEDULES = {
    "vit_mu": loop.TrainConfig(epochs=3, batch_size=128, lr=2e-3),
    "vit_mini": loop.TrainConfig(epochs=3, batch_size=128, lr=1e-3),
    "vit_tiny": loop.TrainConfig(epochs=6, batch_size=128, lr=1e-3, warmup_frac=0.05),
    "cnn": loop.TrainConfig(epochs=3, batch_size=128, lr=2e-3, weight_decay=1e-4),
    "resnet18": loop.TrainConfig(epochs=3, batch_size=128, lr=2e-3, weight_decay=5e-4),
}


def default_schedule(model: str) -> loop.TrainConfig:
  """The default baseline schedule of a model (ViT-Small/Base reuse ViT-Tiny's)."""
  return DEFAULT_SCHEDULES.get(model, DEFAULT_SCHEDULES["vit_tiny"])


def default_patch_size(model: str, image_shape) -> int | None:
  """ViT patch side: 14 px (2x2 patches) for 28x28 inputs, else the model's default.

  On the reference 2-core CPU a ViT-Tiny with 7 px patches (16 tokens) trains
  at ~180 images/s and reached 81.5% validation accuracy on Fashion-MNIST
  after 250 steps (310 s); with 14 px patches it reached 83.9% after the same
  250 steps in 98 s, so the default schedule fits in the 15-minute budget.
  """
  if model.startswith("vit") and tuple(image_shape[:2]) == (28, 28):
    return 14
  return None


def cache_root() -> pathlib.Path:
  """$HIRELC_JAX_CACHE, or ~/.cache/hirelc_jax."""
  return pathlib.Path(os.environ.get("HIRELC_JAX_CACHE", pathlib.Path.home() / ".cache" / "hirelc_jax"))


def cache_key(spec, data, config: loop.TrainConfig, seed: int, augment=None) -> str:
  """A short hash of everything that determines the trained weights."""
  aug = None if augment is None else repr(getattr(augment, "keywords", augment))
  ident = {"model": spec.name, "module": repr(spec.module), "dataset": data.name,
           "n_train": len(data.x_train), "image_shape": list(data.image_shape),
           "seed": seed, "schedule": dataclasses.asdict(config), "augment": aug}
  digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
  return f"{spec.name}-{data.name}-s{seed}-{digest}"


def train_baseline(spec, variables, data, config: loop.TrainConfig, seed: int, *,
                   augment: Optional[Callable] = None, cache_dir: Optional[pathlib.Path] = None,
                   quiet: bool = False, placement=None):
  """Trains `spec` from `variables` or returns the cached result of the same run.

  `placement` (see `loop.fit`) is not part of the cache key: the weights
  trained on several devices differ only by the order of float reductions.

  Returns:
    (variables, info): the best weights by validation accuracy and a dict with
    val_accuracy, seconds, steps, history and cached (bool).
  """
  path = (cache_dir or cache_root() / "baselines") / cache_key(spec, data, config, seed, augment)
  if (path / "tree").exists():
    restored = checkpoint.load_tree(path, variables)
    return restored, {**checkpoint.load_meta(path), "cached": True, "path": str(path)}
  model_state = {k: v for k, v in variables.items() if k != "params"}
  result = loop.fit(spec.module, variables["params"], model_state, None, lambda t, _: t, data,
                    config, jax.random.key(seed), augment=augment, desc=f"baseline {spec.name}",
                    quiet=quiet, placement=placement)
  trained = {"params": result.trainable, **result.model_state}
  info = {"val_accuracy": result.best_val_accuracy, "seconds": result.seconds,
          "steps": result.steps, "history": result.history}
  checkpoint.save_tree(path, trained, meta=info)
  return trained, {**info, "cached": False, "path": str(path)}
