"""All image transforms of the training stage (torchvision references' presets module).

The eval preset is the contract the server's numpy preprocessing must equal
(tests/test_parity.py binds the two).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import ImageOps
from scipy import ndimage
from torchvision import transforms as T
from torchvision.io import decode_jpeg, encode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from . import backgrounds, constants


class RandomBackground(torch.nn.Module):
    """Paint the near-white studio backdrop of TrashNet with a random colour or texture.

    The old project read a brown floor as cardboard: every training photo had the same
    white background, so the model never learnt to ignore what is behind the object.
    Works on a [0, 1] tensor before normalisation.
    """

    def __init__(self, p: float = 0.5, brightness: float = 0.72, saturation: float = 0.12):
        super().__init__()
        self.p, self.brightness, self.saturation = p, brightness, saturation

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return image
        mask = torch.from_numpy(self.backdrop_mask(image)).float()[None]
        # Soften the mask edge so the model cannot learn a hard cut-out seam.
        mask = torch.nn.functional.avg_pool2d(mask[None], 5, 1, 2)[0]
        return image * (1 - mask) + self._backdrop(image.shape) * mask

    def backdrop_mask(self, image: torch.Tensor) -> np.ndarray:
        """Bright, grey pixels connected to the frame's border: the backdrop, not a white
        sheet of paper or a clear bottle in the middle of the picture."""
        hi, lo = image.amax(0), image.amin(0)
        candidate = ((hi > self.brightness) & (hi - lo < self.saturation)).numpy()
        labels, _ = ndimage.label(candidate)
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        return np.isin(labels, border[border > 0])

    @staticmethod
    def _backdrop(shape) -> torch.Tensor:
        # Seeded from torch so DataLoader workers (each seeded by torch) differ.
        rng = np.random.default_rng(int(torch.randint(2**31, ())))
        return torch.from_numpy(backgrounds.training_surface(shape[1], shape[2], rng)).permute(2, 0, 1)


class CameraFaults(torch.nn.Module):
    """What a kiosk camera does that a studio camera did not: too little light and the
    sensor's noise, a lens out of focus, a hard-squeezed JPEG.

    Works on a [0, 1] tensor before normalisation. Its forms are not the robustness
    suite's (training.robustness.corrupt): noise is drawn in linear light as photons plus
    read noise, and blur is Gaussian, not a disk or a line, so the suite measures more
    than this augmentation replayed.
    """

    # noise and dim light are drawn twice as often: they are where the network is weakest
    KINDS = ("sensor", "sensor", "defocus", "jpeg")
    # and what a station adds to those: a hand that shakes, a veil of glare or a smeared
    # window, a frame burnt out by a lamp
    MORE = (*KINDS, "shake", "veil", "burn")

    def __init__(self, p: float = 0.5, kinds: tuple[str, ...] = KINDS):
        super().__init__()
        unknown = set(kinds) - set(self.MORE)
        if unknown or not kinds:
            raise ValueError(f"camera faults take some of {', '.join(sorted(set(self.MORE)))}; got {kinds}")
        self.p, self.kinds = p, tuple(kinds)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # p = 0 draws nothing, so recipes without faults keep their random stream
        if self.p <= 0 or torch.rand(()) >= self.p:
            return image
        fault = getattr(self, self.kinds[int(torch.randint(len(self.kinds), ()))])
        return fault(image).clamp(0, 1)

    @staticmethod
    def _log_uniform(low: float, high: float) -> float:
        return float(torch.empty(()).uniform_(np.log(low), np.log(high)).exp())

    def sensor(self, image: torch.Tensor) -> torch.Tensor:
        gain, photons = self._log_uniform(0.06, 1.0), self._log_uniform(4, 400)
        linear = image.clamp(0, 1) ** 2.2 * gain
        linear = torch.poisson(linear * photons) / photons + torch.randn_like(linear) * float(torch.rand(())) * 0.02
        if torch.rand(()) < 0.5:
            # the camera's auto-exposure lifts a dim frame, and its noise with it
            linear = linear / gain ** 0.5
        return linear.clamp(0, 1) ** (1 / 2.2)

    @staticmethod
    def defocus(image: torch.Tensor) -> torch.Tensor:
        sigma = float(torch.empty(()).uniform_(0.6, 3.5))
        return F.gaussian_blur(image, 2 * int(3 * sigma) + 1, sigma)

    @staticmethod
    def jpeg(image: torch.Tensor) -> torch.Tensor:
        quality = int(torch.randint(6, 40, ()))
        data = encode_jpeg((image.clamp(0, 1) * 255 + 0.5).to(torch.uint8), quality=quality)
        return decode_jpeg(data).float() / 255

    @staticmethod
    def shake(image: torch.Tensor) -> torch.Tensor:
        """Camera shake: an even streak (the suite's motion blur fades along its line)."""
        length = int(torch.randint(3, 24, ()))
        angle = float(torch.empty(()).uniform_(0, np.pi))
        kernel = np.zeros((length, length), np.float32)
        t = np.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * length)
        ys = np.clip(np.round((length - 1) / 2 + t * np.sin(angle)).astype(int), 0, length - 1)
        xs = np.clip(np.round((length - 1) / 2 + t * np.cos(angle)).astype(int), 0, length - 1)
        kernel[ys, xs] = 1
        weight = torch.from_numpy(kernel / kernel.sum()).expand(image.shape[0], 1, length, length)
        padded = torch.nn.functional.pad(image[None], [length // 2, (length - 1) // 2] * 2, mode="replicate")
        return torch.nn.functional.conv2d(padded, weight, groups=image.shape[0])[0]

    @staticmethod
    def veil(image: torch.Tensor) -> torch.Tensor:
        """Glare or a smeared window: the frame pulled towards a flat veil of light (the
        suite's contrast pulls towards the picture's own mean)."""
        keep = float(torch.empty(()).uniform_(0.15, 0.7))
        light = float(torch.empty(()).uniform_(0.3, 1.0)) * torch.empty(3, 1, 1).uniform_(0.9, 1.1)
        return image * keep + light * (1 - keep)

    @staticmethod
    def burn(image: torch.Tensor) -> torch.Tensor:
        """Over-exposure in linear light, highlights clipped (the suite lifts HSV value)."""
        gain = float(torch.empty(()).uniform_(1.5, 4.0))
        return (image.clamp(0, 1) ** 2.2 * gain).clamp(0, 1) ** (1 / 2.2)


def train_preset(crop: int, mean, std, background_p: float = 0.5, scale_min: float = 0.35,
                 trivial_augment: bool = False, camera_p: float = 0.0,
                 camera_faults: tuple[str, ...] = CameraFaults.KINDS, autocontrast: float | None = None,
                 augmix: bool = False) -> T.Compose:
    # Photometric changes come after the compositing: the backdrop is found on the
    # picture as taken, and the pasted surface is jittered with the object, as a camera would.
    policy = augment_policy(trivial_augment, augmix)
    photometric = [T.ConvertImageDtype(torch.uint8), policy, T.ConvertImageDtype(torch.float32)] if policy else []
    return T.Compose([
        T.RandomResizedCrop(crop, scale=(scale_min, 1.0), interpolation=InterpolationMode.BILINEAR),
        T.RandomHorizontalFlip(),
        T.RandomVerticalFlip(),
        T.RandomRotation(20, interpolation=InterpolationMode.BILINEAR, fill=255),
        T.ToTensor(),
        RandomBackground(background_p),
        *photometric,
        T.ColorJitter(0.3, 0.3, 0.3, 0.03),
        CameraFaults(camera_p, camera_faults),
        # last, as the server stretches the crop it is given, faults and all
        *([T.ToPILImage(), AutoContrast(autocontrast), T.ToTensor()] if autocontrast is not None else []),
        T.Normalize(mean, std),
    ])


def augment_policy(trivial_augment: bool, augmix: bool) -> torch.nn.Module | None:
    """TrivialAugment, or AugMix: several chains of operations blended with the picture.
    AugMix without its brightness, contrast, colour and sharpness operations, as its paper
    has it: those overlap the corruptions the robustness suite measures."""
    if trivial_augment and augmix:
        raise ValueError("--trivial-augment and --augmix are two policies: choose one")
    if augmix:
        return T.AugMix(all_ops=False, interpolation=InterpolationMode.BILINEAR)
    return T.TrivialAugmentWide(interpolation=InterpolationMode.BILINEAR) if trivial_augment else None


def no_object_preset(crop: int, mean, std, autocontrast: float | None = None) -> T.Compose:
    """For frames with no object (training.data.NoObjectFrames): colour noise only."""
    return T.Compose([T.ColorJitter(0.3, 0.3, 0.3, 0.03),
                      *([AutoContrast(autocontrast)] if autocontrast is not None else []),
                      T.ToTensor(), T.Normalize(mean, std)])


class AutoContrast(torch.nn.Module):
    """Pillow's autocontrast on a PIL image, one table from its luma histogram (hue kept):
    undoes a camera's gain and offset (dim light, low contrast) at the cost of a histogram."""

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = cutoff

    def forward(self, image):
        return ImageOps.autocontrast(image, cutoff=self.cutoff, preserve_tone=True)


def eval_preset(resize: int = constants.RESIZE, crop: int = constants.CROP, mean=constants.IMAGENET_MEAN,
                std=constants.IMAGENET_STD, interpolation: str = constants.INTERPOLATION,
                autocontrast: float | None = None) -> T.Compose:
    return T.Compose([
        T.Resize(resize, interpolation=InterpolationMode(interpolation)),
        T.CenterCrop(crop),
        *([AutoContrast(autocontrast)] if autocontrast is not None else []),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
