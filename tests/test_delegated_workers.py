"""Sharded runs executed by real ``fiftyone delegated launch`` workers, one of them killed.

The test starts its own MongoDB server (FiftyOne's ``mongod``, 127.0.0.1, a free port, a
temporary dbpath). FiftyOne's connection is per process, so everything that talks to FiftyOne
runs in child processes pointed at that server with ``FIFTYONE_DATABASE_URI``: a setup child
(dataset, bank, the single-process reference labels and masks), children that queue, re-queue
and check runs (a sharded predict, twice, then a sharded bank build and a sharded boxes to
masks), and two ``fiftyone delegated launch`` workers that find the plugin through
``FIFTYONE_PLUGINS_DIR`` (a symlink to this checkout). The test itself only watches the run's
record with pymongo, to know when to kill a worker. Models: SAM2.1 Hiera-T and DINOv2 ViT-S/14
with random weights, a 2 x 2 prompt grid. Slow: a few minutes on two cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymongo
import pytest
from local_mongo import free_port, start_mongod

ROOT = Path(__file__).resolve().parents[1]
DATABASE = "refseg-delegated-workers"
FIELD_TIMEOUT_S = 1200
FIFTYONE_CLI = str(Path(sys.executable).with_name("fiftyone"))
if not os.path.exists(FIFTYONE_CLI):
    FIFTYONE_CLI = shutil.which("fiftyone") or "fiftyone"

pytestmark = pytest.mark.slow

PRELUDE = """
import json, sys, warnings
warnings.simplefilter("ignore")
import fiftyone as fo
import refseg
from refseg.config import PredictConfig
from refseg.models import Models
MODELS = Models(proposer="sam2.1_hiera_tiny", encoder="dinov2_vits14",
                proposer_weights="random", encoder_weights="random")
CONFIG = PredictConfig(points_per_side=2, points_batch_size=4)
def labels(view, field):
    return [None if v is None else [(d.label, d.bounding_box, d.confidence, d.mask.tobytes().hex())
            for d in v.detections] for v in view.values(field)]
"""

SETUP = (
    PRELUDE
    + """
from refseg.synthetic import CLASSES, make_shapes_dataset
dataset = make_shapes_dataset("shards", sys.argv[1], num_positive=8, num_negative=0, seed=6,
                              persistent=True)
refs = refseg.sample_references(dataset, "ground_truth", shots=1, seed=0, classes=CLASSES)
refseg.build_memory_bank(refs, "ground_truth", tag=refseg.DEFAULT_TAG, models=MODELS,
                         device="cpu", name="bank", progress=False)
dataset.match_labels(tags=refseg.DEFAULT_TAG, bool=False).limit(4).tag_samples("target")
targets = dataset.match_tags("target")
refseg.predict(targets, refseg.load_bank(dataset, "bank"), "single", config=CONFIG,
               device="cpu", num_workers=0, progress=False)
dataset.clone_sample_field("ground_truth", "boxes")
targets.set_field("boxes.detections.mask", None).save()
refseg.fill_box_masks(targets, "boxes", output_field="single_masks", models=MODELS, device="cpu")
refseg.build_memory_bank(dataset, "ground_truth", models=MODELS, device="cpu", name="all_bank",
                         progress=False)
print(json.dumps({"targets": targets.values("id")}))
"""
)

QUEUE = (
    PRELUDE
    + """
dataset = fo.load_dataset("shards")
status = refseg.predict(dataset.match_tags("target"), refseg.load_bank(dataset, "bank"),
                        sys.argv[1], shards=3, delegate=True, config=CONFIG, device="cpu",
                        num_workers=0, write_every=1)
print(json.dumps({"run_id": status.run_id, "states": [s.state for s in status.shards]}))
"""
)

QUEUE_TASKS = (
    PRELUDE
    + """
dataset = fo.load_dataset("shards")
bank = refseg.build_memory_bank(dataset, "ground_truth", models=MODELS, device="cpu",
                                name="sharded_bank", shards=3, delegate=True)
masks = refseg.fill_box_masks(dataset.match_tags("target"), "boxes", output_field="sharded_masks",
                              models=MODELS, device="cpu", shards=3, delegate=True)
print(json.dumps({"bank": bank.run_id, "masks": masks.run_id, "bank_shards": len(bank.shards),
                  "mask_shards": len(masks.shards)}))
