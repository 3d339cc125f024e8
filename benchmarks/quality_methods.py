"""The methods bench_quality compares: the searches and the baselines in the same space.

Every method starts from one baseline and one error table, and every one
chooses its result the same way: the most compressed fine-tuned plan whose
drop on the held-out half of validation, plus `search.margin_se` standard
errors, is within the target (else the most accurate one), so the reported
test drop was never looked at while choosing. Every fine-tuned plan's drops
(fit half, held-out half, test, with standard errors) are kept in the row's
`finetuned`, for studying choice rules offline.

Budgets are equal: a search gets `warmup_samples + 7 uniform + cycles x
screen` real pre-fine-tune evaluations (43 by default) and `cycles` QAT
fine-tunes (4). The candidate baselines (the integer program's path over
budgets, the greedy path, random plans) evaluate that many candidates and
spend the fine-tunes by bisection along the candidates' front (compression
against measured drop), steered by the fine-tunes' fit-half drops with the
same margin: a stronger use of 4 fine-tunes than one per
guess. The uniform grid fine-tunes every grid point (more fine-tunes than any
other method; its per-target choice uses the held-out half too).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import tempfile
import time

import jax
import numpy as np

from hirelc_jax import config as config_io
from hirelc_jax import cycle, evaluation, experiment, knapsack, policy, screening, search
from hirelc_jax.compression import accounting
from hirelc_jax.compression.plan import stack_plans, uniform_plan
from hirelc_jax.training import checkpoint

OLD = {"search.block_calibration": "false"}   # rows measured before the per-block calibration (044e0fb)
SEARCHES = {"hirelc": {}, "search_agents": {"search.proposer": "agents"}, "search_ilp": {"search.proposer": "ilp"},
            "search_agents_ilp": {"search.proposer": "both"},
            # the error table's calibration one slope for the whole table, as before 044e0fb
            "search_agents_common_calibration": {"search.proposer": "agents", **OLD},
            "search_ilp_common_calibration": {"search.proposer": "ilp", **OLD},
            # ablations of the agents' search: no error-table prior goal; and the original's
            # per-level floors with its 1-point accuracy table (the agents before 4d852a0)
            "search_agents_no_prior": {"search.proposer": "agents", "search.prior_goal": "false"},
            # the rows before the censored calibration (5910778) were measured with it off
            "search_agents_no_prior_uncensored": {"search.proposer": "agents", "search.prior_goal": "false",
                                                  "search.censored_calibration": "false", **OLD},
            "search_agents_hla_floors": {"search.proposer": "agents", "search.prior_goal": "false",
                                         "search.floors": "hla", "search.accuracy_unit": "point",
                                         "search.censored_calibration": "false", **OLD},
            "search_ilp_no_prior": {"search.proposer": "ilp", "search.prior_goal": "false",
                                    "search.censored_calibration": "false", **OLD},
            # the table's calibration leaving collapsed plans out (before the censored fit)
            "search_agents_uncensored": {"search.proposer": "agents", "search.censored_calibration": "false", **OLD},
            "search_ilp_uncensored": {"search.proposer": "ilp", "search.censored_calibration": "false", **OLD},
            "search_ilp_point_escalation": {"search.proposer": "ilp", "search.escalate_margin_se": "0",
                                            "search.prior_goal": "false", "search.censored_calibration": "false",
                                            **OLD},
            "lla_only": {"search.high_level": "false"},
            "hirelc_unscreened": {"search.screen": "1", "search.warmup_samples": "32"},
            "hirelc_fixed_goal": {"search.escalate": "1"}}
CANDIDATES = ("ilp", "greedy", "random")
GRID_FORMATS = (("INT2", 2, "int"), ("INT3", 3, "int"), ("INT4", 4, "int"), ("FP4", 4, "float"))
GRID_KEEPS = (1.0, 0.8, 0.75, 0.6, 0.5, 0.4)
GRID = tuple(f"grid_{f}_k{k:.2f}" for f, _, _ in GRID_FORMATS for k in GRID_KEEPS)
METHODS = tuple(SEARCHES) + CANDIDATES + ("uniform_grid",)
MARGIN_SE = config_io.Config().search.margin_se   # the uniform grid's per-target choice uses the default
# Rows of a method as it was at an earlier commit (the row's "commit"), kept for before/after; not rerunnable.
RECORDED = ("search_ilp_se_recovery",)   # post-fine-tune drops counted at their standard error (7efc449)


@dataclasses.dataclass(frozen=True, eq=False)   # hashed by identity: candidates() caches on it
class Bench:
  """What every method shares: the setup with the fit half of validation, the held-out half,
  the error table, the baseline's accuracies (`fit`: fit half, `eval`: its first eval_samples,
  `val`: held-out half, `test`), its per-example correctness on the halves and the test set,
  and the full setup the searches split themselves."""
  full: evaluation.Setup
  setup: evaluation.Setup
  selection: tuple
  table: object
  base: dict
  base_scores: dict


def make_bench(setup: evaluation.Setup) -> Bench:
  fit, selection = evaluation.hold_out_selection(setup)
  d, n = fit.data, setup.config.search.eval_samples
  acc = lambda x, y: evaluation.accuracy(fit, fit.variables, x, y)
  base = {"fit": acc(d.x_val, d.y_val), "eval": acc(d.x_val[:n], d.y_val[:n]), "val": acc(*selection),
          "test": acc(d.x_test, d.y_test)}
  base_scores = {**evaluation.halves_scores(fit, fit.variables, selection),
                 "test": evaluation.scores(fit, fit.variables, d.x_test, d.y_test)}
  return Bench(setup, fit, selection, evaluation.make_error_table(fit), base, base_scores)


def measured(bench: Bench, tuned, compression_ratio: float) -> dict:
  """A fine-tuned plan's drops and standard errors on both halves and on test (points). The
  test numbers are for studying choice rules offline; no choice ever reads them."""
  drops = evaluation.halves_drops(bench.setup, bench.base_scores, tuned, bench.selection)
  d = bench.setup.data
  drops["test"] = evaluation.paired_drop(bench.base_scores["test"],
                                         evaluation.scores(bench.setup, tuned, d.x_test, d.y_test))
  return {"compression_ratio": compression_ratio,
          **{f"{half}_{k}": v for half, (drop, se) in drops.items() for k, v in (("drop", drop), ("se", se))}}


def real_evals(s) -> int:
  return s.warmup_samples + len(evaluation.UNIFORM_BASELINES) + s.cycles * s.screen


def run_search(bench: Bench, method: str, seed: int, target: float) -> dict:
  config = config_io.override(bench.full.config, {"seed": str(seed), "goal.target_accuracy_drop": str(target),
                                                  **SEARCHES[method]})
  t0 = time.perf_counter()
  with tempfile.TemporaryDirectory() as out:
    report = experiment.run(config, pathlib.Path(out) / "run", quiet=True, echo=None,
                            setup=dataclasses.replace(bench.full, config=config))
    wall = time.perf_counter() - t0
    cycles = [measured(bench, checkpoint.load_tree(pathlib.Path(out) / "run" / "checkpoints" / f"cycle_{c['cycle']}")
                       ["tuned"], c["compression_ratio"]) for c in report["cycles"]]
  return {"test_accuracy": report["final_accuracy"], "val_accuracy": report["final_val_accuracy"],
          "val_se": report["final_val_se"], "compression_ratio": report["compression_ratio"],
          "paper_compression_ratio": report["paper_compression_ratio"],
          "wall_s": wall, "real_evals": real_evals(config.search), "finetunes": config.search.cycles,
          "finetuned": cycles}


@functools.lru_cache(maxsize=8)
def candidates(bench: Bench, method: str, seed: int):
  """(plans [N, B, K], their pre-fine-tune accuracies [N], seconds) of a candidate baseline."""
  t0 = time.perf_counter()
  cfg, count = bench.setup.config, real_evals(bench.setup.config.search)
  if method == "random":
    plans = jax.device_get(search.random_plans(jax.random.fold_in(jax.random.key(seed), 7), count,
                                               bench.setup.kmap, cfg))
  else:
    params, state = accounting.split_variables(bench.setup.variables)
    options = knapsack.build_options(bench.table, bench.setup.kmap, params, state, cfg.goal)
    if method == "ilp":
      _, plans = knapsack.solve_path(options, np.geomspace(4.0, options.max_ratio(), count))
    else:
      path = knapsack.greedy_path(options)
      ratios = np.array([options.ratio(c) for c in path])
      wanted = np.geomspace(ratios[0], ratios[-1], count)
      picks = sorted({int(np.argmin(np.abs(np.log(ratios / w)))) for w in wanted})
      plans = stack_plans([options.plan(path[i]) for i in picks])
  accs = evaluation.plan_accuracies(bench.setup, plans)
  return plans, accs, time.perf_counter() - t0


def run_candidates(bench: Bench, method: str, seed: int, target: float) -> dict:
  """A candidate baseline: its candidates' front searched by bisection with the fine-tunes."""
  plans, accs, eval_s = candidates(bench, method, seed)
  t0 = time.perf_counter()
  setup, s = bench.setup, bench.setup.config.search
  params, state = accounting.split_variables(setup.variables)
  ratios = np.asarray(accounting.compression_ratio(params, plans, setup.kmap, state), np.float64)   # [N]
  drops = bench.base["eval"] - accs
  order = screening.front(ratios, drops)
  within = np.flatnonzero(drops[order] <= target / policy.RECOVERY_PRIOR)
  first = int(within[-1]) if len(within) else 0
  outcomes, records, tuned_all = {}, [], []
  probe = screening.bisect_next(len(order), outcomes, first)
  while probe is not None and len(records) < s.cycles:
    plan = jax.tree.map(lambda a: a[order[probe]], plans)
    tuned, _ = evaluation.finetune(setup, plan, jax.random.fold_in(jax.random.key(seed), len(records)),
                                   quiet=True)
    record = {**measured(bench, tuned, float(ratios[order[probe]])), "plan": plan}
    outcomes[probe] = bool(policy.within(record["fit_drop"], s.margin_se * record["fit_se"], target))
    records.append(record)
    tuned_all.append(tuned)
    probe = screening.bisect_next(len(order), outcomes, first)
  best = choose(records, target, s.margin_se)
  row = finished(bench, records[best], eval_s + time.perf_counter() - t0, len(accs), len(records))
  return {**row, "finetuned": [{k: v for k, v in r.items() if k != "plan"} for r in records]}


