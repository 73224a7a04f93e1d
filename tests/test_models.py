"""refseg.models: registry, weight resolution, cache, and the real SAM2 / DINOv2 components.

The components run the real architectures (the small variants) with seeded random weights on
the CPU; no published weights are needed. Checkpoint round trips save random weights in the
official file layouts and load them back through ``build_*(checkpoint=...)``.
"""

from __future__ import annotations

import importlib.resources
import os
import urllib.error
from pathlib import Path

import pytest
import torch

from refseg.components import FeatureEncoder, MaskProposer
from refseg.config import PredictConfig
from refseg.geometry import point_grid
from refseg.models import (
    DINOV2_MODELS,
    RANDOM_WEIGHTS,
    SAM2_MODELS,
    CheckpointMismatchError,
    ModelCache,
    ModelKey,
    Sam2Proposer,
    WeightsNotFoundError,
    build_encoder,
    build_proposer,
    dinov2_spec,
    file_digest,
    resolve_checkpoint,
    sam2_spec,
)
from refseg.models import cache as cache_module
from refseg.models import weights as weights_module
from refseg.models.sam2_attention import shared_image_to_tokens, tokens_to_image, two_way_block
from refseg.models.sam2_upscaling import prepare_block_upscaling
from refseg.proposals import confident_best, propose

RANDOM_WARNING = "random weights"
POINTS = torch.tensor([[0.5, 0.5], [100.0, 700.0], [512.0, 512.0], [1023.5, 1023.5], [900.0, 40.0]])
BOXES = torch.tensor([[10.0, 20.0, 300.0, 400.0], [0.0, 0.0, 1024.0, 1024.0], [600, 600, 650, 700]])


def _images(count: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_state_dicts_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _assert_decodes_equal(first: Sam2Proposer, second: Sam2Proposer, embedding) -> None:
    for points_or_boxes, decode in ((POINTS, "decode_points"), (BOXES, "decode_boxes")):
        for x, y in zip(
            getattr(first, decode)(embedding, points_or_boxes),
            getattr(second, decode)(embedding, points_or_boxes),
            strict=True,
        ):
            assert torch.equal(x, y), decode


# --- registry --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SAM2_MODELS))
def test_sam2_registry_matches_installed_package(name: str) -> None:
    from hydra import compose

    spec = sam2_spec(name)
    assert importlib.resources.files("sam2").joinpath(spec.config).is_file(), spec.config
    assert compose(config_name=spec.config).model.image_size == spec.image_size
    release = "092824" if name.startswith("sam2.1_") else "072824"
    assert spec.url == f"https://dl.fbaipublicfiles.com/segment_anything_2/{release}/{name}.pt"
    assert spec.filename == f"{name}.pt"


@pytest.mark.parametrize("name", list(DINOV2_MODELS))
def test_dinov2_registry_matches_timm(name: str) -> None:
    import timm

    spec = dinov2_spec(name)
    assert timm.is_model(spec.timm_name)
    assert timm.models.get_pretrained_cfg(spec.timm_name).url == spec.url
    assert spec.url.endswith(f"/{name}/{name}_pretrain.pth")
    with torch.device("meta"):
        model = timm.create_model(spec.timm_name, pretrained=False, img_size=spec.input_size)
    assert model.embed_dim == spec.dim
    assert model.patch_embed.grid_size == (spec.grid_size, spec.grid_size) == (37, 37)


@pytest.mark.parametrize(
    ("build", "bad", "known"),
    [
        (build_proposer, "sam2.1_hiera_huge", "sam2_hiera_large"),
        (build_encoder, "dinov2_vitl16", "dinov2_vitg14"),
    ],
)
def test_unknown_names_raise_listing_known_names(build, bad: str, known: str) -> None:
    with pytest.raises(ValueError, match=bad) as error:
        build(bad, pretrained=False)
    assert known in str(error.value)


def test_checkpoint_with_random_weights_is_contradictory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="contradict"):
        build_encoder("dinov2_vits14", checkpoint=tmp_path / "x.pth", pretrained=False)


# --- weights ---------------------------------------------------------------------------------


