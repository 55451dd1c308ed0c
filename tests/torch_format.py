"""Write PyTorch-format checkpoints without torch, for crafting test cases.

The stream is what ``torch.save`` writes at pickle protocol 2: tensors reduce to
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`` with
the storage as a persistent id. We pickle stand-ins defined here and rename their globals in
the bytes (protocol 2 spells a global as the text ``c<module>\\n<name>\\n``).
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

HERE = __name__


def _rebuild_tensor_v2(*args):  # stand-in, renamed to torch._utils._rebuild_tensor_v2
    raise AssertionError("never called")


class FloatStorage:  # stand-in, renamed to torch.FloatStorage
    pass


class Tensor:
    """A tensor to write: ``array`` plus optional overrides of what the pickle claims.

    ``storage_numel`` makes the storage longer than ``array``: the zip writer then stores it
    deflated, ``array`` followed by zeros, streamed (a big storage in a small file)."""

    def __init__(self, array, size=None, stride=None, offset=0, storage_numel=None):
        self.array = np.ascontiguousarray(array, dtype="<f4")
        self.size = tuple(self.array.shape) if size is None else tuple(size)
        if stride is None:
            stride = tuple(s // 4 for s in self.array.strides) if self.array.ndim else ()
        self.stride = tuple(stride)
        self.offset = offset
        self.storage_numel = self.array.size if storage_numel is None else storage_numel


class _StorageRef:
    def __init__(self, key, array, numel=None):
        self.key, self.array = key, array
        self.numel = array.size if numel is None else numel


class _Pickler(pickle.Pickler):
    def __init__(self, file, legacy):
        super().__init__(file, protocol=2)
        self.storages = []
        self.legacy = legacy

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            obj = Tensor(obj)
        if isinstance(obj, Tensor):
            key = str(len(self.storages)) if not self.legacy else str(140000000 + len(self.storages))
            ref = _StorageRef(key, obj.array, obj.storage_numel)
            self.storages.append(ref)
            return (_rebuild_tensor_v2,
                    (ref, obj.offset, obj.size, obj.stride, False, collections.OrderedDict()))
        return NotImplemented

    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            pid = ("storage", FloatStorage, obj.key, "cpu", int(obj.numel))
            return pid + (None,) if self.legacy else pid
        return None


def rename_globals(data: bytes, renames: dict) -> bytes:
    """Rename protocol-2 GLOBALs: {('old.module', 'name'): ('new.module', 'name')}."""
    for (m0, n0), (m1, n1) in renames.items():
        data = data.replace(f"c{m0}\n{n0}\n".encode(), f"c{m1}\n{n1}\n".encode())
    return data


TORCH_RENAMES = {
    (HERE, "_rebuild_tensor_v2"): ("torch._utils", "_rebuild_tensor_v2"),
    (HERE, "FloatStorage"): ("torch", "FloatStorage"),
}


def _pickle(obj, legacy, extra_renames=None):
    buf = io.BytesIO()
    pickler = _Pickler(buf, legacy)
    pickler.dump(obj)
    data = rename_globals(buf.getvalue(), {**TORCH_RENAMES, **(extra_renames or {})})
    return data, pickler.storages


def torch_zip_bytes(obj, prefix="archive", extra_renames=None) -> bytes:
    data, storages = _pickle(obj, legacy=False, extra_renames=extra_renames)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", data)
        z.writestr(f"{prefix}/byteorder", "little")
        for ref in storages:
            if ref.numel == ref.array.size:
                z.writestr(f"{prefix}/data/{ref.key}", ref.array.tobytes())
            else:
                write_deflated(z, f"{prefix}/data/{ref.key}", ref.array.tobytes(),
                               ref.numel * 4 - ref.array.nbytes)
        z.writestr(f"{prefix}/version", "3\n")
    return out.getvalue()


def write_deflated(z: zipfile.ZipFile, name: str, head: bytes, zeros: int) -> None:
    """Write entry ``name``: ``head`` then ``zeros`` zero bytes, deflated as it streams (a
    1 GiB entry costs ~1 MB of file and never 1 GiB of memory here)."""
    chunk = bytes(1 << 20)
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with z.open(info, "w", force_zip64=True) as f:
        f.write(head)
        while zeros > 0:
            f.write(chunk[:min(zeros, len(chunk))])
            zeros -= len(chunk)


def zip_with_pickle(pickle_bytes: bytes, storages: dict | None = None, prefix="archive") -> bytes:
    """A torch zip around hand-written ``pickle_bytes`` and raw ``storages`` {key: bytes}."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", pickle_bytes)
        z.writestr(f"{prefix}/byteorder", "little")
        for key, raw in (storages or {}).items():
            z.writestr(f"{prefix}/data/{key}", raw)
        z.writestr(f"{prefix}/version", "3\n")
    return out.getvalue()


# Hand-written pickle opcodes (protocol 2), for streams no Python object pickles to.
class op:  # noqa: N801 (a namespace of byte strings)
    PROTO2, STOP, MARK, TUPLE, EMPTY_TUPLE = b"\x80\x02", b".", b"(", b"t", b")"
    EMPTY_DICT, EMPTY_LIST, SETITEM, APPEND, BUILD, REDUCE = b"}", b"]", b"s", b"a", b"b", b"R"
    NONE, NEWFALSE, DUP, POP, BINPERSID = b"N", b"\x89", b"2", b"0", b"Q"

    @staticmethod
    def glob(module: str, name: str) -> bytes:
        return f"c{module}\n{name}\n".encode()

    @staticmethod
    def text(s: str) -> bytes:
        raw = s.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw

    @staticmethod
    def int(n: int) -> bytes:
        if -(1 << 31) <= n < (1 << 31):
            return b"J" + struct.pack("<i", n)
        raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(raw)]) + raw  # LONG1

    @staticmethod
    def put(i: int) -> bytes:
        return b"r" + struct.pack("<I", i)

    @staticmethod
    def get(i: int) -> bytes:
        return b"j" + struct.pack("<I", i)

    @staticmethod
    def tuple(*items: bytes) -> bytes:
        return b"(" + b"".join(items) + b"t"

    @staticmethod
    def bytes8(declared: int, actual: bytes = b"") -> bytes:
        return b"\x8e" + struct.pack("<Q", declared) + actual


def torch_legacy_bytes(obj, extra_renames=None) -> bytes:
    data, storages = _pickle(obj, legacy=True, extra_renames=extra_renames)
    out = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001,
                   {"protocol_version": 1001, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, out, protocol=2)
    out.write(data)
    pickle.dump([ref.key for ref in storages], out, protocol=2)
    for ref in storages:
        out.write(struct.pack("<q", ref.numel))
        out.write(ref.array.tobytes() + bytes(4 * (ref.numel - ref.array.size)))
    return out.getvalue()


def liif_checkpoint(spec: dict, state_dict: dict, epoch=1) -> dict:
    """A checkpoint shaped like the LIIF training script's."""
    model = dict(spec)
    model["sd"] = collections.OrderedDict(state_dict)
    return {"model": model, "optimizer": {"name": "adam", "args": {"lr": 1e-4}}, "epoch": epoch}
