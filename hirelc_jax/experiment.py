"""The one impure orchestrator: baseline, sensitivity, warm-up, cycles, result.

Everything random derives from `config.seed` through `fold_in(key, phase,
cycle)`, so a run resumed from the checkpoint of its last completed cycle
ends with the same plan and accuracies as an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hirelc_jax import cycle as cycle_
from hirelc_jax import distributed, interrupts
from hirelc_jax import knapsack, policy, run_dir, run_state, search
from hirelc_jax.state import Evaluation, SearchState, slot_tuple
from hirelc_jax.agents import budget_env, error_table, kernel_env, proxies
from hirelc_jax.agents.sensitivity import estimate_sensitivity
from hirelc_jax.agents.surrogate import SurrogateConfig, encode_plan, make_surrogate, num_features
from hirelc_jax.compression import accounting
from hirelc_jax.compression.plan import CompressionPlan
from hirelc_jax.config import Config
from hirelc_jax.data.pipeline import num_examples, take
from hirelc_jax.evaluation import (Setup, _loss_fn, accuracy, halves_scores, hold_out_selection, load_inputs,
                                   make_error_table, plan_accuracies, prepare, uniform_plans)
from hirelc_jax.training import baseline

DEFAULT_POINTS_PER_ERROR = 1.0  # error-table calibration until 3 plans with moderate drops, or one collapsed, exist


class EventLog:
  """metrics.jsonl: one strict JSON object per line (NaN and Inf written as null), appended and
  flushed; every event of a resumed session carries `"resumed": true`. Written and echoed by
  process 0 alone (see `hirelc_jax.distributed`)."""

  def __init__(self, path: pathlib.Path, echo=None, resumed: bool = False):
    self.path, self.echo, self.resumed = path, echo, resumed

  def __call__(self, event: str, **fields):
    interrupts.check()
    if not distributed.writes():
      return
    record = {"event": event, "time": round(time.time(), 3), **({"resumed": True} if self.resumed else {}),
              **fields}
    with self.path.open("a") as f:
      f.write(json.dumps(json_ready(record), allow_nan=False) + "\n")
    if self.echo is not None and "message" in fields:
      self.echo(fields["message"])


def json_ready(x):
  """`x` with numpy/JAX values as Python numbers and lists, non-finite floats as None."""
  if isinstance(x, dict):
    return {k: json_ready(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [json_ready(v) for v in x]
  if hasattr(x, "__array__") and not isinstance(x, (str, bytes)):
    return json_ready(np.asarray(x).tolist())
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


class Search:
  """The agents, the surrogate and their jitted functions for one Setup.

  `selection` (x, y) is the held-out half of validation that scores fine-tuned plans;
  `base_scores` the baseline's per-example scores on the fit half and on it.
  """

  def __init__(self, setup: Setup, sensitivity, table: error_table.ErrorTable | None, selection):
    self.setup, self.config, self.selection = setup, setup.config, selection
    self.base_scores = halves_scores(setup, setup.variables, selection)
    self.table = table
    kmap = setup.kmap
    self.present = jnp.asarray(kmap.present)
    self.block_sensitivity = np.asarray(sensitivity.block)
    self.kernel_sensitivity = np.asarray(sensitivity.kernel)
    s = self.config.search
    self.surrogate = make_surrogate(SurrogateConfig(hidden=tuple(s.surrogate_hidden),
                                                    epochs=s.surrogate_epochs),
                                    num_features(*kmap.plan_shape))
    self.encode = jax.jit(jax.vmap(lambda p: encode_plan(p, self.present)))
    slots = kmap.slots
    self.slot_errors = jax.jit(jax.vmap(lambda p: error_table.slot_errors(table, p.bits, p.keep, p.fmt, p.gran)
                                        [slots])) if table is not None else None
    params, state = accounting.split_variables(setup.variables)
    self.ratios = jax.jit(jax.vmap(lambda p: accounting.compression_ratio(params, p, kmap, state)))
    self.options = knapsack.build_options(table, kmap, params, state, self.config.goal) \
        if table is not None and (s.proposer != "agents" or s.prior_goal) else None
    self.hla = search.EnsembleTrainer(budget_env.BudgetEnv(kmap.num_blocks), self.config.hla,
                                      nested=False)
    goal = self.config.goal
    if s.signal == "surrogate":
      inner = proxies.surrogate_signal_fn(self.surrogate.predict, self.present)
    elif s.signal == "error_table":
      if table is None:
        raise ValueError("search.signal='error_table' needs the error table (experiment.make_error_table)")
      inner = error_table.error_table_fn()
    else:
      inner = proxies.quant_error_proxy_fn()
    accuracy_fn = lambda sig, *a: sig[1] * inner(sig[0], *a)  # recovered drop
    env = kernel_env.KernelEnv(
        len(kmap.kernel_names), accuracy_fn, quantization_type=goal.quantization_type,
        fixed_granularity=goal.strategy, allow_pruning=goal.pruning,
        allow_quantization=goal.quantization)
    self.lla = search.EnsembleTrainer(env, self.config.lla, nested=True,
                                      in_axes_fn=kernel_env.params_in_axes)

  def for_target(self, target_accuracy_drop: float) -> "Search":
    """This search aiming at another accuracy drop: the same setup, table, agents and
    compiled programs (nothing recompiles), another `config.goal`."""
    other = copy.copy(self)
    other.config = dataclasses.replace(self.config, goal=dataclasses.replace(
        self.config.goal, target_accuracy_drop=target_accuracy_drop))
    other.setup = dataclasses.replace(self.setup, config=other.config)
    return other

  def signal(self, state: SearchState, baseline_eval: float):
    if self.config.search.signal == "surrogate":
      inner = proxies.SurrogateSignal(state.surrogate, state.plan, jnp.float32(baseline_eval))
    elif self.config.search.signal == "error_table":
      inner = self.table.replace(points_per_error=jnp.asarray(self.calibration(state, baseline_eval), jnp.float32))
    else:
      weights = proxies.stack_block_weights(self.setup.variables["params"], self.setup.kmap)
      inner = proxies.quant_error_signal(weights, self.kernel_sensitivity)
    return (inner, jnp.float32(state.recovery))

  def prior_goal(self, state: SearchState, baseline_eval: float) -> float | None:
    """The error table's guess of the goal: the most compressed plan on the calibrated table's
    greedy front whose predicted pre-fine-tune drop a fine-tune is expected to bring within
    the target (target / recovery); None with `search.prior_goal=False` or without a table."""
    if self.options is None or not self.config.search.prior_goal:
      return None
    options = self.calibrated_options(state, baseline_eval)
    limit = self.config.goal.target_accuracy_drop / state.recovery
    return knapsack.ratio_within(options, knapsack.greedy_path(options), limit)

  def margins(self, cycles) -> tuple[np.ndarray, np.ndarray]:
    """The cycles' margins, [C] each: `search.escalate_margin_se` fit-half standard errors (the
    escalation's) and `search.margin_se` held-out ones (the choice's)."""
    s = self.config.search
    return (s.escalate_margin_se * np.array([c.fit_se for c in cycles]),
            s.margin_se * np.array([c.val_se for c in cycles]))

  def errors(self, plans: CompressionPlan) -> np.ndarray:
    """The error table's E of each plan per slot (`kmap.entries`), `[N, S]`; NaN without a table."""
    if self.slot_errors is None:
      return np.full((plans.bits.shape[0], len(self.setup.kmap.entries)), np.nan)
    return np.asarray(self.slot_errors(plans), np.float64)

  def calibration(self, state: SearchState, baseline_eval: float) -> np.ndarray:
    """Points of pre-fine-tune drop per unit E for every slot `[B, K]`, refitted on every plan
    evaluated before fine-tuning: one slope per block (`search.block_calibration`) or one for all."""
    pre = [e for e in state.evaluated if e.stage == "pre_finetune" and e.slot_errors is not None]
    slots = self.setup.kmap.slots
    x = np.array([e.slot_errors for e in pre], np.float64).reshape(len(pre), len(slots[0]))
    d = np.array([baseline_eval - e.accuracy for e in pre], np.float64)
    s = self.config.search
    if not s.censored_calibration:
      x, d = x[d <= error_table.MAX_DROP], d[d <= error_table.MAX_DROP]
    fit = error_table.fit_group_calibration(x, d, slots[0]) if s.block_calibration else \
        error_table.fit_points_per_error(x.sum(1), d)
    out = np.full(self.setup.kmap.plan_shape, DEFAULT_POINTS_PER_ERROR)
    if fit is not None:
      out[slots] = fit
    return out

  def predicted_drops(self, slot_errors: np.ndarray, calibration: np.ndarray) -> np.ndarray:
    """Predicted pre-fine-tune drops `[N]` (points) of plans with per-slot errors `[N, S]`."""
    return slot_errors @ calibration[self.setup.kmap.slots]

  def calibrated_options(self, state: SearchState, baseline_eval: float) -> knapsack.Options:
    """The integer program's options with their errors in calibrated points."""
    return knapsack.calibrated(self.options, self.calibration(state, baseline_eval))


