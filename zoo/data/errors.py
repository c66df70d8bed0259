"""The one exception type of the dataset layer.

Every data problem a user can fix (wrong path, wrong layout, corrupt label) is raised as a
`DataError` with a one-line message that names the file or folder and says what to do. The CLI
prints ``str(e)`` and exits with status 2, so the message *is* the user interface: no tracebacks,
no multi-line dumps.
"""
from __future__ import annotations


class DataError(Exception):
    """A dataset cannot be used as given; the message names the path and the fix."""
