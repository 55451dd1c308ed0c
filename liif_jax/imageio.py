"""Images in and out: pixel formats, modes, metadata, atomic writes.

Inside liif-jax an image is float32 in [0, 1], (h, w, 3) RGB or (h, w) gray. This module is
the one place that turns arrays, PIL images and files into that and back:

- uint8 / 255, uint16 / 65535, float taken as [0, 1] (clipped; NaN/inf refused);
- PIL modes: RGB and L as they are; 1 -> L; I;16 / I (16-bit gray) and F stay gray in full
  precision; P, CMYK, YCbCr -> RGB; RGBA / LA / PA (and P with transparency) keep their
  alpha (a separate (h, w) plane, straight -- not premultiplied);
- files: EXIF orientation applied on read; ICC profile, EXIF (orientation reset) and DPI
  carried to the output where the format allows; outputs written to a temp file beside the
  target and renamed, so an interrupted run never leaves a half image.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liif_jax.atomic import atomic_output
from liif_jax.errors import ImageError, LiifWarning, OutputError, one_line

# The one extension table of image inputs (upscale folders, eval, train): input extension ->
# the output extension a folder run writes it as without --format. Formats we can write keep
# their own; the others (BMP, GIF, PNM, TGA) become PNG: lossless, so nothing is lost that
# the input had, and read everywhere.
IMAGE_EXTENSIONS = {".png": ".png", ".jpg": ".jpg", ".jpeg": ".jpeg", ".webp": ".webp",
                    ".tif": ".tif", ".tiff": ".tiff", ".bmp": ".png", ".gif": ".png",
                    ".ppm": ".png", ".pgm": ".png", ".pbm": ".png", ".pnm": ".png", ".tga": ".png"}
INPUT_EXTENSIONS = tuple(IMAGE_EXTENSIONS)
# Output extension -> Pillow format (None: NumPy .npy, the exact float32 array).
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP",
                  ".tif": "TIFF", ".tiff": "TIFF", ".npy": None}
DEFAULT_QUALITY = 95  # JPEG/WebP; Pillow's own default (75) visibly softens an upscale

# ITU-R BT.601 luma, what Pillow uses for RGB -> L: brings a gray image's output back to gray.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class FloatImage:
    """Pixels as float32 in [0, 1]: (h, w, 3) RGB, or (h, w) gray when ``gray``; ``alpha``
    (h, w) or None."""

    pixels: np.ndarray
    gray: bool
    keep_channel_axis: bool = False  # a (h, w, 1) array in gives (H, W, 1) out
    alpha: np.ndarray | None = None


@dataclass
class ImageMeta:
    """What is carried from an input file to its output. ``bits`` > 8: the source had 16-bit
    (or float) samples, and PNG/TIFF outputs are written with 16 bits (TIFF: float stays float)."""

    icc_profile: bytes | None = None
    exif: bytes | None = None
    dpi: tuple | None = None
    bits: int = 8


def _warn(message: str) -> None:
    warnings.warn(message, LiifWarning, stacklevel=3)


def _to_float(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype.byteorder not in ("=", "|"):  # e.g. '>u2' from a file: same values, our order
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255)
    if array.dtype == np.uint16:
        return array.astype(np.float32) / np.float32(65535)
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype.kind == "f":
        out = array.astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise ImageError(f"{what} contains NaN or infinite values")
        return np.clip(out, 0.0, 1.0)
    raise ImageError(f"{what} has unsupported dtype {array.dtype} (use uint8, uint16 or float in [0, 1])")


def from_array(array, what: str = "image") -> FloatImage:
    """An array (h, w), (h, w, 1|2|3|4) -> FloatImage. A 2nd/4th channel is alpha: dropped."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] in (1, 2, 3, 4):
        channels = array.shape[2]
    elif array.ndim == 2:
        channels = 0
    else:
        raise ImageError(f"{what} has shape {array.shape}; expected (h, w) or (h, w, 1|2|3|4)")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"{what} has no pixels ({array.shape[1]}x{array.shape[0]})")
    pixels = _to_float(array, what)
    alpha = None
    if channels in (2, 4):
        pixels, alpha = pixels[..., : channels - 1], pixels[..., channels - 1]
    if channels in (3, 4):
        return FloatImage(pixels, gray=False, alpha=alpha)
    return FloatImage(pixels.reshape(pixels.shape[:2]), gray=True, keep_channel_axis=channels == 1,
                      alpha=alpha)


