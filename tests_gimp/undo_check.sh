#!/usr/bin/env bash
# One Ctrl+Z must undo a whole in-place "Upscale (LIIF)" run in GUI GIMP 3.
#
#   bash tests_gimp/undo_check.sh        (on the host, as root; ~30-60 s)
#
# In a chroot of .ci/gimp/build_chroot.sh ($LIIF_GIMP_CHROOT; it must be complete, with liif-jax in
# /opt/liif-venv: LIIF_GIMP_INSTALL_SRC=$PWD bash .ci/gimp/build_chroot.sh), under Xvfb:
#  1. GUI gimp-3.0 runs a batch driver (python-fu-eval, in the GUI process) that opens an RGB
#     PNG in a display, exports it as it was loaded, runs python-fu-liif-upscale
#     NONINTERACTIVE in place with scale 2, and checks the image doubled;
#  2. this script then focuses the image window and sends ONE real Ctrl+Z with xdotool;
#  3. the driver, polling the image size meanwhile, exports the image once the size changed
#     back (or after LIIF_UNDO_WAIT seconds, default 30);
#  4. the exports are compared with the input by ImageMagick in the chroot (size, raw RGBA).
# Prints "undo_check: PASS ..." (exit 0) or "undo_check: FAIL ..." (exit 1).  Evidence is
# left in $LIIF_GIMP_CHROOT/liif-work/liif-undo-check/ (exports, JSON reports, screenshots, logs).
#
# Environment: LIIF_GIMP_CHROOT (default /var/tmp/liif-gimp-chroot), LIIF_UNDO_INPUT (an RGB
# PNG, default tests/fixtures/dev/in_astronaut_30x42.png), LIIF_UNDO_WAIT (seconds),
# LIIF_UNDO_COMMAND=layer: Layer > Upscale Layer (LIIF) instead (the canvas keeps its size, the
# layer doubles around its centre; one Ctrl+Z must bring the layer back).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${LIIF_GIMP_CHROOT:-/var/tmp/liif-gimp-chroot}"; ROOT="${ROOT%/}"
INPUT="${LIIF_UNDO_INPUT:-$REPO/tests/fixtures/dev/in_astronaut_30x42.png}"
WAIT_UNDO="${LIIF_UNDO_WAIT:-30}"
COMMAND="${LIIF_UNDO_COMMAND:-image}"
case "$COMMAND" in image|layer) ;; *) echo "LIIF_UNDO_COMMAND must be image or layer" >&2; exit 2;; esac
T0=$EPOCHREALTIME

fail() { echo "undo_check: FAIL: $*"; exit 1; }
[ "$(id -u)" = 0 ] || fail "must run as root (chroot)"
[ -f "$ROOT/.liif-gimp-complete" ] || fail "no complete GIMP chroot at $ROOT: run .ci/gimp/build_chroot.sh"
if ! mountpoint -q "$ROOT/proc" || ! mountpoint -q "$ROOT/dev/shm"; then
  bash "$REPO/.ci/gimp/build_chroot.sh" >&2 || fail "build_chroot.sh could not mount /proc, /dev/shm"
fi
ls -d "$ROOT"/opt/liif-venv/lib/python3*/site-packages/liif_jax >/dev/null 2>&1 ||
  fail "liif-jax is not installed in $ROOT/opt/liif-venv: LIIF_GIMP_INSTALL_SRC=$REPO bash .ci/gimp/build_chroot.sh"
[ -f "$INPUT" ] || fail "no input $INPUT"

WORK="$ROOT/liif-work/liif-undo-check"; WCH=/liif-work/liif-undo-check      # host path, chroot path
rm -rf --one-file-system "$WORK"; mkdir -p "$WORK" "$ROOT/tmp/gimp-homes"; chmod 777 "$WORK"
cp "$INPUT" "$WORK/input.png"
HOME_IN="$(mktemp -d "$ROOT/tmp/gimp-homes/undo.XXXXXX")"; HOME_CH="${HOME_IN#"$ROOT"}"
trap 'rm -rf --one-file-system "$HOME_IN"' EXIT
cp -a "$ROOT/opt/gimp-home-template/." "$HOME_IN/"
GVER="$(ls "$HOME_IN/.config/GIMP" | sort -V | tail -1)"   # the template's profile: 3.0 or 3.2
PLUG="$HOME_IN/.config/GIMP/$GVER/plug-ins/liif_upscale"
mkdir -p "$PLUG"
install -m 755 "$REPO/gimp_plugin/liif_upscale/liif_upscale.py" "$PLUG/liif_upscale.py"
cp "$REPO/gimp_plugin/liif_bridge_client.py" "$PLUG/"
echo '{"python": "/opt/liif-venv/bin/python", "start_server": false}' > "$PLUG/liif_jax_gimp.json"

