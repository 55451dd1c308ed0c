"""A `train` start that fails on its inputs leaves the workdir as it was: no config.json, no
checkpoint folder, and no workdir at all when it did not exist before (issue 11, item 13)."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli


def _images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else None


# The tiny config: batch 4, repeat 1 (so at least 4 images), 16-pixel crops at scales up to 4
# (so every side at least 64 pixels).
@pytest.mark.parametrize("sizes, message", [
    ([], "no training images"),
    ([(80, 80)] * 3, "3 images x repeat 1 is fewer items than one batch of 4"),
    ([(80, 80)] * 3 + [(80, 40)], "smaller than the largest crop (64 pixels)"),
])
@pytest.mark.parametrize("workdir_exists", [False, True])
def test_a_failed_start_leaves_no_config_json(capsys, tmp_path, sizes, message, workdir_exists):
    data = _images(tmp_path / "data", sizes)
    workdir = tmp_path / "runs" / "wd"
    if workdir_exists:
        workdir.mkdir(parents=True)
        (workdir / "notes.txt").write_text("mine")
    before = _tree(workdir)
    code, out, err = run_cli(capsys, "train", "--config", "tiny", "--data", data, "--workdir", workdir,
                             "--steps", "1", "--quiet")
    assert code != 0 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert _tree(workdir) == before  # None: still not there
    assert not (tmp_path / "runs").exists() or workdir_exists


def test_unreadable_init_weights_leave_no_config_json(capsys, tmp_path):
    data = _images(tmp_path / "data", [(80, 80)] * 4)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not weights")
    code, _, err = run_cli(capsys, "train", "--config", "tiny", "--data", data, "--workdir", tmp_path / "wd",
                           "--init-from", bad, "--steps", "1", "--quiet")
    assert code != 0 and "bad.pth" in err and err.count("\n") == 1, err
    assert not (tmp_path / "wd").exists()


def test_bad_validation_data_leaves_no_config_json(capsys, tmp_path):
    data = _images(tmp_path / "data", [(80, 80)] * 4)
    empty = tmp_path / "val"
    empty.mkdir()
    code, _, err = run_cli(capsys, "train", "--config", "tiny", "--data", data, "--workdir", tmp_path / "wd",
                           "--val-data", empty, "--steps", "1", "--quiet")
    assert code != 0 and "--val-data has no images" in err and err.count("\n") == 1, err
    assert not (tmp_path / "wd").exists()


def test_without_the_memory_cache_sizes_are_still_checked_first(tmp_path):
    """``cache = "none"`` decodes nothing up front; the headers give the sizes."""
    from liif_jax.configs import load_config
    from liif_jax.errors import ImageError
    from liif_jax.train.loop import train

    data = _images(tmp_path / "data", [(80, 80)] * 3 + [(40, 80)])
    config = dataclasses.replace(load_config("tiny"), cache="none")
    with pytest.raises(ImageError, match="p3.png is smaller than the largest crop"):
        train(config, data, tmp_path / "wd", steps=1, quiet=True)
    assert not (tmp_path / "wd").exists()
