#!/usr/bin/env bash
# One prepared run of lh2face's GPU checks (see bench/device_check.md for what each stage measures).
#   on the device, from the repository root:   bash bench/device_check.sh          ($OUT given by the runner)
#   end-to-end dry run on CPU at a tiny size:  QUICK=1 OUT=/tmp/devout bash bench/device_check.sh
# Stages, in order of value: env, tests, precision (bf16 / fp16 training), real (real-photo studies),
# modes (four-input-mode study), bench. Each stage runs in its own subshell with its own time limit, taken
# from a global budget (TOTAL_S, default 500 s) so the whole script ends in time even when a stage hangs;
# a stage that fails or times out does not stop the next one. Results land in $OUT:
#   summary.txt          one line per stage (exit code, wall time, limit) + the key numbers
#   tests.log            the pytest output (skips listed with their reason)
#   precision.log        the bf16 / fp16 training runs (final lines, wall time, img/s)
#   studies.md           study.md of every study that ran (real AT&T, real lfw-dev, four modes)
#   bench.md             the benchmark tables
#   device_check.tar.gz  every log, train.log, results.json, study.md / study.json, bench JSON, GPU samples
set -u
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then DEVICE=${DEVICE:-cpu}; else DEVICE=${DEVICE:-cuda}; fi
OUT=${OUT:-/tmp/devout}
PY=${PY:-python3}
SCALE=${SCALE:-1}             # multiplies every time limit (QUICK on a slow shared CPU: 4)
[ "$QUICK" = 1 ] && SCALE=${SCALE_QUICK:-4} && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
TOTAL_S=${TOTAL_S:-$(( 500 * SCALE ))}
JOBS_REAL=${JOBS_REAL:-8}     # worker processes per real-photo study (the two studies run at once: 16 processes)
JOBS_MODES=${JOBS_MODES:-4}
BENCH_SIZE=${BENCH_SIZE:-112}
REG_BUDGET=${REG_BUDGET:-120}  # seconds of regressor training (lh2face regressor --time-budget)
REG_IDS=${REG_IDS:-2000}       # synthetic identities (x4 images) for the regressor
mkdir -p "$OUT"
WORK=${WORK:-$(mktemp -d /tmp/lh2face_device.XXXXXX)}
LOGS=$WORK/logs
mkdir -p "$LOGS"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
export NUMBA_CACHE_DIR=$WORK/numba_cache
START=$(date +%s)
CLI=("$PY" -m joint.cli)

if [ "$QUICK" = 1 ]; then
    # tiny everything: a few steps on a handful of synthetic / aligned faces
    TRAIN_Q=(-o data.image_size=32 -o data.synth_identities=6 -o data.synth_images=2 -o data.synth_eval_identities=4
             -o data.synth_eval_images=2 -o schedule.steps=2 -o schedule.batch_size=8 -o schedule.warmup_steps=1
             -o schedule.log_every=1 -o schedule.checkpoint_every=0 -o run.threads=1)
    STUDY_Q=(-o study.seeds=[0] -o study.heads=[lh2face] -o train.schedule.steps=2 -o train.schedule.batch_size=8
             -o train.schedule.warmup_steps=1 -o train.schedule.checkpoint_every=0 -o train.data.image_size=32)
    SYNTH_Q=(-o train.data.synth_identities=6 -o train.data.synth_images=2 -o train.data.synth_eval_identities=4
             -o train.data.synth_eval_images=2 -o study.input_modes=[rgb,rgb+canonical+depth])
    JOBS_REAL=1; JOBS_MODES=2; BENCH_SIZE=32; REG_BUDGET=5; REG_IDS=6
    BENCH_Q=(--repeats 1 --warmup 1 --batch 4)
    STEPS=2
    PYTEST_K_TRAIN="bf16"
else
    TRAIN_Q=(); STUDY_Q=(); SYNTH_Q=(); BENCH_Q=(--repeats 10 --warmup 3)
    STEPS=200
    PYTEST_K_TRAIN="bf16 or fp16 or precision"
fi

STAGES=${STAGES:-env tests regressor real precision bench}   # modes: add it when the budget allows   # e.g. STAGES="real modes" for a rerun

left() { echo $(( TOTAL_S - ($(date +%s) - START) )); }

# tmo MAX_S CMD...: run CMD under `timeout` (its whole process group is signalled: study workers too),
# limited to MAX_S and to what is left of the current stage.
tmo() {
    local max=$(( $1 * SCALE )); shift
    local l=$(( STAGE_END - $(date +%s) ))
    (( l > max )) && l=$max
    (( l < 1 )) && l=1
    timeout -k 10 "$l" "$@"
}

