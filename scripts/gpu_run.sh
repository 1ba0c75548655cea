#!/usr/bin/env bash
# The whole GPU job in one command: install + build, environment info, the test suite on CUDA, the
# benchmark report. Writes everything to OUTDIR. Works offline against the torch/triton already
# installed, on a machine that starts with nothing built, within the wall-time budget TOTAL_S.
#
#   scripts/gpu_run.sh OUTDIR
#
# OUTDIR ends up with a handful of plain files, one level deep:
#   log.txt       build, info, tests and bench output, then a summary of each step's exit code
#   junit.xml     the test suite's per-test results
#   results.json  raw benchmark results (device, versions, date inside)
#   report.md     the benchmark tables
#   speedup.png, sweep.png, model.png   plots
#   host_overhead.json host time per call of each public op, eager fast path vs custom op (`host` step)
#   host_profile.txt   cProfile of those calls: where the host time goes (`host` step)
#   bench_pytest.json  only with the optional `pybench` step (then 9 files: leave out `host`)
#   tests_by_file.txt with the `testfiles` step (each test file in its own process)
#   sweep.json, sweep.md only with the optional `sweep` step (run it in a call of its own:
#                      STEPS="build sweep"; it sweeps the Triton launchers' constants)
#   tune.txt, record.json  with the `tune` step: python -m convnext_fast tune --model convnext_tiny
#                      --batch 256 --dtype bfloat16 --train (capped at TUNE_S, default 240 s): the
#                      parity verdicts and timed choices auto keeps for this GPU, and its device record
#                      (ship it as convnext_fast/records/<device>.json)
#   verify.txt, verify.json  with the `mlp` step (bf16) or the `verify` step (bf16, fp16, fp32):
#                      python -m convnext_fast verify, the parity of the MLP, patch and folded-block
#                      kernels against the float64 reference (the full check; auto checks the same
#                      kernels at small sizes on first use)
#   mlp_tests.txt      with the `mlp` step, when time is left: the two MLP test files on CUDA
#   latency.txt, latency.json  with the `latency` step: convnext_tiny at batch 1 and 16, bf16, timm
#                      eager and under torch.compile(mode="reduce-overhead") against
#                      optimize_for_inference eager, with cuda_graph=True and under reduce-overhead
#                      (benchmarks/bench_gpu_latency.py: parity, latency, host time, kernels per call)
#   latency_tests.txt  with the `latency` step: tests/test_inference.py (CUDA-graph replay) and the
#                      patch-convolution tests (the stem / downsampling kernel, bf16 included) on CUDA
#
# The `mlp` step, in a call of its own: STEPS="mlp" (no `build` needed: the MLP has no kernel in the
# compiled extension, and the step turns the extension off rather than compile it on first use, unless
# `build` ran before it). Within MLP_S (default 480 s) on a fresh machine with cold compile caches:
#   1. `python -m convnext_fast verify --dtypes bfloat16`: pointwise_mlp (forward and every gradient
#      at ConvNeXt-T's four stages and odd widths), the patch kernel and optimize_for_inference's
#      folded blocks, with the triton backend, against the float64 reference (at most 2x PyTorch's
#      own error + a small atol): verify.txt, verify.json;
#   2. the report's headline rows only, bf16: the MLP half at stages 1-2 (fwd, fwd+bwd) and
#      convnext_tiny inference + training step (batch 256) against timm eager and torch.compile,
#      ours = triton, triton_compile and optimize_for_inference (eager, compiled):
#      `--quick --only mlp,model --exclude sweep,latency --stages 1,2` -> results.json, report.md and
#      the plots (the same files as `bench`: run the two in separate calls);
#   3. tests/test_mlp_op.py and tests/test_pointwise_mlp_kernels.py on CUDA, if 60 s or more are left.
# Copy them to benchmarks/results/<device-slug>/<date>/ (the summary prints the exact folder).
#
# Environment knobs (all optional):
#   STEPS            steps to run, in order (default "build info testfiles"; also "tests" (the suite in
#                    one process, junit.xml), "host", "bench", "pybench", "sweep", "tune", "mlp", "latency",
#                    "verify"). On a bare machine the test files take minutes (Triton compiles every
#                    kernel variant first; `testfiles` runs TEST_JOBS of them at once), so the
#                    benchmark gets a call of its own: STEPS="build host bench"
#   TEST_FILES, FILE_TIMEOUT_S  order of the test files and the cap on each (default 460 s), for `testfiles`
#   TEST_JOBS        test files run at once by `testfiles` (default 8; the longest file,
#                    test_aot_compile, takes several minutes, so it starts first)
#   TOTAL_S          wall-time budget for the whole script in seconds (default 570)
#   BUILD_TIMEOUT_S  cap on the build step (default 240)
#   TESTS_TIMEOUT_S  cap on the test step (default 200)
#   PYTEST_ARGS      test-suite options (default "-q -rf --maxfail=25": every failure listed, up to 25)
#   BENCH_ARGS       extra options for python -m convnext_fast.bench (e.g. "--quick", "--compile-all")
#   MAX_JOBS         parallel compile jobs for the extension (default 16)
#   MLP_S            wall-time cap of the `mlp` step (default 480)
#   TUNE_S           wall-time cap of the `tune` step (default 240)
#   LATENCY_BATCHES  batch sizes of the `latency` step's benchmark (default "1 16"; each one compiles timm
#                    and our model under reduce-overhead anew)
#   PYTHON           interpreter (default: python, else python3)
#
# The MLP and latency checks in one call of under ten minutes: STEPS="mlp latency" MLP_S=400 LATENCY_BATCHES=1
# (the latency step takes what is left; its benchmark writes latency.json after each batch size).
#
# A failing step never stops the later ones: each step's exit code is recorded, and the script
# exits non-zero when any step failed.
set -u -o pipefail

