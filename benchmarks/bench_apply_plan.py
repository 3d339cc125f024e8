"""Plans per second of apply_plan on ViT-Tiny-shaped parameters.

12 blocks x (qkv [192, 576], attn_proj [192, 192], mlp_fc1 [192, 768],
mlp_fc2 [768, 192], each with a bias); random plans over every bit width,
format, granularity and keep ratio. Measures one plan per call (its masks computed,
and its masks given, as every QAT step of a fine-tune calls it) and vmapped batches
of 64 plans. Usage: python benchmarks/bench_apply_plan.py
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402
from hirelc_jax.compression.apply import apply_plan, compute_masks  # noqa: E402
from hirelc_jax.compression.kernel_map import build_kernel_map  # noqa: E402
from hirelc_jax.compression.plan import make_plan, stack_plans  # noqa: E402

SHAPES = {"qkv": (192, 576), "proj": (192, 192), "fc1": (192, 768), "fc2": (768, 192)}
RULES = ((r"block_(?P<block>\d+)/attn/qkv/kernel$", "qkv"),
         (r"block_(?P<block>\d+)/attn/proj/kernel$", "attn_proj"),
         (r"block_(?P<block>\d+)/mlp/fc1/kernel$", "mlp_fc1"),
         (r"block_(?P<block>\d+)/mlp/fc2/kernel$", "mlp_fc2"))
NAMES = ("qkv", "attn_proj", "mlp_fc1", "mlp_fc2")


def vit_tiny_params(depth: int = 12, seed: int = 0) -> dict:
  key = jax.random.key(seed)
  params = {}
  for b in range(depth):
    block = {"attn": {}, "mlp": {}}
    for name, shape in SHAPES.items():
      key, sub = jax.random.split(key)
      leaf = {"kernel": 0.05 * jax.random.normal(sub, shape), "bias": jnp.zeros(shape[-1])}
      block["mlp" if name.startswith("fc") else "attn"][name] = leaf
    params[f"block_{b}"] = block
  return params


def random_plans(n: int, shape, seed: int = 0):
  rng = np.random.default_rng(seed)
  plans = []
  for _ in range(n):
    fmt = rng.integers(0, 3, shape)
    gran = np.where(fmt == 0, rng.integers(0, 5, shape), rng.integers(0, 4, shape))
    plans.append(make_plan(rng.integers(2, 9, shape), rng.uniform(0.2, 1.0, shape), fmt, gran))
  return plans


def main() -> None:
  params = vit_tiny_params()
  kmap = build_kernel_map(params, RULES, NAMES)
  plans = random_plans(64, kmap.plan_shape)
  batch = stack_plans(plans)
  one = jax.jit(lambda p, plan: apply_plan(p, plan, kmap))
  given = jax.jit(lambda p, plan, masks: apply_plan(p, plan, kmap, masks=masks))
  many = jax.jit(jax.vmap(lambda p, plan: apply_plan(p, plan, kmap), in_axes=(None, 0)))
  masks = [compute_masks(params, plan, kmap) for plan in plans]
  counter = iter(range(10**9))

  def single():
    jax.block_until_ready(one(params, plans[next(counter) % len(plans)]))

  def single_masks_given():
    i = next(counter) % len(plans)
    jax.block_until_ready(given(params, plans[i], masks[i]))

  # The memory-bandwidth bound: apply_plan must read every weight and write it once (fp32);
  # a jitted scale-and-shift of the same arrays measures what this machine streams.
  stream = jax.jit(lambda p: jax.tree.map(lambda w: w * 1.0001 + 1e-7, p))
  # The bound and the plans are timed in 5 interleaved rounds (medians), so that both see the
  # same state of a shared machine: the streaming rate alone varied 5.4-9.2 GB/s between runs.
  fns = {"stream": lambda: jax.block_until_ready(stream(params)), "single": single,
         "given": single_masks_given, "batch": lambda: jax.block_until_ready(many(params, batch))}
  rounds = {name: [] for name in fns}
  for _ in range(5):
    for name, fn in fns.items():
      rounds[name].append(common.timeit(fn, repeats=3))
  t_stream, t_single, t_given, t_batch = (float(np.median(rounds[name])) for name in fns)
  weights = int(sum(np.prod(s) for s in SHAPES.values()) * 12)
  results = {
      "weights": weights,
      "stream_gb_per_s": 2 * 4 * weights / t_stream / 1e9,
      "ms_bandwidth_bound": 1e3 * t_stream,
      "single_over_bound": t_single / t_stream,
      "masks_given_over_bound": t_given / t_stream,
      "ms_per_plan_masks_given": 1e3 * t_given,
      "plans_per_s_single": 1.0 / t_single,
      "plans_per_s_vmapped_batch64": 64.0 / t_batch,
      "ms_per_plan_single": 1e3 * t_single,
      "ms_per_batch64": 1e3 * t_batch,
      "code": common.code_version(),
  }
  for k, v in results.items():
    print(f"{k:>30}: {v:,.2f}" if isinstance(v, float) else f"{k:>30}: {v}")
  # Every run's ratios are kept, so that the run-to-run spread comes from the file too.
  path = common.RESULTS / "apply_plan.json"
  runs = json.loads(path.read_text()).get("runs", []) if path.exists() else []
  run = {k: results[k] for k in ("code", "stream_gb_per_s", "single_over_bound", "masks_given_over_bound")}
  common.write("apply_plan", {**results, "runs": runs + [{"date": time.strftime("%Y-%m-%d %H:%M"), **run}]})


if __name__ == "__main__":
  main()
