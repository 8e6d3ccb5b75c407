"""Inputs: a folder of images, or camera-like JPEG frames made from the sample photos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = ((640, 480), (1280, 720), (1920, 1080), (4032, 3024))
SAMPLES = Path(__file__).resolve().parent.parent / "tests" / "data" / "trashnet"


def camera_frame(size: tuple[int, int], seed: int = 0, quality: int = 90) -> bytes:
    """A real photo scaled to cover the frame, with sensor noise, JPEG q90: the bytes a
    kiosk camera sends (file sizes and decode cost like the real thing)."""
    photos = sorted(SAMPLES.glob("*.jpg"))
    photo = Image.open(photos[seed % len(photos)]).convert("RGB")
    w, h = size
    scale = max(w / photo.width, h / photo.height)
    big = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.BICUBIC)
    left, top = (big.width - w) // 2, (big.height - h) // 2
    pixels = np.asarray(big.crop((left, top, left + w, top + h)), np.int16)
    noise = np.random.default_rng(seed).normal(0, 4, pixels.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=quality)
    return out.getvalue()


def load_inputs(folder: Path | None) -> dict[str, bytes]:
    if folder:
        files = sorted(p for p in folder.iterdir() if p.is_file())
        return {p.name: p.read_bytes() for p in files}
    return {f"{w}x{h}": camera_frame((w, h)) for w, h in SIZES}
