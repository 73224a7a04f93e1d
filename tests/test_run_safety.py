"""Runs that are killed, run twice at once, or lose their database: nothing is lost.

Every test here uses real processes: a child Python process runs refseg on this test run's
database (the deterministic stand-in models, so the child starts in seconds), and the test
kills it, races it, or stops its database server.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import fiftyone as fo
import pytest
from local_mongo import free_port, start_mongod
from stand_ins import PaletteEncoder, ShapeProposer

import refseg
from refseg.config import PredictConfig
from refseg.locks import LOCK_COLLECTION, RunLock
from refseg.synthetic import CLASSES, make_shapes_dataset

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

CHILD_PRELUDE = f"""
import os, sys, time
sys.path[:0] = [{str(ROOT)!r}, {str(TESTS)!r}]
import fiftyone as fo
import refseg
from refseg.config import PredictConfig
from stand_ins import PaletteEncoder, ShapeProposer
CONFIG = PredictConfig(points_per_side=8, points_batch_size=64)
def slow(seconds, flag=None, after=1):
    def progress(done, total):
        if flag and done >= after:
            open(flag, "w").close()
        time.sleep(seconds)
    return progress
"""

PREDICT_CHILD = (
    CHILD_PRELUDE
    + """
dataset = fo.load_dataset(sys.argv[1])
bank = refseg.load_bank(dataset, "bank")
targets = dataset.match_tags("target")
refseg.predict(targets, bank, sys.argv[2], config=CONFIG, proposer=ShapeProposer(),
               encoder=PaletteEncoder(), num_workers=0, write_every=1, progress=slow(
                   float(sys.argv[3]), sys.argv[4]), resume=True)
print("DONE")
"""
)

BUILD_CHILD = (
    CHILD_PRELUDE
    + """
dataset = fo.load_dataset(sys.argv[1])
refseg.build_memory_bank(dataset.match_tags("reference"), "ground_truth", tag=refseg.DEFAULT_TAG,
    encoder=PaletteEncoder(), proposer=ShapeProposer(), name=sys.argv[2], batch_size=1,
    progress=slow(float(sys.argv[3]), sys.argv[4]))
