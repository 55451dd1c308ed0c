"""The warm server's transports: the ``connection`` transport (multiprocessing.connection with
an auth key -- a named pipe on Windows) exercised on Linux with family AF_UNIX, which runs the
very code Windows runs except the pipe itself; the stream adapter; the idle timeout of both
transports; clients under other Python versions (2.7: GIMP 2.10's Python-Fu)."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import AuthenticationError, Pipe
from multiprocessing.connection import Client
from pathlib import Path

import numpy as np
import pytest

import liif_jax
from conftest import REPO, TINY
from liif_jax.bridge import protocol, transport
from liif_jax.errors import RequestError

sys.path.insert(0, str(REPO / "gimp_plugin"))
import liif_bridge_client as client_mod  # noqa: E402

TINY_PTH = str(TINY / "tiny-liif.pth")
LIIF_JAX = os.path.join(os.path.dirname(sys.executable), "liif-jax")


class ServerEnv:
    """A private runtime folder for servers of one test; stops exactly the servers that were
    started for it (found by their LIIF_JAX_SOCKET), never anyone else's."""

    def __init__(self, transport_name):
        self.transport = transport_name
        self.base = Path(tempfile.mkdtemp(prefix="lj-"))  # short: AF_UNIX paths max ~100 bytes
        self.folder = self.base / "run"
        self.socket = self.folder / "worker.sock"
        self.endpoint = self.folder / "endpoint.json"
        self.log = self.folder / "server.log"

    def env(self, **extra):
        return dict(os.environ, LIIF_JAX_SOCKET=str(self.socket), LIIF_JAX_TRANSPORT=self.transport, **extra)

    def server_pids(self):
        marker = ("LIIF_JAX_SOCKET=%s" % self.socket).encode()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path("/proc", entry, "cmdline").read_bytes().split(b"\0")
                environ = Path("/proc", entry, "environ").read_bytes().split(b"\0")
                state = Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if b"serve" in cmdline and marker in environ and state != "Z":
                pids.append(int(entry))
        return pids

    def start(self, *args, weights=TINY_PTH):
        """``liif-jax serve`` on this folder; returns the Popen once it answers."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        cmd = [LIIF_JAX, "serve"] + (["--weights", weights] if weights else []) + list(args)
        log = open(self.log, "ab")
        proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=log)
        log.close()
        probe = transport.make_transport(self.transport, self.socket)
        deadline = time.monotonic() + 60
        while not probe.running():
            assert proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.1)
        return proc

    def channel(self):
        """A client channel (the plug-in client's own classes) to the server here."""
        if self.transport == "connection":
            return client_mod._ConnectionChannel(str(self.endpoint))
        return client_mod._SocketChannel(str(self.socket))

    def cleanup(self):
        pids = self.server_pids()
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if p in self.server_pids()]
            time.sleep(0.05)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def conn_env():
    env = ServerEnv("connection")
    yield env
    env.cleanup()


def within(seconds, call):
    """``call()``'s result (or exception), failing the test instead of hanging past ``seconds``."""
    box = {}

    def run():
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "no answer within %s s" % seconds
    if "error" in box:
        raise box["error"]
    return box["value"]


def ping(channel):
    channel.wfile.write(protocol.encode({"op": "ping", "id": "p"}))
    channel.wfile.flush()
    return json.loads(channel.rfile.readline())


# ---------------------------------------------------------------------------- stream adapter
def test_connection_reader_reassembles_a_stream_cut_anywhere():
    a, b = Pipe()
    header = protocol.encode({"op": "upscale", "id": 7, "bytes": 10})
    stream = header + bytes(range(10)) + protocol.encode({"op": "ping"}) + b"tail-without-newline"
    cuts = [0, 3, len(header) - 1, len(header) + 4, len(header) + 4, len(stream) - 5, len(stream)]
    for start, end in zip(cuts, cuts[1:]):
        a.send_bytes(stream[start:end])  # includes an empty message
    a.close()
    reader = transport.ConnectionReader(b)
    assert protocol.read_message(reader) == {"liif": 1, "op": "upscale", "id": 7, "bytes": 10}
    assert reader.read(10) == bytes(range(10))
    assert protocol.read_message(reader) == {"liif": 1, "op": "ping"}
    assert reader.readline(4) == b"tail"  # a limit is honoured without a newline
    assert reader.readline() == b"-without-newline"  # end of stream
    assert reader.read(5) == b"" and reader.readline() == b""


