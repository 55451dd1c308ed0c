"""Where ``liif-jax serve`` listens, and how a connection becomes a byte stream.

Two transports carry the same protocol (``protocol``), served by the same ``Worker``:

``unix`` (default on Linux and macOS)
    A Unix stream socket, mode 0600, in a 0700 folder of the user's runtime dir.
``connection`` (default on Windows)
    ``multiprocessing.connection``: a named pipe (family ``AF_PIPE``) on Windows,
    ``\\\\.\\pipe\\liif-jax-<user>-<random>``, with a random 32-byte auth key. Pipe name and
    key are written to ``endpoint.json`` in the same runtime folder (on Windows
    ``%LOCALAPPDATA%\\liif-jax``), a file only the user can read; a client that cannot
    answer the key's HMAC challenge is refused before it can send a request. Never TCP.
    The same code runs on Linux with family ``AF_UNIX`` (``LIIF_JAX_TRANSPORT=connection``),
    which is how the tests exercise it; the ``AF_PIPE`` family itself only runs on Windows.

Over a ``Connection`` the protocol's byte stream is cut into messages of at most
``CHUNK`` bytes (``send_bytes``); ``ConnectionReader`` joins them back, so the worker reads
headers and payloads exactly as from a pipe or socket.

``$LIIF_JAX_TRANSPORT`` (``unix`` or ``connection``) picks the transport; the plug-in's
client (``gimp_plugin/liif_bridge_client.py``) follows the same rules.

One endpoint, one server: a server holds the endpoint's lock file (``EndpointLock``, beside
the endpoint) from just before it listens until its endpoint is removed, re-checking under
the lock that no other server answers; it removes only the endpoint it made (the file's
device and inode, recorded when made, must still match).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import secrets
import socket
import stat
import time
from pathlib import Path

from liif_jax.errors import RequestError

TRANSPORTS = ("unix", "connection")
ENDPOINT_NAME = "endpoint.json"
CHUNK = 1 << 20  # bytes per Connection message we send
MAX_MESSAGE = 16 << 20  # a peer's message larger than this ends the connection


# ---------------------------------------------------------------------------- naming
def socket_path() -> Path:
    """``$LIIF_JAX_SOCKET``, else ``$XDG_RUNTIME_DIR/liif-jax/worker.sock``, else (Windows)
    ``%LOCALAPPDATA%/liif-jax/worker.sock``, else ``/tmp/liif-jax-<uid>/worker.sock``.
    Its folder is the runtime folder of both transports."""
    explicit = os.environ.get("LIIF_JAX_SOCKET")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "liif-jax" / "worker.sock"
    if os.name == "nt":
        local = os.environ.get("LOCALAPPDATA") or os.path.join(os.path.expanduser("~"), "AppData", "Local")
        return Path(local) / "liif-jax" / "worker.sock"
    return Path(f"/tmp/liif-jax-{os.getuid()}") / "worker.sock"


def endpoint_path(path: Path | None = None) -> Path:
    """The ``connection`` transport's endpoint file, beside the (unix) socket path."""
    return Path(path or socket_path()).parent / ENDPOINT_NAME


def transport_name() -> str:
    name = os.environ.get("LIIF_JAX_TRANSPORT") or ("connection" if os.name == "nt" else "unix")
    if name not in TRANSPORTS:
        raise RequestError(f"LIIF_JAX_TRANSPORT must be one of {', '.join(TRANSPORTS)}, not {name!r}")
    return name


def connection_family() -> str:
    return "AF_PIPE" if os.name == "nt" else "AF_UNIX"


