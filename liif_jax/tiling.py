"""Tile plans: which low-resolution crop each block of output pixels needs. Pure NumPy.

An output pixel reads a handful of feature pixels (its ensemble neighbours, whose indices the
geometry tables hold). A feature pixel -- and the first MLP layer's 3x3 convolution over the
features -- depends only on input pixels within the encoder's receptive field. So a block of
output pixels can be rendered from an input crop covering the feature pixels it reads plus a
halo of ``receptive radius + 1`` pixels, and the result is the untiled result: convolutions
near the crop's inner edges are wrong, but nothing reads them. Coordinates stay global.

Plans are separable: rows and columns are planned on their own (``axis_bands``) and a tile is
a (row band, column band) pair.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class AxisBand(NamedTuple):
    """Output positions [out_start, out_stop) of one axis read features only inside the
    input crop [crop_start, crop_stop) minus its halo."""

    out_start: int
    out_stop: int
    crop_start: int
    crop_stop: int


def halo_for(n_convs: int) -> int:
    """Input pixels a crop needs beyond the features it serves: one per 3x3 convolution of
    the encoder, plus one for the first MLP layer's 3x3 (the unfold). The ensemble
    neighbour is covered because bands are planned from the indices the queries read."""
    return n_convs + 1


def crop_length(tile: int, n_lr: int, halo: int) -> int:
    """Length of every crop of an axis of ``n_lr`` input pixels split into ``tile`` cores."""
    return min(n_lr, tile + 2 + 2 * halo)


def axis_bands(coords: np.ndarray, table_index: np.ndarray, n_lr: int, tile: int,
               halo: int) -> list[AxisBand]:
    """Split one axis into bands of at most ``tile`` input pixels (cores).

    ``coords`` (n_out,) increasing query coordinates in [-1, 1]; ``table_index`` (S, n_out) the
    feature indices they read. Every output position lands in exactly one band. Crops all
    have the same length (``crop_length``; shifted inward at the image edges) so that one
    compiled encoder shape serves every tile.
    """
    if tile < 1:
        raise ValueError("tile must be >= 1")
    coords = np.asarray(coords, dtype=np.float64)
    owner = np.clip(np.floor((coords + 1) / 2 * n_lr), 0, n_lr - 1).astype(np.int64)
    length = crop_length(tile, n_lr, halo)
    bands = []
    for core in range(0, n_lr, tile):
        start = int(np.searchsorted(owner, core, side="left"))
        stop = int(np.searchsorted(owner, core + tile, side="left"))
        if stop <= start:
            continue  # a strong downscale: no output position lands in this core
        need_lo = int(table_index[:, start:stop].min())
        need_hi = int(table_index[:, start:stop].max()) + 1
        lo, hi = max(0, need_lo - halo), min(n_lr, need_hi + halo)
        if hi - lo > length:  # cannot happen for increasing coords; keep exactness anyway
            crop_start, crop_stop = lo, hi
        else:
            crop_start = min(max(0, lo), n_lr - length)
            crop_stop = crop_start + length
        bands.append(AxisBand(start, stop, crop_start, crop_stop))
    return bands


def bucket(n: int) -> int:
    """Padded size of a crop side: the smallest of 16, 24, 32, 48, 64, 96, ... (powers of two
    and 1.5x them) that holds ``n``. Few distinct shapes means few encoder compilations; the
    encoder's mask makes the padding exact."""
    size = 16
    while size < n:
        size = size * 3 // 2 if (size & (size - 1)) == 0 else size * 4 // 3
    return size


def tile_for_bucket(size: int, halo: int) -> int:
    """The tile (core) whose crops exactly fill a ``size`` bucket."""
    return size - 2 - 2 * halo
