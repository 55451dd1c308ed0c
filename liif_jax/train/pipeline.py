"""The training input pipeline on grain, with the threaded loader as the fallback.

The paper's sampler of ``train.data`` (random crop at a random scale, bicubic downsampling,
augmentation, ``sample_q`` query pixels) runs as three grain transforms over a
``grain.MapDataset`` of global step numbers::

    MapDataset.range(origin, stop)          one element per training step
      .map(StepItems)                       step -> (epoch, this process's item numbers)
      .map(SampleItems)                     -> the items (ImplicitDownsampled.item)
      .map(QueryGeometry)                   -> a train.step.Batch (make_batch)
      .to_iter_dataset(ReadOptions)         threads build several steps at once
      [.mp_prefetch(workers)]               worker processes, where the host has the cores

Everything random is still drawn from ``default_rng((seed, epoch, item))`` and the epoch's order
from ``default_rng((seed, epoch))``, so a batch is a pure function of (seed, step) whichever
loader built it, and the grain pipeline yields exactly the threaded loader's batches. An
element is a whole step (not an item) so that grain's worker processes, which each take every
W-th element, still hand back complete batches in step order.

Sharding per JAX process: process i of n builds items ``[i*B/n, (i+1)*B/n)`` of every global
batch of B, which ``jax.make_array_from_process_local_data`` joins into the global batch.

Resume: the loader's ``state()`` (grain's iterator state and the step the pipeline started at)
goes into each checkpoint; restoring it continues mid-epoch exactly where the run stopped. A
state that does not fit (another worker count, another loader) is dropped and the pipeline
starts at the checkpoint's step, which yields the same batches.

grain is an optional dependency (not available on every platform, e.g. Windows); without it
``make_loader`` falls back to ``train.data.BatchLoader``, the threaded loader.
"""

from __future__ import annotations

import json
import os

import numpy as np

from liif_jax.errors import LoaderChoiceError


def grain_available() -> bool:
    try:
        import grain  # noqa: F401
    except ImportError:
        return False
    return True


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_workers(requested: int) -> int:
    """Worker processes for grain: ``requested`` when >= 0; else one per core beyond two (the
    training process and its device feeding keep two busy), at most 8. 0 = threads only."""
    if requested >= 0:
        return requested
    return max(0, min(8, usable_cores() - 2))


def host_threads(requested: int) -> int:
    """Threads that build batches in one process: ``requested``, but never more than the cores.

    The sampler holds the GIL for much of an item (NumPy on small arrays, the RNG, Python);
    threads beyond the cores only queue for it. On 2 cores, with 4 threads for paper and 2 for
    tiny, grain measured 1.02x and 0.92x the threaded loader; capped, 1.16x and 1.40x
    (``benchmarks/bench_train.py --loader-only``, docs/training.md)."""
    return max(1, min(requested, usable_cores()))


class StepItems:
    """grain map (a plain callable, so this module imports without grain): global step -> (step, epoch, this process's item numbers of that step)."""

    def __init__(self, dataset, batch_size: int, seed: int, offset: int, share: int):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.offset, self.share = offset, share

    def __call__(self, step):
        step = int(step)
        epoch, items = self.dataset.step_items(step, self.batch_size, self.seed)
        return step, epoch, items[self.offset:self.offset + self.share]


class SampleItems:
    """grain map: the paper's sampler on each item (``ImplicitDownsampled.item``)."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __call__(self, element):
        step, epoch, items = element
        return step, [self.dataset.item(int(i), self.seed, epoch) for i in items]


class QueryGeometry:
    """grain map: stack the items and compute every query's geometry (``make_batch``)."""

    def __call__(self, element):
        from liif_jax.train.step import make_batch

        step, made = element
        stack = {k: np.stack([it[k] for it in made]) for k in made[0]}
        batch = make_batch(stack["inp"], stack["coord"], stack["cell"], stack["gt"])
        # C-contiguous arrays travel from grain's worker processes in shared memory; any
        # other array is pickled through the worker's pipe, which is slow and, when the loader
        # closes with batches in flight, blocks each worker until grain kills it (25 s each,
        # and the killed worker's shared memory leaks).
        return step, tuple(np.ascontiguousarray(x) for x in batch)


