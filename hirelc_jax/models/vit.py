"""A Vision Transformer for small images, in flax.linen.

The layout follows timm's ``VisionTransformer`` (pre-norm blocks, CLS token,
learned position embedding over CLS + patches, exact-erf GELU MLP, final
LayerNorm, linear head on the CLS token) so that timm state dicts map onto it
one tensor at a time (see `checkpoint_io.py`).

Blocks are separate submodules ``block_0 .. block_{depth-1}`` (no ``nn.scan``)
so that every block owns its parameter subtree, e.g.
``params/block_3/attn/qkv/kernel``, and a compression plan can treat each
kernel on its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


@dataclasses.dataclass(frozen=True)
class ViTVariant:
  """Width, depth, heads and MLP size of one ViT variant."""
  width: int
  depth: int
  num_heads: int
  mlp_dim: int


# The one table of ViT variants.
VARIANTS: dict[str, ViTVariant] = {
    "vit_mu": ViTVariant(width=32, depth=2, num_heads=2, mlp_dim=64),
    "vit_mini": ViTVariant(width=96, depth=4, num_heads=3, mlp_dim=384),
    "vit_tiny": ViTVariant(width=192, depth=12, num_heads=3, mlp_dim=768),
    "vit_small": ViTVariant(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "vit_base": ViTVariant(width=768, depth=12, num_heads=12, mlp_dim=3072),
}

# Compressible kernels of one block, in plan column order.
KERNEL_NAMES = ("qkv", "attn_proj", "mlp_fc1", "mlp_fc2")

# (regex on the '/'-joined path inside the 'params' collection, kernel name).
KERNEL_RULES = (
    (r"(?:^|/)block_(?P<block>\d+)/attn/qkv/kernel$", "qkv"),
    (r"(?:^|/)block_(?P<block>\d+)/attn/proj/kernel$", "attn_proj"),
    (r"(?:^|/)block_(?P<block>\d+)/mlp/fc1/kernel$", "mlp_fc1"),
    (r"(?:^|/)block_(?P<block>\d+)/mlp/fc2/kernel$", "mlp_fc2"),
)

LN_EPS = 1e-6  # timm's ViT LayerNorm epsilon.

_dense_init = nn.initializers.xavier_uniform()
_embed_init = nn.initializers.normal(stddev=0.02)


def default_patch_size(image_size: int) -> int:
  """Patch side for a square-ish image: 2 up to 16 px, 4 up to 32, 8 up to 64, else 16.

  28x28 and 32x32 inputs get 4 (7x7 = 49 and 8x8 = 64 patches), 8x8 digits get
  2 (16 patches), 64x64 Tiny ImageNet gets 8 (64 patches).
  """
  if image_size <= 16:
    return 2
  if image_size <= 32:
    return 4
  if image_size <= 64:
    return 8
  return 16


def num_patches(image_hw: tuple[int, int], patch_size: int) -> int:
  """Number of patches of an ``(H, W)`` image; raises ValueError unless p divides both."""
  h, w = image_hw
  if patch_size <= 0 or h % patch_size or w % patch_size:
    raise ValueError(f"patch size {patch_size} must divide the image size {h}x{w}")
  return (h // patch_size) * (w // patch_size)


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection (timm layout).

  Attributes:
    num_heads: number of heads; must divide the width.
    dtype: compute dtype (softmax runs in float32).
  """
  num_heads: int
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, N, D] -> [B, N, D]."""
    b, n, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by {self.num_heads} heads")
    hd = d // self.num_heads
    qkv = nn.Dense(3 * d, dtype=self.dtype, kernel_init=_dense_init, name="qkv")(x)
    qkv = qkv.reshape(b, n, 3, self.num_heads, hd)          # [B, N, 3, H, hd]
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]       # [B, N, H, hd]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * (hd ** -0.5), k)   # [B, H, N, N]
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, d)
    return nn.Dense(d, dtype=self.dtype, kernel_init=_dense_init, name="proj")(out)


class Mlp(nn.Module):
  """Two-layer GELU MLP: D -> mlp_dim -> D."""
  mlp_dim: int
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, N, D] -> [B, N, D]."""
    d = x.shape[-1]
    h = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=_dense_init, name="fc1")(x)
    h = nn.gelu(h, approximate=False)
    return nn.Dense(d, dtype=self.dtype, kernel_init=_dense_init, name="fc2")(h)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""
  num_heads: int
  mlp_dim: int
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, N, D] -> [B, N, D]."""
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm1")(x)
    x = x + Attention(self.num_heads, dtype=self.dtype, name="attn")(y)
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm2")(x)
    return x + Mlp(self.mlp_dim, dtype=self.dtype, name="mlp")(y)


class ViT(nn.Module):
  """Vision Transformer classifier.

  Attributes:
    num_classes: number of logits.
    image_shape: ``(H, W, C)`` of the inputs; H and W must be multiples of
      ``patch_size``.
    patch_size: side of the square patches.
    width: embedding width D.
    depth: number of blocks.
    num_heads: attention heads per block.
    mlp_dim: hidden size of the block MLP.
    dtype: compute dtype (parameters stay float32; logits are float32).
  """
  num_classes: int
  image_shape: tuple[int, int, int]
  patch_size: int = 4
  width: int = 32
  depth: int = 2
  num_heads: int = 2
  mlp_dim: int = 64
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Logits of a batch.

    Args:
      x: images ``[B, H, W, C]``.
      train: unused (no dropout); accepted for a uniform model interface.

    Returns:
      float32 logits ``[B, num_classes]``.
    """
    del train
    if tuple(x.shape[1:]) != tuple(self.image_shape):
      raise ValueError(f"ViT expects images of shape {tuple(self.image_shape)}, got {tuple(x.shape[1:])}")
    n = num_patches(self.image_shape[:2], self.patch_size)
    p, d = self.patch_size, self.width
    if self.dtype is not None:
      x = x.astype(self.dtype)
    x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                name="patch_embed")(x)                        # [B, H/p, W/p, D]
    b = x.shape[0]
    x = x.reshape(b, n, d)
    cls = self.param("cls_token", _embed_init, (1, 1, d))
    pos = self.param("pos_embed", _embed_init, (1, n + 1, d))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(x.dtype), x], axis=1)
    x = x + pos.astype(x.dtype)                               # [B, N+1, D]
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_dim, dtype=self.dtype, name=f"block_{i}")(x)
    x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm")(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_dense_init,
                      name="head")(x[:, 0])
    return logits.astype(jnp.float32)


def make_vit(variant: str, *, num_classes: int, image_shape: tuple[int, int, int],
             patch_size: Optional[int] = None, dtype: Optional[Dtype] = None) -> ViT:
  """Builds a `ViT` from the variant table; raises ValueError on a bad name or patch size."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown ViT variant {variant!r}; choose one of {', '.join(VARIANTS)}")
  v = VARIANTS[variant]
  h, w, _ = image_shape
  p = patch_size if patch_size is not None else default_patch_size(min(h, w))
  num_patches((h, w), p)
  if v.width % v.num_heads:
    raise ValueError(f"{variant}: width {v.width} not divisible by {v.num_heads} heads")
  return ViT(num_classes=num_classes, image_shape=tuple(image_shape), patch_size=p,
             width=v.width, depth=v.depth, num_heads=v.num_heads, mlp_dim=v.mlp_dim, dtype=dtype)
