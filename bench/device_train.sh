#!/usr/bin/env bash
# Resume the long runs of training_state/ on a lent GPU machine (device tool), within a time budget.
#
# Here, before the call (scratch/ is ignored, so the JPEG form of CIFAR-10 travels only when carried):
#     mkdir -p scratch/cifar10 && cp ../shared/data/cifar10/jpeg.npz scratch/cifar10/
# The call (one per session is about what 15 minutes of device time allow):
#     run(command="bash bench/device_train.sh 450", carry=["scratch/cifar10"], timeout_s=600)
# Back here, put what came back in place and commit it:
#     for a in pqa qcfs; do cp FILES_AT/long120_$a/* training_state/long120/resnet20_$a/; done
#
# The machine has PyTorch (CUDA), onnx, onnxruntime, click, Pillow and numpy but no network: the
# project installs without its dependencies. Each run checkpoints every epoch, so a run stopped
# by the budget loses only the epoch in progress; one that reaches its last epoch exports model.onnx.
set -uo pipefail
budget="${1:-450}"
out="${OUT:-/tmp/device_out}"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . || { echo "error: install failed"; exit 1; }
python3 bench/decode_jpeg_npz.py scratch/cifar10/jpeg.npz /tmp/cifar10 || exit 1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
for a in pqa qcfs; do
  timeout "$budget" pmsm-train --data /tmp/cifar10 --model resnet20 --act "$a" --lam 2 --epochs 120 \
    --batch-size 128 --lr 0.1 --warmup-epochs 1 --seed 42 --threads 4 --eval-every 5 \
    --out "training_state/long120/resnet20_$a" --no-progress > "/tmp/device_$a.out" 2>&1 &
done
wait
for a in pqa qcfs; do
  mkdir -p "$out/long120_$a"
  for f in checkpoint.pt train.log summary.json model.onnx; do
    [ -f "training_state/long120/resnet20_$a/$f" ] && cp "training_state/long120/resnet20_$a/$f" "$out/long120_$a/"
  done
  echo "== $a"; tail -n 3 "/tmp/device_$a.out" | cut -c1-200
done
