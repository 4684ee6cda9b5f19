#!/usr/bin/env bash
# The GPU check of issue 6, as one script for the device machine (one H200; Python 3.12
# with cupy-cuda13x, numpy, scipy, pandas, pyarrow, matplotlib, tqdm and pytest already
# there, but not mrcfile or starfile; nothing can be downloaded there).
#
# Prepare once, here, in the repository root (nothing of this is committed: /.whl/ is in
# .gitignore, /.gpu_data/ goes into .git/info/exclude):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl mrcfile==1.5.4 starfile==0.5.13
#   # both are pure-Python wheels; their needs (numpy; pandas, pyarrow, typing-extensions)
#   # are already on the device: check with  unzip -p .whl/NAME-*.whl '*/METADATA' | grep ^Requires-Dist
#   echo /.gpu_data/ >> .git/info/exclude
#   mkdir -p .gpu_data && cp ../shared/data/ribosome70S/ribosome70S_L64.mrc .gpu_data/
#
# Then run it with the device tool, carrying both folders:
#
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".gpu_data"], timeout_s=540)
#
# It writes its whole log to $OUT/gpu_check.log (or ./gpu_check.log without $OUT). Each
# step has its own time limit (seconds, overridable below), so one slow step cannot eat
# the others' time; the limits add up to about 8 minutes, and on an H200 the whole script
# took about 3.5 minutes (tests 85 s, bench_gpu 2 s, the 50,000-particle ab initio 78 s).
#
#   T_PYTEST=180 T_BENCH=90 T_ABINITIO=210
#   ABINITIO_ARGS="--n 50000 --box 128 --snr 0.1 --map .gpu_data/ribosome70S_L64.mrc"  (bench_abinitio.py flags)

set -u -o pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-.}"
LOG="$OUT_DIR/gpu_check.log"
: > "$LOG"
export PYTHONUNBUFFERED=1
PY=python3
T_PYTEST="${T_PYTEST:-180}"
T_BENCH="${T_BENCH:-90}"
T_ABINITIO="${T_ABINITIO:-210}"
ABINITIO_ARGS="${ABINITIO_ARGS:---n 50000 --box 128 --snr 0.1 --map .gpu_data/ribosome70S_L64.mrc}"
status=0

step() {  # step NAME LIMIT_S COMMAND...
    local name="$1" limit="$2"
    shift 2
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
    [ "$rc" -eq 0 ] || status=1
}

# The carried wheels, then the project itself, neither touching the network.
if ls .whl/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tee -a "$LOG"
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "no .whl/ wheels carried: mrcfile and starfile will be missing (see the top of this script)" | tee -a "$LOG"
fi
$PY -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tee -a "$LOG" \
    || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv 2>&1
    $PY -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'cuda runtime', cupy.cuda.runtime.runtimeGetVersion())"
} 2>&1 | tee -a "$LOG"

# Every test module, so the optimizer and backend GPU tests run too.
step "pytest -m gpu" "$T_PYTEST" $PY -m pytest -m gpu -q -rsx -p no:cacheprovider --durations=10 \
    tests/
step "bench_gpu" "$T_BENCH" $PY benchmarks/bench_gpu.py --device gpu
if [ -f benchmarks/bench_abinitio.py ]; then
    # shellcheck disable=SC2086  # the flags are meant to split
    step "bench_abinitio --device gpu" "$T_ABINITIO" $PY benchmarks/bench_abinitio.py --device gpu $ABINITIO_ARGS
else
    echo "benchmarks/bench_abinitio.py not found: skipped" | tee -a "$LOG"
fi
echo "=== gpu_check: $([ $status -eq 0 ] && echo all steps passed || echo some step failed)" | tee -a "$LOG"
exit $status
