"""Hostile and unusual inputs (issue 11, items 5, 6, 10, 11): decoder errors, non-regular
files, region geometry, byte orders, TIFF kinds Pillow cannot read, folder outputs and
collisions, the shared image finder, .npy values, and what compare / upscale print."""

import os
import shutil
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DEV, TINY, run_cli
from liif_jax.cli import main
from liif_jax.errors import ImageError, RequestError

COFFEE = DEV / "in_coffee_40x24.png"  # 24 wide x 40 tall
TINY_W = ["--weights", str(TINY / "tiny-liif.pth")]


def run(capsys, *args):
    return run_cli(capsys, *args)


def one_error_line(err: str, message: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("liif-jax") and "error" in lines[0] and message in lines[0], lines[0]
    assert "Traceback" not in err and "internal error" not in err
    return lines[0]


def png16_with_bad_crc(path: Path) -> None:
    from liif_jax.imageio import ImageMeta, _png16

    arr = (np.arange(8 * 8 * 3).reshape(8, 8, 3) * 300).astype(np.uint16)
    data = bytearray(_png16(arr, ImageMeta()))
    iend = data.rfind(b"IEND")
    data[iend - 5] ^= 0xFF  # the last byte of IDAT's CRC
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- item 5: decoder errors

def test_16bit_png_with_a_bad_crc_is_an_image_error(tmp_path):
    from liif_jax.imageio import read_image

    png16_with_bad_crc(tmp_path / "bad16.png")
    with pytest.raises(ImageError, match="damaged or truncated"):
        read_image(tmp_path / "bad16.png")


def test_a_bad_16bit_png_does_not_stop_a_folder_run(tmp_path, capsys):
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(COFFEE, src / "good.png")
    png16_with_bad_crc(src / "bad16.png")
    code, out, err = run(capsys, "upscale", src, dst, "--scale", "2", *TINY_W, "-q")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("liif-jax: error: bad16.png: input 'bad16.png' is damaged or truncated")
    assert out.startswith("1 upscaled, 0 skipped") and out.rstrip().endswith("1 failed")
    assert sorted(p.name for p in dst.iterdir()) == ["good.png"]


# ---------------------------------------------------------------- item 6: options and files

@pytest.mark.parametrize("value", ["inf", "nan", "-1GB", "1e400", "1e400GB", "garbage", "0"])
def test_max_memory_values_are_one_line_errors(tmp_path, capsys, value):
    code, _, err = run(capsys, "upscale", COFFEE, tmp_path / "o.png", "--scale", "2",
                       "--max-memory", value)
    assert code == 2
    one_error_line(err, "--max-memory")
    assert not (tmp_path / "o.png").exists()


class Blocked(BaseException):
    """Not an Exception: no ``except Exception`` on the way may swallow it."""


def _within(seconds, fn, *args):
    """fn(*args), or Blocked if it blocks longer (today's code blocks in open() on a FIFO:
    the test must fail, not hang)."""
    def too_slow(*_):
        raise Blocked(f"{fn.__name__} blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(seconds)
    try:
        return fn(*args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_input_is_refused_at_once(tmp_path, capsys):
    from liif_jax.imageio import header_size, read_image

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    # (the bounds only turn a hang into a failure)
    code, _, err = _within(60, run, capsys, "upscale", fifo, tmp_path / "o.png", "--scale", "2", *TINY_W)
    assert code == 1
    one_error_line(err, "input 'pipe.png' is not a regular file")
    assert not (tmp_path / "o.png").exists()
    with pytest.raises(ImageError, match="not a regular file"):
        _within(60, read_image, fifo)
    assert _within(60, header_size, fifo) is None


def test_fractional_region_sizes_are_rounded_not_truncated():
    from liif_jax.api import plan_output

    out_hw, window = plan_output((40, 24), scale=2, region=(0, 0, 10.5, 7))
    assert out_hw == (14, 21)
    assert window == ((0.0, 80), (0.0, 48))
    # A size spread over a fractional region keeps the region's own aspect ratio.
    out_hw, _ = plan_output((40, 24), width=21, region=(0, 0, 10.5, 7))
    assert out_hw == (14, 21)


def test_fractional_region_through_the_cli(tmp_path, capsys):
    code, _, err = run(capsys, "upscale", COFFEE, tmp_path / "o.npy", "--scale", "2",
                       "--region", "0,0,10.5,7", *TINY_W, "-q")
    assert code == 0, err
    assert np.load(tmp_path / "o.npy").shape == (14, 21, 3)


@pytest.mark.parametrize("region,kwargs,message", [
    ((0, 0, 5e-324, 7), {"scale": 2}, "less than one output pixel"),
    ((0, 0, 0.2, 7), {"scale": 2}, "less than one output pixel"),
    ((0, 0, 5e-324, 7), {"size": (10, 10)}, "too small"),
    ((1e-320, 0, 1e-300, 7), {"width": 10}, "too small"),
    ((0, 0, 24, 40), {"size": (2, 2)}, None),  # a big region at a tiny size is fine
])
def test_region_values_that_break_the_geometry_are_refused(region, kwargs, message):
    from liif_jax.api import plan_output

    if message is None:
        out_hw, window = plan_output((40, 24), region=region, **kwargs)
        assert out_hw == (2, 2)
        return
    with pytest.raises(RequestError, match=message):
        plan_output((40, 24), region=region, **kwargs)


def test_subnormal_region_is_a_one_line_cli_error(tmp_path, capsys):
    code, _, err = run(capsys, "upscale", COFFEE, tmp_path / "o.png", "--size", "10x10",
                       "--region", "0,0,5e-324,7")
    assert code == 2
    one_error_line(err, "region")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("dtype", ["u2", "f4", "f8"])
def test_both_byte_orders_are_accepted_alike(dtype):
    from liif_jax.imageio import from_array

    rng = np.random.default_rng(0)
    native = (rng.random((5, 6, 3)) * (65535 if dtype == "u2" else 1)).astype("=" + dtype)
    expected = from_array(native).pixels
    for order in "<>":
        got = from_array(native.astype(order + dtype)).pixels
        assert got.dtype == np.float32 and np.array_equal(got, expected), order


def test_big_endian_uint16_through_upscale(tiny_model):
    import liif_jax

    arr = (np.random.default_rng(1).random((6, 5, 3)) * 65535).astype(np.uint16)
    a = liif_jax.upscale(arr, scale=2, model=tiny_model)
    b = liif_jax.upscale(arr.astype(">u2"), scale=2, model=tiny_model)
    assert np.array_equal(a, b)


def _tiff(path, arr, **kwargs):
    import tifffile

    tifffile.imwrite(path, arr, **kwargs)


@pytest.mark.parametrize("kind", ["float rgb", "float rgba", "u16 gray+alpha", "float gray+alpha",
                                  "u16 rgb planar"])
def test_tiff_kinds_pillow_cannot_read_are_read_with_tifffile(tmp_path, kind):
    from liif_jax.imageio import read_image

    rng = np.random.default_rng(2)
    path = tmp_path / "in.tif"
    if kind == "float rgb":
        arr = rng.random((7, 9, 3)).astype(np.float32)
        _tiff(path, arr, photometric="rgb")
        colour, alpha, bits = arr, None, 32
    elif kind == "float rgba":
        arr = rng.random((7, 9, 4)).astype(np.float32)
        _tiff(path, arr, photometric="rgb", extrasamples=["unassalpha"])
        colour, alpha, bits = arr[..., :3], arr[..., 3], 32
    elif kind == "u16 gray+alpha":
        arr = (rng.random((7, 9, 2)) * 65535).astype(np.uint16)
        _tiff(path, arr, photometric="minisblack", extrasamples=["unassalpha"])
        colour, alpha, bits = arr[..., 0] / 65535, arr[..., 1] / 65535, 16
    elif kind == "float gray+alpha":
        arr = rng.random((7, 9, 2)).astype(np.float32)
        _tiff(path, arr, photometric="minisblack", extrasamples=["unassalpha"])
        colour, alpha, bits = arr[..., 0], arr[..., 1], 32
    else:
        arr = (rng.random((3, 7, 9)) * 65535).astype(np.uint16)
        _tiff(path, arr, photometric="rgb", planarconfig="separate")
        colour, alpha, bits = np.moveaxis(arr, 0, -1) / 65535, None, 16
    image, meta = read_image(path)
    assert meta.bits == bits
    assert image.pixels.shape == colour.shape and image.gray == (colour.ndim == 2)
    assert np.abs(image.pixels - colour).max() <= 1e-6
    if alpha is None:
        assert image.alpha is None
    else:
        assert np.abs(image.alpha - alpha).max() <= 1e-6


def test_float_rgba_tiff_upscales_to_a_float_tiff(tmp_path, capsys):
    import tifffile

    arr = np.random.default_rng(3).random((10, 8, 4)).astype(np.float32)
    _tiff(tmp_path / "in.tif", arr, photometric="rgb", extrasamples=["unassalpha"])
    code, _, err = run(capsys, "upscale", tmp_path / "in.tif", tmp_path / "o.tif", "--scale", "2",
                       *TINY_W, "-q")
    assert code == 0, err
    out = tifffile.imread(tmp_path / "o.tif")
    assert out.dtype == np.float32 and out.shape == (20, 16, 4)


# ---------------------------------------------------------------- item 10: folders, finder, eval

def test_folder_inputs_in_formats_we_cannot_write_become_png(tmp_path, capsys):
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    base = Image.open(COFFEE).convert("RGB")
    base.save(src / "a.bmp")
    base.save(src / "b.gif")
    base.save(src / "c.ppm")
    base.save(src / "d.tga")
    base.save(src / "e.jpg", quality=95)
    code, out, err = run(capsys, "upscale", src, dst, "--scale", "2", *TINY_W, "-q")
    assert code == 0, err
    assert sorted(p.name for p in dst.iterdir()) == ["a.png", "b.png", "c.png", "d.png", "e.jpg"]
    assert "5 upscaled, 0 skipped" in out and "0 failed" in out
    with Image.open(dst / "a.png") as img:
        assert img.size == (48, 80)
    # A second run sees those outputs and skips them.
    code, out, err = run(capsys, "upscale", src, dst, "--scale", "2", *TINY_W, "-q")
    assert code == 0 and "0 upscaled, 5 skipped" in out


def test_upscale_help_says_what_unwritable_formats_become(capsys):
    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "BMP, GIF, PNM and TGA inputs are written as PNG" in text


@pytest.mark.parametrize("fmt", ["png", None])
def test_folder_output_collisions_are_refused_before_any_work(tmp_path, capsys, fmt):
    src, dst = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    shutil.copy(COFFEE, src / "c.png")
    shutil.copy(COFFEE, src / "sub" / "keep.png")
    if fmt:
        Image.open(COFFEE).convert("RGB").save(src / "c.jpg", quality=95)
    else:  # c.bmp would become c.png, as c.png does
        Image.open(COFFEE).convert("RGB").save(src / "c.bmp")
    args = ["upscale", src, dst, "--scale", "2", *TINY_W, "-q"] + (["--format", fmt] if fmt else [])
    code, _, err = run(capsys, *args)
    assert code == 2
    line = one_error_line(err, "c.png")
    other = "c.jpg" if fmt else "c.bmp"
    assert other in line and "same output" in line
    assert not dst.exists() or not any(dst.rglob("*.png"))


def _hostile_tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    shutil.copy(COFFEE, root / "x.png")
    shutil.copy(COFFEE, root / "sub" / "y.PNG")
    shutil.copy(COFFEE, root / ".git" / "z.png")
    (root / "._x.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble, not an image")
    (root / "notes.txt").write_text("no")
    Image.open(COFFEE).convert("RGB").save(root / "t.tga")
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "pipe.png")


def test_one_image_finder_for_upscale_eval_and_train(tmp_path):
    from liif_jax.imageio import IMAGE_EXTENSIONS, find_images

    _hostile_tree(tmp_path)
    found = [str(p.relative_to(tmp_path)) for p in find_images(tmp_path)]
    assert found == ["sub/y.PNG", "t.tga", "x.png"]
    assert {".png", ".jpg", ".tif", ".bmp", ".gif", ".pnm", ".tga"} <= set(IMAGE_EXTENSIONS)
    # Training (and its validation, which imports it from there) uses the same finder.
    from liif_jax.train import data

    assert data.find_images is find_images


def test_training_reads_every_format_of_the_table(tmp_path):
    from liif_jax.train.data import ImplicitDownsampled

    big = Image.fromarray((np.random.default_rng(4).random((200, 200, 3)) * 255).astype(np.uint8))
    big.save(tmp_path / "a.tga")
    big.save(tmp_path / "b.bmp")
    (tmp_path / "._a.png").write_bytes(b"AppleDouble")
    data = ImplicitDownsampled(tmp_path)
    assert [p.name for p in data.files] == ["a.tga", "b.bmp"]
    assert np.array_equal(data.image(0), np.asarray(big))


def test_eval_skips_hidden_files_and_goes_on_after_a_bad_one(tmp_path, capsys):
    data = tmp_path / "photos"
    data.mkdir()
    photo = (np.random.default_rng(5).random((40, 48, 3)) * 255).astype(np.uint8)
    Image.fromarray(photo).save(data / "good.png")
    (data / "._good.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (data / "bad.png").write_bytes(b"\x89PNG broken")
    code, out, err = run(capsys, "eval", "--data", data, "--scales", "2", *TINY_W, "-q")
    assert code == 1
    assert err.strip().splitlines() == [
        "liif-jax: error: bad.png: input 'bad.png' is not an image file Pillow can read"]
    assert "| good.png | x2 |" in out and "._good" not in out


# ---------------------------------------------------------------- item 11: outputs and messages

def test_npy_from_uint8_holds_values_in_0_1(tmp_path):
    from liif_jax.imageio import write_image

    pixels = np.array([[[0, 128, 255]]], np.uint8)
    write_image(tmp_path / "a.npy", pixels)
    arr = np.load(tmp_path / "a.npy")
    assert arr.dtype == np.float32
    assert np.array_equal(arr, pixels.astype(np.float32) / np.float32(255))


def test_compare_npy_holds_values_in_0_1(tmp_path, capsys):
    code, out, err = run(capsys, "compare", COFFEE, tmp_path / "cmp.npy", "--scale", "2", *TINY_W, "-q")
    assert code == 0, err
    arr = np.load(tmp_path / "cmp.npy")
    assert arr.dtype == np.float32 and arr.max() <= 1.0 and arr.max() > 0.5


class _RecordingProgress:
    made = []

    def __init__(self, total, desc, quiet):
        self.total, self.done = total, 0
        self.bar = None
        _RecordingProgress.made.append(self)

    def for_image(self, offset, n_px):
        def callback(done, total):
            self.done = offset + int(n_px * done / total)
        return callback

    def write(self, line):
        pass

    def close(self):
        pass


def test_compare_progress_counts_the_liif_pixels(tmp_path, capsys, monkeypatch):
    import liif_jax.cli.commands as commands

    monkeypatch.setattr(commands, "Progress", _RecordingProgress)
    _RecordingProgress.made = []
    code, _, err = run(capsys, "compare", COFFEE, tmp_path / "cmp.png", "--scale", "2",
                       "--crop", "2,4,10,8", *TINY_W)
    assert code == 0, err
    (progress,) = _RecordingProgress.made
    assert progress.total == 20 * 16  # the LIIF panel: the crop x2
    assert progress.done == progress.total


def test_warnings_are_not_glued_onto_the_progress_bar(capsys):
    import liif_jax.cli as cli
    from liif_jax.errors import LiifWarning

    progress = cli._Progress(100, "job", quiet=False)
    progress.bar.delay = 0  # show the bar at once
    old = warnings.showwarning
    warnings.showwarning = cli._show_warning
    try:
        progress.bar.update(10)
        progress.bar.refresh()  # the bar is on screen now, its line not ended
        warnings.warn("something odd", LiifWarning, stacklevel=1)
        progress.bar.update(10)
    finally:
        warnings.showwarning = old
        progress.close()
    err = capsys.readouterr().err
    assert "job:" in err  # the bar was drawn
    segments = err.replace("\r", "\n").split("\n")
    assert "liif-jax: warning: something odd" in segments, repr(err)


def test_region_summary_line_says_what_was_rendered(tmp_path, capsys):
    code, out, err = run(capsys, "upscale", COFFEE, tmp_path / "o.png", "--scale", "2",
                         "--region", "4,6,10,20", *TINY_W)
    assert code == 0, err
    assert out == f"{tmp_path / 'o.png'}: region 10x20 at 4,6 of 24x40 -> 20x40\n"


def test_quiet_hides_only_the_progress_bar(tmp_path, capsys):
    code, out, err = run(capsys, "upscale", COFFEE, tmp_path / "o.png", "--scale", "2", *TINY_W, "-q")
    assert code == 0 and err == ""
    assert out == f"{tmp_path / 'o.png'}: 24x40 -> 48x80\n"


def test_overwrite_is_accepted_for_a_single_file(tmp_path, capsys):
    out = tmp_path / "o.png"
    out.write_bytes(b"old")
    code, _, err = run(capsys, "upscale", COFFEE, out, "--scale", "2", "--overwrite", *TINY_W, "-q")
    assert code == 0, err
    with Image.open(out) as img:
        assert img.size == (48, 80)