OUT_ARG="${1:?usage: scripts/gpu_run.sh OUTDIR}"
mkdir -p "$OUT_ARG"
OUT="$(cd "$OUT_ARG" && pwd)"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2

export PYTHONUNBUFFERED=1
export MAX_JOBS="${MAX_JOBS:-16}"
# Benchmarks and tests run on the GPU; never through the Triton interpreter.
unset TRITON_INTERPRET
STEPS="${STEPS:-build info testfiles}"
TOTAL_S="${TOTAL_S:-570}"
BUILD_TIMEOUT_S="${BUILD_TIMEOUT_S:-240}"
TESTS_TIMEOUT_S="${TESTS_TIMEOUT_S:-200}"
PYTEST_ARGS="${PYTEST_ARGS:--q -rf --maxfail=25}"
BENCH_ARGS="${BENCH_ARGS:-}"
PY="${PYTHON:-$(command -v python || command -v python3)}"
LOG="$OUT/log.txt"
# The mlp, latency and verify steps run no kernel of the compiled extension: without the `build`
# step, do not let a first use compile it (minutes).
NO_BUILD=(env)
case " $STEPS " in
    *" build "*) ;;
    *) NO_BUILD=(env CONVNEXT_FAST_BUILD_CPU=0 CONVNEXT_FAST_BUILD_CUDA=0) ;;
esac
START=$(date +%s)
SUMMARY=""
FAILED=0

elapsed() { echo $(( $(date +%s) - START )); }
remaining() { echo $(( TOTAL_S - $(elapsed) )); }
section() { printf '\n===== %s (t=%ss) =====\n' "$1" "$(elapsed)" >>"$LOG"; }

# record STEP RC SECONDS: one line in the summary, printed at once so the tool's output tail shows progress
record() {
    local line
    line=$(printf '%-8s rc=%-3s %4ss' "$1" "$2" "$3")
    [ "$2" = "0" ] || FAILED=1
    [ "$2" = "124" ] && line="$line (timed out)"
    SUMMARY="$SUMMARY$line"$'\n'
    echo "$line"
}

run_step() {  # run_step NAME CMD... : output to the log, timing and exit code recorded
    local name="$1"; shift
    local t0 rc
    t0=$(date +%s)
    section "$name: $*"
    "$@" >>"$LOG" 2>&1
    rc=$?
    record "$name" "$rc" $(( $(date +%s) - t0 ))
    return 0
}

: >"$LOG"
{
    echo "gpu_run.sh at $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
    echo "repo $REPO  commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo n/a)"
    echo "steps: $STEPS  total budget ${TOTAL_S}s  python $PY"
} >>"$LOG"

step_build() {
    # --no-build-isolation --no-deps: install offline against what is there. Then compile the
    # extension (CPU + CUDA parts) before the tests need it. If that fails, the Triton and reference
    # paths can still be tested and timed; the failure stays recorded.
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . || return $?
    timeout "$BUILD_TIMEOUT_S" "$PY" -m convnext_fast build --cuda --verbose
}

