"""The liif-jax command: real runs, sizes, formats, metadata, and every bad-input case (one
line on stderr, non-zero exit, no output file left, input untouched)."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DEV, TINY, run_cli

COFFEE = DEV / "in_coffee_40x24.png"  # 24 wide x 40 tall


def run(capsys, *args):
    return run_cli(capsys, *args)


def cli(*args, **kwargs):
    """The installed entry point in a fresh process (as a user runs it)."""
    exe = shutil.which("liif-jax", path=str(Path(sys.executable).parent)) or "liif-jax"
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=600, **kwargs)


def fingerprint(path):
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns


def leftovers(folder):
    if not Path(folder).is_dir():
        return []
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".part"))


# ---------------------------------------------------------------- help and version

def test_help_teaches_with_examples():
    proc = cli("--help")
    assert proc.returncode == 0
    assert "examples:" in proc.stdout and "liif-jax upscale photo.png" in proc.stdout
    up = cli("upscale", "--help")
    assert up.returncode == 0
    for needed in ["--scale", "--size", "--width", "--height", "--weights", "--quality", "--quiet",
                   "--max-pixels", "examples:", "width first"]:
        assert needed in up.stdout


def test_version():
    import liif_jax

    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"liif-jax {liif_jax.__version__}"


# ---------------------------------------------------------------- real runs

def test_png_and_npy_with_scale_2_5(tmp_path, capsys):
    code, _, err = run(capsys, "upscale", COFFEE, tmp_path / "o.png", "--scale", "2.5", "-q")
    assert code == 0, err
    with Image.open(tmp_path / "o.png") as img:
        assert img.size == (60, 100) and img.mode == "RGB"
    code, _, err = run(capsys, "upscale", COFFEE, tmp_path / "o.npy", "--scale", "2.5", "-q")
    assert code == 0, err
    arr = np.load(tmp_path / "o.npy")
    assert arr.shape == (100, 60, 3) and arr.dtype == np.float32
    # The PNG is the same image rounded (not truncated) to 8 bits.
    png = np.asarray(Image.open(tmp_path / "o.png"))
    assert np.array_equal(png, np.rint(arr * 255).astype(np.uint8))


def test_width_only_keeps_aspect_ratio(tmp_path, capsys):
    code, _, err = run(capsys, "upscale", COFFEE, tmp_path / "w.png", "--width", "61", "-q")
    assert code == 0, err
    assert Image.open(tmp_path / "w.png").size == (61, 102)  # 40 * 61/24 = 101.67 -> 102
    code, _, err = run(capsys, "upscale", COFFEE, tmp_path / "h.png", "--height", "100", "-q")
    assert code == 0, err
    assert Image.open(tmp_path / "h.png").size == (60, 100)


@pytest.mark.parametrize("geometry,size", [
    ("61x97", (61, 97)), ("61x97!", (61, 97)),              # exact (ImageMagick's WxH!)
    ("61x", (61, 102)), ("61", (61, 102)), ("x100", (60, 100)),  # one side keeps the aspect
    ("250%", (60, 100)), ("250.5%", (60, 100)),             # a scale: floor(24 * 2.505 + 0.5)
])
def test_size_takes_imagemagicks_geometry_forms(tmp_path, capsys, geometry, size):
    # COFFEE is 24x40 (w x h): the same sizes as --width 61, --height 100 and --scale 2.5
    code, out, err = run(capsys, "upscale", COFFEE, tmp_path / "g.png", "--size", geometry,
                         "--weights", TINY / "tiny-liif.pth", "-q")
    assert code == 0, err
    assert Image.open(tmp_path / "g.png").size == size
    assert f"-> {size[0]}x{size[1]}" in out


def test_size_is_width_first_and_matches_the_golden(tmp_path, capsys):
    code, _, err = run(capsys, "upscale", COFFEE, tmp_path / "s.npy", "--size", "61x97", "-q")
    assert code == 0, err
    ours = np.load(tmp_path / "s.npy")
    ref = np.load(DEV / "coffee_40x24_to_97x61.npy")  # goldens are named height x width
    assert ours.shape == (97, 61, 3)
    assert np.abs(ours - ref).max() <= 1e-4


def test_scale_pair_and_weights_option(tmp_path, capsys):
    code, _, err = run(capsys, "upscale", COFFEE, tmp_path / "p.png", "--scale", "2,1.5",
                       "--weights", TINY / "tiny-liif.pth", "-q")
    assert code == 0, err
    assert Image.open(tmp_path / "p.png").size == (48, 60)


def test_progress_bar_on_stderr_for_long_work_and_quiet(tmp_path):
    src = DEV / "in_astronaut_48x48.png"
    proc = cli("upscale", src, tmp_path / "big.png", "--scale", "12")  # a few seconds of work
    assert proc.returncode == 0, proc.stderr
    assert "px/s" in proc.stderr and "%|" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == f"{tmp_path / 'big.png'}: 48x48 -> 576x576\n"
    quiet = cli("upscale", DEV / "in_chelsea_32x32.png", tmp_path / "q.png", "--scale", "2", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert quiet.stdout == f"{tmp_path / 'q.png'}: 32x32 -> 64x64\n"  # --quiet hides only the bar


def test_formats_quality_and_metadata(tmp_path, capsys):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = tmp_path / "in.jpg"
    img = Image.open(COFFEE)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    exif[0x010F] = "liif-test-camera"  # Make
    img.save(src, quality=95, exif=exif.tobytes(), icc_profile=icc, dpi=(300, 300))
    for ext in ["jpg", "webp", "tif", "png"]:
        code, _, err = run(capsys, "upscale", src, tmp_path / f"o.{ext}", "--scale", "2", "-q")
        assert code == 0, err
        with Image.open(tmp_path / f"o.{ext}") as out:
            assert out.size == (80, 48)  # EXIF orientation applied: 40 wide x 24 tall, x2
            assert out.info.get("icc_profile") == icc
            out_exif = out.getexif()
            assert out_exif.get(0x0112) in (None, 1)
            assert out_exif.get(0x010F) == "liif-test-camera"
    code, _, _ = run(capsys, "upscale", src, tmp_path / "q50.jpg", "--scale", "2", "--quality", "50", "-q")
    assert code == 0
    assert (tmp_path / "q50.jpg").stat().st_size < (tmp_path / "o.jpg").stat().st_size


@pytest.mark.parametrize("mode,expected_mode", [("P", "RGB"), ("CMYK", "RGB"), ("L", "L"),
                                                ("I;16", "I;16"), ("1", "L"), ("RGBA", "RGBA"),
                                                ("LA", "LA")])
def test_modes_are_converted(tmp_path, capsys, mode, expected_mode):
    base = Image.open(COFFEE)
    if mode == "I;16":
        img = Image.fromarray((np.asarray(base.convert("L")).astype(np.uint16) * 257))
        assert img.mode == "I;16"
    else:
        img = base.convert(mode)
    src = tmp_path / ("in.tif" if mode == "CMYK" else "in.png")
    img.save(src)
    code, _, err = run(capsys, "upscale", src, tmp_path / "o.png", "--scale", "1.5",
                       "--weights", TINY / "tiny-liif.pth", "-q")
    assert code == 0, err
    with Image.open(tmp_path / "o.png") as out:
        # Pillow names a 16-bit gray PNG "I;16" (newer) or "I" (10.x)
        assert out.mode in ({"I;16", "I"} if expected_mode == "I;16" else {expected_mode})
        assert out.size == (36, 60)
    assert err == ""


def test_alpha_survives_and_jpeg_drops_it_with_a_warning(tmp_path, capsys):
    rgba = Image.open(COFFEE).convert("RGBA")
    a = np.asarray(rgba).copy()
    a[:, :12, 3] = 0  # left half transparent
    src = tmp_path / "in.png"
    Image.fromarray(a).save(src)
    code, _, err = run(capsys, "upscale", src, tmp_path / "o.png", "--scale", "2", "-q")
    assert code == 0, err
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert out.shape == (80, 48, 4)
    assert out[:, :20, 3].max() <= 5 and out[:, 28:, 3].min() >= 250
    code, _, err = run(capsys, "upscale", src, tmp_path / "o.jpg", "--scale", "2",
                       "--weights", TINY / "tiny-liif.pth", "-q")
    assert code == 0
    assert err.strip() == "liif-jax: warning: JPEG cannot store alpha: 'o.jpg' is written without it"
    assert Image.open(tmp_path / "o.jpg").mode == "RGB"


def test_interrupted_write_leaves_no_half_image(tmp_path, monkeypatch):
    from liif_jax import imageio

    target = tmp_path / "o.png"
    target.write_bytes(b"previous result")

    def failing_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half an image")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        imageio.write_image(target, np.zeros((4, 4, 3), np.float32))
    assert target.read_bytes() == b"previous result"
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- bad input

def _bad(tmp_path, capsys, args, message, src=COFFEE, out_name="o.png", code_expected=None):
    src = Path(src)
    before = fingerprint(src) if src.is_file() else None
    out = tmp_path / out_name
    code, stdout, err = run(capsys, "upscale", src, out, *args)
    assert code != 0
    if code_expected is not None:
        assert code == code_expected
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("liif-jax") and message in lines[0], lines[0]
    assert "Traceback" not in err
    assert not out.exists()
    assert leftovers(out.parent) == []
    if before is not None:
        assert fingerprint(src) == before


def test_missing_input(tmp_path, capsys):
    _bad(tmp_path, capsys, ["--scale", "2"], "input not found", src=tmp_path / "nope.png")


def test_folder_in_with_a_file_out(tmp_path, capsys):
    _bad(tmp_path, capsys, ["--scale", "2"], "IN is a folder, so OUT must be a folder, not 'o.png'",
         src=tmp_path)


def test_corrupt_input(tmp_path, capsys):
    src = tmp_path / "corrupt.png"
    src.write_bytes(os.urandom(2000))
    _bad(tmp_path, capsys, ["--scale", "2"], "not an image file", src=src)


def test_truncated_input(tmp_path, capsys):
    src = tmp_path / "trunc.png"
    data = (DEV / "in_astronaut_48x48.png").read_bytes()
    src.write_bytes(data[: len(data) // 2])
    _bad(tmp_path, capsys, ["--scale", "2"], "damaged or truncated", src=src)


def test_zero_pixel_input(tmp_path, capsys):
    src = tmp_path / "empty.ppm"
    src.write_bytes(b"P6\n0 7\n255\n")
    _bad(tmp_path, capsys, ["--scale", "2"], "has no pixels (0x7)", src=src)


@pytest.mark.parametrize("scale,message", [("0", "> 0"), ("-2", "> 0"), ("nan", "> 0"),
                                           ("inf", "> 0"), ("two", "not a number"),
                                           ("1,2,3", "expected S or SX,SY")])
def test_absurd_scales(tmp_path, capsys, scale, message):
    _bad(tmp_path, capsys, ["--scale", scale], message)


@pytest.mark.parametrize("args,message", [
    (["--size", "61y5"], "expected WxH (exact), W or Wx (width), xH (height) or N% (scale)"),
    (["--size", "x"], "expected WxH"),
    (["--size", "50%x"], "expected WxH"),
    (["--size", "0x5"], "at least 1"),
    (["--size", "0%"], "> 0"),
    (["--size", "61x", "--width", "61"], "one way"),
    (["--size", "400%", "--scale", "4"], "one way"),
    (["--width", "-3"], "at least 1"),
    (["--scale", "2", "--size", "4x4"], "one way"),
    ([], "one way"),
    (["--scale", "2", "--quality", "0"], "quality must be 1..100"),
])
def test_bad_size_requests(tmp_path, capsys, args, message):
    _bad(tmp_path, capsys, args, message)


def test_output_over_the_pixel_limit(tmp_path, capsys):
    _bad(tmp_path, capsys, ["--scale", "1000"], "over the limit of 100,000,000")
    _bad(tmp_path, capsys, ["--scale", "2", "--max-pixels", "100"], "over the limit of 100 ")


def test_pixel_limit_can_be_raised(tmp_path, capsys):
    code, _, err = run(capsys, "upscale", COFFEE, tmp_path / "o.png", "--scale", "2",
                       "--max-pixels", "0", "--weights", TINY / "tiny-liif.pth", "-q")
    assert code == 0, err


@pytest.mark.parametrize("name,message", [("o.xyz", "unknown output extension '.xyz'"),
                                          ("noext", "unknown output extension 'noext'")])
def test_unknown_output_extension(tmp_path, capsys, name, message):
    _bad(tmp_path, capsys, ["--scale", "2"], message, out_name=name)


def test_output_folder_missing(tmp_path, capsys):
    _bad(tmp_path, capsys, ["--scale", "2"], "output folder does not exist", out_name="no/such/o.png")


def test_output_would_overwrite_input(tmp_path, capsys):
    src = tmp_path / "self.png"
    shutil.copy(COFFEE, src)
    before = fingerprint(src)
    code, _, err = run(capsys, "upscale", src, src, "--scale", "2")
    assert code != 0 and "overwrite the input" in err and len(err.strip().splitlines()) == 1
    assert fingerprint(src) == before


@pytest.mark.parametrize("kind,message", [("truncated", "damaged or truncated"),
                                          ("not", "neither a liif-jax"),
                                          ("shapes", "has shape"),
                                          ("missing", "weights file not found"),
                                          ("evil", "refusing to load checkpoint")])
def test_bad_weights(tmp_path, capsys, kind, message):
    weights = tmp_path / "w.pth"
    if kind == "truncated":
        data = (TINY / "tiny-liif.pth").read_bytes()
        weights.write_bytes(data[: len(data) - 3000])
    elif kind == "not":
        shutil.copy(COFFEE, weights)
    elif kind == "shapes":
        import torch_format as tf
        from convert_weights import load_checkpoint

        ckpt = load_checkpoint((TINY / "tiny-liif.pth").read_bytes())
        ckpt["model"]["sd"]["encoder.head.0.weight"] = np.zeros((8, 3, 5, 5), np.float32)
        weights.write_bytes(tf.torch_zip_bytes(ckpt))
    elif kind == "evil":
        import torch_format as tf

        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {tmp_path / 'SENTINEL'}",))

        weights.write_bytes(tf.torch_zip_bytes({"model": Payload()}))
    else:
        weights = tmp_path / "absent.safetensors"
    _bad(tmp_path, capsys, ["--scale", "2", "--weights", weights], message)
    assert not (tmp_path / "SENTINEL").exists()


# ---------------------------------------------------------------- permissions (real, as root too)

def _without_root_powers():
    """Command prefix that makes root obey file permissions (CI runs as root): drop the
    capabilities that let root read and write anything. Empty when not root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "util-linux's setpriv is needed to test permissions as root"
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]


