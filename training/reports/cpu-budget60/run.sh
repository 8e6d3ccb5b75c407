#!/bin/bash
# One Lite2 at 296 px on this 2-core CPU with `--budget 60`: the epoch count and the cosine schedule are
# planned from the measured pace to end within 60 minutes (the 90-minute budget did not fit in the session
# that ran it). From the repository root, with ../shared/data/trashnet/dataset-resized beside it.
set -eu
D=../shared/data/trashnet/dataset-resized
python -m training fit --data $D --manifest training/splits/trashnet.json --out runs/cpu-60 \
    --backbone efficientnet_lite2 --strategy full --image-size 296 --epochs 30 --patience 10 \
    --budget 60 --workers 2 --no-progress
