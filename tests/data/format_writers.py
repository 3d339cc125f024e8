"""Writers for tiny datasets in the exact on-disk formats (imported by the data tests)."""

from __future__ import annotations

import gzip
import pickle
import tarfile
from pathlib import Path

import numpy as np


def idx_bytes(arr: np.ndarray) -> bytes:
  """IDX encoding of a uint8 array: 00 00 08 ndim, big-endian uint32 dims, data."""
  header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
  return header + np.ascontiguousarray(arr, np.uint8).tobytes()


def fashion_arrays(n_train: int = 50, n_test: int = 20):
  """Images whose pixels all equal the example's index (so it can be recovered), labels i % 10."""
  x_tr = np.broadcast_to(np.arange(n_train, dtype=np.uint8)[:, None, None], (n_train, 28, 28)).copy()
  x_tr[:, 0, 0] = 255  # Some spread in every image.
  x_te = np.broadcast_to(np.arange(n_test, dtype=np.uint8)[:, None, None], (n_test, 28, 28)).copy()
  return x_tr, (np.arange(n_train) % 10).astype(np.uint8), x_te, (np.arange(n_test) * 3 % 10).astype(np.uint8)


def write_fashion(root: Path, *, gz: bool = True, **kw) -> tuple[np.ndarray, ...]:
  root.mkdir(parents=True, exist_ok=True)
  arrays = fashion_arrays(**kw)
  names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
           "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
  for name, arr in zip(names, arrays):
    data = idx_bytes(arr)
    if gz:
      (root / f"{name}.gz").write_bytes(gzip.compress(data))
    else:
      (root / name).write_bytes(data)
  return arrays


def cifar_pickle(data: np.ndarray, labels, label_key: bytes, extra: dict | None = None) -> bytes:
  """A batch pickled like the real (Python 2, numpy<2) files: protocol 2, bytes keys."""
  d = {b"batch_label": b"batch", label_key: labels, b"data": data,
       b"filenames": [b"img_%d.png" % i for i in range(len(data))]}
  d.update(extra or {})
  raw = pickle.dumps(d, protocol=2)
  return raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def cifar_rows(n: int, start: int) -> np.ndarray:
  """[n, 3072] rows: R plane = example id, G plane = 100, B plane = 200."""
  rows = np.zeros((n, 3, 32, 32), np.uint8)
  rows[:, 0] = (start + np.arange(n))[:, None, None]
  rows[:, 1], rows[:, 2] = 100, 200
  return rows.reshape(n, 3072)


def write_cifar10(root: Path, *, per_batch: int = 4, n_test: int = 3) -> Path:
  folder = root / "cifar-10-batches-py"
  folder.mkdir(parents=True)
  for b in range(5):
    start = b * per_batch
    labels = [int(i % 10) for i in range(start, start + per_batch)]
    (folder / f"data_batch_{b + 1}").write_bytes(
        cifar_pickle(cifar_rows(per_batch, start), labels, b"labels"))
  (folder / "test_batch").write_bytes(
      cifar_pickle(cifar_rows(n_test, 100), [7] * n_test, b"labels"))
  (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"x"] * 10}, protocol=2))
  return folder


def write_cifar100(root: Path, *, n_train: int = 12, n_test: int = 4) -> Path:
  folder = root / "cifar-100-python"
  folder.mkdir(parents=True)
  fine = [int(i * 9 % 100) for i in range(n_train)]
  coarse = [f // 5 for f in fine]
  (folder / "train").write_bytes(cifar_pickle(cifar_rows(n_train, 0), fine, b"fine_labels",
                                              {b"coarse_labels": coarse}))
  (folder / "test").write_bytes(cifar_pickle(cifar_rows(n_test, 50), [99] * n_test, b"fine_labels",
                                             {b"coarse_labels": [19] * n_test}))
  return folder


def make_tar(folder: Path, archive: Path) -> Path:
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(folder, arcname=folder.name)
  return archive


TINY_COLORS = {"n01443537": (255, 0, 0), "n01629819": (0, 0, 255)}


def write_tiny(root: Path, *, per_class: int = 3, size: int = 8) -> Path:
  """A 2-class tiny-imagenet-200 folder: solid red class 0, solid blue class 1."""
  from PIL import Image
  top = root / "tiny-imagenet-200"
  wnids = list(TINY_COLORS)
  top.mkdir(parents=True)
  (top / "wnids.txt").write_text("\n".join(wnids) + "\n")
  for w in wnids:
    folder = top / "train" / w / "images"
    folder.mkdir(parents=True)
    for i in range(per_class):
      Image.new("RGB", (size, size), TINY_COLORS[w]).save(folder / f"{w}_{i}.JPEG", "JPEG")
    (top / "train" / w / f"{w}_boxes.txt").write_text("")
  (top / "val" / "images").mkdir(parents=True)
  lines = []
  for i, w in enumerate([wnids[1], wnids[0]]):
    name = f"val_{i}.JPEG"
    img = Image.new("RGB", (size, size), TINY_COLORS[w])
    if i == 1:
      img = img.convert("L")  # A grayscale file, as some real ones are.
    img.save(top / "val" / "images" / name, "JPEG")
    lines.append(f"{name}\t{w}\t0\t0\t{size - 1}\t{size - 1}")
  (top / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
  return top

