#!/usr/bin/env bash
# The README's main job (embed, tiled generate, finetune, and predict where it exists) on the GPU in fp32 and bf16,
# checked against the CPU, at the real TerraMind-tiny width with random weights. Run on any GPU machine before a
# release:  scripts/check_gpu.sh [--device cuda:1] [--dtype fp16] [--work-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/check_device.py --device cuda --dtype bf16 "$@"
