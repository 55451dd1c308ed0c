#!/usr/bin/env bash
# Run a Python driver in headless GIMP 3 inside a chroot of build_chroot.sh (trixie: 3.0,
# sid: 3.2; $LIIF_GIMP_CHROOT picks it).
#
#   run_gimp_batch.sh DRIVER.py [PLUGIN_DIR]
#
# DRIVER.py is fed on stdin to
#   gimp-console -idf --quit --batch-interpreter=python-fu-eval -b -
# (python-fu-eval exec()s it with `Gimp` already imported; import what else you need).
# Each run gets a fresh fake HOME copied from the warmed template
# /opt/gimp-home-template (made by build_chroot.sh).
#
# PLUGIN_DIR (optional): either one plug-in folder NAME/ holding NAME.py, or a
# folder whose sub-folders are such plug-in folders.  They are copied to
# $HOME/.config/GIMP/<3.x>/plug-ins/NAME/NAME.py (made executable), where GIMP 3
# loads user plug-ins from (<3.x>: the version folder of the warmed profile template).
#
# Shared folder: /liif-work inside the chroot == $LIIF_GIMP_CHROOT/liif-work on the host
# (default /var/tmp/liif-gimp-chroot/liif-work).  Put inputs there, have the driver
# write there.  Inside, the driver sees LIIF_GIMP_WORK=/liif-work.
#
# Environment:
#   LIIF_GIMP_CHROOT   chroot (default /var/tmp/liif-gimp-chroot)
#   LIIF_GIMP_TIMEOUT  seconds before GIMP is killed (default 600; exit 124)
#   LIIF_GIMP_KEEP_HOME=1  keep the fake HOME (path printed on stderr)
#   LIIF_GIMP_FONTS=1  start GIMP with fonts (-id instead of -idf; text layers need them)
#   LIIF_GIMP_RUNTIME_DIR  XDG_RUNTIME_DIR inside (the emulated Flatpak sandbox's /run/user/UID)
#   LIIF_*             every other LIIF_* variable is passed into the chroot
#
# Exit code: GIMP's.  0 = driver ran without exception; with --quit a Python
# exception or a failing batch command gives 64 (see NOTES.md).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${LIIF_GIMP_CHROOT:-/var/tmp/liif-gimp-chroot}"
ROOT="${ROOT%/}"
TIMEOUT="${LIIF_GIMP_TIMEOUT:-600}"

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 DRIVER.py [PLUGIN_DIR]" >&2; exit 2
fi
DRIVER="$1"; PLUGDIR="${2:-}"
[ -f "$DRIVER" ] || { echo "no such driver: $DRIVER" >&2; exit 2; }
[ -z "$PLUGDIR" ] || [ -d "$PLUGDIR" ] || { echo "no such plug-in dir: $PLUGDIR" >&2; exit 2; }

# Build when missing; when complete this only re-establishes the mounts (~0.1 s).
if [ ! -f "$ROOT/.liif-gimp-complete" ] || ! mountpoint -q "$ROOT/proc" || ! mountpoint -q "$ROOT/dev/shm"; then
  bash "$HERE/build_chroot.sh" >&2
fi

mkdir -p "$ROOT/liif-work" "$ROOT/tmp/gimp-homes"
chmod 1777 "$ROOT/liif-work"
HOME_IN="$(mktemp -d "$ROOT/tmp/gimp-homes/home.XXXXXX")"   # host path
HOME_CH="${HOME_IN#"$ROOT"}"                                # same dir, chroot path
cleanup() {
  if [ "${LIIF_GIMP_KEEP_HOME:-0}" = 1 ]; then echo "fake HOME kept: $HOME_IN" >&2
  else rm -rf --one-file-system "$HOME_IN"; fi
}
trap cleanup EXIT
cp -a "$ROOT/opt/gimp-home-template/." "$HOME_IN/"
# The profile folder GIMP made when the template was warmed: 3.0 or 3.2.
GVER="$(ls "$HOME_IN/.config/GIMP" | sort -V | tail -1)"

install_plugin() {  # $1 = folder NAME holding NAME.py
  local src="$1" name; name="$(basename "$src")"
  [ -f "$src/$name.py" ] || return 1
  local dst="$HOME_IN/.config/GIMP/$GVER/plug-ins/$name"
  rm -rf "$dst"; mkdir -p "$dst"
  cp -rL "$src/." "$dst/"
  find "$dst" -name __pycache__ -prune -exec rm -rf {} +
  chmod 755 "$dst/$name.py"
  echo "plug-in installed: $HOME_CH/.config/GIMP/$GVER/plug-ins/$name/$name.py" >&2
}
if [ -n "$PLUGDIR" ]; then
  PLUGDIR="$(cd "$PLUGDIR" && pwd)"
  if ! install_plugin "$PLUGDIR"; then
    n=0
    for d in "$PLUGDIR"/*/; do install_plugin "${d%/}" && n=$((n+1)) || true; done
    [ "$n" -gt 0 ] || { echo "no NAME/NAME.py plug-in found in $PLUGDIR" >&2; exit 2; }
  fi
fi

ENVV=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
      HOME="$HOME_CH" XDG_CONFIG_HOME="$HOME_CH/.config" XDG_CACHE_HOME="$HOME_CH/.cache"
      XDG_DATA_HOME="$HOME_CH/.local/share" TMPDIR=/tmp LIIF_GIMP_WORK=/liif-work)
for k in $(compgen -e); do
  case "$k" in LIIF_GIMP_CHROOT|LIIF_GIMP_TIMEOUT|LIIF_GIMP_KEEP_HOME|LIIF_GIMP_FONTS|LIIF_GIMP_RUNTIME_DIR) ;;
               LIIF_*) ENVV+=("$k=${!k}");; esac
done

[ -z "${LIIF_GIMP_RUNTIME_DIR:-}" ] || ENVV+=(XDG_RUNTIME_DIR="$LIIF_GIMP_RUNTIME_DIR")

set +e
FLAGS=-idf                                   # -f: no fonts (faster start)
[ "${LIIF_GIMP_FONTS:-0}" = 1 ] && FLAGS=-id  # fonts: text layers need them
timeout -k 10 "$TIMEOUT" chroot "$ROOT" /usr/bin/env -i "${ENVV[@]}" /bin/sh -c \
  'cd /liif-work && exec gimp-console "$1" --quit --batch-interpreter=python-fu-eval -b -' \
  sh "$FLAGS" < "$DRIVER"
rc=$?
set -e
exit $rc
