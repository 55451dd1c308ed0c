"""Running a LIIF model: the only module that touches devices, compilation and precision.

The default path (``render``):

1. Geometry per axis on the host (``geometry.axis_tables``): exact float32, O(H + W).
2. A tile plan (``tiling``): blocks of output pixels and the input crop each needs.
3. Per tile, one jit-compiled call encodes the crop (padded to a bucketed shape, with a mask
   so padding cannot leak in: see ``EDSR``) and applies the MLP's first layer as a 3x3
   convolution over the features: a flat table of hidden-wide rows, padded to a bucket.
4. The tile's output pixels are cut into fixed (CH, CW) chunks; one compiled call decodes
   D x N of them (D devices of a 1-D mesh, N chunks each in a ``lax.map`` loop): gather of
   table rows fused into the first layer, coordinate and cell terms, the rest of the MLP,
   the ensemble blend, and for 8-bit output the rounding -- then one copy back. Two calls are
   in flight; on accelerators the next tile's encoder overlaps too (``BackendProfile``).

So the decoder compiles once per (model, precision, output kind, chunk shape, N, devices,
table bucket), whatever the image sizes; the encoder once per crop bucket; memory is bounded
by the tile size, not the image size; the host's work is per call and per axis, never per
pixel (``benchmarks/bench_inference.py --host-overhead`` measures it).

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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from liif_jax import geometry, tiling
from liif_jax.constants import PRECISIONS  # (engine.PRECISIONS: defined there, JAX-free)
from liif_jax.errors import Cancelled, RequestError  # (engine.Cancelled: defined in errors)
from liif_jax.models.liif import decode_gathered, feature_table, gather_table_rows

DEFAULT_MAX_MEMORY = 2 * 1024**3

# How many times each jitted function has been traced (compiled) in this process; tests use
# it to prove that new image sizes do not recompile the decoder.
trace_counts = {"encode_table": 0, "decode": 0}


# ------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class RenderSettings:
    """How to run (never what to compute: every setting gives the same image, bf16 aside)."""

    precision: str = "float32"
    tile: int | None = None  # input pixels per tile side; None = from max_memory
    # Bytes for the automatic tile size; None = the backend's default (BackendProfile).
    max_memory: int | None = None
    chunk: tuple[int, int] | None = None  # output (rows, cols) per decoder chunk
    chunks_per_call: int | None = None  # chunks per compiled call and device
    devices: tuple | None = None  # default: all local devices


def default_precision() -> str:
    """float32 on CPU (exact parity); bfloat16 on GPU/TPU (the fast path there)."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


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


# ------------------------------------------------------------------------- backends

@dataclass(frozen=True)
class BackendProfile:
    """How the default path is shaped for one kind of device. Never changes results.

    ``chunk``: output (rows, cols) the decoder works on at once -- the unit of its loop.
    ``chunks_per_call``: chunks one compiled call decodes per device, sized so a call is
    about 0.1-0.5 s of work on that backend: big enough that dispatch and the device-to-host
    copy are a small part of it, small enough that progress moves and Cancel acts within
    about a second. ``max_memory``: the default budget (bytes) for the automatic tile, of
    host memory on CPU (where the output image lives too) and of device memory on GPU/TPU.
    ``overlap``: encode the next tile while the current one decodes (accelerators: the host
    and the device work in parallel; on CPU they share the cores, so it would only cost the
    memory of a second table).
    """

    platform: str
    chunk: tuple[int, int]
    chunks_per_call: int
    max_memory: int
    overlap: bool


# On an accelerator the render may use this fraction of the device's memory by default; the
# rest is left to XLA's own scratch, fragmentation and whatever else shares the device. And at
# most DEVICE_MEMORY_CAP: a tile of a few megapixels already keeps a large GPU busy (a 1080p
# frame is one tile within it), so more memory would not make a render faster, only hold more.
DEVICE_MEMORY_FRACTION = 0.75
DEVICE_MEMORY_CAP = 16 * 1024**3


