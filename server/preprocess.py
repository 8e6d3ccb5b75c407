"""Bytes to model input: Pillow decodes and resizes, numpy does the rest.

`preprocess` equals torchvision's Resize + CenterCrop + ToTensor + Normalize on the same
RGB PIL image to within 1e-5 (tests/test_parity.py). `decode` is where untrusted bytes
meet the code, so every way it can fail maps to one ImageError with an HTTP status.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .bundle import Preprocess

# Only these parsers ever see an upload: no EPS (Ghostscript), no exotic decoders.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")  # JPEG covers MPO (phone multi-picture)
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC, "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING, "lanczos": Image.Resampling.LANCZOS,
}
# We enforce our own pixel limit before decoding; Pillow's global one would warn or raise
# with a different message, so it is switched off for this process.
Image.MAX_IMAGE_PIXELS = None
Image.init()  # register every plugin now: Image.open(formats=...) looks them up by name
# Corrupt-EXIF and palette warnings are about the upload, not the server; set once here
# (warnings.catch_warnings per call is not thread-safe under gthread).
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


class ImageError(ValueError):
    """An upload that cannot be classified; `status` and `code` go into the JSON error."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _open(data: bytes, max_pixels: int, min_side: int) -> Image.Image:
    if not data:
        raise ImageError(400, "empty_image", "the image is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError(415, "unsupported_image", f"not an image, or not one of {', '.join(FORMATS)}") from None
    except Exception:  # noqa: BLE001 - a header parser choking on crafted bytes is still bad input
        raise ImageError(415, "unsupported_image", "the image header cannot be read") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(422, "too_many_pixels", f"{width}x{height} is over the limit of {max_pixels} pixels")
    if min(width, height) < min_side:
        raise ImageError(422, "image_too_small", f"{width}x{height} is under the minimum side of {min_side} px")
    return image


def _scaled_to_uint8(image: Image.Image, scale: float, rows: int = 256) -> Image.Image:
    """clip(pixel * scale + 0.5) as 8-bit grey, a band of rows at a time: a float64 copy
    of a whole frame of the most pixels allowed would be several times the frame."""
    dtype = np.uint16 if image.mode.startswith("I;16") else None
    out = np.empty((image.height, image.width), np.uint8)
    for top in range(0, image.height, rows):
        band = np.asarray(image.crop((0, top, image.width, min(top + rows, image.height))), dtype=dtype)
        out[top:top + rows] = np.clip(band.astype(np.float64) * scale + 0.5, 0, 255)
    return Image.fromarray(out)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode a camera or a person may send, as RGB; transparency goes on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grey: Pillow's convert clips at 255; scale the real range down instead.
        top = float(max(image.getextrema()[1], 0))
        peak = 255.0 if image.mode == "I" and top <= 255 else 65535.0 if top <= 65535 else top
        image = _scaled_to_uint8(image, 255.0 / peak)
    elif image.mode == "F":
        image = _scaled_to_uint8(image, 255.0)
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def decode(data: bytes, max_pixels: int, min_side: int, draft_to: int | None = None,
           max_aspect_ratio: float = 0.0) -> Image.Image:
    """Bytes to an upright RGB image: `open_image`, then `load_rgb`."""
    return load_rgb(open_image(data, max_pixels, min_side, draft_to, max_aspect_ratio))


def open_image(data: bytes, max_pixels: int, min_side: int, draft_to: int | None = None,
               max_aspect_ratio: float = 0.0) -> Image.Image:
    """The header only, checked; `image.size` is then what decoding will make. `draft_to`:
    let libjpeg scale by 1/2, 1/4 or 1/8 while decoding, keeping the shorter side >=
    draft_to (the fast path for camera frames). `max_aspect_ratio` (0: none) refuses
    strips whose short side, resized up to the model's size, would make the long side,
    and the resize's memory, explode."""
    image = _open(data, max_pixels, min_side)
    width, height = image.size
    if max_aspect_ratio and max(width, height) > max_aspect_ratio * min(width, height):
        raise ImageError(422, "extreme_aspect_ratio",
                         f"{width}x{height} is more than {max_aspect_ratio:g} times as long as it is wide")
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)  # animated GIF, multi-page TIFF: the first frame
        if draft_to and image.format in ("JPEG", "MPO"):
            image.draft("RGB", (draft_to, draft_to))
    except Exception:  # noqa: BLE001 - a frame table or scan header that lies
        raise ImageError(415, "corrupt_image", "the image data is truncated or corrupt") from None
    return image


