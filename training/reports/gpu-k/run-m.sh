#!/bin/bash
# Round 3, second call on the same warm machine (about 7 minutes of device time left): three more Lite2 fits
# at 296 px on a 24-epoch cosine schedule, one with EMA. The set-up, `fit` and `finish` are in ../gpu_fit.sh.
set -u
EPOCHS=${EPOCHS:-24} LIMIT=${LIMIT:-4.4} FIT_TIMEOUT=300
source training/reports/gpu_fit.sh
fit m1 --seed 41 --workers 4 --image-size 296 &
fit m2 --seed 42 --workers 4 --image-size 296 &
fit m3 --seed 43 --workers 4 --image-size 296 --ema 0.998 &
wait
finish m1 m2 m3