def _absl_flags_parsed():
    """grain's worker processes read absl flags, which a program not started by absl.app has
    never parsed: take the defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _release_shared_memory():
    """Batches from grain's worker processes live in shared memory that grain unlinks when
    the last array using it is freed -- some only by the cycle collector, and then on a
    background thread. Left to the end of the program, the resource tracker reports them as
    leaked (and unlinks them itself): free them now and wait for that thread."""
    import gc

    gc.collect()
    try:  # grain's own deleter pool (a private name: without it there is nothing to wait for)
        from grain._src.python.ipc.shared_memory_array import SharedMemoryArray
    except ImportError:
        return
    pool = getattr(SharedMemoryArray, "_del_thread_pool", None)
    if pool is not None:
        pool.apply(int)  # one thread, first in first out: runs after every queued deletion


class GrainLoader:
    """Host batches for global steps ``start .. stop-1`` from the grain pipeline above.

    Iterating yields ``(step, Batch)`` as ``BatchLoader`` does; ``state()`` is what to save with
    the checkpoint after the last batch taken."""

    kind = "grain"

    def __init__(self, dataset, batch_size: int, seed: int, start: int, stop: int, *, threads: int = 4,
                 depth: int = 4, workers: int = 0, process_index: int = 0, process_count: int = 1,
                 state: dict | None = None):
        import grain

        from liif_jax.errors import ImageError

        if batch_size % process_count:
            raise ImageError(f"batch size {batch_size} does not split over {process_count} processes")
        share = batch_size // process_count
        self.start, self.stop, self.workers, self.threads = start, stop, workers, max(1, threads)
        saved = self._usable(state, start, workers, process_count)
        self.origin = saved["origin"] if saved else start
        ds = grain.MapDataset.range(self.origin, stop)
        ds = ds.map(StepItems(dataset, batch_size, seed, process_index * share, share))
        ds = ds.map(SampleItems(dataset, seed))
        ds = ds.map(QueryGeometry())
        # grain wants a buffer at least as deep as its thread count
        it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, threads),
                                                     prefetch_buffer_size=max(1, depth, threads)))
        if workers > 0:
            _absl_flags_parsed()
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                                   per_worker_buffer_size=max(1, depth // workers)))
        self.process_count = process_count
        self._iterator = iter(it_ds)
        if saved:
            self._iterator.set_state(json.loads(saved["grain"]))

    @staticmethod
    def _usable(state, start, workers, process_count):
        """The saved state when it was written by an equal pipeline and points at ``start``."""
        if not state or state.get("loader") != "grain" or "grain" not in state or "origin" not in state:
            return None
        if state.get("workers") != workers or state.get("process_count") != process_count:
            return None
        if state.get("step") != start or not isinstance(state.get("origin"), int) or state["origin"] > start:
            return None
        return state

    def state(self, step: int) -> dict:
        return {"loader": self.kind, "step": step, "origin": self.origin, "workers": self.workers,
                "process_count": self.process_count, "grain": json.dumps(self._iterator.get_state())}

    def __iter__(self):
        for _ in range(self.start, self.stop):
            # No local names the batch: a paused generator then holds no shared memory.
            yield self._next_batch()

    def _next_batch(self):
        from liif_jax.train.step import Batch

        step, fields = next(self._iterator)
        return int(step), Batch(*fields)

    def close(self):
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()
        self._iterator = None
        if self.workers > 0:
            _release_shared_memory()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ThreadLoader:
    """``train.data.BatchLoader`` with the loader interface (its state is the step alone: the
    batches are a pure function of (seed, step))."""

    kind = "threads"
    workers = 0

    def __init__(self, dataset, batch_size, seed, start, stop, *, threads=4, depth=4, process_index=0,
                 process_count=1):
        from liif_jax.train.data import BatchLoader

        self.threads = max(1, threads)
        self._loader = BatchLoader(dataset, batch_size, seed, start, stop, threads, depth,
                                   process_index, process_count)

    def state(self, step: int) -> dict:
        return {"loader": self.kind, "step": step}

    def __iter__(self):
        return iter(self._loader)

    def close(self):
        self._loader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_loader(dataset, config, start: int, stop: int, *, process_index: int = 0, process_count: int = 1,
                state: dict | None = None, note=None):
    """The loader ``config.loader`` names ("grain" or "threads"); "grain" without grain
    installed falls back to threads with a ``note``. Either runs ``host_threads`` threads."""
    kind = getattr(config, "loader", "grain")
    if kind not in ("grain", "threads"):
        raise LoaderChoiceError(f"config: loader must be 'grain' or 'threads', got {kind!r}")
    if kind == "grain" and not grain_available():
        if note is not None:
            note("note: grain is not installed (pip install grain); using the threaded loader")
        kind = "threads"
    common = dict(threads=host_threads(config.loader_threads), depth=config.prefetch_batches,
                  process_index=process_index, process_count=process_count)
    if kind == "grain":
        return GrainLoader(dataset, config.batch_size, config.seed, start, stop,
                           workers=auto_workers(getattr(config, "loader_workers", -1)), state=state, **common)
    return ThreadLoader(dataset, config.batch_size, config.seed, start, stop, **common)
