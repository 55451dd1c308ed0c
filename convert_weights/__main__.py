"""``python -m convert_weights SRC.pth DST.safetensors`` -- same as ``liif-jax convert``."""

import sys

from liif_jax.cli import convert_main

if __name__ == "__main__":
    sys.exit(convert_main())
