"""Typed errors of liif-jax, every one of them here.

The library raises these; the CLI and the bridge turn them into a one-line message and an
exit code (``exit_code``) or a bridge error code (``bridge_code``, one of
``liif_jax.bridge.protocol.ERROR_CODES``), each in exactly one place. Every message is written
to be shown to a user as is: one line, says what is wrong and, where it helps, what to do.

``LiifError``, ``CheckpointError`` and ``UnsafeCheckpointError`` are defined in
``convert_weights.errors`` (the checkpoint reader, which imports nothing of liif_jax, raises
them) and are the same classes here.
"""

from convert_weights.errors import CheckpointError, LiifError, UnsafeCheckpointError

def one_line(message) -> str:
    """``message`` (an exception or text) as one line: every run of whitespace, newlines
    included, becomes one space -- how every error reaches a user, a log or the bridge."""
    return " ".join(str(message).split())


__all__ = ["one_line", "CheckpointError", "LiifError", "UnsafeCheckpointError", "ImageError", "RequestError",
           "OutputError", "Cancelled", "TrainingInterrupted", "DataPipelineError", "NonFiniteParams",
           "OtherModelError", "LoaderChoiceError", "LiifWarning"]


class ImageError(LiifError):
    """An input image cannot be read or used (missing, corrupt, empty, odd mode)."""

    exit_code = 1
    bridge_code = "image"


class RequestError(LiifError):
    """The request itself is invalid (scale <= 0, NaN, size over the pixel limit, ...)."""

    exit_code = 2
    bridge_code = "request"


class OutputError(LiifError):
    """The output cannot be written (unknown extension, unwritable folder, same as input)."""

    exit_code = 1
    bridge_code = "request"


class Cancelled(LiifError):
    """The progress callback asked to stop (``liif_jax.upscale``'s ``progress`` returned False,
    or a bridge client cancelled)."""

    exit_code = 130
    bridge_code = "cancelled"


class TrainingInterrupted(LiifError):
    """Training stopped on Ctrl+C or SIGTERM (after saving a checkpoint)."""

    exit_code = 130
    bridge_code = "cancelled"


class DataPipelineError(LiifError):
    """The input pipeline failed or went out of step (the run saved what it had first)."""

    exit_code = 1
    bridge_code = "request"


class NonFiniteParams(LiifError):
    """The parameters became NaN or infinite: saving them would replace good checkpoints with
    useless ones, so the run stops instead."""

    exit_code = 3
    bridge_code = "request"


class OtherModelError(CheckpointError):
    """A checkpoint of a different model (spec) than the run's."""


class LoaderChoiceError(LiifError):
    """The training config names a data loader that does not exist."""

    exit_code = 2
    bridge_code = "request"


class LiifWarning(UserWarning):
    """Something was done differently from what was asked (e.g. alpha dropped)."""
