"""Training checkpoints: complete or absent, newest first, the last N kept.

One checkpoint is one safetensors file ``checkpoints/step_<00001000>.safetensors`` holding the
parameters (``params/<flat name>``), the optimiser state (``opt_state<tree path>``) and, as
metadata, the global step, the model spec, the training config, and the license of the
weights a fine-tune started from. Nothing in it is executable.

Why this is safe against a kill at any moment: a checkpoint is written to a hidden temp file,
fsynced, then renamed into place (``atomic_output``), and the folder is fsynced -- a name
``step_*.safetensors`` only ever points at a complete file. Leftover temp files of a killed
save are removed on the next save. On resume a checkpoint that still fails to read (disk
trouble, a hand-copied partial file) is skipped with a warning and the one before it is used.

The data order is a pure function of (seed, step), so the step is all the loader needs to
continue exactly where the run stopped.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from liif_jax.errors import CheckpointError, LiifWarning

CHECKPOINT_FORMAT = "liif-jax-train-checkpoint"
CHECKPOINT_FORMAT_VERSION = "1"
NAME_RE = re.compile(r"^step_(\d{8,})\.safetensors$")


def checkpoint_dir(workdir) -> Path:
    return Path(workdir) / "checkpoints"


def checkpoint_path(workdir, step: int) -> Path:
    return checkpoint_dir(workdir) / f"step_{step:08d}.safetensors"


def list_checkpoints(workdir) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in ``workdir``, oldest first."""
    folder = checkpoint_dir(workdir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := NAME_RE.match(p.name))]
    return sorted(found)


def _named_leaves(tree, prefix: str) -> dict[str, object]:
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {prefix + jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def save_checkpoint(workdir, step: int, params, opt_state, metadata: dict, keep: int) -> Path:
    """Write the checkpoint of ``step`` atomically, then delete all but the newest ``keep``.
    ``params``/``opt_state`` are host (NumPy) trees."""
    from safetensors.numpy import save

    from liif_jax.atomic import atomic_output, fsync_dir

    folder = checkpoint_dir(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".step_*.part"):  # a save that was killed before its rename
        stale.unlink(missing_ok=True)
    tensors = {name: np.ascontiguousarray(leaf)
               for name, leaf in {**_named_leaves(params, "params"),
                                  **_named_leaves(opt_state, "opt_state")}.items()}
    meta = {k: str(v) for k, v in metadata.items()}
    meta.update(format=CHECKPOINT_FORMAT, format_version=CHECKPOINT_FORMAT_VERSION, step=str(step))
    path = checkpoint_path(workdir, step)
    with atomic_output(path, durable=True) as f:
        f.write(save(tensors, metadata=meta))
    for _, old in list_checkpoints(workdir)[:-keep]:
        old.unlink(missing_ok=True)
    fsync_dir(folder)
    return path


def read_checkpoint(path) -> tuple[dict, dict]:
    """(tensors by name, metadata) of one checkpoint file; CheckpointError if unreadable."""
    from liif_jax.weights import read_tagged_safetensors

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path.name} is unreadable ({exc.strerror or exc})") from None
    return read_tagged_safetensors(data, f"checkpoint {path.name}", CHECKPOINT_FORMAT,
                                   CHECKPOINT_FORMAT_VERSION, "training checkpoint")


def restore_tree(tensors: dict, template, prefix: str, where: str):
    """Fill ``template``'s structure with the named tensors (shapes and dtypes checked)."""
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


def latest_checkpoint(workdir):
    """(step, tensors, metadata) of the newest readable checkpoint, or None. Unreadable ones
    are skipped with a warning naming them."""
    for step, path in reversed(list_checkpoints(workdir)):
        try:
            tensors, meta = read_checkpoint(path)
        except CheckpointError as exc:
            warnings.warn(f"skipping {exc}", LiifWarning, stacklevel=2)
            continue
        return step, tensors, meta
    return None


def export_weights(source, dest) -> tuple[int, Path]:
    """Write the inference weight file (the converter's format) of a training checkpoint, or of
    the newest one in a workdir. Returns (step, checkpoint path)."""
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from liif_jax.models.shapes import param_shapes
    from liif_jax.models.spec import spec_from_json
    from liif_jax.weights import flat_params, model_from_flat, save_weights

    source = Path(source)
    if source.is_dir():
        workdir = source.parent if source.name == "checkpoints" else source
        found = list_checkpoints(workdir)
        if not found:
            raise CheckpointError(f"no checkpoints in {source} (expected {checkpoint_dir(workdir)}/step_*.safetensors)")
        step, path = found[-1]
    elif source.is_file():
        path, step = source, None
    else:
        raise CheckpointError(f"not found: {source}")
    tensors, meta = read_checkpoint(path)
    try:
        step = int(meta.get("step", step or 0))
    except ValueError:
        raise CheckpointError(f"checkpoint {path.name} has an unreadable step") from None
    spec = spec_from_json(meta.get("spec", ""))  # bounded by the spec limits
    # Names and shapes from the spec alone: tracing a model to learn them would let a hostile
    # spec cost minutes and gigabytes before anything is compared.
    template = traverse_util.unflatten_dict(
        {k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in param_shapes(spec).items()}, sep="/")
    flat = flat_params(restore_tree(tensors, template, "params", f"checkpoint {path.name}"))
    info = {"source_name": f"{path.parent.parent.name}/{path.name}" if path.parent.name == "checkpoints"
            else path.name,
            "trained_steps": str(step),
            "license": meta.get("license", "unknown (trained with liif-jax; set by the data's owner)")}
    if meta.get("init_from"):
        info["init_from"] = meta["init_from"]
    model = model_from_flat(spec, flat, info, path.name)
    save_weights(dest, model)
    return step, path
