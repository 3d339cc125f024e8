"""A vit_tiny QAT step with compression.apply's per-kernel loop (`map_entries`) against the
per-shape-group vmap it replaced (kept here only to compare), interleaved in one process.

python benchmarks/bench_map_entries.py vit_tiny -> benchmarks/results/map_entries.json
"""
import sys, time
import jax, jax.numpy as jnp, numpy as np
import common, bench_scale as bs
from hirelc_jax.compression import apply as A, quantize as Q
from hirelc_jax.compression.plan import stack_plans, uniform_plan
loop = A.map_entries
def shape_groups(kmap):
  """Entry indices sharing one (shape, has-bias) signature: what the vmap stacked."""
  groups = {}
  for i, e in enumerate(kmap.entries):
    groups.setdefault((e.shape, e.bias_path is not None), []).append(i)
  return list(groups.values())
def vmapped(kmap, plan, fn, per_entry):
  out = [None] * len(kmap.entries)
  for group in shape_groups(kmap):
    blocks = np.array([kmap.entries[i].block for i in group]); kernels = np.array([kmap.entries[i].kernel for i in group])
    stacked = [None if seq[group[0]] is None else jnp.stack([seq[i] for i in group]) for seq in per_entry]
    fields = [f[blocks, kernels] for f in (plan.bits, plan.keep, plan.fmt, plan.gran)]
    result = jax.vmap(fn)(*stacked, *fields)
    for j, i in enumerate(group):
      out[i] = jax.tree.map(lambda r, j=j: r[j], result)
  return out
def check_equal():
  """The two give the same compressed weights (vit_mu, a random mixed plan)."""
  spec, variables, kmap, _, _ = bs.model_parts("vit_mu")
  plan = jax.tree.map(lambda a: a[0], bs.mixed_plans(kmap, 1))
  out = {}
  for name, mg in (("vmap", vmapped), ("loop", loop)):
    A.map_entries = mg
    out[name] = A.apply_plan(variables["params"], plan, kmap)
  worst = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(out["vmap"]), jax.tree.leaves(out["loop"])))
  assert worst < 1e-6, worst
  print("vmap and loop agree on vit_mu: max |diff|", worst)
if sys.argv[1:] == ["--check"]:
  check_equal(); sys.exit()
model = sys.argv[1]
spec, variables, kmap, x, y = bs.model_parts(model)
batch = (x[:bs.BATCH], y[:bs.BATCH])
runs, first = {"plain": bs.stepper(spec, variables, kmap, *batch)}, {}
for variant, mg in (("vmap", vmapped), ("loop", loop)):
  A.map_entries = mg
  Q.fake_quant = jax.jit(Q.fake_quant.__wrapped__, static_argnames=("channel_axis",))   # fresh traces
  runs[variant + "_int2"] = bs.stepper(spec, variables, kmap, *batch, stack_plans([uniform_plan(*kmap.plan_shape, bits=2)]))
  runs[variant + "_mixed"] = bs.stepper(spec, variables, kmap, *batch, bs.mixed_plans(kmap, 1))
  runs[variant + "_k4"] = bs.stepper(spec, variables, kmap, *batch, bs.mixed_plans(kmap, 4))
  for n in (variant + "_int2", variant + "_mixed", variant + "_k4"):
    t0 = time.perf_counter(); runs[n](); first[n] = time.perf_counter() - t0
    print(n, "first call (compile) %.1f s" % first[n], flush=True)
times = {n: [] for n in runs}
for _ in range(3):
  for n, r in runs.items():
    times[n].append(common.timeit(r, repeats=3, min_time=2.0) / 4)
ms = {n: 1e3 * float(np.median(t)) for n, t in times.items()}
print(model, {k: round(v, 1) for k, v in ms.items()}, {k: round(v / ms["plain"], 2) for k, v in ms.items()})
common.write("map_entries", {"model": model, "batch": bs.BATCH, "step_ms": ms, "first_call_s": first,
                              "code": common.code_version()})
