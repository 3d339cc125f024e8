"""Export of a compressed model to one .npz file, and a loader that rebuilds it exactly.

`export_model` takes the 'params' collection AFTER compression (`apply.apply_plan`
or QAT output: kernels on their grids, pruned neurons exactly zero). Per mapped
kernel the file holds the kept-neuron indices (int32 ``[kept]``), the codes of
the kept columns packed at `bits` bits per code into uint32 words, the float32
scale(s) (``[1]`` per tensor or ``[kept]`` per channel), the zero point
(asymmetric, ``[1]``) and the kept bias entries; bits-32 kernels keep their
kept columns as they are. Other parameters are stored as is. A JSON header
(``header.json``, UTF-8 bytes) records each kernel's path, shape, bits, format
and granularity codes and names, number of codes, and the package version.
`kept_count(keep, out)` fixes how many neurons survive; the exporter drops
``out - kept`` neurons whose kernel column and bias are zero (lowest index
first; should a kept neuron be all zero too, the values are the same either way).

Design for exact reconstruction (compressed params in, verified codes out):
  The loader dequantizes with ONE fixed float32 formula, `_decode`:
  ``table[code] * scale`` for the symmetric grids, where ``table`` lists each
  code's grid value in scale units (`code_table`), and
  ``(code - zero_point) * scale`` for asymmetric. The quantizer produced every
  element as one float32 rounding of the same product (grid value times the
  scale it used), so a scale reproducing the kernel exists. The exporter finds
  one from the compressed weights alone: for each scale group (tensor or
  channel) with largest magnitude ``m`` it tries ``m / g`` for the grid value
  ``g`` of that element (the grid limit for uniform, per_channel and log; each
  positive grid value in turn for learned, after the given `steps`) and its
  neighbours within 3 ulps, rounds ``w / s`` to the nearest grid value, and
  keeps the first scale whose `_decode` equals the kernel BIT FOR BIT. The
  true scale is among the candidates, so on-grid kernels always pass; a
  kernel no candidate reproduces is not on its grid and raises ValueError.
  Asymmetric derives the zero point and scale from the tensor's min and max.
  Because the written codes are checked with the loader's own `_decode`, the
  loaded kept columns equal the compressed ones bit for bit (signed zeros
  included: the INT grid uses its spare top code for -0.0, minifloat and log
  codes carry a sign bit). Pruned neurons come back as +0.0 (equal to the
  compressed zeros under ``==``; the sign of a pruned zero is not stored).

Code layouts (all codes are non-negative, < 2**bits):
  * INT symmetric: ``q + qmax`` in ``0..2**b - 2``; code ``2**b - 1`` is -0.0.
  * minifloat: the format's bit pattern ``sign | exponent | mantissa``, equal
    to ``x.astype(ml_dtypes type).view(uint8)`` for the formats ml_dtypes has.
  * log: ``sign << (b-1) | m`` with ``m = 0`` for zero and ``m = L - k`` for
    the magnitude ``2**-k``, ``L = 2**(b-1) - 1``.
  * asymmetric: ``q`` in ``0..2**b - 1`` with ``w = (q - zero_point) * scale``.

Quantized kernels must be float32. `np.savez_compressed` is the default: packed
codes barely compress, but the file beats plain `np.savez` by 5-25%.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Sequence

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util

from hirelc_jax import __version__
from hirelc_jax.compression import accounting, codes, formats
from hirelc_jax.compression.kernel_map import KernelEntry, KernelMap
from hirelc_jax.compression.plan import CompressionPlan
from hirelc_jax.compression.prune import kept_count

FILE_VERSION = 1
HEADER_KEY = "header.json"
_ULPS = np.array([0, -1, 1, -2, 2, -3, 3], np.int32)
_PROBE_ROWS = 16


@dataclasses.dataclass(frozen=True)
class ExportInfo:
  """What `export_model` wrote.

  Attributes:
    path: the .npz file.
    file_bytes: its size on disk.
    payload_bytes: bytes of the stored arrays (no npy/zip headers).
    storage_bits: `accounting.storage_bits` of the model under the plan.
    num_kernels: mapped kernels written.
  """
  path: str
  file_bytes: int
  payload_bytes: int
  storage_bits: float
  num_kernels: int

  @property
  def overhead(self) -> float:
    """File size over the accounted size, ``8 * file_bytes / storage_bits``."""
    return 8.0 * self.file_bytes / self.storage_bits


def pack_codes(values: np.ndarray, bits: int) -> np.ndarray:
  """Packs codes into a little-endian bit stream of uint32 words.

  Args:
    values: integer codes ``[n]`` in ``0..2**bits - 1``.
    bits: bits per code, 1..8.

  Returns:
    uint32 ``[ceil(n * bits / 32)]``; code ``i`` is bits ``i*bits ..`` of the stream.
  """
  v = np.asarray(values).reshape(-1)
  if v.size and (v.min() < 0 or v.max() >= 2 ** bits):
    raise ValueError(f"codes must lie in 0..{2 ** bits - 1} for {bits} bits")
  v = v.astype(np.uint8)
  stream = ((v[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).astype(np.uint8)
  packed = np.packbits(stream.reshape(-1), bitorder="little")
  packed = np.pad(packed, (0, -packed.size % 4))
  return packed.view("<u4").astype(np.uint32)


def unpack_codes(words: np.ndarray, bits: int, n: int) -> np.ndarray:
  """Inverse of `pack_codes`: uint32 words -> uint8 codes ``[n]``."""
  raw = np.asarray(words, "<u4").view(np.uint8)
  stream = np.unpackbits(raw, bitorder="little")[:n * bits].reshape(n, bits)
  return (stream << np.arange(bits, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)


def _minifloat_table(fmt: int, bits: int) -> np.ndarray:
  """Value of every bit pattern of a minifloat format; NaN where not finite."""
  e, m = int(formats.EXP_BITS[fmt, bits]), int(formats.MAN_BITS[fmt, bits])
  c = np.arange(2 ** bits, dtype=np.int64)
  exp, man, neg = (c >> m) & (2 ** e - 1), c & (2 ** m - 1), (c >> (bits - 1)) & 1
  bias = 2 ** (e - 1) - 1
  mag = np.where(exp == 0, man * 2.0 ** (1 - bias - m),
                 (1.0 + man / 2.0 ** m) * 2.0 ** (exp - bias))
  mag = np.where(mag > float(formats.MAX_FINITE[fmt, bits]), np.nan, mag)
  return np.where(neg == 1, -mag, mag).astype(np.float32)


def code_table(bits: int, fmt: int, gran: int) -> np.ndarray:
  """Grid value, in scale units, of every code of a symmetric mode.

  Args:
    bits: 2..8.
    fmt: format code (ignored by log).
    gran: granularity code other than asymmetric.

  Returns:
    float32 ``[2**bits]``; NaN marks codes that are not grid values.
  """
  n = 2 ** bits
  half = n // 2
  if gran == codes.LOG:
    mag = np.where(np.arange(half) == 0, 0.0, 2.0 ** (np.arange(half) - (half - 1)))
    return np.concatenate([mag, -mag]).astype(np.float32)
  if fmt == codes.INT:
    return np.append(np.arange(n - 1) - (half - 1.0), -0.0).astype(np.float32)
  return _minifloat_table(fmt, bits)


def _nearest_codes(x: np.ndarray, table: np.ndarray) -> np.ndarray:
  """Code of the grid value nearest to each `x` (the sign of a zero kept)."""
  neg_zero = (table == 0) & np.signbit(table)
  valid = np.flatnonzero(np.isfinite(table) & ~neg_zero)
  order = valid[np.argsort(table[valid], kind="stable")]
  vals = table[order]
  hi = np.clip(np.searchsorted(vals, x), 1, vals.size - 1)
  pick = np.where(x - vals[hi - 1] <= vals[hi] - x, hi - 1, hi)
  out = order[pick]
  return np.where((vals[pick] == 0) & np.signbit(x), np.flatnonzero(neg_zero)[0], out).astype(np.uint8)


def _decode(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, table: np.ndarray | None):
  """The dequantizer used by exporter checks and loader alike; float32 ``[rows, G]``."""
  if table is None:
    return (q.astype(np.float32) - zero) * scale
  return table[q] * scale


def _same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Per column: every element bitwise equal. ``[rows, G] -> [G]``."""
  return np.all(a.view(np.uint32) == b.view(np.uint32), axis=0)


