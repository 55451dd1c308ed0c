"""Property-based fuzzing of the bridge's input side (hypothesis): the header line reader and
request parser (``protocol``), the worker's reader thread with payloads (``worker.Worker``,
over a real pipe and over the ``multiprocessing.connection`` stream adapter), and the adapter
itself (``transport.ConnectionReader``).

Whatever the bytes -- random, JSON headers with random fields and values, deep nesting,
payloads that are short, long or missing, all cut into random messages:
- the parser returns or raises ProtocolError (a known code, a short one-line message), never
  another exception;
- the worker answers with well-formed protocol events only, then exits cleanly (0, or 1
  after a fatal error) when the input ends: never a dead reader, an exception or a hang;
- what the worker holds is bounded by what arrived, not by what a header announces
  (tracemalloc peak);
- the stream adapter reads exactly what a byte stream reads, however the bytes were cut.

CI runs a few hundred examples per property, derandomized (the same examples every run, a
few seconds on 2 cores). A longer, randomized run before a release:

    LIIF_JAX_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/test_bridge_fuzz.py
"""

import io
import json
import os
import threading
import tracemalloc
from multiprocessing import Pipe

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liif_jax.bridge import protocol, transport, worker
from liif_jax.bridge.protocol import ProtocolError

LONG_RUN = int(os.environ.get("LIIF_JAX_FUZZ_EXAMPLES", "0"))
HANG = 60  # seconds: a guard against a hang only


def fuzz_settings(ci_examples: int):
    return settings(max_examples=LONG_RUN or ci_examples, derandomize=not LONG_RUN, deadline=None,
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------------- strategies
json_scalars = (st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
FIELDS = ["liif", "op", "id", "width", "height", "channels", "format", "bytes", "scale", "size",
          "region", "tile", "max_memory", "max_pixels", "precision"]
# Values near the valid ones, so the fuzzer reaches deep into the parser.
likely = {
    "liif": st.sampled_from([1, 1, 1, 0, 2, True, "1", 1.0]),
    "op": st.sampled_from(["upscale", "upscale", "ping", "cancel", "quit", "nope", ""]),
    "width": st.integers(-2, 6) | st.sampled_from([1 << 15, 1 << 40]),
    "height": st.integers(-2, 6) | st.sampled_from([1 << 14, 1 << 40]),
    "channels": st.sampled_from(list(protocol.CHANNELS) + ["CMYK"]),
    "format": st.sampled_from(list(protocol.FORMATS) + ["u32"]),
    "bytes": st.integers(-1, 200) | st.sampled_from([1 << 32, 1 << 62]),
    "scale": st.sampled_from([2, 0.5, -1, 0, 1e6, 1e7]) | st.lists(st.floats(-3, 3), max_size=3),
    "size": st.lists(st.integers(-2, 9), max_size=3),
    "region": st.lists(st.floats(-2, 6, allow_nan=False), max_size=5),
    "tile": st.integers(-1, 64), "max_memory": st.integers(-1, 1 << 40),
    "max_pixels": st.integers(-1, 100), "precision": st.sampled_from(["float32", "bfloat16", "x"]),
}


@st.composite
def headers(draw):
    message = {}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=len(FIELDS), unique=True)):
        message[name] = draw(likely.get(name, json_values) | json_values)
    line = (json.dumps(message, separators=(",", ":")) + "\n").encode()
    return line


@st.composite
def valid_upscale(draw):
    """A well-formed request with its payload (or a payload cut short / overlong)."""
    w, h = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    channels, fmt = draw(st.sampled_from(list(protocol.CHANNELS))), draw(st.sampled_from(list(protocol.FORMATS)))
    size = w * h * protocol.CHANNELS[channels] * protocol.FORMATS[fmt].itemsize
    header = {"liif": 1, "op": "upscale", "id": draw(st.integers(0, 99)), "width": w, "height": h,
              "channels": channels, "format": fmt, "bytes": size, "scale": 2}
    payload = draw(st.binary(min_size=size, max_size=size))
    cut = draw(st.sampled_from([size, size, size, max(0, size - 1), size + 1]))
    return protocol.encode(header) + (payload + b"\n")[:cut]


