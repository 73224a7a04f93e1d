"""The memory bank: reference prototypes with their provenance, saved safely and versioned."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from refseg.config import ReferenceConfig
from refseg.models.weights import same_weights

FORMAT = "refseg.memory_bank"
FORMAT_VERSION = 1


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
    """

    dataset: str
    sample_id: str
    label_id: str
    label: str
    filepath: str
    box: tuple[float, float, float, float]
    mask_source: str = "label"


@dataclass(frozen=True)
class MemoryBank:
    """Instance prototypes of the reference instances, and everything needed to trust them.

    Only the prototypes are kept (method.md stage 2): a bank is kilobytes to megabytes. Class
    prototypes are derived on demand, so references can be added or removed without
    re-encoding the others.

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
    """

    class_names: tuple[str, ...]
    prototypes: np.ndarray
    labels: np.ndarray
    references: tuple[ReferenceRecord, ...]
    encoder: dict[str, Any]
    proposer: dict[str, Any]
    settings: ReferenceConfig = field(default_factory=ReferenceConfig)

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
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        if r and (self.labels.min() < 0 or len(counts) > len(self.class_names)):
            raise ValueError("MemoryBank: a reference's class index is out of range")
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

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return self.prototypes.shape[1]

    def shots(self) -> dict[str, int]:
        """Number of references of each class."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return dict(zip(self.class_names, counts.tolist()))

    def class_prototypes(self) -> np.ndarray:
        """(C, D) float32 class prototypes: the L2-normalised mean of each class's instances."""
        sums = np.zeros((len(self.class_names), self.dim), dtype=np.float64)
        np.add.at(sums, self.labels, self.prototypes.astype(np.float64))
        means = sums / np.bincount(self.labels, minlength=len(self.class_names))[:, None]
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        return (means / np.maximum(norms, 1e-12)).astype(np.float32)

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
        """A new bank with ``other``'s references added (no re-encoding).

        Raises:
            ValueError: if the banks' encoders or settings differ, or a label is in both.
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

        A class whose references are all removed leaves the bank.

        Raises:
            ValueError: if an id is not in the bank, or no reference would be left.
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
        )

    def to_bytes(self) -> bytes:
        """The bank as an ``.npz`` archive: arrays plus a JSON header (no pickle)."""
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "class_names": list(self.class_names),
            "references": [asdict(r) for r in self.references],
            "encoder": self.encoder,
            "proposer": self.proposer,
            "settings": self.settings.to_dict(),
        }
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            header=np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8),
            prototypes=self.prototypes.astype(np.float32),
            labels=self.labels.astype(np.int64),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> "MemoryBank":
        """Reads and validates a bank written by :meth:`to_bytes`."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                header = json.loads(archive["header"].tobytes().decode("utf-8"))
                prototypes, labels = archive["prototypes"], archive["labels"]
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"{source} is not a refseg memory bank: {error}") from error
        if header.get("format") != FORMAT:
            raise ValueError(
                f"{source} is not a refseg memory bank (format {header.get('format')!r})"
            )
        if header.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{source} has memory bank format version {header.get('version')}; this refseg "
                f"reads version {FORMAT_VERSION}. Rebuild the bank or upgrade refseg."
            )
        references = tuple(
            ReferenceRecord(**{**r, "box": tuple(r["box"])}) for r in header["references"]
        )
        return cls(
            class_names=tuple(header["class_names"]),
            prototypes=prototypes.astype(np.float32),
            labels=labels.astype(np.int64),
            references=references,
            encoder=header["encoder"],
            proposer=header["proposer"],
            settings=ReferenceConfig.from_dict(header["settings"]),
        )

    def save(self, path: str | Path) -> None:
        """Writes the bank to ``path`` (conventionally ``*.npz``)."""
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> "MemoryBank":
        """Reads and validates a bank saved by :meth:`save`."""
        return cls.from_bytes(Path(path).read_bytes(), source=str(path))
