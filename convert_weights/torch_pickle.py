"""Read PyTorch checkpoints without torch and without running any pickle code.

A ``.pth`` file is a pickle whose tensors point (through "persistent ids") at raw storages
kept beside it. Unpickling normally imports whatever module/attribute the stream names and
calls it -- which is how a malicious checkpoint runs ``os.system``. Here every global the
stream asks for is looked up in a small allow-list of *our own* stand-ins (OrderedDict, the
tensor-rebuild functions, the storage types); anything else is refused before it is
imported, so nothing of a hostile file ever runs.

Two on-disk layouts are read:
- the zip format (torch >= 1.6): ``<prefix>/data.pkl`` + ``<prefix>/data/<key>`` raw storages
  (+ ``<prefix>/byteorder``);
- the legacy format (torch < 1.6): a sequence of pickles -- magic number, protocol version,
  system info, the object itself, the list of storage keys -- followed by each storage as an
  int64 element count and its raw bytes.

Tensors come back as NumPy arrays (copies, so they never alias the file buffer).
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass

import numpy as np

from liif_jax.errors import CheckpointError, UnsafeCheckpointError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch storage class name -> NumPy dtype ("bfloat16" is widened to float32 on read).
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co.: only carries the element type."""

    name: str

    @property
    def itemsize(self) -> int:
        dtype = STORAGE_DTYPES[self.name]
        return 2 if dtype == "bfloat16" else dtype.itemsize

    def decode(self, raw: bytes, byteorder: str) -> np.ndarray:
        dtype = STORAGE_DTYPES[self.name]
        if dtype == "bfloat16":
            u16 = np.frombuffer(raw, dtype=np.dtype("u2").newbyteorder(_bo(byteorder)))
            return (u16.astype(np.uint32) << 16).view(np.float32)
        return np.frombuffer(raw, dtype=dtype.newbyteorder(_bo(byteorder)))


def _bo(byteorder: str) -> str:
    return "<" if byteorder == "little" else ">"


@dataclass
class _Storage:
    """A storage named by a persistent id; its bytes are attached once they are read."""

    type: _StorageType
    key: str
    numel: int
    array: np.ndarray | None = None


