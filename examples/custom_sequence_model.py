"""Compress a token-sequence model with its own loss and metric: a 2-layer transformer
classifier on a synthetic order task.

Each example is a padded sequence of 4-16 token ids (0 is padding) holding one token 1 and one
token 2 among random tokens 3..11; the class is whether the 1 comes first. Inputs are a pytree
{'tokens': int32 [N, 16], 'mask': bool [N, 16]}, targets {'label': int32 [N]}; the loss and
the per-example metric are the user's own functions of (logits, targets).

Run: python examples/custom_sequence_model.py [OUTPUT_DIR]
"""

import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import hirelc_jax
from hirelc_jax import config as C
from hirelc_jax.compression.export import load_variables

VOCAB, LENGTH, CLASSES, DIM = 12, 16, 2, 32


def make_data(n, seed):
  """`n` sequences and their labels (1 where token 1 precedes token 2)."""
  rng = np.random.default_rng(seed)
  tokens, mask = np.zeros((n, LENGTH), np.int32), np.zeros((n, LENGTH), bool)
  label = np.zeros(n, np.int32)
  for i, length in enumerate(rng.integers(4, LENGTH + 1, n)):
    seq = rng.integers(3, VOCAB, length)
    first, second = rng.choice(length, 2, replace=False)
    seq[first], seq[second] = 1, 2
    tokens[i, :length], mask[i, :length], label[i] = seq, True, first < second
  return {"tokens": tokens, "mask": mask}, {"label": label}


class Layer(nn.Module):
  """A pre-norm transformer layer: 2-head self-attention over valid tokens, then an MLP."""

  @nn.compact
  def __call__(self, h, mask):
    b, t, d = h.shape
    q, k, v = jnp.split(nn.Dense(3 * d, name="qkv")(nn.LayerNorm()(h)).reshape(b, t, 3 * 2, d // 2), 3, axis=2)
    logits = jnp.einsum("bqhc,bkhc->bhqk", q, k) / jnp.sqrt(d // 2)
    attn = jax.nn.softmax(jnp.where(mask[:, None, None, :], logits, -1e9), -1)
    h = h + nn.Dense(d, name="proj")(jnp.einsum("bhqk,bkhc->bqhc", attn, v).reshape(b, t, d))
    return h + nn.Dense(d, name="fc2")(nn.gelu(nn.Dense(2 * d, name="fc1")(nn.LayerNorm()(h))))


class Classifier(nn.Module):
  @nn.compact
  def __call__(self, x):
    mask = x["mask"]
    h = nn.Embed(VOCAB, DIM, name="embed")(x["tokens"]) + self.param(
        "position", nn.initializers.normal(0.02), (LENGTH, DIM))
    for i in range(2):
      h = Layer(name=f"layer_{i}")(h, mask)
    pooled = jnp.sum(h * mask[..., None], 1) / jnp.sum(mask, 1, keepdims=True)
    return nn.Dense(CLASSES, name="head")(nn.LayerNorm()(pooled))


def loss_fn(logits, y):
  """The batch's mean cross-entropy."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, y["label"]).mean()


def metric_fn(logits, y):
  """Per example: 100 if the arg-max is the label, else 0 (so the mean is accuracy in percent)."""
  return 100.0 * (jnp.argmax(logits, -1) == y["label"])


def train(model, x, y, steps=300):
  variables = model.init(jax.random.key(0), jax.tree.map(lambda a: a[:1], x))
  tx = optax.adam(3e-3)
  opt = tx.init(variables)

  @jax.jit
  def step(v, o, xb, yb):
    g = jax.grad(lambda v: loss_fn(model.apply(v, xb), yb))(v)
    u, o = tx.update(g, o)
    return optax.apply_updates(v, u), o

  rng = np.random.default_rng(0)
  for _ in range(steps):
    idx = rng.integers(0, len(y["label"]), 64)
    variables, opt = step(variables, opt, *jax.tree.map(lambda a: a[idx], (x, y)))
  return variables


def main(output_dir="runs/custom_sequence", config=None):
  data = hirelc_jax.dataset_from_arrays(*make_data(1200, 0), *make_data(500, 1), name="token_order")
  model = Classifier()
  variables = train(model, data.x_train, data.y_train)
  report = hirelc_jax.compress(
      model.apply, variables, data,
      kernel_rules=[(rf"layer_(?P<block>\d+)/{k}/kernel$", k) for k in ("qkv", "proj", "fc1", "fc2")],
      kernel_names=["qkv", "proj", "fc1", "fc2"],
      loss_fn=loss_fn, metric_fn=metric_fn, metric_name="accuracy (user metric)",
      config=config or C.preset("smoke"), output_dir=output_dir, name="seq_transformer")
  compressed = load_variables(pathlib.Path(output_dir) / "model_export.npz")[0]
  rebuilt = float(np.mean(metric_fn(model.apply(compressed, data.x_test), data.y_test)))
  print(f"metric {report['baseline_accuracy']:.1f} -> {report['final_accuracy']:.1f} (the exported "
        f"weights: {rebuilt:.1f}), compression {report['compression_ratio']:.2f}x")
  return report, rebuilt


if __name__ == "__main__":
  main(*sys.argv[1:])
