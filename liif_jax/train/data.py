"""Training data: the paper's "implicit downsampled" sampling from any folder of HR images.

Per item, as the original's ``sr-implicit-downsampled`` wrapper (train_edsr-baseline-liif):
- a scale s ~ U(scale_min, scale_max) (1 to 4);
- a random square HR crop of round(inp_size * s) pixels (inp_size 48);
- its LR: PIL bicubic of the 8-bit crop to inp_size x inp_size;
- augmentation: each of a row flip, a column flip and a transpose with probability 1/2,
  applied to LR and HR alike;
- ``sample_q`` (2304) distinct HR pixels: their coordinates (pixel centres, ``make_coord``),
  cells (2 / crop size) and colours.

Everything random comes from ``numpy.random.default_rng((seed, epoch, index))`` and the
epoch's order from ``default_rng((seed, epoch))``, so a run is reproducible item by item and
can resume mid-epoch without replaying anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liif_jax import geometry
from liif_jax.errors import ImageError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


class ImplicitDownsampled:
    def __init__(self, folder, inp_size: int = 48, scale_min: float = 1.0, scale_max: float = 4.0,
                 sample_q: int | None = 2304, augment: bool = True, cache: str | None = "memory"):
        self.files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in EXTENSIONS)
        if not self.files:
            raise ImageError(f"no training images (PNG/JPEG/WebP) found in {folder}")
        self.inp_size, self.scale_min, self.scale_max = inp_size, scale_min, scale_max
        self.sample_q, self.augment, self.cache = sample_q, augment, cache
        self._images: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.files)

    def image(self, index: int) -> np.ndarray:
        """uint8 (H, W, 3) of file ``index`` (kept in memory when ``cache == "memory"``)."""
        if index in self._images:
            return self._images[index]
        from PIL import Image

        with Image.open(self.files[index]) as img:
            arr = np.asarray(img.convert("RGB"))
        if min(arr.shape[:2]) < round(self.inp_size * self.scale_max):
            raise ImageError(f"training image {self.files[index].name} is smaller than the largest "
                             f"crop ({round(self.inp_size * self.scale_max)} pixels)")
        if self.cache == "memory":
            self._images[index] = arr
        return arr

    def item(self, index: int, seed: int, epoch: int) -> dict:
        """One training example: ``inp`` (inp_size, inp_size, 3) in [0, 1], ``coord``,
        ``cell`` (Q, 2) and ``gt`` (Q, 3) in [0, 1]."""
        from PIL import Image

        rng = np.random.default_rng((seed, epoch, index))
        hr = self.image(index)
        s = rng.uniform(self.scale_min, self.scale_max)
        w_hr = round(self.inp_size * s)
        y0 = int(rng.integers(0, hr.shape[0] - w_hr + 1))
        x0 = int(rng.integers(0, hr.shape[1] - w_hr + 1))
        crop = hr[y0:y0 + w_hr, x0:x0 + w_hr]
        lr = np.asarray(Image.fromarray(crop).resize((self.inp_size, self.inp_size), Image.BICUBIC))
        if self.augment:
            flips = rng.random(3) < 0.5
            lr, crop = (_augment(a, *flips) for a in (lr, crop))
        coord = geometry.make_coord(crop.shape[:2])
        rgb = crop.reshape(-1, 3)
        if self.sample_q is not None:
            pick = rng.choice(len(coord), self.sample_q, replace=False)
            coord, rgb = coord[pick], rgb[pick]
        cell = geometry.make_cell(crop.shape[:2], len(coord))
        to01 = lambda a: a.astype(np.float32) / np.float32(255)  # noqa: E731
        return {"inp": to01(lr), "coord": coord, "cell": cell, "gt": to01(rgb)}

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        return np.random.default_rng((seed, epoch)).permutation(len(self))

    def batches(self, batch_size: int, seed: int, epoch: int, start: int = 0):
        """Host batches (``train.step.Batch``) of one epoch, from batch number ``start``."""
        from liif_jax.train.step import make_batch

        order = self.epoch_order(seed, epoch)
        for b in range(start, len(order) // batch_size):
            items = [self.item(int(i), seed, epoch) for i in order[b * batch_size:(b + 1) * batch_size]]
            stack = {k: np.stack([it[k] for it in items]) for k in items[0]}
            yield make_batch(stack["inp"], stack["coord"], stack["cell"], stack["gt"])


def _augment(a: np.ndarray, flip_rows: bool, flip_cols: bool, transpose: bool) -> np.ndarray:
    if flip_rows:
        a = a[::-1]
    if flip_cols:
        a = a[:, ::-1]
    if transpose:
        a = a.transpose(1, 0, 2)
    return np.ascontiguousarray(a)
