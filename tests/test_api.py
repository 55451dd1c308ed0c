"""liif_jax.upscale and the size arithmetic shared by every front end."""

import numpy as np
import pytest
from PIL import Image

import liif_jax
from conftest import DEV
from liif_jax.api import output_size
from liif_jax.errors import ImageError, RequestError


def test_import_is_cheap_and_lazy():
    import subprocess
    import sys

    code = "import sys, liif_jax; print('jax' in sys.modules, liif_jax.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", liif_jax.__version__]


@pytest.mark.parametrize("in_hw,kwargs,expected", [
    ((40, 24), dict(scale=2.5), (100, 60)),
    ((40, 24), dict(scale=(2, 3)), (120, 48)),          # (sx, sy): x is width
    ((5, 3), dict(scale=0.5), (3, 2)),                  # floor(n*s + 0.5): 2.5 -> 3, 1.5 -> 2
    ((1, 1), dict(scale=0.1), (1, 1)),                  # at least 1
    ((40, 24), dict(size=(61, 97)), (97, 61)),          # size is (width, height)
    ((40, 24), dict(width=61), (102, 61)),              # 40 * 61/24 = 101.67 -> 102
    ((40, 24), dict(height=100), (100, 60)),
    ((40, 24), dict(width=10, height=7), (7, 10)),
])
def test_output_size(in_hw, kwargs, expected):
    assert output_size(in_hw, **kwargs) == expected


@pytest.mark.parametrize("kwargs,message", [
    (dict(scale=0), "finite number > 0"),
    (dict(scale=-2), "finite number > 0"),
    (dict(scale=float("nan")), "finite number > 0"),
    (dict(scale=float("inf")), "finite number > 0"),
    (dict(scale="x"), "must be a number"),
    (dict(scale=(1, 2, 3)), "pair"),
    (dict(), "exactly one"),
    (dict(scale=2, size=(4, 4)), "exactly one"),
    (dict(size=(0, 4)), "at least 1"),
    (dict(width=2.5), "whole number"),
])
def test_output_size_refuses_absurd_requests(kwargs, message):
    with pytest.raises(RequestError, match=message):
        output_size((10, 10), **kwargs)


def _coffee_u8():
    return np.asarray(Image.open(DEV / "in_coffee_40x24.png").convert("RGB"))


def test_upscale_matches_golden_and_accepts_every_input_kind(real_model):
    u8 = _coffee_u8()
    ref = np.load(DEV / "coffee_40x24_to_97x61.npy")
    out = liif_jax.upscale(u8, size=(61, 97), model=real_model)
    assert out.dtype == np.float32 and out.shape == (97, 61, 3)
    assert out.min() >= 0 and out.max() <= 1
    assert np.abs(out - ref).max() <= 1e-4
    as_float = liif_jax.upscale(u8.astype(np.float32) / 255, size=(61, 97), model=real_model)
    as_u16 = liif_jax.upscale(u8.astype(np.uint16) * 257, size=(61, 97), model=real_model)
    as_pil = liif_jax.upscale(Image.fromarray(u8), size=(61, 97), model=real_model)
    for other in (as_float, as_u16, as_pil):
        assert np.abs(other - out).max() <= 1e-6


def test_default_model_is_the_bundled_one(real_model):
    u8 = _coffee_u8()[:8, :8]
    assert np.array_equal(liif_jax.upscale(u8, scale=2), liif_jax.upscale(u8, scale=2, model=real_model))


def test_gray_stays_gray(tiny_model):
    rgb = _coffee_u8()
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    out2d = liif_jax.upscale(gray, scale=2, model=tiny_model)
    assert out2d.shape == (80, 48) and out2d.dtype == np.float32
    replicated = liif_jax.upscale(np.repeat(gray[..., None], 3, -1), scale=2, model=tiny_model)
    luma = replicated @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.abs(out2d - np.clip(luma, 0, 1)).max() <= 1e-6
    out3d = liif_jax.upscale(gray[..., None], scale=2, model=tiny_model)
    assert out3d.shape == (80, 48, 1)
    pil = liif_jax.upscale(Image.fromarray(gray), scale=2, model=tiny_model)
    assert pil.shape == (80, 48)


def test_alpha_is_kept_and_opaque_alpha_costs_nothing(tiny_model, real_model):
    rgb = _coffee_u8()
    opaque = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=-1)
    out = liif_jax.upscale(opaque, scale=1.5, model=tiny_model)
    assert out.shape == (60, 36, 4)
    assert np.array_equal(out[..., :3], liif_jax.upscale(rgb, scale=1.5, model=tiny_model))
    assert np.all(out[..., 3] == 1)
    gray_alpha = np.stack([rgb[..., 0], np.full(rgb.shape[:2], 128, np.uint8)], axis=-1)
    out2 = liif_jax.upscale(gray_alpha, scale=2, model=real_model)
    assert out2.shape == (80, 48, 2)
    assert np.allclose(out2[..., 1], 128 / 255, atol=2 / 255)  # a flat alpha stays flat


def test_transparent_black_gives_no_dark_fringes(real_model):
    """A red disc on fully transparent *black*: the upscaled edge must stay red, not darken."""
    yy, xx = np.mgrid[0:32, 0:32]
    inside = (yy - 15.5) ** 2 + (xx - 15.5) ** 2 <= 10 ** 2
    rgba = np.zeros((32, 32, 4), np.float32)
    rgba[inside] = [0.9, 0.1, 0.1, 1.0]
    out = liif_jax.upscale(rgba, scale=3, model=real_model)
    alpha = out[..., 3]
    edge = (alpha > 0.1) & (alpha < 0.9)
    assert edge.sum() > 50  # there is an antialiased edge to look at
    visible = alpha > 0.1
    assert out[..., 0][visible].min() > 0.8  # red stays red where it can be seen
    assert out[..., 1][visible].max() < 0.2
    # The naive way (upscale RGB with its black background) does darken the same edge.
    naive = liif_jax.upscale(rgba[..., :3], scale=3, model=real_model)
    assert naive[..., 0][edge].min() < 0.6


