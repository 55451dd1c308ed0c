#!/bin/bash
# Runs INSIDE the chroot (test_real_gimp.py::test_dialogs_in_gui_gimp starts it):
#   gui_dialog.sh WORK HOME DRIVER
# Xvfb + GUI GIMP running DRIVER (gimp_dialog_driver.py), which opens the two procedures'
# dialogs one after the other (INTERACTIVE). For each: wait for the window, screenshot it,
# set Scale to 3 with the keyboard as a user would (Alt+A, type, Tab), screenshot, press OK
# (Alt+O). The driver writes LIIF_TEST_REPORT; the plug-in logs what its size line shows to
# LIIF_JAX_EVENTS.
set -u
W=$1; H=$2; DRIVER=$3
source "$(dirname "$0")/gui_session.sh"
gui_session "$W" "$H" "$DRIVER"
for title in 'Upscale \(LIIF\)' 'Upscale Layer \(LIIF\)'; do   # xdotool --name takes a regex
  D=""
  for i in $(seq 1800); do   # up to 180 s: GIMP start
    D=$(xdotool search --onlyvisible --name "^$title\$" 2>/dev/null | head -1)
    [ -n "$D" ] && break
    kill -0 "$GPID" 2>/dev/null || { echo "GIMP exited before the dialog '$title'"; exit 2; }
    sleep 0.1
  done
  if [ -z "$D" ]; then
    shot no_dialog
    echo "no dialog '$title'; windows:"
    for w in $(xdotool search --onlyvisible --name . 2>/dev/null); do echo "  $(xdotool getwindowname "$w")"; done
    exit 2
  fi
  name=$(echo "$title" | tr -cd 'A-Za-z')
  xdotool windowmove "$D" 100 60; xdotool windowraise "$D"; xdotool windowfocus "$D"; sleep 1
  xwd -id "$D" -silent | convert xwd:- "$W/dialog_$name.png" 2>/dev/null
  xdotool key alt+a ctrl+a; xdotool type 3; xdotool key Tab; sleep 0.7
  xwd -id "$D" -silent | convert xwd:- "$W/dialog_${name}_scale3.png" 2>/dev/null
  xdotool key alt+o
  for i in $(seq 50); do xdotool search --onlyvisible --name "^$title\$" >/dev/null 2>&1 || break; sleep 0.1; done
done
for i in $(seq 1200); do [ -f "$LIIF_TEST_REPORT" ] && break; sleep 0.1; done
[ -f "$LIIF_TEST_REPORT" ] || { echo "no report 120 s after the dialogs"; exit 2; }
exit 0
