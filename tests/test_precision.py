"""refseg.precision: the autocast dtype of each PredictConfig.precision on each device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from stand_ins import PaletteEncoder, ShapeProposer

from refseg import precision
from refseg.config import PAPER_PREDICT, PredictConfig, ReferenceConfig
from refseg.memory import MemoryBank, ReferenceRecord
from refseg.precision import autocast_dtype, cpu_flags, native_bf16
from refseg.segmenter import Segmenter

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu vme sse2 avx2 avx512f avx512_bf16 avx512_vnni

processor\t: 1
flags\t\t: fpu vme sse2 avx2 avx512f avx512_bf16 avx512_vnni
"""


@pytest.fixture
def cpu_without_bf16(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """torch's probes say no, /proc/cpuinfo replaced by ``write(text)``; cache cleared."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    monkeypatch.setattr(precision, "CPUINFO", str(path))
    precision.cpu_has_native_bf16.cache_clear()
    yield path.write_text
    precision.cpu_has_native_bf16.cache_clear()


def test_fp32_never_autocasts() -> None:
    for device in ("cpu", "cuda", "mps"):
        assert autocast_dtype("fp32", device) is None


def test_explicit_bf16_autocasts_on_cpu_and_cuda_fp16_on_cuda_only() -> None:
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert autocast_dtype("bf16", "cuda:0") is torch.bfloat16
    assert autocast_dtype("fp16", "cuda") is torch.float16
    assert autocast_dtype("fp16", "cpu") is None
    with pytest.raises(ValueError, match="'auto', 'fp32', 'bf16', 'fp16'"):
        autocast_dtype("int8", "cpu")


def test_auto_on_cuda_follows_compute_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    capability = {"value": (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability["value"])
    assert autocast_dtype("auto", "cuda") is torch.bfloat16  # H100
    capability["value"] = (7, 5)  # T4: bf16 is emulated
    assert autocast_dtype("auto", "cuda") is None
    assert not native_bf16("mps")


def test_auto_on_cpu_reads_the_cpuinfo_flags_when_torch_cannot_tell(cpu_without_bf16) -> None:
    assert autocast_dtype("auto", "cpu") is None
    cpu_without_bf16(CPUINFO)
    precision.cpu_has_native_bf16.cache_clear()
    assert autocast_dtype("auto", "cpu") is torch.bfloat16


def test_cpu_flags_parse_the_first_processor(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    assert {"avx512_bf16", "avx2"} <= cpu_flags(str(path))
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16\n")
    assert "bf16" in cpu_flags(str(arm))
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_this_cpus_answer_agrees_with_its_flags() -> None:
    """On Linux, torch's probes and /proc/cpuinfo tell the same (either may be the source)."""
    flags = cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo here")
    expected = bool({"avx512_bf16", "amx_bf16"} & flags)
    assert precision.cpu_has_native_bf16() == expected


def test_config_takes_auto_and_names_the_choices() -> None:
    assert PredictConfig(precision="auto").precision == "auto"
    assert PredictConfig().precision == "auto"
    assert PAPER_PREDICT.precision == "fp32" and PAPER_PREDICT.merge_resolution == "full"
    with pytest.raises(ValueError, match="'auto', 'fp32', 'bf16' or 'fp16'"):
        PredictConfig(precision="bfloat16")


@pytest.mark.parametrize(
    ("setting", "expected"), [("fp32", None), ("bf16", torch.bfloat16), ("fp16", None)]
)
def test_segmenter_autocasts_the_models_on_cpu(setting: str, expected, monkeypatch) -> None:
    """The segmenter runs the proposer's calls under the resolved autocast."""
    seen = []
    proposer, encoder = ShapeProposer(), PaletteEncoder()
    encode = proposer.encode_images

    def recording(images):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return encode(images)

    monkeypatch.setattr(proposer, "encode_images", recording)
    bank = MemoryBank(
        class_names=("a", "b"),
        prototypes=np.eye(2, encoder.dim, dtype=np.float32),
        labels=np.array([0, 1]),
        references=tuple(
            ReferenceRecord("ds", f"s{i}", f"l{i}", name, f"/{i}.png", (0.0, 0.0, 4.0, 4.0))
            for i, name in enumerate("ab")
        ),
        encoder=dict(encoder.identity),
        proposer=dict(proposer.identity),
        settings=ReferenceConfig(),
    )
    segmenter = Segmenter(proposer, encoder, bank, PredictConfig(precision=setting))
    segmenter.segment_batch(torch.rand(1, 3, 128, 128), [(128, 128)])
    assert seen == [expected]


def test_paper_predict_is_the_paper_not_the_product_defaults() -> None:
    """The defaults are the fast path; every stage-3 value of the paper (method.md) is pinned
    here, so a change of the defaults cannot move paper mode."""
    assert PredictConfig().merge_resolution == "low"
    assert PAPER_PREDICT.to_dict() == {
        "points_per_side": 32,
        "points_batch_size": 256,
        "drop_incomplete_point_batch": True,
        "pred_iou_thresh": 0.4,
        "nms_iou_thresh": 0.5,
        "nms_keep_factor": 8,
        "merge_exponent": 0.5,
        "max_detections": 100,
        "candidate_score_threshold": 0.0,
        "score_threshold": None,
        "merge_resolution": "full",
        "precision": "fp32",
        "use_negatives": False,
        "negative_sigma": 0.8,
        "use_bank_thresholds": False,
    }
