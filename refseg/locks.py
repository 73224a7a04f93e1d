"""Run locks in the database: one writer per label field (or bank name) at a time.

A run that writes a field takes the field's lock for its duration: a document in the
``refseg_locks`` collection of FiftyOne's database, naming the run and every process working
for it, each with a heartbeat refreshed in the background. A second run into the same field is
refused at once with a :class:`RunLockedError` naming the running one. Processes of the same
run (the shards of a distributed prediction) join its lock instead of being refused.

A lock left by a killed process is recovered automatically: its holder counts as gone when
its heartbeat is older than ``timeout_s`` (default :data:`LOCK_TIMEOUT_S`), or at once when it
ran on this machine and its process no longer exists. ``force=True`` takes a lock regardless.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pymongo.errors

logger = logging.getLogger(__name__)

LOCK_COLLECTION = "refseg_locks"
LOCK_TIMEOUT_S = 120.0
"""A holder whose heartbeat is older than this is taken for dead (seconds)."""
HEARTBEAT_S = 15.0
"""How often a holder refreshes its heartbeat (seconds)."""


class RunLockedError(RuntimeError):
    """Another run holds the lock of the field (or bank) this run would write."""


@dataclass(frozen=True)
class Holder:
    """One process working for the run that holds a lock.

    Attributes:
        token: unique per lock taken.
        host: machine name.
        pid: process id on that machine.
        heartbeat: last refresh, UTC.
    """

    token: str
    host: str
    pid: int
    heartbeat: datetime

    def alive(self, now: datetime, timeout_s: float) -> bool:
        """Whether this holder still counts: a fresh heartbeat, and a live process if local."""
        if (now - self.heartbeat).total_seconds() > timeout_s:
            return False
        if self.host == socket.gethostname() and not _process_exists(self.pid):
            return False
        return True


class RunLock:
    """The lock of one resource of one dataset, held by one run (see the module docstring).

    Usage::

        with RunLock(dataset, "field:refseg", run_id=run_id, description="predict ..."):
            ...  # write the field

    Args:
        dataset: the ``fo.Dataset`` whose resource is locked.
        resource: what is locked, e.g. ``"field:refseg"`` or ``"bank:my_bank"``.
        run_id: the run; processes with the same id share the lock. Default: a new id.
        description: what the run does, shown to a refused run.
        timeout_s: heartbeat age after which a holder counts as dead.
        force: take the lock even from a live run (use only when it is known to be dead).
    """

    def __init__(
        self,
        dataset: Any,
        resource: str,
        *,
        run_id: str | None = None,
        description: str = "",
        timeout_s: float = LOCK_TIMEOUT_S,
        heartbeat_s: float = HEARTBEAT_S,
        force: bool = False,
    ) -> None:
        self.key = f"{dataset._doc.id}:{resource}"
        self.resource = resource
        self.dataset_name = dataset.name
        self.run_id = run_id or uuid.uuid4().hex
        self.description = description
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s
        self.force = force
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- context manager ----------------------------------------------------------------------

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    # -- acquire / release ----------------------------------------------------------------------

    def acquire(self) -> None:
        """Takes or joins the lock, then refreshes it in the background until released.

        Raises:
            RunLockedError: another run holds it (the message names it and what to do).
        """
        collection = _collection()
        now = _now()
        me = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": now}
        for _ in range(5):  # a few rounds of optimistic concurrency
            document = collection.find_one({"_id": self.key})
            if document is None:
                try:
                    collection.insert_one(self._document(me, now))
                    break
                except pymongo.errors.DuplicateKeyError:
                    continue
            holders = _live_holders(document, now, self.timeout_s)
            if document["run_id"] != self.run_id and holders and not self.force:
                raise RunLockedError(self._refusal(document, holders))
            if document["run_id"] != self.run_id or not holders:
                replacement = self._document(me, now)
            else:
                replacement = {**document, "holders": {**_raw(holders), self.token: me}}
            replaced = collection.replace_one(
                {"_id": self.key, "revision": document["revision"]},
                {**replacement, "revision": document["revision"] + 1},
            )
            if replaced.modified_count == 1:
                break
        else:
            raise RunLockedError(f"could not take the lock of {self._what()}: it kept changing")
        self._thread = threading.Thread(target=self._beat, name="refseg-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Leaves the lock; the last holder of the run deletes it. Never raises."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            collection = _collection()
            collection.update_one({"_id": self.key}, {"$unset": {f"holders.{self.token}": ""}})
            collection.delete_one({"_id": self.key, "holders": {}})
        except pymongo.errors.PyMongoError as error:
            logger.warning("could not release the lock of %s: %s", self._what(), error)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                _collection().update_one(
                    {"_id": self.key, f"holders.{self.token}": {"$exists": True}},
                    {"$set": {f"holders.{self.token}.heartbeat": _now()}},
                )
            except pymongo.errors.PyMongoError as error:  # the run itself will report it
                logger.warning("lock heartbeat of %s failed: %s", self._what(), error)

    def _document(self, me: dict, now: datetime) -> dict:
        return {
            "_id": self.key,
            "run_id": self.run_id,
            "resource": self.resource,
            "dataset": self.dataset_name,
            "description": self.description,
            "started": now,
            "holders": {self.token: me},
            "revision": 0,
        }

    def _what(self) -> str:
        return f"{self.resource} of dataset {self.dataset_name!r}"

    def _refusal(self, document: dict, holders: list[Holder]) -> str:
        where = ", ".join(f"pid {h.host}:{h.pid}" for h in holders)
        age = (_now() - max(h.heartbeat for h in holders)).total_seconds()
        return (
            f"{self._what()} is being written by another run: {document.get('description')!r} "
            f"(run {document['run_id']}, started {document['started']:%Y-%m-%d %H:%M:%S} UTC, "
            f"{where}, last heartbeat {age:.0f} s ago). Wait for it to finish, write another "
            f"field, or, if that run is dead, run again after {self.timeout_s:.0f} s without a "
            "heartbeat or pass force=True."
        )


def lock_info(dataset: Any, resource: str) -> dict | None:
    """The lock document of a resource (None when unlocked), for status displays."""
    return _collection().find_one({"_id": f"{dataset._doc.id}:{resource}"})


def _live_holders(document: dict, now: datetime, timeout_s: float) -> list[Holder]:
    holders = [
        Holder(token, h["host"], h["pid"], _aware(h["heartbeat"]))
        for token, h in document.get("holders", {}).items()
    ]
    return [h for h in holders if h.alive(now, timeout_s)]


def _raw(holders: list[Holder]) -> dict:
    return {h.token: {"host": h.host, "pid": h.pid, "heartbeat": h.heartbeat} for h in holders}


def _collection():
    import fiftyone.core.odm as foo

    return foo.get_db_conn()[LOCK_COLLECTION]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(moment: datetime) -> datetime:
    """MongoDB returns naive UTC datetimes."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
