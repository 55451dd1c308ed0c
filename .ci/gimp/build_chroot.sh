#!/usr/bin/env bash
# Build (or reuse) a Debian 13 "trixie" chroot with GIMP 3.0 + Python plug-ins,
# Xvfb/xdotool/xwd and a small venv, for headless GIMP plug-in tests.
#
#   LIIF_GIMP_CHROOT   chroot location (default /var/tmp/liif-gimp-chroot; keep it
#                      outside the repo)
#   LIIF_GIMP_MIRROR   Debian mirror (default http://deb.debian.org/debian)
#   LIIF_GIMP_VENV_PKGS  pip packages for /opt/liif-venv inside the chroot
#                      (default "numpy"; set to "" to skip pip)
#
# Idempotent: when $ROOT/.liif-gimp-complete exists the build is skipped and only
# the mounts (/proc, /dev, /work) are (re)established.  Must run as root.
set -euo pipefail

ROOT="${LIIF_GIMP_CHROOT:-/var/tmp/liif-gimp-chroot}"
MIRROR="${LIIF_GIMP_MIRROR:-http://deb.debian.org/debian}"
VENV_PKGS="${LIIF_GIMP_VENV_PKGS-numpy}"
MARKER="$ROOT/.liif-gimp-complete"
MARKER_VERSION="1"
PKGS="gimp python3-venv python3-pip ca-certificates xvfb xdotool x11-apps imagemagick"

if [ "$(id -u)" != 0 ]; then echo "build_chroot.sh: must run as root" >&2; exit 1; fi
case "$ROOT" in
  /?*) ROOT="${ROOT%/}";;
  *) echo "LIIF_GIMP_CHROOT must be an absolute path other than /" >&2; exit 1;;
esac

now() { date +%s.%N; }
T_ALL=$(now)
step_start() { STEP_NAME="$1"; STEP_T=$(now); echo "== $STEP_NAME"; }
step_end() { printf '== %s: %.1f s\n' "$STEP_NAME" "$(echo "$(now) - $STEP_T" | bc)"; }

# Run a command in the chroot with a clean environment (the host's PIP_*,
# SSL_CERT_FILE etc. must not leak in: they point at host-only paths).
CHROOT_ENV=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
            DEBIAN_FRONTEND=noninteractive)
inchroot() { chroot "$ROOT" /usr/bin/env -i "${CHROOT_ENV[@]}" "$@"; }

# mount helpers: mount only what is absent; never unmount anything here.
is_mounted() { mountpoint -q "$1" 2>/dev/null; }
ensure_mounts() {
  mkdir -p "$ROOT/proc" "$ROOT/dev/shm" "$ROOT/work"
  # /proc: JAX, Python's os.cpu_count and GIMP read it.
  is_mounted "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  # /dev is NOT bind-mounted from the host: debootstrap already created the
  # basic device nodes (null, zero, random, urandom, tty, ptmx...) inside the
  # chroot.  Only give it its own /dev/shm (tmpfs) for POSIX shared memory.
  [ -c "$ROOT/dev/null" ] || { echo "missing $ROOT/dev/null" >&2; exit 1; }
  is_mounted "$ROOT/dev/shm" || mount -t tmpfs -o mode=1777,size=1g tmpfs "$ROOT/dev/shm"
  # shared exchange folder: $ROOT/work is a plain directory inside the chroot,
  # seen as /work inside and as $ROOT/work from the host (no bind mount).
  chmod 1777 "$ROOT/work"
}

if [ -f "$MARKER" ] && [ "$(cat "$MARKER" 2>/dev/null | head -1)" = "$MARKER_VERSION" ]; then
  echo "chroot at $ROOT is complete (marker $MARKER); reusing"
  ensure_mounts
  printf '== total: %.1f s\n' "$(echo "$(now) - $T_ALL" | bc)"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive

if ! command -v debootstrap >/dev/null 2>&1 || ! command -v bc >/dev/null 2>&1; then
  T=$(date +%s)
  echo "== host: apt-get install debootstrap bc"
  apt-get update -q >/dev/null
  apt-get install -y -q debootstrap bc >/dev/null
  echo "== host apt: $(( $(date +%s) - T )) s"
