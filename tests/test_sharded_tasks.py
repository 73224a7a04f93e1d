"""Boxes to masks and building a bank as sharded runs on FiftyOne's delegated operations.

Queued with ``refseg.fill_box_masks`` / ``refseg.build_memory_bank`` (``shards=N,
delegate=True``) or their operators, executed in this process as a ``fiftyone delegated
launch`` worker executes them (``DelegatedOperationService.execute_queued_operations``), with
the stand-in models registered by name. Each result is compared with what one process gives.
Real worker processes are tested in ``test_delegated_workers.py``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import datetime, timezone

import fiftyone as fo
import numpy as np
import pytest
from operator_calls import execute_shards, op, shown
from stand_ins import STAND_IN_MODELS, ShapeProposer

import refseg
from refseg.models import Models
from refseg.run_record import collection
from refseg.synthetic import make_shapes_dataset

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*random weights"),
    pytest.mark.usefixtures("installed_plugin", "stand_in_models"),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Shapes with masks in "ground_truth", the same boxes without masks in "boxes", and the
    masks one process fills into "single_masks"."""
    name = f"sharded-tasks-{tmp_path_factory.getbasetemp().name}"
    ds = make_shapes_dataset(name, str(tmp_path_factory.mktemp("images")), num_positive=9,
                             num_negative=0, seed=5)  # fmt: skip
    ds.clone_sample_field("ground_truth", "boxes")
    ds.set_field("boxes.detections.mask", None).save()
    single = refseg.fill_box_masks(ds, "boxes", output_field="single_masks",
                                   proposer=ShapeProposer())  # fmt: skip
    assert single.num_masks == ds.count("boxes.detections") >= 9
    yield ds
    ds.delete()


def masks_of(dataset, field: str) -> dict:
    """Label id -> (class, box, mask bytes or None), over the dataset."""
    return {
        d.id: (d.label, tuple(d.bounding_box), None if d.mask is None else d.mask.tobytes())
        for detections in dataset.values(field)
        for d in detections.detections
    }


def same_bank(a: refseg.MemoryBank, b: refseg.MemoryBank) -> None:
    assert a.references == b.references and a.class_names == b.class_names
    assert np.array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.prototypes, b.prototypes, atol=1e-6)
    assert (a.encoder, a.proposer, a.settings) == (b.encoder, b.proposer, b.settings)


# -- boxes to masks -------------------------------------------------------------------------


def test_sharded_boxes_to_masks_fills_each_label_once_as_one_process_does(dataset):
    status = refseg.fill_box_masks(dataset, "boxes", output_field="sharded_masks", shards=3,
                                   models=Models(**STAND_IN_MODELS), delegate=True)  # fmt: skip
    assert (status.task, status.label_field, status.state) == ("boxes_to_masks", "sharded_masks",
                                                               "running")  # fmt: skip
    assert [s.state for s in status.shards] == ["queued"] * 3 and status.done == 0
    assert "sharded_masks" in dataset.get_field_schema()  # the copy is made when queued
    with pytest.raises(refseg.RunLockedError, match=status.run_id):
        refseg.fill_box_masks(dataset, "sharded_masks", proposer=ShapeProposer())

    outcomes = execute_shards(dataset)
    assert len(outcomes) == 3 and all(o.error is None for o in outcomes), outcomes
    done = refseg.run_status(dataset, status.run_id)
    assert done.state == "completed" and done.done == done.num_samples == len(dataset)
    for shard in done.shards:  # each sample filled by exactly one execution
        assert [h["num_samples"] for h in shard.history] == [shard.num_samples]
    assert masks_of(dataset, "sharded_masks") == masks_of(dataset, "single_masks")
    assert all(m[2] is None for m in masks_of(dataset, "boxes").values())  # left as it was
    again = refseg.run_shard(dataset, status.run_id, 0)  # idempotent: nothing left to fill
    assert (again.num_masks, again.num_labels) == (0, 0)
    assert masks_of(dataset, "sharded_masks") == masks_of(dataset, "single_masks")


