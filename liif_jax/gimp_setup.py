"""``liif-jax gimp install | uninstall | doctor``: put the plug-in where GIMP looks for it.

GIMP 3 loads ``<plug-ins>/liif_upscale/liif_upscale.py`` (folder and file named alike,
executable); GIMP 2.10 loads executable files directly in ``<plug-ins>``. Next to the plug-in
we write ``liif_jax_gimp.json`` with the absolute path of this interpreter (or
``$LIIF_JAX_PYTHON``), so the plug-in -- which runs in GIMP's own Python and never imports JAX
-- knows which Python has liif-jax. Plug-in folders per platform:

- Linux:   $XDG_CONFIG_HOME (~/.config)/GIMP/{3.0,2.10}/plug-ins; Flatpak
  ~/.var/app/org.gimp.GIMP/config/GIMP/...; Snap ~/snap/gimp/current/.config/GIMP/...
- macOS:   ~/Library/Application Support/GIMP/{3.0,2.10}/plug-ins
- Windows: %APPDATA%/GIMP/{3.0,2.10}/plug-ins
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from liif_jax.errors import LiifError

PLUGIN = "liif_upscale"
CLIENT = "liif_bridge_client.py"
CONFIG = "liif_jax_gimp.json"


@dataclass(frozen=True)
class PluginDir:
    gimp: str  # "3.0" or "2.10"
    path: Path  # the plug-ins folder
    sandbox: str | None = None  # "flatpak" / "snap": cannot run a host interpreter

    @property
    def installed(self) -> bool:
        target = self.path / PLUGIN / f"{PLUGIN}.py" if self.gimp == "3.0" else self.path / f"{PLUGIN}.py"
        return target.exists()


def candidate_dirs(platform: str | None = None, env=None, home: Path | None = None) -> list[PluginDir]:
    """Every place a GIMP 3.0 or 2.10 on this platform reads user plug-ins from."""
    platform = platform or sys.platform
    env = os.environ if env is None else env
    home = Path(home or Path.home())
    out = []
    for version in ("3.0", "2.10"):
        if platform.startswith("win"):
            appdata = env.get("APPDATA")
            if appdata:
                out.append(PluginDir(version, Path(appdata) / "GIMP" / version / "plug-ins"))
        elif platform == "darwin":
            out.append(PluginDir(version, home / "Library" / "Application Support" / "GIMP" / version / "plug-ins"))
        else:
            config = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
            out.append(PluginDir(version, config / "GIMP" / version / "plug-ins"))
            out.append(PluginDir(version, home / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP" / version / "plug-ins", "flatpak"))
            out.append(PluginDir(version, home / "snap" / "gimp" / "current" / ".config" / "GIMP" / version / "plug-ins", "snap"))
    return out


def present_dirs(**kwargs) -> list[PluginDir]:
    """Candidates whose GIMP profile exists (GIMP creates it on its first start)."""
    return [d for d in candidate_dirs(**kwargs) if d.path.parent.is_dir()]


def _source(name: str) -> Path:
    return Path(str(resources.files("gimp_plugin") / name))


def _copy(src: Path, dst: Path, executable: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    mode = 0o755 if executable else 0o644
    os.chmod(dst, mode)


def install_into(d: PluginDir, python: str, weights: str | None = None) -> list[Path]:
    """Copy the plug-in for ``d.gimp`` into ``d`` and write its config; returns the files.
    ``weights``: an absolute weight-file path the filter uses instead of the bundled one."""
    if d.gimp == "3.0":
        folder = d.path / PLUGIN
        files = [(f"{PLUGIN}/{PLUGIN}.py", folder / f"{PLUGIN}.py", True),
                 (CLIENT, folder / CLIENT, False)]
        config = folder / CONFIG
    else:
        folder = d.path
        files = [(f"gimp2/{PLUGIN}.py", folder / f"{PLUGIN}.py", True), (CLIENT, folder / CLIENT, False)]
        config = folder / CONFIG
    for src, dst, executable in files:
        _copy(_source(src), dst, executable)
    from liif_jax import __version__

    config.write_text(json.dumps({"python": python, "weights": weights, "start_server": True,
                                  "liif_jax_version": __version__}, indent=2) + "\n")
    return [dst for _, dst, _ in files] + [config]


def uninstall_from(d: PluginDir) -> list[Path]:
    removed = []
    if d.gimp == "3.0":
        folder = d.path / PLUGIN
        if (folder / CONFIG).exists() or (folder / f"{PLUGIN}.py").exists():
            shutil.rmtree(folder)
            removed.append(folder)
    else:
        for name in (f"{PLUGIN}.py", CLIENT, CONFIG):
            if (d.path / name).exists():
                (d.path / name).unlink()
                removed.append(d.path / name)
    return removed


def interpreter() -> str:
    return os.environ.get("LIIF_JAX_PYTHON") or sys.executable


def checked_weights(weights) -> str:
    """The absolute path of a weight file the filter is to use, after loading it once here:
    a wrong file fails now, in the terminal, not later inside GIMP."""
    from liif_jax.weights import load_model

    path = Path(weights).expanduser().resolve()
    load_model(path)  # CheckpointError (one line) if missing, unreadable or not a LIIF model
    return str(path)


def run_install(out=print, weights=None) -> int:
    weights = checked_weights(weights) if weights is not None else None
    dirs = present_dirs()
    if not dirs:
        raise LiifError("no GIMP 3.0 or 2.10 profile found; start GIMP once, then run this again "
                           "(looked in: " + ", ".join(str(d.path.parent) for d in candidate_dirs()) + ")")
    python = interpreter()
    for d in dirs:
        files = install_into(d, python, weights)
        note = ""
        if d.sandbox:
            note = (f" -- note: {d.sandbox} GIMP cannot run programs outside its sandbox, so it "
                    f"cannot reach {python}; use a non-{d.sandbox} GIMP")
        out(f"installed for GIMP {d.gimp}: {files[0].parent}{note}")
    out(f"the plug-in will run liif-jax with {python}; restart GIMP, then use Image > Upscale (LIIF)...")
    if weights:
        out(f"with the weights {weights} (each upscale loads them in a fresh worker; "
            "'liif-jax gimp install' without --weights goes back to the bundled ones)")
    return 0


def run_uninstall(out=print) -> int:
    removed = [p for d in candidate_dirs() for p in uninstall_from(d)]
    for p in removed:
        out(f"removed {p}")
    if not removed:
        out("nothing to remove: the plug-in is not installed")
    return 0


def _gimp_version() -> str:
    import subprocess

    for exe in ("gimp-3.0", "gimp-console-3.0", "gimp", "gimp-2.10"):
        path = shutil.which(exe)
        if path:
            try:
                proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
                return proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else f"{exe} (no version)"
            except (OSError, subprocess.TimeoutExpired):
                continue
    return "not found on PATH (fine if GIMP is installed elsewhere)"


def run_doctor(out=print) -> int:
    from liif_jax import __version__

    problems = []
    out(f"liif-jax:     {__version__} ({Path(__file__).parent})")
    out(f"interpreter:  {interpreter()}")
    out(f"GIMP:         {_gimp_version()}")
    dirs = present_dirs()
    installed = [d for d in dirs if d.installed]
    for d in candidate_dirs():
        state = "installed" if d.installed else ("profile found" if d in dirs else "absent")
        if d.installed or d in dirs:
            out(f"plug-ins:     GIMP {d.gimp} {d.path} [{state}]{' (' + d.sandbox + ')' if d.sandbox else ''}")
    if not dirs:
        problems.append("no GIMP profile found (start GIMP once)")
    elif not installed:
        problems.append("plug-in not installed: run 'liif-jax gimp install'")
    for d in installed:
        folder = d.path / PLUGIN if d.gimp == "3.0" else d.path
        try:
            config = json.loads((folder / CONFIG).read_text())
        except (OSError, ValueError):
            problems.append(f"{folder / CONFIG} is missing or unreadable: run 'liif-jax gimp install'")
            continue
        if not Path(config.get("python") or "").exists():
            problems.append(f"GIMP {d.gimp} plug-in points at a missing interpreter {config.get('python')}: "
                            "run 'liif-jax gimp install' again")
        if config.get("weights"):
            try:
                from liif_jax.weights import load_model

                model = load_model(config["weights"])
                kind = model.spec["args"]["encoder_spec"]["name"]
                out(f"weights:      GIMP {d.gimp} filter uses {config['weights']} ({kind}-liif)")
            except Exception as exc:  # doctor reports, never crashes
                problems.append(f"GIMP {d.gimp} plug-in's weights {config['weights']} do not load "
                                f"({exc}): run 'liif-jax gimp install --weights FILE' again")
        if not os.access(folder / f"{PLUGIN}.py", os.X_OK) or not stat.S_IMODE((folder / f"{PLUGIN}.py").stat().st_mode) & 0o100:
            problems.append(f"{folder / (PLUGIN + '.py')} is not executable")
    try:
        from liif_jax.weights import load_model

        model = load_model()
        out(f"weights:      bundled {model.name} (sha256 {model.metadata.get('source_sha256', '?')[:12]}...)")
    except Exception as exc:  # doctor reports, never crashes
        problems.append(f"bundled weights do not load: {exc}")
    try:
        import jax

        out(f"JAX devices:  {', '.join(str(d) for d in jax.devices())} (jax {jax.__version__})")
    except Exception as exc:
        problems.append(f"JAX does not start: {exc}")
    verdict = "OK: the GIMP filter should work" if not problems else "PROBLEM: " + "; ".join(problems)
    out(f"verdict:      {verdict}")
    return 0 if not problems else 1
