"""Scale-out and the cost of QAT: devices, plans fine-tuned at once, a QAT step against a plain one.

Parts (rows accumulate in benchmarks/results/scale.json; a rerun skips finished rows):
  qat      a plain training step against a QAT step (fake quantization of every kernel under
           a plan, forward and backward) under a uniform INT2 plan, a random mixed plan and a
           uniform learned-step INT4 plan, interleaved in one process (batch 128, 28x28x1
           random data).
  batched  K plans' QAT steps as one vmapped step against K single steps, K = 1, 2, 4, 8.
  devices  on 1, 2 and 4 forced host devices (each count in its own process): a data-parallel
           QAT step, evaluation images/s and candidate plans evaluated per second. On a CPU
           the forced devices share the same cores, so this measures the overhead of the
           sharding, not a speed-up.
Usage: python benchmarks/bench_scale.py [--parts qat batched devices] [--models vit_mu vit_tiny] [--name scale]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402
from hirelc_jax import search  # noqa: E402
from hirelc_jax.compression.kernel_map import build_kernel_map  # noqa: E402
from hirelc_jax.compression.plan import stack_plans, uniform_plan  # noqa: E402
from hirelc_jax.config import Config  # noqa: E402
from hirelc_jax.models import build_model, init_params  # noqa: E402
from hirelc_jax.training import baseline, loop, qat  # noqa: E402
from hirelc_jax.training.placement import make_placement  # noqa: E402

SHAPE, BATCH, KS, DEVICES = (28, 28, 1), 128, (1, 2, 4, 8), (1, 2, 4)
NAME = "scale"


def model_parts(model: str):
  spec = build_model(model, num_classes=10, image_shape=SHAPE, patch_size=baseline.default_patch_size(model, SHAPE))
  variables = init_params(spec, jax.random.key(0))
  kmap = build_kernel_map(variables["params"], spec.kernel_rules, spec.kernel_names)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(BATCH * 4,) + SHAPE).astype(np.float32)
  y = rng.integers(0, 10, BATCH * 4).astype(np.int32)
  return spec, variables, kmap, x, y


def mixed_plans(kmap, count: int):
  return search.random_plans(jax.random.key(1), count, kmap, Config())


def stepper(spec, variables, kmap, x, y, plans=None, *, placement=None):
  """A function running 4 train steps on the batch (x, y) (plain if `plans` is None, else QAT
  under the stacked `plans` [K, ...], vmapped when K > 1) and blocking on the loss."""
  params = variables["params"]
  config = loop.TrainConfig(batch_size=BATCH)
  tx = loop.make_optimizer(config, 1000)
  if plans is None:
    trainable, aux, fn, stacked = params, None, lambda t, _: t, False
  else:
    trainable, _, aux = qat.stacked_start(variables, plans, kmap)
    stacked = len(plans.bits) > 1
    if not stacked:
      trainable, aux = jax.tree.map(lambda a: a[0], (trainable, aux))
    fn = qat.qat_params_fn(kmap)
  trainable = jax.tree.map(jnp.copy, trainable)
  opt = jax.vmap(tx.init)(trainable) if stacked else tx.init(trainable)
  count = jnp.zeros((len(plans.bits),) if stacked else (), jnp.int32)
  state = [loop.TrainState(trainable, {}, opt, count)]
  batch = (lambda t: t) if placement is None else placement.shard
  if placement is not None:
    state[0], aux = placement.replicate((state[0], aux))
  step = loop.make_train_step(spec.module, tx, fn, stacked=stacked)
  x, y = batch(x), batch(y)

  def run():
    for i in range(4):
      state[0], loss = step(state[0], aux, x, y, jax.random.key(i))
    jax.block_until_ready(loss)
  return run


def part_qat(model: str) -> list[dict]:
  spec, variables, kmap, x, y = model_parts(model)
  batch = (x[:BATCH], y[:BATCH])
  runs = {"plain": stepper(spec, variables, kmap, *batch),
          "qat_int2": stepper(spec, variables, kmap, *batch, stack_plans([uniform_plan(*kmap.plan_shape, bits=2)])),
          "qat_mixed": stepper(spec, variables, kmap, *batch, mixed_plans(kmap, 1)),
          "qat_learned": stepper(spec, variables, kmap, *batch,
                                 stack_plans([uniform_plan(*kmap.plan_shape, bits=4, gran="learned")]))}
  for run in runs.values():
    run()   # compile all first, then interleave the timings
  times = {name: [] for name in runs}
  for _ in range(5):
    for name, run in runs.items():
      times[name].append(common.timeit(run, repeats=3, min_time=2.0) / 4)
  ms = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
  row = {"part": "qat", "model": model, **{f"{k}_step_ms": v for k, v in ms.items()},
         **{f"{k[4:]}_over_plain": ms[k] / ms["plain"] for k in ms if k != "plain"}}
  print(f"{model}: plain {ms['plain']:.1f} ms, " + ", ".join(
      f"{k} {ms[k]:.1f} ms ({ms[k] / ms['plain']:.2f}x)" for k in ms if k != "plain"))
  return [row]


def part_batched(model: str) -> list[dict]:
  spec, variables, kmap, x, y = model_parts(model)
  batch = (x[:BATCH], y[:BATCH])
  plans = mixed_plans(kmap, max(KS))
  single = common.timeit(stepper(spec, variables, kmap, *batch, jax.tree.map(lambda a: a[:1], plans)),
                         repeats=3, min_time=2.0) / 4
  rows = []
  for k in KS:
    t = single if k == 1 else common.timeit(stepper(spec, variables, kmap, *batch, jax.tree.map(lambda a: a[:k], plans)),
                                            repeats=3, min_time=2.0) / 4
    rows.append({"part": "batched", "model": model, "k": k, "step_ms": 1e3 * t, "one_by_one_ms": 1e3 * k * single,
                 "speedup": k * single / t})
    print(f"{model} K={k}: {1e3 * t:.1f} ms per step of K plans, {1e3 * k * single:.1f} ms one by one "
          f"({k * single / t:.2f}x)")
  return rows


def part_devices_inner(model: str, devices: int) -> list[dict]:
  spec, variables, kmap, x, y = model_parts(model)
  batch = (x[:BATCH], y[:BATCH])
  placement = make_placement(devices)
  plan = stack_plans([uniform_plan(*kmap.plan_shape, bits=4, keep=0.75)])
  step = common.timeit(stepper(spec, variables, kmap, *batch, plan, placement=placement), repeats=3, min_time=2.0) / 4
  evaluate = loop.make_evaluate(spec.module, lambda t, _: t, placement=placement)
  state = {k: v for k, v in variables.items() if k != "params"}
  t_eval = common.timeit(lambda: loop.accuracy(evaluate, variables["params"], state, None, x, y, 256),
                         repeats=3, min_time=2.0)
  plans = mixed_plans(kmap, 8)
  evaluate_plans = qat.make_evaluate_plans(spec.module, kmap, placement=placement)
  t_plans = common.timeit(lambda: qat.plan_accuracies(evaluate_plans, variables, plans, x, y, 256),
                          repeats=3, min_time=2.0)
  row = {"part": "devices", "model": model, "devices": devices, "qat_step_ms": 1e3 * step,
         "eval_img_per_s": len(x) / t_eval, "plans_per_s": 8 / t_plans, "plan_eval_images": len(x)}
  print(f"{model} on {devices} devices: QAT step {row['qat_step_ms']:.1f} ms, eval {row['eval_img_per_s']:.0f} img/s, "
        f"{row['plans_per_s']:.2f} plans/s on {len(x)} images")
  return [row]


def part_devices(model: str) -> list[dict]:
  rows = []
  for n in DEVICES:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
    out = subprocess.run([sys.executable, __file__, "--inner", model, str(n)], env=env, check=True,
                         capture_output=True, text=True).stdout
    rows += json.loads(out.strip().splitlines()[-1])
    print(f"{model} on {n} devices: {rows[-1]}")
  return rows


PARTS = {"qat": part_qat, "batched": part_batched, "devices": part_devices}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
  parser.add_argument("--models", nargs="+", default=["vit_mu", "vit_tiny"])
  parser.add_argument("--name", default=NAME, help="results file benchmarks/results/<name>.json")
  parser.add_argument("--inner", nargs=2, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.inner:
    print(json.dumps(part_devices_inner(args.inner[0], int(args.inner[1]))))
    return
  path = common.RESULTS / f"{args.name}.json"
  rows = json.loads(path.read_text())["rows"] if path.exists() else []
  for part in args.parts:
    for model in args.models:
      if any(r["part"] == part and r["model"] == model for r in rows):
        print(f"{part} {model}: done, skipped")
        continue
      rows += PARTS[part](model)
      common.write(args.name, {"batch": BATCH, "input_shape": list(SHAPE), "code": common.code_version(), "rows": rows})


if __name__ == "__main__":
  main()
