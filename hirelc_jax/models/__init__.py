"""Model registry: linen modules plus their kernel maps, as data.

A `ModelSpec` bundles a linen module with the names of its compressible
kernels and the rules that find them in the ``params`` collection. A rule is
``(regex, kernel_name)``; the regex is matched with `re.search` against the
'/'-joined path inside ``params`` (``"block_3/attn/qkv/kernel"``) and its named
group ``block`` gives the block index. Parameters no rule matches
(embeddings, norms, stem, head) stay uncompressed.

Example::

  spec = build_model("vit_mu", num_classes=10, image_shape=(28, 28, 1))
  variables = init_params(spec, jax.random.key(0))
  logits = spec.module.apply(variables, x)          # x: [B, 28, 28, 1]
  kmap = kernel_map(variables["params"], spec)      # a compression KernelMap
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hirelc_jax.compression.kernel_map import KernelMap, build_kernel_map
from hirelc_jax.models import cnn, vit

VIT_NAMES = tuple(vit.VARIANTS)
MODEL_NAMES = VIT_NAMES + ("cnn", "resnet18")

KernelRule = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A model and its kernel map.

  Attributes:
    name: registry name (one of `MODEL_NAMES`).
    module: the flax.linen module; ``module.apply(variables, x, train=...)``.
    kernel_names: compressible kernel names of one block, in plan column order.
    kernel_rules: ``((regex, kernel_name), ...)`` over '/'-joined param paths.
    num_blocks: number of blocks (plan rows).
    num_classes: number of logits.
    image_shape: ``(H, W, C)`` of one input image.
  """
  name: str
  module: nn.Module
  kernel_names: tuple[str, ...]
  kernel_rules: tuple[KernelRule, ...]
  num_blocks: int
  num_classes: int
  image_shape: tuple[int, int, int]


def build_model(name: str, *, num_classes: int, image_shape: tuple[int, int, int],
                dtype: Optional[Any] = None, patch_size: Optional[int] = None,
                norm: str = "batch") -> ModelSpec:
  """Builds a registered model.

  Args:
    name: one of `MODEL_NAMES`.
    num_classes: number of logits.
    image_shape: ``(H, W, C)`` of the inputs.
    dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
    patch_size: ViT patch side; default `vit.default_patch_size` (4 for 28/32 px).
    norm: ResNet-18 normalisation, "batch", "group" or "none".

  Returns:
    The `ModelSpec`.

  Raises:
    ValueError: unknown name, or a shape the model cannot take.
  """
  if name not in MODEL_NAMES:
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
  image_shape = tuple(int(s) for s in image_shape)
  if len(image_shape) != 3 or min(image_shape) <= 0:
    raise ValueError(f"image_shape must be (H, W, C) with positive sizes, got {image_shape}")
  if num_classes <= 0:
    raise ValueError(f"num_classes must be positive, got {num_classes}")
  if name in vit.VARIANTS:
    module = vit.make_vit(name, num_classes=num_classes, image_shape=image_shape,
                          patch_size=patch_size, dtype=dtype)
    return ModelSpec(name, module, vit.KERNEL_NAMES, vit.KERNEL_RULES, vit.VARIANTS[name].depth,
                     num_classes, image_shape)
  if name == "cnn":
    module = cnn.SmallCNN(num_classes=num_classes, dtype=dtype)
    return ModelSpec(name, module, cnn.CNN_KERNEL_NAMES, cnn.CNN_KERNEL_RULES, cnn.CNN_NUM_BLOCKS,
                     num_classes, image_shape)
  if norm not in cnn.NORMS:
    raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(cnn.NORMS)}")
  module = cnn.ResNet18(num_classes=num_classes, norm=norm, dtype=dtype)
  return ModelSpec(name, module, cnn.RESNET_KERNEL_NAMES, cnn.RESNET_KERNEL_RULES,
                   cnn.RESNET18_NUM_BLOCKS, num_classes, image_shape)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init(module: nn.Module, key: jax.Array, image_shape: tuple[int, int, int]) -> dict:
  return module.init(key, jnp.zeros((1,) + image_shape, jnp.float32), train=False)


def init_params(spec: ModelSpec, key: jax.Array) -> dict:
  """Initialises the variables dict (``{"params": ..., ["batch_stats": ...]}``) of a model.

  Compiled once per (module, image shape); later calls with other keys reuse it.
  """
  return dict(_init(spec.module, key, spec.image_shape))


def abstract_params(spec: ModelSpec) -> dict:
  """The variables dict as `jax.ShapeDtypeStruct` leaves, without allocating or computing."""
  x = jax.ShapeDtypeStruct((1,) + spec.image_shape, jnp.float32)
  return dict(jax.eval_shape(lambda k, x: spec.module.init(k, x, train=False), jax.random.key(0), x))


def count_params(tree: Any) -> int:
  """Total number of scalars in a pytree of arrays (or ShapeDtypeStructs)."""
  return int(sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(tree)))


def kernel_map(params: Mapping, spec: ModelSpec) -> KernelMap:
  """The model's KernelMap over its ``params`` collection (arrays or ShapeDtypeStructs).

  Raises:
    ValueError: a block index outside ``[0, num_blocks)``, two kernels on one
      slot, or no kernel found.
  """
  kmap = build_kernel_map(params, spec.kernel_rules, spec.kernel_names)
  if kmap.num_blocks > spec.num_blocks:
    raise ValueError(f"{spec.name}: a kernel has block {kmap.num_blocks - 1} outside [0, {spec.num_blocks})")
  return dataclasses.replace(kmap, num_blocks=spec.num_blocks)


__all__ = [
    "MODEL_NAMES", "VIT_NAMES", "ModelSpec", "build_model", "init_params", "abstract_params",
    "count_params", "kernel_map",
]
