"""Database loss during a run: one clear error instead of a driver traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pymongo.errors


class DatabaseUnavailableError(RuntimeError):
    """FiftyOne's database became unreachable during a run."""


@contextmanager
def database_errors(action: str) -> Iterator[None]:
    """Turns a lost connection to the database inside the block into a
    :class:`DatabaseUnavailableError` that says what was kept and how to continue.

    Args:
        action: what the run was doing, e.g. ``"predicting into field 'refseg'"``.
    """
    try:
        yield
    except pymongo.errors.ConnectionFailure as error:
        raise DatabaseUnavailableError(
            f"The database became unreachable while {action} ({type(error).__name__}: "
            f"{str(error)[:300]}). Everything written before is intact: once the database is "
            "reachable again, run the same call with resume=True to continue where it stopped."
        ) from error
