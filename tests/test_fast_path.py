"""The fast path (low-resolution merge, batched images, shared decoder work) against the paper's
reference path (one image at a time, the library's decoder, full-resolution merge)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import refseg
from refseg.compare import agreement
from refseg.config import FAST_PREDICT, PAPER_PREDICT
from refseg.images import load_image
from refseg.models import ModelCache, build_encoder, build_proposer
from refseg.synthetic import CLASSES, make_shapes_dataset

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*random weights")]


@pytest.fixture(scope="module")
def models_and_bank(tmp_path_factory):
    name = f"fast-path-{tmp_path_factory.getbasetemp().name}"
    dataset = make_shapes_dataset(
        name, str(tmp_path_factory.mktemp("images")), num_positive=6, num_negative=1, seed=7
    )
    cache = ModelCache()
    proposer = build_proposer("sam2.1_hiera_tiny", pretrained=False, device="cpu", cache=cache)
    encoder = build_encoder("dinov2_vits14", pretrained=False, device="cpu", cache=cache)
    references = refseg.sample_references(dataset, "ground_truth", shots=1, seed=0, classes=CLASSES)
    bank = refseg.build_memory_bank(
        references,
        "ground_truth",
        tag=refseg.DEFAULT_TAG,
        encoder=encoder,
        proposer=proposer,
        progress=False,
    )
    paths = dataset.exclude(references.values("id")).limit(3).values("filepath")
    yield proposer, encoder, bank, paths
    dataset.delete()


GRID = {"points_per_side": 8, "max_detections": 100}


@pytest.fixture(scope="module")
def images_and_reference(models_and_bank):
    """The targets, and the reference path's detections: one image at a time, prompts in
    batches of 32 through the sam2 package's own decoder, fp32, full-resolution merge."""
    proposer, encoder, bank, paths = models_and_bank
    reference = refseg.Segmenter(
        proposer.with_decoder("library"),
        encoder,
        bank,
        dataclasses.replace(PAPER_PREDICT, points_batch_size=32, **GRID),
    )
    loaded = [load_image(p, proposer.image_size) for p in paths]
    images = torch.stack([image for image, _ in loaded])
    sizes = [size for _, size in loaded]
    one_at_a_time = [
        reference.segment_batch(images[i : i + 1], sizes[i : i + 1])[0] for i in range(len(paths))
    ]
    return images, sizes, one_at_a_time


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fast_path_gives_the_reference_detections(models_and_bank, images_and_reference, precision):
    """The stated tolerance, in fp32 and in bf16 (CPU autocast here; the fast path's default
    where the CPU runs bf16 natively)."""
    proposer, encoder, bank, _ = models_and_bank
    images, sizes, one_at_a_time = images_and_reference
    config = dataclasses.replace(FAST_PREDICT, precision=precision, **GRID)
    batched = refseg.Segmenter(proposer, encoder, bank, config).segment_batch(images, sizes)
    total = 0
    for ref, fst in zip(one_at_a_time, batched, strict=True):
        result = agreement(ref, fst)
        total += result.total_a
        assert result.matched == result.total_a == result.total_b
        assert result.min_mask_iou >= 0.98
        assert result.max_score_diff <= 0.05
    assert total > 0