def device_memory_limit(device) -> int | None:
    """Bytes the runtime lets this device allocate (``memory_stats()['bytes_limit']``), or
    None where the backend does not say (CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 -- backends that do not implement it raise various errors
        return None
    limit = (stats or {}).get("bytes_limit")
    return int(limit) if limit else None


def backend_profile(devices) -> BackendProfile:
    """The profile for ``devices`` (all of one platform)."""
    platform = devices[0].platform
    if platform == "cpu":
        # Small chunks keep the matmul operands in cache (measured: 32x64 beat 64x64 and
        # 128x128 by 10-40% on a 2-core AVX-512 EPYC). About 0.02 s per chunk and core in
        # float32, so 6 chunks per core is ~0.25 s a call.
        cores = max(1, (os.cpu_count() or 1) // len(devices))
        return BackendProfile("cpu", (32, 64), 6 * cores, DEFAULT_MAX_MEMORY, overlap=False)
    limit = device_memory_limit(devices[0])
    budget = min(int(DEVICE_MEMORY_FRACTION * limit), DEVICE_MEMORY_CAP) if limit else DEFAULT_MAX_MEMORY
    # 128x256 = 32K output pixels: 128K rows per matmul with the 4 ensemble members, enough
    # to fill a large GPU. 128 chunks = 4.2 Mpx a call: ~40 ms at 100 Mpx/s (bf16), under
    # 0.5 s even in float32 at 10 Mpx/s.
    return BackendProfile(platform, (128, 256), 128, budget, overlap=True)


def default_chunk() -> tuple[int, int]:
    return backend_profile(jax.local_devices()).chunk


# ------------------------------------------------------------------------- default path

@partial(jax.jit, static_argnames=("module", "precision", "table_rows"))
def _encode_table(module, params, crop, valid_hw, levels, *, precision, table_rows):
    """Encode one padded crop (1, BH, BW, 3) whose real part is its top-left ``valid_hw``;
    return the first-layer table flattened to (table_rows, hidden), rows beyond BH * BW zero
    (``table_rows`` is bucketed so the decoder compiles per bucket, not per crop shape).

    ``crop`` is float32 in [0, 1], or uint8/uint16 codes with ``levels`` the float32 value
    of each code (``input_levels``): looked up on the device, so 8-bit input crosses to the
    device at a quarter of the bytes and still meets the host's float32 values bit for bit.

    The encoder always runs in true float32: measured on the goldens, 34 stacked bf16
    convolutions drift up to 8.8/255 at x12, while a float32 encoder with a bf16 decoder
    stays within 1.4/255 -- and the decoder is most of the work. The table is stored in the
    decoder's dtype."""
    trace_counts["encode_table"] += 1
    dtype = _compute_dtype(precision)
    if jnp.issubdtype(crop.dtype, jnp.integer):
        crop = levels[crop.astype(jnp.int32)]
    _, bh, bw, _ = crop.shape
    mask = (jnp.arange(bh)[:, None] < valid_hw[0]) & (jnp.arange(bw)[None, :] < valid_hw[1])
    with jax.default_matmul_precision("highest"):
        feat = module.apply({"params": {"encoder": params["encoder"]}}, (crop - 0.5) / 0.5,
                            mask[None, :, :, None], method="encode")
        table = feature_table(params, module, feat)
    table = table.reshape(bh * bw, -1).astype(dtype)
    return jnp.pad(table, ((0, table_rows - bh * bw), (0, 0)))


OUTPUTS = ("raw", "unit", "uint8")


def _finish(out, output: str):
    """The decoder's (..., 3) normalised output as the caller wants it: raw, [0, 1] float32,
    or 8-bit rounded to nearest (on the device, so only a quarter of the bytes come back)."""
    if output == "raw":
        return out
    unit = _to_unit(out)
    if output == "unit":
        return unit
    return jnp.rint(unit * jnp.float32(255)).astype(jnp.uint8)