def warmup(search_: Search, key, log: EventLog, quiet: bool):
  """Random plans evaluated for real (batched, pre-fine-tune), then the first surrogate fit."""
  setup, config = search_.setup, search_.config
  count = config.search.warmup_samples
  plans = search.random_plans(key, count, setup.kmap, config)
  accs = plan_accuracies(setup, plans, desc="warm-up plans", quiet=quiet)
  sur = search_.surrogate.init(jax.random.fold_in(key, 1))
  if count:
    sur = search_.surrogate.add(sur, search_.encode(plans), jnp.asarray(accs))
    sur, _ = search_.surrogate.fit(sur, jax.random.fold_in(key, 2))
  labels, uniform = uniform_plans(setup.kmap)
  uacc = plan_accuracies(setup, uniform)
  evaluated = ()
  for kind, names, batch, batch_accs in (("warmup", [""] * count, plans, accs),
                                         ("uniform", labels, uniform, uacc)):
    if not len(names):
      continue
    ratios = np.asarray(search_.ratios(batch))
    errors = search_.errors(batch)
    evaluated += tuple(Evaluation(kind, l, float(r), float(a), "pre_finetune", slot_tuple(e))
                       for l, r, a, e in zip(names, ratios, batch_accs, errors))
  holdout = float(sur.holdout_mae)
  log("warmup", samples=count, holdout_mae=holdout, message=(
      f"warm-up: {count} random plans (half near uniform) evaluated, surrogate hold-out MAE {holdout:.2f} points"))
  return sur, evaluated