def run_grid_point(bench: Bench, name: str, seed: int) -> dict:
  """One uniform plan (every kernel alike), fine-tuned once."""
  label, keep = name[len("grid_"):].rsplit("_k", 1)
  _, bits, fmt = next(g for g in GRID_FORMATS if g[0] == label)
  plan = uniform_plan(*bench.setup.kmap.plan_shape, bits=bits, fmt=fmt, gran="per_channel")
  plan = plan.replace(keep=np.full(plan.keep.shape, float(keep), np.float32))
  t0 = time.perf_counter()
  tuned, _ = evaluation.finetune(bench.setup, plan, jax.random.key(seed), quiet=True)
  m = evaluation.plan_metrics(bench.setup, plan)
  return finished(bench, {**measured(bench, tuned, m["compression_ratio"]), "plan": plan},
                  time.perf_counter() - t0, 0, 1)


def finished(bench: Bench, record: dict, wall_s: float, evals: int, finetunes: int) -> dict:
  """A row from the chosen fine-tuned plan's `measured` record (with its plan)."""
  m = evaluation.plan_metrics(bench.setup, record["plan"])
  return {"test_accuracy": bench.base["test"] - record["test_drop"],
          "val_accuracy": bench.base["val"] - record["val_drop"], "val_se": record["val_se"],
          "compression_ratio": m["compression_ratio"],
          "paper_compression_ratio": m["paper_compression_ratio"], "wall_s": wall_s,
          "real_evals": evals, "finetunes": finetunes,
          "plan_summary": cycle.summarize(record["plan"], bench.setup.kmap)}


def choose(records: list[dict], target: float, margin_se: float) -> int:
  """`policy.select_best` over records with compression_ratio, held-out val_drop and val_se."""
  return policy.select_best([r["compression_ratio"] for r in records], [r["val_drop"] for r in records],
                            target, margin_se * np.array([r["val_se"] for r in records]))
