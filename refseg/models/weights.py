"""Finding checkpoint files, and naming their contents.

A checkpoint is looked for in this order: the path the user passed, then FiftyOne's model zoo
directory (``fiftyone.config.model_zoo_dir``), then a download into that directory from the
official URL. Machines without a network end at :class:`WeightsNotFoundError`, whose message
says which file to put where.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.hub import download_url_to_file

logger = logging.getLogger(__name__)

_HASH_CHUNK_BYTES = 1 << 20
_RANDOM_SEED = 0

RANDOM_WEIGHTS = f"random(seed={_RANDOM_SEED})"
"""The ``identity["weights"]`` of a model built with ``pretrained=False``."""


@dataclass(frozen=True)
class MissingWeights:
    """One checkpoint file that is neither where it was looked for nor downloadable.

    Attributes:
        filename: the official file name, e.g. ``"sam2.1_hiera_large.pt"``.
        path: where it was looked for: the explicit ``checkpoint`` path, or the model zoo
            directory joined with ``filename`` (where a fetched copy belongs).
        url: the official download URL.
        explicit: True when ``path`` is a path the caller passed (``checkpoint=``).
        reason: why the download failed; None for an explicit path (nothing is downloaded).
        model: the registry name of the model, when known (else "").
        size_bytes: the file's size in bytes, when known.
    """

    filename: str
    path: Path
    url: str
    explicit: bool = False
    reason: str | None = None
    model: str = ""
    size_bytes: int | None = None


class WeightsNotFoundError(FileNotFoundError):
    """A model's checkpoint file is neither at the given path, in the zoo dir, nor downloadable.

    Attributes:
        missing: one :class:`MissingWeights` per missing file, for callers (such as the command
            line) that word their own message.
    """

    def __init__(self, message: str, missing: Sequence[MissingWeights] = ()) -> None:
        super().__init__(message)
        self.missing = tuple(missing)


class RandomWeightsWarning(UserWarning):
    """A model was built with random weights (``pretrained=False``): its outputs are meaningless."""


def warn_random_weights(name: str) -> None:
    """Warns that model ``name`` has random weights, at the first caller outside refseg.

    The warning's location is the user's line that led here (their ``build_memory_bank`` or
    ``predict`` call, say), not refseg's internals, so Python's default filter shows it once per
    such line and echoes that line.
    """
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(package_dir):
        frame, level = frame.f_back, level + 1
    warnings.warn(
        f"{name} has random weights (pretrained=False): its outputs are meaningless; "
        "use it only for tests",
        RandomWeightsWarning,
        stacklevel=level,
    )


class CheckpointMismatchError(RuntimeError):
    """A checkpoint file's tensors do not fit the model it was loaded into."""


def model_zoo_dir() -> Path:
    """FiftyOne's model zoo directory, where refseg keeps and looks for checkpoint files."""
    import fiftyone as fo

    return Path(fo.config.model_zoo_dir).expanduser()


def resolve_checkpoint(filename: str, url: str, checkpoint: str | Path | None = None) -> Path:
    """Returns the path of a model's checkpoint file, downloading it if needed and possible.

    Args:
        filename: the official file name, e.g. ``"sam2.1_hiera_large.pt"``.
        url: the official download URL of that file.
        checkpoint: an explicit file path; when given it must exist and nothing else is tried.

    Raises:
        WeightsNotFoundError: the explicit path does not exist, or the file is not in the model
            zoo directory and could not be downloaded. The message names the file, the
            directory, the URL and the alternatives.
    """
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"checkpoint={str(checkpoint)!r} is not a file. Pass the path of {filename}, "
                f"or checkpoint=None to look for it in FiftyOne's model zoo directory.",
                [MissingWeights(filename, path, url, explicit=True)],
            )
        return path
    directory = model_zoo_dir()
    path = directory / filename
    if path.is_file():
        return path
    failure = _download(url, path)
    if failure is None:
        return path
    raise WeightsNotFoundError(
        f"Weights file {filename} not found in {directory} and the download from {url} failed "
        f"({failure}). Download it on a machine with a network and place it at {path}, or pass "
        f"checkpoint='/path/to/{filename}', or pretrained=False for random weights (testing only).",
        [MissingWeights(filename, path, url, reason=failure)],
    )


def _download(url: str, path: Path) -> str | None:
    """Downloads ``url`` to ``path``; returns None on success, else the reason it failed."""
    logger.info("Downloading %s to %s", url, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        download_url_to_file(url, str(path), progress=True)
    except (OSError, http.client.HTTPException) as error:
        return f"{type(error).__name__}: {error}"
    return None


def file_digest(path: str | Path, length: int = 12) -> str:
    """Short content hash of a file: the first ``length`` hex digits of its SHA-256.

    Reads the whole file (seconds for a multi-gigabyte checkpoint); callers that ask often should
    go through ``ModelCache.checkpoint_digest``, which remembers it per path and mtime.
    """
    sha = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_HASH_CHUNK_BYTES), b""):
            sha.update(chunk)
    return sha.hexdigest()[:length]


def weights_label(path: Path, digest: str) -> str:
    """The ``identity["weights"]`` of a model loaded from ``path``: file name and short hash."""
    return f"{path.name}#sha256:{digest}"


@contextlib.contextmanager
def seeded_init() -> Iterator[None]:
    """Makes random initialisation on the CPU inside the block the same on every build.

    The CPU generator is seeded with 0 inside the block and restored afterwards, so the caller's
    random stream is untouched. Build models on the CPU inside it, then move them.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(_RANDOM_SEED)
        yield
