"""Allocation over the error table as a multiple-choice knapsack: exact and greedy.

Every plan slot (kernel) takes one option out of the LLA's action space:
bits 2..8 x format (INT, FLOAT) x granularity (uniform, log, per-channel,
learned) x keep ratio (the LLA's 15 levels), restricted by the goal. An option
costs its exact storage (`accounting.kernel_storage_bits`: codes, scales, keep
bitmap, kept biases) and predicts its Fisher-weighted error
(`error_table.slot_errors`). Errors add over slots, so

  minimise  sum_s E[s, o_s]   subject to   sum_s S[s, o_s] <= budget

is a multiple-choice knapsack (HAWQ-V3's integer program, here over the joint
space). `solve` finds the exact optimum with HiGHS (`scipy.optimize.milp`);
`greedy_path` walks each slot's lower convex hull in order of error added per
bit saved, the LP relaxation's greedy. Only each slot's Pareto options (less
error for more storage) can be optimal, so the others are dropped first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys

import jax
import numpy as np
from scipy import optimize, sparse

from hirelc_jax.agents import error_table, kernel_env
from hirelc_jax.compression import accounting, codes
from hirelc_jax.compression.kernel_map import KernelMap
from hirelc_jax.compression.plan import CompressionPlan, stack_plans
from hirelc_jax.config import GoalConfig


@dataclasses.dataclass(frozen=True)
class Options:
  """Each slot's Pareto options, sorted by storage (ascending).

  Lists have one entry per `kmap.entries` slot; entry s holds arrays of that
  slot's P_s options: `bits`, `keep`, `fmt`, `gran` (the setting), `storage`
  (bits, float64) and `error` (float64, strictly decreasing along the list).
  `fixed_bits` is the storage of everything the plan does not touch;
  `total_bits` the fp32 size of the whole model (the honest ratio's numerator).
  """
  slots: tuple[tuple[int, int], ...]
  bits: tuple[np.ndarray, ...]
  keep: tuple[np.ndarray, ...]
  fmt: tuple[np.ndarray, ...]
  gran: tuple[np.ndarray, ...]
  storage: tuple[np.ndarray, ...]
  error: tuple[np.ndarray, ...]
  fixed_bits: float
  total_bits: float
  plan_shape: tuple[int, int]

  def ratio(self, choice) -> float:
    """Honest compression of a choice (one option index per slot)."""
    used = sum(s[c] for s, c in zip(self.storage, choice))
    return self.total_bits / (self.fixed_bits + used)

  def max_ratio(self) -> float:
    return self.ratio([0] * len(self.slots))

  def plan(self, choice) -> CompressionPlan:
    """The plan `[B, K]` of a choice; absent slots stay unquantized at keep 1."""
    b, k = self.plan_shape
    bits = np.full((b, k), codes.FP32_BITS, np.int32)
    keep, fmt = np.ones((b, k), np.float32), np.zeros((b, k), np.int32)
    gran = np.full((b, k), codes.PER_CHANNEL, np.int32)
    for s, ((bi, ki), c) in enumerate(zip(self.slots, choice)):
      bits[bi, ki], keep[bi, ki] = self.bits[s][c], self.keep[s][c]
      fmt[bi, ki], gran[bi, ki] = self.fmt[s][c], self.gran[s][c]
    return CompressionPlan(bits=bits, keep=keep, fmt=fmt, gran=gran)


def action_grid(goal: GoalConfig) -> dict[str, np.ndarray]:
  """Every (bits, keep, fmt, gran) the LLA can decode under `goal`, flat arrays [N]."""
  bits = np.arange(goal.min_bits, goal.max_bits + 1) if goal.quantization else np.array([codes.FP32_BITS])
  pmax = min(goal.max_prune, 1.0 - codes.MIN_KEEP) if goal.pruning else 0.0
  levels = kernel_env.NUM_PRUNE_IDX
  keep = np.unique(np.float32(1.0 - np.arange(levels) / (levels - 1) * pmax))
  fmts = list(kernel_env.FORMAT_TABLE) if goal.quantization_type == "mixed" else \
      [codes.format_code(goal.quantization_type)]
  grans = list(kernel_env.GRAN_TABLE) if goal.strategy is None else [codes.granularity_code(goal.strategy)]
  mesh = np.meshgrid(bits, keep, fmts, grans, indexing="ij")
  return {name: m.ravel() for name, m in zip(("bits", "keep", "fmt", "gran"), mesh)}


def pareto(storage: np.ndarray, error: np.ndarray) -> np.ndarray:
  """Indices of the options no other beats on both storage and error, by storage ascending.

  Ties keep the first option (lowest index) of equal storage and error.
  """
  order = np.lexsort((np.arange(len(storage)), error, storage))
  keep, best = [], np.inf
  for i in order:
    if error[i] < best:
      keep.append(i)
      best = error[i]
  return np.asarray(keep, np.int64)


def build_options(table: error_table.ErrorTable, kmap: KernelMap, params, model_state,
                  goal: GoalConfig) -> Options:
  """Storage and predicted error of every option of every slot, Pareto-filtered."""
  grid = action_grid(goal)
  n = len(grid["bits"])
  b, k = kmap.plan_shape
  tile = lambda a, dt: np.broadcast_to(np.asarray(a, dt)[:, None, None], (n, b, k))
  plans = CompressionPlan(bits=tile(grid["bits"], np.int32), keep=tile(grid["keep"], np.float32),
                          fmt=tile(grid["fmt"], np.int32), gran=tile(grid["gran"], np.int32))
  storage = np.asarray(accounting.kernel_storage_bits(plans, kmap, params), np.float64)      # [N, E]
  slot_errors = jax.vmap(lambda p: error_table.slot_errors(table, p.bits, p.keep, p.fmt, p.gran))
  errors = np.asarray(slot_errors(plans), np.float64)                                         # [N, B, K]
  fields = {f: [] for f in ("bits", "keep", "fmt", "gran", "storage", "error")}
  for s, e in enumerate(kmap.entries):
    err = errors[:, e.block, e.kernel]
    idx = pareto(storage[:, s], err)
    for f in ("bits", "keep", "fmt", "gran"):
      fields[f].append(grid[f][idx])
    fields["storage"].append(storage[idx, s])
    fields["error"].append(err[idx])
  return Options(slots=tuple((e.block, e.kernel) for e in kmap.entries),
                 **{f: tuple(v) for f, v in fields.items()},
                 fixed_bits=accounting.uncompressed_bits(params, kmap, model_state),
                 total_bits=accounting.fp32_bits(params, model_state), plan_shape=kmap.plan_shape)


def solve(options: Options, ratio: float, time_limit: float = 30.0) -> list[int] | None:
  """The exact minimum-error choice with honest compression >= `ratio`, or None if none fits.

  One binary per (slot, option); one equality per slot; one storage row.
  """
  budget = (options.total_bits / ratio - options.fixed_bits) * (1 + 1e-9)   # float slack at max_ratio
  if sum(s[0] for s in options.storage) > budget:
    return None
  sizes = [len(s) for s in options.storage]
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  cost = np.concatenate(options.error)
  scale = max(float(np.max(np.abs(cost))), 1e-30)
  rows = np.repeat(np.arange(len(sizes)), sizes)
  one_each = sparse.csr_array((np.ones(offsets[-1]), (rows, np.arange(offsets[-1]))))
  storage = np.concatenate(options.storage)[None]
  constraints = [optimize.LinearConstraint(one_each, 1, 1),
                 optimize.LinearConstraint(storage / budget, -np.inf, 1.0)]
  with _native_stdout_silenced():   # HiGHS prints solver diagnostics from C
    result = optimize.milp(cost / scale, constraints=constraints, integrality=np.ones_like(cost),
                           bounds=optimize.Bounds(0, 1), options={"time_limit": time_limit})
  if result.x is None:
    return None
  x = result.x.round()
  return [int(np.argmax(x[offsets[s]:offsets[s + 1]])) for s in range(len(sizes))]


@contextlib.contextmanager
def _native_stdout_silenced():
  sys.stdout.flush()
  saved = os.dup(1)
  try:
    with open(os.devnull, "w") as null:
      os.dup2(null.fileno(), 1)
      yield
  finally:
    os.dup2(saved, 1)
    os.close(saved)


def solve_path(options: Options, ratios) -> tuple[list[float], CompressionPlan | None]:
  """`solve` at every ratio that fits; returns (the ratios solved, their plans stacked [N, B, K])."""
  solved, plans = [], []
  for r in ratios:
    choice = solve(options, float(r))
    if choice is not None:
      solved.append(float(r))
      plans.append(options.plan(choice))
  return solved, stack_plans(plans) if plans else None


def calibrated(options: Options, points_per_error: np.ndarray) -> Options:
  """The options with each slot's errors scaled by its calibration (`[B, K]`, points per unit
  E; floored at a millionth of the largest so the errors keep falling along each slot)."""
  scale = np.asarray(points_per_error, np.float64)
  floor = 1e-6 * max(float(scale.max()), 1e-12)
  return dataclasses.replace(options, error=tuple(e * max(float(scale[b, k]), floor)
                                                  for e, (b, k) in zip(options.error, options.slots)))


def greedy_path(options: Options) -> list[list[int]]:
  """Choices from the most to the least storage, one hull step at a time.

  Each slot starts at its most accurate option and moves down its lower convex
  hull (storage against error); every step takes the move with the least error
  added per bit saved over all slots. Returns every choice along the way.
  """
  hulls = [lower_hull(s, e) for s, e in zip(options.storage, options.error)]
  pos = [len(h) - 1 for h in hulls]
  path = [[int(h[p]) for h, p in zip(hulls, pos)]]
  while True:
    best, slot = np.inf, -1
    for s, (h, p) in enumerate(zip(hulls, pos)):
      if p == 0:
        continue
      a, b = h[p], h[p - 1]
      rate = (options.error[s][b] - options.error[s][a]) / (options.storage[s][a] - options.storage[s][b])
      if rate < best:
        best, slot = rate, s
    if slot < 0:
      return path
    pos[slot] -= 1
    path.append([int(h[p]) for h, p in zip(hulls, pos)])


def ratio_within(options: Options, path: list[list[int]], max_error: float) -> float:
  """The most compressed choice along `path` (`greedy_path`'s) whose predicted error is at
  most `max_error`: its honest ratio (1.0 when none is)."""
  ok = [options.ratio(c) for c in path if sum(e[i] for e, i in zip(options.error, c)) <= max_error]
  return max(ok, default=1.0)


def lower_hull(storage: np.ndarray, error: np.ndarray) -> list[int]:
  """Indices (storage ascending) of the lower convex hull of Pareto options."""
  hull: list[int] = []
  for i in range(len(storage)):
    while len(hull) >= 2:
      a, b = hull[-2], hull[-1]
      cross = (storage[b] - storage[a]) * (error[i] - error[a]) - (error[b] - error[a]) * (storage[i] - storage[a])
      if cross > 0:
        break
      hull.pop()
    hull.append(i)
  return hull

