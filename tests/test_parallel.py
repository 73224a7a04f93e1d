"""Worker processes on the devices of one machine: ``refseg.predict(..., devices=[...])``.

``devices=["cpu", "cpu"]`` runs the code path of ``devices=["cuda:0", "cuda:1"]`` on this
machine: two spawned worker processes, each building the real architectures (SAM2.1 Hiera-T,
DINOv2 ViT-S/14, random weights) from the ``Models`` value, over disjoint shards. Slow.
"""

from __future__ import annotations

import fiftyone as fo
import psutil
import pytest

import refseg
from refseg.config import PredictConfig
from refseg.locks import RunLock
from refseg.models import Models
from refseg.parallel import WorkerError
from refseg.synthetic import CLASSES, make_shapes_dataset

MODELS = Models(
    proposer="sam2.1_hiera_tiny",
    encoder="dinov2_vits14",
    proposer_weights="random",
    encoder_weights="random",
)
CONFIG = PredictConfig(points_per_side=2, points_batch_size=4)
TWO = ["cpu", "cpu"]

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*random weights")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    images = tmp_path_factory.mktemp("images")
    name = f"parallel-{tmp_path_factory.getbasetemp().name}"
    ds = make_shapes_dataset(name, str(images), num_positive=7, num_negative=0, seed=3)
    references = refseg.sample_references(ds, "ground_truth", shots=1, seed=0, classes=CLASSES)
    refseg.build_memory_bank(references, "ground_truth", tag=refseg.DEFAULT_TAG, models=MODELS,
                             device="cpu", name="bank", progress=False)  # fmt: skip
    (images / "broken.jpg").write_bytes(b"")
    ds.add_sample(fo.Sample(filepath=str(images / "broken.jpg")))
    yield ds
    ds.delete()


@pytest.fixture(scope="module")
def targets(dataset):
    """Two good images around an unreadable one: shards [good, broken] and [good]."""
    good = dataset.match_labels(tags=refseg.DEFAULT_TAG, bool=False).exists("ground_truth")
    first, second = good.limit(2).values("id")
    broken = dataset.match({"filepath": {"$regex": "broken.jpg$"}}).first().id
    return dataset.select([first, broken, second], ordered=True)


@pytest.fixture(scope="module")
def single(dataset, targets):
    bank = refseg.load_bank(dataset, "bank")
    return refseg.predict(targets, bank, "single", config=CONFIG, device="cpu", num_workers=0,
                          progress=False)  # fmt: skip


def labels_of(view, field: str) -> dict:
    ids, values = view.values(["id", field])
    return {
        i: None
        if v is None
        else [
            (d.label, tuple(d.bounding_box), d.confidence, d.mask.tobytes()) for d in v.detections
        ]
        for i, v in zip(ids, values)
    }


def spawned_workers() -> list[psutil.Process]:
    """This process's children that are multiprocessing 'spawn' workers and still alive."""
    return [
        child
        for child in psutil.Process().children(recursive=True)
        if child.is_running() and "spawn_main" in " ".join(child.cmdline())
    ]


def test_two_worker_processes_write_what_one_process_writes(dataset, targets, single):
    bank = refseg.load_bank(dataset, "bank")
    seen = []
    result = refseg.predict(targets, bank, "multi", config=CONFIG, devices=TWO, num_workers=0,
                            progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert result.num_samples == single.num_samples == 3
    assert result.num_detections == single.num_detections
    broken = dataset.match({"filepath": {"$regex": "broken.jpg$"}}).first().id
    assert result.failures.sample_ids == single.failures.sample_ids == [broken]
    assert "cannot read image" in result.failures.failures[0].reason
    assert labels_of(targets, "multi") == labels_of(targets, "single")
    assert seen[-1] == (3, 3) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert not spawned_workers()


def test_a_failing_worker_stops_the_run_keeps_what_was_written_and_resume_continues(
    dataset, targets, single
):
    bank = refseg.load_bank(dataset, "bank")
    options = dict(config=CONFIG, devices=TWO, num_workers=0, progress=False)
    with pytest.raises(refseg.SampleError, match="broken.jpg") as info:
        refseg.predict(targets, bank, "stopped", skip_failures=False, **options)
    cause = info.value.__cause__
    assert isinstance(cause, WorkerError) and "resume=True" in str(cause)
    assert "Traceback" in str(cause)
    assert not spawned_workers()  # the other worker was stopped
    written = len(targets.exists("stopped"))
    assert written <= 2
    with pytest.raises(refseg.RunLockedError):  # a different run into the field still refuses
        with RunLock(dataset, "field:stopped", run_id="holder"):
            refseg.predict(targets, bank, "stopped", resume=True, **options)
    resumed = refseg.predict(targets, bank, "stopped", resume=True, **options)
    assert resumed.num_samples == 3 - written
    assert len(resumed.failures) == 1
    assert labels_of(targets, "stopped") == labels_of(targets, "single")
