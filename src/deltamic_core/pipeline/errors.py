"""The pipeline's errors: problems the user can fix (:class:`InputError`) and fits that failed.

Library code raises these with a message in the user's terms; only the front ends
(``deltamic_core.cli.main``, the napari widget) turn them into one line or a notification.
"""

from __future__ import annotations

EXIT_USAGE = 2  # bad command line or bad input
EXIT_FAILURE = 1  # a run that failed for another reason


class PipelineError(Exception):
    """Base of the pipeline's own errors; ``code`` is the command line's exit status."""

    code = EXIT_FAILURE


class InputError(PipelineError, ValueError):
    """A problem with the input the user can fix (a file, an option, a value)."""

    code = EXIT_USAGE


class FitFailedError(PipelineError, RuntimeError):
    """A fit that ran but produced no usable result."""

    code = EXIT_FAILURE


class InputWarning(UserWarning):
    """Something about the input the user should know (e.g. a voxel size that was assumed)."""


def one_line(exc: BaseException) -> str:
    """An exception as one line in the user's terms (no class name for our own errors)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, PipelineError):
        return text
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"no such file: {exc.filename}"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or text}"
    if isinstance(exc, (ValueError, TypeError)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