def _ulp_candidates(base) -> np.ndarray:
  """float32 neighbours of positive `base` (``[...]``) within 3 ulps, ``[7, ...]``."""
  ints = np.asarray(base, np.float32).view(np.int32)
  return (ints[None] + _ULPS.reshape((-1,) + (1,) * np.ndim(ints))).view(np.float32)


def _encode_symmetric(w: np.ndarray, table: np.ndarray, learned: bool, first=None):
  """Codes and scales whose `_decode` equals `w` bit for bit, column by column.

  Args:
    w: float32 ``[rows, G]``, one scale group per column.
    table: `code_table` of the mode.
    learned: search every positive grid value for the largest element.
    first: optional float32 ``[G]`` scales to try first (learned steps).

  Returns:
    (uint8 codes ``[rows, G]``, float32 scales ``[G]``, bool solved ``[G]``).
  """
  m = np.max(np.abs(w), axis=0, initial=0.0)
  pos = np.sort(table[np.isfinite(table) & (table > 0)])[::-1]
  grid_values = pos if learned else pos[:1]
  cands = [np.zeros_like(m)] + ([] if first is None else [np.asarray(first, np.float32)])
  cands += [c for g in grid_values for c in _ulp_candidates(m / np.float32(g))]
  q = np.zeros(w.shape, np.uint8)
  scale = np.zeros(m.shape, np.float32)
  solved = np.zeros(m.shape, bool)
  with np.errstate(all="ignore"):
    for cand in cands:
      if solved.all():
        break
      todo = np.flatnonzero(~solved & np.isfinite(cand) & ((cand > 0) == (m > 0)))
      for rows in (slice(0, _PROBE_ROWS), slice(None)):  # cheap probe, then every row
        s, wt = cand[todo], w[rows, todo]
        qt = _nearest_codes(np.where(s > 0, wt / np.where(s > 0, s, 1), wt), table)
        ok = _same_bits(_decode(qt, s, None, table), wt)
        todo, qt = todo[ok], qt[:, ok]
      q[:, todo], scale[todo], solved[todo] = qt, cand[todo], True
  return q, scale, solved


