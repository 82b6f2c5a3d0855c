"""``digits-aug``: an offline, paper-scale dataset grown from scikit-learn's digits.

Every row is a seeded augmentation of one ``digits`` image *of the same split* (train rows come
from the 1,257 train originals, test rows from the 360 test originals: no original is in two
splits): upsampled to 32x32, then a random affine map (rotation +-15 deg, scale 0.85-1.15, shear
+-0.2, shift +-3 px), an elastic deformation (alpha 6 px, sigma 3 px), a colour map (random
foreground and background colours) and Gaussian pixel noise (sigma 0-12 grey levels). Sizes
are those of the paper's CIFAR-10 split: 50,000 train (45,000 in CIFAR plus val; here 50,000
train, 5,000 val) and 10,000 test.

What it is: an offline stand-in with CIFAR-10's sizes, 10 classes and colour images, so that
pilot budgets, whitening (n >> d) and the paper's pilot fractions behave as at paper scale.
What it is not: CIFAR-10. Its information content is that of 1,797 8x8 digits; encoders reach
high accuracy easily, and rows of one split share originals (about 40 augmentations each), so
accuracy differences between methods are smaller than on natural images.

Row i of a split is original ``i mod n_orig`` with augmentation seed (split, i), so a ``limit``
is a prefix of the full split (the same rows, the same pixels) and generation is deterministic.
"""

from __future__ import annotations

import numpy as np

#: Rows per split of the full dataset.
AUG_SIZES: dict[str, int] = {"train": 50_000, "val": 5_000, "test": 10_000}
AUG_SIZE = 32
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_SEED = 0xD161


def _upsample(grey: np.ndarray, size: int) -> np.ndarray:
    """(8, 8) grey in [0, 1] to (size, size) by bilinear zoom."""
    from scipy.ndimage import zoom

    return np.clip(zoom(grey, size / grey.shape[0], order=1), 0.0, 1.0)


def augment_one(grey: np.ndarray, rng: np.random.Generator, size: int = AUG_SIZE) -> np.ndarray:
    """One augmented uint8 (size, size, 3) image from an 8x8 grey image in [0, 1]."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    img = _upsample(grey, size)
    c = (size - 1) / 2.0
    angle = np.deg2rad(rng.uniform(-15, 15))
    scale = rng.uniform(0.85, 1.15)
    shear = rng.uniform(-0.2, 0.2)
    shift = rng.uniform(-3, 3, size=2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    inv = np.linalg.inv(rot @ np.array([[1.0, shear], [0.0, 1.0]]) * scale)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    coords = np.stack([yy.ravel() - c - shift[0], xx.ravel() - c - shift[1]])
    src = inv @ coords + c
    # elastic: smooth random displacement fields
    alpha, sigma = 6.0, 3.0
    dy = gaussian_filter(rng.uniform(-1, 1, (size, size)), sigma) * alpha
    dx = gaussian_filter(rng.uniform(-1, 1, (size, size)), sigma) * alpha
    src = src + np.stack([dy.ravel(), dx.ravel()])
    warped = map_coordinates(img, src, order=1, mode="constant", cval=0.0).reshape(size, size)
    fg, bg = rng.uniform(0.55, 1.0, 3), rng.uniform(0.0, 0.35, 3)
    if rng.random() < 0.5:  # dark digits on light ground half of the time
        fg, bg = 1.0 - fg, 1.0 - bg
    colour = bg + (fg - bg) * warped[..., None]
    noisy = colour * 255.0 + rng.normal(0.0, rng.uniform(0, 12), colour.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def augment_split(
    images: np.ndarray, labels: np.ndarray, split: str, rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` augmented images (rows, 32, 32, 3) uint8 and labels of one digits split.

    ``images``: the split's originals (n, 8, 8, 3) uint8 (grey in every channel).
    """
    grey = images[..., 0].astype(np.float64) / 255.0
    n = len(grey)
    out = np.empty((rows, AUG_SIZE, AUG_SIZE, 3), dtype=np.uint8)
    for i in range(rows):
        rng = np.random.default_rng((_SEED, _SPLIT_CODE[split], i))
        out[i] = augment_one(grey[i % n], rng)
    return out, np.asarray(labels)[np.arange(rows) % n].astype(np.int64)
