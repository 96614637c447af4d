#!/usr/bin/env bash
# Train the project's models from ../shared/data into runs/NAME (logs in runs/NAME.log).
# Usage: scripts/build_models.sh [STEP...]   STEP: unet-pets fcn-pets unet-membrane
#        dcgan-mnist dcgan-fashion (default: all, in that order). Each trains on 2 CPU cores
#        in about 10-40 minutes; the export steps are appended after the train steps.
# DATA (default ../shared/data) and RUNS (default runs) may be overridden.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-../shared/data}"
RUNS="${RUNS:-runs}"
PY="${PYTHON:-python}"
mkdir -p "$RUNS"

train() {  # NAME ARGS...: fresh run in $RUNS/NAME, log in $RUNS/NAME.log
    local name="$1"; shift
    echo "== $name: $(date -u +%H:%M:%S)"
    "$PY" -m train "$@" --seed 0 --name "$name" --out "$RUNS/$name" --overwrite \
        > "$RUNS/$name.log" 2>&1
    echo "== $name done: $(date -u +%H:%M:%S)"
}

step_unet_pets() {
    train unet-pets unet --data "$DATA/pets" --image-size 160 160 --val-fraction 0.2 \
        --depth 4 --base-filters 8 --epochs 25 --batch-size 8 --lr 2e-3
}
step_fcn_pets() {  # same data, seed and fraction: the same held-out stems as unet-pets
    train fcn-pets fcn --data "$DATA/pets" --image-size 160 160 --val-fraction 0.2 \
        --variant 8s --base-filters 8 --epochs 20 --batch-size 8 --lr 2e-3
}
step_unet_membrane() {
    train unet-membrane unet --data "$DATA/membrane" --image-size 256 256 --channels 1 \
        --val-count 5 --class-names membrane cell --depth 4 --base-filters 8 --epochs 15 \
        --batch-size 4 --lr 2e-3 --vflip --min-samples 100
}
step_dcgan_mnist() {
    train dcgan-mnist dcgan --data "$DATA/mnist" --image-size 32 32 --channels 1 \
        --latent-size 64 --filters 32 --d-filters 32 --epochs 4 --batch-size 64
}
step_dcgan_fashion() {
    train dcgan-fashion dcgan --data "$DATA/fashion" --image-size 32 32 --channels 1 \
        --latent-size 64 --filters 32 --d-filters 32 --epochs 3 --batch-size 64
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(unet-pets fcn-pets unet-membrane dcgan-mnist dcgan-fashion)
for step in "${steps[@]}"; do
    fn="step_${step//-/_}"
    if ! declare -F "$fn" > /dev/null; then
        echo "unknown step '$step'; expected unet-pets fcn-pets unet-membrane dcgan-mnist" \
             "dcgan-fashion" >&2
        exit 2
    fi
    "$fn"
done
# -- export steps (appended by export/) --
