#!/bin/bash
# Two Lite2 networks at 296 px trained one after the other on this 2-core CPU, each with the stem and the first
# 2 of its 7 stages frozen (--frozen-stages 2: a step of 32 takes about 2.2 s instead of 4.0 s fully trained),
# sharing one 85-minute budget: the first gets 41 minutes, the second what is left of 83. Exported afterwards as
# one ensemble graph (README). From the repository root, with ../shared/data/trashnet/dataset-resized beside it.
set -eu
D=../shared/data/trashnet/dataset-resized
start=$(date +%s)
member() {
    python -m training fit --data $D --manifest training/splits/trashnet.json --out runs/$1 \
        --backbone efficientnet_lite2 --strategy full --frozen-stages 2 --image-size 296 --epochs 20 \
        --patience 10 --seed $2 --budget $3 --workers 2 --no-progress --no-report
}
# Names and seeds of the two fits (defaults: the first pair, cpu-p1 and cpu-p2); e.g. P1=cpu-q1 S1=71 P2=cpu-q2 S2=72.
member ${P1:-cpu-p1} ${S1:-61} 41
used=$(( ($(date +%s) - start) / 60 ))
member ${P2:-cpu-p2} ${S2:-62} $(( 83 - used ))
echo "both members: $(( $(date +%s) - start )) s"