pieces = st.one_of(
    headers(), valid_upscale(), st.binary(max_size=64),
    st.sampled_from([b"\n", b"{}\n", b'{"liif":1,"op":"ping"}\n', b'{"liif":1,"op":"cancel"}\n',
                     b"[" * 40 + b"\n", b'{"a":' * 30 + b"\n", b"\xff\xfe\n", b'{"x":NaN}\n']),
    st.integers(1, 3).map(lambda k: b"x" * (protocol.MAX_HEADER_BYTES * k // 2) + b"\n"),
    st.tuples(st.integers(1, 40_000), st.sampled_from([b"[", b'{"a":', b"[{\"b\":"])).map(
        lambda kv: b'{"liif":1,"x":' + kv[1] * kv[0] + b"\n"),  # nesting, to past json's recursion
)
streams = st.lists(pieces, max_size=8).map(b"".join)


# ---------------------------------------------------------------------------- the parser
@fuzz_settings(400)
@given(streams)
def test_header_reader_and_parser_raise_only_protocol_errors(data):
    stream = io.BytesIO(data)
    for _ in range(len(data) + 1):  # every call consumes at least one byte, or ends
        try:
            message = protocol.read_message(stream)
            if message is None:
                return
            request = protocol.parse_request(message)
            if request["op"] == "upscale":
                stream.read(request["bytes"])
        except ProtocolError as exc:
            assert exc.code in protocol.ERROR_CODES
            assert "\n" not in str(exc) and len(str(exc)) < 300
            assert isinstance(exc.skip, int) and exc.skip >= 0
            stream.read(exc.skip)
    raise AssertionError("the reader did not advance")


# ---------------------------------------------------------------------------- the worker
class EchoWorker(worker.Worker):
    """The worker with the model run replaced by a 1-pixel answer: the fuzzing is about the
    input side (and must not pay JAX per example)."""

    def _run(self, number, request, data):
        assert len(data) == request["bytes"]
        if self.cancel_before > number:
            raise worker._cancelled()
        self._send({"event": "result", "id": request["id"], "width": 1, "height": 1,
                    "channels": request["channels"], "format": request["format"], "bytes": 1}, b"x")


class Output:
    def __init__(self):
        self.data = bytearray()

    def write(self, data):
        self.data += data

    def flush(self):
        pass


def check_events(raw: bytes):
    """Every byte written is a protocol event (with its payload)."""
    view = io.BytesIO(raw)
    while True:
        line = view.readline()
        if not line:
            return
        event = json.loads(line)
        assert event["liif"] == protocol.PROTOCOL and event["event"] in ("error", "pong", "result", "progress")
        if event["event"] == "error":
            assert event["code"] in protocol.ERROR_CODES
            assert "\n" not in event["message"] and len(event["message"]) <= 500
        assert len(view.read(event.get("bytes", 0))) == event.get("bytes", 0)


def run_worker(instream, feed=None):
    out = Output()
    w = EchoWorker(instream, out, model=worker.SharedModel("never loaded: EchoWorker runs no model"))
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", w.serve()), daemon=True)
    thread.start()
    if feed is not None:
        feed()
    thread.join(HANG)
    assert not thread.is_alive(), "the worker did not exit at the end of its input"
    w.reader.join(HANG)
    assert not w.reader.is_alive(), "the reader is stuck"
    assert result["code"] in (0, 1)
    check_events(bytes(out.data))
    return w


@fuzz_settings(200)
@given(streams, st.booleans())
def test_worker_answers_any_bytes_and_exits_cleanly(data, through_connection):
    if not through_connection:
        rfd, wfd = os.pipe()
        instream = os.fdopen(rfd, "rb")

        def feed():
            try:
                with os.fdopen(wfd, "wb") as f:
                    f.write(data)
            except OSError:  # the worker stopped reading (a "quit", a fatal error)
                pass
    else:
        a, instream_end = Pipe()
        instream = transport.ConnectionReader(instream_end)

        def feed():
            try:
                for start in range(0, len(data), 1000):
                    a.send_bytes(data[start:start + 1000])
            except OSError:
                pass
            a.close()
    writer = threading.Thread(target=feed, daemon=True)  # (a pipe holds only so much)
    try:
        run_worker(instream, feed=writer.start)
    finally:
        # Unblock a writer the worker no longer reads from, then wait for it.
        (instream_end if through_connection else instream).close()
        writer.join(HANG)
        assert not writer.is_alive()


@fuzz_settings(60)
@given(w=st.integers(1, 1 << 14), h=st.integers(1, 1 << 14), fmt=st.sampled_from(list(protocol.FORMATS)),
       channels=st.sampled_from(list(protocol.CHANNELS)), sent=st.integers(0, 1 << 16),
       pipelined=st.integers(1, 4))
def test_memory_follows_what_arrives_not_what_headers_announce(w, h, fmt, channels, sent, pipelined):
    """Headers announcing up to 4 GiB each, followed by a few KB: the worker holds about what
    arrived (a buffered read of the announced size would allocate all of it up front)."""
    size = w * h * protocol.CHANNELS[channels] * protocol.FORMATS[fmt].itemsize
    header = protocol.encode({"op": "upscale", "id": 1, "width": w, "height": h, "channels": channels,
                              "format": fmt, "bytes": size, "scale": 2})
    data = (header + bytes(min(sent, size))) * pipelined
    rfd, wfd = os.pipe()
    instream = os.fdopen(rfd, "rb")

    def feed():
        try:
            with os.fdopen(wfd, "wb") as f:
                f.write(data)
        except OSError:
            pass

    writer = threading.Thread(target=feed, daemon=True)
    tracemalloc.start()
    try:
        run_worker(instream, feed=writer.start)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        instream.close()
        writer.join(HANG)
    assert peak < 8 * len(data) + (16 << 20), (size, peak)


# ---------------------------------------------------------------------------- the adapter
@fuzz_settings(300)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=12),
       ops=st.lists(st.tuples(st.sampled_from(["readline", "read"]), st.integers(-1, 400)), max_size=20))
def test_connection_reader_reads_what_a_byte_stream_reads(data, cuts, ops):
    a, b = Pipe()
    bounds = sorted({0, len(data), *[c for c in cuts if c <= len(data)]})
    for start, end in zip(bounds, bounds[1:]):
        a.send_bytes(data[start:end])
    a.close()
    reader, expected = transport.ConnectionReader(b), io.BytesIO(data)
    for op, n in ops + [("read", len(data))]:
        if op == "read":
            n = max(n, 0)
        assert getattr(reader, op)(n) == getattr(expected, op)(n), (op, n)
