"""The errors of the checkpoint reader -- and the root of liif-jax's error classes.

``convert_weights`` depends on nothing of ``liif_jax`` (``liif_jax`` imports it, never the
reverse), yet every problem with a checkpoint must be a ``liif_jax.errors.CheckpointError``,
and so a ``liif_jax.errors.LiifError``, the one class liif-jax's users catch. So these three
classes are defined here, at the bottom of the import graph, and ``liif_jax.errors``
re-exports them: ``liif_jax.errors.CheckpointError is convert_weights.errors.CheckpointError``.

Every class says how it is reported: ``exit_code`` (the command's exit status) and
``bridge_code`` (the error code of the bridge protocol, ``liif_jax.bridge.protocol.ERROR_CODES``).
"""


class LiifError(Exception):
    """Base class: anything liif-jax reports as a user-facing error."""

    exit_code = 1
    bridge_code = "request"


class CheckpointError(LiifError):
    """A weight file or torch checkpoint is unreadable, unsafe, or of another architecture."""

    exit_code = 1
    bridge_code = "checkpoint"


class UnsafeCheckpointError(CheckpointError):
    """A torch checkpoint's pickle asked for something outside the allow-list."""
