#!/bin/bash
# Round 4 on a lent GPU: what freezing the stem and the first 2 stages costs, at the CPU pair's recipe
# (../cpu-pair/run.sh: Lite2 at 296 px, 18 epochs here, fixed instead of planned by --budget). Two seeds each
# of fully trained (f1, f4) and --frozen-stages 2 (f2, f3), and one with 5 frozen (f5, 1.05 s a CPU step).
# Test images kept off it; all five checkpoints come back (one tar split in 15 MB parts). The set-up and `fit`
# are in ../gpu_fit.sh.
set -u
EPOCHS=${EPOCHS:-18} LIMIT=${LIMIT:-7} FIT_TIMEOUT=480
source training/reports/gpu_fit.sh
fit f1 --seed 61 --workers 3 --image-size 296 &
fit f2 --seed 61 --workers 3 --image-size 296 --frozen-stages 2 &
fit f3 --seed 62 --workers 3 --image-size 296 --frozen-stages 2 &
fit f4 --seed 62 --workers 3 --image-size 296 &
fit f5 --seed 61 --workers 3 --image-size 296 --frozen-stages 5 &
wait
for name in f1 f2 f3 f4 f5; do grep -h "epoch\|limit\|Error\|error" runs/$name.log | cut -c 1-150 | tail -4; done
KEEP=0 python3 training/reports/gpu_rank.py f1 f2 f3 f4 f5 > /dev/null  # ranking only: all five come in one tar
tar cf - runs/f?/best.pt runs/f?/history.json runs/f?.log | split -b 15M - $OUT/f.tar.part-
ls -la $OUT
