"""Readers and load_dataset on tiny files written in the exact on-disk formats."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest

import format_writers as fw
from hirelc_jax.data import load_dataset, read_idx, read_raw
from hirelc_jax.data import readers


def _pixel_ids(ds, x, channel=0):
  """Recovers the example ids written into the pixels by the writers."""
  return np.rint(ds.denormalize(x)[..., channel].reshape(len(x), -1).min(1) * 255).astype(int)


# ---- IDX / Fashion-MNIST -----------------------------------------------------

def test_read_idx_roundtrip_gz_and_plain(tmp_path):
  arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  (tmp_path / "a").write_bytes(fw.idx_bytes(arr))
  (tmp_path / "a.gz").write_bytes(gzip.compress(fw.idx_bytes(arr)))
  for name in ("a", "a.gz"):
    out = read_idx(tmp_path / name, magic=readers.IDX_IMAGES_MAGIC)
    np.testing.assert_array_equal(out, arr)
    assert out.dtype == np.uint8


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_shapes_labels_and_split(tmp_path, gz):
  x_tr, y_tr, x_te, y_te = fw.write_fashion(tmp_path, gz=gz)
  ds = load_dataset("fashion_mnist", data_dir=tmp_path, val_fraction=0.2, seed=3)
  assert ds.x_train.shape == (40, 28, 28, 1) and ds.x_val.shape == (10, 28, 28, 1)
  assert ds.x_test.shape == (20, 28, 28, 1)
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  assert ds.image_shape == (28, 28, 1) and ds.num_classes == 10 and ds.name == "fashion_mnist"
  ids_tr, ids_va = _pixel_ids(ds, ds.x_train), _pixel_ids(ds, ds.x_val)
  assert not set(ids_tr) & set(ids_va)
  assert sorted(np.concatenate([ids_tr, ids_va])) == list(range(50))
  np.testing.assert_array_equal(ds.y_train, y_tr[ids_tr])
  np.testing.assert_array_equal(ds.y_val, y_tr[ids_va])
  np.testing.assert_array_equal(_pixel_ids(ds, ds.x_test), np.arange(20))  # Test set untouched.
  np.testing.assert_array_equal(ds.y_test, y_te)
  np.testing.assert_allclose(ds.x_train.mean(), 0.0, atol=1e-4)
  np.testing.assert_allclose(ds.x_train.std(), 1.0, atol=1e-4)


def test_split_is_seeded_and_reproducible(tmp_path):
  fw.write_fashion(tmp_path)
  a = load_dataset("fashion_mnist", data_dir=tmp_path, seed=1, val_fraction=0.3)
  b = load_dataset("fashion_mnist", data_dir=tmp_path, seed=1, val_fraction=0.3)
  c = load_dataset("fashion_mnist", data_dir=tmp_path, seed=2, val_fraction=0.3)
  np.testing.assert_array_equal(a.x_val, b.x_val)
  assert set(_pixel_ids(a, a.x_val)) != set(_pixel_ids(c, c.x_val))
  np.testing.assert_array_equal(a.x_test, b.x_test)
  d = load_dataset("fashion_mnist", data_dir=tmp_path, val_fraction=0.0)
  assert d.x_val.shape == (0, 28, 28, 1) and len(d.x_train) == 50


def test_fashion_missing_dir_error(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(ValueError, match="Fashion-MNIST not found in .*nowhere.*"
                                       "apt-get install dataset-fashion-mnist.*--data-dir") as e:
    load_dataset("fashion_mnist", data_dir=missing)
  assert "\n" not in str(e.value)


def test_fashion_corrupt_files(tmp_path):
  fw.write_fashion(tmp_path)
  path = tmp_path / "train-labels-idx1-ubyte.gz"
  path.write_bytes(gzip.compress(fw.idx_bytes(np.zeros((2, 2), np.uint8))))  # Image magic.
  with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz is corrupt: bad magic "
                                       r"0x00000802; expected 0x00000801.*--data-dir"):
    load_dataset("fashion_mnist", data_dir=tmp_path)
  path.write_bytes(gzip.compress(fw.idx_bytes(np.zeros(50, np.uint8)))[:-9])  # Truncated gzip.
  with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz is unreadable"):
    load_dataset("fashion_mnist", data_dir=tmp_path)
  path.write_bytes(gzip.compress(fw.idx_bytes(np.zeros(50, np.uint8))[:-1]))  # Short data.
  with pytest.raises(ValueError, match="49 data bytes"):
    load_dataset("fashion_mnist", data_dir=tmp_path)
  path.write_bytes(gzip.compress(fw.idx_bytes(np.zeros(7, np.uint8))))  # Count mismatch.
  with pytest.raises(ValueError, match="inconsistent"):
    load_dataset("fashion_mnist", data_dir=tmp_path)


def test_unknown_name_and_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset 'mnist'; choose one of fashion_mnist, "
                                       "digits, cifar10, cifar100, tiny_imagenet"):
    load_dataset("mnist")
  with pytest.raises(ValueError, match="val_fraction"):
    load_dataset("digits", val_fraction=1.0)
  with pytest.raises(ValueError, match="limit"):
    load_dataset("digits", limit=0)


def test_digits_split_and_limit():
  ds = load_dataset("digits")
  assert ds.x_train.shape == (1293, 8, 8, 1) and ds.x_val.shape == (144, 8, 8, 1)
  assert ds.x_test.shape == (360, 8, 8, 1) and ds.num_classes == 10
  assert set(np.unique(ds.y_test)) == set(range(10))
  again = load_dataset("digits")
  np.testing.assert_array_equal(ds.x_test, again.x_test)
  small = load_dataset("digits", limit=100, val_fraction=0.2)
  assert (len(small.x_train), len(small.x_val), len(small.x_test)) == (80, 20, 100)


# ---- CIFAR -------------------------------------------------------------------

def test_cifar10_folder_and_archive(tmp_path):
  folder = fw.write_cifar10(tmp_path / "src")
  ds = load_dataset("cifar10", data_dir=tmp_path / "src", val_fraction=0.25, seed=0)
  assert ds.x_train.shape == (15, 32, 32, 3) and ds.x_val.shape == (5, 32, 32, 3)
  assert ds.x_test.shape == (3, 32, 32, 3) and ds.num_classes == 10
  ids = np.concatenate([_pixel_ids(ds, ds.x_train), _pixel_ids(ds, ds.x_val)])
  assert sorted(ids) == list(range(20))  # Five batches concatenated in order.
  np.testing.assert_array_equal(np.concatenate([ds.y_train, ds.y_val]), ids % 10)
  pix = ds.denormalize(ds.x_test[0, 5, 7]) * 255  # Channel-major rows -> NHWC.
  np.testing.assert_allclose(pix, [100, 100, 200], atol=1e-3)
  np.testing.assert_array_equal(ds.y_test, [7, 7, 7])
  # The extracted folder itself, and the .tar.gz archive, give the same data.
  arch_dir = tmp_path / "arch"
  arch_dir.mkdir()
  fw.make_tar(folder, arch_dir / "cifar-10-python.tar.gz")
  for where in (folder, arch_dir, arch_dir / "cifar-10-python.tar.gz"):
    other = load_dataset("cifar10", data_dir=where, val_fraction=0.25, seed=0)
    np.testing.assert_array_equal(other.x_train, ds.x_train)
    np.testing.assert_array_equal(other.y_test, ds.y_test)


def test_cifar100_fine_labels(tmp_path):
  fw.write_cifar100(tmp_path)
  fw.make_tar(tmp_path / "cifar-100-python", tmp_path / "cifar-100-python.tar.gz")
  for where in (tmp_path, tmp_path / "cifar-100-python.tar.gz"):
    raw = read_raw("cifar100", where)
    assert raw.x_train.shape == (12, 32, 32, 3) and raw.num_classes == 100
    np.testing.assert_array_equal(raw.y_train, [i * 9 % 100 for i in range(12)])
    np.testing.assert_array_equal(raw.y_test, [99] * 4)


def test_cifar_errors(tmp_path):
  with pytest.raises(ValueError, match="CIFAR-10 not found in .*cifar-10-python.tar.gz"):
    load_dataset("cifar10", data_dir=tmp_path)
  folder = fw.write_cifar10(tmp_path)
  (folder / "data_batch_3").write_bytes(b"not a pickle")
  with pytest.raises(ValueError, match="CIFAR-10 batch .*data_batch_3 is corrupt"):
    load_dataset("cifar10", data_dir=tmp_path)
  evil = pickle.dumps({b"data": __import__("os").getcwd}, protocol=2)  # A global: refused.
  (folder / "data_batch_3").write_bytes(evil)
  with pytest.raises(ValueError, match="disallowed global"):
    load_dataset("cifar10", data_dir=tmp_path)
  (folder / "data_batch_3").write_bytes(fw.cifar_pickle(np.zeros((2, 100), np.uint8), [0, 1], b"labels"))
  with pytest.raises(ValueError, match=r"corrupt \(data \(2, 100\)"):
    load_dataset("cifar10", data_dir=tmp_path)
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8bjunk")
  with pytest.raises(ValueError, match="archive .* is unreadable"):
    load_dataset("cifar10", data_dir=tmp_path / "bad")


# ---- Tiny ImageNet -----------------------------------------------------------

def test_tiny_imagenet(tmp_path):
  fw.write_tiny(tmp_path)
  raw = read_raw("tiny_imagenet", tmp_path)
  assert raw.x_train.shape == (6, 8, 8, 3) and raw.x_train.dtype == np.uint8
  np.testing.assert_array_equal(raw.y_train, [0, 0, 0, 1, 1, 1])
  assert raw.num_classes == 2
  red, blue = raw.x_train[0].mean((0, 1)), raw.x_train[3].mean((0, 1))
  assert red[0] > 200 > red[2] and blue[2] > 200 > blue[0]
  np.testing.assert_array_equal(raw.y_test, [1, 0])
  assert raw.x_test.shape == (2, 8, 8, 3)  # The grayscale file became RGB.
  ds = load_dataset("tiny_imagenet", data_dir=tmp_path / "tiny-imagenet-200", val_fraction=0.5)
  assert ds.x_train.shape == (3, 8, 8, 3) and ds.x_val.shape == (3, 8, 8, 3)
  assert len(read_raw("tiny_imagenet", tmp_path, limit=4).x_train) == 4


def test_tiny_imagenet_errors(tmp_path):
  with pytest.raises(ValueError, match="Tiny ImageNet not found in .*tiny-imagenet-200"):
    load_dataset("tiny_imagenet", data_dir=tmp_path)
  top = fw.write_tiny(tmp_path)
  bad = top / "train" / "n01629819" / "images" / "n01629819_1.JPEG"
  bad.write_bytes(b"\xff\xd8 not really a jpeg")
  with pytest.raises(ValueError, match="image .*n01629819_1.JPEG is unreadable"):
    load_dataset("tiny_imagenet", data_dir=tmp_path)
