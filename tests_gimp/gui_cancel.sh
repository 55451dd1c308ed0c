#!/bin/bash
# Runs INSIDE the chroot (test_real_gimp.py::test_cancel_button_in_gui_gimp starts it):
#   gui_cancel.sh WORK HOME DRIVER
# Xvfb + GUI gimp-3.0 running DRIVER (gimp_cancel_driver.py with LIIF_TEST_CANCEL=gui); once
# liif-jax reports progress (LIIF_JAX_EVENTS), clicks the Cancel button of the progress in the
# image window's status bar, as a user would, and waits for the driver's report
# (LIIF_TEST_REPORT). Screenshots before and after the click are left in WORK.
set -u
W=$1; H=$2; DRIVER=$3
source "$(dirname "$0")/gui_session.sh"
gui_session "$W" "$H" "$DRIVER"
for i in $(seq 1800); do    # up to 180 s: GIMP start, liif-jax connects and computes
  grep -q '"event": "progress"' "$LIIF_JAX_EVENTS" 2>/dev/null && break
  kill -0 "$GPID" 2>/dev/null || { echo "GIMP exited before liif-jax reported progress"; exit 2; }
  sleep 0.1
done
grep -q '"event": "progress"' "$LIIF_JAX_EVENTS" 2>/dev/null || { echo "no progress after 180 s"; exit 2; }
image_window
# At 800x600 in the corner, with the default theme, the status bar's Cancel button (shown only
# while a progress runs) is at (518, 582): see the before_cancel.png screenshot.
xdotool windowmove "$G" 0 0 windowsize "$G" 800 600; sleep 0.7
shot before_cancel
echo "clicking Cancel at $(date +%T.%N | cut -c1-12)"
xdotool mousemove 518 582 click 1
for i in $(seq 600); do [ -f "$LIIF_TEST_REPORT" ] && break; sleep 0.1; done
shot after_cancel
[ -f "$LIIF_TEST_REPORT" ] || { echo "no report 60 s after the click"; exit 2; }
exit 0