def test_connection_writer_chunks_and_oversized_messages_end_the_stream():
    a, b = Pipe()
    writer = transport.ConnectionWriter(a, chunk=1000)
    data = bytes(range(256)) * 10
    writer.write(data)
    messages = [b.recv_bytes() for _ in range(3)]
    assert [len(m) for m in messages] == [1000, 1000, 560] and b"".join(messages) == data
    # A peer's message over the limit: the stream ends (no half-read state, no huge buffer).
    a.send_bytes(b"x" * 2000)
    reader = transport.ConnectionReader(b, max_message=1000)
    assert reader.read(10) == b""


def test_unknown_transport_is_refused(monkeypatch):
    monkeypatch.setenv("LIIF_JAX_TRANSPORT", "tcp")
    with pytest.raises(RequestError, match="unix, connection"):
        transport.make_transport()


# ---------------------------------------------------------------------------- authentication
def test_wrong_key_is_refused_and_the_server_stays_healthy(conn_env, tiny_model):
    conn_env.start()
    endpoint = json.loads(conn_env.endpoint.read_text())
    assert stat.S_IMODE(os.stat(conn_env.endpoint).st_mode) == 0o600
    address, family = endpoint["address"], endpoint["family"]
    key = bytes.fromhex(endpoint["authkey"])
    # 1. A wrong key: the handshake fails on both sides.
    with pytest.raises(AuthenticationError):
        within(30, lambda: Client(address, family, authkey=os.urandom(32)))
    # 2. No key at all, speaking the protocol straight away: the server only ever sends its
    #    challenge, then the failure notice, then closes -- never a protocol answer.
    raw = Client(address, family)
    assert within(30, raw.recv_bytes).startswith(b"#CHALLENGE#")
    raw.send_bytes(protocol.encode({"op": "ping"}))
    assert raw.recv_bytes() == b"#FAILURE#"
    with pytest.raises((EOFError, OSError)):
        raw.recv_bytes()
    # 3. A peer that connects and never answers holds up nobody: with it still connected, a
    #    good client pings and upscales.
    stalled = Client(address, family)
    try:
        good = conn_env.channel()
        pong = ping(good)
        assert pong["event"] == "pong" and pong["model"] == "tiny-liif.pth"
        pixels = np.random.default_rng(1).integers(0, 256, (10, 12, 3), dtype=np.uint8)
        good.wfile.write(protocol.encode({"op": "upscale", "id": 1, "width": 12, "height": 10, "channels": "RGB",
                                          "format": "u8", "bytes": pixels.nbytes, "scale": 2}) + pixels.tobytes())
        while True:
            event = json.loads(good.rfile.readline())
            if event["event"] != "progress":
                break
        assert event["event"] == "result" and (event["width"], event["height"]) == (24, 20)
        got = np.frombuffer(good.rfile.read(event["bytes"]), np.uint8).reshape(20, 24, 3)
        expected = liif_jax.upscale(pixels, scale=2, model=tiny_model, dtype=np.uint8)
        assert np.abs(got.astype(int) - expected).max() <= 1
        good.close()
    finally:
        stalled.close()
    # The right key still works afterwards, and the refusals were logged.
    Client(address, family, authkey=key).close()
    log = conn_env.log.read_text()
    assert log.count("refused a connection: AuthenticationError") >= 2


def test_client_with_a_stale_endpoint_file_falls_back(conn_env, monkeypatch):
    """An endpoint file left by a server that died (or one with a wrong key) must not break
    the plug-in: it falls back to a one-off worker."""
    monkeypatch.setenv("LIIF_JAX_SOCKET", str(conn_env.socket))
    monkeypatch.setenv("LIIF_JAX_TRANSPORT", "connection")
    conn_env.folder.mkdir(mode=0o700)
    conn_env.endpoint.write_text(json.dumps({"family": "AF_UNIX", "address": str(conn_env.folder / "gone.sock"),
                                             "authkey": os.urandom(32).hex()}))
    with pytest.raises(OSError):
        client_mod._ConnectionChannel(str(conn_env.endpoint))
    client = client_mod.BridgeClient(sys.executable)
    client._spawn_server = lambda status: None  # no server may come: the fallback must
    w, h, _, _, kind = client.upscale(12, 10, "RGB", "u8", bytes(360), scale=2.0)
    assert kind == "subprocess" and (w, h) == (24, 20)


