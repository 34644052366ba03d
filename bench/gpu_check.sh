#!/usr/bin/env bash
# The CUDA device check in one call on a lent GPU host (at most 10 minutes): runs graphopt's
# bundles from CHECK_DIR, compares with onnxruntime CPU fp32, times PyTorch eager /
# torch.compile and onnxruntime CUDA on the same GPU. No TVM or graphopt needed there.
#
# Here (no GPU):   .venv/bin/python bench/gpu_check_prepare.py build/gpu_check [--group fp16]
# On the GPU host: bench/gpu_check.sh build/gpu_check        (results in $OUT or CHECK_DIR/results)
# One group of cases per call (fp16, bf16, fp32, fp32-b32, minilm, minilm-fp32, blocks, int8).
# See docs/CUDA.md.
set -uo pipefail
DIR=${1:-build/gpu_check}
RESULTS=${OUT:-$DIR/results}
mkdir -p "$RESULTS"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no nvidia-smi"
  python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| ort', o.__version__, o.get_available_providers())"
} 2>&1 | tee "$RESULTS/environment.txt"
chmod +x "$DIR/run"
# 540 s leaves the call's last minute for copying results back.
timeout 540 python3 "$(dirname "$0")/gpu_check.py" "$DIR" --out "$RESULTS" "${@:2}"
rc=$?
echo "gpu_check exit status $rc" | tee -a "$RESULTS/environment.txt"
exit $rc
