"""Turn a decoded image into the served image tower's input: uint8 RGB at the model's size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def to_pixels(image: Image.Image, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: grayscale becomes RGB, then a bicubic resize of the whole image."""
    return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def load_pixels(paths: list[Path], size: int) -> np.ndarray:
    """uint8 [n, size, size, 3] from image files PIL can read (PNG, JPEG)."""
    batch = []
    for path in paths:
        with Image.open(path) as image:
            batch.append(to_pixels(image, size))
    return np.stack(batch)
