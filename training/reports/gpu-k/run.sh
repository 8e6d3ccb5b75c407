#!/bin/bash
# Round 3 on a lent GPU: Lite2 at higher input sizes (384, 384 with EMA, 336) and one more at 296, each on a
# 30-epoch cosine schedule (round 2's 296-px h2 stopped early after 25 epochs, its best at 14). Test images kept
# off it; the three best by val come back. The set-up, `fit` and `finish` are in ../gpu_fit.sh. The lent H200
# had torch 2.11.0+cu130 (its own install); timm 1.0.31 came from .devrun/whl.
set -u
EPOCHS=${EPOCHS:-30} LIMIT=${LIMIT:-6.3} FIT_TIMEOUT=460
source training/reports/gpu_fit.sh
fit k1 --seed 31 --workers 3 --image-size 384 &
fit k2 --seed 32 --workers 3 --image-size 384 --ema 0.998 &
fit k3 --seed 33 --workers 3 --image-size 336 &
fit k4 --seed 34 --workers 3 --image-size 296 &
wait
finish k1 k2 k3 k4
