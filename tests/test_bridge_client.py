"""The GIMP plug-ins' bridge client (stdlib, Python 2.7/3 subset) against the real worker:
subprocess fallback, the warm server it starts, concurrency, cancel, errors, 2.7 syntax."""

import os
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import liif_jax
from conftest import REPO, TINY

sys.path.insert(0, str(REPO / "gimp_plugin"))
import liif_bridge_client as client_mod  # noqa: E402


def rgba_u8(h=10, w=12, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)


@pytest.fixture
def private_socket(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    path = folder / "worker.sock"
    monkeypatch.setenv("LIIF_JAX_SOCKET", str(path))
    yield path
    # Stop a server this test started (it would exit on its own after the idle timeout).
    subprocess.run(["pkill", "-f", "liif_jax serve"], check=False)
    for _ in range(50):
        if not path.exists():
            break
        time.sleep(0.1)


def test_socket_path_rules_match_the_server(monkeypatch):
    from liif_jax.bridge.server import socket_path

    monkeypatch.delenv("LIIF_JAX_SOCKET", raising=False)
    for runtime in ["/run/user/1000", None]:
        if runtime:
            monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
        else:
            monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        assert client_mod.socket_path() == str(socket_path())
    monkeypatch.setenv("LIIF_JAX_SOCKET", "/x/y.sock")
    assert client_mod.socket_path() == str(socket_path()) == "/x/y.sock"


def test_subprocess_fallback_round_trip_with_weights(tiny_model):
    client = client_mod.BridgeClient(sys.executable, weights=str(TINY / "tiny-liif.pth"), start_server=False)
    pixels = rgba_u8()
    seen = []
    w, h, data, compute_s, kind = client.upscale(12, 10, "RGBA", "u8", pixels.tobytes(), scale=2.0,
                                                 progress=seen.append)
    assert (w, h, kind) == (24, 20, "subprocess") and compute_s > 0
    out = np.frombuffer(data, np.uint8).reshape(20, 24, 4)
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
    with pytest.raises(client_mod.BridgeError, match="pip install liif-jax.*liif-jax gimp install"):
        client_mod.BridgeClient.from_config(str(tmp_path))
    (tmp_path / client_mod.CONFIG_NAME).write_text('{"python": "/nowhere/python"}')
    with pytest.raises(client_mod.BridgeError, match="/nowhere/python does not exist"):
        client_mod.BridgeClient.from_config(str(tmp_path))
    monkeypatch.setenv("LIIF_JAX_PYTHON", sys.executable)
    assert client_mod.BridgeClient.from_config(str(tmp_path)).python == sys.executable


def test_cancel_through_the_subprocess():
    client = client_mod.BridgeClient(sys.executable, weights=str(TINY / "tiny-liif.pth"), start_server=False)
    start = time.monotonic()
    with pytest.raises(client_mod.Cancelled):
        client.upscale(48, 48, "RGBA", "u8", rgba_u8(48, 48).tobytes(), scale=80.0,
                       cancelled=lambda: True)
    assert time.monotonic() - start < 60


def test_warm_server_started_on_first_use_then_reused(private_socket, real_model):
    client = client_mod.BridgeClient(sys.executable)
    statuses = []
    pixels = rgba_u8(16, 16)
    first = time.monotonic()
    w, h, data, _, kind = client.upscale(16, 16, "RGBA", "u8", pixels.tobytes(), scale=2.0,
                                         status=statuses.append)
    first = time.monotonic() - first
    assert kind == "server" and (w, h) == (32, 32)
    assert any("Starting liif-jax" in s for s in statuses)
    mode = stat.S_IMODE(os.stat(private_socket).st_mode)
    assert mode == 0o600 and stat.S_ISSOCK(os.stat(private_socket).st_mode)
    assert stat.S_IMODE(os.stat(private_socket.parent).st_mode) == 0o700
    expected = liif_jax.upscale(pixels, scale=2.0, model=real_model, dtype=np.uint8)
    assert np.abs(np.frombuffer(data, np.uint8).reshape(32, 32, 4).astype(int) - expected).max() <= 1
    # Twenty more in a row: no restart, no reload (each far faster than the first).
    for i in range(20):
        t = time.monotonic()
        _, _, _, _, kind = client.upscale(16, 16, "RGBA", "u8", rgba_u8(16, 16, i).tobytes(),
                                          scale=2.0, status=statuses.append)
        assert kind == "server"
        assert time.monotonic() - t < first
    assert sum("Starting liif-jax" in s for s in statuses) == 1


def test_two_clients_at_once(private_socket):
    client = client_mod.BridgeClient(sys.executable)
    client.upscale(16, 16, "RGBA", "u8", rgba_u8(16, 16).tobytes(), scale=2.0)  # starts it
    results, errors = {}, []

    def one(i):
        try:
            results[i] = client_mod.BridgeClient(sys.executable).upscale(
                20, 18, "RGBA", "u8", rgba_u8(18, 20, i).tobytes(), scale=1.5)
        except Exception as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert all(results[i][4] == "server" and results[i][:2] == (30, 27) for i in range(2))


def test_plugin_files_parse_as_python_27():
    files = sorted(str(p) for p in (REPO / "gimp_plugin").rglob("*.py")
                   if "liif_upscale/liif_upscale.py" not in str(p))  # the GIMP 3 plug-in is Python 3
    assert any(f.endswith("liif_bridge_client.py") for f in files)
    vermin = os.path.join(os.path.dirname(sys.executable), "vermin")
    proc = subprocess.run([vermin, "--no-tips", "--violations", "-t=2.7-", "-t=3.0-", *files],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