# ---- the batch driver (runs in a python-fu-eval plug-in process of the GUI GIMP) ----------
cat > "$WORK/driver.py" <<'PY'
import json, os, time
from gi.repository import Gimp, Gio
NI = Gimp.RunMode.NONINTERACTIVE
W = os.environ["LIIF_UNDO_WORK"]
WAIT = float(os.environ.get("LIIF_UNDO_WAIT", "30"))

def export(image, name):
    if not Gimp.file_save(NI, image, Gio.File.new_for_path(os.path.join(W, name)), None):
        raise RuntimeError("export failed: " + name)

def report(name, data):
    with open(os.path.join(W, name + ".tmp"), "w") as f:
        json.dump(data, f)
    os.rename(os.path.join(W, name + ".tmp"), os.path.join(W, name))   # appears complete
    print("driver:", name, json.dumps(data), flush=True)

LAYER = os.environ.get("LIIF_UNDO_COMMAND") == "layer"
PROC = "python-fu-liif-upscale-layer" if LAYER else "python-fu-liif-upscale"
# The layer command leaves the canvas alone: watch the layer's size too.
size = lambda im: [im.get_width(), im.get_height()] + (
    [im.get_layers()[0].get_width(), im.get_layers()[0].get_height()] if LAYER else [])
img = Gimp.file_load(NI, Gio.File.new_for_path(os.path.join(W, "input.png")))
if img is None:
    raise RuntimeError("could not load input.png")
Gimp.Display.new(img)
Gimp.displays_flush()
export(img, "before.png")
before, dirty0 = size(img), img.is_dirty()
proc = Gimp.get_pdb().lookup_procedure(PROC)
if proc is None:
    report("upscaled.json", {"status": "not-registered"})
    raise RuntimeError(PROC + " is not registered")
cfg = proc.create_config()
cfg.set_property("run-mode", NI)
cfg.set_property("image", img)
cfg.set_core_object_array("drawables", img.get_selected_drawables())
cfg.set_property("scale", 2.0)
if not LAYER:
    cfg.set_property("new-image", False)
t = time.time()
res = proc.run(cfg)
status = res.index(0).value_nick
message = str(res.index(1)) if status != "success" and res.length() > 1 else ""
Gimp.displays_flush()
upscaled = size(img)
export(img, "upscaled.png")
report("upscaled.json", {"status": status, "message": message, "before": before, "after": upscaled,
                         "seconds": round(time.time() - t, 2), "dirty_before": dirty0,
                         "dirty_after": img.is_dirty(), "layers": len(img.get_layers())})
if status != "success":
    raise RuntimeError("%s: %s %s" % (PROC, status, message))
# Wait for the Ctrl+Z the script sends: poll the size.
t = time.time()
while time.time() - t < WAIT and size(img) == upscaled:
    time.sleep(0.1)
changed_after = round(time.time() - t, 2)
time.sleep(1.0)              # anything else a (wrongly split) undo might still do
export(img, "undone.png")
report("undone.json", {"size": size(img), "size_changed": size(img) != upscaled,
                       "seconds_until_change": changed_after, "dirty": img.is_dirty(),
                       "layers": len(img.get_layers()),
                       "layer_sizes": [[l.get_width(), l.get_height()] for l in img.get_layers()]})
PY

# ---- runs inside the chroot: Xvfb + GUI GIMP + xdotool -------------------------------------
cat > "$WORK/inner.sh" <<'SH'
#!/bin/bash
set -u
W=$1; H=$2; WAIT=$3
export LIIF_UNDO_WORK=$W LIIF_UNDO_WAIT=$WAIT LIIF_UNDO_COMMAND=$4
# no socket here: the plug-in spawns its own one-off worker (never a warm server of others)
export LIIF_JAX_SOCKET=$W/no-server/worker.sock
source "$W/gui_session.sh"
gui_session "$W" "$H" "$W/driver.py"
for i in $(seq 1800); do    # up to 180 s: GIMP start + liif-jax (JAX import, model, compile)
  [ -f "$W/upscaled.json" ] && break
  kill -0 "$GPID" 2>/dev/null || { echo "GIMP exited before the upscale finished"; exit 2; }
  sleep 0.1
