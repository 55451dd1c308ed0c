"""File and folder runs of ``upscale``: one image file to another (``upscale_file``, with the
options of a request, ``UpscaleRequest``), and for a folder which files are inputs, where each
output goes, the checks made before any work is done (OUT is a folder outside IN; no two inputs
share an output), which outputs are still to do, and the run itself, in which one failing
image is reported and the others go on. ``liif-jax upscale`` and the Beam pipeline both use
these, so they write the same files, bit for bit."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from liif_jax.api import DEFAULT_MAX_PIXELS
from liif_jax.errors import LiifError, RequestError, one_line
from liif_jax.imageio import DEFAULT_QUALITY, IMAGE_EXTENSIONS, OUTPUT_FORMATS, find_images


@dataclass(frozen=True)
class UpscaleRequest:
    """What to make of each image: the size asked for in exactly one way (``scale``, s or
    (sx, sy); ``size`` = (width, height); ``width`` and/or ``height``), and the options of
    ``liif_jax.upscale`` (``region``, ``tile``, ``max_memory``, ``precision``,
    ``max_pixels``) plus ``quality`` for JPEG/WebP outputs. With a ``region``, ``size``,
    ``width`` and ``height`` are the size of the region's output."""

    scale: float | tuple[float, float] | None = None
    size: tuple[int, int] | None = None
    width: int | None = None
    height: int | None = None
    region: tuple[float, float, float, float] | None = None
    tile: int | None = None
    max_memory: int | None = None
    precision: str | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    quality: int = DEFAULT_QUALITY

    def __post_init__(self):
        ways = [self.scale is not None, self.size is not None,
                self.width is not None or self.height is not None]
        if sum(ways) != 1:
            raise RequestError("give exactly one of scale, size, or width/height")

    def render_size(self, in_hw) -> dict:
        """``liif_jax.upscale``'s size argument for an input of ``in_hw`` = (h, w): the scale
        as given, else the exact size (of the region, if one is given: that size is spread
        over it)."""
        from liif_jax.api import output_size, parse_region

        if self.scale is not None:
            return {"scale": self.scale}
        region = parse_region(self.region, in_hw)
        basis = in_hw if region is None else (region[3], region[2])
        out_h, out_w = output_size(basis, size=self.size, width=self.width, height=self.height)
        return {"size": (out_w, out_h)}

    def planned_pixels(self, in_hw) -> int:
        """Output pixels an image of header size ``in_hw`` will give (0 if unknown or invalid:
        the real run reports why)."""
        from liif_jax.api import plan_output

        if in_hw is None:
            return 0
        try:
            out_hw, _ = plan_output(in_hw, region=self.region, **self.render_size(in_hw))
        except LiifError:
            return 0
        return out_hw[0] * out_hw[1]


def upscale_file(src, dst, request: UpscaleRequest, model,
                 progress: Callable[[int, int], bool | None] | None = None, image=None) -> tuple[tuple[int, int], tuple[int, int]]:
    """Read ``src`` (unless ``image`` = (FloatImage, ImageMeta) from ``imageio.read_input`` is
    given), upscale it as ``request`` says and write ``dst`` (atomically; its format from its
    extension; 8-bit unless a 16-bit PNG/TIFF input goes to PNG/TIFF or ``dst`` is .npy).
    ``progress(done, total)`` as for ``liif_jax.upscale``. Returns ((h, w), (H, W)): the input's and the output's size."""
    from liif_jax.api import upscale
    from liif_jax.imageio import output_format, read_input, write_image

    image, meta = image or read_input(src)
    in_hw = image.pixels.shape[:2]
    fmt = output_format(dst)
    eight_bit = fmt is not None and not (meta.bits > 8 and fmt in ("PNG", "TIFF"))
    pixels = upscale(image, model=model, max_pixels=request.max_pixels, progress=progress,
                     region=request.region, tile=request.tile, max_memory=request.max_memory,
                     precision=request.precision, dtype=np.uint8 if eight_bit else np.float32,
                     **request.render_size(in_hw))
    write_image(dst, pixels, meta, quality=request.quality)
    return in_hw, pixels.shape[:2]


@dataclass(frozen=True)
class FolderJob:
    src: Path  # the input file
    dst: Path  # its output file
    rel: Path  # the input's path relative to IN (how it is named in messages)


def output_path(src_root, dst_root, src, fmt: str | None = None) -> Path:
    """Where a folder run writes ``src``: the same relative path under ``dst_root``, with the
    extension of ``fmt`` if given, else the input's own when we can write that format, else
    the one IMAGE_EXTENSIONS names (PNG for BMP, GIF, PNM, TGA)."""
    rel = Path(src).relative_to(src_root)
    dst = Path(dst_root) / rel
    if fmt:
        return dst.with_suffix("." + fmt.lstrip("."))
    ext = rel.suffix.lower()
    if ext in OUTPUT_FORMATS:
        return dst  # keep the input's own spelling (photo.JPG stays photo.JPG)
    return dst.with_suffix(IMAGE_EXTENSIONS.get(ext, ".png"))


