# -*- coding: utf-8 -*-
"""Talk to liif-jax from a program that cannot import it (GIMP's Python 3, or GIMP 2.10's
Python 2.7). Standard library only, in the common subset of Python 2.7 and 3.

    client = BridgeClient.from_config(os.path.dirname(__file__))
    width, height, payload = client.upscale(w, h, "RGBA", "u8", raw_bytes, scale=2.0,
                                            progress=lambda fraction: ...,
                                            cancelled=lambda: False)

It first connects to a warm ``liif-jax serve`` (a Unix socket only this user can reach),
starting one in the background if none runs (unless the config says ``"start_server":
false``), and falls back to spawning ``liif-jax bridge`` with pipes. Both speak the same
protocol (liif_jax/bridge/protocol.py): a JSON header line, raw pixels, progress lines, a
result header and raw pixels, or an error line.

Where liif-jax lives: ``$LIIF_JAX_PYTHON`` (an interpreter with liif-jax installed), else the
``python`` entry of ``liif_jax_gimp.json`` beside the plug-in, written by
``liif-jax gimp install``.
"""

import json
import os
import subprocess
import tempfile
import time

PROTOCOL = 1
CONFIG_NAME = "liif_jax_gimp.json"
SERVER_START_TIMEOUT_S = 90.0
INSTALL_HINT = ("install it with 'pip install liif-jax' (or from its source folder) and run "
                "'liif-jax gimp install'")


class BridgeError(Exception):
    """The worker reported an error, or could not be reached; the message is for the user."""


class Cancelled(BridgeError):
    pass


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
    if new_width == 0:
        new_width = max(1, int(width * new_height / float(height) + 0.5))
    if new_height == 0:
        new_height = max(1, int(height * new_width / float(width) + 0.5))
    return new_width, new_height


def channels_for(bytes_per_pixel_channels, has_alpha):
    """Protocol channel name for a drawable with 1 (gray) or 3 (RGB) colour channels."""
    if bytes_per_pixel_channels == 1:
        return "GRAYA" if has_alpha else "GRAY"
    return "RGBA" if has_alpha else "RGB"


def socket_path():
    """The same rules as liif_jax.bridge.server.socket_path (kept in step by a test)."""
    explicit = os.environ.get("LIIF_JAX_SOCKET")
    if explicit:
        return explicit
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "liif-jax", "worker.sock")
    return os.path.join("/tmp", "liif-jax-%d" % os.getuid(), "worker.sock")


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


class _SocketChannel(object):
    """A connection to a warm ``liif-jax serve``."""

    kind = "server"

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

    def cancel(self):
        try:
            self.wfile.write(_header({"op": "cancel"}))
            self.wfile.flush()
        except (IOError, OSError):
            pass

    def failure(self):
        return "the liif-jax server closed the connection"

    def close(self):
        for f in (self.wfile, self.rfile, self.sock):
            try:
                f.close()
            except (IOError, OSError):
                pass


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
    def __init__(self, python, weights=None, start_server=True, log=None):
        self.python = python
        self.weights = weights
        self.start_server = start_server
        self.log = log or (lambda text: None)
        self.last_channel = None

    @classmethod
    def from_config(cls, folder, log=None):
        config = read_config(folder)
        python = os.environ.get("LIIF_JAX_PYTHON") or config.get("python")
        if not python:
            raise BridgeError("liif-jax is not set up for this plug-in; " + INSTALL_HINT)
        if not os.path.exists(python):
            raise BridgeError("the liif-jax interpreter %s does not exist; %s" % (python, INSTALL_HINT))
        return cls(python, config.get("weights"), config.get("start_server", True), log)

    # -------------------------------------------------------------- connecting
    def _connect(self, status):
        """A channel: the warm server if it runs (or can be started), else a subprocess."""
        if os.name == "posix" and not self.weights:
            path = socket_path()
            try:
                return _SocketChannel(path)
            except (IOError, OSError):
                pass
            server = self._spawn_server(status) if self.start_server else None
            if server is not None:
                deadline = time.time() + SERVER_START_TIMEOUT_S
                while time.time() < deadline and server.poll() is None:
                    try:
                        return _SocketChannel(path)
                    except (IOError, OSError):
                        time.sleep(0.25)
                try:  # it may have found another server already listening and exited
                    return _SocketChannel(path)
                except (IOError, OSError):
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
            kwargs = {"stdin": open(os.devnull, "rb"), "stdout": log, "stderr": log, "close_fds": True}
            if os.name == "posix":
                kwargs["preexec_fn"] = os.setsid  # detached: outlives this plug-in call
            return subprocess.Popen([self.python, "-m", "liif_jax", "serve"], **kwargs)
        except (IOError, OSError) as exc:
            self.log("cannot start the liif-jax server: %s" % exc)
            return None
        finally:
            log.close()

    # -------------------------------------------------------------- the call
    def upscale(self, width, height, channels, fmt, payload, scale=None, size=None, region=None,
                progress=None, cancelled=None, status=None):
        """Send one image; return (width, height, payload, compute seconds, channel kind).
        ``progress(fraction)``, ``cancelled() -> bool`` and ``status(text)`` are optional."""
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
        started = time.time()
        channel = self._connect(status)
        self.last_channel = channel.kind
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
                    return event["width"], event["height"], data, event.get("compute_s", 0.0), channel.kind
                if kind == "error":
                    if event.get("code") == "cancelled":
                        raise Cancelled("cancelled")
                    raise BridgeError(event.get("message") or "liif-jax worker error")
        finally:
            channel.close()