def test_a_failed_boxes_to_masks_shard_is_rerun_and_fills_only_what_is_left(dataset, monkeypatch):
    status = refseg.fill_box_masks(dataset, "boxes", output_field="flaky_masks", shards=2,
                                   models=Models(**STAND_IN_MODELS), delegate=True,
                                   write_every=1)  # fmt: skip
    original, calls = fo.Dataset.set_label_values, []

    def fail_second_write(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated write failure")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(fo.Dataset, "set_label_values", fail_second_write)
    (outcome,) = execute_shards(dataset, limit=1)  # one image written, then the failure
    assert "simulated write failure" in outcome.error
    monkeypatch.setattr(fo.Dataset, "set_label_values", original)
    execute_shards(dataset)
    failed = refseg.run_status(dataset, status.run_id)
    assert failed.state == "failed" and "refseg.rerun_shards" in failed.summary()
    bad = next(s for s in failed.shards if s.state == "failed")
    assert 0 < bad.done < bad.num_samples

    refseg.rerun_shards(dataset, status.run_id)
    execute_shards(dataset)
    done = refseg.run_status(dataset, status.run_id)
    assert done.state == "completed"
    history = done.shards[bad.index].history
    assert [h["state"] for h in history] == ["failed", "completed"]
    assert history[-1]["num_samples"] == bad.num_samples - bad.done  # only the ones left
    assert masks_of(dataset, "flaky_masks") == masks_of(dataset, "single_masks")


def test_boxes_to_masks_operator_queues_shards(dataset):
    result = op("boxes_to_masks")(dataset, "boxes", output_field="operator_masks",
                                  all_labels=True, sam2="shape-proposer", random_weights=True,
                                  shards=2)  # fmt: skip
    queued = shown(result)
    assert queued["num_shards"] == 2 and "fiftyone delegated launch" in queued["summary"]
    assert len(execute_shards(dataset)) == 2
    assert refseg.run_status(dataset, queued["run_id"]).state == "completed"
    assert masks_of(dataset, "operator_masks") == masks_of(dataset, "single_masks")


# -- building a bank ------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["ground_truth", "boxes"])  # label masks; masks from boxes
def test_a_sharded_bank_is_the_bank_one_process_builds(dataset, field):
    models = Models(**STAND_IN_MODELS)
    single = refseg.build_memory_bank(dataset, field, models=models, progress=False)
    name = f"sharded_{field}"
    status = refseg.build_memory_bank(dataset, field, models=models, name=name, shards=3,
                                      delegate=True)  # fmt: skip
    assert (status.task, status.bank, status.state) == ("memory_bank", name, "running")
    assert len(status.shards) == 3 and status.done == 0
    with pytest.raises(refseg.RunLockedError, match=status.run_id):
        refseg.build_memory_bank(dataset, field, models=models, name=name, progress=False)
    with pytest.raises(refseg.RunLockedError, match=status.run_id):
        refseg.save_bank(dataset, name, single)

    outcomes = execute_shards(dataset)
    assert len(outcomes) == 3 and all(o.error is None for o in outcomes), outcomes
    done = refseg.run_status(dataset, status.run_id)
    assert done.state == "completed" and done.done == done.num_samples == len(dataset)
    assert sum(s.history[-1]["num_samples"] for s in done.shards) == len(dataset)
    same_bank(refseg.load_bank(dataset, name), single)
    assert (single.proposer["weights"] == "none") == (field == "boxes")  # SAM2 stand-in built
    assert collection().count_documents({"kind": "part", "run_id": status.run_id}) == 0


def test_a_bank_whose_assembly_failed_is_assembled_when_its_shard_is_rerun(dataset, monkeypatch):
    import refseg.sharded_bank

    models = Models(**STAND_IN_MODELS)
    single = refseg.build_memory_bank(dataset, "ground_truth", models=models, progress=False)
    status = refseg.build_memory_bank(dataset, "ground_truth", models=models, name="retried",
                                      shards=2, delegate=True)  # fmt: skip

    def unreachable(*args, **kwargs):
        raise RuntimeError("simulated database failure")

    monkeypatch.setattr(refseg.sharded_bank, "save_bank", unreachable)
    outcomes = execute_shards(dataset)
    assert [o.error is None for o in outcomes] == [True, False]  # the last shard assembles
    failed = refseg.run_status(dataset, status.run_id)
    assert failed.state == "failed"
    assert sorted(s.state for s in failed.shards) == ["completed", "failed"]
    assembler = next(s for s in failed.shards if s.state == "failed")
    assert "simulated database failure" in assembler.error
    assert "simulated database failure" in failed.finish_error
    assert "retried" not in refseg.list_banks(dataset)

    monkeypatch.undo()
    requeued = refseg.rerun_shards(dataset, status.run_id)
    assert sorted(s.state for s in requeued.shards) == ["completed", "queued"]
    assert len(execute_shards(dataset)) == 1
    assert refseg.run_status(dataset, status.run_id).state == "completed"
    same_bank(refseg.load_bank(dataset, "retried"), single)


def test_a_bank_whose_assembler_died_is_assembled_by_rerun_shards(dataset, monkeypatch):
    import refseg.sharded_bank

    models = Models(**STAND_IN_MODELS)
    single = refseg.build_memory_bank(dataset, "ground_truth", models=models, progress=False)
    status = refseg.build_memory_bank(dataset, "ground_truth", models=models, name="orphan",
                                      shards=2, delegate=True)  # fmt: skip
    monkeypatch.setattr(refseg.sharded_bank, "finish_bank_run", lambda *args: None)
    assert all(o.error is None for o in execute_shards(dataset))
    monkeypatch.undo()
    # the last shard claimed the assembly, and its process died
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = {"host": socket.gethostname(), "pid": dead.pid,
              "started": datetime.now(timezone.utc), "state": "running", "error": ""}  # fmt: skip
    collection().update_one({"_id": status.run_id}, {"$set": {"finish": holder}})
    orphaned = refseg.run_status(dataset, status.run_id)
    assert orphaned.state == "failed" and {s.state for s in orphaned.shards} == {"completed"}

    assert refseg.rerun_shards(dataset, status.run_id).state == "completed"
    same_bank(refseg.load_bank(dataset, "orphan"), single)
    with pytest.raises(ValueError, match="shard 0 is completed"):
        refseg.rerun_shards(dataset, status.run_id, [0])


def test_delegated_builds_that_cannot_work_are_refused(dataset):
    models = Models(**STAND_IN_MODELS)
    with pytest.raises(ValueError, match="pass name="):
        refseg.build_memory_bank(dataset, "ground_truth", models=models, delegate=True)
    with pytest.raises(ValueError, match="pass delegate=True"):
        refseg.build_memory_bank(dataset, "ground_truth", name="b", shards=2)
    with pytest.raises(ValueError, match="cannot be sent to delegated workers"):
        refseg.fill_box_masks(dataset, "boxes", proposer=ShapeProposer(), delegate=True)
    with pytest.raises(ValueError, match="shards must be an integer"):
        refseg.fill_box_masks(dataset, "boxes", shards=0, delegate=True)
    assert "b" not in refseg.list_banks(dataset)


def test_build_memory_bank_operator_queues_shards(dataset):
    single = refseg.build_memory_bank(dataset, "ground_truth", models=Models(**STAND_IN_MODELS),
                                      progress=False)  # fmt: skip
    result = op("build_memory_bank")(dataset, "ground_truth", "from_operator", all_labels=True,
                                     sam2="shape-proposer", dinov2="palette-encoder",
                                     random_weights=True, shards=2)  # fmt: skip
    queued = shown(result)
    assert queued["num_shards"] == 2 and "building bank 'from_operator'" in queued["summary"]
    assert len(execute_shards(dataset)) == 2
    assert refseg.run_status(dataset, queued["run_id"]).state == "completed"
    same_bank(refseg.load_bank(dataset, "from_operator"), single)


def test_a_cancelled_bank_build_frees_its_name_and_drops_its_parts(dataset):
    models = Models(**STAND_IN_MODELS)
    status = refseg.build_memory_bank(dataset, "ground_truth", models=models, name="dropped",
                                      shards=2, delegate=True)  # fmt: skip
    refseg.run_shard(dataset, status.run_id, 0)  # one shard encoded, the other still queued
    assert collection().count_documents({"kind": "part", "run_id": status.run_id}) >= 1
    assert refseg.cancel_run(dataset, status.run_id).state == "cancelled"
    assert collection().count_documents({"kind": "part", "run_id": status.run_id}) == 0
    assert execute_shards(dataset) == []
    with pytest.raises(RuntimeError, match="was cancelled"):
        refseg.run_shard(dataset, status.run_id, 1)
    bank = refseg.build_memory_bank(dataset, "ground_truth", models=models, name="dropped",
                                    progress=False)  # fmt: skip
    assert "dropped" in refseg.list_banks(dataset) and len(bank.references) > 0
