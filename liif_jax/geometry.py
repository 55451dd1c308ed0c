"""Coordinates, cells, nearest-feature lookups and local-ensemble weights.

Everything here reproduces the original PyTorch float32 arithmetic *exactly*, on the host in
NumPy. That matters: at scales where output pixel centres fall on low-resolution pixel
centres (x1, x3, x5, ...) the +-half-pixel ensemble shifts land exactly on pixel edges, and
which neighbour the nearest lookup picks -- and whether a relative coordinate is exactly 0 --
is decided by float32 rounding. Computed inside ``jit`` (where XLA may fuse or contract the
arithmetic differently) those ties flip and single pixels change by up to 0.12.

Conventions (the original's): coordinates are pixel centres in [-1, 1]; ``[..., 0]`` is the
row (y), ``[..., 1]`` the column (x). Ensemble members are ordered row shift outer, column
shift inner: (-1,-1), (-1,+1), (+1,-1), (+1,+1).

The lookups are separable: an output row's neighbour rows and relative y depend only on its
y coordinate, so for a full output grid they are computed once per axis (O(H + W)) in
``grid_axis_tables`` and combined per pixel by indexing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

F32 = np.float32
EPS_SHIFT = 1e-6  # the original nudges shifted coordinates off exact pixel edges
CLAMP_LO = F32(-1 + 1e-6)
CLAMP_HI = F32(1 - 1e-6)
AREA_FLOOR = F32(1e-9)


def coord_axis(n: int, v0: float = -1.0, v1: float = 1.0) -> np.ndarray:
    """Pixel-centre coordinates of ``n`` cells spanning [v0, v1], as the original computes
    them: ``float32(v0 + r) + float32(2r) * arange(n)`` with r = (v1 - v0) / (2n)."""
    r = (v1 - v0) / (2 * n)
    return F32(v0 + r) + F32(2 * r) * np.arange(n, dtype=F32)


def make_coord(shape: Sequence[int], ranges: Sequence[tuple[float, float]] | None = None,
               flatten: bool = True) -> np.ndarray:
    """The original's ``make_coord``: a grid of pixel centres, last axis (y, x), float32."""
    seqs = [coord_axis(n, *(ranges[i] if ranges is not None else (-1.0, 1.0)))
            for i, n in enumerate(shape)]
    grid = np.stack(np.meshgrid(*seqs, indexing="ij"), axis=-1)
    return grid.reshape(-1, len(shape)) if flatten else grid


def make_cell(out_hw: Sequence[int], n: int | None = None) -> np.ndarray:
    """The cell (size of one output pixel in [-1, 1] units) for an output of size ``out_hw``:
    ``(2/H, 2/W)`` as float32, repeated ``n`` times if given."""
    cell = np.array([F32(2 / out_hw[0]), F32(2 / out_hw[1])], dtype=F32)
    return cell if n is None else np.broadcast_to(cell, (n, 2)).copy()


def ensemble_shifts(local_ensemble: bool) -> tuple[tuple[int, float], ...]:
    """Per-axis (shift in half-feature-pixels, epsilon) pairs of the ensemble members."""
    return ((-1, EPS_SHIFT), (1, EPS_SHIFT)) if local_ensemble else ((0, 0.0),)


def nearest_on_axis(coord: np.ndarray, n_feat: int, shift: int, eps: float):
    """For 1-D query coordinates on one axis, the feature index the original's shifted,
    clamped nearest ``grid_sample`` picks, and the relative coordinate: the offset from that
    feature's centre times the feature size (so one feature pixel spans 2).

    Returns ``(index int32, rel float32)`` of ``coord``'s shape.
    """
    coord = np.asarray(coord, dtype=F32)
    radius = 2 / n_feat / 2
    shifted = coord + F32(shift * radius + eps)
    shifted = np.clip(shifted, CLAMP_LO, CLAMP_HI)
    # grid_sample, align_corners=False, mode='nearest': unnormalise then round half to even.
    index = np.rint(((shifted + F32(1)) * F32(n_feat) - F32(1)) / F32(2)).astype(np.int32)
    index = np.clip(index, 0, n_feat - 1)  # never needed after the clamp; keeps gathers safe
    feat_coord = coord_axis(n_feat)[index]
    rel = (coord - feat_coord) * F32(n_feat)
    return index, rel.astype(F32)


