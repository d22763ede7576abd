#!/usr/bin/env bash
# Everything worth checking on a CUDA machine, in one go (about 7 minutes on one H200):
#   1. the test suite with the GPU visible (tests/test_cuda.py runs there, skipped elsewhere);
#   2. float32 meta-gradients of the speed benchmark's problem: batched, loop and CPU, TF32 on
#      and off; published models evaluated on the GPU (compare with models/manifest.toml);
#   3. the speed and memory benchmarks on the GPU (JSON + PNG);
#   4. the meta-step time of `imaml train` for each bundled Omniglot config.
# Usage, from a checkout with imaml importable and Omniglot under $IMAML_DATA:
#   IMAML_DATA=DIR bash benchmarks/gpu_check.sh OUT_DIR [SECONDS_PER_CONFIG]
# Writes OUT_DIR/{log.txt,tests.log,eval.jsonl,train.jsonl,bench/}; each stage has its own
# time limit, and a failing stage does not stop the later ones. DEVICE=cpu: a dry run of the
# stages on a machine without a GPU (the CPU benchmarks take far longer than their limits).
set -uo pipefail
out=${1:?usage: IMAML_DATA=DIR bash benchmarks/gpu_check.sh OUT_DIR [SECONDS_PER_CONFIG]}
per_config=${2:-25}
device=${DEVICE:-cuda}
: "${IMAML_DATA:?set IMAML_DATA to the folder holding omniglot/}"
mkdir -p "$out/bench"
work=$(mktemp -d)
bench=$(cd "$(dirname "$0")" && pwd)
exec > >(tee -a "$out/log.txt") 2>&1
stage() { echo "=== $(date -u +%H:%M:%S) $*"; }

stage environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"

stage "tests (GPU visible)"
parallel=()
python3 -c "import xdist" 2>/dev/null && parallel=(-n 8)
timeout 240 python3 -m pytest -q -p no:cacheprovider "${parallel[@]}" tests >"$out/tests.log" 2>&1
echo "pytest exit $?"
tail -n 15 "$out/tests.log"

stage "float32 meta-gradients of random-image tasks: batched, per-task loop, CPU (TF32 on/off)"
PYTHONPATH="$bench" timeout 180 python3 - "$device" <<'EOF'
import sys

import torch

import speed
from _common import conv4_problem
from imaml import tree

device = sys.argv[1]
s = {**speed.FULL, "tasks": 8}
loss_fn, params, support, query = conv4_problem(s, "cpu")  # the same θ and images everywhere
cpu = speed.batched(s, loss_fn, params, support, query)
moved = (
    {k: v.to(device) for k, v in params.items()},
    tuple(t.to(device) for t in support),
    tuple(t.to(device) for t in query),
)


def rel(a, b):
    return float(tree.norm(tree.sub(a, b)) / tree.norm(b))


for tf32 in (True, False):
    torch.backends.cudnn.allow_tf32 = tf32
    batched = {k: v.cpu() for k, v in speed.batched(s, loss_fn, *moved).items()}
    loop = {k: v.cpu() for k, v in speed.per_task_loop(s, loss_fn, *moved).items()}
    print(
        f"cudnn.allow_tf32={tf32}: |batched-loop|/|loop| {rel(batched, loop):.3g}, "
        f"|batched-cpu|/|cpu| {rel(batched, cpu):.3g}, |loop-cpu|/|cpu| {rel(loop, cpu):.3g}, "
        f"norms batched {float(tree.norm(batched)):.4g} loop {float(tree.norm(loop)):.4g} "
        f"cpu {float(tree.norm(cpu)):.4g}"
    )
EOF

stage "published models on $device (600 test tasks each; compare with models/manifest.toml)"
for ckpt in omniglot-5w1s-imaml omniglot-5w1s-imaml-random omniglot-5w1s-maml-random; do
    start=$EPOCHREALTIME
    result=$(timeout 120 python3 -m imaml eval "$ckpt" --device "$device" --json) || continue
    python3 -c "import json, sys; r = json.loads(sys.argv[1]); r.update(checkpoint=sys.argv[2], \
device=sys.argv[3], wall_s=float(sys.argv[5]) - float(sys.argv[4])); print(json.dumps(r))" \
        "$result" "$ckpt" "$device" "$start" "$EPOCHREALTIME" | tee -a "$out/eval.jsonl"
done

stage "benchmarks on $device"
timeout 150 python3 "$bench/speed.py" --device "$device" --out "$out/bench"
timeout 200 python3 "$bench/memory.py" --device "$device" --out "$out/bench"

stage "imaml train on $device: $per_config s per config"
for config in omniglot-5w1s omniglot-5w1s-maml omniglot-5w1s-hf omniglot-5w5s omniglot-20w1s \
    omniglot-20w5s; do
    timeout -s TERM "$per_config" python3 -m imaml train "$config" --run-dir "$work/$config" \
        --device "$device" --set train.val_every=0 --set train.log_every=2 -q
    python3 - "$work/$config" "$config" "$device" <<'EOF' | tee -a "$out/train.jsonl"
import json
import statistics
import sys
from pathlib import Path

run, config, device = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
path = run / "metrics.jsonl"
records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
train = [r for r in records if r["split"] == "train"][1:]  # the first window holds the warm-up
seconds = [r["sec_per_step"] for r in train]
print(json.dumps({
    "config": config,
    "device": device,
    "steps": records[-1]["step"] if records else 0,
    "windows": len(seconds),
    "median_sec_per_step": statistics.median(seconds) if seconds else None,
    "median_tasks_per_sec": statistics.median(r["tasks_per_sec"] for r in train) if train else None,
}))
EOF
done
stage done
rm -rf "$work"
