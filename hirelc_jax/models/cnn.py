"""Convolutional models in flax.linen: a small CNN and a CIFAR-style ResNet-18.

`SmallCNN` (for 28x28x1 and other small inputs)::

  block_0: conv3x3(32) + ReLU + maxpool2
  block_1: conv3x3(64) + ReLU + maxpool2
  block_2: conv3x3(128) + ReLU + maxpool2
  block_3: dense(256) + ReLU
  head:    dense(num_classes)

`ResNet18` (CIFAR variant): 3x3 stem (no max-pool), four stages of two
BasicBlocks with 64/128/256/512 channels (stride 1/2/2/2), global average
pooling, linear head. The eight BasicBlocks are ``block_0 .. block_7``; each
holds ``conv1``, ``conv2`` and, where the shape changes, a 1x1 ``shortcut``.

Normalisation: ResNet-18 uses BatchNorm by default, whose running statistics
live in the separate ``batch_stats`` collection: call with ``train=True`` and
``mutable=["batch_stats"]`` to update them, ``train=False`` to use them. The
compression code only reads and writes the ``params`` collection.
``norm="group"`` or ``norm="none"`` gives a model without ``batch_stats``.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# ---- SmallCNN kernel map -----------------------------------------------------

CNN_CHANNELS = (32, 64, 128)
CNN_HIDDEN = 256
CNN_KERNEL_NAMES = ("conv", "dense")
CNN_KERNEL_RULES = (
    (r"(?:^|/)block_(?P<block>\d+)/conv/kernel$", "conv"),
    (r"(?:^|/)block_(?P<block>\d+)/dense/kernel$", "dense"),
)
CNN_NUM_BLOCKS = len(CNN_CHANNELS) + 1

# ---- ResNet-18 kernel map ----------------------------------------------------

RESNET18_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (channels, first stride)
RESNET18_BLOCKS_PER_STAGE = 2
RESNET_KERNEL_NAMES = ("conv1", "conv2", "shortcut")
RESNET_KERNEL_RULES = (
    (r"(?:^|/)block_(?P<block>\d+)/conv1/kernel$", "conv1"),
    (r"(?:^|/)block_(?P<block>\d+)/conv2/kernel$", "conv2"),
    (r"(?:^|/)block_(?P<block>\d+)/shortcut/kernel$", "shortcut"),
)
RESNET18_NUM_BLOCKS = len(RESNET18_STAGES) * RESNET18_BLOCKS_PER_STAGE

NORMS = ("batch", "group", "none")

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # He, as torchvision


class SmallCNN(nn.Module):
  """Three conv blocks and one hidden dense block, then a linear head.

  Attributes:
    num_classes: number of logits.
    channels: output channels of the conv blocks.
    hidden: width of the hidden dense block.
    dtype: compute dtype (logits are float32).
  """
  num_classes: int
  channels: tuple[int, ...] = CNN_CHANNELS
  hidden: int = CNN_HIDDEN
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """x: ``[B, H, W, C]`` -> float32 logits ``[B, num_classes]``; ``train`` is unused."""
    del train
    if self.dtype is not None:
      x = x.astype(self.dtype)
    for i, ch in enumerate(self.channels):
      x = ConvBlock(ch, dtype=self.dtype, name=f"block_{i}")(x)
    x = x.reshape(x.shape[0], -1)
    x = DenseBlock(self.hidden, dtype=self.dtype, name=f"block_{len(self.channels)}")(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


class ConvBlock(nn.Module):
  """conv3x3 + ReLU + 2x2 max-pool ('SAME', so odd sizes round up): [B,H,W,C] -> [B,ceil(H/2),ceil(W/2),F]."""
  features: int
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, (3, 3), padding="SAME", dtype=self.dtype, name="conv")(x)
    x = nn.relu(x)
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")


class DenseBlock(nn.Module):
  """dense + ReLU: [B, F_in] -> [B, features]."""
  features: int
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.relu(nn.Dense(self.features, dtype=self.dtype, name="dense")(x))


def _norm(kind: str, train: bool, dtype: Optional[Dtype], name: str):
  """A normalisation layer (callable on [B, H, W, C]) of the given kind."""
  if kind == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        dtype=dtype, name=name)
  if kind == "group":
    return nn.GroupNorm(num_groups=None, group_size=16, dtype=dtype, name=name)
  if kind == "none":
    return lambda x: x
  raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


class BasicBlock(nn.Module):
  """ResNet BasicBlock: two conv3x3 + norm, identity or 1x1-conv shortcut.

  Attributes:
    features: output channels F.
    strides: stride of conv1 (and of the shortcut).
    norm: one of `NORMS`.
    dtype: compute dtype.
  """
  features: int
  strides: int = 1
  norm: str = "batch"
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """x: [B, H, W, C] -> [B, H/strides, W/strides, F]."""
    s = (self.strides, self.strides)
    y = nn.Conv(self.features, (3, 3), strides=s, padding=((1, 1), (1, 1)), use_bias=False,
                kernel_init=_conv_init, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(_norm(self.norm, train, self.dtype, "norm1")(y))
    y = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                kernel_init=_conv_init, dtype=self.dtype, name="conv2")(y)
    y = _norm(self.norm, train, self.dtype, "norm2")(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), strides=s, use_bias=False, kernel_init=_conv_init,
                  dtype=self.dtype, name="shortcut")(x)
      x = _norm(self.norm, train, self.dtype, "shortcut_norm")(x)
    return nn.relu(x + y)


class ResNet18(nn.Module):
  """CIFAR-style ResNet-18.

  Attributes:
    num_classes: number of logits.
    norm: "batch" (default; needs the ``batch_stats`` collection), "group" or "none".
    width: channels of the first stage (64 in the standard model); later
      stages double it.
    dtype: compute dtype (logits are float32).
  """
  num_classes: int
  norm: str = "batch"
  width: int = 64
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """x: ``[B, H, W, C]`` -> float32 logits ``[B, num_classes]``.

    ``train`` selects batch statistics (True) or running averages (False) in
    BatchNorm; with True, apply with ``mutable=["batch_stats"]``.
    """
    if self.dtype is not None:
      x = x.astype(self.dtype)
    x = nn.Conv(self.width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                kernel_init=_conv_init, dtype=self.dtype, name="stem_conv")(x)
    x = nn.relu(_norm(self.norm, train, self.dtype, "stem_norm")(x))
    i = 0
    for ch, stride in RESNET18_STAGES:
      features = ch * self.width // 64
      for j in range(RESNET18_BLOCKS_PER_STAGE):
        x = BasicBlock(features, strides=stride if j == 0 else 1, norm=self.norm,
                       dtype=self.dtype, name=f"block_{i}")(x, train=train)
        i += 1
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)
