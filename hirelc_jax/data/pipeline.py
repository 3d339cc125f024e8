"""Batching and augmentation.

`augment` is a jitted JAX function (random crop with zero padding and random
horizontal flip, vectorised over the batch). `batches` is a numpy iterator for
training; `pad_to_batches` pads an evaluation set to whole batches with a mask
so that every example is counted exactly once. Inputs and targets may be
pytrees of arrays with a leading example axis (`num_examples`, `take`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Augmentation settings.

  Attributes:
    crop_pad: pixels of zero padding on each side before a random crop back to
      the input size (0 turns cropping off). Zero is the channel mean after
      normalisation.
    flip: random horizontal flip with probability 1/2.
  """
  crop_pad: int = 4
  flip: bool = True


# Per-dataset defaults: digits are not flip-invariant; Fashion-MNIST items are.
AUGMENT_DEFAULTS = {
    "fashion_mnist": AugmentConfig(crop_pad=2, flip=True),
    "digits": AugmentConfig(crop_pad=1, flip=False),
    "cifar10": AugmentConfig(crop_pad=4, flip=True),
    "cifar100": AugmentConfig(crop_pad=4, flip=True),
    "tiny_imagenet": AugmentConfig(crop_pad=8, flip=True),
}


def num_examples(tree) -> int:
  """The leading-axis length shared by every leaf of `tree`.

  Raises:
    ValueError: when `tree` has no leaves or its leaves differ in length.
  """
  sizes = {int(np.shape(a)[0]) if np.ndim(a) else -1 for a in jax.tree.leaves(tree)}
  if len(sizes) != 1 or -1 in sizes:
    raise ValueError(f"expected arrays sharing a leading example axis, got leading sizes {sorted(sizes)}")
  return sizes.pop()


def take(tree, idx):
  """Every leaf of `tree` indexed along its leading axis (`idx`: a slice or index array)."""
  return jax.tree.map(lambda a: a[idx], tree)


@functools.partial(jax.jit, static_argnames=("crop_pad", "flip"))
def augment(key: jax.Array, images: jax.Array, *, crop_pad: int = 4, flip: bool = True) -> jax.Array:
  """Random crop (after zero padding) and random horizontal flip, per image.

  Args:
    key: PRNG key; the same key gives the same output.
    images: ``[B, H, W, C]``.
    crop_pad: padding per side; each image is cropped back to ``H x W`` at a
      uniform offset in ``[0, 2 * crop_pad]``. 0 disables cropping.
    flip: flip each image left-right with probability 1/2.

  Returns:
    ``[B, H, W, C]``, same dtype.
  """
  b, h, w, c = images.shape
  k_crop, k_flip = jax.random.split(key)
  if crop_pad > 0:
    p = crop_pad
    padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * p + 1)

    def crop(img, off):
      return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    images = jax.vmap(crop)(padded, offsets)
  if flip:
    do_flip = jax.random.bernoulli(k_flip, 0.5, (b,))
    images = jax.vmap(lambda img, f: jnp.where(f, img[:, ::-1], img))(images, do_flip)
  return images


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *,
            key: Optional[Union[jax.Array, int]] = None,
            drop_remainder: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields ``(x[idx], y[idx])`` minibatches for one epoch.

  Args:
    x: ``[N, ...]`` (or a pytree of such arrays).
    y: ``[N, ...]`` (or a pytree).
    batch_size: examples per batch.
    key: a JAX PRNG key or an int seed to shuffle with; None keeps the order.
    drop_remainder: drop the last partial batch (True) or yield it shorter.

  Yields:
    ``([batch_size, ...], [batch_size, ...])`` numpy arrays (the last one may
    be shorter when ``drop_remainder`` is False).
  """
  n, n_y = num_examples(x), num_examples(y)
  if n_y != n:
    raise ValueError(f"x has {n} examples but y has {n_y}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if key is None:
    order = np.arange(n)
  elif isinstance(key, (int, np.integer)):
    order = np.random.default_rng(int(key)).permutation(n)
  else:
    order = np.asarray(jax.random.permutation(key, n))
  stop = n - n % batch_size if drop_remainder else n
  for start in range(0, stop, batch_size):
    idx = order[start:start + batch_size]
    yield take(x, idx), take(y, idx)


def num_batches(n: int, batch_size: int, *, drop_remainder: bool) -> int:
  """Number of batches `batches` yields for ``n`` examples."""
  return n // batch_size if drop_remainder else -(-n // batch_size)


def pad_to_batches(x: np.ndarray, y: np.ndarray,
                   batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Pads ``(x, y)`` with zeros to whole batches and stacks them.

  Args:
    x: ``[N, ...]`` (or a pytree of such arrays).
    y: ``[N, ...]`` (or a pytree).
    batch_size: B.

  Returns:
    ``(xb [K, B, ...], yb [K, B, ...], mask [K, B] bool)`` with
    ``K = ceil(N / B)`` (pytrees of such leaves for pytree inputs); ``mask``
    is True exactly on the N real examples, in order
    (``xb.reshape(-1, ...)[:N] == x``).
  """
  n, n_y = num_examples(x), num_examples(y)
  if n_y != n:
    raise ValueError(f"x has {n} examples but y has {n_y}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  k = -(-n // batch_size)
  pad = k * batch_size - n

  def stack(a):
    a = np.asarray(a)
    a = np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a
    return a.reshape((k, batch_size) + a.shape[1:])

  mask = (np.arange(k * batch_size) < n).reshape(k, batch_size)
  return jax.tree.map(stack, x), jax.tree.map(stack, y), mask
