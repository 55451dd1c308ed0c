"""liif-jax: LIIF (Local Implicit Image Function, Chen et al., CVPR 2021) in JAX/Flax --
arbitrary-scale super-resolution that reproduces the authors' PyTorch model number for number.

    import liif_jax
    out = liif_jax.upscale(image, scale=3.3)          # float32 in [0, 1]
    out = liif_jax.upscale(image, size=(1440, 1080))  # (width, height)

Importing this package is cheap (no JAX, no weights): everything loads on first use, so
``liif-jax --help`` and the GIMP bridge start fast.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "upscale": "liif_jax.api",
    "output_size": "liif_jax.api",
    "load_model": "liif_jax.weights",
    "save_weights": "liif_jax.weights",
    "LiifModel": "liif_jax.weights",
    "make_coord": "liif_jax.geometry",
    "make_cell": "liif_jax.geometry",
    "query_geometry": "liif_jax.geometry",
    "LiifError": "liif_jax.errors",
    "ImageError": "liif_jax.errors",
    "RequestError": "liif_jax.errors",
    "OutputError": "liif_jax.errors",
    "CheckpointError": "liif_jax.errors",
    "Cancelled": "liif_jax.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'liif_jax' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
