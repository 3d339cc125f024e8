"""Readers for the on-disk dataset formats, returning raw uint8 images.

Every reader returns a `RawData` (images ``[N, H, W, C]`` as stored, labels
int32) or raises ValueError with one line naming the path and how to provide
the data. Nothing is ever downloaded.

Formats:
  * IDX (Fashion-MNIST): big-endian header ``00 00 <dtype> <ndim>``, ``ndim``
    uint32 sizes, then the data; gzipped or not.
  * CIFAR python pickles: dicts with ``data`` ``[N, 3072]`` uint8 (channel-major
    32x32) and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100), in the
    extracted folder or the ``.tar.gz`` archive.
  * Tiny ImageNet: ``wnids.txt``, ``train/<wnid>/images/*.JPEG``,
    ``val/images/*.JPEG`` with ``val/val_annotations.txt``.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class RawData:
  """A dataset as stored: train and test images and labels.

  Attributes:
    x_train: ``[N, H, W, C]`` pixels (uint8, or float32 for digits).
    y_train: ``[N]`` int32 labels.
    x_test: ``[M, H, W, C]``.
    y_test: ``[M]`` int32.
    num_classes: number of classes.
    scale: the pixel value that maps to 1.0 (255 for uint8 images).
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  scale: float


def subsample_indices(n: int, limit: Optional[int]) -> np.ndarray:
  """Sorted indices of a fixed (seed 0) random subset of ``min(n, limit)`` items; all if no limit."""
  if limit is None or limit >= n:
    return np.arange(n)
  return np.sort(np.random.default_rng(0).permutation(n)[:limit])


# ---- IDX ---------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_IMAGES_MAGIC = 0x00000803  # ubyte, 3 dims.
IDX_LABELS_MAGIC = 0x00000801  # ubyte, 1 dim.


def read_idx(path: Path, *, magic: Optional[int] = None) -> np.ndarray:
  """Reads an IDX file (gzipped or not, told apart by content).

  Args:
    path: the file.
    magic: the expected 4-byte magic number (e.g. `IDX_IMAGES_MAGIC`), or None.

  Returns:
    The array, in native byte order, shaped as the header says.

  Raises:
    ValueError: unreadable file, bad magic, or a data size that disagrees with the header.
  """
  try:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
      raw = gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:
    raise ValueError(f"IDX file {path} is unreadable ({type(e).__name__}: {e})") from e
  if len(raw) < 4:
    raise ValueError(f"IDX file {path} is corrupt: {len(raw)} bytes, too short for a header")
  got = int.from_bytes(raw[:4], "big")
  if raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES or (magic is not None and got != magic):
    want = f"; expected 0x{magic:08x}" if magic is not None else ""
    raise ValueError(f"IDX file {path} is corrupt: bad magic 0x{got:08x}{want}")
  dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f"IDX file {path} is corrupt: truncated header")
  dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  want_bytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  if len(raw) - header != want_bytes:
    raise ValueError(f"IDX file {path} is corrupt: {len(raw) - header} data bytes, header "
                     f"{dims} needs {want_bytes}")
  arr = np.frombuffer(raw, dtype, offset=header).reshape(dims)
  return arr.astype(dtype.newbyteorder("="), copy=True)


FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_HINT = ("install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
                "or pass --data-dir DIR holding the four IDX files")


def read_fashion_mnist(root: Path) -> RawData:
  """Reads the four Fashion-MNIST IDX files (``.gz`` or plain) from ``root``."""
  paths = []
  for base in FASHION_FILES:
    found = [root / f"{base}{ext}" for ext in (".gz", "") if (root / f"{base}{ext}").is_file()]
    if not found:
      raise ValueError(f"Fashion-MNIST not found in {root} (no {base}[.gz]): {FASHION_HINT}")
    paths.append(found[0])
  arrays = []
  for path, magic in zip(paths, (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC) * 2):
    try:
      arrays.append(read_idx(path, magic=magic))
    except ValueError as e:
      raise ValueError(f"{e}: {FASHION_HINT}") from e
  x_train, y_train, x_test, y_test = arrays
  for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
    if x.shape[1:] != (28, 28) or len(x) != len(y) or (y.size and y.max() >= 10):
      raise ValueError(f"Fashion-MNIST {split} files in {root} are inconsistent (images "
                       f"{x.shape}, labels {y.shape}): {FASHION_HINT}")
  return RawData(x_train[..., None], y_train.astype(np.int32), x_test[..., None],
                 y_test.astype(np.int32), num_classes=10, scale=255.0)


