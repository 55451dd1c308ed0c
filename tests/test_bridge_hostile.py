"""Hostile input to the bridge worker and the warm server, in-process (no JAX import per
case): nested JSON, wrong types, a refused request's payload, pipelined floods, two servers
starting at once, an endpoint replaced under a server, SIGTERM."""

import io
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY
from liif_jax.bridge import protocol, server, transport, worker
from test_bridge_transport import ServerEnv, within

sys.path.insert(0, str(REPO / "gimp_plugin"))
import liif_bridge_client as client_mod  # noqa: E402

TINY_PTH = str(TINY / "tiny-liif.pth")
LIIF_JAX = os.path.join(os.path.dirname(sys.executable), "liif-jax")
HANG = 60  # seconds: only a guard against a hang, never a speed claim


class StubModel:
    """What ``Worker`` needs of ``SharedModel``; ``model`` for the tests that really upscale."""

    def __init__(self, model=None):
        self.model = model
        self.name = "stub"

    def get(self):
        return self.model


class EventSink:
    """The worker's output stream: events are parsed as they arrive; ``next`` waits for one."""

    def __init__(self):
        self.data = bytearray()
        self.cond = threading.Condition()

    def write(self, data):
        with self.cond:
            self.data += data
            self.cond.notify_all()
        return len(data)

    def flush(self):
        pass

    def _parse(self):
        end = self.data.find(b"\n")
        if end < 0:
            return None
        event = json.loads(self.data[:end])
        size = event.get("bytes", 0)
        if len(self.data) < end + 1 + size:
            return None
        event["payload"] = bytes(self.data[end + 1:end + 1 + size])
        del self.data[:end + 1 + size]
        return event

    def next(self, timeout=HANG):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                event = self._parse()
                if event is not None:
                    return event
                remaining = deadline - time.monotonic()
                assert remaining > 0, "no event within %s s" % timeout
                self.cond.wait(remaining)

    def final(self):
        """Skip progress events."""
        while True:
            event = self.next()
            if event["event"] != "progress":
                return event


class InProcessWorker:
    """A ``Worker`` on a real pipe (the test holds the write end, so end of input is the
    test's decision), run on a thread; ``code`` is what ``serve`` returned."""

    def __init__(self, model=None, worker_cls=worker.Worker):
        rfd, wfd = os.pipe()
        self.rfile = os.fdopen(rfd, "rb")
        self.wfile = os.fdopen(wfd, "wb")
        self.out = EventSink()
        self.worker = worker_cls(self.rfile, self.out, StubModel(model))
        self.code = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.code = self.worker.serve()

    def send(self, data: bytes):
        self.wfile.write(data)
        self.wfile.flush()

    def close_input(self):
        if not self.wfile.closed:
            self.wfile.close()

    def join(self, timeout=HANG):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the worker did not exit within %s s" % timeout
        return self.code

    def cleanup(self):
        self.close_input()
        self.worker.terminate()
        self.thread.join(HANG)
        self.rfile.close()


@pytest.fixture
def inproc():
    made = []

    def make(**kwargs):
        w = InProcessWorker(**kwargs)
        made.append(w)
        return w

    yield make
    for w in made:
        w.cleanup()


def ping_ok(w, rid="p"):
    w.send(protocol.encode({"op": "ping", "id": rid}))
    pong = w.out.next()
    assert pong["event"] == "pong" and pong["id"] == rid, pong


def rgb_request(w=4, h=3, **options):
    payload = bytes(i % 256 for i in range(w * h * 3))
    return {"op": "upscale", "width": w, "height": h, "channels": "RGB", "format": "u8",
            "bytes": len(payload), **options}, payload


# ---------------------------------------------------------------------------- item 3: nesting
DEEP = b'{"x":' + b"[" * 30_000 + b"]" * 30_000 + b"}\n"


@pytest.mark.parametrize("raw", [
    DEEP,
    b'{"op":"ping","id":' + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}\n",  # (under 64 KiB)
    b"[" * 60_000 + b"\n",  # unbalanced: never closes
    b'{"liif":1,"x":"' + b"[" * 30_000 + b'"}\n',  # brackets inside a string are just text
])
def test_deeply_nested_header_is_an_error_and_the_worker_goes_on(inproc, raw):
    w = inproc()
    w.send(raw)
    event = w.out.next()
    if raw.startswith(b'{"liif":1,"x":"'):  # a valid (flat) header: refused as a request, not as JSON
        assert event["event"] == "error" and event["code"] == "bad_request", event
    else:
        assert event["event"] == "error" and event["code"] == "bad_header", event
        assert "nest" in event["message"] and "\n" not in event["message"]
    ping_ok(w)
    w.close_input()
    assert w.join() == 0


