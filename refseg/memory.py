"""The memory bank: reference prototypes with their provenance, saved safely and versioned.

File format (``to_bytes`` / ``save``): an ``.npz`` archive without pickles holding ``header``
(UTF-8 JSON: format name, version, class names, reference records, models, settings),
``prototypes`` ((R, D) little-endian float32), ``labels`` ((R,) little-endian int64) and, from
format version 2, ``sha256``: the hex SHA-256 of the header bytes followed by the bytes of the two
arrays, so a damaged, truncated or edited file is refused instead of silently giving other
scores.

Versions:
- 1: no checksum, no field, every reference positive. Still loads.
- 2: the checksum, each reference's label field and polarity (negatives stored, not scored).
  Still loads (negatives are then scored, see version 3).
- 3 (written now): negative references are scored (``PredictConfig.use_negatives``), each
  reference records the confidence of the label it came from when that label was a prediction
  (``ReferenceRecord.score``), and the header holds the per-class score thresholds
  (``MemoryBank.thresholds``, possibly empty). Readers of version 2 refuse it with "written by
  a newer refseg" instead of silently ignoring what changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import struct
import zipfile
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from refseg.config import ReferenceConfig
from refseg.models.weights import same_weights

FORMAT = "refseg.memory_bank"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
"""Format versions :meth:`MemoryBank.from_bytes` reads."""

_PROTOTYPE_DTYPE = np.dtype("<f4")
_LABEL_DTYPE = np.dtype("<i8")


class BankFileError(ValueError):
    """A memory bank file or stored bank cannot be used: not a bank, damaged, truncated,
    edited after it was written, or of an unknown format version. The message names the file
    or run, says what is wrong and how to get a good bank back."""


@dataclass(frozen=True)
class ReferenceRecord:
    """Where one reference instance came from.

    Attributes:
        dataset: FiftyOne dataset name ("" for references not from a dataset).
        sample_id: FiftyOne sample id.
        label_id: FiftyOne label id of the reference Detection.
        label: class name.
        filepath: the image file.
        box: (x, y, w, h) box in original-image pixels.
        mask_source: "label" when the label's mask was used, "box" when the proposer made the
            mask from the box.
        field: the label field the reference came from ("" when unknown: banks of format
            version 1). Predictions are never written into this field of this dataset, unless
            the reference came from a prediction (``score`` is set): see ``score``.
        negative: polarity. False is an example of its class; True marks a "not this class"
            example. Class prototypes are made from the positive references only; negative
            ones lower the scores of the proposals that look more like them than like their
            class (``refseg.matching.class_scores_with_negatives``).
        score: the ``confidence`` of the label when it was a prediction (any label with a
            confidence counts as one), None for an annotation. A reference taken from a
            prediction does not protect its field from predictions (``refseg.field_safety``):
            the bank keeps the prototype and this record, so re-predicting into that field,
            which replaces the label, loses nothing the bank needs. Annotations (ground truth,
            hand-drawn labels, accepted predictions, which carry no confidence) are
            protected.
    """

    dataset: str
    sample_id: str
    label_id: str
    label: str
    filepath: str
    box: tuple[float, float, float, float]
    mask_source: str = "label"
    field: str = ""
    negative: bool = False
    score: float | None = None

    @property
    def from_prediction(self) -> bool:
        """Whether the reference came from a prediction (its label had a confidence)."""
        return self.score is not None


@dataclass(frozen=True)
class MemoryBank:
    """Instance prototypes of the reference instances, and everything needed to trust them.

    Only the prototypes are kept (method.md stage 2): a bank is kilobytes to megabytes. Class
    prototypes are derived on demand, so references can be added or removed without
    re-encoding the others.

    Negative references ("not this class", ``ReferenceRecord.negative``) belong to a class the
    bank has positive references of; a bank holding a class with only negative references is
    refused, except a bank of negative references only, which is an intermediate value to
    merge into a bank of positives with :meth:`with_references` (it cannot predict:
    :meth:`check_predictable`).

    Attributes:
        class_names: C class names; a class index is a position in this tuple.
        prototypes: (R, D) float32 instance prototypes, mask-weighted mean patch features
            (not normalised), one per reference.
        labels: (R,) int64 class index of each reference.
        references: R provenance records, aligned with ``prototypes``.
        encoder: identity of the feature encoder that made the prototypes.
        proposer: identity of the mask proposer chosen with the bank (it made the masks of
            box-only references, and is the default proposer for predictions).
        settings: the reference settings used.
        thresholds: per-class final score thresholds (class name -> value in [0, 1]),
            suggested by ``refseg.suggest_thresholds`` and stored with :meth:`with_thresholds`;
            applied by ``predict`` with ``PredictConfig(use_bank_thresholds=True)``, or over
            stored predictions by ``refseg.threshold_view``. Kept for the classes that stay
            when references are added or removed (re-suggest them after such an edit: scores
            move with the references).
    """

    class_names: tuple[str, ...]
    prototypes: np.ndarray
    labels: np.ndarray
    references: tuple[ReferenceRecord, ...]
    encoder: dict[str, Any]
    proposer: dict[str, Any]
    settings: ReferenceConfig = field(default_factory=ReferenceConfig)
    thresholds: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        r = len(self.references)
        if self.prototypes.ndim != 2 or self.prototypes.shape[0] != r:
            raise ValueError(
                f"MemoryBank: expected prototypes of shape ({r}, D), got {self.prototypes.shape}"
            )
        if self.labels.shape != (r,):
            raise ValueError(
                f"MemoryBank: expected labels of shape ({r},), got {self.labels.shape}"
            )
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"MemoryBank: duplicate class names in {list(self.class_names)}")
        if r and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError("MemoryBank: a reference's class index is out of range")
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        missing = [name for name, count in zip(self.class_names, counts) if count == 0]
        if missing:
            raise ValueError(f"MemoryBank: classes without any reference: {missing}")
        if not np.isfinite(self.prototypes).all():
            raise ValueError("MemoryBank: prototypes contain NaN or infinite values")
        for record, label in zip(self.references, self.labels):
            if record.label != self.class_names[label]:
                raise ValueError(
                    f"MemoryBank: reference {record.label_id} is labelled {record.label!r} "
                    f"but filed under {self.class_names[label]!r}"
                )
        self._check_polarity()
        self._check_thresholds()

    def _check_polarity(self) -> None:
        """Refuses classes with negative references only, unless every reference is negative
        (a bank of negatives to merge)."""
        negatives = self.negatives
        if negatives.all():
            return
        positive = np.bincount(self.labels[~negatives], minlength=len(self.class_names))
        without = [name for name, count in zip(self.class_names, positive) if count == 0]
        if without:
            ids = [r.label_id for r in self.references if r.negative and r.label in without]
            raise ValueError(
                f"MemoryBank: classes {without} have only negative references: a negative "
                "reference is 'not <class>' for a class the bank has positive references of. "
                f"Add positive references of them first, or leave out the negatives {ids}"
            )

    def _check_thresholds(self) -> None:
        for name, value in self.thresholds.items():
            if name not in self.class_names:
                raise ValueError(
                    f"MemoryBank: a score threshold is given for {name!r}, which is not a class "
                    f"of the bank ({list(self.class_names)})"
                )
            if not _is_unit_number(value):
                raise ValueError(
                    f"MemoryBank: the score threshold of {name!r} must be a number in [0, 1], "
                    f"got {value!r}"
                )

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return self.prototypes.shape[1]

    @property
    def negatives(self) -> np.ndarray:
        """(R,) bool: which references are negative ("not this class") examples."""
        return np.array([r.negative for r in self.references], dtype=bool)

    @property
    def has_negatives(self) -> bool:
        """Whether the bank holds any negative reference."""
        return bool(self.negatives.any())

    def shots(self, negative: bool = False) -> dict[str, int]:
        """Number of references of each class: the positive ones (the shots, default), or the
        negative ones with ``negative=True``. Every class of the bank is a key."""
        chosen = self.labels[self.negatives == negative]
        counts = np.bincount(chosen, minlength=len(self.class_names))
        return dict(zip(self.class_names, counts.tolist()))

    def counts(self) -> dict[str, dict[str, int]]:
        """Positive and negative references of each class:
        ``{class: {"positive": n, "negative": m}}``, in class order."""
        positive, negative = self.shots(), self.shots(negative=True)
        return {
            name: {"positive": positive[name], "negative": negative[name]}
            for name in self.class_names
        }

    def check_predictable(self) -> None:
        """Raises a ValueError when the bank cannot predict: it holds negative references only.

        (Classes with only negative references in a bank with positives are refused when the
        bank is made.)
        """
        if not len(self.references) or self.negatives.all():
            raise ValueError(
                f"This memory bank holds only negative references ({len(self.references)} "
                "'not <class>' examples), so it has no class to predict. Merge it into a bank "
                "of positive references: bank.with_references(negatives)"
            )

    def class_prototypes(self) -> np.ndarray:
        """(C, D) float32 class prototypes: the L2-normalised mean of each class's positive
        instances. Negative references never enter a class prototype.

        Raises:
            ValueError: the bank holds only negative references (:meth:`check_predictable`).
        """
        self.check_predictable()
        positive = ~self.negatives
        counts = np.bincount(self.labels[positive], minlength=len(self.class_names))
        sums = np.zeros((len(self.class_names), self.dim), dtype=np.float64)
        np.add.at(sums, self.labels[positive], self.prototypes[positive].astype(np.float64))
        means = sums / counts[:, None]
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        return (means / np.maximum(norms, 1e-12)).astype(np.float32)

    def negative_prototypes(self) -> tuple[np.ndarray, np.ndarray]:
        """The negative references as the scoring uses them.

        Returns:
            prototypes: (M, D) float32, each negative instance prototype L2-normalised (the
                research code normalises each negative instance; they are not averaged);
            labels: (M,) int64 class index of each (the class it is "not").
        """
        negative = self.negatives
        prototypes = self.prototypes[negative].astype(np.float64)
        norms = np.linalg.norm(prototypes, axis=1, keepdims=True)
        return (prototypes / np.maximum(norms, 1e-12)).astype(np.float32), self.labels[negative]

    def with_thresholds(self, thresholds: Mapping[str, float] | None) -> "MemoryBank":
        """A new bank with these per-class score thresholds (replacing any stored ones; None
        or an empty mapping removes them). Pass ``ThresholdTable.thresholds`` or a dict.

        Raises:
            ValueError: a class is not in the bank, or a value is not a number in [0, 1].
        """
        values = {
            str(name): float(value) if _is_unit_number(value) else value
            for name, value in (thresholds or {}).items()
        }
        return dataclasses.replace(self, thresholds=values)

    def check_encoder(self, identity: dict[str, Any], dim: int) -> None:
        """Raises a ValueError unless ``identity`` is the encoder that built this bank: the
        same name and the same weights (by content hash where the weights are a file)."""
        same_name = identity.get("name") == self.encoder.get("name")
        if (
            not (same_name and same_weights(identity.get("weights"), self.encoder.get("weights")))
            or dim != self.dim
        ):
            raise ValueError(
                f"This memory bank was built with encoder {self.encoder} (D={self.dim}) but the "
                f"encoder in use is {identity} (D={dim}). Predict with the bank's encoder "
                "(leave the models unset to use the bank's), or rebuild the bank."
            )

    def with_references(self, other: "MemoryBank") -> "MemoryBank":
        """A new bank with ``other``'s references added (no re-encoding): more positive
        references, or negative ones (a bank built with ``negative=True``). This bank's
        thresholds are kept; ``other``'s are not taken.

        Raises:
            ValueError: if the banks' encoders or settings differ, a label is in both, or the
                result would hold a class with only negative references (negatives of a class
                this bank has no positive reference of are refused, not ignored).
        """
        self.check_encoder(other.encoder, other.dim)
        if other.settings != self.settings:
            raise ValueError(
                f"Cannot add references encoded with settings {other.settings} to a bank "
                f"built with {self.settings}"
            )
        duplicate = {r.label_id for r in self.references} & {r.label_id for r in other.references}
        if duplicate:
            raise ValueError(f"References already in the bank: {sorted(duplicate)}")
        return self._from_records(
            list(zip(self.references, self.prototypes))
            + list(zip(other.references, other.prototypes))
        )

    def without_references(self, label_ids: Iterable[str]) -> "MemoryBank":
        """A new bank without the references of the given label ids.

        A class whose references are all removed leaves the bank (with its threshold).

        Raises:
            ValueError: if an id is not in the bank, no reference would be left, or a class
                would keep only negative references (remove those too).
        """
        remove = set(label_ids)
        unknown = remove - {r.label_id for r in self.references}
        if unknown:
            raise ValueError(f"Label ids not in this memory bank: {sorted(unknown)}")
        kept = [
            (r, p) for r, p in zip(self.references, self.prototypes) if r.label_id not in remove
        ]
        if not kept:
            raise ValueError("Removing these references would leave the memory bank empty")
        return self._from_records(kept)

    def _from_records(self, records: list[tuple[ReferenceRecord, np.ndarray]]) -> "MemoryBank":
        names = tuple(dict.fromkeys(r.label for r, _ in records))
        ordered = tuple(n for n in self.class_names if n in names) + tuple(
            n for n in names if n not in self.class_names
        )
        index = {name: i for i, name in enumerate(ordered)}
        return MemoryBank(
            class_names=ordered,
            prototypes=np.stack([p for _, p in records]).astype(np.float32),
            labels=np.array([index[r.label] for r, _ in records], dtype=np.int64),
            references=tuple(r for r, _ in records),
            encoder=self.encoder,
            proposer=self.proposer,
            settings=self.settings,
            thresholds={k: v for k, v in self.thresholds.items() if k in index},
        )

    def to_bytes(self) -> bytes:
        """The bank as an ``.npz`` archive of the current format version (module docstring)."""
        header = json.dumps(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "class_names": list(self.class_names),
                "references": [asdict(r) for r in self.references],
                "encoder": self.encoder,
                "proposer": self.proposer,
                "settings": self.settings.to_dict(),
                "thresholds": dict(self.thresholds),
            }
        ).encode("utf-8")
        prototypes = np.ascontiguousarray(self.prototypes, dtype=_PROTOTYPE_DTYPE)
        labels = np.ascontiguousarray(self.labels, dtype=_LABEL_DTYPE)
        checksum = _checksum(header, prototypes, labels)
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            header=np.frombuffer(header, dtype=np.uint8),
            prototypes=prototypes,
            labels=labels,
            sha256=np.frombuffer(checksum.encode("ascii"), dtype=np.uint8),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>", remedy: str = "") -> "MemoryBank":
        """Reads, verifies and validates a bank written by :meth:`to_bytes` (any readable
        format version).

        Args:
            data: the archive's bytes.
            source: what the bytes are, for messages (a file path, a stored run).
            remedy: what to do when the bank is refused; default: rebuild it.

        Raises:
            BankFileError: not a bank, an unreadable or truncated archive, a checksum that does
                not match (damaged or edited), an unknown format version, or contents that do
                not make a valid bank. The message names ``source``.
        """
        remedy = remedy or _REBUILD
        header_bytes, arrays = _read_archive(data, source, remedy)
        header = _parse_header(header_bytes, source, remedy)
        if header["version"] >= 2:
            _verify_checksum(header_bytes, arrays, source, remedy, header["version"])
        elif "sha256" in arrays:
            raise BankFileError(
                f"{source} says format version 1 but carries a checksum: its header was edited. "
                f"{remedy}"
            )
        try:
            return cls._from_parts(header, arrays["prototypes"], arrays["labels"])
        except (KeyError, TypeError, ValueError) as error:
            raise BankFileError(
                f"{source} holds an invalid memory bank ({type(error).__name__}: {error}). {remedy}"
            ) from error

    @classmethod
    def _from_parts(
        cls, header: dict[str, Any], prototypes: np.ndarray, labels: np.ndarray
    ) -> "MemoryBank":
        known = {f.name for f in fields(ReferenceRecord)}
        references = []
        for record in header["references"]:
            unknown = set(record) - known
            if unknown:
                raise ValueError(f"unknown reference record keys {sorted(unknown)}")
            references.append(ReferenceRecord(**{**record, "box": tuple(record["box"])}))
        if prototypes.dtype.kind != "f" or labels.dtype.kind not in "iu":
            raise ValueError(
                f"prototypes must be float and labels integer, got {prototypes.dtype} and "
                f"{labels.dtype}"
            )
        return cls(
            class_names=tuple(header["class_names"]),
            prototypes=prototypes.astype(np.float32),
            labels=labels.astype(np.int64),
            references=tuple(references),
            encoder=header["encoder"],
            proposer=header["proposer"],
            settings=ReferenceConfig.from_dict(header["settings"]),
            thresholds=_thresholds_of(header),
        )

    def save(self, path: str | Path) -> None:
        """Writes the bank to ``path`` (conventionally ``*.npz``)."""
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> "MemoryBank":
        """Reads, verifies and validates a bank saved by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            BankFileError: see :meth:`from_bytes`.
        """
        return cls.from_bytes(Path(path).read_bytes(), source=f"memory bank file {str(path)!r}")


_REBUILD = (
    "Rebuild the bank with refseg.build_memory_bank(...) (or the 'refseg: build memory bank' "
    "operator) and save it again, or restore it from a good copy."
)

_ARCHIVE_ERRORS = (
    OSError,
    ValueError,
    KeyError,
    EOFError,
    RuntimeError,  # zipfile: encrypted members
    NotImplementedError,  # zipfile: a damaged compression method field
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
)


def _thresholds_of(header: dict[str, Any]) -> dict[str, float]:
    """The header's per-class thresholds (none before format version 3)."""
    thresholds = header.get("thresholds", {})
    if not isinstance(thresholds, dict):
        raise ValueError(f"thresholds must be a mapping of class to value, got {thresholds!r}")
    return thresholds