def _decode_program(module, params, table, width, row_idx, row_rel, col_idx, col_rel, valid,
                    rel_cell, *, precision, output):
    """One device's share of a call: ``valid.shape[0]`` chunks decoded in a loop.

    Per chunk: ``row_idx``/``row_rel`` (S, CH), ``col_idx``/``col_rel`` (S, CW) -- the crop's
    feature row/column and relative coordinate per ensemble shift -- gather table rows and
    finish the decoder (coordinate and cell terms, the rest of the MLP, the blend). The gather
    sits in the loop body, so XLA fuses it into the first layer's add + ReLU: no gathered
    tensor bigger than one chunk's matmul operand ever exists. Chunks marked invalid (the
    padding of a call's last slots) are skipped by ``lax.cond``, not computed and discarded.
    """
    dtype = _compute_dtype(precision)
    out_dtype = jnp.uint8 if output == "uint8" else jnp.float32
    ch, cw = row_idx.shape[-1], col_idx.shape[-1]

    def chunk(args):
        ri, rr, ci, cr, ok = args

        def decode():
            gathered = gather_table_rows(table, width, ri, ci)
            out = decode_gathered(params, module, gathered, rr, cr, rel_cell, compute_dtype=dtype)
            return _finish(out, output)

        return jax.lax.cond(ok, decode, lambda: jnp.zeros((ch, cw, 3), out_dtype))

    return jax.lax.map(chunk, (row_idx, row_rel, col_idx, col_rel, valid))


@partial(jax.jit, static_argnames=("module", "precision", "output", "mesh"))
def _decode_call(module, params, table, width, row_idx, row_rel, col_idx, col_rel, valid,
                 rel_cell, *, precision, output, mesh):
    """The decoder for one call: (D, N) chunks, the leading axis split over the mesh's D
    devices (each runs ``_decode_program`` on its N; the table and params are replicated).
    Compiled once per (model, precision, output, chunk, N, D, table bucket)."""
    trace_counts["decode"] += 1
    from jax.sharding import PartitionSpec as P

    def per_device(params, table, width, ri, rr, ci, cr, ok, rel_cell):
        out = _decode_program(module, params, table, width, ri[0], rr[0], ci[0], cr[0], ok[0],
                              rel_cell, precision=precision, output=output)
        return out[None]

    split, same = P("chunks"), P()
    return _shard_map(per_device, mesh, (same, same, same, split, split, split, split, split, same),
                      split)(params, table, width, row_idx, row_rel, col_idx, col_rel, valid, rel_cell)


def _shard_map(fn, mesh, in_specs, out_specs):
    """``jax.shard_map`` with its replication check off: the per-device program is
    independent by construction (no collectives), and the check rejects the skip branch's
    constant zeros as 'not varying across devices'."""
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def estimate_crop_bytes(model, crop_hw, chunk, n_devices: int, precision: str,
                        chunks_per_call: int = 1, overlap: bool = False) -> int:
    """Rough peak bytes of one tile's device work for a bucketed crop: the encoder's
    activations and the table being built (its float32 convolution output and the stored
    table, padded to its bucket), plus -- with ``overlap`` -- the previous tile's table still
    being decoded; one chunk's decoder intermediates per device, and two calls' outputs in
    flight. Calibrated on CPU (benchmarks/bench_inference.py --memory); overestimating is the
    safe side."""
    hidden = model.params["imnet"]["dense_0"]["kernel"].shape[1]
    item = 4 if precision == "float32" else 2
    area = crop_hw[0] * crop_hw[1]
    rows = table_rows_bucket(area)
    encoder = area * 4 * model.module.encoder.peak_activation_channels + model.module.encoder.peak_fixed_bytes
    table = area * hidden * 4 + rows * hidden * item * (2 if overlap else 1)
    members = 4 if model.module.local_ensemble else 1
    pixels = chunk[0] * chunk[1]
    decoder = n_devices * members * pixels * hidden * 4 * 6
    outputs = 2 * n_devices * chunks_per_call * pixels * 3 * 4
    return encoder + table + decoder + outputs


RUNTIME_BYTES = 400 * 1024**2  # JAX/XLA runtime, the model, Python: reserved from the budget

# Host bytes per output row or column for the per-axis geometry (indices, relative
# coordinates and their float temporaries, for both ensemble shifts) and the tile plan.
AXIS_BYTES = 64


