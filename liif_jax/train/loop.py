"""The training loop: data on threads, a jitted data-parallel step, logs, checkpoints, resume.

``train()`` is what ``liif-jax train`` runs; it is a plain function so notebooks and tests can
call it. One run lives in a *workdir*::

    workdir/config.json          the config of the first start (for the record)
    workdir/log.jsonl            one JSON record per log interval / validation
    workdir/checkpoints/         step_<N>.safetensors, the newest ``keep_checkpoints`` kept
    workdir/tensorboard/         event files, when tensorboardX is installed

Starting ``train()`` on a workdir that has checkpoints resumes from the newest complete one,
and because the batch of step n depends only on (seed, n) the resumed run is the
uninterrupted run, update for update. SIGINT/SIGTERM (Ctrl+C, a cluster's preemption notice)
finish the current step, save a checkpoint and stop.

Multi-process (``jax.distributed`` initialised by the caller): every process runs this loop
and builds its share of each global batch from its own copy of the data; process 0 alone
reads and writes the workdir (logs, checkpoints) and broadcasts the starting state, so the
other hosts need not share its filesystem.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from liif_jax.errors import (CheckpointError, DataPipelineError, LiifError, LiifWarning, RequestError,
                             TrainingInterrupted)


@dataclass
class TrainResult:
    step: int  # global step reached (updates done in total, across resumes)
    params: dict  # host (NumPy) params
    losses: list = field(default_factory=list)  # (step, mean loss) per log interval of this run
    val: list = field(default_factory=list)  # (step, mean PSNR) per validation of this run
    resumed_from: int | None = None


def _host(tree):
    """NumPy copy of a (replicated) device tree, using this process's local copy."""
    import jax

    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)) if hasattr(x, "addressable_data")
                                  else np.asarray(x), tree)


class _Log:
    """stdout lines (above the progress bar), ``log.jsonl`` and TensorBoard, process 0 only."""

    def __init__(self, workdir: Path, enabled: bool, echo, bar):
        self.enabled, self.echo, self.bar = enabled, echo, bar
        self.jsonl = (workdir / "log.jsonl").open("a", encoding="utf-8") if enabled else None
        self.tb = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                pass
            else:
                self.tb = SummaryWriter(str(workdir / "tensorboard"))

    def line(self, text: str):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            self.echo(text)

    def record(self, rec: dict):
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({**rec, "time": round(time.time(), 3)}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for key, value in rec.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key.replace("val_", "val/") if key.startswith("val_") else f"train/{key}",
                                       value, rec["step"])

    def close(self):
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


class _StopSignals:
    """SIGINT/SIGTERM set a flag (the loop saves and stops after the current step)."""

    def __init__(self):
        self.flag = threading.Event()
        self.name = None
        self.saved = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.flag.is_set() and signum == signal.SIGINT:  # a second Ctrl+C: stop now
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name
        self.flag.set()

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def _initial_model(config, init_from):
    """(spec, module, params or None, metadata): the config's model, or --init-from's."""
    from liif_jax.models import build_model, normalize_spec
    from liif_jax.weights import load_model

    if init_from is None:
        spec = normalize_spec(config.model)
        return spec, build_model(spec), None, {}
    model = load_model(None if init_from == "bundled" else init_from)
    meta = {"init_from": "bundled" if init_from == "bundled" else Path(init_from).name}
    if model.metadata.get("license"):
        meta["license"] = model.metadata["license"]
    return model.spec, model.module, model.params, meta


def validation_pairs(folder, scales, max_images: int):
    """[(name, scale, LR uint8, HR crop uint8)] with the paper's eval protocol."""
    from liif_jax.evaluate import lr_hr_pair
    from liif_jax.imageio import read_image, to_uint8
    from liif_jax.train.data import find_images

    files = find_images(folder)[:max_images]
    if not files:
        raise RequestError(f"--val-data has no images (PNG, JPEG, WebP, TIFF, BMP, ...): {folder}")
    pairs = []
    for path in files:
        image, _ = read_image(path)
        rgb = to_uint8(image.pixels if not image.gray else np.repeat(image.pixels[..., None], 3, -1))
        for s in scales:
            lr, crop = lr_hr_pair(rgb, s)
            pairs.append((path.name, s, lr, crop))
    return pairs


def validate(model, pairs) -> dict[float, float]:
    """Mean PSNR (div2k protocol) per scale of ``model`` on ``validation_pairs``."""
    from liif_jax import engine
    from liif_jax.evaluate import psnr

    by_scale: dict[float, list] = {}
    for _, s, lr, crop in pairs:
        pred = engine.render(model, lr.astype(np.float32) / np.float32(255), crop.shape[:2])
        by_scale.setdefault(s, []).append(psnr(pred, crop.astype(np.float32) / np.float32(255), s))
    return {s: float(np.mean(v)) for s, v in by_scale.items()}


