"""Slim models: pruned output neurons physically removed, with what they make dead downstream.

A pruned neuron is an all-zero kernel column with a zero bias, so its output
is exactly 0 and every weight that only ever multiplies it is dead. `slim_model`
turns the masked (pruned-as-zeros) params into a Flax model with smaller
kernels that computes the same logits, up to the order of float summation:

ViT (`hirelc_jax.models.vit`; one fused qkv Dense laid out ``[3, heads, hd]``):
  * mlp_fc1: pruned hidden units drop fc1 columns and bias (``gelu(0) = 0``)
    and the same fc2 rows.
  * qkv, q/k: dim d of head h adds ``q_d * k_d`` to the scores, so it is dead
    when EITHER q_d or k_d is pruned; both columns go. Heads must keep one
    width, so every head is padded with zero columns to the most live dims of
    any head in the block (the scale stays ``hd ** -0.5`` of the full head).
    Those padding columns are the part that stays masked.
  * qkv, v: a pruned v dim is a zero attention output, so it drops the v
    column and the attn_proj input row; heads are padded as for q/k.
  * attn_proj, mlp_fc2: outputs feed the residual stream, which every
    LayerNorm reads at full width, so it is not narrowed. With
    ``residual="gather"`` the pruned output columns go and the kept outputs
    are gathered back into the residual width (one gather per layer);
    ``residual="masked"`` keeps them full width with the pruned columns zero.
Small CNN (`hirelc_jax.models.cnn.SmallCNN`, no normalisation layers): a
  pruned conv channel is zero after ReLU and max-pool (its 'SAME' zero padding
  keeps it zero), so it drops the next conv's input channel; after the last
  conv the flatten spreads channel c over rows ``p * C + c`` of the dense
  kernel, one per pixel p; a pruned dense unit drops its head row. Everything
  pruned is removed exactly; nothing stays masked.
ResNet-18 is not supported: BatchNorm maps a zero channel to a non-zero one,
and residual sums keep channels alive.

`dead_storage` counts what `accounting.storage_bits` still charges for the
weights made dead downstream (the rows above, and q/k columns whose partner is
pruned): the drop in counted storage if the export left them out.
`load_slim` reads an export and returns the slim model and that report.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
from flax import traverse_util

from hirelc_jax.compression import accounting, codes, export
from hirelc_jax.compression.kernel_map import KernelMap
from hirelc_jax.compression.plan import CompressionPlan
from hirelc_jax.compression.prune import kept_count
from hirelc_jax.models import ModelSpec, cnn, vit
from hirelc_jax.models import kernel_map as model_kernel_map

RESIDUAL_MODES = ("gather", "masked")


def neuron_masks(params: Mapping, plan: CompressionPlan, kmap: KernelMap) -> tuple[np.ndarray, ...]:
  """Keep masks of the pruned params, by the exporter's rule: bool ``[out]`` per kernel entry.

  `kept_count(keep, out)` neurons survive; the ``out - kept`` lowest-index
  neurons whose kernel column and bias are all zero are the pruned ones.
  Raises ValueError naming a kernel with fewer zero neurons than its plan prunes.
  """
  flat = traverse_util.flatten_dict(dict(params))
  keep = np.asarray(plan.keep)
  masks = []
  for e in kmap.entries:
    cols = np.asarray(flat[e.path]).reshape(-1, e.num_out)
    zero = ~np.any(cols != 0, axis=0)
    if e.bias_path is not None:
      zero &= np.asarray(flat[e.bias_path]) == 0
    pruned = e.num_out - int(kept_count(keep[e.block, e.kernel], e.num_out))
    if zero.sum() < pruned:
      raise ValueError(f"kernel {'/'.join(e.path)}: the plan prunes {pruned} neurons but only "
                       f"{int(zero.sum())} are zero; pass the masked params (after apply_plan)")
    mask = np.ones(e.num_out, bool)
    mask[np.flatnonzero(zero)[:pruned]] = False
    masks.append(mask)
  return tuple(masks)


def _as_masks(params, masks_or_plan, kmap) -> tuple[np.ndarray, ...]:
  """Bool masks from a plan (`neuron_masks`) or from float/bool masks aligned with the entries."""
  if isinstance(masks_or_plan, CompressionPlan):
    return neuron_masks(params, masks_or_plan, kmap)
  masks = tuple(np.asarray(m) > 0.5 if np.asarray(m).dtype != bool else np.asarray(m)
                for m in masks_or_plan)
  if len(masks) != len(kmap.entries):
    raise ValueError(f"got {len(masks)} masks; the kernel map has {len(kmap.entries)} entries")
  for m, e in zip(masks, kmap.entries):
    if m.shape != (e.num_out,):
      raise ValueError(f"mask of {'/'.join(e.path)} has shape {m.shape}, expected ({e.num_out},)")
  return masks


def _check_zero(flat, masks, kmap) -> None:
  """Raises ValueError naming a kernel whose masked-off neurons are not exactly zero."""
  for m, e in zip(masks, kmap.entries):
    cols = np.asarray(flat[e.path]).reshape(-1, e.num_out)[:, ~m]
    bias = np.zeros(0) if e.bias_path is None else np.asarray(flat[e.bias_path])[~m]
    if np.any(cols != 0) or np.any(bias != 0):
      raise ValueError(f"kernel {'/'.join(e.path)}: pruned neurons are not zero; "
                       "pass the masked params (after apply_plan)")


def _by_slot(masks, kmap) -> dict:
  """(block, kernel name) -> (entry, mask)."""
  return {(e.block, kmap.kernel_names[e.kernel]): (e, m) for e, m in zip(kmap.entries, masks)}


def _full(n: int) -> np.ndarray:
  return np.ones(n, bool)


def _compact(live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-head live dims first: ``live [H, hd]`` -> (index [H, w], valid [H, w]).

  ``w`` is the most live dims of any head (at least 1); heads with fewer are
  padded with dead dims, marked invalid (to be zeroed).
  """
  width = max(1, int(live.sum(1).max()))
  index = np.argsort(~live, axis=1, kind="stable")[:, :width]
  return index, np.take_along_axis(live, index, 1)


