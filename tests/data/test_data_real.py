"""The real Debian Fashion-MNIST (package dataset-fashion-mnist), when installed."""

from __future__ import annotations

import numpy as np
import pytest

from hirelc_jax.data import FASHION_MNIST_DIR, load_dataset

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Debian's dataset-fashion-mnist is not installed ({FASHION_MNIST_DIR} is absent)")


def test_real_fashion_mnist():
  ds = load_dataset("fashion_mnist", val_fraction=0.1, seed=0)
  assert ds.x_train.shape == (54000, 28, 28, 1) and ds.x_val.shape == (6000, 28, 28, 1)
  assert ds.x_test.shape == (10000, 28, 28, 1)
  assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
  np.testing.assert_array_equal(np.bincount(np.concatenate([ds.y_train, ds.y_val])), [6000] * 10)
  assert 0.27 < float(ds.mean[0]) < 0.30 and 0.33 < float(ds.std[0]) < 0.37