def test_bleed_colour_fills_only_transparent_pixels():
    from liif_jax.api import bleed_colour

    colour = np.zeros((5, 7, 3), np.float32)
    alpha = np.zeros((5, 7), np.float32)
    colour[1, 1] = [0.2, 0.4, 0.6]
    alpha[1, 1] = 0.5
    colour[3, 5] = [1.0, 1.0, 0.0]
    alpha[3, 5] = 1.0
    filled = bleed_colour(colour, alpha)
    assert np.array_equal(filled[1, 1], colour[1, 1]) and np.array_equal(filled[3, 5], colour[3, 5])
    assert np.allclose(filled[0, 0], [0.2, 0.4, 0.6])  # nearest visible colour
    assert np.allclose(filled[4, 6], [1.0, 1.0, 0.0])
    assert np.all(np.isfinite(filled))
    assert np.array_equal(bleed_colour(colour, np.zeros_like(alpha)), np.zeros_like(colour))


@pytest.mark.parametrize("image,message", [
    (np.zeros((0, 5, 3), np.uint8), "no pixels"),
    (np.zeros((4, 4, 5), np.uint8), "shape"),
    (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
    (np.zeros((4, 4, 3), np.int64), "dtype"),
])
def test_bad_images_are_refused(image, message):
    with pytest.raises(ImageError, match=message):
        liif_jax.upscale(image, scale=2)


def test_pixel_limit(tiny_model):
    with pytest.raises(RequestError, match="over the limit of 100"):
        liif_jax.upscale(np.zeros((4, 4, 3), np.uint8), scale=3, model=tiny_model, max_pixels=100)
    out = liif_jax.upscale(np.zeros((4, 4, 3), np.uint8), scale=3, model=tiny_model, max_pixels=None)
    assert out.shape == (12, 12, 3)


# ---------------------------------------------------------------- files and EXIF, as the CLI reads them

def _rotated_jpeg(path):
    """A 12x8 JPEG whose EXIF says: rotate 90 degrees clockwise to display (orientation 6)."""
    pixels = np.random.default_rng(3).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())
    return path


def test_a_pil_image_gets_its_exif_orientation_as_the_cli_does(tiny_model, tmp_path, capsys):
    from conftest import TINY, run_cli

    src = _rotated_jpeg(tmp_path / "rotated.jpg")
    code, _, err = run_cli(capsys, "upscale", src, tmp_path / "cli.npy", "--scale", "2",
                           "--weights", TINY / "tiny-liif.pth", "--quiet")
    assert code == 0, err
    cli = np.load(tmp_path / "cli.npy")
    with Image.open(src) as img:
        assert img.size == (12, 8)  # stored landscape, displayed portrait
        out = liif_jax.upscale(img, scale=2, model=tiny_model)
    assert out.shape == cli.shape == (24, 16, 3)
    assert np.array_equal(out, cli)


def test_a_path_is_read_as_the_cli_reads_it(tiny_model, tmp_path):
    from pathlib import Path

    from liif_jax.imageio import read_input

    src = _rotated_jpeg(tmp_path / "rotated.jpg")
    loaded, _ = read_input(src)
    expected = liif_jax.upscale(loaded.pixels, scale=2, model=tiny_model)
    for given in (str(src), Path(src)):
        out = liif_jax.upscale(given, scale=2, model=tiny_model)
        assert out.shape == (24, 16, 3) and np.array_equal(out, expected)
    # a 16-bit RGB file keeps its precision, as in the CLI (Pillow alone would cut it to 8 bits)
    import png

    deep = tmp_path / "deep.png"
    u16 = np.random.default_rng(4).integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    png.from_array(u16.reshape(6, 15), "RGB;16").save(str(deep))
    out = liif_jax.upscale(deep, scale=2, model=tiny_model)
    assert np.array_equal(out, liif_jax.upscale(u16, scale=2, model=tiny_model))


def test_a_missing_path_is_a_one_line_image_error(tmp_path):
    with pytest.raises(ImageError) as info:
        liif_jax.upscale(tmp_path / "nowhere.png", scale=2)
    assert "input not found" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ImageError, match="folder"):
        liif_jax.upscale(str(tmp_path), scale=2)


def test_the_public_api_has_type_hints():
    import inspect
    import typing

    from liif_jax import api

    # api's public functions and every function the package exports at its top level
    functions = [getattr(api, name) for name in ("upscale", "output_size", "plan_output", "parse_region",
                                                 "check_pixel_limit", "scaled_length", "aspect_length",
                                                 "default_model", "bleed_colour")]
    functions += [f for f in (getattr(liif_jax, name) for name in liif_jax.__all__) if inspect.isfunction(f)]
    assert {f.__name__ for f in functions} >= {"load_model", "save_weights", "make_coord", "make_cell",
                                               "query_geometry"}
    for function in functions:
        signature = inspect.signature(function)
        missing = [p for p, v in signature.parameters.items() if v.annotation is inspect.Parameter.empty]
        assert not missing and signature.return_annotation is not inspect.Signature.empty, (function, missing)
    hints = typing.get_type_hints(api.upscale, localns={"LiifModel": object, "DTypeLike": object,
                                                        "Image": __import__("PIL.Image").Image})
    assert "image" in hints and hints["return"] is np.ndarray