step_info() {
    nvidia-smi || echo "nvidia-smi not available"
    if ! "$PY" -m convnext_fast info; then
        echo "(python -m convnext_fast info failed; minimal info follows)"
        "$PY" - <<'EOF'
import json, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name())
from convnext_fast.bench.env import environment
print(json.dumps(environment(), indent=1))
EOF
        return 1
    fi
}

step_tests() {
    # No pytest-timeout plugin assumed: coreutils timeout bounds the step; 124 means it ran out.
    # shellcheck disable=SC2086
    timeout "$TESTS_TIMEOUT_S" "$PY" -m pytest tests/ $PYTEST_ARGS -p no:cacheprovider --junitxml="$OUT/junit.xml"
    local rc=$?
    [ $rc -eq 5 ] && { echo "pytest collected no tests"; return 0; }
    return $rc
}

step_testfiles() {
    # The suite one file per pytest process: a crash (segfault) in one file costs only that file,
    # and SIGINT on time-out still makes pytest print its tracebacks and summary. TEST_JOBS files
    # run at once (default 8): on a bare machine most of a file's time is Triton compiling kernel
    # variants on one CPU core, and the machine has 16; the GPU work of the tests is small. TEST_FILES
    # sets the order (default: the files that exercise the GPU kernels first, then every other
    # tests/test_*.py: what CI already checks on CPU goes last); each file gets at most
    # FILE_TIMEOUT_S and never more than what is left of the budget when it starts; a file reached
    # with no time left is listed as not run (run it in the next call with TEST_FILES). Outputs
    # with tracebacks go to tests_by_file.txt, in TEST_FILES order.
    local f cap i=0 n=0 worst=0 files="${TEST_FILES:-}" jobs="${TEST_JOBS:-8}"
    if [ -z "$files" ]; then
        # test_aot_compile first: the longest file, so it must start at once
        local first="tests/test_aot_compile.py tests/test_depthwise_conv.py tests/test_dwconv_layer_norm.py tests/test_layer_norm.py
                     tests/test_api.py tests/test_extension.py tests/test_models.py tests/test_training.py"
        for f in $first; do [ -f "$f" ] && files="$files $f"; done
        for f in tests/test_*.py; do case " $files " in *" $f "*) ;; *) files="$files $f" ;; esac; done
    fi
    local tmp txt="$OUT/tests_by_file.txt"
    tmp=$(mktemp -d)
    for f in $files; do
        i=$(( i + 1 ))
        while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
        cap=$(( $(remaining) - 20 ))
        [ "$cap" -gt "${FILE_TIMEOUT_S:-460}" ] && cap="${FILE_TIMEOUT_S:-460}"
        if [ "$cap" -lt 10 ]; then
            echo "$f: not run (no time left)" | tee "$tmp/$i.txt"; echo 1 >"$tmp/$i.rc"; continue
        fi
        n=$(( n + 1 ))
        (
            printf '\n######## %s (cap %ss, started t=%ss)\n' "$f" "$cap" "$(elapsed)" >"$tmp/$i.txt"
            timeout -s INT -k 15 "$cap" "$PY" -m pytest "$f" -q -rfE --tb=short --durations=5 \
                -p no:cacheprovider >>"$tmp/$i.txt" 2>&1
            rc=$?
            echo "$rc" >"$tmp/$i.rc"
            echo "$f rc=$rc t=$(elapsed)s $(tail -n 1 "$tmp/$i.txt")"
        ) &
    done
    wait
    : >"$txt"
    for (( j = 1; j <= i; j++ )); do
        cat "$tmp/$j.txt" >>"$txt" 2>/dev/null
        case "$(cat "$tmp/$j.rc" 2>/dev/null)" in 0|5) ;; *) worst=1 ;; esac
    done
    rm -rf "$tmp"
    echo "$n test files run, ${jobs} at a time"
    return $worst
}

