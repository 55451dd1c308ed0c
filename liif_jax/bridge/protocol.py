"""Bridge protocol, version 1: JSON header lines and raw pixel payloads over a byte stream.

Every message is one line of UTF-8 JSON (at most 64 KiB, nested at most 16 deep, no NaN or
Infinity) ending in ``\\n``, always with ``"liif": 1`` (the protocol version); a message
announcing ``"bytes": N`` is followed by exactly N raw bytes. Pixels are row-major, channels
interleaved, little-endian.

Requests (client -> worker)::

    {"liif": 1, "op": "upscale", "id": "any", "width": 640, "height": 480,
     "channels": "RGBA", "format": "u16", "bytes": 2457600,
     "scale": 2.5 | "scale": [2, 1.5] | "size": [1600, 1200],       # one of
     "region": [x, y, w, h], "precision": "float32", "tile": 256,     # optional
     "max_memory": 2147483648, "max_pixels": 100000000}               # optional
    <payload>
    {"liif": 1, "op": "ping"}        -> a "pong" event (version, model)
    {"liif": 1, "op": "cancel"}      -> stops the running upscale (an "error" with code "cancelled")
    {"liif": 1, "op": "quit"}        -> the worker exits

``channels``: RGB, RGBA, GRAY, GRAYA; ``format``: u8, u16, f32 (f32 in [0, 1]). The result has
the same channels and format (the payload's precision is kept end to end). Types, checked
before anything runs (else ``bad_request``): ``id`` null, a number or a string of at most 256
characters; ``width``, ``height``, ``size`` entries, ``tile``, ``max_memory`` (bytes) and
``max_pixels`` integers (JSON integers, at most 2**53); ``scale`` a number or a pair of
numbers, each at most 1e6; ``region`` four numbers; ``precision`` a string. Their ranges and
meaning are the library's (``liif_jax.upscale``; errors with code ``request``). Unknown keys
are ignored.

Events (worker -> client)::

    {"liif": 1, "event": "progress", "id": ..., "done": 1200, "total": 48000}
    {"liif": 1, "event": "result", "id": ..., "width": W, "height": H, "channels": ...,
     "format": ..., "bytes": N, "compute_s": 1.23}
    <payload>
    {"liif": 1, "event": "error", "id": ..., "code": "bad_request", "message": "one line"}
    {"liif": 1, "event": "pong", "version": "0.1.0", "protocol": 1, "model": "..."}

Error codes (``ERROR_CODES``): ``bad_header`` (not a JSON object line), ``bad_version``,
``bad_request``, ``too_large``, ``short_payload``, ``busy``, ``image``, ``request``,
``checkpoint``, ``cancelled``, ``internal``. A request whose header parsed has its announced
payload skipped (read and dropped, whatever the error, ``too_large`` included), so the stream
stays in step and the worker reads the next request. Requests may be pipelined, within
bounds (``worker.MAX_QUEUED_BYTES`` of payloads held, running or waiting, beyond the first;
``worker.MAX_QUEUED_MESSAGES`` messages waiting): a request over the byte bound gets ``busy``
(send it again later); a client over the message bound, which is not reading its answers,
gets a final ``busy`` and the worker stops reading. After ``short_payload`` (the stream
ended), that final ``busy`` and an ``internal`` error of the reader itself the worker exits.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np

PROTOCOL = 1
MAX_HEADER_BYTES = 64 * 1024
MAX_INPUT_PIXELS = 1 << 28  # 268 Mpx: beyond any real layer; a typo must not allocate it
MAX_HEADER_DEPTH = 16  # a request nests 2 deep; json's recursion must never be reached
MAX_ID_CHARS = 256
MAX_INTEGER = 1 << 53  # exact in every JSON implementation
MAX_SCALE = 1e6
ERROR_CODES = ("bad_header", "bad_version", "bad_request", "too_large", "short_payload", "busy",
               "image", "request", "checkpoint", "cancelled", "internal")
CHANNELS = {"RGB": 3, "RGBA": 4, "GRAY": 1, "GRAYA": 2}
FORMATS = {"u8": np.dtype("u1"), "u16": np.dtype("<u2"), "f32": np.dtype("<f4")}


class ProtocolError(Exception):
    """A request that cannot be served; ``code`` is one of the protocol's error codes.
    ``skip`` is how many payload bytes to discard to stay in step."""

    def __init__(self, code: str, message: str, skip: int = 0, request_id=None, fatal: bool = False):
        super().__init__(message)
        self.code, self.skip, self.request_id = code, skip, request_id
        # The worker exits after sending it: the stream cannot (or must not) be read on.
        self.fatal = fatal or code == "short_payload"


def encode(message: dict) -> bytes:
    return (json.dumps({"liif": PROTOCOL, **message}, separators=(",", ":")) + "\n").encode()


# A JSON string (escapes included) or one bracket: brackets inside strings are text.
_STRING_OR_BRACKET = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _too_deep(line: bytes) -> bool:
    """Whether ``line`` nests deeper than MAX_HEADER_DEPTH: checked before ``json.loads``,
    whose recursion a 30,000-deep line would exhaust (RecursionError, not ValueError)."""
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(line):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > MAX_HEADER_DEPTH:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def read_message(stream) -> dict | None:
    """The next header line as a dict, or None at end of stream. Raises ProtocolError for
    anything else; never another exception for any bytes (fuzzed in tests)."""
    line = stream.readline(MAX_HEADER_BYTES + 1)
    if not line:
        return None
    if not line.endswith(b"\n"):
        if len(line) <= MAX_HEADER_BYTES:
            raise ProtocolError("bad_header", "header line cut by the end of the stream")
        # Too long: drop the rest of the line so the next one is whole.
        while True:
            rest = stream.readline(MAX_HEADER_BYTES)
            if not rest or rest.endswith(b"\n"):
                break
        raise ProtocolError("bad_header", f"header line longer than {MAX_HEADER_BYTES} bytes")
    if _too_deep(line):
        raise ProtocolError("bad_header", f"header nests deeper than {MAX_HEADER_DEPTH} levels")
    try:
        message = json.loads(line, parse_constant=_no_constants)
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        raise ProtocolError("bad_header", "header is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_header", "header is not a JSON object")
    return message


def _show(value) -> str:
    """A user's value for an error message: short, one line."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite JSON number of sane size (bool is not a number here)."""
    if _is_int(value):
        return abs(value) <= MAX_INTEGER
    return isinstance(value, float) and math.isfinite(value)


