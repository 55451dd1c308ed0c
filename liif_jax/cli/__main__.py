"""``python -m liif_jax.cli`` is the ``liif-jax`` command too (as ``python -m liif_jax``)."""

import sys

from liif_jax.cli import main

sys.exit(main())
