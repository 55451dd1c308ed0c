"""Weight files: the bundled default, the safe on-disk format, and ``load_model``.

Format: safetensors (raw little-endian arrays + a JSON header; no code can hide in it) with
flat parameter names (``encoder/head/kernel``) and these metadata strings:

- ``format`` = ``liif-jax-weights``, ``format_version`` = ``1``
- ``spec``: the model spec (the original checkpoint's ``model`` minus ``sd``, every default
  filled in) -- the file describes itself, like the authors' checkpoints do
- ``source_name``, ``source_sha256``: what it was converted from
- ``license``: the weights' license notice (BSD-3-Clause text for the authors' weights)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from liif_jax.atomic import atomic_output
from liif_jax.errors import CheckpointError
from liif_jax.models.spec import normalize_spec, spec_from_json, spec_to_json

WEIGHTS_FORMAT = "liif-jax-weights"
WEIGHTS_FORMAT_VERSION = "1"
BUNDLED_WEIGHTS = "edsr-baseline-liif.safetensors"
BUNDLED_LICENSE = "edsr-baseline-liif.LICENSE"
# sha256 of the authors' DIV2K EDSR-baseline-LIIF checkpoint our bundled file comes from.
AUTHORS_CHECKPOINT_SHA256 = "1cf77e16f33ee17bd04049f497eaea1e06f25585dbb1919e4c7cd1d9d4d23d57"


@dataclass(frozen=True, eq=False)
class LiifModel:
    """A LIIF model ready to run: its spec, the Flax module built from it and its params."""

    spec: dict
    module: object  # liif_jax.models.LIIF
    params: dict  # nested {'encoder': {...}, 'imnet': {...}} of float32 arrays
    metadata: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.metadata.get("source_name") or "custom"


def bundled_weights_path() -> Path:
    return Path(str(resources.files("liif_jax") / "data" / BUNDLED_WEIGHTS))


def bundled_license_text() -> str:
    return (resources.files("liif_jax") / "data" / BUNDLED_LICENSE).read_text(encoding="utf-8")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def expected_param_shapes(module) -> dict[str, tuple]:
    """Flat name -> shape of every parameter the module needs, by tracing its init
    (``jax.eval_shape``). The reference for tests only: loaders use ``param_shapes(spec)``,
    which needs no tracing, and tests hold the two equal."""
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    members = 4 if module.local_ensemble else 1
    abstract = jax.eval_shape(
        module.init,
        jax.random.PRNGKey(0),
        jnp.zeros((1, 4, 4, 3), jnp.float32),
        jnp.zeros((1, members, 1, 2), jnp.int32),
        jnp.zeros((1, members, 1, 2), jnp.float32),
        jnp.zeros((1, 1, 2), jnp.float32),
    )
    flat = traverse_util.flatten_dict(abstract["params"], sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def check_params(module, flat_params: dict[str, np.ndarray], where: str) -> None:
    """``check_param_shapes`` against a built module (traces it: for tests, not loaders)."""
    shapes = {name: tuple(np.shape(value)) for name, value in flat_params.items()}
    _compare_shapes(expected_param_shapes(module), shapes, where)


def check_param_shapes(spec: dict, shapes: dict[str, tuple], where: str) -> None:
    """Raise CheckpointError unless ``shapes`` ({flat name: shape}) has exactly the names and
    shapes a normalised ``spec`` needs. Works on shapes alone, so loaders call it before they
    read or allocate any tensor; the expected shapes come from the spec without tracing."""
    from liif_jax.models.shapes import param_shapes

    _compare_shapes(param_shapes(spec), shapes, where)


def _compare_shapes(expected: dict[str, tuple], shapes: dict[str, tuple], where: str) -> None:
    """The one comparison of names and shapes; CheckpointError naming the first difference."""
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing:
        raise CheckpointError(f"{where} is missing {len(missing)} parameter(s), e.g. {missing[0]}")
    if unexpected:
        raise CheckpointError(f"{where} has {len(unexpected)} unexpected parameter(s), "
                              f"e.g. {unexpected[0][:100]}")
    for name, shape in expected.items():
        got = tuple(shapes[name])
        if got != shape:
            raise CheckpointError(f"{where}: parameter {name} has shape {got}, the spec needs {shape}")


def model_from_flat(spec: dict, flat_params: dict[str, np.ndarray], metadata: dict, where: str) -> LiifModel:
    from flax import traverse_util
    from liif_jax.models import build_model

    spec = normalize_spec(spec)
    # Names and shapes first: nothing is converted or built for a file that does not fit.
    check_param_shapes(spec, {k: np.shape(v) for k, v in flat_params.items()}, where)
    flat_params = {k: np.asarray(v, dtype=np.float32) for k, v in flat_params.items()}
    for name, value in flat_params.items():
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"{where}: parameter {name} holds NaN or infinite values")
    module = build_model(spec)
    params = traverse_util.unflatten_dict(flat_params, sep="/")
    return LiifModel(spec=spec, module=module, params=params, metadata=dict(metadata))


def flat_params(params: dict) -> dict[str, np.ndarray]:
    from flax import traverse_util

    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


def save_weights(path: str | os.PathLike, model: LiifModel) -> None:
    """Write ``model`` as a liif-jax safetensors file, atomically (temp file + rename)."""
    from safetensors.numpy import save

    metadata = {k: str(v) for k, v in model.metadata.items() if v is not None}
    metadata.update(format=WEIGHTS_FORMAT, format_version=WEIGHTS_FORMAT_VERSION,
                    spec=spec_to_json(model.spec))
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in flat_params(model.params).items()}
    data = save(tensors, metadata=metadata)
    with atomic_output(path) as f:
        f.write(data)


def _looks_like_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    n = int.from_bytes(data[:8], "little")
    return 2 <= n <= len(data) - 8 and data[8:9] == b"{"


# Largest safetensors JSON header we parse (a real one is ~10 KB; one for a model at the
# spec limits with its optimiser state, ~2 MB). JSON can take ~20x its size as Python objects,
# so this also bounds what a hostile header costs before anything is checked.
MAX_SAFETENSORS_HEADER = 8 << 20


def read_safetensors_header(data: bytes, where: str, fmt: str, version: str, kind: str):
    """({tensor name: shape}, metadata) from a safetensors file's JSON header alone (no tensor
    is read), after checking that the metadata says ``format`` = ``fmt`` and ``format_version``
    = ``version``; CheckpointError naming ``where`` otherwise."""
    import json

    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 2 <= size <= len(data) - 8:
        raise CheckpointError(f"{where} is not a readable {kind} (no safetensors header)")
    if size > MAX_SAFETENSORS_HEADER:
        raise CheckpointError(f"{where} has a {size:,}-byte safetensors header, over liif-jax's "
                              f"limit of {MAX_SAFETENSORS_HEADER:,}")
    try:
        header = json.loads(data[8:8 + size])
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{where} is not a readable {kind} ({str(exc)[:80]})") from None
    metadata = header.pop("__metadata__", None) if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != fmt:
        raise CheckpointError(f"{where} is a safetensors file but not a liif-jax {kind} (no format tag)")
    if not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{where} is not a readable {kind} (metadata values must be text)")
    if metadata.get("format_version") != version:
        raise CheckpointError(f"{where} has {kind} format version "
                              f"{str(metadata.get('format_version'))[:20]!r}; "
                              f"this liif-jax reads version {version}")
    shapes = {}
    for name, info in header.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise CheckpointError(f"{where} is not a readable {kind} (bad entry {name[:60]!r})")
        shapes[name] = tuple(shape)
    return shapes, metadata


def read_tagged_safetensors(data: bytes, where: str, fmt: str, version: str, kind: str):
    """(tensors, metadata) of a safetensors file whose metadata says ``format`` = ``fmt`` and
    ``format_version`` = ``version``; CheckpointError naming ``where`` otherwise. The header is
    checked before any tensor is read."""
    _, metadata = read_safetensors_header(data, where, fmt, version, kind)
    return _load_safetensors(data, where, kind), metadata


def _load_safetensors(data: bytes, where: str, kind: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        return load(data)
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{where} is not a readable {kind} ({str(exc)[:80]})") from None


def read_weights(data: bytes, where: str) -> LiifModel:
    """Parse a liif-jax safetensors file held in ``data``: its spec (bounded by the spec limits)
    and the header's names and shapes are checked before any tensor is read."""
    shapes, metadata = read_safetensors_header(data, where, WEIGHTS_FORMAT, WEIGHTS_FORMAT_VERSION,
                                               "weight file")
    spec = spec_from_json(metadata.get("spec", ""))
    check_param_shapes(spec, shapes, where)
    tensors = _load_safetensors(data, where, "weight file")
    info = {k: v for k, v in metadata.items() if k not in ("format", "format_version", "spec")}
    return model_from_flat(spec, tensors, info, where)


def load_model(weights: str | os.PathLike | None = None) -> LiifModel:
    """Load a model: the bundled EDSR-baseline-LIIF by default, else ``weights``: a liif-jax
    ``.safetensors`` file or an original PyTorch ``.pth`` (read safely, converted in memory)."""
    path = bundled_weights_path() if weights is None else Path(weights)
    where = f"weights '{path.name}'"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"weights path is a folder, not a file: {path}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read weights {path}: {exc.strerror or exc}") from None
    if _looks_like_safetensors(data):
        return read_weights(data, where)
    if data[:4] == b"PK\x03\x04" or data[:1] == b"\x80":
        from liif_jax.convert import model_from_checkpoint_bytes

        return model_from_checkpoint_bytes(data, source_name=path.name)
    raise CheckpointError(f"{where} is neither a liif-jax .safetensors file nor a PyTorch checkpoint")
