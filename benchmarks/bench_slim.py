"""Inference latency and throughput of baseline vs masked vs slim models on this CPU.

For vit_tiny (28x28x1, 14 px patches as in the default CLI run) and the small
CNN: a jitted forward pass of
  * baseline: the uncompressed model,
  * masked: `apply_plan`'s params (pruned neurons zero, fake-quantized), same shapes,
  * slim: `hirelc_jax.slim.slim_model` (pruned neurons and dead inputs removed,
    attn_proj / mlp_fc2 outputs gathered back into the residual width),
  * slim_residual_masked (ViT only): slim, but attn_proj / mlp_fc2 keep their
    pruned output columns (zeros), to see whether the gather pays,
at batch 1 and 256. The variants of one (model, batch) are timed interleaved,
single calls in ROUNDS rounds (median per call over all of them, and each
round's median to show the spread), with the load average before and after. vit_tiny uses the plan recorded in
results/run_vit_tiny_default/report.json; no CNN plan is recorded, so the CNN
uses INT4 per-channel with keep 0.5 in every slot. Params are random-init
(speed depends on shapes only; which q/k/v rows survive, and so the qkv widths,
follows the l2 ranking of the random weights). Also records per model the
slim kernel widths, the padding left masked and `slim.dead_storage`.
Resumable: finished (model, variant, batch) rows are kept; --force redoes them.
Usage: python benchmarks/bench_slim.py [--force] [model ...]; --table prints the README table.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402
from hirelc_jax import models  # noqa: E402
from hirelc_jax import slim  # noqa: E402
from hirelc_jax.compression import apply  # noqa: E402
from hirelc_jax.compression.plan import make_plan, uniform_plan  # noqa: E402
from hirelc_jax.training import baseline  # noqa: E402

NAME = "slim"
SHAPE = (28, 28, 1)
BATCHES = (1, 256)
ROUNDS = 7
ROUND_S = 1.5        # seconds of calls per variant and round
MIN_CALLS = 5        # calls per round at least
REPORT = common.RESULTS / "run_vit_tiny_default" / "report.json"
CNN_PLAN = dict(bits=4, keep=0.5, gran="per_channel")


def recorded_plan(kmap):
  """The best plan of the default vit_tiny run, from its report.json table."""
  table = json.loads(REPORT.read_text())["plan"]
  field = lambda key: [[k[key] for k in block] for block in table]
  plan = make_plan(field("bits"), field("keep_ratio"), field("format"), field("granularity"))
  if plan.shape != kmap.plan_shape:
    raise ValueError(f"{REPORT}: plan shape {plan.shape} is not vit_tiny's {kmap.plan_shape}")
  return plan


def setup(model: str) -> dict:
  """Variants (module, params), the plan used and the slim model's description."""
  spec = models.build_model(model, num_classes=10, image_shape=SHAPE,
                            patch_size=baseline.default_patch_size(model, SHAPE))
  params = models.init_params(spec, jax.random.key(0))["params"]
  kmap = models.kernel_map(params, spec)
  if model == "vit_tiny":
    plan, plan_source = recorded_plan(kmap), str(REPORT.relative_to(common.RESULTS.parent.parent))
  else:
    plan, plan_source = uniform_plan(*kmap.plan_shape, **CNN_PLAN), f"uniform {CNN_PLAN}"
  masked = apply.apply_plan(params, plan, kmap)
  masks = slim.neuron_masks(masked, plan, kmap)
  variants = {"baseline": (spec.module, params), "masked": (spec.module, masked)}
  variants["slim"] = slim.slim_model(masked, masks, kmap, spec)
  if model.startswith("vit"):
    variants["slim_residual_masked"] = slim.slim_model(masked, masks, kmap, spec, residual="masked")
  module, sp = variants["slim"]
  info = {"plan_source": plan_source, "params": models.count_params(params),
          "slim_params": {k: models.count_params(p) for k, (_, p) in variants.items() if "slim" in k},
          "storage": slim.dead_storage(masked, plan, kmap, spec, masks),
          "padding_cols": slim.padding_cols(masks, kmap, spec)}
  if model.startswith("vit"):
    info["block_widths"] = [[w.qk_dim, w.v_dim, w.mlp_dim, len(w.proj_index or range(spec.module.width)),
                             len(w.fc2_index or range(spec.module.width))] for w in module.block_widths]
    info["block_widths_columns"] = ["qk_dim/head", "v_dim/head", "mlp_dim", "proj_out", "fc2_out"]
  else:
    info["channels"], info["hidden"] = list(module.channels), module.hidden
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8,) + SHAPE), jnp.float32)
  ref = spec.module.apply({"params": masked}, x)
  info["max_abs_diff_vs_masked"] = {k: float(jnp.abs(m.apply({"params": p}, x) - ref).max())
                                    for k, (m, p) in variants.items() if "slim" in k}
  return {"variants": variants, "info": info}


