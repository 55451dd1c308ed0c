"""Running a LIIF model: the only module that touches devices, compilation and precision.

The default path (``render``):

1. Geometry per axis on the host (``geometry.axis_tables``): exact float32, O(H + W).
2. A tile plan (``tiling``): blocks of output pixels and the input crop each needs.
3. Per tile, one jit-compiled call encodes the crop (padded to a bucketed shape, with a mask
   so padding cannot leak in: see ``EDSR``) and applies the MLP's first layer as a 3x3
   convolution over the features: a flat table of hidden-wide rows.
4. The tile's output pixels go through fixed (CH, CW) chunks -- D of them per call, one per
   device, sharded over a 1-D mesh: a cheap gather of table rows (compiled per table shape),
   then the decoder proper on fixed shapes (coordinate and cell terms, the rest of the MLP,
   the ensemble blend).

So the decoder compiles once per (model, precision, chunk shape, devices), whatever the
image sizes; the encoder once per crop bucket; memory is bounded by the tile size, not the
image size.

``render_literal`` keeps the original's unfold-and-gather formulation (untiled, per-query
geometry) as a reference for tests.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from liif_jax import geometry, tiling
from liif_jax.errors import LiifError, RequestError
from liif_jax.models.liif import decode_gathered, feature_table, gather_table_rows

PRECISIONS = ("float32", "bfloat16")
DEFAULT_MAX_MEMORY = 2 * 1024**3

# How many times each jitted function has been traced (compiled) in this process; tests use
# it to prove that new image sizes do not recompile the decoder.
trace_counts = {"encode_table": 0, "gather": 0, "decode": 0}


class Cancelled(LiifError):
    """The progress callback asked to stop."""

    exit_code = 130


# ------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class RenderSettings:
    """How to run (never what to compute: every setting gives the same image, bf16 aside)."""

    precision: str = "float32"
    tile: int | None = None  # input pixels per tile side; None = from max_memory
    max_memory: int = DEFAULT_MAX_MEMORY  # bytes, for the automatic tile size
    chunk: tuple[int, int] | None = None  # output (rows, cols) per decoder call and device
    devices: tuple | None = None  # default: all local devices


def default_precision() -> str:
    """float32 on CPU (exact parity); bfloat16 on GPU/TPU (the fast path there)."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def default_chunk() -> tuple[int, int]:
    # CPU: small chunks keep the matmul operands in cache (measured: 32x64 beat 64x64 and
    # 128x128 by 10-40% on a 2-core AVX-512 EPYC; benchmarks/bench_inference.py).
    return (32, 64) if jax.default_backend() == "cpu" else (128, 256)


def _compute_dtype(precision: str):
    if precision not in PRECISIONS:
        raise RequestError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return jnp.float32 if precision == "float32" else jnp.bfloat16


@contextlib.contextmanager
def precision_scope(precision: str = "float32"):
    """float32 means float32: JAX's default matmul precision on GPU/TPU is lower."""
    with jax.default_matmul_precision("highest" if precision == "float32" else "default"):
        yield


# ------------------------------------------------------------------------- compile cache

_cache_enabled = False


def enable_compilation_cache() -> str | None:
    """Keep compiled programs on disk so a second process does not recompile.

    Directory: ``$LIIF_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/liif-jax/xla`` (or
    ``~/.cache/liif-jax/xla``); ``LIIF_JAX_CACHE_DIR=off`` disables it. A cache directory the
    application already configured is left alone. Returns the directory in use.
    """
    global _cache_enabled
    if _cache_enabled or jax.config.jax_compilation_cache_dir:
        _cache_enabled = True
        return jax.config.jax_compilation_cache_dir
    path = os.environ.get("LIIF_JAX_CACHE_DIR")
    if path and path.lower() == "off":
        return None
    if not path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "liif-jax", "xla")
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home must not stop an upscale
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # every program: none is free
    _cache_enabled = True
    return path


# ------------------------------------------------------------------------- literal path

@partial(jax.jit, static_argnums=0)
def _encode(module, params, inp):
    return module.apply({"params": params}, inp, method="encode")


@partial(jax.jit, static_argnums=(0, 6))
def _decode_literal(module, params, feat, index, rel_coord, rel_cell, to_unit):
    raw = module.apply({"params": params}, feat, index, rel_coord, rel_cell, method="query_rgb")
    return _to_unit(raw) if to_unit else raw


