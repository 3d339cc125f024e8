"""The README's Python-API example runs end to end on a user's own Flax model."""

import importlib.util
import pathlib

import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "custom_model.py"


def test_custom_model_example(tmp_path, monkeypatch):
  monkeypatch.setenv("HIRELC_JAX_CACHE", str(tmp_path / "cache"))
  spec = importlib.util.spec_from_file_location("custom_model", EXAMPLE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  report = module.main(str(tmp_path / "out"))
  assert report["model"] == "mlp" and report["dataset"] == "custom"
  assert [k["name"] for k in report["plan"][0]] == ["fc1", "fc2"]
  assert report["baseline_accuracy"] > 85.0
  assert report["compression_ratio"] > 1.5
  assert (tmp_path / "out" / "report.json").is_file()


def test_bad_rules_fail_before_any_work(tmp_path):
  import hirelc_jax
  import numpy as np
  x = np.zeros((20, 8, 8, 1), np.float32)
  y = np.arange(20) % 2
  data = hirelc_jax.dataset_from_arrays(x, y, x, y)
  with pytest.raises(ValueError, match="no parameter path matched"):
    hirelc_jax.compress(lambda v, x: x, {"params": {"w": {"kernel": np.ones((2, 2))}}}, data,
                        kernel_rules=[(r"block_(?P<block>\d+)/fc/kernel", "fc")],
                        kernel_names=["fc"], output_dir=tmp_path / "o")
