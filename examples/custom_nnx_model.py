"""Compress your own Flax NNX model with hirelc_jax: a two-block MLP on scikit-learn's digits.

Run: python examples/custom_nnx_model.py [OUTPUT_DIR]
"""

import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

import hirelc_jax
from hirelc_jax import config as C


class Block(nnx.Module):
  def __init__(self, width: int, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(width, 2 * width, rngs=rngs)
    self.fc2 = nnx.Linear(2 * width, width, rngs=rngs)

  def __call__(self, x):
    return x + self.fc2(nnx.relu(self.fc1(x)))


class MLP(nnx.Module):
  """Flattened 8x8 digits -> 2 residual blocks -> 10 logits."""

  def __init__(self, rngs: nnx.Rngs):
    self.embed = nnx.Linear(64, 64, rngs=rngs)
    self.blocks = nnx.List([Block(64, rngs) for _ in range(2)])
    self.head = nnx.Linear(64, 10, rngs=rngs)

  def __call__(self, x):
    x = self.embed(x.reshape(x.shape[0], -1))
    for block in self.blocks:
      x = block(x)
    return self.head(x)


def train(model, x, y, steps=300):
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, xb, yb):
    loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()
    optimizer.update(model, nnx.grad(loss)(model))

  rng = np.random.default_rng(0)
  for _ in range(steps):
    idx = rng.integers(0, len(x), 64)
    step(model, optimizer, jnp.asarray(x[idx]), jnp.asarray(y[idx]))
  return model


def main(output_dir="runs/custom_nnx_mlp", config=None):
  images, labels = load_digits(return_X_y=True)
  images = (images.reshape(-1, 8, 8, 1) / 16.0 - 0.3).astype(np.float32)
  data = hirelc_jax.dataset_from_arrays(images[:1500], labels[:1500], images[1500:], labels[1500:])
  model = train(MLP(nnx.Rngs(0)), data.x_train, data.y_train)
  report = hirelc_jax.compress(
      model, None, data,
      kernel_rules=[(r"blocks/(?P<block>\d+)/fc1/kernel$", "fc1"),
                    (r"blocks/(?P<block>\d+)/fc2/kernel$", "fc2")],
      kernel_names=["fc1", "fc2"],
      config=config or C.preset("smoke"), output_dir=output_dir, name="nnx_mlp")
  compressed = hirelc_jax.nnx_module(model, pathlib.Path(output_dir) / "model_export.npz")
  accuracy = 100.0 * float(np.mean(np.argmax(np.asarray(compressed(data.x_test)), -1) == data.y_test))
  print(f"accuracy {report['baseline_accuracy']:.1f}% -> {report['final_accuracy']:.1f}% "
        f"(the rebuilt NNX module: {accuracy:.1f}%), compression {report['compression_ratio']:.2f}x")
  return report, accuracy


if __name__ == "__main__":
  main(*sys.argv[1:])
