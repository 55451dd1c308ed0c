"""Property-based fuzzing of the ``.pth`` reader (hypothesis).

Whatever the bytes -- random, a real checkpoint mutated or truncated, or a pickle assembled
from random opcodes (allowed and forbidden globals, BUILD, lying lengths, wild memo
indices) -- reading them must:
- return a result or raise CheckpointError, never any other exception;
- allocate at most ``BOUND`` bytes (tracemalloc peak: deterministic);
- run nothing: an audit hook records every import, exec/compile, process, file or socket
  event while the reader runs, and there must be none.

CI runs a few hundred examples per property, derandomized (the same examples every run,
well under 30 s on 2 cores). A longer, randomized run before a release:

    LIIF_JAX_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/test_fuzz_checkpoints.py
"""

import os
import struct
import sys
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torch_format as tf
from conftest import TINY
from convert_weights.torch_pickle import load_checkpoint
from liif_jax.convert import model_from_checkpoint_bytes
from liif_jax.errors import CheckpointError

_LONG_RUN = int(os.environ.get("LIIF_JAX_FUZZ_EXAMPLES", "0"))


def fuzz_settings(ci_examples: int):
    return settings(max_examples=_LONG_RUN or ci_examples, derandomize=not _LONG_RUN,
                    deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


MB = 1 << 20
BOUND = 32 * MB  # the tiny checkpoint itself needs well under 1 MB
ZIP_FILE = (TINY / "tiny-liif.pth").read_bytes()
LEGACY_FILE = (TINY / "tiny-liif-legacy.pth").read_bytes()

# ---------------------------------------------------------------- the watch

# Audit events that would mean the file made us do something: import a module, compile or
# run code, start a process, touch a file or the network, or take the stock pickle path.
_FORBIDDEN = ("import", "exec", "compile", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
              "os.fork", "subprocess.Popen", "ctypes.", "open", "os.remove", "os.rename",
              "shutil.", "socket.", "pickle.find_class", "builtins.input", "code.", "sys.settrace")
_seen: list = []
_watching = [False]


def _audit(event, args):
    if _watching[0] and event.startswith(_FORBIDDEN):
        _seen.append((event, str(args)[:100]))


sys.addaudithook(_audit)  # cannot be removed: it only records while _watching is set


def check_reader(fn, data: bytes):
    """Run ``fn(data)`` under the watch, assert the three properties, and return its
    CheckpointError (None if it read the bytes). Any other exception fails the test."""
    _seen.clear()
    error = None
    tracemalloc.start()
    _watching[0] = True
    try:
        fn(data)
    except CheckpointError as exc:
        error = exc
    finally:
        _watching[0] = False
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert not _seen, _seen
    assert peak < BOUND, f"{peak / MB:.1f} MB"
    assert error is None or "\n" not in str(error)
    return error


def convert(data: bytes) -> None:
    model_from_checkpoint_bytes(data, "fuzz.pth")


READERS = {"load_checkpoint": load_checkpoint, "convert": convert}


@pytest.fixture(scope="module", autouse=True)
def warm():
    """Everything a successful load imports, imported before the watch starts."""
    convert(ZIP_FILE)
    convert(LEGACY_FILE)
    load_checkpoint(ZIP_FILE)
    convert(tf.zip_with_pickle(PICKLE, STORAGES))  # Python's zipfile names: the cp437 codec
    for codec in ("raw_unicode_escape", "unicode_escape", "latin-1", "ascii"):  # pickle's text opcodes
        b"x".decode(codec)


# ---------------------------------------------------------------- strategies

@st.composite
def mutated(draw, base: bytes):
    """``base`` with a few random edits: byte changes, insertions, deletions, truncation."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["set", "insert", "delete", "truncate", "int"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[pos:]
        elif kind == "int":  # a plausible big count or size where one may be read
            data[pos:pos + 4] = struct.pack("<I", draw(st.sampled_from(
                [0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 24, 1 << 30])))
    return bytes(data)


def _tiny_pickle_and_storages():
    import zipfile
    import io

    archive = zipfile.ZipFile(io.BytesIO(ZIP_FILE))
    prefix = [n for n in archive.namelist() if n.endswith("data.pkl")][0][:-len("data.pkl")]
    storages = {n[len(prefix + "data/"):]: archive.read(n) for n in archive.namelist()
                if n.startswith(prefix + "data/")}
    return archive.read(prefix + "data.pkl"), storages


PICKLE, STORAGES = _tiny_pickle_and_storages()

o = tf.op
_TEXTS = ["storage", "cpu", "0", "1", "model", "sd", "name", "args", "liif", "encoder_spec",
          "imnet_spec", "edsr-baseline", "mlp", "n_resblocks", "encoder.head.0.weight", "x" * 300]
_GLOBALS = [("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
            ("torch._utils", "_rebuild_parameter"), ("torch", "FloatStorage"),
            ("torch", "BFloat16Storage"), ("torch", "LongStorage"), ("os", "system"),
            ("builtins", "eval"), ("builtins", "getattr"), ("subprocess", "Popen"),
            ("torch", "load"), ("numpy.core.multiarray", "_reconstruct")]
_U32 = st.sampled_from([0, 1, 2, 5, 255, 256, 1 << 16, 1 << 24, 0x7FFFFFFF, 0xFFFFFFFF])
_U64 = st.sampled_from([0, 1, 16, 1 << 31, 1 << 40, (1 << 63) - 1, (1 << 64) - 1])

_OPCODE = st.one_of(
    st.sampled_from([o.NONE, o.NEWFALSE, b"\x88", o.EMPTY_DICT, o.EMPTY_LIST, o.EMPTY_TUPLE,
                     o.MARK, o.TUPLE, b"\x85", b"\x86", b"\x87", o.SETITEM, b"u", o.APPEND,
                     b"e", o.BUILD, o.REDUCE, o.BINPERSID, o.DUP, o.POP, b"1", b"\x81", b"\x94",
                     b"\x8f", b"\x90", b"\x91", b"\x97", b"\x98"]),
    st.integers(-(1 << 31), (1 << 31) - 1).map(o.int),
    st.integers(0, 255).map(lambda n: b"K" + bytes([n])),
    st.sampled_from(_TEXTS).map(o.text),
    st.sampled_from(_GLOBALS).map(lambda g: o.glob(*g)),
    _U32.map(o.put), _U32.map(o.get),
    st.integers(0, 255).map(lambda n: b"q" + bytes([n])),
    st.integers(0, 255).map(lambda n: b"h" + bytes([n])),
    _U64.map(o.bytes8),  # BINBYTES8 with a length that may lie
    _U64.map(lambda n: b"\x8d" + struct.pack("<Q", n) + b"ab"),  # BINUNICODE8
    _U64.map(lambda n: b"\x96" + struct.pack("<Q", n) + b"ab"),  # BYTEARRAY8
    _U64.map(lambda n: b"\x95" + struct.pack("<Q", n)),  # FRAME
    _U32.map(lambda n: b"\x8b" + struct.pack("<I", n) + b"\x01"),  # LONG4
    st.integers(0, 255).map(lambda n: b"\x82" + bytes([n])),  # EXT1
    st.sampled_from([b"\x80\x02", b"\x80\x05", b"\x80\xff"]),
)


@st.composite
def assembled_pickle(draw):
    """A torch zip whose pickle is random opcodes (often a valid-looking tensor first)."""
    body = b"".join(draw(st.lists(_OPCODE, max_size=60)))
    if draw(st.booleans()):  # start from a real tensor rebuild so deeper paths are reached
        pid = o.tuple(o.text("storage"), o.glob("torch", "FloatStorage"), o.text("0"), o.text("cpu"),
                      o.int(draw(st.sampled_from([0, 1, 4, 16, 1 << 30]))))
        dims = draw(st.lists(st.sampled_from([0, 1, 2, 4, 16384, -1]), max_size=3))
        strides = draw(st.lists(st.sampled_from([0, 1, 2, 4, 1 << 40]), min_size=len(dims),
                                max_size=len(dims)))
        body = (o.glob("torch._utils", "_rebuild_tensor_v2")
                + o.tuple(pid + o.BINPERSID, o.int(draw(st.sampled_from([0, 1, 3]))),
                          o.tuple(*map(o.int, dims)), o.tuple(*map(o.int, strides)), o.NEWFALSE, o.NONE)
                + o.REDUCE + body)
    return tf.zip_with_pickle(o.PROTO2 + body + o.STOP, {"0": bytes(range(64))})


# ---------------------------------------------------------------- properties

@pytest.mark.parametrize("reader", sorted(READERS))
@fuzz_settings(150)
@given(data=st.one_of(
    st.binary(max_size=512),
    st.tuples(st.sampled_from([b"PK\x03\x04", b"\x80\x02", b"\x80\x04", b"\x80\x05"]),
              st.binary(max_size=512)).map(b"".join)))
def test_random_bytes(reader, data):
    check_reader(READERS[reader], data)


@pytest.mark.parametrize("reader", sorted(READERS))
@fuzz_settings(150)
@given(pickle_bytes=mutated(PICKLE))
def test_mutated_pickle_in_a_valid_zip(reader, pickle_bytes):
    check_reader(READERS[reader], tf.zip_with_pickle(pickle_bytes, STORAGES))


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("base", ["zip", "legacy"])
@fuzz_settings(100)
@given(data=st.data())
def test_mutated_files(reader, base, data):
    check_reader(READERS[reader], data.draw(mutated(ZIP_FILE if base == "zip" else LEGACY_FILE)))


@pytest.mark.parametrize("base", ["zip", "legacy"])
@fuzz_settings(60)
@given(fraction=st.floats(0, 1, exclude_max=True))
def test_truncated_files_are_refused(base, fraction):
    whole = ZIP_FILE if base == "zip" else LEGACY_FILE
    assert check_reader(convert, whole[:int(len(whole) * fraction)]) is not None


@pytest.mark.parametrize("reader", sorted(READERS))
@fuzz_settings(250)
@given(data=assembled_pickle())
def test_assembled_pickles(reader, data):
    check_reader(READERS[reader], data)
