"""``liif-jax gimp install | uninstall | doctor``: put the plug-in where GIMP looks for it.

GIMP 3 loads ``<plug-ins>/liif_upscale/liif_upscale.py`` (folder and file named alike,
executable); GIMP 2.10 loads executable files directly in ``<plug-ins>``. Next to the plug-in
we write ``liif_jax_gimp.json`` with the absolute path of this interpreter (or
``$LIIF_JAX_PYTHON``), so the plug-in -- which runs in GIMP's own Python and never imports JAX
-- knows which Python has liif-jax. Every GIMP 3.x keeps its profile in a folder named after
its minor version (3.0, 3.2, ...), all loading the same plug-in; 2.10 gets its own variant.
Profile roots per platform (each holding ``<version>/plug-ins``):

- Linux:   $XDG_CONFIG_HOME (~/.config)/GIMP; Flatpak ~/.var/app/org.gimp.GIMP/config/GIMP;
  Snap ~/snap/gimp/current/.config/GIMP
- macOS:   ~/Library/Application Support/GIMP
- Windows: %APPDATA%/GIMP
"""

from __future__ import annotations

import json
import os
import re
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


# Profile folders we install into: every GIMP 3.x (one plug-in for all of them) and 2.10.
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)$")
# Listed even when absent (doctor and the "looked in" message name them): where GIMP 3.0 and
# 2.10 would make their profiles.
_DEFAULT_VERSIONS = ("3.0", "2.10")


def _version_key(version: str) -> tuple[int, int]:
    major, minor = version.split(".")
    return int(major), int(minor)


@dataclass(frozen=True)
class PluginDir:
    gimp: str  # the profile's version folder: "3.2", "3.0", "2.10", ...
    path: Path  # the plug-ins folder
    sandbox: str | None = None  # "flatpak" / "snap": cannot run a host interpreter

    @property
    def major(self) -> int:
        return _version_key(self.gimp)[0]

    @property
    def folder(self) -> Path:
        """Where our files go: GIMP 3 wants a folder named like the plug-in, 2.10 loads the
        files in plug-ins itself."""
        return self.path / PLUGIN if self.major >= 3 else self.path

    @property
    def installed(self) -> bool:
        return (self.folder / f"{PLUGIN}.py").exists()

    @property
    def label(self) -> str:
        return f"GIMP {self.gimp}" + (f" ({self.sandbox})" if self.sandbox else "")


