"""Growth: time per search cycle against depth, ensemble size and environments.

Usage: python benchmarks/bench_growth.py [--depths 4 8 12 24] [--quick]

A ViT of vit_tiny's width (192, 3 heads, MLP 768) with `depth` blocks, random
weights, and synthetic 28x28x1 data (1,280 training images, so one fine-tune
epoch is 10 steps of 128) runs the real pipeline (`experiment.run`) for two
cycles with the default agents. Cycle 2 is steady state (cycle 1 also
compiles); its phases are reported: HLA training, LLA training and voting,
evaluation of the plan, QAT fine-tune (per step, since a real epoch of
Fashion-MNIST is 422 steps), surrogate update. Then, at depth 12, the same
for ensembles of 1, 3 and 6 low-level members and 2, 4 and 8 environments.
Writes benchmarks/results/growth.json.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

from hirelc_jax import config as config_io  # noqa: E402
from hirelc_jax import experiment  # noqa: E402
from hirelc_jax.api import dataset_from_arrays  # noqa: E402
from hirelc_jax.models import ModelSpec, init_params, vit  # noqa: E402
from hirelc_jax.compression.kernel_map import build_kernel_map  # noqa: E402
from hirelc_jax.training import loop, qat  # noqa: E402

TRAIN, TEST, SHAPE = 1424, 256, (28, 28, 1)   # 1,280 train + 144 val after the 10 % split
STEPS_PER_EPOCH = 10


def synthetic_setup(depth: int, config) -> experiment.Setup:
  rng = np.random.default_rng(0)
  data = dataset_from_arrays(rng.normal(size=(TRAIN,) + SHAPE), rng.integers(0, 10, TRAIN),
                             rng.normal(size=(TEST,) + SHAPE), rng.integers(0, 10, TEST),
                             num_classes=10, name="synthetic")
  module = vit.ViT(num_classes=10, image_shape=SHAPE, patch_size=14, width=192, depth=depth,
                   num_heads=3, mlp_dim=768)
  spec = ModelSpec(f"vit_d{depth}", module, vit.KERNEL_NAMES, vit.KERNEL_RULES, depth, 10, SHAPE)
  variables = init_params(spec, jax.random.key(0))
  kmap = build_kernel_map(variables["params"], vit.KERNEL_RULES, vit.KERNEL_NAMES)
  return experiment.Setup(config, data, spec, variables, kmap, None,
                          qat.make_evaluate_plans(module, kmap), loop.make_evaluate(module, lambda t, _: t))


def one_run(depth: int, overrides: dict) -> dict:
  base = {"search.cycles": "2", "search.warmup_samples": "8", "search.eval_samples": "128",
          "search.sensitivity_samples": "16", "training.finetune_patience": "5"}
  config = config_io.override(config_io.Config(), {**base, **overrides})
  setup = synthetic_setup(depth, config)
  with tempfile.TemporaryDirectory() as out:
    report = experiment.run(config, pathlib.Path(out) / "run", quiet=True, echo=None, setup=setup)
  first, steady = (c["times"] for c in report["cycles"])
  row = {"depth": depth, "overrides": overrides, "kernels": len(setup.kmap.entries),
         "cycle_s": sum(steady.values()), "first_cycle_s": sum(first.values()),
         "finetune_ms_per_step": 1000 * steady["finetune_s"] / STEPS_PER_EPOCH,
         "phases_s": steady, "run_phases_s": report["phase_times_s"]}
  print(row, flush=True)
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depths", type=int, nargs="+", default=[4, 8, 12, 24])
  parser.add_argument("--quick", action="store_true", help="depth sweep only")
  args = parser.parse_args()
  experiment.enable_compilation_cache()
  rows = {"depth": [one_run(d, {}) for d in args.depths], "members": [], "envs": []}
  if not args.quick:
    members = {1: ("ppo",), 3: ("ppo", "a2c", "ppo"), 6: ("ppo", "a2c", "ppo") * 2}
    betas = {1: (5.0,), 3: (1.5, 5.0, 8.0), 6: (1.5, 5.0, 8.0) * 2}
    for m, algos in members.items():
      rows["members"].append(one_run(12, {"lla.algorithms": str(list(algos)).replace("'", '"'),
                                          "lla.betas": str(list(betas[m]))}))
    for n in (2, 4, 8):
      rows["envs"].append(one_run(12, {"lla.n_envs": str(n)}))
  common.write("growth", {"command": " ".join(sys.argv), "steps_per_epoch": STEPS_PER_EPOCH, **rows})


if __name__ == "__main__":
  main()
