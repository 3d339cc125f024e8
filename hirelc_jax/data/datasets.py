"""`load_dataset`: train/val/test splits as normalised NHWC float32 numpy arrays.

The validation split is a seeded random subset carved from the training set;
the test set is the dataset's own and is never touched by the split. Images are
scaled to [0, 1], then standardised per channel with the mean and std of the
training part (after the validation split is removed).

Data locations (nothing is ever downloaded):
  * fashion_mnist: ``data_dir`` or ``/usr/share/datasets/fashion-mnist``
    (Debian's ``dataset-fashion-mnist``).
  * digits: bundled with scikit-learn; ``data_dir`` is ignored.
  * cifar10 / cifar100 / tiny_imagenet: ``data_dir``, else ``$HIRELC_DATA_DIR``,
    else ``./data``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import numpy as np

from hirelc_jax.data import readers

DATASET_NAMES = ("fashion_mnist", "digits", "cifar10", "cifar100", "tiny_imagenet")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR_ENV = "HIRELC_DATA_DIR"
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
_STATS_CHUNK = 4096


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A loaded, normalised dataset.

  The built-in datasets hold the arrays below. A user's (`hirelc_jax.dataset_from_arrays`)
  may hold pytrees of arrays with a leading example axis as inputs and targets; its
  `num_classes` is then None unless the targets are integer labels, and `image_shape`,
  `mean` and `std` are None unless the inputs are one array.

  Attributes:
    x_train: ``[N, H, W, C]`` float32, normalised.
    y_train: ``[N]`` int32.
    x_val: ``[V, H, W, C]`` float32 (carved from the training set; V may be 0).
    y_val: ``[V]`` int32.
    x_test: ``[M, H, W, C]`` float32.
    y_test: ``[M]`` int32.
    num_classes: number of classes.
    image_shape: ``(H, W, C)``.
    name: one of `DATASET_NAMES`.
    mean: ``[C]`` float32 per-channel mean of the training images, in [0, 1] units.
    std: ``[C]`` float32 per-channel std, same units.
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: Optional[int]
  image_shape: Optional[tuple[int, ...]]
  name: str
  mean: Optional[np.ndarray]
  std: Optional[np.ndarray]

  def denormalize(self, x: np.ndarray) -> np.ndarray:
    """Maps normalised images ``[..., C]`` back to [0, 1] pixel units."""
    return x * self.std + self.mean


def _default_dir(name: str) -> Path:
  if name == "fashion_mnist":
    return FASHION_MNIST_DIR
  return Path(os.environ.get(DATA_DIR_ENV, "data"))


def _read_digits() -> readers.RawData:
  """sklearn's 8x8 digits (values 0..16), stratified 80/20 train/test with a fixed seed."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  d = load_digits()
  x = d.images.astype(np.float32)[..., None]
  y = d.target.astype(np.int32)
  x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=DIGITS_TEST_FRACTION,
                                            random_state=DIGITS_SPLIT_SEED, stratify=y)
  return readers.RawData(x_tr, y_tr, x_te, y_te, num_classes=10, scale=16.0)


def read_raw(name: str, data_dir: Optional[str | os.PathLike] = None, *,
             limit: Optional[int] = None) -> readers.RawData:
  """Reads a dataset as stored (no split, no normalisation); see `load_dataset`."""
  if name not in DATASET_NAMES:
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
  root = Path(data_dir).expanduser() if data_dir is not None else _default_dir(name)
  if name == "fashion_mnist":
    raw = readers.read_fashion_mnist(root)
  elif name == "digits":
    raw = _read_digits()
  elif name in readers.CIFAR_LAYOUTS:
    raw = readers.read_cifar(root, name)
  else:
    raw = readers.read_tiny_imagenet(root, limit=limit)
  if limit is not None:
    tr = readers.subsample_indices(len(raw.x_train), limit)
    te = readers.subsample_indices(len(raw.x_test), limit)
    raw = dataclasses.replace(raw, x_train=raw.x_train[tr], y_train=raw.y_train[tr],
                              x_test=raw.x_test[te], y_test=raw.y_test[te])
  return raw


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Seeded disjoint ``(train, val)`` index arrays covering ``range(n)``, each sorted.

  The validation part has ``round(n * val_fraction)`` items.
  """
  perm = np.random.default_rng(seed).permutation(n)
  n_val = int(round(n * val_fraction))
  return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def channel_stats(x: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of ``x / scale`` (``x``: ``[N, H, W, C]``), chunked in float64.

  Returns:
    ``(mean [C], std [C])`` float32; a zero std is replaced by 1.
  """
  c = x.shape[-1]
  total, total_sq, count = np.zeros(c), np.zeros(c), 0
  for start in range(0, len(x), _STATS_CHUNK):
    chunk = x[start:start + _STATS_CHUNK].astype(np.float64).reshape(-1, c) / scale
    total += chunk.sum(0)
    total_sq += np.square(chunk).sum(0)
    count += len(chunk)
  mean = total / max(count, 1)
  std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean ** 2, 0.0))
  std = np.where(std < 1e-6, 1.0, std)
  return mean.astype(np.float32), std.astype(np.float32)


def normalize(x: np.ndarray, scale: float, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """``(x / scale - mean) / std`` as float32, channel-last broadcasting."""
  out = x.astype(np.float32)
  out *= np.float32(1.0 / scale)
  out -= mean
  out /= std
  return out


def load_dataset(name: str, *, data_dir: Optional[str | os.PathLike] = None,
                 val_fraction: float = 0.1, seed: int = 0,
                 limit: Optional[int] = None) -> Dataset:
  """Loads, splits and normalises a dataset.

  Args:
    name: one of `DATASET_NAMES`.
    data_dir: where the files are (see the module docstring for defaults).
    val_fraction: fraction of the training set held out for validation, in [0, 1).
    seed: seed of the validation split.
    limit: keep at most this many training (before the split) and this many
      test examples, a fixed random subset independent of ``seed``.

  Returns:
    The `Dataset`.

  Raises:
    ValueError: unknown name, bad arguments, or missing/corrupt data (one line
      naming the path and how to provide the data).
  """
  if name not in DATASET_NAMES:
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
  if limit is not None and (int(limit) != limit or limit < 1):
    raise ValueError(f"limit must be a positive integer, got {limit}")
  raw = read_raw(name, data_dir, limit=limit)
  tr, va = split_indices(len(raw.x_train), val_fraction, seed)
  if len(tr) == 0:
    raise ValueError(f"{name}: val_fraction {val_fraction} leaves no training examples "
                     f"out of {len(raw.x_train)}")
  x_train = raw.x_train[tr]
  mean, std = channel_stats(x_train, raw.scale)
  return Dataset(
      x_train=normalize(x_train, raw.scale, mean, std),
      y_train=raw.y_train[tr],
      x_val=normalize(raw.x_train[va], raw.scale, mean, std),
      y_val=raw.y_train[va],
      x_test=normalize(raw.x_test, raw.scale, mean, std),
      y_test=raw.y_test,
      num_classes=raw.num_classes,
      image_shape=tuple(int(s) for s in raw.x_train.shape[1:]),
      name=name, mean=mean, std=std)
