"""``liif-jax bridge``: serve the bridge protocol (see ``protocol``) on a pair of byte streams.

A reader thread owns the input stream: it parses headers, reads payloads and queues jobs,
so a ``cancel`` message -- or the end of the stream -- is seen while a job runs. The main
thread runs jobs and is the only writer. The model is loaded on the first upscale and kept.
A job is cancelled promptly (after the chunk in flight) by ``cancel``, by closing the input
stream, or by SIGTERM.

What a client can make the worker hold is bounded: a header line (``protocol``), payloads
of queued and running jobs (``MAX_QUEUED_BYTES`` beyond the first), queued messages
(``MAX_QUEUED_MESSAGES``). The reader never dies silently: anything it did not expect ends
the worker with an ``internal`` error instead of leaving it waiting forever.
"""

from __future__ import annotations

import math
import queue
import signal
import threading
import time

from liif_jax.bridge import protocol
from liif_jax.bridge.protocol import ProtocolError
from liif_jax.errors import Cancelled, LiifError, one_line

PROGRESS_INTERVAL_S = 0.1
# Payload bytes held for jobs queued or running, beyond the first such job (which may be as
# large as protocol.MAX_INPUT_PIXELS allows): a request over it is answered "busy".
MAX_QUEUED_BYTES = 1 << 30
# Messages (jobs, answers) waiting for the main thread: a client this far ahead is not
# reading its answers; it gets a last "busy" and the worker stops reading.
MAX_QUEUED_MESSAGES = 256
# Payloads are read in pieces of this size: memory follows the bytes that arrive, not the
# size a header announces (one buffered read of N bytes would allocate all N up front).
READ_CHUNK = 1 << 20


def _error_code(exc: Exception) -> str:
    """The protocol's code for an error: its class says (``bridge_code``, liif_jax.errors)."""
    return exc.bridge_code if isinstance(exc, LiifError) else "internal"


def _one_line(text) -> str:
    return one_line(text)[:500]  # a message line on the wire stays short


class SharedModel:
    """The model, loaded on first use and then kept; shared by every worker of a server."""

    def __init__(self, weights=None):
        self.weights = weights
        self._model = None
        self._lock = threading.Lock()

    def get(self):
        from liif_jax.weights import load_model

        with self._lock:
            if self._model is None:
                self._model = load_model(self.weights)
            return self._model

    @property
    def name(self) -> str:
        return self._model.name if self._model is not None else "not loaded yet"