def time_group(fns: dict, x) -> dict:
  """Per-call seconds of each ``fns[name](x)``, interleaved: ROUNDS rounds, each timing
  every variant for ROUND_S in a rotated order, so a change of load hits all alike.

  Returns name -> overall median, p10, p90, number of calls and each round's median.
  """
  names = list(fns)
  for name in names:
    for _ in range(3):
      jax.block_until_ready(fns[name](x))
  times = {name: [] for name in names}
  for r in range(ROUNDS):
    for name in names[r % len(names):] + names[:r % len(names)]:
      fn, calls, start = fns[name], [], time.perf_counter()
      while len(calls) < MIN_CALLS or time.perf_counter() - start < ROUND_S:
        t = time.perf_counter()
        jax.block_until_ready(fn(x))
        calls.append(time.perf_counter() - t)
      times[name].append(calls)
  out = {}
  for name, rounds in times.items():
    every = np.concatenate(rounds)
    out[name] = {"median_s": float(np.median(every)), "p10_s": float(np.percentile(every, 10)),
                 "p90_s": float(np.percentile(every, 90)), "calls": int(every.size),
                 "round_medians_s": [float(np.median(b)) for b in rounds]}
  return out


def load_rows() -> tuple[list, dict]:
  path = common.RESULTS / f"{NAME}.json"
  if not path.exists():
    return [], {}
  old = json.loads(path.read_text())
  return old.get("rows", []), old.get("models", {})


def main(argv) -> None:
  force = "--force" in argv
  names = [a for a in argv if not a.startswith("--")] or ["vit_tiny", "cnn"]
  rows, infos = load_rows()
  done = {(r["model"], r["variant"], r["batch"]) for r in rows}
  for model in names:
    built = setup(model)
    infos[model] = built["info"]
    for batch in BATCHES:
      todo = {v: mp for v, mp in built["variants"].items() if force or (model, v, batch) not in done}
      if not todo:
        continue
      x = jnp.asarray(np.random.default_rng(batch).normal(size=(batch,) + SHAPE), jnp.float32)
      fns = {v: functools.partial(jax.jit(m.apply), {"params": jax.device_put(p)})
             for v, (m, p) in todo.items()}
      load_before = os.getloadavg()
      group_stats = time_group(fns, x)
      load_after = os.getloadavg()
      rows = [r for r in rows if (r["model"], r["variant"], r["batch"]) not in
              {(model, v, batch) for v in todo}]
      for variant, t in group_stats.items():
        row = {"model": model, "variant": variant, "batch": batch, "latency_ms": 1e3 * t["median_s"],
               "img_per_s": batch / t["median_s"], **t, "loadavg_before": list(load_before),
               "loadavg_after": list(load_after), "commit": common.code_version()}
        rows.append(row)
        print(f"{model:>9} {variant:>21} b={batch:<4} {row['latency_ms']:9.3f} ms  "
              f"{row['img_per_s']:10.1f} img/s  load {load_before[0]:.2f}-{load_after[0]:.2f}",
              flush=True)
      common.write(NAME, {"input_shape": list(SHAPE), "batches": list(BATCHES),
                          "models": infos, "rows": rows})
  summary(rows)


def summary(rows) -> None:
  """Prints latency and throughput per model and batch, with speed-up over baseline."""
  base = {(r["model"], r["batch"]): r["median_s"] for r in rows if r["variant"] == "baseline"}
  for r in sorted(rows, key=lambda r: (r["model"], r["batch"], r["variant"])):
    ref = base.get((r["model"], r["batch"]))
    speedup = f"{ref / r['median_s']:.2f}x" if ref else "-"
    print(f"{r['model']:>9} b={r['batch']:<4} {r['variant']:>21} {r['latency_ms']:9.3f} ms "
          f"{r['img_per_s']:10.1f} img/s  {speedup}")


def table(rows, infos) -> str:
  """The README table: per model and batch, ms per batch and images/s of each variant."""
  variants = ["baseline", "masked", "slim", "slim_residual_masked"]
  get = {(r["model"], r["batch"], r["variant"]): r for r in rows}
  lines = ["| model | batch | " + " | ".join(variants) + " | slim speed-up |",
           "|---|---:|" + "---:|" * (len(variants) + 1)]
  for model in infos:
    for batch in BATCHES:
      cells = [f"{get[model, batch, v]['latency_ms']:.2f} ms ({get[model, batch, v]['img_per_s']:,.0f}/s)"
               if (model, batch, v) in get else "-" for v in variants]
      base, fast = get.get((model, batch, "baseline")), get.get((model, batch, "slim"))
      speedup = f"{base['median_s'] / fast['median_s']:.2f}x" if base and fast else "-"
      lines.append(f"| {model} | {batch} | " + " | ".join(cells) + f" | {speedup} |")
  return "\n".join(lines)


if __name__ == "__main__":
  if "--table" in sys.argv:
    print(table(*load_rows()))
  else:
    main(sys.argv[1:])