step_bench() {
    # The report's own budget skips cases that would not fit (most important ones run first);
    # coreutils timeout is the backstop. results.json is checkpointed while it runs.
    local budget rc extra=""
    # margin: Python/torch start-up and writing the report count against the step, not the budget
    budget=$(( $(remaining) - 50 ))
    if [ "$budget" -lt 150 ]; then
        extra="--quick"
        echo "only ${budget}s left: running the --quick set"
    fi
    [ "$budget" -lt 60 ] && budget=60
    # shellcheck disable=SC2086
    timeout $(( budget + 40 )) "$PY" -m convnext_fast.bench --out "$OUT" --budget-s "$budget" $extra $BENCH_ARGS
    rc=$?
    if [ $rc -ne 0 ] && [ -f "$OUT/results.json" ]; then
        echo "bench exited with $rc: rendering report.md and plots from the checkpointed results.json"
        timeout 60 "$PY" -m convnext_fast.bench --out "$OUT" --from-json "$OUT/results.json"
    fi
    return $rc
}

step_host() {
    # A few seconds: host time per call of the public ops on tiny CUDA tensors, for each GPU backend.
    local backends="triton"
    "$PY" -c "import sys; from convnext_fast import extension; sys.exit(extension.unavailable_reason('cuda') != '')" \
        && backends="triton cuda"
    # shellcheck disable=SC2086
    timeout 150 "$PY" benchmarks/bench_host_overhead.py --device cuda --backend $backends --repeats 1000 \
        --json "$OUT/host_overhead.json" --profile "$OUT/host_profile.txt"
}
step_mlp() {
    local deadline left budget rc=0 brc trc
    deadline=$(( $(elapsed) + ${MLP_S:-480} ))
    [ "$deadline" -gt "$TOTAL_S" ] && deadline=$TOTAL_S
    echo "--- 1. parity of the kernels auto does not pick yet (triton, bf16): python -m convnext_fast verify -> verify.txt"
    timeout 180 "${NO_BUILD[@]}" "$PY" -m convnext_fast verify --dtypes bfloat16 --json "$OUT/verify.json" \
        >"$OUT/verify.txt" 2>&1
    rc=$?
    cat "$OUT/verify.txt"
    echo "--- 2. headline rows: MLP half at stages 1-2, convnext_tiny inference + training (bf16)"
    left=$(( deadline - $(elapsed) ))
    budget=$(( left - 40 ))  # Python start-up, writing the report and the plots
    [ "$budget" -lt 60 ] && budget=60
    # shellcheck disable=SC2086
    timeout $(( budget + 35 )) "${NO_BUILD[@]}" "$PY" -m convnext_fast.bench --out "$OUT" --budget-s "$budget" --quick \
        --only mlp,model --exclude sweep,latency --stages 1,2 \
        --providers torch,torch_compile,triton,triton_compile,triton_optimized,triton_optimized_compile $BENCH_ARGS
    brc=$?
    if [ $brc -ne 0 ] && [ -f "$OUT/results.json" ]; then
        echo "bench exited with $brc: rendering report.md and plots from the checkpointed results.json"
        timeout 60 "${NO_BUILD[@]}" "$PY" -m convnext_fast.bench --out "$OUT" --from-json "$OUT/results.json"
    fi
    [ $brc -ne 0 ] && rc=$brc
    left=$(( deadline - $(elapsed) ))
    if [ "$left" -ge 60 ]; then
        echo "--- 3. the MLP and one-kernel block test files on CUDA (${left}s left) -> mlp_tests.txt"
        timeout -s INT -k 10 $(( left - 15 )) "${NO_BUILD[@]}" "$PY" -m pytest tests/test_mlp_op.py \
            tests/test_pointwise_mlp_kernels.py tests/test_block_kernel.py -q -rfE --tb=short -p no:cacheprovider \
            >"$OUT/mlp_tests.txt" 2>&1
        trc=$?
        tail -n 3 "$OUT/mlp_tests.txt"
        case $trc in 0|5) ;; *) rc=$trc ;; esac
    else
        echo "--- 3. MLP test files not run: ${left}s left of MLP_S"
    fi
    return $rc
}
step_latency() {
    local left rc trc
    left=$(( $(remaining) - 20 ))
    [ "$left" -lt 90 ] && { echo "no time left for latency"; return 1; }
    echo "--- 1. batch ${LATENCY_BATCHES:-1 16}: timm eager / reduce-overhead vs optimize_for_inference eager / cuda_graph / reduce-overhead"
    # shellcheck disable=SC2086
    timeout $(( left * 2 / 3 )) "${NO_BUILD[@]}" "$PY" benchmarks/bench_gpu_latency.py --batch ${LATENCY_BATCHES:-1 16} \
        --out "$OUT/latency.json" >"$OUT/latency.txt" 2>&1
    rc=$?
    cat "$OUT/latency.txt"
    left=$(( $(remaining) - 15 ))
    if [ "$left" -ge 45 ]; then
        echo "--- 2. tests/test_inference.py and the patch-convolution tests on CUDA (CUDA-graph replay included)" \
            "-> latency_tests.txt"
        timeout -s INT -k 10 "$left" "${NO_BUILD[@]}" "$PY" -m pytest tests/test_inference.py \
            tests/test_patch_linear_kernel.py tests/test_patch_linear.py -q -rfE --tb=short \
            -p no:cacheprovider >"$OUT/latency_tests.txt" 2>&1
        trc=$?
        tail -n 3 "$OUT/latency_tests.txt"
        case $trc in 0|5) ;; *) rc=$trc ;; esac
    fi
    return $rc
}
step_verify() {
    timeout $(( $(remaining) - 10 )) "${NO_BUILD[@]}" "$PY" -m convnext_fast verify --json "$OUT/verify.json" \
        >"$OUT/verify.txt" 2>&1
    local rc=$?
    cat "$OUT/verify.txt"
    return $rc
}
step_sweep() {
    local budget
    budget=$(( $(remaining) - 30 ))
    [ "$budget" -lt 60 ] && { echo "no time left for sweep"; return 1; }
    timeout $(( budget + 20 )) "$PY" -m convnext_fast.bench.sweep --out "$OUT" --budget-s "$budget"
}
step_tune() {
    local budget record
    budget=$(( $(remaining) - 20 ))
    [ "$budget" -gt "${TUNE_S:-240}" ] && budget=${TUNE_S:-240}
    [ "$budget" -lt 60 ] && { echo "no time left for tune"; return 1; }
    timeout "$budget" "$PY" -m convnext_fast tune --model convnext_tiny --batch 256 --dtype bfloat16 --train \
        >"$OUT/tune.txt" 2>&1
    local rc=$?
    cat "$OUT/tune.txt"
    record=$(sed -n 's/^record: //p' "$OUT/tune.txt" | tail -n 1)
    [ -n "$record" ] && [ -f "$record" ] && cp "$record" "$OUT/record.json"
    return $rc
}
step_pybench() {
    local budget
    budget=$(( $(remaining) - 15 ))
    [ "$budget" -lt 30 ] && { echo "no time left for pybench"; return 1; }
    timeout "$budget" "$PY" -m pytest benchmarks/ --benchmark-only -q -p no:cacheprovider \
        --benchmark-json="$OUT/bench_pytest.json"
}

