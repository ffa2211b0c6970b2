#!/usr/bin/env bash
# The one prepared GPU check (issue 20): on a lent GPU machine (device tool), compile and run the
# shipped models with onnxruntime's CUDA execution provider, check the T = 1 agreement (exact mode
# must pass its verification with every session on the GPU) and time an SNN step against one ANN
# run, side by side (bench/gpu_check.py). Run it here first with `--providers cpu` to see it work.
#
# The call (well under the 15 minutes of device time a session gets):
#     run(command="bash bench/gpu_check.sh", timeout_s=420)
# It writes $OUT/gpu_check.json and $OUT/gpu_check.log; record the table in docs/benchmarks.md.
# The machine has onnx, onnxruntime, click and numpy but no network: the project installs without
# its dependencies. If its onnxruntime has no CUDA provider (the CPU wheel), the script says so and
# exits 2: onnxruntime-gpu must then be brought as a wheel (carry) and installed with --no-deps.
set -uo pipefail
out="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . || { echo "error: install failed"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader || true
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
python3 bench/gpu_check.py --providers "${PROVIDERS:-cuda}" --images "${IMAGES:-1000}" --batch-size 64 \
    --timesteps 8 --rounds 5 --json "$out/gpu_check.json" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
