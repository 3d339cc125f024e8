"""The search's rules between cycles: what a fine-tune recovers, the next goal, the chosen cycle.

Pure functions over the cycles' measured numbers (no JAX). Two halves of the
validation set play separate parts: the fit half (the fine-tunes' early
stopping, the real evaluations) steers the search, the held-out half only
chooses the cycle, so the reported choice was not also the thing steered on.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from hirelc_jax.config import Config

RECOVERY_PRIOR = 0.3      # post- over pre-fine-tune drop before any fine-tune is measured
RECOVERY_FLOOR = 0.1      # so the screening limit stays within 10x the target


def recovery_estimate(pre_drops, post_drops) -> float:
  """Post- over pre-fine-tune drop, pooled over cycles, for the screening limit and the LLA signal.

  A ratio of sums with the prior as one pseudo-cycle of a 1-point pre-fine-tune
  drop, so a cycle with a tiny pre-fine-tune drop cannot dominate. Post drops
  enter as measured, negative ones too (clipping them at 0 would bias the
  estimate up). A fine-tune that recovers fully drives the ratio towards 0,
  where the floor holds it: the screening limit (target / recovery) never
  exceeds 10x the target, and the agents' predicted drop never shrinks by more.

  Args:
    pre_drops, post_drops: float [C] per completed cycle (points).
  Returns:
    float in [RECOVERY_FLOOR, 1].
  """
  pre = np.maximum(np.asarray(pre_drops, np.float64), 0.0)
  post = np.asarray(post_drops, np.float64)
  value = (RECOVERY_PRIOR + np.sum(post)) / (1.0 + np.sum(pre))
  return float(np.clip(value, RECOVERY_FLOOR, 1.0))


def cycle_goal(config: Config, ratios, fit_drops, fit_margins=0.0, start=None) -> Config:
  """The config with the next cycle's compression goal, from the cycles so far.

  `ratios` and `fit_drops` [C]: each cycle's honest compression and its
  fit-half drop after fine-tuning; a cycle met the target when its drop plus
  its margin (`fit_margins`, [C] or a scalar: `search.margin_se` standard
  errors) is within it, the rule `select_best` applies on the held-out half.
  While no cycle has met the target the goal is `start` (the error table's
  prior, `Search.prior_goal`; None: the user's goal), or halfway (in log ratio)
  between the user's goal and the least compressed cycle that missed, if that is
  lower. Once one has, the goal brackets the answer: halfway between the most
  compressed cycle that met the target and the least compressed one above it
  that did not, or `search.escalate` times the former while nothing above it
  failed. Never below the user's goal; `search.escalate=1` keeps it.
  """
  goal, escalate = config.goal, config.search.escalate
  if escalate == 1.0:
    return config
  user = goal.target_compression
  ratios = np.asarray(ratios, np.float64)
  ok = within(fit_drops, fit_margins, goal.target_accuracy_drop)
  lo = float(ratios[ok].max()) if ok.any() else None
  above = ratios[~ok & (ratios > (lo or 0.0))]
  if lo is None:
    target = start or user
    if len(above):
      target = min(target, math.sqrt(user * float(above.min())))
  else:
    target = math.sqrt(lo * float(above.min())) if len(above) else escalate * lo
  return dataclasses.replace(config, goal=dataclasses.replace(goal, target_compression=max(user, target)))


def within(drops, margins, target_drop: float) -> np.ndarray:
  """bool [C]: drop + margin <= target (margins [C] or a scalar)."""
  drops = np.asarray(drops, np.float64)
  return drops + np.broadcast_to(np.asarray(margins, np.float64), drops.shape) <= target_drop


def select_best(ratios, val_drops, target_drop: float, margins=0.0) -> int:
  """The chosen cycle: the most compressed one whose held-out drop plus margin is within the
  target (ties: the lower drop), else the most accurate one (ties: the more compressed).

  Args:
    ratios, val_drops: float [C].
    margins: float [C] or a scalar: `search.margin_se` times each drop's standard error, so a
      drop the held-out half cannot tell from one above the target does not count as within it.
  """
  ratios, drops = np.asarray(ratios, np.float64), np.asarray(val_drops, np.float64)
  ok = np.flatnonzero(within(drops, margins, target_drop))
  if len(ok):
    return int(ok[np.lexsort((drops[ok], -ratios[ok]))[0]])
  return int(np.lexsort((-ratios, drops))[0])


def resolution_note(target_drop: float, count: int, unit: float | None = 100.0) -> str | None:
  """A one-line warning when one example of the held-out half is worth more than half the
  target; `unit` is the most one example moves the metric's sum (None: unknown, no warning)."""
  if unit is None:
    return None
  step = unit / max(count, 1)
  if step <= target_drop / 2:
    return None
  return (f"the held-out validation half has {count} examples, one worth {step:.2f} points against a "
          f"{target_drop:g}-point target: the choice of cycle cannot resolve the target "
          f"(raise data.val_fraction or use more data)")
