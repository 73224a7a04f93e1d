"""Sharded runs on FiftyOne's delegated operations, executed in this process (fast).

A run is queued as shard operations with ``refseg.predict(..., shards=N, delegate=True)`` or the
predict operator, and its operations are executed as a ``fiftyone delegated launch`` worker
executes them (``DelegatedOperationService.execute_queued_operations``). The models are the
deterministic stand-ins, registered by name so that the run's ``Models`` value names them as it
names SAM2 and DINOv2. Real worker processes, real models and a killed worker are tested in
``test_delegated_workers.py`` (slow).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import datetime, timezone

import fiftyone.operators as foo
import pytest
from bson import ObjectId
from fiftyone.operators.delegated import DelegatedOperationService
from operator_calls import execute_shards
from stand_ins import STAND_IN_MODELS, ShapeProposer, build_palette_encoder

import refseg
from refseg.config import PredictConfig
from refseg.models import RANDOM_WEIGHTS, Models
from refseg.run_record import collection, shard_key
from refseg.sharding import split_even
from refseg.synthetic import CLASSES, make_shapes_dataset

CONFIG = PredictConfig(points_per_side=8, points_batch_size=64)

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*random weights"),
    pytest.mark.usefixtures("installed_plugin", "stand_in_models"),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    name = f"sharded-{tmp_path_factory.getbasetemp().name}"
    ds = make_shapes_dataset(name, str(tmp_path_factory.mktemp("images")), num_positive=11,
                             num_negative=0, seed=4)  # fmt: skip
    references = refseg.sample_references(ds, "ground_truth", shots=1, seed=0, classes=CLASSES)
    references.tag_samples("reference")
    ds.exclude(references.values("id")).tag_samples("target")
    encoder = build_palette_encoder(None, RANDOM_WEIGHTS, None)
    refseg.build_memory_bank(
        references, "ground_truth", tag=refseg.DEFAULT_TAG, encoder=encoder,
        proposer=ShapeProposer(), name="bank", progress=False,
    )  # fmt: skip
    single = refseg.predict(targets_of(ds), bank_of(ds), "single", config=CONFIG, num_workers=0,
                            progress=False)  # fmt: skip
    assert single.num_samples == len(targets_of(ds)) >= 6
    yield ds
    ds.delete()


def targets_of(dataset):
    return dataset.match_tags("target")


def bank_of(dataset):
    return refseg.load_bank(dataset, "bank")


def queue(dataset, field: str, shards: int = 3, **kwargs) -> refseg.RunStatus:
    options = dict(config=CONFIG, num_workers=0, write_every=1, delegate=True, shards=shards)
    return refseg.predict(targets_of(dataset), bank_of(dataset), field, **{**options, **kwargs})


def labels_of(dataset, field: str) -> dict:
    ids, values = targets_of(dataset).values(["id", field])
    return {
        i: None
        if v is None
        else [
            (d.label, tuple(d.bounding_box), d.confidence, d.mask.tobytes()) for d in v.detections
        ]
        for i, v in zip(ids, values)
    }


# -- splitting ------------------------------------------------------------------------------


def test_split_even_is_disjoint_balanced_and_ordered():
    ids = [f"id{i}" for i in range(10)]
    parts = split_even(ids, 3)
    assert [len(p) for p in parts] == [4, 3, 3]
    assert sum(parts, []) == ids
    assert split_even(ids[:2], 5) == [["id0"], ["id1"]]  # never an empty shard
    assert split_even([], 3) == []
    with pytest.raises(ValueError, match="must be >= 1"):
        split_even(ids, 0)
    with pytest.raises(ValueError, match="unique"):
        split_even(["a", "a"], 2)


# -- options refused before any work --------------------------------------------------------


def test_scale_out_options_that_cannot_work_are_refused(dataset):
    view, bank = targets_of(dataset), bank_of(dataset)
    with pytest.raises(ValueError, match="cannot be sent to worker processes"):
        refseg.predict(view, bank, "x", devices=["cpu", "cpu"], proposer=ShapeProposer(),
                       encoder=build_palette_encoder(None, RANDOM_WEIGHTS, None))  # fmt: skip
    with pytest.raises(ValueError, match="cannot be sent"):
        refseg.predict(view, bank, "x", delegate=True, proposer=ShapeProposer())
    with pytest.raises(ValueError, match="choose one"):
        refseg.predict(view, bank, "x", devices=["cpu"], delegate=True)
    with pytest.raises(ValueError, match="pass delegate=True"):
        refseg.predict(view, bank, "x", shards=2)
    with pytest.raises(ValueError, match="shards must be an integer"):
        refseg.predict(view, bank, "x", shards=0, delegate=True)
    with pytest.raises(ValueError, match="leave device unset"):
        refseg.predict(view, bank, "x", devices=["cpu"], device="cpu")
    with pytest.raises(ValueError, match="found no CUDA device"):
        refseg.predict(view, bank, "x", devices="all")
    with pytest.raises(ValueError, match="must be 'all' or a list"):
        refseg.predict(view, bank, "x", devices="cuda:0")
    with pytest.raises(ValueError, match=r"devices\[1\] = 'cuda:3'.* 0 CUDA device"):
        refseg.predict(view, bank, "x", devices=["cpu", "cuda:3"])
    with pytest.raises(ValueError, match="not a torch device"):
        refseg.predict(view, bank, "x", devices=["gpu0"])
    from refseg.runs import queue_predict

    with pytest.raises(ValueError, match="no refseg memory bank named 'nope'"):
        queue_predict(view, "nope", "x", shards=2)
    assert "x" not in dataset.get_field_schema()
    assert collection().count_documents({"label_field": "x"}) == 0


# -- a sharded run --------------------------------------------------------------------------


def test_sharded_run_predicts_every_sample_once_with_the_single_run_labels(dataset):
    status = queue(dataset, "sharded")
    assert status.state == "running" and len(status.shards) == 3
    assert [s.state for s in status.shards] == ["queued"] * 3
    ids = [i for s in status.shards for i in collection().find_one(
        {"_id": shard_key(status.run_id, s.index)})["sample_ids"]]  # fmt: skip
    assert sorted(ids) == sorted(targets_of(dataset).values("id"))  # disjoint, complete
    service = DelegatedOperationService()
    assert all(service.get(ObjectId(i)).run_state == "queued" for i in status.operation_ids)

    # while it is unfinished, the field belongs to the run
    with pytest.raises(refseg.RunLockedError, match=status.run_id):
        refseg.predict(targets_of(dataset), bank_of(dataset), "sharded", resume=True,
                       config=CONFIG, num_workers=0, progress=False)  # fmt: skip
    with pytest.raises(refseg.RunLockedError, match="refseg.cancel_run"):
        queue(dataset, "sharded", resume=True)

    outcomes = execute_shards(dataset)
    assert len(outcomes) == 3 and all(o.error is None for o in outcomes), outcomes
    done = refseg.run_status(dataset, status.run_id)
    assert done.state == "completed" and done.done == done.num_samples == len(ids)
    assert all(service.get(ObjectId(s.operation_id)).run_state == "completed" for s in done.shards)
    for shard in done.shards:  # each sample predicted by exactly one execution
        assert [h["num_samples"] for h in shard.history] == [shard.num_samples]
    assert labels_of(dataset, "sharded") == labels_of(dataset, "single")
    with pytest.raises(ValueError, match="shard 0 is completed"):
        refseg.rerun_shards(dataset, status.run_id, [0])
    assert status.run_id in refseg.list_sharded_runs(dataset)
    # the run is done: the field is free again, and nothing is left to predict
    rest = refseg.predict(targets_of(dataset), bank_of(dataset), "sharded", resume=True,
                          config=CONFIG, num_workers=0, progress=False)  # fmt: skip
    assert rest.num_samples == 0


def test_a_failed_shard_is_rerun_alone_and_resumes(dataset, monkeypatch):
    import refseg.writer

    status = queue(dataset, "flaky", shards=2)
    original, calls = refseg.writer.write_detections, []

    def fail_second_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated write failure")
        return original(*args, **kwargs)

    monkeypatch.setattr(refseg.writer, "write_detections", fail_second_write)
    outcomes = execute_shards(dataset, limit=1)  # one shard writes one sample, then fails
    assert "simulated write failure" in outcomes[0].error
    monkeypatch.setattr(refseg.writer, "write_detections", original)
    execute_shards(dataset)  # the other shard
    failed = refseg.run_status(dataset, status.run_id)
    assert failed.state == "failed"
    assert sorted(s.state for s in failed.shards) == ["completed", "failed"]
    bad = next(s for s in failed.shards if s.state == "failed")
    good = next(s for s in failed.shards if s.state == "completed")
    assert "simulated write failure" in bad.error
    assert "refseg.rerun_shards" in failed.summary()
    assert 0 < bad.done < bad.num_samples

    requeued = refseg.rerun_shards(dataset, status.run_id)
    assert requeued.shards[bad.index].state == "queued"
    assert requeued.shards[good.index].state == "completed"
    assert requeued.shards[bad.index].operation_id != bad.operation_id
    execute_shards(dataset)
    done = refseg.run_status(dataset, status.run_id)
    assert done.state == "completed"
    history = done.shards[bad.index].history
    assert [h["state"] for h in history] == ["failed", "completed"]
    assert history[-1]["num_samples"] == bad.num_samples - bad.done  # only the missing ones
    assert [h["num_samples"] for h in done.shards[good.index].history] == [good.num_samples]
    assert labels_of(dataset, "flaky") == labels_of(dataset, "single")


def test_a_shard_whose_worker_died_is_lost_then_failed_and_requeued(dataset):
    status = queue(dataset, "orphaned", shards=2)
    service = DelegatedOperationService()
    claimed = status.shards[0].operation_id
    # a worker claimed shard 0 the way FiftyOne does, started it, and was killed
    assert service.set_running(ObjectId(claimed), required_state="queued") is not None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = datetime.now(timezone.utc)
    collection().update_one(
        {"_id": shard_key(status.run_id, 0)},
        {"$set": {"state": "running", "execution": {
            "operation_id": claimed, "host": socket.gethostname(), "pid": dead.pid,
            "started": now, "heartbeat": now, "processed": 0}}},
    )  # fmt: skip
    lost = refseg.run_status(dataset, status.run_id)
    assert [s.state for s in lost.shards] == ["lost", "queued"]
    assert str(dead.pid) in lost.shards[0].worker

    refseg.rerun_shards(dataset, status.run_id)
    killed = service.get(ObjectId(claimed))
    assert killed.run_state == "failed" and "is gone" in killed.result.error
    outcomes = execute_shards(dataset)
    assert len(outcomes) == 2 and all(o.error is None for o in outcomes)
    assert refseg.run_status(dataset, status.run_id).state == "completed"
    assert labels_of(dataset, "orphaned") == labels_of(dataset, "single")


def test_cancel_stops_queued_shards_and_frees_the_field(dataset):
    status = queue(dataset, "cancelled", shards=2)
    cancelled = refseg.cancel_run(dataset, status.run_id)
    assert cancelled.state == "cancelled"
    assert execute_shards(dataset) == []  # nothing left queued
    service = DelegatedOperationService()
    assert all(service.get(ObjectId(i)).run_state == "failed" for i in status.operation_ids)
    with pytest.raises(ValueError, match="was cancelled"):
        refseg.rerun_shards(dataset, status.run_id)
    result = refseg.predict(targets_of(dataset), bank_of(dataset), "cancelled", resume=True,
                            config=CONFIG, num_workers=0, progress=False)  # fmt: skip
    assert result.num_samples == len(targets_of(dataset))


def test_a_bank_stored_nowhere_is_stored_for_the_workers(dataset):
    bank = bank_of(dataset)
    unsaved = bank.without_references([bank.references[0].label_id])
    status = refseg.predict(targets_of(dataset), unsaved, "unsaved", shards=1, delegate=True,
                            config=CONFIG)  # fmt: skip
    assert status.bank == f"refseg_bank_{status.run_id[:8]}"
    assert status.bank in refseg.list_banks(dataset)
    assert refseg.load_bank(dataset, status.bank).references == unsaved.references
    again = refseg.predict(targets_of(dataset), unsaved, "unsaved_2", shards=1, delegate=True,
                           config=CONFIG)  # fmt: skip
    assert again.bank == status.bank  # found by content
    for run in (status, again):
        refseg.cancel_run(dataset, run.run_id)


def test_a_shard_refuses_a_bank_rebuilt_after_queueing(dataset):
    from refseg.runs import queue_predict

    refseg.save_bank(dataset, "bank_b", bank_of(dataset))
    status = queue_predict(targets_of(dataset), "bank_b", "rebuilt", shards=1, config=CONFIG,
                           models=Models(**STAND_IN_MODELS), num_workers=0)  # fmt: skip
    changed = bank_of(dataset).without_references([bank_of(dataset).references[0].label_id])
    refseg.save_bank(dataset, "bank_b", changed, overwrite=True)
    (outcome,) = execute_shards(dataset)
    assert "changed after run" in outcome.error
    assert refseg.run_status(dataset, status.run_id).state == "failed"
    refseg.cancel_run(dataset, status.run_id)


# -- the operators --------------------------------------------------------------------------


def test_predict_operator_queues_shards_and_sharded_runs_follows_them(dataset):
    predict = foo.get_operator("@refseg/refseg/predict")
    result = predict(targets_of(dataset), "bank", "from_operator", shards=2,
                     points_per_side=8, random_weights=True)  # fmt: skip
    requests = result.executor.to_json()["requests"]
    shown = next(r["params"]["results"] for r in requests if r["operator_uri"] == "show_output")
    run_id = shown["run_id"]
    assert shown["num_shards"] == 2 and "fiftyone delegated launch" in shown["summary"]
    runs = foo.get_operator("@refseg/refseg/sharded_runs")
    execute_shards(dataset)
    status = refseg.run_status(dataset, run_id)
    assert status.state == "completed"
    assert status.settings["config"]["points_per_side"] == 8
    assert labels_of(dataset, "from_operator") == labels_of(dataset, "single")
    requests = runs(dataset, run_id).executor.to_json()["requests"]
    summary = next(r["params"]["results"] for r in requests if r["operator_uri"] == "show_output")
    assert summary["state"] == "completed" and summary["progress"] == 1.0
    assert f"run {run_id}" in summary["summary"]


def test_a_delegated_predict_operation_with_shards_queues_the_shards_when_it_runs(dataset):
    predict = foo.get_operator("@refseg/refseg/predict")
    queued = predict(targets_of(dataset), "bank", "planned", shards=3, points_per_side=8,
                     random_weights=True, delegate=True)  # fmt: skip
    assert queued.delegated
    service = DelegatedOperationService()
    (planner,) = service.execute_queued_operations(
        operator="@refseg/refseg/predict", dataset_name=dataset.name
    )
    assert planner.error is None, planner.error
    run_id = planner.result["run_id"]
    assert len(execute_shards(dataset)) == 3
    assert refseg.run_status(dataset, run_id).state == "completed"
    assert labels_of(dataset, "planned") == labels_of(dataset, "single")