pack() {  # logs + results without checkpoints / arrays in one archive ($OUT: at most 8 files of 16 MiB back)
    local a=$OUT/device_check.tar.gz
    tar -czf "$a.tmp" --exclude='*.pt' --exclude='*.pth' --exclude='*.npz' --exclude='*.npy' -C "$WORK" logs results \
        2>/dev/null
    if (( $(stat -c %s "$a.tmp" 2>/dev/null || echo 0) > 15000000 )); then  # too big: drop the plots too
        tar -czf "$a.tmp" --exclude='*.pt' --exclude='*.pth' --exclude='*.npz' --exclude='*.npy' --exclude='*.png' \
            -C "$WORK" logs results 2>/dev/null
    fi
    mv "$a.tmp" "$a"
}

# run_stage NAME MAX_S MIN_S: stage_NAME in a subshell, output in $LOGS/NAME.log and on stdout
run_stage() {
    local name=$1 max=$(( $2 * SCALE )) min=$3
    case " $STAGES " in *" $name "*) ;; *) return ;; esac
    local t=$(( $(left) - 5 ))
    (( t > max )) && t=$max
    if (( t < min )); then
        echo "== $name: skipped, only ${t}s of the budget left (needs ${min}s)" | tee -a "$OUT/summary.txt"
        return
    fi
    local t0
    t0=$(date +%s)
    echo "== stage $name (limit ${t}s, $(date -u +%H:%M:%S) UTC)"
    ( STAGE_END=$(( t0 + t )); "stage_$name" ) > >(tee "$LOGS/$name.log") 2>&1
    local rc=$?
    sleep 0.2
    echo "== $name: shell rc=$rc wall=$(( $(date +%s) - t0 ))s limit=${t}s" | tee -a "$OUT/summary.txt"
    pack
}

# ------------------------------------------------------------------------------------------------ stages
stage_env() {
    nvidia-smi -L 2>&1 || echo "nvidia-smi: not available"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tail -n +1
    echo "cpus: $(nproc)  QUICK=$QUICK DEVICE=$DEVICE WORK=$WORK"
    "$PY" - <<'EOF'
import importlib, sys
import torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "| bf16", torch.cuda.is_bf16_supported(),
          "| capability", torch.cuda.get_device_capability(0))
for m in ("numba", "scipy", "onnx", "onnxruntime", "trimesh", "dlib", "pytorch3d", "face_alignment", "tensorboard"):
    try:
        mod = importlib.import_module(m)
        print(f"  {m} {getattr(mod, '__version__', '?')}")
    except Exception as e:  # noqa: BLE001
        print(f"  {m}: missing ({type(e).__name__})")
import joint.cli  # noqa: F401  (the package imports without the optional extras)
from joint.cli import load_commands
_, errors = load_commands()
print("sub-commands unavailable:", errors or "none")
EOF
}

stage_tests() {
    # 1. the CUDA-only tests (they skip without CUDA) and the mixed-precision training test
    tmo 60 "$PY" -m pytest -p no:cacheprovider -q -rs --durations=8 \
        tests/test_cuda_joint.py tests/test_heads.py tests/test_vmf.py tests/test_render.py \
        tests/test_render_conventions.py -k "cuda"
    echo "-- pytest (CUDA selection) rc=$?"
    tmo 40 "$PY" -m pytest -p no:cacheprovider -q -rs --durations=8 tests/test_train.py -k "$PYTEST_K_TRAIN"
    echo "-- pytest (test_train precision) rc=$?"
    # 2. the core suites that run on the device's CPU side too (joint model, render conventions on CPU)
    tmo 60 "$PY" -m pytest -p no:cacheprovider -q -rs --durations=8 tests/test_joint.py tests/test_render_conventions.py
    echo "-- pytest (core) rc=$?"
}

