#!/bin/bash
# One Lite2 trained on this 2-core CPU inside the 90-minute budget, by progressive resizing:
# stage A at 192 px (0.55x the pixels of 260, so more epochs for the minutes), stage B a short
# fine-tune at 296, the size the network is served at (train-low/test-high needs the BN statistics
# and the last layers re-fitted at the serving size: FixRes). Run from the repository root.
set -eu
D=${D:-../shared/data/trashnet/dataset-resized}
common="--data $D --manifest training/splits/trashnet.json --backbone efficientnet_lite2 --strategy full
 --no-progress --no-report --device cpu --seed 31 --patience 10"
start=$(date +%s)
python -m training fit $common --out runs/cpu-a --image-size 192 --epochs 18 --time-limit 56
python -m training fit $common --out runs/cpu-b --image-size 296 --epochs 6 --time-limit 32 \
  --init-from runs/cpu-a/best.pt --lr 3e-4
echo "training minutes (both stages): $(( ($(date +%s) - start) / 60 ))"