def fixed_render_bytes(in_hw, out_hw, out_itemsize: int) -> int:
    """Host memory a render holds whatever the tile: the output image, the input, and the
    per-axis geometry (which an extreme aspect ratio such as 1 x 99,999,999 makes large)."""
    return (out_hw[0] * out_hw[1] * 3 * out_itemsize + in_hw[0] * in_hw[1] * 3 * 4
            + (out_hw[0] + out_hw[1]) * AXIS_BYTES)


def choose_tile(model, in_hw, settings: RenderSettings, chunk, n_devices, fixed_bytes=0,
                chunks_per_call: int = 1, overlap: bool = False, max_memory: int | None = None) -> int:
    """Input pixels per tile side: ``settings.tile`` if given; else the whole image if it
    fits the memory budget, else the largest bucket-filling tile that does.

    The budget is ``max_memory`` (or ``settings.max_memory``): RUNTIME_BYTES of it are
    reserved for the runtime, ``fixed_bytes`` for what the render holds whatever the tile;
    the rest bounds one tile's work."""
    if settings.tile is not None:
        if settings.tile < 1:
            raise RequestError(f"tile must be at least 1 input pixel, got {settings.tile}")
        return int(settings.tile)
    max_memory = max_memory if max_memory is not None else settings.max_memory
    max_memory = DEFAULT_MAX_MEMORY if max_memory is None else max_memory
    budget = max_memory - fixed_bytes - RUNTIME_BYTES

    def need(crop_hw):
        return estimate_crop_bytes(model, crop_hw, chunk, n_devices, settings.precision,
                                   chunks_per_call, overlap)

    h, w = in_hw
    if need((tiling.bucket(h), tiling.bucket(w))) <= budget:
        return max(h, w)
    halo = tiling.halo_for(model.module.encoder.n_convs)
    best = None
    size = 16
    smallest = None
    while True:
        tile = tiling.tile_for_bucket(size, halo)
        if tile >= 8:
            smallest = smallest or need((size, size))
            if need((size, size)) > budget:
                break
            best = tile
        size = tiling.bucket(size + 1)
    if best is None:
        mb = 2**20
        enough = RUNTIME_BYTES + fixed_bytes + smallest
        raise RequestError(
            f"max memory {max_memory / mb:.0f} MB is too small for this image and model: it "
            f"needs at least {-(-enough // mb):.0f} MB ({RUNTIME_BYTES // mb} MB reserved for "
            f"the runtime, {fixed_bytes / mb:.0f} MB for the output image and geometry, "
            f"{smallest / mb:.0f} MB for the smallest tile)")
    return best


def resolve_settings(settings: RenderSettings, devices) -> tuple[BackendProfile, tuple, int, int]:
    """(profile, chunk, chunks per call, memory budget) for ``settings`` on ``devices``:
    explicit settings win, the backend's profile fills the rest."""
    profile = backend_profile(devices)
    chunk = tuple(settings.chunk or profile.chunk)
    per_call = settings.chunks_per_call or profile.chunks_per_call
    budget = settings.max_memory if settings.max_memory is not None else profile.max_memory
    if not (isinstance(per_call, int) and per_call >= 1):
        raise RequestError(f"chunks per call must be a whole number >= 1, got {per_call!r}")
    if len(chunk) != 2 or not all(isinstance(n, int) and n >= 1 for n in chunk):
        raise RequestError(f"chunk must be two whole numbers >= 1 (rows, cols), got {chunk!r}")
    return profile, chunk, per_call, budget


