"""The inference engine: exact tiles, no recompiles, windows, 8-bit assembly, bf16, devices,
the persistent compilation cache."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import liif_jax
from conftest import DEV, TINY, golden_cases, read_rgb01
from liif_jax import engine, tiling
from liif_jax.errors import RequestError

COFFEE = DEV / "in_coffee_40x24.png"


def settings(**kw):
    return engine.RenderSettings(precision="float32", **kw)


# ---------------------------------------------------------------- tiles

def test_tile_plan_covers_every_output_once_and_reads_inside_crops():
    from liif_jax import geometry

    for n_lr, n_out, tile in [(40, 97, 1), (40, 97, 7), (24, 17, 5), (30, 90, 4), (33, 33, 10)]:
        coords = geometry.coord_axis(n_out)
        index = np.stack([geometry.nearest_on_axis(coords, n_lr, s, e)[0]
                          for s, e in geometry.ensemble_shifts(True)])
        halo = 3
        bands = tiling.axis_bands(coords, index, n_lr, tile, halo)
        covered = np.concatenate([np.arange(b.out_start, b.out_stop) for b in bands])
        assert np.array_equal(covered, np.arange(n_out))
        lengths = {b.crop_stop - b.crop_start for b in bands}
        assert lengths == {tiling.crop_length(tile, n_lr, halo)}  # one encoder shape
        for b in bands:
            read = index[:, b.out_start:b.out_stop]
            # Every feature read is at least `halo` inside the crop, or the crop is at the edge.
            assert read.min() - b.crop_start >= halo or b.crop_start == 0
            assert b.crop_stop - read.max() - 1 >= halo or b.crop_stop == n_lr


@pytest.mark.parametrize("tile", [1, 2, 3, 5, 8, 13])
@pytest.mark.parametrize("out_hw", [(97, 61), (52, 31), (30, 17), (100, 24)])
def test_tiles_equal_untiled_tiny(tiny_model, tile, out_hw):
    # The tiny model's halo is 7 input pixels, so these tiles really crop the 40x24 input.
    image = read_rgb01(COFFEE)
    whole = engine.render(tiny_model, image, out_hw, raw=True, settings=settings())
    tiled = engine.render(tiny_model, image, out_hw, raw=True, settings=settings(tile=tile))
    assert np.array_equal(tiled, whole)  # exact, not close: tiles never change a bit


def test_tiles_equal_untiled_real_model(real_model):
    image = read_rgb01(DEV / "in_chelsea_32x32.png")
    whole = engine.render(real_model, image, (80, 80), settings=settings())
    tiled = engine.render(real_model, image, (80, 80), settings=settings(tile=5))
    assert np.array_equal(tiled, whole)
    assert np.abs(tiled - np.load(DEV / "chelsea_32x32_to_80x80.npy")).max() <= 1e-4


def test_automatic_tile_follows_the_memory_budget(real_model):
    image = read_rgb01(DEV / "in_chelsea_32x32.png")
    roomy = engine.choose_tile(real_model, (32, 32), settings(), (64, 64), 1)
    assert roomy == 32  # fits: no tiling
    big = engine.choose_tile(real_model, (3000, 4000), settings(max_memory=1 * 2**30), (64, 64), 1)
    bigger = engine.choose_tile(real_model, (3000, 4000), settings(max_memory=4 * 2**30), (64, 64), 1)
    assert 8 <= big < bigger < 4000
    halo = tiling.halo_for(real_model.module.encoder.n_convs)
    assert tiling.bucket(tiling.crop_length(big, 10**9, halo)) == tiling.crop_length(big, 10**9, halo)
    with pytest.raises(RequestError, match="too small"):
        engine.choose_tile(real_model, (3000, 4000), settings(max_memory=2**20), (64, 64), 1)
    with pytest.raises(RequestError, match="too small"):
        liif_jax.upscale(image, scale=2, model=real_model, max_memory=2**20)


# ---------------------------------------------------------------- compilation

def test_image_sizes_compile_the_decoder_once_per_table_bucket(tiny_model):
    # A chunk shape no other test uses, so this test sees the first compilations.
    chunk = (24, 40)
    before = dict(engine.trace_counts)
    rng = np.random.default_rng(0)
    buckets = set()
    for h, w, scale in [(17, 23, 2.0), (40, 24, 1.7), (31, 31, 3.0), (12, 50, 2.5), (45, 9, 0.8)]:
        image = rng.random((h, w, 3), dtype=np.float32)
        engine.render(tiny_model, image, (round(h * scale), round(w * scale)),
                      settings=settings(chunk=chunk))
        buckets.add(engine.table_rows_bucket(tiling.bucket(h) * tiling.bucket(w)))
    # The decoder holds the (bucketed) feature table, so it compiles once per table bucket:
    # three here for five image sizes and five output sizes.
    assert len(buckets) == 3
    assert engine.trace_counts["decode"] - before["decode"] == len(buckets)
    # The encoder compiles per padded crop shape (bucketed), not per image size.
    assert engine.trace_counts["encode_table"] - before["encode_table"] <= 5
    # New image and output sizes that land in the same buckets compile nothing at all.
    seen = dict(engine.trace_counts)
    for h, w, scale in [(20, 21, 1.3), (29, 30, 2.2), (10, 55, 0.5), (44, 20, 3.1)]:
        assert engine.table_rows_bucket(tiling.bucket(h) * tiling.bucket(w)) in buckets
        image = rng.random((h, w, 3), dtype=np.float32)
        engine.render(tiny_model, image, (round(h * scale), round(w * scale)),
                      settings=settings(chunk=chunk))
    assert engine.trace_counts == seen


def test_buckets_are_few_and_monotonic():
    sizes = sorted({tiling.bucket(n) for n in range(1, 3000)})
    assert sizes[:8] == [16, 24, 32, 48, 64, 96, 128, 192]
    assert len(sizes) <= 16
    assert all(tiling.bucket(n) >= n for n in range(1, 3000))


def test_persistent_compilation_cache_serves_a_second_process(tmp_path):
    code = ("import numpy as np, liif_jax;"
            "liif_jax.upscale(np.zeros((9, 11, 3), np.uint8), scale=2,"
            " model=liif_jax.load_model(r'%s'))" % (TINY / "tiny-liif.pth"))
    env = dict(os.environ, LIIF_JAX_CACHE_DIR=str(tmp_path / "cache"))
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert entries, "the first process wrote nothing to the cache"
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    # Everything the second process needed was already there: nothing new was compiled.
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == entries


# ---------------------------------------------------------------- windows and outputs

@pytest.mark.parametrize("scale,region", [(2.5, (2, 4, 10, 8)), (3, (3, 3, 9, 12)), (2, (0, 0, 24, 40))])
def test_region_equals_the_crop_of_the_full_render(real_model, scale, region):
    image = read_rgb01(COFFEE)
    full = liif_jax.upscale(image, scale=scale, model=real_model, precision="float32")
    part = liif_jax.upscale(image, scale=scale, model=real_model, precision="float32", region=region)
    x, y, w, h = (int(v * scale) for v in region)
    assert part.shape == (h, w, 3)
    assert np.array_equal(part, full[y:y + h, x:x + w])


def test_region_with_a_size_spreads_it_over_the_window(tiny_model):
    image = read_rgb01(COFFEE)
    whole = liif_jax.upscale(image, size=(61, 97), model=tiny_model, precision="float32")
    same = liif_jax.upscale(image, size=(61, 97), model=tiny_model, precision="float32",
                            region=(0, 0, 24, 40))
    assert np.array_equal(whole, same)
    sub = liif_jax.upscale(image, size=(30, 20), model=tiny_model, region=(1.5, 2.25, 10.5, 7))
    assert sub.shape == (20, 30, 3)


@pytest.mark.parametrize("region,message", [((0, 0, 0, 5), "> 0"), ((20, 0, 10, 5), "outside"),
                                            ((0, 0, 5), "x, y, width, height"),
                                            ((float("nan"), 0, 1, 1), "finite")])
def test_bad_regions(tiny_model, region, message):
    with pytest.raises(RequestError, match=message):
        liif_jax.upscale(read_rgb01(COFFEE), scale=2, model=tiny_model, region=region)


def test_uint8_output_is_the_rounded_float_output(tiny_model):
    image = read_rgb01(COFFEE)
    f32 = liif_jax.upscale(image, scale=2.5, model=tiny_model, precision="float32")
    u8 = liif_jax.upscale(image, scale=2.5, model=tiny_model, precision="float32", dtype=np.uint8)
    assert u8.dtype == np.uint8
    assert np.array_equal(u8, np.rint(f32 * 255).astype(np.uint8))


# ---------------------------------------------------------------- precision

def test_bfloat16_stays_within_two_levels_of_the_goldens(real_model):
    worst = 0.0
    for name, src, out_hw, raw in golden_cases():
        if raw:
            continue
        out = engine.render(real_model, read_rgb01(DEV / f"in_{src}.png"), out_hw,
                            settings=engine.RenderSettings(precision="bfloat16"))
        worst = max(worst, float(np.abs(out - np.load(DEV / name)).max()))
    assert worst <= 2 / 255
    assert worst > 1e-4  # it really ran in bfloat16


def test_unknown_precision_is_refused(tiny_model):
    with pytest.raises(RequestError, match="precision"):
        liif_jax.upscale(read_rgb01(COFFEE), scale=2, model=tiny_model, precision="float16")


# ---------------------------------------------------------------- devices

SHARDED = r"""
import json, sys, numpy as np, jax
jax.config.update("jax_default_matmul_precision", "highest")
from liif_jax import engine
from liif_jax.weights import load_model
from PIL import Image
assert len(jax.local_devices()) == 4, jax.local_devices()
image = np.asarray(Image.open(sys.argv[1]).convert("RGB")).astype(np.float32) / np.float32(255)
results = {}
for weights, tile in [(sys.argv[2], None), (sys.argv[2], 3), (None, None)]:
    model = load_model(weights)
    s = engine.RenderSettings(precision="float32", tile=tile)
    out = engine.render(model, image, (97, 61), settings=s, raw=True)
    np.save(f"{sys.argv[3]}/{'tiny' if weights else 'real'}_{tile}.npy", out)
