"""Compress your own Flax model with hirelc_jax: a two-block MLP on scikit-learn's digits.

Run: python examples/custom_model.py [OUTPUT_DIR]
"""

import sys

import flax.linen as nn
import jax
import numpy as np
import optax
from sklearn.datasets import load_digits

import hirelc_jax
from hirelc_jax import config as C


class Block(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(2 * self.width, name="fc1")(x))
    return x + nn.Dense(self.width, name="fc2")(h)


class MLP(nn.Module):
  """Flattened 8x8 digits -> 2 residual blocks -> 10 logits."""

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(64, name="embed")(x.reshape(x.shape[0], -1))
    for i in range(2):
      x = Block(64, name=f"block_{i}")(x)
    return nn.Dense(10, name="head")(x)


def train(model, x, y, steps=300):
  variables = model.init(jax.random.key(0), x[:1])
  tx = optax.adam(3e-3)
  opt = tx.init(variables)

  @jax.jit
  def step(v, o, xb, yb):
    loss = lambda v: optax.softmax_cross_entropy_with_integer_labels(model.apply(v, xb), yb).mean()
    g = jax.grad(loss)(v)
    u, o = tx.update(g, o)
    return optax.apply_updates(v, u), o

  rng = np.random.default_rng(0)
  for _ in range(steps):
    idx = rng.integers(0, len(x), 64)
    variables, opt = step(variables, opt, x[idx], y[idx])
  return variables


def main(output_dir="runs/custom_mlp", config=None):
  images, labels = load_digits(return_X_y=True)
  images = (images.reshape(-1, 8, 8, 1) / 16.0 - 0.3).astype(np.float32)
  data = hirelc_jax.dataset_from_arrays(images[:1500], labels[:1500], images[1500:], labels[1500:])
  model = MLP()
  variables = train(model, data.x_train, data.y_train)
  report = hirelc_jax.compress(
      model.apply, variables, data,
      kernel_rules=[(r"block_(?P<block>\d+)/fc1/kernel$", "fc1"),
                    (r"block_(?P<block>\d+)/fc2/kernel$", "fc2")],
      kernel_names=["fc1", "fc2"],
      config=config or C.preset("smoke"), output_dir=output_dir, name="mlp")
  print(f"accuracy {report['baseline_accuracy']:.1f}% -> {report['final_accuracy']:.1f}%, "
        f"compression {report['compression_ratio']:.2f}x")
  return report


if __name__ == "__main__":
  main(*sys.argv[1:])