def test_reader_failure_of_any_kind_ends_the_worker_cleanly(inproc, monkeypatch):
    """Whatever the reader meets, it never dies silently: the worker answers and exits."""
    def boom(stream):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(protocol, "read_message", boom)
    w = inproc()
    event = w.out.next()
    assert event["event"] == "error" and event["code"] == "internal" and "unexpected" in event["message"]
    assert w.join() == 1


def test_deep_header_does_not_keep_the_server_from_idling_out(tmp_path, monkeypatch):
    """Under ``serve`` a dead reader kept its connection 'active' forever."""
    folder = short_folder()
    path = folder / "w.sock"
    monkeypatch.setattr(server, "warm_up", lambda model: None)
    monkeypatch.setattr(server, "SharedModel", lambda weights: StubModel())
    log = LogSink()
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault(
        "code", server.serve(idle_timeout=0.5, path=path, log=log, transport="unix")), daemon=True)
    thread.start()
    assert log.listening.wait(HANG)
    channel = client_mod._SocketChannel(str(path))
    channel.wfile.write(DEEP)
    channel.wfile.flush()
    event = json.loads(within(HANG, channel.rfile.readline))
    assert event["event"] == "error" and event["code"] == "bad_header"
    channel.close()
    thread.join(HANG)
    assert not thread.is_alive() and result["code"] == 0 and "idle, exiting" in log.text()


# ---------------------------------------------------------------------------- item 6: types
@pytest.mark.parametrize("options", [
    {"size": 5}, {"size": "ab"}, {"size": [10]}, {"size": [10, 2.5]}, {"size": [True, 3]},
    {"size": [10, None]}, {"size": [10 ** 30, 2]}, {"scale": "2"}, {"scale": True},
    {"scale": [2]}, {"scale": [2, "x"]}, {"scale": {}}, {"scale": None}, {"scale": 1e308},
    {"scale": 2, "tile": "x"}, {"scale": 2, "tile": 2.5}, {"scale": 2, "tile": [16]},
    {"scale": 2, "max_memory": "x"}, {"scale": 2, "max_memory": [1]}, {"scale": 2, "max_memory": 1e300},
    {"scale": 2, "max_pixels": "x"}, {"scale": 2, "max_pixels": -1}, {"scale": 2, "max_pixels": 2.5},
    {"scale": 2, "precision": 5}, {"scale": 2, "region": 5}, {"scale": 2, "region": [0, 0, "a", 1]},
    {"scale": 2, "region": [0, 0, 1, [1]]}, {"scale": 2, "id": {"nested": [1, 2]}},
    {"scale": 2, "id": "x" * 1000},
])
def test_wrong_types_are_request_errors_not_internal(inproc, options):
    w = inproc()
    header, payload = rgb_request(**{"id": 3, **options})
    w.send(protocol.encode(header) + payload)
    event = w.out.final()
    assert event["event"] == "error" and event["code"] == "bad_request", event
    assert "\n" not in event["message"] and len(event["message"]) <= 500
    ping_ok(w)  # and the stream is still in step


@pytest.mark.parametrize("raw", [
    b'{"liif": 1, "op": "ping", "x": NaN}\n', b'{"liif": 1, "op": "ping", "x": -Infinity}\n',
    b'{"liif": true, "op": "ping"}\n',
])
def test_non_json_constants_and_a_boolean_version_are_refused(inproc, raw):
    w = inproc()
    w.send(raw)
    assert w.out.next()["code"] in ("bad_header", "bad_version")
    ping_ok(w)


def test_valid_options_still_work(inproc, tiny_model):
    w = inproc(model=tiny_model)
    for options, size in [({"scale": [2, 1.5]}, (8, 5)), ({"size": [5, 7]}, (5, 7)),
                          ({"scale": 2, "region": [0, 0, 2, 1.5], "tile": 16, "max_memory": 10 ** 9,
                            "max_pixels": 0, "precision": "float32", "id": None}, (4, 3))]:
        header, payload = rgb_request(**options)
        w.send(protocol.encode(header) + payload)
        event = w.out.final()
        assert event["event"] == "result" and (event["width"], event["height"]) == size, (options, event)


