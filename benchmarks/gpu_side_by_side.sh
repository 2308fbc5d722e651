#!/usr/bin/env bash
# One call on the lent GPU machine, after part A is parked (see ../shared/gpu/README.md and
# benchmarks/GPU_RUNBOOK.md). Installs nothing beyond what .gpu-b carries.
#   bash benchmarks/gpu_side_by_side.sh SETUP [side_by_side.py flags...]
# Models, data and the tools' kernel caches stay in /tmp/sbs (reused by later calls while the machine
# is warm: pass --no-cold there to keep the caches); runs.jsonl and the logs are copied to $OUT.
set -uo pipefail
source .gpu-b/activate.sh
export HF_HUB_OFFLINE=1
setup=$1; shift
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader
python3 -c "import pynvml" 2>/dev/null || echo "pynvml missing: NVML through nvidia-smi polling"
python3 benchmarks/side_by_side.py --setup "$setup" --out "/tmp/sbs/out-$setup" --work /tmp/sbs/work \
    --device-note "NVIDIA H200 (lent machine, 1 GPU)" "$@"
rc=$?
mkdir -p "${OUT:-/tmp/sbs/fetch}/$setup"
cp "/tmp/sbs/out-$setup/runs.jsonl" "${OUT:-/tmp/sbs/fetch}/$setup/" 2>/dev/null
cp /tmp/sbs/out-$setup/runs/*.log "${OUT:-/tmp/sbs/fetch}/$setup/" 2>/dev/null
exit $rc
