"""Surfaces to put objects on, and frames with no object at all.

Two disjoint families, so that the robustness suite measures robustness and not the
augmentation: TRAINING surfaces (flat colour, low-frequency blotches, fractal noise,
crops of scikit-image's bundled photographs that show no surface the suite uses) feed
training's compositing and its no-object frames; SUITE surfaces (scikit-image's brick,
grass and gravel photographs, and generated wood, concrete, cloth, a dark bin tray and
clutter) are only ever used by `training.robustness`.

Every generator takes a numpy Generator and returns an HxWx3 float array in [0, 1].
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

# scikit-image's bundled photographs (BSD-licensed, shipped inside the wheel, no
# download); none of them is a brick, grass or gravel surface.
TRAINING_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                   "camera", "moon", "retina", "stereo_motorcycle")
SUITE_PHOTOS = {"brick": (0.62, 0.36, 0.28), "grass": (0.35, 0.55, 0.25), "gravel": (0.55, 0.53, 0.50)}


@functools.cache
def photo(name: str) -> np.ndarray:
    from skimage import data as skdata

    image = getattr(skdata, name)()
    if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
        image = image[0]
    image = np.asarray(image, np.float32)
    image = image / 255.0 if image.max() > 1.5 else image
    return np.repeat(image[..., None], 3, 2) if image.ndim == 2 else image[..., :3]


def crop_to(image: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop at a random zoom, resized to h x w (bilinear)."""
    ih, iw = image.shape[:2]
    scale = rng.uniform(0.4, 1.0)
    ch, cw = max(8, int(ih * scale)), max(8, int(iw * scale))
    cw = min(iw, max(8, int(ch * w / h)))
    y, x = rng.integers(0, ih - ch + 1), rng.integers(0, iw - cw + 1)
    patch = image[y:y + ch, x:x + cw]
    return np.clip(ndimage.zoom(patch, (h / patch.shape[0], w / patch.shape[1], 1), order=1), 0, 1)[:h, :w]


