"""The models refseg can load, as data: one frozen record per name.

Each record says where the architecture comes from (a Hydra config shipped in the ``sam2``
package, or a timm model name), which official checkpoint file holds its weights and where Meta
publishes it, and the input frame and normalisation the model expects. Nothing is built here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

_Spec = TypeVar("_Spec")

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_SAM2_0_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/072824"
_SAM2_1_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"

# Sizes in bytes of Meta's checkpoint files, as FiftyOne's model zoo lists them ("size_bytes" in
# fiftyone/zoo/models/manifest-torch.json of FiftyOne 1.22, whose SAM2 entries download these same
# URLs and whose DINOv2 entries load these same files through torch.hub). That manifest gives
# sam2.1_hiera_tiny.pt the same size as sam2_hiera_tiny.pt; no other source was found to check it.
_SIZE_BYTES = {
    "sam2_hiera_tiny.pt": 155_906_050,
    "sam2_hiera_small.pt": 184_309_650,
    "sam2_hiera_base_plus.pt": 323_493_298,
    "sam2_hiera_large.pt": 897_952_466,
    "sam2.1_hiera_tiny.pt": 155_906_050,
    "sam2.1_hiera_small.pt": 184_416_285,
    "sam2.1_hiera_base_plus.pt": 323_606_802,
    "sam2.1_hiera_large.pt": 898_083_611,
    "dinov2_vits14_pretrain.pth": 88_283_115,
    "dinov2_vitb14_pretrain.pth": 346_378_731,
    "dinov2_vitl14_pretrain.pth": 1_217_586_395,
    "dinov2_vitg14_pretrain.pth": 4_546_108_579,
}


@dataclass(frozen=True)
class Sam2Spec:
    """One SAM2 mask proposer.

    Attributes:
        name: refseg's name, e.g. ``"sam2.1_hiera_tiny"``.
        config: Hydra config name inside the ``sam2`` package, e.g.
            ``"configs/sam2.1/sam2.1_hiera_t.yaml"``.
        filename: Meta's checkpoint file name (a ``{"model": state_dict}`` torch file).
        url: where Meta publishes that file.
        size_bytes: that file's size in bytes (None where unknown).
        image_size: side of the square input frame, pixels.
        mask_size: side of the square low-resolution mask grid the decoder outputs.
        mean, std: per-channel RGB normalisation applied to [0, 1] inputs.
        license: license of the published weights.
    """

    name: str
    config: str
    filename: str
    url: str
    size_bytes: int | None = None
    image_size: int = 1024
    mask_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    license: str = "apache-2.0"


@dataclass(frozen=True)
class Dinov2Spec:
    """One DINOv2 feature encoder (ViT without registers), built with timm.

    Attributes:
        name: refseg's name, e.g. ``"dinov2_vitl14"``.
        timm_name: the timm model (with its pretrained tag) that has this architecture.
        filename: Meta's checkpoint file name (a plain state dict in Meta's key layout, which
            timm converts on load).
        url: where Meta publishes that file.
        dim: feature dimension D of the patch tokens.
        size_bytes: the file's size in bytes (None where unknown).
        input_size: side of the square input, pixels.
        patch_size: side of one patch, pixels.
        mean, std: per-channel RGB normalisation applied to [0, 1] inputs.
        license: license of the published weights.
    """

    name: str
    timm_name: str
    filename: str
    url: str
    dim: int
    size_bytes: int | None = None
    input_size: int = 518
    patch_size: int = 14
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    license: str = "apache-2.0"

    @property
    def grid_size(self) -> int:
        """Side of the patch grid, ``input_size // patch_size`` (37 at 518 / 14)."""
        return self.input_size // self.patch_size


def _sam2(version: str, size: str, config_size: str, url: str) -> Sam2Spec:
    name = f"{version}_hiera_{size}"
    filename = f"{name}.pt"
    return Sam2Spec(
        name=name,
        config=f"configs/{version}/{version}_hiera_{config_size}.yaml",
        filename=filename,
        url=f"{url}/{filename}",
        size_bytes=_SIZE_BYTES.get(filename),
    )


def _dinov2(arch: str, timm_size: str, dim: int) -> Dinov2Spec:
    name = f"dinov2_{arch}14"
    filename = f"{name}_pretrain.pth"
    return Dinov2Spec(
        name=name,
        timm_name=f"vit_{timm_size}_patch14_dinov2.lvd142m",
        filename=filename,
        url=f"{_DINOV2_URL}/{name}/{filename}",
        dim=dim,
        size_bytes=_SIZE_BYTES.get(filename),
    )


_HIERA_SIZES = (("tiny", "t"), ("small", "s"), ("base_plus", "b+"), ("large", "l"))

_SAM2_SPECS = [
    _sam2(version, size, config_size, url)
    for version, url in (("sam2", _SAM2_0_URL), ("sam2.1", _SAM2_1_URL))
    for size, config_size in _HIERA_SIZES
]
SAM2_MODELS: Mapping[str, Sam2Spec] = MappingProxyType({s.name: s for s in _SAM2_SPECS})
"""Every SAM2 proposer by name: SAM 2.0 and 2.1, Hiera tiny / small / base_plus / large."""

_DINOV2_SPECS = [
    _dinov2("vits", "small", 384),
    _dinov2("vitb", "base", 768),
    _dinov2("vitl", "large", 1024),
    _dinov2("vitg", "giant", 1536),
]
DINOV2_MODELS: Mapping[str, Dinov2Spec] = MappingProxyType({s.name: s for s in _DINOV2_SPECS})
"""Every DINOv2 encoder by name: ViT-S/B/L/G at patch 14, without registers."""


def sam2_spec(name: str) -> Sam2Spec:
    """Returns the SAM2 record called ``name``; raises ValueError listing the known names."""
    return _lookup(SAM2_MODELS, name, "SAM2 proposer")


def dinov2_spec(name: str) -> Dinov2Spec:
    """Returns the DINOv2 record called ``name``; raises ValueError listing the known names."""
    return _lookup(DINOV2_MODELS, name, "DINOv2 encoder")


def _lookup(models: Mapping[str, _Spec], name: str, kind: str) -> _Spec:
    if name not in models:
        known = ", ".join(models)
        raise ValueError(f"Unknown {kind} {name!r}. Choose one of: {known}.")
    return models[name]