# ---------------------------------------------------------------------------- idle timeout
@pytest.mark.parametrize("transport_name", ["unix", "connection"])
def test_idle_timeout_counts_from_the_last_connection(transport_name):
    env = ServerEnv(transport_name)
    try:
        proc = env.start("--idle-timeout", "1.5")
        if transport_name == "connection":
            address = Path(json.loads(env.endpoint.read_text())["address"])
        else:
            address = env.socket
        # An open connection keeps it alive well past the timeout ...
        channel = env.channel()
        time.sleep(4)
        assert proc.poll() is None
        assert ping(channel)["event"] == "pong"
        # ... and once the last one closes, it exits on its own, cleaning up after itself: not
        # at once (the 1.5 s count only starts now; load can only make it later), and the exit
        # is the idle one. The wait's bound only guards against a hang.
        closed = time.monotonic()
        channel.close()
        assert proc.wait(timeout=120) == 0
        assert time.monotonic() - closed >= 1.5
        assert env.log.read_text().count("idle, exiting") == 1
        assert not address.exists() and not env.endpoint.exists()
    finally:
        env.cleanup()


def test_a_second_server_finds_the_first_and_a_restart_gets_a_fresh_key(conn_env):
    first = conn_env.start("--idle-timeout", "60")
    key = json.loads(conn_env.endpoint.read_text())["authkey"]
    second = subprocess.run([LIIF_JAX, "serve", "--weights", TINY_PTH], env=conn_env.env(),
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 0 and "already running" in second.stderr
    assert json.loads(conn_env.endpoint.read_text())["authkey"] == key  # untouched
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=30)
    third = conn_env.start("--idle-timeout", "60")
    assert third.pid != first.pid
    assert json.loads(conn_env.endpoint.read_text())["authkey"] != key


# ---------------------------------------------------------------------------- other Pythons
CLIENT_SCRIPT = r"""
import hashlib, sys
sys.path.insert(0, sys.argv[1])
import liif_bridge_client as c
pixels = bytes(bytearray((i * 7) % 256 for i in range(10 * 12 * 4)))
w, h, data, _, kind = c.BridgeClient(sys.executable).upscale(12, 10, "RGBA", "u8", pixels, scale=2.0)
print("%s %d %d %s %s" % (sys.version_info[0], w, h, kind, hashlib.sha256(data).hexdigest()))
"""