def _payload_size(message) -> int:
    size = message.get("bytes", 0)
    return size if _is_int(size) and 0 <= size else 0


def parse_request(message: dict) -> dict:
    """Validate a request header; returns it with ``shape`` and ``dtype`` added. Raises
    ProtocolError (with ``skip`` set so the caller can discard the payload)."""
    skip = _payload_size(message)
    rid = message.get("id")
    if not (rid is None or _is_number(rid) or (isinstance(rid, str) and len(rid) <= MAX_ID_CHARS)):
        raise ProtocolError("bad_request", f"'id' must be null, a number or a string of at most "
                            f"{MAX_ID_CHARS} characters, got {_show(rid)}", skip)
    version = message.get("liif")
    if not (_is_int(version) and version == PROTOCOL):
        raise ProtocolError("bad_version", f"protocol version {_show(version)} is not supported "
                            f"(this worker speaks {PROTOCOL})", skip, rid)
    op = message.get("op")
    if op in ("ping", "quit", "cancel"):
        if skip:
            raise ProtocolError("bad_request", f"op {op!r} takes no payload", skip, rid)
        return {"op": op, "id": rid}
    if op != "upscale":
        raise ProtocolError("bad_request", f"unknown op {_show(op)}", skip, rid)

    def fail(text):
        raise ProtocolError("bad_request", text, skip, rid)

    def whole(name, minimum=1):
        value = message.get(name)
        if not (_is_int(value) and minimum <= value <= MAX_INTEGER):
            fail(f"'{name}' must be an integer from {minimum} to 2**53, got {_show(value)}")
        return value

    width, height = whole("width"), whole("height")
    channels, fmt = message.get("channels"), message.get("format")
    if channels not in CHANNELS:
        fail(f"'channels' must be one of {sorted(CHANNELS)}, got {_show(channels)}")
    if fmt not in FORMATS:
        fail(f"'format' must be one of {sorted(FORMATS)}, got {_show(fmt)}")
    if width * height > MAX_INPUT_PIXELS:
        # Never read that much into memory; the payload is skipped (streamed and dropped), so
        # its bytes are not taken for headers.
        raise ProtocolError("too_large", f"input {width}x{height} is over {MAX_INPUT_PIXELS:,} pixels",
                            skip, rid)
    expected = width * height * CHANNELS[channels] * FORMATS[fmt].itemsize
    if message.get("bytes") != expected:
        fail(f"'bytes' must be {expected} for {width}x{height} {channels} {fmt}, "
             f"got {_show(message.get('bytes'))}")
    request = {"op": op, "id": rid, "width": width, "height": height, "channels": channels,
               "format": fmt, "bytes": expected}
    if ("scale" in message) == ("size" in message):
        fail("give exactly one of 'scale' or 'size'")
    if "scale" in message:
        scale = message["scale"]
        factors = scale if isinstance(scale, list) and len(scale) == 2 else [scale]
        if not all(_is_number(f) and abs(f) <= MAX_SCALE for f in factors):
            fail(f"'scale' must be a number or a pair of numbers, each at most {MAX_SCALE:g}, "
                 f"got {_show(scale)}")
        request["scale"] = scale
    else:
        size = message["size"]
        if not (isinstance(size, list) and len(size) == 2
                and all(_is_int(v) and abs(v) <= MAX_INTEGER for v in size)):
            fail(f"'size' must be [width, height] in whole pixels, got {_show(size)}")
        request["size"] = size
    for name, ok, what in (
            ("region", lambda v: isinstance(v, list) and len(v) == 4 and all(map(_is_number, v)),
             "[x, y, width, height] (numbers)"),
            ("tile", lambda v: _is_int(v) and abs(v) <= MAX_INTEGER, "an integer"),
            ("max_memory", lambda v: _is_int(v) and abs(v) <= MAX_INTEGER, "an integer (bytes)"),
            ("max_pixels", lambda v: _is_int(v) and 0 <= v <= MAX_INTEGER, "an integer >= 0 (0: no limit)"),
            ("precision", lambda v: isinstance(v, str) and len(v) <= 32, "a string")):
        value = message.get(name)
        if value is not None:
            if not ok(value):
                fail(f"'{name}' must be {what} or null, got {_show(value)}")
            request[name] = value
    return {**request, "shape": (height, width, CHANNELS[channels]), "dtype": FORMATS[fmt]}


def payload_to_pixels(data: bytes, request: dict) -> np.ndarray:
    """Payload -> array the library takes: (h, w) for GRAY, (h, w, c) otherwise."""
    arr = np.frombuffer(data, dtype=request["dtype"]).reshape(request["shape"])
    arr = arr.astype(request["dtype"].newbyteorder("="))
    return arr[..., 0] if request["channels"] == "GRAY" else arr


def pixels_to_payload(pixels01: np.ndarray, fmt: str) -> bytes:
    """[0, 1] float32 pixels -> payload bytes in ``fmt`` (integers rounded to nearest)."""
    x = np.clip(np.asarray(pixels01, np.float32), 0.0, 1.0)
    if fmt == "u8":
        out = np.rint(x * 255).astype("u1")
    elif fmt == "u16":
        out = np.rint(x * 65535).astype("<u2")
    else:
        out = x.astype("<f4")
    return np.ascontiguousarray(out).tobytes()