def _cli_exe():
    return shutil.which("liif-jax", path=str(Path(sys.executable).parent)) or "liif-jax"


def test_unreadable_input(tmp_path):
    src = tmp_path / "secret.png"
    shutil.copy(COFFEE, src)
    src.chmod(0o000)
    proc = subprocess.run([*_without_root_powers(), _cli_exe(), "upscale", src, tmp_path / "o.png",
                           "--scale", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == ["liif-jax: error: cannot read input 'secret.png': permission denied"]
    assert not (tmp_path / "o.png").exists()


def test_unwritable_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    proc = subprocess.run([*_without_root_powers(), _cli_exe(), "upscale", COFFEE, locked / "o.png",
                           "--scale", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"liif-jax: error: output folder is not writable: {locked}"]
    assert list(locked.iterdir()) == []


def test_bad_input_through_the_real_entry_point_has_no_traceback(tmp_path):
    src = tmp_path / "bad.png"
    src.write_bytes(b"not an image at all")
    proc = cli("upscale", src, tmp_path / "o.png", "--scale", "2")
    assert proc.returncode == 1
    assert proc.stderr == "liif-jax: error: input 'bad.png' is not an image file Pillow can read\n"
    assert not (tmp_path / "o.png").exists()


# ---------------------------------------------------------------- folders, region, tiles

def _make_tree(root):
    (root / "a" / "b").mkdir(parents=True)
    shutil.copy(COFFEE, root / "one.png")
    shutil.copy(DEV / "in_chelsea_32x32.png", root / "a" / "two.png")
    Image.open(DEV / "in_astronaut_16x16.png").save(root / "a" / "b" / "three.jpg", quality=95)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"skipped: hidden")


def test_folder_keeps_the_tree_skips_existing_and_overwrites(tmp_path, capsys):
    src, dst = tmp_path / "in", tmp_path / "out"
    _make_tree(src)
    tiny = ["--weights", TINY / "tiny-liif.pth", "-q"]
    code, out, err = run(capsys, "upscale", src, dst, "--scale", "2", *tiny)
    assert code == 0, err
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()) == \
        ["a/b/three.jpg", "a/two.png", "one.png"]
    assert Image.open(dst / "a" / "two.png").size == (64, 64)
    assert "3 upscaled, 0 skipped" in out and "0 failed" in out and err == ""  # the summary is the result
    stamp = (dst / "one.png").stat().st_mtime_ns
    code, out, err = run(capsys, "upscale", src, dst, "--scale", "2", *tiny)
    assert code == 0 and "0 upscaled, 3 skipped" in out
    assert (dst / "one.png").stat().st_mtime_ns == stamp
    code, out, err = run(capsys, "upscale", src, dst, "--scale", "2", "--overwrite", *tiny)
    assert code == 0 and "3 upscaled, 0 skipped" in out
    assert (dst / "one.png").stat().st_mtime_ns != stamp


def test_folder_with_a_bad_image_reports_it_and_goes_on(tmp_path, capsys):
    src, dst = tmp_path / "in", tmp_path / "out"
    _make_tree(src)
    (src / "a" / "broken.png").write_bytes(b"\x89PNG but not really")
    code, out, err = run(capsys, "upscale", src, dst, "--scale", "2", "--format", "webp",
                         "--weights", TINY / "tiny-liif.pth", "-q")
    assert code == 1
    assert err.strip().splitlines() == [
        "liif-jax: error: a/broken.png: input 'broken.png' is not an image file Pillow can read"]
    assert out.startswith("3 upscaled, 0 skipped") and out.rstrip().endswith("1 failed")
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()) == \
        ["a/b/three.webp", "a/two.webp", "one.webp"]


