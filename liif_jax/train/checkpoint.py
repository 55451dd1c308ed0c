"""Training checkpoints in Orbax's format, and the rules that keep a run's progress safe.

One checkpoint is one Orbax step folder ``workdir/checkpoints/step_<00001000>/`` written by
``orbax.checkpoint.CheckpointManager`` with four items: ``params`` and ``opt_state`` (array
trees, what any JAX user can open with Orbax), ``data`` (the input pipeline's position and
iterator state, JSON) and ``meta`` (format tag, step, model spec, training config, and the
license of the weights a fine-tune started from, JSON). Nothing in it is executable.

Why Orbax and what this module adds on top of it:
- Orbax writes a step into a temporary folder and renames it when complete, so a kill at any
  moment leaves either the whole step or a temporary folder that the next start removes
  (``cleanup_tmp_directories``). Saves are asynchronous: the step returns once the host copy
  is taken, and the files are written while training goes on.
- Orbax's own retention keeps the N *highest* steps, readable or not, and refuses to save a
  step below the highest one. Both turned faults into lost work (a run whose checkpoints were
  all unreadable restarted from 0 and deleted each new checkpoint right after writing it). So
  restore reads from the newest step down, and every step it cannot use -- unreadable, of
  another model, non-finite -- is moved aside to ``workdir/skipped-checkpoints/`` with a note
  saying why (nothing is deleted); retention here then counts only checkpoints that exist in
  ``checkpoints/``, which are all known good, and deletes the oldest beyond N only once the
  newer ones are completely written.
- Parameters that are not finite are never saved (``NonFiniteParams``): the run stops and the
  last good checkpoint stays the newest.

A workdir of liif-jax 0.1.x (``checkpoints/step_<N>.safetensors``) is still read: training
resumes from its newest good file and continues in Orbax's format (the old files are left as
they are), and ``export`` reads the old files too.

Multi-process runs: the state is replicated, so process 0 holds all of it; only process 0
opens the workdir and Orbax is told (``active_processes={0}``) that it alone takes part, so
the other hosts need no shared filesystem, as before.
"""

from __future__ import annotations

import re
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from liif_jax.errors import CheckpointError, LiifWarning, NonFiniteParams, OtherModelError

CHECKPOINT_FORMAT = "liif-jax-train-checkpoint"
CHECKPOINT_FORMAT_VERSION = "2"  # 2: Orbax step folders; 1: one safetensors file (0.1.x)
LEGACY_FORMAT_VERSION = "1"
ITEMS = ("params", "opt_state", "data", "meta")
STEP_PREFIX = "step"
STEP_DIGITS = 8
STEP_DIR_RE = re.compile(r"^step_(\d{8,})$")
LEGACY_NAME_RE = re.compile(r"^step_(\d{8,})\.safetensors$")
SKIPPED_DIR = "skipped-checkpoints"


def checkpoint_dir(workdir) -> Path:
    return Path(workdir) / "checkpoints"


def checkpoint_path(workdir, step: int) -> Path:
    """The folder Orbax writes the checkpoint of ``step`` to."""
    return checkpoint_dir(workdir) / f"{STEP_PREFIX}_{step:0{STEP_DIGITS}d}"


def list_checkpoints(workdir) -> list[tuple[int, Path]]:
    """(step, folder) of every complete Orbax checkpoint in ``workdir``, oldest first.
    Orbax's temporary folders of unfinished saves are not listed."""
    folder = checkpoint_dir(workdir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_DIR_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def legacy_checkpoints(workdir) -> list[tuple[int, Path]]:
    """(step, file) of every liif-jax 0.1.x checkpoint (one safetensors file), oldest first."""
    folder = checkpoint_dir(workdir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := LEGACY_NAME_RE.match(p.name))]
    return sorted(found)


def _quiet_absl():
    """Orbax logs every save at INFO through absl; the CLI's stderr is for one-line errors."""
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # pragma: no cover - absl comes with Orbax
        pass


