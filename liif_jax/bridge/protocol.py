"""Bridge protocol, version 1: JSON header lines and raw pixel payloads over a byte stream.

Every message is one line of UTF-8 JSON (at most 64 KiB) ending in ``\\n``, always with
``"liif": 1`` (the protocol version); a message announcing ``"bytes": N`` is followed by
exactly N raw bytes. Pixels are row-major, channels interleaved, little-endian.

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
the same channels and format (the payload's precision is kept end to end).

Events (worker -> client)::

    {"liif": 1, "event": "progress", "id": ..., "done": 1200, "total": 48000}
    {"liif": 1, "event": "result", "id": ..., "width": W, "height": H, "channels": ...,
     "format": ..., "bytes": N, "compute_s": 1.23}
    <payload>
    {"liif": 1, "event": "error", "id": ..., "code": "bad_request", "message": "one line"}
    {"liif": 1, "event": "pong", "version": "0.1.0", "protocol": 1, "model": "..."}

Error codes: ``bad_header`` (not a JSON object line), ``bad_version``, ``bad_request``,
``too_large``, ``short_payload``, ``image``, ``request``, ``checkpoint``, ``cancelled``,
``internal``. After any error but ``short_payload`` (the stream ended) the worker reads the
next request: a request whose header parsed has its announced payload skipped, so the stream
stays in step.
"""

from __future__ import annotations

import json

import numpy as np

PROTOCOL = 1
MAX_HEADER_BYTES = 64 * 1024
MAX_INPUT_PIXELS = 1 << 28  # 268 Mpx: beyond any real layer; a typo must not allocate it
CHANNELS = {"RGB": 3, "RGBA": 4, "GRAY": 1, "GRAYA": 2}
FORMATS = {"u8": np.dtype("u1"), "u16": np.dtype("<u2"), "f32": np.dtype("<f4")}


class ProtocolError(Exception):
    """A request that cannot be served; ``code`` is one of the protocol's error codes.
    ``skip`` is how many payload bytes to discard to stay in step."""

    def __init__(self, code: str, message: str, skip: int = 0, request_id=None):
        super().__init__(message)
        self.code, self.skip, self.request_id = code, skip, request_id


def encode(message: dict) -> bytes:
    return (json.dumps({"liif": PROTOCOL, **message}, separators=(",", ":")) + "\n").encode()


def read_message(stream) -> dict | None:
    """The next header line as a dict, or None at end of stream."""
    line = stream.readline(MAX_HEADER_BYTES + 1)
    if not line:
        return None
    if len(line) > MAX_HEADER_BYTES or not line.endswith(b"\n"):
        if not line.endswith(b"\n"):
            # Too long (or cut): drop the rest of the line so the next one is whole.
            while True:
                rest = stream.readline(MAX_HEADER_BYTES)
                if not rest or rest.endswith(b"\n"):
                    break
        raise ProtocolError("bad_header", f"header line longer than {MAX_HEADER_BYTES} bytes")
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("bad_header", "header is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_header", "header is not a JSON object")
    return message


def _payload_size(message) -> int:
    size = message.get("bytes", 0)
    return size if isinstance(size, int) and not isinstance(size, bool) and 0 <= size else 0


def parse_request(message: dict) -> dict:
    """Validate a request header; returns it with ``shape`` and ``dtype`` added. Raises
    ProtocolError (with ``skip`` set so the caller can discard the payload)."""
    rid = message.get("id")
    skip = _payload_size(message)
    if message.get("liif") != PROTOCOL:
        raise ProtocolError("bad_version", f"protocol version {message.get('liif')!r} is not supported "
                            f"(this worker speaks {PROTOCOL})", skip, rid)
    op = message.get("op")
    if op in ("ping", "quit", "cancel"):
        return {"op": op, "id": rid}
    if op != "upscale":
        raise ProtocolError("bad_request", f"unknown op {op!r}", skip, rid)

    def whole(name, minimum=1):
        value = message.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ProtocolError("bad_request", f"'{name}' must be an integer >= {minimum}", skip, rid)
        return value

    width, height = whole("width"), whole("height")
    channels, fmt = message.get("channels"), message.get("format")
    if channels not in CHANNELS:
        raise ProtocolError("bad_request", f"'channels' must be one of {sorted(CHANNELS)}", skip, rid)
    if fmt not in FORMATS:
        raise ProtocolError("bad_request", f"'format' must be one of {sorted(FORMATS)}", skip, rid)
    if width * height > MAX_INPUT_PIXELS:
        raise ProtocolError("too_large", f"input {width}x{height} is over {MAX_INPUT_PIXELS:,} pixels",
                            0, rid)  # never try to read that much
    expected = width * height * CHANNELS[channels] * FORMATS[fmt].itemsize
    if message.get("bytes") != expected:
        raise ProtocolError("bad_request", f"'bytes' must be {expected} for {width}x{height} "
                            f"{channels} {fmt}, got {message.get('bytes')!r}", skip, rid)
    if ("scale" in message) == ("size" in message):
        raise ProtocolError("bad_request", "give exactly one of 'scale' or 'size'", skip, rid)
    return {**message, "shape": (height, width, CHANNELS[channels]), "dtype": FORMATS[fmt]}


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
