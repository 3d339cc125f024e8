"""Export of a compressed model to one file whose bytes are the counted storage, and its exact loader.

`export_model` takes the 'params' collection AFTER compression (`apply.apply_plan`
or QAT output: kernels on their grids, pruned neurons exactly zero) and the
model's other collections (`model_state`, e.g. ResNet's ``batch_stats``).

File: an .npz archive (`np.load` reads it) with exactly two uint8 members,
stored uncompressed by default:

  ``header``   zlib-compressed UTF-8 JSON (`read_header`): magic, file and
               package version, kernel names, the plan arrays, the payload's
               length, one record per mapped kernel (path, shape, dtype, bits,
               fmt, gran, kept, bias path and dtype) and, per collection
               ('params' first, then e.g. 'batch_stats'), each other leaf's
               path, shape and dtype. No offsets: the records fix every
               section's size (`kernel_layout`), and the sections follow each
               other in record order. 0.4-1.5 KB on the registry models.
  ``payload``  the model's bytes: exactly the sections `accounting.storage_bits`
               counts, each byte-aligned, little-endian, nothing between them.

Payload sections, in this order:
  per mapped kernel (kernel-map order), with ``kept`` of its ``out`` neurons
  surviving (`kept_count(keep, out)`) and ``fan_in`` weights per neuron:
    ``keep``    ``np.packbits(mask [out], bitorder="little")``, ``ceil(out/8)``
                bytes; absent when nothing is pruned (the neurons are then all kept).
    ``codes``   `codec.pack_codes` of the kept columns' codes, row-major over
                ``[fan_in, kept]``, ``ceil(bits * fan_in * kept / 8)`` bytes;
                an unquantized (bits 32) kernel has ``weights`` instead, its
                kept columns ``[fan_in, kept]`` at the kernel's dtype.
    ``scales``  float32 ``[1]`` (uniform, log, asymmetric) or ``[kept]``
                (per_channel, learned); not for bits 32.
    ``zero``    float32 ``[1]``, the zero point (asymmetric only).
    ``bias``    the kept bias entries ``[kept]`` at the bias dtype.
  then every other leaf of 'params' and of each other collection, at its
  dtype, in flattened-key order.
So ``8 * payload bytes - storage bits`` is the byte padding of the bitmaps
and codes alone: between 0 and 14 bits per kernel. The header (with the plan)
is the only part the accounting does not count; with the .npz's member
headers (~0.5 KB) the file is the payload plus 1-2 KB. `compress=True`
deflates both members instead: the layout inside is the same, the file
smaller (packed codes of bell-shaped weights have less entropy than their
bits), but the size is then data dependent; the default keeps the file the
counted bytes plus that fixed header.

The exporter drops ``out - kept`` neurons whose kernel column and bias are
zero (lowest index first; should a kept neuron be all zero too, the values
are the same either way). Codes are found and checked with the loader's own
`codec.decode` (see `hirelc_jax.compression.codec` for the design), so the
loaded kept columns equal the compressed ones BIT FOR BIT, signed zeros
included; pruned neurons come back as +0.0 (equal to the compressed zeros
under ``==``; the sign of a pruned zero is not stored). Every other leaf comes
back byte for byte. Quantized kernels must be float32.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
import zlib
from typing import Mapping, Sequence

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util

from hirelc_jax import __version__
from hirelc_jax.compression import accounting, codec, codes, formats
from hirelc_jax.compression.codec import code_table, pack_codes, unpack_codes  # noqa: F401 (API)
from hirelc_jax.compression.kernel_map import KernelEntry, KernelMap
from hirelc_jax.compression.plan import CompressionPlan
from hirelc_jax.compression.prune import kept_count

FILE_VERSION = 2
MAGIC = "hirelc-jax export"
HEADER_KEY, PAYLOAD_KEY = "header", "payload"
PLAN_FIELDS = ("bits", "keep", "fmt", "gran")


@dataclasses.dataclass(frozen=True)
class ExportInfo:
  """What `export_model` wrote.

  Attributes:
    path: the .npz file.
    file_bytes: its size on disk.
    payload_bytes: bytes of the payload member (the counted sections, byte-padded).
    header_bytes: bytes of the zlib-compressed JSON header member.
    storage_bits: `accounting.storage_bits` of the model (with its model_state) under the plan.
    num_kernels: mapped kernels written.
  """
  path: str
  file_bytes: int
  payload_bytes: int
  header_bytes: int
  storage_bits: float
  num_kernels: int

  @property
  def counted_bytes(self) -> float:
    """The accounted storage in bytes, ``storage_bits / 8``."""
    return self.storage_bits / 8.0

  @property
  def overhead(self) -> float:
    """File size over the accounted size, ``8 * file_bytes / storage_bits``."""
    return 8.0 * self.file_bytes / self.storage_bits


def format_label(bits: int, fmt: int, gran: int) -> str:
  """Short name of a kernel's number format: "fp32", "log3", "int4", "e2m1", "int8_asym"."""
  if bits == codes.FP32_BITS or gran == codes.LOG:
    return "fp32" if bits == codes.FP32_BITS else f"log{bits}"
  return formats.format_name(fmt, bits) + ("_asym" if gran == codes.ASYMMETRIC else "")


