"""``liif-jax serve``: a warm worker behind a local socket only this user can reach.

The model is loaded (and its programs compiled, see ``warm_up``) once; every connection
speaks the same protocol as ``liif-jax bridge`` (``protocol``) on a stream socket, served by
its own thread, so a second upscale in the same GIMP session pays no JAX import, weight load
or compilation. The socket is a Unix socket, mode 0600, in a 0700 folder of the user's runtime
dir; never TCP. The server exits after ``idle_timeout`` seconds without a connection.
Windows (named pipes) is not implemented yet: there the plug-in uses the subprocess bridge.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

from liif_jax.bridge.worker import SharedModel, Worker
from liif_jax.errors import LiifError, RequestError

DEFAULT_IDLE_TIMEOUT_S = 15 * 60


def socket_path() -> Path:
    """``$LIIF_JAX_SOCKET``, else ``$XDG_RUNTIME_DIR/liif-jax/worker.sock``, else
    ``/tmp/liif-jax-<uid>/worker.sock``."""
    explicit = os.environ.get("LIIF_JAX_SOCKET")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(runtime) / "liif-jax" if runtime else Path(f"/tmp/liif-jax-{os.getuid()}")
    return folder / "worker.sock"


def _private_folder(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = folder.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise RequestError(f"socket folder {folder} must belong to you with mode 0700")


def is_running(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def warm_up(model) -> None:
    """Compile the decoder (and a small encoder shape) now, not in the user's first call."""
    import numpy as np

    from liif_jax.api import upscale

    upscale(np.zeros((16, 16, 3), np.float32), scale=2, model=model)


def serve(weights=None, idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S, path: Path | None = None,
          log=sys.stderr) -> int:
    if not hasattr(socket, "AF_UNIX"):
        raise RequestError("liif-jax serve needs Unix sockets; on this system use 'liif-jax bridge'")
    path = Path(path or socket_path())
    _private_folder(path.parent)
    if path.exists():
        if is_running(path):
            print(f"liif-jax serve: already running at {path}", file=log)
            return 0
        path.unlink()  # left behind by a server that died
    model = SharedModel(weights)
    try:
        warm_up(model.get())
    except LiifError as exc:
        print(f"liif-jax serve: error: {exc}", file=log)
        return 1
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file is created 0600: no window where others can connect
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    listener.listen(8)
    listener.settimeout(1.0)
    active = [0]
    last_seen = [time.monotonic()]
    lock = threading.Lock()

    def handle(conn):
        try:
            with conn, conn.makefile("rb") as rfile, conn.makefile("wb") as wfile:
                Worker(rfile, wfile, model).serve()
        except OSError:
            pass
        finally:
            with lock:
                active[0] -= 1
                last_seen[0] = time.monotonic()

    print(f"liif-jax serve: listening at {path} (idle timeout {idle_timeout:g} s)", file=log, flush=True)
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                with lock:
                    idle = active[0] == 0 and time.monotonic() - last_seen[0] > idle_timeout
                if idle:
                    print("liif-jax serve: idle, exiting", file=log, flush=True)
                    return 0
                continue
            with lock:
                active[0] += 1
                last_seen[0] = time.monotonic()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()
    except KeyboardInterrupt:
        return 0
    finally:
        listener.close()
        try:
            path.unlink()
        except OSError:
            pass
