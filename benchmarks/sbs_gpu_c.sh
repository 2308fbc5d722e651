#!/usr/bin/env bash
# Build .gpu-c/: mlx-tune and what it needs beyond .gpu-b, for the lent GPU machine (no network there;
# x86-64, Python 3.12: ../shared/gpu/README.md). Run here, from the project's root (needs the index).
#   bash benchmarks/sbs_gpu_c.sh
# mlx-tune 0.6.0 imports `datasets` (<4: pyarrow, pandas, ...) and mlx-embeddings at import time; the
# wheels unpacked (pyarrow alone is a 55 MB wheel) and xz-compressed are ~35 MB, too much beside .gpu-b
# in one call (64 MiB), so .gpu-c travels in a call of its own that parks it in /tmp/gpu-part-c
# (benchmarks/GPU_RUNBOOK.md). gpu_side_by_side.sh unpacks it into /tmp/site-mlxtune, a folder on the
# path of mlx_tune runs only: datasets 3.6 is older than mlx-vlm 0.7.10 accepts (datasets>=4), and
# the other tools keep the machine's own packages. Keep .gpu-c out of git (.git/info/exclude).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
WHEELS=(mlx-tune==0.6.0 mlx-embeddings==0.1.0 datasets==3.6.0 pyarrow==26.0.1 pandas==3.1.1 python-dateutil six
        pytz tzdata dill==0.3.8 multiprocess==0.70.16 xxhash fsspec==2025.3.0 aiohttp aiosignal frozenlist multidict
        yarl propcache aiohappyeyeballs attrs requests urllib3 idna charset-normalizer certifi)
plat=(--only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps "${plat[@]}" -d "$tmp/w" "${WHEELS[@]}"
mkdir -p "$tmp/tree"
for w in "$tmp"/w/*.whl; do unzip -q -o "$w" -d "$tmp/tree"; done
rm -rf "$tmp"/tree/pandas/tests "$tmp"/tree/pyarrow/{include,tests,src}  # not imported at run time
rm -rf .gpu-c && mkdir -p .gpu-c
echo "compressing (a minute or two)..."
tar cf - -C "$tmp/tree" . | xz -T2 -6 > .gpu-c/mlxtune-site.tar.xz
(cd "$tmp/w" && ls *.whl) > .gpu-c/WHEELS.txt
du -sh .gpu-c
