"""Turn the project's expected errors into one-line messages and exit code 2 at the CLI edge."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


def user_error_types() -> tuple[type[BaseException], ...]:
    from zoo.checkpoints import CheckpointError
    from zoo.data import DataError
    from zoo.registry import UnknownModelError

    return (CheckpointError, DataError, UnknownModelError, UsageError)


class UsageError(Exception):
    """A bad combination of options, explained in one line."""


@contextmanager
def user_errors(also: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Print the project's expected errors (and those in `also`, e.g. a training CLI's KeyError /
    ValueError from bad options) as one line and exit 2."""
    try:
        yield
    except (*user_error_types(), *also) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None
