"""The GIMP plug-ins' bridge client (stdlib, Python 2.7/3 subset) against the real worker:
subprocess fallback, the warm server it starts, concurrency, cancel, errors, 2.7 syntax."""

import io
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

import liif_jax
from conftest import REPO, TINY
from test_bridge_transport import ServerEnv

sys.path.insert(0, str(REPO / "gimp_plugin"))
import liif_bridge_client as client_mod  # noqa: E402


def rgba_u8(h=10, w=12, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)


@pytest.fixture(params=["unix", "connection"])
def server_env(request, monkeypatch):
    """A private runtime folder (short path: AF_UNIX paths are limited to ~100 bytes) and the
    transport under test; stops the servers started there afterwards."""
    env = ServerEnv(request.param)
    monkeypatch.setenv("LIIF_JAX_SOCKET", str(env.socket))
    monkeypatch.setenv("LIIF_JAX_TRANSPORT", request.param)
    yield env
    env.cleanup()


def test_socket_path_rules_match_the_server(monkeypatch):
    from liif_jax.bridge import transport

    monkeypatch.delenv("LIIF_JAX_SOCKET", raising=False)
    monkeypatch.delenv("LIIF_JAX_TRANSPORT", raising=False)
    for runtime in ["/run/user/1000", None]:
        if runtime:
            monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
        else:
            monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        assert client_mod.socket_path() == str(transport.socket_path())
        assert client_mod.endpoint_path() == str(transport.endpoint_path())
    assert client_mod.transport_name() == transport.transport_name() == "unix"
    monkeypatch.setenv("LIIF_JAX_SOCKET", "/x/y.sock")
    assert client_mod.socket_path() == str(transport.socket_path()) == "/x/y.sock"
    assert client_mod.endpoint_path() == str(transport.endpoint_path()) == "/x/endpoint.json"
    monkeypatch.setenv("LIIF_JAX_TRANSPORT", "connection")
    assert client_mod.transport_name() == transport.transport_name() == "connection"
    # Windows: the per-user local app data folder, and the connection transport by default.
    monkeypatch.delenv("LIIF_JAX_SOCKET")
    monkeypatch.delenv("LIIF_JAX_TRANSPORT")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("LOCALAPPDATA", "/users/me/AppData/Local")
    monkeypatch.setattr(transport, "Path", PurePosixPath)  # pathlib cannot make a WindowsPath here
    monkeypatch.setattr(os, "name", "nt")
    assert client_mod.socket_path() == str(transport.socket_path()) == "/users/me/AppData/Local/liif-jax/worker.sock"
    assert client_mod.transport_name() == transport.transport_name() == "connection"
    assert transport.connection_family() == "AF_PIPE"


def test_client_sizes_are_the_librarys_for_every_small_image():
    """The dialog shows target_size's result and the worker renders api.output_size's: one side
    given, the other follows the aspect ratio the same way, pixel for pixel (float division
    once gave 6x15 at width 49 a height of 123 in GIMP and 122 in the library)."""
    from liif_jax.api import output_size

    for w in range(1, 41):
        for h in range(1, 41):
            for new in range(1, 130):
                assert client_mod.target_size(w, h, 0, new, 0) == output_size((h, w), width=new)[::-1], (w, h, new)
                assert client_mod.target_size(w, h, 0, 0, new) == output_size((h, w), height=new)[::-1], (w, h, new)
    for w, h, new in ((6, 15, 49), (4000, 3000, 1081), (7, 3, 2 ** 20)):
        assert client_mod.target_size(w, h, 0, new, 0) == output_size((h, w), width=new)[::-1]
    assert client_mod.target_size(6, 15, 0, 49, 0) == (49, 123)  # 15 * 49 / 6 = 122.5, half up