_GRAY_16 = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def from_pil(img, what: str = "image") -> FloatImage:
    """A PIL image -> FloatImage, converting modes as the module docstring says."""
    from PIL import Image

    if img.width == 0 or img.height == 0:
        raise ImageError(f"{what} has no pixels ({img.width}x{img.height})")
    mode = img.mode
    if mode == "P":
        mode_to = "RGBA" if "transparency" in img.info else "RGB"
        img, mode = img.convert(mode_to), mode_to
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        straight = img.convert("LA" if mode in ("LA", "La") else "RGBA")
        arr = np.asarray(straight).astype(np.float32) / np.float32(255)
        if mode in ("LA", "La"):
            return FloatImage(arr[..., 0], gray=True, alpha=arr[..., 1])
        return FloatImage(arr[..., :3], gray=False, alpha=arr[..., 3])
    if mode == "1":
        img, mode = img.convert("L"), "L"
    if mode == "L":
        return FloatImage(np.asarray(img).astype(np.float32) / np.float32(255), gray=True)
    if mode in _GRAY_16:
        values = np.asarray(img).astype(np.float64)
        return FloatImage((np.clip(values, 0, 65535) / 65535).astype(np.float32), gray=True)
    if mode == "F":
        return FloatImage(_to_float(np.asarray(img, dtype=np.float32), what), gray=True)
    if mode != "RGB":
        try:
            img = img.convert("RGB")
        except (ValueError, OSError):
            raise ImageError(f"{what} has image mode {mode}, which cannot be converted to RGB; "
                             f"convert it to RGB first") from None
    if not isinstance(img, Image.Image):  # pragma: no cover - defensive
        raise ImageError(f"{what} is not an image")
    return FloatImage(np.asarray(img).astype(np.float32) / np.float32(255), gray=False)


def as_float_image(image, what: str = "image") -> FloatImage:
    """Anything ``upscale`` accepts -> FloatImage."""
    if isinstance(image, FloatImage):
        return image
    try:
        from PIL import Image

        if isinstance(image, Image.Image):
            return from_pil(image, what)
    except ImportError:  # pragma: no cover - Pillow is a core dependency
        pass
    return from_array(image, what)


def read_image(path) -> tuple[FloatImage, ImageMeta]:
    """Read an image file: EXIF orientation applied, metadata kept for the output.

    Every way a file can be bad -- missing, a folder, a FIFO or device, unreadable, not an
    image, damaged (any exception a decoder raises on hostile bytes) -- is an ``ImageError``
    with a one-line message, so a folder run reports the file and goes on."""
    from PIL import Image

    path = Path(path)
    what = f"input '{path.name}'"
    with open_input(path, what) as f:
        try:
            return _decode(f, what)
        except (ImageError, MemoryError):
            raise
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{what} is too large to open safely ({exc})".split(". ")[0]) from None
        except PermissionError:
            raise ImageError(f"cannot read {what}: permission denied") from None
        except Exception as exc:  # noqa: BLE001 - decoders raise anything on hostile bytes
            detail = one_line(str(exc)) or type(exc).__name__
            raise ImageError(f"{what} is damaged or truncated ({detail[:80]})") from None


_READ_INPUT_LOCK = threading.Lock()


def read_input(path) -> tuple[FloatImage, ImageMeta]:
    """``read_image`` for a command (one thread at a time: warning filters are global).

    Decoders talk about damaged files -- Pillow in warnings ("Corrupt EXIF data", "Tag data
    larger than file", once per tag), tifffile in log records -- often many lines for one
    file. They are held back while the file is read: if it is refused, they are dropped (the
    one-line ImageError says what matters); if it is read, each distinct one is re-issued
    once as a LiifWarning naming the file. Calls from several threads (a Beam worker) take
    turns, so no two of them swap the process's warning filters at once."""
    import logging

    what = f"input '{Path(path).name}'"
    held: list[logging.LogRecord] = []

    class _Hold(logging.Handler):
        def emit(self, record):
            held.append(record)

    logger = logging.getLogger("tifffile")
    with _READ_INPUT_LOCK:
        handler, propagate = _Hold(logging.WARNING), logger.propagate
        logger.addHandler(handler)
        logger.propagate = False
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = read_image(path)
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate
    seen = set()
    for message in [w.message for w in caught] + [r.getMessage() for r in held]:
        own = isinstance(message, LiifWarning)
        text = one_line(str(message))
        if text in seen:
            continue
        seen.add(text)
        _warn(text if own else f"{what}: {text}")
    return result


