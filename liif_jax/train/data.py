"""Training data: the paper's "implicit downsampled" sampling from any folder of HR images.

Per item, as the original's ``sr-implicit-downsampled`` wrapper (train_edsr-baseline-liif):
- a scale s ~ U(scale_min, scale_max) (1 to 4);
- a random square HR crop of round(inp_size * s) pixels (inp_size 48);
- its LR: PIL bicubic of the 8-bit crop to inp_size x inp_size;
- augmentation: each of a row flip, a column flip and a transpose with probability 1/2,
  applied to LR and HR alike;
- ``sample_q`` (2304) distinct HR pixels: their coordinates (pixel centres, ``make_coord``),
  cells (2 / crop size) and colours.

An epoch visits every image ``repeat`` times (item ``i`` is image ``i % len(files)``).
Everything random comes from ``numpy.random.default_rng((seed, epoch, item))`` and the
epoch's order from ``default_rng((seed, epoch))``, so the batch of global step ``n`` is a pure
function of (seed, n): a run is reproducible item by item and resumes at any step without
replaying anything. ``BatchLoader`` builds those batches on threads, ahead of the device.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from liif_jax import geometry
from liif_jax.errors import ImageError
from liif_jax.imageio import IMAGE_EXTENSIONS, find_images  # the finder of upscale and eval too

EXTENSIONS = tuple(IMAGE_EXTENSIONS)


class ImplicitDownsampled:
    def __init__(self, folder, inp_size: int = 48, scale_min: float = 1.0, scale_max: float = 4.0,
                 sample_q: int | None = 2304, augment: bool = True, cache: str | None = "memory",
                 repeat: int = 1):
        self.files = find_images(folder)
        if not self.files:
            raise ImageError(f"no training images ({', '.join(EXTENSIONS)}) found in {folder}")
        self.inp_size, self.scale_min, self.scale_max = inp_size, scale_min, scale_max
        self.sample_q, self.augment, self.cache, self.repeat = sample_q, augment, cache, repeat
        self._images: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._order_cache = (None, None)

    @classmethod
    def from_config(cls, folder, config) -> "ImplicitDownsampled":
        return cls(folder, inp_size=config.inp_size, scale_min=config.scale_min,
                   scale_max=config.scale_max, sample_q=config.sample_q, augment=config.augment,
                   cache=None if config.cache == "none" else config.cache, repeat=config.repeat)

    def __getstate__(self):
        """Pickled for grain's worker processes: without the lock (not picklable) and with the
        decoded images only when they are few (each worker otherwise decodes what it needs)."""
        state = dict(self.__dict__)
        del state["_lock"]
        if sum(a.nbytes for a in self._images.values()) > 256 * 2**20:
            state["_images"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Items per epoch: every image ``repeat`` times."""
        return len(self.files) * self.repeat

    def image(self, index: int) -> np.ndarray:
        """uint8 (H, W, 3) of file ``index`` (kept in memory when ``cache == "memory"``)."""
        index %= len(self.files)
        if index in self._images:
            return self._images[index]
        from liif_jax.imageio import read_image, to_uint8

        # read_image, as upscale and eval read: EXIF orientation applied, 16-bit and float
        # files scaled to 8 bits (not clipped), every decoder failure an ImageError.
        try:
            image, _ = read_image(self.files[index])
        except ImageError as exc:
            raise ImageError(f"cannot read training image {self.files[index]}: {exc}") from None
        pixels = np.repeat(image.pixels[..., None], 3, -1) if image.gray else image.pixels
        arr = to_uint8(pixels)
        if min(arr.shape[:2]) < round(self.inp_size * self.scale_max):
            raise ImageError(f"training image {self.files[index].name} is smaller than the largest "
                             f"crop ({round(self.inp_size * self.scale_max)} pixels)")
        if self.cache == "memory":
            with self._lock:
                self._images[index] = arr
        return arr

    def preload(self, threads: int = 4) -> None:
        """Decode (and with the memory cache, keep) every image now, so a bad or too small
        file is reported before training starts rather than hours into it."""
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(self.image, range(len(self.files))))

    def item(self, index: int, seed: int, epoch: int) -> dict:
        """One training example: ``inp`` (inp_size, inp_size, 3) in [0, 1], ``coord``,
        ``cell`` (Q, 2) and ``gt`` (Q, 3) in [0, 1]."""
        from PIL import Image

        rng = np.random.default_rng((seed, epoch, index))
        hr = self.image(index)
        s = rng.uniform(self.scale_min, self.scale_max)
        w_hr = round(self.inp_size * s)
        y0 = int(rng.integers(0, hr.shape[0] - w_hr + 1))
        x0 = int(rng.integers(0, hr.shape[1] - w_hr + 1))
        crop = hr[y0:y0 + w_hr, x0:x0 + w_hr]
        lr = np.asarray(Image.fromarray(crop).resize((self.inp_size, self.inp_size), Image.BICUBIC))
        if self.augment:
            flips = rng.random(3) < 0.5
            lr, crop = (_augment(a, *flips) for a in (lr, crop))
        coord = geometry.make_coord(crop.shape[:2])
        rgb = crop.reshape(-1, 3)
        if self.sample_q is not None:
            pick = rng.choice(len(coord), self.sample_q, replace=False)
            coord, rgb = coord[pick], rgb[pick]
        cell = geometry.make_cell(crop.shape[:2], len(coord))
        to01 = lambda a: a.astype(np.float32) / np.float32(255)  # noqa: E731
        return {"inp": to01(lr), "coord": coord, "cell": cell, "gt": to01(rgb)}

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """The epoch's item order (kept for the last epoch asked: every step of it reads it)."""
        key, order = self._order_cache
        if key != (seed, epoch):
            order = np.random.default_rng((seed, epoch)).permutation(len(self))
            self._order_cache = ((seed, epoch), order)  # one assignment: safe across threads
        return order

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self) // batch_size

    def step_items(self, step: int, batch_size: int, seed: int) -> tuple[int, np.ndarray]:
        """(epoch, item numbers) of global step ``step`` (0-based); the tail of an epoch that
        does not fill a batch is dropped, as a DataLoader with drop_last does."""
        per_epoch = self.steps_per_epoch(batch_size)
        if per_epoch < 1:
            raise ImageError(f"an epoch has {len(self)} items ({len(self.files)} images x repeat "
                             f"{self.repeat}), fewer than one batch of {batch_size}")
        epoch, b = divmod(step, per_epoch)
        return epoch, self.epoch_order(seed, epoch)[b * batch_size:(b + 1) * batch_size]

    def host_batch(self, items, seed: int, epoch: int, map_fn=map):
        """A ``train.step.Batch`` of the given items (``map_fn`` may run them on threads)."""
        from liif_jax.train.step import make_batch

        made = list(map_fn(lambda i: self.item(int(i), seed, epoch), items))
        stack = {k: np.stack([it[k] for it in made]) for k in made[0]}
        return make_batch(stack["inp"], stack["coord"], stack["cell"], stack["gt"])

    def batches(self, batch_size: int, seed: int, epoch: int, start: int = 0):
        """Host batches (``train.step.Batch``) of one epoch, from batch number ``start``."""
        per_epoch = self.steps_per_epoch(batch_size)
        for b in range(start, per_epoch):
            epoch_, items = self.step_items(epoch * per_epoch + b, batch_size, seed)
            yield self.host_batch(items, seed, epoch_)


