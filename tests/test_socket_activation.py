"""``liif-jax serve`` under socket activation (the Flatpak GIMP's worker, started on demand by
systemd): systemd-socket-activate stands in for systemd. It listens, starts serve on the first
connection with the socket as descriptor 3 (LISTEN_FDS/LISTEN_PID), and serve keeps its idle
exit without removing the socket, which is systemd's."""

import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import liif_jax
from conftest import REPO
from liif_jax.bridge import transport

sys.path.insert(0, str(REPO / "gimp_plugin"))
import liif_bridge_client as client_mod  # noqa: E402

ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.mark.skipif(ACTIVATE is None, reason="needs systemd-socket-activate (Debian: package systemd)")
def test_first_connection_starts_serve_later_ones_are_warm_idle_exit_keeps_the_socket(tmp_path, real_model):
    folder = tmp_path / "app" / "org.gimp.GIMP"
    folder.mkdir(parents=True)
    folder.chmod(0o700)
    sock = folder / "liif-jax.sock"
    log = open(tmp_path / "serve.log", "wb")
    activate = subprocess.Popen(
        ["sh", "-c", 'umask 077 && exec "$@"', "sh", ACTIVATE, "-l", str(sock),
         sys.executable, "-m", "liif_jax", "serve", "--socket", str(sock), "--idle-timeout", "3"],
        stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert time.monotonic() < deadline and activate.poll() is None
            time.sleep(0.05)
        # Nothing started yet: systemd-socket-activate waits for a connection.
        assert open(f"/proc/{activate.pid}/cmdline", "rb").read().split(b"\0")[0].endswith(b"systemd-socket-activate")
        client = client_mod.BridgeClient(None, socket=str(sock))
        pixels = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
        for _ in range(2):
            w, h, data, _, kind = client.upscale(12, 10, "RGB", "u8", pixels.tobytes(), scale=2.0)
            assert (w, h, kind) == (24, 20, "server")
        got = np.frombuffer(data, np.uint8).reshape(20, 24, 3)
        assert np.array_equal(got, liif_jax.upscale(pixels, scale=2.0, model=real_model, dtype=np.uint8))
        # Warm: both calls were served by the one serve the first connection started.
        assert (tmp_path / "serve.log").read_text().count("listening at") == 1
        # serve replaced systemd-socket-activate (same pid) and exits when idle, leaving the socket.
        assert b"python" in open(f"/proc/{activate.pid}/cmdline", "rb").read().split(b"\0")[0]
        assert activate.wait(timeout=60) == 0
        assert sock.exists()
        text = (tmp_path / "serve.log").read_text()
        assert f"listening at {sock}" in text and "idle, exiting" in text
    finally:
        if activate.poll() is None:
            activate.terminate()
            activate.wait(timeout=30)
        log.close()


def test_inherited_socket_rules(tmp_path):
    # Not for us (another pid): ignored, and the variables are gone for our children.
    env = {"LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "x"}
    assert transport.inherited_socket(env) is None and env == {}
    assert transport.inherited_socket({}) is None
    with pytest.raises(liif_jax.errors.RequestError, match="passed 2 sockets"):
        transport.inherited_socket({"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid())})
    # A socket others may connect to is refused (descriptor 3 made so here).
    path = tmp_path / "open.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o666)
    saved = os.dup(3) if _fd_open(3) else None
    os.dup2(listener.fileno(), 3)
    try:
        with pytest.raises(liif_jax.errors.RequestError, match="lets other users connect"):
            transport.inherited_socket({"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid())})
        os.chmod(path, 0o600)
        sock = transport.inherited_socket({"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid())})
        assert sock.getsockname() == str(path)
        sock.detach()
    finally:
        if saved is not None:
            os.dup2(saved, 3)
            os.close(saved)
        else:
            os.close(3)
        listener.close()


def _fd_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False