def load_rgb(image: Image.Image) -> Image.Image:
    """Decode the pixels of an `open_image` result, upright, as RGB."""
    try:
        image.load()
        try:
            # In place: without an Orientation tag the copy exif_transpose makes is wasted.
            ImageOps.exif_transpose(image, in_place=True)
        except Exception:  # noqa: BLE001 - broken EXIF: classify the pixels as stored
            pass
        return to_rgb(image)
    except ImageError:
        raise
    except Exception:  # noqa: BLE001 - truncated or corrupt pixel data
        raise ImageError(415, "corrupt_image", "the image data is truncated or corrupt") from None


def resized_size(width: int, height: int, resize: int) -> tuple[int, int]:
    """torchvision's Resize(int): shorter side to `resize`, longer side floored."""
    if width <= height:
        return resize, int(resize * height / width)
    return int(resize * width / height), resize


def crop_origin(width: int, height: int, crop: int) -> tuple[int, int]:
    """torchvision's CenterCrop: the left and top of the crop, rounded as it rounds."""
    return int(round((width - crop) / 2.0)), int(round((height - crop) / 2.0))


def center_crop(image: Image.Image, crop: int) -> np.ndarray:
    """torchvision's CenterCrop on a PIL image (zero padding when smaller), as uint8 HWC."""
    array = np.asarray(image)
    height, width = array.shape[:2]
    if crop > width or crop > height:
        pad_w, pad_h = max(crop - width, 0), max(crop - height, 0)
        array = np.pad(array, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)))
        height, width = array.shape[:2]
    left, top = crop_origin(width, height, crop)
    return array[top:top + crop, left:left + crop]


def autocontrast(crop: np.ndarray, cutoff: float) -> np.ndarray:
    """The crop stretched by one lookup table from its luma histogram (hue kept), the
    darkest and brightest `cutoff` percent clipped: Pillow's, as the training side uses."""
    return np.asarray(ImageOps.autocontrast(Image.fromarray(crop), cutoff=cutoff, preserve_tone=True))


def crop_box(width: int, height: int, resize: int, crop: int) -> tuple[float, float, float, float] | None:
    """The part of a width x height image that Resize(resize) + CenterCrop(crop) keeps, in
    its own pixels; None where the crop is larger than the resized image (it pads)."""
    new_w, new_h = resized_size(width, height, resize)
    if crop > new_w or crop > new_h:
        return None
    left, top = crop_origin(new_w, new_h, crop)
    sx, sy = width / new_w, height / new_h
    return left * sx, top * sy, (left + crop) * sx, (top + crop) * sy


def _resized_crop(image: Image.Image, spec: Preprocess, fast: bool) -> np.ndarray:
    resample = RESAMPLE[spec.interpolation]
    box = crop_box(image.width, image.height, spec.resize, spec.crop) if fast else None
    if box is not None:
        # Only the pixels the crop keeps are resized (Pillow takes a fractional box), two
        # steps where the frame is large; within a grey level of the exact path.
        return np.asarray(image.resize((spec.crop, spec.crop), resample, box=box, reducing_gap=3.0))
    size = resized_size(image.width, image.height, spec.resize)
    if size != image.size:
        image = image.resize(size, resample, reducing_gap=3.0 if fast else None)
    return center_crop(image, spec.crop)


def preprocess(image: Image.Image, spec: Preprocess, fast: bool = False) -> np.ndarray:
    """RGB PIL image to a float32 CHW array, normalised as the bundle says. `fast`: the
    serving path (`Config.fast_decode`), close to torchvision's rather than equal."""
    crop = _resized_crop(image, spec, fast)
    if spec.autocontrast is not None:
        crop = autocontrast(crop, spec.autocontrast)
    # Transpose while still uint8 (a quarter of the bytes), then one multiply-add per
    # value: x * 1/(255 std) - mean/std equals ToTensor + Normalize to ~1e-7.
    chw = np.ascontiguousarray(crop.transpose(2, 0, 1)).astype(np.float32)
    std = np.asarray(spec.std, np.float64)
    chw *= (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
    chw -= (np.asarray(spec.mean, np.float64) / std).astype(np.float32)[:, None, None]
    return chw
