# -*- coding: utf-8 -*-
"""Talk to liif-jax from a program that cannot import it (GIMP's Python 3, or GIMP 2.10's
Python 2.7). Standard library only, in the common subset of Python 2.7 and 3.

    client = BridgeClient.from_config(os.path.dirname(__file__))
    result = client.upscale(w, h, "RGBA", "u8", raw_bytes, scale=2.0,
                            progress=lambda fraction: ..., cancelled=lambda: False)
    # result.data: result.width x result.height pixels, RGBA u8 as sent; also result.compute_s
    # (the worker's seconds) and result.channel ("server" or "subprocess")

It first connects to a warm ``liif-jax serve``, starting one in the background if none
runs, and falls back to spawning ``liif-jax bridge`` with pipes. With ``"start_server":
false`` in the config it never uses a server, running or not: every call is a one-off
``liif-jax bridge``. All speak the same protocol (liif_jax/bridge/protocol.py): a JSON
header line, raw pixels, progress lines, a result header and raw pixels, or an error line.

The server is reached through one of two transports (the rules of
liif_jax/bridge/transport.py, kept in step by tests): ``unix``, a Unix socket only this user
can reach (default on Linux and macOS), or ``connection``, ``multiprocessing.connection``
with the auth key and address the server wrote to ``endpoint.json`` in the user's runtime
folder (default on Windows, where it is a named pipe). ``$LIIF_JAX_TRANSPORT`` picks one.

Where liif-jax lives: ``$LIIF_JAX_PYTHON`` (an interpreter with liif-jax installed), else the
``python`` entry of ``liif_jax_gimp.json`` beside the plug-in, written by
``liif-jax gimp install``.
"""

import binascii
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

PROTOCOL = 1
CONFIG_NAME = "liif_jax_gimp.json"
SERVER_START_TIMEOUT_S = 90.0
ENDPOINT_NAME = "endpoint.json"
CHUNK = 1 << 20  # bytes per message on a multiprocessing connection
HANDSHAKE_TIMEOUT_S = 10.0
INSTALL_HINT = ("install it from its source folder (a clone of liif-jax) with 'pip install .' "
                "and run 'liif-jax gimp install'")


# What ``BridgeClient.upscale`` returns. A tuple, so ``w, h, data, compute_s, channel = ...``
# (the order of the fields) keeps working; new code reads the fields by name:
#   width, height  the output's size in pixels
#   data           its pixels: bytes in the request's channels and format, row by row
#   compute_s      seconds the worker spent computing (no transport, no start-up)
#   channel        how the worker was reached: "server" (a warm liif-jax serve) or
#                  "subprocess" (a one-off liif-jax bridge)
UpscaleResult = collections.namedtuple("UpscaleResult", ["width", "height", "data", "compute_s", "channel"])


class BridgeError(Exception):
    """The worker reported an error, or could not be reached; the message is for the user."""


class Cancelled(BridgeError):
    pass


# The precision choice both plug-ins offer: (value sent to liif-jax, label). "auto" lets the
# worker's backend decide (float32 on CPU, where bfloat16 pays only on CPUs with native bf16
# dot products; bfloat16 on GPU/TPU).
PRECISION_CHOICES = (
    ("auto", "Automatic (exact on CPU, fast on GPU/TPU)"),
    ("float32", "Exact (float32)"),
    ("bfloat16", "Fast (bfloat16, within 2/255)"),
)


