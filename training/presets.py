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


def train_preset(crop: int, mean, std, background_p: float = 0.5, scale_min: float = 0.35,
                 trivial_augment: bool = False) -> T.Compose:
    # Photometric changes come after the compositing: the backdrop is found on the
    # picture as taken, and the pasted surface is jittered with the object, as a camera would.
    photometric = [T.ConvertImageDtype(torch.uint8), T.TrivialAugmentWide(interpolation=InterpolationMode.BILINEAR),
                   T.ConvertImageDtype(torch.float32)] if trivial_augment else []
    return T.Compose([
        T.RandomResizedCrop(crop, scale=(scale_min, 1.0), interpolation=InterpolationMode.BILINEAR),
        T.RandomHorizontalFlip(),
        T.RandomVerticalFlip(),
        T.RandomRotation(20, interpolation=InterpolationMode.BILINEAR, fill=255),
        T.ToTensor(),
        RandomBackground(background_p),
        *photometric,
        T.ColorJitter(0.3, 0.3, 0.3, 0.03),
        T.Normalize(mean, std),
    ])


def no_object_preset(crop: int, mean, std) -> T.Compose:
    """For frames with no object (training.data.NoObjectFrames): colour noise only."""
    return T.Compose([T.ColorJitter(0.3, 0.3, 0.3, 0.03), T.ToTensor(), T.Normalize(mean, std)])


def eval_preset(resize: int = constants.RESIZE, crop: int = constants.CROP, mean=constants.IMAGENET_MEAN,
                std=constants.IMAGENET_STD, interpolation: str = constants.INTERPOLATION) -> T.Compose:
    return T.Compose([
        T.Resize(resize, interpolation=InterpolationMode(interpolation)),
        T.CenterCrop(crop),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