def _encode_asymmetric(w: np.ndarray, lo: float, hi: float, bits: int):
  """(codes, scale [1], zero point [1]) reproducing `w` [rows, 1] exactly, or None.

  `lo`, `hi` are the min and max of the whole compressed tensor (pruned zeros
  included), the values of codes 0 and (almost always) 2**b - 1.
  """
  n = 2 ** bits - 1
  cands = [(np.float32(w.flat[0]), 0.0)]  # a constant tensor: (1 - 0) * c
  for d in (n, n - 1):
    s_est = (hi - lo) / d
    if not s_est > 0:
      continue
    z = float(np.round(-lo / s_est))
    cands += [(s, z) for top, k in ((hi, d - z), (lo, -z)) if k != 0
              for s in _ulp_candidates(np.float32(top / k))]
  with np.errstate(all="ignore"):
    for s, z in cands:
      s, z = np.float32(s), np.float32(z)
      q = np.where(s != 0, np.clip(np.round(w / s) + z, 0, n), 1.0)
      q = np.nan_to_num(q).astype(np.uint8)
      if _same_bits(_decode(q, s, z, None), w).all():
        return q, np.array([s], np.float32), np.array([z], np.float32)
  return None


def _raw(x: np.ndarray) -> tuple[np.ndarray, str]:
  """Array safe for .npy (ml_dtypes types as an unsigned view) and its dtype name."""
  return (x if x.dtype.kind in "biufc" else x.view(f"u{x.dtype.itemsize}")), x.dtype.name


def _unraw(x: np.ndarray, name: str) -> np.ndarray:
  dtype = getattr(ml_dtypes, name, None) or np.dtype(name)
  return x if x.dtype == np.dtype(dtype) else x.view(dtype)


def _format_name(bits: int, fmt: int, gran: int) -> str:
  if bits == codes.FP32_BITS or gran == codes.LOG:
    return "fp32" if bits == codes.FP32_BITS else f"log{bits}"
  return formats.format_name(fmt, bits) + ("_asym" if gran == codes.ASYMMETRIC else "")


def _check_plan(plan: CompressionPlan, kmap: KernelMap) -> dict:
  """Concrete plan fields as numpy; raises ValueError on a shape or value mismatch."""
  fields = {k: np.asarray(getattr(plan, k)) for k in ("bits", "keep", "fmt", "gran")}
  if plan.shape != kmap.plan_shape:
    entry = next((e for e in kmap.entries if e.block >= plan.shape[0] or e.kernel >= plan.shape[-1]),
                 kmap.entries[0])
    raise ValueError(f"plan has shape {plan.shape}, but the kernel map needs {kmap.plan_shape}; "
                     f"kernel {'/'.join(entry.path)} sits in slot ({entry.block}, {entry.kernel})")
  plan.validate()
  return fields


