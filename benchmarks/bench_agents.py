"""Cost of the agents: LLA env steps, PPO/A2C updates, surrogate, sensitivity.

For vit_mini (4 blocks) and vit_tiny (12 blocks) on 28x28x1 inputs (patch 7,
random init), with the pipeline's default LLA settings (`Config().lla`: 3
members ppo/a2c/ppo, 2 envs, 64 steps; `search.learner_config`):

1. Kernel-env steps/s: a jitted `lax.scan` over T steps of `env.step` vmapped
   over envs, members and blocks (`search.lla_params` env params, the signal
   shared through `kernel_env.params_in_axes`), random actions, for the
   surrogate signal (fitted on 32 random plans, `ready()` True) and the
   quantization-error proxy. The env is built as `experiment.Search` builds it
   (the accuracy function scales the inner signal by the fine-tune recovery).
   Target: >= 100,000 steps/s with the surrogate.
2. One PPO and one A2C update of the whole LLA ensemble: ms per update (and
   of its rollout alone) and compile time per algorithm group
   (`ppo.make_learner(learner_config, env, 1).update` vmapped over [blocks, 2]
   PPO and [blocks, 1] A2C learners, as `search.EnsembleTrainer` vmaps them),
   and of the ensemble through `EnsembleTrainer.train` with one update per
   cycle.
3. Surrogate fit (200 epochs, 64 samples) and predict (64 plans, one plan) for
   vit_tiny's plan shape.
4. Sensitivity per method on vit_mini, 64 random samples (compile and run).

Usage: python benchmarks/bench_agents.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402
from hirelc_jax import search  # noqa: E402
from hirelc_jax.agents import budget_env, kernel_env, ppo, proxies  # noqa: E402
from hirelc_jax.agents.sensitivity import METHODS, estimate_sensitivity  # noqa: E402
from hirelc_jax.agents.surrogate import (SurrogateConfig, encode_plan, make_surrogate,  # noqa: E402
                                         num_features)
from hirelc_jax.compression.plan import uniform_plan  # noqa: E402
from hirelc_jax.config import Config  # noqa: E402
from hirelc_jax.policy import RECOVERY_PRIOR  # noqa: E402
from hirelc_jax.models import build_model, init_params, kernel_map  # noqa: E402

SHAPE = (28, 28, 1)
PATCH = 7
BASELINE = 85.0
TARGET_STEPS_PER_S = 100_000


def block(tree):
  return jax.block_until_ready(tree)


def first_and_runs(fn, repeats: int) -> tuple[float, float]:
  """(seconds of the first call, median seconds of `repeats` later calls); fn must block."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


@dataclasses.dataclass
class Model:
  name: str
  spec: object
  variables: dict
  kmap: object


def load_model(name: str) -> Model:
  spec = build_model(name, num_classes=10, image_shape=SHAPE, patch_size=PATCH)
  variables = init_params(spec, jax.random.key(0))
  return Model(name, spec, variables, kernel_map(variables["params"], spec))


def surrogate_with_samples(kmap, config: Config, samples: int, epochs: int, seed: int = 0):
  """A surrogate holding `samples` random plans with random accuracies (70..90), not yet fitted."""
  b, k = kmap.plan_shape
  sur = make_surrogate(SurrogateConfig(hidden=tuple(config.search.surrogate_hidden),
                                       epochs=epochs), num_features(b, k))
  key = jax.random.key(seed)
  plans = search.random_plans(jax.random.fold_in(key, 1), samples, kmap, config)
  feats = jax.jit(jax.vmap(lambda p: encode_plan(p, kmap.present)))(plans)
  accs = jax.random.uniform(jax.random.fold_in(key, 2), (samples,), minval=70.0, maxval=90.0)
  state = sur.add(sur.init(jax.random.fold_in(key, 3)), feats, accs)
  return sur, state, feats


