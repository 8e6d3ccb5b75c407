#!/bin/bash
# Cross-validation of two recipes on a lent GPU (selection-rule.md beside this file): the GPU recipe of the shipped
# members (Lite2 at 296 px, fully trained, 30 epochs) and the CPU budget recipe (the same with the stem and the
# first 2 stages frozen, 17 epochs, as ../cpu-pair/run.sh plans on this CPU), each trained once on every 3-fold
# manifest of training/splits/cv3/ (train+val only; the test images are not on the machine). Six fits at once.
#   bash training/reports/cv/run-gpu.sh fit   # the six fits (about 6-8 minutes on an H200 with 16 cores)
#   bash training/reports/cv/run-gpu.sh cv    # then, on the same warm machine: cv.md, cv.json, logs into $OUT
# The set-up and `fit` are in ../gpu_fit.sh; nothing but cv.json (every out-of-fold probability) and logs returns.
# With this workplace's device tool: carry [".devrun"] (64 MB: the wheels and the 2,139 train+val pictures, the
# pool the folds cut), and move models/*.onnx out of the working tree for the call (the transfer holds ~64 MB;
# put them back before any commit), timeout 600 for `fit`; then `cv` on the warm machine; then decide.py here.
set -u
EPOCHS=${EPOCHS:-30} LIMIT=${LIMIT:-8} FIT_TIMEOUT=${FIT_TIMEOUT:-540}
source training/reports/gpu_fit.sh
source training/reports/cv/recipes.sh
FOLDS=${FOLDS:-0 1 2}
if [ "${1:-fit}" = fit ]; then
    for i in $FOLDS; do
        fit cv-gpu-f$i --manifest training/splits/cv3/fold-$i.json $(recipe gpu $i) --workers 3 &
        fit cv-budget-f$i --manifest training/splits/cv3/fold-$i.json $(recipe budget $i) --workers 2 &
    done
    wait
    for name in runs/cv-*-f?.log; do echo "$name"; grep -h "epoch\|limit\|Error\|error" $name | cut -c 1-150 | tail -3; done
else
    python3 -m training cv --recipe gpu runs/cv-gpu-f?/best.pt --recipe budget runs/cv-budget-f?/best.pt \
        --data .devrun/dataset-resized --size 296 --out $OUT/cv
    tar czf $OUT/cv/logs.tgz runs/cv-*.log runs/cv-*/history.json
    ls -la $OUT/cv
fi