def open_input(path, what: str | None = None):
    """``path`` opened for binary reading, refusing (ImageError) anything but a regular file.

    Why not just open(): opening a FIFO blocks until a writer comes (forever, for a mistyped
    path), and a device such as /dev/zero never ends. So the file is opened non-blocking,
    checked with fstat on the descriptor actually opened (no race with a swapped path), and
    only then made an ordinary blocking file."""
    path = Path(path)
    what = what or f"input '{path.name}'"
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ImageError(f"input not found: {path}") from None
    except PermissionError:
        raise ImageError(f"cannot read {what}: permission denied") from None
    except OSError as exc:
        raise ImageError(f"cannot read {what}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"input is a folder, not an image: {path}")
    not_regular = ImageError(f"{what} is not a regular file (a FIFO, device or socket); "
                             f"give an image file")
    if not stat.S_ISREG(info.st_mode):
        raise not_regular
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        raise ImageError(f"cannot read {what}: permission denied") from None
    except OSError as exc:
        raise ImageError(f"cannot read {what}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise not_regular
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        raw = io.FileIO(fd, "rb", closefd=True)
        raw.name = str(path)  # tifffile (and error messages) want a name, not a descriptor
        return io.BufferedReader(raw)
    except BaseException:
        os.close(fd)
        raise


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF


def _decode(f, what: str) -> tuple[FloatImage, ImageMeta]:
    from PIL import Image, ImageOps, UnidentifiedImageError

    head = f.read(64)
    f.seek(0)
    try:
        img = Image.open(f)
    except UnidentifiedImageError:
        if head[:4] in _TIFF_MAGIC:  # float RGB(A), 16-bit gray + alpha, ...: Pillow has no mode
            return _read_tiff(f, what)
        empty = _declared_empty_size(head)
        if empty:
            raise ImageError(f"{what} has no pixels ({empty[0]}x{empty[1]})") from None
        raise ImageError(f"{what} is not an image file Pillow can read") from None
    with img:
        if img.format == "TIFF":
            try:
                img.load()
            except (OSError, ValueError):  # a layout or compression Pillow cannot decode
                return _read_tiff(f, what)
        orientation = _orientation(img)
        if getattr(img, "n_frames", 1) > 1:
            _warn(f"{what} has {img.n_frames} frames; only the first is upscaled")
        img.load()
        source_mode, source_format = img.mode, img.format
        meta = ImageMeta(icc_profile=img.info.get("icc_profile"), dpi=img.info.get("dpi"))
        try:
            img = ImageOps.exif_transpose(img)
            exif = img.getexif()
            exif.pop(0x0112, None)  # orientation is now applied to the pixels
            meta.exif = exif.tobytes() if len(exif) else None
        except Exception:  # a damaged EXIF block must not stop an upscale
            meta.exif = None
        if source_mode not in ("RGB", "RGBA", "L", "LA", "P", "1", *_GRAY_16):
            meta.icc_profile = None  # a CMYK/LAB profile would mislabel RGB output
        deep = _read_deep(f, head, source_format, orientation)
        if deep is not None:
            meta.bits = 32 if deep.dtype.kind == "f" else 16
            return from_array(deep, what), meta
        return from_pil(img, what), meta


def _read_tiff(f, what: str) -> tuple[FloatImage, ImageMeta]:
    """A TIFF Pillow cannot read, through tifffile: gray or RGB, uint8/uint16/float samples,
    with or without alpha (extra samples), contiguous or planar. Sizes are checked against
    Pillow's decompression-bomb limit before any pixel is decoded."""
    import tifffile
    from PIL import Image

    f.seek(0)
    with tifffile.TiffFile(f) as tif:
        page = tif.pages[0]
        photometric = int(page.photometric)
        if photometric not in (1, 2):  # MINISBLACK, RGB
            name = getattr(page.photometric, "name", photometric)
            raise ImageError(f"{what} is a TIFF with photometric {name}, which is not supported "
                             f"(save it as RGB or gray)")
        if page.axes not in ("YX", "YXS", "SYX"):
            raise ImageError(f"{what} is a TIFF of {page.axes} samples; only one gray or RGB "
                             f"image per file is supported")
        h, w = int(page.imagelength), int(page.imagewidth)
        limit = Image.MAX_IMAGE_PIXELS
        if limit and h * w > 2 * limit:
            raise ImageError(f"{what} is too large to open safely ({w}x{h} pixels)")
        arr = _tiff_samples(page)
        tags = page.tags
        icc = tags.get(34675)
        orientation = tags.get(274)
        meta = ImageMeta(icc_profile=bytes(icc.value) if icc is not None else None)
        orientation = int(orientation.value) if orientation is not None else 1
    if arr.dtype.kind == "f":
        meta.bits, arr = 32, arr.astype(np.float32)
    elif arr.dtype.itemsize > 1:
        meta.bits = 16
    return from_array(_orient(arr, orientation), what), meta


def _orientation(img) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:
        return 1


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an (h, w, ...) array, as Pillow's exif_transpose does."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.swapaxes(a, 0, 1)[:, ::-1],
           7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1], 8: lambda a: np.swapaxes(a, 0, 1)[::-1]}
    return np.ascontiguousarray(ops[orientation](arr)) if orientation in ops else arr