def test_folder_out_inside_in_is_refused(tmp_path, capsys):
    _make_tree(tmp_path / "in")
    code, _, err = run(capsys, "upscale", tmp_path / "in", tmp_path / "in" / "x2", "--scale", "2")
    assert code == 2 and "must not be IN or inside it" in err


def test_region_tile_and_precision_options(tmp_path, capsys):
    full, part = tmp_path / "full.npy", tmp_path / "part.npy"
    assert run(capsys, "upscale", COFFEE, full, "--scale", "2", "--precision", "float32", "-q")[0] == 0
    code, _, err = run(capsys, "upscale", COFFEE, part, "--scale", "2", "--region", "4,6,10,20",
                       "--tile", "3", "--precision", "float32", "-q")
    assert code == 0, err
    a, b = np.load(full), np.load(part)
    assert b.shape == (40, 20, 3)
    assert np.array_equal(b, a[12:52, 8:28])  # a region, in tiles, is the whole render's pixels exactly
    code, _, err = run(capsys, "upscale", COFFEE, tmp_path / "bf.png", "--scale", "2",
                       "--precision", "bfloat16", "--max-memory", "1GB", "-q")
    assert code == 0, err
    bf = np.asarray(Image.open(tmp_path / "bf.png")).astype(np.float32) / 255
    assert np.abs(bf - a).max() <= 3 / 255


