#!/bin/bash
# The fits of run-gpu.sh, one per call, on this 2-core CPU: for sessions without a lent GPU (a fold fit of the budget
# recipe takes 40-44 minutes here; one of the GPU recipe, up to 30 epochs fully trained, 91-107; cpu-*.log). Same
# fold manifests, recipes and seeds, checkpoints in the same runs/cv-RECIPE-fFOLD; run `cv` and decide.py after.
#   bash training/reports/cv/run-cpu.sh budget 0 > training/reports/cv/cpu-budget-f0.log 2>&1
set -eu
recipe=$1 fold=$2
D=${D:-../shared/data/trashnet/dataset-resized}
source training/reports/cv/recipes.sh
extra=$(recipe $recipe $fold)
start=$(date +%s)
python -m training fit --data $D --manifest training/splits/cv3/fold-$fold.json --out runs/cv-$recipe-f$fold \
    --backbone efficientnet_lite2 --strategy full --patience 10 --workers 2 --device cpu \
    --no-progress --no-report $extra
echo "cv-$recipe-f$fold: $(( $(date +%s) - start )) s"
