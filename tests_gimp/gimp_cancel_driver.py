# Runs inside GIMP 3 (python-fu-eval), driven by test_real_gimp.py: what happens when the
# user presses Cancel on the plug-in's progress while liif-jax computes. GIMP's Cancel ends in
# gimp_plug_in_close(plug_in, kill_it=TRUE) (app/plug-in/gimpplugin.c): GP_QUIT on the wire,
# which a busy plug-in never reads, 10 ms, then SIGKILL of the plug-in process.
# LIIF_TEST_CANCEL:
#   kill  headless gimp-console: a watcher thread emulates that, SIGKILLing the plug-in at the
#         first progress liif-jax reports on the job (seen through LIIF_JAX_EVENTS);
#   gui   GUI GIMP under Xvfb (gui_cancel.sh): the image gets a display, whose status bar shows
#         the progress and its Cancel button; gui_cancel.sh clicks it, GIMP kills the plug-in,
#         and the watcher only notices the plug-in is gone.
# Then it measures how fast the worker stops computing:
#   bridge: the one-off `liif-jax bridge` child must exit (its stdin closed);
#   server: the warm server (LIIF_TEST_SERVER_PID) must go idle, then serve the next call.
# Also checks that the image is exactly as before and no stray image was left in GIMP.
# Report: JSON in LIIF_TEST_REPORT.
import json
import os
import signal
import threading
import time

from gi.repository import Gimp, Gio

import sys

sys.path.insert(0, "/liif-work/liif-test")  # gimp_helpers.py, copied there by the tests
from gimp_helpers import raw, run_plugin  # noqa: E402

NI = Gimp.RunMode.NONINTERACTIVE
EVENTS = os.environ["LIIF_JAX_EVENTS"]
MODE = os.environ["LIIF_TEST_MODE"]  # "bridge" or "server"
CANCEL = os.environ.get("LIIF_TEST_CANCEL", "kill")
report = {"mode": MODE, "cancel": CANCEL}


def proc_stat(pid):
    """(state, ppid, cpu seconds) of a process, or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def cpu_rate(pid, window=0.5):
    a = proc_stat(pid)
    time.sleep(window)
    b = proc_stat(pid)
    return None if a is None or b is None else (b[2] - a[2]) / window


def events():
    try:
        with open(EVENTS) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


def watch():
    w = report["watcher"] = {}
    deadline = time.time() + 300
    while time.time() < deadline and not any(e.get("event") == "progress" for e in events()):
        time.sleep(0.05)
    seen = events()
    channel = [e for e in seen if e.get("event") == "channel"]
    w["progress_seen"] = any(e.get("event") == "progress" for e in seen)
    if not channel or not w["progress_seen"]:
        return
    plugin = channel[-1]["client_pid"]
    w["plugin_cmdline_ok"] = any(part.endswith(b"liif_upscale.py") for part in cmdline(plugin))
    w["plugin_is_sibling"] = proc_stat(plugin)[1] == os.getppid()  # both children of GIMP
    w["channel"] = channel[-1]["kind"]
    worker = channel[-1]["worker_pid"] if MODE == "bridge" else int(os.environ["LIIF_TEST_SERVER_PID"])
    w["worker_is_bridge_child"] = MODE != "bridge" or (proc_stat(worker)[1] == plugin
                                                      and b"bridge" in cmdline(worker))
    w["worker_cpu_before"] = cpu_rate(worker)  # for the report only: a loaded machine skews it
    if CANCEL == "kill":
        os.kill(plugin, signal.SIGKILL)  # what gimp_plug_in_close(plug_in, TRUE) does
    else:  # GIMP does it when Cancel is clicked
        while time.time() < deadline and proc_stat(plugin) is not None and proc_stat(plugin)[0] != "Z":
            time.sleep(0.02)
    killed = time.time()
    # What the worker had said when the plug-in died: the job was under way, not finished.
    said = events()
    progress = [e for e in said if e.get("event") == "progress"]
    w["progress_at_kill"] = [progress[-1]["done"], progress[-1]["total"]] if progress else None
    w["finished_before_kill"] = any(e.get("event") in ("result", "error") for e in said)
    w["stopped_after_s"] = None
    while time.time() - killed < 30:
        st = proc_stat(worker)
        if MODE == "bridge":
            if st is None or st[0] == "Z":  # exited (a zombie where nobody reaps orphans)
                w["stopped_after_s"] = round(time.time() - killed, 2)
                break
            time.sleep(0.05)
        else:
            rate = cpu_rate(worker, 0.25)
            if rate is not None and rate < 0.1:
                w["stopped_after_s"] = round(time.time() - killed, 2)
                break
    w["worker_alive_after"] = proc_stat(worker) is not None and proc_stat(worker)[0] != "Z"


image = Gimp.file_load(NI, Gio.File.new_for_path(os.environ["LIIF_TEST_INPUT"]))
if CANCEL == "gui":
    Gimp.Display.new(image)  # the progress, with its Cancel button, goes to its status bar
    Gimp.displays_flush()
layer = image.get_layers()[0]
before = raw(layer)
images_before = len(Gimp.get_images())
watcher = threading.Thread(target=watch, daemon=True)
watcher.start()
t0 = time.time()
report["status"], report["message"] = run_plugin(image, float(os.environ.get("LIIF_TEST_SCALE", "25")))
report["run_returned_after_s"] = round(time.time() - t0, 2)
watcher.join(120)
report["size_after"] = [image.get_width(), image.get_height()]
report["pixels_unchanged"] = raw(image.get_layers()[0]) == before
report["layers_after"] = len(image.get_layers())
report["stray_images"] = len(Gimp.get_images()) - images_before
if MODE == "server":
    # The next call is served at once by the same warm server.
    small = Gimp.file_load(NI, Gio.File.new_for_path(os.environ["LIIF_TEST_SMALL"]))
    n = len(events())
    t0 = time.time()
    report["next_status"], report["next_message"] = run_plugin(small, 2.0)
    report["next_s"] = round(time.time() - t0, 2)
    report["next_channel"] = [e["kind"] for e in events()[n:] if e.get("event") == "channel"]
    report["next_size"] = [small.get_width(), small.get_height()]
with open(os.environ["LIIF_TEST_REPORT"], "w") as f:
    json.dump(report, f)
