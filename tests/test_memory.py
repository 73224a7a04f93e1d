"""The memory bank: validation, safe versioned files, edits without re-encoding, dataset runs."""

from __future__ import annotations

import io
import json

import fiftyone as fo
import numpy as np
import pytest

from refseg.config import ReferenceConfig
from refseg.fiftyone_io import list_banks, load_bank, save_bank
from refseg.memory import MemoryBank, ReferenceRecord


def make_bank(shots=(2, 1), dim=4, seed=0, prefix="l") -> MemoryBank:
    rng = np.random.default_rng(seed)
    names = ("cat", "dog") if len(shots) == 2 else tuple(f"class{i}" for i in range(len(shots)))
    labels = np.repeat(np.arange(len(shots)), shots)
    references = tuple(
        ReferenceRecord(
            "ds", f"s{i}", f"{prefix}{i}", names[c], f"/img/{i}.png", (1.0, 2.0, 30.0, 40.0)
        )
        for i, c in enumerate(labels)
    )
    return MemoryBank(
        class_names=names,
        prototypes=rng.normal(size=(len(labels), dim)).astype(np.float32),
        labels=labels,
        references=references,
        encoder={"name": "dinov2_vits14", "weights": "random(seed=0)"},
        proposer={"name": "sam2.1_hiera_tiny"},
        settings=ReferenceConfig(mask_downsample="nearest"),
    )


def test_save_load_round_trip(tmp_path):
    bank = make_bank()
    bank.save(tmp_path / "bank.npz")
    loaded = MemoryBank.load(tmp_path / "bank.npz")
    np.testing.assert_array_equal(loaded.prototypes, bank.prototypes)
    np.testing.assert_array_equal(loaded.labels, bank.labels)
    assert loaded.references == bank.references
    assert (loaded.class_names, loaded.encoder, loaded.proposer, loaded.settings) == (
        bank.class_names,
        bank.encoder,
        bank.proposer,
        bank.settings,
    )


def test_a_paper_sized_bank_is_at_most_3_mb(tmp_path):
    # 20 classes x 30 shots of ViT-L features (D = 1024): 2.4 MB of float32 plus provenance
    bank = make_bank(shots=(30,) * 20, dim=1024)
    bank.save(tmp_path / "bank.npz")
    assert (tmp_path / "bank.npz").stat().st_size <= 3 * 2**20


def test_load_refuses_other_versions_and_files(tmp_path):
    data = make_bank().to_bytes()
    with np.load(io.BytesIO(data)) as archive:
        arrays = dict(archive)
    header = json.loads(arrays["header"].tobytes())
    header["version"] = 99
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with pytest.raises(ValueError, match="format version 99"):
        MemoryBank.from_bytes(buffer.getvalue())
    (tmp_path / "junk.npz").write_bytes(b"not a bank")
    with pytest.raises(ValueError, match="not a refseg memory bank"):
        MemoryBank.load(tmp_path / "junk.npz")


def test_load_refuses_pickled_content(tmp_path):
    buffer = io.BytesIO()
    np.savez(buffer, header=np.array([{"format": "refseg.memory_bank"}], dtype=object))
    with pytest.raises(ValueError, match="not a refseg memory bank"):
        MemoryBank.from_bytes(buffer.getvalue())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(prototypes=np.full((3, 4), np.nan, np.float32)), "NaN"),
        (dict(labels=np.array([0, 0, 0])), "without any reference"),
        (dict(prototypes=np.zeros((2, 4), np.float32)), "shape"),
        (dict(class_names=("cat", "cat")), "duplicate"),
    ],
)
def test_validation_names_the_problem(change, message):
    bank = make_bank()
    fields = dict(
        class_names=bank.class_names,
        prototypes=bank.prototypes,
        labels=bank.labels,
        references=bank.references,
        encoder=bank.encoder,
        proposer=bank.proposer,
    )
    with pytest.raises(ValueError, match=message):
        MemoryBank(**{**fields, **change})


def test_add_and_remove_references_without_reencoding():
    bank = make_bank(shots=(2, 1))
    extra = make_bank(shots=(1, 2), seed=1, prefix="x")
    merged = bank.with_references(extra)
    assert merged.shots() == {"cat": 3, "dog": 3}
    np.testing.assert_array_equal(merged.prototypes[:3], bank.prototypes)
    smaller = merged.without_references(["x0", "l2"])
    assert smaller.shots() == {"cat": 2, "dog": 2}
    np.testing.assert_array_equal(smaller.prototypes[0], bank.prototypes[0])
    with pytest.raises(ValueError, match="already in the bank"):
        bank.with_references(bank)
    with pytest.raises(ValueError, match="not in this memory bank"):
        bank.without_references(["nope"])
    with pytest.raises(ValueError, match="empty"):
        bank.without_references(["l0", "l1", "l2"])


def test_removing_all_references_of_a_class_removes_the_class():
    bank = make_bank(shots=(2, 1))
    assert bank.without_references(["l0", "l1"]).class_names == ("dog",)
    assert bank.without_references(["l2"]).shots() == {"cat": 2}


def test_encoder_mismatch_is_refused_with_a_clear_message():
    bank = make_bank()
    with pytest.raises(ValueError, match="built with encoder .*dinov2_vits14.* rebuild the bank"):
        bank.check_encoder({"name": "dinov2_vitl14", "weights": "abc"}, 1024)
    other = make_bank()
    object.__setattr__(other, "encoder", {"name": "dinov2_vitl14"})
    with pytest.raises(ValueError, match="built with encoder"):
        bank.with_references(other)


def test_bank_is_stored_with_the_dataset_and_survives_a_reload(dataset_name):
    dataset = fo.Dataset(dataset_name)
    bank = make_bank()
    save_bank(dataset, "pets", bank)
    assert list_banks(dataset) == ["pets"]
    with pytest.raises(ValueError, match="already has a memory bank named 'pets'"):
        save_bank(dataset, "pets", bank)
    reloaded = fo.load_dataset(dataset_name)
    reloaded.reload()
    loaded = load_bank(reloaded, "pets")
    np.testing.assert_array_equal(loaded.prototypes, bank.prototypes)
    info = reloaded.get_run_info("pets")
    assert info.config.classes == ["cat", "dog"] and info.config.shots == {"cat": 2, "dog": 1}
    with pytest.raises(ValueError, match="no refseg memory bank named 'other'"):
        load_bank(reloaded, "other")
    with pytest.raises(ValueError, match="valid Python identifier"):
        save_bank(dataset, "not a key", bank)