# ---- CIFAR -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CifarLayout:
  """Where one CIFAR variant keeps its batches."""
  title: str
  folder: str
  archive: str
  train: tuple[str, ...]
  test: tuple[str, ...]
  label_key: str
  num_classes: int


CIFAR_LAYOUTS = {
    "cifar10": CifarLayout("CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                           tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                           "labels", 10),
    "cifar100": CifarLayout("CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz",
                            ("train",), ("test",), "fine_labels", 100),
}


class _CifarUnpickler(pickle.Unpickler):
  """Unpickles only plain containers and numpy arrays (no arbitrary globals)."""
  _ALLOWED = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
              ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar")}

  def find_class(self, module, name):
    if module.startswith("numpy.core"):  # Pickles written by numpy < 2 (the real files).
      module = "numpy._core" + module[len("numpy.core"):]
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"disallowed global {module}.{name}")
    return super().find_class(module, name)


def _cifar_hint(layout: CifarLayout) -> str:
  return (f"pass --data-dir DIR holding {layout.archive} or its extracted {layout.folder} folder "
          f"(from https://www.cs.toronto.edu/~kriz/cifar.html)")


def _cifar_files(root: Path, layout: CifarLayout) -> tuple[Path, dict[str, bytes]]:
  """Finds the CIFAR batches under ``root``; returns the source and ``{name: bytes}``."""
  names = layout.train + layout.test
  for folder in (root, root / layout.folder):
    if folder.is_dir() and all((folder / n).is_file() for n in names):
      return folder, {n: (folder / n).read_bytes() for n in names}
  archive = root if root.is_file() else root / layout.archive
  if not archive.is_file():
    raise ValueError(f"{layout.title} not found in {root}: {_cifar_hint(layout)}")
  try:
    with tarfile.open(archive, "r:*") as tar:
      members = {Path(m.name).name: m for m in tar.getmembers()
                 if m.isfile() and Path(m.name).parent.name == layout.folder}
      missing = [n for n in names if n not in members]
      if missing:
        raise ValueError(f"{layout.title} archive {archive} lacks {layout.folder}/{missing[0]}: "
                         f"{_cifar_hint(layout)}")
      return archive, {n: tar.extractfile(members[n]).read() for n in names}
  except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
    raise ValueError(f"{layout.title} archive {archive} is unreadable ({type(e).__name__}): "
                     f"{_cifar_hint(layout)}") from e


