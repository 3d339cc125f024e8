"""Renders benchmarks/README.md from the JSON files in benchmarks/results/.

Usage: python benchmarks/summarize.py > benchmarks/README.md
Every number in the README comes from a results file written by a benchmark.
"""

from __future__ import annotations

import json
import pathlib

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def load(name):
  path = RESULTS / f"{name}.json"
  return json.loads(path.read_text()) if path.exists() else None


def machine(r) -> str:
  m = r["machine"]
  return f"{m['cpu']}, {m['cores']} cores, {m['backend']} backend, jax {m['jax']}; measured {r['date']}"


def section_apply(r):
  yield "## apply_plan on ViT-Tiny-shaped parameters (issue 2)\n"
  yield f"`python benchmarks/bench_apply_plan.py` — {machine(r)}" + (f", code {r['code']}" if "code" in r else "") + ".\n"
  yield (f"12 blocks x (qkv [192, 576], attn_proj [192, 192], mlp_fc1 [192, 768], mlp_fc2 [768, 192]), "
         f"{r['weights']:,} weights; random plans over every bit width, format, granularity and keep ratio.\n")
  yield "| mode | plans/s | ms |\n|---|---|---|"
  yield f"| one plan per call | {r['plans_per_s_single']:,.1f} | {r['ms_per_plan_single']:.2f} per plan |"
  if "ms_per_plan_masks_given" in r:
    yield (f"| one plan per call, its masks given (as in every QAT step) | "
           f"{1e3 / r['ms_per_plan_masks_given']:,.1f} | {r['ms_per_plan_masks_given']:.2f} per plan |")
  yield f"| vmapped batch of 64 | {r['plans_per_s_vmapped_batch64']:,.1f} | {r['ms_per_batch64']:.1f} per batch |\n"
  if "ms_bandwidth_bound" in r:
    yield (f"Memory-bandwidth bound: reading and writing every weight once in fp32 (a jitted scale-and-shift "
           f"of the same arrays streams {r['stream_gb_per_s']:.1f} GB/s here) takes {r['ms_bandwidth_bound']:.2f} ms; "
           f"one plan's apply_plan is {r['single_over_bound']:.1f}x that (target: within 5x)"
           + (f"; with its masks given, {r['masks_given_over_bound']:.1f}x" if "masks_given_over_bound" in r else "")
           + ".\n")
    if len(runs := r.get("runs", [])) > 1:
      span = lambda key: f"{min(x[key] for x in runs):.1f}-{max(x[key] for x in runs):.1f}"
      single = [x["single_over_bound"] for x in runs]
      ms = [x["single_over_bound"] * 8e-6 * r["weights"] / x["stream_gb_per_s"] for x in runs]   # bound: 8 B a weight
      yield (f"The {len(runs)} runs this file records ({runs[0]['date']} to {runs[-1]['date']}; codes "
             f"{', '.join(sorted({x['code'] for x in runs}))}) spread {span('single_over_bound')}x for one plan per "
             f"call and {span('masks_given_over_bound')}x with its masks given, the streaming rate "
             f"{span('stream_gb_per_s')} GB/s"
             + ("; the 5x target lies inside that spread" if min(single) <= 5 <= max(single) else "")
             + f". One plan per call took {min(ms):.1f}-{max(ms):.1f} ms in them: the ratio moves with the "
             f"measured bound as much as with apply_plan.\n")


def section_baselines(rows):
  yield "## Baseline training on Fashion-MNIST (issue 3)\n"
  yield "`python benchmarks/bench_baseline.py MODEL` — trains from scratch with the default schedule, no augmentation.\n"
  yield "| model | patch | epochs | test acc % | val acc % | train s | machine |\n|---|---|---|---|---|---|---|"
  for r in rows:
    yield (f"| {r['model']} | {r.get('patch_size') or '-'} | {r['schedule']['epochs']} | "
           f"{r['test_accuracy']:.2f} | {r['val_accuracy']:.2f} | {r['train_seconds']:.0f} | {machine(r)} |")
  yield ""