class _Mesh:
    """A 1-D mesh over the devices: chunk batches are split across it, tables replicated."""

    def __init__(self, devices):
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        self.size = len(devices)
        self.mesh = Mesh(np.array(devices), ("chunks",))
        self.split = NamedSharding(self.mesh, PartitionSpec("chunks"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

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


class _AxisChunks(NamedTuple):
    """One tile band's per-axis geometry cut into fixed-size chunks: ``index``/``rel``
    (n_chunks, S, size) relative to the band's crop (padding reads index 0, always valid, and
    is discarded); ``spans`` the output positions [start, stop) each chunk covers."""

    index: np.ndarray
    rel: np.ndarray
    spans: list


def _axis_chunks(table: geometry.AxisTables, band: tiling.AxisBand, size: int) -> _AxisChunks:
    n = band.out_stop - band.out_start
    n_chunks = -(-n // size)
    s = table.index.shape[0]
    index = np.zeros((s, n_chunks * size), np.int32)
    rel = np.zeros((s, n_chunks * size), np.float32)
    index[:, :n] = table.index[:, band.out_start:band.out_stop] - band.crop_start
    rel[:, :n] = table.rel[:, band.out_start:band.out_stop]
    starts = range(band.out_start, band.out_stop, size)
    return _AxisChunks(index.reshape(s, n_chunks, size).transpose(1, 0, 2),
                       rel.reshape(s, n_chunks, size).transpose(1, 0, 2),
                       [(a, min(a + size, band.out_stop)) for a in starts])


def table_rows_bucket(n: int) -> int:
    """Rows of a padded feature table: the crop buckets' products collapse onto few sizes,
    so the decoder (whose program holds the table) compiles per bucket, not per crop shape."""
    return tiling.bucket(n)


def input_levels(dtype) -> np.ndarray | None:
    """float32 value of every code of an integer image, exactly as ``imageio`` converts
    (code / 255 or code / 65535 in float32); None for float input."""
    dtype = np.dtype(dtype)
    if dtype.kind == "u" and dtype.itemsize == 1:
        return np.arange(256, dtype=np.float32) / np.float32(255)
    if dtype.kind == "u" and dtype.itemsize == 2:  # either byte order
        return np.arange(65536, dtype=np.float32) / np.float32(65535)
    return None


def render(model, image: np.ndarray, out_hw, *, settings: RenderSettings | None = None,
           raw: bool = False, out_dtype=np.float32, window=None, progress=None) -> np.ndarray:
    """Render an (H, W) = ``out_hw`` output of an RGB image (h, w, 3): float32 in [0, 1], or
    native-order uint8/uint16 (the same as its /255 or /65535 float32 image, sent smaller).

    ``window``: None for the whole image, or ((row_start, full_h), (col_start, full_w)) to
    render part of a ``full_h x full_w`` render (see ``axis_coords``) with that render's cell.
    Returns (H, W, 3): float32 in [0, 1] (``raw``: the model's unclamped normalised output),
    or uint8 rounded to nearest when ``out_dtype`` is uint8 (rounded on the device, assembled
    tile by tile, so a big 8-bit output never exists as float). ``progress(done, total)`` is
    called as output pixels finish; returning ``False`` cancels (raises ``Cancelled``).

    The host's part is small and per call, never per pixel: per-axis geometry (O(H + W)),
    the tile plan, per tile one encoder call, then calls of D x N chunks (``BackendProfile``)
    with their per-axis chunk geometry; each result comes back in one copy and is placed.
    Two calls are in flight, so the device decodes one while the host places the other.
    """
    settings = settings or RenderSettings(precision=default_precision())
    precision = settings.precision
    _compute_dtype(precision)
    out_dtype = np.dtype(out_dtype)
    if out_dtype not in (np.float32, np.uint8) or (raw and out_dtype != np.float32):
        raise RequestError(f"unsupported output dtype {out_dtype}")
    output = "raw" if raw else ("uint8" if out_dtype == np.uint8 else "unit")
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    h, w = image.shape[:2]
    module = model.module
    levels = input_levels(image.dtype)
    if levels is None:
        image = np.asarray(image, np.float32)
    elif not image.dtype.isnative:
        image = image.astype(image.dtype.newbyteorder("="))
    levels = np.zeros(1, np.float32) if levels is None else levels

    devices = list(settings.devices or jax.local_devices())
    profile, chunk, per_call, budget = resolve_settings(settings, devices)
    # On CPU the budget is host memory, which also holds the output image and the geometry;
    # on an accelerator it is device memory, and those live on the host outside it.
    host_budget = profile.platform == "cpu"
    fixed = fixed_render_bytes((h, w), (out_h, out_w), out_dtype.itemsize)
    levels_dev = None
    tile = choose_tile(model, (h, w), settings, chunk, len(devices),
                       fixed_bytes=fixed if host_budget else 0, chunks_per_call=per_call,
                       overlap=profile.overlap, max_memory=budget)

    window = window or ((0, out_h), (0, out_w))
    row_coords = axis_coords(out_h, window[0])
    col_coords = axis_coords(out_w, window[1])
    rows = geometry.axis_tables(row_coords, h, module.local_ensemble)
    cols = geometry.axis_tables(col_coords, w, module.local_ensemble)
    cell = np.array([np.float32(2 / window[0][1]), np.float32(2 / window[1][1])], np.float32)
    rel_cell = geometry.relative_cell(cell, (h, w))
    halo = tiling.halo_for(module.encoder.n_convs)
    row_bands = tiling.axis_bands(row_coords, rows.index, h, tile, halo)
    col_bands = tiling.axis_bands(col_coords, cols.index, w, tile, halo)

    mesh = _Mesh(devices)
    slots = mesh.size * per_call
    out = np.empty((out_h, out_w, 3), dtype=out_dtype)
    total, done = out_h * out_w, 0
    pending: deque = deque()

    def collect():
        nonlocal done
        result, placements = pending.popleft()
        result = np.asarray(result).reshape(slots, chunk[0], chunk[1], 3)
        for k, (r0, r1, c0, c1) in enumerate(placements):
            out[r0:r1, c0:c1] = result[k, : r1 - r0, : c1 - c0]
            done += (r1 - r0) * (c1 - c0)
        _report(progress, done, total)

    with precision_scope(precision):
        rel_cell_dev = mesh.replicate(rel_cell)
        row_chunks = [_axis_chunks(rows, rb, chunk[0]) for rb in row_bands]
        col_chunks = [_axis_chunks(cols, cb, chunk[1]) for cb in col_bands]
        for rb, rc in zip(row_bands, row_chunks):
            for cb, cc in zip(col_bands, col_chunks):
                if not profile.overlap:
                    while pending:  # CPU: free the previous table before making the next
                        collect()
                crop = image[rb.crop_start:rb.crop_stop, cb.crop_start:cb.crop_stop]
                bh, bw = tiling.bucket(crop.shape[0]), tiling.bucket(crop.shape[1])
                padded = np.zeros((1, bh, bw, 3), image.dtype)
                padded[0, :crop.shape[0], :crop.shape[1]] = crop
                if levels_dev is None:
                    levels_dev = jax.device_put(levels, devices[0])
                table = _encode_table(module, model.params, padded,
                                      np.array(crop.shape[:2], np.int32), levels_dev,
                                      precision=precision, table_rows=table_rows_bucket(bh * bw))
                table = mesh.replicate(table)
                # Every (row chunk, column chunk) pair of the tile, row-major, in calls of
                # `slots`; the last call's empty slots repeat chunk 0 and are skipped.
                ii, jj = np.divmod(np.arange(len(rc.spans) * len(cc.spans)), len(cc.spans))
                for first in range(0, len(ii), slots):
                    ci_, cj_ = ii[first:first + slots], jj[first:first + slots]
                    n = len(ci_)
                    take_i = np.zeros(slots, np.int64)
                    take_j = np.zeros(slots, np.int64)
                    take_i[:n], take_j[:n] = ci_, cj_
                    valid = np.zeros(slots, bool)
                    valid[:n] = True
                    shape = (mesh.size, per_call)
                    args = (rc.index[take_i], rc.rel[take_i], cc.index[take_j], cc.rel[take_j])
                    args = [mesh.split_(a.reshape(*shape, *a.shape[1:])) for a in args]
                    result = _decode_call(module, model.params, table, np.int32(bw), *args,
                                          mesh.split_(valid.reshape(shape)), rel_cell_dev,
                                          precision=precision, output=output, mesh=mesh.mesh)
                    _start_copy(result)
                    placements = [(*rc.spans[a], *cc.spans[b]) for a, b in zip(ci_, cj_)]
                    pending.append((result, placements))
                    if len(pending) > 1:
                        collect()
        while pending:
            collect()
    return out


def _start_copy(array):
    """Start the device-to-host copy as soon as the result is computed, so it overlaps the
    next call's work instead of starting when the host asks for the array."""
    try:
        array.copy_to_host_async()
    except (AttributeError, RuntimeError):  # pragma: no cover -- a backend without it
        pass
