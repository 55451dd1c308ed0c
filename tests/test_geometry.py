"""Coordinates, cells, nearest lookups and ensemble weights: pure functions vs the original."""

import numpy as np
import pytest

from conftest import DEV
from liif_jax import geometry as g


@pytest.mark.parametrize("h,w", [(97, 61), (90, 126)])
def test_make_coord_matches_original_grid(h, w):
    ours = g.make_coord((h, w))
    ref = np.load(DEV / f"make_coord_{h}x{w}.npy").reshape(-1, 2)
    assert ours.dtype == np.float32 and ours.shape == (h * w, 2)
    assert np.abs(ours - ref).max() <= 1e-7
    # Not just close: the same float32 arithmetic gives the same bits.
    assert np.array_equal(ours, ref)


def test_make_coord_rows_are_y_and_unflattened_shape():
    grid = g.make_coord((3, 5), flatten=False)
    assert grid.shape == (3, 5, 2)
    assert np.allclose(grid[:, 0, 0], [-2 / 3, 0, 2 / 3], atol=1e-7)  # y varies down rows
    assert np.allclose(grid[0, :, 1], [-0.8, -0.4, 0, 0.4, 0.8], atol=1e-7)


def test_cell_is_two_over_output_size():
    cell = g.make_cell((97, 61), 4)
    assert cell.shape == (4, 2) and cell.dtype == np.float32
    assert cell[0, 0] == np.float32(2 / 97) and cell[0, 1] == np.float32(2 / 61)


def test_nearest_ties_at_integer_scale_follow_float32_rounding():
    # x3 on 30 rows: an output centre sits on a feature centre; the +-half-feature-pixel
    # shifts land on pixel edges and the 1e-6 nudge decides the neighbour.
    coord = g.coord_axis(90)
    idx_lo, rel_lo = g.nearest_on_axis(coord, 30, -1, g.EPS_SHIFT)
    idx_hi, rel_hi = g.nearest_on_axis(coord, 30, 1, g.EPS_SHIFT)
    assert idx_lo.dtype == np.int32 and rel_lo.dtype == np.float32
    assert np.all((idx_hi - idx_lo >= 0) & (idx_hi - idx_lo <= 1))
    assert idx_lo.min() == 0 and idx_hi.max() == 29
    # Relative coordinates are scaled by the feature size (one feature pixel = 2): a query is
    # never more than one feature pixel from the centre it reads.
    assert np.abs(rel_lo).max() <= 2 + 1e-5 and np.abs(rel_hi).max() <= 2 + 1e-5  # + the 1e-6 nudge
    # Where an output centre coincides with a feature centre, both neighbours are the same
    # feature and the relative coordinate is exactly 0 (the area then is the 1e-9 floor).
    centre = np.arange(1, 90, 3)
    assert np.any(rel_lo[centre] == 0) or np.any(rel_hi[centre] == 0)


def test_grid_tables_equal_per_query_geometry():
    out_hw, feat_hw = (37, 23), (11, 7)
    coord = g.make_coord(out_hw)
    cell = g.make_cell(out_hw, coord.shape[0])
    full = g.query_geometry(coord, cell, feat_hw)
    rows, cols = g.grid_axis_tables(out_hw, feat_hw)
    flat = np.arange(out_hw[0] * out_hw[1])
    grid = g.grid_query_geometry(rows, cols, flat // out_hw[1], flat % out_hw[1],
                                 g.relative_cell(g.make_cell(out_hw), feat_hw))
    assert np.array_equal(full.index, grid.index)
    assert np.array_equal(full.rel_coord, grid.rel_coord)
    assert np.array_equal(full.rel_cell, grid.rel_cell)
    assert full.index.shape == (4, coord.shape[0], 2)


def test_no_local_ensemble_has_one_member_with_weight_one():
    coord = g.make_coord((9, 9))
    geo = g.query_geometry(coord, g.make_cell((9, 9), 81), (4, 4), local_ensemble=False)
    assert geo.index.shape == (1, 81, 2)
    (w,) = g.ensemble_weights(geo.rel_coord)
    assert np.all(w == 1)


def test_ensemble_weights_use_the_diagonally_opposite_area():
    # Query 0.25 px right/down of feature centre (0, 0): member 0 (up-left neighbour) is the
    # closest and must get the *largest* weight, from the area opposite it (member 3's).
    rel = np.array([[[0.25, 0.25]], [[0.25, -0.75]], [[-0.75, 0.25]], [[-0.75, -0.75]]], np.float32)
    w = np.array(g.ensemble_weights(rel))[:, 0]
    assert np.isclose(w.sum(), 1, atol=1e-6)
    assert np.allclose(w, [0.5625, 0.1875, 0.1875, 0.0625], atol=1e-6)