"""
)

CHECK_TASKS = (
    PRELUDE
    + """
import numpy as np
dataset = fo.load_dataset("shards")
def by_label(bank):
    return {r.label_id: (r, p.tolist()) for r, p in zip(bank.references, bank.prototypes)}
single, sharded = refseg.load_bank(dataset, "all_bank"), refseg.load_bank(dataset, "sharded_bank")
a, b = by_label(single), by_label(sharded)
def masks(field):
    return {d.id: d.mask.tobytes().hex() for v in dataset.match_tags("target").values(field)
            for d in v.detections}
print(json.dumps({
    "states": [refseg.run_status(dataset, r).state for r in sys.argv[1:]],
    "same_references": a.keys() == b.keys() and all(a[k][0] == b[k][0] for k in a),
    "max_prototype_diff": max(float(np.abs(np.subtract(a[k][1], b[k][1])).max()) for k in a),
    "same_models": (single.encoder, single.proposer) == (sharded.encoder, sharded.proposer),
    "same_masks": masks("sharded_masks") == masks("single_masks"),
    "num_masks": len(masks("sharded_masks")),
}))
"""
)

RERUN = (
    PRELUDE
    + """
dataset = fo.load_dataset("shards")
before = refseg.run_status(dataset, sys.argv[1])
after = refseg.rerun_shards(dataset, sys.argv[1])
print(json.dumps({"before": [s.state for s in before.shards],
                  "done_before": [s.done for s in before.shards],
                  "after": [s.state for s in after.shards]}))
"""
)

CHECK = (
    PRELUDE
    + """
from bson import ObjectId
from fiftyone.operators.delegated import DelegatedOperationService
dataset = fo.load_dataset("shards")
status = refseg.run_status(dataset, sys.argv[1])
service = DelegatedOperationService()
targets = dataset.match_tags("target")
shards = []
for s in status.shards:
    operations = [service.get(ObjectId(h["operation_id"])) for h in s.history]
    shards.append({"index": s.index, "state": s.state, "num_samples": s.num_samples,
                   "done": s.done, "operation_state": s.operation_state,
                   "history": [{"state": h["state"], "num_samples": h["num_samples"]}
                               for h in s.history],
                   "history_operations": [o.run_state for o in operations]})
