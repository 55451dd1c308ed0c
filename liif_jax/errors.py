"""Typed errors of liif-jax.

The library raises these; the CLI (and later the bridge) turns them into a one-line message
and an exit code in exactly one place. Every message is written to be shown to a user as is:
one line, says what is wrong and, where it helps, what to do.
"""


class LiifError(Exception):
    """Base class: anything liif-jax reports as a user-facing error."""

    exit_code = 1


class ImageError(LiifError):
    """An input image cannot be read or used (missing, corrupt, empty, odd mode)."""


class RequestError(LiifError):
    """The request itself is invalid (scale <= 0, NaN, size over the pixel limit, ...)."""

    exit_code = 2


class OutputError(LiifError):
    """The output cannot be written (unknown extension, unwritable folder, same as input)."""


class CheckpointError(LiifError):
    """A weight file or torch checkpoint is unreadable, unsafe, or of another architecture."""


class UnsafeCheckpointError(CheckpointError):
    """A torch checkpoint's pickle asked for something outside the allow-list."""


class LiifWarning(UserWarning):
    """Something was done differently from what was asked (e.g. alpha dropped)."""