def _manager(folder: Path, *, read_only: bool = False, async_save: bool = True, lone_process: bool | None = None):
    """An Orbax CheckpointManager of ``folder``. ``lone_process`` (default: whenever JAX runs
    several processes): process 0 alone takes part -- Orbax would otherwise wait at barriers for
    processes that never open the workdir."""
    import jax
    import orbax.checkpoint as ocp

    if lone_process is None:
        lone_process = jax.process_count() > 1

    _quiet_absl()
    options = dict(max_to_keep=None, step_prefix=STEP_PREFIX, step_format_fixed_length=STEP_DIGITS,
                   create=not read_only, cleanup_tmp_directories=not read_only,
                   enable_async_checkpointing=async_save)
    if read_only:
        options["read_only"] = True
    if lone_process:
        # Process 0 holds the whole replicated state: it alone saves and syncs. (Orbax leaves
        # creating the folder to the caller then; Checkpointer has made it.)
        options["create"] = False
        options["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
            primary_host=0, active_processes={0})
    return ocp.CheckpointManager(folder.resolve(), options=ocp.CheckpointManagerOptions(**options),
                                 item_names=ITEMS)


# ---------------------------------------------------------------- reading


@dataclass
class Restored:
    """A checkpoint read back: host (NumPy) trees, the data pipeline's state, the metadata."""

    step: int
    params: dict
    opt_state: object
    data_state: dict
    meta: dict
    path: Path
    legacy: bool = False


@dataclass
class Skipped:
    step: int
    path: Path
    error: CheckpointError

    @property
    def reason(self) -> str:
        return str(self.error)


@dataclass
class Search:
    """What ``find_latest`` found: the newest usable checkpoint (or None) and every newer one it
    skipped, with why."""

    restored: Restored | None
    skipped: list = field(default_factory=list)


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_tree(tree, template, item: str, where: str):
    """``tree`` in ``template``'s structure with every leaf's shape and dtype; CheckpointError
    naming the first difference. (Orbax restores the stored shape whatever the template says.)"""
    import jax

    got = jax.tree_util.tree_flatten_with_path(tree)[0]
    want, treedef = jax.tree_util.tree_flatten_with_path(template)
    if len(got) != len(want):
        raise CheckpointError(f"{where}: {item} has {len(got)} arrays, expected {len(want)} "
                              f"(was it written by another config?)")
    out = []
    for (_, value), (want_path, leaf) in zip(got, want):
        name = item + jax.tree_util.keystr(want_path)
        value = np.asarray(value)
        shape, dtype = tuple(leaf.shape), np.dtype(leaf.dtype)
        if value.shape != shape or value.dtype != dtype:
            raise CheckpointError(f"{where}: {name} is {value.dtype}{list(value.shape)}, "
                                  f"expected {dtype}{list(shape)}")
        out.append(value)
    return jax.tree_util.tree_unflatten(treedef, out)


def _non_finite(tree) -> str | None:
    """The name of the first array of ``tree`` holding NaN or Inf, or None."""
    import jax

    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        arr = np.asarray(leaf)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            return jax.tree_util.keystr(path)
    return None


def _zeros_like(template):
    """NumPy zeros in ``template``'s structure: Orbax restores to NumPy when its target is NumPy."""
    import jax

    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), template)


def _unreadable(where: str, exc: BaseException) -> CheckpointError:
    """The error for a checkpoint whose restore failed -- after muting the stray callbacks a
    failed restore leaves behind (``_mute_callbacks_into_closed_loops``)."""
    _mute_callbacks_into_closed_loops()
    return CheckpointError(f"{where} is unreadable ({_first_line(exc)})")


def _mute_callbacks_into_closed_loops():
    """Drop one kind of unraisable exception, process-wide, from now on.

    Orbax runs a restore on a fresh event loop and closes it as soon as the restore raises;
    TensorStore's reads of the other arrays still in flight then finish on their own threads
    and try to wake that loop, and each raises RuntimeError('Event loop is closed') where no
    one can catch it. Python prints each as a traceback (72 for one cut-short tiny checkpoint)
    long after the reader has reported the checkpoint unreadable in one line. Only that exact
    error, raised by asyncio for no object, is dropped; everything else reaches the hook that
    was there before."""
    previous = sys.unraisablehook
    if getattr(previous, "liif_mutes_closed_loops", False):
        return

    def hook(unraisable):
        exc = unraisable.exc_value
        if (unraisable.object is None and type(exc) is RuntimeError and str(exc) == "Event loop is closed"
                and exc.__traceback__ is not None and "asyncio" in exc.__traceback__.tb_frame.f_code.co_filename):
            return
        previous(unraisable)

    hook.liif_mutes_closed_loops = True
    sys.unraisablehook = hook


