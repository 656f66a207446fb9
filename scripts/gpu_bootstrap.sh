#!/usr/bin/env bash
# Runs the GPU acceptance checks on the lent device machine (python3 3.12 with torch+CUDA, transformers, peft and
# accelerate; no network). First, here: `make gpu-wheels` (fills the git-ignored .gpu_wheels/). Then one `run` tool
# call per part, each well inside the 10-minute limit (30 minutes of device time in all):
#
#   run(command="bash scripts/gpu_bootstrap.sh check", carry=[".gpu_wheels"], timeout_s=600)   # make gpu-check on gpu-1b
#   run(command="bash scripts/gpu_bootstrap.sh qlora", carry=[".gpu_wheels"], timeout_s=600)   # the same on gpu-1b-qlora
#   run(command="bash scripts/gpu_bootstrap.sh bench", carry=[".gpu_wheels"], timeout_s=600)   # make gpu-bench
#
# Each part installs the wheels into /tmp/site (skipped when a warm machine has them), prints the versions it runs
# with, and leaves its log and figures under $OUT (gpu_check.json, bench_cuda.json, *.log) for the README.
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:-check}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
SITE=/tmp/site
if [[ ! -f $SITE/.installed ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu_wheels/*.whl \
    || { echo "installing .gpu_wheels failed: run 'make gpu-wheels' here and name .gpu_wheels in carry" >&2; exit 1; }
  touch $SITE/.installed
fi
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, trl, peft, datasets, bitsandbytes as bnb; print('python3', __import__('sys').version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'datasets', datasets.__version__, 'bitsandbytes', bnb.__version__, 'flash_attn', __import__('importlib.util').util.find_spec('flash_attn') is not None)" || exit 1
case $part in
  check) python3 -m benchmarks.gpu_check --recipe gpu-1b --out "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log" ;;
  qlora) python3 -m benchmarks.gpu_check --recipe gpu-1b-qlora --out "$OUT/gpu_check_qlora.json" 2>&1 | tee "$OUT/gpu_check_qlora.log" ;;
  bench)
    sft=.gpu_wheels/data/t0_mixture.jsonl
    python3 -m benchmarks.run --device cuda --results "$OUT/bench_cuda.json" $([[ -f $sft ]] && echo --sft-file $sft) 2>&1 | tee "$OUT/bench_cuda.log" ;;
  *) echo "usage: scripts/gpu_bootstrap.sh check|qlora|bench" >&2; exit 2 ;;
esac
