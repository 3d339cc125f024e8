"""Fixtures shared across the suite."""

import pytest


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory):
  """One $HIRELC_JAX_CACHE for every smoke run of a test worker's session (pytest-xdist gives
  each worker its own): the vit_mu baseline is trained and its programs compiled once per
  worker, not once per file."""
  return tmp_path_factory.mktemp("smoke_cache")
