"""Fixtures shared across the suite."""

import pytest


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory):
  """One $HIRELC_JAX_CACHE for every smoke run of the session (the packaging test's and the
  pipeline's): the vit_mu baseline is trained and its programs compiled once, not per file."""
  return tmp_path_factory.mktemp("smoke_cache")
