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

Memory is bounded by what the caller asks for, never by what the file claims:
- before the C unpickler sees a pickle, ``_scan_pickle`` walks its opcodes without building
  anything and refuses pickles over ``MAX_PICKLE_BYTES`` / ``MAX_PICKLE_OPS`` and memo indices
  no real pickler writes (the C unpickler sizes its memo and counted byte strings from the
  stream before reading them: a 10-byte pickle could otherwise ask for gigabytes);
- ``open_checkpoint`` returns the object tree with every tensor as a ``TensorRef``: shape,
  dtype and where its data lies, validated (no view larger than its storage, no zero stride
  on a dimension > 1, nothing past the storage's end) but not read. The converter checks
  names and shapes against the model spec first, then reads only those tensors, and only
  the bytes each one spans (zip entries are streamed, never inflated whole);
- ``load_checkpoint`` (everything as NumPy arrays) reads at most ``max_tensor_bytes``.

Objects the stream can reach but must not change (the allow-listed callables, the storage
types, storages, tensor refs) refuse pickle's BUILD opcode, so a hostile file cannot alter
them for itself or for later loads in the same process.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
import struct
import warnings
import zipfile

import numpy as np

from convert_weights.errors import CheckpointError, UnsafeCheckpointError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Bounds on one pickle. The authors' EDSR-baseline checkpoint (with its Adam state) has a
# 35 KB pickle of 9,570 opcodes, RDN-LIIF 64 KB: these leave a 250x margin, and cap what a
# hostile pickle can build (each opcode makes at most one small object, ~100 bytes).
MAX_PICKLE_BYTES = 16 << 20
MAX_PICKLE_OPS = 1_000_000
MAX_TENSOR_DIMS = 16
MAX_INDEX = 1 << 48  # largest size, stride, offset or element count taken from a file
# ``load_checkpoint`` reads at most this many tensor bytes unless told otherwise.
DEFAULT_MAX_TENSOR_BYTES = 2 << 30

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


def _printable(text, limit: int = 60) -> str:
    """Text from the file, safe in a one-line message (short, no control characters)."""
    text = text if isinstance(text, str) else f"<{type(text).__name__}>"
    text = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return text + ("..." if len(text) >= limit else "")


class _Sealed:
    """An object the pickle stream can reach but never modify.

    Pickle's BUILD opcode sets state on whatever object is on the stack: a plain function
    takes ``__defaults__`` or ``__dict__`` entries, a dataclass its fields. Without this, a
    file could retarget a storage type (``FloatStorage`` read as bytes) for every later load in
    the process, or resize a tensor ref after it was validated. No ``__dict__``, no setattr,
    and BUILD is refused by name."""

    __slots__ = ()

    def _set(self, **fields):
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setstate__(self, state):
        raise UnsafeCheckpointError(
            f"refusing to load checkpoint: its pickle tries to modify {self._what()} "
            f"(nothing from the file was run)")

    def __setattr__(self, name, value):
        raise UnsafeCheckpointError(f"refusing to load checkpoint: it tries to modify {self._what()}")

    def __delattr__(self, name):
        raise UnsafeCheckpointError(f"refusing to load checkpoint: it tries to modify {self._what()}")

    def _what(self) -> str:
        return type(self).__name__.lstrip("_")


class _Allowed(_Sealed):
    """An allow-listed global as the stream sees it: callable, not modifiable."""

    __slots__ = ("qualname", "target")

    def __init__(self, qualname: str, target):
        self._set(qualname=qualname, target=target)

    def __call__(self, *args):
        return self.target(*args)

    def _what(self) -> str:
        return self.qualname

    def __repr__(self) -> str:
        return f"<allowed {self.qualname}>"


class _StorageType(_Sealed):
    """Stand-in for ``torch.FloatStorage`` & co.: only carries the element type."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self._set(name=name)

    def _what(self) -> str:
        return f"torch.{self.name}"

    @property
    def itemsize(self) -> int:
        dtype = STORAGE_DTYPES[self.name]
        return 2 if dtype == "bfloat16" else dtype.itemsize

    @property
    def result_dtype(self) -> np.dtype:
        """The dtype of what ``decode`` returns, in native byte order."""
        dtype = STORAGE_DTYPES[self.name]
        return np.dtype(np.float32) if dtype == "bfloat16" else dtype.newbyteorder("=")

    def decode(self, raw: bytes, byteorder: str) -> np.ndarray:
        dtype = STORAGE_DTYPES[self.name]
        if dtype == "bfloat16":
            u16 = np.frombuffer(raw, dtype=np.dtype("u2").newbyteorder(_bo(byteorder)))
            return (u16.astype(np.uint32) << 16).view(np.float32)
        return np.frombuffer(raw, dtype=dtype.newbyteorder(_bo(byteorder)))


def _bo(byteorder: str) -> str:
    return "<" if byteorder == "little" else ">"


class _Storage(_Sealed):
    """A storage named by a persistent id. ``opener`` (set once the container is parsed)
    returns a binary file over its bytes; nothing is read until a tensor needs it."""

    __slots__ = ("type", "key", "numel", "opener", "byteorder")

    def __init__(self, storage_type: _StorageType, key: str, numel: int):
        self._set(type=storage_type, key=key, numel=numel, opener=None, byteorder="little")

    def _what(self) -> str:
        return f"storage {_printable(self.key)!r}"

    def attach(self, opener, byteorder: str) -> None:
        self._set(opener=opener, byteorder=byteorder)

    def read_elements(self, first: int, count: int) -> np.ndarray:
        """Elements ``first .. first + count - 1``, decoded; reads only their bytes."""
        if self.opener is None:
            raise CheckpointError(f"checkpoint is missing the data of storage {_printable(self.key)!r}")
        size = self.type.itemsize
        try:
            with self.opener() as f:
                f.seek(first * size)  # zip entries: inflated and dropped in bounded chunks
                raw = f.read(count * size)
        except CheckpointError:
            raise
        except Exception as exc:  # zlib, zip, encrypted or unsupported entries, ...
            raise CheckpointError(f"checkpoint storage {_printable(self.key)!r} is unreadable "
                                  f"({type(exc).__name__}: {_printable(str(exc), 80)})") from None
        if len(raw) != count * size:
            raise CheckpointError(f"checkpoint storage {_printable(self.key)!r} is truncated")
        return self.type.decode(raw, self.byteorder)


class TensorRef(_Sealed):
    """A tensor of the checkpoint, validated but not read: ``shape``, ``dtype`` and where its
    elements lie in its storage. ``read()`` returns it as a NumPy array (a copy)."""

    __slots__ = ("storage", "offset", "shape", "stride")

    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple):
        self._set(storage=storage, offset=offset, shape=shape, stride=stride)

    def _what(self) -> str:
        return "a tensor"

    def __repr__(self) -> str:
        return f"TensorRef(shape={self.shape}, dtype={self.dtype})"

    @property
    def dtype(self) -> np.dtype:
        return self.storage.type.result_dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def read(self) -> np.ndarray:
        if self.size == 0:
            return np.zeros(self.shape, dtype=self.dtype)
        extent = sum((n - 1) * st for n, st in zip(self.shape, self.stride)) + 1
        data = self.storage.read_elements(self.offset, extent)
        view = np.lib.stride_tricks.as_strided(
            data, shape=self.shape, strides=tuple(st * data.itemsize for st in self.stride),
            writeable=False)
        return np.array(view, dtype=self.dtype, copy=True)


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INDEX


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """Validate a tensor's view of its storage (nothing is read). The rules bound what
    reading it can cost by the tensor's own size: a view may not be larger than its storage,
    repeat elements through a zero stride, reach past the storage, or be a sparse slice
    spanning far more of the storage than it holds."""
    if not isinstance(storage, _Storage):
        raise CheckpointError("checkpoint tensor does not refer to a storage")
    if (not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list))
            or len(size) != len(stride) or len(size) > MAX_TENSOR_DIMS
            or not all(_is_index(v) for v in (storage_offset, *size, *stride))):
        raise CheckpointError("checkpoint has a tensor with a malformed or negative size, stride "
                              "or offset")
    size, stride = tuple(size), tuple(stride)
    tensor = TensorRef(storage, storage_offset, size, stride)
    numel = tensor.size
    if numel == 0:
        return tensor
    where = _printable(storage.key)
    if any(st == 0 and n > 1 for n, st in zip(size, stride)):
        raise CheckpointError(f"checkpoint has a tensor that repeats elements of storage {where!r} "
                              "(a zero stride); only plain tensors are supported")
    if numel > storage.numel:
        raise CheckpointError(f"checkpoint has a tensor of {numel:,} elements viewing storage "
                              f"{where!r} of {storage.numel:,}")
    extent = sum((n - 1) * st for n, st in zip(size, stride)) + 1
    if storage_offset + extent > storage.numel:
        raise CheckpointError(f"checkpoint has a tensor that reaches past its storage {where!r}")
    if extent > 2 * numel + 1024:
        raise CheckpointError(f"checkpoint has a tensor that is a sparse slice of storage {where!r} "
                              f"({numel:,} elements spread over {extent:,}); save it contiguous")
    return tensor


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return data


# The whole allow-list. Keys are exactly what the pickle stream names; values are our own
# harmless, sealed callables, never the real torch objects.
ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): _Allowed("collections.OrderedDict", collections.OrderedDict),
    **{("torch._utils", f.__name__): _Allowed(f"torch._utils.{f.__name__}", f)
       for f in (_rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter,
                 _rebuild_parameter_with_state)},
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
                f"'{_printable(module, 100)}.{_printable(name, 100)}', which a plain tensor "
                f"checkpoint never needs (nothing from the file was run)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise CheckpointError("checkpoint has an unknown persistent id")
        storage_type, key, _location, numel = pid[1:5]
        if len(pid) == 6 and pid[5] is not None:
            raise CheckpointError("checkpoint uses legacy storage views, which are not supported")
        if not isinstance(storage_type, _StorageType) or not _is_index(numel) \
                or not isinstance(key, (str, int)) or isinstance(key, bool):
            raise CheckpointError("checkpoint has a malformed storage reference")
        key = str(key)
        known = self._storages.get(key)
        if known is None:
            known = self._storages[key] = _Storage(storage_type, key, numel)
        elif known.type is not storage_type or known.numel != numel:
            raise CheckpointError(f"checkpoint describes storage {_printable(key)!r} twice, differently")
        return known


_MEMO_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")


def _scan_pickle(data: bytes, start: int) -> int:
    """Walk one pickle from ``start`` opcode by opcode, building nothing, and return where it
    ends. pickletools reads counted strings only as far as the data goes, so a claimed length
    costs nothing here; the C unpickler allocates it up front, and sizes its memo from the
    largest index it meets -- both are bounded by this pass first."""
    stream = io.BytesIO(data)
    stream.seek(start)
    ops = 0
    frame_end = None
    try:
        with warnings.catch_warnings():  # odd escapes in a STRING opcode warn; they are data
            warnings.simplefilter("ignore", DeprecationWarning)
            for opcode, arg, pos in pickletools.genops(stream):
                ops += 1
                # Protocol 4 frames: the C unpickler reads a frame ahead and drops what is left
                # of it when an opcode runs past its end, so it would read different bytes
                # (e.g. another length) than this scan. Real picklers align frames to opcodes.
                end = stream.tell()
                if frame_end is not None and pos >= frame_end:
                    frame_end = None
                if frame_end is not None and (end > frame_end or opcode.name == "FRAME"):
                    raise CheckpointError("checkpoint pickle has a malformed frame")
                if opcode.name == "FRAME":
                    frame_end = end + arg
                if ops > MAX_PICKLE_OPS or stream.tell() - start > MAX_PICKLE_BYTES:
                    raise CheckpointError(f"checkpoint pickle is over liif-jax's limits "
                                          f"({MAX_PICKLE_OPS:,} opcodes, {MAX_PICKLE_BYTES >> 20} MiB)")
                # A real pickler numbers its memo entries 0, 1, 2, ...: each below the opcode count.
                if opcode.name in _MEMO_PUTS and not (isinstance(arg, int) and 0 <= arg < ops):
                    raise CheckpointError("checkpoint pickle has an out-of-range memo index")
    except CheckpointError:
        raise
    except Exception as exc:  # pickletools raises ValueError & co. on corrupt data
        raise CheckpointError(f"not a readable PyTorch checkpoint ({_printable(str(exc), 80)})") from None
    return stream.tell()


def _unpickle(data: bytes, start: int, storages) -> tuple[object, int]:
    """(object, end offset) of the pickle at ``data[start:]``."""
    end = _scan_pickle(data, start)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return _RestrictedUnpickler(io.BytesIO(data[start:end]), storages).load(), end
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError("checkpoint pickle is nested too deeply") from None
    except Exception as exc:  # pickle raises many types on corrupt data
        raise CheckpointError(
            f"not a readable PyTorch checkpoint ({type(exc).__name__}: {_printable(str(exc), 80)})"
        ) from None


def _open_zip(data: bytes):
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = {info.filename: info for info in archive.infolist()}
    except Exception as exc:  # BadZipFile, OSError, ValueError, ... on damaged archives
        raise CheckpointError(f"checkpoint is damaged or truncated (zip: {_printable(str(exc), 80)})") from None
    pickles = [n for n in infos if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
        raise CheckpointError("zip file is not a PyTorch checkpoint (no single data.pkl inside)")
    prefix = pickles[0][: -len("data.pkl")]

    def read_entry(name, limit):
        """At most ``limit`` + 1 bytes of an entry: enough to tell it is too long."""
        try:
            with archive.open(name) as f:
                return f.read(limit + 1)
        except Exception as exc:
            raise CheckpointError(f"checkpoint is damaged or truncated (zip: {_printable(str(exc), 80)})") from None

    byteorder = "little"
    if prefix + "byteorder" in infos:
        byteorder = read_entry(prefix + "byteorder", 16).decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise CheckpointError(f"checkpoint has an unknown byte order {_printable(byteorder)!r}")
    pkl = read_entry(pickles[0], MAX_PICKLE_BYTES)
    if len(pkl) > MAX_PICKLE_BYTES:
        raise CheckpointError(f"checkpoint pickle is over liif-jax's limit of {MAX_PICKLE_BYTES >> 20} MiB")
    storages: dict[str, _Storage] = {}
    obj, _ = _unpickle(pkl, 0, storages)
    for key, storage in storages.items():
        info = infos.get(f"{prefix}data/{key}")
        if info is None:
            raise CheckpointError(f"checkpoint is missing storage {_printable(key)!r}")
        # The size the archive declares (no byte of the entry is read to learn it).
        if info.file_size < storage.numel * storage.type.itemsize:
            raise CheckpointError(f"checkpoint storage {_printable(key)!r} is truncated")
        storage.attach(lambda info=info: archive.open(info), byteorder)
    return obj


class _ViewReader:
    """A read-only file over a memoryview that copies only what is read (io.BytesIO would
    copy the whole storage on every open)."""

    def __init__(self, view: memoryview):
        self._view, self._pos = view, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def seek(self, pos: int) -> None:
        self._pos = pos

    def read(self, n: int) -> bytes:
        out = bytes(self._view[self._pos:self._pos + n])
        self._pos += len(out)
        return out


def _open_legacy(data: bytes):
    storages: dict[str, _Storage] = {}
    magic, pos = _unpickle(data, 0, storages)
    if magic != LEGACY_MAGIC:
        raise CheckpointError("not a PyTorch checkpoint (unknown file format)")
    version, pos = _unpickle(data, pos, storages)
    if version != LEGACY_PROTOCOL:
        raise CheckpointError("legacy PyTorch checkpoint of an unsupported protocol version")
    sys_info, pos = _unpickle(data, pos, storages)
    byteorder = "little" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else "big"
    obj, pos = _unpickle(data, pos, storages)
    keys, pos = _unpickle(data, pos, storages)
    if not isinstance(keys, list):
        raise CheckpointError("legacy checkpoint has no storage key list")
    # Storages follow in key order, each as an int64 count and its bytes. Only their places
    # are recorded here; a tensor's bytes are sliced out when it is read.
    attached = set()
    for key in keys:
        storage = storages.get(str(key))
        if storage is None or str(key) in attached:
            raise CheckpointError(f"legacy checkpoint lists an unknown or repeated storage {_printable(str(key))!r}")
        head = data[pos:pos + 8]
        if len(head) != 8:
            raise CheckpointError("checkpoint is damaged or truncated (legacy format)")
        (numel,) = struct.unpack("<q" if byteorder == "little" else ">q", head)
        if numel != storage.numel:
            raise CheckpointError(f"legacy checkpoint storage {_printable(str(key))!r} has an inconsistent size")
        begin, pos = pos + 8, pos + 8 + numel * storage.type.itemsize
        if pos > len(data):
            raise CheckpointError("checkpoint is damaged or truncated (legacy format)")
        view = memoryview(data)[begin:pos]
        storage.attach(lambda view=view: _ViewReader(view), byteorder)
        attached.add(str(key))
    missing = set(storages) - attached
    if missing:
        raise CheckpointError(f"checkpoint is missing the data of storage {_printable(min(missing))!r}")
    return obj


def open_checkpoint(data: bytes):
    """Return the checkpoint's object tree with every tensor as a ``TensorRef`` (validated,
    not read). ``data`` is the whole file. Raises CheckpointError (UnsafeCheckpointError for a
    refused global) with a one-line message; nothing in the file is ever executed."""
    if len(data) == 0:
        raise CheckpointError("checkpoint file is empty")
    if data[:4] == b"PK\x03\x04":
        opener = _open_zip
    elif data[:1] == b"\x80":  # a pickle protocol opcode: the legacy format
        opener = _open_legacy
    else:
        raise CheckpointError("not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        return opener(data)
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError("checkpoint pickle is nested too deeply") from None
    except Exception as exc:  # e.g. a crafted stream that called a rebuild function oddly
        raise CheckpointError(
            f"not a readable PyTorch checkpoint ({type(exc).__name__}: {_printable(str(exc), 80)})"
        ) from None


def load_checkpoint(data: bytes, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES):
    """Return the checkpoint's object tree with tensors as NumPy arrays (copies).

    Reads at most ``max_tensor_bytes`` of tensor data in all (CheckpointError beyond);
    the converter does not use this: it reads only the tensors its spec needs."""
    tree = open_checkpoint(data)
    budget = [max_tensor_bytes]
    try:
        return _materialise(tree, {}, budget)
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError("checkpoint pickle is nested too deeply") from None


def _materialise(obj, memo: dict, budget: list):
    """Replace every TensorRef in a nested structure with its array. ``memo`` makes a shared
    sub-object cost once (a pickle can reference one list from many places, so walking paths
    instead of objects could take exponential time and memory)."""
    if isinstance(obj, TensorRef):
        if id(obj) not in memo:
            budget[0] -= obj.nbytes
            if budget[0] < 0:
                raise CheckpointError("checkpoint holds more tensor data than allowed here")
            memo[id(obj)] = obj.read()
        return memo[id(obj)]
    if isinstance(obj, (dict, list)):
        if id(obj) in memo:
            return memo[id(obj)]
        if isinstance(obj, dict):
            out = memo[id(obj)] = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
            for k, v in obj.items():
                out[k] = _materialise(v, memo, budget)
        else:
            out = memo[id(obj)] = []
            out.extend(_materialise(v, memo, budget) for v in obj)
        return out
    if isinstance(obj, tuple):
        if id(obj) not in memo:
            memo[id(obj)] = tuple(_materialise(v, memo, budget) for v in obj)
        return memo[id(obj)]
    return obj