def train(config, data, workdir, *, steps: int | None = None, init_from=None, val_data=None,
          devices=None, quiet: bool = False, echo=print) -> TrainResult:
    """Train (or resume training) up to global step ``steps`` (default ``config.total_steps``).

    ``init_from``: ``"bundled"`` or a weight file to fine-tune (ignored when resuming: the
    checkpoint has the newer params). ``devices``: the devices to split each batch over
    (default: all of them, of every process).
    """
    with _StopSignals() as stop_signals:  # from the start: a signal during setup is honoured too
        return _train(config, data, workdir, steps, init_from, val_data, devices, quiet, echo, stop_signals)


def _train(config, data, workdir, steps, init_from, val_data, devices, quiet, echo, stop_signals):
    import jax

    from liif_jax.models.spec import spec_to_json
    from liif_jax.train import checkpoint as ckpt
    from liif_jax.train.step import init_params, make_optimizer

    config = config.validate()
    stop = config.total_steps if steps is None else steps
    if stop < 1:
        raise RequestError(f"--steps must be >= 1, got {stop}")
    workdir = Path(workdir)
    lead = jax.process_index() == 0
    devices = list(devices) if devices is not None else jax.devices()
    if config.batch_size % len(devices):
        raise RequestError(f"batch size {config.batch_size} does not split over {len(devices)} devices; "
                           f"use a multiple of {len(devices)}")
    # Every input is checked before the workdir is touched: a start that fails here (no images,
    # too few for a batch, one unreadable or smaller than the largest crop, unreadable
    # --init-from or --val-data) creates no workdir and leaves an existing one as it was.
    spec, module, params, run_meta = _initial_model(config, init_from)
    dataset, per_epoch = _training_data(data, config)
    pairs = validation_pairs(val_data, config.val_scales, config.val_max_images) if val_data else None
    optimizer = make_optimizer(config)
    params_template = jax.eval_shape(lambda: init_params(module, 0))
    opt_template = jax.eval_shape(optimizer.init, params_template)
    notes = []  # shown once the log exists
    start, resumed_from, data_state, changed = 0, None, None, []
    checkpointer = None
    if lead:
        search = ckpt.find_latest(workdir, spec_json=spec_to_json(spec), params_template=params_template,
                                  opt_template=opt_template)  # reads only; a new workdir has none
        if search.restored is None and any(isinstance(s.error, ckpt.OtherModelError) for s in search.skipped):
            raise CheckpointError(f"{workdir} holds a run of a different model; use a new --workdir")
        workdir.mkdir(parents=True, exist_ok=True)
        if not (workdir / "config.json").exists():
            (workdir / "config.json").write_text(config.to_json() + "\n", encoding="utf-8")
        checkpointer = ckpt.Checkpointer(workdir, config.keep_checkpoints)
        for skip in search.skipped:
            aside = f" and moved to {ckpt.SKIPPED_DIR}/" if skip.path.is_dir() else ""
            warnings.warn(f"{skip.reason}; skipped{aside}", LiifWarning, stacklevel=3)
        checkpointer.set_aside(search.skipped)
        restored = search.restored
        if restored is not None:
            start, params, opt_state = restored.step, restored.params, restored.opt_state
            data_state = restored.data_state
            run_meta = {k: restored.meta[k] for k in ("init_from", "license") if k in restored.meta}
            resumed_from = start
            changed = config_changes(restored.meta.get("config"), config)
            if restored.legacy:
                notes.append(f"read {restored.path.name} (liif-jax 0.1.x format); new checkpoints are "
                             f"written in Orbax's format beside it, the old files are left as they are")
        elif search.skipped:
            notes.append("no usable checkpoint (see the warnings above): training starts from the beginning")
    if resumed_from is None:
        if params is None:
            params = init_params(module, config.seed)
        opt_state = optimizer.init(params)
    if jax.process_count() > 1:
        # Process 0's state is the run's state: the other hosts need not see the workdir.
        from jax.experimental import multihost_utils

        state_bytes = np.zeros(1 << 16, np.uint8)
        encoded = json.dumps(data_state or {}).encode()
        if lead and len(encoded) <= len(state_bytes):
            state_bytes[:len(encoded)] = np.frombuffer(encoded, np.uint8)
        start, params, opt_state, state_bytes = multihost_utils.broadcast_one_to_all(
            (np.int64(start), params, opt_state, state_bytes))
        start = int(start)
        resumed_from = start if start else None
        data_state = json.loads(bytes(np.asarray(state_bytes)).rstrip(b"\0").decode() or "{}")
    result = TrainResult(step=start, params=None, resumed_from=resumed_from)
    try:
        return _run(config, dataset, per_epoch, pairs, workdir, stop, devices, quiet, echo, stop_signals, lead,
                    spec, module, params, opt_state, optimizer, run_meta, start, resumed_from, data_state,
                    changed, notes, checkpointer, result)
    finally:
        if checkpointer is not None:
            checkpointer.close()  # waits for the last asynchronous save