def read_meta(manager, step: int, where: str) -> dict:
    import orbax.checkpoint as ocp

    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as exc:  # Orbax/TensorStore raise many kinds; all mean "cannot read"
        raise _unreadable(where, exc) from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where} is not a liif-jax training checkpoint")
    if str(meta.get("format_version")) != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{where} has format version {meta.get('format_version')!r}; this "
                              f"liif-jax reads {CHECKPOINT_FORMAT_VERSION} (upgrade liif-jax)")
    return meta


def read_step(manager, step: int, path: Path, *, spec_json: str | None, params_template,
              opt_template=None) -> Restored:
    """Read and check one Orbax checkpoint: its metadata, then the trees against the templates
    (``opt_template`` None: params only, as ``export`` needs). CheckpointError says why it
    cannot be used; OtherModelError when it is of another model."""
    import orbax.checkpoint as ocp

    where = f"checkpoint {path.name}"
    meta = read_meta(manager, step, where)
    if spec_json is not None and meta.get("spec") != spec_json:
        raise OtherModelError(f"{where} is of a different model (its spec differs from the config's)")
    args = {"params": ocp.args.StandardRestore(_zeros_like(params_template)), "data": ocp.args.JsonRestore()}
    if opt_template is not None:
        args["opt_state"] = ocp.args.StandardRestore(_zeros_like(opt_template))
    try:
        got = manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as exc:
        raise _unreadable(where, exc) from None
    params = _check_tree(got["params"], params_template, "params", where)
    opt_state = _check_tree(got["opt_state"], opt_template, "opt_state", where) if opt_template is not None else None
    bad = _non_finite(params) or (opt_template is not None and _non_finite(opt_state))
    if bad:
        raise CheckpointError(f"{where} holds non-finite values (NaN/Inf) in {bad}")
    data_state = got["data"] if isinstance(got["data"], dict) else {}
    return Restored(step, params, opt_state, data_state, meta, path)


def read_legacy(path) -> tuple[dict, dict]:
    """(tensors by name, metadata) of one 0.1.x checkpoint file; CheckpointError if unreadable."""
    from liif_jax.weights import read_tagged_safetensors

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path.name} is unreadable ({exc.strerror or exc})") from None
    return read_tagged_safetensors(data, f"checkpoint {path.name}", CHECKPOINT_FORMAT,
                                   LEGACY_FORMAT_VERSION, "training checkpoint")


read_checkpoint = read_legacy  # the 0.1.x name


def restore_tree(tensors: dict, template, prefix: str, where: str):
    """Fill ``template``'s structure with the named tensors of a 0.1.x checkpoint (shapes and
    dtypes checked)."""
    import jax

    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for path, leaf in leaves:
        name = prefix + jax.tree_util.keystr(path)
        if name not in tensors:
            raise CheckpointError(f"{where} lacks {name} (was it written by another config?)")
        value = tensors[name]
        shape, dtype = tuple(leaf.shape), np.dtype(leaf.dtype)  # arrays or ShapeDtypeStructs
        if shape == () and value.shape == (1,):  # safetensors stores a scalar as shape [1]
            value = value.reshape(())
        if value.shape != shape or value.dtype != dtype:
            raise CheckpointError(f"{where}: {name} is {value.dtype}{list(value.shape)}, "
                                  f"expected {dtype}{list(shape)}")
        out.append(value)
    return jax.tree_util.tree_unflatten(treedef, out)


def _read_legacy_step(path: Path, step: int, spec_json, params_template, opt_template) -> Restored:
    tensors, meta = read_legacy(path)
    where = f"checkpoint {path.name}"
    if spec_json is not None and meta.get("spec") != spec_json:
        raise OtherModelError(f"{where} is of a different model (its spec differs from the config's)")
    params = restore_tree(tensors, params_template, "params", where)
    opt_state = restore_tree(tensors, opt_template, "opt_state", where) if opt_template is not None else None
    bad = _non_finite(params) or (opt_template is not None and _non_finite(opt_state))
    if bad:
        raise CheckpointError(f"{where} holds non-finite values (NaN/Inf) in {bad}")
    return Restored(step, params, opt_state, {"step": step}, meta, path, legacy=True)


