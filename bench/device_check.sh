#!/usr/bin/env bash
# The GPU device check of issue 17, in under 8 minutes on one H200: the CUDA engine against the CPU one
# on the tiny models, fused multi-tenant against each adapter alone, then the Llama-3.1-8B-shaped MFU
# benchmark and the real-shapes ratios on the device. Run from the repository root on the GPU machine:
#   bash bench/device_check.sh
# Where the machine's python lacks the engine's pure-Python needs (transformers 5.x, peft 0.21), put
# their wheels in .whl/ (see README, "Running on a GPU"); they are installed to /tmp/site first.
set -uo pipefail
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
status=0
timeout 150 python3 bench/device_agreement.py || status=1
timeout 240 python3 bench/gpu_bench.py --shape llama-3.1-8b --steps 2 || status=1
timeout 60 python3 bench/real_shapes_bench.py --device cuda --only 1 || status=1
timeout 60 python3 bench/real_shapes_bench.py --device cuda --dtype bfloat16 --only 2,3 || status=1
exit $status
