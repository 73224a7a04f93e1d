"""The memory bank: validation, safe versioned files, edits without re-encoding, dataset runs."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest

from refseg.config import ReferenceConfig
from refseg.fiftyone_io import list_banks, load_bank, save_bank
from refseg.memory import FORMAT_VERSION, BankFileError, MemoryBank, ReferenceRecord


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


# -- format version 2: checksum, reference field and polarity --------------------------------

V1_FIXTURE = Path(__file__).parent / "data" / "bank_v1.npz"
"""A bank written by refseg's format-1 code (commit 2e734d4), before format 2 existed."""


def _rewrite(data: bytes, **changes) -> bytes:
    """The archive with some members replaced (written as numpy writes them, no checksum
    update): what an edit with numpy looks like."""
    with np.load(io.BytesIO(data)) as archive:
        arrays = dict(archive)
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _header(data: bytes) -> dict:
    with np.load(io.BytesIO(data)) as archive:
        return json.loads(archive["header"].tobytes())


def _encoded(header: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(header).encode(), np.uint8)


def test_format_1_banks_still_load_and_are_saved_as_the_current_format(tmp_path):
    assert _header(V1_FIXTURE.read_bytes())["version"] == 1
    bank = MemoryBank.load(V1_FIXTURE)
    assert bank.class_names == ("cat", "dog") and bank.shots() == {"cat": 2, "dog": 1}
    np.testing.assert_array_equal(
        bank.prototypes, np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    )
    assert [r.mask_source for r in bank.references] == ["label", "box", "label"]
    assert all(r.field == "" and r.negative is False for r in bank.references)
    bank.save(tmp_path / "again.npz")
    assert _header((tmp_path / "again.npz").read_bytes())["version"] == FORMAT_VERSION == 3
    assert MemoryBank.load(tmp_path / "again.npz").references == bank.references


def test_field_and_polarity_survive_files_and_edits():
    records = [
        dataclasses.replace(r, field="ground_truth", negative=i == 2)
        for i, r in enumerate(make_bank(shots=(2, 2)).references)
    ]
    bank = dataclasses.replace(make_bank(shots=(2, 2)), references=tuple(records))
    loaded = MemoryBank.from_bytes(bank.to_bytes())
    assert loaded.references == bank.references
    assert [r.negative for r in loaded.references] == [False, False, True, False]
    assert loaded.shots() == {"cat": 2, "dog": 1}  # a negative reference is not a shot
    other = make_bank(shots=(1,), prefix="m")
    other = dataclasses.replace(
        other,
        class_names=("dog",),
        references=(dataclasses.replace(other.references[0], label="dog", negative=True),),
    )
    merged = loaded.with_references(other)
    assert merged.references[-1].negative and merged.references[-1].field == ""
    assert merged.without_references(["l0"]).references[1:] == merged.references[2:]


def test_class_prototypes_use_positive_references_only():
    bank = make_bank(shots=(2, 1), dim=8)
    negative = dataclasses.replace(bank.references[0], label_id="neg", negative=True)
    with_negative = dataclasses.replace(
        bank,
        prototypes=np.concatenate([bank.prototypes, np.full((1, 8), 50.0, np.float32)]),
        labels=np.append(bank.labels, 0),
        references=bank.references + (negative,),
    )
    np.testing.assert_array_equal(with_negative.class_prototypes(), bank.class_prototypes())
    with pytest.raises(ValueError, match=r"\['dog'\] have only negative references"):
        dataclasses.replace(
            with_negative,
            references=tuple(
                dataclasses.replace(r, negative=r.label == "dog") for r in with_negative.references
            ),
        )