@pytest.fixture
def zoo_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """FiftyOne's model zoo dir pointed at an empty tmp dir; downloads fail at once."""
    import fiftyone as fo

    directory = tmp_path / "zoo"
    monkeypatch.setattr(fo.config, "model_zoo_dir", str(directory))

    def offline(url: str, dst: str, progress: bool = True) -> None:
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(weights_module, "download_url_to_file", offline)
    return directory


@pytest.mark.parametrize(
    ("build", "name", "filename"),
    [
        (build_proposer, "sam2.1_hiera_tiny", "sam2.1_hiera_tiny.pt"),
        (build_encoder, "dinov2_vits14", "dinov2_vits14_pretrain.pth"),
    ],
)
def test_missing_weights_error_says_what_to_put_where(
    zoo_dir: Path, build, name: str, filename: str
) -> None:
    with pytest.raises(WeightsNotFoundError) as error:
        build(name, device="cpu")
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    for expected in (
        filename,
        str(zoo_dir),
        str(zoo_dir / filename),
        "checkpoint=",
        "pretrained=False",
    ):
        assert expected in message
    spec = sam2_spec(name) if build is build_proposer else dinov2_spec(name)
    assert spec.url in message
    assert "no network in this test" in message


def test_explicit_checkpoint_must_exist(zoo_dir: Path, tmp_path: Path) -> None:
    zoo_dir.mkdir()
    (zoo_dir / "dinov2_vits14_pretrain.pth").write_bytes(b"not used")
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        build_encoder("dinov2_vits14", checkpoint=tmp_path / "nope.pth", device="cpu")


