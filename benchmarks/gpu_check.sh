#!/usr/bin/env bash
# One short GPU check: which device JAX sees, the speed benchmarks, then the
# paper schedule on vit_tiny / Fashion-MNIST. Everything it measures lands in
# $OUT (default /tmp/gpu_check): the benchmark JSON files and the run's report.
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
/usr/bin/env time -v python -m hirelc_jax.run --model vit_tiny --schedule paper --quiet \
  --data-dir "$FMNIST_DIR" --output-dir "$OUT/paper" 2>&1 | tee "$OUT/paper.log"
cp benchmarks/results/*.json "$OUT/"