"""


def test_four_devices_give_the_single_device_result(tmp_path, tiny_model, real_model):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SHARDED, str(COFFEE), str(TINY / "tiny-liif.pth"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    image = read_rgb01(COFFEE)
    for model, name, tile in [(tiny_model, "tiny", None), (tiny_model, "tiny", 3), (real_model, "real", None)]:
        single = engine.render(model, image, (97, 61), raw=True, settings=settings(tile=tile))
        sharded = np.load(tmp_path / f"{name}_{tile}.npy")
        # Bit for bit on JAX 0.10 and 0.12; JAX 0.8 differs in the last bit here and there.
        assert np.abs(single - sharded).max() <= 1e-6


# ---------------------------------------------------------------- backends, calls, budgets

class _FakeDevice:
    """A device as backend_profile sees it: a platform and memory_stats()."""

    def __init__(self, platform, stats=None, fail=False):
        self.platform, self._stats, self._fail = platform, stats, fail

    def memory_stats(self):
        if self._fail:
            raise NotImplementedError("no stats on this backend")
        return self._stats


def test_backend_profiles_size_the_work_for_each_kind_of_device():
    cpu = engine.backend_profile([_FakeDevice("cpu")])
    assert cpu.chunk == (32, 64) and not cpu.overlap
    assert cpu.max_memory == engine.DEFAULT_MAX_MEMORY  # host memory, as before
    assert cpu.chunks_per_call == 6 * os.cpu_count()
    gpu = engine.backend_profile([_FakeDevice("gpu", {"bytes_limit": 12 * 2**30})])
    assert gpu.chunk == (128, 256) and gpu.overlap
    # Device memory: a fraction of what the runtime lets the device allocate...
    assert gpu.max_memory == int(engine.DEVICE_MEMORY_FRACTION * 12 * 2**30)
    # ... up to a cap: a big GPU gets tiles of a few megapixels, not all of its memory.
    big = engine.backend_profile([_FakeDevice("gpu", {"bytes_limit": 141 * 10**9})])
    assert big.max_memory == engine.DEVICE_MEMORY_CAP
    assert gpu.chunks_per_call * gpu.chunk[0] * gpu.chunk[1] <= 2**23  # bounded work a call
    unknown = engine.backend_profile([_FakeDevice("tpu", fail=True)])
    assert unknown.max_memory == engine.DEFAULT_MAX_MEMORY and unknown.overlap


def test_accelerator_budget_keeps_a_1080p_frame_whole_and_tiles_the_big_image(real_model):
    # With the H200's default budget, a 1920x1080 frame is one tile (no halo work), while
    # 3456x4608 (the original's out-of-memory case) is split into tiles that fit.
    h200 = engine.backend_profile([_FakeDevice("gpu", {"bytes_limit": 141 * 10**9})])
    s = engine.RenderSettings(precision="bfloat16")
    tile = engine.choose_tile(real_model, (1080, 1920), s, h200.chunk, 1, chunks_per_call=h200.chunks_per_call,
                              overlap=True, max_memory=h200.max_memory)
    assert tile == 1920
    tile = engine.choose_tile(real_model, (4608, 3456), s, h200.chunk, 1, chunks_per_call=h200.chunks_per_call,
                              overlap=True, max_memory=h200.max_memory)
    assert 1000 <= tile < 3456


def test_accelerator_shaped_calls_equal_the_cpu_shaped_render(tiny_model, monkeypatch):
    # The accelerator profile on this CPU: big calls with skipped empty slots, the next
    # tile's encoder overlapping the current decode, several tiles. Same image, bit for bit.
    image = read_rgb01(COFFEE)
    reference = engine.render(tiny_model, image, (97, 61), raw=True, settings=settings())
    accel = engine.BackendProfile("gpu", (16, 32), 5, engine.DEFAULT_MAX_MEMORY, overlap=True)
    monkeypatch.setattr(engine, "backend_profile", lambda devices: accel)
    for tile in (None, 4, 9):
        out = engine.render(tiny_model, image, (97, 61), raw=True, settings=settings(tile=tile))
        assert np.array_equal(out, reference)


def test_integer_input_is_converted_on_the_device_exactly(real_model):
    from PIL import Image

    codes = np.asarray(Image.open(COFFEE).convert("RGB"))
    as_float = codes.astype(np.float32) / np.float32(255)
    for out_dtype in (np.float32, np.uint8):
        ref = engine.render(real_model, as_float, (61, 37), settings=settings(), out_dtype=out_dtype)
        assert np.array_equal(engine.render(real_model, codes, (61, 37), settings=settings(),
                                            out_dtype=out_dtype), ref)
    deep = (codes.astype(np.uint16) * 257 + 3).astype(">u2")  # 16-bit, big-endian on purpose
    ref = engine.render(real_model, deep.astype(np.float32) / np.float32(65535), (61, 37),
                        settings=settings())
    assert np.array_equal(engine.render(real_model, deep, (61, 37), settings=settings()), ref)
    # The API hands integer RGB arrays to the engine as they are: same result as floats.
    assert np.array_equal(liif_jax.upscale(codes, scale=1.5, model=real_model, precision="float32"),
                          liif_jax.upscale(as_float, scale=1.5, model=real_model, precision="float32"))


def test_an_extreme_aspect_ratio_is_refused_within_the_budget(tiny_model):
    # 1 x 99,999,999 is under the pixel limit, but its per-axis geometry alone is ~6 GB:
    # it must be refused up front, not discovered by running out of memory.
    with pytest.raises(RequestError, match="too small.*needs at least"):
        liif_jax.upscale(np.zeros((2, 2, 3), np.uint8), size=(99_999_999, 1), model=tiny_model)


def test_a_too_small_budget_says_what_would_suffice(real_model):
    image = np.zeros((200, 200, 3), np.uint8)
    with pytest.raises(RequestError) as info:
        liif_jax.upscale(image, scale=2, model=real_model, max_memory=420 * 2**20)
    message = str(info.value)
    assert "reserved for the runtime" in message
    enough = int(message.split("needs at least ")[1].split(" MB")[0])
    # The figure it names is enough (the tile is chosen, nothing is refused).
    tile = engine.choose_tile(real_model, (200, 200), settings(max_memory=enough * 2**20),
                              (32, 64), 1, fixed_bytes=engine.fixed_render_bytes((200, 200), (400, 400), 4),
                              chunks_per_call=engine.backend_profile(jax.local_devices()).chunks_per_call)
    assert 8 <= tile < 200


def test_cancel_stops_dispatching_at_once(tiny_model, monkeypatch):
    # Progress comes per call; a cancel leaves at most the one call already in flight behind
    # (calls are sized to ~0.1-0.5 s, so Cancel acts within about a second).
    calls = []
    real = engine._decode_call

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "_decode_call", counting)
    s = settings(chunk=(8, 16), chunks_per_call=1)
    engine.render(tiny_model, read_rgb01(COFFEE), (97, 61), settings=s)
    assert len(calls) == 13 * 4  # ceil(97 / 8) x ceil(61 / 16) chunks, one a call
    calls.clear()
    with pytest.raises(engine.Cancelled):
        engine.render(tiny_model, read_rgb01(COFFEE), (97, 61), settings=s,
                      progress=lambda done, total: False)
    assert len(calls) == 2  # the call reported on, and the one dispatched before it was read