fi

if [ ! -x "$ROOT/usr/bin/apt-get" ] || [ ! -f "$ROOT/.liif-debootstrap-done" ]; then
  step_start "debootstrap --variant=minbase trixie $ROOT"
  # a half-finished debootstrap cannot be resumed reliably: start over (only
  # our own mounts may live below $ROOT, so take care not to rm through them)
  if [ -e "$ROOT" ] && [ -n "$(ls -A "$ROOT" 2>/dev/null)" ] && [ ! -e "$ROOT/.liif-gimp-owned" ]; then
    echo "refusing to touch non-empty $ROOT: it was not created by this script" >&2; exit 1
  fi
  if [ -e "$ROOT" ]; then
    for m in dev/shm proc; do
      is_mounted "$ROOT/$m" && umount "$ROOT/$m" || true
    done
    if grep -q " $ROOT/" /proc/self/mounts; then
      echo "refusing to delete $ROOT: something is still mounted below it" >&2; exit 1
    fi
    rm -rf --one-file-system "$ROOT"
  fi
  mkdir -p "$ROOT"; touch "$ROOT/.liif-gimp-owned"
  debootstrap --variant=minbase trixie "$ROOT" "$MIRROR" > "$ROOT.debootstrap.log" 2>&1 || {
    tail -30 "$ROOT.debootstrap.log" >&2; exit 1; }
  touch "$ROOT/.liif-debootstrap-done"
  step_end
fi

ensure_mounts
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
# The host's CA bundle (for pip inside the chroot, before ca-certificates exists there)
mkdir -p "$ROOT/etc/ssl/host"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/host/ca-certificates.crt"
# don't let services start in the chroot
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"; chmod 755 "$ROOT/usr/sbin/policy-rc.d"

step_start "chroot apt-get install $PKGS"
inchroot apt-get update -q >/dev/null
inchroot apt-get install -y -q --no-install-recommends $PKGS > "$ROOT.apt.log" 2>&1 || {
  tail -30 "$ROOT.apt.log" >&2; exit 1; }
inchroot apt-get clean
step_end

if [ -n "$VENV_PKGS" ]; then
  step_start "venv /opt/liif-venv + pip install $VENV_PKGS"
  [ -x "$ROOT/opt/liif-venv/bin/python" ] || inchroot python3 -m venv /opt/liif-venv
  # pip in the chroot must trust the host's CA bundle (copied in above).
  inchroot SSL_CERT_FILE=/etc/ssl/host/ca-certificates.crt PIP_CERT=/etc/ssl/host/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/liif-venv/bin/pip install -q $VENV_PKGS
  step_end
fi

# Warm a GIMP profile template (first start writes ~/.config/GIMP/3.0 and
# queries all plug-ins; copying it into each run's fake HOME saves ~10-20 s).
step_start "warm GIMP HOME template /opt/gimp-home-template"
inchroot /bin/sh -c '
  rm -rf /opt/gimp-home-template && mkdir -p /opt/gimp-home-template &&
  cd /tmp && echo "from gi.repository import Gimp; print(\"warm ok\", Gimp.version())" |
  HOME=/opt/gimp-home-template XDG_CONFIG_HOME=/opt/gimp-home-template/.config \
  XDG_CACHE_HOME=/opt/gimp-home-template/.cache XDG_DATA_HOME=/opt/gimp-home-template/.local/share \
  timeout 300 gimp-console-3.0 -idf --quit --batch-interpreter=python-fu-eval -b -' \
  > "$ROOT.warm.log" 2>&1 || { cat "$ROOT.warm.log" >&2; exit 1; }
grep -q "warm ok" "$ROOT.warm.log" || { echo "warm run did not print 'warm ok':" >&2; cat "$ROOT.warm.log" >&2; exit 1; }
step_end

inchroot gimp-console-3.0 --version || true
inchroot python3 --version
echo "$MARKER_VERSION" > "$MARKER"
date -u +%FT%TZ >> "$MARKER"
printf '== total: %.1f s\n' "$(echo "$(now) - $T_ALL" | bc)"
echo "chroot ready at $ROOT (shared folder: $ROOT/work, seen as /work inside)"
