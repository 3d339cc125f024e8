"""Datasets (Fashion-MNIST, digits, CIFAR-10/100, Tiny ImageNet), batching and augmentation.

Example::

  ds = load_dataset("fashion_mnist", val_fraction=0.1, seed=0)
  for xb, yb in batches(ds.x_train, ds.y_train, 128, key=jax.random.key(0)):
    xb = augment(key, xb, **dataclasses.asdict(AUGMENT_DEFAULTS[ds.name]))
  xb, yb, mask = pad_to_batches(ds.x_test, ds.y_test, 256)
"""

from hirelc_jax.data.datasets import (DATA_DIR_ENV, DATASET_NAMES, FASHION_MNIST_DIR, Dataset,
                                      channel_stats, load_dataset, normalize, read_raw,
                                      split_indices)
from hirelc_jax.data.pipeline import (AUGMENT_DEFAULTS, AugmentConfig, augment, batches,
                                      num_batches, num_examples, pad_to_batches, take)
from hirelc_jax.data.readers import RawData, read_idx

__all__ = [
    "DATA_DIR_ENV", "DATASET_NAMES", "FASHION_MNIST_DIR", "Dataset", "RawData", "AugmentConfig",
    "AUGMENT_DEFAULTS", "augment", "batches", "channel_stats", "load_dataset", "normalize",
    "num_batches", "num_examples", "pad_to_batches", "read_idx", "read_raw", "split_indices", "take",
]
