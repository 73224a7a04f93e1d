"""Negative references: the scoring rule, the bank rules, building and merging, paper mode, and
the measured value on a stand-in dataset with confusers (objects that look like a class)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from stand_ins import PaletteEncoder, ShapeProposer, predict_with_stand_ins, stand_in_bank

import refseg
from refseg.config import PAPER_PREDICT, PredictConfig
from refseg.matching import class_scores, class_scores_with_negatives
from refseg.memory import MemoryBank, ReferenceRecord
from refseg.synthetic import make_shapes_dataset

DATA = Path(__file__).parent / "data"
CONFIG = PredictConfig(points_per_side=12, points_batch_size=50, precision="fp32")  # as recorded


def unit(rows) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.as_tensor(rows, dtype=torch.float32), dim=-1)


def stand_ins() -> dict:
    return dict(encoder=PaletteEncoder(), proposer=ShapeProposer())


def run(view, bank, field, config=CONFIG, **kwargs):
    return predict_with_stand_ins(view, bank, field, config, **kwargs)


# -- the scoring rule -----------------------------------------------------------------------


def test_scores_follow_the_research_code_rule_per_class():
    generator = torch.Generator().manual_seed(0)
    features = unit(torch.randn(50, 8, generator=generator))
    prototypes = unit(torch.randn(3, 8, generator=generator))
    negatives = unit(torch.randn(5, 8, generator=generator))
    negative_labels = torch.tensor([0, 0, 2, 2, 2])
    scores, labels = class_scores_with_negatives(
        features, prototypes, negatives, negative_labels, sigma=0.8
    )
    for n in range(50):
        adjusted = []
        for c in range(3):
            s_pos = max(float(features[n] @ prototypes[c]), 0.0)
            s_neg = max(
                [
                    max(float(features[n] @ negatives[m]), 0.0)
                    for m in range(5)
                    if negative_labels[m] == c
                ],
                default=0.0,
            )
            adjusted.append(s_pos * np.exp(-max(s_neg - s_pos, 0.0) / 0.8))
        assert labels[n] == int(np.argmax(adjusted))
        assert scores[n] == pytest.approx(max(adjusted), abs=1e-6)


def test_the_label_is_the_argmax_of_the_adjusted_scores():
    # the proposal is closest to class 0, but a negative of class 0 is closer still
    features = unit([[1.0, 0.3, 0.0]])
    prototypes = unit([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]])
    negatives = unit([[1.0, 0.3, 0.0]])
    before, before_label = class_scores(features, prototypes)
    after, after_label = class_scores_with_negatives(
        features, prototypes, negatives, torch.tensor([0]), sigma=0.1
    )
    assert before_label.item() == 0 and after_label.item() == 1
    assert after.item() < before.item()


def test_classes_without_negatives_keep_their_scores_bit_for_bit():
    generator = torch.Generator().manual_seed(1)
    features = unit(torch.randn(200, 16, generator=generator))
    prototypes = unit(torch.randn(4, 16, generator=generator))
    plain = (features @ prototypes.t()).clamp(min=0.0)
    negatives = unit(torch.randn(3, 16, generator=generator))
    scores, labels = class_scores_with_negatives(
        features, prototypes, negatives, torch.tensor([3, 3, 3]), sigma=0.8
    )
    untouched = labels != 3
    picked = plain.gather(1, labels[:, None]).squeeze(1)
    assert torch.equal(scores[untouched], picked[untouched])
    far = class_scores_with_negatives(features, prototypes, -prototypes, torch.arange(4), 0.8)
    assert all(torch.equal(a, b) for a, b in zip(far, class_scores(features, prototypes)))


# -- the bank -------------------------------------------------------------------------------


def record(i: int, label: str, negative: bool = False, **changes) -> ReferenceRecord:
    return ReferenceRecord(
        "ds",
        f"s{i}",
        f"l{i}",
        label,
        f"/{i}.png",
        (0.0, 0.0, 9.0, 9.0),
        negative=negative,
        **changes,
    )


def bank_of(records, seed=0) -> MemoryBank:
    names = tuple(dict.fromkeys(r.label for r in records))
    return MemoryBank(
        class_names=names,
        prototypes=np.random.default_rng(seed).normal(size=(len(records), 4)).astype(np.float32),
        labels=np.array([names.index(r.label) for r in records]),
        references=tuple(records),
        encoder={"name": "dinov2_vits14", "weights": "random"},
        proposer={"name": "sam2.1_hiera_tiny", "weights": "random"},
    )


def test_a_bank_of_negatives_only_merges_but_cannot_predict(tmp_path, dataset_name):
    positives = bank_of([record(0, "cat"), record(1, "dog")])
    negatives = bank_of([record(2, "cat", True), record(3, "cat", True)], seed=1)
    assert negatives.counts() == {"cat": {"positive": 0, "negative": 2}}
    with pytest.raises(ValueError, match="only negative references.*with_references"):
        negatives.class_prototypes()
    merged = positives.with_references(negatives)
    assert merged.counts() == {
        "cat": {"positive": 1, "negative": 2},
        "dog": {"positive": 1, "negative": 0},
    }
    assert merged.shots() == {"cat": 1, "dog": 1}
    assert merged.shots(negative=True) == {"cat": 2, "dog": 0}
    np.testing.assert_array_equal(merged.class_prototypes(), positives.class_prototypes())
    protos, labels = merged.negative_prototypes()
    np.testing.assert_allclose(np.linalg.norm(protos, axis=1), 1.0, rtol=1e-6)
    assert labels.tolist() == [0, 0]
    dataset = make_shapes_dataset(dataset_name, str(tmp_path), num_positive=1, num_negative=0)
    with pytest.raises(ValueError, match="only negative references"):
        refseg.predict(dataset, negatives, "never")  # refused before any model is built
    assert "never" not in dataset.get_field_schema()


def test_negatives_of_a_class_without_positives_are_refused():
    positives = bank_of([record(0, "cat"), record(3, "dog")])
    stray = bank_of([record(1, "bird", True)])
    with pytest.raises(ValueError, match=r"\['bird'\] have only negative references.*l1"):
        positives.with_references(stray)
    merged = positives.with_references(bank_of([record(2, "cat", True)]))
    with pytest.raises(ValueError, match="only negative references"):
        merged.without_references(["l0"])  # the cat negative would be left alone
    assert merged.without_references(["l0", "l2"]).counts() == {
        "dog": {"positive": 1, "negative": 0}
    }


def test_banks_of_format_2_still_load_with_their_negatives():
    bank = MemoryBank.load(DATA / "bank_v2.npz")
    assert [r.negative for r in bank.references] == [False, False, True]
    assert [r.score for r in bank.references] == [None, None, None]
    assert bank.counts()["cat"] == {"positive": 1, "negative": 1} and bank.thresholds == {}
    again = MemoryBank.from_bytes(bank.to_bytes())
    assert again.references == bank.references


# -- building negatives, predicting with them -----------------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    name = f"negatives-{tmp_path_factory.getbasetemp().name}"
    dataset = make_shapes_dataset(
        name, str(tmp_path_factory.mktemp("images")), num_positive=8, num_negative=1, seed=11
    )
    refs, bank, _ = stand_in_bank(dataset)
    yield dataset, refs, bank
    dataset.delete()


def _digests(view, field) -> dict[str, list]:
    """Per image: [number of detections, SHA-256 of labels, confidences, boxes and masks]."""
    digests = {}
    for path, dets in zip(*view.values(["filepath", field])):
        sha = hashlib.sha256()
        for d in dets.detections:
            sha.update(repr((d.label, d.confidence, list(d.bounding_box), d.mask.shape)).encode())
            sha.update(np.packbits(d.mask).tobytes())
        digests[os.path.basename(path)] = [len(dets.detections), sha.hexdigest()]
    return digests


def test_a_bank_without_negatives_predicts_exactly_as_before_negatives_existed(shapes):
    """``predictions_before_negatives.json`` holds digests of the labels refseg wrote for this
    dataset and bank before negative references were scored (commit a79ff9e)."""
    dataset, refs, bank = shapes
    expected = json.loads((DATA / "predictions_before_negatives.json").read_text())
    targets = dataset.exclude(refs.values("id"))
    assert not bank.has_negatives
    tagged = targets.limit(3)
    some = tagged.values("ground_truth.detections.id", unwind=True)[:3]
    with_negatives = refseg.add_references(
        bank, tagged, "ground_truth", some, negative=True, **stand_ins()
    )
    for resolution in ("full", "low"):
        config = dataclasses.replace(CONFIG, merge_resolution=resolution)
        run(targets, bank, f"plain_{resolution}", config)
        assert _digests(targets, f"plain_{resolution}") == expected[resolution]
        ignored = dataclasses.replace(config, use_negatives=False)
        run(targets, with_negatives, f"ignored_{resolution}", ignored)
        assert _digests(targets, f"ignored_{resolution}") == expected[resolution]
    paper = dataclasses.replace(PAPER_PREDICT, points_per_side=12, points_batch_size=50)
    run(targets.limit(2), bank, "paper_plain", paper)
    run(targets.limit(2), with_negatives, "paper_negatives", paper)
    assert _digests(targets.limit(2), "paper_plain") == _digests(
        targets.limit(2), "paper_negatives"
    )
    run(targets.limit(2), with_negatives, "scored", CONFIG)
    assert _digests(targets.limit(2), "scored") != _digests(targets.limit(2), "plain_full")


def test_negatives_are_encoded_exactly_as_positives(shapes):
    dataset, refs, bank = shapes
    run(refs, bank, "on_refs")
    fp = refs.values("on_refs.detections.id", unwind=True)[:4]
    dataset.select_labels(ids=fp, fields="on_refs").tag_labels(refseg.NEGATIVE_TAG)
    negatives = refseg.build_memory_bank(
        refs, "on_refs", tag=refseg.NEGATIVE_TAG, negative=True, progress=False, **stand_ins()
    )
    positives = refseg.build_memory_bank(
        refs, "on_refs", tag=refseg.NEGATIVE_TAG, progress=False, **stand_ins()
    )
    np.testing.assert_array_equal(negatives.prototypes, positives.prototypes)
    assert [r.label_id for r in negatives.references] == [r.label_id for r in positives.references]
    assert all(r.negative and r.field == "on_refs" for r in negatives.references)
    scores = dict(
        zip(*refs.values(["on_refs.detections.id", "on_refs.detections.confidence"], unwind=True))
    )
    assert [r.score for r in negatives.references] == [
        scores[r.label_id] for r in negatives.references
    ]
    merged = bank.with_references(negatives)
    assert merged.shots() == bank.shots()
    assert sum(merged.shots(negative=True).values()) == 4


# -- the measured value ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def confusers(tmp_path_factory):
    """24 images of shapes, each with one 'orange_square' confuser that is in no class."""
    name = f"confusers-{tmp_path_factory.getbasetemp().name}"
    dataset = make_shapes_dataset(
        name,
        str(tmp_path_factory.mktemp("confusers")),
        num_positive=24,
        num_negative=0,
        seed=1,
        confusers=1,
    )
    yield dataset
    dataset.delete()


def test_negatives_from_false_positives_raise_ap_on_held_out_images(confusers):
    """The README's numbers: bank -> predict split A -> false positives tagged as negatives ->
    merged -> predict held-out split B (the unchanged bank without negatives predicts as
    before: ``test_a_bank_without_negatives_predicts_exactly_as_before_negatives_existed``)."""
    dataset = confusers
    assert len(dataset.match_tags("confuser")) >= 20  # a crowded image may have no room
    _, bank, others = stand_in_bank(dataset, shots=2)
    ids = others.values("id")
    split_a, split_b = dataset.select(ids[: len(ids) // 2]), dataset.select(ids[len(ids) // 2 :])
    run(split_a, bank, "pred_a")
    marked = refseg.mark_false_positives(split_a, "pred_a", "ground_truth")
    tagged = split_a.count_label_tags(label_fields="pred_a")[refseg.NEGATIVE_TAG]
    assert tagged == len(marked) > 0
    negatives = refseg.build_memory_bank(
        split_a, "pred_a", tag=refseg.NEGATIVE_TAG, negative=True, progress=False, **stand_ins()
    )
    curated = bank.with_references(negatives)

    run(split_b, bank, "before")
    run(split_b, curated, "after")
    before = refseg.evaluate(split_b, "before", "ground_truth")
    after = refseg.evaluate(split_b, "after", "ground_truth")
    print(
        f"\nsplit B ({len(split_b)} images): segm AP {before.segm['AP']:.4f} -> "
        f"{after.segm['AP']:.4f}, bbox AP {before.bbox['AP']:.4f} -> {after.bbox['AP']:.4f}, "
        f"red_square segm AP {before.per_class_ap['segm']['red_square']:.4f} -> "
        f"{after.per_class_ap['segm']['red_square']:.4f}; {len(marked)} negatives"
    )
    assert after.segm["AP"] > before.segm["AP"] + 0.01
    assert after.bbox["AP"] > before.bbox["AP"] + 0.01
    assert after.per_class_ap["segm"]["red_square"] > before.per_class_ap["segm"]["red_square"]
    assert not bank.has_negatives  # merging made a new bank; the first one is unchanged
