"""Expected video failures, reported by the CLIs as one line (exit 2) through `zoo.errors.user_errors`."""
from __future__ import annotations

from zoo.errors import UsageError


class VideoError(UsageError):
    """A source, element, decoder or sink problem, explained in one line with the fix."""

    def __init__(self, message: str):
        # One line, always: GStreamer's messages and debug strings may span several.
        super().__init__(" ".join(str(message).split()))


class GstUnavailable(VideoError):
    """GStreamer or its Python binding (PyGObject) cannot be imported here."""
