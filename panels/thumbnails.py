"""Thumbnails of a memory bank's references: small crops of their boxes, side by side in one
PNG per class, as a ``data:`` URI the App's image view shows without any file server.

Positives come first with a green frame, then negatives with a red frame; at most
``MAX_PER_POLARITY`` of each (the panel states the counts). Each image file is opened once per
strip. A reference whose image cannot be read becomes a grey tile, so one missing file does not
hide the others.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

from PIL import Image, ImageDraw

TILE_PX = 40
"""Side of a thumbnail's square, frame included, in screen pixels."""

FRAME_PX = 2
GAP_PX = 3
"""Space between tiles; a group gap of 3 x this separates positives from negatives."""

MAX_PER_POLARITY = 6
"""The most positives (and the most negatives) a strip shows."""

CONTEXT = 0.15
"""Margin added around each box, as a fraction of its larger side (a crop that shows where the
instance sits)."""

POSITIVE_RGB = (46, 160, 67)
NEGATIVE_RGB = (218, 54, 51)
BACKGROUND_RGB = (40, 40, 40)
MISSING_RGB = (110, 110, 110)


def reference_strip(references: Sequence) -> str | None:
    """One class's thumbnails as a PNG ``data:`` URI, or None when it has no reference.

    Args:
        references: the class's ``refseg.ReferenceRecord`` s (``filepath``; ``box`` as
            (x, y, w, h) original-image pixels; ``negative``), in bank order.

    Returns:
        ``"data:image/png;base64,..."``: an RGB strip TILE_PX high.
    """
    positives = [r for r in references if not r.negative][:MAX_PER_POLARITY]
    negatives = [r for r in references if r.negative][:MAX_PER_POLARITY]
    if not positives and not negatives:
        return None
    crops = _crops(positives + negatives)
    tiles = [_tile(crops[i], POSITIVE_RGB) for i in range(len(positives))]
    tiles += [_tile(crops[len(positives) + i], NEGATIVE_RGB) for i in range(len(negatives))]
    return _png_uri(_strip(tiles, split=len(positives) if positives and negatives else None))


def _crops(references: Sequence) -> list[Image.Image | None]:
    """The crop of each reference's box with some context (None when its image is
    unreadable), opening each file once."""
    crops: list[Image.Image | None] = [None] * len(references)
    by_file: dict[str, list[int]] = {}
    for index, reference in enumerate(references):
        by_file.setdefault(reference.filepath, []).append(index)
    for filepath, indices in by_file.items():
        try:
            with Image.open(filepath) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError):  # missing, unreadable or not an image
            continue
        for index in indices:
            crops[index] = image.crop(_context_box(references[index].box, image.size))
    return crops


def _context_box(box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixels: ``box`` (x, y, w, h) grown by CONTEXT, clipped to the
    image of ``size`` (W, H), at least one pixel wide and high."""
    x, y, w, h = (float(v) for v in box)
    margin = CONTEXT * max(w, h)
    width, height = size
    left = min(max(int(x - margin), 0), width - 1)
    top = min(max(int(y - margin), 0), height - 1)
    right = max(min(round(x + w + margin), width), left + 1)
    bottom = max(min(round(y + h + margin), height), top + 1)
    return left, top, right, bottom


def _tile(crop: Image.Image | None, frame_rgb: tuple[int, int, int]) -> Image.Image:
    """A TILE_PX square: the crop scaled to fit inside a coloured frame (grey when None)."""
    tile = Image.new("RGB", (TILE_PX, TILE_PX), frame_rgb)
    inner = TILE_PX - 2 * FRAME_PX
    body = Image.new("RGB", (inner, inner), BACKGROUND_RGB if crop else MISSING_RGB)
    if crop is None:
        ImageDraw.Draw(body).line([(0, 0), (inner, inner)], fill=BACKGROUND_RGB, width=2)
    else:
        fitted = crop.copy()
        fitted.thumbnail((inner, inner), Image.Resampling.LANCZOS)
        body.paste(fitted, ((inner - fitted.width) // 2, (inner - fitted.height) // 2))
    tile.paste(body, (FRAME_PX, FRAME_PX))
    return tile


def _strip(tiles: list[Image.Image], split: int | None) -> Image.Image:
    """Tiles left to right; a wider gap before tile ``split`` (the first negative)."""
    gaps = [GAP_PX * (3 if index == split else 1) for index in range(1, len(tiles))]
    strip = Image.new("RGBA", (TILE_PX * len(tiles) + sum(gaps), TILE_PX), (0, 0, 0, 0))
    x = 0
    for index, tile in enumerate(tiles):
        strip.paste(tile, (x, 0))
        x += TILE_PX + (gaps[index] if index < len(gaps) else 0)
    return strip


def _png_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