def find_latest(workdir, *, spec_json: str | None, params_template, opt_template=None) -> Search:
    """The newest usable checkpoint of ``workdir`` and the newer ones skipped (with why).

    Orbax checkpoints first, newest down; when none is usable, the 0.1.x files the same way.
    Reads only; ``Checkpointer.set_aside`` moves the skipped ones out of the way."""
    search = Search(None)
    found = list_checkpoints(workdir)
    if found:
        manager = _manager(checkpoint_dir(workdir), read_only=True, async_save=False)
        try:
            for step, path in reversed(found):
                try:
                    search.restored = read_step(manager, step, path, spec_json=spec_json,
                                                params_template=params_template, opt_template=opt_template)
                    return search
                except CheckpointError as exc:
                    search.skipped.append(Skipped(step, path, exc))
        finally:
            manager.close()
    for step, path in reversed(legacy_checkpoints(workdir)):
        try:
            search.restored = _read_legacy_step(path, step, spec_json, params_template, opt_template)
            return search
        except CheckpointError as exc:
            search.skipped.append(Skipped(step, path, exc))
    return search


def latest_checkpoint(workdir):
    """(step, path, metadata) of the newest checkpoint whose metadata reads (no arrays are read),
    or None; for tools and tests that want to know what a workdir holds."""
    found = list_checkpoints(workdir)
    if found:
        manager = _manager(checkpoint_dir(workdir), read_only=True, async_save=False)
        try:
            for step, path in reversed(found):
                try:
                    return step, path, read_meta(manager, step, f"checkpoint {path.name}")
                except CheckpointError as exc:
                    warnings.warn(f"{exc}; skipped", LiifWarning, stacklevel=2)
        finally:
            manager.close()
    for step, path in reversed(legacy_checkpoints(workdir)):
        try:
            return step, path, read_legacy(path)[1]
        except CheckpointError as exc:
            warnings.warn(f"{exc}; skipped", LiifWarning, stacklevel=2)
    return None


# ---------------------------------------------------------------- writing


class Checkpointer:
    """Saves of one run (process 0): asynchronous Orbax saves, never of non-finite params, and
    the newest ``keep`` complete checkpoints kept. ``close()`` waits for the last save."""

    def __init__(self, workdir, keep: int, *, async_save: bool = True, lone_process: bool | None = None):
        self.workdir, self.keep = Path(workdir), keep
        self.folder = checkpoint_dir(workdir)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.manager = _manager(self.folder, async_save=async_save, lone_process=lone_process)
        self.last_saved: int | None = None

    def set_aside(self, skipped: list) -> list[Path]:
        """Move unusable Orbax checkpoints to ``workdir/skipped-checkpoints/`` with a ``.why.txt``
        each (kept for inspection; out of the way of retention and of Orbax, which will not
        save a step below its highest). 0.1.x files stay where they are."""
        moved = []
        for skip in skipped:
            if not skip.path.is_dir():
                continue
            aside = self.workdir / SKIPPED_DIR
            aside.mkdir(exist_ok=True)
            dest = aside / skip.path.name
            n = 1
            while dest.exists():
                dest, n = aside / f"{skip.path.name}.{n}", n + 1
            shutil.move(str(skip.path), str(dest))
            dest.with_name(dest.name + ".why.txt").write_text(skip.reason + "\n", encoding="utf-8")
            moved.append(dest)
        if moved:
            self.manager.reload()
        return moved

    def save(self, step: int, params, opt_state, data_state: dict, meta: dict) -> Path:
        """Start the asynchronous save of ``step`` (host NumPy trees). Raises NonFiniteParams
        (and saves nothing) when params or optimiser state hold NaN/Inf."""
        import orbax.checkpoint as ocp

        bad = _non_finite(params) or _non_finite(opt_state)
        if bad:
            raise NonFiniteParams(f"step {step}: the training state became non-finite (NaN/Inf in {bad}); "
                                  f"not saved, the newest good checkpoint is "
                                  f"{self.last_good_name()} -- lower the lr or check the data, then resume")
        # The previous save has had a whole checkpoint interval to finish; waiting for it here
        # costs nothing in steady state, and retention must only count complete checkpoints.
        self.manager.wait_until_finished()
        self._prune(self.keep)
        meta = {**meta, "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION,
                "step": step}
        self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
            data=ocp.args.JsonSave({**data_state, "step": step}), meta=ocp.args.JsonSave(meta)), force=True)
        self.last_saved = step
        return checkpoint_path(self.workdir, step)

    def last_good_name(self) -> str:
        steps = list_checkpoints(self.workdir)
        return steps[-1][1].name if steps else "none (no checkpoint yet)"

    def _prune(self, keep: int):
        for _, path in list_checkpoints(self.workdir)[:-keep]:
            shutil.rmtree(path, ignore_errors=True)
        self.manager.reload()

    def close(self):
        """Wait for the pending save, then keep the newest ``keep``."""
        self.manager.wait_until_finished()
        self._prune(self.keep)
        self.manager.close()


