"""One search cycle, from a state to the next: propose, screen, fine-tune, update.

The cycle is split around its fine-tune so that several searches (a sweep's
targets) can fine-tune their picks at once: `choose` proposes and screens and
returns a `Pick`; `complete` takes the pick's fine-tuned weights and returns the
next `SearchState`. `run_cycle` is the two with one fine-tune between them.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hirelc_jax import policy, proposals, screening, search
from hirelc_jax.compression import codes
from hirelc_jax.compression.plan import CompressionPlan
from hirelc_jax.config import Config
from hirelc_jax.evaluation import finetune, halves_drops, plan_accuracies, plan_metrics
from hirelc_jax.state import PLAN_FIELDS, Cycle, Evaluation, SearchState, slot_tuple


@dataclasses.dataclass(frozen=True)
class Pick:
  """A cycle up to its fine-tune: the cycle's goal (`config`), the proposal, the screened
  plans `[S, B, K]` with their pre-fine-tune accuracies, honest ratios, surrogate features
  `[S, F]`, table errors per slot (`kmap.entries`) `[S, n]` and the calibrated table's
  predicted drops `[S]`, the index of the plan to fine-tune, the surrogate's prediction for
  it, and the phase times so far."""
  cycle: int
  config: Config
  proposal: proposals.Proposal
  screened: CompressionPlan
  accs: np.ndarray
  ratios: np.ndarray
  features: Any
  errors: np.ndarray
  table_drops: np.ndarray
  index: int
  predicted: float
  times: dict

  @property
  def plan(self) -> CompressionPlan:
    return jax.tree.map(lambda a: a[self.index], self.screened)


def summarize(plan: CompressionPlan, kmap) -> dict:
  """Counts of formats and granularities and mean bits/keep over present kernels."""
  present = np.asarray(kmap.present)
  bits, keep = np.asarray(plan.bits)[present], np.asarray(plan.keep)[present]
  fmt, gran = np.asarray(plan.fmt)[present], np.asarray(plan.gran)[present]
  out = {"mean_bits": float(np.mean(np.minimum(bits, 32))), "mean_keep": float(np.mean(keep)),
         "int": int(np.sum(fmt == codes.INT)), "float": int(np.sum(fmt != codes.INT))}
  out.update({g: int(np.sum(gran == i)) for i, g in enumerate(codes.GRANULARITIES)})
  return out


def choose(search_, state: SearchState, cycle: int, base: dict, key) -> Pick:
  """Proposes this cycle's candidates (`search.proposer`: the agents and/or the integer
  program) and screens them for real; returns the pick to fine-tune."""
  config = policy.cycle_goal(search_.config, state.ratios(), [c.fit_drop for c in state.cycles],
                             search_.margins(state.cycles)[0], search_.prior_goal(state, base["eval"]))
  proposal = proposals.propose(search_, state, config, cycle, base, key)
  times = dict(proposal.times)
  t0 = time.perf_counter()
  calibration = search_.calibration(state, base["eval"])
  screened, accs, ratios, index = screen(search_, state, proposal.candidates, base["eval"], calibration)
  features, errors = search_.encode(screened), search_.errors(screened)
  predicted = float(search_.surrogate.predict(state.surrogate, features[index:index + 1])[0])
  times["eval_s"] = time.perf_counter() - t0
  return Pick(cycle, config, proposal, screened, accs, ratios, features, errors,
              search_.predicted_drops(errors, calibration), index, predicted, times)


def complete(search_, state: SearchState, pick: Pick, tuned: dict, result, base: dict, key,
             log, finetune_s: float) -> SearchState:
  """The cycle after its fine-tune (`tuned`, `result`: `finetune`'s pair): the halves' drops,
  the surrogate's update, the recovery estimate, the log line; returns the next state."""
  setup, cycle, plan, times = search_.setup, pick.cycle, pick.plan, {**pick.times, "finetune_s": finetune_s}
  t0 = time.perf_counter()
  drops = halves_drops(setup, search_.base_scores, tuned, search_.selection)
  (fit_drop, fit_se), (val_drop, val_se) = drops["fit"], drops["val"]
  val_acc = base["val"] - val_drop
  times["finetune_s"] += time.perf_counter() - t0
  pre_acc, table_drop = float(pick.accs[pick.index]), float(pick.table_drops[pick.index])

  t0 = time.perf_counter()
  sur = search_.surrogate.add(state.surrogate, pick.features, jnp.asarray(pick.accs))
  sur = search_.surrogate.record_prediction(sur, pick.predicted, pre_acc)
  sur, _ = search_.surrogate.fit(sur, jax.random.fold_in(key, 4))
  recovery = policy.recovery_estimate([base["eval"] - c.pre_finetune_accuracy for c in state.cycles]
                                      + [base["eval"] - pre_acc], [c.fit_drop for c in state.cycles] + [fit_drop])
  times["surrogate_s"] = time.perf_counter() - t0

  metrics, budgets, proposal = plan_metrics(setup, plan), pick.proposal.budgets, pick.proposal
  details = {"floor_shift": search.floor_shift(search_.config, pick.config),
             "early_stopping_accuracy": result.best_val_accuracy,
             "predicted_accuracy": pick.predicted if bool(search_.surrogate.ready(state.surrogate)) else None,
             "table_predicted_drop": None if np.isnan(table_drop) else table_drop,
             "screened": {"compression_ratio": pick.ratios.tolist(), "pre_finetune_accuracy": pick.accs.tolist(),
                          "picked": pick.index},
             **({} if budgets is None else {f"budget_{f}": np.asarray(getattr(budgets, f)).tolist()
                                            for f in ("target_ratio", "min_bits", "max_prune")}),
             "plan_summary": summarize(plan, setup.kmap), "agent_reward": proposal.rewards, "times": times}
  done = Cycle(cycle=cycle + 1, goal_compression=pick.config.goal.target_compression, plan=jax.device_get(plan),
               compression_ratio=metrics["compression_ratio"],
               paper_compression_ratio=metrics["paper_compression_ratio"], storage_bits=metrics["storage_bits"],
               pre_finetune_accuracy=pre_acc, fit_drop=fit_drop, fit_se=fit_se,
               val_accuracy=val_acc, val_drop=val_drop, val_se=val_se, recovery=recovery, details=details)
  log("cycle", **done.to_record(), message=(
      f"cycle {cycle + 1}: val {setup.task.show(val_acc)} (pre-fine-tune {setup.task.show(pre_acc)}), "
      f"compression {done.compression_ratio:.2f}x honest / {done.paper_compression_ratio:.2f}x paper"))
  label = f"C{cycle + 1}"
  evaluated = state.evaluated + tuple(
      Evaluation("cycle" if j == pick.index else "screened", label if j == pick.index else "", float(r), float(a),
                 "pre_finetune", slot_tuple(e))
      for j, (r, a, e) in enumerate(zip(pick.ratios, pick.accs, pick.errors)))
  evaluated += (Evaluation("cycle", label, done.compression_ratio, val_acc, "finetuned"),)
  return SearchState(proposal.hla, proposal.lla, sur, done.plan, state.cycles + (done,), evaluated, recovery)


def run_cycle(search_, state: SearchState, cycle: int, base: dict, key, log,
              quiet: bool) -> tuple[SearchState, dict]:
  """One whole cycle (choose, fine-tune the pick, complete). Returns (the next state, the
  fine-tuned variables)."""
  pick = choose(search_, state, cycle, base, key)
  t0 = time.perf_counter()
  tuned, result = finetune(search_.setup, pick.plan, jax.random.fold_in(key, 3), f"cycle {cycle + 1} fine-tune",
                           quiet)
  return complete(search_, state, pick, tuned, result, base, key, log, time.perf_counter() - t0), tuned


def screen(search_, state: SearchState, candidates: CompressionPlan, baseline_eval: float, calibration):
  """Evaluates `search.screen` of the candidates for real and picks the one to fine-tune,
  judging them before by the table's `calibration` (`[B, K]`, `Search.calibration`).

  Returns (screened plans [S, B, K], their accuracies [S], honest ratios [S],
  the index of the pick). With screen=1 only the vote (candidate 0) is evaluated and taken.
  """
  config = search_.config
  limit = config.goal.target_accuracy_drop / state.recovery   # pre-fine-tune drop a fine-tune recovers
  ratios = np.asarray(search_.ratios(candidates))
  keys = np.stack([candidates.bits, candidates.keep, candidates.fmt, candidates.gran], 1)
  predicted = search_.predicted_drops(search_.errors(candidates), calibration)
  idx = screening.pick_for_evaluation(ratios, predicted, limit, config.search.screen,
                                      screening.unique_rows(keys))
  screened = jax.tree.map(lambda a: a[idx], candidates)
  accs = plan_accuracies(search_.setup, screened)
  tried = [any(all(np.array_equal(np.asarray(getattr(c.plan, f)), np.asarray(getattr(screened, f))[j])
                  for f in PLAN_FIELDS) for c in state.cycles) for j in range(len(idx))]
  pick = screening.pick_for_finetune(ratios[idx], baseline_eval - accs, limit, np.asarray(tried))
  return screened, accs, ratios[idx], pick
