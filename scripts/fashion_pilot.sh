#!/usr/bin/env bash
# One Fashion-MNIST pilot training (issue 20's recipe search): train PRESET for STEPS optimizer steps on
# one thread (the cosine schedule ends there; MINUTES caps the wall time), then score it with DDIM at
# 50 steps on 500 images (fashion classifier FID) and print the card's wall time beside the FID.
#   scripts/fashion_pilot.sh NAME PRESET STEPS MINUTES [train options, e.g. --batch-size 128 --set prediction_type=v]
# Writes pilots/NAME.safetensors (+ card), pilots/NAME.log and results/pilot-NAME/.
set -euo pipefail
name=$1; preset=$2; steps=$3; minutes=$4; shift 4
out=${PILOT_DIR:-pilots}; mkdir -p "$out"
data=${SAMPLER_BENCH_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
python -m bench train --preset "$preset" --data-dir "$data" --threads 1 --steps "$steps" --time-limit "$minutes" \
    --out "$out/$name.safetensors" --checkpoint "$out/$name.ckpt.pt" "$@" > "$out/$name.log" 2>&1
python -m bench run --model "$out/$name.safetensors" --samplers ddim --steps 50 --num-samples 500 \
    --metrics fid --threads 1 --quiet --out "results/pilot-$name" >> "$out/$name.log" 2>&1