def section_throughput(r):
  yield "## Training and evaluation throughput (issue 3)\n"
  yield f"`python benchmarks/bench_throughput.py` — 28x28x1 inputs, batch 128 train / 500 eval; {machine(r)}.\n"
  yield ("| model | params | train img/s | eval img/s | compressed-candidate eval img/s | compressed / plain |\n"
         "|---|---|---|---|---|---|")
  for row in r["rows"]:
    yield (f"| {row['model']} | {row['params']:,} | {row['train_img_per_s']:,.0f} | {row['eval_img_per_s']:,.0f} | "
           f"{row['compressed_eval_img_per_s']:,.0f} | {row['compressed_over_plain']:.2f} |")
  yield ""


def section_agents(r):
  yield "## Agents (issue 4)\n"
  yield f"`python benchmarks/bench_agents.py` — {machine(r)}.\n"
  yield "Low-level environment steps per second, blocks x 3 members x 2 environments, random actions:\n"
  yield "| model | envs | surrogate reward steps/s | quantization-error proxy steps/s |\n|---|---|---|---|"
  for name, e in r["env_steps"].items():
    yield (f"| {name} | {e['surrogate']['envs']} | {e['surrogate']['steps_per_s']:,.0f} | "
           f"{e['quant_error']['steps_per_s']:,.0f} |")
  yield "\nOne update of the whole LLA ensemble (all blocks), after compilation:\n"
  yield "| model | PPO learners | PPO ms/update | A2C learners | A2C ms/update | compile s (PPO, A2C) |\n|---|---|---|---|---|---|"
  for name, u in r["updates"].items():
    yield (f"| {name} | {u['ppo']['learners']} | {u['ppo']['ms_per_update']:.1f} | {u['a2c']['learners']} | "
           f"{u['a2c']['ms_per_update']:.1f} | {u['ppo']['compile_s']:.1f}, {u['a2c']['compile_s']:.1f} |")
  s = r["surrogate"]
  yield (f"\nSurrogate ({s['features']} features): fit {s['epochs']} epochs on {s['samples']} samples "
         f"{s['fit_s'] * 1e3:.0f} ms (compile {s['fit_compile_s']:.1f} s); predict {s['predict_us_per_plan_in_batch']:.1f} "
         f"µs per plan in a batch of 64.\n")
  sens = r["sensitivity"]
  yield f"Sensitivity on {sens['model']}, {sens['samples']} samples:\n"
  yield "| method | run s | compile s |\n|---|---|---|"
  for method in ("fisher", "hutchinson", "grad_norm", "snip", "composite"):
    if method in sens:
      yield f"| {method} | {sens[method]['run_s']:.3f} | {sens[method]['compile_s']:.1f} |"
  yield ""


def section_runs(rows):
  yield "## Whole runs (issue 5)\n"
  yield "`python -m hirelc_jax.run ...`; numbers from each run's report.json, copied by `benchmarks/record_run.py`.\n"
  yield ("| command | schedule | baseline test % | final test % | drop pt | compression (honest) | paper metric | "
         "wall s | phases s | machine |\n|---|---|---|---|---|---|---|---|---|---|")
  notes = []
  for r in rows:
    phases = ", ".join(f"{k} {v:.0f}" for k, v in r["phase_times_s"].items())
    if r.get("note"):
      notes.append(f"- `{r['command']}`: {r['note']}")
    yield (f"| `{r['command']}` | {r['schedule']} | {r['baseline_accuracy']:.2f} | {r['final_accuracy']:.2f} | {r['accuracy_drop']:.2f} | "
           f"{r['compression_ratio']:.2f}x | {r['paper_compression_ratio']:.2f}x | {r['wall_time_s']:.0f} | {phases} | {machine(r)} |")
  yield ""
  yield from notes
  yield ""
  for r in rows:
    yield from cycle_breakdown(r)


def cycle_breakdown(r):
  """Where each search cycle of one run spent its time (cycle 1 includes compiling the agents)."""
  yield f"Cycle by cycle, `{r['command']}` (cycle 1 includes compiling the agents):\n"
  yield ("| cycle | HLA s | LLA s | eval s | fine-tune s | surrogate s | total s | compression | val % |\n"
         "|---|---|---|---|---|---|---|---|---|")
  for c in r["cycles"]:
    t = c["times"]
    yield (f"| {c['cycle']} | {t['hla_s']:.1f} | {t['lla_s']:.1f} | {t['eval_s']:.1f} | {t['finetune_s']:.1f} | "
           f"{t['surrogate_s']:.2f} | {sum(t.values()):.1f} | {c['compression_ratio']:.2f}x | "
           f"{c['val_accuracy']:.2f} |")
  yield ""


