"""``liif-jax serve``: a warm worker behind a local endpoint only this user can reach.

The model is loaded (and its programs compiled, see ``warm_up``) once; every connection
speaks the same protocol as ``liif-jax bridge`` (``protocol``), served by its own ``Worker``
thread, so a second upscale in the same GIMP session pays no JAX import, weight load or
compilation. The endpoint (``transport``) is a Unix socket, mode 0600, in a 0700 folder of
the user's runtime dir on Linux/macOS, and a named pipe with a random auth key on Windows
(``multiprocessing.connection``); never TCP. The server exits after ``idle_timeout`` seconds
with no connection open.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from pathlib import Path

from liif_jax.bridge.transport import make_transport, private_folder, socket_path
from liif_jax.bridge.worker import SharedModel, Worker
from liif_jax.errors import LiifError

__all__ = ["DEFAULT_IDLE_TIMEOUT_S", "is_running", "serve", "socket_path", "warm_up"]

DEFAULT_IDLE_TIMEOUT_S = 15 * 60


def is_running(path: Path) -> bool:
    """A unix-transport server answers at ``path``."""
    return make_transport("unix", path).running()


def warm_up(model) -> None:
    """Compile the decoder (and a small encoder shape) now, not in the user's first call."""
    import numpy as np

    from liif_jax.api import upscale

    upscale(np.zeros((16, 16, 3), np.float32), scale=2, model=model)


def serve(weights=None, idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S, path: Path | None = None,
          log=sys.stderr, transport: str | None = None) -> int:
    """Serve until idle. ``transport``: "unix" or "connection" (default: ``$LIIF_JAX_TRANSPORT``,
    else "connection" on Windows and "unix" elsewhere); ``path``: the unix socket path, whose
    folder also holds the connection transport's ``endpoint.json``."""
    endpoint = make_transport(transport, path)
    private_folder(endpoint.folder)
    if endpoint.running():
        print(f"liif-jax serve: already running at {endpoint.describe()}", file=log)
        return 0
    model = SharedModel(weights)
    try:
        warm_up(model.get())
    except LiifError as exc:
        print(f"liif-jax serve: error: {exc}", file=log)
        return 1
    endpoint.listen()
    state = {"active": 0, "last_seen": time.monotonic()}
    lock = threading.Lock()
    accepted: queue.Queue = queue.Queue()
    stopping = threading.Event()

    def accept_loop():
        while not stopping.is_set():
            try:
                conn = endpoint.accept()
            except (OSError, EOFError):  # a client that gave up while connecting, or closed
                if stopping.is_set():
                    return
                time.sleep(0.05)
                continue
            if stopping.is_set():
                endpoint.discard(conn)
                return
            accepted.put(conn)

    def handle(conn):
        try:
            streams = endpoint.streams(conn)  # the connection transport checks the key here
        except Exception as exc:  # wrong key, or the peer left mid-handshake
            print(f"liif-jax serve: refused a connection: {type(exc).__name__}: {exc}", file=log, flush=True)
            endpoint.discard(conn)
            return
        with lock:
            state["active"] += 1
            state["last_seen"] = time.monotonic()
        try:
            Worker(streams.rfile, streams.wfile, model).serve()
        except OSError:
            pass
        finally:
            streams.close()
            with lock:
                state["active"] -= 1
                state["last_seen"] = time.monotonic()

    acceptor = threading.Thread(target=accept_loop, name="liif-serve-accept", daemon=True)
    acceptor.start()
    print(f"liif-jax serve: listening at {endpoint.describe()} (idle timeout {idle_timeout:g} s)",
          file=log, flush=True)
    try:
        while True:
            try:
                conn = accepted.get(timeout=max(0.05, min(1.0, idle_timeout / 4)))
            except queue.Empty:
                with lock:
                    idle = state["active"] == 0 and time.monotonic() - state["last_seen"] > idle_timeout
                if idle:
                    print("liif-jax serve: idle, exiting", file=log, flush=True)
                    return 0
                continue
            with lock:
                state["last_seen"] = time.monotonic()
            threading.Thread(target=handle, args=(conn,), name="liif-serve-conn", daemon=True).start()
    except KeyboardInterrupt:
        return 0
    finally:
        stopping.set()
        try:
            endpoint.wake()
        except Exception:  # noqa: BLE001 -- best effort; the acceptor is a daemon thread
            pass
        acceptor.join(2)
        endpoint.close()
