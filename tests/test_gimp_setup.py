"""liif-jax gimp install / uninstall / doctor, on fake GIMP profile layouts per platform."""

import json
import stat
import sys
from pathlib import Path

import pytest

from liif_jax import gimp_setup
from liif_jax.cli import main


@pytest.mark.parametrize("platform,env,expected", [
    ("linux", {}, [".config/GIMP/3.0/plug-ins", ".var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins",
                   "snap/gimp/current/.config/GIMP/3.0/plug-ins", ".config/GIMP/2.10/plug-ins"]),
    ("linux", {"XDG_CONFIG_HOME": "XDG"}, ["XDG/GIMP/3.0/plug-ins", "XDG/GIMP/2.10/plug-ins"]),
    ("darwin", {}, ["Library/Application Support/GIMP/3.0/plug-ins",
                    "Library/Application Support/GIMP/2.10/plug-ins"]),
    ("win32", {"APPDATA": "AppData/Roaming"}, ["AppData/Roaming/GIMP/3.0/plug-ins",
                                               "AppData/Roaming/GIMP/2.10/plug-ins"]),
])
def test_candidate_folders_per_platform(tmp_path, platform, env, expected):
    env = {k: str(tmp_path / v) for k, v in env.items()}
    dirs = [str(d.path.relative_to(tmp_path)) for d in gimp_setup.candidate_dirs(platform, env, tmp_path)]
    for e in expected:
        assert e in dirs


@pytest.fixture
def fake_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("LIIF_JAX_PYTHON", raising=False)
    monkeypatch.setattr(gimp_setup.Path, "home", classmethod(lambda cls: tmp_path))
    return tmp_path


def test_install_uninstall_linux_profiles(fake_home, capsys):
    (fake_home / ".config/GIMP/3.0").mkdir(parents=True)
    (fake_home / ".config/GIMP/2.10").mkdir(parents=True)
    assert main(["gimp", "install"]) == 0
    out = capsys.readouterr().out
    assert "installed for GIMP 3.0" in out and "installed for GIMP 2.10" in out
    g3 = fake_home / ".config/GIMP/3.0/plug-ins/liif_upscale"
    plugin3 = g3 / "liif_upscale.py"
    assert plugin3.read_text().startswith("#!/usr/bin/env python3")
    assert stat.S_IMODE(plugin3.stat().st_mode) == 0o755
    assert (g3 / "liif_bridge_client.py").exists()
    config = json.loads((g3 / "liif_jax_gimp.json").read_text())
    assert config["python"] == sys.executable and Path(config["python"]).is_absolute()
    g2 = fake_home / ".config/GIMP/2.10/plug-ins"
    assert (g2 / "liif_upscale.py").read_text().startswith("#!/usr/bin/env python2")
    assert stat.S_IMODE((g2 / "liif_upscale.py").stat().st_mode) == 0o755
    assert json.loads((g2 / "liif_jax_gimp.json").read_text())["python"] == sys.executable
    assert main(["gimp", "uninstall"]) == 0
    assert not g3.exists() and not (g2 / "liif_upscale.py").exists() and not (g2 / "liif_jax_gimp.json").exists()


def test_install_honours_liif_jax_python_and_skips_sandboxed_profiles(fake_home, monkeypatch, capsys):
    (fake_home / ".var/app/org.gimp.GIMP/config/GIMP/3.0").mkdir(parents=True)
    (fake_home / ".config/GIMP/3.0").mkdir(parents=True)
    monkeypatch.setenv("LIIF_JAX_PYTHON", "/opt/liif/bin/python")
    assert main(["gimp", "install"]) == 0
    out = capsys.readouterr().out
    assert "skipped GIMP 3.0 (flatpak)" in out and "sandbox cannot start liif-jax" in out
    assert not (fake_home / ".var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins").exists()
    config = fake_home / ".config/GIMP/3.0/plug-ins/liif_upscale/liif_jax_gimp.json"
    assert json.loads(config.read_text())["python"] == "/opt/liif/bin/python"


