"""Per-sample failures: what a long run skipped, and why, so one bad file never stops it.

Every long-running action (predict, building a bank, boxes to masks, evaluation) processes each
good sample and records each sample it could not process as a :class:`SampleFailure`. The
:class:`FailureReport` of a run is returned or exposed by the SDK, shown by the operators and
logged. ``skip_failures=False`` turns the first failure into a :class:`SampleError` instead.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

logger = logging.getLogger(__name__)


class ImageReadError(ValueError):
    """An image file cannot be read: missing, empty, not an image, truncated or undecodable.

    Attributes:
        filepath: the file.
        reason: what is wrong with it, in words.
    """

    def __init__(self, filepath: str, reason: str) -> None:
        self.filepath = filepath
        self.reason = reason
        super().__init__(f"cannot read image {filepath!r}: {reason}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.filepath, self.reason))


class SampleError(RuntimeError):
    """A sample failed and the run was asked not to skip failures (``skip_failures=False``).

    Attributes:
        failure: the :class:`SampleFailure`.
    """

    def __init__(self, failure: "SampleFailure") -> None:
        self.failure = failure
        super().__init__(
            f"sample {failure.sample_id} ({failure.filepath}) failed: {failure.reason}. "
            "Fix or remove the file, or pass skip_failures=True to skip such samples "
            "and report them"
        )

    def __reduce__(self):
        return (type(self), (self.failure,))


@dataclass(frozen=True)
class SampleFailure:
    """One sample a run could not process.

    Attributes:
        sample_id: the FiftyOne sample id ("" outside FiftyOne).
        filepath: the sample's media file.
        reason: why, e.g. ``"cannot read image '/x.jpg': the file is empty"``.
    """

    sample_id: str
    filepath: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class FailureReport:
    """The samples one run skipped, in the order they failed.

    Attributes:
        action: what ran, e.g. ``"predict"``, for messages and logs.
        failures: the skipped samples.
    """

    action: str
    failures: list[SampleFailure] = field(default_factory=list)

    def add(self, failure: SampleFailure) -> None:
        """Records a failure and logs it as a warning."""
        self.failures.append(failure)
        logger.warning(
            "%s skipped sample %s (%s): %s",
            self.action,
            failure.sample_id,
            failure.filepath,
            failure.reason,
        )

    def __len__(self) -> int:
        return len(self.failures)

    def __iter__(self) -> Iterator[SampleFailure]:
        return iter(self.failures)

    def __bool__(self) -> bool:
        return bool(self.failures)

    @property
    def sample_ids(self) -> list[str]:
        """Ids of the skipped samples (e.g. ``dataset.select(report.sample_ids)``)."""
        return [f.sample_id for f in self.failures]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"action", "num_failures", "failures": [{sample_id, ...}]}``."""
        return {
            "action": self.action,
            "num_failures": len(self.failures),
            "failures": [f.to_dict() for f in self.failures],
        }

    def summary(self, limit: int = 5) -> str:
        """One line per failure (at most ``limit``), for messages and the App."""
        if not self.failures:
            return f"{self.action}: no sample failed"
        lines = [f"{self.action}: {len(self.failures)} sample(s) skipped"]
        lines += [f"- {f.sample_id} {f.filepath}: {f.reason}" for f in self.failures[:limit]]
        if len(self.failures) > limit:
            lines.append(f"- ... and {len(self.failures) - limit} more")
        return "\n".join(lines)
