#!/usr/bin/env bash
# Every measurement the book and README take from a GPU, as one prepared command per part.
#
#   bash benchmarks/gpu_checks.sh OUT_DIR bench   # speed: training/inference/data vs torchvision (~5 min)
#   bash benchmarks/gpu_checks.sh OUT_DIR train   # full SSD300 on shapes (+ a short raccoon run) (~6 min)
#   bash benchmarks/gpu_checks.sh OUT_DIR real    # the data path alone: CPU workers feeding the compiled step (~3 min)
#
# Inputs: real JPEGs in a VOC-layout folder (GPU_DATA/voc2012_mini100, GPU_DATA/raccoon), and
# wheels of packages the GPU image lacks in .whl/ (defusedxml, pycocotools), both optional.
# Results (JSON + PNG) go to OUT_DIR; copy them into benchmarks/results/ and book/results/.
set -uo pipefail
out=${1:?usage: gpu_checks.sh OUT_DIR bench|train|real}
part=${2:?usage: gpu_checks.sh OUT_DIR bench|train|real}
data=${GPU_DATA:-gpu_data}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  site=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH=$site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu_${part}_nvidia_smi.txt" 2>&1
status=0
run() { echo "== $*"; "$@" || { echo "!! failed ($?): $*"; status=1; }; }

case "$part" in
  bench)
    run timeout 60 python3 -m pytest -o addopts="" -q -p no:cacheprovider tests/test_loss.py -k cuda
    run timeout 260 python3 benchmarks/bench_gpu.py --out "$out" --jpeg-root "$data/voc2012_mini100"
    run timeout 60 python3 benchmarks/bench_inference.py --device cuda --out "$out"
    run timeout 40 python3 benchmarks/bench_targets.py --device cuda --out "$out"
    run timeout 60 python3 benchmarks/bench_data.py --workers 16 --data "$data/voc2012_mini100" --out "$out"
    ;;
  train)
    run timeout 380 python3 benchmarks/gpu_train_shapes.py --out "$out" --minutes 4 \
        --raccoon "$data/raccoon" --raccoon-minutes 0.75
    ;;
  real)
    run timeout 200 python3 benchmarks/bench_gpu.py --out "$out" --jpeg-root "$data/voc2012_mini100" --only-real-data
    run timeout 90 python3 benchmarks/bench_data.py --workers 16 --data "$data/voc2012_mini100" --out "$out"
    ;;
  *) echo "unknown part: $part"; exit 2 ;;
esac
exit $status
