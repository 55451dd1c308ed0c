"""Shared test setup: exact float32 matmuls (parity), fixture paths, models loaded once."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

# Compiled programs go to a cache of this test session (inherited by the CLI subprocesses),
# never to the user's ~/.cache.
os.environ.setdefault("LIIF_JAX_CACHE_DIR", tempfile.mkdtemp(prefix="liif-jax-test-cache-"))

import jax
import numpy as np
import pytest

# Parity with the original is defined at full float32 precision.
jax.config.update("jax_default_matmul_precision", "highest")

FIXTURES = Path(__file__).parent / "fixtures"
DEV = FIXTURES / "dev"
TINY = FIXTURES / "tiny"
REPO = Path(__file__).resolve().parent.parent
# The project's shared ground truth sits beside the checkout; tests that need the full
# 19 MB original checkpoint skip (and say so) without it.
SHARED = Path(os.environ.get("LIIF_JAX_SHARED", REPO.parent / "shared"))
AUTHORS_PTH = SHARED / "weights" / "edsr-baseline-liif.pth"

GOLDEN_RE = re.compile(r"(?P<src>.+)_to_(?P<h>\d+)x(?P<w>\d+)(?P<raw>_raw)?\.npy$")


def golden_cases():
    """(file name, input name, (H, W), raw?) for every golden output."""
    cases = []
    for path in sorted(DEV.glob("*_to_*.npy")):
        m = GOLDEN_RE.match(path.name)
        cases.append((path.name, m["src"], (int(m["h"]), int(m["w"])), bool(m["raw"])))
    return cases


@pytest.fixture(scope="session")
def real_model():
    from liif_jax.weights import load_model

    return load_model()


@pytest.fixture(scope="session")
def tiny_model():
    from liif_jax.weights import load_model

    return load_model(TINY / "tiny-liif.pth")


def read_rgb01(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / np.float32(255)


def run_cli(capsys, *args):
    """``liif-jax ARGS`` in this process: (exit code, stdout, stderr). In-process, so a test
    does not pay a JAX import per call; argparse's usage errors count as exit codes."""
    from liif_jax.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """Five small HR photos for training tests (>= 64 px: the tiny config's largest crop is
    16 x 4)."""
    import skimage.data
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    sources = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(),
               skimage.data.rocket(), skimage.data.astronaut()[200:]]
    for i, img in enumerate(sources):
        Image.fromarray(img[:80, :112]).save(root / f"p{i}.png")
    return root