def enable_compilation_cache() -> None:
  """Persists XLA compilations under the cache root, so a second run skips compiling: all of
  them, since a run compiles ~500 programs under 0.5 s (30 s of its compiling on the 2-core CPU;
  a warm vit_mu smoke run took 93 s caching only those over 0.5 s, 64 s caching all;
  `benchmarks/results/compile_time.json`)."""
  path = baseline.cache_root() / "xla"
  path.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def run(config: Config, out_dir: pathlib.Path, *, resume: bool = False, quiet: bool = False,
        echo=print, schedule: str = "default", setup: Setup | None = None) -> dict | None:
  """Runs the whole search and writes every output into `out_dir`; returns report.json's dict
  (None on every process but 0).

  `setup` (a user's model and data, see `hirelc_jax.api`) replaces the
  registry model, dataset and baseline training of `prepare`. Everything that
  can fail on bad input is checked before `out_dir` is touched (the config,
  then the data and model); `run_dir.claim` then holds the folder for this run.
  """
  config.validate()
  inputs = load_inputs(config) if setup is None else None
  with run_dir.claim(out_dir, config, resume) as note:
    return _run(config, pathlib.Path(out_dir), inputs, setup, resume, quiet, echo, schedule, note)


def _run(config: Config, out_dir: pathlib.Path, inputs, setup, resume: bool, quiet: bool, echo,
         schedule: str, note) -> dict | None:
  shared = begin(config, out_dir, inputs, setup, resume, quiet, echo, note)
  ckpt_dir = out_dir / "checkpoints"
  t = time.perf_counter()
  state, done = resume_cycles(shared.search, shared.state, ckpt_dir, shared, resume)
  for cycle in range(done, config.search.cycles):
    state, tuned = cycle_.run_cycle(shared.search, state, cycle, shared.base, cycle_key(shared.key, cycle),
                                    shared.log, quiet)
    run_state.save_state(ckpt_dir / f"cycle_{cycle + 1}", state, tuned, cycle + 1)
  shared.phases["cycles"] = time.perf_counter() - t
  return conclude(shared, shared.search, state, out_dir, schedule)


@dataclasses.dataclass(frozen=True)
class Shared:
  """What a run's searches share once the cycles can start: the `Search` (setup, error
  table, compiled programs), the state after the warm-up, the baseline's accuracies, the
  sensitivity, the run's key and event log, the phase times and the start time."""
  search: Search
  state: SearchState
  base: dict
  sensitivity: Any
  key: Any
  log: EventLog
  phases: dict
  start: float


def cycle_key(key, cycle: int):
  return jax.random.fold_in(key, 100 + cycle)


