#!/usr/bin/env bash
# Resume long runs of training_state/ on a lent GPU machine (device tool), side by side, within a
# time budget. Each run resumes with its own configuration: the last command of its train.log,
# with the data path, threads and output folder set for the machine (bench/resume_command.py).
#
# Here, before the call (scratch/ is ignored, so the JPEG form of CIFAR-10 travels only when carried):
#     mkdir -p scratch/cifar10 && cp ../shared/data/cifar10/jpeg.npz scratch/cifar10/
# The call (one per session is about what 15 minutes of device time allow):
#     run(command="bash bench/device_train.sh 450 training_state/<run>/<model> ...",
#         carry=["scratch/cifar10"], timeout_s=600)
# Back here, put what came back in place and commit it: $OUT/<run folder>/ holds each run's new
# checkpoint.pt and train.log (and summary.json and model.onnx once it reached its last epoch):
#     cp -r FILES_AT/training_state/. training_state/
#
# The machine has PyTorch (CUDA), onnx, onnxruntime, click, Pillow and numpy but no network: the
# project installs without its dependencies. Each run checkpoints every epoch, so a run stopped
# by the budget loses only the epoch in progress.
set -uo pipefail
budget="${1:?usage: device_train.sh BUDGET_S RUN_DIR...}"
shift
[ "$#" -gt 0 ] || { echo "error: no run folder given (training_state/<run>/<model>)"; exit 2; }
out="${OUT:-/tmp/device_out}"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . || { echo "error: install failed"; exit 1; }
python3 bench/decode_jpeg_npz.py scratch/cifar10/jpeg.npz /tmp/cifar10 || exit 1
logfile() { echo "/tmp/device_$(echo "$1" | tr / _).out"; }
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
for run in "$@"; do
  run="${run%/}"
  cmd=$(python3 bench/resume_command.py "$run" --data /tmp/cifar10 --threads 4) || exit 2
  echo "== $run: $cmd"
  eval "timeout $budget $cmd" > "$(logfile "$run")" 2>&1 &
done
wait
for run in "$@"; do
  run="${run%/}"
  mkdir -p "$out/$run"
  for f in checkpoint.pt train.log summary.json model.onnx; do
    [ -f "$run/$f" ] && cp "$run/$f" "$out/$run/"
  done
  echo "== $run"; tail -n 3 "$(logfile "$run")" | cut -c1-200
done