def _other_pythons():
    """python2.7 and python3.12+ (whose handshake digest changed), from $LIIF_TEST_PYTHONS
    (os.pathsep-separated), PATH or pyenv; one per version."""
    import glob

    candidates = [p for p in os.environ.get("LIIF_TEST_PYTHONS", "").split(os.pathsep) if p]
    for name in ("python2.7", "python3.13", "python3.12"):
        candidates += [shutil.which(name)] + sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/*/bin/" + name)))
    found, versions = [], set()
    for exe in filter(None, candidates):
        proc = subprocess.run([exe, "-c", "import sys, multiprocessing.connection; print(sys.version_info[:2])"],
                              capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout not in versions:
            versions.add(proc.stdout)
            found.append(exe)
    return found


@pytest.mark.parametrize("python", _other_pythons() or [pytest.param(None, marks=pytest.mark.skip(
    reason="no python2.7 / python3.12+ on PATH"))])
def test_clients_under_other_pythons_authenticate_and_get_the_same_pixels(conn_env, python):
    """The plug-in client runs in GIMP's Python (2.7 for GIMP 2.10; 3.x for GIMP 3), the server
    in liif-jax's: the key handshake must work across versions (3.12 changed its digest)."""
    conn_env.start("--idle-timeout", "120")
    script = conn_env.base / "client.py"
    script.write_text(CLIENT_SCRIPT)
    env = conn_env.env()
    ours = subprocess.run([sys.executable, str(script), str(REPO / "gimp_plugin")], env=env,
                          capture_output=True, text=True, timeout=120)
    theirs = subprocess.run([python, str(script), str(REPO / "gimp_plugin")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert ours.returncode == 0 and theirs.returncode == 0, ours.stderr + theirs.stderr
    _, *mine = ours.stdout.split()
    _, *other = theirs.stdout.split()
    assert mine[:3] == ["24", "20", "server"] and other == mine
    assert len(conn_env.server_pids()) == 1


def test_cancel_through_the_connection_transport(conn_env, monkeypatch):
    """The plug-in's cancel message reaches the worker through the connection transport."""
    monkeypatch.setenv("LIIF_JAX_SOCKET", str(conn_env.socket))
    monkeypatch.setenv("LIIF_JAX_TRANSPORT", "connection")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # a job that outlasts the cancel on any host
    server = conn_env.start("--idle-timeout", "120")
    client = client_mod.BridgeClient(sys.executable)
    seen = []
    # Cancelled is raised only on the worker's own "cancelled" answer: the job stopped there,
    # part-way (no progress report reached the end).
    with pytest.raises(client_mod.Cancelled):
        client.upscale(48, 48, "RGBA", "u8", bytes(48 * 48 * 4), scale=80.0, progress=seen.append,
                       cancelled=lambda: True)
    assert seen and max(seen) < 1.0
    assert client.last_channel == "server"
    # The same server serves the next request.
    assert client.upscale(12, 10, "RGB", "u8", bytes(360), scale=2.0)[4] == "server"
    assert conn_env.server_pids() == [server.pid]


def test_killed_client_stops_the_job_on_the_server(conn_env, monkeypatch):
    """What GIMP's Cancel does to a plug-in (it kills the process): the connection drops and
    the server stops the job at a chunk boundary instead of finishing a job nobody will read.
    The server runs on a thread of this test, so the job itself is watched (the library's
    upscale wrapped): how it ended and how far it got -- events, not CPU seconds."""
    import io

    import liif_jax.api
    from liif_jax.bridge.server import serve
    from liif_jax.engine import Cancelled

    real_upscale = liif_jax.api.upscale
    job = {"done": [], "outcome": None}
    ended, killed = threading.Event(), threading.Event()

    def watched(*args, progress=None, **kwargs):
        if progress is None:  # the server's warm-up
            return real_upscale(*args, **kwargs)

        def watch(done, total):
            job["done"].append((done, total))
            answer = progress(done, total)
            if len(job["done"]) == 1:
                # Hold the job after its first report until the client is dead, so it cannot
                # finish first on a fast device.
                killed.wait(120)
            return answer

        try:
            out = real_upscale(*args, progress=watch, **kwargs)
            job["outcome"] = "finished"
            return out
        except BaseException as exc:
            job["outcome"] = exc
            raise
        finally:
            ended.set()

    monkeypatch.setattr(liif_jax.api, "upscale", watched)
    stop, log, box = threading.Event(), io.StringIO(), {}
    server = threading.Thread(target=lambda: box.update(code=serve(
        TINY_PTH, idle_timeout=120, path=conn_env.socket, log=log, transport="connection", stop=stop)), daemon=True)
    server.start()
    probe = transport.make_transport("connection", conn_env.socket)
    deadline = time.monotonic() + 120  # (a guard against a hang only)
    while not probe.running():
        assert server.is_alive(), log.getvalue()
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.1)
    script = conn_env.base / "long.py"
    script.write_text(
        "import sys\nsys.path.insert(0, sys.argv[1])\nimport liif_bridge_client as c\n"
        "def progress(f):\n    print('progress', f, flush=True)\n"
        "c.BridgeClient(sys.executable).upscale(48, 48, 'RGB', 'u8', bytes(48 * 48 * 3), scale=80.0,\n"
        "                                       progress=progress)\n")
    client = subprocess.Popen([sys.executable, str(script), str(REPO / "gimp_plugin")], env=conn_env.env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().startswith("progress")  # the job runs
        client.kill()
        client.wait()
        killed.set()
        assert ended.wait(120), "the job neither stopped nor finished"  # (a guard against a hang only)
        # Stopped at a progress call (a chunk boundary), by the cancel the dropped connection
        # raised, or by the failed write of a progress event to it; never run to the end.
        assert isinstance(job["outcome"], (Cancelled, OSError)), job["outcome"]
        done, total = job["done"][-1]
        assert total == 3840 * 3840 and done < total
        channel = conn_env.channel()  # and the server goes on
        assert ping(channel)["event"] == "pong"
        channel.close()
    finally:
        if client.poll() is None:
            client.kill()
        killed.set()
        client.stdout.close()
        stop.set()
        server.join(60)
    assert not server.is_alive() and box["code"] == 0, log.getvalue()