class QueryGeometry(NamedTuple):
    """Where each query looks in the feature map, per ensemble member.

    ``index``: int32 (M, ..., 2) feature (row, col); ``rel_coord``: float32 (M, ..., 2) the
    query's offset from that feature's centre; ``rel_cell``: float32 (..., 2) the output cell.
    Both are scaled by the feature map's (h, w), as in the original (one feature pixel = 2). M = 4 with local ensemble, else 1.
    """

    index: np.ndarray
    rel_coord: np.ndarray
    rel_cell: np.ndarray


def query_geometry(coord: np.ndarray, cell: np.ndarray, feat_hw: Sequence[int],
                   local_ensemble: bool = True) -> QueryGeometry:
    """Geometry for arbitrary query coordinates ``coord`` (..., 2) and cells (..., 2)."""
    coord = np.asarray(coord, dtype=F32)
    cell = np.asarray(cell, dtype=F32)
    shifts = ensemble_shifts(local_ensemble)
    per_axis = [[nearest_on_axis(coord[..., a], feat_hw[a], s, e) for s, e in shifts]
                for a in (0, 1)]
    index, rel = [], []
    for iy, ry in per_axis[0]:
        for ix, rx in per_axis[1]:
            index.append(np.stack([iy, ix], axis=-1))
            rel.append(np.stack([ry, rx], axis=-1))
    return QueryGeometry(np.stack(index), np.stack(rel), relative_cell(cell, feat_hw))


def relative_cell(cell, feat_hw) -> np.ndarray:
    cell = np.asarray(cell, dtype=F32)
    return (cell * np.array(feat_hw, dtype=F32)).astype(F32)


class AxisTables(NamedTuple):
    """Per-axis lookups for a full output grid: ``index`` int32 (S, n) and ``rel`` float32
    (S, n) for the S per-axis shifts (2 with local ensemble)."""

    index: np.ndarray
    rel: np.ndarray


def axis_tables(coords, n_feat: int, local_ensemble: bool = True) -> AxisTables:
    """Lookups for 1-D query coordinates ``coords`` along one axis of ``n_feat`` features."""
    pairs = [nearest_on_axis(coords, n_feat, s, e) for s, e in ensemble_shifts(local_ensemble)]
    return AxisTables(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))


def grid_axis_tables(out_hw, feat_hw, local_ensemble: bool = True):
    """Row and column tables for an ``out_hw`` output on a ``feat_hw`` feature map.
    Depends only on sizes: compute once per size pair and reuse."""
    return tuple(axis_tables(coord_axis(out_hw[a]), feat_hw[a], local_ensemble) for a in (0, 1))


def grid_query_geometry(rows: AxisTables, cols: AxisTables, row_idx, col_idx, cell_rel):
    """Geometry for the output pixels at (row_idx[i], col_idx[i]) from the axis tables.
    Members are ordered row shift outer, column shift inner, like ``query_geometry``."""
    index, rel = [], []
    for a in range(rows.index.shape[0]):
        iy, ry = rows.index[a, row_idx], rows.rel[a, row_idx]
        for b in range(cols.index.shape[0]):
            ix, rx = cols.index[b, col_idx], cols.rel[b, col_idx]
            index.append(np.stack([iy, ix], axis=-1))
            rel.append(np.stack([ry, rx], axis=-1))
    n = np.shape(row_idx)
    return QueryGeometry(np.stack(index), np.stack(rel),
                         np.broadcast_to(np.asarray(cell_rel, F32), (*n, 2)))


def ensemble_weights(rel_coord):
    """Local-ensemble weights from relative coordinates (M, ..., 2); works on NumPy and JAX
    arrays alike. See ``weights_from_areas``."""
    areas = [abs(rel_coord[m, ..., 0] * rel_coord[m, ..., 1]) + AREA_FLOOR
             for m in range(rel_coord.shape[0])]
    return weights_from_areas(areas)


def weights_from_areas(areas):
    """Each member is weighted by the area of the rectangle between the query and the
    *diagonally opposite* member's feature centre -- the original swaps areas 0<->3 and
    1<->2 -- normalised to sum to 1 (summed in the original's order). A single member gets
    weight 1 (area / area). ``areas[m]`` = |rel_y * rel_x| + 1e-9 of member m."""
    total = areas[0]
    for area in areas[1:]:
        total = total + area
    if len(areas) == 4:
        areas = areas[::-1]
    return [area / total for area in areas]