def section_quality(r, name):
  model = r["command"].split("--model ")[1].split()[0] if "--model " in r["command"] else "vit_tiny"
  yield f"## Quality against the strongest simple plans: {name} (issue 14)\n"
  yield (f"`python benchmarks/bench_quality.py --model {model} --targets ...` (rows added as they finish) — "
         f"{machine(r)}. Equal budgets: 43 real pre-fine-tune evaluations and 4 QAT fine-tunes for every "
         "search and candidate baseline (the uniform grid fine-tunes each of its 24 points); every method "
         "chooses on the held-out half of validation, a drop counting as within the target only one paired "
         "standard error below it (rows under the earlier point-estimate choice: "
         f"`results/superseded/quality_{model}_point_choice.md`). Drops are test-accuracy points against the shared "
         f"baseline ({r['baseline']['test']:.2f}% test); mean ± std over seeds. "
         f"Plot: `benchmarks/results/quality_{name}_fronts.png`; methods: `benchmarks/quality_methods.py`.\n")
  if "note" in r:
    yield r["note"] + "\n"
  yield (RESULTS / f"quality_{name}.md").read_text().split("\n", 2)[2]   # the bench's own tables


def section_growth(r):
  yield "## Growth of a search cycle (issue 6)\n"
  yield (f"`{r['command']}` — {machine(r)}. ViT of vit_tiny's width with `depth` blocks, synthetic data; "
         f"steady-state cycle (the second); its fine-tune is {r['steps_per_epoch']} QAT steps plus a "
         "validation pass (a Fashion-MNIST half-epoch fine-tune is 211 steps).\n")
  yield ("| sweep | depth | kernels | LLA members / envs | cycle s | HLA s | LLA s | eval s | fine-tune s | surrogate s |\n"
         "|---|---|---|---|---|---|---|---|---|---|")
  for sweep in ("depth", "members", "envs"):
    for row in r[sweep]:
      o, p = row["overrides"], row["phases_s"]
      members = len(json.loads(o["lla.algorithms"])) if "lla.algorithms" in o else 3
      envs = o.get("lla.n_envs", "4")
      yield (f"| {sweep} | {row['depth']} | {row['kernels']} | {members} / {envs} | {row['cycle_s']:.1f} | "
             f"{p['hla_s']:.2f} | {p['lla_s']:.2f} | {p['eval_s']:.2f} | {p['finetune_s']:.2f} | "
             f"{p['surrogate_s']:.2f} |")
  depth = {row["depth"]: row for row in r["depth"]}
  if len(depth) >= 2:
    lo, hi = min(depth), max(depth)
    yield (f"\nFrom {lo} to {hi} blocks ({hi / lo:.0f}x) the steady cycle grows "
           f"{depth[hi]['cycle_s'] / depth[lo]['cycle_s']:.1f}x, about linearly, because the vmapped "
           "blocks share two cores and run one after another in effect; the LLA training is about half "
           "of a cycle here, the fine-tune most of the rest (and all of it at real fine-tune lengths). "
           "LLA time grows linearly with members and sublinearly with environments.")
  yield ""


def section_export(r):
  yield "## Export file against the counted storage (issue 13)\n"
  yield (f"`python benchmarks/bench_export.py` — random-init parameters (sizes do not depend on "
         f"training) under the plan named; {machine(r)}.\n")
  yield ("| model | plan | counted B | payload B | header B | file B | file - counted B | deflated file B |\n"
         "|---|---|---:|---:|---:|---:|---:|---:|")
  for row in r["rows"]:
    yield (f"| {row['model']} | {row['plan']} | {row['counted_bytes']:,.0f} | {row['payload_bytes']:,} | "
           f"{row['header_bytes']:,} | {row['file_bytes']:,} | {row['file_minus_counted']:,.0f} | "
           f"{row['file_bytes_deflated']:,} |")
  yield ""


