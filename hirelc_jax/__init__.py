"""hirelc_jax: hierarchical RL search for joint quantization and pruning, in JAX.

The command line is `python -m hirelc_jax.run`; the Python API for your own
model is `hirelc_jax.compress` (see README.md).
"""

import os as _os

__version__ = "0.1.0"

# compression/, agents/ and configs/ sit beside this folder in the repository and are
# mapped under hirelc_jax by pyproject's package-dir. A wheel places them inside the
# package and an editable install maps them with its own import finder, but Python
# started in a checkout's root imports this folder from the working directory, where
# they are not beneath it. Adding the checkout's root to this package's search path is
# the simplest mechanism that serves a checkout, an editable install and a wheel alike:
# it is a no-op in a wheel (the subpackages are inside), needs no symlinks (lost on
# Windows and in sdists) and puts no top-level `compression` or `agents` on sys.path.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if (not _os.path.isdir(_os.path.join(__path__[0], "compression"))
    and _os.path.isfile(_os.path.join(_root, "compression", "__init__.py"))):
  __path__.append(_root)


def compress(*args, **kwargs):
  """See `hirelc_jax.api.compress` (imported lazily: importing the package stays cheap)."""
  from hirelc_jax.api import compress as _compress
  return _compress(*args, **kwargs)


def dataset_from_arrays(*args, **kwargs):
  """See `hirelc_jax.api.dataset_from_arrays`."""
  from hirelc_jax.api import dataset_from_arrays as _from_arrays
  return _from_arrays(*args, **kwargs)


def nnx_module(*args, **kwargs):
  """See `hirelc_jax.api.nnx_module`."""
  from hirelc_jax.api import nnx_module as _nnx_module
  return _nnx_module(*args, **kwargs)
