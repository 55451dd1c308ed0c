"""``python -m liif_jax`` is the ``liif-jax`` command (used where the script is not on PATH,
e.g. by the GIMP plug-in, which knows the interpreter)."""

import sys

from liif_jax.cli import main

sys.exit(main())
