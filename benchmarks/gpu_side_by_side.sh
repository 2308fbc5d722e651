#!/usr/bin/env bash
# One call on the lent GPU machine, after part A is parked (see ../shared/gpu/README.md and
# benchmarks/GPU_RUNBOOK.md). Installs nothing beyond what .gpu-b carries, and .gpu-c (mlx-tune,
# built by benchmarks/sbs_gpu_c.sh) where a call carried it or parked it in /tmp/gpu-part-c.
#   bash benchmarks/gpu_side_by_side.sh SETUP [side_by_side.py flags...]
#   bash benchmarks/gpu_side_by_side.sh text --rows 500 --repeats 2 --tools ours,mlx_lm,mlx_lm_lora,mlx_tune
# Models, data and the tools' kernel caches stay in /tmp/sbs (reused by later calls while the machine
# is warm: pass --no-cold there to keep the caches); runs.jsonl and the logs are copied to $OUT.
#   SBS_TIMEOUT=520 bash benchmarks/gpu_side_by_side.sh fastvlm --size real --repeats 1   # then --no-cold
set -uo pipefail
source .gpu-b/activate.sh
export HF_HUB_OFFLINE=1
setup=$1; shift
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader
python3 -c "import pynvml" 2>/dev/null || echo "pynvml missing: NVML through nvidia-smi polling"
# mlx-tune in a folder of its own, on the path of mlx_tune runs only (its datasets<4 is not mlx-vlm's)
tune=()
for c in .gpu-c /tmp/gpu-part-c; do
  if [ -f "$c/mlxtune-site.tar.xz" ] && [ ! -d /tmp/site-mlxtune/mlx_tune ]; then
    mkdir -p /tmp/site-mlxtune && xz -dc "$c/mlxtune-site.tar.xz" | tar xf - -C /tmp/site-mlxtune
  fi
done
if [ -d /tmp/site-mlxtune/mlx_tune ]; then
  tune=(--mlx-tune-site /tmp/site-mlxtune)
  PYTHONPATH="/tmp/site-mlxtune:$PYTHONPATH" python3 -c 'import mlx_tune, datasets; print("mlx-tune", mlx_tune.__version__, "datasets", datasets.__version__)' 2>&1 | tail -3
else
  echo "no .gpu-c: the mlx_tune tool will fail (benchmarks/sbs_gpu_c.sh builds it)"
fi
# SBS_TIMEOUT=S stops the harness after S seconds (0: never) and still copies what it wrote (a call's limit)
timeout "${SBS_TIMEOUT:-0}" python3 benchmarks/side_by_side.py --setup "$setup" --out "/tmp/sbs/out-$setup" --work /tmp/sbs/work \
    --device-note "NVIDIA H200 (lent machine, 1 GPU)" ${tune[@]+"${tune[@]}"} "$@"
rc=$?
mkdir -p "${OUT:-/tmp/sbs/fetch}/$setup"
cp "/tmp/sbs/out-$setup/runs.jsonl" "${OUT:-/tmp/sbs/fetch}/$setup/" 2>/dev/null
cp /tmp/sbs/out-$setup/runs/*.log "${OUT:-/tmp/sbs/fetch}/$setup/" 2>/dev/null
exit $rc