def begin(config: Config, out_dir: pathlib.Path, inputs, setup, resume: bool, quiet: bool, echo,
          note) -> Shared:
  """Everything before the cycles, written into `out_dir` (config.json, metrics.jsonl):
  the baseline, its accuracies, the sensitivity, the error table, the warm-up."""
  enable_compilation_cache()
  start = time.perf_counter()
  phases: dict[str, float] = {}
  if distributed.writes():
    from hirelc_jax import config as config_io
    (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    config_io.save(config, out_dir / "config.json")
  log = EventLog(out_dir / "metrics.jsonl", echo=None if quiet else echo, resumed=resume)
  log("start", resume=resume, **({"message": f"note: {note}"} if note else {}))
  key = jax.random.key(config.seed)

  t = time.perf_counter()
  if setup is None:
    setup = prepare(config, inputs, quiet=quiet, log=lambda m: log("baseline", message=m))
  setup, selection = hold_out_selection(setup)
  data = setup.data
  n_eval = config.search.eval_samples
  base = {"val": accuracy(setup, setup.variables, *selection),
          "fit": accuracy(setup, setup.variables, data.x_val, data.y_val),
          "eval": accuracy(setup, setup.variables, take(data.x_val, slice(None, n_eval)),
                           take(data.y_val, slice(None, n_eval))),
          "test": accuracy(setup, setup.variables, data.x_test, data.y_test)}
  phases["baseline"] = time.perf_counter() - t
  show = setup.task.show
  log("baseline_accuracy", **base, message=f"baseline: val {show(base['val'])}, test {show(base['test'])}")
  note = policy.resolution_note(config.goal.target_accuracy_drop, num_examples(selection[1]), setup.task.unit)
  if note:
    log("warning", message=f"warning: {note}")

  t = time.perf_counter()
  state_vars = {k: v for k, v in setup.variables.items() if k != "params"}
  n_sens = config.search.sensitivity_samples
  sens = estimate_sensitivity(_loss_fn(setup.spec.module, state_vars, setup.task), setup.variables["params"],
                              setup.kmap, take(data.x_train, slice(None, n_sens)),
                              take(data.y_train, slice(None, n_sens)),
                              method=config.search.sensitivity, num_samples=n_sens,
                              key=jax.random.fold_in(key, 10))
  phases["sensitivity"] = time.perf_counter() - t
  log("sensitivity", block=np.asarray(sens.block).tolist(), method=config.search.sensitivity,
      message=f"sensitivity ({config.search.sensitivity}): "
              + " ".join(f"{s:.2f}" for s in np.asarray(sens.block)))

  t = time.perf_counter()
  table = make_error_table(setup)
  phases["error_table"] = time.perf_counter() - t
  search_ = Search(setup, sens, table, selection)
  t = time.perf_counter()
  surrogate_state, evaluated = warmup(search_, jax.random.fold_in(key, 20), log, quiet)
  phases["warmup"] = time.perf_counter() - t
  from hirelc_jax.compression.plan import uniform_plan
  state = SearchState(None, None, surrogate_state, jax.device_get(uniform_plan(*setup.kmap.plan_shape)),
                      (), evaluated, policy.RECOVERY_PRIOR)

  return Shared(search_, state, base, sens, key, log, phases, start)


def resume_cycles(search_: Search, state: SearchState, ckpt_dir: pathlib.Path, shared: Shared,
                  resume: bool) -> tuple[SearchState, int]:
  """(the state after the latest saved cycle in `ckpt_dir`, its number) on resume, else
  (`state`, 0)."""
  if not resume:
    return state, 0
  log = shared.log
  state, done = run_state.resume_latest(search_, state, ckpt_dir, shared.key, shared.base,
                                        warn=lambda m: log("warning", message=f"warning: {m}"))
  if done:
    log("resume", cycle=done, message=f"resumed after cycle {done}")
  return state, done


def conclude(shared: Shared, search_: Search, state: SearchState, out_dir: pathlib.Path,
             schedule: str) -> dict | None:
  """Chooses the cycle (held-out half, with the margin), measures it on test once and writes
  the report, plots and export into `out_dir`; returns report.json's dict (None on every
  process but 0, which alone writes)."""
  config, setup, data = search_.config, search_.setup, search_.setup.data
  t = time.perf_counter()
  best = policy.select_best(state.ratios(), [c.val_drop for c in state.cycles], config.goal.target_accuracy_drop,
                            search_.margins(state.cycles)[1])
  _, tuned, _ = run_state.resume_state(search_, state, out_dir / "checkpoints" / f"cycle_{best + 1}",
                                       shared.key, shared.base)
  test_acc = accuracy(setup, tuned, data.x_test, data.y_test)
  phases = {**shared.phases, "final_eval": time.perf_counter() - t}
  if not distributed.writes():
    return None

  from hirelc_jax.finalize import finalize
  return finalize(setup, state, best, tuned, shared.base, test_acc, shared.sensitivity, phases, shared.start,
                  out_dir, schedule=schedule, log=shared.log)