def test_zoo_dir_file_is_found_without_download(
    zoo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zoo_dir.mkdir()
    (zoo_dir / "w.pt").write_bytes(b"weights")

    def no_download(url: str, dst: str, progress: bool = True) -> None:
        pytest.fail(f"downloaded {url} although the zoo dir has the file")

    monkeypatch.setattr(weights_module, "download_url_to_file", no_download)
    assert resolve_checkpoint("w.pt", "https://example.invalid/w.pt") == zoo_dir / "w.pt"


def test_download_lands_in_zoo_dir(zoo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_download(url: str, dst: str, progress: bool = True) -> None:
        calls.append(url)
        Path(dst).write_bytes(b"downloaded")

    monkeypatch.setattr(weights_module, "download_url_to_file", fake_download)
    path = resolve_checkpoint("w.pt", "https://example.invalid/w.pt")
    assert path == zoo_dir / "w.pt" and path.read_bytes() == b"downloaded"
    assert calls == ["https://example.invalid/w.pt"]


def test_file_digest_is_a_short_sha256(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_digest(path) == "ba7816bf8f01"
    path.write_bytes(b"abd")
    assert file_digest(path) != "ba7816bf8f01"


# --- cache -----------------------------------------------------------------------------------


def test_cache_builds_each_key_once() -> None:
    cache = ModelCache()
    key = ModelKey("encoder", "x", None, False, "cpu")
    first = cache.get_or_build(key, object)
    assert cache.get_or_build(key, pytest.fail) is first
    assert cache.get_or_build(key._replace(device="cuda:0"), object) is not first
    assert len(cache) == 2
    cache.clear()
    assert len(cache) == 0


def test_cache_digest_memo_follows_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(cache_module, "file_digest", lambda p: calls.append(p) or file_digest(p))
    path = tmp_path / "w.pt"
    path.write_bytes(b"abc")
    cache = ModelCache()
    assert cache.checkpoint_digest(path) == cache.checkpoint_digest(path) == "ba7816bf8f01"
    assert len(calls) == 1
    path.write_bytes(b"abd")
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))
    assert cache.checkpoint_digest(path) == file_digest(path) != "ba7816bf8f01"
    assert len(calls) == 2


# --- SAM2 ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proposer() -> Sam2Proposer:
    with pytest.warns(UserWarning, match=RANDOM_WARNING):
        return build_proposer("sam2.1_hiera_tiny", pretrained=False, device="cpu")


@pytest.fixture(scope="module")
def pair() -> torch.Tensor:
    return _images(2, 1024, seed=1)


@pytest.fixture(scope="module")
def pair_embedding(proposer: Sam2Proposer, pair: torch.Tensor):
    return proposer.encode_images(pair)


@pytest.mark.slow
def test_sam2_outputs_have_protocol_shapes(proposer: Sam2Proposer, pair_embedding) -> None:
    assert isinstance(proposer, MaskProposer)
    assert (proposer.image_size, proposer.mask_size) == (1024, 256)
    assert proposer.identity == {"name": "sam2.1_hiera_tiny", "weights": RANDOM_WEIGHTS}
    assert proposer.device == torch.device("cpu")
    assert pair_embedding.image_embed.shape == (2, 256, 64, 64)
    assert [tuple(f.shape) for f in pair_embedding.high_res] == [
        (2, 32, 256, 256),
        (2, 64, 128, 128),
    ]
    one = proposer.select_image(pair_embedding, 1)
    assert torch.equal(one.image_embed[0], pair_embedding.image_embed[1])
    logits, iou = proposer.decode_points(one, POINTS)
    assert logits.shape == (5, 3, 256, 256) and iou.shape == (5, 3)
    box_logits, box_iou = proposer.decode_boxes(one, BOXES)
    assert box_logits.shape == (3, 256, 256) and box_iou.shape == (3,)
    for tensor in (logits, iou, box_logits, box_iou):
        assert tensor.dtype == torch.float32 and torch.isfinite(tensor).all()
    assert 0 <= iou.min() and iou.max() <= 1 and 0 <= box_iou.min() and box_iou.max() <= 1
    # Prompts are independent: decoding a subset gives the same rows.
    sub_logits, sub_iou = proposer.decode_points(one, POINTS[1:3])
    torch.testing.assert_close(sub_logits, logits[1:3])
    torch.testing.assert_close(sub_iou, iou[1:3])


@pytest.mark.slow
def test_sam2_rejects_misuse(proposer: Sam2Proposer, pair_embedding) -> None:
    with pytest.raises(ValueError, match="select_image"):
        proposer.decode_points(pair_embedding, POINTS)
    with pytest.raises(IndexError, match="batch of 2"):
        proposer.select_image(pair_embedding, 2)
    with pytest.raises(ValueError, match=r"\(B, 3, 1024, 1024\)"):
        proposer.encode_images(torch.rand(1, 3, 512, 512))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        proposer.decode_boxes(proposer.select_image(pair_embedding, 0), POINTS)


@pytest.mark.slow
def test_sam2_random_builds_are_identical(proposer: Sam2Proposer, pair_embedding) -> None:
    with pytest.warns(UserWarning, match=RANDOM_WARNING):
        again = build_proposer("sam2.1_hiera_tiny", pretrained=False, device="cpu")
    assert again.identity == proposer.identity
    _assert_state_dicts_equal(again.model.state_dict(), proposer.model.state_dict())
    one = proposer.select_image(pair_embedding, 0)
    _assert_decodes_equal(proposer, again, one)  # two builds, and the same input twice


@pytest.mark.slow
def test_sam2_checkpoint_round_trip(proposer: Sam2Proposer, pair_embedding, tmp_path: Path) -> None:
    """Meta's layout ({"model": state_dict}) loads back bit for bit, so outputs are equal."""
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": proposer.model.state_dict()}, path)
    loaded = build_proposer("sam2.1_hiera_tiny", checkpoint=path, device="cpu")
    assert loaded.identity == {
        "name": "sam2.1_hiera_tiny",
        "weights": f"sam2.1_hiera_tiny.pt#sha256:{file_digest(path)}",
    }
    _assert_state_dicts_equal(loaded.model.state_dict(), proposer.model.state_dict())
    _assert_decodes_equal(proposer, loaded, proposer.select_image(pair_embedding, 1))


@pytest.mark.slow
def test_sam2_checkpoint_key_mismatch_lists_keys(proposer: Sam2Proposer, tmp_path: Path) -> None:
    state = dict(proposer.model.state_dict())
    del state["no_mem_embed"], state["sam_mask_decoder.iou_token.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointMismatchError) as error:
        build_proposer("sam2.1_hiera_tiny", checkpoint=path, device="cpu")
    for expected in (
        str(path),
        "no_mem_embed",
        "sam_mask_decoder.iou_token.weight",
        "extra.weight",
    ):
        assert expected in str(error.value)


@pytest.mark.slow
def test_sam2_matches_image_predictor_with_no_mem_embed(
    proposer: Sam2Proposer, pair: torch.Tensor, pair_embedding
) -> None:
    """With add_no_mem_embed, features and decodes equal SAM2ImagePredictor's on a 1024 image."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(proposer.model)
    predictor.set_image(pair[0].permute(1, 2, 0).numpy())
    expected = predictor._features
    with_mem = Sam2Proposer(
        model=proposer.model,
        spec=sam2_spec("sam2.1_hiera_tiny"),
        weights=RANDOM_WEIGHTS,
        add_no_mem_embed=True,
    )
    assert with_mem.identity["add_no_mem_embed"] is True
    embedding = with_mem.encode_images(pair[:1])
    torch.testing.assert_close(embedding.image_embed, expected["image_embed"])
    for ours, theirs in zip(embedding.high_res, expected["high_res_feats"], strict=True):
        torch.testing.assert_close(ours, theirs)
    # Paper mode differs from the predictor exactly by no_mem_embed.
    paper = proposer.select_image(pair_embedding, 0).image_embed
    assert not torch.allclose(paper, expected["image_embed"], atol=1e-3)
    torch.testing.assert_close(
        paper + proposer.model.no_mem_embed.view(1, -1, 1, 1), expected["image_embed"]
    )

    logits, iou = with_mem.decode_points(embedding, POINTS)
    _, their_iou, their_logits = predictor._predict(
        POINTS[:, None],
        torch.ones(5, 1, dtype=torch.int),
        multimask_output=True,
        return_logits=True,
    )
    torch.testing.assert_close(iou, their_iou)
    torch.testing.assert_close(logits.clamp(-32, 32), their_logits)
    box_logits, box_iou = with_mem.decode_boxes(embedding, BOXES)
    _, their_iou, their_logits = predictor.predict(
        box=BOXES.numpy(), multimask_output=False, return_logits=True
    )
    torch.testing.assert_close(box_iou, torch.from_numpy(their_iou)[:, 0])
    torch.testing.assert_close(box_logits.clamp(-32, 32), torch.from_numpy(their_logits)[:, 0])


@pytest.mark.slow
def test_sam2_0_tiny_builds_and_decodes() -> None:
    with pytest.warns(UserWarning, match=RANDOM_WARNING):
        sam2_0 = build_proposer("sam2_hiera_tiny", pretrained=False, device="cpu")
    embedding = sam2_0.encode_images(_images(1, 1024, seed=2))
    logits, iou = sam2_0.decode_points(sam2_0.select_image(embedding, 0), POINTS[:2])
    assert logits.shape == (2, 3, 256, 256) and iou.shape == (2, 3)
    assert sam2_0.identity["name"] == "sam2_hiera_tiny"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sam2.1_hiera_tiny", "sam2_hiera_tiny"])
def test_shared_decoder_equals_library_decoder(name: str, pair: torch.Tensor) -> None:
    """Doing the decoder's prompt-independent work once per image changes no output, for
    point (multimask) and box (single mask with the stability fallback) prompts, on each image
    of a batch."""
    with pytest.warns(UserWarning, match=RANDOM_WARNING):
        shared = build_proposer(name, pretrained=False, device="cpu")
    library = shared.with_decoder("library")
    assert library.model is shared.model and library.identity == shared.identity
    shared_batch, library_batch = shared.encode_images(pair), library.encode_images(pair)
    assert library_batch.decoder_state is None
    assert shared_batch.decoder_state.first_keys.shape[0] == 2
    outputs = []
    for index in range(2):
        ours = shared.select_image(shared_batch, index)
        theirs = library.select_image(library_batch, index)
        for decode, prompts in (("decode_points", POINTS), ("decode_boxes", BOXES)):
            for x, y in zip(
                getattr(shared, decode)(ours, prompts),
                getattr(library, decode)(theirs, prompts),
                strict=True,
            ):
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
        outputs.append(shared.decode_points(ours, POINTS)[0])
    # The two images decode differently, so each image's own state was used.
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-3)


@pytest.mark.slow
def test_shared_decoder_under_bf16_autocast(proposer: Sam2Proposer, pair: torch.Tensor) -> None:
    """The fast path's mixed precision (CPU autocast here, CUDA's in use): the shared decoder
    runs on bf16 projections and gives the library decoder's outputs at bf16 precision."""
    library = proposer.with_decoder("library")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = proposer.select_image(proposer.encode_images(pair[:1]), 0)
        theirs = library.select_image(library.encode_images(pair[:1]), 0)
        assert ours.decoder_state.first_keys.dtype == torch.bfloat16
        for decode, prompts in (("decode_points", POINTS), ("decode_boxes", BOXES)):
            for x, y in zip(
                getattr(proposer, decode)(ours, prompts),
                getattr(library, decode)(theirs, prompts),
                strict=True,
            ):
                assert x.dtype == torch.float32
                torch.testing.assert_close(x, y, rtol=2e-2, atol=2e-2)


@pytest.mark.slow
def test_folded_attentions_equal_the_librarys_in_float32(proposer: Sam2Proposer) -> None:
    """The reduced-precision path's folded attentions, run in float32, against the library's
    ``TwoWayAttentionBlock`` and ``Attention`` modules (equal up to float rounding)."""
    transformer = proposer.model.sam_mask_decoder.transformer
    generator = torch.Generator().manual_seed(6)
    n, t, hw, c = 3, 8, 64 * 64, 256
    queries, query_pe = (torch.randn(n, t, c, generator=generator) for _ in range(2))
    keys = torch.randn(n, hw, c, generator=generator)
    key_pe = torch.randn(1, hw, c, generator=generator)
    image = torch.randn(1, hw, c, generator=generator)
    close = {"rtol": 1e-4, "atol": 1e-4}
    with torch.inference_mode():
        second = transformer.layers[1]
        expected = second(
            queries=queries, keys=keys, query_pe=query_pe, key_pe=key_pe.expand(n, -1, -1)
        )
        got_pair = two_way_block(second, queries, keys, query_pe, key_pe)
        for got, want in zip(got_pair, expected, strict=True):
            torch.testing.assert_close(got, want, **close)
        final = transformer.final_attn_token_to_image
        torch.testing.assert_close(
            tokens_to_image(final, queries, keys + key_pe, keys),
            final(q=queries, k=keys + key_pe, v=keys),
            **close,
        )
        to_tokens = transformer.layers[0].cross_attn_image_to_token
        projected = to_tokens.q_proj(image).reshape(1, hw, to_tokens.num_heads, -1).transpose(1, 2)
        torch.testing.assert_close(
            shared_image_to_tokens(to_tokens, projected, queries + query_pe, queries),
            to_tokens(q=image.expand(n, -1, -1), k=queries + query_pe, v=queries),
            **close,
        )


class _PointsOnly:
    """A proposer that hides ``decode_confident_points``: ``propose`` takes its fallback."""

    def __init__(self, proposer: Sam2Proposer) -> None:
        self._proposer = proposer
        self.image_size, self.mask_size = proposer.image_size, proposer.mask_size
        self.device = proposer.device

    def decode_points(self, embedding, points):
        return self._proposer.decode_points(embedding, points)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sam2.1_hiera_tiny", "sam2_hiera_tiny"])
def test_confident_decoder_equals_full_decoder_bit_for_bit(name: str, pair: torch.Tensor) -> None:
    """Upscaling only the kept masks changes no output in float32: the kept prompts, their
    best candidate's logits and predicted IoU, in prompt order, on each image of a batch, at
    thresholds keeping every prompt, some and none; and ``propose`` gives the same proposals
    through it as through ``decode_points``."""
    with pytest.warns(UserWarning, match=RANDOM_WARNING):
        proposer = build_proposer(name, pretrained=False, device="cpu")
    points = point_grid(6, proposer.image_size)  # 36 prompts: chunks of 8 and a partial one
    batch = proposer.encode_images(pair)
    assert batch.decoder_state.upscaling is None  # float32 keeps the library's modules
    for index in range(2):
        embedding = proposer.select_image(batch, index)
        logits, iou = proposer.decode_points(embedding, points)
        best = iou.max(dim=1).values
        for threshold in (0.0, float(best.median()), float(best.max())):
            prompts, outputs = confident_best(iou, threshold)
            kept_logits, kept_iou, kept = proposer.decode_confident_points(
                embedding, points, threshold
            )
            assert torch.equal(kept, prompts)
            assert torch.equal(kept_iou, iou[prompts, outputs])
            assert torch.equal(kept_logits, logits[prompts, outputs])
            assert kept_logits.dtype == kept_iou.dtype == torch.float32
        assert 0 < len(confident_best(iou, float(best.median()))[0]) < len(points)
        config = PredictConfig(points_per_side=6, points_batch_size=16)
        direct = propose(proposer, embedding, config)
        fallback = propose(_PointsOnly(proposer), embedding, config)
        assert len(direct) > 0
        assert torch.equal(direct.logits, fallback.logits) and torch.equal(direct.iou, fallback.iou)


@pytest.mark.slow
def test_confident_decoder_in_bf16_stays_near_float32(
    proposer: Sam2Proposer, pair: torch.Tensor, pair_embedding
) -> None:
    """CPU bf16 autocast (the fast path where the CPU runs bf16 natively): the decoder keeps its
    state and upscaling in bf16, and the kept masks stay within the fast path's tolerance of
    the float32 ones."""
    points = point_grid(6, proposer.image_size)
    reference = proposer.select_image(pair_embedding, 1)
    logits, iou = proposer.decode_points(reference, points)
    prompts, outputs = confident_best(iou, 0.4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embedding = proposer.select_image(proposer.encode_images(pair), 1)
        state = embedding.decoder_state
        assert state.image_tokens.dtype == state.upscaling.fine.dtype == torch.bfloat16
        kept_logits, kept_iou, kept = proposer.decode_confident_points(embedding, points, 0.4)
    assert torch.equal(kept, prompts)
    assert kept_logits.dtype == kept_iou.dtype == torch.float32
    assert (kept_iou - iou[prompts, outputs]).abs().max() <= 0.02
    expected = logits[prompts, outputs] > 0
    got = kept_logits > 0
    mask_iou = (expected & got).flatten(1).sum(1) / (expected | got).flatten(1).sum(1)
    assert mask_iou.min() >= 0.98, mask_iou


@pytest.mark.slow
def test_block_upscaling_equals_the_decoders_modules(proposer: Sam2Proposer, pair_embedding):
    """The reduced-precision upscaling's layout, checked in float32 against the library's
    transposed convolutions, LayerNorm2d and GELUs (equal up to float rounding)."""
    one = proposer.select_image(pair_embedding, 0)
    decoder = proposer.model.sam_mask_decoder
    tokens = torch.randn(3, 64 * 64, 256, generator=torch.Generator().manual_seed(4))
    hyper = torch.randn(3, 32, generator=torch.Generator().manual_seed(5))
    block = prepare_block_upscaling(decoder.output_upscaling, one.high_res, torch.float32)
    conv1, norm1, act1, conv2, act2 = decoder.output_upscaling
    with torch.inference_mode():
        image = tokens.transpose(1, 2).reshape(3, 256, 64, 64)
        upscaled = act2(conv2(act1(norm1(conv1(image) + one.high_res[1]))) + one.high_res[0])
        expected = torch.einsum("kc,kchw->khw", hyper, upscaled)
        got = block.mask_logits(tokens, hyper)
    assert got.shape == (3, 256, 256)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="kernel_size=2, stride=2"):
        prepare_block_upscaling(
            torch.nn.Sequential(
                torch.nn.ConvTranspose2d(256, 64, 3), *list(decoder.output_upscaling)[1:]
            ),
            one.high_res,
            torch.bfloat16,
        )


def test_unknown_decoder_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="'shared', 'library'"):
        build_proposer("sam2.1_hiera_tiny", pretrained=False, device="cpu", decoder="fast")