class Worker:
    def __init__(self, instream, outstream, model: SharedModel):
        self.instream, self.outstream, self.model = instream, outstream, model
        self.jobs: queue.Queue = queue.Queue()
        self.queued_bytes = 0  # payload bytes of jobs queued or running (under self.lock)
        self.reader = None  # the reader thread, once serving
        self.received = 0  # upscale requests read so far
        self.cancel_before = 0  # jobs numbered below this are cancelled
        self.terminated = False  # set by SIGTERM
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ input side
    def _discard(self, n: int) -> bool:
        while n > 0:
            chunk = self.instream.read(min(n, READ_CHUNK))
            if not chunk:
                return False
            n -= len(chunk)
        return True

    def _read_payload(self, n: int) -> bytearray:
        """Up to ``n`` bytes (fewer only at the end of the stream)."""
        data = bytearray()
        while len(data) < n:
            chunk = self.instream.read(min(n - len(data), READ_CHUNK))
            if not chunk:
                break
            data += chunk
        return data

    def _queue(self, kind, item) -> bool:
        """Hand ``item`` to the main thread; False when too many wait (a last error is queued
        instead and the reader must stop)."""
        if self.jobs.qsize() >= MAX_QUEUED_MESSAGES:
            self.jobs.put(("error", ProtocolError(
                "busy", f"more than {MAX_QUEUED_MESSAGES} messages waiting for answers the client "
                "does not read; closing", fatal=True)))
            return False
        self.jobs.put((kind, item))
        return True

    def _read_loop(self):
        try:
            if self._read_requests() == "quit":
                return
        except Exception as exc:  # noqa: BLE001 -- a reader that died would hang the worker
            self.jobs.put(("error", ProtocolError(
                "internal", f"reading requests failed: {type(exc).__name__}: {exc}", fatal=True)))
        self.stop()  # end of input: cancel whatever runs, then exit
        self.jobs.put(("eof", None))

    def _read_requests(self):
        while True:
            try:
                message = protocol.read_message(self.instream)
                if message is None:
                    return
                request = protocol.parse_request(message)
            except ProtocolError as exc:
                # Answer first, then skip the payload: a client told "too_large" at once can
                # stop sending instead of streaming gigabytes to be dropped.
                if not self._queue("error", exc):
                    return
                if exc.skip and not self._discard(exc.skip):
                    self.jobs.put(("error", ProtocolError("short_payload", "stream ended inside a payload",
                                                          request_id=exc.request_id)))
                    return
                continue
            except (OSError, ValueError):  # the stream was closed under the reader
                return
            if request["op"] == "cancel":
                with self.lock:
                    self.cancel_before = self.received
                continue
            if request["op"] != "upscale":
                if not self._queue(request["op"], request) or request["op"] == "quit":
                    return request["op"]
                continue
            size = request["bytes"]
            with self.lock:
                admit = self.queued_bytes == 0 or self.queued_bytes + size <= MAX_QUEUED_BYTES
                if admit:
                    self.queued_bytes += size
            if not admit:
                # Pipelined past the bound: say so, and drop this payload (streamed, never held).
                if not self._queue("error", ProtocolError(
                        "busy", f"{size:,} more payload bytes would be over the {MAX_QUEUED_BYTES:,} held "
                        "for the requests before it; send it again when they are answered",
                        request_id=request["id"])):
                    return
                if not self._discard(size):
                    self.jobs.put(("error", ProtocolError("short_payload", "stream ended inside a payload",
                                                          request_id=request["id"])))
                    return
                continue
            data = self._read_payload(size)
            if len(data) != size:
                self.jobs.put(("error", ProtocolError(
                    "short_payload", f"payload ended after {len(data)} of {size} bytes",
                    request_id=request["id"])))
                return
            with self.lock:
                number = self.received
                self.received += 1
            if not self._queue("upscale", (number, request, data)):
                return

    def stop(self):
        with self.lock:
            self.cancel_before = math.inf

    def terminate(self):
        """For a signal handler: plain assignments only. A handler runs on the main thread,
        which may be inside ``Queue.get`` holding the queue's lock; taking any lock here
        would deadlock the worker on itself."""
        self.cancel_before = math.inf
        self.terminated = True

    # ------------------------------------------------------------------ output side
    def _send(self, message: dict, payload: bytes = b""):
        self.outstream.write(protocol.encode(message) + payload)
        self.outstream.flush()

    def _run(self, number, request, data):
        from liif_jax.api import DEFAULT_MAX_PIXELS, upscale

        rid = request.get("id")
        last = [0.0]

        def progress(done, total):
            if self.cancel_before > number:
                return False
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL_S or done == total:
                last[0] = now
                self._send({"event": "progress", "id": rid, "done": done, "total": total})
            return True

        if self.cancel_before > number:
            raise _cancelled()
        model = self.model.get()
        pixels = protocol.payload_to_pixels(data, request)
        scale = request.get("scale")
        start = time.perf_counter()
        out = upscale(pixels, scale=tuple(scale) if isinstance(scale, list) else scale,
                      size=tuple(request["size"]) if "size" in request else None, model=model,
                      region=request.get("region"), tile=request.get("tile"),
                      max_memory=request.get("max_memory"), precision=request.get("precision"),
                      max_pixels=request.get("max_pixels", DEFAULT_MAX_PIXELS), progress=progress)
        compute = time.perf_counter() - start
        payload = protocol.pixels_to_payload(out, request["format"])
        self._send({"event": "result", "id": rid, "width": int(out.shape[1]), "height": int(out.shape[0]),
                    "channels": request["channels"], "format": request["format"], "bytes": len(payload),
                    "compute_s": round(compute, 4)}, payload)

    def serve(self) -> int:
        reader = threading.Thread(target=self._read_loop, name="liif-bridge-reader", daemon=True)
        reader.start()
        self.reader = reader  # (only once started: another thread may join it)
        while True:
            try:
                kind, item = self.jobs.get(timeout=0.2)
            except queue.Empty:
                if self.terminated:
                    return 0
                continue
            if kind in ("eof", "quit"):
                return 0
            if kind == "error":
                self._send({"event": "error", "id": item.request_id, "code": item.code,
                            "message": _one_line(item)})
                if item.fatal:
                    return 1
                continue
            if kind == "ping":
                from liif_jax import __version__

                self._send({"event": "pong", "id": item.get("id"), "version": __version__,
                            "protocol": protocol.PROTOCOL, "model": self.model.name})
                continue
            number, request, data = item
            item = None
            try:
                self._run(number, request, data)
            except (LiifError, ValueError, TypeError, MemoryError) as exc:
                code = _error_code(exc) if not isinstance(exc, MemoryError) else "request"
                message = "out of memory" if isinstance(exc, MemoryError) else _one_line(exc)
                self._send({"event": "error", "id": request.get("id"), "code": code, "message": message})
            except Exception as exc:  # the worker must survive anything one request does
                self._send({"event": "error", "id": request.get("id"), "code": "internal",
                            "message": _one_line(f"{type(exc).__name__}: {exc}")})
            finally:
                with self.lock:
                    self.queued_bytes -= len(data)
                data = None  # the payload's memory goes back before the next job waits


def _cancelled():
    return Cancelled("cancelled")


def serve_stdio(weights=None) -> int:
    """Run a worker on this process's stdin/stdout. Anything else that writes to stdout (a
    library's print, a C-level message) is redirected to stderr, so the protocol stream
    cannot be corrupted."""
    import os
    import sys

    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    worker = Worker(sys.stdin.buffer, out, SharedModel(weights))
    signal.signal(signal.SIGTERM, lambda *_: worker.terminate())
    try:
        code = worker.serve()
    except (BrokenPipeError, KeyboardInterrupt):
        code = 1
    # Leave without interpreter shutdown: the reader thread may still sit in a buffered read
    # of stdin, and finalising that buffer under it makes CPython abort.
    for stream in (out, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
