"""Checkpoint files: loaded with weights_only=True, damaged files and key mismatches named.

Fast tests use a small module; the ``slow`` ones write random-weight checkpoints of the real
architectures in the official layouts (SAM2.1 Hiera-T ``{"model": state_dict}``, Meta's DINOv2
ViT-S/14 ``*_pretrain.pth``) and load them through ``build_proposer`` / ``build_encoder``.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from torch import nn

from refseg.models import (
    CheckpointError,
    CheckpointMismatchError,
    WeightsCorruptError,
    build_encoder,
    build_proposer,
    dinov2_spec,
    sam2_spec,
)
from refseg.models.weights import load_checkpoint_file, load_state_dict_strictly

RANDOM_WARNING = "random weights"


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _damaged(path: Path, kind: str) -> Path:
    """A copy of ``path`` under the same name in the folder ``kind``: truncated (a partial
    download), one flipped byte in the tensor data, empty, or not a checkpoint at all."""
    data = path.read_bytes()
    (path.parent / kind).mkdir(exist_ok=True)
    out = path.parent / kind / path.name
    if kind == "truncated":
        out.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "flipped":
        damaged = bytearray(data)
        damaged[len(data) // 2] ^= 0xFF  # inside the largest tensor's bytes
        out.write_bytes(bytes(damaged))
    elif kind == "empty":
        out.write_bytes(b"")
    elif kind == "garbage":
        out.write_bytes(b"<html>404 Not Found</html>" * 50)
    return out


def test_damaged_files_name_the_file_and_where_to_download_it(tmp_path):
    # named like Meta's file, so the message knows its URL
    path = _save(tmp_path / "dinov2_vits14_pretrain.pth", {"w": torch.randn(256, 256)})
    url = dinov2_spec("dinov2_vits14").url
    for kind in ("truncated", "flipped", "empty", "garbage"):
        damaged = _damaged(path, kind)
        with pytest.raises(WeightsCorruptError) as info:
            load_checkpoint_file(damaged)
        message = str(info.value)
        assert str(damaged) in message and "download it again from " + url in message, message
    assert torch.equal(load_checkpoint_file(path)["w"], torch.load(path)["w"])


def test_files_holding_python_objects_are_refused(tmp_path):
    path = _save(tmp_path / "model.pt", nn.Linear(2, 2))  # a pickled module, not weights
    with pytest.raises(WeightsCorruptError, match="Python objects other than tensors"):
        load_checkpoint_file(path)
    path = _save(tmp_path / "list.pt", [torch.ones(1)])
    with pytest.raises(CheckpointMismatchError, match="holds a list, not a state dict"):
        load_checkpoint_file(path)


def test_unknown_files_say_to_download_the_official_file(tmp_path):
    path = tmp_path / "my_weights.pt"
    path.write_bytes(b"")
    with pytest.raises(WeightsCorruptError, match="download the official file again"):
        load_checkpoint_file(path)


def test_key_and_shape_differences_are_all_named():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    state = dict(model.state_dict())
    del state["1.bias"]
    state["2.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(5, 3)
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_strictly(model, state, "/w/file.pt", "Pass the right file.")
    message = str(info.value)
    for part in (
        "/w/file.pt",
        "missing keys [1.bias]",
        "unexpected keys [2.weight]",
        "0.weight (5, 3) instead of (4, 3)",
        "Pass the right file.",
    ):
        assert part in message, message
    many = {f"extra.{i}": torch.zeros(1) for i in range(25)}
    with pytest.raises(CheckpointMismatchError, match=r"extra\.19 and 5 more"):
        load_state_dict_strictly(model, {**model.state_dict(), **many}, "f.pt", "")
    assert issubclass(WeightsCorruptError, CheckpointError)
    assert issubclass(CheckpointMismatchError, CheckpointError)


# -- the real architectures, through the builders ----------------------------------------------


@pytest.fixture(scope="module")
def dinov2_file(tmp_path_factory) -> Path:
    with pytest.warns(UserWarning, match=RANDOM_WARNING):
        encoder = build_encoder("dinov2_vits14", pretrained=False, device="cpu")
    state = dict(encoder.model.state_dict())
    state["mask_token"] = torch.zeros(1, 384)  # Meta's layout
    return _save(tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_pretrain.pth", state)


@pytest.fixture(scope="module")
def sam2_file(tmp_path_factory) -> Path:
    with pytest.warns(UserWarning, match=RANDOM_WARNING):
        proposer = build_proposer("sam2.1_hiera_tiny", pretrained=False, device="cpu")
    state = {"model": dict(proposer.model.state_dict())}
    return _save(tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt", state)


def _variant(path: Path, change) -> Path:
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint.get("model", checkpoint)
    change(state)
    out = path.with_name(f"variant-{path.name}")
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    out.write_bytes(buffer.getvalue())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["truncated", "flipped"])
def test_damaged_official_files_are_refused_by_the_builders(dinov2_file, sam2_file, kind):
    for path, build, name in (
        (dinov2_file, build_encoder, "dinov2_vits14"),
        (sam2_file, build_proposer, "sam2.1_hiera_tiny"),
    ):
        damaged = _damaged(path, kind)
        with pytest.raises(WeightsCorruptError) as info:
            build(name, checkpoint=damaged, device="cpu")
        spec = dinov2_spec(name) if build is build_encoder else sam2_spec(name)
        assert str(damaged) in str(info.value)
        assert f"download it again from {spec.url}" in str(info.value)


@pytest.mark.slow
def test_dinov2_keys_are_checked_strictly(dinov2_file):
    assert build_encoder("dinov2_vits14", checkpoint=dinov2_file, device="cpu").dim == 384
    cases = {
        "missing keys [blocks.2.mlp.fc1.bias]": lambda s: s.pop("blocks.2.mlp.fc1.bias"),
        "unexpected keys [blocks.99.extra]": lambda s: s.update({"blocks.99.extra": torch.ones(1)}),
        "norm.weight (3,) instead of (384,)": lambda s: s.update({"norm.weight": torch.ones(3)}),
    }
    for expected, change in cases.items():
        with pytest.raises(CheckpointMismatchError) as info:
            build_encoder("dinov2_vits14", checkpoint=_variant(dinov2_file, change), device="cpu")
        assert expected in str(info.value) and "dinov2_vits14_pretrain.pth" in str(info.value)


@pytest.mark.slow
def test_sam2_keys_are_checked_strictly(sam2_file):
    cases = {
        "missing keys [no_mem_embed]": lambda s: s.pop("no_mem_embed"),
        "unexpected keys [extra.weight]": lambda s: s.update({"extra.weight": torch.ones(1)}),
        "tensors of another shape [no_mem_embed (2,)": lambda s: s.update(
            {"no_mem_embed": torch.ones(2)}
        ),
    }
    for expected, change in cases.items():
        with pytest.raises(CheckpointMismatchError) as info:
            build_proposer(
                "sam2.1_hiera_tiny", checkpoint=_variant(sam2_file, change), device="cpu"
            )
        assert expected in str(info.value) and "SAM 2.0 and 2.1" in str(info.value)