# ---------------------------------------------------------------- export


def _params_template(spec):
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from liif_jax.models.shapes import param_shapes

    # Names and shapes from the spec alone: tracing a model to learn them would let a hostile
    # spec cost minutes and gigabytes before anything is compared.
    return traverse_util.unflatten_dict(
        {k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in param_shapes(spec).items()}, sep="/")


def _export_orbax(folder: Path, steps: list) -> tuple[int, Path, dict, dict]:
    """(step, path, params, meta) of the newest of ``steps`` whose params read and are finite."""
    from liif_jax.models.spec import spec_from_json

    manager = _manager(folder, read_only=True, async_save=False)
    errors = []
    try:
        for step, path in reversed(steps):
            where = f"checkpoint {path.name}"
            try:
                meta = read_meta(manager, step, where)
                spec = spec_from_json(meta.get("spec", ""))  # bounded by the spec limits
                got = read_step(manager, step, path, spec_json=None, params_template=_params_template(spec))
                return step, path, got.params, meta
            except CheckpointError as exc:
                if len(steps) == 1:
                    raise
                warnings.warn(f"{exc}; skipped", LiifWarning, stacklevel=3)
                errors.append(str(exc))
    finally:
        manager.close()
    raise CheckpointError(f"no usable checkpoint in {folder} ({errors[0]})")


def export_weights(source, dest) -> tuple[int, Path]:
    """Write the inference weight file (the converter's format) of a training checkpoint, or of
    the newest usable one in a workdir. SOURCE: a workdir, its ``checkpoints`` folder, one
    Orbax step folder, or a 0.1.x ``step_*.safetensors`` file. Returns (step, checkpoint path)."""
    from flax import traverse_util  # noqa: F401  (imported early: keeps errors about flax out of the reads)

    from liif_jax.models.spec import spec_from_json
    from liif_jax.weights import flat_params, model_from_flat, save_weights

    source = Path(source)
    params = None
    if source.is_dir() and STEP_DIR_RE.match(source.name) and (source / "meta").exists():
        step, path, params, meta = _export_orbax(source.parent, [(int(STEP_DIR_RE.match(source.name).group(1)), source)])
    elif source.is_dir():
        workdir = source.parent if source.name == "checkpoints" else source
        found = list_checkpoints(workdir)
        if found:
            step, path, params, meta = _export_orbax(checkpoint_dir(workdir), found)
        else:
            legacy = legacy_checkpoints(workdir)
            if not legacy:
                raise CheckpointError(f"no checkpoints in {source} (expected {checkpoint_dir(workdir)}/step_*)")
            step, path = legacy[-1]
    elif source.is_file():
        path, step = source, None
    else:
        raise CheckpointError(f"not found: {source}")
    if params is None:  # a 0.1.x file
        tensors, meta = read_legacy(path)
        try:
            step = int(meta.get("step", step or 0))
        except ValueError:
            raise CheckpointError(f"checkpoint {path.name} has an unreadable step") from None
        spec = spec_from_json(meta.get("spec", ""))  # bounded by the spec limits
        params = restore_tree(tensors, _params_template(spec), "params", f"checkpoint {path.name}")
    else:
        spec = spec_from_json(meta.get("spec", ""))
    flat = flat_params(params)
    info = {"source_name": f"{path.parent.parent.name}/{path.name}" if path.parent.name == "checkpoints"
            else path.name,
            "trained_steps": str(step),
            "license": meta.get("license", "unknown (trained with liif-jax; set by the data's owner)")}
    if meta.get("init_from"):
        info["init_from"] = meta["init_from"]
    model = model_from_flat(spec, flat, info, path.name)
    save_weights(dest, model)
    return step, path

