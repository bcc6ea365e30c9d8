#!/usr/bin/env bash
# The GPU measurement of the paper-scale path: the one command a lent GPU session runs, from the
# repository root (the device tool: `bash scripts/gpu_measure.sh`, timeout_s 600; it ends in about
# 4 to 6 minutes). No network is needed: the machine's own python3 has torch, transformers,
# accelerate, peft, scikit-learn, scipy, pyyaml and pytest, which is all this path imports
# (the `adapters` baselines and the packaged MiniLM are not used). Steps, each time-limited:
#   1. the environment: versions, the GPU, and the device a run's Accelerator() picks;
#   2. python -m tinyattn.study.gpu_bench (at most 400 s; the JSON is rewritten after every
#      measured point, so a run cut short keeps what it measured, with "complete": false);
#   3. the cloze tests (tests/test_cloze.py: its training tests train through Accelerate, hence on
#      the GPU when there is one), then this measurement's own tests, each in its own process.
# Outputs go to $OUT (what the device tool brings back; a temporary folder elsewhere) and the
# measurement also to results/bench/gpu.json. Arguments are passed to the module (e.g. --steps 100).
# The code is named by git (records.git_commit) or by TINYATTN_GIT_COMMIT when it is set.
set -uo pipefail
OUT="${OUT:-$(mktemp -d)}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" results/bench
echo "outputs: $OUT"

# 1. the environment
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
    "$PY" - <<'PYTHON'
from importlib import metadata
for name in ("torch", "transformers", "accelerate", "peft", "safetensors", "scikit-learn", "scipy",
             "pyyaml", "tokenizers", "pytest"):
    try:
        print(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name} MISSING (carry it as a wheel, as the device tool's notes say)")
import torch
from accelerate import Accelerator
print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("Accelerator() device:", Accelerator().device)
import tinyattn.study.gpu_bench  # noqa: F401  (everything the measurement imports)
print("tinyattn.study.gpu_bench imports")
PYTHON
} 2>&1 | tee "$OUT/env.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "environment check failed: see $OUT/env.txt"; exit 2; }

# 2. the measurement
timeout -k 10 400 "$PY" -m tinyattn.study.gpu_bench --out "$OUT/gpu.json" "$@" 2>&1 | tee "$OUT/gpu_bench.log"
bench=${PIPESTATUS[0]}
# only a real measurement goes to results/bench (a --tiny or CPU run says "tiny": true)
if [ -f "$OUT/gpu.json" ] && "$PY" -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["tiny"])' "$OUT/gpu.json"; then
    cp "$OUT/gpu.json" results/bench/gpu.json
fi

# 3. the tests: the cloze path on this machine, then the measurement's own (separate processes:
# the latter's --tiny run asks Accelerate for the CPU, which one process cannot mix with the GPU)
timeout -k 10 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_cloze.py \
    --junitxml "$OUT/tests-cloze.xml" 2>&1 | tail -n 25 | tee "$OUT/tests-cloze.log"
cloze=${PIPESTATUS[0]}
timeout -k 10 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu_bench.py 2>&1 \
    | tail -n 15 | tee "$OUT/tests-gpu-bench.log"
own=${PIPESTATUS[0]}

echo "exit statuses: measurement $bench, cloze tests $cloze, gpu_bench tests $own"
[ "$bench" -eq 0 ] && [ "$cloze" -eq 0 ] && [ "$own" -eq 0 ]