@pytest.mark.parametrize("args,message", [(["--region", "1,2,3"], "X,Y,W,H"),
                                          (["--region", "0,0,100,5"], "outside"),
                                          (["--tile", "0"], "at least 1"),
                                          (["--max-memory", "lots"], "2GB"),
                                          (["--max-memory", "1MB"], "too small"),
                                          (["--precision", "fp8"], "invalid choice"),
                                          (["--format", "png"], "for folders")])
def test_bad_performance_and_region_options(tmp_path, capsys, args, message):
    _bad(tmp_path, capsys, ["--scale", "2", *args], message)


def test_distributed_folder_split_over_two_local_processes(tmp_path):
    import socket

    src, dst = tmp_path / "in", tmp_path / "out"
    _make_tree(src)
    with socket.socket() as s:  # a free loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}", JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([_cli_exe(), "upscale", str(src), str(dst), "--scale", "2", "--distributed",
                               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                               "--process-id", str(i), "--weights", str(TINY / "tiny-liif.pth"), "-q"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    summaries = [o[0].strip().splitlines()[-1] for o in outs]  # stdout: the summary is the result
    assert summaries[0].startswith("process 0/2: 2 upscaled")  # 3 images: 2 + 1
    assert summaries[1].startswith("process 1/2: 1 upscaled")
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()) == \
        ["a/b/three.jpg", "a/two.png", "one.png"]