print("DONE")
"""
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    name = f"run-safety-{tmp_path_factory.getbasetemp().name}"
    dataset = make_shapes_dataset(
        name, str(tmp_path_factory.mktemp("images")), num_positive=10, num_negative=0, seed=8,
        persistent=True,
    )  # fmt: skip
    references = refseg.sample_references(dataset, "ground_truth", shots=1, seed=0, classes=CLASSES)
    references.tag_samples("reference")
    dataset.exclude(references.values("id")).tag_samples("target")
    refseg.build_memory_bank(
        references, "ground_truth", tag=refseg.DEFAULT_TAG, encoder=PaletteEncoder(),
        proposer=ShapeProposer(), name="bank", progress=False,
    )  # fmt: skip
    yield dataset
    dataset.delete()


def start(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def wait_for(flag: Path, child: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not flag.exists():
        if child.poll() is not None:
            raise AssertionError(f"the child ended early:\n{child.stdout.read()}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError("the child did not reach its checkpoint in time")
        time.sleep(0.1)


def run_in_parent(dataset, field: str, **kwargs):
    options = dict(
        config=PredictConfig(points_per_side=8, points_batch_size=64), proposer=ShapeProposer(),
        encoder=PaletteEncoder(), num_workers=0, progress=False,
    )  # fmt: skip
    bank = refseg.load_bank(dataset, "bank")
    return refseg.predict(dataset.match_tags("target"), bank, field, **{**options, **kwargs})


def labels_of(dataset, field: str) -> dict:
    return {
        sample_id: None
        if value is None
        else [
            (d.label, tuple(d.bounding_box), d.confidence, d.mask.tobytes())
            for d in value.detections
        ]
        for sample_id, value in zip(*dataset.match_tags("target").values(["id", field]))
    }


def test_a_second_predict_into_the_field_is_refused_at_once(dataset, tmp_path):
    flag = tmp_path / "started"
    child = start(PREDICT_CHILD, dataset.name, "pred_race", "1.0", str(flag))
    try:
        wait_for(flag, child)
        proposer = ShapeProposer()
        with pytest.raises(refseg.RunLockedError, match=rf"pid \S+:{child.pid}") as info:
            run_in_parent(dataset, "pred_race", resume=True, proposer=proposer)
        assert proposer.encoded_batches == 0  # refused before any image was touched
        assert child.poll() is None  # while the first run is still going
        assert "refseg.predict into field 'pred_race'" in str(info.value)
        assert "force=True" in str(info.value)
        assert child.wait(timeout=120) == 0, child.stdout.read()
    finally:
        child.kill()
    # once the first run is done, the field can be continued (nothing is left to do)
    assert run_in_parent(dataset, "pred_race", resume=True).num_samples == 0


def test_sigkill_leaves_whole_labels_and_resume_equals_an_uninterrupted_run(dataset, tmp_path):
    flag = tmp_path / "two-written"
    child = start(PREDICT_CHILD, dataset.name, "pred_killed", "0.3", str(flag))
    wait_for(flag, child)
    time.sleep(0.5)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    dataset.reload()  # the child added the field
    targets = dataset.match_tags("target")
    written = targets.exists("pred_killed")
    num_written = len(written)
    assert 0 < num_written < len(targets)
    for value in written.values("pred_killed"):
        assert isinstance(value, fo.Detections)
        for detection in value.detections:
            assert detection.mask is not None and detection.mask.ndim == 2
            assert detection.confidence is not None and len(detection.bounding_box) == 4
    # the dead child's lock does not block: its process is gone
    resumed = run_in_parent(dataset, "pred_killed", resume=True)
    assert resumed.num_samples == len(targets) - num_written
    run_in_parent(dataset, "pred_uninterrupted")
    assert labels_of(dataset, "pred_killed") == labels_of(dataset, "pred_uninterrupted")


def test_two_builds_into_one_bank_name(dataset, tmp_path):
    flag = tmp_path / "building"
    child = start(BUILD_CHILD, dataset.name, "bank_race", "1.0", str(flag))
    try:
        wait_for(flag, child)
        with pytest.raises(refseg.RunLockedError, match="bank:bank_race"):
            refseg.build_memory_bank(
                dataset.match_tags("reference"), "ground_truth", tag=refseg.DEFAULT_TAG,
                encoder=PaletteEncoder(), proposer=ShapeProposer(), name="bank_race",
                overwrite=True, progress=False,
            )  # fmt: skip
        assert child.wait(timeout=120) == 0, child.stdout.read()
    finally:
        child.kill()
    dataset.reload()
    assert "bank_race" in refseg.list_banks(dataset)


def test_stale_locks_of_other_machines_are_recovered_and_live_ones_refused(dataset):
    collection = fo.core.odm.get_db_conn()[LOCK_COLLECTION]
    key = f"{dataset._doc.id}:field:pred_remote"

    def plant(age_s: float) -> None:
        beat = datetime.now(timezone.utc) - timedelta(seconds=age_s)
        collection.replace_one(
            {"_id": key},
            {"_id": key, "run_id": "remote-run", "resource": "field:pred_remote",
             "dataset": dataset.name, "description": "refseg.predict on another machine",
             "started": beat, "holders": {"t": {"host": "other-host", "pid": 1, "heartbeat": beat}},
             "revision": 0},
            upsert=True,
        )  # fmt: skip

    plant(age_s=1)
    with pytest.raises(refseg.RunLockedError, match="other-host:1"):
        RunLock(dataset, "field:pred_remote").acquire()
    with RunLock(dataset, "field:pred_remote", force=True):
        assert collection.find_one({"_id": key})["run_id"] != "remote-run"
    assert collection.find_one({"_id": key}) is None  # released
    plant(age_s=600)
    with RunLock(dataset, "field:pred_remote", timeout_s=120):
        pass
    plant(age_s=1)
    with RunLock(dataset, "field:pred_remote", run_id="remote-run") as joined:
        holders = collection.find_one({"_id": key})["holders"]
        assert set(holders) == {"t", joined.token}  # a shard of the same run joins
    assert set(collection.find_one({"_id": key})["holders"]) == {"t"}
    collection.delete_one({"_id": key})


# ------------------------------------------------------------------- losing the database

DB_CHILD = (
    CHILD_PRELUDE
    + """
