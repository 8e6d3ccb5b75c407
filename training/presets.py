"""All image transforms of the training stage (torchvision references' presets module).

The eval preset is the contract the server's numpy preprocessing must equal
(tests/test_parity.py binds the two).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from . import constants


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
        c, h, w = shape
        colour = torch.rand(c, 1, 1)
        if torch.rand(()) < 0.5:  # flat colour with sensor noise
            return (colour + 0.05 * torch.randn(c, h, w)).clamp(0, 1)
        # low-frequency texture (floor, table, bin liner)
        coarse = torch.rand(c, 1 + int(torch.randint(2, 9, ())), 1 + int(torch.randint(2, 9, ())))
        texture = torch.nn.functional.interpolate(coarse[None], (h, w), mode="bilinear", align_corners=False)[0]
        return (0.5 * colour + 0.5 * texture).clamp(0, 1)


def train_preset(crop: int, mean, std, background_p: float = 0.5) -> T.Compose:
    return T.Compose([
        T.RandomResizedCrop(crop, scale=(0.35, 1.0), interpolation=InterpolationMode.BILINEAR),
        T.RandomHorizontalFlip(),
        T.RandomVerticalFlip(),
        T.RandomRotation(20, interpolation=InterpolationMode.BILINEAR, fill=255),
        T.ColorJitter(0.3, 0.3, 0.3, 0.03),
        T.ToTensor(),
        RandomBackground(background_p),
        T.Normalize(mean, std),
    ])


def eval_preset(resize: int = constants.RESIZE, crop: int = constants.CROP, mean=constants.IMAGENET_MEAN,
                std=constants.IMAGENET_STD, interpolation: str = constants.INTERPOLATION) -> T.Compose:
    return T.Compose([
        T.Resize(resize, interpolation=InterpolationMode(interpolation)),
        T.CenterCrop(crop),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