_train_one() {  # _train_one PRECISION MAX_S
    local prec=$1 max=$2 dir=$WORK/results/train_$1 t0 rc
    t0=$(date +%s%N)
    tmo "$max" "${CLI[@]}" train --config configs/demo.yaml --out "$dir" --overwrite \
        -o data.image_size=112 -o run.device="$DEVICE" -o run.threads=8 -o run.precision="$prec" \
        -o schedule.steps=$STEPS -o run.progress=false ${TRAIN_Q[@]+"${TRAIN_Q[@]}"} > "$LOGS/train_$prec.out" 2>&1
    rc=$?
    local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    echo "[$prec] rc=$rc wall=$(( ms / 1000 )).$(( ms % 1000 / 100 ))s (process start to exit: data synthesis, training, evaluation)"
    tail -n 3 "$LOGS/train_$prec.out"
    if [ -f "$dir/train.log" ]; then
        cp "$dir/train.log" "$LOGS/train_$prec.train.log"
        "$PY" - "$dir/train.log" "$prec" <<'EOF'
import re, sys
lines = open(sys.argv[1]).read().splitlines()
steps = [l for l in lines if re.search(r"\bstep \d+/\d+ \|", l)]
rates = [float(m.group(1)) for l in steps for m in [re.search(r"\| ([0-9.]+) img/s", l)] if m]
tail = rates[len(rates) // 2:] or rates
fin = [l for l in lines if "finished at step" in l]
print(f"[{sys.argv[2]}] logged steps {len(steps)}, img/s last {rates[-1] if rates else 'n/a'}, "
      f"median of the second half {sorted(tail)[len(tail) // 2] if tail else 'n/a'}")
print(f"[{sys.argv[2]}] {fin[-1].split(' INFO ')[-1] if fin else 'no final line'}")
EOF
    fi
}

stage_precision() {
    _train_one bf16 100
    _train_one fp16 100
}

_study() {  # _study NAME CONFIG JOBS MAX_S OVERRIDES...: run a study, then aggregate what finished
    local name=$1 cfg=$2 jobs=$3 max=$4; shift 4
    local dir=$WORK/results/$name
    echo "[$name] lh2face study --config $cfg --out $dir --jobs $jobs -o train.run.device=$DEVICE $*"
    # the last 30 s of the stage are kept for the report of the finished runs
    local l=$(( STAGE_END - 30 - $(date +%s) ))
    (( l > max * SCALE )) && l=$(( max * SCALE ))
    (( l < 5 )) && l=5
    timeout -k 10 "$l" "${CLI[@]}" study --config "$cfg" --out "$dir" --jobs "$jobs" -o train.run.device="$DEVICE" \
        "$@" > "$LOGS/study_$name.out" 2>&1
    local rc=$?
    if (( rc == 124 || rc == 137 )); then
        echo "[$name] study rc=$rc: stopped by the ${l}s limit; the table below holds the finished runs (a rerun resumes)"
    else
        echo "[$name] study rc=$rc"
    fi
    tail -n 5 "$LOGS/study_$name.out"
    timeout -k 5 25 "${CLI[@]}" study --config "$cfg" --out "$dir" --report-only \
        -o train.run.device="$DEVICE" "$@" > "$LOGS/report_$name.out" 2>&1
    echo "[$name] report rc=$?"
    { echo "## $name ($cfg, device $DEVICE)"; echo; cat "$dir/study.md" 2>/dev/null || echo "(no study.md)"; echo; } \
        >> "$WORK/results/studies.md"
    cat "$dir/study.md" 2>/dev/null | head -n 40
}

stage_regressor() {  # the pretrained reconstruction regressor, trained on the GPU within a time budget
    local d=$WORK/results/regressor
    mkdir -p "$d"
    local budget=$(( STAGE_END - $(date +%s) - 60 ))  # synthetic rendering + measurements after training
    (( budget > REG_BUDGET )) && budget=$REG_BUDGET
    (( budget < 10 )) && budget=10
    tmo 400 "${CLI[@]}" regressor --device "$DEVICE" --size 48 --width 32 --steps 40000 --batch-size 128 --lr 1e-3 \
        --synth-identities "$REG_IDS" --synth-images 4 --synth-workers 12 --eval-identities 50 --fit-photos 0 \
        --time-budget "$budget" --work runs/regressor_work --out "$d" --overwrite --quiet
    echo "-- regressor rc=$?"
    cp "$d/regressor.pt" "$OUT/regressor.pt" 2>/dev/null
    cp "$d/metrics.json" "$OUT/regressor_metrics.json" 2>/dev/null
    # the studies below start from this regressor (lfw-dev: its 6 verified people were held out of it;
    # AT&T: every AT&T photo was in it, so stage_real starts the AT&T study from scratch instead)
    if [ -f "$d/regressor.pt" ] && [ "$QUICK" != 1 ]; then cp "$d/regressor.pt" assets/regressor/regressor.pt; fi
    return 0
}

stage_real() {
    local pids=()
    for which in att lfw; do
        local cfg=configs/study_real_$which.yaml root
        [ "$which" = att ] && root=data/aligned/att || root=data/aligned/lfw-dev
        if [ ! -f "$cfg" ]; then echo "[real_$which] $cfg not in this checkout: skipped"; continue; fi
        if [ ! -d "$root" ]; then echo "[real_$which] $root missing (make it with lh2face align; carry data/aligned)"; continue; fi
        # both studies at once: each worker is one process with one CPU thread on the shared GPU
        local extra=()
        [ "$which" = att ] && extra=(-o train.recon.regressor_init=none)  # the regressor saw every AT&T photo
        ( _study "real_$which" "$cfg" "$JOBS_REAL" 400 -o train.run.threads=1 "${extra[@]}" \
            -o study.plots_dir="$WORK/results/real_$which/plots" ${STUDY_Q[@]+"${STUDY_Q[@]}"} \
            > "$LOGS/real_$which.log" 2>&1 ) &
        pids+=($!)
    done
    # wait for these two only (a bare `wait` would also wait for the stage's own tee)
    for p in "${pids[@]}"; do wait "$p"; done
    for which in att lfw; do [ -f "$LOGS/real_$which.log" ] && cat "$LOGS/real_$which.log"; done
    echo "real studies started: ${#pids[@]}"
}

stage_modes() {
    _study modes configs/study_modes.yaml "$JOBS_MODES" 400 ${STUDY_Q[@]+"${STUDY_Q[@]}"} ${SYNTH_Q[@]+"${SYNTH_Q[@]}"}
}

stage_bench() {
    mkdir -p "$WORK/results/bench"
    local b=$WORK/results/bench
    tmo 60 "$PY" bench/bench_backbones.py --device "$DEVICE" --size "$BENCH_SIZE" ${BENCH_Q[@]+"${BENCH_Q[@]}"} \
        --out "$b/backbones.json"
    echo "-- bench_backbones rc=$?"
    if "$PY" bench/bench_joint.py --help 2>/dev/null | grep -q -- "--config"; then
        tmo 60 "$PY" bench/bench_joint.py --config configs/demo.yaml --device "$DEVICE" --size "$BENCH_SIZE" \
            ${BENCH_Q[@]+"${BENCH_Q[@]}"} --out "$b/joint_demo.json"
        echo "-- bench_joint (demo config) rc=$?"
        tmo 60 "$PY" bench/bench_joint.py --config configs/demo.yaml -o loss.canon=0.5 -o loss.view=0.25 \
            --device "$DEVICE" --size "$BENCH_SIZE" ${BENCH_Q[@]+"${BENCH_Q[@]}"} --out "$b/joint_all_terms.json"
        echo "-- bench_joint (all terms) rc=$?"
    else
        echo "bench_joint.py has no --config here: the fixed variants at batch 32"
        tmo 60 "$PY" bench/bench_joint.py --device "$DEVICE" --size "$BENCH_SIZE" --batch 32 ${BENCH_Q[@]+"${BENCH_Q[@]}"} \
            --out "$b/joint.json"
        echo "-- bench_joint rc=$?"
    fi
    for f in "$b"/*.md; do [ -f "$f" ] && { echo "## $(basename "$f")"; cat "$f"; echo; }; done > "$WORK/results/bench.md"
    cat "$WORK/results/bench.md"
}

# ------------------------------------------------------------------------------------------------ main
mkdir -p "$WORK/results"
: > "$OUT/summary.txt"
echo "device_check $(date -u +%FT%TZ) QUICK=$QUICK DEVICE=$DEVICE budget ${TOTAL_S}s" | tee -a "$OUT/summary.txt"
GPU_SAMPLER=
if command -v nvidia-smi > /dev/null 2>&1; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 2 > "$LOGS/gpu_samples.csv" 2>&1 &
    GPU_SAMPLER=$!
fi

#          name      max_s min_s   (order = value; estimates for an H200 in bench/device_check.md)
run_stage env         30    5
run_stage tests      100   20
run_stage regressor  220   60
run_stage real       130   40
run_stage precision  100   40
run_stage modes       70   30
run_stage bench       60   20

[ -n "$GPU_SAMPLER" ] && kill "$GPU_SAMPLER" 2>/dev/null
# key numbers into the summary, and the few files that come back
{
    echo "-- every command's exit code (0 ok, 124/137 stopped by its time limit):"
    grep -h -E "passed|failed|error|skipped" "$LOGS/tests.log" 2>/dev/null | grep -E "^(=|[0-9]+ )" | sed 's/^/tests: /'
    grep -h -E "^-- .* rc=" "$LOGS/tests.log" "$LOGS/bench.log" 2>/dev/null
    grep -h -E "^\[(bf16|fp16)\]" "$LOGS/precision.log" 2>/dev/null
    grep -h -E "^\[(real_att|real_lfw|modes)\] (study|report) rc|^\[real_.*\] .*(skipped|missing)" \
        "$LOGS/real.log" "$LOGS/modes.log" 2>/dev/null
    grep -h -E "^## [a-z_]+ \(|planned runs finished" "$WORK/results/studies.md" 2>/dev/null | cut -c1-80
} >> "$OUT/summary.txt"
cp "$LOGS/tests.log" "$OUT/tests.log" 2>/dev/null
cp "$LOGS/precision.log" "$OUT/precision.log" 2>/dev/null
cp "$WORK/results/studies.md" "$OUT/studies.md" 2>/dev/null
cp "$WORK/results/bench.md" "$OUT/bench.md" 2>/dev/null
pack
echo "== done in $(( $(date +%s) - START ))s; outputs in $OUT:"; ls -la "$OUT"
cat "$OUT/summary.txt"
