"""The README's Python-API example runs end to end on a user's own Flax model."""

import importlib.util
import pathlib

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
EXAMPLE = EXAMPLES / "custom_model.py"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """One cache for the examples: the two MLPs' agents have the same shapes, so the second
  example reuses the first one's compiled programs."""
  return tmp_path_factory.mktemp("api_cache")


def one_cycle(**overrides):
  """The smoke schedule with one search cycle: the examples' whole path at half the cost."""
  from hirelc_jax import config as C
  return C.override(C.preset("smoke"), {"search.cycles": "1", **overrides})


def test_custom_model_example(tmp_path, monkeypatch, cache):
  monkeypatch.setenv("HIRELC_JAX_CACHE", str(cache))
  spec = importlib.util.spec_from_file_location("custom_model", EXAMPLE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  report = module.main(str(tmp_path / "out"), one_cycle())
  assert report["model"] == "mlp" and report["dataset"] == "custom"
  assert [k["name"] for k in report["plan"][0]] == ["fc1", "fc2"]
  assert report["baseline_accuracy"] > 85.0
  assert report["compression_ratio"] > 1.5
  assert (tmp_path / "out" / "report.json").is_file()


def test_custom_nnx_model_example_and_its_rebuilt_module(tmp_path, monkeypatch, cache):
  """An NNX module in, its compressed weights back in an NNX module whose test accuracy is the
  report's final accuracy (the same weights, the same forward pass)."""
  monkeypatch.setenv("HIRELC_JAX_CACHE", str(cache))
  spec = importlib.util.spec_from_file_location("custom_nnx_model", EXAMPLES / "custom_nnx_model.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  report, rebuilt_accuracy = module.main(str(tmp_path / "out"), one_cycle())
  assert report["model"] == "nnx_mlp" and [k["name"] for k in report["plan"][0]] == ["fc1", "fc2"]
  assert report["baseline_accuracy"] > 85.0 and report["compression_ratio"] > 1.5
  assert rebuilt_accuracy == pytest.approx(report["final_accuracy"], abs=1e-6)


def test_custom_sequence_model_example_with_its_own_loss_and_metric(tmp_path, monkeypatch, cache):
  """Token sequences in a pytree, pytree targets, the user's loss and metric: the run reports
  the user's metric by name, and the exported weights score the reported final metric."""
  monkeypatch.setenv("HIRELC_JAX_CACHE", str(cache))
  spec = importlib.util.spec_from_file_location("custom_sequence_model", EXAMPLES / "custom_sequence_model.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  # The integer program proposes (the agents' path is the other examples'): what is under test
  # is the task's path through sensitivity, the error table, plan evaluation and fine-tuning.
  report, rebuilt = module.main(str(tmp_path / "out"), one_cycle(**{"search.proposer": "ilp"}))
  assert report["model"] == "seq_transformer" and report["dataset"] == "token_order"
  assert report["metric"] == "accuracy (user metric)"
  assert [k["name"] for k in report["plan"][0]] == ["qkv", "proj", "fc1", "fc2"]
  assert report["baseline_accuracy"] > 90.0 and report["compression_ratio"] > 1.5
  assert rebuilt == pytest.approx(report["final_accuracy"], abs=1e-4)


def test_nnx_parameters_must_fit_the_module():
  from flax import nnx
  from hirelc_jax import nnx_bridge
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  apply_fn, variables = nnx_bridge.split(model)
  assert set(variables["params"]) == {"kernel", "bias"}
  rebuilt = nnx_bridge.merge(model, {"kernel": variables["params"]["kernel"] * 0, "bias": variables["params"]["bias"]})
  kernel = lambda m: np.asarray(nnx_bridge.split(m)[1]["params"]["kernel"])
  assert np.all(kernel(rebuilt) == 0) and np.any(kernel(model) != 0)      # the user's module untouched
  with pytest.raises(ValueError, match="parameters lack bias of the NNX module"):
    nnx_bridge.merge(model, {"kernel": variables["params"]["kernel"]})


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
