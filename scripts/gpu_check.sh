#!/bin/bash
# The GPU check of issue 9, as one command for a lent device machine (at most 560 s: one device call):
# `coworld bench` at the paper's coworld-official sizes (16 x 50 and the released 150 x 50 batch), eager
# fp32 and bf16, compiled bf16, then a short online DreamerV2 run on builtin:reach with dv2-official.
# Every step has its own time limit, so one that hangs costs only its share; results go to $OUT
# (bench.jsonl: one JSON line per bench; train.log and metrics.jsonl of the run; versions.txt).
#
# The device machine has PyTorch but no gymnasium and no network: carry its wheel. Once, here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl gymnasium==1.4.0 farama-notifications==0.0.4
# then run with carry [".whl"]:  bash scripts/gpu_check.sh
# Locally (a smoke test of the script itself, CPU, tiny sizes): GPU_CHECK_SMOKE=1 OUT=/tmp/g bash scripts/gpu_check.sh
set -u
export PYTHONUNBUFFERED=1 MUJOCO_GL=egl
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if [ -d .whl ] && ! python3 -c "import gymnasium" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export COWORLD_CACHE=${COWORLD_CACHE:-/tmp/coworld-cache}

if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
    DEVICE=cpu; PRESET=tiny; SHAPES="8x16"; BIG=""; TRAIN_S=60; TRAIN_PRESET=tiny
else
    DEVICE=cuda; PRESET=coworld-official; SHAPES="16x50"; BIG="150x50"; TRAIN_S=120; TRAIN_PRESET=dv2-official
fi

{
    date -u; nvidia-smi 2>&1 | head -15
    python3 -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    python3 -c "import gymnasium; print('gymnasium', gymnasium.__version__)" 2>&1
} > "$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt"

bench() {  # bench SHAPE AMP COMPILE KINDS LIMIT
    local b=${1%x*} l=${1#*x} flag=""
    [ "$3" = compile ] && flag=--compile
    echo "== bench $1 amp=$2 $3 kinds=$4"
    COWORLD_BENCH_KINDS=$4 timeout "$5" python3 -m coworld bench --preset $PRESET --batch "$b" --length "$l" \
        --device $DEVICE --amp "$2" $flag --updates 10 --warmup 3 --set model.layer_norm=true --json \
        > "$OUT/last.json" 2> "$OUT/last.err"
    local rc=$?
    if [ $rc = 0 ]; then
        python3 -c "import json,sys; d=json.load(open(sys.argv[1])); d['shape']=sys.argv[2]; d['mode']=sys.argv[3]; print(json.dumps(d))" \
            "$OUT/last.json" "$1" "$3" >> "$OUT/bench.jsonl"
        python3 -c "import json,sys; d=json.load(open(sys.argv[1])); [print(' ', k, round(v['ms_total'], 1), 'ms (WM', round(v['ms_world_model'], 1), '+ beh.', round(v['ms_behaviour'], 1), ')', round(v['peak_memory_bytes'] / 2**30, 2), 'GiB', round(100 * v['fraction_of_matmul_peak'], 1), '% of matmul') for k, v in d['kinds'].items()]" "$OUT/last.json" 2>/dev/null
    else
        echo "  failed (exit $rc): $(tail -2 "$OUT/last.err")"
        echo "{\"shape\": \"$1\", \"amp\": \"$2\", \"mode\": \"$3\", \"failed\": $rc}" >> "$OUT/bench.jsonl"
    fi
}

# time limits: at most 60 + 60 + 200 + 60 + 60 + TRAIN_S = 560 s, inside one device call's 600 s
for shape in $SHAPES; do
    bench "$shape" none eager source,target,align 60
    bench "$shape" bf16 eager source,target,align 60
    bench "$shape" bf16 compile target 200
done
for shape in $BIG; do
    bench "$shape" none eager target 60
    bench "$shape" bf16 eager target 60
done

echo "== online DreamerV2 ($TRAIN_PRESET) on builtin:reach, $TRAIN_S s"
timeout -s TERM "$TRAIN_S" python3 -m coworld train --algo dreamer --env builtin:reach --preset $TRAIN_PRESET \
    --steps 100000 --seed 0 --no-progress --logdir /tmp/gpu_check_run --set train.device=$DEVICE \
    --set train.eval_every=5000 > "$OUT/train.log" 2>&1
cp /tmp/gpu_check_run/metrics.jsonl "$OUT/metrics.jsonl" 2>/dev/null
grep -h "eval @" "$OUT/train.log" | tail -5
echo "done: $OUT"