def private_folder(folder: Path) -> None:
    """Create ``folder`` (0700); on POSIX refuse one that others could enter. On Windows the
    folder lives in the user's profile, whose ACL already admits only the user (and SYSTEM and
    administrators)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name == "nt":
        return
    st = folder.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise RequestError(f"socket folder {folder} must belong to you with mode 0700")


def read_endpoint(path: Path) -> dict | None:
    """``{"family", "address", "authkey" (bytes), "pid"}`` from an endpoint file, or None."""
    try:
        data = json.loads(Path(path).read_text())
        return {"family": str(data["family"]), "address": str(data["address"]),
                "authkey": bytes.fromhex(data["authkey"]), "pid": data.get("pid")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only (0600 from creation:
    there is no moment when the key is readable by others)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        for attempt in range(20):
            try:
                os.replace(tmp, path)
                break
            except PermissionError:  # Windows: a client is reading the old file this instant
                if os.name != "nt" or attempt == 19:
                    raise
                time.sleep(0.05)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def file_identity(path: Path):
    """(device, inode, change time) of ``path`` itself (a link is not followed), or None if
    absent. The change time tells a new file apart from ours when the system hands our freed
    inode number straight to it."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def remove_if_ours(path: Path, identity) -> None:
    """Delete ``path`` only if it is still the file we made: another server's endpoint that
    replaced ours is left alone. (Only servers holding the endpoint lock make endpoints, and we
    hold it, so nothing conforming replaces it between the check and the unlink.)"""
    if identity is not None and file_identity(path) == identity:
        try:
            os.unlink(path)
        except OSError:
            pass


# systemd's first passed descriptor (sd_listen_fds(3)).
SD_LISTEN_FDS_START = 3


def inherited_socket(env=None):
    """The listening socket systemd (or systemd-socket-activate) handed this process through
    LISTEN_FDS / LISTEN_PID (socket activation), or None. Exactly one Unix stream socket,
    which no other user may connect to, is accepted. The variables are removed either way, so
    our children never take the descriptor for theirs."""
    env = os.environ if env is None else env
    if "LISTEN_FDS" not in env:
        return None
    fds, pid = env.get("LISTEN_FDS"), env.get("LISTEN_PID")
    for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if pid != str(os.getpid()):
        return None  # meant for another process (the one that started us)
    if fds != "1":
        raise RequestError(f"socket activation passed {fds} sockets; liif-jax serve takes exactly one")
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise RequestError("socket activation passed a socket that is not a Unix stream socket")
    path = sock.getsockname()
    mode = os.stat(path).st_mode
    if not stat.S_ISSOCK(mode) or mode & 0o022:  # connecting takes write permission
        sock.detach()
        raise RequestError(f"the activated socket {path} lets other users connect (mode "
                           f"{stat.S_IMODE(mode):o}); give it SocketMode=0600")
    return sock


class EndpointLock:
    """An exclusive lock on ``path``, a file in the private folder, held by the server that
    owns an endpoint from just before it listens until the endpoint is removed, so two
    starts never both listen. ``flock`` (a whole-file lock per open file, which also excludes
    a second holder in the same process) on POSIX, ``msvcrt.locking`` on Windows; the system
    drops it when the holder dies, so a crash leaves no lock behind. The file itself is never
    deleted: deleting a lock file lets two holders lock two different files."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = None

    def acquire(self) -> bool:
        """Take the lock if it is free; False if another holder has it."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o600)
        try:
            if os.name == "nt":
                import msvcrt

                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.name == "nt":
                import msvcrt

                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
            else:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass
        finally:
            os.close(fd)


def connect(family: str, address: str, authkey: bytes, timeout: float):
    """``Client(address, family, authkey=...)``, except that a peer which does not start the
    handshake within ``timeout`` seconds (not a liif-jax server, or a wedged one) gives None
    instead of a hang; so do a refused connection and a wrong key."""
    from multiprocessing import AuthenticationError
    from multiprocessing import connection as mpc

    try:
        conn = mpc.Client(address, family)
    except (OSError, EOFError, ValueError):
        return None
    try:
        if conn.poll(timeout):
            mpc.answer_challenge(conn, authkey)  # the order Client(authkey=...) uses
            mpc.deliver_challenge(conn, authkey)
            return conn
    except (OSError, EOFError, AuthenticationError):
        pass
    conn.close()
    return None


