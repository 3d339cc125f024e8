"""Screening the LLA ensemble's candidate plans before a cycle's fine-tune.

A cycle's low-level agents yield many plans (the vote, every member's greedy
plan, draws from the stochastic policies). Scoring them costs nothing with
the error table; evaluating a few for real costs one batched call. The cycle
then fine-tunes the most compressed screened plan whose measured drop the
fine-tune is expected to recover, instead of trusting the vote blindly.

Pure NumPy over small arrays: N candidates, S screened.
"""

from __future__ import annotations

import numpy as np


def unique_rows(keys: np.ndarray) -> np.ndarray:
  """Indices of the first occurrence of every distinct row of `keys` [N, ...], in order."""
  flat = keys.reshape(keys.shape[0], -1)
  _, first = np.unique(flat, axis=0, return_index=True)
  return np.sort(first)


def pick_for_evaluation(ratios, predicted_drops, limit: float, count: int, distinct=None) -> np.ndarray:
  """Which candidates to evaluate for real: int indices, at most `count`.

  Candidate 0 (the ensemble's vote) always goes first. The rest spread over
  the upper half, by compression, of the distinct candidates predicted to stay
  within `limit` points of pre-fine-tune drop; if too few are, the lowest
  predicted drops fill up.

  Args:
    ratios: float [N] honest compression of each candidate.
    predicted_drops: float [N] predicted pre-fine-tune drop (points).
    limit: the pre-fine-tune drop a fine-tune is expected to bring within target.
    count: how many to pick (S).
    distinct: int indices of the distinct candidates (default: all).
  """
  ratios, predicted = np.asarray(ratios, np.float64), np.asarray(predicted_drops, np.float64)
  pool = np.arange(len(ratios)) if distinct is None else np.asarray(distinct)
  pool = pool[pool != 0]
  feasible = pool[predicted[pool] <= limit]
  feasible = feasible[np.argsort(-ratios[feasible], kind="stable")]
  chosen = [0]
  if len(feasible) and count > 1:
    spots = np.linspace(0, (len(feasible) - 1) // 2, count - 1).round().astype(int)
    chosen += [int(feasible[i]) for i in dict.fromkeys(spots)]
  rest = pool[np.argsort(predicted[pool], kind="stable")]
  chosen += [int(i) for i in rest if i not in chosen][:max(count - len(chosen), 0)]
  return np.asarray(chosen[:count], np.int64)


def pick_for_finetune(ratios, measured_drops, limit: float, tried=None) -> int:
  """Position (in the screened list) of the plan to fine-tune.

  The most compressed one whose measured pre-fine-tune drop is within
  `limit`; if none is, the most accurate one (ties: the first). Plans marked in
  `tried` (bool [S], already fine-tuned by an earlier cycle) are passed over
  unless every screened plan was tried.
  """
  ratios, drops = np.asarray(ratios, np.float64), np.asarray(measured_drops, np.float64)
  fresh = np.ones(len(ratios), bool) if tried is None or np.all(tried) else ~np.asarray(tried, bool)
  ok = np.flatnonzero((drops <= limit) & fresh)
  if len(ok):
    return int(ok[np.argmax(ratios[ok])])
  pool = np.flatnonzero(fresh)
  return int(pool[np.argmin(drops[pool])])


def front(ratios, drops) -> np.ndarray:
  """Indices of the candidates no other beats on both compression and drop, by ratio ascending.

  Along the returned order the ratio rises and the drop never falls.
  """
  ratios, drops = np.asarray(ratios, np.float64), np.asarray(drops, np.float64)
  order = np.lexsort((drops, -ratios))          # most compressed first, ties: lower drop first
  keep, best = [], np.inf
  for i in order:
    if drops[i] < best:
      keep.append(i)
      best = drops[i]
  return np.asarray(keep[::-1], np.int64)


def bisect_next(size: int, outcomes: dict, first: int) -> int | None:
  """Which of `size` ordered candidates (compression ascending) to fine-tune next.

  `outcomes` maps each position fine-tuned so far to whether it met the target.
  The first probe is `first`; then the midpoint between the most compressed
  position that met the target and the least compressed one above it that did
  not. None when no position between them is left untried.
  """
  if not outcomes:
    return int(np.clip(first, 0, size - 1)) if size else None
  met = [i for i, ok in outcomes.items() if ok]
  lo = max(met, default=-1)
  hi = min([i for i, ok in outcomes.items() if not ok and i > lo], default=size)
  if hi - lo <= 1:
    return None
  return (lo + hi + 1) // 2 if hi == size else (lo + hi) // 2