def _to_unit(raw):
    """The original's pred * 0.5 + 0.5, clamped to [0, 1]."""
    return (raw * 0.5 + 0.5).clip(0.0, 1.0)


def normalize_input(image01: np.ndarray) -> np.ndarray:
    """[0, 1] float32 (h, w, 3) -> the model's (1, h, w, 3) input, (x - 0.5) / 0.5 in float32."""
    x = np.asarray(image01, dtype=np.float32)
    return ((x - np.float32(0.5)) / np.float32(0.5))[None]


def encode(model, image01: np.ndarray):
    """Feature map (1, h, w, C) of a [0, 1] RGB image (h, w, 3), untiled, float32."""
    with precision_scope():
        return _encode(model.module, model.params, normalize_input(image01))


def render_literal(model, image01: np.ndarray, out_hw, *, raw: bool = False, chunk: int = 8192,
                   progress=None) -> np.ndarray:
    """The original's formulation: per-query geometry, the 3x3-unfolded feature gathered for
    every query and ensemble member, untiled, float32. Slow; a reference for tests."""
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    feat = encode(model, image01)
    feat_hw = tuple(int(n) for n in feat.shape[1:3])
    rows, cols = geometry.grid_axis_tables((out_h, out_w), feat_hw, model.module.local_ensemble)
    cell_rel = geometry.relative_cell(geometry.make_cell((out_h, out_w)), feat_hw)
    total = out_h * out_w
    out = np.empty((total, 3), np.float32)
    with precision_scope():
        for start in range(0, total, chunk):
            n = min(chunk, total - start)
            flat = np.arange(start, start + chunk) % total  # pad by wrapping: valid indices
            geo = geometry.grid_query_geometry(rows, cols, flat // out_w, flat % out_w, cell_rel)
            result = _decode_literal(model.module, model.params, feat, geo.index[None],
                                     geo.rel_coord[None], geo.rel_cell[None], not raw)
            out[start:start + n] = np.asarray(result)[0, :n]
            _report(progress, start + n, total)
    return out.reshape(out_h, out_w, 3)


def _report(progress, done, total):
    if progress is not None and progress(done, total) is False:
        raise Cancelled("cancelled")


# ------------------------------------------------------------------------- default path

@partial(jax.jit, static_argnames=("module", "precision"))
def _encode_table(module, params, crop, valid_hw, *, precision):
    """Encode one padded crop (1, BH, BW, 3) in [0, 1] whose real part is its top-left
    ``valid_hw``; return the first-layer table flattened to (BH * BW, hidden).

    The encoder always runs in true float32: measured on the goldens, 34 stacked bf16
    convolutions drift up to 8.8/255 at x12, while a float32 encoder with a bf16 decoder
    stays within 1.4/255 -- and the decoder is most of the work. The table is stored in the
    decoder's dtype."""
    trace_counts["encode_table"] += 1
    dtype = _compute_dtype(precision)
    _, bh, bw, _ = crop.shape
    mask = (jnp.arange(bh)[:, None] < valid_hw[0]) & (jnp.arange(bw)[None, :] < valid_hw[1])
    with jax.default_matmul_precision("highest"):
        feat = module.apply({"params": {"encoder": params["encoder"]}}, (crop - 0.5) / 0.5,
                            mask[None, :, :, None], method="encode")
        table = feature_table(params, module, feat)
    return table.reshape(bh * bw, -1).astype(dtype)


@jax.jit
def _gather(table, width, row_idx, col_idx):
    """(D, S, CH) / (D, S, CW) indices -> (D, M, CH, CW, hidden) table rows. Compiled per
    table shape; cheap."""
    trace_counts["gather"] += 1
    return jax.vmap(gather_table_rows, in_axes=(None, None, 0, 0))(table, width, row_idx, col_idx)


@partial(jax.jit, static_argnames=("module", "precision", "to_unit"))
def _decode_gathered(module, params, gathered, row_rel, col_rel, rel_cell, *, precision, to_unit):
    """The decoder proper on fixed shapes: compiled once per (model, precision, chunk, D)."""
    trace_counts["decode"] += 1
    dtype = _compute_dtype(precision)

    def one(g, rr, cr):
        return decode_gathered(params, module, g, rr, cr, rel_cell, compute_dtype=dtype)

    out = jax.vmap(one)(gathered, row_rel, col_rel)
    return _to_unit(out) if to_unit else out


def estimate_crop_bytes(model, crop_hw, chunk, n_devices: int, precision: str) -> int:
    """Rough peak bytes of one tile's device work for a bucketed crop (encoder activations,
    the table, decoder chunks). Calibrated on CPU (benchmarks/bench_inference.py --memory);
    overestimating is the safe side."""
    hidden = model.params["imnet"]["dense_0"]["kernel"].shape[1]
    item = 4 if precision == "float32" else 2
    area = crop_hw[0] * crop_hw[1]
    encoder = area * 4 * model.module.encoder.peak_activation_channels
    table = area * hidden * (4 + item)
    members = 4 if model.module.local_ensemble else 1
    decoder = n_devices * members * chunk[0] * chunk[1] * hidden * 4 * 6
    return encoder + table + decoder


RUNTIME_BYTES = 400 * 1024**2  # JAX/XLA runtime, the model, Python


def choose_tile(model, in_hw, settings: RenderSettings, chunk, n_devices, fixed_bytes=0) -> int:
    """Input pixels per tile side: ``settings.tile`` if given; else the whole image if it
    fits the memory budget, else the largest bucket-filling tile that does."""
    if settings.tile is not None:
        if settings.tile < 1:
            raise RequestError(f"tile must be at least 1 input pixel, got {settings.tile}")
        return int(settings.tile)
    budget = settings.max_memory - fixed_bytes - RUNTIME_BYTES

    def fits(crop_hw):
        return estimate_crop_bytes(model, crop_hw, chunk, n_devices, settings.precision) <= budget

    h, w = in_hw
    if fits((tiling.bucket(h), tiling.bucket(w))):
        return max(h, w)
    halo = tiling.halo_for(model.module.encoder.n_convs)
    best = None
    size = 16
    while True:
        tile = tiling.tile_for_bucket(size, halo)
        if tile >= 8:
            if not fits((size, size)):
                break
            best = tile
        size = tiling.bucket(size + 1)
    if best is None:
        raise RequestError(
            f"max memory {settings.max_memory / 2**20:.0f} MB is too small for this image and "
            f"model (the output alone takes {fixed_bytes / 2**20:.0f} MB)")
    return best


class _Mesh:
    """A 1-D mesh over the devices: chunk batches are split across it, tables replicated."""

    def __init__(self, devices):
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        self.size = len(devices)
        mesh = Mesh(np.array(devices), ("chunks",))
        self.split = NamedSharding(mesh, PartitionSpec("chunks"))
        self.replicated = NamedSharding(mesh, PartitionSpec())

    def split_(self, array):
        return jax.device_put(array, self.split)

    def replicate(self, array):
        return jax.device_put(array, self.replicated)


def axis_coords(n_out: int, window=None) -> np.ndarray:
    """Output pixel-centre coordinates along one axis: the full grid (``make_coord``), or a
    window of a larger grid: ``window = (start, full_n)`` places the ``n_out`` pixels at
    positions ``start, start + 1, ...`` of a ``full_n``-pixel grid (both may be fractional).
    With integer ``start`` and ``full_n`` the values are bit-identical to the full grid's."""
    if window is None:
        return geometry.coord_axis(n_out)
    start, full_n = window
    r = 1 / full_n
    return np.float32(-1 + r) + np.float32(2 * r) * (np.float32(start) + np.arange(n_out, dtype=np.float32))


def render(model, image01: np.ndarray, out_hw, *, settings: RenderSettings | None = None,
           raw: bool = False, out_dtype=np.float32, window=None, progress=None) -> np.ndarray:
    """Render an (H, W) = ``out_hw`` output of a [0, 1] RGB image (h, w, 3).

    ``window``: None for the whole image, or ((row_start, full_h), (col_start, full_w)) to
    render part of a ``full_h x full_w`` render (see ``axis_coords``) with that render's cell.
    Returns (H, W, 3): float32 in [0, 1] (``raw``: the model's unclamped normalised output),
    or uint8 rounded to nearest when ``out_dtype`` is uint8 -- assembled tile by tile, so a
    big 8-bit output never exists as float. ``progress(done, total)`` is called as output
    pixels finish; returning ``False`` cancels (raises ``Cancelled``).
    """
    settings = settings or RenderSettings(precision=default_precision())
    precision = settings.precision
    _compute_dtype(precision)
    out_dtype = np.dtype(out_dtype)
    if out_dtype not in (np.float32, np.uint8) or (raw and out_dtype != np.float32):
        raise RequestError(f"unsupported output dtype {out_dtype}")
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    h, w = image01.shape[:2]
    module = model.module
    window = window or ((0, out_h), (0, out_w))
    row_coords = axis_coords(out_h, window[0])
    col_coords = axis_coords(out_w, window[1])
    rows = geometry.axis_tables(row_coords, h, module.local_ensemble)
    cols = geometry.axis_tables(col_coords, w, module.local_ensemble)
    cell = np.array([np.float32(2 / window[0][1]), np.float32(2 / window[1][1])], np.float32)
    rel_cell = geometry.relative_cell(cell, (h, w))

    devices = list(settings.devices or jax.local_devices())
    mesh = _Mesh(devices)
    chunk = tuple(settings.chunk or default_chunk())
    fixed = out_h * out_w * 3 * out_dtype.itemsize + image01.nbytes
    tile = choose_tile(model, (h, w), settings, chunk, len(devices), fixed_bytes=fixed)
    halo = tiling.halo_for(module.encoder.n_convs)
    row_bands = tiling.axis_bands(row_coords, rows.index, h, tile, halo)
    col_bands = tiling.axis_bands(col_coords, cols.index, w, tile, halo)

    out = np.empty((out_h, out_w, 3), dtype=out_dtype)
    total, done = out_h * out_w, 0
    pending: deque = deque()  # one decoder call in flight while the host prepares the next

    def collect():
        nonlocal done
        result, placements = pending.popleft()
        result = np.asarray(result)
        for d, (r0, r1, c0, c1) in enumerate(placements):
            block = result[d, : r1 - r0, : c1 - c0]
            out[r0:r1, c0:c1] = block if out_dtype == np.float32 else _to_uint8(block)
            done += (r1 - r0) * (c1 - c0)
        _report(progress, done, total)

    with precision_scope(precision):
        rel_cell_dev = mesh.replicate(rel_cell)
        for rb in row_bands:
            for cb in col_bands:
                crop = image01[rb.crop_start:rb.crop_stop, cb.crop_start:cb.crop_stop]
                bh, bw = tiling.bucket(crop.shape[0]), tiling.bucket(crop.shape[1])
                padded = np.zeros((1, bh, bw, 3), np.float32)
                padded[0, :crop.shape[0], :crop.shape[1]] = crop
                table = _encode_table(module, model.params, padded,
                                      np.array(crop.shape[:2], np.int32), precision=precision)
                table = mesh.replicate(table)
                jobs = _chunk_jobs(rb, cb, rows, cols, chunk)
                for i in range(0, len(jobs), mesh.size):
                    batch = jobs[i:i + mesh.size]
                    padded_batch = batch + [batch[-1]] * (mesh.size - len(batch))  # D fixed
                    ri, rr, ci, cr = (mesh.split_(np.stack(x)) for x in zip(*(j[0] for j in padded_batch)))
                    gathered = _gather(table, np.int32(bw), ri, ci)
                    result = _decode_gathered(module, model.params, gathered, rr, cr, rel_cell_dev,
                                              precision=precision, to_unit=not raw)
                    pending.append((result, [j[1] for j in batch]))
                    if len(pending) > 1:
                        collect()
        while pending:
            collect()
    return out


def _chunk_jobs(rb, cb, rows, cols, chunk):
    """Fixed-shape (CH, CW) chunks of one tile's output block, indices relative to its crop."""
    ch, cw = chunk
    jobs = []
    for r0 in range(rb.out_start, rb.out_stop, ch):
        r1 = min(r0 + ch, rb.out_stop)
        ri, rr = _pad_axis(rows, r0, r1, ch, rb.crop_start)
        for c0 in range(cb.out_start, cb.out_stop, cw):
            c1 = min(c0 + cw, cb.out_stop)
            ci, cr = _pad_axis(cols, c0, c1, cw, cb.crop_start)
            jobs.append(((ri, rr, ci, cr), (r0, r1, c0, c1)))
    return jobs


def _pad_axis(table: geometry.AxisTables, start, stop, size, origin):
    """Rows (or columns) [start, stop) of an axis table, relative to ``origin``, zero-padded
    to ``size`` (index 0 is always valid; padded results are discarded)."""
    n = stop - start
    index = np.zeros((table.index.shape[0], size), np.int32)
    rel = np.zeros((table.index.shape[0], size), np.float32)
    index[:, :n] = table.index[:, start:stop] - origin
    rel[:, :n] = table.rel[:, start:stop]
    return index, rel


def _to_uint8(block):
    from liif_jax.imageio import to_uint8

    return to_uint8(block)
