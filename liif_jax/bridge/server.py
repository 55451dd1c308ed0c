"""``liif-jax serve``: a warm worker behind a local endpoint only this user can reach.

The model is loaded (and its programs compiled, see ``warm_up``) once; every connection
speaks the same protocol as ``liif-jax bridge`` (``protocol``), served by its own ``Worker``
thread, so a second upscale in the same GIMP session pays no JAX import, weight load or
compilation. The endpoint (``transport``) is a Unix socket, mode 0600, in a 0700 folder of
the user's runtime dir on Linux/macOS, and a named pipe with a random auth key on Windows
(``multiprocessing.connection``); never TCP. The server exits after ``idle_timeout`` seconds
with no connection open, or on SIGTERM, removing its endpoint either way.

Two servers started at once (two GIMP windows' first upscale) both warm up, but only one
listens: the endpoint's lock (``transport.EndpointLock``) is taken, and "is one running?"
asked again, right before listening; the other says "already running" and exits.
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
import time
from pathlib import Path

from liif_jax.bridge.transport import (EndpointLock, UnixTransport, inherited_socket, make_transport,
                                       private_folder, socket_path)
from liif_jax.bridge.worker import SharedModel, Worker
from liif_jax.errors import LiifError

__all__ = ["DEFAULT_IDLE_TIMEOUT_S", "is_running", "serve", "socket_path", "warm_up"]

DEFAULT_IDLE_TIMEOUT_S = 15 * 60
# How long a start waits for a server that holds the lock but does not answer yet (it is
# between taking the lock and listening, or between closing and letting go).
CLAIM_TIMEOUT_S = 30.0


def is_running(path: Path) -> bool:
    """A unix-transport server answers at ``path``."""
    return make_transport("unix", path).running()


def warm_up(model) -> None:
    """Compile the decoder (and a small encoder shape) now, not in the user's first call."""
    import numpy as np

    from liif_jax.api import upscale

    upscale(np.zeros((16, 16, 3), np.float32), scale=2, model=model)


def _claim(endpoint, lock: EndpointLock, log) -> int | None:
    """Take the endpoint's lock with no other server answering: None (go on and listen), or
    the exit code when this server must not listen."""
    deadline = time.monotonic() + CLAIM_TIMEOUT_S
    while True:
        if lock.acquire():
            if not endpoint.running():  # (one that takes no lock: an older liif-jax)
                return None
            lock.release()
        if endpoint.running():
            print(f"liif-jax serve: already running at {endpoint.describe()}", file=log, flush=True)
            return 0
        if time.monotonic() > deadline:
            print(f"liif-jax serve: error: another liif-jax serve holds {lock.path} but does not answer",
                  file=log, flush=True)
            return 1
        time.sleep(0.1)


def serve(weights=None, idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S, path: Path | None = None,
          log=sys.stderr, transport: str | None = None, stop: threading.Event | None = None) -> int:
    """Serve until idle, SIGTERM (when called on the main thread) or ``stop`` is set.
    ``transport``: "unix" or "connection" (default: ``$LIIF_JAX_TRANSPORT``, else "connection"
    on Windows and "unix" elsewhere); ``path``: the unix socket path, whose folder also holds
    the connection transport's ``endpoint.json``."""
    endpoint = make_transport(transport, path)
    # Socket activation (systemd, for the Flatpak GIMP): the listening socket is handed over;
    # nobody else can listen on it, so there is nothing to check, claim or remove.
    inherited = inherited_socket() if isinstance(endpoint, UnixTransport) else None
    if inherited is not None:
        endpoint = UnixTransport(Path(inherited.getsockname()))
    private_folder(endpoint.folder)
    if inherited is None and endpoint.running():
        print(f"liif-jax serve: already running at {endpoint.describe()}", file=log)
        return 0
    model = SharedModel(weights)
    try:
        warm_up(model.get())
    except LiifError as exc:
        print(f"liif-jax serve: error: {exc}", file=log)
        return 1
    # Warming up took seconds: another server may have started meanwhile. Ask again, under
    # the lock, which is held until the endpoint is gone.
    lock = EndpointLock(endpoint.lock_path)
    code = _claim(endpoint, lock, log) if inherited is None else None
    if code is not None:
        return code
    stop = stop if stop is not None else threading.Event()
    terminated = []  # SIGTERM: a plain append, no lock (see Worker.terminate)
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGTERM, lambda *_: terminated.append(True))
    try:
        try:
            endpoint.listen() if inherited is None else endpoint.adopt(inherited)
        except (OSError, LiifError) as exc:
            print(f"liif-jax serve: error: cannot listen at {endpoint.describe()}: {exc}", file=log, flush=True)
            endpoint.close()
            return 1
        return _serve_listening(endpoint, model, idle_timeout, log, stop, terminated)
    finally:
        lock.release()  # only now: our endpoint is gone (or, if replaced, not ours to remove)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _serve_listening(endpoint, model, idle_timeout, log, stop, terminated) -> int:
    state = {"active": 0, "last_seen": time.monotonic()}
    workers: set = set()  # those of open connections, to stop on exit
    handlers: list = []  # their threads
    state_lock = threading.Lock()
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
        worker = Worker(streams.rfile, streams.wfile, model)
        with state_lock:
            state["active"] += 1
            state["last_seen"] = time.monotonic()
            workers.add(worker)
        try:
            worker.serve()
        except OSError:
            pass
        finally:
            streams.close()
            with state_lock:
                state["active"] -= 1
                state["last_seen"] = time.monotonic()
                workers.discard(worker)

    acceptor = threading.Thread(target=accept_loop, name="liif-serve-accept", daemon=True)
    acceptor.start()
    print(f"liif-jax serve: listening at {endpoint.describe()} (idle timeout {idle_timeout:g} s)",
          file=log, flush=True)
    try:
        while True:
            if terminated or stop.is_set():
                print("liif-jax serve: stopping" + (" (SIGTERM)" if terminated else ""), file=log, flush=True)
                return 0
            try:
                conn = accepted.get(timeout=max(0.05, min(1.0, idle_timeout / 4)))
            except queue.Empty:
                with state_lock:
                    idle = state["active"] == 0 and time.monotonic() - state["last_seen"] > idle_timeout
                if idle:
                    print("liif-jax serve: idle, exiting", file=log, flush=True)
                    return 0
                continue
            with state_lock:
                state["last_seen"] = time.monotonic()
            thread = threading.Thread(target=handle, args=(conn,), name="liif-serve-conn", daemon=True)
            thread.start()
            handlers[:] = [t for t in handlers if t.is_alive()] + [thread]
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
        # Stop the jobs still running (after their chunk in flight) and let their threads end
        # before the interpreter is torn down under them.
        with state_lock:
            for worker in workers:
                worker.terminate()
        deadline = time.monotonic() + 10
        for thread in handlers:
            thread.join(max(0.0, deadline - time.monotonic()))
