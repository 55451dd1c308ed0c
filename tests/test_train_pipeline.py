"""The grain input pipeline: the threaded loader's batches exactly, resumable mid-epoch from
its saved iterator state, sharded per process, with worker processes too."""

import numpy as np
import pytest
import skimage.data
from PIL import Image

from liif_jax.train.data import BatchLoader, ImplicitDownsampled

grain = pytest.importorskip("grain", reason="grain is not installed (pip install grain)")

from liif_jax.train import pipeline  # noqa: E402
from liif_jax.train.pipeline import GrainLoader, ThreadLoader, auto_workers  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for i, img in enumerate([skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]):
        Image.fromarray(img[:80, :112]).save(root / f"p{i}.png")
    return ImplicitDownsampled(root, inp_size=16, sample_q=32, repeat=3)  # 9 items: 2 steps of 4 per epoch


def same_batches(got, want):
    assert [s for s, _ in got] == [s for s, _ in want]
    for (_, a), (_, b) in zip(got, want):
        assert type(a).__name__ == "Batch"
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_grain_gives_the_threaded_loaders_batches(data):
    with BatchLoader(data, 4, seed=3, start=1, stop=7, threads=2) as loader:
        want = list(loader)
    with GrainLoader(data, 4, seed=3, start=1, stop=7, threads=3, depth=2) as loader:
        got = list(loader)
    same_batches(got, want)  # steps 1..6 span epochs 0..3, each with its own order


def test_resume_mid_epoch_from_the_saved_iterator_state(data):
    with GrainLoader(data, 4, seed=0, start=0, stop=9) as loader:
        everything = list(loader)
    with GrainLoader(data, 4, seed=0, start=0, stop=9) as loader:
        batches = iter(loader)
        first = [next(batches) for _ in range(3)]  # step 3 is the middle of epoch 1
        state = loader.state(3)
    assert state["loader"] == "grain" and state["origin"] == 0 and '"next_index": 3' in state["grain"]
    with GrainLoader(data, 4, seed=0, start=3, stop=9, state=state) as loader:
        rest = list(loader)
        assert loader.origin == 0  # the saved pipeline, continued
    same_batches(first + rest, everything)
    # a state of another pipeline (here: another worker count) is dropped: built from the step
    with GrainLoader(data, 4, seed=0, start=3, stop=9, state={**state, "workers": 5}) as loader:
        assert loader.origin == 3
        same_batches(list(loader), everything[3:])


def test_each_process_builds_its_share_of_every_batch(data):
    whole = list(GrainLoader(data, 4, 0, 0, 2))
    parts = [list(GrainLoader(data, 4, 0, 0, 2, process_index=i, process_count=2)) for i in (0, 1)]
    for n, (_, batch) in enumerate(whole):
        for field, x in enumerate(batch):
            np.testing.assert_array_equal(x, np.concatenate([parts[0][n][1][field], parts[1][n][1][field]]))


def test_worker_processes_give_the_same_batches_and_state(data):
    with BatchLoader(data, 4, seed=1, start=0, stop=5) as loader:
        want = list(loader)
    with GrainLoader(data, 4, seed=1, start=0, stop=5, workers=2, depth=2) as loader:
        batches = iter(loader)
        got = [next(batches) for _ in range(2)]
        state = loader.state(2)
    with GrainLoader(data, 4, seed=1, start=2, stop=5, workers=2, depth=2, state=state) as loader:
        assert loader.origin == 0
        got += list(loader)
    same_batches(got, want)


def test_errors_reach_the_consumer_naming_the_image(tmp_path):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "small.png")
    small = ImplicitDownsampled(tmp_path, inp_size=16, sample_q=8, cache=None)
    with pytest.raises(Exception, match="small.png is smaller than the largest crop"):
        with GrainLoader(small, 1, 0, 0, 3) as loader:
            list(loader)


def test_thread_loader_state_is_the_step(data):
    with ThreadLoader(data, 4, 0, 2, 4) as loader:
        assert [s for s, _ in loader] == [2, 3]
        assert loader.state(4) == {"loader": "threads", "step": 4}


def test_automatic_worker_count():
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert auto_workers(3) == 3 and auto_workers(0) == 0
    assert auto_workers(-1) == max(0, min(8, cores - 2))


@pytest.mark.parametrize("loader", ["grain", "threads"])
def test_loader_threads_are_capped_at_the_cores(data, monkeypatch, loader):
    # The sampler holds the GIL for much of an item: threads beyond the cores only queue for it.
    import dataclasses

    from liif_jax.configs import load_config

    config = dataclasses.replace(load_config("tiny"), loader=loader, loader_threads=4, loader_workers=0)
    monkeypatch.setattr(pipeline, "usable_cores", lambda: 2)
    assert pipeline.host_threads(4) == 2 and pipeline.host_threads(1) == 1
    with pipeline.make_loader(data, config, 0, 1) as made:
        assert made.kind == loader and made.threads == 2
        assert [s for s, _ in made] == [0]
    monkeypatch.setattr(pipeline, "usable_cores", lambda: 16)
    with pipeline.make_loader(data, config, 0, 1) as made:
        assert made.threads == 4


def test_batches_are_c_contiguous_so_workers_pass_them_in_shared_memory(data):
    # grain's worker processes hand C-contiguous arrays over in shared memory and pickle any
    # other array through a pipe -- which, with batches in flight at close, left each worker
    # blocked until grain killed it, leaking its shared memory.
    with GrainLoader(data, 4, seed=0, start=0, stop=2) as loader:
        for _, batch in loader:
            assert all(x.flags.c_contiguous for x in batch)


@pytest.mark.parametrize("taken", ["one", "all"])
def test_closing_with_batches_in_flight_ends_the_workers_cleanly(tmp_path, taken):
    import subprocess
    import sys

    # The resource tracker reports leaked shared memory only when the interpreter exits, so
    # this runs in a process of its own: take one batch of many (or all of them), close, exit.
    # grain's close() kills a worker that has not ended after 25 s; every worker must end by
    # itself, and the shared memory of every batch taken must be freed before the exit.
    script = tmp_path / "close_early.py"
    script.write_text(
        "import multiprocessing.process, sys\n"
        "from liif_jax.train.data import ImplicitDownsampled\n"
        "from liif_jax.train.pipeline import GrainLoader\n"
        "killed = []\n"
        "kill = multiprocessing.process.BaseProcess.kill\n"
        "def record_kill(process):\n"
        "    killed.append(process.pid)\n"
        "    kill(process)\n"
        "multiprocessing.process.BaseProcess.kill = record_kill\n"
        "if __name__ == '__main__':\n"
        "    data = ImplicitDownsampled(sys.argv[1], inp_size=48, repeat=16)\n"
        "    loader = GrainLoader(data, 16, seed=0, start=0, stop=40, workers=2, depth=4)\n"
        "    batches = iter(loader)\n"
        "    for _ in range(1 if sys.argv[2] == 'one' else 40):\n"
        "        next(batches)\n"
        "    loader.close()\n"
        "    print('closed; workers killed:', len(killed), flush=True)\n")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):  # the paper's batch: 48x48 crops at scales up to 4 need 192 pixels a side
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (200, 200, 3), np.uint8)).save(photos / f"{i}.png")
    proc = subprocess.run([sys.executable, str(script), str(photos), taken], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "closed; workers killed: 0" in proc.stdout  # grain kills a worker that does not stop
    assert "leaked" not in proc.stderr, proc.stderr[-2000:]
    assert "terminated unexpectedly" not in proc.stderr
