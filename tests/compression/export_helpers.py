"""Comparisons shared by the export tests."""

import numpy as np
from flax import traverse_util


def assert_same(compressed, loaded):
  """Equal leaf by leaf (dtype too); bitwise except the sign of zeros in all-zero columns."""
  a, b = traverse_util.flatten_dict(compressed), traverse_util.flatten_dict(loaded)
  assert set(a) == set(b)
  for path, x in a.items():
    x, y = np.asarray(x), b[path]
    assert x.dtype == y.dtype and x.shape == y.shape, path
    np.testing.assert_array_equal(x, y, err_msg=str(path))
    ux, uy = (v.view(f"u{v.dtype.itemsize}") for v in (x, y))
    cols = y.reshape(-1, y.shape[-1]) if y.ndim else y.reshape(1, 1)
    zero_col = np.broadcast_to(~np.any(cols != 0, axis=0), cols.shape).reshape(y.shape)
    assert np.all((ux == uy) | ((x == 0) & zero_col)), path