# ---------------------------------------------------------------- 16-bit files

def _u16_photo(alpha=False):
    rng = np.random.default_rng(0)
    base = np.asarray(Image.open(COFFEE).convert("RGB")).astype(np.uint16) * 257
    base = base + rng.integers(0, 257, base.shape, dtype=np.uint16)  # use all 16 bits
    if alpha:
        a = np.full(base.shape[:2] + (1,), 65535, np.uint16)
        a[:, :6] = 0
        base = np.concatenate([base, a], axis=-1)
    return base


def _write_png16(path, arr):
    from liif_jax.imageio import ImageMeta, _png16

    path.write_bytes(_png16(arr, ImageMeta()))


def _read_png16(path):
    import png

    w, h, rows, info = png.Reader(filename=str(path)).asDirect()
    assert info["bitdepth"] == 16
    return np.array([np.asarray(r, np.uint16) for r in rows]).reshape(h, w, info["planes"])


@pytest.mark.parametrize("alpha", [False, True])
def test_16bit_png_stays_16bit(tmp_path, capsys, real_model, alpha):
    import liif_jax

    src = _u16_photo(alpha)
    _write_png16(tmp_path / "in16.png", src)
    code, _, err = run(capsys, "upscale", tmp_path / "in16.png", tmp_path / "o.png", "--scale", "2", "-q")
    assert code == 0, err
    out = _read_png16(tmp_path / "o.png")
    expected = np.rint(liif_jax.upscale(src, scale=2, model=real_model, precision="float32") * 65535)
    assert out.shape == (80, 48, 4 if alpha else 3)
    assert np.abs(out.astype(np.int64) - expected).max() <= 1
    assert len(np.unique(out[..., 0])) > 1024  # finer than 8-bit steps
    # An 8-bit format still gets 8 bits.
    assert run(capsys, "upscale", tmp_path / "in16.png", tmp_path / "o.webp", "--scale", "2", "-q")[0] == 0


