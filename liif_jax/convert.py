"""The authors' PyTorch checkpoints -> LiifModel -> liif-jax weight file. Shared by
``liif-jax convert`` (and ``python -m convert_weights``) and ``liif_jax.load_model('x.pth')``.

Reading the ``.pth`` safely (``convert_weights.torch_pickle``) and mapping its torch names and
layouts to ours (``convert_weights.mapping``) is ``convert_weights``' part, which knows nothing
of the model; the spec, the shape checks and the model are liif_jax's, here.
"""

from __future__ import annotations

from pathlib import Path

from convert_weights.mapping import map_state_dict, torch_to_flax_array, torch_to_flax_shape
from convert_weights.torch_pickle import open_checkpoint
from liif_jax.errors import CheckpointError
from liif_jax.models.spec import normalize_spec
from liif_jax.weights import (AUTHORS_CHECKPOINT_SHA256, LiifModel, bundled_license_text,
                              check_param_shapes, model_from_flat, save_weights, sha256_bytes)

# A state-dict name longer than this is no real parameter name (and would flood messages).
MAX_NAME_LENGTH = 1000

UNKNOWN_LICENSE = "unknown: the license of the source checkpoint applies"


def model_from_checkpoint_bytes(data: bytes, source_name: str, license_text: str | None = None,
                                notes: list | None = None) -> LiifModel:
    """Read a torch checkpoint safely and build the model its spec describes.
    ``notes`` (if given) receives human-readable remarks, e.g. which entries were dropped.

    Order matters for hostile files: the pickle is read with every tensor left unread
    (``TensorRef``), the spec is bounded (``normalize_spec``), every name and shape is checked
    against the shapes the spec implies -- and only then are the needed tensors read."""
    checkpoint = open_checkpoint(data)
    where = f"checkpoint '{source_name}'"
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise CheckpointError(
            f"{where} has no 'model' entry with a spec and state dict; only checkpoints saved by "
            f"the LIIF training script ({{'model': {{'name', 'args', 'sd'}}}}) are supported"
        )
    raw = checkpoint["model"]
    try:
        spec = normalize_spec({k: v for k, v in raw.items() if k != "sd"})
    except (TypeError, ValueError, RecursionError):  # e.g. unsortable or unprintable keys
        raise CheckpointError(f"{where} has an unreadable model spec") from None
    if "sd" not in raw:
        raise CheckpointError(f"{where} has a model spec but no state dict ('sd')")
    sd = raw["sd"]
    if isinstance(sd, dict) and not all(isinstance(k, str) and len(k) <= MAX_NAME_LENGTH for k in sd):
        raise CheckpointError(f"{where} has a state dict entry whose name is not a short text")
    refs, dropped = map_state_dict(sd, spec["args"]["encoder_spec"])
    check_param_shapes(spec, {name: torch_to_flax_shape(ref.shape) for name, ref in refs.items()}, where)
    params = {name: torch_to_flax_array(ref.read()) for name, ref in refs.items()}
    if notes is not None and dropped:
        notes.append(f"dropped {len(dropped)} entries the LIIF encoder never applies: "
                     + ", ".join(dropped))
    sha = sha256_bytes(data)
    if license_text is None:
        license_text = bundled_license_text() if sha == AUTHORS_CHECKPOINT_SHA256 else UNKNOWN_LICENSE
    metadata = {"source_name": source_name, "source_sha256": sha, "license": license_text}
    epoch = checkpoint.get("epoch")
    if isinstance(epoch, int) and not isinstance(epoch, bool) and abs(epoch) < 10 ** 18:
        metadata["source_epoch"] = str(epoch)
    return model_from_flat(spec, params, metadata, where)


def convert_file(src, dst, license_text: str | None = None) -> tuple[LiifModel, list[str]]:
    """Convert ``src`` (.pth) to ``dst`` (.safetensors). Returns the model and notes."""
    src, dst = Path(src), Path(dst)
    try:
        data = src.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {src}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {src}: {exc.strerror or exc}") from None
    if not dst.parent.is_dir():
        raise CheckpointError(f"output folder does not exist: {dst.parent}")
    notes: list[str] = []
    model = model_from_checkpoint_bytes(data, src.name, license_text, notes)
    try:
        save_weights(dst, model)
    except OSError as exc:
        raise CheckpointError(f"cannot write {dst}: {exc.strerror or exc}") from None
    return model, notes
