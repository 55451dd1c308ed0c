#!/usr/bin/env bash
# Build (or reuse) a Debian chroot with GIMP 3 (Python 3 plug-ins), Xvfb, xdotool, xwd and
# ImageMagick, plus a venv /opt/liif-venv, for headless GIMP plug-in tests.  Run as root on
# Debian 12.  See NOTES.md beside this file.  Two are used in CI: trixie (Debian 13, GIMP 3.0)
# and unstable (sid, GIMP 3.2): LIIF_GIMP_SUITE=sid bash build_chroot.sh.
#
#   build_chroot.sh            build, or reuse when complete (re-mounting /proc, /dev/shm)
#   build_chroot.sh --umount   unmount what this script mounts under the chroot, then exit
#
# Environment:
#   LIIF_GIMP_SUITE       Debian suite (default trixie: GIMP 3.0; sid: GIMP 3.2)
#   LIIF_GIMP_CHROOT      chroot location (default /var/tmp/liif-gimp-chroot for trixie,
#                         /var/tmp/liif-gimp-chroot-SUITE otherwise; keep it outside the repo)
#   LIIF_GIMP_MIRROR      Debian mirror (default http://deb.debian.org/debian)
#   LIIF_GIMP_VENV_PKGS   pip packages for /opt/liif-venv at build time (default "numpy"; "" = none)
#   LIIF_GIMP_INSTALL_SRC path of a source checkout (e.g. this repo) to pip-install into
#                         /opt/liif-venv; done on EVERY call where set (files git tracks
#                         plus untracked non-ignored ones are copied to /opt/liif-src first)
#
# Idempotent: $ROOT/.liif-gimp-complete marks a finished build; later calls skip the build.
# Mounts made (only when absent): proc on $ROOT/proc, a tmpfs on $ROOT/dev/shm.  The host's
# /dev is NOT bind-mounted (debootstrap creates the device nodes inside the chroot).
# Shared folder: $ROOT/liif-work (host) == /liif-work (chroot), a plain directory, mode 1777.
set -euo pipefail

SUITE="${LIIF_GIMP_SUITE:-trixie}"
case "$SUITE" in trixie) DEFAULT_ROOT=/var/tmp/liif-gimp-chroot;; *) DEFAULT_ROOT=/var/tmp/liif-gimp-chroot-$SUITE;; esac
ROOT="${LIIF_GIMP_CHROOT:-$DEFAULT_ROOT}"
MIRROR="${LIIF_GIMP_MIRROR:-http://deb.debian.org/debian}"
VENV_PKGS="${LIIF_GIMP_VENV_PKGS-numpy}"
PKGS="gimp python3-venv python3-pip ca-certificates xvfb xdotool x11-apps imagemagick"
MARKER_VERSION="1"

if [ "$(id -u)" != 0 ]; then echo "build_chroot.sh: must run as root" >&2; exit 1; fi
case "$ROOT" in
  /?*) ROOT="${ROOT%/}";;
  *) echo "LIIF_GIMP_CHROOT must be an absolute path other than /" >&2; exit 1;;
esac
MARKER="$ROOT/.liif-gimp-complete"
LOGDIR="$ROOT/.liif-logs"

T_ALL=$EPOCHREALTIME
secs() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
step_start() { STEP_NAME="$1"; STEP_T=$EPOCHREALTIME; echo "== $STEP_NAME"; }
step_end() { echo "== $STEP_NAME: $(secs "$STEP_T") s"; }

# Run a command in the chroot with a clean environment (the host's PIP_*,
# SSL_CERT_FILE etc. point at host-only paths and must not leak in).
CHROOT_ENV=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
            DEBIAN_FRONTEND=noninteractive)
inchroot() { chroot "$ROOT" /usr/bin/env -i "${CHROOT_ENV[@]}" "$@"; }
PIP_ENV=(SSL_CERT_FILE=/etc/ssl/host/ca-certificates.crt PIP_CERT=/etc/ssl/host/ca-certificates.crt
         PIP_DISABLE_PIP_VERSION_CHECK=1)

is_mounted() { mountpoint -q "$1" 2>/dev/null; }
ensure_mounts() {   # mount only what is absent
  mkdir -p "$ROOT/proc" "$ROOT/dev/shm" "$ROOT/liif-work"
  # /proc: JAX (/proc/cpuinfo), Python and GIMP read it.
  is_mounted "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  [ -c "$ROOT/dev/null" ] || { echo "$ROOT/dev/null is not a device node" >&2; exit 1; }
  # POSIX shared memory for GIMP/Xvfb: a private tmpfs, not the host's /dev/shm.
  is_mounted "$ROOT/dev/shm" || mount -t tmpfs -o mode=1777,size=1g tmpfs "$ROOT/dev/shm"
  chmod 1777 "$ROOT/liif-work"
}
umount_ours() {
  for m in dev/shm proc; do
    if is_mounted "$ROOT/$m"; then umount "$ROOT/$m" && echo "unmounted $ROOT/$m"; fi
  done
}

install_src() {   # optional: pip-install a source checkout into /opt/liif-venv
  [ -n "${LIIF_GIMP_INSTALL_SRC:-}" ] || return 0
  local src; src="$(cd "$LIIF_GIMP_INSTALL_SRC" && pwd)"
  step_start "install $src into /opt/liif-venv"
  [ -x "$ROOT/opt/liif-venv/bin/python" ] || inchroot python3 -m venv /opt/liif-venv
  rm -rf --one-file-system "$ROOT/opt/liif-src"; mkdir -p "$ROOT/opt/liif-src"
  if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$src" && git ls-files -z --cached --others --exclude-standard |
       while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
       tar --null -T - -cf -) | tar -xf - -C "$ROOT/opt/liif-src"
  else
    (cd "$src" && tar --exclude=.git --exclude='.venv*' --exclude=__pycache__ -cf - .) |
      tar -xf - -C "$ROOT/opt/liif-src"
  fi
  inchroot "${PIP_ENV[@]}" /opt/liif-venv/bin/pip install -q /opt/liif-src > "$LOGDIR/pip-src.log" 2>&1 || {
    tail -30 "$LOGDIR/pip-src.log" >&2; exit 1; }
  step_end
}