def lla_setup(model: Model, config: Config, signal_name: str, sur=None, sur_state=None):
  """(env, env params [B, M]) built the way `experiment.Search` and `run_cycle` build them."""
  kmap = model.kmap
  b, k = kmap.plan_shape
  rng = np.random.default_rng(0)
  kernel_sens = rng.uniform(0.05, 1.0, (b, k)).astype(np.float32)
  block_sens = kernel_sens.max(-1)
  hla = search.hla_params(config, block_sens)
  budgets = budget_env.decode_budgets(jnp.zeros(2 * b, jnp.int32), jnp.asarray(block_sens),
                                      jax.tree.map(lambda x: x[0], hla))
  budgets = budgets.replace(
      target_ratio=budgets.target_ratio * search.goal_fraction(config) / search.TABLE_GOAL)
  if signal_name == "surrogate":
    present = jnp.asarray(kmap.present)
    inner_fn = proxies.surrogate_signal_fn(sur.predict, present)
    inner = proxies.SurrogateSignal(sur_state, uniform_plan(b, k), jnp.float32(BASELINE))
    ready = bool(sur.ready(sur_state))
  else:
    inner_fn = proxies.quant_error_proxy_fn()
    weights = proxies.stack_block_weights(model.variables["params"], kmap)
    inner = proxies.quant_error_signal(weights, kernel_sens)
    ready = True
  accuracy_fn = lambda sig, *a: sig[1] * inner_fn(sig[0], *a)  # noqa: E731
  goal = config.goal
  env = kernel_env.KernelEnv(k, accuracy_fn, quantization_type=goal.quantization_type,
                             fixed_granularity=goal.strategy, allow_pruning=goal.pruning,
                             allow_quantization=goal.quantization)
  params = search.lla_params(config, budgets, kmap, kernel_sens,
                             (inner, jnp.float32(RECOVERY_PRIOR)),
                             baseline_accuracy=BASELINE, surrogate_ready=ready)
  return env, params


def env_steps(env, params, n_envs: int, steps: int, repeats: int) -> dict:
  """Steps/s of a scanned, vmapped (blocks x members x envs) env.step with random actions."""
  axes = kernel_env.params_in_axes(params)
  b, m = search.lead_shape(params, nested=True)
  step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
  step = jax.vmap(jax.vmap(step, in_axes=(0, 0, 0, axes)), in_axes=(0, 0, 0, axes))
  reset = jax.vmap(env.reset, in_axes=(0, None))
  reset = jax.vmap(jax.vmap(reset, in_axes=(0, axes)), in_axes=(0, axes))

  @jax.jit
  def rollout(state, keys, actions, params):
    def body(s, x):
      _, s, r, _, _, info = step(x[0], s, x[1], params)
      return s, jnp.sum(r) + jnp.sum(info["drop"])
    state, total = lax.scan(body, state, (keys, actions))
    return state, jnp.sum(total)

  key = jax.random.key(1)
  lead = (b, m, n_envs)
  _, state = jax.jit(reset)(jax.random.split(key, b * m * n_envs).reshape(lead), params)
  keys = jax.random.split(jax.random.fold_in(key, 1), steps * b * m * n_envs).reshape(
      (steps,) + lead)
  nvec = jnp.asarray(env.action_space().nvec, jnp.int32)
  actions = jax.random.randint(jax.random.fold_in(key, 2), (steps,) + lead + nvec.shape, 0, nvec)
  block((keys, actions))
  first, run = first_and_runs(lambda: block(rollout(state, keys, actions, params)), repeats)
  count = b * m * n_envs * steps
  return {"envs": b * m * n_envs, "T": steps, "compile_s": max(first - run, 0.0),
          "run_s": run, "steps_per_s": count / run}


def init_runners(learner, keys, params, axes):
  """`learner.init` for every [block, member] one learner at a time, stacked to [B, m].

  Not vmapped on purpose: the actor-critic's orthogonal initialisers are
  batched QR custom calls under vmap, and on a 2-thread XLA CPU pool two of
  them running at once can deadlock (jaxlib's LAPACK `ParallelBatchMap` blocks
  both pool threads waiting for chunks queued on the same pool). One learner
  per call keeps every QR unbatched, which runs inline.
  """
  init = jax.jit(learner.init)
  rows = []
  for bi in range(keys.shape[0]):
    row = []
    for mi in range(keys.shape[1]):
      one = jax.tree.map(lambda ax, x: x if ax is None else x[bi, mi], axes, params,
                         is_leaf=lambda x: x is None)
      row.append(init(keys[bi, mi], one))
    rows.append(jax.tree.map(lambda *xs: jnp.stack(xs), *row))
  return block(jax.tree.map(lambda *xs: jnp.stack(xs), *rows))