for step in $STEPS; do
    case "$step" in
        build)   run_step build step_build ;;
        info)    run_step info step_info ;;
        tests)   run_step tests step_tests ;;
        testfiles) run_step testfiles step_testfiles ;;
        host)    run_step host step_host ;;
        bench)   run_step bench step_bench ;;
        pybench) run_step pybench step_pybench ;;
        sweep)   run_step sweep step_sweep ;;
        tune)    run_step tune step_tune ;;
        mlp)     run_step mlp step_mlp ;;
        latency) run_step latency step_latency ;;
        verify)  run_step verify step_verify ;;
        *)       record "$step" "unknown-step" 0 ;;
    esac
done

{
    section "summary"
    printf '%s' "$SUMMARY"
    echo "total ${TOTAL_S}s budget, used $(elapsed)s"
} >>"$LOG"

echo "----- summary (also at the end of $LOG) -----"
printf '%s' "$SUMMARY"
echo "used $(elapsed)s of ${TOTAL_S}s"
if [ -f "$OUT/results.json" ]; then
    "$PY" - "$OUT/results.json" <<'EOF' || true
import json, sys
from convnext_fast.bench import aggregate
from convnext_fast.bench.env import device_slug
d = json.load(open(sys.argv[1]))
m = d["meta"]
print(f"copy results to benchmarks/results/{device_slug(m['device_name'])}/{m['date'][:10]}/")
print(aggregate.targets_markdown(aggregate.evaluate_targets(d["results"])))
EOF
fi
grep -E "passed|failed|error" "$LOG" | grep -E "^(=+ )?[0-9]+ (passed|failed)|^FAILED|^ERROR" | tail -15 || true
ls -la "$OUT"
exit $FAILED
