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
import numpy as np

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


@dataclasses.dataclass(frozen=True)
class BlockWidths:
  """Kernel widths of one block of a slimmed ViT (built by `hirelc_jax.slim`); hashable.

  Attributes:
    qk_dim: query/key width per head (None: width / num_heads); the score
      scale stays ``(width / num_heads) ** -0.5``.
    v_dim: value width per head (None: width / num_heads); attn.proj then
      has ``num_heads * v_dim`` input rows.
    mlp_dim: hidden width of the MLP.
    proj_index: residual channels attn.proj writes (its output columns), or None for all.
    fc2_index: residual channels mlp.fc2 writes, or None for all.
  """
  qk_dim: Optional[int]
  v_dim: Optional[int]
  mlp_dim: int
  proj_index: Optional[tuple[int, ...]] = None
  fc2_index: Optional[tuple[int, ...]] = None


def _into_width(y: jax.Array, index: Optional[tuple[int, ...]], width: int) -> jax.Array:
  """``y [..., len(index)]`` placed at channels `index` of zeros ``[..., width]`` (one gather)."""
  if index is None:
    return y
  inv = np.full(width, len(index), np.int32)
  inv[np.asarray(index, np.int64)] = np.arange(len(index), dtype=np.int32)
  y = jnp.concatenate([y, jnp.zeros(y.shape[:-1] + (1,), y.dtype)], axis=-1)
  return jnp.take(y, inv, axis=-1, mode="clip")


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
    qk_dim, v_dim: per-head query/key and value widths of a slimmed model
      (qkv then has ``H * (2 * qk_dim + v_dim)`` outputs laid out q | k | v);
      None: ``D / H`` each, the standard layout.
    out_index: residual channels the projection writes (a slimmed proj with
      ``len(out_index)`` outputs); None: all ``D``.
  """
  num_heads: int
  dtype: Optional[Dtype] = None
  qk_dim: Optional[int] = None
  v_dim: Optional[int] = None
  out_index: Optional[tuple[int, ...]] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, N, D] -> [B, N, D]."""
    b, n, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by {self.num_heads} heads")
    hd = d // self.num_heads
    h = self.num_heads
    dq = hd if self.qk_dim is None else self.qk_dim
    dv = hd if self.v_dim is None else self.v_dim
    if self.qk_dim is None and self.v_dim is None:
      qkv = nn.Dense(3 * d, dtype=self.dtype, kernel_init=_dense_init, name="qkv")(x)
      qkv = qkv.reshape(b, n, 3, self.num_heads, hd)          # [B, N, 3, H, hd]
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]       # [B, N, H, hd]
    else:
      qkv = nn.Dense(h * (2 * dq + dv), dtype=self.dtype, kernel_init=_dense_init, name="qkv")(x)
      q = qkv[..., :h * dq].reshape(b, n, h, dq)              # [B, N, H, dq]
      k = qkv[..., h * dq:2 * h * dq].reshape(b, n, h, dq)
      v = qkv[..., 2 * h * dq:].reshape(b, n, h, dv)          # [B, N, H, dv]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * (hd ** -0.5), k)   # [B, H, N, N]
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, h * dv)
    width = d if self.out_index is None else len(self.out_index)
    y = nn.Dense(width, dtype=self.dtype, kernel_init=_dense_init, name="proj")(out)
    return _into_width(y, self.out_index, d)


class Mlp(nn.Module):
  """Two-layer GELU MLP: D -> mlp_dim -> D (fc2 writes only `out_index` when given)."""
  mlp_dim: int
  dtype: Optional[Dtype] = None
  out_index: Optional[tuple[int, ...]] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, N, D] -> [B, N, D]."""
    d = x.shape[-1]
    h = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=_dense_init, name="fc1")(x)
    h = nn.gelu(h, approximate=False)
    width = d if self.out_index is None else len(self.out_index)
    y = nn.Dense(width, dtype=self.dtype, kernel_init=_dense_init, name="fc2")(h)
    return _into_width(y, self.out_index, d)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)).

  ``widths`` (a `BlockWidths`) builds the smaller kernels of a slimmed block;
  None is the standard block.
  """
  num_heads: int
  mlp_dim: int
  dtype: Optional[Dtype] = None
  widths: Optional[BlockWidths] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, N, D] -> [B, N, D]."""
    w = self.widths or BlockWidths(None, None, self.mlp_dim)
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm1")(x)
    x = x + Attention(self.num_heads, dtype=self.dtype, qk_dim=w.qk_dim, v_dim=w.v_dim,
                      out_index=w.proj_index, name="attn")(y)
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm2")(x)
    return x + Mlp(w.mlp_dim, dtype=self.dtype, out_index=w.fc2_index, name="mlp")(y)


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
    block_widths: one `BlockWidths` per block for a slimmed model with
      smaller kernels (same parameter paths); None: the standard model.
  """
  num_classes: int
  image_shape: tuple[int, int, int]
  patch_size: int = 4
  width: int = 32
  depth: int = 2
  num_heads: int = 2
  mlp_dim: int = 64
  dtype: Optional[Dtype] = None
  block_widths: Optional[tuple[BlockWidths, ...]] = None

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
    if self.block_widths is not None and len(self.block_widths) != self.depth:
      raise ValueError(f"block_widths has {len(self.block_widths)} entries for depth {self.depth}")
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
      widths = None if self.block_widths is None else self.block_widths[i]
      x = Block(self.num_heads, self.mlp_dim, dtype=self.dtype, widths=widths, name=f"block_{i}")(x)
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
