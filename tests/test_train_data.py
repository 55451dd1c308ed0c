"""Training data: the original's implicit-downsampled sampling, deterministic and resumable."""

import numpy as np
import pytest
import skimage.data
from PIL import Image

from liif_jax import geometry
from liif_jax.errors import ImageError
from liif_jax.train.data import ImplicitDownsampled


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("hr")
    (root / "sub").mkdir()
    Image.fromarray(skimage.data.astronaut()[:256, :256]).save(root / "a.png")
    Image.fromarray(skimage.data.chelsea()).save(root / "sub" / "b.jpg", quality=95)
    Image.fromarray(skimage.data.coffee()[:220, :300]).save(root / "c.webp", lossless=True)
    (root / "notes.txt").write_text("ignored")
    return root


def test_items_are_shaped_like_the_originals(folder):
    data = ImplicitDownsampled(folder)
    assert len(data) == 3
    item = data.item(0, seed=0, epoch=0)
    assert item["inp"].shape == (48, 48, 3) and item["inp"].dtype == np.float32
    assert item["coord"].shape == item["cell"].shape == (2304, 2) and item["gt"].shape == (2304, 3)
    w_hr = round(2 / float(item["cell"][0, 0]))
    assert 48 <= w_hr <= 192
    assert np.all(item["cell"] == np.float32(2 / w_hr))
    assert np.abs(item["coord"]).max() < 1
    assert len({tuple(c) for c in item["coord"]}) == 2304  # distinct pixels


@pytest.mark.parametrize("augment,tolerance", [(False, 0), (True, 2)])
def test_lr_is_bicubic_of_the_hr_crop(folder, augment, tolerance):
    # Exact without augmentation; with it, flips/transposes are applied after the resize (as
    # the original does), and PIL's fixed-point bicubic commutes with them only to 2 levels.
    data = ImplicitDownsampled(folder, sample_q=None, augment=augment)
    for index in range(3):
        for epoch in range(4):
            item = data.item(index, seed=1, epoch=epoch)
            w_hr = round(np.sqrt(len(item["gt"])))
            hr = np.rint(item["gt"] * 255).astype(np.uint8).reshape(w_hr, w_hr, 3)
            assert np.array_equal(item["coord"], geometry.make_coord((w_hr, w_hr)))
            lr = np.asarray(Image.fromarray(hr).resize((48, 48), Image.BICUBIC)).astype(np.int16)
            assert np.abs(lr - np.rint(item["inp"] * 255)).max() <= tolerance


def test_deterministic_per_seed_and_epoch(folder):
    a, b = ImplicitDownsampled(folder), ImplicitDownsampled(folder, cache=None)
    one, two = a.item(2, 5, 3), b.item(2, 5, 3)
    assert all(np.array_equal(one[k], two[k]) for k in one)
    other = a.item(2, 6, 3)
    assert not np.array_equal(one["coord"], other["coord"])
    orders = {tuple(a.epoch_order(0, e)) for e in range(10)}
    assert len(orders) > 1 and all(sorted(o) == [0, 1, 2] for o in orders)
    assert np.array_equal(a.epoch_order(0, 4), b.epoch_order(0, 4))


def test_batches_resume_mid_epoch(folder):
    data = ImplicitDownsampled(folder, sample_q=100)
    full = list(data.batches(1, seed=0, epoch=2))
    resumed = list(data.batches(1, seed=0, epoch=2, start=1))
    assert len(full) == 3 and len(resumed) == 2
    for x, y in zip(full[1:], resumed):
        assert all(np.array_equal(p, q) for p, q in zip(x, y))
    batch = full[0]
    assert batch.inp.shape == (1, 48, 48, 3) and batch.index.shape == (1, 4, 100, 2)
    assert batch.inp.min() >= -1 and batch.inp.max() <= 1  # normalised


def test_bad_folders(tmp_path):
    with pytest.raises(ImageError, match="no training images"):
        ImplicitDownsampled(tmp_path)
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ImageError, match="smaller than the largest crop"):
        ImplicitDownsampled(tmp_path).item(0, 0, 0)


def test_steps_on_pipeline_batches_lower_the_loss(folder, tiny_model):
    import optax

    from liif_jax.train.step import make_train_step

    data = ImplicitDownsampled(folder, sample_q=256)
    batch = next(data.batches(2, seed=0, epoch=0))
    optimizer = optax.adam(1e-3)
    step = make_train_step(tiny_model.module, optimizer)
    params, state = tiny_model.params, optimizer.init(tiny_model.params)
    losses = []
    for _ in range(30):
        params, state, loss = step(params, state, batch)
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0]
