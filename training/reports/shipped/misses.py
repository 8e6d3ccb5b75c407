"""The test pictures the shipped bundle gets wrong, as the server answers them (README "The model").

    python training/reports/shipped/misses.py [models/ecosort.json] > training/reports/shipped/misses.txt

Run from the repository root; reads the committed split manifest and ../shared/data/trashnet/dataset-resized.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from server.bundle import load_bundle  # noqa: E402
from server.preprocess import decode, preprocess  # noqa: E402
from server.runtime import Runtime  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT.parent / "shared/data/trashnet/dataset-resized"


def main() -> int:
    bundle = load_bundle(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "models/ecosort.json")
    runtime = Runtime(bundle, threads=2)
    manifest = json.loads((ROOT / bundle.provenance["split_manifest"]).read_text())
    for item in (it for it in manifest["items"] if it["split"] == "test"):
        image = preprocess(decode((DATA / item["path"]).read_bytes(), 10**9, 1), bundle.preprocess)
        probs = runtime.probabilities(runtime.infer(image[None]))[0]
        label = bundle.classes[int(probs.argmax())]
        if label != item["label"]:
            print(f"{item['path']} -> {label} {probs.max():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