def plan_folder(src_root, dst_root, fmt: str | None = None) -> list[FolderJob]:
    """The jobs of ``upscale IN OUT`` with IN a folder, in a stable order. Raises
    RequestError before anything is written if OUT is a file (or looks like one), is IN or
    inside it, or if two inputs would be written to the same output (e.g. c.png and c.jpg
    with --format png, or c.bmp beside c.png) -- one would silently replace the other."""
    src_root, dst_root = Path(src_root), Path(dst_root)
    if (dst_root.exists() and not dst_root.is_dir()) or \
            (not dst_root.exists() and dst_root.suffix.lower() in OUTPUT_FORMATS):
        raise RequestError(f"IN is a folder, so OUT must be a folder, not '{dst_root.name}'")
    if dst_root.resolve() == src_root.resolve() or src_root.resolve() in dst_root.resolve().parents:
        raise RequestError("OUT must not be IN or inside it (outputs would become inputs)")
    jobs, owner = [], {}
    for src in find_images(src_root):
        dst = output_path(src_root, dst_root, src, fmt)
        job = FolderJob(src, dst, src.relative_to(src_root))
        key = os.path.normcase(str(dst))
        if key in owner:
            first = owner[key].rel
            raise RequestError(f"{first} and {job.rel} would both be written to the same output "
                               f"{dst.relative_to(dst_root)}; rename one of them")
        owner[key] = job
        jobs.append(job)
    return jobs


@dataclass
class FolderWork:
    """What a folder run still has to do: the jobs whose output is missing (or all, with
    ``overwrite``), the output pixels each will give (0 where its header does not say), and how
    many were skipped because their output exists."""

    todo: list[FolderJob]
    pixels: list[int]
    skipped: int

    @property
    def total_pixels(self) -> int:
        return sum(self.pixels)


def pending_work(jobs, request: UpscaleRequest, overwrite: bool = False) -> FolderWork:
    """The ``FolderWork`` of ``jobs`` (from ``plan_folder``, or a share of them). Reads only
    the inputs' headers."""
    from liif_jax.imageio import header_size

    todo = [job for job in jobs if overwrite or not job.dst.exists()]
    return FolderWork(todo, [request.planned_pixels(header_size(job.src)) for job in todo],
                      len(jobs) - len(todo))


@dataclass(frozen=True)
class FileFailure:
    rel: Path  # the input, relative to IN
    message: str  # one line

    def __str__(self) -> str:
        return f"{self.rel}: {self.message}"


@dataclass
class FolderResult:
    upscaled: int
    skipped: int
    failures: list[FileFailure] = field(default_factory=list)


def upscale_folder(work: FolderWork, request: UpscaleRequest, model, *,
                   on_error: Callable[[FileFailure], None] | None = None,
                   progress: Callable[[int, int], bool | None] | None = None) -> FolderResult:
    """Upscale every job of ``work`` with ``model`` (``upscale_file``), creating the output
    folders. An image that fails (unreadable, too large, unwritable, ...) is not fatal: it is
    passed to ``on_error`` as it happens, listed in the result, and the others go on.
    ``progress(done, total)`` counts the planned output pixels of the whole run."""
    from liif_jax.imageio import output_format

    total = work.total_pixels
    result = FolderResult(0, work.skipped)
    done_px = 0
    for job, n_px in zip(work.todo, work.pixels):
        failure = None
        try:
            output_format(job.dst)  # an unknown extension fails before a folder is made
            job.dst.parent.mkdir(parents=True, exist_ok=True)
            upscale_file(job.src, job.dst, request, model, _share(progress, done_px, n_px, total))
            result.upscaled += 1
        except LiifError as exc:
            failure = FileFailure(job.rel, one_line(exc))
        except OSError as exc:
            failure = FileFailure(job.rel, exc.strerror or one_line(exc))
        if failure is not None:
            result.failures.append(failure)
            if on_error is not None:
                on_error(failure)
        done_px += n_px
    return result


def _share(progress, offset: int, n_px: int, total: int):
    """The progress callback of one image whose share of the run is ``n_px`` of ``total``
    pixels, starting at ``offset`` (the image's own total may count extra passes, e.g. for
    alpha)."""
    if progress is None:
        return None

    def report(done: int, image_total: int):
        if image_total:
            return progress(offset + int(n_px * done / image_total), total)
        return None
    return report
