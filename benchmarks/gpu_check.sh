#!/usr/bin/env bash
# One short GPU check: which device JAX sees, the speed benchmarks, K fine-tunes at
# once and the QAT step's cost, the default vit_tiny / Fashion-MNIST run (timed), and a
# sweep over 4 targets on the same baseline. Everything it measures lands in $OUT
# (default /tmp/gpu_check): the benchmark JSON files, the run's report, the sweep's front.
#
#   OUT=/tmp/gpu_check FMNIST_DIR=/path/to/fashion-mnist bash benchmarks/gpu_check.sh
#
# The machine needs JAX with a GPU backend and this package's dependencies
# (pip install -e .); FMNIST_DIR holds the four IDX .gz files when the Debian
# package dataset-fashion-mnist is not installed. The baseline is trained on the
# GPU (its cache lives under $OUT/cache, so nothing outside $OUT is written).
set -euo pipefail
OUT=${OUT:-/tmp/gpu_check}
FMNIST_DIR=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HIRELC_JAX_CACHE="$OUT/cache"
cd "$(dirname "$0")/.."

python -c "import jax; print(jax.default_backend(), jax.devices())" | tee "$OUT/devices.txt"
python -c "import jax, sys; sys.exit(jax.default_backend() == 'cpu')" \
  || { echo "JAX found no accelerator; stopping" >&2; exit 1; }

python benchmarks/bench_apply_plan.py 2>&1 | tee "$OUT/apply_plan.log"
python benchmarks/bench_agents.py --quick 2>&1 | tee "$OUT/agents.log"
python benchmarks/bench_throughput.py 2>&1 | tee "$OUT/throughput.log"
python benchmarks/bench_scale.py --parts qat batched --models vit_mu vit_tiny --name scale_gpu 2>&1 | tee "$OUT/scale.log"
cp benchmarks/results/*.json "$OUT/"
/usr/bin/env time -v python -m hirelc_jax.run --model vit_tiny --quiet \
  --data-dir "$FMNIST_DIR" --output-dir "$OUT/default" 2>&1 | tee "$OUT/default.log"
/usr/bin/env time -v python -m hirelc_jax.sweep --model vit_tiny --targets 0.25 0.5 1 2 --quiet \
  --data-dir "$FMNIST_DIR" --output-dir "$OUT/sweep" 2>&1 | tee "$OUT/sweep.log"