done
[ -f "$W/upscaled.json" ] || { echo "no upscaled.json after 180 s"; exit 2; }
grep -q '"status": "success"' "$W/upscaled.json" || { echo "upscale failed"; exit 2; }
sleep 0.5
shot screen_upscaled
image_window
echo "image window $G: $(xdotool getwindowname "$G")"
xdotool windowraise "$G"; xdotool windowfocus "$G"; sleep 0.7
echo "focused window: $(xdotool getwindowfocus)"
echo "sending ONE ctrl+z at $(date +%T.%N | cut -c1-12)"
xdotool key ctrl+z
for i in $(seq $(( (WAIT + 15) * 10 ))); do [ -f "$W/undone.json" ] && break; sleep 0.1; done
[ -f "$W/undone.json" ] || { echo "no undone.json"; exit 2; }
shot screen_after_ctrl_z
# evidence only: the Edit menu names the step that Redo would restore
xdotool windowfocus "$G"; sleep 0.3; xdotool key alt+e; sleep 1.5; shot edit_menu; xdotool key Escape
exit 0
SH
chmod 755 "$WORK/inner.sh"
cp "$REPO/tests_gimp/gui_session.sh" "$WORK/"

echo "undo_check: input $(basename "$INPUT"); running GUI GIMP under Xvfb in $ROOT ..."
timeout -k 10 $((WAIT_UNDO + 240)) chroot "$ROOT" /usr/bin/env -i \
  PATH=/usr/local/bin:/usr/bin:/bin "$WCH/inner.sh" "$WCH" "$HOME_CH" "$WAIT_UNDO" "$COMMAND" 2>&1 | sed 's/^/  /'
rc=${PIPESTATUS[0]}
[ -f "$WORK/upscaled.json" ] && echo "  upscaled.json: $(cat "$WORK/upscaled.json")"
[ -f "$WORK/undone.json" ] && echo "  undone.json:   $(cat "$WORK/undone.json")"
if [ "$rc" != 0 ]; then
  echo "  --- last lines of gimp.log ---"; tail -25 "$WORK/gimp.log" 2>/dev/null | sed 's/^/  /'
  fail "GUI run did not complete (inner rc=$rc); see $WORK"
fi

# ---- compare (ImageMagick in the chroot) ---------------------------------------------------
im() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin "$@"; }
info() { im identify -format '%wx%h %[channels]' "$WCH/$1" 2>/dev/null; }
raw() { im convert "$WCH/$1" -depth 8 rgba:- 2>/dev/null | sha256sum | cut -c1-16; }
diffpx() { im compare -metric AE "$WCH/$1" "$WCH/$2" null: 2>&1; }
for f in input before upscaled undone; do
  printf '  %-13s %-16s rgba-sha256 %s\n' "$f.png" "$(info $f.png)" "$(raw $f.png)"
done
IN_SIZE=$(im identify -format '%wx%h' "$WCH/input.png")
UP_SIZE=$(im identify -format '%wx%h' "$WCH/upscaled.png")
UN_SIZE=$(im identify -format '%wx%h' "$WCH/undone.png")
read -r iw ih <<<"${IN_SIZE/x/ }"
problems=()
[ "$(raw before.png)" = "$(raw input.png)" ] || problems+=("export of the freshly loaded image differs from input (export path lossy?)")
if [ "$COMMAND" = layer ]; then   # the canvas stays; the layer (seen in upscaled.json) doubled
  [ "$UP_SIZE" = "$IN_SIZE" ] || problems+=("the layer command changed the canvas to $UP_SIZE")
  grep -q "\"after\": \[$iw, $ih, $((iw * 2)), $((ih * 2))\]" "$WORK/upscaled.json" ||
    problems+=("the layer did not double: $(cat "$WORK/upscaled.json")")
  grep -q "\"layer_sizes\": \[\[$iw, $ih\]\]" "$WORK/undone.json" ||
    problems+=("after ONE Ctrl+Z the layer is not back to ${iw}x$ih: $(cat "$WORK/undone.json")")
  [ "$(raw upscaled.png)" != "$(raw input.png)" ] || problems+=("the layer command changed no pixel")
else
  [ "$UP_SIZE" = "$((iw * 2))x$((ih * 2))" ] || problems+=("upscaled size $UP_SIZE, expected $((iw * 2))x$((ih * 2))")
fi
[ "$UN_SIZE" = "$IN_SIZE" ] || problems+=("after ONE Ctrl+Z the size is $UN_SIZE, not $IN_SIZE")
if [ "$UN_SIZE" = "$IN_SIZE" ] && [ "$(raw undone.png)" != "$(raw input.png)" ]; then
  problems+=("after ONE Ctrl+Z the size is back but $(diffpx input.png undone.png) pixels differ from input")
fi
secs=$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
if [ ${#problems[@]} -eq 0 ]; then
  echo "undo_check: PASS ($COMMAND command): one Ctrl+Z restored $UP_SIZE -> $UN_SIZE with pixels identical to input (${secs} s; evidence in $WORK)"
  exit 0
fi
for p in "${problems[@]}"; do echo "  problem: $p"; done
fail "${problems[0]} (${secs} s; evidence in $WORK)"