# ---------------------------------------------------------------------------- item 6: too_large
def test_too_large_request_skips_its_declared_payload(inproc):
    """A refused oversized request's payload must not be read as headers."""
    w = inproc()
    width, height = 1 << 15, 1 << 14  # 2**29 pixels: over the limit
    declared = 3 * 1024 * 1024  # what this client says follows (it need not be w*h*c)
    header = {"op": "upscale", "id": "big", "width": width, "height": height, "channels": "RGB",
              "format": "u8", "bytes": declared, "scale": 2}
    # Newline-rich payload: read as headers, each line would be its own error.
    w.send(protocol.encode(header) + b"\n{}\n" * (declared // 4))
    event = w.out.next()
    assert event["event"] == "error" and event["code"] == "too_large" and event["id"] == "big"
    ping_ok(w)  # the very next event: nothing of the payload was parsed
    w.close_input()
    assert w.join() == 0
    assert w.out.data == b""


# ---------------------------------------------------------------------------- item 6: floods
class HeldWorker(worker.Worker):
    """Jobs wait for ``release`` (a job that runs long), and echo a 1x1 result."""

    release = None
    running = None

    def _run(self, number, request, data):
        self.running.set()
        assert self.release.wait(HANG)
        self._send({"event": "result", "id": request.get("id"), "width": 1, "height": 1,
                    "channels": request["channels"], "format": request["format"], "bytes": 3}, b"abc")


@pytest.fixture
def held(inproc):
    release = threading.Event()
    cls = type("Held", (HeldWorker,), {"release": release, "running": threading.Event()})
    w = inproc(worker_cls=cls)
    yield w, release
    release.set()


def test_pipelined_payloads_are_bounded_in_bytes(held, monkeypatch):
    """Requests pipelined behind a long job: their payloads are held only up to a limit; over
    it a request is refused (payload read and dropped) and the stream stays in step."""
    monkeypatch.setattr(worker, "MAX_QUEUED_BYTES", 4000)
    w, release = held
    header, payload = rgb_request(w=20, h=20, scale=2)  # 1200 bytes each
    for i in range(8):
        w.send(protocol.encode({**header, "id": i}) + payload)
    w.send(protocol.encode({"op": "ping", "id": "after"}))
    w.close_input()
    # The first job is still running: the reader has read everything (and ended) while only
    # the jobs it could hold wait, their bytes under the limit.
    assert w.worker.running.wait(HANG)  # (so serve() has started the reader)
    w.worker.reader.join(HANG)
    assert not w.worker.reader.is_alive()
    release.set()
    events = [w.out.final() for _ in range(9)]
    results = [e["id"] for e in events if e["event"] == "result"]
    busy = [e["id"] for e in events if e["event"] == "error"]
    assert results == [0, 1, 2] and busy == [3, 4, 5, 6, 7], events
    assert all(e["code"] == "busy" for e in events if e["event"] == "error")
    assert events[-1]["event"] == "pong"
    assert w.worker.queued_bytes == 0


def test_pipelined_flood_of_requests_is_bounded_in_count(held, monkeypatch):
    monkeypatch.setattr(worker, "MAX_QUEUED_MESSAGES", 10)
    w, release = held
    header, payload = rgb_request(scale=2)
    w.send(protocol.encode({**header, "id": "job"}) + payload)
    flood = b"not json\n" * 50
    w.send(flood)
    # The reader stops at the limit: the worker answers what it holds, says why it stops,
    # and exits (the rest of the flood is never read).
    release.set()
    events = []
    while True:
        events.append(w.out.final())
        if events[-1].get("code") == "busy":
            break
    assert len(events) <= 12 and "waiting" in events[-1]["message"]
    assert w.join() == 1


# ---------------------------------------------------------------------------- item 7: serve
class LogSink(io.StringIO):
    """The server's log, with an event for 'listening'."""

    def __init__(self):
        super().__init__()
        self.listening = threading.Event()
        self.lock = threading.Lock()

    def write(self, text):
        with self.lock:
            if "listening at" in text:
                self.listening.set()
            return super().write(text)

    def text(self):
        with self.lock:
            return self.getvalue()


def short_folder() -> Path:
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="lj-"))  # short: AF_UNIX paths max ~100 bytes
    folder = base / "run"
    folder.mkdir(mode=0o700)
    return folder


class GatedServers:
    """In-process ``serve`` calls whose warm-up waits for the test's go-ahead, so two starts
    can be interleaved exactly as in the race."""

    def __init__(self, monkeypatch, transport_name):
        self.transport = transport_name
        self.folder = short_folder()
        self.path = self.folder / "worker.sock"
        self.gates, self.entered, self.logs, self.stops, self.results, self.threads = {}, {}, {}, {}, {}, {}
        monkeypatch.setattr(server, "warm_up", self._warm_up)
        monkeypatch.setattr(server, "SharedModel", lambda weights: StubModel())

    def _warm_up(self, model):
        name = threading.current_thread().name
        self.entered[name].set()
        assert self.gates[name].wait(HANG)

    def start(self, name, idle_timeout=600.0):
        self.gates[name], self.entered[name] = threading.Event(), threading.Event()
        self.logs[name], self.stops[name] = LogSink(), threading.Event()

        def run():
            self.results[name] = server.serve(idle_timeout=idle_timeout, path=self.path, log=self.logs[name],
                                              transport=self.transport, stop=self.stops[name])

        self.threads[name] = threading.Thread(target=run, name=name, daemon=True)
        self.threads[name].start()
        assert self.entered[name].wait(HANG)  # past its first "already running?" check

    def finish(self, name):
        self.gates[name].set()
        self.stops[name].set()
        self.threads[name].join(HANG)
        assert not self.threads[name].is_alive(), self.logs[name].text()
        return self.results[name]

    def channel(self):
        if self.transport == "connection":
            return client_mod._ConnectionChannel(str(self.folder / transport.ENDPOINT_NAME))
        return client_mod._SocketChannel(str(self.path))

    def endpoint_file(self) -> Path:
        return self.folder / transport.ENDPOINT_NAME if self.transport == "connection" else self.path

    def cleanup(self):
        for name in self.threads:
            self.gates[name].set()
            self.stops[name].set()
        for thread in self.threads.values():
            thread.join(HANG)


