"""Evaluation with the paper's protocol for arbitrary scales (the original's ``test.py`` with
its ``sr-implicit-downsampled`` wrapper), plus SSIM.

For a high-resolution image HR (uint8 RGB / 255) and a scale s:
- h_lr = floor(H / s + 1e-9) (same for w); HR is cropped top-left to round(h_lr * s) x
  round(w_lr * s) (Python's round, as the original);
- LR = PIL bicubic of the 8-bit HR crop to w_lr x h_lr;
- LIIF predicts at the crop's size (float, clamped to [0, 1], not quantised);
- PSNR = -10 log10(MSE) over RGB in [0, 1], shaving s + 6 pixels on every side (``div2k``),
  or shaving s and converting the difference to luma with (65.738, 129.057, 25.064) / 256
  (``benchmark``);
- the bicubic baseline is PIL bicubic of the same 8-bit LR to the crop's size (8-bit);
- SSIM on the same shaved crop: Gaussian window sigma 1.5 (truncated at 3.5 sigma), K1 0.01,
  K2 0.03, data range 1, population statistics, mean over channels -- what scikit-image's
  ``structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)`` computes.

``evaluate_folder`` measures every image below a folder (``liif-jax eval``): one that cannot be
read, or is too small for a scale, is reported and the others are measured.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

PROTOCOLS = ("div2k", "benchmark")
LUMA_COEFFS = np.array([65.738, 129.057, 25.064]) / 256


@dataclass
class Record:
    image: str
    scale: float
    psnr: float
    psnr_bicubic: float
    ssim: float
    ssim_bicubic: float

    def as_dict(self):
        return asdict(self)


def lr_hr_pair(hr_u8: np.ndarray, scale: float):
    """(LR uint8, HR crop uint8) exactly as the original's sr-implicit-downsampled wrapper."""
    from PIL import Image

    h, w = hr_u8.shape[:2]
    h_lr, w_lr = math.floor(h / scale + 1e-9), math.floor(w / scale + 1e-9)
    if h_lr < 1 or w_lr < 1:
        from liif_jax.errors import RequestError

        raise RequestError(f"scale {scale:g} is too large for a {w}x{h} image")
    crop = hr_u8[:round(h_lr * scale), :round(w_lr * scale)]
    lr = np.asarray(Image.fromarray(crop).resize((w_lr, h_lr), Image.BICUBIC))
    return lr, crop


def bicubic_up(lr_u8: np.ndarray, out_hw) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(lr_u8).resize((out_hw[1], out_hw[0]), Image.BICUBIC))


def _shave(scale: float, protocol: str) -> int:
    s = int(round(scale))
    return s + 6 if protocol == "div2k" else s


def psnr(pred01: np.ndarray, hr01: np.ndarray, scale: float, protocol: str = "div2k") -> float:
    diff = np.asarray(pred01, np.float64) - np.asarray(hr01, np.float64)
    if protocol == "benchmark":
        diff = diff @ LUMA_COEFFS
    elif protocol != "div2k":
        raise ValueError(f"unknown protocol {protocol!r}")
    shave = _shave(scale, protocol)
    valid = diff[shave:-shave, shave:-shave]
    mse = float(np.mean(valid ** 2))
    return math.inf if mse == 0 else -10 * math.log10(mse)


def ssim(pred01: np.ndarray, hr01: np.ndarray, scale: float, protocol: str = "div2k") -> float:
    from scipy.ndimage import gaussian_filter

    shave = _shave(scale, protocol)
    x = np.asarray(pred01, np.float64)[shave:-shave, shave:-shave]
    y = np.asarray(hr01, np.float64)[shave:-shave, shave:-shave]
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    pad = int(3.5 * 1.5 + 0.5)  # scikit-image crops this border of the SSIM map
    values = []
    for c in range(x.shape[2]):
        a, b = x[..., c], y[..., c]
        f = lambda z: gaussian_filter(z, sigma=1.5, truncate=3.5, mode="reflect")  # noqa: E731
        mu_a, mu_b = f(a), f(b)
        var_a, var_b, cov = f(a * a) - mu_a ** 2, f(b * b) - mu_b ** 2, f(a * b) - mu_a * mu_b
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
        values.append(s[pad:-pad, pad:-pad].mean())
    return float(np.mean(values))


