"""Where a cycle's candidate plans come from: the agents, the integer program, or both.

`search.proposer` picks the source. "agents": the high-level agent's budgets
and the low-level ensembles' plans (the vote first, then every member's greedy
plan and policy draws). "ilp": the exact integer program on the error table
(`knapsack.solve`) at the cycle's goal first, then at ratios spread from there
to the most compressed plan the space allows. "both": the agents' candidates
followed by the program's. Screening then treats them all alike.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from hirelc_jax import knapsack, search
from hirelc_jax.compression.plan import CompressionPlan

ILP_CANDIDATES = 16       # solutions per cycle: the goal's, then 15 from half the goal to the maximum
CANDIDATE_DRAWS = 16      # policy draws per cycle; with the votes and members, (1 + 16) * (1 + M) plans


@dataclasses.dataclass(frozen=True)
class Proposal:
  """A cycle's candidates `[N, B, K]` with the agents' new states and what they decided.

  budgets is None and rewards are None without the agents.
  """
  hla: Any
  lla: Any
  candidates: CompressionPlan
  budgets: Any
  rewards: dict
  times: dict


def from_agents(search_, state, config, cycle: int, base: dict, key) -> Proposal:
  """The HLA's budgets for every block, then the LLA ensembles trained on them and queried."""
  setup = search_.setup
  t0, times = time.perf_counter(), {}
  last = state.cycles[-1] if state.cycles else None
  hla_params = search.hla_params(
      config, search_.block_sensitivity, shift=search.floor_shift(search_.config, config),
      last_acc_drop=last.fit_drop if last else 0.0,
      last_ratio=1.0 / last.compression_ratio if last else None,
      progress=cycle / config.search.cycles)
  if config.search.high_level:
    hla = state.hla if state.hla is not None else search_.hla.init(jax.random.fold_in(key, 1), hla_params)
    hla, hla_reward = search_.hla.train(hla, hla_params, first=state.hla is None)
    budgets, _ = search.decide_budgets(search_.hla, hla, hla_params, config)
  else:
    hla, hla_reward = None, None
    budgets = search.goal_budgets(config, setup.kmap.num_blocks)
  times["hla_s"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  ready = bool(search_.surrogate.ready(state.surrogate)) or config.search.signal == "proxy"
  lla_params = search.lla_params(config, budgets, setup.kmap, search_.kernel_sensitivity,
                                 search_.signal(state, base["eval"]),
                                 baseline_accuracy=base["eval"], surrogate_ready=ready)
  lla = state.lla if state.lla is not None else search_.lla.init(jax.random.fold_in(key, 2), lla_params)
  lla, lla_reward = search_.lla.train(lla, lla_params, first=state.lla is None)
  candidates = jax.device_get(search.candidate_plans(search_.lla, lla, lla_params, CANDIDATE_DRAWS))
  times["lla_s"] = time.perf_counter() - t0
  return Proposal(hla, lla, candidates, budgets, {"hla": hla_reward, "lla": lla_reward}, times)


def from_program(options: knapsack.Options, goal_ratio: float) -> CompressionPlan:
  """The program's solutions at the goal, then spread (log) from half the goal to the maximum:
  `[ILP_CANDIDATES, B, K]` (fewer when the goal lies beyond what the space allows)."""
  top = options.max_ratio()
  low = max(1.0, 0.5 * min(goal_ratio, top))
  ratios = [min(goal_ratio, top)] + list(np.geomspace(low, top, ILP_CANDIDATES - 1))
  _, plans = knapsack.solve_path(options, ratios)
  return plans


def propose(search_, state, config, cycle: int, base: dict, key) -> Proposal:
  """The candidates of `config.search.proposer` for this cycle."""
  source = config.search.proposer
  if source == "ilp":
    t0 = time.perf_counter()
    plans = from_program(search_.calibrated_options(state, base["eval"]), config.goal.target_compression)
    return Proposal(state.hla, state.lla, plans, None, {"hla": None, "lla": None},
                    {"ilp_s": time.perf_counter() - t0})
  proposal = from_agents(search_, state, config, cycle, base, key)
  if source == "agents":
    return proposal
  t0 = time.perf_counter()
  extra = from_program(search_.calibrated_options(state, base["eval"]), config.goal.target_compression)
  both = jax.tree.map(lambda a, b: np.concatenate([np.asarray(a), np.asarray(b)]), proposal.candidates, extra)
  return dataclasses.replace(proposal, candidates=both,
                             times={**proposal.times, "ilp_s": time.perf_counter() - t0})
