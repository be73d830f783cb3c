#!/usr/bin/env bash
# One lease of a GPU machine (no network there): install nestc's pure-Python dependencies from
# wheels carried in .whl/, run the GPU tests, then benchmark specs with the time left.
#   usage: bash benchmarks/gpu_session.sh SECONDS SPEC[,SPEC...] [bench_builtins.py flags]
#   (logs and results under $OUT), e.g. Hope in its short-compile mode, whose default (unrolled)
#   compile outlasted the last lease:  ... 500 hope --loops call --first-pass shared
# The wheels, fetched beforehand on a machine with the package index (python 3.12 is the GPU
# image's; .whl/ is git-ignored locally through .git/info/exclude):
#   for p in lark pydantic pydantic_core annotated-types typing-inspection typing_extensions; do
#     python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl "$p"; done
# (pydantic_core must be the version the pydantic wheel pins: see its Requires-Dist.)
set -u
budget=$1; specs=$2; shift 2; start=$(date +%s); out=${OUT:-/tmp/gpu-out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 COLUMNS=160
python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
left() { echo $(( budget - ($(date +%s) - start) )); }
timeout $(( $(left) - 10 )) python3 -m pytest -q -p no:cacheprovider tests/gpu --tb=short \
    --durations=0 -rfEs > "$out/gpu_tests.log" 2>&1
echo "tests: rc=$? after $(( $(date +%s) - start )) s"; grep -E "passed|failed" "$out/gpu_tests.log" | tail -2
if [ -n "$specs" ] && [ "$(left)" -gt 60 ]; then
    timeout $(( $(left) - 10 )) python3 benchmarks/bench_builtins.py --device cuda \
        --results /tmp/h100 --specs "$specs" "$@" > "$out/bench.log" 2>&1
    echo "bench: rc=$? after $(( $(date +%s) - start )) s"
    tar czf "$out/h100.tgz" -C /tmp h100 2>/dev/null
fi
