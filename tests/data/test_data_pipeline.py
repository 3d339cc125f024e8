"""augment, batches and pad_to_batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hirelc_jax.data import AUGMENT_DEFAULTS, DATASET_NAMES, augment, batches, num_batches, pad_to_batches


def _images(b=6, h=5, w=4, c=2):
  return jnp.arange(b * h * w * c, dtype=jnp.float32).reshape(b, h, w, c) + 1.0


def test_augment_shape_dtype_and_determinism():
  x = _images()
  key = jax.random.key(0)
  a, b = augment(key, x, crop_pad=2, flip=True), augment(key, x, crop_pad=2, flip=True)
  assert a.shape == x.shape and a.dtype == x.dtype
  np.testing.assert_array_equal(a, b)
  c = augment(jax.random.key(1), x, crop_pad=2, flip=True)
  assert not np.array_equal(a, c)
  np.testing.assert_array_equal(augment(key, x, crop_pad=0, flip=False), x)


def test_augment_flip_and_crop_semantics():
  x = np.asarray(_images(b=16))
  out = np.asarray(augment(jax.random.key(3), jnp.asarray(x), crop_pad=0, flip=True))
  flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, x)]
  kept = [np.array_equal(o, i) for o, i in zip(out, x)]
  assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
  p = 1
  out = np.asarray(augment(jax.random.key(4), jnp.asarray(x), crop_pad=p, flip=False))
  padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  h, w = x.shape[1:3]
  for o, pi in zip(out, padded):
    windows = [pi[i:i + h, j:j + w] for i in range(2 * p + 1) for j in range(2 * p + 1)]
    assert any(np.array_equal(o, win) for win in windows)


def test_augment_defaults_cover_datasets():
  assert set(AUGMENT_DEFAULTS) == set(DATASET_NAMES)
  assert not AUGMENT_DEFAULTS["digits"].flip


def test_batches_order_shuffle_and_remainder():
  x, y = np.arange(10)[:, None] * np.ones((1, 3)), np.arange(10)
  got = list(batches(x, y, 4))
  assert [len(b[1]) for b in got] == [4, 4] == [4] * num_batches(10, 4, drop_remainder=True)
  np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), np.arange(8))
  got = list(batches(x, y, 4, drop_remainder=False))
  assert [len(b[1]) for b in got] == [4, 4, 2] and num_batches(10, 4, drop_remainder=False) == 3
  key = jax.random.key(5)
  a = np.concatenate([b[1] for b in batches(x, y, 3, key=key, drop_remainder=False)])
  b = np.concatenate([b[1] for b in batches(x, y, 3, key=key, drop_remainder=False)])
  np.testing.assert_array_equal(a, b)
  assert sorted(a) == list(range(10)) and not np.array_equal(a, np.arange(10))
  for xb, yb in batches(x, y, 3, key=7):
    np.testing.assert_array_equal(xb[:, 0], yb)  # x and y stay paired.


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 40), batch_size=st.integers(1, 9))
def test_pad_to_batches_masks_exactly_the_padding(n, batch_size):
  x = np.arange(1, n + 1, dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32)
  y = np.arange(n, dtype=np.int32)
  xb, yb, mask = pad_to_batches(x, y, batch_size)
  k = -(-n // batch_size)
  assert xb.shape == (k, batch_size, 2, 3) and yb.shape == (k, batch_size)
  assert mask.shape == (k, batch_size) and mask.dtype == bool
  assert int(mask.sum()) == n
  np.testing.assert_array_equal(xb.reshape(-1, 2, 3)[mask.reshape(-1)], x)
  np.testing.assert_array_equal(yb.reshape(-1)[:n], y)
  assert not xb.reshape(-1, 2, 3)[~mask.reshape(-1)].any()
