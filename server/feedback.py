"""`POST /v1/feedback`: operators file a photo under its true label, in the training layout.

FOLDER/LABEL/SHA256.jpg, so `python -m training fit --data FOLDER` trains on it as it is.
Writes are atomic (temp file, fsync, rename, fsync of the folder) and serialised across
gunicorn workers by an flock, so concurrent writers and a crash mid-write lose nothing
and leave no half-written JPEG where training would read it.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from flask import Blueprint, Flask, current_app, g, jsonify, request

from .api import classifier, single_upload
from .errors import ApiError
from .preprocess import ImageError, preprocess

bp = Blueprint("feedback", __name__)


RECORDS = "records.jsonl"
SIZE = ".size"  # running total of the stored pictures' bytes: no re-count on every write


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("*/*.jpg"))


def stored_bytes(root: Path) -> int:
    """The running total, counted once if missing or unreadable. Call with the lock held."""
    try:
        return int((root / SIZE).read_text())
    except (FileNotFoundError, ValueError):
        total = folder_bytes(root)
        (root / SIZE).write_text(str(total))
        return total


def append_record(root: Path, record: dict) -> None:
    """One JSON line a stored picture, appended and fsynced (the lock is held): what
    retraining needs to know about it besides its pixels."""
    with open(root / RECORDS, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def remove_partial_writes(root: Path) -> None:
    """Delete temp files a killed writer left behind. Call with the folder's lock held:
    every live writer holds it while its temp file exists, so any temp file seen under
    the lock belongs to a writer that died."""
    for stale in root.glob("*/.*.tmp"):
        stale.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store(root: Path, label: str, jpeg: bytes, cap_bytes: int, record: dict | None = None) -> tuple[Path, bool]:
    """Write once under an exclusive lock, with its record line; returns (path, created)."""
    digest = hashlib.sha256(jpeg).hexdigest()
    target = root / label / f"{digest}.jpg"
    with open(root / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        remove_partial_writes(root)
        for existing in root.glob(f"*/{digest}.jpg"):
            if existing.parent.name != label:
                raise ApiError(409, "conflicting_label", f"this image is already filed as {existing.parent.name!r}")
            return existing, False
        used = stored_bytes(root)
        if used + len(jpeg) > cap_bytes:
            raise ApiError(507, "feedback_full", "the feedback folder is at its size cap")
        target.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{digest}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(jpeg)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        (root / SIZE).write_text(str(used + len(jpeg)))
        append_record(root, {"sha256": digest, "label": label, "path": f"{label}/{digest}.jpg", **(record or {})})
        return target, True


@bp.post("/v1/feedback")
def feedback():
    clf = classifier()
    form = request.form if request.mimetype == "multipart/form-data" else request.args
    label = form.get("label", "")
    if label not in clf.bundle.classes:
        raise ApiError(400, "bad_label", f"label must be one of {', '.join(clf.bundle.classes)}")
    _, data = single_upload()
    try:
        with clf.decoded(data, draft=False) as image:  # exact decode: this is training data
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=95)
            array = preprocess(image, clf.bundle.preprocess)
    except ImageError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    # What the model says of the picture as stored (no second decode; not a served prediction,
    # so it is not counted in the prediction metrics).
    probs = clf.runtime.probabilities(clf.runtime.infer(array[None]))[0]
    record = {"predicted": clf.bundle.classes[int(probs.argmax())], "confidence": float(probs.max()),
              "model_sha256": clf.bundle.sha256, "station_id": clf.config.station_id,
              "time": datetime.now(UTC).isoformat(timespec="seconds")}
    root: Path = current_app.extensions["ecosort.feedback"]
    path, created = store(root, label, buffer.getvalue(), current_app.extensions["ecosort.feedback_cap"], record)
    return jsonify({"stored": created, "label": label, "sha256": path.stem, "request_id": g.request_id}), \
        201 if created else 200


def register_feedback(app: Flask, root: Path, cap_mb: float) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        remove_partial_writes(root)
        (root / SIZE).unlink(missing_ok=True)  # re-counted once per start: files may have moved
        stored_bytes(root)
    app.extensions["ecosort.feedback"] = root
    app.extensions["ecosort.feedback_cap"] = int(cap_mb * 1024 * 1024)
    app.register_blueprint(bp)