def _tiff_samples(page) -> np.ndarray:
    """A gray or RGB TIFF page's samples as (h, w) or (h, w, c): planar files (one plane per
    sample) made contiguous, extra samples past the alpha dropped."""
    arr = page.asarray()
    if page.axes == "SYX":
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3:
        arr = arr[..., :2] if int(page.photometric) == 1 else arr[..., :4]
    return arr


def _read_deep(f, head: bytes, fmt: str | None, orientation: int):
    """16-bit (or float) samples Pillow would cut to 8 bits: PNG through pypng, TIFF through
    tifffile, both from the open file ``f``. Returns the array, or None for an 8-bit file
    (Pillow reads those)."""
    f.seek(0)
    if fmt == "PNG":
        if len(head) < 26 or head[24] != 16:
            return None
        import png

        width, height, rows, info = png.Reader(file=f).asDirect()
        arr = np.array([np.asarray(row, dtype=np.uint16) for row in rows], dtype=np.uint16)
        arr = arr.reshape(height, width, info["planes"])
    elif fmt == "TIFF":
        import tifffile

        with tifffile.TiffFile(f) as tif:
            page = tif.pages[0]
            if page.bitspersample <= 8 or page.photometric not in (1, 2):  # gray or RGB only
                return None
            if page.axes not in ("YX", "YXS", "SYX"):
                return None
            arr = _tiff_samples(page)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        elif arr.dtype != np.uint16:
            return None
    else:
        return None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return _orient(arr, orientation)


def _declared_empty_size(head: bytes):
    """(width, height) a PNG or PNM header (the file's first bytes) declares when one of them
    is 0 (Pillow refuses to identify such files, which would otherwise read as 'not an
    image')."""
    size = None
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        size = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    elif head[:1] == b"P" and head[1:2] in b"123456":
        fields = b" ".join(line for line in head[2:].splitlines() if not line.startswith(b"#")).split()
        if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
            size = int(fields[0]), int(fields[1])
    return size if size and 0 in size else None


def header_size(path) -> tuple[int, int] | None:
    """(height, width) an image file will have once its EXIF orientation is applied, read
    from the header only; None if it cannot be read (the real read reports why)."""
    from PIL import Image

    try:
        with open_input(path) as f, Image.open(f) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except Exception:
        return None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def find_images(folder) -> list[Path]:
    """The image files below ``folder``, sorted: the one finder of upscale folders, eval and
    train. Recursive; an extension of IMAGE_EXTENSIONS in any case; hidden files and folders
    (a leading '.': .git, macOS '._x.png' AppleDouble files) skipped, and anything that is not
    a regular file (FIFOs and devices block or never end when read)."""
    root = Path(folder)
    found = []
    for parent, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            path = Path(parent) / name
            try:
                regular = stat.S_ISREG(path.stat().st_mode)
            except OSError:  # a dangling link: not an image to process
                continue
            if regular:
                found.append(path)
    return sorted(found)


def output_format(path) -> str | None:
    ext = Path(path).suffix.lower()
    if ext not in OUTPUT_FORMATS:
        known = ", ".join(sorted(OUTPUT_FORMATS))
        raise OutputError(f"unknown output extension '{ext or Path(path).name}' (use one of {known})")
    return OUTPUT_FORMATS[ext]