if [ "${1:-}" = "--umount" ]; then umount_ours; exit 0; fi
[ $# -eq 0 ] || { echo "usage: $0 [--umount]" >&2; exit 2; }

if [ -f "$MARKER" ] && [ "$(head -1 "$MARKER" 2>/dev/null)" = "$MARKER_VERSION" ]; then
  echo "chroot $ROOT is complete ($(sed -n 2p "$MARKER")); reusing"
  ensure_mounts
  install_src
  echo "== total: $(secs "$T_ALL") s"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! command -v debootstrap >/dev/null 2>&1; then
  step_start "host: apt-get install debootstrap"
  apt-get update -q >/dev/null
  apt-get install -y -q debootstrap >/dev/null
  step_end
fi

if [ ! -f "$ROOT/.liif-debootstrap-done" ]; then
  step_start "debootstrap --variant=minbase $SUITE $ROOT"
  if [ -e "$ROOT" ] && [ -n "$(ls -A "$ROOT" 2>/dev/null)" ] && [ ! -e "$ROOT/.liif-gimp-owned" ]; then
    echo "refusing to touch non-empty $ROOT: it was not made by this script" >&2; exit 1
  fi
  if [ -e "$ROOT" ]; then   # a half-finished debootstrap: start over
    umount_ours
    if grep -q " $ROOT/" /proc/self/mounts; then
      echo "refusing to delete $ROOT: something is still mounted below it" >&2; exit 1
    fi
    rm -rf --one-file-system "$ROOT"
  fi
  mkdir -p "$ROOT" "$LOGDIR"; touch "$ROOT/.liif-gimp-owned"
  debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" > "$LOGDIR/debootstrap.log" 2>&1 || {
    tail -30 "$LOGDIR/debootstrap.log" >&2; exit 1; }
  touch "$ROOT/.liif-debootstrap-done"
  step_end
fi
mkdir -p "$LOGDIR"

ensure_mounts
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
# the host's CA bundle, for pip inside the chroot (PIP_ENV above)
mkdir -p "$ROOT/etc/ssl/host"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/host/ca-certificates.crt"
# no service may start inside the chroot
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"; chmod 755 "$ROOT/usr/sbin/policy-rc.d"

if [ "$SUITE" != trixie ]; then
  # unstable's Release file is valid for one week only; this machine's clock is ahead of
  # the mirror's (apt: "Release file ... is expired"). Signatures are still checked.
  echo 'Acquire::Check-Valid-Until "false";' > "$ROOT/etc/apt/apt.conf.d/99liif-valid-until"
fi
step_start "chroot: apt-get install --no-install-recommends $PKGS"
inchroot apt-get update -q > "$LOGDIR/apt.log" 2>&1 || { tail -30 "$LOGDIR/apt.log" >&2; exit 1; }
inchroot apt-get install -y -q --no-install-recommends $PKGS >> "$LOGDIR/apt.log" 2>&1 || {
  tail -30 "$LOGDIR/apt.log" >&2; exit 1; }
inchroot apt-get clean
step_end

if [ -n "$VENV_PKGS" ]; then
  step_start "venv /opt/liif-venv + pip install $VENV_PKGS"
  [ -x "$ROOT/opt/liif-venv/bin/python" ] || inchroot python3 -m venv /opt/liif-venv
  inchroot "${PIP_ENV[@]}" /opt/liif-venv/bin/pip install -q $VENV_PKGS > "$LOGDIR/pip.log" 2>&1 || {
    tail -30 "$LOGDIR/pip.log" >&2; exit 1; }
  step_end
fi

# Warm GIMP profile template: GIMP's first start in an empty HOME writes
# ~/.config/GIMP/3.x (pluginrc etc.); run_gimp_batch.sh copies it into each fake HOME and
# takes the profile's version folder (3.0, 3.2) from it.  gimp-console is Debian's link to
# gimp-console-3.x of any 3.x.
step_start "warm GIMP HOME template /opt/gimp-home-template"
inchroot /bin/sh -c '
  rm -rf /opt/gimp-home-template && mkdir -p /opt/gimp-home-template && cd /tmp &&
  echo "print(\"warm ok\", Gimp.version())" |
  HOME=/opt/gimp-home-template XDG_CONFIG_HOME=/opt/gimp-home-template/.config \
  XDG_CACHE_HOME=/opt/gimp-home-template/.cache XDG_DATA_HOME=/opt/gimp-home-template/.local/share \
  timeout 300 gimp-console -idf --quit --batch-interpreter=python-fu-eval -b -' \
  > "$LOGDIR/warm.log" 2>&1 || { cat "$LOGDIR/warm.log" >&2; exit 1; }
grep -q "warm ok" "$LOGDIR/warm.log" || { echo "warm run printed no 'warm ok':" >&2; cat "$LOGDIR/warm.log" >&2; exit 1; }
step_end

install_src

echo "$SUITE: $(inchroot gimp-console --version), $(inchroot python3 --version)"
printf '%s\n%s\n' "$MARKER_VERSION" "built $(date -u +%FT%TZ), $SUITE, $(inchroot gimp-console --version)" > "$MARKER"
echo "== total: $(secs "$T_ALL") s"
echo "chroot ready: $ROOT (shared folder: host $ROOT/liif-work == /liif-work inside)"
