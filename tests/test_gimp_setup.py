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


def test_install_honours_liif_jax_python_and_warns_about_flatpak(fake_home, monkeypatch, capsys):
    (fake_home / ".var/app/org.gimp.GIMP/config/GIMP/3.0").mkdir(parents=True)
    monkeypatch.setenv("LIIF_JAX_PYTHON", "/opt/liif/bin/python")
    assert main(["gimp", "install"]) == 0
    out = capsys.readouterr().out
    assert "flatpak GIMP cannot run programs outside its sandbox" in out
    config = fake_home / ".var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins/liif_upscale/liif_jax_gimp.json"
    assert json.loads(config.read_text())["python"] == "/opt/liif/bin/python"


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
    assert "no GIMP 3.0 or 2.10 profile found; start GIMP once" in err and len(err.strip().splitlines()) == 1


def test_doctor_verdicts(fake_home, capsys):
    assert main(["gimp", "doctor"]) == 1
    out = capsys.readouterr().out
    assert "verdict:      PROBLEM: no GIMP profile found" in out
    (fake_home / ".config/GIMP/3.0").mkdir(parents=True)
    assert main(["gimp", "doctor"]) == 1
    assert "plug-in not installed: run 'liif-jax gimp install'" in capsys.readouterr().out
    main(["gimp", "install"])
    capsys.readouterr()
    assert main(["gimp", "doctor"]) == 0
    out = capsys.readouterr().out
    for needed in ["interpreter:", "GIMP:", "plug-ins:", "[installed]", "weights:      bundled edsr-baseline-liif.pth",
                   "JAX devices:", "verdict:      OK"]:
        assert needed in out
    config = fake_home / ".config/GIMP/3.0/plug-ins/liif_upscale/liif_jax_gimp.json"
    config.write_text(json.dumps({"python": "/gone/python"}))
    assert main(["gimp", "doctor"]) == 1
    assert "points at a missing interpreter /gone/python" in capsys.readouterr().out