def _training_data(data, config):
    """(dataset, steps per epoch) of ``data``, checked now rather than hours into training: at
    least one batch of items (images x ``repeat`` >= ``batch_size``), and every image readable
    and at least as large as the largest crop (decoded now with the memory cache; with
    ``cache = "none"`` sizes come from the headers and only doubtful files are decoded)."""
    from liif_jax.imageio import header_size
    from liif_jax.train.data import ImplicitDownsampled

    dataset = ImplicitDownsampled.from_config(data, config)
    per_epoch = dataset.steps_per_epoch(config.batch_size)
    if per_epoch < 1:
        raise RequestError(f"{len(dataset.files)} images x repeat {config.repeat} is fewer items than "
                           f"one batch of {config.batch_size}")
    if config.cache == "memory":
        dataset.preload(config.loader_threads)
    else:
        crop = round(config.inp_size * config.scale_max)
        for index, path in enumerate(dataset.files):
            hw = header_size(path)
            if hw is None or min(hw) < crop:
                dataset.image(index)  # raises the one-line error that file deserves
    return dataset, per_epoch


def _run(config, dataset, per_epoch, pairs, workdir, stop, devices, quiet, echo, stop_signals, lead, spec,
         module, params, opt_state, optimizer, run_meta, start, resumed_from, data_state, changed, notes,
         checkpointer, result):
    import jax
    from jax.sharding import Mesh

    from liif_jax.models.spec import spec_to_json
    from liif_jax.train import checkpoint as ckpt
    from liif_jax.train.pipeline import make_loader
    from liif_jax.train.step import data_shardings, make_train_step
    from liif_jax.weights import LiifModel

    if start >= stop:
        echo(f"already at step {start} (>= {stop}); nothing to do")
        result.params = _host(params)
        return result

    mesh = Mesh(np.array(devices), ("data",))
    replicated, split = data_shardings(mesh)
    params = jax.device_put(params, replicated)
    opt_state = jax.device_put(opt_state, replicated)
    train_step = make_train_step(module, optimizer, mesh)
    lr_at = optimizer_lr(config)

    def to_global(host_batch):
        return type(host_batch)(*(jax.make_array_from_process_local_data(split, np.asarray(x))
                                  for x in host_batch))

    saved_at = [start if resumed_from is not None else None]

    def save(step_done, loader_ok=True):
        """Checkpoint ``step_done`` (process 0 writes; every process checks the params are
        finite, so all stop together when they are not)."""
        host_params, host_opt = _host(params), _host(opt_state)
        if not lead:
            bad = ckpt._non_finite(host_params) or ckpt._non_finite(host_opt)
            if bad:
                raise ckpt.NonFiniteParams(f"step {step_done}: the training state became non-finite "
                                           f"(NaN/Inf in {bad}); not saved")
            return
        meta = {"spec": spec_to_json(spec), "config": config.to_json(), **run_meta}
        # After a loader failure its iterator state is not to be trusted; the step alone
        # rebuilds the same batches.
        data_state = loader.state(step_done) if loader_ok else {"loader": "none", "step": step_done}
        path = checkpointer.save(step_done, host_params, host_opt, data_state, meta)
        saved_at[0] = step_done
        log.line(f"step {step_done}: checkpoint {path.name}")

    bar = None
    if lead and not quiet:
        from tqdm import tqdm

        bar = tqdm(total=stop, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr)
    log = _Log(workdir, lead, echo, bar)
    n_dev = len(devices)
    for note in notes:
        log.line(note)
    if resumed_from is not None:
        log.line(f"resuming from step {start} (newest usable checkpoint in {workdir})")
        if changed:
            log.line("note: the config differs from the checkpoint's in " + ", ".join(changed) +
                     " (the run continues with the new values; it is no longer the uninterrupted run)")
    else:
        how = f"from {run_meta['init_from']}" if run_meta.get("init_from") else f"from scratch (seed {config.seed})"
        log.line(f"training {how}: {len(dataset.files)} images, {per_epoch} steps per epoch, "
                 f"batch {config.batch_size} over {n_dev} device(s), steps {start}..{stop}")
    pending, t_last, n_last = [], time.perf_counter(), start
    loader = make_loader(dataset, config, start, stop, process_index=jax.process_index(),
                         process_count=jax.process_count(), state=data_state, note=log.line)
    log.line(f"input pipeline: {loader.kind}, {loader.threads} thread(s)"
             + (f", {loader.workers} worker processes" if loader.workers else ""))
    done = start
    try:
        with loader:
            if stop_signals.flag.is_set():
                raise TrainingInterrupted(f"stopped by {stop_signals.name} before step {start + 1}")
            batches = iter(loader)
            while True:
                try:
                    step, host_batch = next(batches)
                except StopIteration:
                    break
                except Exception as exc:  # the input pipeline failed: keep what was trained
                    _save_after_loader_failure(save, saved_at, done, start)
                    kept = f"checkpoint of step {saved_at[0]} kept" if saved_at[0] is not None else "no checkpoint yet"
                    message = (f"the input pipeline failed after step {done} ({exc}); {kept}; fix the data "
                               f"and run the same command to resume")
                    raise (type(exc)(message) if isinstance(exc, LiifError) else DataPipelineError(message)) from None
                if step != done:
                    raise DataPipelineError(f"the input pipeline gave step {step} where step {done} was due")
                params, opt_state, loss = train_step(params, opt_state, to_global(host_batch))
                pending.append(loss)
                done = step + 1
                if done == start + 1:  # steps/s counts from the end of the compiling first step
                    loss.block_until_ready()
                    t_last, n_last = time.perf_counter(), done
                if bar is not None:
                    bar.update(1)
                last = done == stop
                if done % config.log_every == 0 or last or stop_signals.flag.is_set():
                    mean = float(np.mean([float(x) for x in pending]))
                    now = time.perf_counter()
                    rate = (done - n_last) / (now - t_last) if done > n_last else None
                    rec = {"step": done, "loss": mean, "lr": lr_at(done - 1), "steps_per_s": rate}
                    log.record(rec)
                    log.line(f"step {done}: loss {mean:.5f}  lr {rec['lr']:.3g}" +
                             (f"  {rate:.2f} steps/s" if rate else ""))
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean:.4f}")
                    result.losses.append((done, mean))
                    pending, t_last, n_last = [], now, done
                if pairs and (done % config.val_every == 0 or last):
                    model = LiifModel(spec=spec, module=module, params=_host(params))
                    by_scale = validate(model, pairs)
                    mean = float(np.mean(list(by_scale.values())))
                    log.record({"step": done, "val_psnr": mean,
                                **{f"val_psnr_x{s:g}": v for s, v in by_scale.items()}})
                    log.line(f"step {done}: validation PSNR {mean:.3f} dB (" +
                             ", ".join(f"x{s:g} {v:.3f}" for s, v in by_scale.items()) + ")")
                    result.val.append((done, mean))
                    t_last = time.perf_counter()  # validation is not training time
                if done % config.checkpoint_every == 0 or last:
                    save(done)
                    t_last = time.perf_counter()
                if stop_signals.flag.is_set() and not last:
                    if done % config.checkpoint_every:
                        save(done)
                    raise TrainingInterrupted(f"stopped by {stop_signals.name} at step {done}; checkpoint "
                                              f"saved, run the same command to resume")
    finally:
        if bar is not None:
            bar.close()
        log.close()
    result.step = done
    result.params = _host(params)
    return result


def _save_after_loader_failure(save, saved_at, done, start):
    """Checkpoint the steps trained since the last checkpoint before stopping for a loader
    failure (nothing to save when no step was trained or it is saved already)."""
    if done > start and saved_at[0] != done:
        save(done, loader_ok=False)


def config_changes(saved_json, config) -> list[str]:
    """``name (old -> new)`` for each config field that differs from a checkpoint's config."""
    if not saved_json:
        return []
    from liif_jax.configs import TrainConfig

    try:
        saved = TrainConfig.from_json(saved_json)
    except (ValueError, TypeError):
        return ["(unreadable saved config)"]
    return [f"{f} ({getattr(saved, f)!r} -> {getattr(config, f)!r})"
            for f in TrainConfig.__dataclass_fields__ if getattr(saved, f) != getattr(config, f)]


def optimizer_lr(config):
    """Host-side ``step -> learning rate`` for logs: ``step_decay_schedule``'s formula in plain
    Python (no device round trip per log line; a test checks the two agree)."""
    return lambda step: config.lr * config.lr_decay_factor ** sum(step >= b for b in config.lr_decay_steps)
