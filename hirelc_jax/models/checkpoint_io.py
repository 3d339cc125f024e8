"""timm-style ViT state dicts <-> our ViT ``params`` tree.

timm names and layouts (PyTorch, ``Linear.weight`` is ``[out, in]``)::

  cls_token                    [1, 1, D]      -> cls_token
  pos_embed                    [1, N+1, D]    -> pos_embed
  patch_embed.proj.weight      [D, C, p, p]   -> patch_embed/kernel [p, p, C, D]
  patch_embed.proj.bias        [D]            -> patch_embed/bias
  blocks.i.norm1.weight/bias   [D]            -> block_i/norm1/scale, bias
  blocks.i.attn.qkv.weight     [3D, D]        -> block_i/attn/qkv/kernel [D, 3D]
  blocks.i.attn.proj.weight    [D, D]         -> block_i/attn/proj/kernel
  blocks.i.norm2.weight/bias   [D]            -> block_i/norm2/scale, bias
  blocks.i.mlp.fc1.weight      [M, D]         -> block_i/mlp/fc1/kernel [D, M]
  blocks.i.mlp.fc2.weight      [D, M]         -> block_i/mlp/fc2/kernel [M, D]
  norm.weight/bias             [D]            -> norm/scale, bias
  head.weight                  [K, D]         -> head/kernel [D, K]

(every ``.weight`` of a Linear has a matching ``.bias``). Keys our model does
not use (e.g. timm's ``fc_norm`` when it is an identity) are ignored. The
position embedding is not interpolated: the checkpoint must match the spec's
image and patch size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import jax
import numpy as np
from flax import traverse_util

from hirelc_jax.models import ModelSpec, abstract_params, vit

# How a timm tensor becomes a flax one: "copy", "dense" ([out,in] -> [in,out]),
# "conv" ([D,C,p,p] -> [p,p,C,D]).
_TO_FLAX = {
    "copy": lambda a: a,
    "dense": lambda a: a.T,
    "conv": lambda a: a.transpose(2, 3, 1, 0),
}
_TO_TIMM = {
    "copy": lambda a: a,
    "dense": lambda a: a.T,
    "conv": lambda a: a.transpose(3, 2, 0, 1),
}


def timm_key_map(depth: int) -> tuple[tuple[str, str, str], ...]:
  """``((timm_key, flax_path, kind), ...)`` for a ViT of the given depth."""
  rows = [
      ("cls_token", "cls_token", "copy"),
      ("pos_embed", "pos_embed", "copy"),
      ("patch_embed.proj.weight", "patch_embed/kernel", "conv"),
      ("patch_embed.proj.bias", "patch_embed/bias", "copy"),
  ]

  def linear(timm: str, flax: str):
    rows.append((f"{timm}.weight", f"{flax}/kernel", "dense"))
    rows.append((f"{timm}.bias", f"{flax}/bias", "copy"))

  def layer_norm(timm: str, flax: str):
    rows.append((f"{timm}.weight", f"{flax}/scale", "copy"))
    rows.append((f"{timm}.bias", f"{flax}/bias", "copy"))

  for i in range(depth):
    layer_norm(f"blocks.{i}.norm1", f"block_{i}/norm1")
    linear(f"blocks.{i}.attn.qkv", f"block_{i}/attn/qkv")
    linear(f"blocks.{i}.attn.proj", f"block_{i}/attn/proj")
    layer_norm(f"blocks.{i}.norm2", f"block_{i}/norm2")
    linear(f"blocks.{i}.mlp.fc1", f"block_{i}/mlp/fc1")
    linear(f"blocks.{i}.mlp.fc2", f"block_{i}/mlp/fc2")
  layer_norm("norm", "norm")
  linear("head", "head")
  return tuple(rows)


def _check_vit(spec: ModelSpec) -> None:
  if not isinstance(spec.module, vit.ViT):
    raise ValueError(f"timm ViT checkpoints need a ViT spec, got model {spec.name!r}")


def from_timm_state_dict(state: Mapping[str, np.ndarray], spec: ModelSpec) -> dict:
  """Converts a timm ViT state dict to our variables dict ``{"params": ...}``.

  Args:
    state: timm key -> array (numpy or anything `np.asarray` takes).
    spec: a ViT `ModelSpec` whose shapes the state dict must match.

  Returns:
    ``{"params": nested dict of float32 numpy arrays}``.

  Raises:
    ValueError: naming the first missing key or shape mismatch.
  """
  _check_vit(spec)
  expected = traverse_util.flatten_dict(abstract_params(spec)["params"], sep="/")
  flat = {}
  for timm_key, path, kind in timm_key_map(spec.module.depth):
    if timm_key not in state:
      raise ValueError(f"timm checkpoint is missing key {timm_key!r} (needed for {spec.name})")
    arr = np.asarray(state[timm_key])
    want = tuple(expected[path].shape)
    if arr.ndim != len(want):
      raise ValueError(f"timm key {timm_key!r} has shape {arr.shape}, expected {len(want)} dims "
                       f"for {path} {want}")
    value = _TO_FLAX[kind](arr)
    if value.shape != want:
      raise ValueError(f"timm key {timm_key!r} has shape {arr.shape}, which maps to {value.shape}; "
                       f"{spec.name} needs {want} for {path}")
    flat[path] = np.ascontiguousarray(value, dtype=np.float32)
  missing = sorted(set(expected) - set(flat))
  if missing:  # Would mean timm_key_map and the module disagree.
    raise ValueError(f"no timm key maps to parameter {missing[0]!r}")
  return {"params": traverse_util.unflatten_dict(flat, sep="/")}


def to_timm_state_dict(params: Mapping, spec: ModelSpec) -> dict[str, np.ndarray]:
  """Converts our ``params`` collection (not the variables dict) to a timm ViT state dict."""
  _check_vit(spec)
  flat = traverse_util.flatten_dict(dict(params), sep="/")
  out = {}
  for timm_key, path, kind in timm_key_map(spec.module.depth):
    if path not in flat:
      raise ValueError(f"params tree has no {path!r} (for timm key {timm_key!r})")
    out[timm_key] = np.ascontiguousarray(_TO_TIMM[kind](np.asarray(jax.device_get(flat[path]))))
  return out


def _read_state(path: Path) -> dict[str, np.ndarray]:
  """Reads a .safetensors or .npz file into a dict of numpy arrays."""
  if not path.is_file():
    raise ValueError(f"checkpoint {path} not found: pass the path of a .safetensors or .npz file")
  suffix = path.suffix.lower()
  try:
    if suffix == ".safetensors":
      from safetensors.numpy import load_file
      return dict(load_file(str(path)))
    if suffix == ".npz":
      with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
  except Exception as e:  # noqa: BLE001  (safetensors, zipfile, numpy all raise their own types)
    raise ValueError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); "
                     f"expected a timm-style {suffix} state dict") from e
  raise ValueError(f"checkpoint {path} has suffix {suffix!r}; expected .safetensors or .npz")


def load_timm_vit(path: str | os.PathLike, spec: ModelSpec) -> dict:
  """Loads a timm-style ViT state dict (.safetensors or .npz) into our variables dict.

  Args:
    path: file holding timm keys (``blocks.0.attn.qkv.weight``, ...).
    spec: a ViT `ModelSpec` built with the checkpoint's width, depth, image,
      patch size and number of classes.

  Returns:
    ``{"params": ...}``, ready for ``spec.module.apply``.

  Raises:
    ValueError: unreadable file, a missing key or a shape mismatch (naming the key).
  """
  return from_timm_state_dict(_read_state(Path(path)), spec)


def save_timm_vit(path: str | os.PathLike, params: Mapping, spec: ModelSpec) -> None:
  """Writes our ``params`` collection as a timm-style state dict (.safetensors or .npz)."""
  path = Path(path)
  state = to_timm_state_dict(params, spec)
  suffix = path.suffix.lower()
  if suffix == ".safetensors":
    from safetensors.numpy import save_file
    save_file(state, str(path))
  elif suffix == ".npz":
    np.savez(path, **state)
  else:
    raise ValueError(f"checkpoint {path} has suffix {suffix!r}; expected .safetensors or .npz")