def section_slim(r):
  from bench_slim import table
  yield "## Slim models: pruned neurons removed (issue 13)\n"
  yield (f"`python benchmarks/bench_slim.py` — jitted forward, median over rounds interleaving the "
         f"variants, random-init weights (timing depends on shapes only); {machine(r)}; load average "
         f"{min(x['loadavg_before'][0] for x in r['rows']):.1f}-"
         f"{max(x['loadavg_after'][0] for x in r['rows']):.1f}.\n")
  for model, info in r["models"].items():
    st = info["storage"]
    yield (f"- {model}: plan {info['plan_source']}; {info['params']:,} parameters, slim "
           f"{info['slim_params']['slim']:,}; rows made dead downstream still counted: "
           f"{st['dead_bytes']:,.0f} B of {st['storage_bits'] / 8:,.0f} B ({100 * st['dead_fraction']:.1f}%)")
  yield ""
  yield table(r["rows"], r["models"])
  yield ""


def section_scale(r):
  yield "## Scale-out and the cost of QAT (issue 16)\n"
  yield (f"`python benchmarks/bench_scale.py` — batch {r['batch']}, 28x28x1 random data, code {r['code']}; "
         f"{machine(r)}." + (f" {r['note']}" if "note" in r else "") + "\n")
  rows = r["rows"]
  if (qat := [x for x in rows if x["part"] == "qat"]):
    yield "A QAT step (every kernel fake-quantized under a plan, forward and backward) against a plain step:\n"
    yield ("| model | plain step ms | QAT step ms, uniform INT2 | random mixed plan | uniform learned INT4 | "
           "QAT / plain (INT2, mixed, learned); target 1.15x |\n|---|---|---|---|---|---|")
    for x in qat:
      ratios = ", ".join(f"{x[k + '_over_plain']:.2f}x" for k in ("int2", "mixed", "learned"))
      yield (f"| {x['model']} | {x['plain_step_ms']:.1f} | {x['qat_int2_step_ms']:.1f} | {x['qat_mixed_step_ms']:.1f} | "
             f"{x['qat_learned_step_ms']:.1f} | {ratios} |")
    yield ""
  if (batched := [x for x in rows if x["part"] == "batched"]):
    yield "K plans' QAT steps as one vmapped step (`qat.finetune_many`) against K single steps:\n"
    yield "| model | K | one step of K plans, ms | K single steps, ms | speed-up |\n|---|---|---|---|---|"
    for x in batched:
      yield f"| {x['model']} | {x['k']} | {x['step_ms']:.1f} | {x['one_by_one_ms']:.1f} | {x['speedup']:.2f}x |"
    yield ""
  if (devices := [x for x in rows if x["part"] == "devices"]):
    yield ("Forced host devices (`XLA_FLAGS=--xla_force_host_platform_device_count=N`): they share the same "
           "cores, so this is the sharding's overhead, not a speed-up:\n")
    yield ("| model | devices | data-parallel QAT step ms | eval img/s | candidate plans/s |\n"
           "|---|---|---|---|---|")
    for x in devices:
      yield (f"| {x['model']} | {x['devices']} | {x['qat_step_ms']:.1f} | {x['eval_img_per_s']:,.0f} | "
             f"{x['plans_per_s']:.2f} |")
    yield ""


def section_map_entries(r):
  yield "## Fake quantization kernel by kernel, not vmapped by shape (issue 16)\n"
  yield (f"`python benchmarks/bench_map_entries.py {r['model']}` — batch {r['batch']}, code {r['code']}; "
         f"{machine(r)}. {r.get('note', '')}\n")
  plain = r["step_ms"]["plain"]
  yield "| QAT step | vmap by shape: ms (/ plain), first call s | kernel by kernel: ms (/ plain), first call s |"
  yield "|---|---|---|"
  for name, what in (("int2", "uniform INT2"), ("mixed", "random mixed plan"), ("k4", "4 mixed plans at once")):
    cells = [f"{r['step_ms'][v + '_' + name]:.0f} ({r['step_ms'][v + '_' + name] / plain:.2f}x), "
             f"{r['first_call_s'][v + '_' + name]:.0f}" for v in ("vmap", "loop")]
    yield f"| {what} | {cells[0]} | {cells[1]} |"
  yield f"\nA plain step: {plain:.0f} ms.\n"