def _kernel_arrays(e: KernelEntry, flat: dict, fields: dict, step) -> tuple[dict, dict]:
  """Arrays and header record of one mapped kernel; raises ValueError naming it."""
  name, slot = "/".join(e.path), (e.block, e.kernel)
  if e.path not in flat or flat[e.path].shape != e.shape:
    raise ValueError(f"kernel {name} is missing from params or its shape is not {e.shape}")
  if step is not None and np.shape(step) != (e.num_out,):
    raise ValueError(f"kernel {name}: step has shape {np.shape(step)}, expected ({e.num_out},)")
  w, bias = flat[e.path], None if e.bias_path is None else flat[e.bias_path]
  bits, fmt, gran = (int(fields[k][slot]) for k in ("bits", "fmt", "gran"))
  keep, out = fields["keep"][slot], w.shape[-1]
  cols = w.reshape(-1, out)
  if not (np.isfinite(cols).all() and (bias is None or np.isfinite(bias).all())):
    raise ValueError(f"kernel {name} (or its bias) holds NaN or Inf; it cannot be exported")
  num_pruned = out - int(kept_count(keep, out))
  zero = ~np.any(cols != 0, axis=0) & (True if bias is None else (bias == 0))
  if zero.sum() < num_pruned:
    raise ValueError(f"kernel {name}: the plan prunes {num_pruned} of {out} neurons but only "
                     f"{int(zero.sum())} are zero; pass the compressed params (after apply_plan)")
  keep_mask = np.ones(out, bool)
  keep_mask[np.flatnonzero(zero)[:num_pruned]] = False
  idx = np.flatnonzero(keep_mask).astype(np.int32)
  kept = cols[:, idx]
  arrays = {"indices": idx}
  if bias is not None:
    arrays["bias"], _ = _raw(bias[idx])
  record = dict(path=name, shape=list(w.shape), dtype=w.dtype.name, bits=bits, fmt=fmt, gran=gran,
                format_name=_format_name(bits, fmt, gran), granularity=codes.GRANULARITIES[gran],
                kept=int(idx.size), num_codes=0, block=e.block, kernel=e.kernel, key_path=list(e.path),
                bias_path=None if bias is None else list(e.bias_path),
                bias_dtype=None if bias is None else bias.dtype.name)
  if bits == codes.FP32_BITS:
    arrays["weights"], _ = _raw(kept)
    return arrays, record
  if w.dtype != np.float32:
    raise ValueError(f"kernel {name} is {w.dtype}; quantized kernels must be float32")
  if gran == codes.ASYMMETRIC:
    res = _encode_asymmetric(kept.reshape(-1, 1), float(cols.min()), float(cols.max()), bits)
    solved = res is not None
    if solved:
      q, arrays["scales"], arrays["zero_point"] = res
  else:
    per_channel = gran in (codes.PER_CHANNEL, codes.LEARNED)
    groups = kept if per_channel else kept.reshape(-1, 1)
    first = None if step is None or gran != codes.LEARNED else np.asarray(step, np.float32)[idx]
    q, arrays["scales"], ok = _encode_symmetric(groups, code_table(bits, fmt, gran),
                                                gran == codes.LEARNED, first)
    solved = bool(ok.all())
  if not solved:
    raise ValueError(f"kernel {name} does not lie on its {record['granularity']} "
                     f"{record['format_name']} grid; export the compressed params (after apply_plan)")
  arrays["codes"] = pack_codes(q.reshape(-1), bits)
  record["num_codes"] = int(q.size)
  return arrays, record


