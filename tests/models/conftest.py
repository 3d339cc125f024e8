"""Shared fixtures for the model tests."""

from __future__ import annotations

import jax
import pytest

from hirelc_jax import models


@pytest.fixture(scope="session")
def vit_mu():
  """``(spec, variables)`` of a vit_mu for 28x28x1 inputs and 10 classes."""
  spec = models.build_model("vit_mu", num_classes=10, image_shape=(28, 28, 1))
  return spec, models.init_params(spec, jax.random.key(0))


@pytest.fixture(scope="session")
def vit_mu_apply(vit_mu):
  """``jit(spec.module.apply)`` for the vit_mu fixture (compiled once per session)."""
  return jax.jit(vit_mu[0].module.apply)