def smooth_noise(h: int, w: int, rng: np.random.Generator, cells: int, channels: int = 1) -> np.ndarray:
    coarse = rng.random((cells, max(2, cells * w // max(h, 1)), channels))
    return ndimage.zoom(coarse, (h / coarse.shape[0], w / coarse.shape[1], 1), order=1)[:h, :w]


def fractal(h: int, w: int, rng: np.random.Generator, octaves: int = 5) -> np.ndarray:
    out = np.zeros((h, w, 1))
    for o in range(octaves):
        out += smooth_noise(h, w, rng, 2 ** (o + 1)) / 2 ** o
    return out / out.max()


# -- training surfaces ---------------------------------------------------------------


def flat(h, w, rng):
    return np.clip(rng.random(3) + 0.05 * rng.standard_normal((h, w, 3)), 0, 1)


def blotches(h, w, rng):
    return np.clip(0.5 * rng.random(3) + 0.5 * smooth_noise(h, w, rng, int(rng.integers(3, 10)), 3), 0, 1)


def fractal_tint(h, w, rng):
    return np.clip(rng.random(3) * (0.4 + 0.8 * fractal(h, w, rng)), 0, 1)


def training_photo(h, w, rng):
    return crop_to(photo(TRAINING_PHOTOS[rng.integers(len(TRAINING_PHOTOS))]), h, w, rng)


TRAINING = {"flat": flat, "blotches": blotches, "fractal": fractal_tint, "photo": training_photo}


def training_surface(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    names = list(TRAINING)
    return TRAINING[names[rng.integers(len(names))]](h, w, rng).astype(np.float32)


# -- suite surfaces (held out from training) ----------------------------------------


def _tinted_photo(name):
    def make(h, w, rng):
        gray = crop_to(photo(name), h, w, rng)[..., :1]
        return np.clip(gray * np.array(SUITE_PHOTOS[name]) * 1.6, 0, 1)
    return make


def wood(h, w, rng):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    warp = 25 * smooth_noise(h, w, rng, 4)[..., 0]
    rings = np.sin((y + warp) / rng.uniform(3, 7) + 2 * np.sin(x / rng.uniform(60, 120)))
    base = np.array([0.55, 0.36, 0.2]) * rng.uniform(0.7, 1.2)
    return np.clip(base * (0.8 + 0.2 * rings[..., None]), 0, 1)


def concrete(h, w, rng):
    speckle = rng.random((h, w, 1)) < 0.02
    return np.clip(0.55 + 0.15 * (fractal(h, w, rng) - 0.5) + 0.04 * rng.standard_normal((h, w, 1))
                   - 0.25 * speckle, 0, 1).repeat(3, 2)


def cloth(h, w, rng):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(3, 6)
    weave = 0.5 + 0.25 * np.sin(x / period) * np.sin(y / period) + 0.1 * np.sign(np.sin((x + y) / period))
    colour = rng.random(3) * 0.8 + 0.1
    return np.clip(colour * (0.7 + 0.5 * weave[..., None]), 0, 1)


def bin_tray(h, w, rng):
    y = np.mgrid[0:h, 0:w][0].astype(np.float32)
    ribs = 0.03 * (np.sin(y / rng.uniform(6, 12)) > 0.7)
    shade = 0.08 + 0.06 * (y / h) + ribs + 0.015 * rng.standard_normal((h, w))
    return np.clip(shade[..., None] * np.array([1.0, 1.0, 1.1]), 0, 1)


def clutter(h, w, rng):
    out = np.full((h, w, 3), rng.uniform(0.3, 0.7))
    y, x = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(15, 30))):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        ry, rx = rng.integers(h // 20, h // 5), rng.integers(w // 20, w // 5)
        inside = (np.abs(y - cy) < ry) & (np.abs(x - cx) < rx) if rng.random() < 0.5 else \
            ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
        out[inside] = rng.random(3)
    return ndimage.uniform_filter(out, (3, 3, 1))


SUITE = {"wood": wood, "concrete": concrete, "grass": _tinted_photo("grass"), "gravel": _tinted_photo("gravel"),
         "brick": _tinted_photo("brick"), "cloth": cloth, "bin_tray": bin_tray, "clutter": clutter}


# -- frames with no object -----------------------------------------------------------


def _ellipse(h, w, cy, cx, ry, rx):
    y, x = np.mgrid[0:h, 0:w]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1


def hand(h, w, rng):
    """A palm and five fingers in a skin tone over a suite surface."""
    out = SUITE[list(SUITE)[rng.integers(len(SUITE))]](h, w, rng)
    skin = np.array([0.87, 0.67, 0.53]) * rng.uniform(0.45, 1.1)
    cy, cx, r = h * rng.uniform(0.45, 0.65), w * rng.uniform(0.35, 0.65), h * rng.uniform(0.15, 0.22)
    mask = _ellipse(h, w, cy, cx, r, r * 0.85)
    for k in range(5):
        angle = np.pi * (0.15 + 0.17 * k) + rng.normal(0, 0.05)
        fy, fx = cy - 1.5 * r * np.sin(angle), cx - 1.5 * r * np.cos(angle)
        mask |= _ellipse(h, w, fy, fx, r * 0.65, r * 0.2)
    out[mask] = np.clip(skin + 0.03 * rng.standard_normal((mask.sum(), 3)), 0, 1)
    return out


def face_blob(h, w, rng):
    out = SUITE[list(SUITE)[rng.integers(len(SUITE))]](h, w, rng)
    mask = _ellipse(h, w, h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6), h * 0.3, h * 0.22)
    out[mask] = np.array([0.8, 0.6, 0.5]) * rng.uniform(0.4, 1.1)
    return ndimage.gaussian_filter(out, (2, 2, 0))


def sensor_noise(h, w, rng):
    return np.clip(rng.uniform(0.1, 0.6) + rng.uniform(0.05, 0.3) * rng.standard_normal((h, w, 3)), 0, 1)


def black(h, w, rng):
    return np.clip(rng.uniform(0, 0.04) + 0.01 * rng.standard_normal((h, w, 3)), 0, 1)


def over_exposed(h, w, rng):
    return np.clip(rng.uniform(0.93, 1.0) + 0.01 * rng.standard_normal((h, w, 3)), 0, 1)


NO_OBJECT = {**{f"empty_{name}": make for name, make in SUITE.items()},
             "hand": hand, "face_blob": face_blob, "sensor_noise": sensor_noise, "black": black,
             "over_exposed": over_exposed}


def studio_backdrop(h, w, rng):
    """TrashNet's empty white table: a bright grey gradient."""
    y = np.mgrid[0:h, 0:w][0] / h
    level = rng.uniform(0.75, 0.95) - rng.uniform(0, 0.15) * y
    return np.clip(level[..., None] + 0.01 * rng.standard_normal((h, w, 3)), 0, 1)


def training_blobs(h, w, rng):
    out = training_surface(h, w, rng)
    for _ in range(int(rng.integers(1, 4))):
        mask = _ellipse(h, w, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.3) * h,
                        rng.uniform(0.05, 0.3) * w)
        out[mask] = rng.random(3)
    return out


def training_no_object(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Frames for outlier exposure: training surfaces only, never the suite's."""
    kinds = (training_surface, training_surface, training_blobs, studio_backdrop, flat)
    frame = kinds[rng.integers(len(kinds))](h, w, rng)
    if rng.random() < 0.2:
        frame = np.clip(frame * rng.uniform(0.0, 0.3), 0, 1)  # dim
    return frame.astype(np.float32)
