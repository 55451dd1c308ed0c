"""The public API: ``upscale`` and the size arithmetic every front end shares."""

from __future__ import annotations

import math
import os
from fractions import Fraction
import threading
from typing import TYPE_CHECKING, Callable

import numpy as np

from liif_jax.errors import RequestError
from liif_jax.imageio import LUMA, FloatImage, as_float_image

if TYPE_CHECKING:
    from numpy.typing import DTypeLike
    from PIL import Image

    from liif_jax.weights import LiifModel

# Refuse outputs larger than this many pixels unless the caller raises the limit: a typo such
# as --scale 400 should fail in a second, not exhaust memory after minutes.
DEFAULT_MAX_PIXELS = 100_000_000
# Pixels per side of the full render a --region is placed in: float32 pixel-centre
# coordinates in [-1, 1] stay distinct up to 2**24 of them.
MAX_AXIS = 2 ** 24

_default_model = None
_default_lock = threading.Lock()


def default_model() -> LiifModel:
    """The bundled EDSR-baseline-LIIF, loaded once per process on first use."""
    global _default_model
    with _default_lock:
        if _default_model is None:
            from liif_jax.weights import load_model

            _default_model = load_model()
        return _default_model


def _positive_finite(value: object, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise RequestError(f"{name} must be a finite number > 0, got {value}")
    return value


def scaled_length(n: float, scale: float) -> int:
    """Output length of an axis of ``n`` pixels at ``scale``: floor(n * s + 0.5), at least 1."""
    return max(1, int(math.floor(n * scale + 0.5)))


def aspect_length(n: float, new_other: int, old_other: float) -> int:
    """Length of an axis of ``n`` pixels when the other axis goes from ``old_other`` to
    ``new_other`` pixels: n * new_other / old_other rounded half up, at least 1. Computed on
    exact fractions (n and old_other may be a region's fractional size), so the GIMP client's
    integer formula gives the same pixels for every image (a test compares them)."""
    exact = Fraction(n) * int(new_other) / Fraction(old_other)
    return max(1, math.floor(exact + Fraction(1, 2)))


def output_size(in_hw: tuple[float, float], *, scale: float | tuple[float, float] | None = None,
                size: tuple[int, int] | None = None, width: int | None = None,
                height: int | None = None) -> tuple[int, int]:
    """The output (H, W) for an input of (h, w) pixels.

    Exactly one way of asking: ``scale`` (s or (sx, sy)); ``size`` = (width, height); or
    ``width`` and/or ``height`` (one side alone keeps the aspect ratio, rounded to nearest).
    (h, w) may be fractional (a region's size): it is never truncated before scaling.
    """
    h, w = in_hw[0], in_hw[1]
    given = [x is not None for x in (scale, size)] + [width is not None or height is not None]
    if sum(given) != 1:
        raise RequestError("give exactly one of scale, size, or width/height")
    if scale is not None:
        if isinstance(scale, (tuple, list)):
            if len(scale) != 2:
                raise RequestError(f"scale must be one number or a pair (sx, sy), got {scale!r}")
            sx, sy = (_positive_finite(s, "scale") for s in scale)
        else:
            sx = sy = _positive_finite(scale, "scale")
        return scaled_length(h, sy), scaled_length(w, sx)
    if size is not None:
        if not isinstance(size, (tuple, list)) or len(size) != 2:
            raise RequestError(f"size must be (width, height), got {size!r}")
        width, height = size
        return _whole(height, "height"), _whole(width, "width")
    if width is not None and height is not None:
        return _whole(height, "height"), _whole(width, "width")
    if width is not None:
        width = _whole(width, "width")
        return aspect_length(h, width, w), width
    height = _whole(height, "height")
    return height, aspect_length(w, height, h)


def _whole(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise RequestError(f"{name} must be a whole number of pixels, got {value!r}")
    if value < 1:
        raise RequestError(f"{name} must be at least 1 pixel, got {value}")
    return int(value)


def check_pixel_limit(out_hw: tuple[int, int], max_pixels: int | None) -> None:
    """Refuse (RequestError) an output of more than ``max_pixels`` pixels (None or 0: no limit)."""
    if max_pixels and out_hw[0] * out_hw[1] > max_pixels:
        raise RequestError(
            f"output {out_hw[1]}x{out_hw[0]} has {out_hw[0] * out_hw[1]:,} pixels, over the "
            f"limit of {max_pixels:,} (raise it with --max-pixels / max_pixels=, 0 = no limit)"
        )


def parse_region(region: tuple[float, float, float, float] | None,
                 in_hw: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """Validate ``region`` = (x, y, w, h) in input pixels (fractional allowed)."""
    if region is None:
        return None
    if not isinstance(region, (tuple, list)) or len(region) != 4:
        raise RequestError(f"region must be (x, y, width, height), got {region!r}")
    try:
        x, y, w, h = (float(v) for v in region)
    except (TypeError, ValueError):
        raise RequestError(f"region values must be numbers, got {region!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise RequestError(f"region needs finite x, y and a width and height > 0, got {region!r}")
    in_h, in_w = in_hw
    eps = 1e-9
    if x < -eps or y < -eps or x + w > in_w + eps or y + h > in_h + eps:
        raise RequestError(f"region {x:g},{y:g},{w:g},{h:g} is outside the {in_w}x{in_h} image")
    return x, y, w, h


def plan_output(in_hw: tuple[int, int], *, scale: float | tuple[float, float] | None = None,
                size: tuple[int, int] | None = None, width: int | None = None, height: int | None = None,
                region: tuple[float, float, float, float] | None = None,
                ) -> tuple[tuple[int, int], tuple[tuple[float, float], tuple[float, float]]]:
    """Output (H, W) and the render window for a request.

    Without ``region`` the window is the whole image. With it, only the region is rendered,
    with the coordinates and cell of the full render: for a scale, the output is
    round(w * sx) x round(h * sy) pixels on the full render's pixel grid (so it equals the
    matching crop of the full render when x*sx, y*sy, w*sx, h*sy are whole numbers); for a
    size (or width/height), that many pixels are spread over the region.
    Returns (out_hw, window) with window = ((row_start, full_h), (col_start, full_w)).
    """
    region = parse_region(region, in_hw)
    if region is None:
        out_hw = output_size(in_hw, scale=scale, size=size, width=width, height=height)
        return out_hw, ((0, out_hw[0]), (0, out_hw[1]))
    x, y, w, h = region
    in_h, in_w = in_hw
    out_hw = output_size((h, w), scale=scale, size=size, width=width, height=height)
    if scale is not None:
        full_h, full_w = output_size(in_hw, scale=scale)
        # output_size gives any axis at least one pixel; a region must earn its pixels, or
        # one output pixel would stand for a sliver the render's grid cannot place.
        exact_h, exact_w = h * full_h / in_h, w * full_w / in_w
        if not (exact_h >= 0.5 and exact_w >= 0.5):
            raise RequestError(f"region {x:g},{y:g},{w:g},{h:g} gives less than one output pixel "
                               f"at this scale ({exact_w:.3g}x{exact_h:.3g}); make it larger")
    else:  # the requested pixels cover the region exactly
        full_h, full_w = out_hw[0] * in_h / h, out_hw[1] * in_w / w
    window = ((y * full_h / in_h, full_h), (x * full_w / in_w, full_w))
    # The render computes pixel centres in float32 from these numbers: a sliver of a region
    # (subnormal sizes) would make them infinite or NaN, and past 2**24 pixels per axis float32
    # cannot tell neighbouring pixels apart.
    if not all(math.isfinite(v) for axis in window for v in axis) or max(full_h, full_w) > MAX_AXIS:
        raise RequestError(f"region {x:g},{y:g},{w:g},{h:g} is too small for this output: the full "
                           f"render it is part of would be over {MAX_AXIS:,} pixels per side")
    return out_hw, window


def upscale(image: np.ndarray | Image.Image | str | os.PathLike[str], *,
            scale: float | tuple[float, float] | None = None, size: tuple[int, int] | None = None,
            model: LiifModel | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
            progress: Callable[[int, int], bool | None] | None = None,
            region: tuple[float, float, float, float] | None = None, tile: int | None = None,
            max_memory: int | None = None, precision: str | None = None,
            dtype: DTypeLike = np.float32) -> np.ndarray:
    """Upscale (or resample to any size) an image with LIIF.

    ``image``: a uint8/uint16/float array ((h, w) gray or (h, w, 3) RGB; float in [0, 1]), a
    PIL image (its EXIF orientation applied, as when the CLI reads a file), or the path of an
    image file (str or os.PathLike), read exactly as the CLI reads it (``imageio.read_input``:
    EXIF orientation applied, 16-bit files at full precision; a missing or bad file is an
    ``ImageError`` with a one-line message). Give ``scale`` (s, or a pair (sx, sy)) or
    ``size`` = (width, height); a scale gives floor(n * s + 0.5) pixels per axis, at least 1.
    ``model``: from ``load_model()`` (default: the bundled EDSR-baseline-LIIF).

    Options (each is also a CLI flag):
    ``region`` (x, y, w, h) in input pixels: render only that window of the full result
    (see ``plan_output``); ``tile``: input pixels per tile side (default: from
    ``max_memory``, bytes: host memory on CPU, default 2 GiB; device memory on GPU/TPU, default
    3/4 of the device's, at most 16 GiB); ``precision``: "float32" (default on CPU) or
    "bfloat16" (default on GPU/TPU); ``dtype``: np.float32 or np.uint8 (rounded to nearest,
    assembled tile by tile); ``max_pixels``: refuse bigger outputs (None or 0: no limit);
    ``progress(done, total)``: called as output pixels finish; return False to cancel.

    Returns (H, W, 3) in [0, 1] (or uint8) for RGB input; a gray input stays gray ((H, W), or
    (H, W, 1) for an (h, w, 1) array) -- the model runs on it replicated to RGB and its output
    is converted back with BT.601 luma. Alpha is kept ((H, W, 4) for RGBA, (H, W, 2) for gray +
    alpha): see ``upscale_alpha`` for the method.
    """
    from liif_jax import engine

    img = _as_image(image)
    out_hw, window = plan_output(img.pixels.shape[:2], scale=scale, size=size, region=region)
    check_pixel_limit(out_hw, max_pixels)
    model = model if model is not None else default_model()
    engine.enable_compilation_cache()
    settings = engine.RenderSettings(
        precision=precision or engine.default_precision(), tile=tile,
        max_memory=None if max_memory is None else int(max_memory))  # None: the backend's
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.uint8):
        raise RequestError(f"dtype must be float32 or uint8, got {dtype}")
    colour = img.pixels
    has_alpha = img.alpha is not None and bool(np.any(img.alpha < 1))
    if has_alpha:
        colour = bleed_colour(colour, img.alpha)
    elif _is_integer_rgb(image):
        colour = image  # the engine converts 8/16-bit codes on the device: 1/4 or 1/2 the bytes
    total = out_hw[0] * out_hw[1] * (2 if has_alpha else 1)

    def render(pixels01, gray, offset):
        """One LIIF pass over a colour or gray plane; gray runs as replicated RGB."""
        rgb = np.repeat(pixels01[..., None], 3, axis=-1) if gray else pixels01
        report = None if progress is None else (lambda done, _t: progress(offset + done, total))
        out = engine.render(model, rgb, out_hw, settings=settings, window=window,
                            out_dtype=np.float32 if (gray or dtype != np.uint8) else dtype,
                            progress=report)
        return np.clip(out @ LUMA, 0.0, 1.0).astype(np.float32) if gray else out

    out = render(colour, img.gray, 0)
    planes = [out] if not img.gray else [out[..., None]]
    if img.alpha is not None:
        alpha = render(img.alpha, True, out_hw[0] * out_hw[1]) if has_alpha else \
            np.ones(out_hw, np.float32)
        planes.append(alpha[..., None])
    if dtype == np.uint8:
        from liif_jax.imageio import to_uint8

        planes = [to_uint8(p) for p in planes]
    out = np.concatenate(planes, axis=-1) if len(planes) > 1 else planes[0]
    if img.gray and img.alpha is None and not img.keep_channel_axis:
        out = out[..., 0]
    return out


def _as_image(image: object) -> FloatImage:
    """``upscale``'s input as a FloatImage. A path is read as the CLI reads a file; a PIL image
    gets the EXIF orientation that reading its file would have applied (Pillow's
    ``exif_transpose``, the function ``imageio`` reads files with)."""
    if isinstance(image, (str, os.PathLike)):
        from liif_jax.imageio import read_input

        return read_input(image)[0]
    try:
        from PIL import Image, ImageOps
    except ImportError:  # pragma: no cover - Pillow is a core dependency
        return as_float_image(image)
    if isinstance(image, Image.Image):
        from liif_jax.imageio import _orientation

        if _orientation(image) != 1:
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:  # noqa: BLE001 - a damaged EXIF block must not stop an upscale (as on read)
                pass
    return as_float_image(image)


def _is_integer_rgb(image: object) -> bool:
    return (isinstance(image, np.ndarray) and image.dtype.kind == "u" and image.dtype.itemsize <= 2
            and image.ndim == 3 and image.shape[2] == 3)


def bleed_colour(colour: np.ndarray, alpha: np.ndarray, dilate_steps: int = 8) -> np.ndarray:
    """Give fully transparent pixels the colour of their visible surroundings.

    Why: LIIF blends neighbouring pixels' colours; a transparent pixel's colour is usually
    meaningless (often black), and blending it in would darken every upscaled edge (dark
    fringes). So before the colour pass, each pixel with alpha 0 takes a colour from the
    visible pixels around it: ``dilate_steps`` rounds of "take the alpha-weighted mean of your
    known 8 neighbours" (so pixels near an edge get that edge's colour), then a push-pull
    pyramid (sums of 2x2 blocks down, filled colours back up) fills whatever is farther.
    Pixels with any alpha keep their colour exactly. Alpha itself is upscaled by its own LIIF
    pass as a gray image; colour and alpha stay straight (not premultiplied), as GIMP and PNG
    store them.
    """
    colour = np.asarray(colour, np.float32)
    gray = colour.ndim == 2
    col = colour[..., None] if gray else colour
    weight = np.asarray(alpha, np.float32).copy()
    known = weight > 0
    if not known.any():
        return np.zeros_like(colour)
    col = np.where(known[..., None], col, 0).astype(np.float32)
    for _ in range(dilate_steps):
        if known.all():
            break
        w = np.pad(weight * known, 1)
        c = np.pad(col * (weight * known)[..., None], ((1, 1), (1, 1), (0, 0)))
        h, wd = known.shape
        num = sum(c[dy:dy + h, dx:dx + wd] for dy in range(3) for dx in range(3))
        den = sum(w[dy:dy + h, dx:dx + wd] for dy in range(3) for dx in range(3))
        new = ~known & (den > 0)
        col[new] = num[new] / den[new][:, None]
        weight[new] = 1.0
        known |= new
    if not known.all():
        levels, c, a = [], col * (weight * known)[..., None], weight * known
        while True:
            levels.append((c, a))
            if max(a.shape) == 1:
                break
            c, a = _sum_2x2(c), _sum_2x2(a)
        filled = None
        for c, a in reversed(levels):
            own = c / np.maximum(a, 1e-12)[..., None]
            if filled is not None:
                up = np.repeat(np.repeat(filled, 2, axis=0), 2, axis=1)[:a.shape[0], :a.shape[1]]
                own = np.where((a > 0)[..., None], own, up)
            filled = own
        col = np.where(known[..., None], col, filled)
    visible = (np.asarray(alpha) > 0)[..., None]
    out = np.where(visible, colour[..., None] if gray else colour, col).astype(np.float32)
    return out[..., 0] if gray else out


def _sum_2x2(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[:2]
    x = np.pad(x, ((0, h % 2), (0, w % 2)) + ((0, 0),) * (x.ndim - 2))
    return x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]