# ---------------------------------------------------------------------------- streams
class ConnectionReader:
    """The messages arriving on a ``multiprocessing.connection.Connection``, read as one byte
    stream with the two calls the protocol needs: ``readline(limit)`` and ``read(n)`` (which,
    like a buffered file, returns fewer than ``n`` bytes only at the end of the stream)."""

    def __init__(self, conn, max_message: int = MAX_MESSAGE):
        self._conn, self._max = conn, max_message
        self._buf = bytearray()
        self._eof = False

    def _more(self) -> bool:
        if self._eof:
            return False
        try:
            self._buf += self._conn.recv_bytes(self._max)
        except (EOFError, OSError):  # closed, or a message over the limit
            self._eof = True
            return False
        return True

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def readline(self, limit: int = -1) -> bytes:
        searched = 0
        while True:
            end = self._buf.find(b"\n", searched)
            if end >= 0:
                n = end + 1
                break
            searched = len(self._buf)
            if 0 <= limit <= len(self._buf) or not self._more():
                n = len(self._buf)
                break
        return self._take(n if limit < 0 else min(n, limit))

    def read(self, n: int) -> bytes:
        while len(self._buf) < n and self._more():
            pass
        return self._take(min(n, len(self._buf)))


class ConnectionWriter:
    """``write`` sends at once, in messages of at most ``CHUNK`` bytes; ``flush`` is a no-op."""

    def __init__(self, conn, chunk: int = CHUNK):
        self._conn, self._chunk = conn, chunk

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), self._chunk):
            self._conn.send_bytes(view, start, min(self._chunk, len(view) - start))
        return len(view)

    def flush(self) -> None:
        pass


class Streams:
    """A connection's two directions, and how to close it."""

    def __init__(self, rfile, wfile, closers):
        self.rfile, self.wfile, self._closers = rfile, wfile, closers

    def close(self) -> None:
        for closer in self._closers:
            try:
                closer()
            except (OSError, ValueError):
                pass


# ---------------------------------------------------------------------------- transports
class UnixTransport:
    """A raw Unix stream socket, mode 0600, in a private folder."""

    name = "unix"

    def __init__(self, path: Path):
        if not hasattr(socket, "AF_UNIX"):
            raise RequestError("this system has no Unix sockets; use LIIF_JAX_TRANSPORT=connection")
        self.path = Path(path)
        self.folder = self.path.parent
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._sock = None
        self._identity = None  # of the socket file we bound

    def describe(self) -> str:
        return str(self.path)

    def running(self) -> bool:
        if not self.path.exists():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(2)
            try:
                probe.connect(str(self.path))
            except OSError:
                return False
        return True

    def listen(self) -> None:
        """Bind and listen. The caller holds the endpoint lock and found no server answering,
        so a socket file here was left by a server that died; anything else is refused."""
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None:
            if not stat.S_ISSOCK(mode):
                raise RequestError(f"{self.path} exists and is not a socket; not replacing it")
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # created 0600: no window where others can connect
        try:
            sock.bind(str(self.path))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._identity = file_identity(self.path)  # (after chmod, which changes the ctime)
        sock.listen(16)
        self._sock = sock

    def adopt(self, sock) -> None:
        """Serve on a listening socket handed over by socket activation. It is systemd's,
        which keeps listening after we exit: never unlinked here (no identity of ours), and
        ``accept`` wakes by itself every second instead of being knocked at."""
        sock.settimeout(1.0)
        self._sock = sock

    def accept(self):
        conn, _ = self._sock.accept()
        conn.settimeout(None)  # (an adopted listener has a timeout; its connections block)
        return conn

    def streams(self, conn) -> Streams:
        rfile, wfile = conn.makefile("rb"), conn.makefile("wb")
        return Streams(rfile, wfile, [wfile.close, rfile.close, conn.close])

    def discard(self, conn) -> None:
        conn.close()

    def wake(self) -> None:
        """Unblock a thread waiting in ``accept`` (not if the path is no longer our socket:
        that would knock at someone else's server)."""
        if self._identity is None or file_identity(self.path) != self._identity:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(self.path))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            remove_if_ours(self.path, self._identity)