def _cifar_batch(data: bytes, where: str, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
  """Parses one pickled batch into ``([N, 32, 32, 3] uint8, [N] int32)``."""
  try:
    d = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    x = np.asarray(d["data"], dtype=np.uint8)
    y = np.asarray(d[layout.label_key], dtype=np.int64)
  except Exception as e:  # noqa: BLE001  (pickle raises many types on bad bytes)
    raise ValueError(f"{layout.title} batch {where} is corrupt ({type(e).__name__}: {e}): "
                     f"{_cifar_hint(layout)}") from e
  if x.ndim != 2 or x.shape[1] != 3072 or y.shape != (len(x),) or \
      (y.size and (y.min() < 0 or y.max() >= layout.num_classes)):
    raise ValueError(f"{layout.title} batch {where} is corrupt (data {x.shape}, labels {y.shape}): "
                     f"{_cifar_hint(layout)}")
  return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y.astype(np.int32)


def read_cifar(root: Path, name: str) -> RawData:
  """Reads CIFAR-10 (``name="cifar10"``) or CIFAR-100 (fine labels) from a folder or archive."""
  layout = CIFAR_LAYOUTS[name]
  source, files = _cifar_files(root, layout)

  def split(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    parts = [_cifar_batch(files[n], f"{source}/{n}", layout) for n in names]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

  x_train, y_train = split(layout.train)
  x_test, y_test = split(layout.test)
  return RawData(x_train, y_train, x_test, y_test, layout.num_classes, 255.0)


# ---- Tiny ImageNet -----------------------------------------------------------

TINY_FOLDER = "tiny-imagenet-200"
TINY_HINT = (f"pass --data-dir DIR holding the extracted {TINY_FOLDER} folder "
             "(wnids.txt, train/<wnid>/images/*.JPEG, val/images, val/val_annotations.txt)")
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def _tiny_root(root: Path) -> Path:
  for cand in (root, root / TINY_FOLDER):
    if (cand / "wnids.txt").is_file():
      return cand
  raise ValueError(f"Tiny ImageNet not found in {root}: {TINY_HINT}")


def _decode_images(paths: Sequence[Path]) -> np.ndarray:
  """Decodes image files to ``[N, H, W, 3]`` uint8; all must share one size."""
  from PIL import Image
  out = None
  for i, p in enumerate(paths):
    try:
      with Image.open(p) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # noqa: BLE001  (PIL raises OSError, UnidentifiedImageError, ...)
      raise ValueError(f"Tiny ImageNet image {p} is unreadable ({type(e).__name__}): {TINY_HINT}") from e
    if out is None:
      out = np.empty((len(paths),) + arr.shape, np.uint8)
    if arr.shape != out.shape[1:]:
      raise ValueError(f"Tiny ImageNet image {p} has shape {arr.shape}, expected {out.shape[1:]}")
    out[i] = arr
  return out if out is not None else np.zeros((0, 64, 64, 3), np.uint8)


def read_tiny_imagenet(root: Path, *, limit: Optional[int] = None) -> RawData:
  """Reads Tiny ImageNet; its labelled ``val`` split serves as the test set.

  Args:
    root: the ``tiny-imagenet-200`` folder or its parent.
    limit: decode at most this many train and this many test images (a fixed
      random subset, see `subsample_indices`).
  """
  root = _tiny_root(root)
  wnids = [w.strip() for w in (root / "wnids.txt").read_text().splitlines() if w.strip()]
  index = {w: i for i, w in enumerate(wnids)}
  if not wnids or len(index) != len(wnids):
    raise ValueError(f"Tiny ImageNet {root / 'wnids.txt'} is empty or has duplicates: {TINY_HINT}")
  train: list[tuple[Path, int]] = []
  for w in wnids:
    folder = root / "train" / w / "images"
    if not folder.is_dir():
      raise ValueError(f"Tiny ImageNet folder {folder} is missing: {TINY_HINT}")
    train += [(p, index[w]) for p in sorted(folder.iterdir()) if p.suffix.lower() in _IMAGE_SUFFIXES]
  ann = root / "val" / "val_annotations.txt"
  if not ann.is_file():
    raise ValueError(f"Tiny ImageNet {ann} is missing: {TINY_HINT}")
  test: list[tuple[Path, int]] = []
  for n, line in enumerate(ann.read_text().splitlines()):
    fields = line.split("\t")
    if not line.strip():
      continue
    if len(fields) < 2 or fields[1] not in index:
      raise ValueError(f"Tiny ImageNet {ann} line {n + 1} is corrupt: {line[:60]!r}")
    test.append((root / "val" / "images" / fields[0], index[fields[1]]))
  if not train or not test:
    raise ValueError(f"Tiny ImageNet in {root} has no train or val images: {TINY_HINT}")
  train = [train[i] for i in subsample_indices(len(train), limit)]
  test = [test[i] for i in subsample_indices(len(test), limit)]
  x_train = _decode_images([p for p, _ in train])
  x_test = _decode_images([p for p, _ in test])
  if x_train.shape[1:] != x_test.shape[1:]:
    raise ValueError(f"Tiny ImageNet in {root}: train images {x_train.shape[1:]} and val images "
                     f"{x_test.shape[1:]} differ in size")
  return RawData(x_train, np.array([c for _, c in train], np.int32), x_test,
                 np.array([c for _, c in test], np.int32), len(wnids), 255.0)