def test_16bit_tiff_stays_16bit_with_its_icc_profile(tmp_path, capsys, real_model):
    import tifffile
    from PIL import ImageCms

    import liif_jax

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = _u16_photo()
    tifffile.imwrite(tmp_path / "in16.tif", src, photometric="rgb", extratags=[(34675, 7, len(icc), icc, True)])
    code, _, err = run(capsys, "upscale", tmp_path / "in16.tif", tmp_path / "o.tif", "--scale", "2", "-q")
    assert code == 0, err
    with tifffile.TiffFile(tmp_path / "o.tif") as tif:
        out = tif.pages[0].asarray()
        assert tif.pages[0].tags["InterColorProfile"].value == icc
    expected = np.rint(liif_jax.upscale(src, scale=2, model=real_model, precision="float32") * 65535)
    assert out.dtype == np.uint16 and out.shape == (80, 48, 3)
    assert np.abs(out.astype(np.int64) - expected).max() <= 1
    code, _, err = run(capsys, "upscale", tmp_path / "in16.tif", tmp_path / "o16.png", "--scale", "2", "-q")
    assert code == 0 and _read_png16(tmp_path / "o16.png").shape == (80, 48, 3)
    assert Image.open(tmp_path / "o16.png").info.get("icc_profile") == icc