def test_only_a_sandboxed_profile_is_refused_in_one_line(fake_home, capsys):
    (fake_home / "snap/gimp/current/.config/GIMP/3.2").mkdir(parents=True)
    assert main(["gimp", "install"]) == 1
    err = capsys.readouterr().err
    assert "only a sandboxed GIMP profile found (GIMP 3.2 (snap)" in err and len(err.strip().splitlines()) == 1
    assert not (fake_home / "snap/gimp/current/.config/GIMP/3.2/plug-ins").exists()


def test_every_3x_and_2_10_found_newest_first(tmp_path):
    root = tmp_path / ".config/GIMP"
    for v in ("2.10", "3.0", "3.2", "3.10", "2.8", "2.99", "4.0", "3.x", "notes"):
        (root / v).mkdir(parents=True)
    (root / "3.4").write_text("a file, not a profile")
    dirs = [d for d in gimp_setup.candidate_dirs("linux", {}, tmp_path) if d.path.parent.is_dir()]
    assert [d.gimp for d in dirs] == ["3.10", "3.2", "3.0", "2.10"]  # numeric, not string order
    flatpak = tmp_path / ".var/app/org.gimp.GIMP/config/GIMP/3.2"
    flatpak.mkdir(parents=True)
    dirs = [(d.gimp, d.sandbox) for d in gimp_setup.candidate_dirs("linux", {}, tmp_path) if d.path.parent.is_dir()]
    assert dirs == [("3.10", None), ("3.2", None), ("3.2", "flatpak"), ("3.0", None), ("2.10", None)]
    win = [d.gimp for d in gimp_setup.candidate_dirs("win32", {"APPDATA": str(tmp_path / ".config")}, tmp_path)]
    assert win == ["3.10", "3.2", "3.0", "2.10"]