def test_client_copies_of_the_servers_rules_are_the_servers(monkeypatch):
    """The stdlib client cannot import liif_jax, so it keeps copies of the server's rules;
    each copy is checked against the original here, so the two cannot drift apart."""
    from liif_jax import gimp_setup
    from liif_jax.bridge import protocol, transport

    assert client_mod.PROTOCOL == protocol.PROTOCOL
    assert client_mod.ENDPOINT_NAME == transport.ENDPOINT_NAME
    assert client_mod.CHUNK == transport.CHUNK <= transport.MAX_MESSAGE  # a bigger message ends the stream
    assert client_mod.CONFIG_NAME == gimp_setup.CONFIG
    for name in transport.TRANSPORTS:
        monkeypatch.setenv("LIIF_JAX_TRANSPORT", name)
        assert client_mod.transport_name() == transport.transport_name() == name
    assert {client_mod.channels_for(n, a) for n in (1, 3) for a in (False, True)} == set(protocol.CHANNELS)
    assert "cancelled" in protocol.ERROR_CODES  # the one code the client acts on
    # What the client sends is what the server's parser accepts, option by option.
    sent = io.BytesIO()

    class Channel:
        kind = "fake"
        wfile = sent

        def __init__(self):
            self.rfile = io.BytesIO(b'{"liif":1,"event":"result","id":1,"width":2,"height":2,"channels":"RGB",'
                                    b'"format":"u8","bytes":12}\n' + bytes(12))

        def failure(self):
            return "fake channel"

        def close(self):
            pass

    client = client_mod.BridgeClient(sys.executable)
    for options in ({"scale": 2.0}, {"scale": [2.0, 1.5]}, {"size": (7, 5)}, {"scale": 2, "region": (0, 0, 1, 1.5)},
                    {"scale": 2, "precision": "bfloat16"}):
        monkeypatch.setattr(client, "_connect", lambda status: Channel())
        sent.seek(0)
        sent.truncate()
        client.upscale(3, 2, "RGB", "u8", bytes(18), **options)
        stream = io.BytesIO(sent.getvalue())
        request = protocol.parse_request(protocol.read_message(stream))
        assert request["op"] == "upscale" and stream.read() == bytes(18)
        assert {k: request[k] for k in ("scale", "size", "region", "precision") if k in request} == \
            {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    # The server-side constants the client must not exceed.
    assert len(client_mod._header({"op": "upscale", "id": 1, "region": [0.1] * 4})) < protocol.MAX_HEADER_BYTES


def test_subprocess_fallback_round_trip_with_weights(tiny_model):
    client = client_mod.BridgeClient(sys.executable, weights=str(TINY / "tiny-liif.pth"), start_server=False)
    pixels = rgba_u8()
    seen = []
    result = client.upscale(12, 10, "RGBA", "u8", pixels.tobytes(), scale=2.0, progress=seen.append)
    assert (result.width, result.height, result.channel) == (24, 20, "subprocess") and result.compute_s > 0
    out = np.frombuffer(result.data, np.uint8).reshape(20, 24, 4)
    expected = liif_jax.upscale(pixels, scale=2.0, model=tiny_model, dtype=np.uint8)
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert seen and seen[-1] == 1.0


def test_worker_errors_become_bridge_errors(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not weights")
    client = client_mod.BridgeClient(sys.executable, weights=str(bad), start_server=False)
    with pytest.raises(client_mod.BridgeError, match="neither a liif-jax .safetensors file"):
        client.upscale(12, 10, "RGBA", "u8", rgba_u8().tobytes(), scale=2.0)
    broken = client_mod.BridgeClient(str(tmp_path / "no-python"), start_server=False)
    with pytest.raises(client_mod.BridgeError, match="cannot start liif-jax"):
        broken.upscale(12, 10, "RGBA", "u8", rgba_u8().tobytes(), scale=2.0)


def test_missing_setup_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.delenv("LIIF_JAX_PYTHON", raising=False)
    with pytest.raises(client_mod.BridgeError, match=r"clone of liif-jax.*'pip install \.'.*liif-jax gimp install"):
        client_mod.BridgeClient.from_config(str(tmp_path))
    (tmp_path / client_mod.CONFIG_NAME).write_text('{"python": "/nowhere/python"}')
    with pytest.raises(client_mod.BridgeError, match="/nowhere/python does not exist"):
        client_mod.BridgeClient.from_config(str(tmp_path))
    monkeypatch.setenv("LIIF_JAX_PYTHON", sys.executable)
    assert client_mod.BridgeClient.from_config(str(tmp_path)).python == sys.executable


def test_cancel_through_the_subprocess(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # a job that outlasts the cancel on any host
    client = client_mod.BridgeClient(sys.executable, weights=str(TINY / "tiny-liif.pth"), start_server=False)
    seen = []
    # Cancelled comes only from the worker's own "cancelled" answer: the job stopped there,
    # part-way (no progress report reached the end).
    with pytest.raises(client_mod.Cancelled):
        client.upscale(48, 48, "RGBA", "u8", rgba_u8(48, 48).tobytes(), scale=80.0,
                       progress=seen.append, cancelled=lambda: True)
    assert seen and max(seen) < 1.0


def test_warm_server_started_on_first_use_then_reused(server_env, real_model):
    client = client_mod.BridgeClient(sys.executable)
    statuses = []
    pixels = rgba_u8(16, 16)
    w, h, data, _, kind = client.upscale(16, 16, "RGBA", "u8", pixels.tobytes(), scale=2.0,
                                         status=statuses.append)
    assert kind == "server" and (w, h) == (32, 32)
    assert any("Starting liif-jax" in s for s in statuses)
    assert stat.S_IMODE(os.stat(server_env.folder).st_mode) == 0o700
    if server_env.transport == "unix":
        st = os.stat(server_env.socket)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert not server_env.endpoint.exists()
    else:
        # The key file: owner-only, a fresh 32-byte key, the address of an AF_UNIX socket
        # (the family Windows replaces with AF_PIPE), itself 0600; no plain unix socket.
        assert stat.S_IMODE(os.stat(server_env.endpoint).st_mode) == 0o600
        endpoint = json.loads(server_env.endpoint.read_text())
        assert endpoint["family"] == "AF_UNIX" and len(bytes.fromhex(endpoint["authkey"])) == 32
        address = Path(endpoint["address"])
        assert address.parent == server_env.folder and address.name.startswith("worker-")
        assert stat.S_ISSOCK(os.stat(address).st_mode) and stat.S_IMODE(os.stat(address).st_mode) == 0o600
        assert not server_env.socket.exists()
    expected = liif_jax.upscale(pixels, scale=2.0, model=real_model, dtype=np.uint8)
    assert np.abs(np.frombuffer(data, np.uint8).reshape(32, 32, 4).astype(int) - expected).max() <= 1
    # Twenty more in a row: no restart, no reload -- all answered by the one server the first
    # call started (one "listening" in the log it writes), never by a one-off worker.
    server = server_env.server_pids()
    assert len(server) == 1
    for i in range(20):
        _, _, _, _, kind = client.upscale(16, 16, "RGBA", "u8", rgba_u8(16, 16, i).tobytes(),
                                          scale=2.0, status=statuses.append)
        assert kind == "server"
    assert sum("Starting liif-jax" in s for s in statuses) == 1
    assert server_env.server_pids() == server
    assert server_env.log.read_text().count("listening at") == 1


def test_two_clients_at_once(server_env):
    client = client_mod.BridgeClient(sys.executable)
    client.upscale(16, 16, "RGBA", "u8", rgba_u8(16, 16).tobytes(), scale=2.0)  # starts it
    results, errors = {}, []
    inside = threading.Barrier(2, timeout=120)

    def one(i):
        try:
            def progress(fraction):  # both requests are in the server at the same time
                if fraction < 1.0 and not getattr(progress, "met", False):
                    progress.met = True
                    inside.wait()
            results[i] = client_mod.BridgeClient(sys.executable).upscale(
                40, 36, "RGBA", "u8", rgba_u8(36, 40, i).tobytes(), scale=3.0, progress=progress)
        except Exception as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors
    assert all(results[i][4] == "server" and results[i][:2] == (120, 108) for i in range(2))
    assert results[0][2] != results[1][2]  # each got its own image back
    assert len(server_env.server_pids()) == 1


def test_start_server_false_never_uses_a_running_server(server_env, tiny_model):
    """``"start_server": false`` means a one-off worker every time: it neither starts a server
    nor uses one that is already running."""
    running = client_mod.BridgeClient(sys.executable)
    assert running.upscale(12, 10, "RGBA", "u8", rgba_u8().tobytes(), scale=2.0)[4] == "server"
    assert server_env.server_pids()
    config = server_env.folder.parent / "plugin"
    config.mkdir()
    (config / client_mod.CONFIG_NAME).write_text(json.dumps({"python": sys.executable, "start_server": False}))
    off = client_mod.BridgeClient.from_config(str(config))
    assert off.start_server is False
    statuses = []
    pixels = rgba_u8()
    w, h, data, _, kind = off.upscale(12, 10, "RGBA", "u8", pixels.tobytes(), scale=2.0, status=statuses.append)
    assert kind == "subprocess" and (w, h) == (24, 20)
    assert not any("Starting" in s for s in statuses)
    # Custom weights: never the server either (it serves the bundled ones).
    custom = client_mod.BridgeClient(sys.executable, weights=str(TINY / "tiny-liif.pth"))
    w, h, data, _, kind = custom.upscale(12, 10, "RGBA", "u8", pixels.tobytes(), scale=2.0)
    assert kind == "subprocess"
    expected = liif_jax.upscale(pixels, scale=2.0, model=tiny_model, dtype=np.uint8)
    assert np.abs(np.frombuffer(data, np.uint8).reshape(20, 24, 4).astype(int) - expected).max() <= 1


def test_plugin_files_parse_as_python_27():
    files = sorted(str(p) for p in (REPO / "gimp_plugin").rglob("*.py")
                   if "liif_upscale/liif_upscale.py" not in str(p))  # the GIMP 3 plug-in is Python 3
    assert any(f.endswith("liif_bridge_client.py") for f in files)
    vermin = os.path.join(os.path.dirname(sys.executable), "vermin")
    proc = subprocess.run([vermin, "--no-tips", "--violations", "-t=2.7-", "-t=3.0-", *files],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dialog_texts_say_the_result_size_the_aspect_rule_and_the_weights(tmp_path):
    # What the GIMP 3 dialogs show before running (issue 13, item 4).
    assert client_mod.result_text(40, 30, 2.5, 0, 0) == "Result: 100 x 75 pixels (from 40 x 30)"
    assert client_mod.result_text(40, 30, 0, 0, 45) == "Result: 60 x 45 pixels (from 40 x 30)"  # aspect kept
    assert client_mod.result_text(40, 30, 0, 0, 0).startswith("Result: none yet (give a scale")
    assert "0 keeps the aspect ratio" in client_mod.ASPECT_HINT
    assert "bundled EDSR-baseline" in client_mod.weights_text(str(tmp_path))  # no config: bundled
    (tmp_path / "liif_jax_gimp.json").write_text(json.dumps({"python": "p", "weights": "/w/rdn-liif.pth"}))
    assert client_mod.weights_text(str(tmp_path)) == "Weights: /w/rdn-liif.pth"


def test_upscale_returns_named_fields_that_still_unpack_as_a_tuple(monkeypatch):
    """``client.upscale`` returns an UpscaleResult: fields by name, and the 5-tuple order
    (width, height, data, compute_s, channel) for callers that unpack it."""
    class Channel:
        kind = "fake"
        wfile = io.BytesIO()

        def __init__(self):
            self.rfile = io.BytesIO(b'{"liif":1,"event":"result","id":1,"width":2,"height":1,"channels":"RGB",'
                                    b'"format":"u8","bytes":6,"compute_s":0.25}\n' + bytes(range(6)))

        def failure(self):
            return "fake channel"

        def close(self):
            pass

    client = client_mod.BridgeClient(sys.executable)
    monkeypatch.setattr(client, "_connect", lambda status: Channel())
    result = client.upscale(1, 1, "RGB", "u8", bytes(3), scale=2.0)
    assert isinstance(result, client_mod.UpscaleResult) and isinstance(result, tuple)
    assert (result.width, result.height, result.data, result.compute_s, result.channel) == \
        (2, 1, bytes(range(6)), 0.25, "fake")
    w, h, data, compute_s, channel = result
    assert (w, h, data, compute_s, channel) == tuple(result) and result[4] == "fake"
    assert client_mod.UpscaleResult._fields == ("width", "height", "data", "compute_s", "channel")


def test_the_named_result_works_in_python_27():
    from test_bridge_transport import _other_pythons

    pythons = [p for p in _other_pythons() if "python2" in os.path.basename(p)]
    if not pythons:
        pytest.skip("no python2.7 on PATH")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import liif_bridge_client as c; "
            "r = c.UpscaleResult(4, 3, b'x', 0.5, 'server'); w, h, d, s, k = r; "
            "print('%d %d %s %s' % (r.width, r.height, r.channel, (w, h, k) == (4, 3, 'server')))")
    proc = subprocess.run([pythons[0], "-c", code, str(REPO / "gimp_plugin")], capture_output=True, text=True)
    assert proc.stdout.split() == ["4", "3", "server", "True"], proc.stderr