def _dtype(name: str) -> np.dtype:
  """The numpy dtype of a stored dtype name (ml_dtypes types included)."""
  return np.dtype(getattr(ml_dtypes, name, None) or name)


def _le(dtype: np.dtype) -> np.dtype:
  """The little-endian form of a builtin numeric dtype (ml_dtypes types are native)."""
  return dtype.newbyteorder("<") if dtype.kind in "biufc" and dtype.itemsize > 1 else dtype


def _to_bytes(x: np.ndarray) -> bytes:
  x = np.ascontiguousarray(x)
  return x.astype(_le(x.dtype), copy=False).tobytes()


def _take(payload: np.ndarray, offset: int, dtype: np.dtype, shape) -> tuple[np.ndarray, int]:
  """The section of `shape` and `dtype` at byte `offset` as a fresh array, and the next offset."""
  nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if offset + nbytes > payload.size:
    raise ValueError(f"payload ends at byte {payload.size}; a section needs bytes up to {offset + nbytes}")
  raw = payload[offset:offset + nbytes].copy()
  return raw.view(_le(dtype)).astype(dtype, copy=False).reshape(shape), offset + nbytes


def _check_plan(plan: CompressionPlan, kmap: KernelMap) -> dict:
  """Concrete plan fields as numpy; raises ValueError on a shape or value mismatch."""
  fields = {k: np.asarray(getattr(plan, k)) for k in PLAN_FIELDS}
  if plan.shape != kmap.plan_shape:
    entry = next((e for e in kmap.entries if e.block >= plan.shape[0] or e.kernel >= plan.shape[-1]),
                 kmap.entries[0])
    raise ValueError(f"plan has shape {plan.shape}, but the kernel map needs {kmap.plan_shape}; "
                     f"kernel {'/'.join(entry.path)} sits in slot ({entry.block}, {entry.kernel})")
  plan.validate()
  return fields


