"""Property-based fuzzing of image reading (issue 11, item 16): whatever bytes an input file
holds -- valid PNG (8 and 16 bit), TIFF (8 bit, 16 bit, float, gray + alpha), JPEG, GIF and
BMP files with bytes flipped, inserted, deleted or cut off -- ``read_image`` returns an image
in [0, 1] or raises ``ImageError``, never another exception, and the command line reports it
in one line.

Bounded for CI: a fixed, derandomised set of examples that runs in well under 30 s. For a
release, run a longer, randomised search:

    LIIF_JAX_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/test_fuzz_images.py
"""

import contextlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import TINY
from liif_jax.errors import ImageError
from liif_jax.imageio import ImageMeta, _png16, read_image

LONG_RUN = os.environ.get("LIIF_JAX_FUZZ_EXAMPLES")
EXAMPLES = int(LONG_RUN) if LONG_RUN else 120
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not LONG_RUN,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _pil_bytes(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _tiff_bytes(arr: np.ndarray, **options) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, arr, **options)
    return buffer.getvalue()


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = (rng.random((6, 7, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6
    u16 = (rng.random((6, 7, 3)) * 65535).astype(np.uint16)
    return {
        "png": _pil_bytes(img, "PNG"),
        "png16": _png16(u16, ImageMeta()),
        "png palette": _pil_bytes(img.convert("P"), "PNG", transparency=0),
        "jpeg": _pil_bytes(img, "JPEG", quality=90, exif=exif.tobytes()),
        "gif": _pil_bytes(img, "GIF"),
        "bmp": _pil_bytes(img, "BMP"),
        "tiff": _pil_bytes(img, "TIFF"),
        "tiff16": _tiff_bytes(u16, photometric="rgb"),
        "tiff float rgba": _tiff_bytes(rng.random((6, 7, 4)).astype(np.float32), photometric="rgb",
                                       extrasamples=["unassalpha"]),
        "tiff16 gray alpha": _tiff_bytes(u16[..., :2], photometric="minisblack",
                                         extrasamples=["unassalpha"]),
    }


SEEDS = _seeds()
EXTENSION = {"png": ".png", "png16": ".png", "png palette": ".png", "jpeg": ".jpg", "gif": ".gif",
             "bmp": ".bmp", "tiff": ".tif", "tiff16": ".tif", "tiff float rgba": ".tif",
             "tiff16 gray alpha": ".tif"}

# One edit: (kind, position as a fraction of the length, byte value).
_EDIT = st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "cut"]),
                  st.floats(0, 1, allow_nan=False), st.integers(0, 255))


@st.composite
def mutated(draw):
    """(seed name, bytes): a valid file with 1-6 random edits. Edits near the start (headers,
    chunk lengths, sizes) are drawn as often as anywhere else."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for kind, where, value in draw(st.lists(_EDIT, min_size=1, max_size=6)):
        if draw(st.booleans()):
            where = where * min(1.0, 64 / max(len(data), 1))  # in the header
        i = min(int(where * len(data)), max(len(data) - 1, 0))
        if not data:
            break
        if kind == "flip":
            data[i] ^= 1 << (value % 8)
        elif kind == "set":
            data[i] = value
        elif kind == "insert":
            data[i:i] = bytes([value]) * (1 + value % 4)
        elif kind == "delete":
            del data[i:i + 1 + value % 4]
        else:
            del data[i:]
    return name, bytes(data)


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / f"fuzz{EXTENSION[name]}"
    path.write_bytes(data)
    return path


def test_the_seeds_are_valid_images():
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in SEEDS.items():
            image, _ = read_image(_write(Path(tmp), name, data))
            rotated = name == "jpeg"  # its EXIF orientation 6 turns it a quarter
            assert image.pixels.shape[:2] == ((7, 6) if rotated else (6, 7)), name


@pytest.mark.filterwarnings("ignore")  # decoders may warn about what they skip; not a failure
@FUZZ
@given(mutated())
def test_mutated_files_give_an_image_or_an_image_error(case):
    name, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), name, data)
        try:
            image, meta = read_image(path)
        except ImageError as exc:
            assert "\n" not in str(exc).strip()
            return
    pixels = image.pixels
    assert pixels.dtype == np.float32 and pixels.ndim in (2, 3) and min(pixels.shape[:2]) >= 1
    assert np.all(np.isfinite(pixels)) and pixels.min() >= 0 and pixels.max() <= 1
    if image.alpha is not None:
        assert image.alpha.shape == pixels.shape[:2]
    assert meta.bits in (8, 16, 32)


@settings(FUZZ, max_examples=max(EXAMPLES // 10, 8))
@given(mutated())
def test_mutated_files_are_one_line_at_the_command_line(case):
    from liif_jax.cli import main

    name, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), name, data)
        out = Path(tmp) / "out.png"
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = main(["upscale", str(path), str(out), "--scale", "1", "-q",
                         "--weights", str(TINY / "tiny-liif.pth")])
        lines = stderr.getvalue().splitlines()
        if code == 0:  # a damaged file that still decodes may come with warnings about it
            assert out.is_file() and all(line.startswith("liif-jax: warning: ") for line in lines), lines
        else:  # a refused one: exactly one line, whatever the decoders said on the way
            assert code == 1 and not out.exists()
            assert len(lines) == 1 and lines[0].startswith("liif-jax: error: "), lines
            assert "internal error" not in lines[0]