def check_output_path(out, inp=None) -> None:
    """Fail early (before any compute) if ``out`` cannot be written, or would be the input."""
    out = Path(out)
    output_format(out)
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder is not writable: {folder}")
    if out.is_dir():
        raise OutputError(f"output is a folder: {out}")
    if inp is not None and out.exists() and Path(inp).exists() and os.path.samefile(out, inp):
        raise OutputError("output would overwrite the input; choose another output path")


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8, rounding to nearest (uint8 passes through)."""
    if pixels.dtype == np.uint8:
        return pixels
    return np.rint(np.clip(pixels, 0.0, 1.0) * np.float32(255)).astype(np.uint8)


def write_image(path, pixels: np.ndarray, meta: ImageMeta | None = None,
                quality: int = DEFAULT_QUALITY) -> None:
    """Write pixels to ``path``, format from the extension, atomically (a temp file in the same
    folder, renamed over the target when complete). ``pixels``: [0, 1] float or uint8, shaped
    (H, W) gray, (H, W, 2) gray + alpha, (H, W, 3) RGB or (H, W, 4) RGBA. JPEG has no alpha:
    it is dropped there, with a warning."""
    from PIL import Image

    path = Path(path)
    fmt = output_format(path)
    meta = meta or ImageMeta()
    if fmt == "JPEG" and pixels.ndim == 3 and pixels.shape[2] in (2, 4):
        _warn(f"JPEG cannot store alpha: '{path.name}' is written without it")
        pixels = pixels[..., :-1]
        if pixels.shape[2] == 1:
            pixels = pixels[..., 0]
    deep = meta.bits > 8 and fmt in ("PNG", "TIFF") and pixels.dtype != np.uint8
    try:
        with atomic_output(path) as f:
            if fmt is None:  # .npy always holds [0, 1] floats, whatever the pixels' dtype
                values = np.asarray(pixels)
                values = values.astype(np.float32) / np.float32(255) if values.dtype == np.uint8 \
                    else values.astype(np.float32)
                np.save(f, values, allow_pickle=False)
            elif deep and fmt == "PNG":
                f.write(_png16(_to_uint16(pixels), meta))
            elif deep:
                _tiff_deep(f, pixels, meta)
            else:
                img = Image.fromarray(to_uint8(pixels))
                img.save(f, format=fmt, **_save_options(fmt, meta, quality))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _to_uint16(pixels: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(pixels, 0.0, 1.0) * np.float32(65535)).astype(np.uint16)


def _png16(u16: np.ndarray, meta: ImageMeta) -> bytes:
    """A 16-bit PNG (no filtering, zlib level 6), with the ICC profile and EXIF carried."""
    import struct
    import zlib

    h, w = u16.shape[:2]
    planes = 1 if u16.ndim == 2 else u16.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[planes]
    rows = np.ascontiguousarray(u16.astype(">u2")).reshape(h, w * planes).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    out = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))]
    if meta.icc_profile:
        out.append(chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(meta.icc_profile)))
    if meta.exif:
        exif = meta.exif[6:] if meta.exif.startswith(b"Exif\x00\x00") else meta.exif
        out.append(chunk(b"eXIf", exif))
    out += [chunk(b"IDAT", zlib.compress(raw, 6)), chunk(b"IEND", b"")]
    return b"".join(out)


def _tiff_deep(f, pixels: np.ndarray, meta: ImageMeta) -> None:
    """A 16-bit (or, from a float source, float32) TIFF, deflate-compressed, alpha straight."""
    import tifffile

    data = pixels.astype(np.float32) if meta.bits == 32 else _to_uint16(pixels)
    channels = 1 if data.ndim == 2 else data.shape[2]
    options = {"photometric": "rgb" if channels >= 3 else "minisblack", "compression": "zlib"}
    if channels in (2, 4):
        options["extrasamples"] = ["unassalpha"]
    if meta.icc_profile:  # tag 34675 InterColorProfile, UNDEFINED bytes (works in every tifffile)
        options["extratags"] = [(34675, 7, len(meta.icc_profile), meta.icc_profile, True)]
    buffer = io.BytesIO()  # tifffile wants a named file or a buffer, not a bare descriptor
    tifffile.imwrite(buffer, data, **options)
    f.write(buffer.getvalue())


def _save_options(fmt: str, meta: ImageMeta, quality: int) -> dict:
    options = {}
    if meta.icc_profile:
        options["icc_profile"] = meta.icc_profile
    if meta.exif and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        options["exif"] = meta.exif
    if meta.dpi and fmt in ("JPEG", "PNG", "TIFF"):
        options["dpi"] = meta.dpi
    if fmt == "JPEG":
        options.update(quality=quality, subsampling=0)  # 4:4:4 keeps colour edges crisp
    elif fmt == "WEBP":
        options.update(quality=quality)
    elif fmt == "TIFF":
        options.update(compression="tiff_deflate")
    return options