class ConnectionTransport:
    """``multiprocessing.connection`` with an auth key: ``AF_PIPE`` on Windows, ``AF_UNIX``
    elsewhere (or as given). The key and address live in ``endpoint.json``."""

    name = "connection"

    def __init__(self, folder: Path, family: str | None = None):
        self.folder = Path(folder)
        self.family = family or connection_family()
        self.endpoint_file = self.folder / ENDPOINT_NAME
        self.lock_path = self.folder / (ENDPOINT_NAME + ".lock")
        self.address = None
        self._key = None
        self._listener = None
        self._identity = None  # of the endpoint file we wrote

    def describe(self) -> str:
        return f"{self.address} ({self.family}, key in {self.endpoint_file})"

    def running(self, timeout: float = 5.0) -> bool:
        """A server answers at the endpoint file's address and knows its key."""
        endpoint = read_endpoint(self.endpoint_file)
        if endpoint is None:
            return False
        conn = connect(endpoint["family"], endpoint["address"], endpoint["authkey"], timeout)
        if conn is None:
            return False
        conn.close()
        return True

    def listen(self) -> None:
        from multiprocessing.connection import Listener

        self._key = os.urandom(32)
        token = secrets.token_hex(8)
        if self.family == "AF_PIPE":
            user = re.sub(r"[^A-Za-z0-9_.-]", "_", getpass.getuser())[:40] or "user"
            self.address = rf"\\.\pipe\liif-jax-{user}-{token}"
        else:
            self.address = str(self.folder / f"worker-{token}.sock")
        # No authkey here: the handshake runs in each connection's own thread (``streams``),
        # so a peer that connects and never answers holds up nobody else.
        old_umask = os.umask(0o177) if os.name != "nt" else None
        try:
            self._listener = Listener(self.address, self.family, backlog=16)
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        write_private_file(self.endpoint_file, json.dumps(
            {"family": self.family, "address": self.address, "authkey": self._key.hex(),
             "pid": os.getpid()}) + "\n")
        self._identity = file_identity(self.endpoint_file)  # (after the rename, which changes the ctime)

    def accept(self):
        return self._listener.accept()

    def streams(self, conn) -> Streams:
        """Authenticate both ways (what ``Listener(authkey=...)`` does inside ``accept``), then
        the connection as a stream. Raises ``AuthenticationError`` for a wrong key."""
        from multiprocessing import connection as mpc

        mpc.deliver_challenge(conn, self._key)
        mpc.answer_challenge(conn, self._key)
        return Streams(ConnectionReader(conn), ConnectionWriter(conn), [conn.close])

    def discard(self, conn) -> None:
        conn.close()

    def wake(self) -> None:
        from multiprocessing.connection import Client

        Client(self.address, self.family).close()

    def close(self) -> None:
        if self._listener is None:
            return
        listener, self._listener = self._listener, None
        listener.close()  # (for AF_UNIX this also removes its socket file, a name only we use)
        endpoint = read_endpoint(self.endpoint_file)
        if endpoint is not None and endpoint["address"] == self.address:  # and the same file:
            remove_if_ours(self.endpoint_file, self._identity)


def make_transport(name: str | None = None, path: Path | None = None):
    """The transport named (default: ``transport_name()``); ``path`` is the unix socket path,
    whose folder also holds ``endpoint.json``."""
    name = name or transport_name()
    path = Path(path or socket_path())
    if name == "unix":
        return UnixTransport(path)
    if name == "connection":
        return ConnectionTransport(path.parent)
    raise RequestError(f"unknown transport {name!r} (expected one of {', '.join(TRANSPORTS)})")
