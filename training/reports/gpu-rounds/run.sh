#!/bin/bash
# Four Lite2 fits on a lent GPU, test images kept off it; the three best by val come back.
# As run on the lent H200 from the repository root; the set-up, `fit` and `finish` are in ../gpu_fit.sh.
set -u
EPOCHS=${EPOCHS:-30} LIMIT=${LIMIT:-6.5} FIT_TIMEOUT=480
source training/reports/gpu_fit.sh
# Round 1 (LIMIT=6.5), names g1-g4:
#   fit g1 --seed 11 --workers 3 &
#   fit g2 --seed 12 --workers 3 --ema 0.998 &
#   fit g3 --seed 13 --workers 3 --ema 0.998 --imbalance sampler &
#   fit g4 --seed 14 --workers 4 --ema 0.998 --image-size 296 &
# Round 2 (LIMIT=5), names h1-h4 (round 1 finished with g1 g2 g3 g4):
fit h1 --seed 21 --workers 3 &
fit h2 --seed 22 --workers 4 --image-size 296 &
fit h3 --seed 23 --workers 3 --imbalance sampler &
fit h4 --seed 24 --workers 3 --ema 0.99 &
wait
finish h1 h2 h3 h4
