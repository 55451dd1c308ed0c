"""The folder runs the command prints, called as library functions: ``folders.upscale_folder``
(and ``upscale_file``, which Beam calls too) and ``evaluate.evaluate_folder``. One failing file
is reported through ``on_error`` and listed; the others are done; progress reaches the total."""

import numpy as np
import pytest
from PIL import Image

from liif_jax.errors import RequestError
from liif_jax.evaluate import EvalFailure, eval_images, evaluate_folder
from liif_jax.folders import (FileFailure, UpscaleRequest, pending_work, plan_folder, upscale_file,
                              upscale_folder)


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 32), dtype=np.uint8)).save(root / "sub" / "b.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return root


def test_upscale_folder_reports_a_failure_and_does_the_rest(folder, tmp_path, tiny_model):
    out = tmp_path / "out"
    request = UpscaleRequest(scale=2)
    work = pending_work(plan_folder(folder, out), request)
    assert [j.rel.as_posix() for j in work.todo] == ["a.png", "broken.png", "sub/b.png"]
    assert work.pixels == [72 * 96, 0, 80 * 64] and work.skipped == 0  # a broken header: 0
    seen, reported = [], []
    result = upscale_folder(work, request, tiny_model, on_error=reported.append,
                            progress=lambda done, total: seen.append((done, total)))
    assert (result.upscaled, result.skipped) == (2, 0)
    assert result.failures == reported and [str(f.rel) for f in reported] == ["broken.png"]
    assert isinstance(reported[0], FileFailure) and "\n" not in reported[0].message
    assert str(reported[0]).startswith("broken.png: input 'broken.png'")
    assert seen[-1] == (work.total_pixels, work.total_pixels)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    assert Image.open(out / "sub" / "b.png").size == (64, 80)
    # The same file, alone, is the same bytes (the Beam pipeline's path).
    upscale_file(folder / "a.png", tmp_path / "a.png", request, tiny_model)
    assert (tmp_path / "a.png").read_bytes() == (out / "a.png").read_bytes()
    # A second run skips what exists; overwrite redoes it.
    again = pending_work(plan_folder(folder, out), request)
    assert [j.rel.name for j in again.todo] == ["broken.png"] and again.skipped == 2
    assert len(pending_work(plan_folder(folder, out), request, overwrite=True).todo) == 3


def test_upscale_request_sizes(folder, tmp_path, tiny_model):
    with pytest.raises(RequestError, match="exactly one"):
        UpscaleRequest(scale=2, width=10)
    with pytest.raises(RequestError, match="exactly one"):
        UpscaleRequest()
    assert UpscaleRequest(width=96).render_size((36, 48)) == {"size": (96, 72)}
    assert UpscaleRequest(size=(8, 6), region=(0, 0, 4, 3)).planned_pixels((36, 48)) == 48
    assert UpscaleRequest(scale=2).planned_pixels(None) == 0  # header unknown
    assert UpscaleRequest(scale=-1).planned_pixels((36, 48)) == 0  # invalid: the run says why
    in_hw, out_hw = upscale_file(folder / "a.png", tmp_path / "o.npy", UpscaleRequest(height=54), tiny_model)
    assert (in_hw, out_hw) == ((36, 48), (54, 72))
    assert np.load(tmp_path / "o.npy").dtype == np.float32  # .npy: the float result


def test_evaluate_folder_reports_a_failure_and_measures_the_rest(folder, tiny_model):
    files = eval_images(folder)
    seen, reported = [], []
    result = evaluate_folder(folder, [2, 3, 40], tiny_model, files=files, on_error=reported.append,
                             progress=lambda done, total: seen.append((done, total)))
    assert result.failures == reported
    # In file order: a.png x40, broken.png itself (no scale), sub/b.png x40.
    assert [(f.image, f.scale) for f in reported] == [("a.png", 40), ("broken.png", None), ("sub/b.png", 40)]
    assert all(isinstance(f, EvalFailure) and "\n" not in f.message for f in reported)
    assert str(reported[0]) == "a.png: x40: scale 40 is too large for a 48x36 image"
    assert str(reported[1]).startswith("broken.png: input 'broken.png'")
    assert sorted((r.image, r.scale) for r in result.records) == [("a.png", 2), ("a.png", 3),
                                                                  ("sub/b.png", 2), ("sub/b.png", 3)]
    assert all(np.isfinite(r.psnr) and np.isfinite(r.ssim) for r in result.records)
    assert seen[-1] == (9, 9) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_eval_images_refuses_an_empty_or_missing_folder(tmp_path):
    with pytest.raises(RequestError, match="no images found"):
        eval_images(tmp_path)
    with pytest.raises(RequestError, match="not a folder"):
        eval_images(tmp_path / "missing")