def section_calibration(rs):
  yield "## The error table's calibration: one slope, or one per block, kernel or slot\n"
  yield ("`python benchmarks/bench_calibration.py --model M --fit N`: random plans (the warm-up's distribution) "
         "evaluated for real before fine-tuning; each calibration is fitted on N of them and predicts the rest, "
         "over random splits. Moderate: drop at most 8 points. The search uses one slope per block "
         "(ridge 0.01).\n")
  yield "| model | plans (collapsed) | fit on | calibration | ridge | RMSE on moderate plans (pt) | collapsed among predicted <= 4 pt |"
  yield "|---|---|---|---|---|---|---|"
  for r in rs:
    for x in r["rows"]:
      yield (f"| {r['benchmark'][len('calibration_'):]} | {r['plans']} ({r['collapsed']}) | {r['fit_plans']} | "
             f"{x['calibration']} | {x.get('ridge', '')} | {x['rmse_moderate']:.2f} | "
             f"{100 * x['collapsed_among_predicted_within_4pt']:.1f}% |")
  for r in rs:
    yield (f"\n{r['benchmark'][len('calibration_'):]}: one slope on every plan {r['common_slope_all_plans']:.1f} points "
           f"per unit E; one per block " + ", ".join(f"{x:.1f}" for x in r["block_slopes_all_plans"]) + ".")
  yield f"\n{machine(rs[0])}.\n"


def section_compile_time(r):
  yield "## Compiling: the smoke run cold and warm\n"
  yield f"`{r['command']}`; {machine(r)}. {r['note']}\n"
  yield "| run | code | run wall s | cycle 1: HLA s | LLA s | fine-tune s |\n|---|---|---|---|---|---|"
  for x in r["rows"]:
    yield (f"| {x['run']} | {x['code']} | {x['wall_time_s']:.0f} | {x['cycle1_hla_s']:.0f} | {x['cycle1_lla_s']:.0f} | "
           f"{x['cycle1_finetune_s']:.0f} |")
  yield ""


def main():
  print("# Benchmarks\n")
  print("Generated by `python benchmarks/summarize.py` from `benchmarks/results/*.json`; "
        "each section names its command and the machine. No GPU was available to this project's "
        "sessions so far: every number is from the 2-core CPU.\n")
  parts = []
  if (r := load("apply_plan")):
    parts += list(section_apply(r))
  baselines = [load(p.stem) for p in sorted(RESULTS.glob("baseline_*.json"))]
  if baselines:
    parts += list(section_baselines(baselines))
  if (r := load("throughput")):
    parts += list(section_throughput(r))
  if (r := load("agents")):
    parts += list(section_agents(r))
  runs = [load(p.stem) for p in sorted(RESULTS.glob("run_*.json"))]
  if runs:
    parts += list(section_runs(runs))
  for p in sorted(RESULTS.glob("quality_*.json")):
    parts += list(section_quality(load(p.stem), p.stem[len("quality_"):]))
  calibrations = [load(p.stem) for p in sorted(RESULTS.glob("calibration_*.json"))]
  if calibrations:
    parts += list(section_calibration(calibrations))
  if (RESULTS / "superseded").is_dir():
    parts += ["The quality tables before issue 14 (baselines that could not prune, measured before the "
              "quantizer fixes of commit d762f40) are kept in `benchmarks/results/superseded/`.\n"]
  for name in ("scale", "scale_gpu"):
    if (r := load(name)):
      parts += list(section_scale(r))
  if (r := load("compile_time")):
    parts += list(section_compile_time(r))
  if (r := load("map_entries")):
    parts += list(section_map_entries(r))
  if (r := load("growth")):
    parts += list(section_growth(r))
  if (r := load("export")):
    parts += list(section_export(r))
  if (r := load("slim")):
    parts += list(section_slim(r))
  print("\n".join(parts))


if __name__ == "__main__":
  main()