def _is_unit_number(value: Any) -> bool:
    """A real number (not a bool) in [0, 1]."""
    return (
        isinstance(value, (int, float, np.floating))
        and not isinstance(value, bool)
        and not math.isnan(value)
        and 0.0 <= value <= 1.0
    )


def _checksum(header: bytes, prototypes: np.ndarray, labels: np.ndarray) -> str:
    """Hex SHA-256 of the header bytes, then the little-endian bytes of both arrays."""
    sha = hashlib.sha256(header)
    sha.update(np.ascontiguousarray(prototypes, dtype=_PROTOTYPE_DTYPE).tobytes())
    sha.update(np.ascontiguousarray(labels, dtype=_LABEL_DTYPE).tobytes())
    return sha.hexdigest()


def _read_archive(data: bytes, source: str, remedy: str) -> tuple[bytes, dict[str, np.ndarray]]:
    """The header bytes and the arrays of a bank archive, every member fully read (so zip CRC
    and decompression errors surface here)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except _ARCHIVE_ERRORS as error:
        raise BankFileError(
            f"{source} is not a refseg memory bank, or it is damaged or truncated: the archive "
            f"cannot be read ({type(error).__name__}: {error}). {remedy}"
        ) from error
    missing = [name for name in ("header", "prototypes", "labels") if name not in arrays]
    if missing:
        raise BankFileError(
            f"{source} is not a refseg memory bank: it has no {missing} "
            f"(members: {sorted(arrays)}). {remedy}"
        )
    header = arrays.pop("header")
    if header.dtype != np.uint8 or header.ndim != 1:
        raise BankFileError(f"{source} is not a refseg memory bank: bad header. {remedy}")
    return header.tobytes(), arrays


def _parse_header(header_bytes: bytes, source: str, remedy: str) -> dict[str, Any]:
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise BankFileError(
            f"{source} is not a refseg memory bank, or it is damaged: its header is not JSON "
            f"({error}). {remedy}"
        ) from error
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise BankFileError(f"{source} is not a refseg memory bank (format {found!r}). {remedy}")
    version = header.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        hint = "It was written by a newer refseg: upgrade refseg, or r" if newer else "R"
        raise BankFileError(
            f"{source} has memory bank format version {version!r}; this refseg reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}. {hint}ebuild the bank with "
            "refseg.build_memory_bank(...) (or the 'refseg: build memory bank' operator)."
        )
    return header


def _verify_checksum(
    header_bytes: bytes, arrays: dict[str, np.ndarray], source: str, remedy: str, version: int
) -> None:
    stored = arrays.get("sha256")
    if stored is None:
        raise BankFileError(
            f"{source} has format version {version} but no checksum: it was edited or damaged. "
            f"{remedy}"
        )
    try:
        expected = stored.tobytes().decode("ascii")
        prototypes, labels = arrays["prototypes"], arrays["labels"]
        actual = _checksum(header_bytes, prototypes, labels)
    except (UnicodeDecodeError, ValueError, TypeError) as error:
        raise BankFileError(f"{source} has an unreadable checksum ({error}). {remedy}") from error
    if actual != expected:
        raise BankFileError(
            f"{source} fails its checksum (SHA-256 {actual[:12]}... instead of "
            f"{expected[:12]}...): the bank was damaged or edited after it was written. {remedy}"
        )