def updates(model: Model, config: Config, sur, sur_state, repeats: int) -> dict:
  """ms per PPO / A2C update of the whole LLA ensemble.

  Per algorithm group: `ppo.make_learner(search.learner_config(...), env, 1)`
  `.update` vmapped over [blocks, members of the group] as
  `search.EnsembleTrainer` vmaps it. The whole ensemble:
  `EnsembleTrainer.train` with one update per cycle (its runners come from
  `init_runners`, not `EnsembleTrainer.init`; see there).
  """
  agent = dataclasses.replace(config.lla, updates_first=1, updates_per_cycle=1)
  env, params = lla_setup(model, config, "surrogate", sur, sur_state)
  axes = kernel_env.params_in_axes(params)
  b, m = search.lead_shape(params, nested=True)
  out, runners = {}, {}
  for i, (algo, idx) in enumerate(search.groups(agent.algorithms).items()):
    cfg = search.learner_config(agent, algo)
    learner = ppo.make_learner(cfg, env, num_updates=1)
    update = jax.jit(jax.vmap(jax.vmap(learner.update, in_axes=(0, axes)), in_axes=(0, axes)))
    sub = jax.tree.map(lambda ax, x: x if ax is None else search.take(x, idx, axis=1),
                       axes, params, is_leaf=lambda x: x is None)
    keys = jax.random.split(jax.random.key(10 + i), b * len(idx)).reshape((b, len(idx)))
    start = time.perf_counter()
    runner = [init_runners(learner, keys, sub, axes)]
    init_s = time.perf_counter() - start
    runners[algo] = runner[0]

    def one():
      runner[0] = block(update(runner[0], sub)[0])

    first, run = first_and_runs(one, repeats)
    network, hp = ppo.make_network(cfg, env), ppo.Hyperparams.from_config(cfg)

    def roll(r, p, cfg=cfg, network=network, hp=hp):
      return ppo.collect_rollout(network, env, cfg, hp, r.train_state.params, r, p)[1].reward

    rollout = jax.jit(jax.vmap(jax.vmap(roll, in_axes=(0, axes)), in_axes=(0, axes)))
    _, roll_s = first_and_runs(lambda: block(rollout(runner[0], sub)), repeats)
    out[algo] = {"learners": b * len(idx), "init_s": init_s,
                 "compile_s": max(first - run, 0.0), "ms_per_update": 1e3 * run,
                 "rollout_ms_per_update": 1e3 * roll_s,
                 "env_steps_per_update": b * len(idx) * cfg.batch_size,
                 "grad_steps_per_update": cfg.n_epochs * cfg.num_minibatches}
  out["sum_ms_per_update"] = sum(out[a]["ms_per_update"] for a in runners)
  trainer = search.EnsembleTrainer(env, agent, nested=True, in_axes_fn=kernel_env.params_in_axes)
  holder = [search.Ensemble(runners, jnp.full((b, m), 1.0 / m, jnp.float32))]

  def whole():
    holder[0] = block(trainer.train(holder[0], params, first=False)[0])

  first, run = first_and_runs(whole, repeats)
  out["ensemble_trainer"] = {"compile_s": max(first - run, 0.0), "ms_per_update": 1e3 * run}
  out["lla_cycle_s_estimate"] = {"first": run * config.lla.updates_first,
                                 "later": run * config.lla.updates_per_cycle}
  return out


def surrogate_costs(model: Model, config: Config, samples: int, epochs: int,
                    repeats: int) -> dict:
  sur, state, feats = surrogate_with_samples(model.kmap, config, samples, epochs)
  key = jax.random.key(4)
  fit_first, fit_run = first_and_runs(lambda: block(sur.fit(state, key, epochs=epochs)), repeats)
  fitted, _ = sur.fit(state, key, epochs=epochs)
  assert bool(sur.ready(fitted))
  t_batch = common.timeit(lambda: block(sur.predict(fitted, feats)), repeats=repeats, min_time=0.5)
  one = feats[0]
  t_one = common.timeit(lambda: block(sur.predict(fitted, one)), repeats=repeats, min_time=0.5)
  return {"plan_shape": list(model.kmap.plan_shape), "features": sur.num_features,
          "samples": samples, "epochs": epochs, "fit_compile_s": max(fit_first - fit_run, 0.0),
          "fit_s": fit_run, "fit_ms_per_epoch": 1e3 * fit_run / epochs,
          f"predict_ms_batch{samples}": 1e3 * t_batch,
          "predict_us_per_plan_in_batch": 1e6 * t_batch / samples,
          "predict_ms_single_call": 1e3 * t_one}