class BatchLoader:
    """Host batches for global steps ``start .. stop-1``, built ahead of use.

    A feeder thread assembles batches in step order, each batch's items on a pool of
    ``threads`` (PIL's resize and NumPy release the GIL), and keeps up to ``depth`` finished
    batches queued, so the device never waits for the host in steady state. In a multi-process
    run each process builds only its share of every global batch
    (``process_index``/``process_count``). Iterating yields ``(step, Batch)``; an error in the
    feeder is raised in the consumer. ``close()`` (or leaving a ``with`` block) stops it.
    """

    def __init__(self, dataset: ImplicitDownsampled, batch_size: int, seed: int, start: int, stop: int,
                 threads: int = 4, depth: int = 4, process_index: int = 0, process_count: int = 1):
        if batch_size % process_count:
            raise ImageError(f"batch size {batch_size} does not split over {process_count} processes")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.start, self.stop = start, stop
        self.share = batch_size // process_count
        self.offset = process_index * self.share
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stopped = threading.Event()
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="liif-data")
        self._feeder = threading.Thread(target=self._feed, name="liif-data-feeder", daemon=True)
        self._feeder.start()

    def _put(self, entry) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _feed(self):
        try:
            for step in range(self.start, self.stop):
                epoch, items = self.dataset.step_items(step, self.batch_size, self.seed)
                mine = items[self.offset:self.offset + self.share]
                batch = self.dataset.host_batch(mine, self.seed, epoch, map_fn=self._pool.map)
                if not self._put((step, batch, None)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put((None, None, exc))

    def __iter__(self):
        for _ in range(self.start, self.stop):
            step, batch, error = self._queue.get()
            if error is not None:
                raise error
            yield step, batch

    def close(self):
        self._stopped.set()
        self._feeder.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _augment(a: np.ndarray, flip_rows: bool, flip_cols: bool, transpose: bool) -> np.ndarray:
    if flip_rows:
        a = a[::-1]
    if flip_cols:
        a = a[:, ::-1]
    if transpose:
        a = a.transpose(1, 0, 2)
    return np.ascontiguousarray(a)
