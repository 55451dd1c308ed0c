"""Read the authors' PyTorch LIIF checkpoints without torch and without running any code from
them (``torch_pickle``), and map their torch names and layouts to liif-jax's (``mapping``).

This package needs only NumPy and the standard library and imports nothing of ``liif_jax``:
``liif_jax`` imports it (``liif_jax.convert`` builds the model and writes the weight file),
never the reverse. ``python -m convert_weights SRC.pth DST`` is ``liif-jax convert``.

Importing the package is cheap (``liif_jax.errors`` imports ``convert_weights.errors`` at every
start of liif-jax): the reader loads on first use.
"""

_EXPORTS = {
    "load_checkpoint": "convert_weights.torch_pickle",
    "open_checkpoint": "convert_weights.torch_pickle",
    "TensorRef": "convert_weights.torch_pickle",
    "map_state_dict": "convert_weights.mapping",
    "CheckpointError": "convert_weights.errors",
    "UnsafeCheckpointError": "convert_weights.errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'convert_weights' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
