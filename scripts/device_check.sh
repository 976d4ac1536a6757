#!/usr/bin/env bash
# The one prepared check for a CUDA machine (docs/scale.md, "On a GPU machine"): train each network on the
# GPU, export, answer through the TorchScript runtime and a real `bentoml serve` on CUDA, and run the tests
# that take the CUDA paths. Built for a short lease (at most about 10 minutes): every step has its own time
# limit, the timed runs go alone, the rest in parallel, and the results land in OUT_DIR as they come
# (summary.txt one line per step, log.txt the output of every step, runs.tar.gz each run's history.json,
# results.md and export_report.json).
#
#   bash scripts/device_check.sh OUT_DIR                 # the dataset from $CIFAR10_DATA or ../shared
#   DEVICE_CHECK_QUICK=1 bash scripts/device_check.sh OUT_DIR   # tiny runs: tries the script on a CPU
#
# PYTHON picks the interpreter (default python3). Nothing here downloads anything.
set -u
out=${1:?usage: scripts/device_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$out" && out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
data=${CIFAR10_DATA:-../shared/datasets/cifar10}
work=$(mktemp -d /tmp/device-check.XXXXXX)
# Checkpoints, exports and the decoded dataset cache (about 180 MB): what matters is copied to OUT_DIR at the end.
trap 'rm -rf "$work"' EXIT
quick=${DEVICE_CHECK_QUICK:-0}
export PYTHONUNBUFFERED=1 CIFAR10_CACHE_DIR=$work/cache
: >"$out/summary.txt"
: >"$out/log.txt"

note() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$out/summary.txt"; }

# step NAME LIMIT_S COMMAND...: runs it with a time limit; output to $work/logs/NAME, appended to log.txt.
step() {
    local name=$1 limit=$2; shift 2
    mkdir -p "$work/logs"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$work/logs/$name" 2>&1
    local rc=$?
    { echo "===== $name (rc $rc, $((SECONDS - t0)) s): $*"; tail -c 20000 "$work/logs/$name"; } >>"$out/log.txt"
    note "$name: rc $rc, $((SECONDS - t0)) s"
    return $rc
}

train() {  # train NAME LIMIT_S FLAGS...: one `python -m training` run into $work/NAME
    local name=$1 limit=$2; shift 2
    local extra=()
    [ "$quick" = 1 ] && extra=(--epochs 1 --limit-train 1024)
    step "$name" "$limit" "$py" -m training --data "$data" --checkpoint-dir "$work/$name" --quiet "$@" "${extra[@]}"
}

note "device check on $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), quick=$quick"
step env 30 bash -c "nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; \
    nproc; $py -c 'import sys, torch, onnxruntime as ort; print(sys.version); print(\"torch\", torch.__version__, \
    \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available(), \"bf16\", \
    torch.cuda.is_available() and torch.cuda.is_bf16_supported()); print(\"onnxruntime\", ort.__version__, \
    ort.get_available_providers())'"

# Alone, so that their images/s are the GPU's: airbench's recipe (the teacher below), the residual network's (two
# seeds with the one below: its accuracy on a GPU schedule, issue 31), SimpleCNN's two recipes.
train air-s0 140 --model airbench --seed 0
train res-s0 140 --model residual --seed 0
train simplecnn-default 60 --epochs 2
train simplecnn-fast 60 --recipe fast --epochs 2

# Together (accuracy only; their speeds share the GPU and the cores): a second airbench seed, the distilled
# SimpleCNN (two seeds), and the second seed of the longer distillation (40 epochs gave 86.91% on 2026-11-29).
pids=()
train air-s1 240 --model airbench --seed 1 --threads 2 & pids+=($!)
train res-s1 240 --model residual --seed 1 --threads 2 & pids+=($!)
if [ -f "$work/air-s0/best.pt" ]; then
    train distill-s0 240 --recipe distill --teacher "$work/air-s0/best.pt" --seed 0 --threads 2 & pids+=($!)
    train distill-s1 240 --recipe distill --teacher "$work/air-s0/best.pt" --seed 1 --threads 2 & pids+=($!)
    train distill-e40-s1 240 --recipe distill --teacher "$work/air-s0/best.pt" --seed 1 --epochs 40 --threads 2 &
    pids+=($!)
    (
        parity=(); [ "$quick" = 1 ] && parity=(--parity-images 1000 --calibration-images 1000 --no-int8)
        step export-air 240 "$py" -m export --checkpoint "$work/air-s0/best.pt" --out "$work/export-air" \
            --data "$data" --quiet "${parity[@]}" &&
        step torchscript-cuda 60 "$py" scripts/device_runtime_check.py "$work/export-air" "$data" --seconds 1
    ) & pids+=($!)
fi
# The tests whose paths change on a GPU: training, resume, sweeps and airbench on CUDA (runs compared bit for
# bit pass --deterministic), the DDP tests (kept on gloo), and the service's CUDA tests against a real
# `bentoml serve` (TorchScript runtime; /classify and /explain).
tests=(tests/test_model.py tests/test_streams.py tests/test_runtime.py tests/test_training.py tests/test_airbench.py
       tests/test_residual.py tests/test_sweep.py tests/test_distributed.py)
[ "$quick" = 1 ] && tests=()
skip=()  # two tests run the cifar10-train console script, which only an install of the project puts there
[ -x "$(dirname "$(command -v "$py")")/cifar10-train" ] || skip=(
    --deselect tests/test_training.py::test_console_script_is_installed
    --deselect tests/test_training.py::test_ctrl_c_saves_last_and_resume_finishes_the_same)
xdist=(); "$py" -c "import xdist" 2>/dev/null && xdist=(-n 4 --dist loadfile)
step pytest 240 "$py" -m pytest -q -p no:cacheprovider "${xdist[@]}" "${skip[@]}" "${tests[@]}" \
    tests/test_serving.py::test_cuda_runtime_answers_like_cpu \
    tests/test_serving.py::test_cuda_requested_without_cuda_refuses_to_start & pids+=($!)
wait "${pids[@]}"

"$py" scripts/device_summary.py "$work" >>"$out/summary.txt" 2>&1
(cd "$work" && tar czf "$out/runs.tar.gz" --exclude='*.pt' --exclude='*.ts' --exclude='*.onnx' --exclude=cache \
    --exclude='*.png' . 2>/dev/null)
note "done"
