"""``refseg.Models``: one value for the models, a registry of builders, checks against a bank.

The bank decides the models: ``predict`` without models uses the ones it records, and models
that do not fit it are refused before any weights file is resolved, hashed or loaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stand_ins import PaletteEncoder, ShapeProposer

import refseg
from refseg.config import PredictConfig
from refseg.memory import MemoryBank, ReferenceRecord
from refseg.models import (
    RANDOM,
    RANDOM_WEIGHTS,
    BankModelsMismatchError,
    ModelEntry,
    Models,
    model_names,
    register_model,
)
from refseg.models import selection as selection_module
from refseg.proposals import Proposals
from refseg.synthetic import CLASSES, make_shapes_dataset


def bank_with(encoder: dict, proposer: dict | None = None) -> MemoryBank:
    return MemoryBank(
        class_names=("a",),
        prototypes=np.ones((1, 4), np.float32),
        labels=np.zeros(1, np.int64),
        references=(ReferenceRecord("d", "s", "l", "a", "f.png", (0, 0, 1, 1)),),
        encoder=encoder,
        proposer=proposer or {"name": "sam2.1_hiera_tiny", "weights": RANDOM_WEIGHTS},
    )


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="Choose one of: .*sam2_hiera_large"):
        Models(proposer="sam3")
    with pytest.raises(ValueError, match="dinov2_vitl14"):
        Models(encoder="dinov3")
    with pytest.raises(ValueError, match="official"):
        Models(encoder_weights="")


def test_keyword_shortcuts():
    assert Models.of(pretrained=False) == Models(proposer_weights=RANDOM, encoder_weights=RANDOM)
    base = Models(proposer="sam2_hiera_tiny", encoder="dinov2_vits14", encoder_weights=RANDOM)
    assert Models.of(base=base).encoder_weights == RANDOM  # None keeps the base's
    assert Models.of(pretrained=True, base=base).encoder_weights == "official"
    assert Models.of(dinov2_checkpoint="/w/x.pth", base=base).encoder_weights == "/w/x.pth"
    with pytest.raises(ValueError, match="contradict"):
        Models.of(sam2_checkpoint="/w/x.pt", pretrained=False)
    assert Models.from_dict(base.to_dict()) == base
    with pytest.raises(ValueError, match="Unknown Models fields"):
        Models.from_dict({"sam": "x"})


def test_paper_is_one_value():
    assert refseg.PAPER.models == Models(proposer="sam2_hiera_large", encoder="dinov2_vitl14")
    assert refseg.PAPER_MODELS == refseg.PAPER.models
    assert refseg.PAPER.reference == refseg.PAPER_REFERENCE
    assert refseg.PAPER.predict == refseg.PAPER_PREDICT
    assert refseg.PAPER.evaluate == refseg.PAPER_EVALUATE
    assert refseg.PAPER.evaluate.legacy_coco_box and not refseg.DEFAULT.evaluate.legacy_coco_box


def test_the_bank_decides_the_models():
    bank = bank_with(
        {"name": "dinov2_vits14", "weights": RANDOM_WEIGHTS},
        {"name": "sam2_hiera_tiny", "weights": RANDOM_WEIGHTS},
    )
    models = Models.from_bank(bank)
    assert models == Models("sam2_hiera_tiny", "dinov2_vits14", RANDOM, RANDOM)
    files = {"name": "dinov2_vits14", "weights": "dinov2_vits14_pretrain.pth#sha256:abc"}
    assert Models.from_bank(bank_with(files)).encoder_weights == "official"


def test_mismatches_are_refused_before_any_weights_are_resolved(monkeypatch):
    def no_file_access(*args, **kwargs):
        raise AssertionError("weights were looked up before the bank was checked")

    monkeypatch.setattr(selection_module, "resolve_checkpoint", no_file_access)
    random_bank = bank_with({"name": "dinov2_vits14", "weights": RANDOM_WEIGHTS})
    with pytest.raises(BankModelsMismatchError, match="random weights"):
        Models(encoder="dinov2_vits14").check_bank(random_bank)
    with pytest.raises(BankModelsMismatchError, match="encoder 'dinov2_vits14'"):
        Models(encoder="dinov2_vitb14", encoder_weights=RANDOM).check_bank(random_bank)
    file_bank = bank_with({"name": "dinov2_vits14", "weights": "x.pth#sha256:abc"})
    with pytest.raises(BankModelsMismatchError, match="random weights were asked"):
        Models(encoder="dinov2_vits14", encoder_weights=RANDOM).check_bank(file_bank)
    Models(encoder="dinov2_vits14", encoder_weights=RANDOM).check_bank(random_bank)


def test_a_weights_file_of_other_content_is_refused_before_it_is_loaded(tmp_path):
    calls = []
    register_model(
        ModelEntry("encoder", "test_counting_encoder", build=lambda *a: calls.append(a)),
        overwrite=True,
    )
    weights = tmp_path / "other.pth"
    weights.write_bytes(b"not the bank's weights")
    bank = bank_with({"name": "test_counting_encoder", "weights": "w.pth#sha256:0123456789ab"})
    models = Models(encoder="test_counting_encoder", encoder_weights=str(weights))
    with pytest.raises(BankModelsMismatchError, match="content hash must match"):
        models.build_component("encoder", device="cpu", expect=bank.encoder)
    assert calls == []


class BoxListProposer(ShapeProposer):
    """An image-level proposal source: fixed square boxes as masks, no prompt grid."""

    def __init__(self) -> None:
        super().__init__()
        self.identity = {"name": "test_box_list", "weights": RANDOM_WEIGHTS}

    def decode_points(self, embedding, points):
        raise AssertionError("an image-level proposer is never asked to decode points")

    def propose(self, embedding, config):
        components = embedding.components
        masks = [components == c for c in range(1, int(components.max()) + 1)]
        if not masks:
            return Proposals(torch.zeros((0, 128, 128)), torch.zeros(0))
        logits = torch.stack([self._logits(m) for m in masks])
        return Proposals(logits, torch.full((len(masks),), 0.9))


def test_a_registered_proposal_source_runs_without_pipeline_changes(tmp_path, dataset_name):
    register_model(
        ModelEntry("proposer", "test_box_list", build=lambda *a: BoxListProposer()),
        overwrite=True,
    )
    register_model(
        ModelEntry("encoder", "test_palette", build=lambda *a: _named(PaletteEncoder())),
        overwrite=True,
    )
    assert "test_box_list" in model_names("proposer")
    dataset = make_shapes_dataset(dataset_name, str(tmp_path), num_positive=5, num_negative=0)
    models = Models("test_box_list", "test_palette", RANDOM, RANDOM)
    refs = refseg.sample_references(dataset, "ground_truth", shots=1, seed=0, classes=CLASSES)
    bank = refseg.build_memory_bank(refs, "ground_truth", models=models, progress=False)
    assert bank.encoder == {"name": "test_palette", "weights": RANDOM_WEIGHTS}
    targets = dataset.exclude(refs.values("id"))
    result = refseg.predict(
        targets, bank, "pred", config=PredictConfig(), num_workers=0, progress=False
    )
    assert result.num_detections > 0 and not result.failures
    truth = targets.count("ground_truth.detections")
    assert targets.count("pred.detections") == truth  # one proposal per drawn shape


def _named(encoder: PaletteEncoder) -> PaletteEncoder:
    encoder.identity = {"name": "test_palette", "weights": RANDOM_WEIGHTS}
    return encoder


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*random weights")
def test_predict_follows_a_random_weight_bank_without_being_told(tmp_path, dataset_name):
    dataset = make_shapes_dataset(dataset_name, str(tmp_path), num_positive=4, num_negative=0)
    refs = refseg.sample_references(dataset, "ground_truth", shots=1, seed=0, classes=CLASSES)
    models = Models("sam2.1_hiera_tiny", "dinov2_vits14", RANDOM, RANDOM)
    bank = refseg.build_memory_bank(refs, "ground_truth", models=models, progress=False)
    assert bank.proposer == {"name": "sam2.1_hiera_tiny", "weights": RANDOM_WEIGHTS}
    targets = dataset.exclude(refs.values("id")).limit(1)
    config = PredictConfig(points_per_side=4, points_batch_size=16)
    result = refseg.predict(targets, bank, "pred", config=config, num_workers=0, progress=False)
    assert result.num_samples == 1 and not result.failures
    with pytest.raises(BankModelsMismatchError):
        refseg.predict(targets, bank, "pred2", pretrained=True, config=config, progress=False)
    assert "pred2" not in dataset.get_field_schema()