@pytest.fixture(params=["unix", "connection"])
def gated(request, monkeypatch):
    g = GatedServers(monkeypatch, request.param)
    yield g
    g.cleanup()


def pong(channel):
    channel.wfile.write(protocol.encode({"op": "ping", "id": "p"}))
    channel.wfile.flush()
    return json.loads(within(HANG, channel.rfile.readline))


def test_two_starts_at_once_one_listens(gated):
    gated.start("A")
    gated.start("B")  # both saw no server
    gated.gates["A"].set()
    assert gated.logs["A"].listening.wait(HANG)
    identity = os.stat(gated.endpoint_file())
    gated.gates["B"].set()
    gated.threads["B"].join(HANG)
    assert not gated.threads["B"].is_alive(), "the second server is listening too"
    assert gated.results["B"] == 0 and "already running" in gated.logs["B"].text()
    assert not gated.logs["B"].listening.is_set()
    after = os.stat(gated.endpoint_file())
    assert (after.st_dev, after.st_ino) == (identity.st_dev, identity.st_ino)
    channel = gated.channel()
    assert pong(channel)["event"] == "pong"
    channel.close()
    assert gated.finish("A") == 0
    assert not gated.endpoint_file().exists()


def test_a_server_never_removes_an_endpoint_that_is_not_its_own(gated):
    gated.start("A")
    gated.gates["A"].set()
    assert gated.logs["A"].listening.wait(HANG)
    # Someone else's endpoint now sits where A's was (A's was removed under it).
    endpoint = gated.endpoint_file()
    endpoint.unlink()
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if gated.transport == "unix":
            other.bind(str(endpoint))
        else:
            endpoint.write_text(json.dumps({"family": "AF_UNIX", "address": str(gated.folder / "other.sock"),
                                            "authkey": "00" * 32, "pid": 1}))
        mine = os.stat(endpoint)
        assert gated.finish("A") == 0
        assert endpoint.exists(), "the server removed someone else's endpoint"
        assert os.stat(endpoint).st_ino == mine.st_ino
    finally:
        other.close()


def test_stale_endpoint_of_a_dead_server_is_replaced(gated):
    """A leftover socket file (no one answers) does not stop a new server."""
    endpoint = gated.endpoint_file()
    if gated.transport == "unix":
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(endpoint))
        dead.close()  # the file stays, nobody listens
    else:
        endpoint.write_text(json.dumps({"family": "AF_UNIX", "address": str(gated.folder / "gone.sock"),
                                        "authkey": "00" * 32, "pid": 1}))
    gated.start("A")
    gated.gates["A"].set()
    assert gated.logs["A"].listening.wait(HANG)
    channel = gated.channel()
    assert pong(channel)["event"] == "pong"
    channel.close()
    assert gated.finish("A") == 0


def test_something_else_at_the_socket_path_is_not_deleted(monkeypatch):
    g = GatedServers(monkeypatch, "unix")
    try:
        g.path.write_text("not a socket")
        g.start("A")
        g.gates["A"].set()
        g.threads["A"].join(HANG)
        assert g.results["A"] == 1 and "not a socket" in g.logs["A"].text()
        assert g.path.read_text() == "not a socket"
    finally:
        g.cleanup()


@pytest.mark.parametrize("transport_name", ["unix", "connection"])
def test_sigterm_removes_the_endpoint(transport_name):
    env = ServerEnv(transport_name)
    try:
        proc = env.start("--idle-timeout", "600")
        endpoint = env.endpoint if transport_name == "connection" else env.socket
        address = json.loads(env.endpoint.read_text())["address"] if transport_name == "connection" else None
        assert endpoint.exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=HANG) == 0
        assert not endpoint.exists()
        if address:
            assert not Path(address).exists()
        # The next start is not held up by anything the first left.
        second = env.start("--idle-timeout", "600")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=HANG) == 0
    finally:
        env.cleanup()