# --- DINOv2 ----------------------------------------------------------------------------------


def _meta_layout(timm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm DINOv2 ViT-S/B/L state dict in the layout of Meta's ``*_pretrain.pth`` files.

    Meta's files carry the masked-image-modelling ``mask_token`` (1, D) next to the same
    ``cls_token`` / ``pos_embed`` / ``patch_embed`` / ``blocks.i.{norm1,attn,ls1,norm2,mlp,ls2}``
    / ``norm`` keys; only ViT-G differs further (SwiGLU ``mlp.w12`` / ``mlp.w3``).
    """
    dim = timm_state["cls_token"].shape[-1]
    return {**timm_state, "mask_token": torch.full((1, dim), 0.5)}


@pytest.fixture(scope="module")
def encoder():
    with pytest.warns(UserWarning, match=RANDOM_WARNING):
        return build_encoder("dinov2_vits14", pretrained=False, device="cpu")


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    return _images(2, 518, seed=3)


@pytest.fixture(scope="module")
def features(encoder, crops: torch.Tensor) -> torch.Tensor:
    return encoder.encode(crops)


@pytest.mark.slow
def test_dinov2_outputs_have_protocol_shapes(
    encoder, crops: torch.Tensor, features: torch.Tensor
) -> None:
    assert isinstance(encoder, FeatureEncoder)
    assert (encoder.input_size, encoder.grid_size, encoder.dim) == (518, 37, 384)
    assert encoder.identity == {"name": "dinov2_vits14", "weights": RANDOM_WEIGHTS}
    assert features.shape == (2, 37, 37, 384) and features.dtype == torch.float32
    assert torch.isfinite(features).all()
    # Patch tokens after the final LayerNorm, class token dropped, row-major grid; batch
    # independent (image 1 alone gives its rows of the batch).
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        tokens = encoder.model.forward_features((crops[1:] - mean) / std)
    torch.testing.assert_close(features[1:].reshape(1, 37 * 37, 384), tokens[:, 1:])
    with pytest.raises(ValueError, match=r"\(B, 3, 518, 518\)"):
        encoder.encode(torch.rand(1, 3, 224, 224))


@pytest.mark.slow
def test_dinov2_random_builds_are_identical(encoder) -> None:
    """Identical weights; the round trip below shows identical weights give identical outputs."""
    with pytest.warns(UserWarning, match=RANDOM_WARNING):
        again = build_encoder("dinov2_vits14", pretrained=False, device="cpu")
    assert again.identity == encoder.identity
    _assert_state_dicts_equal(again.model.state_dict(), encoder.model.state_dict())


@pytest.mark.slow
def test_dinov2_meta_checkpoint_round_trip(
    encoder, crops: torch.Tensor, features: torch.Tensor, tmp_path: Path
) -> None:
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(_meta_layout(encoder.model.state_dict()), path)
    loaded = build_encoder("dinov2_vits14", checkpoint=path, device="cpu")
    assert loaded.identity["weights"] == f"dinov2_vits14_pretrain.pth#sha256:{file_digest(path)}"
    _assert_state_dicts_equal(loaded.model.state_dict(), encoder.model.state_dict())
    assert torch.equal(loaded.encode(crops), features)


@pytest.mark.slow
def test_dinov2_checkpoint_missing_keys_raise(encoder, tmp_path: Path) -> None:
    state = _meta_layout(encoder.model.state_dict())
    del state["blocks.3.attn.qkv.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as error:
        build_encoder("dinov2_vits14", checkpoint=path, device="cpu")
    assert str(path) in str(error.value) and "blocks.3.attn.qkv.weight" in str(error.value)


@pytest.mark.slow
def test_cache_returns_the_same_encoder() -> None:
    cache = ModelCache()
    with pytest.warns(UserWarning, match=RANDOM_WARNING):
        first = build_encoder("dinov2_vits14", pretrained=False, device="cpu", cache=cache)
        second = build_encoder("dinov2_vits14", pretrained=False, device="cpu", cache=cache)
    assert first is second and len(cache) == 1