from refseg.synthetic import CLASSES, make_shapes_dataset
mode, image_dir, flag = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "first":
    dataset = make_shapes_dataset("db-loss", image_dir, num_positive=8, num_negative=0, seed=2,
                                  persistent=True)
    refs = refseg.sample_references(dataset, "ground_truth", shots=1, seed=0, classes=CLASSES)
    refs.tag_samples("reference")
    refseg.build_memory_bank(refs, "ground_truth", tag=refseg.DEFAULT_TAG,
        encoder=PaletteEncoder(), proposer=ShapeProposer(), name="bank", progress=False)
dataset = fo.load_dataset("db-loss")
bank = refseg.load_bank(dataset, "bank")
targets = dataset.exclude(dataset.match_tags("reference").values("id"))
kwargs = dict(config=CONFIG, proposer=ShapeProposer(), encoder=PaletteEncoder(), num_workers=0,
              write_every=1)
try:
    if mode == "first":
        refseg.predict(targets, bank, "pred", progress=slow(2.0, flag, after=2), **kwargs)
    else:
        refseg.predict(targets, bank, "pred", resume=True, progress=False, **kwargs)
        refseg.predict(targets, bank, "pred_clean", progress=False, **kwargs)
        def labels(field):
            return [[(d.label, d.bounding_box, d.confidence) for d in value.detections]
                    for value in targets.values(field)]
        same = labels("pred") == labels("pred_clean")
        print("SAME" if same else "DIFFERENT", len(targets.exists("pred")), "of", len(targets))
except refseg.DatabaseUnavailableError as error:
    print("DATABASE ERROR:", error)
"""
)


@pytest.mark.slow
def test_losing_the_database_stops_with_a_clear_error_and_resume_continues(tmp_path):
    port, dbpath = free_port(), tmp_path / "db"
    dbpath.mkdir()
    env_uri = f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=3000"
    server = start_mongod(dbpath, port)
    try:
        flag = tmp_path / "written"
        child = subprocess.Popen(
            [sys.executable, "-c", DB_CHILD, "first", str(tmp_path / "images"), str(flag)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "FIFTYONE_DATABASE_URI": env_uri,
                 "FIFTYONE_DATABASE_NAME": "refseg-db-loss"},
        )  # fmt: skip
        wait_for(flag, child, timeout_s=180)
        server.terminate()
        server.wait(timeout=60)
        output = child.communicate(timeout=180)[0]
        assert "DATABASE ERROR: The database became unreachable while predicting" in output
        assert "resume=True" in output
        server = start_mongod(dbpath, port)
        resumed = subprocess.run(
            [sys.executable, "-c", DB_CHILD, "second", str(tmp_path / "images"), str(flag)],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "PYTHONPATH": str(ROOT), "FIFTYONE_DATABASE_URI": env_uri,
                 "FIFTYONE_DATABASE_NAME": "refseg-db-loss"},
        )  # fmt: skip
        assert re.search(r"SAME (\d+) of \1\b", resumed.stdout), resumed.stdout + resumed.stderr
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_two_saves_of_one_bank_name_cannot_interleave(dataset):
    bank = refseg.load_bank(dataset, "bank")
    holder = RunLock(dataset, "bank:bank_saved", description="another save")
    holder.acquire()
    try:
        with pytest.raises(refseg.RunLockedError, match="another save"):
            refseg.save_bank(dataset, "bank_saved", bank)
        assert "bank_saved" not in refseg.list_banks(dataset)
    finally:
        holder.release()
    refseg.save_bank(dataset, "bank_saved", bank)
    refseg.save_bank(
        dataset, "bank_saved", bank.with_thresholds({"red_square": 0.5}), overwrite=True
    )
    assert refseg.load_bank(dataset, "bank_saved").thresholds == {"red_square": 0.5}