def test_damaged_truncated_or_edited_files_are_refused(tmp_path):
    data = make_bank(shots=(3, 2), dim=16).to_bytes()
    path = tmp_path / "bank.npz"
    for cut in (0, 10, len(data) // 3, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(BankFileError, match=r"bank\.npz.*damaged or truncated.*Rebuild"):
            MemoryBank.load(path)
    flipped = bytearray(data)
    start = data.index(b"prototypes.npy")  # the compressed prototypes follow their name
    flipped[start + 200] ^= 0xFF
    with pytest.raises(BankFileError, match="Rebuild the bank with refseg.build_memory_bank"):
        MemoryBank.from_bytes(bytes(flipped))
    header = _header(data)
    header["class_names"] = ["dog", "cat"]  # the labels now point at the other class
    with pytest.raises(BankFileError, match="fails its checksum.*damaged or edited"):
        MemoryBank.from_bytes(_rewrite(data, header=_encoded(header)))
    with np.load(io.BytesIO(data)) as archive:
        prototypes = archive["prototypes"].copy()
    prototypes[0, 0] += 1e-3
    with pytest.raises(BankFileError, match="fails its checksum"):
        MemoryBank.from_bytes(_rewrite(data, prototypes=prototypes))
    with pytest.raises(BankFileError, match="format version 3 but no checksum"):
        MemoryBank.from_bytes(_rewrite(data, sha256=None))
    header = _header(data)
    header["version"] = 1
    with pytest.raises(BankFileError, match="says format version 1 but carries a checksum"):
        MemoryBank.from_bytes(_rewrite(data, header=_encoded(header)))
    header["version"] = 4
    with pytest.raises(BankFileError, match="format version 4.*newer refseg: upgrade"):
        MemoryBank.from_bytes(_rewrite(data, header=_encoded(header)), source="b.npz")
    with pytest.raises(BankFileError, match="header is not JSON"):
        MemoryBank.from_bytes(_rewrite(data, header=np.frombuffer(b"\xff{", np.uint8)))


def test_random_damage_never_escapes_as_a_generic_error():
    data = make_bank(shots=(4, 3), dim=32).to_bytes()
    reference = MemoryBank.from_bytes(data)
    rng = np.random.default_rng(0)
    for _ in range(400):
        damaged = bytearray(data)
        for position in rng.integers(0, len(data), size=rng.integers(1, 4)):
            damaged[position] = rng.integers(256)
        if rng.random() < 0.3:
            damaged = damaged[: rng.integers(len(damaged))]
        try:
            loaded = MemoryBank.from_bytes(bytes(damaged))
        except BankFileError:
            continue
        # accepted only where the damage hit zip bookkeeping, never the bank's content
        np.testing.assert_array_equal(loaded.prototypes, reference.prototypes)
        assert loaded.references == reference.references


def _stored_payload(dataset, key: str) -> bytes:
    return base64.b64decode(dataset.load_run_results(key, cache=False).bank)


def _store_payload(dataset, key: str, payload: str) -> None:
    dataset.save_run_results(key, dataset.init_run_results(key, bank=payload), overwrite=True)


def test_a_damaged_bank_stored_with_the_dataset_is_refused(dataset_name):
    dataset = fo.Dataset(dataset_name)
    save_bank(dataset, "pets", make_bank())
    good = _stored_payload(dataset, "pets")
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF
    rebuild = r"build_memory_bank\(view, field, name='pets', overwrite=True\)"
    for payload in (
        base64.b64encode(bytes(damaged)).decode(),
        base64.b64encode(good[: len(good) // 2]).decode(),
        "not base64 at all!",
    ):
        _store_payload(dataset, "pets", payload)
        with pytest.raises(
            BankFileError, match=f"memory bank 'pets' stored with dataset.*{rebuild}"
        ):
            load_bank(dataset, "pets")
    _store_payload(dataset, "pets", base64.b64encode(good).decode())
    assert load_bank(dataset, "pets").shots() == {"cat": 2, "dog": 1}


def test_a_stored_bank_records_its_reference_fields(dataset_name):
    dataset = fo.Dataset(dataset_name)
    bank = make_bank()
    records = tuple(
        dataclasses.replace(r, dataset=dataset_name, field="ground_truth") for r in bank.references
    )
    save_bank(dataset, "pets", dataclasses.replace(bank, references=records))
    assert dataset.get_run_info("pets").config.reference_fields == ["ground_truth"]
    dataset.register_run("other_plugin", dataset.init_run(method="someone.else"))
    with pytest.raises(ValueError, match="another run named 'other_plugin'.*will not replace"):
        save_bank(dataset, "other_plugin", bank, overwrite=True)
    assert dataset.get_run_info("other_plugin").config.method == "someone.else"
