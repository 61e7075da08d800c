#!/usr/bin/env bash
# The GPU run: the CUDA tests, then both loaders under SegNet (bf16 autocast) on synthetic 512x512 data at
# batch 48, on a machine with an NVIDIA GPU and fastload installed (README, "GPU results").
# Writes into OUTDIR (default benchmarks/results): nvidia-smi output, the CUDA test log, and
# bench-<gpu>-<date>.json/.png, the JSON that `python benchmarks/results_table.py` turns into the README table.
#
#   bash benchmarks/run_gpu.sh [OUTDIR]
set -euo pipefail
out=${1:-benchmarks/results}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
gpu=$(python -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))")
day=$(date -u +%Y-%m-%d)
tag="$gpu-$day"
nvidia-smi > "$out/nvidia-smi-$tag.txt"
python -m pytest -m cuda -q -rs tests/ 2>&1 | tee "$out/gpu-tests-$tag.txt"
fastload synth --out "$work/synth" --n 2000 --size 512 512 --instances 5 20 --seed 0
fastload cache build --coco "$work/synth/annotations.json" --images "$work/synth/images" --out "$work/cache" \
    --workers "$(nproc)" --no-progress
fastload bench --cache "$work/cache" --config configs/default.yaml --loaders cpu,dali --batch-size 48 \
    --size 512 512 --steps 100 --warmup 10 --workers "$(nproc)" --device cuda --model segnet \
    --out "$out/bench-$tag.json" --plot "$out/bench-$tag.png"