def evaluate_image(name: str, hr_u8: np.ndarray, scale: float, model, protocol: str = "div2k",
                   precision: str = "float32", max_memory=None, tile=None) -> Record:
    from liif_jax import engine

    lr, crop = lr_hr_pair(hr_u8, scale)
    hr01 = crop.astype(np.float32) / np.float32(255)
    settings = engine.RenderSettings(precision=precision, tile=tile,
                                     max_memory=max_memory or None)
    pred = engine.render(model, lr.astype(np.float32) / np.float32(255), crop.shape[:2], settings=settings)
    bic = bicubic_up(lr, crop.shape[:2]).astype(np.float32) / np.float32(255)
    return Record(name, scale, psnr(pred, hr01, scale, protocol), psnr(bic, hr01, scale, protocol),
                  ssim(pred, hr01, scale, protocol), ssim(bic, hr01, scale, protocol))


def format_table(records) -> str:
    lines = ["| image | scale | LIIF PSNR | bicubic PSNR | gain | LIIF SSIM | bicubic SSIM |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r.image} | x{r.scale:g} | {r.psnr:.4f} | {r.psnr_bicubic:.4f} | "
                     f"{r.psnr - r.psnr_bicubic:+.2f} | {r.ssim:.4f} | {r.ssim_bicubic:.4f} |")
    scales = sorted({r.scale for r in records})
    if len({r.image for r in records}) > 1:
        lines.append("")
        lines.append("| mean | " + " | ".join(f"x{s:g}" for s in scales) + " |")
        lines.append("|---|" + "---|" * len(scales))
        for label, key in (("LIIF", "psnr"), ("bicubic", "psnr_bicubic")):
            means = [np.mean([getattr(r, key) for r in records if r.scale == s]) for s in scales]
            lines.append(f"| {label} | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class EvalFailure:
    image: str  # the file, relative to the folder
    scale: float | None  # None: the file itself could not be read
    message: str  # one line

    def __str__(self) -> str:
        where = self.image if self.scale is None else f"{self.image}: x{self.scale:g}"
        return f"{where}: {self.message}"


@dataclass
class FolderEvaluation:
    records: list[Record] = field(default_factory=list)
    failures: list[EvalFailure] = field(default_factory=list)


def eval_images(root) -> list[Path]:
    """The images ``evaluate_folder`` measures: every image below ``root`` (hidden files
    skipped, the order stable). RequestError if ``root`` is not a folder or holds none."""
    from liif_jax.errors import RequestError
    from liif_jax.imageio import find_images

    root = Path(root)
    if not root.is_dir():
        raise RequestError(f"not a folder of images: {root}")
    files = find_images(root)
    if not files:
        raise RequestError(f"no images found in {root}")
    return files


def evaluate_folder(root, scales, model, *, protocol: str = "div2k", precision: str = "float32",
                    files=None, on_error: Callable[[EvalFailure], None] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> FolderEvaluation:
    """``evaluate_image`` for every image below ``root`` (``files``, if given: from
    ``eval_images(root)``) at every scale. Gray images are measured as RGB. A file that cannot
    be read, or a scale too large for an image, is passed to ``on_error`` as it happens and
    listed in the result; the rest is measured. ``progress(done, total)`` counts (image, scale)
    pairs."""
    from liif_jax.errors import LiifError, one_line
    from liif_jax.imageio import read_input, to_uint8

    root = Path(root)
    files = eval_images(root) if files is None else list(files)
    total, done = len(files) * len(scales), 0
    result = FolderEvaluation()

    def fail(rel, scale, exc):
        failure = EvalFailure(str(rel), scale, one_line(exc))
        result.failures.append(failure)
        if on_error is not None:
            on_error(failure)

    for path in files:
        rel = path.relative_to(root)
        try:
            image, _ = read_input(path)
        except LiifError as exc:  # one bad file is reported; the others are measured
            fail(rel, None, exc)
            done += len(scales)
            if progress is not None:
                progress(done, total)
            continue
        rgb = np.repeat(image.pixels[..., None], 3, -1) if image.gray else image.pixels
        hr = to_uint8(rgb)
        for scale in scales:
            try:
                result.records.append(evaluate_image(str(rel), hr, scale, model, protocol=protocol,
                                                     precision=precision))
            except LiifError as exc:  # e.g. a scale too large for this image
                fail(rel, scale, exc)
            done += 1
            if progress is not None:
                progress(done, total)
    return result
