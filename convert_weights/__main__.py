"""``python -m convert_weights SRC.pth DST.safetensors`` -- same as ``liif-jax convert``.

A program entry, not part of the package: it is the one file of ``convert_weights`` that
imports ``liif_jax`` (the command needs the model), and nothing imports it.
"""

import sys

from liif_jax.cli import convert_main

if __name__ == "__main__":
    sys.exit(convert_main())
