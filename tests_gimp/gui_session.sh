# Sourced INSIDE the chroot by gui_cancel.sh and by undo_check.sh's inner script: one GUI
# GIMP under Xvfb, as a user would see it.
#   gui_session WORK HOME DRIVER  HOME/XDG folders under HOME; Xvfb on a free display; GUI
#                                 gimp-3.0 running DRIVER (python-fu-eval) in its own process
#                                 group ($GPID: GIMP, its plug-ins and a one-off liif-jax
#                                 worker), all killed when the script exits
#   image_window                  closes the welcome dialog; $G = the image window (or exit 2)
#   shot NAME                     screenshot to WORK/NAME.png
gui_session() {
  W=$1
  local home=$2 driver=$3
  export HOME=$home XDG_CONFIG_HOME=$home/.config XDG_CACHE_HOME=$home/.cache XDG_DATA_HOME=$home/.local/share
  export LANG=C.UTF-8 TMPDIR=/tmp
  XPID=""; GPID=""
  trap _gui_cleanup EXIT
  trap 'exit 3' INT TERM
  Xvfb -displayfd 3 -screen 0 1280x860x24 -nolisten tcp 3>"$W/displayno" >"$W/xvfb.log" 2>&1 & XPID=$!
  for i in $(seq 100); do [ -s "$W/displayno" ] && break; sleep 0.1; done
  [ -s "$W/displayno" ] || { echo "Xvfb did not start"; exit 2; }
  export DISPLAY=":$(cat "$W/displayno")"
  setsid gimp -df --no-splash --batch-interpreter=python-fu-eval -b - <"$driver" >"$W/gimp.log" 2>&1 &
  GPID=$!
}

_gui_cleanup() {
  if [ -n "$GPID" ]; then kill -TERM -- "-$GPID" 2>/dev/null; sleep 1; kill -KILL -- "-$GPID" 2>/dev/null; fi
  if [ -n "$XPID" ]; then kill -TERM "$XPID" 2>/dev/null; fi
  wait 2>/dev/null
}

shot() { xwd -root -silent | convert xwd:- "$W/$1.png" 2>/dev/null; }

win() { xdotool search --onlyvisible --name "$1" 2>/dev/null | head -1; }

image_window() {
  local welcome
  welcome=$(win 'Welcome to GIMP'); [ -n "$welcome" ] && xdotool windowclose "$welcome"
  G=$(win '– GIMP')
  [ -n "$G" ] || { echo "image window not found"; exit 2; }
}
