#!/usr/bin/env bash
# The GPU check: the one script to run on a GPU machine that has PyTorch, transformers, PEFT and
# accelerate but no internet and none of unsloth/trl/bitsandbytes/datasets. From the repository root,
# with the wheelhouse built by the shared make-bundle.sh in ./gpu_bundle:
#
#   bash bench/gpu_check.sh            # writes everything under $OUT (default ./gpu_check_out)
#
# 1. installs gpu_bundle/*.whl into ./site (no network, no dependency resolution) and puts it first
#    on PYTHONPATH; 2. prints versions and GPU, notes every import that fails, and carries on;
# 3. the learning checks (bench/gpu_check.py): every recipe through its real entry point on small
#    offline models, 4-bit where the recipe uses it, asserting that what it optimises moved - SFT and
#    DPO loss, GRPO reward, LM perplexity, the classifier's loss, PPO's policy update - plus the
#    merged model against base + adapter, GRPO continuing an adapter sampling from it, the GRPO loss
#    keys the trainer got, the fp16 (no-bf16) path, and vLLM generation when vLLM imports; results
#    to bench/results/<date>-<gpu>-gpu-check.{json,md}; 4. the Unsloth vs HF benchmark (bench/run.py)
#    for the 0.5b and 1.5b shapes with what is left of ~7 minutes. Each step runs under `timeout`.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
WORK=${WORK:-/tmp/virl-gpu-check}
# Knobs for a dry run of this script on a CPU machine: DEVICE=cpu BENCH_SHAPES=tiny
DEVICE=${DEVICE:-cuda}
BENCH_SHAPES=${BENCH_SHAPES:-0.5b,1.5b}
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
START=$(date +%s)
: > "$OUT/summary.txt"

elapsed() { echo $(( $(date +%s) - START )); }

# step NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record rc and time.
step() {
    local name=$1 limit=$2 t0 rc
    shift 2
    echo "=== $name (limit ${limit}s, at $(elapsed)s) ==="
    t0=$(date +%s)
    timeout --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    echo "--- $name: exit $rc after $(( $(date +%s) - t0 ))s$([ $rc = 124 ] && echo ' (TIMED OUT)')"
    tail -n 12 "$OUT/$name.log"
    printf '%-22s exit %-4s %4ss\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$OUT/summary.txt"
    return 0
}

echo "=== install gpu_bundle -> ./site ==="
ls gpu_bundle/*.whl > /dev/null || { echo "gpu_bundle/*.whl missing: build it with make-bundle.sh and carry it"; exit 2; }
if ! python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target site gpu_bundle/*.whl; then
    # No pip: a wheel is a zip whose top level is the importable packages.
    echo "pip failed; unpacking the wheels directly"
    python3 -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall("site") for w in sys.argv[1:]]' gpu_bundle/*.whl
fi
export PYTHONPATH=$PWD/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
# Pure-Python extras other checks may have put beside the wheels (e.g. rouge_score).
[ -d gpu_bundle/pure ] && export PYTHONPATH=$PYTHONPATH:$PWD/gpu_bundle/pure
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export WANDB_DISABLED=true UNSLOTH_DISABLE_STATISTICS=1 PYTHONUNBUFFERED=1
echo "installed in $(elapsed)s"

echo "=== versions ==="
python3 --version
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi failed"
for module in torch transformers peft accelerate trl bitsandbytes unsloth unsloth_zoo datasets xformers torchao yaml; do
    # One process per import, so one failure does not hide the others (and Unsloth patches nothing else).
    line=$(timeout 120 python3 -c "
import importlib
try:
    if '$module' == 'unsloth_zoo':
        import unsloth  # noqa: F401  (unsloth_zoo refuses to be imported on its own)
    m = importlib.import_module('$module')
    print(f\"{'$module':14s} {getattr(m, '__version__', '?'):24s} from {m.__file__.rsplit('/', 2)[0]}\")
except Exception as err:
    print(f\"{'$module':14s} IMPORT FAILED: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}\")
" 2>/dev/null | grep -E "^$module ")
    echo "${line:-$module         IMPORT FAILED (crashed or timed out)}"
done | tee "$OUT/versions.txt"
timeout 60 python3 -c "
import torch
print('torch.cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'devices', torch.cuda.device_count())
if torch.cuda.is_available():
    print('device', torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported(),
          'capability', torch.cuda.get_device_capability(0))
" 2>&1 | tail -n 3 | tee -a "$OUT/versions.txt"

echo "=== learning checks (at $(elapsed)s) ==="
# Knob for a dry run on a CPU: DEVICE=cpu (then BENCH_SHAPES=tiny too).
step learn 330 python3 -m bench.gpu_check --device "$DEVICE" --out "$OUT/learn" --work "$WORK/learn" \
    --results bench/results --check-timeout 240
cat "$OUT/learn/gpu_check.md" 2>/dev/null

echo "=== benchmark: Unsloth vs HF, $BENCH_SHAPES (at $(elapsed)s) ==="
# Whatever is left of ~7 minutes; runs not started in time are recorded as skipped.
BUDGET=$(( 420 - $(elapsed) ))
[ "$BUDGET" -lt 60 ] && BUDGET=60
step bench $(( BUDGET + 120 )) python3 -m bench.run --shapes "$BENCH_SHAPES" --steps 4 --warmup 1 \
    --out "$OUT/bench" --logs "$OUT/bench/runs" --work-dir "$WORK" --run-timeout 120 --time-budget "$BUDGET"
cat "$OUT"/bench/*.md 2>/dev/null

echo "=== summary (total $(elapsed)s) ==="
cat "$OUT/summary.txt"
