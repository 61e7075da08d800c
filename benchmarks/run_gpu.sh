#!/usr/bin/env bash
# The GPU run: the CUDA tests; the machine's image-only ceiling (benchmarks/ceiling.py) at all cores and at 2
# threads (a DDP rank's share of a node); fastload's loaders and the peers alone (--model none) at --cores 2 and
# all cores, and under SegNet (bf16 autocast), on synthetic 512x512 data at batch 48; the target renderer; and where
# the Kornia peer's time goes (benchmarks/profile_kornia.py). README, "On an H200".
#
#   bash benchmarks/run_gpu.sh [OUTDIR]                     (default OUTDIR: benchmarks/results)
#
# Runs from a checkout with only PYTHONPATH set (fastload need not be pip-installed): every command is
# `python -m fastload`. A failing CUDA test (or targets benchmark, or Kornia profile) does not stop the run: the rest still runs, and the script
# exits nonzero at the end. Sized by environment variables, so a short GPU lease can use it:
#   FASTLOAD_GPU_N       synthetic images in the cache      (default 2000)
#   FASTLOAD_GPU_STEPS   measured steps per loader          (default 100)
#   FASTLOAD_GPU_WARMUP  warm-up steps per loader           (default 10)
#   FASTLOAD_GPU_ROUNDS  interleaved rounds                 (default 1)
#   FASTLOAD_GPU_LOADERS loaders                            (default cpu,dali,albumentations,kornia)
#   FASTLOAD_GPU_TESTS   0 skips the CUDA tests             (default 1)
#   FASTLOAD_GPU_SEGNET  0 skips the SegNet run             (default 1)
#   PYTHON               the interpreter                    (default: python, else python3)
# Writes into OUTDIR: nvidia-smi output, the CUDA test log, and bench-<gpu>-<date>.json/.png, the JSON that
# `python benchmarks/results_table.py` turns into the README table.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$repo/benchmarks/results"}
n=${FASTLOAD_GPU_N:-2000}
steps=${FASTLOAD_GPU_STEPS:-100}
warmup=${FASTLOAD_GPU_WARMUP:-10}
rounds=${FASTLOAD_GPU_ROUNDS:-1}
loaders=${FASTLOAD_GPU_LOADERS:-cpu,dali,albumentations,kornia}
py=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
cd "$repo"
gpu=$("$py" -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))") || {
    echo "run_gpu.sh: torch sees no CUDA GPU" >&2
    exit 2
}
tag="$gpu-$(date -u +%Y-%m-%d)"
nvidia-smi > "$out/nvidia-smi-$tag.txt" 2>&1 || true

tests_rc=0
if [ "${FASTLOAD_GPU_TESTS:-1}" != 0 ]; then
    # the sample data ships inside the package: fastload.sample_data() finds it without any path set up
    "$py" -m pytest -m cuda -q -rs -p no:cacheprovider tests/ > "$out/gpu-tests-$tag.txt" 2>&1
    tests_rc=$?
    tail -n 20 "$out/gpu-tests-$tag.txt"
    [ "$tests_rc" -eq 0 ] || echo "run_gpu.sh: CUDA tests failed (exit $tests_rc); running the benchmark anyway" >&2
fi

set -e
"$py" -m fastload synth --out "$work/synth" --n "$n" --size 512 512 --instances 5 20 --seed 0
"$py" -m fastload cache build --coco "$work/synth/annotations.json" --images "$work/synth/images" \
    --out "$work/cache" --workers "$(nproc)" --no-progress
cores=$(nproc)
"$py" benchmarks/ceiling.py "$work/cache" --threads "$cores" 2 --out "$out/ceiling-$tag.json"
"$py" -m fastload bench --cache "$work/cache" --config configs/default.yaml --loaders "$loaders" \
    --batch-size 48 --size 512 512 --steps "$steps" --warmup "$warmup" --rounds "$rounds" \
    --cores "2,$cores" --device cuda --model none \
    --out "$out/loaders-none-$tag.json" --plot "$out/loaders-none-$tag.png"
if [ "${FASTLOAD_GPU_SEGNET:-1}" != 0 ]; then
    "$py" -m fastload bench --cache "$work/cache" --config configs/default.yaml --loaders "$loaders" \
        --batch-size 48 --size 512 512 --steps "$steps" --warmup "$warmup" --rounds "$rounds" \
        --workers "$cores" --device cuda --model segnet --precision bf16 \
        --out "$out/segnet-$tag.json" --plot "$out/segnet-$tag.png"
fi
set +e  # the last two measurements run whatever the other's outcome; their failures are reported below
"$py" -m pytest benchmarks/test_bench_targets.py --benchmark-only -k cuda -q -p no:cacheprovider \
    --benchmark-json "$out/targets-$tag.json" > "$out/targets-$tag.txt" 2>&1
targets_rc=$?
"$py" benchmarks/profile_kornia.py --device cuda --out "$out/kornia-ops-$tag.json" > "$out/kornia-ops-$tag.txt" 2>&1
kornia_rc=$?
[ "$targets_rc" -eq 0 ] || echo "run_gpu.sh: the targets benchmark failed (exit $targets_rc): see $out/targets-$tag.txt" >&2
[ "$kornia_rc" -eq 0 ] || echo "run_gpu.sh: the Kornia profile failed (exit $kornia_rc): see $out/kornia-ops-$tag.txt" >&2
if [ "$tests_rc" -ne 0 ]; then
    echo "run_gpu.sh: benchmark written, but the CUDA tests failed (exit $tests_rc): see $out/gpu-tests-$tag.txt" >&2
    exit "$tests_rc"
fi
[ "$targets_rc" -eq 0 ] && [ "$kornia_rc" -eq 0 ] || exit 1
