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
import pickle
import sys
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
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


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used for its model; the message names the file and the fix."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint file's tensors do not fit the model it was loaded into: missing or
    unexpected keys, or tensors of other shapes (all named in the message)."""


class WeightsCorruptError(CheckpointError):
    """A checkpoint file cannot be read as weights: truncated (a partial download), damaged
    (a zip CRC that does not match), not a PyTorch file, or holding Python objects other than
    tensors (refused by ``torch.load(weights_only=True)``). The message says where to download
    the file again."""


_LISTED_KEYS = 20


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


def same_weights(label: str | None, other: str | None) -> bool:
    """Whether two ``identity["weights"]`` labels name the same weights: equal labels, or files
    with the same content hash under different names."""
    if label == other:
        return True
    digests = [_digest_of(x) for x in (label, other)]
    return digests[0] is not None and digests[0] == digests[1]


def _digest_of(label: str | None) -> str | None:
    """The hash part of a label ``<file>#sha256:<hex>``; None for other labels."""
    if label is None or "#sha256:" not in label:
        return None
    return label.rsplit("#sha256:", 1)[1]


@contextlib.contextmanager
def seeded_init() -> Iterator[None]:
    """Makes random initialisation on the CPU inside the block the same on every build.

    The CPU generator is seeded with 0 inside the block and restored afterwards, so the caller's
    random stream is untouched. Build models on the CPU inside it, then move them.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(_RANDOM_SEED)
        yield


def load_checkpoint_file(path: str | Path, url: str | None = None) -> Mapping[str, Any]:
    """Reads a checkpoint file safely: CPU, ``weights_only=True``, every zip member's CRC checked.

    Args:
        path: the file.
        url: where the file is published, for the error message; default: looked up by file
            name among the official files of ``refseg.models.registry``.

    Returns:
        The file's top-level mapping (a state dict, or e.g. ``{"model": state_dict}``).

    Raises:
        WeightsCorruptError: the file cannot be read as weights (see the class).
        CheckpointMismatchError: the file holds something other than a mapping.
    """
    path = Path(path)
    _check_zip_members(path, url)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = (
            "it holds Python objects other than tensors, which refseg does not load "
            "(torch.load(weights_only=True)); it is not an official weights file"
            if "Weights only load failed" in str(error)
            else f"its contents are not a PyTorch checkpoint ({_first_line(error)})"
        )
        raise WeightsCorruptError(_corrupt_message(path, reason, url)) from error
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        reason = f"it is truncated or damaged ({type(error).__name__}: {_first_line(error)})"
        raise WeightsCorruptError(_corrupt_message(path, reason, url)) from error
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(
            f"{path} holds a {type(checkpoint).__name__}, not a state dict; pass the official "
            f"weights file. {download_hint(path, url)}"
        )
    return checkpoint


def load_state_dict_strictly(
    model: nn.Module, state_dict: Mapping[str, Any], path: str | Path, fix: str
) -> None:
    """Loads ``state_dict`` into ``model`` in place, refusing any difference in keys or shapes.

    Args:
        model: the built architecture.
        state_dict: tensors in the model's own key layout (already converted).
        path: the file they came from, for the message.
        fix: what to do, ending the message (e.g. which file the model name needs).

    Raises:
        CheckpointMismatchError: naming the file and every missing, unexpected or misshapen
            key (the first 20 of each kind, and how many more).
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    misshapen = [
        f"{key} {_shape(state_dict[key])} instead of {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and _shape(state_dict[key]) != tuple(expected[key].shape)
    ]
    if missing or unexpected or misshapen:
        problems = "; ".join(
            f"{kind} {_listed(keys)}"
            for kind, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("tensors of another shape", misshapen),
            )
            if keys
        )
        raise CheckpointMismatchError(f"{path} does not fit this model: {problems}. {fix}")
    model.load_state_dict(state_dict, strict=True)


def download_hint(path: str | Path, url: str | None = None) -> str:
    """Where to get the file again: ``url``, or the official URL of a file of that name."""
    url = url or _official_url(Path(path).name)
    if url:
        return f"Delete it and download it again from {url}."
    return (
        "Delete it and download the official file again (refseg.models.SAM2_MODELS and "
        "DINOV2_MODELS list each model's URL)."
    )


def _official_url(filename: str) -> str | None:
    from refseg.models.registry import DINOV2_MODELS, SAM2_MODELS

    specs = [*SAM2_MODELS.values(), *DINOV2_MODELS.values()]
    return next((spec.url for spec in specs if spec.filename == filename), None)


def _check_zip_members(path: Path, url: str | None) -> None:
    """Checks the CRC-32 of every member of a zip-format checkpoint (torch's default format),
    which catches damaged bytes inside tensors that ``torch.load`` would read silently."""
    if not zipfile.is_zipfile(path):
        return  # not zip: the legacy format, or a truncated file torch.load reports
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as error:
        raise WeightsCorruptError(
            _corrupt_message(path, f"it is damaged ({type(error).__name__}: {error})", url)
        ) from error
    if bad is not None:
        reason = f"its member {bad!r} fails its CRC-32 check: bytes were damaged"
        raise WeightsCorruptError(_corrupt_message(path, reason, url))


def _corrupt_message(path: Path, reason: str, url: str | None) -> str:
    return (
        f"The weights file {path} cannot be loaded: {reason}. It is probably an incomplete or "
        f"damaged download. {download_hint(path, url)}"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no details"


def _shape(value: Any) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED_KEYS])
    more = f" and {len(keys) - _LISTED_KEYS} more" if len(keys) > _LISTED_KEYS else ""
    return f"[{shown}{more}]"
