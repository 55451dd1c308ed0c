"""Parity with the authors' PyTorch code: every golden within 1e-4 max abs (float32, CPU).

The goldens include the cases where float32 ties decide the result (x1, x3, x5 and
non-power-of-two sizes), non-uniform scales, a downscale and x12, and raw (unclamped)
outputs. They are compared as float arrays, never against the 8-bit PNGs (the original
truncates to 8 bits; we round).
"""

import numpy as np
import pytest

from conftest import DEV, TINY, golden_cases, read_rgb01
from liif_jax import engine
from liif_jax.weights import load_model

TOL = 1e-4


@pytest.mark.parametrize("name,src,out_hw,raw", golden_cases(), ids=[c[0] for c in golden_cases()])
def test_golden_output(real_model, name, src, out_hw, raw):
    """The default path: first-layer precompute, per-axis geometry, tiles, fixed chunks."""
    image = read_rgb01(DEV / f"in_{src}.png")
    out = engine.render(real_model, image, out_hw, raw=raw,
                        settings=engine.RenderSettings(precision="float32"))
    ref = np.load(DEV / name)
    assert out.shape == ref.shape == (*out_hw, 3)
    assert np.abs(out - ref).max() <= TOL


@pytest.mark.parametrize("name,src,out_hw,raw", golden_cases(), ids=[c[0] for c in golden_cases()])
def test_golden_output_literal_path(real_model, name, src, out_hw, raw):
    """The original's formulation (unfold, gather 9C per query), kept as a reference."""
    image = read_rgb01(DEV / f"in_{src}.png")
    out = engine.render_literal(real_model, image, out_hw, raw=raw)
    assert np.abs(out - np.load(DEV / name)).max() <= TOL


def test_golden_set_is_complete():
    # The parametrisation above must really cover the shared cases, ties included.
    names = {c[0] for c in golden_cases()}
    assert len(names) == 21
    for needed in ["astronaut_30x42_to_30x42.npy", "astronaut_30x42_to_30x126.npy",
                   "coffee_27x27_to_81x81.npy", "coffee_40x24_to_97x61.npy",
                   "astronaut_16x16_to_192x192_raw.npy", "chelsea_32x32_to_24x24.npy"]:
        assert needed in names


@pytest.mark.parametrize("src", ["chelsea_32x32", "coffee_40x24"])
def test_encoder_feature_map(real_model, src):
    feat = np.asarray(engine.encode(real_model, read_rgb01(DEV / f"in_{src}.png")))[0]
    ref = np.load(DEV / f"feat_{src}.npy")  # (C, h, w)
    assert feat.transpose(2, 0, 1).shape == ref.shape
    assert np.abs(feat.transpose(2, 0, 1) - ref).max() <= TOL


@pytest.mark.parametrize("checkpoint", ["tiny-liif.pth", "tiny-liif-legacy.pth"])
def test_tiny_checkpoint_both_formats(checkpoint):
    model = load_model(TINY / checkpoint)
    image = read_rgb01(DEV / "in_coffee_40x24.png")
    feat = np.asarray(engine.encode(model, image))[0].transpose(2, 0, 1)
    assert np.abs(feat - np.load(TINY / "tiny_feat_coffee_40x24.npy")).max() <= 1e-5
    for out_hw in [(97, 61), (80, 48)]:
        ref = np.load(TINY / f"tiny_coffee_40x24_to_{out_hw[0]}x{out_hw[1]}_raw.npy")
        assert np.abs(engine.render(model, image, out_hw, raw=True) - ref).max() <= 1e-5
        assert np.abs(engine.render_literal(model, image, out_hw, raw=True) - ref).max() <= 1e-5


def test_chunk_shape_does_not_change_the_result(tiny_model):
    image = read_rgb01(DEV / "in_coffee_40x24.png")
    default = engine.render(tiny_model, image, (97, 61), raw=True,
                            settings=engine.RenderSettings(chunk=(64, 64)))
    odd = engine.render(tiny_model, image, (97, 61), raw=True,
                        settings=engine.RenderSettings(chunk=(7, 13)))
    assert np.abs(default - odd).max() <= 1e-6
    literal = engine.render_literal(tiny_model, image, (97, 61), raw=True, chunk=1000)
    assert np.abs(default - literal).max() <= 1e-5


def test_progress_reports_and_can_cancel(tiny_model):
    image = read_rgb01(DEV / "in_coffee_40x24.png")
    seen = []
    settings = engine.RenderSettings(chunk=(16, 64), chunks_per_call=1)
    engine.render(tiny_model, image, (97, 61), settings=settings, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (97 * 61, 97 * 61) and len(seen) == 7  # ceil(97 / 16) chunks, one a call
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    # Progress comes once per compiled call: 3 chunks a call -> ceil(7 / 3) reports.
    seen.clear()
    engine.render(tiny_model, image, (97, 61), progress=lambda d, t: seen.append((d, t)),
                  settings=engine.RenderSettings(chunk=(16, 64), chunks_per_call=3))
    assert [d for d, _ in seen] == [3 * 16 * 61, 6 * 16 * 61, 97 * 61]
    with pytest.raises(engine.Cancelled):
        engine.render(tiny_model, image, (97, 61), settings=settings, progress=lambda d, t: False)