@dataclass
class _PendingTensor:
    """A tensor whose storage is not loaded yet (legacy format stores data after the pickle)."""

    storage: _Storage
    offset: int
    size: tuple
    stride: tuple

    def materialise(self) -> np.ndarray:
        data = self.storage.array
        if data is None:
            raise CheckpointError(f"checkpoint is missing the data of storage {self.storage.key!r}")
        size, stride, offset = self.size, self.stride, self.offset
        if any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
            raise CheckpointError("checkpoint has a tensor with a negative size, stride or offset")
        # Bounds check before as_strided: a crafted size/stride must never read outside the
        # storage (as_strided itself does no checking).
        if 0 not in size:
            last = offset + sum((n - 1) * st for n, st in zip(size, stride))
            if last >= data.shape[0]:
                raise CheckpointError(
                    f"checkpoint has a tensor that reaches past its storage {self.storage.key!r}"
                )
            view = np.lib.stride_tricks.as_strided(
                data[offset:],
                shape=size,
                strides=tuple(st * data.itemsize for st in stride),
                writeable=False,
            )
        else:
            view = np.zeros(size, dtype=data.dtype)
        return np.array(view, dtype=data.dtype.newbyteorder("="), copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise CheckpointError("checkpoint tensor does not refer to a storage")
    return _PendingTensor(storage, int(storage_offset), tuple(int(s) for s in size),
                          tuple(int(s) for s in stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return data


# The whole allow-list. Keys are exactly what the pickle stream names; values are our own
# harmless callables, never the real torch objects.
ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals only from ALLOWED_GLOBALS and storages by key."""

    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file, encoding="utf-8")
        self._storages = storages

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                f"refusing to load checkpoint: its pickle asks for the global "
                f"'{module}.{name}', which a plain tensor checkpoint never needs "
                f"(nothing from the file was run)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise CheckpointError(f"checkpoint has an unknown persistent id {str(pid)[:60]!r}")
        storage_type, key, _location, numel = pid[1:5]
        if len(pid) == 6 and pid[5] is not None:
            raise CheckpointError("checkpoint uses legacy storage views, which are not supported")
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise CheckpointError("checkpoint has a malformed storage reference")
        key = str(key)
        known = self._storages.get(key)
        if known is None:
            known = self._storages[key] = _Storage(storage_type, key, numel)
        return known


def _unpickle(stream, storages):
    try:
        return _RestrictedUnpickler(stream, storages).load()
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError("checkpoint pickle is nested too deeply") from None
    except Exception as exc:  # pickle raises many types on corrupt data
        raise CheckpointError(
            f"not a readable PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:80]})"
        ) from None


def _materialise(obj):
    """Replace every pending tensor in a nested structure with its NumPy array."""
    if isinstance(obj, _PendingTensor):
        return obj.materialise()
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialise(v)
        return out
    if isinstance(obj, list):
        return [_materialise(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v) for v in obj)
    return obj


def _load_zip(data: bytes):
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint is damaged or truncated (zip: {exc})") from None
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
        raise CheckpointError("zip file is not a PyTorch checkpoint (no single data.pkl inside)")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in names:
        byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise CheckpointError(f"checkpoint has an unknown byte order {byteorder!r}")
    storages: dict[str, _Storage] = {}
    try:
        obj = _unpickle(io.BytesIO(archive.read(pickles[0])), storages)
        for key, storage in storages.items():
            name = f"{prefix}data/{key}"
            if name not in names:
                raise CheckpointError(f"checkpoint is missing storage {key!r}")
            raw = archive.read(name)
            need = storage.numel * storage.type.itemsize
            if len(raw) < need:
                raise CheckpointError(f"checkpoint storage {key!r} is truncated")
            storage.array = storage.type.decode(raw[:need], byteorder)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"checkpoint is damaged or truncated (zip: {exc})") from None
    return obj


def _load_legacy(data: bytes):
    stream = io.BytesIO(data)
    storages: dict[str, _Storage] = {}
    magic = _unpickle(stream, storages)
    if magic != LEGACY_MAGIC:
        raise CheckpointError("not a PyTorch checkpoint (unknown file format)")
    if _unpickle(stream, storages) != LEGACY_PROTOCOL:
        raise CheckpointError("legacy PyTorch checkpoint of an unsupported protocol version")
    sys_info = _unpickle(stream, storages)
    byteorder = "little" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else "big"
    obj = _unpickle(stream, storages)
    keys = _unpickle(stream, storages)
    if not isinstance(keys, list):
        raise CheckpointError("legacy checkpoint has no storage key list")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise CheckpointError(f"legacy checkpoint lists an unknown storage {key!r}")
        head = stream.read(8)
        if len(head) != 8:
            raise CheckpointError("checkpoint is damaged or truncated (legacy format)")
        (numel,) = struct.unpack("<q" if byteorder == "little" else ">q", head)
        if numel != storage.numel:
            raise CheckpointError(f"legacy checkpoint storage {key!r} has an inconsistent size")
        need = numel * storage.type.itemsize
        raw = stream.read(need)
        if len(raw) != need:
            raise CheckpointError("checkpoint is damaged or truncated (legacy format)")
        storage.array = storage.type.decode(raw, byteorder)
    return obj


def load_checkpoint(data: bytes):
    """Return the checkpoint's object tree with tensors as NumPy arrays.

    ``data`` is the whole file. Raises CheckpointError (UnsafeCheckpointError for a refused
    global) with a one-line message; nothing in the file is ever executed.
    """
    if len(data) == 0:
        raise CheckpointError("checkpoint file is empty")
    if data[:4] == b"PK\x03\x04":
        loader = _load_zip
    elif data[:1] == b"\x80":  # a pickle protocol opcode: the legacy format
        loader = _load_legacy
    else:
        raise CheckpointError("not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        return _materialise(loader(data))
    except CheckpointError:
        raise
    except Exception as exc:  # e.g. a crafted stream that set odd attributes on our stand-ins
        raise CheckpointError(
            f"not a readable PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:80]})"
        ) from None
