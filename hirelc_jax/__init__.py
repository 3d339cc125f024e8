"""hirelc_jax: hierarchical RL search for joint quantization and pruning, in JAX.

The command line is `python -m hirelc_jax.run`; the Python API for your own
model is `hirelc_jax.compress` (see README.md).
"""

__version__ = "0.1.0"


def compress(*args, **kwargs):
  """See `hirelc_jax.api.compress` (imported lazily: importing the package stays cheap)."""
  from hirelc_jax.api import compress as _compress
  return _compress(*args, **kwargs)


def dataset_from_arrays(*args, **kwargs):
  """See `hirelc_jax.api.dataset_from_arrays`."""
  from hirelc_jax.api import dataset_from_arrays as _from_arrays
  return _from_arrays(*args, **kwargs)