def test_install_into_every_3x_and_2_10_then_uninstall(fake_home, capsys):
    for v in ("3.0", "3.2", "2.10"):
        (fake_home / ".config/GIMP" / v).mkdir(parents=True)
    assert main(["gimp", "install"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["installed for GIMP 3.2", "installed for GIMP 3.0",
                                                          "installed for GIMP 2.10"]
    g3 = [fake_home / ".config/GIMP" / v / "plug-ins/liif_upscale/liif_upscale.py" for v in ("3.0", "3.2")]
    assert g3[0].read_bytes() == g3[1].read_bytes() == (gimp_setup._source("liif_upscale/liif_upscale.py")).read_bytes()
    assert (fake_home / ".config/GIMP/2.10/plug-ins/liif_upscale.py").read_text().startswith("#!/usr/bin/env python2")
    assert main(["gimp", "uninstall"]) == 0
    assert sum(line.startswith("removed") for line in capsys.readouterr().out.splitlines()) == 2 + 3
    assert not any(p.exists() for p in g3)


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_install_into_macos_and_windows_layouts(tmp_path, platform):
    env = {"APPDATA": str(tmp_path / "Roaming")}
    for d in gimp_setup.candidate_dirs(platform, env, tmp_path):
        d.path.parent.mkdir(parents=True)
    dirs = [d for d in gimp_setup.candidate_dirs(platform, env, tmp_path) if d.path.parent.is_dir()]
    assert {d.gimp for d in dirs} == {"3.0", "2.10"}
    for d in dirs:
        files = gimp_setup.install_into(d, "C:/Python/python.exe" if platform == "win32" else "/usr/bin/python3")
        assert all(f.exists() for f in files) and d.installed
        assert gimp_setup.uninstall_from(d) and not d.installed


def test_install_without_gimp_profile_says_what_to_do(fake_home, capsys):
    assert main(["gimp", "install"]) == 1
    err = capsys.readouterr().err
    assert "no GIMP 3.x or 2.10 profile found; start GIMP once" in err and len(err.strip().splitlines()) == 1


def test_doctor_verdicts(fake_home, capsys):
    assert main(["gimp", "doctor"]) == 1
    out = capsys.readouterr().out
    assert "verdict:      PROBLEM: no GIMP 3.x or 2.10 profile found" in out
    # Only a Snap profile: the plug-in cannot work there (issue 11, item 9).
    (fake_home / "snap/gimp/current/.config/GIMP/3.0").mkdir(parents=True)
    assert main(["gimp", "doctor"]) == 1
    assert "PROBLEM: only a sandboxed GIMP profile found (GIMP 3.0 (snap)" in capsys.readouterr().out
    # A Flatpak profile without its set-up: not OK either.
    (fake_home / ".var/app/org.gimp.GIMP/config/GIMP/3.0").mkdir(parents=True)
    assert main(["gimp", "doctor"]) == 1
    assert "plug-in not installed for GIMP 3.0 (flatpak)" in capsys.readouterr().out
    (fake_home / ".config/GIMP/3.0").mkdir(parents=True)
    assert main(["gimp", "doctor"]) == 1
    assert "plug-in not installed for GIMP 3.0" in capsys.readouterr().out
    main(["gimp", "install"])
    capsys.readouterr()
    assert main(["gimp", "doctor"]) == 0
    out = capsys.readouterr().out
    bundled = gimp_setup.Path(gimp_setup.__file__).parent / "data" / "edsr-baseline-liif.safetensors"
    for needed in ["interpreter:", "GIMP:", "plug-ins:     GIMP 3.0 ", "[installed]",
                   f"weights:      bundled {bundled} (converted from the authors' edsr-baseline-liif.pth",
                   f"upscale:      GIMP 3.0: 4x3 -> 8x6 through {sys.executable} in ",
                   "JAX devices:", "verdict:      OK"]:
        assert needed in out, needed
    # GIMP 3.2 started once since (a new profile folder): not OK until installed there too.
    (fake_home / ".config/GIMP/3.2").mkdir(parents=True)
    assert main(["gimp", "doctor"]) == 1
    assert "plug-in not installed for GIMP 3.2" in capsys.readouterr().out
    main(["gimp", "install"])
    capsys.readouterr()
    # An interpreter that exists but cannot run liif-jax: the test upscale says so.
    broken = fake_home / "broken-python"
    broken.write_text("#!/bin/sh\necho 'No module named liif_jax' >&2\nexit 1\n")
    broken.chmod(0o755)
    config = fake_home / ".config/GIMP/3.2/plug-ins/liif_upscale/liif_jax_gimp.json"
    config.write_text(json.dumps({"python": str(broken)}))
    assert main(["gimp", "doctor"]) == 1
    out = capsys.readouterr().out
    assert f"GIMP 3.2: a test upscale with {broken} and the bundled weights failed " \
           "(liif-jax worker failed: No module named liif_jax)" in out
    assert "upscale:      GIMP 3.0: 4x3 -> 8x6" in out  # the other profile still works
    config.write_text(json.dumps({"python": "/gone/python"}))
    assert main(["gimp", "doctor"]) == 1
    assert "points at a missing interpreter /gone/python" in capsys.readouterr().out
    # The plug-in file without its executable bit: GIMP would skip it silently.
    (config.parent / "liif_upscale.py").chmod(0o644)
    assert "liif_upscale.py is not executable (GIMP skips it)" in (main(["gimp", "doctor"]), capsys.readouterr().out)[1]


@pytest.fixture
def systemctl(monkeypatch):
    """systemctl --user, faked: records its calls; ``answer`` says whether a user session runs."""
    calls, answer = [], {"ok": False}

    def fake(*args):
        calls.append(args)
        return (True, "active") if answer["ok"] else (False, "Failed to connect to bus: No medium found")
    monkeypatch.setattr(gimp_setup, "_systemctl", fake)
    return calls, answer


def test_only_a_flatpak_profile_gets_the_socket_activated_worker(fake_home, monkeypatch, systemctl, capsys):
    calls, answer = systemctl
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(fake_home / "run"))
    (fake_home / ".var/app/org.gimp.GIMP/config/GIMP/3.0").mkdir(parents=True)
    assert main(["gimp", "install"]) == 0  # no --flatpak: chosen by itself
    out = capsys.readouterr().out
    folder = fake_home / ".var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins/liif_upscale"
    config = json.loads((folder / "liif_jax_gimp.json").read_text())
    assert config["socket"] == "$XDG_RUNTIME_DIR/app/org.gimp.GIMP/liif-jax.sock" and config["start_server"] is False
    units = fake_home / ".config/systemd/user"
    sock, service = (units / "liif-jax-gimp.socket").read_text(), (units / "liif-jax-gimp.service").read_text()
    assert "ListenStream=%t/app/org.gimp.GIMP/liif-jax.sock" in sock and "SocketMode=0600" in sock
    assert "DirectoryMode=0700" in sock
    assert f"ExecStart={sys.executable} -m liif_jax serve --socket %t/app/org.gimp.GIMP/liif-jax.sock" in service
    # No systemd user session: said, with the one command that starts the worker by hand.
    by_hand = f"liif-jax serve --socket {fake_home}/run/app/org.gimp.GIMP/liif-jax.sock"
    assert f"no systemd user session (Failed to connect to bus: No medium found): before using the filter, " \
           f"start the worker by hand: {by_hand}" in out
    assert calls == [("daemon-reload",)]
    assert main(["gimp", "doctor"]) == 1
    out = capsys.readouterr().out
    assert "no systemd user socket liif-jax-gimp.socket listening" in out and by_hand in out
    assert "a test upscale" in out and "no liif-jax worker answers at" in out  # nothing runs there
    # With a user session: enabled and started at once.
    answer["ok"] = True
    calls.clear()
    assert main(["gimp", "install", "--flatpak"]) == 0
    assert "the worker starts on the first upscale" in capsys.readouterr().out
    assert calls == [("daemon-reload",), ("enable", "--now", "liif-jax-gimp.socket")]
    calls.clear()
    assert main(["gimp", "uninstall"]) == 0
    assert not (units / "liif-jax-gimp.socket").exists() and not (units / "liif-jax-gimp.service").exists()
    assert not folder.exists()
    assert ("disable", "--now", "liif-jax-gimp.socket") in calls


def test_flatpak_needs_its_profile_and_native_profiles_say_how(fake_home, systemctl, capsys):
    (fake_home / ".config/GIMP/3.0").mkdir(parents=True)
    assert main(["gimp", "install", "--flatpak"]) == 1
    assert "--flatpak: no Flatpak GIMP 3 profile found" in capsys.readouterr().err
    (fake_home / ".var/app/org.gimp.GIMP/config/GIMP/3.2").mkdir(parents=True)
    assert main(["gimp", "install"]) == 0  # native first; the Flatpak one is told how
    assert "skipped GIMP 3.2 (flatpak)" in capsys.readouterr().out
    assert main(["gimp", "doctor", "--flatpak"]) != 0
    assert "--flatpak goes with 'gimp install'" in capsys.readouterr().err


def test_doctor_upscales_through_the_flatpak_socket(fake_home, monkeypatch, systemctl, capsys, tmp_path):
    # A worker answering at the socket (started here as systemd would on the first
    # connection): doctor's test upscale goes through it, the verdict is OK.
    import subprocess
    import time

    calls, answer = systemctl
    answer["ok"] = True
    runtime = tmp_path / "run"
    folder = runtime / "app/org.gimp.GIMP"
    folder.mkdir(parents=True)
    runtime.chmod(0o700)
    folder.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    (fake_home / ".var/app/org.gimp.GIMP/config/GIMP/3.0").mkdir(parents=True)
    assert main(["gimp", "install"]) == 0
    capsys.readouterr()
    sock = folder / "liif-jax.sock"
    server = subprocess.Popen([sys.executable, "-m", "liif_jax", "serve", "--socket", str(sock),
                               "--idle-timeout", "120"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not sock.exists():
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        assert main(["gimp", "doctor"]) == 0
        out = capsys.readouterr().out
        assert f"upscale:      GIMP 3.0 (flatpak): 4x3 -> 8x6 through the worker at {sock}" in out
        assert "worker:       GIMP 3.0 (flatpak): started on demand by systemd" in out
        assert "verdict:      OK" in out
    finally:
        server.terminate()
        server.wait(timeout=30)