def _head_cols(w: np.ndarray, index: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Columns ``[..., H * hd]`` -> ``[..., H * w]`` picked per head, invalid ones zero."""
  h = index.shape[0]
  w3 = w.reshape(w.shape[:-1] + (h, -1))
  picked = np.take_along_axis(w3, np.broadcast_to(index, w3.shape[:-2] + index.shape), -1)
  return np.where(valid, picked, 0).astype(w.dtype).reshape(w.shape[:-1] + (-1,))


def _vit_qkv_live(qkv_mask: np.ndarray, heads: int) -> tuple[np.ndarray, np.ndarray]:
  """qkv keep mask ``[3 D]`` -> (live q/k dims, live v dims), bool ``[H, hd]`` each."""
  m = qkv_mask.reshape(3, heads, -1)
  return m[0] & m[1], m[2]


def _slim_vit(flat: dict, slots: dict, module: vit.ViT, residual: str):
  """Slim params and `BlockWidths` of a ViT; `flat` is the flattened masked params."""
  out, widths = dict(flat), []
  d, heads = module.width, module.num_heads
  for b in range(module.depth):
    pre = ("block_%d" % b,)
    get = lambda name, n: slots.get((b, name), (None, _full(n)))[1]
    qk, v = _vit_qkv_live(get("qkv", 3 * d), heads)
    (iq, vq), (iv, vv) = _compact(qk), _compact(v)
    w, bias = (flat[pre + ("attn", "qkv", k)] for k in ("kernel", "bias"))
    parts = lambda x: [_head_cols(x[..., i * d:(i + 1) * d], *idx)
                       for i, idx in enumerate(((iq, vq), (iq, vq), (iv, vv)))]
    out[pre + ("attn", "qkv", "kernel")] = np.concatenate(parts(w), -1)
    out[pre + ("attn", "qkv", "bias")] = np.concatenate(parts(bias), -1)
    proj = flat[pre + ("attn", "proj", "kernel")]
    proj = _head_cols(proj.T, iv, vv).T                         # [H * dv, D]
    hidden = get("mlp_fc1", module.mlp_dim)
    for name in ("kernel", "bias"):
      out[pre + ("mlp", "fc1", name)] = flat[pre + ("mlp", "fc1", name)][..., hidden]
    fc2 = flat[pre + ("mlp", "fc2", "kernel")][hidden]          # [kept hidden, D]
    index = {}
    for key, name, kernel in (("proj", "attn_proj", proj), ("fc2", "mlp_fc2", fc2)):
      sub = ("attn", "proj") if key == "proj" else ("mlp", "fc2")
      keep = get(name, d) if residual == "gather" else _full(d)
      out[pre + sub + ("kernel",)] = kernel[:, keep]
      out[pre + sub + ("bias",)] = flat[pre + sub + ("bias",)][keep]
      index[key] = None if keep.all() else tuple(int(i) for i in np.flatnonzero(keep))
    widths.append(vit.BlockWidths(iq.shape[1], iv.shape[1], int(hidden.sum()),
                                  index["proj"], index["fc2"]))
  return out, module.clone(block_widths=tuple(widths))


def _slim_cnn(flat: dict, slots: dict, module: cnn.SmallCNN):
  """Slim params and module of a SmallCNN; `flat` is the flattened masked params."""
  out, n = dict(flat), len(module.channels)
  prev, kept = None, []
  for b, ch in enumerate(module.channels):
    key = ("block_%d" % b, "conv")
    m = slots.get((b, "conv"), (None, _full(ch)))[1]
    w = flat[key + ("kernel",)]
    w = w if prev is None else w[:, :, prev, :]
    out[key + ("kernel",)], out[key + ("bias",)] = w[..., m], flat[key + ("bias",)][m]
    prev, kept = m, kept + [int(m.sum())]
  key = ("block_%d" % n, "dense")
  m = slots.get((n, "dense"), (None, _full(module.hidden)))[1]
  w = flat[key + ("kernel",)]
  w = w.reshape(-1, prev.size, w.shape[-1])[:, prev, :].reshape(-1, w.shape[-1])
  out[key + ("kernel",)], out[key + ("bias",)] = w[:, m], flat[key + ("bias",)][m]
  out[("head", "kernel")] = flat[("head", "kernel")][m]
  return out, module.clone(channels=tuple(kept), hidden=int(m.sum()))


def slim_model(params: Mapping, masks_or_plan, kmap: KernelMap, spec: ModelSpec, *,
               residual: str = "gather"):
  """The masked model with pruned neurons and their dead inputs removed (module docstring).

  Args:
    params: the masked 'params' collection (pruned neurons exactly zero), as
      from `apply.apply_plan` or `export.load_export`.
    masks_or_plan: the CompressionPlan (masks by `neuron_masks`), or keep
      masks aligned with `kmap.entries`, ``[out]`` each (bool, or float 1/0
      as from `apply.compute_masks`).
    kmap: the kernel map of `params`.
    spec: the model's `ModelSpec` (a ViT variant or "cnn").
    residual: "gather" (drop pruned attn_proj / mlp_fc2 output columns and
      gather back into the residual width) or "masked" (keep them, zero).

  Returns:
    (module, slim_params): a flax module of the model's class with smaller
    kernels at the same parameter paths, and its numpy 'params' tree;
    ``module.apply({"params": slim_params}, x)`` gives the masked logits.

  Raises:
    ValueError: an unsupported model, an unknown residual mode, masks of the
      wrong shape, or masked-off neurons that are not zero.
  """
  if residual not in RESIDUAL_MODES:
    raise ValueError(f"unknown residual mode {residual!r}; choose one of {', '.join(RESIDUAL_MODES)}")
  module = spec.module
  if not isinstance(module, (vit.ViT, cnn.SmallCNN)):
    raise ValueError(f"slim models support the ViT family and the small CNN, not {spec.name!r}")
  if isinstance(module, vit.ViT) and module.block_widths is not None:
    raise ValueError(f"{spec.name} is already slim; pass the masked model's spec")
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(params)).items()}
  masks = _as_masks(params, masks_or_plan, kmap)
  _check_zero(flat, masks, kmap)
  slots = _by_slot(masks, kmap)
  if isinstance(module, vit.ViT):
    out, slim = _slim_vit(flat, slots, module, residual)
  else:
    out, slim = _slim_cnn(flat, slots, module)
  return slim, traverse_util.unflatten_dict(out)


def _dead_inputs(masks, kmap, spec) -> dict:
  """Kernel path -> dead input rows (pruned upstream neurons x rows each) and dead columns."""
  slots, module = _by_slot(masks, kmap), spec.module
  rows, cols = {}, {}
  if isinstance(module, vit.ViT):
    for b in range(module.depth):
      get = lambda name: slots.get((b, name), (None, None))
      (eq, mq), (ep, _), (e1, m1), (e2, _) = map(get, vit.KERNEL_NAMES)
      if eq is not None:
        q, k, v = mq.reshape(3, -1)
        cols[eq.path] = int(np.sum(q & ~k) + np.sum(k & ~q))
        if ep is not None:
          rows[ep.path] = int(np.sum(~v))
      if e1 is not None and e2 is not None:
        rows[e2.path] = int(np.sum(~m1))
  else:
    n = len(module.channels)
    for b in range(n):
      e, m = slots.get((b, "conv"), (None, None))
      nxt = slots.get((b + 1, "conv" if b + 1 < n else "dense"), (None, None))[0]
      if e is not None and nxt is not None:
        rows[nxt.path] = int(np.sum(~m)) * (nxt.fan_in // e.num_out)
    e, m = slots.get((n, "dense"), (None, None))
    if e is not None:
      rows[("head", "kernel")] = int(np.sum(~m))
  return {"rows": rows, "cols": cols}


def dead_storage(params: Mapping, plan: CompressionPlan, kmap: KernelMap, spec: ModelSpec,
                 masks: Sequence | None = None) -> dict:
  """Bits `accounting.storage_bits` counts for weights made dead by pruning upstream.

  Dead rows: inputs of a kernel fed only by pruned neurons (attn_proj rows of
  pruned v dims, mlp_fc2 rows of pruned fc1 units, conv input channels and
  the dense rows of pruned channels, head rows of pruned dense units), each
  at the kernel's bits times its kept columns (the head at its dtype). Dead
  columns: kept q (k) columns whose k (q) partner is pruned, each at
  ``bits * fan_in`` plus its per-channel scale and bias.

  Returns:
    A JSON-able dict: ``storage_bits`` (the accounted total), ``dead_bits``,
    ``dead_bytes``, ``dead_fraction`` and per-kernel ``kernels`` records.
  """
  flat = traverse_util.flatten_dict(dict(params))
  masks = _as_masks(params, plan if masks is None else masks, kmap)
  dead = _dead_inputs(masks, kmap, spec)
  by_path = {e.path: (e, m) for e, m in zip(kmap.entries, masks)}
  bits, gran = np.asarray(plan.bits), np.asarray(plan.gran)
  records, total = [], 0.0
  for path in sorted(set(dead["rows"]) | set(dead["cols"])):
    n_rows, n_cols = dead["rows"].get(path, 0), dead["cols"].get(path, 0)
    if path in by_path:
      e, m = by_path[path]
      b, g = int(bits[e.block, e.kernel]), int(gran[e.block, e.kernel])
      scale = accounting.SCALE_BITS if b != codes.FP32_BITS and g in (
          codes.PER_CHANNEL, codes.LEARNED) else 0
      if b == codes.FP32_BITS:  # an unquantized slot stores its kept columns at their dtype
        b = np.dtype(flat[e.path].dtype).itemsize * 8
      bias = 0 if e.bias_path is None else np.dtype(flat[e.bias_path].dtype).itemsize * 8
      kept = int(m.sum())
      n_bits = b * n_rows * (kept - n_cols) + n_cols * (b * e.fan_in + scale + bias)
    else:
      leaf = flat[path]
      b = np.dtype(leaf.dtype).itemsize * 8
      n_bits = b * n_rows * leaf.shape[-1]
    total += n_bits
    records.append({"path": "/".join(path), "bits": b, "dead_rows": n_rows, "dead_cols": n_cols,
                    "dead_bits": float(n_bits)})
  storage = float(accounting.storage_bits(params, plan, kmap))
  return {"storage_bits": storage, "dead_bits": total, "dead_bytes": total / 8,
          "dead_fraction": total / storage, "kernels": records}


def padding_cols(masks: Sequence, kmap: KernelMap, spec: ModelSpec) -> dict:
  """Zero qkv columns a slim ViT keeps to give every head one width: the part left masked.

  Returns ``{"qk": q plus k padding columns, "v": v padding columns, "per_block":
  [[qk, v], ...]}`` summed over heads; all 0 for the CNN.
  """
  slots, module, per_block = _by_slot(masks, kmap), spec.module, []
  if isinstance(module, vit.ViT):
    for b in range(module.depth):
      if (b, "qkv") not in slots:
        continue
      pad = [int(np.sum(live.sum(1).max(initial=1) - live.sum(1)))
             for live in _vit_qkv_live(slots[(b, "qkv")][1], module.num_heads)]
      per_block.append([2 * pad[0], pad[1]])
  return {"qk": sum(p[0] for p in per_block), "v": sum(p[1] for p in per_block),
          "per_block": per_block}


def load_slim(path: str | os.PathLike, spec: ModelSpec, *, residual: str = "gather"):
  """Reads an `export.export_model` file and returns its slim model.

  Args:
    path: the export file.
    spec: the `ModelSpec` the export was made from (``build_model(...)``).
    residual: see `slim_model`.

  Returns:
    (module, slim_params, report): the slim flax module, its 'params' tree
    (numpy), and `dead_storage`'s dict plus `shape_report`'s (parameter
    counts, each kernel's shape and slim shape) and ``padding_cols``.
  """
  params, plan = export.load_export(path)
  kmap = model_kernel_map(params, spec)
  masks = neuron_masks(params, plan, kmap)
  module, slim = slim_model(params, masks, kmap, spec, residual=residual)
  report = dead_storage(params, plan, kmap, spec, masks)
  report.update(shape_report(params, slim, kmap), padding_cols=padding_cols(masks, kmap, spec))
  return module, slim, report


def shape_report(params: Mapping, slim_params: Mapping, kmap: KernelMap) -> dict:
  """Parameter counts of both trees and each mapped kernel's shape before and after."""
  flat, slim = (traverse_util.flatten_dict(dict(p)) for p in (params, slim_params))
  size = lambda t: int(sum(np.size(x) for x in t.values()))
  return {"params": size(flat), "slim_params": size(slim),
          "kernels_slim": [{"path": "/".join(e.path), "shape": list(e.shape),
                            "slim_shape": list(np.shape(slim[e.path]))} for e in kmap.entries]}
