"""An export file as qwix quantization rules and prequantized parameters (``pip install hirelc-jax[qwix]``).

qwix (Google's JAX quantization library) serves a model through
``qwix.quantize_model(model, qwix.PtqProvider(rules))``: every rule names a
module by a regex over its path and the weight's qtype; the weights come
prequantized as ``{'qvalue', 'scale'}`` with ``weight = qvalue * scale`` and
one scale per output channel (``[1, ..., 1, out]``: qwix quantizes a weight
channelwise over its non-contracting axes).

`to_qwix` reads one file of `export.export_model` and writes each kernel that
qwix can express exactly: symmetric INT grids (uniform, per-channel and learned
granularity; bits 2-8 as qwix's ``int2``..``int8``) and the minifloats with a
dtype XLA computes with (e2m1 ``float4_e2m1fn``, e4m3 ``float8_e4m3fn``, e5m2
``float8_e5m2``). ``qvalue``
holds the kernel's grid values in scale units (the codes of our own export,
decoded by `codec.code_table`) and ``scale`` its scales (a per-tensor scale
repeated per channel), so ``qvalue * scale`` is our dequantized kernel bit for
bit. Pruned neurons that the file dropped come back as zero columns (scale 0):
exact in every qwix format, but stored, so slim the model first to save
their bytes.

Left out, each with one line in `QwixExport.left_out`, and kept as the
dequantized float32 kernel with no rule (so the qwix model still computes our
compressed model): log grids, asymmetric INT (a real-valued zero point; qwix's
zero points are integers of int4/int8), and the other minifloats (e1m0, e1m1,
e2m0, e2m2, e2m3, e3m0, e3m1, e3m2, e3m3, e4m2; JAX names the FP6 types e2m3
and e3m2, but XLA cannot convert to them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hirelc_jax.compression import codec, codes, export, formats

# (format code, bits) -> the JAX dtype of that minifloat, where JAX has it.
# JAX names float6_e2m3fn and float6_e3m2fn too, but XLA cannot convert to them (tried on CPU).
_FLOAT_QTYPES = {(codes.FLOAT, 4): "float4_e2m1fn", (codes.FLOAT, 8): "float8_e4m3fn",
                 (codes.FLOAT_EXP, 8): "float8_e5m2"}
CALIBRATION = "absmax"   # metadata for qwix only: the scales are given, never calibrated


@dataclasses.dataclass(frozen=True)
class QwixKernel:
  """One kernel qwix expresses: its module path (``'block_0/fc1'``), qwix qtype name
  (``'int3'``, ``'float8_e4m3fn'``), qvalue (the kernel's shape) and scale
  (``[1, ..., 1, out]``, float32)."""
  module: str
  qtype: str
  qvalue: np.ndarray
  scale: np.ndarray


@dataclasses.dataclass(frozen=True)
class QwixExport:
  """The qwix form of an export file.

  Attributes:
    kernels: the kernels qwix expresses, in the file's kernel order.
    params: the 'params' tree for qwix: each kernel of `kernels` as
      ``{'qvalue', 'scale'}`` (numpy, the qvalue at float32 holding exact grid
      values; `linen_params` and qwix's loader cast it to the qtype), every
      other leaf the file's dequantized array.
    left_out: one line per kernel kept in float32, naming it and why.
  """
  kernels: tuple[QwixKernel, ...]
  params: dict
  left_out: tuple[str, ...]

  def rules(self) -> list:
    """One ``qwix.QuantizationRule`` per kernel: its exact module path and qtype."""
    import qwix
    return [qwix.QuantizationRule(module_path=re.escape(k.module), weight_qtype=qwix_qtype(k.qtype),
                                  weight_calibration_method=CALIBRATION) for k in self.kernels]


def qwix_qtype(name: str):
  """qwix's qtype for a name: a JAX dtype where JAX has one (int4, int8, the floats), else
  the string qwix takes (``'int2'``, ``'int3'``, ``'int5'``..``'int7'``)."""
  return getattr(jnp, name) if name in ("int4", "int8") or name.startswith("float") else name


def _qtype(bits: int, fmt: int, gran: int) -> tuple[str | None, str]:
  """(qwix qtype name or None, why not) of one kernel's format."""
  if gran == codes.LOG:
    return None, "log grid: qwix has no power-of-two qtype"
  if gran == codes.ASYMMETRIC:
    return None, "asymmetric INT: its zero point is real-valued, qwix's are integers"
  if fmt == codes.INT:
    return f"int{bits}", ""
  if (fmt, bits) in _FLOAT_QTYPES:
    return _FLOAT_QTYPES[fmt, bits], ""
  e, m = int(formats.EXP_BITS[fmt, bits]), int(formats.MAN_BITS[fmt, bits])
  return None, f"minifloat e{e}m{m} has no XLA type"


def _prequantize(name: str, w: np.ndarray, bits: int, fmt: int, gran: int) -> tuple[np.ndarray, np.ndarray]:
  """(grid values in scale units, float32 scales ``[1, ..., 1, out]``) with product `w` bit for bit."""
  table = codec.code_table(bits, fmt, gran)
  cols = w.reshape(-1, w.shape[-1])
  per_channel = gran in (codes.PER_CHANNEL, codes.LEARNED)
  groups = cols if per_channel else cols.reshape(-1, 1)
  q, scales, ok = codec.encode_symmetric(groups, table, gran == codes.LEARNED)
  if not ok.all():   # the file's kernels are decoded from codes on this grid, so this is a bug
    raise RuntimeError(f"{name}: the exported kernel is not on its grid")
  scale = scales if per_channel else np.full(w.shape[-1], scales[0], np.float32)
  return table[q].reshape(w.shape), scale.reshape((1,) * (w.ndim - 1) + (-1,))


def to_qwix(path: str | os.PathLike) -> QwixExport:
  """The qwix rules and prequantized parameters of an export file (see the module docstring).

  Raises:
    ValueError: one line naming the file, as `export.load_variables`.
  """
  variables, _ = export.load_variables(path)
  flat = traverse_util.flatten_dict(variables["params"])
  kernels, left_out = [], []
  for rec in export.read_header(path)["kernels"]:
    bits, fmt, gran, key = rec["bits"], rec["fmt"], rec["gran"], tuple(rec["path"])
    if bits == codes.FP32_BITS:
      continue
    name, (qtype, why) = "/".join(key), _qtype(bits, fmt, gran)
    if qtype is None:
      left_out.append(f"{name} ({rec['format_name']}): {why}; kept as float32")
      continue
    qvalue, scale = _prequantize(name, np.asarray(flat[key], np.float32), bits, fmt, gran)
    kernels.append(QwixKernel("/".join(key[:-1]), qtype, qvalue, scale))
    flat[key] = {"qvalue": qvalue, "scale": scale}
  return QwixExport(tuple(kernels), traverse_util.unflatten_dict(flat), tuple(left_out))


def linen_params(qx: QwixExport, abstract_params) -> dict:
  """The 'params' of a linen model under ``qwix.quantize_model(model, qwix.PtqProvider(qx.rules()))``.

  Args:
    qx: `to_qwix`'s result.
    abstract_params: that model's 'params' from ``jax.eval_shape(ptq_model.init, key, x)``:
      qwix's WithAux(QArray) templates where it quantizes.

  Returns:
    `abstract_params` with every template filled from `qx.params`.

  Raises:
    ValueError: one line naming a parameter of the model that the file lacks.
  """
  import qwix

  flat = traverse_util.flatten_dict(qx.params, is_leaf=lambda _, x: isinstance(x, dict) and "qvalue" in x)

  def fill(path, template):
    key = tuple(k.key for k in path)
    if key not in flat:
      raise ValueError(f"params/{'/'.join(key)} is not in the export file; pass the model the file was "
                       "exported from")
    value = flat[key]
    if not hasattr(template, "array"):
      return jnp.asarray(value, template.dtype)
    qa = template.array
    return template.replace(array=qwix.QArray(jnp.asarray(value["qvalue"]).astype(qa.qvalue.dtype),
                                              jnp.asarray(value["scale"], qa.scale.dtype), None, qa.qtype))

  return jax.tree_util.tree_map_with_path(fill, abstract_params,
                                          is_leaf=lambda x: hasattr(x, "array"))


def write_qwix(qx: QwixExport, directory: str | os.PathLike) -> None:
  """Writes ``rules.json`` (module regex, weight qtype and calibration per rule, and the
  left-out lines) and ``params.npz`` ('/'-joined paths; qvalues at float32, exact) to a folder."""
  os.makedirs(directory, exist_ok=True)
  rules = [{"module_path": re.escape(k.module), "weight_qtype": k.qtype,
            "weight_calibration_method": CALIBRATION} for k in qx.kernels]
  with open(os.path.join(directory, "rules.json"), "w") as f:
    json.dump({"rules": rules, "left_out": list(qx.left_out)}, f, indent=2)
  np.savez(os.path.join(directory, "params.npz"), **traverse_util.flatten_dict(qx.params, sep="/"))
