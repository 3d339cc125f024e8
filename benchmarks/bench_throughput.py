"""Train and eval images per second per model, and compressed-candidate eval cost.

For each model on 28x28x1 inputs (Fashion-MNIST shaped, random data): training
images/s (one jitted AdamW step per batch), evaluation images/s of the plain
model, and of a compressed candidate evaluated through `make_evaluate_plans`
over a 5,000-image split (the plan is applied once, then every batch runs the
forward pass). The ratio compressed/plain is the cost of evaluating a
candidate relative to a plain evaluation; the target is >= 0.8.
Usage: python benchmarks/bench_throughput.py [model ...]
"""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402
from hirelc_jax.compression.kernel_map import build_kernel_map  # noqa: E402
from hirelc_jax.compression.plan import stack_plans, uniform_plan  # noqa: E402
from hirelc_jax.models import build_model, init_params  # noqa: E402
from hirelc_jax.training import baseline, loop, qat  # noqa: E402

SHAPE = (28, 28, 1)
N_EVAL = 5000


def measure(model: str) -> dict:
  spec = build_model(model, num_classes=10, image_shape=SHAPE,
                     patch_size=baseline.default_patch_size(model, SHAPE))
  variables = init_params(spec, jax.random.key(0))
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N_EVAL,) + SHAPE).astype(np.float32)
  y = rng.integers(0, 10, N_EVAL).astype(np.int32)
  config = loop.TrainConfig(batch_size=128)
  tx = loop.make_optimizer(config, 1000)
  step = loop.make_train_step(spec.module, tx, lambda t, _: t)
  # Copies: the step donates its state, and the evaluations below still need theirs.
  trainable, model_state = jax.tree.map(jnp.copy, (params, state))
  train_state = [loop.TrainState(trainable, model_state, tx.init(trainable), jnp.zeros((), jnp.int32))]

  def train_ten():
    for i in range(10):
      train_state[0], loss = step(train_state[0], None, x[i * 128:(i + 1) * 128],
                                  y[i * 128:(i + 1) * 128], jax.random.key(i))
    jax.block_until_ready(loss)

  t_train = common.timeit(train_ten, repeats=3, min_time=3.0) / 1280
  evaluate = loop.make_evaluate(spec.module, lambda t, _: t)
  t_plain = common.timeit(lambda: loop.accuracy(evaluate, params, state, None, x, y, 500),
                          repeats=3, min_time=3.0) / N_EVAL
  kmap = build_kernel_map(params, spec.kernel_rules, spec.kernel_names)
  plan = stack_plans([uniform_plan(*kmap.plan_shape, bits=4, keep=0.75, gran="per_channel")])
  evaluate_plans = qat.make_evaluate_plans(spec.module, kmap)
  t_comp = common.timeit(lambda: qat.plan_accuracies(evaluate_plans, variables, plan, x, y, 500),
                         repeats=3, min_time=3.0) / N_EVAL
  row = {"model": model, "params": int(sum(np.size(a) for a in jax.tree.leaves(params))),
         "train_img_per_s": 1 / t_train, "eval_img_per_s": 1 / t_plain,
         "compressed_eval_img_per_s": 1 / t_comp, "compressed_over_plain": t_plain / t_comp}
  print(f"{model:>10}: train {row['train_img_per_s']:8.1f}/s  eval {row['eval_img_per_s']:8.1f}/s  "
        f"compressed eval {row['compressed_eval_img_per_s']:8.1f}/s  ratio {row['compressed_over_plain']:.2f}")
  return row


def main(models) -> None:
  rows = [measure(m) for m in models]
  common.write("throughput", {"input_shape": list(SHAPE), "eval_split": N_EVAL, "rows": rows})


if __name__ == "__main__":
  main(sys.argv[1:] or ["vit_mu", "vit_mini", "vit_tiny", "cnn", "resnet18"])
