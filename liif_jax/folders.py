"""Folder runs of ``upscale``: which files are inputs, where each output goes, and the checks
made before any work is done (OUT is a folder outside IN; no two inputs share an output)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from liif_jax.errors import RequestError
from liif_jax.imageio import IMAGE_EXTENSIONS, OUTPUT_FORMATS, find_images


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