def profile_roots(platform: str | None = None, env=None, home: Path | None = None) -> list[tuple[Path, str | None]]:
    """(folder holding GIMP's <version> profile folders, sandbox or None), native first."""
    platform = platform or sys.platform
    env = os.environ if env is None else env
    home = Path(home or Path.home())
    if platform.startswith("win"):
        appdata = env.get("APPDATA")
        return [(Path(appdata) / "GIMP", None)] if appdata else []
    if platform == "darwin":
        return [(home / "Library" / "Application Support" / "GIMP", None)]
    config = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    return [(config / "GIMP", None),
            (home / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP", "flatpak"),
            (home / "snap" / "gimp" / "current" / ".config" / "GIMP", "snap")]


def _wanted(version: str) -> bool:
    m = _VERSION_RE.match(version)
    return bool(m) and (m.group(1) == "3" or version == "2.10")


def candidate_dirs(platform: str | None = None, env=None, home: Path | None = None) -> list[PluginDir]:
    """Every plug-ins folder of a GIMP 3.x or 2.10 on this platform, newest GIMP first (for
    one version: native, then Flatpak, then Snap): the profile folders found by scanning each
    root, plus where 3.0 and 2.10 would make theirs."""
    out = []
    for root, sandbox in profile_roots(platform, env, home):
        versions = set(_DEFAULT_VERSIONS)
        try:
            versions.update(e.name for e in root.iterdir() if _wanted(e.name) and e.is_dir())
        except OSError:  # no such root (or unreadable): only the defaults
            pass
        out += [PluginDir(v, root / v / "plug-ins", sandbox) for v in sorted(versions, key=_version_key, reverse=True)]
    # A stable sort keeps the roots' order (native first) within one version.
    return sorted(out, key=lambda d: _version_key(d.gimp), reverse=True)


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


def install_into(d: PluginDir, python: str, weights: str | None = None, socket: str | None = None) -> list[Path]:
    """Copy the plug-in for ``d.gimp`` into ``d`` and write its config; returns the files.
    ``weights``: an absolute weight-file path the filter uses instead of the bundled one.
    ``socket``: the only worker the plug-in may use (as GIMP sees its path); it never starts one."""
    folder = d.folder
    variant = f"{PLUGIN}/{PLUGIN}.py" if d.major >= 3 else f"gimp2/{PLUGIN}.py"
    files = [(variant, folder / f"{PLUGIN}.py", True), (CLIENT, folder / CLIENT, False)]
    config = folder / CONFIG
    for src, dst, executable in files:
        _copy(_source(src), dst, executable)
    from liif_jax import __version__

    settings = {"python": python, "weights": weights, "start_server": True, "liif_jax_version": __version__}
    if socket:
        settings.update(socket=socket, start_server=False)
    config.write_text(json.dumps(settings, indent=2) + "\n")
    return [dst for _, dst, _ in files] + [config]


def uninstall_from(d: PluginDir) -> list[Path]:
    removed = []
    if d.major >= 3:
        folder = d.folder
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


def run_install(out=print, weights=None, flatpak=False) -> int:
    weights = checked_weights(weights) if weights is not None else None
    dirs = present_dirs()
    flatpaks = [d for d in dirs if d.sandbox == "flatpak" and d.major >= 3]
    if flatpak and not flatpaks:
        raise LiifError("--flatpak: no Flatpak GIMP 3 profile found; start the Flatpak GIMP once "
                        f"(it makes {profile_roots('linux')[1][0]}/3.x), then run this again")
    if not dirs:
        raise LiifError("no GIMP 3.x or 2.10 profile found; start GIMP once, then run this again "
                        "(looked in: " + ", ".join(str(root) for root, _ in profile_roots()) + ")")
    native = [d for d in dirs if not d.sandbox]
    if not native and not flatpaks:
        raise LiifError(_sandbox_only(dirs))
    python = interpreter()
    if flatpak or not native:  # only a Flatpak GIMP here: it gets the socket-activated worker
        return _install_flatpak(flatpaks, python, weights, out)
    for d in native:
        files = install_into(d, python, weights)
        out(f"installed for GIMP {d.gimp}: {files[0].parent}")
    for d in dirs:
        if d.sandbox:
            how = " (for it: 'liif-jax gimp install --flatpak')" if d in flatpaks else ""
            out(f"skipped {d.label} at {d.path}: {SANDBOX_REASON}{how}")
    out(f"the plug-in will run liif-jax with {python}; restart GIMP, then use Image > Upscale (LIIF)...")
    if weights:
        out(f"with the weights {weights} (each upscale loads them in a fresh worker; "
            "'liif-jax gimp install' without --weights goes back to the bundled ones)")
    return 0


SANDBOX_REASON = "its sandbox cannot start liif-jax's Python on this computer"


def _sandbox_only(dirs) -> str:
    found = ", ".join(f"{d.label} at {d.path.parent}" for d in dirs)
    return (f"only a sandboxed GIMP profile found ({found}): {SANDBOX_REASON}; use GIMP from "
            "your distribution's packages (or gimp.org's macOS/Windows builds) and start it once")


# -- Flatpak GIMP: a host worker started on demand by systemd (socket activation). The
# sandbox shares $XDG_RUNTIME_DIR/app/org.gimp.GIMP with the host; a socket there is
# reachable from both sides. The plug-in's config names it with $XDG_RUNTIME_DIR unexpanded:
# the client expands it where GIMP runs (in the sandbox), a shell on the host alike.
FLATPAK_APP = "org.gimp.GIMP"
FLATPAK_SOCKET = f"$XDG_RUNTIME_DIR/app/{FLATPAK_APP}/liif-jax.sock"
UNIT = "liif-jax-gimp"


def systemd_user_dir(env=None, home: Path | None = None) -> Path:
    env = os.environ if env is None else env
    home = Path(home or Path.home())
    return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "systemd" / "user"


def host_socket(env=None) -> str:
    """FLATPAK_SOCKET as the host sees it (systemd's %t is $XDG_RUNTIME_DIR)."""
    env = os.environ if env is None else env
    runtime = env.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return FLATPAK_SOCKET.replace("$XDG_RUNTIME_DIR", runtime)


def unit_files(python: str, weights: str | None) -> dict[str, str]:
    """The systemd user units: a socket (0600 in a 0700 folder, like serve's own) and the
    service it starts on the first connection; serve exits when idle, systemd keeps listening."""
    serve = f"{python} -m liif_jax serve --socket %t/app/{FLATPAK_APP}/liif-jax.sock"
    if weights:
        serve += f" --weights {weights}"
    return {
        f"{UNIT}.socket": (
            "[Unit]\nDescription=liif-jax worker for the Flatpak GIMP (socket; liif-jax gimp install --flatpak)\n\n"
            f"[Socket]\nListenStream=%t/app/{FLATPAK_APP}/liif-jax.sock\nSocketMode=0600\nDirectoryMode=0700\n\n"
            "[Install]\nWantedBy=sockets.target\n"),
        f"{UNIT}.service": (
            f"[Unit]\nDescription=liif-jax worker for the Flatpak GIMP\nRequires={UNIT}.socket\n\n"
            f"[Service]\nExecStart={serve}\n"),
    }


def _systemctl(*args) -> tuple[bool, str]:
    """``systemctl --user ARGS``: (succeeded, what it said)."""
    import subprocess

    exe = shutil.which("systemctl")
    if not exe:
        return False, "systemctl not found"
    try:
        proc = subprocess.run([exe, "--user", *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    said = (proc.stdout + proc.stderr).strip().splitlines()
    return proc.returncode == 0, said[-1] if said else f"exit status {proc.returncode}"


def by_hand() -> str:
    return f"liif-jax serve --socket {host_socket()}"


def _install_flatpak(dirs, python, weights, out) -> int:
    for d in dirs:
        files = install_into(d, python, weights, socket=FLATPAK_SOCKET)
        out(f"installed for {d.label}: {files[0].parent} (reaches the worker at {FLATPAK_SOCKET})")
    units = systemd_user_dir()
    units.mkdir(parents=True, exist_ok=True)
    for name, text in unit_files(python, weights).items():
        (units / name).write_text(text)
    out(f"systemd user units: {units / (UNIT + '.socket')}, {units / (UNIT + '.service')}")
    ok, said = _systemctl("daemon-reload")
    if ok:
        ok, said = _systemctl("enable", "--now", f"{UNIT}.socket")
    if ok:
        out(f"the worker starts on the first upscale (systemd listens at {host_socket()}); "
            "restart GIMP, then use Image > Upscale (LIIF)...")
    else:
        out(f"no systemd user session ({said}): before using the filter, start the worker by hand: {by_hand()}")
    return 0


def _uninstall_units(out) -> None:
    units = systemd_user_dir()
    present = [units / name for name in (f"{UNIT}.socket", f"{UNIT}.service") if (units / name).exists()]
    if not present:
        return
    _systemctl("disable", "--now", f"{UNIT}.socket")  # (no systemd session: nothing to stop)
    for path in present:
        path.unlink()
        out(f"removed {path}")
    _systemctl("daemon-reload")


def run_uninstall(out=print) -> int:
    _uninstall_units(out)
    removed = [p for d in candidate_dirs() for p in uninstall_from(d)]
    for p in removed:
        out(f"removed {p}")
    if not removed:
        out("nothing to remove: the plug-in is not installed")
    return 0


# Executables a GIMP 3.x or 2.10 installs on PATH (Debian, Fedora, Homebrew...): the newest
# names first. AppImages and macOS/Windows app bundles are not on PATH.
_GIMP_EXES = ("gimp-3.4", "gimp-3.2", "gimp-3.0", "gimp", "gimp-2.10")


def _gimp_versions() -> list[str]:
    """'<path>: <version line>' of every GIMP executable on PATH (one per real file)."""
    import subprocess

    seen, out = set(), []
    for exe in _GIMP_EXES:
        path = shutil.which(exe)
        if not path or os.path.realpath(path) in seen:
            continue
        seen.add(os.path.realpath(path))
        try:
            proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
            line = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else "(no version)"
        except (OSError, subprocess.TimeoutExpired) as exc:
            line = f"(does not run: {exc})"
        out.append(f"{path}: {line}")
    return out


def _probe_upscale(folder: Path) -> str:
    """One tiny upscale the way the installed plug-in makes it: its own copy of the client,
    its config (interpreter, weights), a one-off worker (no server left behind). Returns what
    answered; raises with the client's message on any failure."""
    import importlib.util
    import time

    spec = importlib.util.spec_from_file_location("liif_bridge_client_doctor", folder / CLIENT)
    client_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client_module)
    client = client_module.BridgeClient.from_config(str(folder))
    client.start_server = False
    started = time.monotonic()
    pixels = bytes(range(4 * 3 * 3))
    result = client.upscale(4, 3, "RGB", "u8", pixels, size=(8, 6))
    if (result.width, result.height, len(result.data)) != (8, 6, 8 * 6 * 3):
        raise LiifError(f"the worker answered {result.width}x{result.height} with {len(result.data)} bytes "
                        f"for an 8x6 RGB request")
    via = f"the worker at {os.path.expandvars(client.socket)}" if client.socket else client.python
    return f"4x3 -> 8x6 through {via} in {time.monotonic() - started:.1f} s"


def _check_installed(d: PluginDir, out, problems, probed: dict) -> None:
    folder = d.folder
    try:
        config = json.loads((folder / CONFIG).read_text())
        if not isinstance(config, dict):
            raise ValueError
    except (OSError, ValueError):
        problems.append(f"{folder / CONFIG} is missing or unreadable: run 'liif-jax gimp install'")
        return
    plugin = folder / f"{PLUGIN}.py"
    if not os.access(plugin, os.X_OK) or not stat.S_IMODE(plugin.stat().st_mode) & 0o100:
        problems.append(f"{plugin} is not executable (GIMP skips it): run 'liif-jax gimp install'")
    if not (folder / CLIENT).exists():
        problems.append(f"{folder / CLIENT} is missing: run 'liif-jax gimp install'")
        return
    python = os.environ.get("LIIF_JAX_PYTHON") or config.get("python") or ""
    if config.get("socket"):  # the Flatpak set-up: the worker is started on the host
        ok, said = _systemctl("is-active", f"{UNIT}.socket")
        if ok:
            out(f"worker:       {d.label}: started on demand by systemd ({UNIT}.socket, {host_socket()})")
        else:
            problems.append(f"{d.label}: no systemd user socket {UNIT}.socket listening ({said}), so nothing "
                            f"starts its worker; start it by hand before using the filter: {by_hand()}")
    if not Path(python).exists():
        problems.append(f"{d.label} plug-in points at a missing interpreter {python or '(none)'}: "
                        "run 'liif-jax gimp install' again")
        return
    weights = config.get("weights")
    if weights:
        try:
            from liif_jax.weights import load_model

            kind = load_model(weights).spec["args"]["encoder_spec"]["name"]
            out(f"weights:      {d.label} filter uses {weights} ({kind}-liif)")
        except Exception as exc:  # doctor reports, never crashes
            problems.append(f"{d.label} plug-in's weights {weights} do not load ({exc}): run "
                            "'liif-jax gimp install --weights FILE' again")
            return
    key = (python, weights, config.get("socket"))
    if key not in probed:
        try:
            probed[key] = (True, _probe_upscale(folder))
        except Exception as exc:  # doctor reports, never crashes
            probed[key] = (False, str(exc) or type(exc).__name__)
    ok, text = probed[key]
    if ok:
        out(f"upscale:      {d.label}: {text}")
    else:
        what = f"the weights {weights}" if weights else "the bundled weights"
        problems.append(f"{d.label}: a test upscale with {python} and {what} failed ({text})")


def _socket_config(d: PluginDir) -> bool:
    try:
        return bool(json.loads((d.folder / CONFIG).read_text()).get("socket"))
    except (OSError, ValueError, AttributeError):
        return False


def run_doctor(out=print) -> int:
    from liif_jax import __version__
    from liif_jax.weights import bundled_weights_path

    problems = []
    out(f"liif-jax:     {__version__} ({Path(__file__).parent})")
    out(f"interpreter:  {interpreter()}")
    gimps = _gimp_versions()
    for line in gimps:
        out(f"GIMP:         {line}")
    if not gimps:
        out("GIMP:         none on PATH (an AppImage or an app bundle is not on PATH)")
    dirs = present_dirs()
    for d in dirs:
        out(f"plug-ins:     {d.label} {d.path} [{'installed' if d.installed else 'profile found'}]")
    native = [d for d in dirs if not d.sandbox]
    flatpaks = [d for d in dirs if d.sandbox == "flatpak" and d.major >= 3]
    if not dirs:
        problems.append("no GIMP 3.x or 2.10 profile found: install GIMP, start it once, then run "
                        "'liif-jax gimp install'")
    elif not native and not flatpaks:
        problems.append(_sandbox_only(dirs))
    for d in dirs:
        if d.sandbox and d.installed and not _socket_config(d):
            problems.append(f"{d.label} has the plug-in at {d.folder}, but {SANDBOX_REASON}: "
                            "run 'liif-jax gimp uninstall', then 'liif-jax gimp install --flatpak'")
        elif d in flatpaks and not native and not d.installed:
            problems.append(f"plug-in not installed for {d.label} ({d.path}): run 'liif-jax gimp install' "
                            "(the Flatpak GIMP reaches a worker that systemd starts on demand)")
        elif not d.sandbox and not d.installed:
            problems.append(f"plug-in not installed for GIMP {d.gimp} ({d.path}): run 'liif-jax gimp install'")
    try:
        bundled = bundled_weights_path()
        from liif_jax.weights import load_model

        model = load_model()
        out(f"weights:      bundled {bundled} (converted from the authors' {model.name}, sha256 "
            f"{model.metadata.get('source_sha256', '?')[:12]}...)")
    except Exception as exc:  # doctor reports, never crashes
        problems.append(f"bundled weights do not load: {exc}")
    try:
        import jax

        out(f"JAX devices:  {', '.join(str(d) for d in jax.devices())} (jax {jax.__version__})")
    except Exception as exc:
        problems.append(f"JAX does not start: {exc}")
    probed: dict = {}
    for d in dirs:
        if d.installed and (not d.sandbox or _socket_config(d)):
            _check_installed(d, out, problems, probed)
    verdict = "OK: the GIMP filter works (a test upscale went through it)" if not problems else \
        "PROBLEM: " + "; ".join(problems)
    out(f"verdict:      {verdict}")
    return 0 if not problems else 1