def sensitivity_costs(model: Model, samples: int, repeats: int) -> dict:
  module = model.spec.module
  model_state = {k: v for k, v in model.variables.items() if k != "params"}

  def loss(params, x, y):
    logits = module.apply({"params": params, **model_state}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(samples,) + SHAPE).astype(np.float32))
  y = jnp.asarray(rng.integers(0, 10, samples).astype(np.int32))
  out = {}
  for method in METHODS:
    jax.clear_caches()  # so composite compiles its members again
    fn = lambda: block(estimate_sensitivity(  # noqa: E731
        loss, model.variables["params"], model.kmap, x, y, method=method, num_samples=samples,
        key=jax.random.key(5)))
    first, run = first_and_runs(fn, repeats)
    out[method] = {"compile_s": max(first - run, 0.0), "run_s": run}
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
  args = parser.parse_args()
  quick = args.quick
  config = Config()
  n_envs, members = config.lla.n_envs, len(config.lla.algorithms)
  models = ("vit_mini",) if quick else ("vit_mini", "vit_tiny")
  steps = {"surrogate": 16 if quick else 256, "quant_error": 4 if quick else 16}
  repeats = 2 if quick else 3
  sur_epochs = 10 if quick else config.search.surrogate_epochs
  results = {"quick": quick, "members": members, "n_envs": n_envs, "patch_size": PATCH,
             "env_steps": {}, "updates": {}}
  loaded = {}
  for name in models:
    model = loaded[name] = load_model(name)
    b, k = model.kmap.plan_shape
    print(f"== {name}: {b} blocks x {k} kernels, {b * members * n_envs} envs")
    sur, sur_state, _ = surrogate_with_samples(model.kmap, config,
                                               config.search.warmup_samples, 200)
    sur_state, _ = sur.fit(sur_state, jax.random.key(3))
    assert bool(sur.ready(sur_state)), "surrogate not ready after fitting"
    per_model = {}
    for signal in ("surrogate", "quant_error"):
      env, params = lla_setup(model, config, signal, sur, sur_state)
      r = per_model[signal] = env_steps(env, params, n_envs, steps[signal], repeats)
      print(f"  env steps, {signal:>11}: {r['steps_per_s']:>12,.0f} steps/s  "
            f"(T={r['T']}, run {r['run_s'] * 1e3:.1f} ms, compile {r['compile_s']:.1f} s)")
    met = per_model["surrogate"]["steps_per_s"] >= TARGET_STEPS_PER_S
    per_model["surrogate_target_met"] = bool(met)
    print(f"  target >= {TARGET_STEPS_PER_S:,} steps/s with the surrogate: "
          f"{'met' if met else 'NOT met'}")
    results["env_steps"][name] = per_model
    u = results["updates"][name] = updates(model, config, sur, sur_state, repeats)
    for algo in ("ppo", "a2c"):
      print(f"  {algo} update ({u[algo]['learners']} learners): {u[algo]['ms_per_update']:.1f} ms "
            f"(rollout alone {u[algo]['rollout_ms_per_update']:.1f} ms; "
            f"compile {u[algo]['compile_s']:.1f} s)")
    e = u["ensemble_trainer"]
    print(f"  ensemble update via EnsembleTrainer.train: {e['ms_per_update']:.1f} ms "
          f"(compile {e['compile_s']:.1f} s; ppo + a2c alone {u['sum_ms_per_update']:.1f} ms)")

  sur_model = loaded.get("vit_tiny") or load_model("vit_tiny")
  s = results["surrogate"] = surrogate_costs(sur_model, config, 64, sur_epochs, repeats)
  print(f"== surrogate (vit_tiny plan {s['plan_shape']}, {s['features']} features)")
  print(f"  fit {s['epochs']} epochs on {s['samples']} samples: {s['fit_s']:.2f} s "
        f"(compile {s['fit_compile_s']:.1f} s)")
  print(f"  predict batch of 64: {s['predict_ms_batch64']:.3f} ms "
        f"({s['predict_us_per_plan_in_batch']:.2f} us/plan); "
        f"single plan: {s['predict_ms_single_call']:.3f} ms")

  n_sens = 16 if quick else config.search.sensitivity_samples
  sens = results["sensitivity"] = {"model": "vit_mini", "samples": n_sens,
                                   **sensitivity_costs(loaded["vit_mini"], n_sens, repeats)}
  print(f"== sensitivity (vit_mini, {n_sens} samples)")
  for method in METHODS:
    print(f"  {method:>10}: run {sens[method]['run_s']:.3f} s, "
          f"compile {sens[method]['compile_s']:.1f} s")
  common.write("agents_quick" if quick else "agents", results)


if __name__ == "__main__":
  main()
