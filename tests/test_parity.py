"""The server's numpy preprocessing equals training's torchvision eval transform.

server/ and training/ never import each other; this test is what binds them.
"""

import io
import json

import numpy as np
import pytest
from PIL import Image

from server.bundle import BundleError, Preprocess, load_bundle
from server.preprocess import decode, preprocess, to_rgb
from tests.helpers import encode
from training.models import preprocess_spec
from training.presets import eval_preset

SPECS = {
    "lite0": preprocess_spec("efficientnet_lite0"),
    "imagenet-256-224": {**preprocess_spec("resnet50"), "resize": 256, "crop": 224},
    "lite2-bicubic": {**preprocess_spec("efficientnet_lite2"), "interpolation": "bicubic"},
    "lite0-autocontrast": {**preprocess_spec("efficientnet_lite0"), "autocontrast": 1.0},
}
SIZES = [(10, 8), (31, 17), (224, 224), (225, 223), (223, 225), (257, 256), (1000, 200), (200, 1000),
         (640, 480), (1920, 1080), (3024, 4032), (4032, 3024)]


def photo(size, seed=0) -> Image.Image:
    """Smooth gradients plus noise: like a photo, with every pixel value in use."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / max(w - 1, 1), y / max(h - 1, 1), (x + y) / max(w + h - 2, 1)], -1) * 200
    return Image.fromarray(np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8))


def assert_parity(image: Image.Image, spec: dict) -> None:
    expected = eval_preset(**spec)(image).numpy()
    got = preprocess(image, Preprocess(**{**spec, "mean": tuple(spec["mean"]), "std": tuple(spec["std"])}))
    assert got.dtype == np.float32 and got.shape == expected.shape == (3, spec["crop"], spec["crop"])
    assert np.abs(got - expected).max() <= 1e-5


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_sizes(size, spec):
    assert_parity(photo(size), SPECS[spec])


@pytest.mark.parametrize("cutoff", [0.0, 1.0, 5.0])
def test_autocontrast_stretches_a_dim_frame_on_both_sides(cutoff):
    dim = Image.fromarray((np.asarray(photo((640, 480), seed=2)) * 0.2 + 10).astype(np.uint8))
    spec = {**SPECS["lite0"], "autocontrast": cutoff}
    assert_parity(dim, spec)
    plain = preprocess(dim, Preprocess(**{**SPECS["lite0"], "mean": (0.5,) * 3, "std": (0.5,) * 3}))
    stretched = preprocess(dim, Preprocess(**{**spec, "mean": (0.5,) * 3, "std": (0.5,) * 3}))
    assert stretched.std() > 3 * plain.std()


@pytest.mark.parametrize("cutoff", [-1, 50, "1", True, float("inf")])
def test_bundle_refuses_an_autocontrast_that_is_not_a_percent(tiny_bundle, tmp_path, cutoff):
    raw = json.loads(tiny_bundle.read_text())
    raw["preprocess"]["autocontrast"] = cutoff
    (tmp_path / raw["onnx"]).write_bytes((tiny_bundle.parent / raw["onnx"]).read_bytes())
    path = tmp_path / "ac.json"
    path.write_text(json.dumps(raw).replace("Infinity", "1e999"))
    with pytest.raises(BundleError, match="autocontrast"):
        load_bundle(path)


def test_bundle_without_autocontrast_has_none(tiny_bundle):
    assert load_bundle(tiny_bundle).preprocess.autocontrast is None


def with_mode(mode: str) -> Image.Image:
    rgb = photo((300, 200), seed=1)
    if mode == "P+transparency":
        image = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
        image.info["transparency"] = 0
        return image
    if mode in ("RGBA", "LA"):
        alpha = Image.fromarray((np.arange(300)[None, :].repeat(200, 0) % 256).astype(np.uint8))
        image = rgb.convert(mode[:-1])
        image.putalpha(alpha)
        return image
    if mode == "I;16":
        return Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257).astype(np.uint16))
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "P", "P+transparency", "RGBA", "CMYK", "I;16", "1", "YCbCr"])
def test_modes_after_decode(mode):
    """Each mode survives an encode/decode round trip and then matches torchvision."""
    image = with_mode(mode)
    fmt = {"CMYK": "JPEG", "YCbCr": "JPEG", "I;16": "PNG"}.get(mode, "PNG" if mode != "LA" else "PNG")
    if mode == "CMYK":
        data = encode(image, "JPEG", quality=95)
    else:
        data = encode(image, fmt)
    rgb = decode(data, 10**8, 8)
    assert rgb.mode == "RGB" and rgb.size == (300, 200)
    for spec in SPECS.values():
        assert_parity(rgb, spec)


def test_transparent_pixels_go_on_white():
    image = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    image.paste((0, 0, 255, 255), (10, 10, 30, 30))
    rgb = np.asarray(decode(encode(image, "PNG"), 10**8, 8))
    assert tuple(rgb[0, 0]) == (255, 255, 255) and tuple(rgb[20, 20]) == (0, 0, 255)
    la = Image.new("LA", (40, 40), (0, 0))
    assert tuple(np.asarray(decode(encode(la, "PNG"), 10**8, 8))[5, 5]) == (255, 255, 255)


def test_16_bit_grey_is_scaled_not_clipped():
    image = Image.fromarray(np.full((32, 32), 32768, np.uint16))
    assert to_rgb(image).getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize("orientation,expected_size", [(1, (400, 300)), (3, (400, 300)), (6, (300, 400)),
                                                        (8, (300, 400))])
def test_exif_orientation_applied(orientation, expected_size):
    image = photo((400, 300), seed=2)
    image.paste((255, 0, 0), (0, 0, 40, 40))  # a red mark in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    rgb = decode(encode(image, "JPEG", quality=95, exif=exif), 10**8, 8)
    assert rgb.size == expected_size
    corner = {1: (5, 5), 3: (395, 295), 6: (295, 5), 8: (5, 395)}[orientation]
    r, g, b = rgb.getpixel(corner)
    assert r > 200 and g < 60 and b < 60
    assert_parity(rgb, SPECS["lite0"])


def test_first_frame_of_animation():
    frames = [Image.new("RGB", (50, 50), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    r, g, b = decode(buffer.getvalue(), 10**8, 8).getpixel((25, 25))
    assert r > 200 and g < 50
    buffer = io.BytesIO()
    frames[1].save(buffer, "TIFF", save_all=True, append_images=[frames[2]])
    assert decode(buffer.getvalue(), 10**8, 8).getpixel((25, 25))[1] > 200


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_fast_resize_of_the_crop_alone_stays_within_grey_levels_of_the_exact_path(size, spec):
    """The fast path resizes only the crop's box: the geometry is the exact path's (a pixel
    off would move noisy photos by tens of levels); the passes round in another order."""
    spec = Preprocess(**{**SPECS[spec], "mean": tuple(SPECS[spec]["mean"]), "std": tuple(SPECS[spec]["std"])})
    image = photo(size, seed=4)
    levels = np.abs(preprocess(image, spec, fast=True) - preprocess(image, spec)) * 255 * min(spec.std)
    assert levels.mean() < 1.0  # auto-contrast stretches the rounding too
    if spec.interpolation == "bilinear" and spec.autocontrast is None:
        assert levels.max() <= 2 + 1e-3


def test_fast_decode_stays_close_on_a_12mp_frame():
    """The draft path's deviation from the exact path, on the model input (README figure)."""
    frame = photo((4032, 3024), seed=3)
    data = encode(frame, "JPEG", quality=90)
    spec = Preprocess(**{**SPECS["lite0"], "mean": (0.5,) * 3, "std": (0.5,) * 3})
    exact = preprocess(decode(data, 10**8, 8), spec)
    fast_image = decode(data, 10**8, 8, draft_to=spec.resize)
    assert min(fast_image.size) < 3024 and min(fast_image.size) >= spec.resize
    fast = preprocess(fast_image, spec, fast=True)
    # normalised units: 2/255 per grey level with std 0.5; noisy synthetic frames are the
    # worst case (real photos: see README "Fast decode").
    assert np.abs(fast - exact).mean() < 0.05