def kernel_layout(rec: dict) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
  """The payload sections of one kernel record, in order: ``[(name, dtype, shape)]``.

  Derived from the record alone (shape, dtype, bits, gran, kept, bias_dtype),
  so the header needs no offsets: writer and loader walk the payload with it.
  """
  shape, bits, gran, kept = tuple(rec["shape"]), rec["bits"], rec["gran"], rec["kept"]
  rows, out = int(np.prod(shape[:-1])), shape[-1]
  f32 = np.dtype(np.float32)
  sections = [("keep", np.dtype(np.uint8), (-(-out // 8),))] if kept < out else []
  if bits == codes.FP32_BITS:
    sections.append(("weights", _dtype(rec["dtype"]), (rows, kept)))
  else:
    per_channel = gran in (codes.PER_CHANNEL, codes.LEARNED)
    sections += [("codes", np.dtype(np.uint8), (codec.packed_bytes(rows * kept, bits),)),
                 ("scales", f32, (kept if per_channel else 1,))]
    sections += [("zero", f32, (1,))] if gran == codes.ASYMMETRIC else []
  if rec["bias_dtype"] is not None:
    sections.append(("bias", _dtype(rec["bias_dtype"]), (kept,)))
  return sections


def _kernel_sections(e: KernelEntry, flat: dict, fields: dict, step) -> tuple[dict, list]:
  """Header record and ``[(section name, array)]`` of one mapped kernel; raises ValueError naming it."""
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
  idx = np.flatnonzero(keep_mask)
  kept = cols[:, idx]
  record = dict(path=list(e.path), shape=list(w.shape), dtype=w.dtype.name, bits=bits, fmt=fmt,
                gran=gran, format_name=format_label(bits, fmt, gran), kept=int(idx.size),
                bias_path=None if bias is None else list(e.bias_path),
                bias_dtype=None if bias is None else bias.dtype.name)
  sections = [("keep", np.packbits(keep_mask, bitorder="little"))] if num_pruned else []
  tail = [] if bias is None else [("bias", bias[idx])]
  if bits == codes.FP32_BITS:
    return record, sections + [("weights", kept)] + tail
  if w.dtype != np.float32:
    raise ValueError(f"kernel {name} is {w.dtype}; quantized kernels must be float32")
  if gran == codes.ASYMMETRIC:
    res = codec.encode_asymmetric(kept.reshape(-1, 1), float(cols.min()), float(cols.max()), bits)
    solved = res is not None
    q, scale_arrays = (res[0], [("scales", res[1]), ("zero", res[2])]) if solved else (None, [])
  else:
    per_channel = gran in (codes.PER_CHANNEL, codes.LEARNED)
    groups = kept if per_channel else kept.reshape(-1, 1)
    first = None if step is None or gran != codes.LEARNED else np.asarray(step, np.float32)[idx]
    q, scales, ok = codec.encode_symmetric(groups, code_table(bits, fmt, gran), gran == codes.LEARNED,
                                           first)
    solved, scale_arrays = bool(ok.all()), [("scales", scales)]
  if not solved:
    raise ValueError(f"kernel {name} does not lie on its {codes.GRANULARITIES[gran]} "
                     f"{record['format_name']} grid; export the compressed params (after apply_plan)")
  return record, sections + [("codes", pack_codes(q.reshape(-1), bits))] + scale_arrays + tail


def _plan_json(a) -> dict:
  """A plan field as JSON: dtype, shape and the shortest values that round-trip at that dtype."""
  a = np.asarray(a)
  values = [float(str(v)) if a.dtype.kind == "f" else int(v) for v in a.reshape(-1)]
  return {"dtype": a.dtype.name, "shape": list(a.shape), "values": values}


def export_model(params: Mapping, plan: CompressionPlan, kmap: KernelMap, path: str | os.PathLike,
                 *, steps: Sequence | None = None, model_state: Mapping | None = None,
                 compress: bool = False) -> ExportInfo:
  """Writes a compressed model to one .npz file (layout in the module docstring).

  Args:
    params: the 'params' collection after `apply.apply_plan` (or QAT).
    plan: the concrete CompressionPlan, fields ``[num_blocks, num_kernels]``.
    kmap: the kernel map of `params`.
    path: output file; written as given (no suffix added).
    steps: optional learned steps aligned with `kmap.entries`, ``[out]`` each;
      tried first as the scales of 'learned' kernels.
    model_state: the variables' other collections (``{'batch_stats': ...}``);
      written as they are and counted.
    compress: deflate the two members (default: stored, so the payload's bytes
      are the file's).

  Returns:
    ExportInfo with the file, payload and header sizes and `accounting.storage_bits`.

  Raises:
    ValueError naming the kernel: a plan shape that does not match the kernel
    map, a missing or misshapen kernel, NaN/Inf, unpruned neurons the plan
    prunes, or a kernel that is not on its quantization grid.
  """
  fields = _check_plan(plan, kmap)
  if steps is not None and len(steps) != len(kmap.entries):
    raise ValueError(f"steps has {len(steps)} entries; the kernel map has {len(kmap.entries)}")
  model_state = dict(model_state or {})
  if "params" in model_state:
    raise ValueError("model_state holds a 'params' collection; pass the other collections only")
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(params)).items()}
  chunks, kernels = [], []
  for i, e in enumerate(kmap.entries):
    record, sections = _kernel_sections(e, flat, fields, None if steps is None else steps[i])
    layout = [(n, x.dtype, x.shape) for n, x in sections]
    if layout != kernel_layout(record):  # the loader walks the payload with kernel_layout
      raise RuntimeError(f"kernel {'/'.join(e.path)}: sections {layout} differ from the layout")
    kernels.append(record)
    chunks += [_to_bytes(x) for _, x in sections]
  claimed = {e.path for e in kmap.entries} | {e.bias_path for e in kmap.entries}
  trees = {"params": {p: x for p, x in flat.items() if p not in claimed}}
  trees.update({c: {p: np.asarray(x) for p, x in traverse_util.flatten_dict(dict(t)).items()}
                for c, t in model_state.items()})
  collections = {c: [dict(path=list(p), shape=list(x.shape), dtype=x.dtype.name) for p, x in t.items()]
                 for c, t in trees.items()}
  chunks += [_to_bytes(x) for t in trees.values() for x in t.values()]
  offset = sum(len(c) for c in chunks)
  header = dict(magic=MAGIC, file_version=FILE_VERSION, version=__version__,
                kernel_names=list(kmap.kernel_names), num_blocks=kmap.num_blocks,
                plan={k: _plan_json(v) for k, v in fields.items()}, payload_bytes=offset,
                kernels=kernels, collections=collections)
  head = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
  members = {HEADER_KEY: np.frombuffer(head, np.uint8),
             PAYLOAD_KEY: np.frombuffer(b"".join(chunks), np.uint8)}
  with open(path, "wb") as f:
    (np.savez_compressed if compress else np.savez)(f, **members)
  counted = float(accounting.storage_bits(params, plan, kmap, model_state))
  return ExportInfo(os.fspath(path), os.path.getsize(path), offset, len(head), counted,
                    len(kmap.entries))


def read_header(path: str | os.PathLike) -> dict:
  """The decoded JSON header of an export file (see the module docstring)."""
  with np.load(path, allow_pickle=False) as data:
    return _header(data, path)


def _header(data, path) -> dict:
  if set(data.files) != {HEADER_KEY, PAYLOAD_KEY}:
    raise ValueError(f"{path}: members {sorted(data.files)} are not an export file's "
                     f"{[HEADER_KEY, PAYLOAD_KEY]}")
  header = json.loads(zlib.decompress(data[HEADER_KEY].tobytes()).decode())
  if header.get("magic") != MAGIC or header.get("file_version") != FILE_VERSION:
    raise ValueError(f"{path}: export file version {header.get('file_version')} is not {FILE_VERSION}")
  return header


def _load_kernel(payload: np.ndarray, offset: int, rec: dict):
  """Rebuilds one kernel ``shape`` (and its bias ``[out]``) with pruned neurons as zeros.

  Returns (kernel, bias or None, the offset after the kernel's sections).
  """
  shape, bits, kept = tuple(rec["shape"]), rec["bits"], rec["kept"]
  rows, out = int(np.prod(shape[:-1])), shape[-1]
  s = {}
  for name, dtype, sec_shape in kernel_layout(rec):
    s[name], offset = _take(payload, offset, dtype, sec_shape)
  idx = np.flatnonzero(np.unpackbits(s["keep"], bitorder="little")[:out]) if "keep" in s \
      else np.arange(out)
  if idx.size != kept:
    raise ValueError(f"kernel {'/'.join(rec['path'])}: the keep map holds {idx.size} neurons, "
                     f"the header says {kept}")
  if bits == codes.FP32_BITS:
    values = s["weights"]
  else:
    q = unpack_codes(s["codes"], bits, rows * kept).reshape(rows, kept)
    table = None if rec["gran"] == codes.ASYMMETRIC else code_table(bits, rec["fmt"], rec["gran"])
    values = codec.decode(q, s["scales"], s.get("zero"), table)
  w = np.zeros((rows, out), values.dtype)
  w[:, idx] = values
  bias = None
  if "bias" in s:
    bias = np.zeros(out, s["bias"].dtype)
    bias[idx] = s["bias"]
  return w.reshape(shape), bias, offset


def load_variables(path: str | os.PathLike) -> tuple[dict, CompressionPlan]:
  """Reads a file written by `export_model`.

  Returns:
    (variables, plan): the flax variables dict ``{'params': ..., **model_state}``
    of numpy arrays, ready for ``module.apply`` (kept kernel columns equal the
    exported ones bit for bit, pruned neurons are zeros, every other leaf is
    byte for byte the exported one), and the CompressionPlan.

  Raises:
    ValueError: one line naming the file, for a missing, empty, truncated, garbled or
      foreign file.
  """
  try:
    return _read(path)
  except ValueError as err:
    if str(err).startswith(str(path)):
      raise
    raise ValueError(f"{path}: {err}") from None
  except (OSError, EOFError, KeyError, IndexError, TypeError, zipfile.BadZipFile, zlib.error,
          UnicodeDecodeError) as err:
    what = "missing" if isinstance(err, FileNotFoundError) else \
        "empty" if os.path.exists(path) and os.path.getsize(path) == 0 else "truncated or not an export file"
    raise ValueError(f"{path} is {what} ({type(err).__name__}: {str(err)[:120]}); "
                     "export the model again (hirelc_jax.compression.export.export_model)") from None


def _read(path) -> tuple[dict, CompressionPlan]:
  try:
    data = np.load(path, allow_pickle=False)
  except ValueError:   # numpy's guess: a pickle, refused
    raise ValueError(f"{path} is not an export file (not a .npz archive); pass the model_export.npz "
                     "a run wrote") from None
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise ValueError(f"{path} is a single .npy array, not an export file; pass the model_export.npz a run wrote")
  with data:
    header = _header(data, path)
    payload = data[PAYLOAD_KEY]
  if payload.size != header["payload_bytes"]:
    raise ValueError(f"{path}: payload holds {payload.size} bytes, the header says "
                     f"{header['payload_bytes']}")
  flat, offset = {}, 0
  for rec in header["kernels"]:
    w, bias, offset = _load_kernel(payload, offset, rec)
    flat[tuple(rec["path"])] = w
    if bias is not None:
      flat[tuple(rec["bias_path"])] = bias
  variables = {}
  for name, leaves in header["collections"].items():
    tree = flat if name == "params" else {}
    for rec in leaves:
      tree[tuple(rec["path"])], offset = _take(payload, offset, _dtype(rec["dtype"]), tuple(rec["shape"]))
    variables[name] = traverse_util.unflatten_dict(tree) if tree else {}
  if offset != payload.size:
    raise ValueError(f"{path}: the header's sections end at byte {offset} of a {payload.size}-byte payload")
  plan = CompressionPlan(*(jnp.asarray(np.array(f["values"], f["dtype"]).reshape(f["shape"]))
                           for f in (header["plan"][k] for k in PLAN_FIELDS)))
  return variables, plan


def load_export(path: str | os.PathLike) -> tuple[dict, CompressionPlan]:
  """Reads a file written by `export_model`: (the 'params' dict, the CompressionPlan).

  The other collections (e.g. ``batch_stats``) are in `load_variables`.
  """
  variables, plan = load_variables(path)
  return variables["params"], plan
