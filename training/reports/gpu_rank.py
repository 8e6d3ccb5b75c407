"""Rank lent-GPU runs by their best val accuracy; split the best $KEEP (default three) into $OUT (<= 16 MB a file).

Called by the run.sh scripts of training/reports/gpu-rounds, gpu-k and gpu-f, on the device machine.
"""

import json
import os
import subprocess
import sys

import torch

rows = []
for name in sys.argv[1:]:
    path = f"runs/{name}/best.pt"
    if os.path.exists(path):
        c = torch.load(path, map_location="cpu", weights_only=False)
        rows.append({"run": name, "epoch": c["epoch"], "val": c["val"]})
rows.sort(key=lambda r: (r["val"]["acc"], -r["val"]["loss"]), reverse=True)
print(json.dumps(rows, indent=1))
json.dump(rows, open(os.environ["OUT"] + "/ranking.json", "w"), indent=1)
for r in rows[: int(os.environ.get("KEEP", 3))]:
    parts = f"{os.environ['OUT']}/{r['run']}.pt.part-"
    subprocess.run(["split", "-b", "15M", f"runs/{r['run']}/best.pt", parts], check=True)