def export_model(params: Mapping, plan: CompressionPlan, kmap: KernelMap, path: str | os.PathLike,
                 *, steps: Sequence | None = None, compress: bool = True) -> ExportInfo:
  """Writes a compressed 'params' tree to one .npz file (see the module docstring).

  Args:
    params: the 'params' collection after `apply.apply_plan` (or QAT).
    plan: the concrete CompressionPlan, fields ``[num_blocks, num_kernels]``.
    kmap: the kernel map of `params`.
    path: output file; written as given (no suffix added).
    steps: optional learned steps aligned with `kmap.entries`, ``[out]`` each;
      tried first as the scales of 'learned' kernels.
    compress: `np.savez_compressed` (default) or plain `np.savez`.

  Returns:
    ExportInfo with the file size and `accounting.storage_bits`.

  Raises:
    ValueError naming the kernel: a plan shape that does not match the kernel
    map, a missing or misshapen kernel, NaN/Inf, unpruned neurons the plan
    prunes, or a kernel that is not on its quantization grid.
  """
  fields = _check_plan(plan, kmap)
  if steps is not None and len(steps) != len(kmap.entries):
    raise ValueError(f"steps has {len(steps)} entries; the kernel map has {len(kmap.entries)}")
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(params)).items()}
  arrays, kernels, raw = {}, [], []
  for i, e in enumerate(kmap.entries):
    kernel_arrays, record = _kernel_arrays(e, flat, fields, None if steps is None else steps[i])
    kernels.append(record)
    arrays.update({f"kernel.{i}.{k}": v for k, v in kernel_arrays.items()})
  claimed = {e.path for e in kmap.entries} | {e.bias_path for e in kmap.entries}
  for j, (p, x) in enumerate(kv for kv in flat.items() if kv[0] not in claimed):
    arrays[f"param.{j}"], dtype = _raw(x)
    raw.append(dict(path=list(p), dtype=dtype))
  for k, v in fields.items():
    arrays[f"plan.{k}"] = v
  header = dict(file_version=FILE_VERSION, package="hirelc-jax", version=__version__,
                kernel_names=list(kmap.kernel_names), num_blocks=kmap.num_blocks,
                kernels=kernels, params=raw)
  payload = sum(a.nbytes for a in arrays.values())
  arrays[HEADER_KEY] = np.frombuffer(json.dumps(header).encode(), np.uint8)
  with open(path, "wb") as f:
    (np.savez_compressed if compress else np.savez)(f, **arrays)
  return ExportInfo(os.fspath(path), os.path.getsize(path), payload,
                    float(accounting.storage_bits(params, plan, kmap)), len(kmap.entries))


def _load_kernel(data, i: int, rec: dict) -> tuple[np.ndarray, np.ndarray | None]:
  """Rebuilds one kernel (and its bias) with pruned neurons as zeros."""
  shape, bits, idx = tuple(rec["shape"]), rec["bits"], data[f"kernel.{i}.indices"]
  rows = int(np.prod(shape[:-1]))
  if bits == codes.FP32_BITS:
    kept = _unraw(data[f"kernel.{i}.weights"], rec["dtype"])
  else:
    q = unpack_codes(data[f"kernel.{i}.codes"], bits, rec["num_codes"]).reshape(rows, idx.size)
    scales = data[f"kernel.{i}.scales"]
    if rec["gran"] == codes.ASYMMETRIC:
      kept = _decode(q, scales, data[f"kernel.{i}.zero_point"], None)
    else:
      kept = _decode(q, scales, None, code_table(bits, rec["fmt"], rec["gran"]))
  w = np.zeros((rows, shape[-1]), kept.dtype)
  w[:, idx] = kept.reshape(rows, idx.size)
  bias = None
  if rec["bias_dtype"] is not None:
    stored = _unraw(data[f"kernel.{i}.bias"], rec["bias_dtype"])
    bias = np.zeros(shape[-1], stored.dtype)
    bias[idx] = stored
  return w.reshape(shape), bias


def load_export(path: str | os.PathLike) -> tuple[dict, CompressionPlan]:
  """Reads a file written by `export_model`.

  Returns:
    (params, plan): the nested 'params' dict of numpy arrays, equal to the
    exported compressed params (kept columns bit for bit, pruned neurons as
    zeros), and the CompressionPlan.
  """
  with np.load(path, allow_pickle=False) as data:
    header = json.loads(data[HEADER_KEY].tobytes().decode())
    if header.get("file_version") != FILE_VERSION:
      raise ValueError(f"{path}: export file version {header.get('file_version')} is not "
                       f"{FILE_VERSION}")
    flat = {}
    for i, rec in enumerate(header["kernels"]):
      w, bias = _load_kernel(data, i, rec)
      flat[tuple(rec["key_path"])] = w
      if bias is not None:
        flat[tuple(rec["bias_path"])] = bias
    for j, rec in enumerate(header["params"]):
      flat[tuple(rec["path"])] = _unraw(data[f"param.{j}"], rec["dtype"])
    plan = CompressionPlan(*(jnp.asarray(data[f"plan.{k}"]) for k in ("bits", "keep", "fmt", "gran")))
  return traverse_util.unflatten_dict(flat), plan