killed = [service.get(ObjectId(i)) for i in sys.argv[3:]]
print(json.dumps({
    "state": status.state, "done": status.done, "num_samples": status.num_samples,
    "shards": shards,
    "same_labels": labels(targets, sys.argv[2]) == labels(targets, "single"),
    "written": len(targets.exists(sys.argv[2])), "targets": len(targets),
    "killed": [[o.run_state, (o.result.error if o.result else "") or ""] for o in killed],
}))
"""
)


@pytest.fixture
def cluster(tmp_path):
    """A private mongod, an environment pointing at it, and a registry of started workers
    that are all killed (their process groups) at the end, whatever happens."""
    port, dbpath = free_port(), tmp_path / "db"
    dbpath.mkdir()
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "refseg").symlink_to(ROOT, target_is_directory=True)
    uri = f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=5000"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FIFTYONE_DATABASE_URI": uri,
        "FIFTYONE_DATABASE_NAME": DATABASE,
        "FIFTYONE_PLUGINS_DIR": str(plugins),
        "FIFTYONE_DO_NOT_TRACK": "true",
    }
    server = start_mongod(dbpath, port)
    workers: list[subprocess.Popen] = []
    client = pymongo.MongoClient(uri)
    try:
        yield {"env": env, "workers": workers, "db": client[DATABASE], "logs": tmp_path}
    finally:
        client.close()
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
        server.terminate()
        server.wait(timeout=60)


def child(cluster, script: str, *args: str, timeout: float = 900) -> dict:
    """Runs a FiftyOne child process against the private server; returns its JSON output."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_worker(cluster, name: str) -> subprocess.Popen:
    log = open(cluster["logs"] / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    worker = subprocess.Popen(
        [FIFTYONE_CLI, "delegated", "launch"],
        env=cluster["env"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, killed whole
    )
    cluster["workers"].append(worker)
    return worker


def worker_logs(cluster) -> str:
    return "\n".join(
        f"--- {path.name}\n{path.read_text()[-4000:]}" for path in cluster["logs"].glob("*.log")
    )


def wait_for(cluster, what: str, predicate, timeout_s: float = FIELD_TIMEOUT_S):
    """Polls ``predicate(db)`` until it returns something truthy; fails with the workers' logs
    when it does not in time or when every worker has died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate(cluster["db"])
        if found:
            return found
        if all(w.poll() is not None for w in cluster["workers"]):
            raise AssertionError(
                f"every worker ended while waiting for {what}\n{worker_logs(cluster)}"
            )
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{worker_logs(cluster)}")


PICKED_UP = {"queued", "running", "completed"}
"""A shard's states once queued while workers poll the queue (never failed, lost or missing)."""


def run_completed(run_id: str):
    return lambda db: db.refseg_runs.find_one({"_id": run_id, "state": "completed"})


def test_two_delegated_workers_run_sharded_runs_even_when_one_is_killed(cluster, tmp_path):
    targets = child(cluster, SETUP, str(tmp_path / "images"), timeout=1200)["targets"]
    assert len(targets) == 4
    first, second = start_worker(cluster, "worker-1"), start_worker(cluster, "worker-2")

    # 1. three shards, two workers: every shard completed once, labels of one process
    run = child(cluster, QUEUE, "sharded")
    # the workers already poll the queue, so one may have claimed a shard by the time it is read
    assert len(run["states"]) == 3 and set(run["states"]) <= PICKED_UP, run
    wait_for(cluster, "the sharded run", run_completed(run["run_id"]))
    report = child(cluster, CHECK, run["run_id"], "sharded")
    assert report["state"] == "completed", report
    assert report["done"] == report["num_samples"] == report["written"] == 4
    assert sorted(s["num_samples"] for s in report["shards"]) == [1, 1, 2]
    for shard in report["shards"]:
        assert shard["state"] == shard["operation_state"] == "completed", report
        # one execution per shard, which predicted each of its samples: nothing twice
        assert shard["history"] == [{"state": "completed", "num_samples": shard["num_samples"]}]
    assert report["same_labels"], report

    # 2. again, with the worker running the 2-sample shard killed after its first sample
    run = child(cluster, QUEUE, "killed")
    running = wait_for(
        cluster,
        "the 2-sample shard to have predicted one sample",
        lambda db: db.refseg_runs.find_one(
            {"kind": "shard", "run_id": run["run_id"], "sample_ids": {"$size": 2},
             "execution.processed": {"$gte": 1}}
        ),
    )  # fmt: skip
    pid = running["execution"]["pid"]
    victim = next(w for w in (first, second) if w.pid == pid)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    lost_operation = running["execution"]["operation_id"]

    rerun = child(cluster, RERUN, run["run_id"])
    assert rerun["before"][running["index"]] == "lost", rerun
    assert rerun["after"][running["index"]] in PICKED_UP, rerun  # queued again
    wait_for(cluster, "the re-queued shard", run_completed(run["run_id"]))
    report = child(cluster, CHECK, run["run_id"], "killed", lost_operation)
    assert report["state"] == "completed", report
    assert report["written"] == 4 and report["same_labels"], report
    assert report["killed"][0][0] == "failed" and "is gone" in report["killed"][0][1], report
    shard = report["shards"][running["index"]]
    # the re-run predicted only what the killed worker had not written
    done_before = rerun["done_before"][running["index"]]
    assert shard["history"] == [{"state": "completed", "num_samples": 2 - done_before}], report
    others = [s for s in report["shards"] if s["index"] != running["index"]]
    assert all(s["history"] == [{"state": "completed", "num_samples": 1}] for s in others)

    # 3. a sharded bank build and a sharded boxes to masks, on two workers again
    start_worker(cluster, "worker-3")
    runs = child(cluster, QUEUE_TASKS)
    assert runs["bank_shards"] == runs["mask_shards"] == 3, runs
    wait_for(cluster, "the sharded bank build", run_completed(runs["bank"]))
    wait_for(cluster, "the sharded boxes to masks", run_completed(runs["masks"]))
    report = child(cluster, CHECK_TASKS, runs["bank"], runs["masks"])
    assert report["states"] == ["completed", "completed"], report
    assert report["same_references"] and report["same_models"], report
    assert report["max_prototype_diff"] <= 1e-5, report
    assert report["same_masks"] and report["num_masks"] > 0, report
