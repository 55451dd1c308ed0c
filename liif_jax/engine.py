"""Running a LIIF model: jit-compiled encode and chunked decode. The only module that
touches devices, compilation and numeric precision.

Queries are decoded in fixed-size chunks (``chunk`` output pixels, the last one padded), so
the decoder compiles once per feature-map size, not once per output size, and memory stays
bounded by the chunk whatever the output size. The exact geometry is built on the host per
chunk from per-axis tables (see ``liif_jax.geometry``).
"""

from __future__ import annotations

import contextlib
from collections import deque
from functools import partial

import jax
import numpy as np

from liif_jax import geometry
from liif_jax.errors import LiifError

DEFAULT_CHUNK = 8192  # output pixels per decoder call: ~75 MB of gathered features at 64 ch


class Cancelled(LiifError):
    """The progress callback asked to stop."""

    exit_code = 130


@contextlib.contextmanager
def precision_scope():
    """float32 means float32: on GPU/TPU JAX's default matmul precision is lower."""
    with jax.default_matmul_precision("highest"):
        yield


@partial(jax.jit, static_argnums=0)
def _encode(module, params, inp):
    return module.apply({"params": params}, inp, method="encode")


@partial(jax.jit, static_argnums=(0, 6))
def _decode(module, params, feat, index, rel_coord, rel_cell, to_unit):
    raw = module.apply({"params": params}, feat, index, rel_coord, rel_cell, method="query_rgb")
    if to_unit:  # the original's pred * 0.5 + 0.5, clamped to [0, 1]
        return (raw * 0.5 + 0.5).clip(0.0, 1.0)
    return raw


def normalize_input(image01: np.ndarray) -> np.ndarray:
    """[0, 1] float32 (h, w, 3) -> the model's (1, h, w, 3) input, (x - 0.5) / 0.5 in float32."""
    x = np.asarray(image01, dtype=np.float32)
    return ((x - np.float32(0.5)) / np.float32(0.5))[None]


def encode(model, image01: np.ndarray):
    """Feature map (1, h, w, C) of a [0, 1] RGB image (h, w, 3)."""
    with precision_scope():
        return _encode(model.module, model.params, normalize_input(image01))


def render(model, image01: np.ndarray, out_hw, *, raw: bool = False, chunk: int = DEFAULT_CHUNK,
           progress=None) -> np.ndarray:
    """Render an ``out_hw`` = (H, W) output of a [0, 1] RGB image (h, w, 3).

    Returns float32 (H, W, 3): in [0, 1], or the model's raw (normalised-range, unclamped)
    output when ``raw``. ``progress(done, total)`` is called after each chunk; returning
    ``False`` cancels (raises ``Cancelled``).
    """
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    feat = encode(model, image01)
    feat_hw = tuple(int(n) for n in feat.shape[1:3])
    rows, cols = geometry.grid_axis_tables((out_h, out_w), feat_hw, model.module.local_ensemble)
    cell_rel = geometry.relative_cell(geometry.make_cell((out_h, out_w)), feat_hw)

    total = out_h * out_w
    out = np.empty((total, 3), np.float32)
    pending: deque = deque()  # keep one chunk in flight while the host prepares the next

    def collect():
        start, n, result = pending.popleft()
        out[start:start + n] = np.asarray(result)[0, :n]
        if progress is not None and progress(start + n, total) is False:
            raise Cancelled("cancelled")

    with precision_scope():
        for start in range(0, total, chunk):
            n = min(chunk, total - start)
            flat = np.arange(start, start + chunk) % total  # pad by wrapping: valid indices
            geo = geometry.grid_query_geometry(rows, cols, flat // out_w, flat % out_w, cell_rel)
            result = _decode(model.module, model.params, feat, geo.index[None],
                             geo.rel_coord[None], geo.rel_cell[None], not raw)
            pending.append((start, n, result))
            if len(pending) > 1:
                collect()
        while pending:
            collect()
    return out.reshape(out_h, out_w, 3)
