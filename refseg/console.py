"""What refseg's commands print: their log level, progress bars, warnings and database notices.

:func:`command_output` sets these for one command and restores them afterwards, because commands
also run inside tests and notebooks. Nothing here imports FiftyOne or torch until a command runs
with ``quiet``, so ``refseg --help`` stays fast.

FiftyOne logs one notice on every database connection while it runs MongoDB 6, the newest
MongoDB any package registry provides for its embedded database ("You are running the oldest
supported major version of MongoDB ..."). refseg's commands drop exactly that log record.
FiftyOne's own switch for it, ``database_validation=False``
(``FIFTYONE_DATABASE_VALIDATION=false``), also turns off its MongoDB version check and
feature-compatibility upgrade, so refseg leaves that choice to the user.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

MONGODB_NOTICE = "You are running the oldest supported major version of MongoDB"
"""The start of the notice :func:`mongodb_notice_dropped` drops."""

_DATABASE_LOGGER = "fiftyone.core.odm.database"


class _DropMongodbNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(MONGODB_NOTICE)


@contextlib.contextmanager
def mongodb_notice_dropped() -> Iterator[None]:
    """Inside the block, FiftyOne's "oldest supported major version of MongoDB" notice is not
    logged; every other database message is."""
    database_logger = logging.getLogger(_DATABASE_LOGGER)
    notice_filter = _DropMongodbNotice()
    database_logger.addFilter(notice_filter)
    try:
        yield
    finally:
        database_logger.removeFilter(notice_filter)


@contextlib.contextmanager
def command_output(
    *, quiet: bool = False, verbose: bool = False, silenced: tuple[type[Warning], ...] = ()
) -> Iterator[None]:
    """Sets what a command prints, for the duration of the block.

    Args:
        quiet: only warnings and errors from refseg and FiftyOne, and no FiftyOne progress bars
            (refseg's own bars are the caller's ``progress=`` arguments).
        verbose: refseg's debug messages too.
        silenced: warning categories not shown, because the command says the same once itself
            (e.g. random weights chosen on the command line).

    refseg's log records go to stderr as bare messages; the results a command prints go to stdout.
    """
    if quiet and verbose:
        raise ValueError("quiet and verbose contradict each other; choose one")
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    refseg_logger = logging.getLogger("refseg")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = (refseg_logger.level, refseg_logger.propagate)
    refseg_logger.setLevel(level)
    refseg_logger.propagate = False
    refseg_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(), mongodb_notice_dropped(), _fiftyone_quiet(quiet):
            for category in silenced:
                warnings.simplefilter("ignore", category)
            yield
    finally:
        refseg_logger.removeHandler(handler)
        refseg_logger.setLevel(saved[0])
        refseg_logger.propagate = saved[1]


@contextlib.contextmanager
def _fiftyone_quiet(quiet: bool) -> Iterator[None]:
    """Raises the log level of FiftyOne (and of its eta package) to WARNING and hides FiftyOne's
    progress bars, when ``quiet``."""
    if not quiet:
        yield
        return
    import fiftyone as fo

    loggers = [logging.getLogger(name) for name in ("fiftyone", "eta")]  # FiftyOne's own
    saved = ([each.level for each in loggers], fo.config.show_progress_bars)
    for each in loggers:
        each.setLevel(logging.WARNING)
    fo.config.show_progress_bars = False
    try:
        yield
    finally:
        for each, level in zip(loggers, saved[0], strict=True):
            each.setLevel(level)
        fo.config.show_progress_bars = saved[1]