def target_size(width, height, scale, new_width, new_height):
    """The image's new (width, height) from the plug-in arguments: ``scale`` > 0 wins;
    otherwise ``new_width`` / ``new_height``, one of them 0 keeping the aspect ratio (rounded
    to nearest). Raises BridgeError for impossible requests."""
    if scale and scale > 0:
        return max(1, int(width * scale + 0.5)), max(1, int(height * scale + 0.5))
    if scale and scale < 0:
        raise BridgeError("scale must be > 0 (or 0 to use width and height)")
    if new_width < 0 or new_height < 0 or (new_width == 0 and new_height == 0):
        raise BridgeError("give a scale, or a width and/or height in pixels")
    # One side alone keeps the aspect ratio: n * new / old rounded half up, in integers so that
    # it is exactly liif_jax.api.aspect_length (float division differs at some .5 cases).
    if new_width == 0:
        new_width = max(1, int((2 * width * new_height + height) // (2 * height)))
    if new_height == 0:
        new_height = max(1, int((2 * height * new_width + width) // (2 * width)))
    return new_width, new_height


def channels_for(bytes_per_pixel_channels, has_alpha):
    """Protocol channel name for a drawable with 1 (gray) or 3 (RGB) colour channels."""
    if bytes_per_pixel_channels == 1:
        return "GRAYA" if has_alpha else "GRAY"
    return "RGBA" if has_alpha else "RGB"


def socket_path():
    """The same rules as liif_jax.bridge.transport.socket_path (kept in step by a test)."""
    explicit = os.environ.get("LIIF_JAX_SOCKET")
    if explicit:
        return explicit
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "liif-jax", "worker.sock")
    if os.name == "nt":
        local = os.environ.get("LOCALAPPDATA") or os.path.join(os.path.expanduser("~"), "AppData", "Local")
        return os.path.join(local, "liif-jax", "worker.sock")
    return os.path.join("/tmp", "liif-jax-%d" % os.getuid(), "worker.sock")


def endpoint_path():
    """The connection transport's endpoint file: beside the socket path."""
    return os.path.join(os.path.dirname(socket_path()), ENDPOINT_NAME)


def transport_name():
    """"unix" or "connection": $LIIF_JAX_TRANSPORT, else "connection" on Windows."""
    return os.environ.get("LIIF_JAX_TRANSPORT") or ("connection" if os.name == "nt" else "unix")


def read_config(folder):
    path = os.path.join(folder, CONFIG_NAME)
    try:
        with open(path) as f:
            config = json.load(f)
    except (IOError, OSError, ValueError):
        config = {}
    return config if isinstance(config, dict) else {}


class _PipeChannel(object):
    """``liif-jax bridge`` as a child process: its stdin/stdout are the stream."""

    kind = "subprocess"

    def __init__(self, python, weights):
        cmd = [python, "-m", "liif_jax", "bridge"]
        if weights:
            cmd += ["--weights", weights]
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = 0x08000000  # CREATE_NO_WINDOW
        # stderr goes to a file, not a pipe: nobody reads it during the run, and a full pipe
        # would block the worker.
        self.errfile = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self.errfile, **kwargs)
        except OSError as exc:
            raise BridgeError("cannot start liif-jax with %s (%s); %s" % (python, exc, INSTALL_HINT))
        self.rfile, self.wfile = self.proc.stdout, self.proc.stdin

    def cancel(self):
        try:
            self.wfile.close()  # closing stdin cancels the worker promptly
        except (IOError, OSError):
            pass

    def failure(self):
        """The worker's own last words when it died (stderr tail)."""
        try:
            self.proc.wait()
            self.errfile.seek(0)
            tail = self.errfile.read().decode("utf-8", "replace").strip().splitlines()
        except (IOError, OSError, ValueError):
            tail = []
        return tail[-1] if tail else "exit status %s" % self.proc.returncode

    def close(self):
        for f in (self.wfile, self.rfile):
            try:
                f.close()
            except (IOError, OSError):
                pass
        # End of stdin makes the worker exit by itself; only a stuck one is signalled.
        for signal_it, wait_s in ((None, 10.0), ("terminate", 5.0), ("kill", 5.0)):
            if signal_it is not None and self.proc.poll() is None:
                getattr(self.proc, signal_it)()
            deadline = time.time() + wait_s
            while self.proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            if self.proc.poll() is not None:
                break
        try:
            self.errfile.close()
        except (IOError, OSError):
            pass


class _ServerChannel(object):
    """A connection to a warm ``liif-jax serve`` (subclasses open it)."""

    kind = "server"

    def cancel(self):
        try:
            self.wfile.write(_header({"op": "cancel"}))
            self.wfile.flush()
        except (IOError, OSError):
            pass

    def failure(self):
        return "the liif-jax server closed the connection"


class _SocketChannel(_ServerChannel):
    """The unix transport: a Unix stream socket only this user can reach."""

    def __init__(self, path):
        import socket

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)
        except (IOError, OSError):
            self.sock.close()
            raise
        self.rfile = self.sock.makefile("rb")
        self.wfile = self.sock.makefile("wb")

    def close(self):
        for f in (self.wfile, self.rfile, self.sock):
            try:
                f.close()
            except (IOError, OSError):
                pass


class _ConnReader(object):
    """Messages from a multiprocessing Connection read as one byte stream (readline, read)."""

    def __init__(self, conn):
        self.conn = conn
        self.buf = bytearray()
        self.eof = False

    def _more(self):
        if self.eof:
            return False
        try:
            self.buf += self.conn.recv_bytes()
        except (EOFError, IOError, OSError):
            self.eof = True
            return False
        return True

    def _take(self, n):
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def readline(self):
        searched = 0
        while True:
            end = self.buf.find(b"\n", searched)
            if end >= 0:
                return self._take(end + 1)
            searched = len(self.buf)
            if not self._more():
                return self._take(len(self.buf))

    def read(self, n):
        while len(self.buf) < n and self._more():
            pass
        return self._take(min(n, len(self.buf)))

    def close(self):
        pass


class _ConnWriter(object):
    """write() sends at once, in messages of at most CHUNK bytes."""

    def __init__(self, conn):
        self.conn = conn

    def write(self, data):
        for start in range(0, len(data), CHUNK):
            self.conn.send_bytes(data, start, min(CHUNK, len(data) - start))

    def flush(self):
        pass

    def close(self):
        pass


def _read_endpoint(path):
    """(family, address, authkey) from the server's endpoint file; raises on any problem."""
    with open(path) as f:
        endpoint = json.load(f)
    family, address = str(endpoint["family"]), endpoint["address"]
    if not isinstance(address, str):  # Python 2: the json module gives unicode
        address = address.encode(sys.getfilesystemencoding() or "utf-8")
    return family, address, binascii.unhexlify(endpoint["authkey"].encode("ascii"))


class _ConnectionChannel(_ServerChannel):
    """The connection transport: multiprocessing.connection (a named pipe on Windows),
    authenticated with the key from the server's endpoint file."""

    def __init__(self, path):
        from multiprocessing import connection

        family, address, authkey = _read_endpoint(path)
        conn = connection.Client(address, family)
        try:
            # What Client(address, family, authkey=...) does, but a server that does not start
            # the handshake (wedged) sends us to the one-off worker instead of hanging GIMP.
            if not conn.poll(HANDSHAKE_TIMEOUT_S):
                raise IOError("the liif-jax server at %s does not answer" % address)
            connection.answer_challenge(conn, authkey)
            connection.deliver_challenge(conn, authkey)
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        self.rfile = _ConnReader(self.conn)
        self.wfile = _ConnWriter(self.conn)

    def close(self):
        try:
            self.conn.close()
        except (IOError, OSError):
            pass


def _connect_errors():
    """What opening a server channel may raise when no usable server is there."""
    errors = [IOError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, ImportError]
    try:
        from multiprocessing import AuthenticationError
        errors.append(AuthenticationError)
    except ImportError:
        pass
    return tuple(errors)


def _header(message):
    message = dict(message)
    message["liif"] = PROTOCOL
    return (json.dumps(message, separators=(",", ":")) + "\n").encode("utf-8")


def _log_timing(started, event, kind):
    """With $LIIF_JAX_TIMINGS set, append one JSON line per call (benchmarks read it)."""
    path = os.environ.get("LIIF_JAX_TIMINGS")
    if not path:
        return
    record = {"wall_s": round(time.time() - started, 4), "compute_s": event.get("compute_s", 0.0),
              "channel": kind, "width": event.get("width"), "height": event.get("height")}
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except (IOError, OSError):
        pass


def _log_event(record):
    """With $LIIF_JAX_EVENTS set, append one JSON line per worker event (payloads left out)
    and per connection: a diagnostic of what liif-jax said, read by the real-GIMP tests."""
    path = os.environ.get("LIIF_JAX_EVENTS")
    if not path:
        return
    record = dict((k, v) for k, v in record.items() if k != "liif")
    record["t"] = round(time.time(), 4)
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except (IOError, OSError):
        pass


def _read_exact(rfile, n):
    chunks, got = [], 0
    while got < n:
        chunk = rfile.read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class BridgeClient(object):
    def __init__(self, python, weights=None, start_server=True, log=None, socket=None):
        self.python = python
        self.weights = weights
        self.start_server = start_server
        self.log = log or (lambda text: None)
        self.last_channel = None
        # A worker someone else starts (socket activation, for a sandboxed GIMP that cannot
        # start the host's Python): only that socket is used, nothing is ever started.
        self.socket = socket

    @classmethod
    def from_config(cls, folder, log=None):
        config = read_config(folder)
        if config.get("socket"):  # "$XDG_RUNTIME_DIR/...": as seen from where GIMP runs
            return cls(None, log=log, socket=config["socket"])
        python = os.environ.get("LIIF_JAX_PYTHON") or config.get("python")
        if not python:
            raise BridgeError("liif-jax is not set up for this plug-in; " + INSTALL_HINT)
        if not os.path.exists(python):
            raise BridgeError("the liif-jax interpreter %s does not exist; %s" % (python, INSTALL_HINT))
        return cls(python, config.get("weights"), config.get("start_server", True), log)

    # -------------------------------------------------------------- connecting
    def _connect(self, status):
        """A channel: the warm server if it runs (or can be started), else a subprocess.
        Custom weights, or ``start_server`` off, always get a one-off subprocess. With a
        ``socket`` only that socket, or an error naming the command that starts its worker."""
        if self.socket:
            path = os.path.expandvars(self.socket)
            try:
                return _SocketChannel(path)
            except _connect_errors() as exc:
                raise BridgeError("no liif-jax worker answers at %s (%s); on the computer (outside "
                                  "GIMP's sandbox) run: liif-jax serve --socket %s -- or set up its "
                                  "start on demand with 'liif-jax gimp install --flatpak'"
                                  % (path, exc, self.socket))
        if self.start_server and not self.weights:
            errors = _connect_errors()
            if transport_name() == "connection":
                def open_server():
                    return _ConnectionChannel(endpoint_path())
            else:
                def open_server():
                    return _SocketChannel(socket_path())
            try:
                return open_server()
            except errors:
                pass
            server = self._spawn_server(status)
            if server is not None:
                deadline = time.time() + SERVER_START_TIMEOUT_S
                while time.time() < deadline and server.poll() is None:
                    try:
                        return open_server()
                    except errors:
                        time.sleep(0.25)
                try:  # it may have found another server already listening and exited
                    return open_server()
                except errors:
                    self.log("liif-jax server did not come up; using a one-off worker")
        return _PipeChannel(self.python, self.weights)

    def _spawn_server(self, status):
        """Start ``liif-jax serve`` detached; returns its Popen, or None."""
        status("Starting liif-jax (first use)...")
        log_path = os.path.join(os.path.dirname(socket_path()), "server.log")
        try:
            folder = os.path.dirname(log_path)
            if not os.path.isdir(folder):
                os.makedirs(folder, 0o700)
            log = open(log_path, "ab")
        except (IOError, OSError):
            return None
        try:
            kwargs = {"stdin": open(os.devnull, "rb"), "stdout": log, "stderr": log}
            if os.name == "posix":
                kwargs["close_fds"] = True
                kwargs["preexec_fn"] = os.setsid  # detached: outlives this plug-in call
            elif os.name == "nt":
                # CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW: no console, no Ctrl+C from ours.
                kwargs["creationflags"] = 0x00000200 | 0x08000000
                if sys.version_info >= (3, 7):  # Python 2 cannot close fds with redirections here
                    kwargs["close_fds"] = True
            return subprocess.Popen([self.python, "-m", "liif_jax", "serve"], **kwargs)
        except (IOError, OSError) as exc:
            self.log("cannot start the liif-jax server: %s" % exc)
            return None
        finally:
            log.close()

    # -------------------------------------------------------------- the call
    def upscale(self, width, height, channels, fmt, payload, scale=None, size=None, region=None,
                progress=None, cancelled=None, status=None, precision=None):
        """Send one image; return an ``UpscaleResult`` (width, height, data, compute_s, channel).
        ``progress(fraction)``, ``cancelled() -> bool`` and ``status(text)`` are optional.
        ``precision``: "float32" (exact), "bfloat16" (fast), or None/"auto" (the worker's
        backend decides: float32 on CPU, bfloat16 on GPU/TPU)."""
        progress = progress or (lambda fraction: None)
        cancelled = cancelled or (lambda: False)
        status = status or (lambda text: None)
        request = {"op": "upscale", "id": 1, "width": width, "height": height,
                   "channels": channels, "format": fmt, "bytes": len(payload)}
        if scale is not None:
            request["scale"] = scale
        else:
            request["size"] = list(size)
        if region is not None:
            request["region"] = list(region)
        if precision not in (None, "auto"):
            request["precision"] = precision
        started = time.time()
        channel = self._connect(status)
        self.last_channel = channel.kind
        _log_event({"event": "channel", "kind": channel.kind, "client_pid": os.getpid(),
                    "worker_pid": getattr(getattr(channel, "proc", None), "pid", None)})
        try:
            try:
                channel.wfile.write(_header(request))
                channel.wfile.write(payload)
                channel.wfile.flush()
            except (IOError, OSError):
                raise BridgeError("liif-jax worker failed: %s" % channel.failure())
            status("Upscaling with LIIF...")
            cancel_sent = False
            while True:
                line = channel.rfile.readline()
                if not line:
                    raise BridgeError("liif-jax worker failed: %s" % channel.failure())
                try:
                    event = json.loads(line.decode("utf-8"))
                except ValueError:
                    raise BridgeError("liif-jax worker sent something unreadable: %r" % line[:80])
                kind = event.get("event")
                _log_event(event)
                if kind == "progress":
                    total = float(event.get("total") or 1)
                    progress(min(1.0, event.get("done", 0) / total))
                    if not cancel_sent and cancelled():
                        channel.cancel()
                        cancel_sent = True
                    continue
                if kind == "result":
                    data = _read_exact(channel.rfile, event["bytes"])
                    if len(data) != event["bytes"]:
                        raise BridgeError("liif-jax worker sent a short result")
                    _log_timing(started, event, channel.kind)
                    return UpscaleResult(event["width"], event["height"], data,
                                         event.get("compute_s", 0.0), channel.kind)
                if kind == "error":
                    if event.get("code") == "cancelled":
                        raise Cancelled("cancelled")
                    raise BridgeError(event.get("message") or "liif-jax worker error")
        finally:
            channel.close()


# ------------------------------------------------------------------ plug-in orchestration
# Both GIMP plug-ins (3.x and 2.10) run the same steps through these functions; each supplies
# a "host" object that knows its GIMP's API:
#   host.check(image)                      raise BridgeError if the image cannot be upscaled
#   host.image_size(image) -> (w, h)
#   host.layers(image) -> [layer]          pixel layers, depth first (groups walked)
#   host.read(image, layer, box) -> (w, h, channels, fmt, bytes)   box: (x, y, w, h) or None
#   host.write(image, layer, data)         undoable write of a whole layer (its current size)
#   host.size(layer) -> (w, h)
#   host.duplicate(image) -> copy          undo disabled on the copy
#   host.scale(image, w, h)                Image > Scale Image
#   host.delete(image)
#   host.undo_group_start/undo_group_end(image)
#   host.restore(image, backup)            put image back as backup was (same undo group)
#   host.finish_new(image)                 a finished new image: undo on, shown if interactive
#   host.progress_init/progress_update/progress_text/progress_end
# and for the layer command:
#   host.is_group(layer)
#   host.selection_box(image, layer) -> (x, y, w, h) of the selection's bounds within the
#                                       layer, or None (no selection, or none over the layer)
#   host.new_image(image, layer, w, h, data) -> a new image of one layer holding data
#   host.copy_layer(layer) -> copy      not in the image (a backup)
#   host.scale_layer(layer, w, h)       Layer > Scale Layer (around the layer's centre)
#   host.restore_layer(image, layer, copy)  copy takes the layer's place
#   host.delete_layer(copy)
# A test hook: $LIIF_JAX_TEST_FAIL_AFTER_SCALE=1 raises right after the image was scaled in
# place, so real-GIMP tests can prove the image comes back exactly as it was.


def _check_size(got, want, what):
    if tuple(got) != tuple(want):
        raise BridgeError("%s %dx%d, expected %dx%d" % ((what,) + tuple(got) + tuple(want)))


def compute_layers(host, image, client, sources, sizes, precision, box=None):
    """Every source layer through liif-jax, to its target size; nothing in GIMP is changed.
    The progress (and with it GIMP's Cancel) covers exactly this phase. ``box``: (x, y, w, h)
    of the layer to read instead of all of it."""
    results = []
    host.progress_init("Upscale (LIIF)")
    try:
        for i, (src, size) in enumerate(zip(sources, sizes)):
            w, h, channels, fmt, data = host.read(image, src, box)

            def progress(fraction, i=i):
                host.progress_update((i + fraction) / float(len(sources)))

            result = client.upscale(w, h, channels, fmt, data, size=tuple(size), precision=precision,
                                    progress=progress, status=host.progress_text)
            _check_size((result.width, result.height), size, "liif-jax returned")
            results.append(result.data)
    finally:
        host.progress_end()
    return results


def _test_failure():
    if os.environ.get("LIIF_JAX_TEST_FAIL_AFTER_SCALE") == "1":
        raise BridgeError("injected failure after the image was scaled (LIIF_JAX_TEST_FAIL_AFTER_SCALE)")


def _write_layers(host, image, results, sizes):
    layers = host.layers(image)
    for layer, size in zip(layers, sizes):  # every size first: no half-written image
        _check_size(host.size(layer), size, "GIMP scaled a layer to")
    _test_failure()
    for layer, data in zip(layers, results):
        host.write(image, layer, data)


def layer_sizes(host, image, new_w, new_h):
    """The size Image > Scale Image gives each pixel layer, learned on a throw-away duplicate
    deleted at once (so nothing of ours is left in GIMP while liif-jax computes)."""
    work = host.duplicate(image)
    try:
        host.scale(work, new_w, new_h)
        return [host.size(layer) for layer in host.layers(work)]
    finally:
        host.delete(work)


def upscale_image(host, image, scale, width, height, new_image, precision="auto", client=None):
    """Image > Upscale (LIIF): like Image > Scale Image, every layer upscaled by LIIF.
    Returns the resulting image; raises BridgeError (Cancelled on Cancel).

    Computing first, the image untouched. Then either a new image (a duplicate scaled and
    written; deleted again on failure) or, in place, one undo group: scale, write every
    layer. A failure inside the group puts the image back from a duplicate made just before
    (GIMP has no undo call for plug-ins), so any failure leaves the image as it was."""
    host.check(image)
    iw, ih = host.image_size(image)
    new_w, new_h = target_size(iw, ih, scale, width, height)
    client = client or host.client()
    sizes = layer_sizes(host, image, new_w, new_h)
    results = compute_layers(host, image, client, host.layers(image), sizes, precision)
    if new_image:
        result = host.duplicate(image)
        try:
            host.scale(result, new_w, new_h)
            _write_layers(host, result, results, sizes)
            host.finish_new(result)
        except BaseException:
            host.delete(result)
            raise
        return result
    backup = host.duplicate(image)
    try:
        host.undo_group_start(image)
        try:
            host.scale(image, new_w, new_h)
            _write_layers(host, image, results, sizes)
        except BaseException:
            host.restore(image, backup)
            raise
        finally:
            host.undo_group_end(image)
    finally:
        host.delete(backup)
    return image


def upscale_layer(host, image, layer, scale, width, height, precision="auto", selection_only=False,
                  client=None):
    """Layer > Upscale Layer (LIIF): like Layer > Scale Layer (the layer keeps its centre; the
    canvas stays), its pixels upscaled by LIIF, in one undo group that a failure undoes; or,
    with ``selection_only``, the selection's bounds within the layer upscaled into a new image
    (the input untouched). Returns the image changed or made; raises BridgeError."""
    host.check(image)
    if host.is_group(layer):
        raise BridgeError("a layer group has no pixels of its own: pick a layer in it, or use "
                          "Image > Upscale (LIIF)")
    if selection_only:
        box = host.selection_box(image, layer)
        if box is None:
            raise BridgeError("nothing of this layer is selected: select an area, or turn "
                              "'Only the selection' off")
        new_w, new_h = target_size(box[2], box[3], scale, width, height)
        client = client or host.client()
        data, = compute_layers(host, image, client, [layer], [(new_w, new_h)], precision, box)
        return host.new_image(image, layer, new_w, new_h, data)
    lw, lh = host.size(layer)
    new_w, new_h = target_size(lw, lh, scale, width, height)
    client = client or host.client()
    data, = compute_layers(host, image, client, [layer], [(new_w, new_h)], precision)
    backup = host.copy_layer(layer)
    try:
        host.undo_group_start(image)
        try:
            host.scale_layer(layer, new_w, new_h)
            _check_size(host.size(layer), (new_w, new_h), "GIMP scaled the layer to")
            _test_failure()
            host.write(image, layer, data)
        except BaseException:
            host.restore_layer(image, layer, backup)
            backup = None  # it is the layer now
            raise
        finally:
            host.undo_group_end(image)
    finally:
        if backup is not None:
            host.delete_layer(backup)
    return image


# ------------------------------------------------------------------ what the dialogs show
ASPECT_HINT = "Scale 0 uses Width and Height; a Width or Height of 0 keeps the aspect ratio."


def result_text(width, height, scale, new_width, new_height):
    """The dialog's line about the result, for a source of width x height."""
    try:
        w, h = target_size(width, height, scale, new_width, new_height)
    except BridgeError as exc:
        return "Result: none yet (%s)" % exc
    return "Result: %d x %d pixels (from %d x %d)" % (w, h, width, height)


def weights_text(folder):
    """Which weights the filter uses, as the dialog says it."""
    weights = read_config(folder).get("weights")
    if weights:
        return "Weights: %s" % weights
    return "Weights: liif-jax's bundled EDSR-baseline LIIF (set by 'liif-jax gimp install --weights FILE')"
